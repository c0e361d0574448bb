//! The three-master control plane and its fault primitives. `Cluster` is one handle; its methods live by
//! concern: here, opening, bringing up and tearing down the world and the tools (kubectl, helm);
//! `processes` (what runs on a host), `plane` (each master's components and their command lines), `faults`
//! (what tests and people break), `network` (who carries an address, how clients' connects end) and `api`
//! (clients, readiness, Lease holders, the status summary).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext as _, Result};
use crate::net::{self, Host, NODES};
use crate::node::{self, Runtime};
use crate::pki::Pki;
use crate::process;

mod api;
mod faults;
mod kubeadm;
mod network;
mod plane;
mod processes;

use api::{etcd_healthy, http_get};
pub use network::Connects;
pub use processes::Process;

/// The Leases in kube-system that say which master runs the active controller-manager and scheduler.
pub const LEASES: [&str; 2] = ["kube-controller-manager", "kube-scheduler"];
/// Where each agent serves /metrics and /readyz, on its node's address.
pub const AGENT_METRICS_PORT: u16 = 9641;
/// The namespace kubeha is installed in: its operator's leader Lease and the members' heartbeat Leases.
pub const KUBEHA_NAMESPACE: &str = "kubeha-system";

/// Leader-election timings of the controllers: shorter than the defaults (15 s / 10 s / 2 s) so failover
/// tests are quick, still with client-go's margins (duration > deadline > 1.2 × retry).
const LEASE_DURATION: &str = "8s";
const RENEW_DEADLINE: &str = "6s";
const RETRY_PERIOD: &str = "2s";

/// Three API servers, three etcds and six controllers share two cores: starting together is slow.
const START_TIMEOUT: Duration = Duration::from_secs(240);

/// A process that runs on every master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// The node's etcd member.
    Etcd,
    /// The node's kube-apiserver.
    KubeApiserver,
    /// The node's kube-controller-manager (leader-elected).
    KubeControllerManager,
    /// The node's kube-scheduler (leader-elected).
    KubeScheduler,
}

impl Component {
    /// Every component, in start order.
    pub const ALL: [Component; 4] =
        [Component::Etcd, Component::KubeApiserver, Component::KubeControllerManager, Component::KubeScheduler];

    /// The binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
        }
    }

    /// The controllers exit when they lose their lease; the kubelet would restart them, and so does a
    /// supervisor here. etcd and the API server stay down when stopped, as a fault test wants.
    fn restarts(self) -> bool {
        matches!(self, Component::KubeControllerManager | Component::KubeScheduler)
    }
}

/// How long `up` took to reach each stage, from its start (teardown of leftovers included).
#[derive(Debug, Clone, Copy)]
pub struct UpTimes {
    /// All three etcd members report healthy.
    pub etcd_healthy: Duration,
    /// All three API servers answer /readyz with 200.
    pub apiservers_ready: Duration,
    /// Every host's kubelet has registered its Node and it is Ready.
    pub nodes_ready: Duration,
    /// Both controller Leases are held: the cluster is fully up.
    pub leases_held: Duration,
}

/// Held while a test or a command owns the cluster; the cluster is one per machine.
#[derive(Debug)]
pub struct ClusterLock {
    _lock: Flock<File>,
}

/// The test cluster: where its state lives and which binaries it runs.
#[derive(Debug, Clone)]
pub struct Cluster {
    dir: PathBuf,
    bins: PathBuf,
    tools: PathBuf,
    pki: Pki,
    /// The nodes' runtime and images, found on first use (the network-only tests need neither).
    runtime: std::sync::OnceLock<Runtime>,
    /// The control-plane images of the kubeadm world, found on first use.
    plane_images: std::sync::OnceLock<Vec<PathBuf>>,
}

impl Cluster {
    /// Finds (building on first use) the control-plane binaries and kubectl/helm. The state lives in
    /// `$KUBEHA_E2E_DIR` (default `/tmp/kubeha-e2e`).
    pub fn open() -> Result<Self> {
        let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
        let bins = PathBuf::from(last_line(process::output(
            Command::new(e2e.join("controlplane/build.sh")).stderr(Stdio::inherit()),
        )?));
        let tools =
            PathBuf::from(last_line(process::output(Command::new(e2e.join("kubetools.py")).stderr(Stdio::inherit()))?));
        let dir = std::env::var_os("KUBEHA_E2E_DIR").map_or_else(|| PathBuf::from("/tmp/kubeha-e2e"), PathBuf::from);
        let pki = Pki::new(dir.join("pki"));
        Ok(Self {
            dir,
            bins,
            tools,
            pki,
            runtime: std::sync::OnceLock::new(),
            plane_images: std::sync::OnceLock::new(),
        })
    }

    /// The nodes' containerd, runc, CNI plugins and images (built or found on first call).
    pub(crate) fn runtime(&self) -> Result<&Runtime> {
        if let Some(r) = self.runtime.get() {
            return Ok(r);
        }
        let found = Runtime::find()?;
        Ok(self.runtime.get_or_init(|| found))
    }

    pub(crate) fn pki(&self) -> &Pki {
        &self.pki
    }

    /// Where the Kubernetes binaries (etcd, the control plane, the kubelet) are.
    pub(crate) fn bins(&self) -> &Path {
        &self.bins
    }

