//! The failover chaos suite: faults applied to the three-master control plane while a client probes through
//! the VIP, against kubeha (installed with Helm, as users install it) and against keepalived + HAProxy
//! configured as the kubeadm HA guide does. What each run did is measured from one log (see [`record`],
//! [`measure`]); [`Chaos::report`] writes the markdown report and the timeline picture ([`picture`]).
//!
//! A scenario never asserts a timing; it returns the problems it saw (the world not steady again, the VIP
//! not released, …) and the caller decides what to assert.

pub mod measure;
pub mod picture;
pub mod record;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use self::measure::{Figures, Window, figures};
use self::record::{Clock, ProbeTarget, Shared, Worker, hosts, lock};
use crate::cluster::{Cluster, Component, KUBEHA_NAMESPACE};
use crate::error::{Error, IoContext as _, Result};
use crate::net::{CLIENTS, Host, NODES, Node, VIP_V4};
pub use crate::pods::{CHART, TEST_WORLD_VALUES};

/// The example the suite applies (its advert interval set per run).
pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ipv4-multicast.yaml");
/// The example's cluster.
pub const HAC: &str = "control-plane";
/// The proxy port on the VIP (kubeha's default; HAProxy is configured on the same port).
pub const PROXY_PORT: u16 = 8443;

/// What keeps the VIP and the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stack {
    /// kubeha from the chart, the example cluster with this advert interval.
    Kubeha {
        /// VRRP advert interval in milliseconds.
        advert_ms: u32,
    },
    /// keepalived + HAProxy as the kubeadm HA guide configures them: VRRPv2 adverts every 1 s, a check
    /// script that curls the local HAProxy every 3 s (fall 10, weight −2), priorities 101/100/100; HAProxy
    /// checks GET /healthz every 2 s, fall 3, rise 2, timeouts 35 s.
    KeepalivedGuide,
    /// keepalived + HAProxy at kubeha's settings: VRRPv3 adverts every 100 ms, priorities 200/190/180, a
    /// check of the local API server's /readyz every 1 s (fall 3, rise 2, weight −60); HAProxy checks /readyz
    /// every 1 s, fall 3, rise 2, connect timeout 1 s, closes sessions of a server marked down, no idle
    /// timeout.
    KeepalivedMatched,
}

impl Stack {
    /// The name in the report.
    pub fn label(self) -> String {
        match self {
            Stack::Kubeha { advert_ms } => format!("kubeha, {} adverts", interval(advert_ms)),
            Stack::KeepalivedGuide => "keepalived + HAProxy, kubeadm guide (1 s)".into(),
            Stack::KeepalivedMatched => "keepalived + HAProxy, matched (100 ms)".into(),
        }
    }

    /// A short name for the picture.
    pub fn short(self) -> String {
        match self {
            Stack::Kubeha { advert_ms } => format!("kubeha {}", interval(advert_ms)),
            Stack::KeepalivedGuide => "keepalived guide 1s".into(),
            Stack::KeepalivedMatched => "keepalived matched 100ms".into(),
        }
    }

    /// The VRRP advert interval in milliseconds.
    pub fn advert_ms(self) -> u32 {
        match self {
            Stack::Kubeha { advert_ms } => advert_ms,
            Stack::KeepalivedGuide => 1000,
            Stack::KeepalivedMatched => 100,
        }
    }

    fn is_kubeha(self) -> bool {
        matches!(self, Stack::Kubeha { .. })
    }

    /// The priorities of n1, n2, n3.
    fn priorities(self) -> [u8; 3] {
        match self {
            Stack::Kubeha { .. } | Stack::KeepalivedMatched => [200, 190, 180],
            Stack::KeepalivedGuide => [101, 100, 100],
        }
    }
}

fn interval(ms: u32) -> String {
    if ms.is_multiple_of(1000) { format!("{} s", ms / 1000) } else { format!("{ms} ms") }
}

/// How long after the last API server stopped the VIP must stay put. The health checks need fall × interval
/// (3 s) to see each API server down; and a graceful stop can take up to 15 s each, so the API servers may
/// go down further apart than renewDeadline (10 s): then quorum fencing rightly raises the masters that still
/// renew, and the last of them keeps its boost until its own deadline, up to renewDeadline after the last
/// stop, before the VIP returns to the highest base priority (seen in a soak: n3 → n1 8 s after the last stop).
const ALL_DOWN_SETTLED: Duration = Duration::from_secs(13);

/// A fault and its removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scenario {
    /// SIGKILL of the active node's agent (keepalived); its kubelet (systemd) starts it again after 1 s.
    KillAgent,
    /// Every process of the active node killed, its link down and its runtime addresses gone (power loss);
    /// booted again after 8 s.
    KillNode,
    /// The active node's link cut for 5 s, then healed.
    Partition,
    /// The active node's kube-apiserver stopped for 10 s.
    StopApiserver,
    /// etcd stopped on one backup, 5 s later on the other (quorum lost) for 10 s; both started again.
    EtcdQuorumLoss,
    /// Every agent (keepalived and HAProxy) restarted, one node at a time.
    RollingRestart,
    /// Both operator replicas SIGKILLed for 10 s (kubeha only: the peer has no operator).
    KillOperator,
    /// Every kube-apiserver stopped for 10 s, then started.
    ApiserversDown,
    /// The HighAvailabilityCluster deleted, then applied again (kubeha only).
    DeleteCluster,
    /// The lowest-priority backup stopped, given a priority above the active node's, and started: it joins
    /// and preempts; then its priority is put back.
    Preemption,
}

