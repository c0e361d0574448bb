//! One member running on this node: its VRRP driver and its proxy, changed in place when the member's spec
//! changes. What can change in place does (timers, priority, health checks, unicast peers, proxy
//! backends); what makes it a different virtual router or listener restarts that part alone
//! (docs/cluster-mode.md has the list). A process may run one part only (`--parts`): the chart runs the
//! proxy in a container of its own, so that a crash of the part that holds the VIP never closes the
//! listener clients are connected to (docs/adr/0008).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use kubeha_crds::{HighAvailabilityMemberSpec, MemberProxy};
use kubeha_vrrp::router::Tuning;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config;
use crate::driver::{self, Command, Control, Driver, Observed};
use crate::handover::{self, Role, Slot};
use crate::leasemode::{LeaseContext, LeaseHolder};
use crate::metrics::{ProxyMetrics, VrrpMetrics};
use crate::proxy::{self, BackendView, Proxy, ProxyHandle};

/// Which parts of a member this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// Holding the VIP: the VRRP driver or the Lease holder, and in cluster mode the heartbeat, quorum
    /// fencing, the release finalizer and the last-known-good store. (A second way of announcing the VIP
    /// belongs to this part too.)
    pub vip: bool,
    /// The API proxy.
    pub proxy: bool,
}

impl Parts {
    /// Both parts in one process.
    pub const ALL: Self = Self { vip: true, proxy: true };

    /// Parses `vip`, `proxy` or both, comma-separated (`--parts`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut p = Self { vip: false, proxy: false };
        for word in s.split(',').map(str::trim) {
            match word {
                "vip" => p.vip = true,
                "proxy" => p.proxy = true,
                other => return Err(format!("unknown part '{other}': use vip, proxy or vip,proxy")),
            }
        }
        Ok(p)
    }
}

impl std::fmt::Display for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.vip, self.proxy) {
            (true, true) => f.write_str("vip,proxy"),
            (true, false) => f.write_str("vip"),
            (false, true) => f.write_str("proxy"),
            (false, false) => f.write_str("none"),
        }
    }
}

/// What a spec change does to a running member.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The VRRP driver must be replaced (the master hands the VIP over first).
    pub restart_vrrp: bool,
    /// Changes the running driver applies in place.
    pub commands: Vec<Command>,
    /// The proxy must be replaced (its listener, or settings the running proxy holds).
    pub restart_proxy: bool,
    /// The running proxy gets a new backend list.
    pub backends: bool,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What going from `old` to `new` takes.
pub fn plan(old: &HighAvailabilityMemberSpec, new: &HighAvailabilityMemberSpec) -> Plan {
    let mut p = Plan::default();
    let (ov, nv) = (&old.vrrp, &new.vrrp);
    let unicast_switch = ov.peers.is_empty() != nv.peers.is_empty();
    let owner_switch = (old.priority == 255) != (new.priority == 255);
    p.restart_vrrp = old.vip != new.vip
        || old.vrid != new.vrid
        || old.interface != new.interface
        || ov.version != nv.version
        || ov.accept != nv.accept
        || unicast_switch
        || owner_switch
        || old.election.mode != new.election.mode;
    if !p.restart_vrrp && config::vip(new).is_some() {
        if let Some(t) = tuning(new).filter(|t| tuning(old) != Some(*t)) {
            p.commands.push(Command::Tune(t));
        }
        if old.priority != new.priority {
            p.commands.push(Command::Priority(u8::try_from(new.priority).unwrap_or(100)));
        }
        if old.health != new.health {
            p.commands.push(Command::Health(new.health.clone()));
        }
        if ov.peers != nv.peers {
            p.commands.push(Command::Peers(nv.peers.iter().filter_map(|a| a.parse().ok()).collect()));
        }
        if ov.members != nv.members || ov.strangers != nv.strangers {
            p.commands.push(Command::Strangers {
                members: nv.members.iter().filter_map(|a| a.parse().ok()).collect(),
                elect: nv.strangers == kubeha_crds::StrangerPolicy::Elect,
            });
        }
    }
    let enabled = |s: &HighAvailabilityMemberSpec| s.proxy.clone().filter(|p| p.enabled);
    match (enabled(old), enabled(new)) {
        (None, None) => {}
        (Some(o), Some(n)) => {
            let without_backends = |p: &MemberProxy| MemberProxy { backends: Vec::new(), ..p.clone() };
            if without_backends(&o) != without_backends(&n) {
                p.restart_proxy = true;
            } else if o.backends != n.backends {
                p.backends = true;
            }
        }
        _ => p.restart_proxy = true,
    }
    p
}

