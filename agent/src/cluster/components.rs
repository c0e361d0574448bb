//! This node's control-plane components, probed over loopback for the member status's control-plane view,
//! and the members of an external etcd, probed over the network (their metrics listeners: no credential).

use std::time::Duration;

use kubeha_crds::{ComponentHealth, ControlPlaneHealth, EtcdMemberHealth, EtcdSpec, EtcdTopology};
use tokio::sync::watch;

use super::ComponentUrls;

/// Probes the node's control-plane components every 2 s. With an external etcd (`etcd`, from this node's
/// members) the node has no etcd of its own to probe: every listed member is probed instead.
pub(super) async fn probe_components(
    urls: ComponentUrls,
    etcd: watch::Receiver<EtcdSpec>,
    out: watch::Sender<ControlPlaneHealth>,
) {
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
        let spec = etcd.borrow().clone();
        let external = spec.topology == EtcdTopology::External;
        let local_etcd = if external { String::new() } else { urls.etcd.clone() };
        let members = spec.members.iter().filter(|_| external).map(|m| {
            let probe = one(m.health_url.clone());
            async move {
                let h = probe.await.unwrap_or_default();
                EtcdMemberHealth { name: m.name.clone(), healthy: h.healthy, message: h.message }
            }
        });
        let (apiserver, etcd, controller_manager, scheduler, etcd_members) = tokio::join!(
            one(urls.apiserver.clone()),
            one(local_etcd),
            one(urls.controller_manager.clone()),
            one(urls.scheduler.clone()),
            futures::future::join_all(members)
        );
        let next = ControlPlaneHealth { apiserver, etcd, controller_manager, scheduler, etcd_members };
        // Only a change of health wakes the reporters, not a new message for the same state.
        out.send_if_modified(|v| {
            let same = |a: &Option<ComponentHealth>, b: &Option<ComponentHealth>| {
                a.as_ref().map(|c| c.healthy) == b.as_ref().map(|c| c.healthy)
            };
            let changed = !(same(&v.apiserver, &next.apiserver)
                && same(&v.etcd, &next.etcd)
                && same(&v.controller_manager, &next.controller_manager)
                && same(&v.scheduler, &next.scheduler)
                && v.etcd_members
                    .iter()
                    .map(|m| (&m.name, m.healthy))
                    .eq(next.etcd_members.iter().map(|m| (&m.name, m.healthy))));
            *v = next;
            changed
        });
    }
}
