//! The VRRP driver: feeds the sans-IO router with time and packets and carries out its actions on a
//! [`Link`] (the node's socket and interface, or the tests' in-memory segment), with the decisions beside
//! the protocol in `policy.rs`. One task, one timer (the router's deadline), plus the VIP lifetime refresh.

use std::net::IpAddr;
use std::time::Duration;

use kubeha_crds::HighAvailabilityMemberSpec;
use kubeha_vrrp::router::{Action, Announce, Config, Input, Router, State, Tuning};
use kubeha_vrrp::wire::{Advertisement, ChecksumForm, Endpoints, V2Auth, Version, decode_with};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

mod link;
#[cfg(test)]
mod memory;
mod policy;
mod strangers;
#[cfg(test)]
mod tests;

pub(crate) use link::VipHolder;
pub use link::{Link, NetLink};
use policy::{AtStart, Effective, Leftover, Policy};
pub use strangers::Stranger;
use strangers::Strangers;

use crate::config::{self, Vip};
use crate::handover::Slot;
use crate::health::{Checks, Verdict};
use crate::metrics::{Reason, VrrpMetrics};
use crate::socket::{SocketError, VrrpSocket};
use crate::vip::{NetError, REFRESH, VipOnLink};

/// How often a yielding agent looks for a request to step aside.
const HANDOVER_POLL: Duration = Duration::from_millis(20);
/// How often a router kept out by another host's use of the VIP asks again whether it still answers.
const REPROBE: Duration = Duration::from_secs(1);
/// How often strangers that fell silent are forgotten.
const FORGET_TICK: Duration = Duration::from_secs(5);
/// At most this many queued packets are read before a due timer fires.
const DRAIN_BEFORE_TIMER: usize = 64;

/// Why the driver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The process lacks a capability it needs.
    #[error(
        "kubeha-agent needs {0} (and only CAP_NET_ADMIN and CAP_NET_RAW): run it as root, or add them to the \
         container's securityContext.capabilities"
    )]
    Capabilities(String),
    /// Netlink or the interface.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The raw socket.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Something the configuration cannot do.
    #[error("{0}")]
    Config(String),
}

/// A change the driver applies in place, without leaving its state (docs/cluster-mode.md lists which spec
/// changes these cover and which need a new driver).
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// New timers, preempt mode or announcements.
    Tune(Tuning),
    /// A new base priority (1–254).
    Priority(u8),
    /// Quorum fencing: `boost` is added to the priority while this member renews its heartbeat and another
    /// member does not (0: none); `take_over` while the one that does not holds the VIP, which makes this
    /// router preempt it even with preempt off — a master without quorum is not one to defer to.
    Fencing {
        /// Added to the priority.
        boost: u8,
        /// Preempt whatever the configured preempt mode.
        take_over: bool,
    },
    /// A new set of health checks (the link check of the VIP's interface is added as at start).
    Health(Vec<kubeha_crds::HealthCheck>),
    /// New unicast peers.
    Peers(Vec<IpAddr>),
    /// New member sources (spec.vrrp.members; empty: every router is a peer) and whether strangers take part
    /// in the election.
    Strangers {
        /// Every member's advert source.
        members: Vec<IpAddr>,
        /// Whether strangers' adverts take part in the election.
        elect: bool,
    },
}

/// The latest state change, with its wall-clock time for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Before.
    pub from: State,
    /// After.
    pub to: State,
    /// Why (a VRRP reason like MasterDown, or LeaseAcquired / LeaseLost in Lease mode).
    pub reason: String,
    /// When.
    pub at: std::time::SystemTime,
}

/// What the driver observes, published after every change for the status reporter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The VRRP state.
    pub state: State,
    /// Whether the VIP is on this node.
    pub holds_vip: bool,
    /// The configured priority.
    pub base_priority: u8,
    /// The advertised priority.
    pub effective_priority: u8,
    /// The quorum-fencing boost in effect.
    pub boost: u8,
    /// The health checks' verdicts.
    pub verdicts: Vec<Verdict>,
    /// The master this node hears, if another.
    pub master_seen: Option<IpAddr>,
    /// The latest state change.
    pub last_transition: Option<Seen>,
    /// The interface that carries the VIP (configured, or found in the VIP's subnet).
    pub interface: Option<String>,
    /// Why this router does not take the VIP although it would: another host answers for the address.
    pub vip_in_use: Option<String>,
    /// The address this router's adverts come from.
    pub advert_source: Option<IpAddr>,
    /// Routers heard on this VRID lately that are not members (see [`Stranger`]).
    pub strangers: Vec<Stranger>,
}

