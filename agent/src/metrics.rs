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
        m
    }

    /// Sets the state gauge.
    pub fn set_state(&self, state: &str) {
        for s in ["Initialize", "Backup", "Master", "Fault"] {
            self.state.get_or_create(&Reason { reason: s.into() }).set(i64::from(s == state));
        }
    }

    /// Counts a dropped packet.
    pub fn dropped(&self, reason: &str) {
        self.invalid_packets.get_or_create(&Reason { reason: reason.into() }).inc();
    }
}
