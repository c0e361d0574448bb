//! The members a cluster should have: which nodes are masters, their priorities, and every member's
//! complete agent configuration. Pure: nodes in, members out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::{Selector, SelectorExt as _};
use kube::{Resource as _, ResourceExt as _};
use kubeha_crds::{
    ElectionMode, HealthCheck, HighAvailabilityCluster, HighAvailabilityMember, HighAvailabilityMemberSpec, HttpsCheck,
    MemberProxy, MemberVrrp, Metrics,
};

pub use kubeha_crds::contract::{CLUSTER_LABEL, NODE_LABEL, RELEASE_FINALIZER};
/// The label that marks control-plane nodes: the default masters.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// The highest priority the operator assigns; 255 is the address owner's, which a VIP never is.
const TOP_PRIORITY: i32 = 200;

/// Why a selected master gets no member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// `spec.masters.nodes` names a node that does not exist.
    NodeNotFound(String),
    /// The node has no InternalIP of the VIP's family, so nobody could reach its API server or VRRP.
    NoAddress {
        /// The node.
        node: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
    /// The selector in `spec.masters.nodeSelector` is not valid.
    BadSelector(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NodeNotFound(n) => write!(f, "node {n} in spec.masters.nodes does not exist"),
            Problem::NoAddress { node, family } => {
                write!(f, "node {node} has no {family} InternalIP, so it cannot carry an {family} VIP")
            }
            Problem::BadSelector(e) => write!(f, "spec.masters.nodeSelector is invalid: {e}"),
        }
    }
}

/// What the cluster should look like.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// One member per master that can run one, sorted by node name.
    pub members: Vec<HighAvailabilityMember>,
    /// Masters that were selected but cannot run a member.
    pub problems: Vec<Problem>,
}

/// The masters `hac` selects among `nodes`, sorted by name; names in `spec.masters.nodes` that match no
/// node are reported.
pub fn masters<'a>(hac: &HighAvailabilityCluster, nodes: &'a [Node]) -> (Vec<&'a Node>, Vec<Problem>) {
    let m = &hac.spec.masters;
    let mut problems = Vec::new();
    let mut chosen: Vec<&Node> = if let Some(names) = &m.nodes {
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let found: BTreeSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        problems.extend(wanted.iter().filter(|w| !found.contains(**w)).map(|w| Problem::NodeNotFound((*w).into())));
        nodes.iter().filter(|n| wanted.contains(n.name_any().as_str())).collect()
    } else if let Some(selector) = &m.node_selector {
        match Selector::try_from(selector.clone()) {
            Ok(sel) => nodes.iter().filter(|n| sel.matches(n.labels())).collect(),
            Err(e) => {
                problems.push(Problem::BadSelector(e.to_string()));
                Vec::new()
            }
        }
    } else {
        nodes.iter().filter(|n| n.labels().contains_key(CONTROL_PLANE_LABEL)).collect()
    };
    chosen.sort_by_key(|n| n.name_any());
    (chosen, problems)
}

/// Deterministic priorities: overrides first; the other masters in name order from 200 down, spaced so that
/// a health penalty (default 60) moves a master below the next ones (the spacing shrinks for many masters
/// but never below 1).
pub fn priorities(masters: &[String], overrides: &BTreeMap<String, i32>) -> BTreeMap<String, i32> {
    let rest: Vec<&String> = masters.iter().filter(|m| !overrides.contains_key(*m)).collect();
    let step = if rest.len() > 1 { (10).min((TOP_PRIORITY - 1) / (rest.len() as i32 - 1)).max(1) } else { 10 };
    let mut out: BTreeMap<String, i32> =
        rest.iter().enumerate().map(|(i, m)| ((*m).clone(), (TOP_PRIORITY - step * i as i32).max(1))).collect();
    for m in masters {
        if let Some(p) = overrides.get(m) {
            out.insert(m.clone(), *p);
        }
    }
    out
}

/// The InternalIP of `node` in the family of `vip`.
pub fn node_address(node: &Node, vip: &IpAddr) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() == vip.is_ipv4())
}

fn host_port(ip: &IpAddr, port: i32) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The VIP's address part (`198.51.100.10/24` → 198.51.100.10). The API server has validated the spec, so
/// a parse failure means an object written around validation; it is reported, not guessed at.
pub fn vip_address(vip: &str) -> Option<IpAddr> {
    vip.split('/').next()?.parse().ok()
}

/// The member name of `node` in cluster `hac`: `<cluster>-<node>`.
pub fn member_name(hac: &str, node: &str) -> String {
    format!("{hac}-{node}")
}

