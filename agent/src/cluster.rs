//! Cluster mode (`kubeha-agent run --node-name N`, as the DaemonSet runs it): the agent runs every
//! HighAvailabilityMember of its node, follows changes to them live, keeps the last-known-good copy of each
//! on disk, and reports back — the member's status by server-side apply and a heartbeat Lease per member,
//! renewed through the node's own API server, which is also what quorum fencing is built on.
//!
//! Nothing here ever stops VRRP because the API is away: the members run from the last-known-good store
//! until the API answers again, and the agent reconnects with backoff.
//!
//! A process runs the parts `Options::parts` names. The chart runs two: the VIP part (election, heartbeat,
//! fencing, the release finalizer, the store, the member status under [`MANAGER`]) and the proxy part (the
//! proxy, reading the store, `proxyBackends` under [`PROXY_MANAGER`]); server-side apply keeps both writers'
//! fields of one status.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Resource as _, ResourceExt as _};
use kubeha_crds::{
    BackendStatus, CheckResult, ComponentHealth, ControlPlaneHealth, ElectionMode, HighAvailabilityMember,
    HighAvailabilityMemberSpec, HighAvailabilityMemberStatus, Penalty, Transition, VrrpState,
};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::api::{self, ApiServers};
use crate::driver::Observed;
use crate::instance::{Instance, Parts, StartError};
use crate::leasemode::LeaseContext;
use crate::metrics::{ProxyMetrics, VrrpMetrics};
use crate::state::{Saved, Store};

/// The label the operator puts on members: the cluster's name.
pub const CLUSTER_LABEL: &str = "kubeha.io/cluster";
/// The label the operator puts on members: the node's name.
pub const NODE_LABEL: &str = "kubeha.io/node";
/// The finalizer the operator puts on members; the agent removes it once it has released the VIP.
pub const RELEASE_FINALIZER: &str = "kubeha.io/vip-release";
/// The field manager of everything the VIP part writes.
pub const MANAGER: &str = "kubeha-agent";
/// The field manager of the proxy part's status fields (proxyBackends, proxyError, proxyHeartbeatTime).
pub const PROXY_MANAGER: &str = "kubeha-agent-proxy";
/// How long one API request may take before the next server is tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The name of a member's heartbeat Lease.
pub fn heartbeat_lease(member: &str) -> String {
    format!("kubeha-member-{member}")
}

/// How the agent runs in cluster mode.
#[derive(Debug)]
pub struct Options {
    /// This node.
    pub node: String,
    /// The namespace of the heartbeat Leases (the agent's own).
    pub namespace: String,
    /// The last-known-good directory.
    pub state_dir: PathBuf,
    /// The API servers, node-local first.
    pub api: Arc<ApiServers>,
    /// The node's control-plane health endpoints on loopback.
    pub components: ComponentUrls,
    /// The parts this process runs.
    pub parts: Parts,
}

/// Where this node's control-plane components answer health probes (an empty URL: not probed). They are
/// probed for liveness over loopback, without verifying certificates: kube-controller-manager and
/// kube-scheduler serve self-signed ones.
#[derive(Clone, Debug, Default)]
pub struct ComponentUrls {
    /// kube-apiserver /readyz.
    pub apiserver: String,
    /// etcd /health (http:// or https://).
    pub etcd: String,
    /// kube-controller-manager /healthz.
    pub controller_manager: String,
    /// kube-scheduler /healthz.
    pub scheduler: String,
}

