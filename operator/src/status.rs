//! The cluster's status from its members' statuses: who holds the VIP, conditions people can read, the
//! latest failover, and the Events worth telling. Pure: previous status and members in, new status out.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kubeha_crds::{
    ControlPlaneView, EtcdMemberView, EtcdQuorum, EtcdTopology, Failover, HighAvailabilityCluster,
    HighAvailabilityClusterStatus, HighAvailabilityMember, MasterHealth, MemberSummary, StrangerPolicy, StrangerSeen,
    VrrpState, fault_tolerance,
};

use crate::conflict::Conflict;
use crate::desired::Problem;
use crate::vipcheck::VipMistake;

/// A condition of the cluster's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The API is served on the VIP: it is held, proxied (when the proxy is on), and in conflict with nothing.
    Ready,
    /// The VIP may be handed out: it is no node's own address and lies on the masters' network.
    VipAccepted,
    /// Exactly one member holds the VIP.
    VipAvailable,
    /// The active member proxies to at least one healthy API server.
    ProxyAvailable,
    /// A master cannot do its part.
    Degraded,
    /// One more failure would lose the majority, or there is no margin at all.
    QuorumAtRisk,
    /// Another cluster claims this VIP or VRID on the segment.
    Conflict,
}

impl ConditionType {
    /// Every type, in the order `kubectl describe` shows them.
    pub const ALL: [Self; 7] = [
        Self::Ready,
        Self::VipAccepted,
        Self::VipAvailable,
        Self::ProxyAvailable,
        Self::Degraded,
        Self::QuorumAtRisk,
        Self::Conflict,
    ];

    /// The type as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::VipAccepted => "VIPAccepted",
            Self::VipAvailable => "VIPAvailable",
            Self::ProxyAvailable => "ProxyAvailable",
            Self::Degraded => "Degraded",
            Self::QuorumAtRisk => "QuorumAtRisk",
            Self::Conflict => "Conflict",
        }
    }
}

/// One condition's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verdict {
    /// `None` for Unknown.
    status: Option<bool>,
    /// CamelCase, for machines.
    reason: &'static str,
    /// A sentence for people.
    message: String,
}

fn verdict(status: Option<bool>, reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict { status, reason, message: message.into() }
}

/// An Event to publish on the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning (something needs a look) or Normal.
    pub warning: bool,
    /// CamelCase reason: Failover, MemberJoined, MemberLeft, Conflict, QuorumAtRisk.
    pub reason: &'static str,
    /// A sentence for people.
    pub note: String,
    /// The node whose member the event is about, if one: Events are told apart by it.
    pub node: Option<String>,
}

/// Everything the status is computed from.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The cluster, with its current (previous) status.
    pub hac: &'a HighAvailabilityCluster,
    /// Its members as they are in the API, with the agents' statuses.
    pub members: &'a [HighAvailabilityMember],
    /// The nodes that should have a member now. The cache may not show a member just applied yet; such a
    /// master counts as one whose agent has not reported, not as one fewer master.
    pub expected: &'a [String],
    /// Selected masters that could not get a member.
    pub problems: &'a [Problem],
    /// Conflicts with other clusters.
    pub conflicts: &'a [Conflict],
    /// Why the VIP is handed to no member, if it is not.
    pub vip_mistake: Option<&'a VipMistake>,
    /// Now, by the operator's wall clock: only for the times the status records (a condition's
    /// lastTransitionTime), never compared with an agent's stamp.
    pub now: Timestamp,
    /// The nodes holding the kube-system controller Leases.
    pub leaders: Leaders,
    /// When each member's heartbeat Lease was last renewed, by member name, as its agent stamped it: compared
    /// only with other agents' stamps (which of two holders took the VIP later).
    pub heartbeats: &'a BTreeMap<String, Timestamp>,
    /// How long ago the operator saw each member's signs of life change, by member name.
    pub ages: BTreeMap<String, Ages>,
}

/// How long ago, by the operator's own monotonic clock, it saw a member's signs of life change (see
/// [`crate::seen`]): what decides whether a member is alive, whatever its node's clock says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ages {
    /// Since its agent last renewed its heartbeat Lease or wrote a new `heartbeatTime`, whichever is later.
    pub agent: Option<Duration>,
    /// Since its proxy last wrote a new `proxyHeartbeatTime`.
    pub proxy: Option<Duration>,
    /// Since the operator first saw the member.
    pub known: Option<Duration>,
}

/// The nodes whose kube-controller-manager and kube-scheduler hold their kube-system Leases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leaders {
    /// kube-system/kube-controller-manager.
    pub controller_manager: Option<String>,
    /// kube-system/kube-scheduler.
    pub scheduler: Option<String>,
}

/// The new status and the Events that go with the change.
#[derive(Debug)]
pub struct Outcome {
    /// The status to write.
    pub status: HighAvailabilityClusterStatus,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
}

/// A member whose agent has neither renewed its heartbeat Lease nor written its status within this long is
/// Unknown: its node may be down.
fn heartbeat_timeout(hac: &HighAvailabilityCluster) -> Duration {
    hac.spec.election.lease_duration.0.max(Duration::from_secs(5))
}

struct View<'a> {
    m: &'a HighAvailabilityMember,
    state: VrrpState,
    fresh: bool,
    healthy: bool,
    /// Created moments ago and not reported yet: its agent is starting, not failing.
    pending: bool,
    /// When its agent was last heard from: the later of its Lease renewal and its status write.
    heard: Option<Timestamp>,
    /// Its proxy, when its spec has one.
    proxy: Option<Proxy>,
}

/// What a member's proxy (its own container, with its own status writes) reports.
#[derive(Debug, PartialEq)]
enum Proxy {
    /// It reported within the heartbeat timeout.
    Reporting,
    /// It reported that it cannot serve, and why.
    Failed(String),
    /// It has not reported within the heartbeat timeout, or never.
    Silent,
}

fn view<'a>(m: &'a HighAvailabilityMember, lease: Option<&Timestamp>, ages: Ages, timeout: Duration) -> View<'a> {
    let st = m.status.as_ref();
    let recent = |age: Option<Duration>| age.is_some_and(|a| a <= timeout);
    // Alive while either heartbeat changes: the Lease renewed every retryPeriod, or the status written at
    // least every leaseDuration / 3.
    let fresh = recent(ages.agent);
    let state = match st {
        Some(s) if fresh => s.state,
        _ => VrrpState::Unknown,
    };
    let healthy = fresh
        && matches!(state, VrrpState::Master | VrrpState::Backup)
        && st.is_some_and(|s| s.health.iter().all(|h| h.healthy) && s.penalties.is_empty());
    let young = ages.known.is_none_or(|a| a <= timeout);
    let heard = st.and_then(|s| s.heartbeat_time.as_ref()).map(|t| t.0).into_iter().chain(lease.copied()).max();
    let proxy = m.spec.proxy.as_ref().filter(|p| p.enabled).map(|_| match st.map(|s| s.proxy_error.as_ref()) {
        Some(Some(e)) if recent(ages.proxy) => Proxy::Failed(e.clone()),
        Some(None) if recent(ages.proxy) => Proxy::Reporting,
        _ => Proxy::Silent,
    });
    View { m, state, fresh, healthy, pending: st.is_none() && young, heard, proxy }
}

/// When the member became Master, if that is its latest transition.
fn took_over(v: &View<'_>) -> Option<Timestamp> {
    let t = v.m.status.as_ref()?.last_transition.as_ref()?;
    (t.to == VrrpState::Master).then_some(t.at.0)
}