/// Every member `hac` should have, given the cluster's nodes.
pub fn desired(hac: &HighAvailabilityCluster, nodes: &[Node]) -> Desired {
    let (chosen, mut problems) = masters(hac, nodes);
    let Some(vip) = vip_address(&hac.spec.vip) else {
        return Desired { members: Vec::new(), problems };
    };
    let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut addressed: Vec<(String, IpAddr)> = Vec::new();
    for node in chosen {
        match node_address(node, &vip) {
            Some(ip) => addressed.push((node.name_any(), ip)),
            None => problems.push(Problem::NoAddress { node: node.name_any(), family }),
        }
    }
    let names: Vec<String> = addressed.iter().map(|(n, _)| n.clone()).collect();
    let prio = priorities(&names, &hac.spec.masters.priorities);
    let boost = fencing_boost(hac, prio.values().copied());
    let members =
        addressed.iter().map(|(node, ip)| member(hac, node, ip, prio[node], boost, &addressed, &vip)).collect();
    Desired { members, problems }
}

/// Every member's advert source, sorted, once each of `want` reports one of the VIP's family in its existing
/// member's status.advertSource; empty until then, so that no member is taken for a stranger (an IPv6
/// member advertises from a link-local address that no node object shows, and an IPv4 one not always from
/// its InternalIP). A member on its way out (in `existing`, not in `want`) stays listed while it exists: it
/// may hold the VIP until it hands it over, and its release must be heard.
pub fn advert_sources(want: &[HighAvailabilityMember], existing: &[HighAvailabilityMember]) -> Vec<String> {
    let Some(vip) = want.first().and_then(|m| m.spec.vip.as_deref()).and_then(vip_address) else {
        return Vec::new();
    };
    let source = |e: &HighAvailabilityMember| {
        e.status.as_ref()?.advert_source.as_deref()?.parse::<IpAddr>().ok().filter(|a| a.is_ipv4() == vip.is_ipv4())
    };
    let mut sources = Vec::new();
    for m in want {
        match existing.iter().find(|e| e.metadata.name == m.metadata.name).and_then(source) {
            Some(a) => sources.push(a),
            None => return Vec::new(),
        }
    }
    let leaving = existing.iter().filter(|e| !want.iter().any(|m| m.metadata.name == e.metadata.name));
    sources.extend(leaving.filter_map(source));
    sources.sort_unstable();
    sources.dedup();
    sources.iter().map(ToString::to_string).collect()
}

/// Quorum fencing in VRRP mode: the spread of the priorities plus one, so that a member that renews its
/// heartbeat, raised by this, outranks every member that cannot, and both groups keep their order.
pub fn fencing_boost(hac: &HighAvailabilityCluster, priorities: impl Iterator<Item = i32> + Clone) -> i32 {
    let e = &hac.spec.election;
    if !e.quorum_fencing || e.mode != ElectionMode::Vrrp {
        return 0;
    }
    match (priorities.clone().min(), priorities.max()) {
        (Some(lo), Some(hi)) => (hi - lo + 1).min(253),
        _ => 0,
    }
}

