//! One metric set per member, kept for the life of the process.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::instance::Parts;
use crate::metrics::{ProxyMetrics, VrrpMetrics};

/// The agent's metrics registry: one set of VRRP and proxy metrics per member, labelled with its name and
/// kept for the life of the process, so that a member restarted in place keeps counting.
#[derive(Clone, Debug)]
pub struct MemberMetrics {
    registry: kubeha_common::telemetry::SharedRegistry,
    made: Arc<std::sync::Mutex<HashMap<String, (VrrpMetrics, ProxyMetrics)>>>,
}

impl MemberMetrics {
    /// Adds member metrics to `registry` as members come.
    pub fn new(registry: kubeha_common::telemetry::SharedRegistry) -> Self {
        Self { registry, made: Arc::default() }
    }

    /// The metrics of `member`, registered on first use: those of the `parts` this process runs (the
    /// other part's are counted nowhere, so that two containers never export the same series).
    pub fn member(&self, member: &str, parts: Parts) -> (VrrpMetrics, ProxyMetrics) {
        let mut made = self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        made.entry(member.to_string())
            .or_insert_with(|| {
                let mut registry = self.registry.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                let sub: &mut Registry =
                    registry.sub_registry_with_label((std::borrow::Cow::Borrowed("member"), member.to_string().into()));
                let mut unused = Registry::default();
                let vrrp = VrrpMetrics::register(if parts.vip { &mut *sub } else { &mut unused });
                let proxy = ProxyMetrics::register(if parts.proxy { &mut *sub } else { &mut unused });
                (vrrp, proxy)
            })
            .clone()
    }
}
