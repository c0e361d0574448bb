//! The three-master control plane and its fault primitives.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext as _, Result};
use crate::net::{self, CLIENTS, Host, NODES, Node, SERVICE_CIDR};
use crate::node::{self, Runtime};
use crate::pki::Pki;
use crate::process::{self, Daemon};

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
        Ok(Self { dir, bins, tools, pki, runtime: std::sync::OnceLock::new() })
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

    /// Starts `argv` on `host` (its network namespace and hostname), its output in
    /// `logs/<host>/<name>.log`. The returned handle SIGKILLs it when dropped.
    pub fn spawn(&self, host: &Host, name: &str, argv: &[String]) -> Result<Process> {
        self.start_process(Some(host), &host.name(), name, argv)
    }

    /// Starts `argv` on this machine (the root namespace, where the operator's API access works as from a
    /// pod), with the admin kubeconfig and its output in `logs/<name>.log`. SIGKILLed when dropped.
    pub fn spawn_local(&self, name: &str, argv: &[String]) -> Result<Process> {
        self.start_process(None, "", name, argv)
    }

    fn start_process(&self, host: Option<&Host>, dir: &str, name: &str, argv: &[String]) -> Result<Process> {
        let log = self.dir.join("logs").join(dir).join(format!("{name}.log"));
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let out = File::create(&log).ctx(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().ctx(|| format!("opening {}", log.display()))?;
        let program = argv.first().ok_or_else(|| Error::Usage("spawn needs a command".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..]).env("KUBECONFIG", self.kubeconfig()).stdin(Stdio::null()).stdout(out).stderr(err);
        if let Some(host) = host {
            process::enter(&mut cmd, host, false)?;
        }
        let child = cmd.spawn().ctx(|| format!("starting {program}"))?;
        Ok(Process { child, log })
    }

    /// Starts `argv` on `host` as the system service `name` (what systemd would run there: keepalived,
    /// HAProxy), in the host's namespaces, recorded so that it outlives the caller and is stopped with the
    /// node. Does nothing if it runs already.
    pub fn start_service(&self, host: &Host, name: &str, argv: &[String]) -> Result<()> {
        let daemon = self.service(host, name);
        if daemon.pid().is_none() {
            daemon.spawn(host, argv)?;
        }
        Ok(())
    }

    /// Stops the service `name` on `host`: SIGTERM and up to 10 s to finish, or, if `crash`, SIGKILL to every
    /// process of it at once.
    pub fn stop_service(&self, host: &Host, name: &str, crash: bool) {
        let daemon = self.service(host, name);
        if crash { daemon.kill() } else { daemon.stop(Duration::from_secs(10)) }
    }

    /// Whether the service `name` runs on `host`.
    pub fn service_running(&self, host: &Host, name: &str) -> bool {
        self.service(host, name).pid().is_some()
    }

    fn service(&self, host: &Host, name: &str) -> Daemon {
        Daemon {
            pidfile: self.dir.join("run").join(host.name()).join(format!("svc-{name}.pid")),
            log: self.dir.join("logs").join(host.name()).join(format!("svc-{name}.log")),
        }
    }

    /// Every live process on `host` (in its network namespace).
    pub fn processes_on(&self, host: &Host) -> Vec<u32> {
        process::pids_in(host)
    }

    /// The hosts whose eth0 carries `address` right now.
    pub fn holders(&self, address: std::net::IpAddr) -> Vec<Host> {
        NODES
            .iter()
            .chain(CLIENTS.iter())
            .filter(|h| {
                process::output(Command::new("ip").args(["-n", &h.netns(), "-o", "addr", "show", "dev", "eth0"]))
                    .is_ok_and(|out| out.split_whitespace().any(|w| w.split('/').next() == Some(&address.to_string())))
            })
            .copied()
            .collect()
    }

    /// Stops every process in the test world's namespaces (SIGTERM, then SIGKILL) and removes its namespaces,
    /// bridge, links and route. Safe to call when nothing is up.
    pub fn down(&self) -> Result<()> {
        for host in node::hosts() {
            self.kill_runtime(&host)?;
        }
        node::remove_cgroup_root();
        for host in NODES.iter().chain(CLIENTS.iter()) {
            process::kill_all_in(host, false, Duration::from_secs(5))?;
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

    /// Starts whatever of the node's components is not running and waits for its API server to be ready.
    /// etcd rejoins with the data it had.
    pub async fn start_node(&self, node: &Node) -> Result<()> {
        master(node)?;
        for c in Component::ALL {
            if self.daemon(node, c).pid().is_none() {
                self.start(node, c)?;
            }
        }
        self.wait_ready(node).await?;
        self.start_runtime(node)?;
        self.wait_node_ready(node).await
    }

    /// SIGKILLs every process of the node (everything in its network namespace), like a power loss.
    pub fn kill_node(&self, node: &Node) -> Result<()> {
        master(node)?;
        self.kill_runtime(node)?;
        process::kill_all_in(node, true, Duration::ZERO)?;
        for c in Component::ALL {
            let _ = fs::remove_file(self.daemon(node, c).pidfile);
        }
        Ok(())
    }

    /// Powers the node off, as far as anyone else can tell: every process SIGKILLed, its link down, and the
    /// addresses that software added to its interface (a VIP) gone, as they are from a machine without
    /// power. [`Cluster::power_on`] boots it.
    pub fn power_off(&self, node: &Node) -> Result<()> {
        self.kill_node(node)?;
        self.partition(node)?;
        let ns = node.netns();
        let shown = process::output(Command::new("ip").args(["-n", &ns, "-o", "addr", "show", "dev", "eth0"]))?;
        let own = [node.ipv4().to_string(), node.ipv6().to_string()];
        for line in shown.lines() {
            let mut words = line.split_whitespace().skip_while(|w| *w != "inet" && *w != "inet6");
            let (Some(_), Some(cidr)) = (words.next(), words.next()) else { continue };
            let address = cidr.split('/').next().unwrap_or_default();
            if !own.iter().any(|o| o == address) && !address.starts_with("fe80:") {
                net::ip(&["-n", &ns, "addr", "del", cidr, "dev", "eth0"])?;
            }
        }
        Ok(())
    }

    /// Boots a node that [`Cluster::power_off`] stopped: link up, its components started, its API server
    /// ready, its kubelet and containerd booted and the node Ready (its kubelet then starts its pods).
    pub async fn power_on(&self, node: &Node) -> Result<()> {
        self.heal(node)?;
        self.start_node(node).await
    }

    /// Cuts the host's link: it keeps its address and routes, but reaches nobody and nobody reaches it.
    pub fn partition(&self, host: &Host) -> Result<()> {
        net::ip(&["link", "set", &host.bridge_port(), "down"])
    }

    /// Restores the host's link.
    pub fn heal(&self, host: &Host) -> Result<()> {
        net::ip(&["link", "set", &host.bridge_port(), "up"])
    }

    /// Cuts the host off beyond its NIC, as a failed switch would: the bridge stops forwarding to and from
    /// its port while the host's link keeps carrier, so the host cannot tell from its interface.
    pub fn isolate(&self, host: &Host) -> Result<()> {
        process::run(Command::new("bridge").args(["link", "set", "dev", &host.bridge_port(), "state", "0"]))
    }

    /// Lets the bridge forward for the host again.
    pub fn rejoin(&self, host: &Host) -> Result<()> {
        process::run(Command::new("bridge").args(["link", "set", "dev", &host.bridge_port(), "state", "3"]))
    }

    /// Stops the node's API server gracefully (SIGTERM; SIGKILL after 15 s).
    pub fn stop_apiserver(&self, node: &Node) -> Result<()> {
        self.stop_component(node, Component::KubeApiserver)
    }

    /// Starts the node's API server (if it is not running) and waits until it is ready.
    pub async fn start_apiserver(&self, node: &Node) -> Result<()> {
        master(node)?;
        if self.daemon(node, Component::KubeApiserver).pid().is_none() {
            self.start(node, Component::KubeApiserver)?;
        }
        self.wait_ready(node).await
    }

    /// Installs kubeha as a user does: `helm install` of the chart with the test world's values; returns once
    /// the agents (one per master) and the operators are rolled out and Ready.
    pub async fn install_kubeha(&self) -> Result<()> {
        self.install_chart(&[]).await.map(drop)
    }

    /// Waits until the node's agent (its kubelet restarts a stopped or killed one) runs and answers /readyz
    /// on the node's address. Asks the node, not the API, so that it works while every API server is down.
    pub async fn start_agent(&self, node: &Node) -> Result<()> {
        master(node)?;
        let readyz = SocketAddr::from((node.ipv4(), AGENT_METRICS_PORT));
        self.poll(
            &format!("kubeha-agent on {node} ready"),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || {
                let ready = node::agent_pid(node).is_some() && http_get(readyz, "/readyz").starts_with("HTTP/1.0 200");
                async move { Ok(ready.then_some(())) }
            },
        )
        .await
    }

    /// SIGKILLs the process of the node's agent container, like a crash: it cannot hand the VIP over; its
    /// kubelet restarts it. Found through the node's cgroups, so it works while the API is down.
    pub fn kill_agent(&self, node: &Node) -> Result<()> {
        master(node)?;
        self.signal_agent(node, nix::sys::signal::Signal::SIGKILL)
    }

    /// SIGTERMs the process of the node's agent container, as a kubelet stops one: it hands the VIP over and
    /// exits; its kubelet starts it again.
    pub fn stop_agent(&self, node: &Node) -> Result<()> {
        master(node)?;
        self.signal_agent(node, nix::sys::signal::Signal::SIGTERM)
    }

    fn signal_agent(&self, node: &Node, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = node::agent_pid(node).ok_or_else(|| Error::Usage(format!("no kubeha agent runs on {node}")))?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        // Gone before the caller goes on: a start_agent right after must not find the old process.
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while node::agent_pid(node) == Some(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Drops every VRRP packet (IP protocol 112) to and from every master, as a network that blocks VRRP
    /// does: an nftables table `khvrrp` in each master's namespace (gone with the namespace).
    pub fn block_vrrp(&self) -> Result<()> {
        for node in NODES {
            let ns = node.netns();
            let nft = |args: &[&str]| process::run(Command::new("ip").args(["netns", "exec", &ns, "nft"]).args(args));
            nft(&["add", "table", "inet", "khvrrp"])?;
            for (chain, hook) in [("in", "input"), ("out", "output")] {
                nft(&["add", "chain", "inet", "khvrrp", chain, &format!("{{ type filter hook {hook} priority 0; }}")])?;
                nft(&["add", "rule", "inet", "khvrrp", chain, "meta", "l4proto", "112", "drop"])?;
            }
        }
        Ok(())
    }

    /// Undoes [`Cluster::block_vrrp`].
    pub fn allow_vrrp(&self) -> Result<()> {
        for node in NODES {
            let _ = Command::new("ip")
                .args(["netns", "exec", &node.netns(), "nft", "delete", "table", "inet", "khvrrp"])
                .output();
        }
        Ok(())
    }

    /// Stops one component of a master (SIGTERM; SIGKILL after 15 s).
    pub fn stop_component(&self, node: &Node, c: Component) -> Result<()> {
        master(node)?;
        self.daemon(node, c).stop(Duration::from_secs(15));
        Ok(())
    }

    /// SIGKILLs one component of a master, like a crash.
    pub fn kill_component(&self, node: &Node, c: Component) -> Result<()> {
        master(node)?;
        self.daemon(node, c).kill();
        Ok(())
    }

    /// Starts one component of a master unless it runs (without waiting for it).
    pub fn start_component(&self, node: &Node, c: Component) -> Result<()> {
        master(node)?;
        if self.daemon(node, c).pid().is_none() {
            self.start(node, c)?;
        }
        Ok(())
    }

    /// Runs a command on a host (its network namespace and hostname), with this process's stdio.
    pub fn exec(&self, host: &Host, argv: &[String]) -> Result<ExitStatus> {
        let program = argv.first().ok_or_else(|| Error::Usage("exec needs a command".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..]).env("KUBECONFIG", self.kubeconfig());
        process::enter(&mut cmd, host, false)?;
        cmd.status().ctx(|| format!("running {program} on {host}"))
    }

    /// Connects to `addr` from `host`, one attempt after the other every `every` (each up to 1 s), for
    /// `span`, and counts how they ended: what a client of a listener sees while the test does something
    /// else. Join the handle for the tally.
    pub fn connect_loop(
        &self,
        host: &Host,
        addr: SocketAddr,
        every: Duration,
        span: Duration,
    ) -> Result<std::thread::JoinHandle<Connects>> {
        process::thread_in(host, "connect-loop", move || {
            let mut tally = Connects::default();
            let until = std::time::Instant::now() + span;
            while std::time::Instant::now() < until {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(_) => tally.ok += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => tally.refused += 1,
                    Err(_) => tally.failed += 1,
                }
                std::thread::sleep(every);
            }
            tally
        })
    }

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
    fn local_kubectl(&self, node: &Node) -> Result<Command> {
        let mut cmd = self.kubectl();
        cmd.args(["--server", "https://127.0.0.1:6443", "--request-timeout", "3s"]);
        process::enter(&mut cmd, node, false)?;
        Ok(cmd)
    }

    async fn wait_for<F, Fut>(&self, what: &str, mut check: F) -> Result<()>
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

    fn daemon(&self, node: &Node, c: Component) -> Daemon {
        Daemon {
            pidfile: self.dir.join("run").join(node.name()).join(format!("{}.pid", c.name())),
            log: self.dir.join("logs").join(node.name()).join(format!("{}.log", c.name())),
        }
    }

    fn start(&self, node: &Node, c: Component) -> Result<()> {
        let mut argv = vec![self.bins.join(c.name()).display().to_string()];
        argv.extend(self.args(node, c));
        if c.restarts() {
            let mut supervised: Vec<String> =
                ["/bin/sh", "-c", "while :; do \"$@\"; sleep 1; done", "supervise"].map(String::from).to_vec();
            supervised.append(&mut argv);
            argv = supervised;
        }
        self.daemon(node, c).spawn(node, &argv).map(drop)
    }

    fn args(&self, node: &Node, c: Component) -> Vec<String> {
        let p = |f: &str| self.pki.path(f).display().to_string();
        let ip = node.ipv4();
        let name = node.name();
        let state = self.dir.join(&name);
        let mut args: Vec<String> = match c {
            Component::Etcd => {
                let peers: Vec<String> = NODES.iter().map(|n| format!("{n}=http://{}:2380", n.ipv4())).collect();
                vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", state.join("etcd").display()),
                    format!("--listen-client-urls=http://{ip}:2379,http://127.0.0.1:2379"),
                    format!("--advertise-client-urls=http://{ip}:2379"),
                    format!("--listen-peer-urls=http://{ip}:2380"),
                    format!("--initial-advertise-peer-urls=http://{ip}:2380"),
                    format!("--initial-cluster={}", peers.join(",")),
                    "--initial-cluster-state=new".into(),
                    "--initial-cluster-token=kubeha-e2e".into(),
                    // Six control-plane processes share two cores; the defaults (100 ms / 1 s) elect spuriously.
                    "--heartbeat-interval=200".into(),
                    "--election-timeout=2000".into(),
                    "--unsafe-no-fsync".into(),
                    "--log-level=warn".into(),
                ]
            }
            Component::KubeApiserver => {
                vec![
                    format!("--advertise-address={ip}"),
                    "--bind-address=0.0.0.0".into(),
                    "--secure-port=6443".into(),
                    // Stacked etcd as kubeadm sets it up: each API server talks to its own member only, so
                    // it is exactly as healthy as that member's view of quorum.
                    "--etcd-servers=http://127.0.0.1:2379".into(),
                    format!("--tls-cert-file={}", p("apiserver.crt")),
                    format!("--tls-private-key-file={}", p("apiserver.key")),
                    format!("--client-ca-file={}", p("ca.crt")),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                    format!("--service-account-key-file={}", p("sa.pub")),
                    format!("--service-account-signing-key-file={}", p("sa.key")),
                    format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                    "--authorization-mode=Node,RBAC".into(),
                    "--allow-privileged=true".into(),
                    "--enable-aggregator-routing=true".into(),
                    format!("--cert-dir={}", state.join("apiserver").display()),
                    "--profiling=false".into(),
                    // logs, exec: to the kubelets by address (the machine's resolver knows no node names),
                    // as the kubelet-client identity the kubelets' webhook authorization admits.
                    "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
                    format!("--kubelet-client-certificate={}", p("apiserver-kubelet-client.crt")),
                    format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
                ]
            }
            Component::KubeControllerManager | Component::KubeScheduler => {
                let kubeconfig = self.pki.kubeconfig(c.name()).display().to_string();
                let mut args = vec![
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--authentication-kubeconfig={kubeconfig}"),
                    format!("--authorization-kubeconfig={kubeconfig}"),
                    "--bind-address=0.0.0.0".into(),
                    format!("--cert-dir={}", state.join(c.name()).display()),
                    "--leader-elect=true".into(),
                    format!("--leader-elect-lease-duration={LEASE_DURATION}"),
                    format!("--leader-elect-renew-deadline={RENEW_DEADLINE}"),
                    format!("--leader-elect-retry-period={RETRY_PERIOD}"),
                    "--profiling=false".into(),
                ];
                if c == Component::KubeControllerManager {
                    args.extend([
                        "--use-service-account-credentials=true".into(),
                        format!("--service-account-private-key-file={}", p("sa.key")),
                        format!("--root-ca-file={}", p("ca.crt")),
                        format!("--cluster-signing-cert-file={}", p("ca.crt")),
                        format!("--cluster-signing-key-file={}", p("ca.key")),
                        "--cluster-name=kubeha-e2e".into(),
                    ]);
                }
                args
            }
        };
        args.shrink_to_fit();
        args
    }
}

/// How the connects of [`Cluster::connect_loop`] ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connects {
    /// Accepted.
    pub ok: u32,
    /// Refused: a reset, nothing listening on the address where the packets arrived.
    pub refused: u32,
    /// Timed out or unreachable.
    pub failed: u32,
}

/// A process a test started on a host; SIGKILLed when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct Process {
    child: std::process::Child,
    log: PathBuf,
}

impl Process {
    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, like a crash; waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits for the exit and returns its status.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().ctx(|| "waiting for a terminated process".into())
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
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
fn etcd_healthy(node: &Node) -> bool {
    http_get(SocketAddr::from((node.ipv4(), 2379)), "/health").contains("\"health\":\"true\"")
}

/// A plain HTTP/1.0 GET; the whole response, or empty when it fails.
fn http_get(addr: SocketAddr, path: &str) -> String {
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

pub(crate) fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn last_line(s: String) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}
