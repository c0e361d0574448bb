//! The member status: each part writes its own fields by server-side apply under its own field manager —
//! the VIP part everything it observes (and the heartbeat through [`super::heartbeat`]), the proxy part its
//! backends — when they change and at least every leaseDuration / 3.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource as _;
use kube::api::{Api, Patch, PatchParams};
use kubeha_crds::{
    BackendStatus, CheckResult, ControlPlaneHealth, HighAvailabilityMember, HighAvailabilityMemberStatus, Penalty,
    StrangerSeen, Transition, VrrpState,
};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::heartbeat::heartbeat;
use super::supervisor::Shared;
use super::{MANAGER, Options, PROXY_MANAGER, REQUEST_TIMEOUT};
use crate::api;
use crate::driver::Observed;

/// One member's reporters, for the parts this process runs.
pub(super) async fn report(
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

/// The proxy part's reporter: writes proxyBackends and proxyError (or clears them once the member has no
/// proxy) under its own field manager, when the backends' health or the error changes and at least every
/// leaseDuration / 3, with proxyHeartbeatTime: a proxy container that is down stops refreshing it, and the
/// operator reports the proxy as not reporting instead of trusting its last word.
async fn report_proxy(opts: Arc<Options>, name: String, mut shared: watch::Receiver<Shared>) {
    // (what was written, without the connection counts, which change all the time; when)
    let mut last: Option<(Option<HighAvailabilityMemberStatus>, Instant)> = None;
    loop {
        let s = shared.borrow_and_update().clone();
        let lease_duration: Duration = s.spec.election.lease_duration.into();
        let refresh = (lease_duration / 3).max(Duration::from_secs(1));
        let status = proxy_status_of(&s);
        let key = status.clone().map(|mut st| {
            st.proxy_backends.iter_mut().for_each(|b| b.active_connections = 0);
            st
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
        st.interface = o.interface.clone();
        st.error = st.error.take().or_else(|| o.vip_in_use.clone());
        st.advert_source = o.advert_source.map(|a| a.to_string());
        st.strangers = o
            .strangers
            .iter()
            .map(|s| StrangerSeen {
                address: s.from.to_string(),
                announced: s.announced.iter().map(ToString::to_string).collect(),
                priority: i32::from(s.priority),
                elected: s.elected,
                since: time(s.since),
            })
            .collect();
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
