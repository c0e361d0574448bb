//! `HighAvailabilityMember`: the complete configuration of one node's agent, and what that agent observes.
//!
//! The spec has exactly the shape of the agent's standalone config file (`kubeha-agent run --config FILE`):
//! the operator writes members, a person or a bootstrap step writes the file, and the agent treats both alike.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cluster::defaults::{second, yes};
use crate::cluster::{Balance, ElectionSpec, GarpSpec, ProxyHealthCheck, StrangerPolicy};
use crate::interval::Interval;
use crate::rules;

/// One master's share of a HighAvailabilityCluster: everything its agent needs to run, written by the
/// operator and named `<cluster>-<node>`. The agent reports back in its status.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubeha.io",
    version = "v1alpha1",
    kind = "HighAvailabilityMember",
    plural = "highavailabilitymembers",
    shortname = "ham",
    category = "kubeha",
    doc = "HighAvailabilityMember is one master's share of a HighAvailabilityCluster, named <cluster>-<node>: the complete configuration of that node's agent, written by the operator, and what the agent observes, written by the agent. Its spec has the same shape as the agent's standalone config file.",
    status = "HighAvailabilityMemberStatus",
    printcolumn = r#"{"name":"NODE","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"STATE","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"VIP","type":"boolean","jsonPath":".status.holdsVIP"}"#,
    printcolumn = r#"{"name":"PRIORITY","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"EFFECTIVE","type":"integer","jsonPath":".status.effectivePriority"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::with([
    kube::core::Rule::new("has(self.vip) == has(self.vrid) && (has(self.vip) || !has(self.interface))")
        .message("vip and vrid go together, and interface needs them: set vip and vrid (and interface, or let the agent find it) for a VIP, or none of them for a proxy-only agent")
        .field_path(".vip"),
    kube::core::Rule::new("!has(self.vip) || !has(self.vrrp) || self.vrrp.version != 2 || !self.vip.contains(':')")
        .message("vrrp.version 2 is IPv4 only: use version 3 for an IPv6 VIP")
        .field_path(".vrrp.version"),
]))]
pub struct HighAvailabilityMemberSpec {
    /// The node this agent runs on.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,

    /// The interface that carries the VIP, e.g. eth0. Absent with a vip: the one interface of this node with
    /// an address in the VIP's subnet (status.interface says which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15), transform = rules::with([rules::interface("interface")]))]
    pub interface: Option<String>,

    /// The VIP with its prefix length. Absent: no VRRP, the agent runs only the proxy (a node-local API load
    /// balancer on 127.0.0.1, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), transform = rules::with(rules::vip("vip")))]
    pub vip: Option<String>,

    /// The VRRP virtual router id, 1–255.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rules::with([rules::vrid("vrid")]))]
    pub vrid: Option<i32>,

    /// This node's VRRP priority, 1–254 (255: the owner of the address). The highest effective priority
    /// holds the VIP; ties go to the higher primary address.
    #[serde(default = "default_priority")]
    #[schemars(transform = rules::with([rules::range("priority", 1, 255, "the VRRP priority, 255 only for the address owner")]))]
    pub priority: i32,

    /// VRRP protocol settings.
    #[serde(default)]
    pub vrrp: MemberVrrp,

    /// Announcements after taking the VIP.
    #[serde(default)]
    pub garp: GarpSpec,

    /// Checks that lower the effective priority (by their weight) while they fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub health: Vec<HealthCheck>,

    /// The L4 API proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<MemberProxy>,

    /// Leader election and quorum fencing.
    #[serde(default)]
    pub election: ElectionSpec,
    /// Quorum fencing: how much this member raises its priority while it renews its heartbeat Lease and
    /// another member of the cluster cannot. The operator sets it to the spread of the members' priorities
    /// plus one, so that every member that can renew outranks every one that cannot, and each group keeps its
    /// order. 0 (default, and for a standalone agent): no fencing.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(transform = rules::with([rules::range("fencingBoost", 0, 253, "set by the operator")]))]
    pub fencing_boost: i32,

    /// Where etcd runs, from the cluster's spec.etcd: with topology External the agent probes every member
    /// listed (and no etcd of its own node); Stacked (default) probes its node's own member.
    #[serde(default, skip_serializing_if = "crate::cluster::EtcdSpec::is_stacked")]
    pub etcd: crate::cluster::EtcdSpec,