    /// Waits for exclusive use of the cluster (tests run one at a time against it).
    pub fn lock(&self) -> Result<ClusterLock> {
        let path = self.dir.with_extension("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::Io { what: format!("locking {}", path.display()), source: errno.into() })?;
        Ok(ClusterLock { _lock: lock })
    }

    /// The admin kubeconfig: contexts `n1`, `n2`, `n3` reach each master's API server directly.
    pub fn kubeconfig(&self) -> PathBuf {
        self.pki.admin_kubeconfig()
    }

    /// Writes the admin kubeconfig to `path` with every cluster's server set to `server` (the VIP, a
    /// proxy): same credentials and CA, another way in.
    pub fn write_kubeconfig_via(&self, server: &str, path: &Path) -> Result<()> {
        let text = fs::read_to_string(self.kubeconfig()).ctx(|| "reading the admin kubeconfig".into())?;
        let mut config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Usage(format!("the admin kubeconfig: {e}")))?;
        for c in config["clusters"].as_array_mut().into_iter().flatten() {
            c["cluster"]["server"] = server.into();
        }
        fs::write(path, config.to_string()).ctx(|| format!("writing {}", path.display()))
    }

    /// Where logs, pidfiles, certificates and etcd data live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// kubectl from the pinned wheel, with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.tools.join("kubectl"));
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// helm from the pinned wheel, with the admin kubeconfig.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.tools.join("helm"));
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// The cluster CA's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.pki.path("ca.crt")
    }

    /// Where kubectl and helm are.
    pub fn tools_dir(&self) -> &Path {
        &self.tools
    }

    /// Tears down leftovers, then starts three etcds, three API servers, registers the Nodes, starts the
    /// controllers, and returns once all three API servers are ready and both controller Leases are held.
    pub async fn up(&self) -> Result<UpTimes> {
        let start = tokio::time::Instant::now();
        // Before anything starts: a missing image or runtime is named now, not found by a timeout.
        self.runtime()?;
        self.down()?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).ctx(|| format!("removing {}", self.dir.display()))?;
        }
        fs::create_dir_all(&self.dir).ctx(|| format!("creating {}", self.dir.display()))?;
        net::setup()?;
        self.pki.generate()?;
        for node in NODES {
            self.start(&node, Component::Etcd)?;
        }
        for node in NODES {
            self.wait_for(&format!("etcd on {node} healthy"), || async move { etcd_healthy(&node) }).await?;
        }
        let etcd_healthy = start.elapsed();
        for node in NODES {
            self.start(&node, Component::KubeApiserver)?;
        }
        for node in NODES {
            self.wait_ready(&node).await?;
        }
        let apiservers_ready = start.elapsed();
        for node in NODES {
            self.start(&node, Component::KubeControllerManager)?;
            self.start(&node, Component::KubeScheduler)?;
        }
        self.start_nodes().await?;
        let nodes_ready = start.elapsed();
        for lease in LEASES {
            self.wait_for(&format!("Lease kube-system/{lease} held"), || async move {
                self.lease_holder(lease).await.ok().flatten().is_some()
            })
            .await?;
        }
        let leases_held = start.elapsed();
        // Pods are refused until the controller-manager has made the namespace's `default` ServiceAccount: a
        // cluster that is up takes a Pod, as one that kubeadm reports ready does.
        self.wait_for("ServiceAccount default/default", || async {
            self.kubectl()
                .args(["get", "serviceaccount", "default", "-n", "default"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .await?;
        Ok(UpTimes { etcd_healthy, apiservers_ready, nodes_ready, leases_held })
    }

    /// Only the network of the test world — bridge, hosts, addresses, no control plane — after removing
    /// leftovers: enough for the agent's VRRP and proxy tests.
    pub fn up_network(&self) -> Result<()> {
        self.down()?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).ctx(|| format!("removing {}", self.dir.display()))?;
        }
        fs::create_dir_all(&self.dir).ctx(|| format!("creating {}", self.dir.display()))?;
        net::setup()
    }

    /// Stops every process in the test world's namespaces (SIGTERM, then SIGKILL) and removes its namespaces,
    /// bridge, links and route. Safe to call when nothing is up.
    pub fn down(&self) -> Result<()> {
        for host in net::all_hosts() {
            self.kill_runtime(&host)?;
        }
        node::remove_cgroup_root();
        for host in net::all_hosts() {
            process::kill_all_in(&host, false, Duration::from_secs(5))?;
        }
        net::teardown();
        let _ = fs::remove_dir_all(self.dir.join("run"));
        let left = self.leftovers();
        if left.is_empty() { Ok(()) } else { Err(Error::Usage(format!("down left behind: {}", left.join(", ")))) }
    }

    /// What of the test world exists right now: namespaces, links, and processes running the control-plane
    /// binaries anywhere on the machine. Empty after [`Cluster::down`].
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = net::leftovers();
        left.extend(node::leftovers(&self.dir));
        let runtime = self.runtime.get().map(|r| r.dir.clone());
        for pid in
            process::running_from(&self.bins).into_iter().chain(runtime.iter().flat_map(|d| process::running_from(d)))
        {
            left.push(format!("process {pid}"));
        }
        left
    }
}

/// A kubeha binary (`kubeha-operator`, `kubeha-agent`) from this workspace's build. The tests treat it as a
/// black box and do not build it themselves (cargo holds its build lock while tests run): `make test` builds
/// every binary before running the tests.
pub fn kubeha_binary(name: &str) -> Result<PathBuf> {
    let target = target_dir();
    // The profile this crate was built with: tests use debug binaries, the release benchmarks release ones.
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let path = target.join(profile).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Usage(format!(
            "{} is missing: run `cargo build --workspace --bins` (make test does)",
            path.display()
        )))
    }
}

/// The workspace's cargo target directory, where its binaries and `make image`'s archive are.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from)
}

fn master(host: &Host) -> Result<()> {
    if host.is_master() { Ok(()) } else { Err(Error::Usage(format!("{host} is a client, not a master"))) }
}

pub(crate) fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn last_line(s: String) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}
