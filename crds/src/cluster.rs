//! `HighAvailabilityCluster`: the user's intent for one highly available control-plane endpoint.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::interval::Interval;
use crate::rules;

/// One highly available API endpoint for a control plane: a virtual IP that VRRP moves between the masters
/// in well under a second, an L4 proxy on it that spreads clients over every healthy kube-apiserver, and
/// quorum fencing so that only a master in the etcd majority keeps the VIP.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubeha.io",
    version = "v1alpha1",
    kind = "HighAvailabilityCluster",
    plural = "highavailabilityclusters",
    shortname = "hac",
    category = "kubeha",
    doc = "HighAvailabilityCluster makes a control plane's API endpoint highly available: a virtual IP that VRRP moves between the masters in well under a second, a health-checked L4 proxy on it over every healthy kube-apiserver, and quorum fencing. The operator renders one HighAvailabilityMember per master from it; read its status conditions and members to see what the masters do.",
    status = "HighAvailabilityClusterStatus",
    printcolumn = r#"{"name":"VIP","type":"string","jsonPath":".spec.vip"}"#,
    printcolumn = r#"{"name":"VRID","type":"integer","jsonPath":".spec.vrid"}"#,
    printcolumn = r#"{"name":"ACTIVE","type":"string","jsonPath":".status.activeNode"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"MEMBERS","type":"string","jsonPath":".status.membersReady"}"#,
    printcolumn = r#"{"name":"TOLERANCE","type":"integer","jsonPath":".status.faultTolerance"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct HighAvailabilityClusterSpec {
    /// The virtual IP with its prefix length, IPv4 or IPv6: 198.51.100.10/24, 2001:db8::10/64. Clients and
    /// kubeconfigs use this address. It must be a host address in the masters' subnet (not its network or
    /// broadcast address), and it must be in the API servers' certificate SANs.
    #[schemars(length(max = 64), transform = rules::with(rules::vip("spec.vip")))]
    pub vip: String,

    /// The VRRP virtual router id, 1–255. Every virtual router of one address family on one network segment
    /// needs its own: two IPv4 (or two IPv6) clusters with the same VRID on one segment fight over the VIP.
    /// IPv4 and IPv6 have separate VRID spaces, so a dual-stack control plane may use one VRID for both.
    #[schemars(transform = rules::with([rules::vrid("spec.vrid")]))]
    pub vrid: i32,

    /// The network interface that carries the VIP on every master, e.g. eth0. Leave it out when the masters
    /// name their NICs differently (eno1, ens3, eth0): each agent then uses the one interface of its node that
    /// has an address in the VIP's subnet, and reports it in its member's status.interface; a master with
    /// none (or with several) reports an error that the cluster's conditions name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15), transform = rules::with([rules::interface("spec.interface")]))]
    pub interface: Option<String>,

    /// Which nodes are masters. Default: the nodes labelled node-role.kubernetes.io/control-plane.
    #[serde(default)]
    pub masters: Masters,

    /// VRRP timers and behaviour.
    #[serde(default)]
    pub vrrp: VrrpSpec,

    /// The check of each master's own kube-apiserver that lowers its VRRP priority when it fails.
    #[serde(default)]
    pub health: LocalHealthSpec,

    /// The L4 proxy on the VIP that spreads clients over every healthy kube-apiserver.
    #[serde(default)]
    pub proxy: ProxySpec,

    /// Who may hold the VIP: VRRP alone, or a Lease, and quorum fencing.
    #[serde(default)]
    pub election: ElectionSpec,

    /// Where etcd runs: on the masters (Stacked, kubeadm's default) or on hosts of its own (External). The
    /// status's etcd quorum and fault tolerance follow it.
    #[serde(default)]
    pub etcd: EtcdSpec,
}

/// Where etcd runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EtcdTopology {
    /// One etcd member on each master (kubeadm's default): each agent probes its own node's member.
    #[default]
    Stacked,
    /// etcd on hosts of its own, listed in members: every agent probes every member.
    External,
}

