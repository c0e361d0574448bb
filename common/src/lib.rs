//! What both kubeha binaries need and neither may import from the other: Lease-based leader election with
//! client-go semantics ([`lease`]), telemetry set-up — logs, Prometheus metrics, health probes
//! ([`telemetry`]) — API clients whose connections notice a dead API server ([`client`]), and the address
//! arithmetic a VIP is checked with ([`net`]).

pub mod client;
pub mod lease;
pub mod net;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
