//! The supervisor: starts, changes and retires this node's members as the API (or, until it answers, the
//! last-known-good store) wants them, and tells each member's reporters what runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kubeha_crds::{ControlPlaneHealth, HighAvailabilityMember, HighAvailabilityMemberSpec};
use serde_json::json;
use tokio::sync::watch;

use super::metrics::MemberMetrics;
use super::report::report;
use super::{CLUSTER_LABEL, Options, RELEASE_FINALIZER, REQUEST_TIMEOUT};
use crate::api;
use crate::driver::Observed;
use crate::instance::{Instance, Parts, StartError};
use crate::leasemode::LeaseContext;
use crate::state::{Saved, Store};

/// The members of this node as the API has them; `None` until the first list succeeds.
pub(super) type Wanted = Option<BTreeMap<String, HighAvailabilityMember>>;

/// One member on this node: what runs, and what its reporter is told (the spec and where it came from live
/// there, in one place).
pub(super) struct Member {
    pub(super) instance: Option<Instance>,
    pub(super) shared: watch::Sender<Shared>,
    pub(super) reporter: tokio::task::JoinHandle<()>,
}

impl Member {
    /// Tells the reporters about the running parts (or why there are none). A proxy's error is the proxy
    /// part's to report; in one process that runs both, it stopped the VIP part too, which says so.
    pub(super) fn publish(&self, parts: Parts, error: Option<&StartError>) {
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
pub(super) struct Shared {
    pub(super) spec: HighAvailabilityMemberSpec,
    pub(super) cluster: String,
    pub(super) uid: Option<String>,
    pub(super) generation: Option<i64>,
    pub(super) observed: Option<watch::Receiver<Observed>>,
    pub(super) proxy: Option<crate::proxy::ProxyHandle>,
    pub(super) commands: Option<tokio::sync::mpsc::UnboundedSender<crate::driver::Command>>,
    pub(super) error: Option<String>,
    pub(super) proxy_error: Option<String>,
}

pub(super) struct Supervisor {
    pub(super) opts: Arc<Options>,
    pub(super) store: Store,
    pub(super) members: BTreeMap<String, Member>,
    pub(super) registry: MemberMetrics,
    pub(super) discovered: Vec<SocketAddr>,
    pub(super) health: watch::Receiver<ControlPlaneHealth>,
    /// Where etcd runs, as this node's members say: what the component probes look at.
    pub(super) etcd: watch::Sender<kubeha_crds::EtcdSpec>,
}

impl Supervisor {
    /// Brings the running members to what the API wants.
    pub(super) async fn reconcile(&mut self, wanted: BTreeMap<String, HighAvailabilityMember>) {
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
        self.publish_etcd();
    }

    /// Tells the component probes (the VIP part's) where etcd runs: external when a member of this node says
    /// so (the first by name, if two clusters on one node disagreed), stacked otherwise.
    pub(super) fn publish_etcd(&self) {
        // Only the VIP part probes the control plane; the proxy container has nothing to tell.
        if !self.opts.parts.vip {
            return;
        }
        let external = self
            .members
            .values()
            .map(|m| m.shared.borrow().spec.etcd.clone())
            .find(|e| e.topology == kubeha_crds::EtcdTopology::External)
            .unwrap_or_default();
        let (topology, members) = (external.topology, external.members.len());
        if self.etcd.send_if_modified(|v| {
            let changed = *v != external;
            *v = external;
            changed
        }) {
            tracing::info!(?topology, members, "etcd to probe changed");
        }
    }

    /// Starts a member, or moves a running one to `spec`, and saves it as last-known-good when it changed.
    /// Watch events that change only the status (the agent's own writes) change nothing here.
    pub(super) async fn apply(
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
    pub(super) async fn start(
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
    pub(super) async fn retry_failed(&mut self) {
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
    pub(super) async fn retire(&mut self, name: &str, deleting: Option<&HighAvailabilityMember>) {
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