/// Probes the node's control-plane components every 2 s.
async fn probe_components(urls: ComponentUrls, out: watch::Sender<ControlPlaneHealth>) {
    let tls = crate::probe::tls_config(true, None).ok();
    let one = |url: String| {
        let tls = tls.clone();
        async move {
            if url.is_empty() {
                return None;
            }
            let attempt = async {
                if url.starts_with("http://") {
                    crate::probe::http(&url).await
                } else {
                    crate::probe::https(&url, tls).await
                }
            };
            let (healthy, message) = match tokio::time::timeout(Duration::from_secs(1), attempt).await {
                Ok(Ok(m)) => (true, m),
                Ok(Err(e)) => (false, e),
                Err(_) => (false, "no answer within 1s".into()),
            };
            Some(ComponentHealth { healthy, message: Some(message) })
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (apiserver, etcd, controller_manager, scheduler) = tokio::join!(
            one(urls.apiserver.clone()),
            one(urls.etcd.clone()),
            one(urls.controller_manager.clone()),
            one(urls.scheduler.clone())
        );
        let next = ControlPlaneHealth { apiserver, etcd, controller_manager, scheduler };
        // Only a change of health wakes the reporters, not a new message for the same state.
        out.send_if_modified(|v| {
            let same = |a: &Option<ComponentHealth>, b: &Option<ComponentHealth>| {
                a.as_ref().map(|c| c.healthy) == b.as_ref().map(|c| c.healthy)
            };
            let changed = !(same(&v.apiserver, &next.apiserver)
                && same(&v.etcd, &next.etcd)
                && same(&v.controller_manager, &next.controller_manager)
                && same(&v.scheduler, &next.scheduler));
            *v = next;
            changed
        });
    }
}

/// The members of this node as the API has them; `None` until the first list succeeds.
type Wanted = Option<BTreeMap<String, HighAvailabilityMember>>;

/// One member on this node: what runs, and what its reporter is told (the spec and where it came from live
/// there, in one place).
struct Member {
    instance: Option<Instance>,
    shared: watch::Sender<Shared>,
    reporter: tokio::task::JoinHandle<()>,
}

impl Member {
    /// Tells the reporters about the running parts (or why there are none). A proxy's error is the proxy
    /// part's to report; in one process that runs both, it stopped the VIP part too, which says so.
    fn publish(&self, parts: Parts, error: Option<&StartError>) {
        let i = self.instance.as_ref();
        let proxy_error = error.filter(|e| parts.proxy && matches!(e, StartError::Proxy(_)));
        let error = error.filter(|_| parts.vip);
        self.shared.send_modify(|s| {
            s.observed = i.and_then(Instance::observed);
            s.proxy = i.and_then(Instance::proxy_handle);
            s.commands = i.and_then(Instance::commands);
            s.error = error.map(ToString::to_string);
            s.proxy_error = proxy_error.map(ToString::to_string);
        });
    }
}

/// What the supervisor shares with a member's reporter.
#[derive(Clone, Debug)]
struct Shared {
    spec: HighAvailabilityMemberSpec,
    cluster: String,
    uid: Option<String>,
    generation: Option<i64>,
    observed: Option<watch::Receiver<Observed>>,
    proxy: Option<crate::proxy::ProxyHandle>,
    commands: Option<tokio::sync::mpsc::UnboundedSender<crate::driver::Command>>,
    error: Option<String>,
    proxy_error: Option<String>,
}

/// Runs cluster mode until `shutdown` turns true; then every member hands its VIP over.
pub async fn run(opts: Options, registry: MemberMetrics, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    // Only the VIP part writes the store; the proxy part starts from what it saved.
    let store = if opts.parts.vip { Store::open(&opts.state_dir)? } else { Store::read_only(&opts.state_dir) };
    let opts = Arc::new(opts);
    let mut sup = Supervisor {
        opts: opts.clone(),
        store,
        members: BTreeMap::new(),
        registry,
        discovered: Vec::new(),
        health: watch::channel(ControlPlaneHealth::default()).1,
    };
    let saved = sup.store.load(&opts.node)?;
    if !saved.is_empty() {
        tracing::info!(members = saved.len(), "starting from the last-known-good members until the API answers");
    }
    for s in saved {
        sup.apply(s.name.clone(), s.cluster, s.generation, None, s.spec).await;
    }

    let (wanted_tx, mut wanted_rx) = watch::channel::<Wanted>(None);
    let watcher = tokio::spawn(watch_members(opts.clone(), wanted_tx));
    let (health_tx, health_rx) = watch::channel(ControlPlaneHealth::default());
    let probes = tokio::spawn({
        let urls = opts.components.clone();
        // The control-plane view is part of the VIP part's status.
        let vip = opts.parts.vip;
        async move {
            if vip {
                probe_components(urls, health_tx).await;
            }
        }
    });
    sup.health = health_rx;
    let (slice_tx, mut slice_rx) = watch::channel::<Vec<SocketAddr>>(Vec::new());
    let slices = tokio::spawn(watch_endpoint_slice(opts.api.clone(), slice_tx));
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break,
            Ok(()) = wanted_rx.changed() => {
                let wanted = wanted_rx.borrow_and_update().clone();
                if let Some(w) = wanted {
                    sup.reconcile(w).await;
                }
            }
            Ok(()) = slice_rx.changed() => {
                sup.discovered = slice_rx.borrow_and_update().clone();
                for m in sup.members.values_mut() {
                    if let Some(i) = m.instance.as_mut() {
                        i.set_discovered(sup.discovered.clone());
                    }
                }
            }
            _ = retry.tick() => sup.retry_failed().await,
        }
    }
    watcher.abort();
    slices.abort();
    probes.abort();
    tracing::info!("shutting down: every member hands its VIP over");
    for (name, m) in std::mem::take(&mut sup.members) {
        m.reporter.abort();
        if let Some(i) = m.instance {
            i.stop().await;
        }
        tracing::info!(member = %name, "member stopped");
    }
    Ok(())
}

struct Supervisor {
    opts: Arc<Options>,
    store: Store,
    members: BTreeMap<String, Member>,
    registry: MemberMetrics,
    discovered: Vec<SocketAddr>,
    health: watch::Receiver<ControlPlaneHealth>,
}

impl Supervisor {
    /// Brings the running members to what the API wants.
    async fn reconcile(&mut self, wanted: BTreeMap<String, HighAvailabilityMember>) {
        let gone: Vec<String> = self.members.keys().filter(|n| !wanted.contains_key(*n)).cloned().collect();
        for name in gone {
            self.retire(&name, None).await;
        }
        let mut masters = Vec::new();
        for (name, m) in wanted {
            if m.metadata.deletion_timestamp.is_some() {
                self.retire(&name, Some(&m)).await;
                continue;
            }
            if let Some(p) = &m.spec.proxy {
                masters.extend(p.backends.iter().cloned());
            }
            let cluster = m.labels().get(CLUSTER_LABEL).cloned().unwrap_or_default();
            let uid = m.uid();
            self.apply(name, cluster, m.metadata.generation, uid, m.spec).await;
        }
        masters.sort();
        masters.dedup();
        self.opts.api.set_masters(&masters);
    }