impl Scenario {
    /// Every scenario, in the report's order.
    pub const ALL: [Scenario; 10] = [
        Scenario::KillAgent,
        Scenario::KillNode,
        Scenario::Partition,
        Scenario::StopApiserver,
        Scenario::EtcdQuorumLoss,
        Scenario::RollingRestart,
        Scenario::KillOperator,
        Scenario::ApiserversDown,
        Scenario::DeleteCluster,
        Scenario::Preemption,
    ];

    /// Its title in the report.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::KillAgent => "SIGKILL of the active agent",
            Scenario::KillNode => "the active node killed (power loss), booted 8 s later",
            Scenario::Partition => "the active node's link cut for 5 s, then healed",
            Scenario::StopApiserver => "the active node's kube-apiserver stopped for 10 s",
            Scenario::EtcdQuorumLoss => "one etcd member stopped, then a second (quorum lost) for 10 s",
            Scenario::RollingRestart => "rolling restart of every agent, one node at a time",
            Scenario::KillOperator => "both operator replicas killed for 10 s",
            Scenario::ApiserversDown => "every kube-apiserver down for 20 s, then back",
            Scenario::DeleteCluster => "the HighAvailabilityCluster deleted, then applied again",
            Scenario::Preemption => "a backup with a higher priority joins (preemption)",
        }
    }

    /// Its name on the command line (`KUBEHA_CHAOS_ONLY`).
    pub fn name(self) -> String {
        format!("{self:?}")
    }

    /// Whether it means anything for `stack`.
    pub fn applies_to(self, stack: Stack) -> bool {
        stack.is_kubeha() || !matches!(self, Scenario::KillOperator | Scenario::DeleteCluster)
    }
}

/// One scenario run on one stack.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The scenario.
    pub scenario: Scenario,
    /// The stack.
    pub stack: Stack,
    /// Its moments.
    pub window: Window,
    /// What the client and the VIP saw.
    pub figures: Figures,
    /// What kubeha said meanwhile: condition changes and Events.
    pub said: Vec<String>,
    /// What did not happen as it should (not steady again in time, the VIP not released, …).
    pub problems: Vec<String>,
}

/// A chaos session on an up cluster: the client probe and the holder sampler run for its whole length.
#[derive(Debug)]
pub struct Chaos<'a> {
    cluster: &'a Cluster,
    /// The session's clock.
    pub clock: Clock,
    /// Everything observed.
    pub log: Shared,
    probe: Option<Worker>,
    sampler: Option<Worker>,
    stack: Option<Stack>,
    /// The runs so far.
    pub runs: Vec<Run>,
    dir: PathBuf,
}

/// How long a session may run at most (every loop in it is bounded by this).
const SESSION_BOUND: Duration = Duration::from_secs(4 * 3600);
/// How long the world gets to be steady again after a scenario.
const SETTLE_WITHIN: Duration = Duration::from_secs(90);

impl<'a> Chaos<'a> {
    /// Starts the probe (from client c1) and the holder sampler on `cluster`, which must be up.
    pub fn start(cluster: &'a Cluster) -> Result<Self> {
        let dir = cluster.dir().join("chaos");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let kubeconfig = dir.join("vip.kubeconfig");
        cluster.write_kubeconfig_via(&format!("https://{VIP_V4}:{PROXY_PORT}"), &kubeconfig)?;
        let clock = Clock::start();
        let log = Shared::default();
        let sampler = record::sample_holders(VIP_V4, clock, log.clone(), SESSION_BOUND)?;
        let target = ProbeTarget {
            connect: SocketAddr::new(IpAddr::V4(VIP_V4), PROXY_PORT),
            kubectl: cluster.tools_dir().join("kubectl"),
            kubeconfig,
        };
        let probe = record::probe(&CLIENTS[0], target, clock, log.clone(), SESSION_BOUND)?;
        Ok(Self { cluster, clock, log, probe: Some(probe), sampler: Some(sampler), stack: None, runs: Vec::new(), dir })
    }

    /// Stops the probe and the sampler (their sockets keep the namespaces alive: stop before `down`).
    pub fn stop(&mut self) {
        if let Some(p) = self.probe.take() {
            p.stop();
        }
        if let Some(s) = self.sampler.take() {
            s.stop();
        }
    }

    /// The masters holding the VIP now (from the sampler).
    pub fn holders(&self) -> Vec<Host> {
        hosts(lock(&self.log).holders.last().map_or(0, |h| h.1))
    }

