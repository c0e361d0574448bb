//! The heartbeat: renews each member's Lease through this node's own API server every retryPeriod, reads
//! the other members' heartbeats, and carries [`Fencing`]'s verdicts to the VRRP driver and the reporter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource as _, ResourceExt as _};
use kubeha_crds::{ElectionMode, HighAvailabilityMember};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::fencing::{Fencing, Peer};
use super::supervisor::Shared;
use super::{CLUSTER_LABEL, MANAGER, NODE_LABEL, Options, heartbeat_lease};

/// Renews the member's heartbeat Lease every retryPeriod through the node's own API server, reads the others'
/// heartbeats, and tells the driver the quorum-fencing boost; publishes whether this member is fenced.
pub(super) async fn heartbeat(
    opts: Arc<Options>,
    name: String,
    shared: watch::Receiver<Shared>,
    fenced_tx: watch::Sender<bool>,
) {
    let mut f = Fencing::new(shared.borrow().spec.election.renew_deadline.into(), Instant::now());
    loop {
        let s = shared.borrow().clone();
        let election = &s.spec.election;
        let retry: Duration = election.retry_period.into();
        f.set_renew_deadline(election.renew_deadline.into());
        let started = Instant::now();
        match renew_heartbeat(&opts, &name, &s, election.lease_duration.into(), retry).await {
            Ok(()) => {
                f.renewed(started, retry);
                if opts.api.home() {
                    tracing::info!(member = %name, "the node's own API server answers again: back to it for every call");
                }
            }
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