impl Observed {
    /// Before anything happened: in `state`, without the VIP, at `priority`.
    pub fn starting(state: State, priority: u8) -> Self {
        Self {
            state,
            holds_vip: false,
            base_priority: priority,
            effective_priority: priority,
            boost: 0,
            verdicts: Vec::new(),
            master_seen: None,
            last_transition: None,
            interface: None,
            vip_in_use: None,
            advert_source: None,
            strangers: Vec::new(),
        }
    }
}

/// The other end of a running driver: commands in, observations out.
#[derive(Clone, Debug)]
pub struct Control {
    /// Changes to apply.
    pub commands: mpsc::UnboundedSender<Command>,
    /// What the driver observes.
    pub observed: watch::Receiver<Observed>,
}

/// A running VRRP instance on the link `L`: the node's interface ([`NetLink`]) in the agent, an in-memory
/// segment in the driver's tests.
#[derive(Debug)]
pub struct Driver<L: Link = NetLink> {
    router: Router,
    link: L,
    primary: IpAddr,
    checksum: ChecksumForm,
    metrics: VrrpMetrics,
    origin: Instant,
    holds_vip: bool,
    checks: Checks,
    policy: Policy,
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    /// Routers on this VRID that are not members.
    strangers: Strangers,
    observed: watch::Sender<Observed>,
    last_transition: Option<Seen>,
    faulted: bool,
    /// This node's right to run the instance (see [`crate::handover`]).
    slot: Option<Slot>,
    /// The VIP was on the interface when the driver was set up, and not as this node's own address.
    present: bool,
    /// That VIP is kept and the driver starts as master: no other master was heard (see [`Driver::take`]).
    resume_leftover: bool,
    /// A member held the VIP since start: another router was heard advertising as master, or this one held
    /// it. Until then, the VIP is added only after no other host answers for it (crate::dad, docs/adr/0010).
    member_held: bool,
    /// Another host answered for the VIP: this router stays in Fault until it no longer does.
    in_use: Option<crate::dad::Answer>,
    /// When to ask again whether another host answers for the VIP (while `in_use`): [`REPROBE`] after the
    /// last answer, not at once.
    reprobe_at: Instant,
}

/// How [`Driver::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shut down: the VIP was handed over to another node by a priority-0 advertisement and removed.
    Stopped,
    /// Stepped aside for another agent of this node, which runs the instance now; the VIP stayed.
    HandedOver,
}