    /// Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: Metrics,

    /// Kept for compatibility and not used: the agent in cluster mode keeps its last-known-good members in
    /// its --state-dir (a hostPath in the chart, default /var/lib/kubeha), needed before any member is read.
    #[serde(default = "default_state_dir")]
    #[schemars(length(max = 4096))]
    pub state_dir: String,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

fn default_priority() -> i32 {
    100
}

fn default_state_dir() -> String {
    "/var/lib/kubeha".into()
}

/// A router heard on this member's VRID that is not a member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StrangerSeen {
    /// The source address of its adverts.
    pub address: String,
    /// The addresses it announces.
    pub announced: Vec<String>,
    /// The priority it advertised last.
    pub priority: i32,
    /// Whether its adverts take part in this member's election (spec.vrrp.strangers: Elect).
    pub elected: bool,
    /// Since when it has been heard without a minute's silence.
    pub since: Time,
}

/// VRRP protocol settings of one member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::with(rules::advert_interval("vrrp")))]
pub struct MemberVrrp {
    /// 3 (default) or 2.
    #[serde(default = "three")]
    #[schemars(transform = rules::with([kube::core::Rule::new("self == 2 || self == 3").message("vrrp.version must be 2 or 3")]))]
    pub version: i32,
    /// How often a master advertises (default 100ms).
    #[serde(default = "hundred_ms")]
    pub advert_interval: Interval,
    /// Whether a higher priority takes the VIP from a lower one (default true).
    #[serde(default = "yes")]
    pub preempt: bool,
    /// Delay before preempting after start (default 0s).
    #[serde(default)]
    #[schemars(transform = rules::with([rules::duration_range("vrrp.preemptDelay", "0s", "1000s")]))]
    pub preempt_delay: Interval,
    /// Unicast peers (the other members' addresses). Empty (default): multicast to 224.0.0.18 / ff02::12.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 45)), transform = rules::with([kube::core::Rule::new("self.all(p, isIP(p))")
        .message("vrrp.peers must be IP addresses without prefix length, like 198.51.100.12")]))]
    pub peers: Vec<String>,
    /// Accept packets addressed to the VIP while master (RFC 9568 Accept_Mode). Default true: the proxy and
    /// clients on the VIP need it.
    #[serde(default = "yes")]
    pub accept: bool,
    /// The addresses every member of the cluster advertises from (written by the operator once each member
    /// has reported its status.advertSource). An advert for this VRID from any other address is a stranger's:
    /// counted, reported in status.strangers, and part of the election only with strangers: Elect. Empty
    /// (default, and a standalone agent): every router on the VRID is a peer, as in RFC 9568.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 45)), transform = rules::with([kube::core::Rule::new("self.all(p, isIP(p))")
        .message("vrrp.members must be IP addresses without prefix length, like 198.51.100.12")]))]
    pub members: Vec<String>,
    /// Whether a stranger's adverts (see members) take part in the election: Ignore (default) or Elect.
    #[serde(default)]
    pub strangers: StrangerPolicy,
}

fn three() -> i32 {
    3
}
fn hundred_ms() -> Interval {
    Interval::from_millis(100)
}

/// One health check of the agent. Exactly one of https, tcp and link is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::with([
    kube::core::Rule::new("[has(self.https), has(self.tcp), has(self.link)].filter(x, x).size() == 1")
        .message("a health check needs exactly one of https, tcp or link"),
]))]
pub struct HealthCheck {
    /// A name for logs, metrics and status (e.g. apiserver).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// HTTPS GET: 200 is healthy; 401 and 403 count as alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsCheck>,
    /// A TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// The carrier of a network interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkCheck>,
    /// Time between checks (default 1s).
    #[serde(default = "second")]
    #[schemars(transform = rules::with([rules::duration_range("interval", "10ms", "3600s")]))]
    pub interval: Interval,
    /// How long one check may take (default 1s).
    #[serde(default = "second")]
    pub timeout: Interval,
    /// Consecutive successes to become healthy (default 2).
    #[serde(default = "two")]
    #[schemars(transform = rules::with([rules::range("rise", 1, 10, "consecutive successes")]))]
    pub rise: i32,
    /// Consecutive failures to become unhealthy (default 3).
    #[serde(default = "three")]
    #[schemars(transform = rules::with([rules::range("fall", 1, 10, "consecutive failures")]))]
    pub fall: i32,
    /// Added to the priority while failing, −254 to 0; 0 means FAULT (give up the VIP).
    #[serde(default)]
    #[schemars(transform = rules::with([rules::range("weight", -254, 0, "negative lowers the priority, 0 gives up the VIP")]))]
    pub weight: i32,
}