/// Computes the status and Events.
pub fn aggregate(i: &Inputs<'_>) -> Outcome {
    let hac = i.hac;
    let prev = hac.status.clone().unwrap_or_default();
    let views: Vec<View<'_>> = i
        .members
        .iter()
        .map(|m| {
            let name = m.metadata.name.as_deref().unwrap_or_default();
            let ages = i.ages.get(name).copied().unwrap_or_default();
            view(m, i.heartbeats.get(name), ages, heartbeat_timeout(hac))
        })
        .collect();
    let node = |v: &View<'_>| v.m.spec.node_name.clone();
    let claims: Vec<&View<'_>> =
        views.iter().filter(|v| v.fresh && v.m.status.as_ref().is_some_and(|s| s.holds_vip)).collect();
    // A claim last heard before another holder took the VIP over is superseded: VRRP lets a backup take over
    // only once it has stopped hearing the master, so the old master is gone (powered off, cut off) and its
    // last word is stale, though still within the heartbeat timeout. Two agents that both go on reporting —
    // a real split — are both counted again within one heartbeat (plus the nodes' clock skew).
    let superseded = |a: &View<'_>| {
        claims.iter().any(|b| !std::ptr::eq(*b, a) && took_over(b).zip(a.heard).is_some_and(|(t, h)| t > h))
    };
    let holders: Vec<String> = claims.iter().filter(|a| !superseded(a)).map(|v| node(v)).collect();
    let active = (holders.len() == 1).then(|| holders[0].clone());
    let not_cached: Vec<String> =
        i.expected.iter().filter(|n| !i.members.iter().any(|m| m.spec.node_name == **n)).cloned().collect();
    let masters = i.members.len()
        + not_cached.len()
        + i.problems.iter().filter(|p| matches!(p, Problem::NoAddress { .. })).count();
    let healthy = views.iter().filter(|v| v.healthy).count();
    let external = (hac.spec.etcd.topology == EtcdTopology::External).then_some(&hac.spec.etcd.members[..]);
    let control_plane = control_plane(&views, masters, &i.leaders, external);
    // The etcd cluster's size: one member per master when stacked, the listed members when external.
    let etcd_size = external.map_or(masters, <[_]>::len);
    // Quorum from etcd's own health once the agents probe it; from member health until then (stacked only:
    // an external etcd's health has nothing to do with the masters').
    let etcd_healthy = control_plane.etcd.as_ref().map(|e| usize::try_from(e.healthy).unwrap_or(0));
    let (quorum_basis, basis) = match (etcd_healthy, external) {
        (Some(n), _) => (n, "etcd members"),
        (None, Some(_)) => (0, "etcd members"),
        (None, None) => (healthy, "masters"),
    };
    // Members that report but have not probed their etcd yet (an agent that has just started): their etcd is
    // unknown, not down. A member that stopped reporting altogether still counts as down. With an external
    // etcd, unknown until some agent has probed it.
    let probed = |v: &&View<'_>| {
        let cp = v.m.status.as_ref().and_then(|s| s.control_plane.as_ref());
        if external.is_some() {
            cp.is_some_and(|cp| !cp.etcd_members.is_empty())
        } else {
            cp.is_some_and(|cp| cp.etcd.is_some())
        }
    };
    let not_probed: Vec<String> = match (etcd_healthy, external) {
        (Some(_), None) => views.iter().filter(|v| v.fresh && !probed(v)).map(node).collect(),
        (None, Some(_)) => views.iter().filter(|v| v.fresh).map(node).collect(),
        _ => Vec::new(),
    };
    let mut events = Vec::new();
    let mut waiting_for: Vec<String> = views.iter().filter(|v| v.pending).map(node).collect();
    waiting_for.extend(not_cached);
    let blocked = held_back(i.conflicts, i.vip_mistake);
    let quorum = Quorum {
        masters,
        external: external.map(<[_]>::len),
        basis: quorum_basis,
        counted: basis,
        not_probed: &not_probed,
        waiting_for: &waiting_for,
        blocked,
    };
    let mut conds = vec![
        (ConditionType::VipAccepted, vip_accepted(hac, i.vip_mistake)),
        (ConditionType::VipAvailable, vip_available(hac, &views, &holders, blocked)),
        (ConditionType::ProxyAvailable, proxy_available(hac, &views, active.as_deref())),
        (ConditionType::Degraded, degraded(hac, &views, i.problems)),
        (ConditionType::QuorumAtRisk, quorum_at_risk(&quorum)),
        (ConditionType::Conflict, conflict(i.conflicts, &views, hac)),
    ];
    let ready = ready(hac, active.as_deref(), &conds);
    conds.insert(0, (ConditionType::Ready, ready));

    let generation = hac.metadata.generation;
    // Events for conditions that turned True and deserve a warning.
    for (t, v) in &conds {
        let was_true = prev.conditions.iter().any(|p| p.type_ == t.as_str() && p.status == "True");
        if v.status == Some(true) && !was_true && matches!(t, ConditionType::Conflict | ConditionType::QuorumAtRisk) {
            events.push(PlannedEvent { warning: true, reason: t.as_str(), note: v.message.clone(), node: None });
        }
        let was_false = prev.conditions.iter().any(|p| p.type_ == t.as_str() && p.status == "False");
        if *t == ConditionType::VipAccepted && v.status == Some(false) && !was_false {
            events.push(PlannedEvent { warning: true, reason: v.reason, note: v.message.clone(), node: None });
        }
    }
    let conditions: Vec<Condition> =
        conds.into_iter().map(|(t, v)| condition(&prev.conditions, t, v, generation, i.now)).collect();
    let before: BTreeSet<&str> = prev.members.iter().map(|m| m.node.as_str()).collect();
    let after: BTreeSet<String> = views.iter().map(node).collect();
    for n in after.iter().filter(|n| !before.contains(n.as_str())) {
        events.push(PlannedEvent {
            warning: false,
            reason: "MemberJoined",
            note: format!("{n} joined as a master"),
            node: Some(n.clone()),
        });
    }
    for n in before.iter().filter(|n| !after.contains(**n)) {
        events.push(PlannedEvent {
            warning: false,
            reason: "MemberLeft",
            note: format!("{n} is no longer a master"),
            node: Some((*n).to_string()),
        });
    }

    let mut last_failover = prev.last_failover.clone();
    let mut failover_count = prev.failover_count;
    // The holder before: the previous active node, or across a gap with no holder, the last one we knew.
    let previous_holder = prev.active_node.clone().or_else(|| prev.last_holder.clone());
    if let (Some(to), Some(from)) = (&active, &previous_holder)
        && to != from
    {
        let reason = failover_reason(views.iter().find(|v| node(v) == *from), views.iter().find(|v| node(v) == *to));
        let at = views
            .iter()
            .find(|v| node(v) == *to)
            .and_then(|v| v.m.status.as_ref()?.last_transition.as_ref().map(|t| t.at.clone()))
            .unwrap_or(Time(i.now));
        events.push(PlannedEvent {
            warning: true,
            reason: "Failover",
            note: format!("VIP moved from {from} to {to}: {reason}"),
            node: Some(to.clone()),
        });
        last_failover = Some(Failover { from: Some(from.clone()), to: to.clone(), at, reason: reason.into() });
        failover_count += 1;
    }

    let members = views
        .iter()
        .map(|v| MemberSummary {
            node: node(v),
            state: v.state,
            priority: v.m.spec.priority,
            effective_priority: v.m.status.as_ref().and_then(|s| s.effective_priority),
            healthy: v.healthy,
            since: v.m.status.as_ref().and_then(|s| s.last_transition.as_ref().map(|t| t.at.clone())),
        })
        .collect();
    let status = HighAvailabilityClusterStatus {
        observed_generation: generation,
        conditions,
        last_holder: active.clone().or(prev.last_holder),
        active_node: active,
        members_ready: Some(format!("{healthy}/{masters}")),
        members,
        fault_tolerance: Some(i32::try_from(fault_tolerance(etcd_size)).unwrap_or(i32::MAX)),
        control_plane: Some(control_plane),
        last_failover,
        failover_count,
    };
    Outcome { status, events }
}

