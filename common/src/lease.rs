//! Leader election through a `coordination.k8s.io/v1` Lease, with client-go's semantics:
//!
//! - A lease is expired when its record has not changed for `leaseDurationSeconds` *as observed locally*
//!   (monotonic clock), never by comparing the record's wall-clock `renewTime` with ours: clocks of two nodes
//!   disagree, a monotonic interval on one node does not.
//! - Every write carries the resourceVersion that was read (optimistic concurrency): of two candidates that
//!   both saw an expired lease, exactly one write succeeds.
//! - The holder stops acting on its *own* deadline — the start of its last successful renewal plus
//!   `renewDeadline` — whether or not anybody tells it, and `leaseDuration > renewDeadline` guarantees that
//!   it has stopped before anyone else may take over.
//! - A holder that shuts down releases the lease (empty holder, 1 s duration) so a standby takes over at
//!   its next retry instead of after a whole lease duration.
//!
//! Leadership is published as a watched value ([`Leadership`]); only a holder whose deadline is in the
//! future may have side effects.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use rand::Rng as _;
use tokio::sync::watch;
use tokio::time::Instant;

/// The timings and identity of one candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity, unique among candidates (pod name, or node name plus a random suffix).
    pub identity: String,
    /// How long a lease is valid without renewal, as observed by the others.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

/// A configuration that cannot elect safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The holder would still act after the others may take over.
    #[error("leaseDuration ({lease:?}) must be longer than renewDeadline ({renew:?})")]
    LeaseNotLongerThanDeadline {
        /// The lease duration.
        lease: Duration,
        /// The renew deadline.
        renew: Duration,
    },
    /// Jittered retries would make the holder miss its own deadline.
    #[error("renewDeadline ({renew:?}) must be more than 1.2 × retryPeriod ({retry:?})")]
    DeadlineWithinJitter {
        /// The renew deadline.
        renew: Duration,
        /// The retry period.
        retry: Duration,
    },
    /// An empty name or identity.
    #[error("{0} must not be empty")]
    Empty(&'static str),
}

impl ElectionConfig {
    /// Checks client-go's margins: leaseDuration > renewDeadline > 1.2 × retryPeriod.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (what, value) in
            [("lease namespace", &self.namespace), ("lease name", &self.name), ("identity", &self.identity)]
        {
            if value.is_empty() {
                return Err(ConfigError::Empty(what));
            }
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(ConfigError::LeaseNotLongerThanDeadline {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return Err(ConfigError::DeadlineWithinJitter { renew: self.renew_deadline, retry: self.retry_period });
        }
        Ok(())
    }
}

/// Who leads, as this candidate knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// This candidate holds the lease and may act until `until` (monotonic).
    Leader {
        /// The candidate's own deadline: the start of its last successful renewal plus renewDeadline.
        until: Instant,
    },
    /// Somebody else holds the lease, or nobody does.
    Follower {
        /// The current holder, if any.
        holder: Option<String>,
    },
}

impl Leadership {
    /// Whether this candidate may act at `now`.
    pub fn is_leader_at(&self, now: Instant) -> bool {
        matches!(self, Leadership::Leader { until } if now < *until)
    }
}

/// The part of a Lease record that decides who holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    duration: Duration,
    acquire_time: Option<Timestamp>,
    renew_time: Option<Timestamp>,
    transitions: i32,
}

impl Record {
    fn from_spec(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0).unsigned_abs().into()),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    fn to_spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: self.holder.clone(),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: self.acquire_time.map(MicroTime),
            renew_time: self.renew_time.map(MicroTime),
            lease_transitions: Some(self.transitions),
            ..LeaseSpec::default()
        }
    }
}

/// When this candidate last saw the record change: the base of all expiry decisions.
#[derive(Clone, Debug, Default)]
struct Observation {
    record: Option<Record>,
    at: Option<Instant>,
}

/// What to do after reading the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    /// Write this record (create the Lease if it does not exist).
    Write(Record),
    /// Another candidate holds a valid lease.
    Wait(String),
}

/// The pure heart of an election round: given the record just read (if the Lease exists), update the
/// observation and decide. `now` is monotonic, `wall` is only written into the record for people to read.
fn decide(
    current: Option<&Record>,
    seen: &mut Observation,
    me: &str,
    duration: Duration,
    now: Instant,
    wall: Timestamp,
) -> Decision {
    let Some(current) = current else {
        return Decision::Write(Record {
            holder: Some(me.to_string()),
            duration,
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions: 0,
        });
    };
    if seen.record.as_ref() != Some(current) {
        seen.record = Some(current.clone());
        seen.at = Some(now);
    }
    let observed_at = seen.at.unwrap_or(now);
    let held_by_me = current.holder.as_deref() == Some(me);
    if let Some(holder) = &current.holder {
        let valid = observed_at + current.duration > now;
        if valid && !held_by_me {
            return Decision::Wait(holder.clone());
        }
    }
    Decision::Write(Record {
        holder: Some(me.to_string()),
        duration,
        acquire_time: if held_by_me { current.acquire_time } else { Some(wall) },
        renew_time: Some(wall),
        transitions: if held_by_me { current.transitions } else { current.transitions + 1 },
    })
}