    /// Starts a member, or moves a running one to `spec`, and saves it as last-known-good when it changed.
    /// Watch events that change only the status (the agent's own writes) change nothing here.
    async fn apply(
        &mut self,
        name: String,
        cluster: String,
        generation: Option<i64>,
        uid: Option<String>,
        spec: HighAvailabilityMemberSpec,
    ) {
        if let Some(m) = self.members.get_mut(&name) {
            // Compared in place: every status write of the agent comes back as a watch event.
            let (uid, spec_changed, unchanged) = {
                let c = m.shared.borrow();
                let uid = uid.or_else(|| c.uid.clone());
                let unchanged = c.spec == spec && c.generation == generation && c.cluster == cluster && c.uid == uid;
                (uid, c.spec != spec, unchanged)
            };
            if unchanged {
                return;
            }
            m.shared.send_modify(|s| {
                s.cluster = cluster.clone();
                s.generation = generation;
                s.uid = uid;
                s.spec = spec.clone();
            });
            // A member that is not running starts with the new spec at the next retry.
            if spec_changed && let Some(i) = m.instance.as_mut() {
                match i.update(spec.clone()).await {
                    Ok(plan) => {
                        tracing::info!(member = %name, generation, restart_vrrp = plan.restart_vrrp,
                            restart_proxy = plan.restart_proxy, in_place = plan.commands.len(),
                            backends = plan.backends, "member changed");
                        m.publish(self.opts.parts, None);
                    }
                    Err(e) => {
                        tracing::error!(member = %name, error = %e, "a member change cannot be applied");
                        if let Some(i) = m.instance.take() {
                            i.stop().await;
                        }
                        m.publish(self.opts.parts, Some(&e));
                    }
                }
            }
        } else {
            let (instance, error) = match self.start(&name, &cluster, &spec).await {
                Ok(i) => (Some(i), None),
                Err(e) => {
                    tracing::error!(member = %name, error = %e, "a member cannot start; retrying every 5 s");
                    (None, Some(e))
                }
            };
            let (shared, rx) = watch::channel(Shared {
                spec: spec.clone(),
                cluster: cluster.clone(),
                uid,
                generation,
                observed: None,
                proxy: None,
                commands: None,
                error: None,
                proxy_error: None,
            });
            let reporter = tokio::spawn(report(self.opts.clone(), name.clone(), rx, self.health.clone()));
            let m = Member { instance, shared, reporter };
            m.publish(self.opts.parts, error.as_ref());
            self.members.insert(name.clone(), m);
        }
        if !self.opts.parts.vip {
            return;
        }
        let saved = Saved { name: name.clone(), cluster, generation, spec };
        if let Err(e) = self.store.save(&saved) {
            tracing::warn!(member = %name, error = %e, "cannot save the last-known-good member");
        }
    }

    /// Starts a member's parts. Lease mode's election goes through the node's own API server, like the
    /// heartbeat: a master whose API server has no etcd quorum cannot keep the Lease.
    async fn start(
        &self,
        name: &str,
        cluster: &str,
        spec: &HighAvailabilityMemberSpec,
    ) -> Result<Instance, StartError> {
        let (vrrp_metrics, proxy_metrics) = self.registry.member(name, self.opts.parts);
        let lease = LeaseContext {
            client: self.opts.api.local(),
            namespace: self.opts.namespace.clone(),
            cluster: cluster.to_string(),
            identity: self.opts.node.clone(),
        };
        let parts = self.opts.parts;
        let mut i =
            Instance::start(spec.clone(), parts, vrrp_metrics, proxy_metrics, Some(lease), self.opts.state_dir.clone())
                .await?;
        i.set_discovered(self.discovered.clone());
        tracing::info!(member = %name, "member started");
        Ok(i)
    }

    /// Starts again the members whose start failed (the interface appeared, the port became free).
    async fn retry_failed(&mut self) {
        let waiting: Vec<(String, Shared)> = self
            .members
            .iter()
            .filter(|(_, m)| m.instance.is_none())
            .map(|(n, m)| (n.clone(), m.shared.borrow().clone()))
            .collect();
        for (name, s) in waiting {
            let started = self.start(&name, &s.cluster, &s.spec).await;
            let Some(m) = self.members.get_mut(&name) else { continue };
            match started {
                Ok(i) => {
                    m.instance = Some(i);
                    m.publish(self.opts.parts, None);
                }
                Err(e) => m.publish(self.opts.parts, Some(&e)),
            }
        }
    }