fn member(
    hac: &HighAvailabilityCluster,
    node: &str,
    ip: &IpAddr,
    priority: i32,
    fencing_boost: i32,
    all: &[(String, IpAddr)],
    vip: &IpAddr,
) -> HighAvailabilityMember {
    let s = &hac.spec;
    let peers = if s.vrrp.unicast {
        all.iter().filter(|(n, _)| n != node).map(|(_, a)| a.to_string()).collect()
    } else {
        Vec::new()
    };
    let health = if s.health.enabled {
        vec![HealthCheck {
            name: "apiserver".into(),
            https: Some(HttpsCheck {
                url: format!("https://{}{}", host_port(ip, s.proxy.backend_port), s.health.path),
                ca_file: None,
                insecure_skip_verify: false,
            }),
            tcp: None,
            link: None,
            interval: s.health.interval,
            timeout: s.health.timeout,
            rise: s.health.rise,
            fall: s.health.fall,
            weight: -s.health.priority_penalty,
        }]
    } else {
        Vec::new()
    };
    let proxy = s.proxy.enabled.then(|| MemberProxy {
        enabled: true,
        listen: host_port(vip, s.proxy.port),
        backends: all.iter().map(|(_, a)| host_port(a, s.proxy.backend_port)).collect(),
        balance: s.proxy.balance,
        health_check: s.proxy.health_check.clone(),
        connect_timeout: s.proxy.connect_timeout,
        idle_timeout: s.proxy.idle_timeout,
        close_on_backend_down: s.proxy.close_on_backend_down,
        max_connections: s.proxy.max_connections,
        tcp_keepalive: s.proxy.tcp_keepalive,
    });
    let spec = HighAvailabilityMemberSpec {
        node_name: node.into(),
        interface: s.interface.clone(),
        vip: Some(s.vip.clone()),
        vrid: Some(s.vrid),
        priority,
        vrrp: MemberVrrp {
            version: s.vrrp.version,
            advert_interval: s.vrrp.advert_interval,
            preempt: s.vrrp.preempt,
            preempt_delay: s.vrrp.preempt_delay,
            peers,
            accept: true,
            // Filled in by advert_sources once every member has reported its own.
            members: Vec::new(),
            strangers: s.vrrp.strangers,
        },
        garp: s.vrrp.garp.clone(),
        health,
        proxy,
        election: s.election.clone(),
        fencing_boost,
        etcd: s.etcd.clone(),
        metrics: Metrics::default(),
        state_dir: "/var/lib/kubeha".into(),
    };
    let mut m = HighAvailabilityMember::new(&member_name(&hac.name_any(), node), spec);
    m.metadata = ObjectMeta {
        name: m.metadata.name.take(),
        labels: Some(BTreeMap::from([(CLUSTER_LABEL.into(), hac.name_any()), (NODE_LABEL.into(), node.into())])),
        owner_references: owner(hac).map(|o| vec![o]),
        finalizers: Some(vec![RELEASE_FINALIZER.into()]),
        ..ObjectMeta::default()
    };
    m
}