impl Driver<NetLink> {
    /// Sets up the interface, socket, health checks and router for `spec`. Nothing changes on the node until
    /// [`Driver::take`]: another agent of this node may still run the instance.
    pub async fn new(spec: &HighAvailabilityMemberSpec, metrics: VrrpMetrics) -> Result<Self, DriverError> {
        check_capabilities()?;
        let vip = config::vip(spec).ok_or_else(|| DriverError::Config("vip is required for VRRP".into()))?;
        let interface = spec.interface.as_deref().ok_or_else(|| DriverError::Config("interface is required".into()))?;
        let Vip { address, .. } = vip;
        let link = VipOnLink::open(interface, vip).await?;
        // Priority 255 belongs to the owner of the address (RFC 9568 §1.6): the VIP is one of this node's own
        // addresses, configured outside kubeha; it is sent from and never added, refreshed or removed.
        let owner = spec.priority == 255;
        let present = link.present().await?;
        if owner && !present {
            return Err(DriverError::Config(format!(
                "priority 255 is for the owner of the address, but {address} is not configured on {interface}: \
                 use a priority of 1 to 254"
            )));
        }
        // Before anything is sent or added: a VIP that is this node's own address, or off the interface's
        // subnets, hurts someone the moment it is taken.
        crate::vipcheck::check(address, interface, owner, &link.on_link().await?).map_err(DriverError::Config)?;
        let primary = if owner {
            address
        } else {
            // Right after a link comes up its IPv6 link-local address is tentative for about a second.
            let mut found = None;
            for _ in 0..50 {
                found = link.primary().await?;
                if found.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            found.ok_or_else(|| {
                DriverError::Config(format!(
                    "interface {interface} has no usable primary {} address to send VRRP from (waited 5 s)",
                    if address.is_ipv4() { "IPv4" } else { "link-local IPv6" }
                ))
            })?
        };

        let peers: Vec<IpAddr> = spec.vrrp.peers.iter().filter_map(|p| p.parse().ok()).collect();
        let socket = match primary {
            IpAddr::V4(p4) => VrrpSocket::open_v4(interface, link.ifindex(), p4, &peers)?,
            IpAddr::V6(_) => VrrpSocket::open_v6(interface, link.ifindex(), &peers)?,
        };
        let vip = VipHolder::new(link, interface, address, metrics.clone()).await?;
        let link = NetLink { socket, vip, interface: interface.to_string() };
        let cfg = router_config(spec, address, primary)?;
        let mut driver = Driver::with_link(link, cfg, &spec.health, present && !owner, metrics);
        driver.strangers = Strangers::new(
            spec.vrrp.members.iter().filter_map(|a| a.parse().ok()).collect(),
            spec.vrrp.strangers == kubeha_crds::StrangerPolicy::Elect,
        );
        Ok(driver)
    }
}

impl<L: Link> Driver<L> {
    /// A driver of the router `cfg` on `link`, with `health` checks; `present` when the VIP is on the link
    /// already (and is not this node's own address).
    pub(crate) fn with_link(
        mut link: L,
        cfg: Config,
        health: &[kubeha_crds::HealthCheck],
        present: bool,
        metrics: VrrpMetrics,
    ) -> Self {
        let router = Router::new(cfg.clone());
        link.set_lifetime(crate::vip::lifetime_for(router.master_down_interval()));
        let checks = link.checks(health);
        metrics.effective_priority.set(i64::from(cfg.priority));
        metrics.set_state("Initialize");
        let (observed, _) = watch::channel(Observed::starting(State::Initialize, cfg.priority));
        Self {
            checks,
            router,
            link,
            primary: cfg.primary,
            // keepalived (Debian 12) checks IPv4 VRRPv3 adverts with the RFC 5798 pseudo-header by default.
            checksum: ChecksumForm::PseudoHeader,
            metrics,
            origin: Instant::now(),
            holds_vip: false,
            policy: Policy::new(cfg.priority, Tuning::of(&cfg)),
            commands: None,
            strangers: Strangers::default(),
            observed,
            last_transition: None,
            faulted: false,
            slot: None,
            present,
            resume_leftover: false,
            member_held: false,
            in_use: None,
            reprobe_at: Instant::now(),
        }
    }

    /// Waits (at most 5 s) for the first verdict of every health check, so that the router starts from
    /// what is known rather than a guess. Before [`Driver::take`], so that a hand-over waits for nothing.
    pub async fn prepare(&mut self) {
        let first = async {
            for rx in &mut self.checks.verdicts {
                let _ = rx.wait_for(|v| v.healthy.is_some()).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), first).await.is_err() {
            tracing::warn!("not every health check answered within 5 s; starting with what is known");
        }
    }

    /// Takes the node's side of the instance: keeps `slot` while running, and deals with a VIP left over
    /// from an earlier run, unless the slot says another agent of this node just handed it over as master.
    /// Such a VIP is this node's agent's, killed moments ago (the kubelet restarts a container in well under
    /// a second): when no other master is heard for 1.5 advert intervals, nobody has taken over yet, and
    /// the driver resumes as master with the VIP in place instead of removing it and leaving it nowhere
    /// until the backups' down timers fire (2.3 s at 1 s adverts, measured). When another master is heard,
    /// the VIP is removed: this node starts as a backup and preempts by the usual rules.
    pub async fn take(&mut self, slot: Option<Slot>) -> Result<(), DriverError> {
        let resumed = slot.as_ref().is_some_and(|s| s.resume_master);
        self.slot = slot;
        if let AtStart::Listen(listen) = self.policy.at_start(self.present, resumed, self.router.advert_interval()) {
            match Policy::leftover(self.another_master(listen).await) {
                Leftover::Remove(master) => {
                    tracing::warn!(%master, "removing a VIP left over from an earlier run: another master holds it now");
                    self.link.remove_vip().await;
                }
                Leftover::Resume => {
                    tracing::warn!(listened = ?listen,
                        "a VIP left over from an earlier run and no other master heard: resuming as master");
                    self.resume_leftover = true;
                }
            }
        }
        self.present = false;
        Ok(())
    }

