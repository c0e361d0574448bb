//! The kubeha node agent: owns every piece of node I/O — the raw VRRP socket, the VIP through netlink,
//! gratuitous ARP / unsolicited neighbour advertisements, the API proxy, health checks and the reporter.
//!
//! Protocol decisions are made by the sans-IO core in `kubeha-vrrp`; this crate only feeds it time and
//! packets and carries out the actions it returns.

pub mod announce;
pub mod api;
pub mod bootstrap;
pub mod cluster;
pub mod config;
pub mod dad;
pub mod driver;
pub mod handover;
pub mod health;
pub mod instance;
pub mod leasemode;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod sockdiag;
pub mod socket;
pub mod state;
pub mod vip;
pub mod vipcheck;