/// The parts of a spec the router changes in place. The addresses do not matter here.
fn tuning(spec: &HighAvailabilityMemberSpec) -> Option<Tuning> {
    let any = IpAddr::from([0, 0, 0, 0]);
    driver::router_config(spec, any, any).ok().map(|c| Tuning::of(&c))
}

/// A part running in its own task, stopped through its watch.
#[derive(Debug)]
struct Task {
    stop: watch::Sender<bool>,
    join: JoinHandle<()>,
}

impl Task {
    fn spawn<F: Future<Output = ()> + Send + 'static>(run: impl FnOnce(watch::Receiver<bool>) -> F) -> Self {
        let (stop, rx) = watch::channel(false);
        Self { stop, join: tokio::spawn(run(rx)) }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.join.await;
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Why a member cannot run on this node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The VRRP driver.
    #[error("VRRP: {0}")]
    Vrrp(#[from] driver::DriverError),
    /// The proxy.
    #[error("proxy: {0}")]
    Proxy(#[from] proxy::ProxyError),
    /// Lease mode without an API (standalone).
    #[error(
        "election.mode Lease needs the API (cluster mode): a standalone agent cannot hold a Lease; use mode VRRP \
         in a config file"
    )]
    LeaseMode,
    /// Another agent of this node runs the VRRP instance and did not step aside.
    #[error("{0}")]
    Handover(#[from] crate::handover::HandoverError),
}

/// One member's running parts.
#[derive(Debug)]
pub struct Instance {
    spec: HighAvailabilityMemberSpec,
    parts: Parts,
    vrrp_metrics: VrrpMetrics,
    proxy_metrics: ProxyMetrics,
    vrrp: Option<(Task, Control)>,
    proxy: Option<(Task, ProxyHandle)>,
    /// Backends learned from the cluster (the default/kubernetes EndpointSlice), added to the spec's.
    discovered: Vec<SocketAddr>,
    /// What Lease mode needs; `None` standalone, where Lease mode cannot run.
    lease: Option<LeaseContext>,
    /// The state directory, where the VRRP instance is locked against other agents of this node.
    state_dir: PathBuf,
}

impl Instance {
    /// Starts what `spec` asks for, of the `parts` this process runs. The proxy binds first: with IP_FREEBIND
    /// it does not need the VIP, and a takeover must not wait for it.
    pub async fn start(
        spec: HighAvailabilityMemberSpec,
        parts: Parts,
        vrrp_metrics: VrrpMetrics,
        proxy_metrics: ProxyMetrics,
        lease: Option<LeaseContext>,
        state_dir: PathBuf,
    ) -> Result<Self, StartError> {
        let mut me = Self {
            spec,
            parts,
            vrrp_metrics,
            proxy_metrics,
            vrrp: None,
            proxy: None,
            discovered: Vec::new(),
            lease,
            state_dir,
        };
        me.proxy = me.start_proxy()?;
        match me.start_vrrp().await {
            Ok(v) => me.vrrp = v,
            Err(e) => {
                me.stop().await;
                return Err(e);
            }
        }
        Ok(me)
    }