/// The etcd cluster behind the API servers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Messages name the field from this object; the API server prefixes the path (spec.etcd.members).
#[schemars(transform = rules::with([
    kube::core::Rule::new("self.topology != 'External' || (has(self.members) && size(self.members) > 0)")
        .message("must list every etcd member (name and healthURL) when topology is External")
        .field_path(".members"),
    kube::core::Rule::new("self.topology != 'Stacked' || !has(self.members) || size(self.members) == 0")
        .message("is only for topology External: stacked etcd has one member on each master, which its agent \
                  probes locally; remove members or set topology: External")
        .field_path(".members"),
    kube::core::Rule::new("!has(self.members) || self.members.all(m, self.members.exists_one(n, n.name == m.name))")
        .message("must have unique names")
        .field_path(".members"),
]))]
pub struct EtcdSpec {
    /// Stacked (default) or External.
    #[serde(default)]
    pub topology: EtcdTopology,

    /// With topology External: every etcd member, 1–9. The tolerance in the status is etcd's:
    /// n − (⌊n/2⌋ + 1) of these, whatever the number of masters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub members: Vec<EtcdMember>,
}

impl EtcdSpec {
    /// The default: etcd stacked on the masters (nothing to list).
    pub fn is_stacked(&self) -> bool {
        self.topology == EtcdTopology::Stacked && self.members.is_empty()
    }
}

/// One etcd member of an external etcd cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMember {
    /// The member's name (etcd's --name), shown in the status.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Where the member answers /health without a client certificate: its metrics listener
    /// (etcd --listen-metrics-urls, kubeadm's is http://127.0.0.1:2381 — listen on the host's address for
    /// this), like http://198.51.100.31:2381/health. That listener gives no access to etcd's data, so the
    /// agents need no etcd credential. 200 with "health": "true" is healthy.
    #[serde(rename = "healthURL")]
    #[schemars(length(max = 512), transform = rules::with([kube::core::Rule::new(
        "isURL(self) && (self.startsWith('http://') || self.startsWith('https://'))")
        .message("must be an http:// or https:// URL, like http://198.51.100.31:2381/health")]))]
    pub health_url: String,
}

/// The masters of the cluster: either a list of node names or a label selector, not both.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::with([
    kube::core::Rule::new("!(has(self.nodes) && has(self.nodeSelector))")
        .message("spec.masters: set either nodes or nodeSelector, not both"),
]))]
pub struct Masters {
    /// The master nodes by name. Omit both this and nodeSelector to select the nodes labelled
    /// node-role.kubernetes.io/control-plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 253)), transform = rules::with([
        kube::core::Rule::new("size(self) > 0").message(
            "spec.masters.nodes must name at least one node; omit it to select the control-plane nodes"),
    ]))]
    pub nodes: Option<Vec<String>>,

    /// The master nodes by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// VRRP priorities by node name, 1–254, overriding the ones the operator assigns. The highest healthy
    /// priority holds the VIP. (255 is reserved for the owner of the address, which a VIP never is.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64), transform = rules::with([
        kube::core::Rule::new("self.all(node, self[node] >= 1 && self[node] <= 254)")
            .message("spec.masters.priorities values must be from 1 to 254"),
    ]))]
    pub priorities: BTreeMap<String, i32>,
}