    /// Stops a member that is gone or being deleted, forgets it, and — when the API still has it — removes
    /// the release finalizer to confirm that this node no longer holds its VIP.
    async fn retire(&mut self, name: &str, deleting: Option<&HighAvailabilityMember>) {
        if let Some(m) = self.members.remove(name) {
            m.reporter.abort();
            if let Some(i) = m.instance {
                i.stop().await;
            }
            tracing::info!(member = %name, "member removed; its VIP is released on this node");
        }
        // The store and the finalizer are the VIP part's: it is the one that releases the VIP.
        if !self.opts.parts.vip {
            return;
        }
        if let Err(e) = self.store.remove(name) {
            tracing::warn!(member = %name, error = %e, "cannot forget the last-known-good member");
        }
        let Some(m) = deleting.filter(|m| m.finalizers().iter().any(|f| f == RELEASE_FINALIZER)) else { return };
        let rest: Vec<&String> = m.finalizers().iter().filter(|f| *f != RELEASE_FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": m.resource_version()}});
        let result = api::with_failover(&self.opts.api, REQUEST_TIMEOUT, |c| {
            let patch = patch.clone();
            async move {
                Api::<HighAvailabilityMember>::all(c).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await
            }
        })
        .await;
        match result {
            Ok(_) => tracing::info!(member = %name, "VIP release confirmed to the operator"),
            // A conflict or a failure: the next watch event for the member brings it here again.
            Err(e) => tracing::warn!(member = %name, error = %e, "cannot confirm the VIP release yet"),
        }
    }
}

/// Lists and watches this node's members, falling over between API servers and backing off while none
/// answers. Publishes the whole set after every change.
async fn watch_members(opts: Arc<Options>, wanted: watch::Sender<Wanted>) {
    let selector = format!("{NODE_LABEL}={}", opts.node);
    let mut backoff = Backoff::default();
    loop {
        let (address, client) = opts.api.current();
        let api: Api<HighAvailabilityMember> = Api::all(client);
        let listed = tokio::time::timeout(REQUEST_TIMEOUT, api.list(&ListParams::default().labels(&selector))).await;
        let list = match listed {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(api_server = %address, error = %e, "cannot list this node's members");
                opts.api.failed(&address);
                backoff.wait().await;
                continue;
            }
            Err(_) => {
                tracing::warn!(api_server = %address, "listing this node's members timed out");
                opts.api.failed(&address);
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        let mut set: BTreeMap<String, HighAvailabilityMember> =
            list.items.into_iter().map(|m| (m.name_any(), m)).collect();
        wanted.send_replace(Some(set.clone()));
        // From the list's version; when the watch ends (timeout, 410 Gone, an error) the loop lists again.
        let version = list.metadata.resource_version.unwrap_or_default();
        let params = WatchParams::default().labels(&selector).timeout(290);
        let stream = match api.watch(&params, &version).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(api_server = %address, error = %e, "cannot watch this node's members");
                opts.api.failed(&address);
                backoff.wait().await;
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            match stream.try_next().await {
                Ok(Some(WatchEvent::Added(m) | WatchEvent::Modified(m))) => {
                    set.insert(m.name_any(), m);
                }
                Ok(Some(WatchEvent::Deleted(m))) => {
                    set.remove(&m.name_any());
                }
                Ok(Some(WatchEvent::Bookmark(_))) => continue,
                Ok(Some(WatchEvent::Error(e))) => {
                    tracing::debug!(code = e.code, message = %e.message, "member watch ended; listing again");
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(api_server = %address, error = %e, "the member watch failed; trying the next API server");
                    opts.api.failed(&address);
                    break;
                }
            }
            wanted.send_replace(Some(set.clone()));
        }
    }
}

/// Reads the `default/kubernetes` EndpointSlices, which the API servers maintain themselves, every 10 s:
/// their ready endpoints join the spec's backends.
async fn watch_endpoint_slice(servers: Arc<ApiServers>, out: watch::Sender<Vec<SocketAddr>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let params = ListParams::default().labels("kubernetes.io/service-name=kubernetes");
        let result = api::with_failover(&servers, REQUEST_TIMEOUT, |c| {
            let params = params.clone();
            async move { Api::<EndpointSlice>::namespaced(c, "default").list(&params).await }
        })
        .await;
        match result {
            Ok(list) => {
                let found = slice_backends(&list.items);
                out.send_if_modified(|v| {
                    let changed = *v != found;
                    *v = found;
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the default/kubernetes EndpointSlice"),
        }
    }
}

/// The ready endpoints of the `https` port.
pub fn slice_backends(slices: &[EndpointSlice]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        let port = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("https") || p.name.is_none())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for e in s.endpoints.iter().flatten() {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse() {
                    out.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    async fn wait(&mut self) {
        let ms = (250u64 << self.0.min(5)).min(5000);
        self.0 += 1;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// The fencing state of one member, from its own renewals and its view of the others' heartbeats.
#[derive(Debug)]
pub struct Fencing {
    renew_deadline: Duration,
    started: Instant,
    last_renewal: Option<Instant>,
    /// Each other member: the resourceVersion of its heartbeat Lease and when that last changed here.
    peers: HashMap<String, (Option<String>, Instant)>,
    /// The other members whose last status says they hold the VIP.
    holding: Vec<String>,
}

impl Fencing {
    /// Starts with a grace of one renew deadline: nobody is judged before they could have renewed.
    pub fn new(renew_deadline: Duration, now: Instant) -> Self {
        Self { renew_deadline, started: now, last_renewal: None, peers: HashMap::new(), holding: Vec::new() }
    }

    /// A renewal that started at `at` succeeded; renewals are tried every `period`. The time this member
    /// itself could not renew (beyond one period since its last success) is added to every other member's
    /// deadline: their API servers were likely as slow or as down, and they get the same chance. Without
    /// this, the first member to renew after an outage of the whole control plane found every other Lease
    /// unchanged since before the outage, judged them stale and took the VIP (seen once in a full test run).
    /// A full reset of the others' deadlines after any gap instead (the first version) let renewals that
    /// fail now and then under load postpone fencing for good (also seen in a full test run).
    pub fn renewed(&mut self, at: Instant, period: Duration) {
        if let Some(prev) = self.last_renewal {
            let lost = at.saturating_duration_since(prev).saturating_sub(period);
            for (_, changed) in self.peers.values_mut() {
                *changed = (*changed + lost).min(at).max(*changed);
            }
        }
        self.last_renewal = Some(at);
    }

    /// Whether this member cannot renew: its own deadline — the start of its last successful renewal plus
    /// renewDeadline — has passed.
    pub fn fenced(&self, now: Instant) -> bool {
        now >= self.last_renewal.unwrap_or(self.started) + self.renew_deadline
    }

    /// Records what the API shows of the other members: their heartbeat Leases' resourceVersions (`None`:
    /// no Lease). Members no longer listed are forgotten.
    pub fn observe(&mut self, now: Instant, peers: &[Peer]) {
        self.peers.retain(|name, _| peers.iter().any(|p| p.name == *name));
        self.holding = peers.iter().filter(|p| p.holds_vip).map(|p| p.name.clone()).collect();
        for Peer { name, lease_version: version, .. } in peers {
            match self.peers.get_mut(name) {
                Some((v, changed)) if v != version => {
                    *v = version.clone();
                    *changed = now;
                }
                Some(_) => {}
                None => {
                    self.peers.insert(name.clone(), (version.clone(), now));
                }
            }
        }
    }

    /// The members whose heartbeat had not changed for renewDeadline when this member last renewed: their
    /// own deadlines have passed, so they have stopped counting themselves as renewing, and this member
    /// still could after that. The second half matters when every API server goes down one after the other
    /// within a deadline: the last member to lose its own would otherwise see the first ones go stale while
    /// its own deadline is still running, rise for those few seconds and take the VIP, only to fall back
    /// and hand it on (seen in a soak: n3 → n2 → n1 while every API server was down). Judging by the last
    /// renewal instead of the clock costs fencing at most one retry period.
    pub fn stale(&self, now: Instant) -> Vec<String> {
        let Some(renewed) = self.last_renewal else { return Vec::new() };
        let proof = renewed.min(now);
        let mut out: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, (_, changed))| proof >= *changed + self.renew_deadline)
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }

    /// The boost to apply: `boost` while this member renews and another does not.
    pub fn boost(&self, now: Instant, boost: u8) -> u8 {
        if boost > 0 && !self.fenced(now) && !self.stale(now).is_empty() { boost } else { 0 }
    }

    /// Whether to preempt the VIP holder whatever the preempt mode: this member renews, and the holder does
    /// not. (A stale member that does not hold the VIP raises every renewing member alike and moves nothing.)
    pub fn take_over(&self, now: Instant) -> bool {
        !self.fenced(now) && self.stale(now).iter().any(|s| self.holding.contains(s))
    }
}

/// Another member of the cluster, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The member's name.
    pub name: String,
    /// The resourceVersion of its heartbeat Lease; `None` without one.
    pub lease_version: Option<String>,
    /// Whether its last status says it holds the VIP.
    pub holds_vip: bool,
}

/// One member's reporters, for the parts this process runs.
async fn report(
    opts: Arc<Options>,
    name: String,
    shared: watch::Receiver<Shared>,
    health: watch::Receiver<ControlPlaneHealth>,
) {
    let parts = opts.parts;
    let vip = async {
        if parts.vip {
            report_vip(opts.clone(), name.clone(), shared.clone(), health).await;
        }
    };
    let proxy = async {
        if parts.proxy {
            report_proxy(opts.clone(), name.clone(), shared.clone()).await;
        }
    };
    tokio::join!(vip, proxy);
}

/// The VIP part's reporter: runs its heartbeat (renewals and fencing) in a task of its own, and writes the
/// member's status when it changes and at least every leaseDuration / 3, which the operator reads as a
/// heartbeat too.
async fn report_vip(
    opts: Arc<Options>,
    name: String,
    mut shared: watch::Receiver<Shared>,
    mut health: watch::Receiver<ControlPlaneHealth>,
) {
    // The heartbeat runs on its own: a slow status write (an API server that does not answer) must never
    // delay a renewal, or the others would take this member for fenced.
    let (fenced_tx, mut fenced_rx) = watch::channel(false);
    let _heartbeat =
        AbortOnDropHandle::new(tokio::spawn(heartbeat(opts.clone(), name.clone(), shared.clone(), fenced_tx)));
    let mut last_written: Option<(HighAvailabilityMemberStatus, Instant)> = None;
    let mut observed: Option<watch::Receiver<Observed>> = None;
    loop {
        let s = shared.borrow_and_update().clone();
        // Keep one receiver per driver: a fresh clone would count old changes as new and spin.
        if !matches!((&observed, &s.observed), (Some(a), Some(b)) if a.same_channel(b)) {
            observed = s.observed.clone();
        }
        let lease_duration: Duration = s.spec.election.lease_duration.into();
        let refresh = (lease_duration / 3).max(Duration::from_secs(1));
        let now_observed = observed.as_mut().map(|o| o.borrow_and_update().clone());
        let fenced = *fenced_rx.borrow_and_update();
        let mut status = status_of(&s, now_observed.as_ref(), fenced);
        let probed = health.borrow_and_update().clone();
        status.control_plane = (probed != ControlPlaneHealth::default()).then_some(probed);
        let due =
            last_written.as_ref().is_none_or(|(last, at)| !same_but_time(last, &status) || at.elapsed() >= refresh);
        if due {
            match write_status(&opts, &name, MANAGER, json!(status)).await {
                Ok(()) => last_written = Some((status, Instant::now())),
                Err(e) => tracing::debug!(member = %name, error = %e, "cannot write the member status"),
            }
        }
        let next =
            last_written.as_ref().map_or_else(|| Instant::now() + Duration::from_secs(1), |(_, at)| *at + refresh);
        // Wake early when the driver, fencing or the supervisor has news, so that status follows at once.
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            Ok(()) = shared.changed() => {}
            Ok(()) = fenced_rx.changed() => {}
            Ok(()) = health.changed() => {}
            Ok(()) = async {
                match observed.as_mut() {
                    Some(o) => o.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                // Coalesce a burst (a takeover is several changes) into one write.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Renews the member's heartbeat Lease every retryPeriod through the node's own API server, reads the others'
/// heartbeats, and tells the driver the quorum-fencing boost; publishes whether this member is fenced.
async fn heartbeat(opts: Arc<Options>, name: String, shared: watch::Receiver<Shared>, fenced_tx: watch::Sender<bool>) {
    let mut f = Fencing::new(shared.borrow().spec.election.renew_deadline.into(), Instant::now());
    loop {
        let s = shared.borrow().clone();
        let election = &s.spec.election;
        let retry: Duration = election.retry_period.into();
        f.renew_deadline = election.renew_deadline.into();
        let started = Instant::now();
        match renew_heartbeat(&opts, &name, &s, election.lease_duration.into(), retry).await {
            Ok(()) => f.renewed(started, retry),
            Err(e) => tracing::debug!(member = %name, error = %e, "heartbeat renewal failed"),
        }
        if let Ok(peers) = peer_heartbeats(&opts, &name, &s.cluster, retry).await {
            f.observe(Instant::now(), &peers);
        }
        let now = Instant::now();
        let on = election.quorum_fencing && election.mode == ElectionMode::Vrrp;
        let boost = if on { f.boost(now, u8::try_from(s.spec.fencing_boost).unwrap_or(0)) } else { 0 };
        let take_over = on && boost > 0 && f.take_over(now);
        // Sent every round: a VRRP driver restarted in place starts without the boost.
        if let Some(c) = &s.commands {
            let _ = c.send(crate::driver::Command::Fencing { boost, take_over });
        }
        let fenced = on && f.fenced(now);
        if fenced_tx.send_if_modified(|v| std::mem::replace(v, fenced) != fenced) {
            if fenced {
                tracing::warn!(member = %name, "cannot renew the heartbeat through the local API server: fenced");
            } else {
                tracing::info!(member = %name, "heartbeat renewed again: no longer fenced");
            }
        }
        if boost > 0 {
            tracing::debug!(member = %name, boost, stale = ?f.stale(now), "raised above members that cannot renew");
        }
        tokio::time::sleep_until(started + retry).await;
    }
}

/// The proxy part's reporter: writes proxyBackends and proxyError (or clears them once the member has no
/// proxy) under its own field manager, when the backends' health or the error changes and at least every
/// leaseDuration / 3, with proxyHeartbeatTime: a proxy container that is down stops refreshing it, and the
/// operator reports the proxy as not reporting instead of trusting its last word.
async fn report_proxy(opts: Arc<Options>, name: String, mut shared: watch::Receiver<Shared>) {
    // (what was written, without the time and the connection counts; when)
    let mut last: Option<(serde_json::Value, Instant)> = None;
    loop {
        let s = shared.borrow_and_update().clone();
        let lease_duration: Duration = s.spec.election.lease_duration.into();
        let refresh = (lease_duration / 3).max(Duration::from_secs(1));
        let status = proxy_status_of(&s);
        let key = status.as_ref().map_or(serde_json::Value::Null, |st| {
            json!({"error": st.proxy_error, "backends": st.proxy_backends.iter()
                .map(|b| (b.address.clone(), b.healthy)).collect::<Vec<_>>()})
        });
        let due = match &last {
            None => true,
            Some((k, at)) => *k != key || (status.is_some() && at.elapsed() >= refresh),
        };
        if due {
            // No proxy: an empty apply, which removes the fields this manager wrote before.
            let body = match &status {
                Some(st) => json!({
                    "proxyBackends": st.proxy_backends,
                    "proxyError": st.proxy_error,
                    "proxyHeartbeatTime": Time(Timestamp::now()),
                }),
                None => json!({}),
            };
            match write_status(&opts, &name, PROXY_MANAGER, body).await {
                Ok(()) => last = Some((key, Instant::now())),
                Err(e) => tracing::debug!(member = %name, error = %e, "cannot write the member's proxy status"),
            }
        }
        // Backends change health without telling anyone: look once a second (in memory, no API call).
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            Ok(()) = shared.changed() => {}
        }
    }
}

/// What the proxy part reports: `None` when the member has no proxy and none failed to start.
fn proxy_status_of(s: &Shared) -> Option<HighAvailabilityMemberStatus> {
    let enabled = s.spec.proxy.as_ref().is_some_and(|p| p.enabled);
    if !enabled && s.proxy_error.is_none() {
        return None;
    }
    let proxy_backends = s
        .proxy
        .as_ref()
        .map(|p| {
            p.backends()
                .into_iter()
                .map(|b| BackendStatus {
                    address: b.addr.to_string(),
                    healthy: b.healthy != Some(false),
                    active_connections: i64::try_from(b.active).unwrap_or(i64::MAX),
                    since: None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(HighAvailabilityMemberStatus { proxy_backends, proxy_error: s.proxy_error.clone(), ..Default::default() })
}

fn same_but_time(a: &HighAvailabilityMemberStatus, b: &HighAvailabilityMemberStatus) -> bool {
    let strip = |s: &HighAvailabilityMemberStatus| HighAvailabilityMemberStatus { heartbeat_time: None, ..s.clone() };
    strip(a) == strip(b)
}

async fn renew_heartbeat(
    opts: &Options,
    name: &str,
    s: &Shared,
    lease_duration: Duration,
    timeout: Duration,
) -> Result<(), String> {
    let mut meta = json!({
        "name": heartbeat_lease(name),
        "namespace": opts.namespace,
        "labels": {CLUSTER_LABEL: s.cluster, NODE_LABEL: opts.node},
    });
    if let Some(uid) = &s.uid {
        meta["ownerReferences"] = json!([{
            "apiVersion": HighAvailabilityMember::api_version(&()),
            "kind": HighAvailabilityMember::kind(&()),
            "name": name,
            "uid": uid,
        }]);
    }
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": opts.node,
            "leaseDurationSeconds": lease_duration.as_secs().max(1),
            "renewTime": MicroTime(Timestamp::now()),
        },
    });
    // Through the node's own API server only: a write there needs its etcd quorum, which is what is judged.
    let api: Api<Lease> = Api::namespaced(opts.api.local(), &opts.namespace);
    let params = PatchParams::apply(MANAGER).force();
    match tokio::time::timeout(timeout, api.patch(&heartbeat_lease(name), &params, &Patch::Apply(&lease))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The other members of the cluster with the resourceVersions of their heartbeat Leases, read through the
/// node's own API server.
async fn peer_heartbeats(opts: &Options, name: &str, cluster: &str, timeout: Duration) -> Result<Vec<Peer>, String> {
    let local = opts.api.local();
    let selector = format!("{CLUSTER_LABEL}={cluster}");
    let params = ListParams::default().labels(&selector);
    let members_api = Api::<HighAvailabilityMember>::all(local.clone());
    let leases_api = Api::<Lease>::namespaced(local, &opts.namespace);
    let members = members_api.list(&params);
    let leases = leases_api.list_metadata(&params);
    let (members, leases) = tokio::time::timeout(timeout, async { tokio::try_join!(members, leases) })
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    let versions: HashMap<String, Option<String>> =
        leases.items.iter().map(|l| (l.name_any(), l.resource_version())).collect();
    Ok(members
        .items
        .iter()
        .filter(|m| m.name_any() != name)
        .map(|m| Peer {
            lease_version: versions.get(&heartbeat_lease(&m.name_any())).cloned().flatten(),
            holds_vip: m.status.as_ref().is_some_and(|s| s.holds_vip),
            name: m.name_any(),
        })
        .collect())
}

fn state_of(s: kubeha_vrrp::router::State) -> VrrpState {
    use kubeha_vrrp::router::State;
    match s {
        State::Initialize => VrrpState::Initialize,
        State::Backup => VrrpState::Backup,
        State::Master => VrrpState::Master,
        State::Fault => VrrpState::Fault,
    }
}

fn time(t: SystemTime) -> Time {
    Time(Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now()))
}

/// The member status from what the driver, the proxy and fencing observe.
fn status_of(s: &Shared, observed: Option<&Observed>, fenced: bool) -> HighAvailabilityMemberStatus {
    let mut st = HighAvailabilityMemberStatus {
        observed_generation: s.generation,
        agent_version: Some(env!("CARGO_PKG_VERSION").into()),
        heartbeat_time: Some(Time(Timestamp::now())),
        error: s.error.clone(),
        state: VrrpState::Initialize,
        ..HighAvailabilityMemberStatus::default()
    };
    if let Some(o) = observed {
        st.state = state_of(o.state);
        st.holds_vip = o.holds_vip;
        st.effective_priority = Some(i32::from(o.effective_priority));
        st.master_seen = o.master_seen.map(|a| a.to_string());
        st.health = o
            .verdicts
            .iter()
            .map(|v| CheckResult {
                name: v.name.clone(),
                healthy: v.healthy != Some(false),
                message: (!v.detail.is_empty()).then(|| v.detail.clone()),
                since: v.since.map(time),
            })
            .collect();
        st.penalties = o
            .verdicts
            .iter()
            .filter(|v| v.healthy == Some(false))
            .map(|v| Penalty {
                source: v.name.clone(),
                amount: -v.weight,
                reason: if v.weight == 0 {
                    format!("check {} fails ({}): must not hold the VIP", v.name, v.detail)
                } else {
                    format!("check {} fails: {}", v.name, v.detail)
                },
            })
            .collect();
        st.last_transition = o.last_transition.as_ref().map(|t| Transition {
            from: state_of(t.from),
            to: state_of(t.to),
            at: time(t.at),
            reason: t.reason.clone(),
        });
    } else if s.spec.vip.is_none() && s.error.is_none() {
        // A proxy-only member has no VRRP state; it runs.
        st.state = VrrpState::Backup;
    }
    if fenced {
        st.penalties.push(Penalty {
            source: "QuorumFencing".into(),
            amount: s.spec.fencing_boost,
            reason: "cannot renew the heartbeat Lease through this node's API server (no etcd quorum, or cut off): \
                     members that can are raised above this one"
                .into(),
        });
    }
    st
}

/// Applies `status` (the fields of one part) to the member's status under `manager`.
async fn write_status(
    opts: &Options,
    name: &str,
    manager: &'static str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": HighAvailabilityMember::api_version(&()),
        "kind": HighAvailabilityMember::kind(&()),
        "status": status,
    });
    api::with_failover(&opts.api, REQUEST_TIMEOUT, |c| {
        let patch = patch.clone();
        async move {
            Api::<HighAvailabilityMember>::all(c)
                .patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch))
                .await
        }
    })
    .await
    .map(drop)
}

/// The agent's metrics registry: one set of VRRP and proxy metrics per member, labelled with its name and
/// kept for the life of the process, so that a member restarted in place keeps counting.
#[derive(Clone, Debug)]
pub struct MemberMetrics {
    registry: kubeha_common::telemetry::SharedRegistry,
    made: Arc<std::sync::Mutex<HashMap<String, (VrrpMetrics, ProxyMetrics)>>>,
}

impl MemberMetrics {
    /// Adds member metrics to `registry` as members come.
    pub fn new(registry: kubeha_common::telemetry::SharedRegistry) -> Self {
        Self { registry, made: Arc::default() }
    }

    /// The metrics of `member`, registered on first use: those of the `parts` this process runs (the
    /// other part's are counted nowhere, so that two containers never export the same series).
    pub fn member(&self, member: &str, parts: Parts) -> (VrrpMetrics, ProxyMetrics) {
        let mut made = self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        made.entry(member.to_string())
            .or_insert_with(|| {
                let mut registry = self.registry.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                let sub: &mut Registry =
                    registry.sub_registry_with_label((std::borrow::Cow::Borrowed("member"), member.to_string().into()));
                let mut unused = Registry::default();
                let vrrp = VrrpMetrics::register(if parts.vip { &mut *sub } else { &mut unused });
                let proxy = ProxyMetrics::register(if parts.proxy { &mut *sub } else { &mut unused });
                (vrrp, proxy)
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn a_member_that_stops_renewing_is_fenced_on_its_own_deadline() {
        let s = Instant::now();
        let mut f = Fencing::new(Duration::from_secs(10), s);
        assert!(!f.fenced(t(s, 9)), "grace of one deadline after start");
        assert!(f.fenced(t(s, 10)));
        f.renewed(t(s, 8), Duration::from_secs(2));
        assert!(!f.fenced(t(s, 17)));
        assert!(f.fenced(t(s, 18)), "last renewal start + renewDeadline");
    }

    #[test]
    fn renewing_members_are_boosted_only_while_another_member_is_stale() {
        let s = Instant::now();
        let mut f = Fencing::new(Duration::from_secs(10), s);
        let peers = |a: &str, b: &str| {
            vec![
                Peer { name: "c-n2".into(), lease_version: Some(a.into()), holds_vip: false },
                Peer { name: "c-n3".into(), lease_version: Some(b.into()), holds_vip: true },
            ]
        };
        for i in 0..6 {
            f.renewed(t(s, i * 2), Duration::from_secs(2));
            f.observe(t(s, i * 2), &peers(&format!("{i}"), &format!("{i}")));
        }
        assert_eq!(f.boost(t(s, 11), 21), 0, "everyone renews");
        // n3's Lease stops changing at t=10.
        for i in 6..12 {
            f.renewed(t(s, i * 2), Duration::from_secs(2));
            f.observe(t(s, i * 2), &peers(&format!("{i}"), "5"));
        }
        assert_eq!(f.stale(t(s, 19)), Vec::<String>::new(), "within n3's renew deadline");
        assert_eq!(f.stale(t(s, 20)), vec!["c-n3".to_string()]);
        assert_eq!(f.boost(t(s, 22), 21), 21, "this member renews, n3 does not");
        assert!(f.take_over(t(s, 22)), "and n3 holds the VIP: preempt it");
        // This member stops renewing too (the whole control plane is down): nobody is boosted.
        assert_eq!(f.boost(t(s, 32), 21), 0, "its own deadline passed at 22 + 10");
        assert_eq!(f.boost(t(s, 22), 0), 0, "no boost configured");
    }

    /// Fencing that renewed at `s` and saw n3, holding the VIP, with its Lease at version 1.
    fn renewing_with_n3(renew_deadline: u64, retry: Duration) -> (Instant, Fencing) {
        let s = Instant::now();
        let mut f = Fencing::new(Duration::from_secs(renew_deadline), s);
        f.renewed(s, retry);
        f.observe(s, &n3_at("1"));
        (s, f)
    }

    fn n3_at(version: &str) -> Vec<Peer> {
        vec![Peer { name: "c-n3".into(), lease_version: Some(version.into()), holds_vip: true }]
    }

    #[test]
    fn after_an_outage_of_every_api_server_the_others_get_a_full_deadline_to_renew() {
        let retry = Duration::from_secs(2);
        let (s, mut f) = renewing_with_n3(10, retry);
        let peer = n3_at;
        // Nobody renews from t=1 to t=30. This member is back first, at t=30; n3's Lease is as it was.
        f.renewed(t(s, 30), retry);
        f.observe(t(s, 30), &peer("1"));
        assert!(f.stale(t(s, 31)).is_empty(), "n3 has not had its chance to renew yet");
        assert!(!f.take_over(t(s, 31)));
        // n3 does not renew within a deadline of this member being back (at 28, with the 28 s this member
        // lost): stale once this member has renewed after 38.
        for at in [32, 34, 36] {
            f.renewed(t(s, at), retry);
        }
        f.observe(t(s, 38), &peer("1"));
        assert!(f.stale(t(s, 38)).is_empty(), "this member has not renewed since n3's deadline");
        f.renewed(t(s, 38), retry);
        f.observe(t(s, 38), &peer("1"));
        assert_eq!(f.stale(t(s, 38)), vec!["c-n3".to_string()]);
        assert!(f.take_over(t(s, 38)));
    }

    #[test]
    fn a_renewal_that_fails_now_and_then_postpones_fencing_only_by_the_time_lost() {
        let retry = Duration::from_secs(1);
        let (s, mut f) = renewing_with_n3(4, retry);
        let peer = n3_at;
        // n3 stops renewing at 0. This member renews at 1 and 2, fails once, and is back at 4 (2 s lost: 1 s
        // beyond a period): n3 gets until 0 + 1 + 4 = 5, not a new deadline from 4.
        f.renewed(t(s, 1), retry);
        f.renewed(t(s, 2), retry);
        f.renewed(t(s, 4), retry);
        f.observe(t(s, 4), &peer("1"));
        assert!(f.stale(t(s, 4)).is_empty());
        f.renewed(t(s, 5), retry);
        f.observe(t(s, 5), &peer("1"));
        assert_eq!(f.stale(t(s, 5)), vec!["c-n3".to_string()], "stale one lost second after its deadline");
    }

    #[test]
    fn members_that_lose_their_api_servers_one_after_the_other_within_a_deadline_do_not_rise() {
        // Every API server stops, n3's (holding the VIP) first at 0, this member's at 4: this member's last
        // renewal was at 4, so n3's deadline (0 + 10) passes when this member can no longer prove anything.
        let retry = Duration::from_secs(2);
        let (s, mut f) = renewing_with_n3(10, retry);
        for at in [2, 4] {
            f.renewed(t(s, at), retry);
            f.observe(t(s, at), &n3_at("1"));
        }
        for at in 10..=15 {
            assert!(f.stale(t(s, at)).is_empty(), "at {at} s");
            assert_eq!(f.boost(t(s, at), 21), 0, "at {at} s");
            assert!(!f.take_over(t(s, at)), "at {at} s");
        }
        assert!(f.fenced(t(s, 14)), "and from 14 on this member is fenced itself");
        // Had this member kept renewing, n3 would be stale at its first renewal from 10 on.
        let (s, mut f) = renewing_with_n3(10, retry);
        for at in (2..=10).step_by(2) {
            f.renewed(t(s, at), retry);
            f.observe(t(s, at), &n3_at("1"));
        }
        assert_eq!(f.boost(t(s, 10), 21), 21);
        assert!(f.take_over(t(s, 10)));
    }

    #[test]
    fn a_member_without_a_lease_turns_stale_after_the_grace_and_removed_members_are_forgotten() {
        let s = Instant::now();
        let mut f = Fencing::new(Duration::from_secs(10), s);
        f.observe(s, &[Peer { name: "c-n2".into(), lease_version: None, holds_vip: false }]);
        for at in (0..=10).step_by(2) {
            f.renewed(t(s, at), Duration::from_secs(2));
        }
        assert!(f.stale(t(s, 9)).is_empty());
        assert_eq!(f.stale(t(s, 10)), vec!["c-n2".to_string()]);
        assert!(!f.take_over(t(s, 10)), "a stale member without the VIP is not preempted");
        f.observe(t(s, 11), &[]);
        assert!(f.stale(t(s, 30)).is_empty());
    }

    #[test]
    fn ready_https_endpoints_of_the_kubernetes_slice_become_backends() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "addressType": "IPv4",
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["198.51.100.12"], "conditions": {"ready": true}},
                {"addresses": ["198.51.100.11"]},
                {"addresses": ["198.51.100.13"], "conditions": {"ready": false}},
            ],
        }))
        .unwrap();
        let got = slice_backends(&[slice]);
        assert_eq!(got, vec!["198.51.100.11:6443".parse().unwrap(), "198.51.100.12:6443".parse().unwrap()]);
    }
}