/// One candidate in an election.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    seen: Observation,
    tx: watch::Sender<Leadership>,
}

/// Why an election round failed (the elector retries; these are for logs).
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("the Lease API call failed: {0}")]
    Api(#[from] kube::Error),
    #[error("the Lease API call did not finish before the holder's deadline")]
    Deadline,
}

impl Elector {
    /// A candidate for the Lease `config.namespace/config.name`. Call [`Elector::run`] to take part.
    pub fn new(client: Client, config: ElectionConfig) -> Result<(Self, watch::Receiver<Leadership>), ConfigError> {
        config.validate()?;
        let api = Api::namespaced(client, &config.namespace);
        let (tx, rx) = watch::channel(Leadership::Follower { holder: None });
        Ok((Self { api, config, seen: Observation::default(), tx }, rx))
    }

    /// Takes part until `shutdown` resolves, then releases the lease if held. Never returns an error: API
    /// failures are retried every retry period, and a holder that cannot renew by its deadline steps down.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let leading = matches!(*self.tx.borrow(), Leadership::Leader { .. });
            let pause = if leading { self.config.retry_period } else { jittered(self.config.retry_period) };
            let deadline = match *self.tx.borrow() {
                Leadership::Leader { until } => Some(until),
                Leadership::Follower { .. } => None,
            };
            let started = Instant::now();
            let round = async {
                match deadline {
                    Some(until) => {
                        tokio::time::timeout_at(until, self.round()).await.unwrap_or(Err(RoundError::Deadline))
                    }
                    None => self.round().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                result = round => self.publish(result, started),
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        self.release().await;
    }

    fn publish(&mut self, result: Result<Option<String>, RoundError>, started: Instant) {
        let now = Instant::now();
        let next = match (result, self.tx.borrow().clone()) {
            // None: we wrote the lease; the write started at `started`, so that is what the deadline counts from.
            (Ok(None), _) => Leadership::Leader { until: started + self.config.renew_deadline },
            (Ok(Some(holder)), _) => Leadership::Follower { holder: Some(holder) },
            (Err(e), Leadership::Leader { until }) if now < until => {
                tracing::warn!(lease = %self.config.name, error = %e, "lease renewal failed; retrying before the deadline");
                Leadership::Leader { until }
            }
            (Err(e), Leadership::Leader { .. }) => {
                tracing::warn!(lease = %self.config.name, error = %e, "lease not renewed by the deadline; stepping down");
                Leadership::Follower { holder: None }
            }
            (Err(e), follower) => {
                tracing::debug!(lease = %self.config.name, error = %e, "lease acquisition attempt failed");
                follower
            }
        };
        let changed = std::mem::discriminant(&next) != std::mem::discriminant(&*self.tx.borrow());
        if changed {
            match &next {
                Leadership::Leader { .. } => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader")
                }
                Leadership::Follower { holder } => {
                    tracing::info!(lease = %self.config.name, holder = ?holder, "following")
                }
            }
        }
        self.tx.send_if_modified(|cur| {
            if *cur == next {
                false
            } else {
                *cur = next;
                true
            }
        });
    }

    /// One read-decide-write round. `Ok(None)`: we hold the lease now; `Ok(Some(holder))`: someone else does.
    async fn round(&mut self) -> Result<Option<String>, RoundError> {
        let existing = self.api.get_opt(&self.config.name).await?;
        // A Lease without a spec is a lease nobody holds.
        let record = existing.as_ref().map(|l| Record::from_spec(l.spec.as_ref().unwrap_or(&LeaseSpec::default())));
        let decision = decide(
            record.as_ref(),
            &mut self.seen,
            &self.config.identity,
            self.config.lease_duration,
            Instant::now(),
            Timestamp::now(),
        );
        match decision {
            Decision::Wait(holder) => Ok(Some(holder)),
            Decision::Write(new) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        resource_version: existing.as_ref().and_then(|l| l.metadata.resource_version.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(new.to_spec()),
                };
                let written = if existing.is_some() {
                    self.api.replace(&self.config.name, &PostParams::default(), &lease).await?
                } else {
                    self.api.create(&PostParams::default(), &lease).await?
                };
                // Our own write is a change we observed now.
                self.seen =
                    Observation { record: written.spec.as_ref().map(Record::from_spec), at: Some(Instant::now()) };
                Ok(None)
            }
        }
    }

    /// Gives the lease up if we hold it, so a standby takes over at its next retry.
    async fn release(&mut self) {
        if !self.tx.borrow().is_leader_at(Instant::now()) {
            return;
        }
        self.tx.send_replace(Leadership::Follower { holder: None });
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return;
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.config.name, "released the lease"),
            Err(e) => {
                tracing::warn!(lease = %self.config.name, error = %e, "could not release the lease; it expires by itself")
            }
        }
    }
}