/// VRRP timers and behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::with(rules::advert_interval("spec.vrrp")))]
pub struct VrrpSpec {
    /// VRRP version: 3 (RFC 9568, default; sub-second adverts, IPv4 and IPv6) or 2 (RFC 3768; whole-second
    /// adverts, IPv4 only) to share a virtual router with keepalived in VRRPv2 mode.
    #[serde(default = "defaults::version")]
    #[schemars(transform = rules::with([kube::core::Rule::new("self == 2 || self == 3")
        .message("spec.vrrp.version must be 2 or 3")]))]
    pub version: i32,

    /// How often the master advertises. A backup takes over after about 3 × this plus a skew of at most
    /// one interval: 100ms (default) gives failover in about 0.4 s. Version 3: 10ms–40950ms in steps of
    /// 10ms; version 2: whole seconds, 1s–255s.
    #[serde(default = "defaults::advert_interval")]
    pub advert_interval: Interval,

    /// Whether a higher-priority master takes the VIP back from a lower-priority one (default true).
    #[serde(default = "defaults::yes")]
    pub preempt: bool,

    /// How long a higher-priority master waits after start before preempting, so that a node that has just
    /// booted does not take the VIP before its API server is ready. 0s–1000s, default 0s.
    #[serde(default = "defaults::zero")]
    #[schemars(transform = rules::with([rules::duration_range("spec.vrrp.preemptDelay", "0s", "1000s")]))]
    pub preempt_delay: Interval,

    /// Send adverts to the other masters' InternalIPs instead of multicast (224.0.0.18 / ff02::12), for
    /// networks that filter multicast. Default false.
    #[serde(default)]
    pub unicast: bool,

    /// Gratuitous ARP / unsolicited neighbour advertisements sent when a master takes the VIP.
    #[serde(default)]
    pub garp: GarpSpec,

    /// What the masters do with VRRP adverts for this VRID from a router that is not one of them (a
    /// keepalived, another cluster, a forgotten test box). Ignore (default): they are counted and reported (a
    /// Conflict condition with reason StrangerOnVRID, an Event, the members' status.strangers) and take no
    /// part in the election, so such a router cannot take the VIP away or make the masters drop it. Elect:
    /// reported the same, and they take part by RFC 9568 rules: set it while migrating from keepalived, where
    /// both must agree on one master for a while, and set it back after. With Elect, VRRPv2 adverts that
    /// carry keepalived's `auth_type PASS` are heard too (the password is not checked: it travels in clear).
    #[serde(default)]
    pub strangers: StrangerPolicy,
}

/// What VRRP adverts from routers that are not members of the cluster do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StrangerPolicy {
    /// Counted and reported, left out of the election (default).
    #[default]
    Ignore,
    /// Counted and reported, and part of the election (a migration from keepalived).
    Elect,
}

/// Announcements that tell switches and neighbours the VIP's new MAC address after a takeover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GarpSpec {
    /// Announcements per burst, 1–100 (default 5).
    #[serde(default = "defaults::garp_repeat")]
    #[schemars(transform = rules::with([rules::range("spec.vrrp.garp.repeat", 1, 100, "announcements per burst")]))]
    pub repeat: i32,

    /// Delay before a second burst, 0s (no second burst) to 60s; default 5s.
    #[serde(default = "defaults::garp_delay")]
    #[schemars(transform = rules::with([rules::duration_range("spec.vrrp.garp.delay", "0s", "60s")]))]
    pub delay: Interval,

    /// Re-announce periodically while master, 0s (never, default) to 3600s.
    #[serde(default = "defaults::zero")]
    #[schemars(transform = rules::with([rules::duration_range("spec.vrrp.garp.refreshInterval", "0s", "3600s")]))]
    pub refresh_interval: Interval,
}

/// The check of each master's local kube-apiserver. While it fails, the master's VRRP priority is lowered
/// by priorityPenalty so that a master with a healthy API server takes the VIP.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalHealthSpec {
    /// Whether to check the local kube-apiserver at all (default true).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,

    /// HTTPS path to GET on the local kube-apiserver (default /readyz). 200 is healthy; 401 and 403 count as
    /// alive when anonymous requests are refused.
    #[serde(default = "defaults::readyz")]
    #[schemars(length(max = 256), transform = rules::with([kube::core::Rule::new("self.startsWith('/')")
        .message("spec.health.path must start with '/', like /readyz")]))]
    pub path: String,

    /// Time between checks, 100ms–60s (default 250ms: a stopped API server is detected within about
    /// fall × interval, and the VIP leaves its master about 1.3 s after it stops at 100ms adverts).
    #[serde(default = "defaults::local_interval")]
    #[schemars(transform = rules::with([rules::duration_range("spec.health.interval", "100ms", "60s")]))]
    pub interval: Interval,

    /// How long one check may take, 100ms–60s (default 1s).
    #[serde(default = "defaults::second")]
    #[schemars(transform = rules::with([rules::duration_range("spec.health.timeout", "100ms", "60s")]))]
    pub timeout: Interval,

    /// Consecutive successes before a failing API server counts as healthy again, 1–10 (default 2).
    #[serde(default = "defaults::rise")]
    #[schemars(transform = rules::with([rules::range("spec.health.rise", 1, 10, "consecutive successes")]))]
    pub rise: i32,

    /// Consecutive failures before the API server counts as unhealthy, 1–10 (default 3).
    #[serde(default = "defaults::fall")]
    #[schemars(transform = rules::with([rules::range("spec.health.fall", 1, 10, "consecutive failures")]))]
    pub fall: i32,

    /// How much the VRRP priority drops while the check fails, 0–254 (default 60). 0 means the master gives
    /// up the VIP entirely (VRRP FAULT) instead.
    #[serde(default = "defaults::penalty")]
    #[schemars(transform = rules::with([rules::range("spec.health.priorityPenalty", 0, 254,
        "0 gives up the VIP while unhealthy, more lowers the priority by that much")]))]
    pub priority_penalty: i32,
}

