//! Reading the cluster through its API and its health endpoints: clients per master, readiness, the
//! controllers' Lease holders, a status summary for people.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::{Error, Result};
use crate::net::{self, NODES, Node};
use crate::process;

use super::{Cluster, Component, LEASES, START_TIMEOUT};

impl Cluster {
    /// A kube client that talks to this master's API server directly, as the admin.
    pub async fn client(&self, node: &Node) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig())?;
        let options = KubeConfigOptions { context: Some(node.name()), ..KubeConfigOptions::default() };
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &options).await?;
        // A partitioned master must fail a call quickly, not hang a test.
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(10));
        config.write_timeout = Some(Duration::from_secs(10));
        Ok(Client::try_from(config)?)
    }

    /// Whether the master's API server answers /readyz with 200, asked from inside the node (so it works
    /// while the node is partitioned), with the admin certificate (anonymous /readyz is refused while RBAC
    /// bootstraps).
    pub async fn readyz(&self, node: &Node) -> bool {
        let Ok(mut cmd) = self.local_kubectl(node) else {
            return false;
        };
        cmd.args(["get", "--raw", "/readyz"]).stdout(Stdio::null()).stderr(Stdio::null());
        tokio::process::Command::from(cmd).status().await.is_ok_and(|s| s.success())
    }

    /// Waits until the master's API server is ready.
    pub async fn wait_ready(&self, node: &Node) -> Result<()> {
        self.wait_for(&format!("kube-apiserver on {node} ready"), || self.readyz(node)).await
    }

    /// The master (n1…) whose controller holds the Lease kube-system/`name` right now, asked through any
    /// ready API server. `None` when nobody holds it or it has expired.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>> {
        let mut last = None;
        for node in NODES {
            let leases: Api<Lease> = Api::namespaced(self.client(&node).await?, "kube-system");
            match leases.get_opt(name).await {
                Ok(lease) => return Ok(lease.and_then(|l| holder_node(&l))),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(|| Error::Usage("no master to ask".into()), Error::from))
    }

    /// A report of every node, component and Lease, for people (`e2e/cluster status`).
    pub async fn status(&self) -> String {
        let mut out = String::new();
        for node in NODES {
            let link = if !Path::new("/run/netns").join(node.netns()).exists() {
                "absent"
            } else if net::link_up(&node) {
                "up"
            } else {
                "partitioned"
            };
            let _ = write!(out, "{node} {:<15} link={link:<11}", node.ipv4().to_string());
            for c in Component::ALL {
                let state = self.daemon(&node, c).pid().map_or_else(|| "stopped".to_string(), |p| format!("pid {p}"));
                let _ = write!(out, " {}={state}", c.name());
            }
            let ready = if self.readyz(&node).await { "ready" } else { "not ready" };
            let _ = writeln!(out, " /readyz={ready}");
        }
        for lease in LEASES {
            let holder = match self.lease_holder(lease).await {
                Ok(Some(h)) => h,
                Ok(None) => "nobody".into(),
                Err(e) => format!("unknown ({e})"),
            };
            let _ = writeln!(out, "lease kube-system/{lease}: {holder}");
        }
        let left = net::leftovers();
        let _ = writeln!(out, "network: {}", if left.is_empty() { "down".to_string() } else { left.join(", ") });
        out
    }

    /// kubectl run inside the node against its own API server on 127.0.0.1.
    pub(super) fn local_kubectl(&self, node: &Node) -> Result<Command> {
        let mut cmd = self.kubectl();
        cmd.args(["--server", "https://127.0.0.1:6443", "--request-timeout", "3s"]);
        process::enter(&mut cmd, node, false)?;
        Ok(cmd)
    }

    pub(super) async fn wait_for<F, Fut>(&self, what: &str, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        self.poll(what, START_TIMEOUT, Duration::from_millis(500), || {
            let done = check();
            async move { Ok(done.await.then_some(())) }
        })
        .await
    }

    /// Calls `check` every `every` until it gives a value (`Ok(Some)`) or an error that makes waiting
    /// pointless (`Err`, returned at once); a [`Error::Timeout`] naming `what` after `within`.
    pub(crate) async fn poll<T, F, Fut>(&self, what: &str, within: Duration, every: Duration, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout { what: what.into(), after: within, logs: self.dir.join("logs") });
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// `n2_5b0c…` → `n2`: client-go's holder identity is the hostname, an underscore and a UUID. A Lease whose
/// holder let it expire (renewTime + duration in the past) counts as held by nobody.
fn holder_node(lease: &Lease) -> Option<String> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref()?.0;
    let duration = i64::from(spec.lease_duration_seconds?);
    let now = k8s_openapi::jiff::Timestamp::now();
    if renewed.as_second() + duration < now.as_second() {
        return None;
    }
    Some(holder.split('_').next().unwrap_or(holder).to_string())
}

/// etcd's /health on the member's client URL: true once it is part of a cluster with a leader.
pub(super) fn etcd_healthy(node: &Node) -> bool {
    http_get(SocketAddr::from((node.ipv4(), 2379)), "/health").contains("\"health\":\"true\"")
}

/// A plain HTTP/1.0 GET; the whole response, or empty when it fails.
pub(super) fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}