    fn start_proxy(&self) -> Result<Option<(Task, ProxyHandle)>, StartError> {
        let Some(proxy) = proxy_of(&self.spec, self.parts, &self.proxy_metrics)? else { return Ok(None) };
        let handle = proxy.handle();
        handle.set_backends(&self.backends());
        Ok(Some((Task::spawn(|rx| proxy.run(stopped(rx))), handle)))
    }

    async fn start_vrrp(&self) -> Result<Option<(Task, Control)>, StartError> {
        if config::vip(&self.spec).is_none() || !self.parts.vip {
            return Ok(None);
        }
        if self.spec.election.mode == kubeha_crds::ElectionMode::Lease {
            let ctx = self.lease.clone().ok_or(StartError::LeaseMode)?;
            let spec = crate::vip::with_interface(&self.spec).await.map_err(driver::DriverError::from)?;
            let (holder, control) = LeaseHolder::new(&spec, ctx, self.vrrp_metrics.clone()).await?;
            return Ok(Some((Task::spawn(|rx| holder.run(stopped(rx))), control)));
        }
        let taken = driver_of(&self.spec, &self.vrrp_metrics, &self.state_dir, Role::Takes, std::future::pending());
        let Some(mut driver) = taken.await? else { return Ok(None) };
        let control = driver.control();
        Ok(Some((
            Task::spawn(|rx| async move {
                let _ = driver.run(stopped(rx)).await;
            }),
            control,
        )))
    }

    /// The spec's backends plus the discovered ones.
    fn backends(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> =
            self.spec.proxy.iter().flat_map(|p| p.backends.iter()).filter_map(|b| b.parse().ok()).collect();
        for d in &self.discovered {
            if !all.contains(d) {
                all.push(*d);
            }
        }
        all
    }

    /// Moves to `spec`, in place where possible. Returns what it did, for the log.
    pub async fn update(&mut self, spec: HighAvailabilityMemberSpec) -> Result<Plan, StartError> {
        let plan = plan(&self.spec, &spec);
        self.spec = spec;
        if plan.restart_proxy {
            if let Some((task, _)) = self.proxy.take() {
                task.stop().await;
            }
            self.proxy = self.start_proxy()?;
        } else if plan.backends {
            self.push_backends();
        }
        if plan.restart_vrrp {
            if let Some((task, _)) = self.vrrp.take() {
                task.stop().await;
            }
            self.vrrp = self.start_vrrp().await?;
        } else if let Some((_, control)) = &self.vrrp {
            for c in &plan.commands {
                let _ = control.commands.send(c.clone());
            }
        }
        Ok(plan)
    }

    fn push_backends(&self) {
        if let Some((_, handle)) = &self.proxy {
            handle.set_backends(&self.backends());
        }
    }

    /// Sets the backends discovered from the cluster; they are added to the spec's.
    pub fn set_discovered(&mut self, discovered: Vec<SocketAddr>) {
        if discovered != self.discovered {
            self.discovered = discovered;
            self.push_backends();
        }
    }

    /// The spec it runs.
    pub fn spec(&self) -> &HighAvailabilityMemberSpec {
        &self.spec
    }

    /// What the VRRP driver observes, when there is one.
    pub fn observed(&self) -> Option<watch::Receiver<Observed>> {
        self.vrrp.as_ref().map(|(_, c)| c.observed.clone())
    }

    /// The running proxy's handle.
    pub fn proxy_handle(&self) -> Option<ProxyHandle> {
        self.proxy.as_ref().map(|(_, h)| h.clone())
    }

    /// The running driver's command channel.
    pub fn commands(&self) -> Option<tokio::sync::mpsc::UnboundedSender<Command>> {
        self.vrrp.as_ref().map(|(_, c)| c.commands.clone())
    }

    /// The proxy's backends, when there is a proxy.
    pub fn proxy_backends(&self) -> Vec<BackendView> {
        self.proxy.as_ref().map(|(_, h)| h.backends()).unwrap_or_default()
    }