/// VIPAvailable: exactly one member holds the VIP.
fn vip_available(hac: &HighAvailabilityCluster, views: &[View<'_>], holders: &[String], blocked: bool) -> Verdict {
    let vip = &hac.spec.vip;
    match holders {
        [one] => verdict(Some(true), "Held", format!("{one} holds {vip}")),
        [] if views.is_empty() && blocked => verdict(Some(false), NO_MEMBERS.0, NO_MEMBERS.1),
        [] if views.iter().all(|v| !v.fresh) => verdict(Some(false), "AwaitingAgents", "no agent has reported yet"),
        [] if views.iter().any(|v| member_error(v).is_some()) => {
            let errors: Vec<String> =
                views.iter().filter_map(|v| Some(format!("{}: {}", v.m.spec.node_name, member_error(v)?))).collect();
            verdict(Some(false), "MemberErrors", format!("no member holds {vip}; {}", errors.join("; ")))
        }
        [] => verdict(Some(false), "NoHolder", format!("no member holds {vip}")),
        _ => verdict(
            Some(false),
            "MultipleHolders",
            format!("{} all hold {vip}: a partition or a VRID collision", holders.join(", ")),
        ),
    }
}

/// ProxyAvailable: the active member proxies to at least one healthy API server.
fn proxy_available(hac: &HighAvailabilityCluster, views: &[View<'_>], active: Option<&str>) -> Verdict {
    if !hac.spec.proxy.enabled {
        return verdict(
            Some(false),
            "Disabled",
            "spec.proxy.enabled is false: clients reach only the active master's API server",
        );
    }
    let Some(v) = views.iter().find(|v| Some(v.m.spec.node_name.as_str()) == active) else {
        return verdict(Some(false), "NoActiveNode", "no member holds the VIP to serve the proxy on");
    };
    let node = &v.m.spec.node_name;
    let backends = v.m.status.as_ref().map(|s| s.proxy_backends.as_slice()).unwrap_or_default();
    let up = backends.iter().filter(|b| b.healthy).count();
    if let Some(Proxy::Failed(e)) = &v.proxy {
        verdict(Some(false), "ProxyFailed", format!("{node}'s proxy cannot serve: {e}"))
    } else if v.proxy != Some(Proxy::Reporting) {
        let timeout = heartbeat_timeout(hac).as_secs();
        verdict(
            Some(false),
            "ProxyNotReporting",
            format!("{node}'s proxy has not reported for {timeout}s: {PROXY_HINT}"),
        )
    } else if up > 0 {
        verdict(Some(true), "Serving", format!("{node} proxies to {up} of {} API servers", backends.len()))
    } else {
        verdict(Some(false), "NoHealthyBackend", format!("{node} reports no healthy API server behind the proxy"))
    }
}

/// Degraded: a master that cannot do its part.
fn degraded(hac: &HighAvailabilityCluster, views: &[View<'_>], problems: &[Problem]) -> Verdict {
    let node = |v: &View<'_>| v.m.spec.node_name.clone();
    let mut sick: Vec<String> = views
        .iter()
        .filter(|v| !v.healthy && !v.pending)
        .map(|v| format!("{} is {}", node(v), if v.fresh { describe(v) } else { "not reporting".into() }))
        .collect();
    // A proxy that fails or is silent on a member that otherwise reports: the VIP part runs, so the member
    // can take the VIP over and its clients would find no listener.
    sick.extend(views.iter().filter(|v| v.fresh && hac.spec.proxy.enabled).filter_map(|v| match &v.proxy {
        Some(Proxy::Failed(e)) => Some(format!("{}'s proxy cannot serve: {e}", node(v))),
        Some(Proxy::Silent) => Some(format!("{}'s proxy is not reporting ({PROXY_HINT})", node(v))),
        _ => None,
    }));
    sick.extend(problems.iter().map(ToString::to_string));
    if sick.is_empty() {
        verdict(Some(false), "AllHealthy", format!("all {} members healthy", views.len()))
    } else {
        verdict(Some(true), "MembersUnhealthy", sick.join("; "))
    }
}

/// What QuorumAtRisk is judged on.
struct Quorum<'a> {
    /// Masters selected (with a member or not yet cached, or without an address).
    masters: usize,
    /// With an external etcd, its size (spec.etcd.members): quorum is that cluster's, not the masters'.
    external: Option<usize>,
    /// How many count as healthy: etcd members once the agents probe etcd, members until then.
    basis: usize,
    /// What `basis` counts: "etcd members" or "masters".
    counted: &'static str,
    /// Reporting members that have not probed their etcd yet.
    not_probed: &'a [String],
    /// Nodes whose agents have not reported yet.
    waiting_for: &'a [String],
    /// Members are left as they are (none created): the VIP is refused, or a conflict holds this cluster.
    blocked: bool,
}

/// QuorumAtRisk: one more failure would lose the majority (or there is no margin at all).
fn quorum_at_risk(q: &Quorum<'_>) -> Verdict {
    let Quorum { masters, external, basis, counted, not_probed, waiting_for, blocked } = *q;
    if let Some(size) = external {
        return external_quorum_at_risk(size, basis, not_probed, masters == 0 && blocked);
    }
    let quorum = masters / 2 + 1;
    match masters {
        0 if blocked => verdict(None, NO_MEMBERS.0, NO_MEMBERS.1),
        n if !waiting_for.is_empty() && n > 2 => {
            verdict(None, "AwaitingAgents", format!("waiting for the agents on {} to report", waiting_for.join(", ")))
        }
        0 => verdict(Some(true), "NoMasters", "no master is selected"),
        1 => verdict(Some(true), "SingleMaster", "with one master there is no failover: select three or five"),
        2 => verdict(Some(true), "TwoMasters", "two masters tolerate no failure (etcd needs both): use three"),
        _ if !not_probed.is_empty() && basis <= quorum && basis + not_probed.len() >= quorum => verdict(
            None,
            "EtcdHealthUnknown",
            format!(
                "{basis} of {masters} etcd members healthy; {} not probed yet ({})",
                not_probed.len(),
                not_probed.join(", ")
            ),
        ),
        _ if basis < quorum => verdict(
            Some(true),
            "QuorumLost",
            format!("only {basis} of {masters} {counted} healthy; {quorum} are needed for quorum"),
        ),
        _ if basis == quorum => verdict(
            Some(true),
            "OneFailureFromQuorumLoss",
            format!("{basis} of {masters} {counted} healthy; {quorum} are needed for quorum"),
        ),
        n if n % 2 == 0 => verdict(
            Some(false),
            "EvenMasterCount",
            format!("{n} masters tolerate {} failures, no more than {} would", fault_tolerance(n), n - 1),
        ),
        n => verdict(Some(false), "Tolerates", format!("{} of {n} masters may fail", fault_tolerance(n))),
    }
}

/// QuorumAtRisk of an external etcd of `size` members, `healthy` of them healthy by the agents' probes.
fn external_quorum_at_risk(size: usize, healthy: usize, not_probed: &[String], blocked: bool) -> Verdict {
    let quorum = size / 2 + 1;
    match size {
        _ if blocked => verdict(None, NO_MEMBERS.0, NO_MEMBERS.1),
        _ if !not_probed.is_empty() && healthy == 0 => verdict(
            None,
            "EtcdHealthUnknown",
            format!("no agent has probed the {size} etcd members yet ({} report)", not_probed.join(", ")),
        ),
        _ if healthy < quorum => verdict(
            Some(true),
            "QuorumLost",
            format!("only {healthy} of {size} etcd members healthy; {quorum} are needed for quorum"),
        ),
        1 => verdict(Some(true), "SingleEtcdMember", "one etcd member tolerates no failure: run three or five"),
        _ if healthy == quorum => verdict(
            Some(true),
            "OneFailureFromQuorumLoss",
            format!("{healthy} of {size} etcd members healthy; {quorum} are needed for quorum"),
        ),
        n if n % 2 == 0 => verdict(
            Some(false),
            "EvenEtcdMemberCount",
            format!("{n} etcd members tolerate {} failures, no more than {} would", fault_tolerance(n), n - 1),
        ),
        n => verdict(Some(false), "Tolerates", format!("{} of {n} etcd members may fail", fault_tolerance(n))),
    }
}

/// Whether the cluster's members are left as they are (none created): its VIP is refused, or it is the newer
/// of two conflicting clusters. The controller writes no member then, and the status says why.
pub fn held_back(conflicts: &[Conflict], mistake: Option<&VipMistake>) -> bool {
    mistake.is_some() || conflicts.iter().any(|c| c.newer)
}

/// The reason and message of a cluster held back from having members.
const NO_MEMBERS: (&str, &str) = ("NoMembers", "no member runs until the VIPAccepted or Conflict condition clears");

/// VIPAccepted: the operator hands the VIP out.
fn vip_accepted(hac: &HighAvailabilityCluster, mistake: Option<&VipMistake>) -> Verdict {
    match mistake {
        Some(m) => verdict(Some(false), m.reason, m.message.clone()),
        None if crate::vipcheck::host_route(&hac.spec.vip) => verdict(
            Some(true),
            "Accepted",
            format!(
                "{} is no node's address; a host route says nothing of the network, so each agent checks it \
                 against its interface's subnet",
                hac.spec.vip
            ),
        ),
        None => verdict(
            Some(true),
            "Accepted",
            format!("{} is no node's address and lies on the masters' network", hac.spec.vip),
        ),
    }
}

/// The Conflict reason for a router on this VRID that is not a member.
pub const STRANGER_ON_VRID: &str = "StrangerOnVRID";

/// Conflict: another cluster claims this VIP or VRID here, or the members hear a router on their VRID that
/// is not one of them (what the fresh members report in status.strangers).
fn conflict(conflicts: &[Conflict], views: &[View<'_>], hac: &HighAvailabilityCluster) -> Verdict {
    if let Some(c) = conflicts.first() {
        return verdict(Some(true), c.reason, c.message.clone());
    }
    // Each stranger once, with the nodes that hear it.
    let mut heard: Vec<(&StrangerSeen, Vec<&str>)> = Vec::new();
    for v in views.iter().filter(|v| v.fresh) {
        for s in v.m.status.iter().flat_map(|st| &st.strangers) {
            match heard.iter_mut().find(|(h, _)| h.address == s.address) {
                Some((_, nodes)) => nodes.push(&v.m.spec.node_name),
                None => heard.push((s, vec![&v.m.spec.node_name])),
            }
        }
    }
    if heard.is_empty() {
        return verdict(Some(false), "NoConflict", "no other cluster claims this VIP or VRID here");
    }
    let vrid = hac.spec.vrid;
    let each: Vec<String> = heard
        .iter()
        .map(|(s, nodes)| {
            format!(
                "{} hear{} VRRP adverts for VRID {vrid} from {}, which is not a master of this cluster, announcing {} \
                 at priority {}",
                nodes.join(", "),
                if nodes.len() == 1 { "s" } else { "" },
                s.address,
                s.announced.join(", "),
                s.priority
            )
        })
        .collect();
    let fix = match hac.spec.vrrp.strangers {
        StrangerPolicy::Ignore => {
            "it is left out of the election (spec.vrrp.strangers: Ignore); stop that router or move it to \
             another VRID, or give this cluster another spec.vrid; while migrating from it (keepalived), set \
             spec.vrrp.strangers: Elect"
        }
        StrangerPolicy::Elect => {
            "it takes part in the election (spec.vrrp.strangers: Elect, for a migration): once that router is \
             gone, set spec.vrrp.strangers back to Ignore"
        }
    };
    verdict(Some(true), STRANGER_ON_VRID, format!("{}; {fix}", each.join("; ")))
}

/// Ready: nothing in `others` blocks serving the API on the VIP; otherwise the first blocker's reason.
fn ready(hac: &HighAvailabilityCluster, active: Option<&str>, others: &[(ConditionType, Verdict)]) -> Verdict {
    let blocker = others.iter().find(|(t, v)| {
        let ok = v.status.unwrap_or(false);
        match t {
            ConditionType::VipAvailable => !ok,
            ConditionType::ProxyAvailable => !ok && hac.spec.proxy.enabled,
            // A stranger is reported, but the members serve the VIP: only another cluster's claim holds them back.
            ConditionType::Conflict => ok && v.reason != STRANGER_ON_VRID,
            ConditionType::VipAccepted => !ok,
            _ => false,
        }
    });
    match blocker {
        None => {
            verdict(Some(true), "Ready", format!("{} serves the API on {}", active.unwrap_or_default(), hac.spec.vip))
        }
        Some((t, v)) => verdict(Some(false), v.reason, format!("{}: {}", t.as_str(), v.message)),
    }
}

/// Each master's components as its (fresh) member reports them, the controller leaders, and etcd quorum once
/// any member reports etcd health (stacked: a member not reporting counts as an unhealthy etcd member;
/// `external`: a listed member is healthy when any agent reaches it healthy).
fn control_plane(
    views: &[View<'_>],
    masters: usize,
    leaders: &Leaders,
    external: Option<&[kubeha_crds::EtcdMember]>,
) -> ControlPlaneView {
    let reported = |v: &View<'_>| v.m.status.as_ref().and_then(|s| s.control_plane.clone()).filter(|_| v.fresh);
    let health = |c: &Option<kubeha_crds::ComponentHealth>| c.as_ref().map(|c| c.healthy);
    let list: Vec<MasterHealth> = views
        .iter()
        .map(|v| {
            let cp = reported(v).unwrap_or_default();
            MasterHealth {
                node: v.m.spec.node_name.clone(),
                apiserver: health(&cp.apiserver),
                etcd: health(&cp.etcd),
                controller_manager: health(&cp.controller_manager),
                scheduler: health(&cp.scheduler),
            }
        })
        .collect();
    let n = |x: usize| i32::try_from(x).unwrap_or(i32::MAX);
    let quorum_of = |size: usize, healthy: usize| EtcdQuorum {
        members: n(size),
        healthy: n(healthy),
        fault_tolerance: if healthy > size / 2 { n(healthy - (size / 2 + 1)) } else { -1 },
    };
    let (etcd, etcd_members) = match external {
        None => {
            let etcd = list
                .iter()
                .any(|m| m.etcd.is_some())
                .then(|| quorum_of(masters, list.iter().filter(|m| m.etcd == Some(true)).count()));
            (etcd, Vec::new())
        }
        Some(members) => {
            let reports: Vec<(String, Vec<kubeha_crds::EtcdMemberHealth>)> = views
                .iter()
                .filter_map(|v| Some((v.m.spec.node_name.clone(), reported(v)?.etcd_members)))
                .filter(|(_, r)| !r.is_empty())
                .collect();
            let view: Vec<EtcdMemberView> = members
                .iter()
                .map(|e| {
                    let seen: Vec<(&String, &kubeha_crds::EtcdMemberHealth)> = reports
                        .iter()
                        .filter_map(|(node, r)| Some((node, r.iter().find(|h| h.name == e.name)?)))
                        .collect();
                    let healthy_from: Vec<String> =
                        seen.iter().filter(|(_, h)| h.healthy).map(|(node, _)| (*node).clone()).collect();
                    let message = seen
                        .iter()
                        .find(|(_, h)| !h.healthy)
                        .filter(|_| healthy_from.is_empty())
                        .map(|(node, h)| format!("{node}: {}", h.message.as_deref().unwrap_or("unhealthy")));
                    EtcdMemberView {
                        name: e.name.clone(),
                        healthy: (!seen.is_empty()).then_some(!healthy_from.is_empty()),
                        healthy_from,
                        message,
                    }
                })
                .collect();
            let etcd = (!reports.is_empty())
                .then(|| quorum_of(members.len(), view.iter().filter(|m| m.healthy == Some(true)).count()));
            (etcd, view)
        }
    };
    ControlPlaneView {
        masters: list,
        controller_manager_leader: leaders.controller_manager.clone(),
        scheduler_leader: leaders.scheduler.clone(),
        etcd,
        etcd_members,
    }
}

/// Where to look when a member's proxy is silent.
const PROXY_HINT: &str = "is the agent pod's proxy container running? kubectl -n <namespace> logs <agent pod> -c proxy";

/// Why the member's agent cannot run it, as the agent reported (fresh reports only).
fn member_error<'a>(v: &View<'a>) -> Option<&'a str> {
    v.m.status.as_ref().and_then(|s| s.error.as_deref()).filter(|_| v.fresh)
}

fn describe(v: &View<'_>) -> String {
    if let Some(e) = member_error(v) {
        return format!("{} and cannot run its member: {e}", v.state.as_str());
    }
    let st = v.m.status.as_ref();
    let failing: Vec<&str> =
        st.map(|s| s.health.iter().filter(|h| !h.healthy).map(|h| h.name.as_str()).collect()).unwrap_or_default();
    if !failing.is_empty() {
        format!("{} with failing checks: {}", v.state.as_str(), failing.join(", "))
    } else if let Some(p) = st.and_then(|s| s.penalties.first()) {
        format!("{}, priority lowered by {} ({})", v.state.as_str(), p.amount, p.reason)
    } else {
        v.state.as_str().to_string()
    }
}

fn failover_reason(from: Option<&View<'_>>, to: Option<&View<'_>>) -> &'static str {
    let Some(from) = from else {
        return "MemberRemoved";
    };
    let prio = |v: &View<'_>| v.m.status.as_ref().and_then(|s| s.effective_priority).unwrap_or(v.m.spec.priority);
    match from.state {
        VrrpState::Unknown => "MasterDown",
        VrrpState::Fault => "Unhealthy",
        _ if from.m.status.as_ref().is_some_and(|s| !s.penalties.is_empty() || s.health.iter().any(|h| !h.healthy)) => {
            "Unhealthy"
        }
        _ if prio(from) < from.m.spec.priority => "Unhealthy",
        VrrpState::Backup if to.is_some_and(|t| prio(t) > prio(from)) => "Preempted",
        VrrpState::Initialize => "MasterRestarted",
        _ => "MasterDown",
    }
}

/// A metav1.Condition whose lastTransitionTime moves only when its status does.
fn condition(prev: &[Condition], t: ConditionType, v: Verdict, generation: Option<i64>, now: Timestamp) -> Condition {
    let status = match v.status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let since = prev
        .iter()
        .find(|c| c.type_ == t.as_str() && c.status == status)
        .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: t.as_str().into(),
        status: status.into(),
        reason: v.reason.into(),
        message: v.message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// Whether two statuses differ in more than condition timestamps: when they do not, the write is skipped.
pub fn meaningfully_different(a: &HighAvailabilityClusterStatus, b: &HighAvailabilityClusterStatus) -> bool {
    let strip = |s: &HighAvailabilityClusterStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeha_crds::{BackendStatus, CheckResult, HighAvailabilityMemberStatus, Transition};
    use serde_json::json;

    use crate::desired::{
        desired,
        tests::{hac, node},
    };

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn cluster(spec: serde_json::Value, n: usize) -> (HighAvailabilityCluster, Vec<HighAvailabilityMember>) {
        let nodes: Vec<_> = (1..=n).map(|i| node(&format!("n{i}"), &[&format!("198.51.100.1{i}")], true)).collect();
        let h = hac(spec);
        let members = desired(&h, &nodes).members;
        (h, members)
    }

    /// The member of node `i` (1-based) reports `state`, holding the VIP when `vip`.
    fn report(members: &mut [HighAvailabilityMember], i: usize, state: VrrpState, vip: bool) {
        let m = &mut members[i - 1];
        m.status = Some(HighAvailabilityMemberStatus {
            state,
            holds_vip: vip,
            effective_priority: Some(m.spec.priority),
            health: vec![CheckResult { name: "apiserver".into(), healthy: true, message: None, since: None }],
            proxy_backends: vec![BackendStatus {
                address: "198.51.100.11:6443".into(),
                healthy: true,
                active_connections: 0,
                since: None,
            }],
            last_transition: Some(Transition {
                from: VrrpState::Backup,
                to: state,
                at: Time(now()),
                reason: "test".into(),
            }),
            heartbeat_time: Some(Time(now())),
            proxy_heartbeat_time: Some(Time(now())),
            ..HighAvailabilityMemberStatus::default()
        });
    }

    fn healthy_three() -> (HighAvailabilityCluster, Vec<HighAvailabilityMember>) {
        let (h, mut ms) = cluster(json!({}), 3);
        report(&mut ms, 1, VrrpState::Master, true);
        report(&mut ms, 2, VrrpState::Backup, false);
        report(&mut ms, 3, VrrpState::Backup, false);
        (h, ms)
    }

    static NO_HEARTBEATS: BTreeMap<String, Timestamp> = BTreeMap::new();

    /// The inputs of a cluster and its members, with nothing else going on.
    fn inputs<'a>(h: &'a HighAvailabilityCluster, ms: &'a [HighAvailabilityMember]) -> Inputs<'a> {
        with_leases(h, ms, &NO_HEARTBEATS)
    }

    /// The inputs with heartbeat Leases renewed at `leases`, seen by an operator that noted every stamp as it
    /// was written (its clock agrees with the agents': `controller` tests the skewed case).
    fn with_leases<'a>(
        h: &'a HighAvailabilityCluster,
        ms: &'a [HighAvailabilityMember],
        leases: &'a BTreeMap<String, Timestamp>,
    ) -> Inputs<'a> {
        let age = |t: Timestamp| now().duration_since(t).unsigned_abs();
        let ages = ms
            .iter()
            .map(|m| {
                let name = m.metadata.name.clone().unwrap_or_default();
                let st = m.status.as_ref();
                let status_beat = st.and_then(|s| s.heartbeat_time.as_ref()).map(|t| t.0);
                let agent = status_beat.into_iter().chain(leases.get(&name).copied()).max().map(age);
                let proxy = st.and_then(|s| s.proxy_heartbeat_time.as_ref()).map(|t| age(t.0));
                (name, Ages { agent, proxy, known: None })
            })
            .collect();
        Inputs {
            hac: h,
            members: ms,
            expected: &[],
            problems: &[],
            conflicts: &[],
            vip_mistake: None,
            now: now(),
            leaders: Leaders::default(),
            heartbeats: leases,
            ages,
        }
    }

    fn run(h: &HighAvailabilityCluster, ms: &[HighAvailabilityMember]) -> Outcome {
        aggregate(&inputs(h, ms))
    }

    fn cond<'a>(s: &'a HighAvailabilityClusterStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_stranger_on_the_vrid_is_a_conflict_that_names_it_but_does_not_hold_ready_back() {
        let (h, mut ms) = healthy_three();
        let stranger = |priority| kubeha_crds::StrangerSeen {
            address: "198.51.100.31".into(),
            announced: vec!["198.51.100.99".into()],
            priority,
            elected: false,
            since: Time(now()),
        };
        for i in [0, 2] {
            ms[i].status.as_mut().unwrap().strangers = vec![stranger(254)];
        }
        let out = run(&h, &ms);
        assert_eq!(cond(&out.status, "Conflict"), ("True", "StrangerOnVRID"));
        assert_eq!(cond(&out.status, "Ready"), ("True", "Ready"), "the members serve the VIP");
        let message = &out.status.conditions.iter().find(|c| c.type_ == "Conflict").unwrap().message;
        assert!(
            message.starts_with(
                "n1, n3 hear VRRP adverts for VRID 51 from 198.51.100.31, which is not a master of this cluster, \
                 announcing 198.51.100.99 at priority 254; it is left out of the election (spec.vrrp.strangers: \
                 Ignore)"
            ),
            "{message}"
        );
        assert!(message.contains("set spec.vrrp.strangers: Elect"), "{message}");
        assert!(out.events.iter().any(|e| e.warning && e.reason == "Conflict" && e.note == *message));

        // During a migration the stranger takes part; the message says how to end it.
        let (mut h, _) = healthy_three();
        h.spec.vrrp.strangers = StrangerPolicy::Elect;
        let s = run(&h, &ms).status;
        let message = &s.conditions.iter().find(|c| c.type_ == "Conflict").unwrap().message;
        assert!(message.ends_with("set spec.vrrp.strangers back to Ignore"), "{message}");
    }

    #[test]
    fn a_healthy_cluster_is_ready_with_one_active_node() {
        let (h, ms) = healthy_three();
        let s = run(&h, &ms).status;
        let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ConditionType::ALL.map(ConditionType::as_str));
        assert_eq!(cond(&s, "Ready"), ("True", "Ready"));
        assert_eq!(cond(&s, "VIPAvailable"), ("True", "Held"));
        assert_eq!(cond(&s, "ProxyAvailable"), ("True", "Serving"));
        assert_eq!(cond(&s, "Degraded"), ("False", "AllHealthy"));
        assert_eq!(cond(&s, "QuorumAtRisk"), ("False", "Tolerates"));
        assert_eq!(cond(&s, "Conflict"), ("False", "NoConflict"));
        assert_eq!(s.active_node.as_deref(), Some("n1"));
        assert_eq!(s.members_ready.as_deref(), Some("3/3"));
        assert_eq!(s.fault_tolerance, Some(1));
        assert!(s.conditions.iter().all(|c| c.observed_generation == h.metadata.generation));
    }

    #[test]
    fn a_proxy_that_fails_or_falls_silent_is_named_while_the_vip_part_reports() {
        // The proxy runs in a container of its own: its status fields age on their own.
        let (h, mut ms) = healthy_three();
        ms[0].status.as_mut().unwrap().proxy_heartbeat_time = Some(Time(now() - Duration::from_secs(60)));
        let s = run(&h, &ms).status;
        assert_eq!(cond(&s, "ProxyAvailable"), ("False", "ProxyNotReporting"));
        assert_eq!(cond(&s, "Ready"), ("False", "ProxyNotReporting"));
        assert_eq!(cond(&s, "VIPAvailable"), ("True", "Held"), "the VIP part still reports");
        let degraded = &s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message;
        assert!(degraded.contains("n1's proxy is not reporting") && degraded.contains("-c proxy"), "{degraded}");

        let (h, mut ms) = healthy_three();
        ms[1].status.as_mut().unwrap().proxy_error = Some("proxy: 198.51.100.10:443: permission denied".into());
        let s = run(&h, &ms).status;
        assert_eq!(cond(&s, "ProxyAvailable"), ("True", "Serving"), "n1 holds the VIP and serves");
        let degraded = &s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message;
        assert!(degraded.contains("n2's proxy cannot serve: proxy: 198.51.100.10:443"), "{degraded}");
        report(&mut ms, 1, VrrpState::Backup, false);
        report(&mut ms, 2, VrrpState::Master, true);
        ms[1].status.as_mut().unwrap().proxy_error = Some("proxy: 198.51.100.10:443: permission denied".into());
        let s = run(&h, &ms).status;
        assert_eq!(cond(&s, "ProxyAvailable"), ("False", "ProxyFailed"));

        // Never reported (the container has not started): not taken for a proxy without backends.
        let (h, mut ms) = healthy_three();
        ms[0].status.as_mut().unwrap().proxy_heartbeat_time = None;
        assert_eq!(cond(&run(&h, &ms).status, "ProxyAvailable"), ("False", "ProxyNotReporting"));
    }

    #[test]
    fn a_members_error_reaches_the_clusters_conditions_with_its_node() {
        // interface: eth9 on every master: each agent reports the error and stays in Initialize.
        let (h, mut ms) = cluster(json!({}), 3);
        for i in 1..=3 {
            report(&mut ms, i, VrrpState::Initialize, false);
            ms[i - 1].status.as_mut().unwrap().error = Some("interface 'eth9' does not exist on this node".into());
        }
        let s = run(&h, &ms).status;
        let message = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().message.clone();
        assert_eq!(cond(&s, "VIPAvailable"), ("False", "MemberErrors"));
        assert_eq!(cond(&s, "Ready"), ("False", "MemberErrors"));
        assert!(message("Ready").contains("n1: interface 'eth9' does not exist on this node"), "{}", message("Ready"));
        assert!(message("Ready").contains("n3: interface 'eth9'"), "{}", message("Ready"));
        let degraded = message("Degraded");
        assert!(degraded.contains("n2 is Initialize and cannot run its member: interface 'eth9'"), "{degraded}");

        // One master with the error while another holds the VIP: Ready, and Degraded names it.
        let (h, mut ms) = healthy_three();
        report(&mut ms, 3, VrrpState::Initialize, false);
        ms[2].status.as_mut().unwrap().error = Some("interface 'eth9' does not exist on this node".into());
        let s = run(&h, &ms).status;
        assert_eq!(cond(&s, "Ready"), ("True", "Ready"));
        let degraded = s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message.clone();
        assert!(degraded.contains("n3 is Initialize and cannot run its member: interface 'eth9'"), "{degraded}");
    }

    #[test]
    fn two_holders_are_not_a_vip() {
        let (h, mut ms) = healthy_three();
        report(&mut ms, 2, VrrpState::Master, true);
        let s = run(&h, &ms).status;
        assert_eq!(cond(&s, "VIPAvailable"), ("False", "MultipleHolders"));
        assert_eq!(cond(&s, "Ready"), ("False", "MultipleHolders"));
        assert_eq!(s.active_node, None);
    }

    #[test]
    fn a_holder_last_heard_before_another_took_over_is_superseded_not_a_second_holder() {
        // n1 powered off while Master: its status and Lease stay fresh for the heartbeat timeout. n2 took over
        // after n1 was last heard; n1's claim is stale, so n2 is the one holder.
        let (h, mut ms) = healthy_three();
        let at = |s: i64| Time(Timestamp::from_second(1_800_000_000 + s).unwrap());
        ms[0].status.as_mut().unwrap().heartbeat_time = Some(at(-3));
        report(&mut ms, 2, VrrpState::Master, true);
        ms[1].status.as_mut().unwrap().last_transition.as_mut().unwrap().at = at(-1);
        let s = run(&h, &ms).status;
        assert_eq!(cond(&s, "VIPAvailable"), ("True", "Held"));
        assert_eq!(s.active_node.as_deref(), Some("n2"));
        // The same takeover, but n1's Lease was renewed after it: n1 is alive and still claims the VIP — a split.
        let lease = BTreeMap::from([(ms[0].metadata.name.clone().unwrap(), at(0).0)]);
        let s = aggregate(&with_leases(&h, &ms, &lease)).status;
        assert_eq!(cond(&s, "VIPAvailable"), ("False", "MultipleHolders"));
        assert_eq!(s.active_node, None);
    }

    #[test]
    fn members_applied_but_not_cached_yet_count_as_masters_awaiting_their_agents() {
        // The operator applies three members and aggregates at once; its cache shows one so far.
        let (h, ms) = cluster(json!({}), 3);
        let expected: Vec<String> = ms.iter().map(|m| m.spec.node_name.clone()).collect();
        let out = aggregate(&Inputs { expected: &expected, ..inputs(&h, &ms[..1]) });
        assert_eq!(cond(&out.status, "QuorumAtRisk"), ("Unknown", "AwaitingAgents"), "not SingleMaster");
        assert!(out.events.iter().all(|e| e.reason != "QuorumAtRisk"), "no alarm while members are being created");
    }

    #[test]
    fn before_any_agent_reports_the_cluster_awaits_them() {
        let (h, ms) = cluster(json!({}), 3);
        let s = run(&h, &ms).status;
        assert_eq!(cond(&s, "VIPAvailable"), ("False", "AwaitingAgents"));
        assert!(s.members.iter().all(|m| m.state == VrrpState::Unknown));
        assert_eq!(cond(&s, "QuorumAtRisk"), ("Unknown", "AwaitingAgents"), "no alarm before anyone reports");
        assert!(run(&h, &ms).events.iter().all(|e| e.reason != "QuorumAtRisk"));
        assert_eq!(s.members_ready.as_deref(), Some("0/3"));
    }

    #[test]
    fn a_member_that_stops_reporting_is_unknown_and_degrades_the_cluster() {
        let (h, mut ms) = healthy_three();
        ms[2].status.as_mut().unwrap().heartbeat_time = Some(Time(now() - Duration::from_secs(60)));
        let s = run(&h, &ms).status;
        assert_eq!(s.members[2].state, VrrpState::Unknown);
        assert_eq!(cond(&s, "Degraded"), ("True", "MembersUnhealthy"));
        let msg = &s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message;
        assert!(msg.contains("n3 is not reporting"), "{msg}");
        // 2 of 3 healthy is exactly quorum: one more failure loses it.
        assert_eq!(cond(&s, "QuorumAtRisk"), ("True", "OneFailureFromQuorumLoss"));
        assert_eq!(cond(&s, "Ready"), ("True", "Ready"), "still serving");
    }

    #[test]
    fn a_moved_vip_is_a_failover_with_its_reason_and_event() {
        let (mut h, mut ms) = healthy_three();
        h.status = Some(run(&h, &ms).status);
        ms[0].status.as_mut().unwrap().heartbeat_time = Some(Time(now() - Duration::from_secs(60)));
        report(&mut ms, 2, VrrpState::Master, true);
        let out = run(&h, &ms);
        let f = out.status.last_failover.as_ref().unwrap();
        assert_eq!((f.from.as_deref(), f.to.as_str(), f.reason.as_str()), (Some("n1"), "n2", "MasterDown"));
        assert_eq!(out.status.failover_count, 1);
        assert!(out.events.iter().any(|e| e.reason == "Failover" && e.note == "VIP moved from n1 to n2: MasterDown"));
        // The same state again is no new failover.
        h.status = Some(out.status);
        let again = run(&h, &ms);
        assert_eq!(again.status.failover_count, 1);
        assert!(again.events.iter().all(|e| e.reason != "Failover"));
    }

    #[test]
    fn a_failover_across_a_gap_without_holder_is_still_one() {
        let (mut h, mut ms) = healthy_three();
        h.status = Some(run(&h, &ms).status);
        // n1 dies; for a moment nobody holds the VIP, and a reconcile sees exactly that.
        ms[0].status.as_mut().unwrap().heartbeat_time = Some(Time(now() - Duration::from_secs(60)));
        let gap = run(&h, &ms).status;
        assert_eq!((gap.active_node.as_deref(), gap.last_holder.as_deref()), (None, Some("n1")));
        h.status = Some(gap);
        report(&mut ms, 3, VrrpState::Master, true);
        let after = run(&h, &ms).status;
        let f = after.last_failover.as_ref().unwrap();
        assert_eq!((f.from.as_deref(), f.to.as_str(), f.reason.as_str()), (Some("n1"), "n3", "MasterDown"));
        assert_eq!(after.failover_count, 1);
    }

    #[test]
    fn a_renewed_heartbeat_lease_keeps_a_member_known_and_an_expired_one_does_not() {
        let (h, mut ms) = healthy_three();
        ms[2].status.as_mut().unwrap().heartbeat_time = Some(Time(now() - Duration::from_secs(60)));
        let beats = BTreeMap::from([("api-n3".to_string(), now() - Duration::from_secs(2))]);
        let with = |beats: &BTreeMap<String, Timestamp>| aggregate(&with_leases(&h, &ms, beats));
        assert_eq!(with(&beats).status.members[2].state, VrrpState::Backup, "the Lease was renewed 2 s ago");
        let old = BTreeMap::from([("api-n3".to_string(), now() - Duration::from_secs(60))]);
        assert_eq!(with(&old).status.members[2].state, VrrpState::Unknown, "both heartbeats expired");
    }

    #[test]
    fn the_control_plane_view_shows_components_leaders_and_etcd_quorum() {
        let (h, mut ms) = healthy_three();
        let ok = |healthy: bool| Some(kubeha_crds::ComponentHealth { healthy, message: None });
        for (i, etcd) in [(0, true), (1, false), (2, true)] {
            ms[i].status.as_mut().unwrap().control_plane = Some(kubeha_crds::ControlPlaneHealth {
                apiserver: ok(true),
                etcd: ok(etcd),
                controller_manager: ok(true),
                scheduler: None,
                etcd_members: Vec::new(),
            });
        }
        let leaders = Leaders { controller_manager: Some("n2".into()), scheduler: Some("n3".into()) };
        let out = aggregate(&Inputs { leaders, ..inputs(&h, &ms) });
        let cp = out.status.control_plane.clone().unwrap();
        assert_eq!((cp.controller_manager_leader.as_deref(), cp.scheduler_leader.as_deref()), (Some("n2"), Some("n3")));
        assert_eq!(cp.masters[1].etcd, Some(false));
        assert_eq!(cp.masters[0].scheduler, None, "not probed: unknown");
        assert_eq!(cp.etcd, Some(EtcdQuorum { members: 3, healthy: 2, fault_tolerance: 0 }));
        assert_eq!(
            cond(&out.status, "QuorumAtRisk"),
            ("True", "OneFailureFromQuorumLoss"),
            "by etcd, not by member health"
        );
        // A member that stops reporting: its etcd counts as unknown, quorum is lost.
        ms[2].status.as_mut().unwrap().heartbeat_time = Some(Time(now() - Duration::from_secs(60)));
        let out = run(&h, &ms);
        assert_eq!(out.status.control_plane.as_ref().unwrap().etcd.as_ref().unwrap().fault_tolerance, -1);
        assert_eq!(cond(&out.status, "QuorumAtRisk"), ("True", "QuorumLost"));
    }

    /// Three masters whose agents report an external etcd's members: `seen[i]` is master i's view.
    fn external(seen: [&[(&str, bool)]; 3], size: usize) -> Outcome {
        let members: Vec<_> = (1..=size)
            .map(|i| json!({"name": format!("e{i}"), "healthURL": format!("http://198.51.100.3{i}:2381/health")}))
            .collect();
        let (h, mut ms) = cluster(json!({"etcd": {"topology": "External", "members": members}}), 3);
        report(&mut ms, 1, VrrpState::Master, true);
        report(&mut ms, 2, VrrpState::Backup, false);
        report(&mut ms, 3, VrrpState::Backup, false);
        for (i, view) in seen.iter().enumerate() {
            let etcd_members = view
                .iter()
                .map(|(name, healthy)| kubeha_crds::EtcdMemberHealth {
                    name: (*name).into(),
                    healthy: *healthy,
                    message: (!healthy).then(|| "connection refused".into()),
                })
                .collect();
            ms[i].status.as_mut().unwrap().control_plane =
                Some(kubeha_crds::ControlPlaneHealth { etcd_members, ..Default::default() });
        }
        run(&h, &ms)
    }

    #[test]
    fn an_external_etcd_is_counted_by_its_own_members_not_by_the_masters() {
        let all = [("e1", true), ("e2", true), ("e3", true), ("e4", true), ("e5", true)];
        let out = external([&all, &all, &all], 5);
        let cp = out.status.control_plane.clone().unwrap();
        assert_eq!(cp.etcd, Some(EtcdQuorum { members: 5, healthy: 5, fault_tolerance: 2 }));
        assert_eq!(out.status.fault_tolerance, Some(2), "etcd's tolerance, not three masters' 1");
        assert!(cp.masters.iter().all(|m| m.etcd.is_none()), "no master runs an etcd member");
        assert_eq!(cp.etcd_members.len(), 5);
        assert_eq!(cp.etcd_members[0].healthy_from, ["n1", "n2", "n3"]);
        assert_eq!(cond(&out.status, "QuorumAtRisk"), ("False", "Tolerates"));

        // e3 down for everyone, e2 reached by n3 only (n1 and n2 are cut off from it): e2 is in quorum.
        let cut = [("e1", true), ("e2", false), ("e3", false), ("e4", true), ("e5", true)];
        let n3 = [("e1", true), ("e2", true), ("e3", false), ("e4", true), ("e5", true)];
        let out = external([&cut, &cut, &n3], 5);
        let cp = out.status.control_plane.clone().unwrap();
        assert_eq!(cp.etcd, Some(EtcdQuorum { members: 5, healthy: 4, fault_tolerance: 1 }));
        assert_eq!(cp.etcd_members[1].healthy_from, ["n3"]);
        assert_eq!(cp.etcd_members[2].healthy, Some(false));
        assert_eq!(cp.etcd_members[2].message.as_deref(), Some("n1: connection refused"));
        assert_eq!(cond(&out.status, "QuorumAtRisk"), ("False", "Tolerates"));

        // Three of five down: quorum lost, whatever the masters' health.
        let lost = [("e1", true), ("e2", true), ("e3", false), ("e4", false), ("e5", false)];
        let out = external([&lost, &lost, &lost], 5);
        assert_eq!(cond(&out.status, "QuorumAtRisk"), ("True", "QuorumLost"));
        assert_eq!(out.status.control_plane.unwrap().etcd.unwrap().fault_tolerance, -1);
    }

    #[test]
    fn an_external_etcd_nobody_probed_yet_is_unknown_and_one_member_is_a_risk() {
        let out = external([&[], &[], &[]], 3);
        assert_eq!(cond(&out.status, "QuorumAtRisk"), ("Unknown", "EtcdHealthUnknown"));
        assert_eq!(out.status.control_plane.unwrap().etcd, None);
        let out = external([&[("e1", true)], &[("e1", true)], &[("e1", true)]], 1);
        assert_eq!(cond(&out.status, "QuorumAtRisk"), ("True", "SingleEtcdMember"));
        assert_eq!(out.status.fault_tolerance, Some(0));
    }

    #[test]
    fn an_agent_that_has_not_probed_its_etcd_yet_is_no_quorum_alarm() {
        let (h, mut ms) = healthy_three();
        let ok = |healthy: bool| Some(kubeha_crds::ComponentHealth { healthy, message: None });
        for (i, etcd) in [(0, None), (1, ok(true)), (2, ok(true))] {
            ms[i].status.as_mut().unwrap().control_plane =
                Some(kubeha_crds::ControlPlaneHealth { apiserver: ok(true), etcd, ..Default::default() });
        }
        // n1's agent has just restarted: it reports, but its etcd probe has not run.
        let out = run(&h, &ms);
        assert_eq!(cond(&out.status, "QuorumAtRisk"), ("Unknown", "EtcdHealthUnknown"));
        assert!(out.events.iter().all(|e| e.reason != "QuorumAtRisk"), "no alarm for a probe not run yet");
        // Known to be down is not unknown: with n2's etcd failing, one more failure loses quorum at most.
        ms[1].status.as_mut().unwrap().control_plane.as_mut().unwrap().etcd = ok(false);
        assert_eq!(cond(&run(&h, &ms).status, "QuorumAtRisk"), ("Unknown", "EtcdHealthUnknown"));
        ms[2].status.as_mut().unwrap().control_plane.as_mut().unwrap().etcd = ok(false);
        assert_eq!(cond(&run(&h, &ms).status, "QuorumAtRisk"), ("True", "QuorumLost"), "1 unknown cannot make 2");
    }

    #[test]
    fn losing_the_vip_to_a_higher_priority_is_preemption() {
        let (mut h, mut ms) = healthy_three();
        report(&mut ms, 1, VrrpState::Backup, false);
        report(&mut ms, 2, VrrpState::Master, true);
        h.status = Some(run(&h, &ms).status);
        report(&mut ms, 2, VrrpState::Backup, false);
        report(&mut ms, 1, VrrpState::Master, true);
        let f = run(&h, &ms).status.last_failover.unwrap();
        assert_eq!((f.from.as_deref(), f.to.as_str(), f.reason.as_str()), (Some("n2"), "n1", "Preempted"));
    }

    #[test]
    fn condition_times_move_only_when_their_status_does() {
        let (mut h, mut ms) = healthy_three();
        let first = run(&h, &ms).status;
        h.status = Some(first.clone());
        let later = aggregate(&Inputs { now: now() + Duration::from_secs(10), ..inputs(&h, &ms) });
        assert_eq!(first.conditions, later.status.conditions);
        assert!(!meaningfully_different(&first, &later.status));
        report(&mut ms, 1, VrrpState::Backup, false);
        let flipped = aggregate(&Inputs { now: now() + Duration::from_secs(10), ..inputs(&h, &ms) });
        let t = |s: &HighAvailabilityClusterStatus, ty: &str| {
            s.conditions.iter().find(|c| c.type_ == ty).unwrap().last_transition_time.0
        };
        assert_eq!(t(&flipped.status, "VIPAvailable"), now() + Duration::from_secs(10));
        assert_eq!(t(&flipped.status, "Conflict"), now());
        assert!(meaningfully_different(&first, &flipped.status));
    }

    #[test]
    fn small_and_even_master_counts_are_flagged() {
        for (n, status, reason, tolerance) in [
            (1, "True", "SingleMaster", 0),
            (2, "True", "TwoMasters", 0),
            (4, "False", "EvenMasterCount", 1),
            (5, "False", "Tolerates", 2),
        ] {
            let (h, mut ms) = cluster(json!({}), n);
            for i in 1..=n {
                report(&mut ms, i, if i == 1 { VrrpState::Master } else { VrrpState::Backup }, i == 1);
            }
            let s = run(&h, &ms).status;
            assert_eq!(cond(&s, "QuorumAtRisk"), (status, reason), "{n} masters");
            assert_eq!(s.fault_tolerance, Some(tolerance), "{n} masters");
        }
    }

    #[test]
    fn joining_and_leaving_members_are_told() {
        let (mut h, ms) = healthy_three();
        h.status = Some(run(&h, &ms[..2]).status);
        let out = run(&h, &ms[1..]);
        let reasons: Vec<_> = out.events.iter().map(|e| (e.reason, e.note.as_str())).collect();
        assert!(reasons.contains(&("MemberJoined", "n3 joined as a master")), "{reasons:?}");
        assert!(reasons.contains(&("MemberLeft", "n1 is no longer a master")), "{reasons:?}");
    }

    #[test]
    fn a_conflict_blocks_readiness_and_warns_once() {
        let (mut h, ms) = healthy_three();
        let c = [Conflict { with: "other".into(), reason: "VRIDInUse", message: "uses VRID 51".into(), newer: true }];
        let out = aggregate(&Inputs { conflicts: &c, ..inputs(&h, &ms) });
        assert_eq!(cond(&out.status, "Conflict"), ("True", "VRIDInUse"));
        assert_eq!(cond(&out.status, "Ready"), ("False", "VRIDInUse"));
        assert!(out.events.iter().any(|e| e.warning && e.reason == "Conflict"));
        h.status = Some(out.status);
        let again = aggregate(&Inputs { conflicts: &c, ..inputs(&h, &ms) });
        assert!(again.events.iter().all(|e| e.reason != "Conflict"));
    }

    #[test]
    fn without_the_proxy_readiness_needs_only_the_vip() {
        let (h, mut ms) = cluster(json!({"proxy": {"enabled": false}}), 3);
        report(&mut ms, 1, VrrpState::Master, true);
        report(&mut ms, 2, VrrpState::Backup, false);
        report(&mut ms, 3, VrrpState::Backup, false);
        let s = run(&h, &ms).status;
        assert_eq!(cond(&s, "ProxyAvailable"), ("False", "Disabled"));
        assert_eq!(cond(&s, "Ready"), ("True", "Ready"));
    }
}
