//! The test world of kubeha: a real three-master Kubernetes control plane in network namespaces on one
//! bridge, and the fault primitives (kill a node, cut its link, stop its API server, …) that tests and people
//! use on it. The `kubeha-e2e` binary (behind `e2e/cluster`) exposes the same primitives on the command line.
//!
//! Everything here treats the Kubernetes and kubeha binaries as black boxes: processes, addresses and the
//! API are all it looks at.

pub mod chaos;
mod cluster;
mod error;
pub mod fakeapi;
mod net;
mod node;
pub mod observe;
mod pki;
mod pods;
mod process;
mod vipwatch;

pub use cluster::{
    AGENT_METRICS_PORT, Cluster, ClusterLock, Component, Connects, KUBEHA_NAMESPACE, LEASES, Process, UpTimes,
    kubeha_binary,
};
pub use error::{Error, Result};
pub use net::{CLIENTS, Host, KUBERNETES_SERVICE, NODES, Node, POD_CIDR, SERVICE_CIDR, VIP_V4, VIP_V6};
pub use node::{kubeha_image, kubeha_image_ref};
pub use pods::{CHART, ContainerProcess, Pod, TEST_WORLD_VALUES, yaml_documents};
pub use vipwatch::{Timeline, VipWatch};
