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
pub mod guide;
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
pub use net::{CLIENTS, ETCD_HOSTS, Host, KUBERNETES_SERVICE, NODES, Node, POD_CIDR, SERVICE_CIDR, VIP_V4, VIP_V6};
pub use node::{kubeha_image, kubeha_image_ref};
pub use pods::{CHART, ContainerProcess, Pod, TEST_WORLD_VALUES, yaml_documents};
pub use vipwatch::{Timeline, VipWatch};

/// Whether this process runs as root. When it does not, says that `test` is skipped and why: every test
/// of the test world creates network namespaces, bridges and containers.
pub fn root_or_skipped(test: &str) -> bool {
    use std::io::Write as _;
    // /proc/self belongs to the process's effective user.
    if std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
        return true;
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: it needs root (network namespaces, kubelets, containerd, and the tools `make test` \
         builds as root). Run `make test` as root, or `make unit` for every test that needs neither root nor \
         the control plane."
    );
    false
}

/// Returns from the calling test, with a message saying so, unless it runs as root.
#[macro_export]
macro_rules! skip_unless_root {
    () => {{
        fn here() {}
        let name = ::std::any::type_name_of_val(&here);
        let name = name.strip_suffix("::here").unwrap_or(name);
        if !$crate::root_or_skipped(name.strip_suffix("::{{closure}}").unwrap_or(name)) {
            return;
        }
    }};
}
