//! The reconciler: reads the cluster, its nodes and members from caches, calls the pure functions, and
//! writes members and status by server-side apply with one field manager. Only the elected leader runs it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource as _, ResourceExt as _};
use kubeha_crds::{HighAvailabilityCluster, HighAvailabilityMember};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::task::AbortOnDropHandle;

use crate::conflict::{Claim, conflicts};
use crate::desired::{CLUSTER_LABEL, RELEASE_FINALIZER, advert_sources, desired, masters, member_name, vip_address};
use crate::seen::Sightings;
use crate::status::{Ages, Inputs, Leaders, aggregate, held_back, meaningfully_different};
use crate::vipcheck;

pub use kubeha_crds::contract::{CLEANUP_FINALIZER, OPERATOR_MANAGER as MANAGER};

/// What can stop a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API refused or failed a call.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Members of a deleted cluster still wait for their agents to release the VIP.
    #[error("waiting for {0} member(s) to release the VIP")]
    Releasing(usize),
    /// Leadership ended while reconciling; the new leader takes over.
    #[error("no longer the leader")]
    NotLeader,
}

type Labels = Vec<(String, String)>;

/// Operator metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<Labels, Counter>,
    members_written: Counter,
    status_writes: Counter,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Registers the metrics under `kubeha_operator_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            members_written: Counter::default(),
            status_writes: Counter::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
            }),
        };
        let r = registry.sub_registry_with_prefix("kubeha_operator");
        r.register(
            "reconciles",
            "Reconciles by result (ok, releasing: waiting for agents to release the VIP, error)",
            m.reconciles.clone(),
        );
        r.register(
            "members_written",
            "Member specs created or changed by server-side apply",
            m.members_written.clone(),
        );
        r.register("status_writes", "Cluster status writes (unchanged statuses are skipped)", m.status_writes.clone());
        r.register("reconcile_duration_seconds", "Time per reconcile", m.duration.clone());
        m
    }
}

/// Everything a reconcile needs.
pub struct Context {
    client: Client,
    recorder: Recorder,
    nodes: Store<Node>,
    members: Store<HighAvailabilityMember>,
    clusters: Store<HighAvailabilityCluster>,
    metrics: Metrics,
    release_timeout: Duration,
    /// kube-system Leases: the controller leaders.
    system_leases: Store<Lease>,
    /// The members' heartbeat Leases.
    heartbeats: Store<Lease>,
    /// When the caches saw the agents' and the controllers' stamps change.
    seen: Arc<Mutex<Sightings>>,
    may_act: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Context {
    fn sightings(&self) -> std::sync::MutexGuard<'_, Sightings> {
        // Notes are plain inserts: a panic elsewhere leaves nothing half-written to distrust.
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long ago the value of `key` changed, by this operator's clock.
    fn age(&self, key: &str) -> Option<Duration> {
        self.sightings().age(key, Instant::now())
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("release_timeout", &self.release_timeout).finish_non_exhaustive()
    }
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This replica's name in Events.
    pub instance: String,
    /// How long a deleted member may wait for its agent to release the VIP before the operator removes the
    /// release finalizer itself (and says so in a Warning Event).
    pub release_timeout: Duration,
    /// Where the agents renew their members' heartbeat Leases.
    pub heartbeat_namespace: String,
}

/// Runs the controller until `shutdown` resolves. `may_act` is checked before every write: it is the
/// leader's own deadline, so a replica that lost leadership writes nothing more even before it is stopped.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    may_act: impl Fn() -> bool + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let clusters: Api<HighAvailabilityCluster> = Api::all(client.clone());
    let members_api: Api<HighAvailabilityMember> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());

    // The reflectors live as long as this future: they end with it, also when it is aborted.
    let seen = Arc::new(Mutex::new(Sightings::default()));
    let (nodes, _nodes) = cache(nodes_api.clone(), watcher::Config::default(), None);
    let (members, _members) =
        cache(members_api.clone(), watcher::Config::default(), Some((seen.clone(), member_stamps as Stamps<_>)));
    // Read on every reconcile; cached so that a reconcile costs no extra API calls for them.
    let (system_leases, _system_leases) = cache(
        Api::namespaced(client.clone(), "kube-system"),
        watcher::Config::default(),
        Some((seen.clone(), system_lease_stamps as Stamps<_>)),
    );
    let (heartbeats, _heartbeats) = cache(
        Api::namespaced(client.clone(), &settings.heartbeat_namespace),
        watcher::Config::default().labels(CLUSTER_LABEL),
        Some((seen.clone(), heartbeat_stamps as Stamps<_>)),
    );

    let controller = Controller::new(clusters, watcher::Config::default());
    let cluster_store = controller.store();
    let all = cluster_store.clone();
    let reporter = Reporter { controller: MANAGER.into(), instance: Some(settings.instance) };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        nodes: nodes.clone(),
        members: members.clone(),
        clusters: cluster_store,
        metrics,
        release_timeout: settings.release_timeout,
        system_leases,
        heartbeats,
        seen,
        may_act: Box::new(may_act),
    });
    // Reconcile only with complete caches: a half-listed node set would delete members.
    let _ = tokio::join!(nodes.wait_until_ready(), members.wait_until_ready());
    tracing::info!("caches ready; reconciling");
    controller
        .owns(members_api, watcher::Config::default())
        // A node joining, leaving or changing address can change every cluster's masters.
        .watches(nodes_api, watcher::Config::default(), move |_: Node| {
            all.state().iter().map(|c| ObjectRef::from_obj(&**c)).collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(
    hac: Arc<HighAvailabilityCluster>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let started = std::time::Instant::now();
    let api: Api<HighAvailabilityCluster> = Api::all(ctx.client.clone());
    let result = finalizer(&api, CLEANUP_FINALIZER, hac, |event| async {
        match event {
            Finalizer::Apply(h) => apply(&h, &ctx).await,
            Finalizer::Cleanup(h) => cleanup(&h, &ctx).await,
        }
    })
    .await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(kube::runtime::finalizer::Error::CleanupFailed(Error::Releasing(_))) => "releasing",
        Err(_) => "error",
    };
    let labels = vec![("result".to_string(), outcome.to_string())];
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    ctx.metrics.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    result
}

fn error_policy(
    hac: Arc<HighAvailabilityCluster>,
    err: &kube::runtime::finalizer::Error<Error>,
    _: Arc<Context>,
) -> Action {
    match err {
        kube::runtime::finalizer::Error::CleanupFailed(Error::Releasing(n)) => {
            tracing::debug!(cluster = %hac.name_any(), members = n, "waiting for members to release the VIP");
            Action::requeue(Duration::from_secs(1))
        }
        e => {
            tracing::warn!(cluster = %hac.name_any(), error = %e, "reconcile failed; retrying");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

fn guard(ctx: &Context) -> Result<(), Error> {
    if (ctx.may_act)() { Ok(()) } else { Err(Error::NotLeader) }
}

/// The members that belong to `hac`, from the cache.
fn owned(ctx: &Context, hac: &HighAvailabilityCluster) -> Vec<HighAvailabilityMember> {
    let name = hac.name_any();
    let mut v: Vec<HighAvailabilityMember> = ctx
        .members
        .state()
        .iter()
        .filter(|m| m.labels().get(CLUSTER_LABEL) == Some(&name))
        .map(|m| (**m).clone())
        .collect();
    v.sort_by(|a, b| a.spec.node_name.cmp(&b.spec.node_name));
    v
}

fn claim(hac: &HighAvailabilityCluster, nodes: &[Node]) -> Claim {
    Claim {
        name: hac.name_any(),
        created: hac.metadata.creation_timestamp.as_ref().map(|t| t.0),
        vip: vip_address(&hac.spec.vip),
        vrid: hac.spec.vrid,
        interface: hac.spec.interface.clone(),
        masters: masters(hac, nodes).0.iter().map(|n| n.name_any()).collect(),
    }
}

async fn apply(hac: &HighAvailabilityCluster, ctx: &Context) -> Result<Action, Error> {
    let name = hac.name_any();
    let nodes: Vec<Node> = ctx.nodes.state().iter().map(|n| (**n).clone()).collect();
    let mut want = desired(hac, &nodes);
    let claims: Vec<Claim> = ctx.clusters.state().iter().map(|c| claim(c, &nodes)).collect();
    let found = conflicts(&claim(hac, &nodes), &claims);
    let mistake = vipcheck::check(&hac.spec.vip, &masters(hac, &nodes).0, &nodes, &hac.spec.masters.priorities);
    let members_api: Api<HighAvailabilityMember> = Api::all(ctx.client.clone());
    let existing = owned(ctx, hac);
    let sources = advert_sources(&want.members, &existing);
    for m in &mut want.members {
        m.spec.vrrp.members.clone_from(&sources);
    }

    // Members left unchanged: the newer of two conflicting clusters, or a VIP nobody may take. Members that
    // run already keep the VIP they had; none is created with this one.
    let blocked = held_back(&found, mistake.as_ref());
    if let Some(m) = &mistake {
        tracing::warn!(cluster = %name, reason = m.reason, message = %m.message, "VIP refused: leaving members unchanged");
    } else if blocked {
        tracing::warn!(cluster = %name, conflict = %found[0].message, "conflict: leaving members unchanged");
    } else {
        for m in &want.members {
            let current = existing.iter().find(|e| e.metadata.name == m.metadata.name);
            if current.is_some_and(|c| c.spec == m.spec && c.metadata.deletion_timestamp.is_none()) {
                continue;
            }
            guard(ctx)?;
            members_api.patch(&m.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(m)).await?;
            ctx.metrics.members_written.inc();
            tracing::info!(cluster = %name, member = %m.name_any(), priority = m.spec.priority, "member applied");
        }
        for gone in existing.iter().filter(|e| !want.members.iter().any(|m| m.metadata.name == e.metadata.name)) {
            retire(gone, ctx, hac).await?;
        }
    }

    let members = owned(ctx, hac);
    // Members left unchanged are not coming: expect only those that exist then.
    let expected: Vec<String> =
        if blocked { Vec::new() } else { want.members.iter().map(|m| m.spec.node_name.clone()).collect() };
    let out = aggregate(&Inputs {
        hac,
        members: &members,
        expected: &expected,
        problems: &want.problems,
        conflicts: &found,
        vip_mistake: mistake.as_ref(),
        now: Timestamp::now(),
        leaders: leaders(ctx),
        heartbeats: &heartbeats(ctx, &name),
        ages: ages(&ctx.sightings(), &members, Instant::now()),
    });
    let current = hac.status.clone().unwrap_or_default();
    if meaningfully_different(&current, &out.status) {
        guard(ctx)?;
        let patch = json!({
            "apiVersion": HighAvailabilityCluster::api_version(&()),
            "kind": HighAvailabilityCluster::kind(&()),
            "status": out.status,
        });
        Api::<HighAvailabilityCluster>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await?;
        ctx.metrics.status_writes.inc();
    }
    for e in out.events {
        let related = e.node.map(|n| member_ref(&name, &n));
        publish(ctx, hac, e.warning, e.reason, e.note, related).await;
    }
    // Heartbeats age without any watch event: look again before a member could turn stale unnoticed.
    Ok(Action::requeue(Duration::from_secs(5)))
}

/// The stamps of an object whose changes the operator times on its own clock: (key, value) pairs for
/// [`Sightings`].
type Stamps<K> = fn(&K) -> Vec<(String, String)>;

/// A cache of `api`, kept by a reflector task until the returned handle is dropped. Not a detached task: a
/// spawned task outlives whoever spawned it, and every leadership the operator lost left four watches running
/// (a 10-minute soak: the operator's API connections 8 → 23). With `stamps`, every object the watch
/// delivers has its stamps noted as it arrives.
fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    stamps: Option<(Arc<Mutex<Sightings>>, Stamps<K>)>,
) -> (Store<K>, AbortOnDropHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .inspect(move |event| {
            let (Some((seen, stamps)), Ok(event)) = (&stamps, event) else { return };
            let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    let now = Instant::now();
                    for (key, value) in stamps(o) {
                        seen.note(key, value, now);
                    }
                }
                watcher::Event::Delete(o) => stamps(o).iter().for_each(|(key, _)| seen.forget(key)),
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
        })
        .touched_objects();
    (store, AbortOnDropHandle::new(tokio::spawn(stream.for_each(|_| async {}))))
}

/// A member's stamps: its agent's and its proxy's heartbeats, its existence, its deletion.
fn member_stamps(m: &HighAvailabilityMember) -> Vec<(String, String)> {
    let name = m.name_any();
    let st = m.status.as_ref();
    let mut stamps = vec![(format!("known:{name}"), m.uid().unwrap_or_default())];
    if let Some(t) = st.and_then(|s| s.heartbeat_time.as_ref()) {
        stamps.push((format!("heartbeat:{name}"), t.0.to_string()));
    }
    if let Some(t) = st.and_then(|s| s.proxy_heartbeat_time.as_ref()) {
        stamps.push((format!("proxy:{name}"), t.0.to_string()));
    }
    if let Some(t) = &m.metadata.deletion_timestamp {
        stamps.push((format!("deleting:{name}"), t.0.to_string()));
    }
    stamps
}

/// A heartbeat Lease's renewal, under its member's name.
fn heartbeat_stamps(l: &Lease) -> Vec<(String, String)> {
    renewal(l).map(|(m, t)| (format!("lease:{m}"), t.to_string())).into_iter().collect()
}

/// A heartbeat Lease's member and when its agent last renewed it, by the agent's clock.
fn renewal(l: &Lease) -> Option<(&str, Timestamp)> {
    let member = kubeha_crds::contract::member_of_heartbeat(l.metadata.name.as_deref()?)?;
    Some((member, l.spec.as_ref()?.renew_time.as_ref()?.0))
}

/// A kube-system Lease's holder and renewal.
fn system_lease_stamps(l: &Lease) -> Vec<(String, String)> {
    let spec = l.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string()).unwrap_or_default();
    vec![(format!("system:{}", l.name_any()), format!("{holder} {renewed}"))]
}

/// How long ago each member's stamps changed, as `seen` noted them.
fn ages(seen: &Sightings, members: &[HighAvailabilityMember], now: Instant) -> BTreeMap<String, Ages> {
    members
        .iter()
        .map(|m| {
            let name = m.name_any();
            let agent = [seen.age(&format!("heartbeat:{name}"), now), seen.age(&format!("lease:{name}"), now)]
                .into_iter()
                .flatten()
                .min();
            let ages = Ages {
                agent,
                proxy: seen.age(&format!("proxy:{name}"), now),
                known: seen.age(&format!("known:{name}"), now),
            };
            (name, ages)
        })
        .collect()
}

/// When each member's heartbeat Lease was last renewed (member name → renewTime).
fn heartbeats(ctx: &Context, cluster: &str) -> BTreeMap<String, Timestamp> {
    ctx.heartbeats
        .state()
        .iter()
        .filter(|l| l.labels().get(CLUSTER_LABEL).is_some_and(|c| c == cluster))
        .filter_map(|l| renewal(l).map(|(m, t)| (m.to_string(), t)))
        .collect()
}

/// The nodes holding the kube-system controller Leases. client-go's holder identity is the hostname, an
/// underscore and a UUID; a Lease not renewed within its duration is held by nobody.
fn leaders(ctx: &Context) -> Leaders {
    let holder = |name: &str| {
        let lease = ctx.system_leases.get(&ObjectRef::new(name).within("kube-system"))?;
        let spec = lease.spec.as_ref()?;
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
        let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).unwrap_or(0));
        // Renewed within its duration, as this operator's clock counts since it saw the renewal.
        if ctx.age(&format!("system:{name}")).is_none_or(|age| age > duration) {
            return None;
        }
        Some(holder.split('_').next().unwrap_or(holder).to_string())
    };
    Leaders { controller_manager: holder("kube-controller-manager"), scheduler: holder("kube-scheduler") }
}

/// Deletes a member that is no longer wanted. Its agent releases the VIP and removes the release
/// finalizer; if no agent does within the release timeout, the operator removes it and warns.
async fn retire(m: &HighAvailabilityMember, ctx: &Context, hac: &HighAvailabilityCluster) -> Result<(), Error> {
    let api: Api<HighAvailabilityMember> = Api::all(ctx.client.clone());
    let name = m.name_any();
    match &m.metadata.deletion_timestamp {
        None => {
            guard(ctx)?;
            api.delete(&name, &DeleteParams::default()).await?;
            tracing::info!(member = %name, "member deleted; waiting for its agent to release the VIP");
        }
        Some(_) => {
            // Since this operator saw the deletion: the API server's clock stamped it.
            let waited = ctx.age(&format!("deleting:{name}")).unwrap_or_default();
            let releasing = m.finalizers().iter().any(|f| f == RELEASE_FINALIZER);
            if releasing && waited >= ctx.release_timeout {
                guard(ctx)?;
                let rest: Vec<&String> = m.finalizers().iter().filter(|f| *f != RELEASE_FINALIZER).collect();
                let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": m.resource_version()}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                let note = format!(
                    "the agent on {} did not confirm releasing the VIP within {:?}; member removed anyway: check that node for the address",
                    m.spec.node_name, ctx.release_timeout
                );
                publish(ctx, hac, true, "ReleaseTimeout", note, Some(m.object_ref(&()))).await;
            }
        }
    }
    Ok(())
}

async fn cleanup(hac: &HighAvailabilityCluster, ctx: &Context) -> Result<Action, Error> {
    let members = owned(ctx, hac);
    if members.is_empty() {
        publish(ctx, hac, false, "Released", "every member released; the cluster is gone".into(), None).await;
        return Ok(Action::await_change());
    }
    for m in &members {
        retire(m, ctx, hac).await?;
    }
    Err(Error::Releasing(members.len()))
}

/// A reference to the member of `node` in cluster `hac`, as an Event's related object: the Recorder folds
/// Events with the same reason on the same objects into one series, so per-node Events need it.
fn member_ref(hac: &str, node: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(HighAvailabilityMember::api_version(&()).into()),
        kind: Some(HighAvailabilityMember::kind(&()).into()),
        name: Some(member_name(hac, node)),
        ..ObjectReference::default()
    }
}

async fn publish(
    ctx: &Context,
    hac: &HighAvailabilityCluster,
    warning: bool,
    reason: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&event, &hac.object_ref(&())).await {
        tracing::warn!(cluster = %hac.name_any(), reason, error = %e, "could not publish an Event");
    }
}

#[cfg(test)]
mod reconcile_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kubeha_common::testing::CountingServer;
    use kubeha_crds::{HighAvailabilityMemberStatus, VrrpState};

    use crate::desired::tests::{hac, node};

    /// The states the operator reports for three members whose agents stamp with a clock `skew` off the
    /// operator's: each agent writes a new heartbeat every second until `dies` (by the operator's clock,
    /// seconds after the start; `None`: never), and the operator looks at `look`.
    fn states_with_skew(skew: Duration, ahead: bool, dies: [Option<u64>; 3], look: u64) -> Vec<VrrpState> {
        let h = hac(serde_json::json!({}));
        let nodes: Vec<_> = (1..=3).map(|i| node(&format!("n{i}"), &[&format!("198.51.100.1{i}")], true)).collect();
        let mut members = desired(&h, &nodes).members;
        let (t0, wall0) = (Instant::now(), Timestamp::from_second(1_800_000_000).unwrap());
        let agent_clock = |s: u64| {
            let t = wall0 + Duration::from_secs(s);
            if ahead { t + skew } else { t - skew }
        };
        let mut seen = Sightings::default();
        for s in 0..=look {
            for (m, dies) in members.iter_mut().zip(dies) {
                if dies.is_some_and(|d| s >= d) {
                    continue;
                }
                m.status = Some(HighAvailabilityMemberStatus {
                    state: VrrpState::Backup,
                    heartbeat_time: Some(Time(agent_clock(s))),
                    ..HighAvailabilityMemberStatus::default()
                });
                for (key, value) in member_stamps(m) {
                    seen.note(key, value, t0 + Duration::from_secs(s));
                }
            }
        }
        let out = aggregate(&Inputs {
            hac: &h,
            members: &members,
            expected: &[],
            problems: &[],
            conflicts: &[],
            vip_mistake: None,
            now: wall0 + Duration::from_secs(look),
            leaders: Leaders::default(),
            heartbeats: &BTreeMap::new(),
            ages: ages(&seen, &members, t0 + Duration::from_secs(look)),
        });
        out.status.members.iter().map(|m| m.state).collect()
    }

    #[test]
    fn a_members_liveness_does_not_depend_on_its_nodes_clock() {
        // The heartbeat timeout is 15 s (the default leaseDuration). n3's agent stops at 10 s; at 40 s it has
        // been silent for 30 s, the others wrote a second ago.
        for (skew, ahead) in
            [(Duration::ZERO, true), (Duration::from_secs(3600), true), (Duration::from_secs(3600), false)]
        {
            let states = states_with_skew(skew, ahead, [None, None, Some(10)], 40);
            assert_eq!(
                states,
                [VrrpState::Backup, VrrpState::Backup, VrrpState::Unknown],
                "agents' clocks {skew:?} {}",
                if ahead { "ahead" } else { "behind" }
            );
        }
        // Comparing stamps with the operator's wall clock got both wrong: an hour ahead was alive for an
        // hour after it stopped, and an hour behind was never alive. Seen changing, both are alive at 12 s.
        assert_eq!(states_with_skew(Duration::from_secs(3600), false, [None; 3], 12), [VrrpState::Backup; 3]);
    }

    #[tokio::test]
    async fn a_dropped_cache_closes_its_watch() {
        // An API server that takes the list request and never answers.
        let server = CountingServer::silent().await;
        let url = format!("http://127.0.0.1:{}", server.port);
        let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();

        let (_store, reflector) = cache(Api::<Node>::all(client), watcher::Config::default(), None);
        assert!(server.wait_for(|n| n == 1).await, "the cache's list request reached the server");
        drop(reflector);
        assert!(
            server.wait_for(|n| n == 0).await,
            "the cache's connection is still open after its reflector was dropped"
        );
    }
}
