//! What both kubeha binaries need and neither may import from the other: Lease-based leader election with
//! client-go semantics ([`lease`]) and telemetry set-up — logs, Prometheus metrics, health probes
//! ([`telemetry`]).

pub mod lease;
pub mod telemetry;