    /// Stops everything: a master hands the VIP over (priority 0) and removes it; the proxy stops accepting.
    /// A proxy that runs without the VIP part (its own container) goes on accepting while the VIP is still
    /// on this node, up to [`LINGER`]: the other container, stopped at the same moment, is handing it over,
    /// and until it has, clients still arrive here.
    pub async fn stop(mut self) {
        if let Some((task, _)) = self.vrrp.take() {
            task.stop().await;
        }
        if let Some((task, _)) = self.proxy.take() {
            let_the_vip_go(&self.spec, self.parts).await;
            task.stop().await;
        }
    }
}

/// The proxy `spec` asks for, bound, when this process runs the proxy part: standalone and cluster mode
/// start it alike.
pub fn proxy_of(
    spec: &HighAvailabilityMemberSpec,
    parts: Parts,
    metrics: &ProxyMetrics,
) -> Result<Option<Proxy>, StartError> {
    let Some(p) = spec.proxy.as_ref().filter(|p| p.enabled && parts.proxy) else { return Ok(None) };
    Ok(Some(Proxy::bind(proxy::Settings::from_spec(p)?, metrics.clone())?))
}

/// The VRRP driver of `spec`, set up, with this node's side of the instance taken in `role`: standalone
/// and cluster mode assemble it alike and differ only in the role (docs/adr/0005).
///
/// - [`Role::Takes`] (cluster mode): everything is set up before a bootstrap agent of this node is asked to
///   step aside, so that the hand-over waits for nothing; if it held the VIP, the driver resumes as master
///   without dropping it.
/// - [`Role::Yields`] (a standalone agent, the bootstrap static pod): waits while another agent of this
///   node runs the instance, then sets up; `None` when `cancel` resolves first.
pub async fn driver_of(
    spec: &HighAvailabilityMemberSpec,
    metrics: &VrrpMetrics,
    state_dir: &std::path::Path,
    role: Role,
    cancel: impl Future<Output = ()>,
) -> Result<Option<Driver>, StartError> {
    // The interface is found once, here, before the lock that is named after it.
    let spec = &crate::vip::with_interface(spec).await.map_err(driver::DriverError::from)?;
    let instance = handover::Instance::of(spec);
    let slot = match role {
        Role::Takes => None,
        Role::Yields => match Slot::acquire(state_dir, &instance, role, cancel).await? {
            Some(slot) => Some(slot),
            None => return Ok(None),
        },
    };
    let mut driver = Driver::new(spec, metrics.clone()).await?;
    driver.prepare().await;
    let slot = match slot {
        Some(slot) => Some(slot),
        None => Slot::acquire(state_dir, &instance, role, std::future::pending()).await?,
    };
    driver.take(slot).await?;
    Ok(Some(driver))
}

/// How long a proxy without the VIP part waits, when stopped, for the VIP to leave this node. The VIP part
/// hands over in well under a second; this bounds the wait when it cannot (it was killed, and the address
/// stays until its lifetime ends or the part comes back).
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(3);

/// Before a stopping proxy closes its listener: when this process does not run the VIP part, waits until
/// the spec's VIP is no longer an address of this host (in this network namespace), at most [`LINGER`].
/// Returns at once when this process holds the VIP itself (it has handed it over already) or there is none.
pub async fn let_the_vip_go(spec: &HighAvailabilityMemberSpec, parts: Parts) {
    let Some(vip) = config::vip(spec).filter(|_| !parts.vip) else { return };
    let deadline = tokio::time::Instant::now() + LINGER;
    while is_local(vip.address) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Whether `ip` is an address of this host: binding to it without IP_FREEBIND works only then (and needs no
/// capability). A host with net.ipv4.ip_nonlocal_bind set answers yes for any address; the wait is bounded.
pub fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> HighAvailabilityMemberSpec {
        config::parse(
            "nodeName: n1\nvip: 198.51.100.10/24\nvrid: 51\ninterface: eth0\npriority: 200\n\
             vrrp: {peers: [198.51.100.12, 198.51.100.13]}\n\
             proxy: {listen: '198.51.100.10:8443', backends: ['198.51.100.11:6443', '198.51.100.12:6443'],\n\
             healthCheck: {insecureSkipVerify: true}}\n",
        )
        .unwrap()
    }

    #[test]
    fn parts_parse_and_print_back() {
        assert_eq!(Parts::parse("vip,proxy"), Ok(Parts::ALL));
        assert_eq!(Parts::parse("proxy , vip"), Ok(Parts::ALL));
        let proxy = Parts::parse("proxy").unwrap();
        assert_eq!(proxy, Parts { vip: false, proxy: true });
        assert_eq!(proxy.to_string(), "proxy");
        assert_eq!(Parts::parse("vip").unwrap().to_string(), "vip");
        let e = Parts::parse("vrrp").unwrap_err();
        assert!(e.contains("'vrrp'") && e.contains("vip,proxy"), "{e}");
    }

    #[test]
    fn only_addresses_of_this_host_are_local() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(!is_local("203.0.113.254".parse().unwrap()), "an address no test world uses");
    }

    #[test]
    fn timers_priority_health_and_peers_change_in_place() {
        let old = spec();
        let mut new = old.clone();
        new.priority = 150;
        new.vrrp.advert_interval = kubeha_crds::Interval::from_millis(1000);
        new.vrrp.peers = vec!["198.51.100.12".into()];
        new.vrrp.members = vec!["198.51.100.11".into(), "198.51.100.12".into()];
        new.vrrp.strangers = kubeha_crds::StrangerPolicy::Elect;
        let p = plan(&old, &new);
        assert!(!p.restart_vrrp && !p.restart_proxy && !p.backends);
        assert_eq!(p.commands.len(), 4, "{:?}", p.commands);
        assert!(matches!(p.commands[0], Command::Tune(t) if t.advert_interval_cs == 100));
        assert_eq!(p.commands[1], Command::Priority(150));
        assert_eq!(p.commands[2], Command::Peers(vec!["198.51.100.12".parse().unwrap()]));
        let members = vec!["198.51.100.11".parse().unwrap(), "198.51.100.12".parse().unwrap()];
        assert_eq!(p.commands[3], Command::Strangers { members, elect: true });
        assert!(plan(&old, &old).is_empty());
    }

    #[test]
    fn a_different_virtual_router_restarts_vrrp_only() {
        let old = spec();
        for change in [
            |s: &mut HighAvailabilityMemberSpec| s.vrid = Some(52),
            |s: &mut HighAvailabilityMemberSpec| s.vip = Some("198.51.100.9/24".into()),
            |s: &mut HighAvailabilityMemberSpec| s.interface = Some("eth1".into()),
            |s: &mut HighAvailabilityMemberSpec| s.vrrp.version = 2,
            |s: &mut HighAvailabilityMemberSpec| s.vrrp.peers.clear(),
            |s: &mut HighAvailabilityMemberSpec| s.election.mode = kubeha_crds::ElectionMode::Lease,
        ] {
            let mut new = old.clone();
            change(&mut new);
            let p = plan(&old, &new);
            assert!(p.restart_vrrp && p.commands.is_empty() && !p.restart_proxy, "{p:?}");
        }
    }

    #[test]
    fn backends_change_in_place_and_the_listener_restarts_the_proxy() {
        let old = spec();
        let mut new = old.clone();
        new.proxy.as_mut().unwrap().backends.push("198.51.100.13:6443".into());
        assert_eq!(plan(&old, &new), Plan { backends: true, ..Plan::default() });
        new.proxy.as_mut().unwrap().listen = "198.51.100.10:9443".into();
        assert_eq!(plan(&old, &new), Plan { restart_proxy: true, ..Plan::default() });
        new.proxy = None;
        assert_eq!(plan(&old, &new), Plan { restart_proxy: true, ..Plan::default() });
    }
}
