//! What every e2e test file shares: a cluster that is up for one test and down afterwards, pass or fail.

#![allow(dead_code, unreachable_pub)] // each test file uses its own part of this module

use std::time::Duration;

use std::net::IpAddr;
use std::time::Instant;

use kubeha_e2e::{Cluster, ClusterLock, Host, Process};

/// The kubeha CRDs as crdgen writes them.
pub const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/yaml");

/// A cluster brought up for one test and torn down when the test ends, pass or fail.
pub struct Up {
    pub cluster: Cluster,
    _lock: ClusterLock,
}

impl Up {
    /// A fresh cluster (leftovers of an earlier test removed first).
    pub async fn new() -> Self {
        let cluster = Cluster::open().expect("control-plane binaries and kubectl");
        let lock = cluster.lock().expect("cluster lock");
        cluster.up().await.expect("e2e/cluster up");
        Self { cluster, _lock: lock }
    }

    /// A fresh cluster with the kubeha CRDs installed and established.
    pub async fn with_crds() -> Self {
        let up = Self::new().await;
        up.kubectl(&["apply", "-f", CRDS]);
        up.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/highavailabilityclusters.kubeha.io",
            "crd/highavailabilitymembers.kubeha.io",
        ]);
        up
    }

    /// Runs helm and returns its stdout; panics with its stderr if it fails.
    pub fn helm(&self, args: &[&str]) -> String {
        let out = self.cluster.helm().args(args).output().expect("helm runs");
        assert!(out.status.success(), "helm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `helm install kubeha` of the chart with the test world's values and `extra` arguments, and its pods
    /// run as the kubelets would; returns helm's output (the NOTES) and the pods.
    pub async fn install_chart(&self, extra: &[&str]) -> (String, Vec<kubeha_e2e::Pod>) {
        self.cluster.install_chart(extra).await.expect("helm install and the release's pods")
    }

    /// Runs kubectl and returns its stdout; panics with its stderr if it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.cluster.kubectl().args(args).output().expect("kubectl runs");
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.down() {
            eprintln!("teardown: {e}");
        }
    }
}

/// Polls `check` every 500 ms until it holds; panics naming `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: not within {within:?}");
}

/// The VIP the agent tests use.
pub const VIP: &str = "198.51.100.10";

/// The network of the test world without a control plane, for agent tests; down again when dropped.
pub struct World {
    pub cluster: Cluster,
    _lock: ClusterLock,
}

impl World {
    pub fn new() -> Self {
        let cluster = Cluster::open().unwrap();
        let lock = cluster.lock().unwrap();
        cluster.up_network().unwrap();
        Self { cluster, _lock: lock }
    }

    /// Starts the agent on `node` with `priority` and extra YAML lines.
    pub fn agent(&self, node: Host, priority: u8, extra: &str) -> Process {
        self.agent_with(node, priority, "version: 3, advertInterval: 100ms", extra)
    }

    /// Starts the agent with the given `vrrp:` mapping (inside the braces) and extra YAML lines.
    pub fn agent_with(&self, node: Host, priority: u8, vrrp: &str, extra: &str) -> Process {
        self.agent_for(&format!("{VIP}/24"), node, priority, vrrp, extra)
    }

    /// Starts the agent for the VIP `vip` (address/prefix).
    pub fn agent_for(&self, vip: &str, node: Host, priority: u8, vrrp: &str, extra: &str) -> Process {
        let file = self.cluster.dir().join(format!("{node}.yaml"));
        let yaml = format!(
            "nodeName: {node}\ninterface: eth0\nvip: {vip}\nvrid: 51\npriority: {priority}\n\
             vrrp: {{{vrrp}}}\nmetrics: {{listen: \"127.0.0.1:9641\"}}\n{extra}"
        );
        std::fs::write(&file, yaml).unwrap();
        let bin = kubeha_e2e::kubeha_binary("kubeha-agent").unwrap().display().to_string();
        let argv = [bin.as_str(), "--log-format", "text", "run", "--config", file.to_str().unwrap()];
        self.cluster.spawn(&node, "kubeha-agent", &argv.map(String::from)).unwrap()
    }

    pub fn holders(&self) -> Vec<Host> {
        self.cluster.holders(VIP.parse::<IpAddr>().unwrap())
    }

    /// Waits until exactly `want` hold the VIP; returns how long that took.
    pub fn until_holders(&self, want: &[Host], within: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.holders() == want {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("VIP holders {:?}, wanted {want:?} within {within:?}", self.holders());
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.cluster.down();
    }
}