fn two() -> i32 {
    2
}

/// An HTTPS GET check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpsCheck {
    /// The URL, e.g. https://198.51.100.11:6443/readyz.
    #[schemars(length(max = 2048), transform = rules::with([kube::core::Rule::new("isURL(self) && url(self).getScheme() == 'https'")
        .message("https.url must be an https:// URL, like https://198.51.100.11:6443/readyz")]))]
    pub url: String,
    /// A PEM file of CAs to verify the server against; default: the cluster CA in cluster mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Do not verify the server certificate.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A TCP connect check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpCheck {
    /// host:port, e.g. 127.0.0.1:2379.
    #[schemars(length(max = 256))]
    pub address: String,
}

/// A link (carrier) check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkCheck {
    /// The interface whose carrier must be up.
    #[schemars(length(max = 15), transform = rules::with([rules::interface("link.interface")]))]
    pub interface: String,
}

/// The member's API proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::with([
    kube::core::Rule::new("!self.enabled || (has(self.backends) && size(self.backends) > 0)")
        .message("proxy.backends needs at least one kube-apiserver address:port when the proxy is enabled")
        .field_path(".backends"),
]))]
pub struct MemberProxy {
    /// Whether to run it (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// address:port to listen on, e.g. 198.51.100.10:8443; it may be bound before the address is present.
    #[schemars(length(max = 64), transform = rules::with([rules::host_port("proxy.listen")]))]
    pub listen: String,
    /// address:port of every kube-apiserver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)), transform = rules::with([rules::host_ports("proxy.backends")]))]
    pub backends: Vec<String>,
    /// RoundRobin (default) or LeastConnections.
    #[serde(default)]
    pub balance: Balance,
    /// Active health checks of the backends.
    #[serde(default)]
    pub health_check: ProxyHealthCheck,
    /// Connect timeout per backend (default 1s).
    #[serde(default = "second")]
    #[schemars(transform = rules::with([rules::duration_range("proxy.connectTimeout", "100ms", "30s")]))]
    pub connect_timeout: Interval,
    /// Idle timeout; absent (default): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rules::with([rules::duration_range("proxy.idleTimeout", "1s", "86400s")]))]
    pub idle_timeout: Option<Interval>,
    /// Close connections to a backend that turns unhealthy (default true).
    #[serde(default = "yes")]
    pub close_on_backend_down: bool,
    /// Most client connections open at once (default 10000).
    #[serde(default = "crate::cluster::defaults::max_connections")]
    #[schemars(transform = rules::with([rules::range("proxy.maxConnections", 1, 1_000_000, "client connections at once")]))]
    pub max_connections: i32,
    /// TCP keepalive idle time on both sides (default 30s; 0s: off).
    #[serde(default = "crate::cluster::defaults::tcp_keepalive")]
    #[schemars(transform = rules::with([rules::duration_range("proxy.tcpKeepalive", "0s", "7200s")]))]
    pub tcp_keepalive: Interval,
}

/// The metrics endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// address:port for /metrics (default 127.0.0.1:9641).
    #[serde(default = "default_metrics")]
    #[schemars(length(max = 64), transform = rules::with([rules::host_port("metrics.listen")]))]
    pub listen: String,
}

fn default_metrics() -> String {
    "127.0.0.1:9641".into()
}

impl Default for Metrics {
    fn default() -> Self {
        Self { listen: default_metrics() }
    }
}

impl Default for MemberVrrp {
    fn default() -> Self {
        Self {
            version: three(),
            advert_interval: hundred_ms(),
            preempt: true,
            preempt_delay: Interval::default(),
            peers: Vec::new(),
            accept: true,
            members: Vec::new(),
            strangers: StrangerPolicy::Ignore,
        }
    }
}

/// A member's VRRP state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VrrpState {
    /// Starting up, not yet in the protocol.
    Initialize,
    /// Listening to the master, ready to take over.
    Backup,
    /// Holding the VIP and advertising.
    Master,
    /// Gave up the VIP because a check with weight 0 fails or the interface is down.
    Fault,
    /// The agent has stopped reporting (its heartbeat Lease expired).
    #[default]
    Unknown,
}

