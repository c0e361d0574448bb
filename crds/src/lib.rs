//! The kubeha.io/v1alpha1 API: `HighAvailabilityCluster` (the user's intent) and `HighAvailabilityMember`
//! (one node's complete agent configuration and what that agent observes).
//!
//! This crate holds types only: no Kubernetes client, no runtime, no I/O, so both binaries and the chart
//! generator can depend on it without pulling either in. Validation lives in the schema as CEL rules, so
//! the API server rejects bad input with a message that names the field.

#[cfg(any(test, feature = "cases"))]
pub mod cases;
mod cluster;
pub mod contract;
mod interval;
mod member;
mod rules;

pub use cluster::{
    Balance, ControlPlaneView, ElectionMode, ElectionSpec, EtcdMember, EtcdMemberView, EtcdQuorum, EtcdSpec,
    EtcdTopology, Failover, GarpSpec, HighAvailabilityCluster, HighAvailabilityClusterSpec,
    HighAvailabilityClusterStatus, LocalHealthSpec, MasterHealth, Masters, MemberSummary, ProxyHealthCheck, ProxySpec,
    StrangerPolicy, VrrpSpec,
};
pub use interval::{Interval, IntervalError};
pub use member::{
    BackendStatus, CheckResult, ComponentHealth, ControlPlaneHealth, EtcdMemberHealth, HealthCheck,
    HighAvailabilityMember, HighAvailabilityMemberSpec, HighAvailabilityMemberStatus, HttpsCheck, LinkCheck,
    MemberProxy, MemberVrrp, Metrics, Penalty, StrangerSeen, TcpCheck, Transition, VrrpState,
};

/// The API group.
pub const GROUP: &str = "kubeha.io";

/// Fault tolerance of an etcd-style majority of `masters`: how many may fail with the rest keeping quorum,
/// n − (⌊n/2⌋ + 1). One master tolerates nothing, and an even count tolerates no more than one fewer.
pub fn fault_tolerance(masters: usize) -> usize {
    masters.saturating_sub(masters / 2 + 1)
}

/// The CRDs as templates of the Helm chart (`charts/kubeha/templates/`): the same documents, rendered only
/// with `crds.enabled`, kept on `helm uninstall` with `crds.keep` (deleting a CRD deletes every
/// HighAvailabilityCluster and with it the VIP), and labelled like the rest of the release.
pub fn chart_crd_templates() -> Vec<(String, String)> {
    crd_yaml()
        .into_iter()
        .map(|(file, yaml)| {
            let plural = file.trim_start_matches("kubeha.io_").to_string();
            let metadata = "metadata:\n";
            let annotated = yaml.replacen(
                metadata,
                "metadata:\n  annotations:\n    {{- if .Values.crds.keep }}\n    helm.sh/resource-policy: keep\n    \
                 {{- end }}\n  labels:\n    {{- include \"kubeha.labels\" . | nindent 4 }}\n",
                1,
            );
            let template = format!(
                "{{{{- if .Values.crds.enabled }}}}\n# Generated from the Rust types by `cargo run -p kubeha-crds --bin crdgen`; \
                 do not edit.\n{annotated}{{{{- end }}}}\n"
            );
            (format!("crd-{plural}"), template)
        })
        .collect()
}

/// The CRDs as YAML documents, in the order they should be applied.
pub fn crd_yaml() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt as _;
    let render = |crd| serde_norway::to_string(&crd).unwrap_or_else(|e| unreachable!("a CRD always serialises: {e}"));
    vec![
        ("kubeha.io_highavailabilityclusters.yaml", render(HighAvailabilityCluster::crd())),
        ("kubeha.io_highavailabilitymembers.yaml", render(HighAvailabilityMember::crd())),
    ]
}
