//! One VRRP instance per interface, VRID and address family on a node, and the hand-over between two agent processes of
//! the same node without dropping the VIP (docs/adr/0005): the bootstrap agent (a static pod, standalone)
//! steps aside for the DaemonSet agent (cluster mode) and stands by; when the DaemonSet agent stops, the
//! bootstrap agent takes the instance back.
//!
//! Both mount the state directory. `<state-dir>/vrrp/<netns>-<interface>[-ipv6]-<vrid>.lock` is flocked by whichever runs
//! the instance. A cluster-mode agent that finds it held writes `.request`; the holder, if it yields
//! (standalone), sends one last advertisement, leaves the VIP on the interface, writes `.handoff` ("master"
//! or "backup" and the time) and unlocks. The taker locks within milliseconds and, if the hand-off says
//! master and is fresh, starts as master at once (the router's `Resume`), so the other masters never see
//! the advertisements stop for longer than their Master_Down_Interval.

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

/// How long a cluster-mode agent waits for the holder to step aside before it reports the member as
/// failed to start (it is retried).
pub const STEP_ASIDE_WITHIN: Duration = Duration::from_secs(5);
/// A hand-off older than this is history, not a hand-over: the taker starts as a backup.
const FRESH: Duration = Duration::from_secs(2);
/// A request not renewed for this long is from a taker that is gone.
const REQUEST_FRESH: Duration = Duration::from_secs(1);
/// How often a waiting taker tries the lock: the gap in advertisements is at most this plus its start-up.
const TAKE_POLL: Duration = Duration::from_millis(5);
/// How often a standing-by agent tries the lock.
const STANDBY_POLL: Duration = Duration::from_millis(200);

/// Which side of a hand-over this process is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Standalone (the bootstrap agent): runs the instance while nobody else does, steps aside when asked.
    Yields,
    /// Cluster mode (the DaemonSet agent): asks a holder to step aside and keeps the instance until it stops.
    Takes,
}

/// What went wrong taking the instance.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The state directory cannot hold the lock.
    #[error("cannot use {path} for the VRRP instance lock (the state directory, --state-dir or stateDir): {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The holder did not step aside in time.
    #[error(
        "another kubeha agent on this node runs {instance} and did not step aside within {}s \
         (an agent older than the hand-over, or a second standalone agent with the same VRID: stop it)",
        STEP_ASIDE_WITHIN.as_secs()
    )]
    Busy {
        /// The instance.
        instance: Instance,
    },
}

/// One VRRP instance of a node: a VRID of one address family on one interface. IPv4 and IPv6 routers have
/// separate VRID spaces (RFC 9568 §5.2.3), so a dual-stack control plane runs both with one VRID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The interface.
    pub interface: String,
    /// The VRID.
    pub vrid: u8,
    /// Whether the VIP is an IPv6 address.
    pub ipv6: bool,
}

impl Instance {
    /// The instance a member runs (its spec validated before any driver starts).
    pub fn of(spec: &kubeha_crds::HighAvailabilityMemberSpec) -> Self {
        Self {
            interface: spec.interface.clone().unwrap_or_default(),
            vrid: spec.vrid.and_then(|v| u8::try_from(v).ok()).unwrap_or_default(),
            ipv6: spec.vip.as_deref().is_some_and(|v| v.contains(':')),
        }
    }

    /// The lock file's stem. An IPv4 instance keeps the name agents before dual-stack used, so that an
    /// upgrade between them still hands over.
    fn stem(&self, netns: u64) -> String {
        let family = if self.ipv6 { "-ipv6" } else { "" };
        format!("{netns}-{}{family}-{}", self.interface, self.vrid)
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let family = if self.ipv6 { "IPv6" } else { "IPv4" };
        write!(f, "{family} VRID {} on {}", self.vrid, self.interface)
    }
}

/// The right to run one VRRP instance on this node, held until dropped or handed off.
#[derive(Debug)]
pub struct Slot {
    lock: Flock<File>,
    base: PathBuf,
    role: Role,
    /// The process that held the instance before handed it over as master.
    pub resume_master: bool,
}