/// How the proxy balances new connections.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Balance {
    /// Each new connection goes to the next healthy backend in turn.
    #[default]
    RoundRobin,
    /// Each new connection goes to the healthy backend with the fewest open connections.
    LeastConnections,
}

/// The L4 proxy on the VIP. TLS passes through untouched: clients authenticate to kube-apiserver itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::with([kube::core::Rule::new("self.port != self.backendPort")
    .message("spec.proxy.port must differ from spec.proxy.backendPort: kube-apiserver usually listens on every address of the node")
    .field_path(".port")]))]
pub struct ProxySpec {
    /// Whether to run the proxy (default true). Without it, clients reach only the API server of the master
    /// that holds the VIP.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,

    /// The port the proxy listens on at the VIP (default 8443).
    #[serde(default = "defaults::proxy_port")]
    #[schemars(transform = rules::with([rules::port("spec.proxy.port")]))]
    pub port: i32,

    /// The port of kube-apiserver on every master (default 6443).
    #[serde(default = "defaults::backend_port")]
    #[schemars(transform = rules::with([rules::port("spec.proxy.backendPort")]))]
    pub backend_port: i32,

    /// RoundRobin (default) or LeastConnections.
    #[serde(default)]
    pub balance: Balance,

    /// Active health checks of every backend.
    #[serde(default)]
    pub health_check: ProxyHealthCheck,

    /// How long a connection to a backend may take before the next backend is tried, 100ms–30s (default 1s).
    #[serde(default = "defaults::second")]
    #[schemars(transform = rules::with([rules::duration_range("spec.proxy.connectTimeout", "100ms", "30s")]))]
    pub connect_timeout: Interval,

    /// Close idle connections after this long. Unset (default): never, so watches and `kubectl logs -f`
    /// survive quiet periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rules::with([rules::duration_range("spec.proxy.idleTimeout", "1s", "86400s")]))]
    pub idle_timeout: Option<Interval>,

    /// Close the open connections to a backend when it turns unhealthy, so watches reconnect to a healthy API
    /// server at once instead of hanging (default true).
    #[serde(default = "defaults::yes")]
    pub close_on_backend_down: bool,

    /// Most client connections open at once, 1–1000000 (default 10000). Further clients wait in the
    /// kernel's accept queue until a connection closes.
    #[serde(default = "defaults::max_connections")]
    #[schemars(transform = rules::with([rules::range("spec.proxy.maxConnections", 1, 1_000_000, "open client connections")]))]
    pub max_connections: i32,

    /// TCP keepalive idle time on both sides of every connection, 0s–7200s (default 30s; 0s: off). It finds
    /// peers that vanished without a word, which no traffic on an idle watch would.
    #[serde(default = "defaults::tcp_keepalive")]
    #[schemars(transform = rules::with([rules::duration_range("spec.proxy.tcpKeepalive", "0s", "7200s")]))]
    pub tcp_keepalive: Interval,
}