    /// The first other router heard advertising this VRID as master within `listen`, if any.
    async fn another_master(&mut self, listen: Duration) -> Option<IpAddr> {
        let deadline = Instant::now() + listen;
        loop {
            let p = match tokio::time::timeout_at(deadline, self.link.recv()).await {
                Err(_) => return None,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "receiving VRRP failed");
                    continue;
                }
                Ok(Ok(p)) => p,
            };
            if let Some((from, adv)) = self.advert_of(&p)
                && adv.priority > 0
            {
                return Some(from);
            }
        }
    }

    /// Opens the command channel and the observation feed. Call before [`Driver::run`]; a driver without a
    /// control runs as configured at start (standalone mode).
    pub fn control(&mut self) -> Control {
        let (tx, rx) = mpsc::unbounded_channel();
        self.commands = Some(rx);
        Control { commands: tx, observed: self.observed.subscribe() }
    }

    fn publish(&self) {
        self.metrics.vip_in_use.set(i64::from(self.in_use.is_some()));
        let next = Observed {
            state: self.router.state(),
            holds_vip: self.holds_vip,
            base_priority: self.policy.base(),
            effective_priority: self.router.effective_priority(),
            boost: self.policy.boost(),
            verdicts: self.checks.verdicts.iter().map(|rx| rx.borrow().clone()).collect(),
            master_seen: self.router.master_seen(),
            last_transition: self.last_transition.clone(),
            interface: self.link.interface(),
            vip_in_use: self.in_use.map(|who| {
                let vip = self.router.config().addresses.first().map(ToString::to_string).unwrap_or_default();
                format!(
                    "vip {vip} is in use by another host on this link (MAC {who}, it answers for the address): not \
                     taking it; set vip to an unused address, or remove it from that host"
                )
            }),
            advert_source: Some(self.primary),
            strangers: self.strangers.reported(),
        };
        self.observed.send_if_modified(|o| {
            let changed = *o != next;
            *o = next;
            changed
        });
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Tune(t) => {
                tracing::info!(advert_interval_cs = t.advert_interval_cs, preempt = t.preempt, "VRRP timers changed");
                self.policy.set_tuning(t);
                self.input(Input::Tune(self.policy.tuning())).await;
                // The next refresh carries the new lifetime.
                self.link.set_lifetime(crate::vip::lifetime_for(self.router.master_down_interval()));
            }
            Command::Priority(p) => {
                let from = self.policy.base();
                if self.policy.set_base(p) {
                    tracing::info!(from, to = p, "base priority changed");
                    self.apply_health().await;
                } else if self.policy.owner() {
                    tracing::warn!("the address owner keeps priority 255");
                }
            }
            Command::Fencing { boost, take_over } => {
                let (boosted, took_over) = self.policy.set_fencing(boost, take_over);
                if boosted {
                    tracing::info!(boost, "quorum-fencing boost changed");
                    self.apply_health().await;
                }
                if took_over {
                    tracing::info!(take_over, "the VIP holder cannot renew its heartbeat: preempting it");
                    self.input(Input::Tune(self.policy.tuning())).await;
                }
            }
            Command::Health(checks) => {
                tracing::info!(checks = checks.len(), "health checks replaced");
                self.checks = self.link.checks(&checks);
                self.apply_health().await;
            }
            Command::Peers(peers) => {
                tracing::info!(peers = ?peers, "unicast peers changed");
                self.link.set_peers(&peers);
            }
            Command::Strangers { members, elect } => {
                tracing::info!(members = ?members, elect, "the members' advert sources changed");
                self.strangers.set(members, elect);
            }
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Runs until `shutdown` resolves, then hands over (priority-0 advert) and removes the VIP; or until an
    /// agent of this node asks for the instance, when it yields one (see [`crate::handover`]).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Ended {
        let mut shutdown = std::pin::pin!(shutdown);
        self.apply_health().await;
        let resume = self.slot.as_ref().is_some_and(|s| s.resume_master) || self.resume_leftover;
        // A VIP this node's agent held a moment ago is a member's.
        self.member_held |= resume;
        self.input(if resume { Input::Resume } else { Input::Startup }).await;
        self.publish();
        let mut commands = self.commands.take();
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asked = tokio::time::interval(HANDOVER_POLL);
        asked.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut forget = tokio::time::interval(FORGET_TICK);
        forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline =
                self.router.deadline().map_or_else(|| Instant::now() + Duration::from_secs(3600), |d| self.origin + d);
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep_until(deadline) => self.timer().await,
                packet = self.link.recv() => match packet {
                    Ok(p) => self.packet(p).await,
                    Err(e) => tracing::warn!(error = %e, "receiving VRRP failed"),
                },
                () = changed(&mut self.checks.verdicts) => self.apply_health().await,
                Some(c) = next_command(&mut commands) => self.command(c).await,
                _ = refresh.tick(), if self.holds_vip && !self.policy.owner() => drop(self.link.add_vip().await),
                _ = asked.tick(), if self.slot.as_ref().is_some_and(Slot::requested) => return self.step_aside().await,
                () = tokio::time::sleep_until(self.reprobe_at), if self.in_use.is_some() => self.reprobe().await,
                _ = forget.tick() => drop(self.strangers.forget(Instant::now())),
            }
            // Once per turn, whatever happened: the status reporter sees only real changes (compared here).
            self.publish();
        }
        tracing::info!("shutting down: handing the VIP over");
        self.input(Input::Shutdown).await;
        self.publish();
        if !self.policy.owner() {
            self.link.remove_vip().await;
        }
        Ended::Stopped
    }

    /// The router's timer is due. The packets queued meanwhile go first: they arrived before now, and a
    /// driver that was not scheduled for a while (a busy node) would otherwise act on its timer before
    /// reading the adverts that came in time — a backup declared its master down, took the VIP beside it and
    /// read the master's queued advert 12–50 ms later (a chaos run: six times in 13 s while every API server
    /// restarted). The timer fires only if it is still due after them; at most [`DRAIN_BEFORE_TIMER`]
    /// packets, so that a flood cannot hold a master's adverts back.
    async fn timer(&mut self) {
        for _ in 0..DRAIN_BEFORE_TIMER {
            match self.link.try_recv() {
                Ok(Some(p)) => self.packet(p).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "receiving VRRP failed");
                    break;
                }
            }
        }
        if self.router.deadline().is_some_and(|d| self.origin + d <= Instant::now()) {
            self.input(Input::Timer).await;
        }
    }

    /// Leaves the instance to the agent of this node that asked for it: a master advertises once more (the
    /// other nodes' down timers restart, the taker needs milliseconds) and keeps the VIP on the interface.
    async fn step_aside(mut self) -> Ended {
        let master = self.router.state() == State::Master && !self.router.claiming();
        if master {
            self.act(Action::Advertise { priority: self.router.effective_priority() }).await;
        }
        tracing::info!(master, "stepping aside for the cluster-mode agent of this node; the VIP stays");
        if let Some(slot) = self.slot.take() {
            slot.hand_off(master);
        }
        Ended::HandedOver
    }

    /// Feeds the router the priority and fault state the current verdicts give.
    async fn apply_health(&mut self) {
        let verdicts: Vec<Verdict> = self.checks.verdicts.iter_mut().map(|rx| rx.borrow_and_update().clone()).collect();
        let Effective { priority, fault } = self.policy.effective(&verdicts);
        let fault = fault || self.in_use.is_some();
        if fault != self.faulted {
            self.faulted = fault;
            let failing: Vec<&str> = verdicts
                .iter()
                .filter(|v| v.healthy == Some(false) && v.weight == 0)
                .map(|v| v.name.as_str())
                .collect();
            tracing::warn!(fault, checks = ?failing, "fault state changed by health checks");
            self.input(Input::Fault(fault)).await;
        }
        if priority != self.router.effective_priority() {
            tracing::info!(priority, base = self.policy.base(), "effective priority changed by health checks");
            self.metrics.effective_priority.set(i64::from(priority));
            self.input(Input::Priority(priority)).await;
        }
    }

    async fn packet(&mut self, p: crate::socket::Incoming) {
        if let Some((from, advertisement)) = self.advert_of(&p) {
            let (announced, priority) = (&advertisement.addresses, advertisement.priority);
            let ours = &self.router.config().addresses;
            if !self.strangers.hear(from, announced, priority, ours, Instant::now(), &self.metrics) {
                // A stranger left out of the election: it neither holds the VIP for a member nor ends a keep-out.
                return;
            }
            // Only a master advertises, and its release (priority 0) is its last advert as master: either way a
            // member has held the VIP, and the host that answered a probe was that member taking it at the same
            // moment (a cold start's close election), not a stranger. A release must end a keep-out too: a
            // router kept out while the winner's first advert was still on its way hears the release next.
            self.member_held = true;
            if self.in_use.is_some() {
                tracing::info!(%from, released = advertisement.priority == 0,
                    "the host that answered for the VIP is a VRRP master: a member holds it");
                self.in_use_ended().await;
            }
            self.input(Input::Advertisement { from, advertisement }).await;
        }
    }

    /// The advertisement for this VRID in `p`, counted; anything else counted as dropped, by reason.
    fn advert_of(&self, p: &crate::socket::Incoming) -> Option<(IpAddr, Advertisement)> {
        if p.src == self.primary {
            self.metrics.dropped("own");
            return None;
        }
        // While strangers are elected (a migration), keepalived's `auth_type PASS` adverts must be heard: kubeha
        // never sends one, so only a stranger does (docs/adr/0013).
        let auth = if self.strangers.elect() { V2Auth::IgnoreSimplePassword } else { V2Auth::None };
        match decode_with(&p.message, p.ttl, &Endpoints { src: p.src, dst: p.dst }, auth) {
            Ok(r) if r.advertisement.vrid != self.router.config().vrid => {
                self.metrics.dropped("other_vrid");
                None
            }
            Ok(r) => {
                self.metrics.adverts_received.inc();
                Some((p.src, r.advertisement))
            }
            Err(e) => {
                self.metrics.dropped(e.reason());
                tracing::debug!(from = %p.src, error = %e, "invalid VRRP packet dropped");
                None
            }
        }
    }

    async fn input(&mut self, input: Input) {
        let mut actions = Vec::new();
        let now = self.now();
        self.router.handle(now, input, &mut actions);
        if !self.member_held && !self.policy.owner() && actions.contains(&Action::AddAddresses) {
            // Before the first advert of this takeover goes out: a router kept out never claims the VIP, so the
            // backups do not count it as a member that held it.
            if let Some(who) = self.link.who_has_vip().await {
                return self.kept_out(now, who, actions).await;
            }
        }
        for a in actions {
            self.act(a).await;
        }
    }

    /// Another host answers for the VIP: nothing of this takeover is sent or added; the router goes to Fault
    /// (reported) and the driver asks again every [`REPROBE`].
    async fn kept_out(&mut self, now: Duration, who: crate::dad::Answer, actions: Vec<Action>) {
        tracing::warn!(mac = %who, vip = ?self.router.config().addresses,
            "another host answers for the VIP: not taking it (set vip to an unused address, or remove it from that host)");
        self.in_use = Some(who);
        self.reprobe_at = Instant::now() + REPROBE;
        self.faulted = true;
        let mut more = Vec::new();
        self.router.handle(now, Input::Fault(true), &mut more);
        for a in actions.into_iter().chain(more).filter(|a| matches!(a, Action::Transition { .. })) {
            self.act(a).await;
        }
    }

    /// Asks again whether another host answers for the VIP; when none does, the router leaves Fault (unless
    /// its health keeps it there) and takes the VIP by the usual rules, probing once more first.
    async fn reprobe(&mut self) {
        match self.link.who_has_vip().await {
            Some(who) => {
                self.in_use = Some(who);
                self.reprobe_at = Instant::now() + REPROBE;
            }
            None => {
                tracing::info!("no other host answers for the VIP any more");
                self.in_use_ended().await;
            }
        }
    }

    /// The keep-out ends: the router leaves Fault unless its health keeps it there.
    async fn in_use_ended(&mut self) {
        self.in_use = None;
        self.apply_health().await;
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Advertise { priority } => {
                let adv = self.router.advertisement(priority);
                // One encoding per destination: the pseudo-header checksum covers the destination.
                for dst in self.link.destinations() {
                    match adv.encode(&Endpoints { src: self.primary, dst }, self.checksum) {
                        Ok(bytes) => match self.link.send_to(&bytes, dst).await {
                            Ok(()) => drop(self.metrics.adverts_sent.inc()),
                            Err(e) => {
                                tracing::warn!(to = %dst, error = %e, "sending an advert failed")
                            }
                        },
                        Err(e) => tracing::error!(error = %e, "cannot encode an advert"),
                    }
                }
            }
            Action::AddAddresses if self.policy.owner() => self.holds_vip = true,
            Action::RemoveAddresses if self.policy.owner() => self.holds_vip = false,
            Action::AddAddresses => {
                self.holds_vip |= self.link.add_vip().await;
                self.member_held |= self.holds_vip;
            }
            Action::RemoveAddresses => {
                self.holds_vip = false;
                self.link.remove_vip().await;
            }
            Action::Announce { count } => self.link.announce(count),
            Action::Transition { from, to, reason } => {
                self.last_transition =
                    Some(Seen { from, to, reason: reason.as_str().to_string(), at: std::time::SystemTime::now() });
                self.metrics.set_state(to.as_str());
                self.metrics.transitions.get_or_create(&Reason { reason: reason.as_str().to_string() }).inc();
                self.metrics.effective_priority.set(i64::from(self.router.effective_priority()));
                tracing::info!(from = from.as_str(), to = to.as_str(), reason = %reason.as_str(), master_seen = ?self.router.master_seen(), "VRRP state changed");
            }
        }
    }
}