impl Slot {
    /// Takes `instance`. `Yields` waits as long as somebody else runs it (until
    /// `cancel` resolves: `None`); `Takes` asks the holder to step aside and waits [`STEP_ASIDE_WITHIN`].
    pub async fn acquire(
        dir: &Path,
        instance: &Instance,
        role: Role,
        cancel: impl Future<Output = ()>,
    ) -> Result<Option<Self>, HandoverError> {
        let vrrp = dir.join("vrrp");
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| HandoverError::Io { path, source }
        };
        fs::create_dir_all(&vrrp).map_err(io(&vrrp))?;
        // Keyed by network namespace too: "this node" is the network a hostNetwork pod sees; agents of
        // different namespaces sharing a directory (tests, several nodes on one machine) never collide.
        let netns = fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
        let base = vrrp.join(instance.stem(netns));
        let lock_path = base.with_extension("lock");
        let mut cancel = std::pin::pin!(cancel);
        let deadline = tokio::time::Instant::now() + STEP_ASIDE_WITHIN;
        let mut asked = false;
        let mut told = false;
        let mut requested_at: Option<tokio::time::Instant> = None;
        let mut file =
            File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    let resume_master = read_handoff(&base);
                    let _ = fs::remove_file(base.with_extension("handoff"));
                    let _ = fs::remove_file(base.with_extension("request"));
                    if asked || resume_master {
                        tracing::info!(%instance, resume_master, "took the VRRP instance over on this node");
                    }
                    return Ok(Some(Self { lock, base, role, resume_master }));
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => file = f,
                Err((_, errno)) => return Err(io(&lock_path)(errno.into())),
            }
            let poll = match role {
                Role::Takes => {
                    // Renewed while waiting: a request older than REQUEST_FRESH is from a taker that died,
                    // and the holder ignores it.
                    if requested_at.is_none_or(|t| t.elapsed() >= REQUEST_FRESH / 4) {
                        let request = base.with_extension("request");
                        fs::write(&request, std::process::id().to_string()).map_err(io(&request))?;
                        requested_at = Some(tokio::time::Instant::now());
                    }
                    if !asked {
                        tracing::info!(
                            %instance,
                            "another agent on this node runs this VRRP instance; asking it to step aside"
                        );
                        asked = true;
                    }
                    if tokio::time::Instant::now() > deadline {
                        let _ = fs::remove_file(base.with_extension("request"));
                        return Err(HandoverError::Busy { instance: instance.clone() });
                    }
                    TAKE_POLL
                }
                Role::Yields => {
                    if !told {
                        tracing::info!(%instance, "the cluster-mode agent runs this VRRP instance; standing by");
                        told = true;
                    }
                    STANDBY_POLL
                }
            };
            tokio::select! {
                () = &mut cancel => return Ok(None),
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Whether a cluster-mode agent asks for the instance now (always false for one that does not yield).
    pub fn requested(&self) -> bool {
        self.role == Role::Yields
            && fs::metadata(self.base.with_extension("request"))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < REQUEST_FRESH))
    }

    /// Steps aside: records whether this process held the VIP, then unlocks. The caller has left the VIP
    /// on the interface and sent its last advertisement.
    pub fn hand_off(self, master: bool) {
        let handoff = self.base.with_extension("handoff");
        let tmp = self.base.with_extension("handoff.tmp");
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let state = if master { "master" } else { "backup" };
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(format!("{state} {millis}\n").as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, &handoff));
        if let Err(e) = written {
            // The taker then starts as a backup: a failover of Master_Down_Interval instead of none.
            tracing::warn!(error = %e, path = %handoff.display(), "could not record the hand-off");
        }
        drop(self.lock);
    }
}

/// Whether a fresh hand-off says the previous holder was master.
fn read_handoff(base: &Path) -> bool {
    let Ok(text) = fs::read_to_string(base.with_extension("handoff")) else { return false };
    let mut words = text.split_whitespace();
    let (Some(state), Some(at)) = (words.next(), words.next().and_then(|w| w.parse::<u128>().ok())) else {
        return false;
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    state == "master" && now.saturating_sub(at) <= FRESH.as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> impl Future<Output = ()> {
        std::future::pending()
    }

    /// A directory of its own per test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("kubeha-handover-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    fn v4(vrid: u8) -> Instance {
        Instance { interface: "eth0".into(), vrid, ipv6: false }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_taker_gets_the_instance_from_a_yielding_holder_and_resumes_as_master() {
        let dir = Scratch::new("take");
        let held = Slot::acquire(dir.path(), &v4(51), Role::Yields, never()).await.unwrap().unwrap();
        assert!(!held.resume_master && !held.requested());
        let path = dir.path().to_path_buf();
        let taker = tokio::spawn(async move { Slot::acquire(&path, &v4(51), Role::Takes, never()).await });
        while !held.requested() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        held.hand_off(true);
        let took = taker.await.unwrap().unwrap().unwrap();
        assert!(took.resume_master, "a fresh master hand-off resumes as master");
        assert!(!took.requested(), "a taker is never asked to yield");

        // The standing-by agent gets the instance back once the taker stops — as a backup.
        drop(took);
        let back = Slot::acquire(dir.path(), &v4(51), Role::Yields, never()).await.unwrap().unwrap();
        assert!(!back.resume_master);
    }

    #[tokio::test]
    async fn a_holder_that_does_not_yield_is_reported_by_vrid_and_interface() {
        let dir = Scratch::new("busy");
        let _held = Slot::acquire(dir.path(), &v4(51), Role::Takes, never()).await.unwrap().unwrap();
        tokio::time::pause();
        let err = Slot::acquire(dir.path(), &v4(51), Role::Takes, never()).await.unwrap_err();
        assert!(err.to_string().contains("IPv4 VRID 51 on eth0"), "{err}");
        // Another VRID is another instance, and so is the same VRID for IPv6.
        tokio::time::resume();
        assert!(Slot::acquire(dir.path(), &v4(52), Role::Takes, never()).await.unwrap().is_some());
        let v6 = Instance { ipv6: true, ..v4(51) };
        assert!(Slot::acquire(dir.path(), &v6, Role::Takes, never()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_request_from_a_taker_that_died_is_ignored() {
        let dir = Scratch::new("stale");
        let held = Slot::acquire(dir.path(), &v4(51), Role::Yields, never()).await.unwrap().unwrap();
        let request = held.base.with_extension("request");
        fs::write(&request, "1").unwrap();
        assert!(held.requested());
        let old = SystemTime::now() - Duration::from_secs(5);
        File::options().write(true).open(&request).unwrap().set_modified(old).unwrap();
        assert!(!held.requested(), "a request nobody renews is not followed");
    }

    #[tokio::test]
    async fn a_standing_by_agent_can_be_stopped() {
        let dir = Scratch::new("standby");
        let _held = Slot::acquire(dir.path(), &v4(51), Role::Takes, never()).await.unwrap().unwrap();
        let instance = v4(51);
        let waited = Slot::acquire(dir.path(), &instance, Role::Yields, tokio::time::sleep(Duration::from_millis(50)));
        assert!(waited.await.unwrap().is_none());
    }
}
