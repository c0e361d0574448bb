//! What every e2e test file shares: a cluster that is up for one test and down afterwards, pass or fail.

#![allow(dead_code, unreachable_pub)] // each test file uses its own part of this module

use std::time::Duration;

use kubeha_e2e::{Cluster, ClusterLock};

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
        Self {
            cluster,
            _lock: lock,
        }
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

    /// Runs kubectl and returns its stdout; panics with its stderr if it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self
            .cluster
            .kubectl()
            .args(args)
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
