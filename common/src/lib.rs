//! What both kubeha binaries need and neither may import from the other: Lease-based leader election with
//! client-go semantics ([`lease`]), telemetry set-up — logs, Prometheus metrics, health probes
//! ([`telemetry`]) — and API clients whose connections notice a dead API server ([`client`]).

pub mod client;
pub mod lease;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
