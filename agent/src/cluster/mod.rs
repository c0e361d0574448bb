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
//!
//! The parts, one file each: [`supervisor`] starts, changes and retires members as the API wants them;
//! [`follow`] follows this node's members and the API servers' own EndpointSlice; [`components`] probes this
//! node's control plane; [`heartbeat`] renews the heartbeat Lease and feeds [`fencing`], the pure quorum-
//! fencing rules; [`report`] writes each part's member status; [`metrics`] keeps a metric set per member.

mod components;
pub mod fencing;
mod follow;
mod heartbeat;
mod metrics;
mod report;
mod supervisor;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kubeha_crds::ControlPlaneHealth;
use tokio::sync::watch;

use crate::api::ApiServers;
use crate::instance::Parts;
use crate::state::Store;

pub use fencing::{Fencing, Peer};
pub use follow::slice_backends;
pub use kubeha_crds::contract::{
    AGENT_MANAGER as MANAGER, AGENT_PROXY_MANAGER as PROXY_MANAGER, CLUSTER_LABEL, NODE_LABEL, RELEASE_FINALIZER,
    heartbeat_lease,
};
pub use metrics::MemberMetrics;

use components::probe_components;
use follow::{watch_endpoint_slice, watch_members};

use supervisor::{Supervisor, Wanted};

/// How long one API request may take before the next server is tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
        etcd: watch::channel(kubeha_crds::EtcdSpec::default()).0,
    };
    let saved = sup.store.load(&opts.node)?;
    if !saved.is_empty() {
        tracing::info!(members = saved.len(), "starting from the last-known-good members until the API answers");
    }
    for s in saved {
        sup.apply(s.name.clone(), s.cluster, s.generation, None, s.spec).await;
    }
    sup.publish_etcd();

    let (wanted_tx, mut wanted_rx) = watch::channel::<Wanted>(None);
    let watcher = tokio::spawn(watch_members(opts.clone(), wanted_tx));
    let (health_tx, health_rx) = watch::channel(ControlPlaneHealth::default());
    let probes = tokio::spawn({
        let urls = opts.components.clone();
        let etcd = sup.etcd.subscribe();
        // The control-plane view is part of the VIP part's status.
        let vip = opts.parts.vip;
        async move {
            if vip {
                probe_components(urls, etcd, health_tx).await;
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