/// The next command, or never when there is no control.
async fn next_command(commands: &mut Option<mpsc::UnboundedReceiver<Command>>) -> Option<Command> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The router configuration a spec gives, for `address` sent from `primary`.
pub fn router_config(
    spec: &HighAvailabilityMemberSpec,
    address: IpAddr,
    primary: IpAddr,
) -> Result<Config, DriverError> {
    Ok(Config {
        version: if spec.vrrp.version == 2 { Version::V2 } else { Version::V3 },
        vrid: u8::try_from(spec.vrid.unwrap_or(0)).map_err(|_| DriverError::Config("vrid out of range".into()))?,
        priority: u8::try_from(spec.priority).map_err(|_| DriverError::Config("priority out of range".into()))?,
        addresses: vec![address],
        advert_interval_cs: u16::try_from(spec.vrrp.advert_interval.as_millis() / 10).unwrap_or(u16::MAX),
        preempt: spec.vrrp.preempt,
        preempt_delay: spec.vrrp.preempt_delay.into(),
        primary,
        announce: Announce {
            repeat: u8::try_from(spec.garp.repeat).unwrap_or(5),
            second_burst: spec.garp.delay.into(),
            refresh: spec.garp.refresh_interval.into(),
        },
    })
}

/// Resolves when any check's verdict changes; never when there are no checks.
async fn changed(checks: &mut [tokio::sync::watch::Receiver<Verdict>]) {
    if checks.is_empty() {
        return std::future::pending().await;
    }
    let waits = checks.iter_mut().map(|rx| Box::pin(rx.changed()));
    let (result, _, _) = futures::future::select_all(waits).await;
    if result.is_err() {
        // A check task ended (it never does on its own): do not spin on it.
        std::future::pending::<()>().await;
    }
}

/// CAP_NET_ADMIN (12) manages the VIP through netlink; CAP_NET_RAW (13) opens the VRRP and ARP sockets.
/// Checked up front, so that a missing one stops the agent at start with its name, not at its first takeover.
fn check_capabilities() -> Result<(), DriverError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = [(12, "CAP_NET_ADMIN"), (13, "CAP_NET_RAW")]
        .into_iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(DriverError::Capabilities(missing.join(" and "))) }
}