fn owner(hac: &HighAvailabilityCluster) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: HighAvailabilityCluster::api_version(&()).into(),
        kind: HighAvailabilityCluster::kind(&()).into(),
        name: hac.name_any(),
        uid: hac.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use serde_json::json;

    pub(crate) fn node(name: &str, ips: &[&str], control_plane: bool) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        if control_plane {
            n.metadata.labels = Some(BTreeMap::from([(CONTROL_PLANE_LABEL.into(), String::new())]));
        }
        n.status = Some(NodeStatus {
            addresses: Some(
                ips.iter().map(|a| NodeAddress { type_: "InternalIP".into(), address: (*a).into() }).collect(),
            ),
            ..NodeStatus::default()
        });
        n
    }

    pub(crate) fn hac(spec: serde_json::Value) -> HighAvailabilityCluster {
        let mut base = json!({"vip": "198.51.100.10/24", "vrid": 51, "interface": "eth0"});
        for (k, v) in spec.as_object().unwrap() {
            base[k] = v.clone();
        }
        let mut h = HighAvailabilityCluster::new("api", serde_json::from_value(base).unwrap());
        h.metadata.uid = Some("uid-1".into());
        h
    }

    fn three() -> Vec<Node> {
        vec![
            node("n2", &["198.51.100.12", "2001:db8::12"], true),
            node("n1", &["198.51.100.11", "2001:db8::11"], true),
            node("n3", &["198.51.100.13", "2001:db8::13"], true),
            node("w1", &["198.51.100.31"], false),
        ]
    }

    #[test]
    fn the_members_advert_sources_are_listed_once_every_member_reported_one_of_the_vips_family() {
        let want = desired(&hac(json!({})), &three()).members;
        let mut existing = want.clone();
        let report = |m: &mut HighAvailabilityMember, source: &str| {
            m.status = Some(kubeha_crds::HighAvailabilityMemberStatus {
                advert_source: Some(source.into()),
                ..Default::default()
            });
        };
        report(&mut existing[0], "198.51.100.13");
        report(&mut existing[1], "198.51.100.11");
        assert_eq!(advert_sources(&want, &existing), Vec::<String>::new(), "n3 has not reported");
        report(&mut existing[2], "fe80::3");
        assert_eq!(advert_sources(&want, &existing), Vec::<String>::new(), "another family is no source of this VIP");
        report(&mut existing[2], "198.51.100.12");
        assert_eq!(advert_sources(&want, &existing), ["198.51.100.11", "198.51.100.12", "198.51.100.13"]);
        assert_eq!(advert_sources(&want, &existing[..2]), Vec::<String>::new(), "a member not created yet");
        // n3 stops being a master: listed until its member is gone, so that its hand-over is heard.
        assert_eq!(advert_sources(&want[..2], &existing), ["198.51.100.11", "198.51.100.12", "198.51.100.13"]);
        assert_eq!(advert_sources(&want[..2], &existing[..2]), ["198.51.100.11", "198.51.100.13"]);
    }

    #[test]
    fn by_default_the_control_plane_nodes_are_the_masters_in_name_order() {
        let d = desired(&hac(json!({})), &three());
        let names: Vec<_> = d.members.iter().map(|m| m.spec.node_name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert!(d.problems.is_empty());
        assert_eq!(d.members[0].metadata.name.as_deref(), Some("api-n1"));
    }

    #[test]
    fn named_masters_and_selectors_choose_and_missing_names_are_reported() {
        let d = desired(&hac(json!({"masters": {"nodes": ["n3", "w1", "n9"]}})), &three());
        let names: Vec<_> = d.members.iter().map(|m| m.spec.node_name.as_str()).collect();
        assert_eq!(names, ["n3", "w1"]);
        assert_eq!(d.problems, [Problem::NodeNotFound("n9".into())]);

        let sel = json!({"masters": {"nodeSelector": {"matchExpressions": [{"key": CONTROL_PLANE_LABEL, "operator": "DoesNotExist"}]}}});
        let names: Vec<_> = desired(&hac(sel), &three()).members.into_iter().map(|m| m.spec.node_name).collect();
        assert_eq!(names, ["w1"]);
    }

    #[test]
    fn priorities_are_ordered_spaced_below_a_penalty_and_overridable() {
        let ms: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let p = priorities(&ms, &BTreeMap::new());
        assert_eq!(p, BTreeMap::from([("n1".into(), 200), ("n2".into(), 190), ("n3".into(), 180)]));
        // A default penalty of 60 takes the top master below both others.
        assert!(p["n1"] - 60 < p["n3"]);
        let p = priorities(&ms, &BTreeMap::from([("n3".into(), 250)]));
        assert_eq!(p, BTreeMap::from([("n1".into(), 200), ("n2".into(), 190), ("n3".into(), 250)]));
        let many: Vec<String> = (0..64).map(|i| format!("n{i:02}")).collect();
        let p = priorities(&many, &BTreeMap::new());
        assert!(p.values().all(|v| (1..=200).contains(v)));
        assert_eq!(p.values().collect::<BTreeSet<_>>().len(), 64, "distinct priorities");
    }

    #[test]
    fn a_member_carries_the_whole_agent_configuration() {
        let d = desired(&hac(json!({"vrrp": {"unicast": true}, "health": {"priorityPenalty": 70}})), &three());
        let m = &d.members[1].spec;
        assert_eq!((m.node_name.as_str(), m.priority, m.vrid), ("n2", 190, Some(51)));
        assert_eq!(m.vrrp.peers, ["198.51.100.11", "198.51.100.13"]);
        let check = &m.health[0];
        assert_eq!(check.https.as_ref().unwrap().url, "https://198.51.100.12:6443/readyz");
        assert_eq!(check.weight, -70);
        assert_eq!(m.fencing_boost, 21, "200 − 180 + 1: a renewing n3 (201) outranks a fenced n1 (200)");
        let proxy = m.proxy.as_ref().unwrap();
        assert_eq!(proxy.listen, "198.51.100.10:8443");
        assert_eq!(proxy.backends, ["198.51.100.11:6443", "198.51.100.12:6443", "198.51.100.13:6443"]);
        let meta = &d.members[1].metadata;
        assert_eq!(meta.labels.as_ref().unwrap()[NODE_LABEL], "n2");
        assert_eq!(meta.finalizers.as_deref(), Some(&[RELEASE_FINALIZER.to_string()][..]));
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn an_ipv6_vip_uses_ipv6_addresses_and_nodes_without_one_are_reported() {
        let d = desired(&hac(json!({"vip": "2001:db8::10/64", "masters": {"nodes": ["n1", "w1"]}})), &three());
        assert_eq!(d.members.len(), 1);
        let m = &d.members[0].spec;
        assert_eq!(m.proxy.as_ref().unwrap().listen, "[2001:db8::10]:8443");
        assert_eq!(m.health[0].https.as_ref().unwrap().url, "https://[2001:db8::11]:6443/readyz");
        assert_eq!(d.problems, [Problem::NoAddress { node: "w1".into(), family: "IPv6" }]);
    }

    #[test]
    fn multicast_has_no_peers_and_disabled_parts_are_absent() {
        let d = desired(&hac(json!({"proxy": {"enabled": false}, "health": {"enabled": false}})), &three());
        let m = &d.members[0].spec;
        assert!(m.vrrp.peers.is_empty());
        assert!(m.proxy.is_none());
        assert!(m.health.is_empty());
    }
}