    /// Makes `stack` the one that keeps the VIP: removes the other, installs or retunes this one, and waits
    /// until one master holds the VIP and the world is steady.
    pub async fn use_stack(&mut self, stack: Stack) -> Result<()> {
        match (self.stack, stack) {
            (Some(Stack::Kubeha { .. }), Stack::Kubeha { advert_ms }) => self.apply_cluster(advert_ms)?,
            (current, _) => {
                match current {
                    Some(Stack::Kubeha { .. }) => self.uninstall_kubeha().await?,
                    Some(_) => self.stop_peer(),
                    None => {}
                }
                match stack {
                    Stack::Kubeha { advert_ms } => {
                        self.cluster.install_chart(&[]).await?;
                        self.apply_cluster(advert_ms)?;
                    }
                    peer => self.start_peer(peer)?,
                }
            }
        }
        self.stack = Some(stack);
        let problems = self.settle(self.clock.now(), stack).await;
        match problems.is_empty() {
            true => Ok(()),
            false => Err(Error::Usage(format!("{} did not come up steady: {}", stack.label(), problems.join("; ")))),
        }
    }

    /// Runs `scenario` on the current stack and records it.
    pub async fn run(&mut self, scenario: Scenario) -> Result<&Run> {
        let stack = self.stack.ok_or_else(|| Error::Usage("no stack in use".into()))?;
        let before = self.settle(self.clock.now(), stack).await;
        if !before.is_empty() {
            return Err(Error::Usage(format!("{scenario:?}: not steady before the fault: {}", before.join("; "))));
        }
        let start = self.clock.now();
        let mut problems = Vec::new();
        let active = match self.holders().as_slice() {
            [one] => *one,
            other => {
                let other: Vec<String> = other.iter().map(Host::name).collect();
                return Err(Error::Usage(format!("{scenario:?}: VIP on {other:?} before the fault")));
            }
        };
        let wall = Timestamp::now();
        let mut said = Said::default();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut fault = self.clock.now();
        let mut restore = None;
        match scenario {
            Scenario::KillAgent => {
                self.stop_agent(stack, &active, true)?;
                self.hold(stack, Duration::from_secs(1), &mut said).await;
                self.start_agent(stack, &active).await?;
            }
            Scenario::KillNode => {
                self.cluster.power_off(&active)?;
                self.hold(stack, Duration::from_secs(8), &mut said).await;
                restore = Some(self.clock.now());
                self.cluster.power_on(&active).await?;
                self.start_agent(stack, &active).await?;
            }
            Scenario::Partition => {
                self.cluster.partition(&active)?;
                self.hold(stack, Duration::from_secs(5), &mut said).await;
                restore = Some(self.clock.now());
                self.cluster.heal(&active)?;
            }
            Scenario::StopApiserver => {
                self.cluster.stop_apiserver(&active)?;
                self.hold(stack, Duration::from_secs(10), &mut said).await;
                restore = Some(self.clock.now());
                self.cluster.start_apiserver(&active).await?;
            }
            Scenario::EtcdQuorumLoss => {
                let backups: Vec<Node> = NODES.iter().filter(|n| **n != active).copied().collect();
                self.cluster.stop_component(&backups[0], Component::Etcd)?;
                self.hold(stack, Duration::from_secs(5), &mut said).await;
                self.cluster.stop_component(&backups[1], Component::Etcd)?;
                self.hold(stack, Duration::from_secs(10), &mut said).await;
                restore = Some(self.clock.now());
                for b in &backups {
                    self.cluster.start_component(b, Component::Etcd)?;
                }
                for n in NODES {
                    self.cluster.wait_ready(&n).await?;
                }
            }
            Scenario::RollingRestart => {
                for n in NODES {
                    self.restart_agent(stack, &n).await?;
                    self.hold(stack, Duration::from_secs(2), &mut said).await;
                }
            }
            Scenario::KillOperator => {
                for pod in self.cluster.kubeha_pods()?.iter().filter(|p| p.name.starts_with("kubeha-operator")) {
                    self.cluster.kill_container(pod, "operator")?;
                }
                self.hold(stack, Duration::from_secs(10), &mut said).await;
                restore = Some(self.clock.now());
                self.cluster.wait_release("kubeha", KUBEHA_NAMESPACE).await?;
                // The agents carry on: nothing about the VIP changes while the operators are gone.
                problems.extend(self.moved(fault, self.clock.now(), "while the operators were down"));
            }
            Scenario::ApiserversDown => {
                // One after the other (each stop is graceful): the VIP may follow the API servers still up.
                for n in NODES {
                    self.cluster.stop_apiserver(&n)?;
                }
                let all_down = self.clock.now();
                self.hold(stack, ALL_DOWN_SETTLED + Duration::from_secs(7), &mut said).await;
                restore = Some(self.clock.now());
                // VRRP carries on: once every master's health check has seen its API server down and quorum
                // fencing has run its course, the VIP stays where it is until they come back.
                let settled = all_down + ALL_DOWN_SETTLED.as_secs_f64();
                problems.extend(self.moved(settled, self.clock.now(), "while every API server was down"));
                for n in NODES {
                    self.cluster.start_apiserver(&n).await?;
                }
            }
            Scenario::DeleteCluster => {
                self.kubectl_any(&["delete", "hac", HAC, "--wait=false"])?;
                let released =
                    self.wait_for(Duration::from_secs(30), &mut said, stack, |c| c.holders().is_empty()).await;
                if !released {
                    let on: Vec<String> = self.holders().iter().map(Host::name).collect();
                    problems.push(format!("the VIP is still on {on:?} 30 s after the cluster was deleted"));
                }
                self.hold(stack, Duration::from_secs(2), &mut said).await;
                restore = Some(self.clock.now());
                let Stack::Kubeha { advert_ms } = stack else { unreachable!("kubeha only") };
                self.apply_cluster(advert_ms)?;
            }
            Scenario::Preemption => {
                let joiner = NODES[2];
                self.stop_agent(stack, &joiner, false)?;
                self.set_priority(stack, &joiner, Some(250))?;
                // The fault is the join: the backup starts with a priority above everyone's.
                fault = self.clock.now();
                self.start_agent(stack, &joiner).await?;
                let took = self.wait_for(Duration::from_secs(30), &mut said, stack, |c| c.holders() == [joiner]).await;
                if !took {
                    let on = self.holders().iter().map(Host::name).collect::<Vec<_>>();
                    problems.push(format!("{joiner} did not preempt: the VIP is on {on:?}"));
                }
                self.hold(stack, Duration::from_secs(2), &mut said).await;
                restore = Some(self.clock.now());
                self.set_priority(stack, &joiner, None)?;
            }
        }
        problems.extend(self.settle_saying(restore.unwrap_or(fault), stack, &mut said).await);
        let end = self.clock.now();
        let window = Window { start: start.max(fault - 2.0), fault, restore, end };
        let figures = figures(&lock(&self.log), &window);
        if stack.is_kubeha() {
            said.events(self, wall);
        }
        self.runs.push(Run { scenario, stack, window, figures, said: said.lines, problems });
        Ok(self.runs.last().expect("just pushed"))
    }