/// Active health checks of the proxy's backends: HTTPS GET of path on every kube-apiserver.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyHealthCheck {
    /// HTTPS path to GET (default /readyz). 200 is up; 401 and 403 count as up when anonymous requests are
    /// refused.
    #[serde(default = "defaults::readyz")]
    #[schemars(length(max = 256), transform = rules::with([kube::core::Rule::new("self.startsWith('/')")
        .message("healthCheck.path must start with '/', like /readyz")]))]
    pub path: String,

    /// Time between checks of one backend, 100ms–60s (default 1s).
    #[serde(default = "defaults::second")]
    #[schemars(transform = rules::with([rules::duration_range("healthCheck.interval", "100ms", "60s")]))]
    pub interval: Interval,

    /// How long one check may take, 100ms–60s (default 1s).
    #[serde(default = "defaults::second")]
    #[schemars(transform = rules::with([rules::duration_range("healthCheck.timeout", "100ms", "60s")]))]
    pub timeout: Interval,

    /// Consecutive successes before a backend is back in rotation, 1–10 (default 2).
    #[serde(default = "defaults::rise")]
    #[schemars(transform = rules::with([rules::range("healthCheck.rise", 1, 10, "consecutive successes")]))]
    pub rise: i32,

    /// Consecutive failures before a backend is out of rotation, 1–10 (default 3). A failed connect of a
    /// client counts too.
    #[serde(default = "defaults::fall")]
    #[schemars(transform = rules::with([rules::range("healthCheck.fall", 1, 10, "consecutive failures")]))]
    pub fall: i32,

    /// A PEM file on the node with the CA that signed the API servers' serving certificates. Default: the
    /// cluster CA of the agent's service account (/var/run/secrets/kubernetes.io/serviceaccount/ca.crt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub ca_file: Option<String>,

    /// Skip verification of the backends' certificates. Default false: they are verified against caFile.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Who may hold the VIP.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ElectionMode {
    /// VRRP elects the master (default): sub-second, needs no API server.
    #[default]
    #[serde(rename = "VRRP")]
    Vrrp,
    /// The holder of a coordination.k8s.io Lease holds the VIP, for networks that block VRRP (protocol 112).
    Lease,
}

/// Leader election and quorum fencing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::with(rules::lease_timings("spec.election")))]
pub struct ElectionSpec {
    /// VRRP (default) or Lease.
    #[serde(default)]
    pub mode: ElectionMode,

    /// In VRRP mode, every member renews a Lease through its own kube-apiserver, a write that needs etcd
    /// quorum; a member that cannot within renewDeadline drops below every member that can, so the VIP goes
    /// to a master in the etcd majority. When nobody can renew, priorities stay as they are. Default true.
    #[serde(default = "defaults::yes")]
    pub quorum_fencing: bool,

    /// How long a Lease is valid without renewal (default 15s, 2s–300s).
    #[serde(default = "defaults::lease_duration")]
    #[schemars(transform = rules::with([rules::duration_range("spec.election.leaseDuration", "2s", "300s")]))]
    pub lease_duration: Interval,

    /// How long a holder keeps trying to renew before it gives up what it guards (default 10s).
    #[serde(default = "defaults::renew_deadline")]
    #[schemars(transform = rules::with([rules::duration_range("spec.election.renewDeadline", "1s", "300s")]))]
    pub renew_deadline: Interval,

    /// Time between renewal or acquisition attempts (default 2s).
    #[serde(default = "defaults::retry_period")]
    #[schemars(transform = rules::with([rules::duration_range("spec.election.retryPeriod", "100ms", "60s")]))]
    pub retry_period: Interval,
}

/// What kubeha observes about a HighAvailabilityCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HighAvailabilityClusterStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, VIPAccepted (the VIP is no node's address and lies on the masters' network), VIPAvailable
    /// (exactly one member holds the VIP), ProxyAvailable, Degraded, QuorumAtRisk and Conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The node that holds the VIP right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_node: Option<String>,

    /// The most recent node that held the VIP; kept while nobody holds it, so that a failover across the
    /// gap (the old master is gone before a backup takes over) is recognised as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_holder: Option<String>,

    /// Healthy members out of all members, like 3/3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_ready: Option<String>,

    /// One entry per master.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberSummary>,

    /// How many etcd members may fail with the rest keeping quorum: n − (⌊n/2⌋ + 1), n the masters with
    /// stacked etcd, the members of spec.etcd.members with external etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_tolerance: Option<i32>,

    /// The control plane behind the VIP: each master's components, the controller leaders, etcd quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneView>,

    /// The latest move of the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<Failover>,

    /// How often the VIP has moved since the cluster was created.
    #[serde(default)]
    pub failover_count: i64,
}

