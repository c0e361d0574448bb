//! The agent's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels by one name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// The reason or state.
    pub reason: String,
}

/// Everything the VRRP driver counts.
#[derive(Clone, Debug, Default)]
pub struct VrrpMetrics {
    /// 1 for the current state, 0 for the others (`state` label).
    pub state: Family<Reason, Gauge>,
    /// State changes by reason.
    pub transitions: Family<Reason, Counter>,
    /// Adverts sent.
    pub adverts_sent: Counter,
    /// Valid adverts received for this VRID.
    pub adverts_received: Counter,
    /// Packets dropped, by reason (the DecodeError label, or other_vrid / own).
    pub invalid_packets: Family<Reason, Counter>,
    /// Gratuitous ARPs / unsolicited NAs sent.
    pub announcements: Counter,
    /// The advertised priority.
    pub effective_priority: Gauge,
    /// VIP additions/refreshes that failed.
    pub vip_errors: Counter,
    /// 1 while another host answers for the VIP and this router keeps out.
    pub vip_in_use: Gauge,
    /// Adverts for this VRID from routers that are not members (`source`), or that announce other addresses
    /// (`addresses`); an advert may count under both.
    pub stranger_adverts: Family<Reason, Counter>,
    /// TCP connections to the VIP reset as this node gave it up (so that their clients reconnect at once).
    pub connections_reset: Counter,
}

impl VrrpMetrics {
    /// Registers everything under `kubeha_vrrp_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("kubeha_vrrp");
        r.register("state", "1 for the current VRRP state", m.state.clone());
        r.register("transitions", "VRRP state changes by reason", m.transitions.clone());
        r.register("adverts_sent", "VRRP advertisements sent", m.adverts_sent.clone());
        r.register("adverts_received", "Valid VRRP advertisements received for this VRID", m.adverts_received.clone());
        r.register("invalid_packets", "VRRP packets dropped, by reason", m.invalid_packets.clone());
        r.register(
            "announcements",
            "Gratuitous ARPs / unsolicited neighbour advertisements sent",
            m.announcements.clone(),
        );
        r.register("effective_priority", "The priority advertised now", m.effective_priority.clone());
        r.register("vip_errors", "Failed attempts to add, refresh or remove the VIP", m.vip_errors.clone());
        r.register(
            "vip_in_use",
            "1 while another host answers for the VIP and this router does not take it",
            m.vip_in_use.clone(),
        );
        r.register(
            "stranger_adverts",
            "Adverts for this VRID from a router that is not a member (source) or that announces other addresses \
             (addresses)",
            m.stranger_adverts.clone(),
        );
        r.register(
            "connections_reset",
            "TCP connections to the VIP reset as this node gave it up, so that their clients reconnect at once",
            m.connections_reset.clone(),
        );
        m
    }

    /// Sets the state gauge.
    pub fn set_state(&self, state: &str) {
        for s in ["Initialize", "Backup", "Master", "Fault"] {
            self.state.get_or_create(&Reason { reason: s.into() }).set(i64::from(s == state));
        }
    }

    /// Counts a stranger's advert.
    pub fn stranger(&self, reason: &str) {
        self.stranger_adverts.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    /// Counts a dropped packet.
    pub fn dropped(&self, reason: &str) {
        self.invalid_packets.get_or_create(&Reason { reason: reason.into() }).inc();
    }
}

/// Labels of one proxy backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// address:port.
    pub backend: String,
}

/// Labels of a proxy backend with a second dimension (direction, reason or new state).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendDetail {
    /// address:port.
    pub backend: String,
    /// The direction (to_backend, to_client), failure reason (refused, timeout, error) or state (up, down).
    pub kind: String,
}

/// Everything the API proxy counts.
#[derive(Clone, Debug, Default)]
pub struct ProxyMetrics {
    /// Open connections per backend.
    pub active: Family<BackendLabel, Gauge>,
    /// Connections per backend since start.
    pub connections: Family<BackendLabel, Counter>,
    /// Bytes relayed per backend and direction.
    pub bytes: Family<BackendDetail, Counter>,
    /// Failed connects per backend and reason.
    pub connect_failures: Family<BackendDetail, Counter>,
    /// 1 while a backend is in rotation.
    pub up: Family<BackendLabel, Gauge>,
    /// Health flips per backend and new state.
    pub transitions: Family<BackendDetail, Counter>,
    /// Open connections closed because their backend turned unhealthy or left the list.
    pub closed_on_backend_down: Family<BackendLabel, Counter>,
    /// Clients closed without a backend: every candidate failed to connect.
    pub no_backend: Counter,
    /// Clients accepted.
    pub accepted: Counter,
}

impl ProxyMetrics {
    /// Registers everything under `kubeha_proxy_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("kubeha_proxy");
        r.register("active_connections", "Open connections per backend", m.active.clone());
        r.register("connections", "Connections per backend", m.connections.clone());
        r.register("bytes", "Bytes relayed per backend and direction (kind)", m.bytes.clone());
        r.register("connect_failures", "Failed connects per backend and reason (kind)", m.connect_failures.clone());
        r.register("backend_up", "1 while a backend is in rotation", m.up.clone());
        r.register("health_transitions", "Backend health flips by new state (kind)", m.transitions.clone());
        r.register(
            "closed_on_backend_down",
            "Open connections closed because their backend turned unhealthy or left the list",
            m.closed_on_backend_down.clone(),
        );
        r.register("no_backend", "Clients closed because no backend accepted a connection", m.no_backend.clone());
        r.register("accepted", "Client connections accepted", m.accepted.clone());
        m
    }
}