    /// A problem if the VIP was not on one and the same master all through `from`..`to`.
    fn moved(&self, from: f64, to: f64, when: &str) -> Option<String> {
        let log = lock(&self.log);
        let at_start = log.holders_at(from);
        let changes: Vec<&(f64, u8)> = log.holders.iter().filter(|(t, _)| *t > from && *t <= to).collect();
        (at_start.count_ones() != 1 || !changes.is_empty()).then(|| {
            let seen: Vec<String> = std::iter::once(at_start)
                .chain(changes.iter().map(|c| c.1))
                .map(|m| format!("{:?}", names(m)))
                .collect();
            format!("the VIP did not stay on one master {when}: {}", seen.join(" → "))
        })
    }

    /// Waits until the world is steady again after `since`: exactly one master has held the VIP for 2 s, the
    /// last 2 s of probes connected, the watch printed an event after `since`, every API server is ready,
    /// and (kubeha) the cluster is Ready and names the holder. Returns what did not come true in time.
    async fn settle(&self, since: f64, stack: Stack) -> Vec<String> {
        let mut said = Said::default();
        self.settle_saying(since, stack, &mut said).await
    }

    async fn settle_saying(&self, since: f64, stack: Stack, said: &mut Said) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
        // The holder must stay put for a while after the last action too: a restarted keepalived that kept its
        // VIP while it was dead drops it at start and elects again, and that outage belongs to this run.
        let quiet_from = self.clock.now();
        loop {
            let missing = self.unsteady(since, quiet_from, stack, said).await;
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return missing.into_iter().map(|m| format!("not steady within {SETTLE_WITHIN:?}: {m}")).collect();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn unsteady(&self, since: f64, quiet_from: f64, stack: Stack, said: &mut Said) -> Vec<String> {
        let now = self.clock.now();
        let mut missing = Vec::new();
        {
            let log = lock(&self.log);
            let holders = log.holders.last().map_or(0, |h| h.1);
            let steady_since = log.holders.last().map_or(now, |h| h.0);
            // Longer than a backup's Master_Down_Interval (3 adverts and a skew): a holder whose VRRP daemon
            // died keeps the VIP until a backup takes over, and that is not steady.
            let needed = if stack.advert_ms() >= 1000 { 5.0 } else { 2.0 };
            if holders.count_ones() != 1 || now - steady_since.max(quiet_from) < needed {
                missing.push(format!("one holder for {needed} s (holders {:?})", names(holders)));
            }
            let recent: Vec<bool> =
                log.connects.iter().filter(|(t, _)| *t > now - 2.0 && *t < now - 1.0).map(|c| c.1).collect();
            if recent.is_empty() || recent.iter().any(|ok| !ok) {
                missing.push("every probe of the last 2 s connected".into());
            }
            if !log.watch_events.iter().any(|t| *t > since) {
                missing.push("a watch event".into());
            }
        }
        for n in NODES {
            if !self.cluster.readyz(&n).await {
                missing.push(format!("{n}'s API server ready"));
            }
        }
        if stack.is_kubeha() {
            match self.observe_cluster(said) {
                Some(hac) => {
                    let active = hac["status"]["activeNode"].as_str().unwrap_or_default().to_string();
                    let holders: Vec<String> = self.holders().iter().map(Host::name).collect();
                    if !ready(&hac) || holders != [active.clone()] {
                        missing.push(format!("the cluster Ready and naming the holder (status: {active:?})"));
                    }
                }
                None => missing.push("the cluster's status readable".into()),
            }
        }
        missing
    }

    /// Waits `d`, noting what kubeha says meanwhile.
    async fn hold(&self, stack: Stack, d: Duration, said: &mut Said) {
        self.wait_for(d, said, stack, |_| false).await;
    }

    /// Waits until `done` (true) or `within` passes (false), noting what kubeha says meanwhile.
    async fn wait_for(&self, within: Duration, said: &mut Said, stack: Stack, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut next_look = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            if done(self) {
                return true;
            }
            if stack.is_kubeha() && tokio::time::Instant::now() >= next_look {
                self.observe_cluster(said);
                next_look = tokio::time::Instant::now() + Duration::from_secs(1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done(self)
    }

    /// The cluster object, read through any API server that answers; what changed is noted in `said`.
    fn observe_cluster(&self, said: &mut Said) -> Option<Value> {
        let text = self.kubectl_any(&["get", "hac", HAC, "-o", "json"]).ok()?;
        let hac: Value = serde_json::from_str(&text).ok()?;
        said.note(self.clock.now(), &hac);
        Some(hac)
    }

    /// kubectl through the first API server that answers (n1, n2, n3).
    pub fn kubectl_any(&self, args: &[&str]) -> Result<String> {
        let mut last = String::new();
        for n in NODES {
            let out = self
                .cluster
                .kubectl()
                .args(["--context", &n.name(), "--request-timeout=3s"])
                .args(args)
                .output()
                .ctx(|| "running kubectl".into())?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            if last.contains("NotFound") || last.contains("not found") {
                break;
            }
        }
        Err(Error::Command { cmd: format!("kubectl {}", args.join(" ")), detail: last })
    }

    /// Applies the example cluster (examples/ipv4-multicast.yaml) with the advert interval.
    fn apply_cluster(&self, advert_ms: u32) -> Result<()> {
        let text = std::fs::read_to_string(EXAMPLE).ctx(|| format!("reading {EXAMPLE}"))?;
        let mut hac: Value =
            serde_norway::from_str(&text).map_err(|e| Error::Usage(format!("{EXAMPLE} does not parse: {e}")))?;
        hac["spec"]["vrrp"]["advertInterval"] = format!("{advert_ms}ms").into();
        let path = self.dir.join("cluster.json");
        std::fs::write(&path, hac.to_string()).ctx(|| format!("writing {}", path.display()))?;
        self.kubectl_any(&["apply", "-f", &path.display().to_string()]).map(drop)
    }

    async fn uninstall_kubeha(&self) -> Result<()> {
        let _ = self.kubectl_any(&["delete", "hac", HAC, "--timeout=60s"]);
        let out = self.cluster.helm().args(["uninstall", "kubeha", "-n", KUBEHA_NAMESPACE]).output();
        out.ctx(|| "running helm uninstall".into())?;
        self.cluster.wait_release("kubeha", KUBEHA_NAMESPACE).await.map(drop)
    }

    /// Stops the node's agent (keepalived): gracefully, or with SIGKILL if `crash`.
    fn stop_agent(&self, stack: Stack, node: &Node, crash: bool) -> Result<()> {
        match (stack, crash) {
            (Stack::Kubeha { .. }, true) => self.cluster.kill_agent(node),
            (Stack::Kubeha { .. }, false) => self.cluster.stop_agent(node),
            _ => {
                self.cluster.stop_service(node, "keepalived", crash);
                Ok(())
            }
        }
    }

    /// Starts what is not running of the stack on `node` (systemd for the peer), or waits until the
    /// kubelet has restarted kubeha's agent.
    async fn start_agent(&self, stack: Stack, node: &Node) -> Result<()> {
        match stack {
            Stack::Kubeha { .. } => self.cluster.start_agent(node).await,
            _ => self.start_peer_on(node),
        }
    }

    async fn restart_agent(&self, stack: Stack, node: &Node) -> Result<()> {
        match stack {
            Stack::Kubeha { .. } => self.cluster.replace_agent(node).await.map(drop),
            _ => {
                self.cluster.stop_service(node, "keepalived", false);
                self.cluster.stop_service(node, "haproxy", false);
                self.start_peer_on(node)
            }
        }
    }

    fn set_priority(&self, stack: Stack, node: &Node, priority: Option<u8>) -> Result<()> {
        match stack {
            Stack::Kubeha { .. } => {
                let value = priority.map_or(Value::Null, |p| serde_json::json!({ node.name(): p }));
                let patch = serde_json::json!({"spec": {"masters": {"priorities": value}}}).to_string();
                self.kubectl_any(&["patch", "hac", HAC, "--type=merge", "-p", &patch]).map(drop)
            }
            peer => {
                let running = self.cluster.service_running(node, "keepalived");
                self.cluster.stop_service(node, "keepalived", false);
                self.write_peer_config(peer, node, priority)?;
                if running { self.start_peer_on(node) } else { Ok(()) }
            }
        }
    }

    fn start_peer(&self, peer: Stack) -> Result<()> {
        for n in NODES {
            self.write_peer_config(peer, &n, None)?;
            self.start_peer_on(&n)?;
        }
        Ok(())
    }

    fn stop_peer(&self) {
        for n in NODES {
            self.cluster.stop_service(&n, "keepalived", false);
            self.cluster.stop_service(&n, "haproxy", false);
        }
    }

    fn peer_dir(&self, node: &Node) -> PathBuf {
        self.dir.join(format!("peer-{node}"))
    }

    /// Starts HAProxy and keepalived on `node` (whichever is not running) from their written configuration.
    fn start_peer_on(&self, node: &Node) -> Result<()> {
        let dir = self.peer_dir(node);
        let p = |f: &str| dir.join(f).display().to_string();
        let haproxy = ["haproxy", "-db", "-f", &p("haproxy.cfg")].map(String::from);
        self.cluster.start_service(node, "haproxy", &haproxy)?;
        if !self.cluster.service_running(node, "keepalived") {
            // On a real node systemd reaps a killed keepalived's VRRP child at once; here it can stay a zombie
            // (nothing reaps orphans in this container), and keepalived refuses to start while its pid file
            // names a live-looking process. A dead daemon's pid files are stale either way.
            for f in ["k.pid", "v.pid", "c.pid"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        let keepalived =
            ["keepalived", "-n", "-l", "-D", "-f", &p("keepalived.conf"), "-p", &p("k.pid"), "-r", &p("v.pid")]
                .map(String::from);
        self.cluster.start_service(node, "keepalived", &keepalived)
    }

    /// keepalived.conf, haproxy.cfg and the check script for `node`, as the guide (or matched) has them.
    fn write_peer_config(&self, peer: Stack, node: &Node, priority: Option<u8>) -> Result<()> {
        let dir = self.peer_dir(node);
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let index = NODES.iter().position(|n| n == node).unwrap_or(0);
        let files = peer_files(peer, node, &dir, priority.unwrap_or(peer.priorities()[index]), index == 0);
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).ctx(|| format!("writing {}", path.display()))?;
            if name.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .ctx(|| format!("chmod {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Writes `report.md` and `timeline.png` into `dir`; `command` is how they were made.
    pub fn report(&self, dir: &Path, command: &str) -> Result<()> {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let log = lock(&self.log);
        let md = report_markdown(&self.runs, command);
        let path = dir.join("report.md");
        std::fs::write(&path, md).ctx(|| format!("writing {}", path.display()))?;
        let blocks: Vec<picture::Block<'_>> = Scenario::ALL
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let strips: Vec<picture::Strip<'_>> = self
                    .runs
                    .iter()
                    .filter(|r| r.scenario == *s)
                    .map(|r| picture::Strip { label: r.stack.short(), window: r.window, log: &log })
                    .collect();
                (!strips.is_empty()).then(|| picture::Block { title: format!("{}. {}", i + 1, s.title()), strips })
            })
            .collect();
        picture::write(
            &dir.join("timeline.png"),
            "kubeha vs keepalived + HAProxy: who holds the VIP, and the client's probes",
            &blocks,
        )?;
        let raw = dir.join("runs.json");
        let json = serde_json::to_string(&self.runs).map_err(|e| Error::Usage(e.to_string()))?;
        std::fs::write(&raw, json).ctx(|| format!("writing {}", raw.display()))
    }
}

impl Drop for Chaos<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The names of the masters in a holder mask.
fn names(mask: u8) -> Vec<String> {
    hosts(mask).iter().map(Host::name).collect()
}

/// Whether a cluster object's Ready condition is True.
pub fn ready(hac: &Value) -> bool {
    hac["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// What kubeha said during a run: condition changes as they were seen (polled every second) and the Events.
#[derive(Debug, Default)]
struct Said {
    last: Vec<(String, String)>,
    lines: Vec<String>,
    start: Option<f64>,
}

impl Said {
    fn note(&mut self, now: f64, hac: &Value) {
        let start = *self.start.get_or_insert(now);
        let mut seen: Vec<(String, String)> = hac["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let t = c["type"].as_str().unwrap_or_default().to_string();
                (
                    t,
                    format!(
                        "{}={} ({})",
                        c["type"].as_str().unwrap_or_default(),
                        c["status"].as_str().unwrap_or_default(),
                        c["reason"].as_str().unwrap_or_default()
                    ),
                )
            })
            .collect();
        seen.push(("active".into(), format!("active {}", hac["status"]["activeNode"].as_str().unwrap_or("none"))));
        for (kind, text) in &seen {
            let before = self.last.iter().find(|(k, _)| k == kind).map(|(_, t)| t);
            if before.is_some_and(|b| b != text) {
                self.lines.push(format!("+{:.1}s {text}", now - start));
            }
        }
        self.last = seen;
    }

    /// Adds the cluster's Events since `since` (their reasons and notes, once each).
    fn events(&mut self, chaos: &Chaos<'_>, since: Timestamp) {
        let Ok(text) = chaos.kubectl_any(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.name={HAC}"),
            "-o",
            "json",
        ]) else {
            return;
        };
        let Ok(list) = serde_json::from_str::<Value>(&text) else { return };
        for e in list["items"].as_array().into_iter().flatten() {
            let when = [&e["eventTime"], &e["lastTimestamp"], &e["firstTimestamp"], &e["series"]["lastObservedTime"]]
                .into_iter()
                .filter_map(|v| v.as_str()?.parse::<Timestamp>().ok())
                .max();
            if when.is_some_and(|w| w >= since) {
                let line = format!(
                    "Event {} {}: {}",
                    e["type"].as_str().unwrap_or_default(),
                    e["reason"].as_str().unwrap_or_default(),
                    e["message"].as_str().or(e["note"].as_str()).unwrap_or_default()
                );
                if !self.lines.contains(&line) {
                    self.lines.push(line);
                }
            }
        }
    }
}

/// The peer's files for `node`: keepalived.conf, haproxy.cfg and the keepalived check script.
fn peer_files(peer: Stack, node: &Node, dir: &Path, priority: u8, first: bool) -> Vec<(&'static str, String)> {
    let servers: String =
        NODES.iter().map(|n| format!("    server {n} {}:6443 check verify none\n", n.ipv4())).collect();
    let check = dir.join("check_apiserver.sh").display().to_string();
    match peer {
        Stack::KeepalivedGuide => vec![
            (
                "keepalived.conf",
                // kubeadm docs/ha-considerations.md: VRRPv2 (keepalived's default) with PASS authentication,
                // advert_int 1 (the default), the first master MASTER at 101.
                format!(
                    "global_defs {{\n    router_id {node}\n    script_user root\n    enable_script_security\n}}\n\
                     vrrp_script check_apiserver {{\n  script \"{check}\"\n  interval 3\n  weight -2\n  fall 10\n  rise 2\n}}\n\n\
                     vrrp_instance VI_1 {{\n    state {}\n    interface eth0\n    virtual_router_id 51\n    priority {priority}\n    \
                     authentication {{\n        auth_type PASS\n        auth_pass 42\n    }}\n    virtual_ipaddress {{\n        {VIP_V4}/24\n    }}\n    \
                     track_script {{\n        check_apiserver\n    }}\n}}\n",
                    if first { "MASTER" } else { "BACKUP" }
                ),
            ),
            (
                "check_apiserver.sh",
                format!(
                    // The guide's script as it reads now: GET /healthz, which kube-apiserver serves to anonymous
                    // clients. Its older form, GET /, is refused (403) and `-f` made every check fail on every node.
                    "#!/bin/sh\nerrorExit() {{\n    echo \"*** $*\" 1>&2\n    exit 1\n}}\n\n\
                     curl -sfk --max-time 2 https://localhost:{PROXY_PORT}/healthz -o /dev/null || errorExit \"Error GET https://localhost:{PROXY_PORT}/healthz\"\n"
                ),
            ),
            (
                "haproxy.cfg",
                format!(
                    "global\n    log stdout format raw local0 notice\n\n\
                     defaults\n    mode http\n    log global\n    option httplog\n    option dontlognull\n    option http-server-close\n    \
                     option forwardfor except 127.0.0.0/8\n    option redispatch\n    retries 1\n    timeout http-request 10s\n    \
                     timeout queue 20s\n    timeout connect 5s\n    timeout client 35s\n    timeout server 35s\n    \
                     timeout http-keep-alive 10s\n    timeout check 10s\n\n\
                     frontend apiserver\n    bind *:{PROXY_PORT}\n    mode tcp\n    option tcplog\n    default_backend apiserverbackend\n\n\
                     backend apiserverbackend\n    option httpchk\n    http-check connect ssl\n    http-check send meth GET uri /healthz\n    \
                     http-check expect status 200\n    mode tcp\n    balance roundrobin\n{servers}"
                ),
            ),
        ],
        _ => vec![
            (
                "keepalived.conf",
                format!(
                    "global_defs {{\n    router_id {node}\n    vrrp_version 3\n    script_user root\n    enable_script_security\n}}\n\
                     vrrp_script check_apiserver {{\n  script \"{check}\"\n  interval 1\n  timeout 1\n  weight -60\n  fall 3\n  rise 2\n}}\n\n\
                     vrrp_instance VI_1 {{\n    state BACKUP\n    interface eth0\n    virtual_router_id 51\n    priority {priority}\n    \
                     advert_int 0.1\n    virtual_ipaddress {{\n        {VIP_V4}/24\n    }}\n    track_script {{\n        check_apiserver\n    }}\n}}\n"
                ),
            ),
            (
                "check_apiserver.sh",
                "#!/bin/sh\nexec curl -sfk --max-time 1 https://127.0.0.1:6443/readyz -o /dev/null\n".to_string(),
            ),
            (
                "haproxy.cfg",
                format!(
                    "global\n    log stdout format raw local0 notice\n\n\
                     defaults\n    mode tcp\n    log global\n    option redispatch\n    retries 1\n    timeout connect 1s\n    \
                     timeout client 24h\n    timeout server 24h\n    timeout check 1s\n\n\
                     frontend apiserver\n    bind *:{PROXY_PORT}\n    default_backend apiserverbackend\n\n\
                     backend apiserverbackend\n    option httpchk\n    http-check connect ssl\n    http-check send meth GET uri /readyz\n    \
                     http-check expect status 200\n    balance roundrobin\n    \
                     default-server inter 1s fall 3 rise 2 on-marked-down shutdown-sessions\n{servers}"
                ),
            ),
        ],
    }
}

/// The report: how it was made, then a table per scenario, then what kubeha said.
pub fn report_markdown(runs: &[Run], command: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Failover chaos report: kubeha vs keepalived + HAProxy\n");
    let _ =
        writeln!(md, "Made by `{command}` on the three-master test control plane (e2e/cluster), one run, one machine.");
    let _ = writeln!(
        md,
        "A client in its own namespace (c1) opens a TCP connection to the proxy on the VIP ({VIP_V4}:{PROXY_PORT}) every \
         10 ms (1 s timeout), sends a kubectl request through it every second (5 s timeout) and keeps a \
         `kubectl get leases -n kube-system --watch-only` open, starting it again when it ends. A netlink sampler \
         reads every 20 ms which masters carry the VIP. Timings are recorded, not asserted; the timeline is \
         [timeline.png](timeline.png).\n"
    );
    let _ = writeln!(
        md,
        "Columns: **outage** — client-visible, from a failed connect to the next good one (each outage; total \
         connects failed); **one holder** — when the VIP was on exactly one master for good, after the fault (or \
         after the fault was removed: `restore +`); **left** — when the VIP was first off the master that held it \
         at the fault (the faulty one; `—`: it stayed); **two** / **none** — time with the VIP on two masters / on none; \
         **kubectl** — failed of sent; **watch** — an event arrived after the fault was over (restarts of the watch).\n"
    );
    for (i, s) in Scenario::ALL.iter().enumerate() {
        let rows: Vec<&Run> = runs.iter().filter(|r| r.scenario == *s).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "## {}. {}\n", i + 1, s.title());
        let _ = writeln!(md, "| stack | outage | one holder | left | two | none | kubectl | watch |");
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |");
        for r in &rows {
            let f = &r.figures;
            let outage = if f.outages.is_empty() {
                "none".to_string()
            } else {
                // A few outages are listed; many (probes failing on and off) are summed up by their stretch.
                let what = if f.outages.len() <= 3 {
                    f.outages.iter().map(|o| format!("{o:.2} s")).collect::<Vec<_>>().join(" + ")
                } else {
                    format!(
                        "{} outages over {:.2} s, longest {:.2} s",
                        f.outages.len(),
                        f.outage_span,
                        f.worst_outage()
                    )
                };
                format!(
                    "{what}{} ({} of {} failed)",
                    if f.outage_open { " (open)" } else { "" },
                    f.connects.1,
                    f.connects.0
                )
            };
            let settled = match (f.settled, f.settled_after_restore) {
                (None, _) => format!("never (on {:?})", f.holders_at_end),
                (Some(t), true) => format!("restore + {t:.2} s"),
                (Some(t), false) => format!("{t:.2} s"),
            };
            let watch =
                format!("{} ({})", if f.watch_resumed { "resumed" } else { "**not resumed**" }, f.watch_restarts);
            let left = f.left_faulty.map_or_else(|| "—".to_string(), |t| format!("{t:.2} s"));
            let _ = writeln!(
                md,
                "| {} | {outage} | {settled} | {left} | {:.2} s | {:.2} s | {} of {} | {watch} |",
                r.stack.label(),
                f.on_two,
                f.on_none,
                f.requests.1,
                f.requests.0
            );
        }
        let _ = writeln!(md);
        for r in
            rows.iter().filter(|r| !r.said.is_empty() || !r.problems.is_empty() || !r.figures.request_errors.is_empty())
        {
            let _ = writeln!(md, "{}:", r.stack.label());
            for (why, n) in &r.figures.request_errors {
                let _ = writeln!(md, "- kubectl failed ×{n}: `{why}`");
            }
            for line in &r.said {
                let _ = writeln!(md, "- {line}");
            }
            for p in &r.problems {
                let _ = writeln!(md, "- **problem:** {p}");
            }
            let _ = writeln!(md);
        }
    }
    md
}