/// One master as the cluster status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberSummary {
    /// The node name.
    pub node: String,
    /// The member's VRRP state: Initialize, Backup, Master, Fault, or Unknown when its agent stopped reporting.
    pub state: crate::member::VrrpState,
    /// The configured priority.
    pub priority: i32,
    /// The priority after health penalties, as advertised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_priority: Option<i32>,
    /// Whether all of the member's health checks pass.
    pub healthy: bool,
    /// When the member entered its current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// The control plane as the agents and the API report it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneView {
    /// Each master's components (absent: unknown — its agent is not reporting or does not probe it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masters: Vec<MasterHealth>,
    /// The node whose kube-controller-manager holds the kube-system/kube-controller-manager Lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_manager_leader: Option<String>,
    /// The node whose kube-scheduler holds the kube-system/kube-scheduler Lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_leader: Option<String>,
    /// etcd quorum, from the members' etcd health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdQuorum>,
    /// With spec.etcd.topology External: each etcd member, healthy when any agent that reports it reaches
    /// it healthy (etcd's /health is false on a member without a leader, so one healthy answer means the
    /// member is in quorum; an agent that cannot reach it has a network problem of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_members: Vec<EtcdMemberView>,
}

/// One external etcd member as the cluster status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMemberView {
    /// The member's name, from spec.etcd.members.
    pub name: String,
    /// Healthy by some agent's probe; absent while no agent has probed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// The masters whose agents reach it healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub healthy_from: Vec<String>,
    /// What a failing probe saw (the first one, by node name), while nobody reaches it healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One master's control-plane components.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasterHealth {
    /// The node.
    pub node: String,
    /// kube-apiserver ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<bool>,
    /// etcd member healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<bool>,
    /// kube-controller-manager healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_manager: Option<bool>,
    /// kube-scheduler healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<bool>,
}

/// etcd quorum.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdQuorum {
    /// etcd members: one per master when stacked, spec.etcd.members when external.
    pub members: i32,
    /// Members reported healthy.
    pub healthy: i32,
    /// How many more may fail before quorum is lost: healthy − (⌊members/2⌋ + 1), at least 0 while quorum
    /// holds; −1 when it is lost.
    pub fault_tolerance: i32,
}

/// A move of the VIP from one master to another.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// The node that held the VIP before, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The node that holds it after.
    pub to: String,
    /// When the new holder took it.
    pub at: Time,
    /// Why, in a word: MasterDown, Preempted, Unhealthy, QuorumLost, Released.
    pub reason: String,
}

pub(crate) mod defaults {
    use crate::interval::Interval;

    pub(super) fn version() -> i32 {
        3
    }
    pub(super) fn advert_interval() -> Interval {
        Interval::from_millis(100)
    }
    pub(crate) fn yes() -> bool {
        true
    }
    pub(super) fn zero() -> Interval {
        Interval::from_millis(0)
    }
    pub(crate) fn second() -> Interval {
        Interval::from_secs(1)
    }
    pub(super) fn garp_repeat() -> i32 {
        5
    }
    pub(super) fn garp_delay() -> Interval {
        Interval::from_secs(5)
    }
    pub(super) fn readyz() -> String {
        "/readyz".into()
    }
    pub(super) fn local_interval() -> Interval {
        Interval::from_millis(250)
    }
    pub(super) fn rise() -> i32 {
        2
    }
    pub(super) fn fall() -> i32 {
        3
    }
    pub(super) fn penalty() -> i32 {
        60
    }
    pub(super) fn proxy_port() -> i32 {
        8443
    }
    pub(super) fn backend_port() -> i32 {
        6443
    }
    pub(crate) fn max_connections() -> i32 {
        10_000
    }
    pub(crate) fn tcp_keepalive() -> Interval {
        Interval::from_secs(30)
    }
    pub(super) fn lease_duration() -> Interval {
        Interval::from_secs(15)
    }
    pub(super) fn renew_deadline() -> Interval {
        Interval::from_secs(10)
    }
    pub(super) fn retry_period() -> Interval {
        Interval::from_secs(2)
    }
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            /// Every field at its documented default (what the API server fills in for an omitted object).
            fn default() -> Self {
                serde_json::from_value(serde_json::json!({})).unwrap_or_else(|e| unreachable!("{e}"))
            }
        }
    )*};
}
default_from_serde!(VrrpSpec, GarpSpec, LocalHealthSpec, ProxySpec, ProxyHealthCheck, ElectionSpec);