impl VrrpState {
    /// The state as the API spells it (and conditions' messages quote it).
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Initialize => "Initialize",
            VrrpState::Backup => "Backup",
            VrrpState::Master => "Master",
            VrrpState::Fault => "Fault",
            VrrpState::Unknown => "Unknown",
        }
    }
}

/// What the agent observes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HighAvailabilityMemberStatus {
    /// The metadata.generation of the spec the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The VRRP state.
    #[serde(default)]
    pub state: VrrpState,
    /// Whether the VIP is on this node's interface.
    #[serde(default, rename = "holdsVIP")]
    pub holds_vip: bool,
    /// The priority advertised after penalties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_priority: Option<i32>,
    /// Why the effective priority is below the configured one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub penalties: Vec<Penalty>,
    /// The address of the master this node hears, if another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_seen: Option<String>,
    /// Results of the health checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<CheckResult>,
    /// The proxy's backends. Written by the agent's proxy (field manager kubeha-agent-proxy), which runs in
    /// a container of its own beside the one that holds the VIP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_backends: Vec<BackendStatus>,
    /// Why the agent's proxy cannot serve this member, while it cannot (the listen address is taken, a port
    /// below 1024 without NET_BIND_SERVICE, …); absent when it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_error: Option<String>,
    /// When the agent's proxy last wrote proxyBackends. The operator reports the proxy as not reporting when
    /// this is older than the heartbeat timeout (its container is down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_heartbeat_time: Option<Time>,
    /// The latest state change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Transition>,
    /// The agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// The health of this node's control-plane components, as the agent probes them locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneHealth>,
    /// The interface that carries the VIP on this node: spec.interface, or the one the agent found with an
    /// address in the VIP's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The address this member's VRRP adverts come from (the interface's primary address of the VIP's
    /// family; IPv6: its link-local address). The operator lists every member's in spec.vrrp.members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advert_source: Option<String>,
    /// Routers heard in the last minute advertising this VRID that are not members of the cluster (or, before
    /// the members are known, that announce other addresses). The cluster's Conflict condition names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strangers: Vec<StrangerSeen>,
    /// Why the agent cannot run this member, while it cannot (the interface does not exist on this node, the
    /// proxy address is taken, …); absent when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the agent last wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
}

/// A reduction of the effective priority.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Penalty {
    /// What causes it: a health check's name, or QuorumFencing.
    pub source: String,
    /// How much it lowers the priority.
    pub amount: i32,
    /// A sentence for people.
    pub reason: String,
}

/// The latest result of one health check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it counts as healthy (after rise/fall).
    pub healthy: bool,
    /// What the last attempt saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Since when it has been in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// One proxy backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// address:port.
    pub address: String,
    /// Whether it is in rotation.
    pub healthy: bool,
    /// Open client connections through it.
    #[serde(default)]
    pub active_connections: i64,
    /// Since when it has been in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// A VRRP state change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// The state before.
    pub from: VrrpState,
    /// The state after.
    pub to: VrrpState,
    /// When.
    pub at: Time,
    /// Why: MasterDown, HigherPriority, Preempted, Shutdown, CheckFailed, …
    pub reason: String,
}

/// The node's control-plane components as its agent sees them over loopback. A component the agent is not
/// told to probe is absent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneHealth {
    /// kube-apiserver /readyz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<ComponentHealth>,
    /// The etcd member's /health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<ComponentHealth>,
    /// kube-controller-manager /healthz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_manager: Option<ComponentHealth>,
    /// kube-scheduler /healthz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<ComponentHealth>,
    /// Each member of an external etcd (spec.etcd.topology External), as this node reaches it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_members: Vec<EtcdMemberHealth>,
}

/// One external etcd member's /health as an agent sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMemberHealth {
    /// The member's name, from spec.etcd.members.
    pub name: String,
    /// Whether it answered healthy.
    pub healthy: bool,
    /// What the probe saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One component's health.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentHealth {
    /// Whether its health endpoint answered healthy.
    pub healthy: bool,
    /// What the probe saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_spelled_as_the_api_serializes_it() {
        use VrrpState::*;
        for s in [Initialize, Backup, Master, Fault, Unknown] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