/// client-go's acquire jitter: a uniform pause in [d, 2.2·d), so candidates that start together spread out.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::rng().random_range(0.0..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held_by(holder: &str) -> Record {
        Record { holder: Some(holder.into()), duration: D, acquire_time: None, renew_time: None, transitions: 3 }
    }

    fn t0() -> (Instant, Timestamp) {
        (Instant::now(), Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn a_missing_lease_is_created_with_us_as_holder() {
        let (now, wall) = t0();
        let d = decide(None, &mut Observation::default(), "a", D, now, wall);
        let Decision::Write(r) = d else { panic!("{d:?}") };
        assert_eq!((r.holder.as_deref(), r.transitions, r.duration), (Some("a"), 0, D));
    }

    #[test]
    fn a_valid_lease_of_another_is_waited_for_until_it_stops_changing_for_its_duration() {
        let (now, wall) = t0();
        let mut seen = Observation::default();
        assert_eq!(decide(Some(&held_by("b")), &mut seen, "a", D, now, wall), Decision::Wait("b".into()));
        // Unchanged for less than the duration: still valid, whatever the wall clocks say.
        assert_eq!(
            decide(Some(&held_by("b")), &mut seen, "a", D, now + D - Duration::from_millis(1), wall),
            Decision::Wait("b".into())
        );
        // Unchanged for the whole duration: expired, and taking it over counts a transition.
        let Decision::Write(r) = decide(Some(&held_by("b")), &mut seen, "a", D, now + D, wall) else { panic!() };
        assert_eq!((r.holder.as_deref(), r.transitions), (Some("a"), 4));
    }

    #[test]
    fn a_renewal_by_the_holder_restarts_the_observed_duration() {
        let (now, wall) = t0();
        let mut seen = Observation::default();
        decide(Some(&held_by("b")), &mut seen, "a", D, now, wall);
        let mut renewed = held_by("b");
        renewed.renew_time = Some(Timestamp::UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(
            decide(Some(&renewed), &mut seen, "a", D, now + D - Duration::from_secs(1), wall),
            Decision::Wait("b".into())
        );
        assert_eq!(
            decide(Some(&renewed), &mut seen, "a", D, now + D + Duration::from_secs(1), wall),
            Decision::Wait("b".into())
        );
        assert!(matches!(decide(Some(&renewed), &mut seen, "a", D, now + 2 * D, wall), Decision::Write(_)));
    }

    #[test]
    fn the_holder_renews_keeping_acquire_time_and_transitions() {
        let (now, wall) = t0();
        let mut mine = held_by("a");
        mine.acquire_time = Some(Timestamp::UNIX_EPOCH + Duration::from_secs(5));
        let Decision::Write(r) = decide(Some(&mine), &mut Observation::default(), "a", D, now, wall) else { panic!() };
        assert_eq!((r.transitions, r.acquire_time), (3, mine.acquire_time));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let (now, wall) = t0();
        let released = Record {
            holder: None,
            duration: Duration::from_secs(1),
            acquire_time: None,
            renew_time: None,
            transitions: 3,
        };
        let Decision::Write(r) = decide(Some(&released), &mut Observation::default(), "a", D, now, wall) else {
            panic!()
        };
        assert_eq!((r.holder.as_deref(), r.transitions, r.duration), (Some("a"), 4, D));
    }

    #[test]
    fn leadership_ends_at_the_holders_own_deadline() {
        let now = Instant::now();
        let l = Leadership::Leader { until: now + Duration::from_secs(10) };
        assert!(l.is_leader_at(now));
        assert!(!l.is_leader_at(now + Duration::from_secs(10)));
        assert!(!Leadership::Follower { holder: None }.is_leader_at(now));
    }

    #[test]
    fn timings_follow_client_go_margins() {
        let ok = ElectionConfig {
            namespace: "kubeha-system".into(),
            name: "kubeha-operator".into(),
            identity: "pod-a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        assert_eq!(ok.validate(), Ok(()));
        let inverted = ElectionConfig { renew_deadline: Duration::from_secs(15), ..ok.clone() };
        assert!(matches!(inverted.validate(), Err(ConfigError::LeaseNotLongerThanDeadline { .. })));
        let jitter = ElectionConfig { renew_deadline: Duration::from_millis(2400), ..ok.clone() };
        assert!(matches!(jitter.validate(), Err(ConfigError::DeadlineWithinJitter { .. })));
        let anonymous = ElectionConfig { identity: String::new(), ..ok };
        assert_eq!(anonymous.validate(), Err(ConfigError::Empty("identity")));
    }
}
