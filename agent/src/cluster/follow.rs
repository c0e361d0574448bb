//! What the agent follows in the API: this node's members, and the API servers' own EndpointSlice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use kubeha_crds::HighAvailabilityMember;
use tokio::sync::watch;

use super::supervisor::Wanted;
use super::{NODE_LABEL, Options, REQUEST_TIMEOUT};
use crate::api::{self, ApiServers};

/// Follows this node's members with kube-runtime's watcher (its relist on a lost resourceVersion, its
/// bookmarks, its re-watch when a watch times out) on one API server at a time: when that server fails, the
/// next one is tried after a backoff, with a fresh watcher that lists again. Publishes the whole set once
/// the (re)list is complete and after every change; a relist that does not complete publishes nothing, so
/// the supervisor never retires members because a list was cut short.
pub(super) async fn watch_members(opts: Arc<Options>, wanted: watch::Sender<Wanted>) {
    let selector = format!("{NODE_LABEL}={}", opts.node);
    let mut backoff = Backoff::default();
    loop {
        let (address, client) = opts.api.current();
        let api: Api<HighAvailabilityMember> = Api::all(client);
        let config = watcher::Config::default().labels(&selector).timeout(290);
        let mut stream = std::pin::pin!(watcher(api, config));
        // The current set, and the one a (re)list is building.
        let mut set: Option<BTreeMap<String, HighAvailabilityMember>> = None;
        let mut listing: BTreeMap<String, HighAvailabilityMember> = BTreeMap::new();
        let mut in_list = true;
        loop {
            // A list (or its next page) must answer within the request timeout, as any request here; a
            // watch may rightly stay quiet.
            let next = if in_list {
                match tokio::time::timeout(REQUEST_TIMEOUT, stream.try_next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::warn!(api_server = %address, "listing this node's members timed out");
                        opts.api.failed(&address);
                        break;
                    }
                }
            } else {
                stream.try_next().await
            };
            match next {
                Ok(Some(watcher::Event::Init)) => {
                    in_list = true;
                    listing.clear();
                }
                Ok(Some(watcher::Event::InitApply(m))) => {
                    listing.insert(m.name_any(), m);
                }
                Ok(Some(watcher::Event::InitDone)) => {
                    in_list = false;
                    backoff.reset();
                    set = Some(std::mem::take(&mut listing));
                    wanted.send_replace(set.clone());
                }
                Ok(Some(watcher::Event::Apply(m))) => {
                    if let Some(set) = set.as_mut() {
                        set.insert(m.name_any(), m);
                        wanted.send_replace(Some(set.clone()));
                    }
                }
                Ok(Some(watcher::Event::Delete(m))) => {
                    if let Some(set) = set.as_mut() {
                        set.remove(&m.name_any());
                        wanted.send_replace(Some(set.clone()));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(api_server = %address, error = %e,
                        "the member watch failed; trying the next API server");
                    opts.api.failed(&address);
                    break;
                }
            }
        }
        backoff.wait().await;
    }
}

/// Reads the `default/kubernetes` EndpointSlices, which the API servers maintain themselves, every 10 s:
/// their ready endpoints join the spec's backends.
pub(super) async fn watch_endpoint_slice(servers: Arc<ApiServers>, out: watch::Sender<Vec<SocketAddr>>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
