//! One virtual router (RFC 9568 §6): the Initialize / Backup / Master state machine, plus Fault for a
//! member whose health says it must not hold the VIP.
//!
//! The driver calls [`Router::handle`] with the time (a monotonic [`Duration`] since any origin it likes)
//! and an [`Input`]; the router appends [`Action`]s for the driver to carry out and tells, through
//! [`Router::deadline`], when it must be called again with [`Input::Timer`]. It never reads a clock.
//!
//! Where kubeha goes beyond the RFC, it says so: Fault, the preempt delay (as keepalived has it), effective
//! priority changes advertised at once, and what happens when a partition heals and two masters meet: the
//! loser releases the VIP with a priority-0 advert as it steps down, and the winner re-announces the VIP at
//! once. (RFC 9568 has the loser go quiet, and clients keep sending to its MAC until their ARP entries
//! expire — keepalived black-holes the VIP for up to 42 s that way by default.)
//!
//! The VIP is never on two routers when a master leaves while alive: a master removes the addresses before
//! its priority-0 advert goes out (shutdown, fault, a better master), and a router that preempts a live
//! master advertises first and adds the addresses only when that master's release arrives, or after
//! [`CLAIM_WAIT_MAX`] at most (a peer that steps down silently, as keepalived does). The RFC has the
//! preempting router add them at once, so both hold them until the old master has heard it. A backup that
//! follows a live master ignores a release from another router (the old master of a preemption it has
//! already seen): the RFC would have it take over after its Skew_Time, from under the new master.

use alloc::vec::Vec;
use core::net::IpAddr;
use core::time::Duration;

use crate::wire::{Advertisement, Version};

/// Configuration of one virtual router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// VRRPv3 (RFC 9568) or VRRPv2 (RFC 3768).
    pub version: Version,
    /// Virtual router id.
    pub vrid: u8,
    /// The configured priority, 1–255 (255: this router owns the addresses).
    pub priority: u8,
    /// The virtual addresses.
    pub addresses: Vec<IpAddr>,
    /// Advertisement_Interval in centiseconds (v2: a multiple of 100).
    pub advert_interval_cs: u16,
    /// Preempt_Mode: take over from a lower-priority master.
    pub preempt: bool,
    /// Do not preempt until this long after start-up (keepalived's preempt_delay; not in the RFC).
    pub preempt_delay: Duration,
    /// This router's primary address on the link: the tie-breaker between equal priorities.
    pub primary: IpAddr,
    /// Gratuitous ARP / unsolicited NA when becoming master.
    pub announce: Announce,
}

/// When to announce the VIP's MAC address after taking it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    /// Announcements per burst (0: none).
    pub repeat: u8,
    /// Delay before a second burst (zero: no second burst).
    pub second_burst: Duration,
    /// Re-announce this often while master (zero: never).
    pub refresh: Duration,
}

/// The protocol state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not (yet) taking part.
    Initialize,
    /// Listening to a master, ready to take over.
    Backup,
    /// Holding the addresses and advertising.
    Master,
    /// Not allowed to hold the addresses (a health check with weight 0 fails, the link is down).
    Fault,
}

/// How long a preempting master waits at most for the old master's release before adding the addresses:
/// the old master needs one packet's way and an address removal (milliseconds); a peer that never sends a
/// release costs this much VIP-less time per preemption. Capped by the advert interval, whichever is less.
pub const CLAIM_WAIT_MAX: Duration = Duration::from_millis(100);

/// What a backup heard of the master since its down timer was last armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Heard {
    /// Nothing but adverts it accepted: when the timer fires, the master went silent.
    Nothing,
    /// The master sent priority 0: the takeover is a hand-over.
    Release,
    /// Only a lower-priority master, ignored so as to preempt it.
    LowerMaster,
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The router started (→ Backup).
    Startup,
    /// It owns the addresses (priority 255) and starts as master (RFC 9568 §6.4.1).
    AddressOwner,
    /// Another process of this node held the addresses as master and handed them over in place.
    HandedOver,
    /// Only advertisements of a lower priority within Master_Down_Interval, with preempt on: this router
    /// takes over from a live master (RFC 9568 §6.4.2 discards them so that the down timer fires).
    Preempted,
    /// No advertisement within Master_Down_Interval (RFC 9568 §6.4.2).
    MasterDown,
    /// The master sent priority 0: it is leaving, and this router's skew made it first (RFC 9568 §6.4.2).
    MasterReleased,
    /// An advertisement with a higher priority, or an equal one from a higher address (RFC 9568 §6.4.3).
    HigherPriority,
    /// The router was shut down.
    Shutdown,
    /// A health check that must pass does not, or the link is down.
    FaultDetected,
    /// The fault is gone.
    FaultCleared,
}

impl State {
    /// The state's name, as metrics and the member status spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "Initialize",
            State::Backup => "Backup",
            State::Master => "Master",
            State::Fault => "Fault",
        }
    }
}

impl Reason {
    /// The reason's name, as metric labels and the member status spell it: fixed here, so that renaming a
    /// variant cannot rename what dashboards and alerts match on.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "Startup",
            Reason::AddressOwner => "AddressOwner",
            Reason::HandedOver => "HandedOver",
            Reason::Preempted => "Preempted",
            Reason::MasterDown => "MasterDown",
            Reason::MasterReleased => "MasterReleased",
            Reason::HigherPriority => "HigherPriority",
            Reason::Shutdown => "Shutdown",
            Reason::FaultDetected => "FaultDetected",
            Reason::FaultCleared => "FaultCleared",
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (the driver encodes it from the configuration).
    Advertise {
        /// The priority to advertise: the effective one, or 0 when leaving.
        priority: u8,
    },
    /// Configure the virtual addresses on the interface.
    AddAddresses,
    /// Remove the virtual addresses from the interface.
    RemoveAddresses,
    /// Send this many gratuitous ARPs / unsolicited neighbour advertisements for the addresses.
    Announce {
        /// How many.
        count: u8,
    },
    /// The state changed (for logs, metrics and status).
    Transition {
        /// Before.
        from: State,
        /// After.
        to: State,
        /// Why.
        reason: Reason,
    },
}

/// An event for the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Start taking part (RFC 9568 §6.4.1 Startup).
    Startup,
    /// Start taking part as the master this node already is: another process on this node ran the same
    /// virtual router, held the addresses and handed them over in place (the bootstrap agent stepping aside
    /// for the DaemonSet agent; or this node's agent, killed and restarted before anyone took over). Not in the RFC; to the other routers it is a master that kept advertising,
    /// as long as the gap is shorter than their Master_Down_Interval. A higher-priority master, if one
    /// appears, wins as usual.
    Resume,
    /// Stop: a master sends priority 0 so that a backup takes over after its Skew_Time.
    Shutdown,
    /// A valid advertisement for this VRID from `from` (the sender's primary address). Own packets must
    /// not be passed in.
    Advertisement {
        /// The IP source of the packet.
        from: IpAddr,
        /// The decoded advertisement.
        advertisement: Advertisement,
    },
    /// The deadline has come (or passed).
    Timer,
    /// Health changed the effective priority (1–255).
    Priority(u8),
    /// A fault began (true) or ended (false).
    Fault(bool),
    /// New timers and behaviour, applied without leaving the current state (the VIP stays where it is).
    /// Changes of version, VRID, addresses or primary address are a different virtual router: the driver
    /// shuts this one down and starts another.
    Tune(Tuning),
}

/// The parts of a [`Config`] that change in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Advertisement_Interval in centiseconds.
    pub advert_interval_cs: u16,
    /// Preempt_Mode.
    pub preempt: bool,
    /// The preempt delay, counted from start-up as before.
    pub preempt_delay: Duration,
    /// Announcements after taking the VIP.
    pub announce: Announce,
}

impl Tuning {
    /// The tunable parts of `cfg`.
    pub fn of(cfg: &Config) -> Self {
        Self {
            advert_interval_cs: cfg.advert_interval_cs,
            preempt: cfg.preempt,
            preempt_delay: cfg.preempt_delay,
            announce: cfg.announce,
        }
    }
}

/// One virtual router.
#[derive(Clone, Debug)]
pub struct Router {
    cfg: Config,
    state: State,
    effective: u8,
    faulted: bool,
    /// Master_Adver_Interval (centiseconds): what the current master advertises, learned in Backup.
    master_interval_cs: u16,
    master_seen: Option<IpAddr>,
    /// What this backup heard of the master since its down timer was last armed: it names the takeover.
    heard: Heard,
    started: Duration,
    down_at: Option<Duration>,
    advert_at: Option<Duration>,
    second_burst_at: Option<Duration>,
    refresh_at: Option<Duration>,
    /// A preempting master waits until then for the old master's release before it adds the addresses.
    claim_until: Option<Duration>,
}

impl Router {
    /// A router in Initialize; nothing happens until [`Input::Startup`].
    pub fn new(cfg: Config) -> Self {
        let effective = cfg.priority;
        let master_interval_cs = cfg.advert_interval_cs;
        Self {
            cfg,
            state: State::Initialize,
            effective,
            faulted: false,
            master_interval_cs,
            master_seen: None,
            heard: Heard::Nothing,
            started: Duration::ZERO,
            down_at: None,
            advert_at: None,
            second_burst_at: None,
            refresh_at: None,
            claim_until: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The priority this router advertises now (configured priority after health).
    pub fn effective_priority(&self) -> u8 {
        self.effective
    }

    /// The primary address of the master this router last heard, if another one.
    pub fn master_seen(&self) -> Option<IpAddr> {
        self.master_seen
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The advertisement this router sends with `priority` (what [`Action::Advertise`] asks for).
    pub fn advertisement(&self, priority: u8) -> Advertisement {
        Advertisement {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            priority,
            interval_cs: self.cfg.advert_interval_cs,
            addresses: self.cfg.addresses.clone(),
        }
    }

    /// When [`Input::Timer`] is due next, if any timer runs.
    pub fn deadline(&self) -> Option<Duration> {
        [self.down_at, self.advert_at, self.second_burst_at, self.refresh_at, self.claim_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// A master that preempted a live one and waits for its release: it advertises but does not hold the
    /// addresses yet.
    pub fn claiming(&self) -> bool {
        self.claim_until.is_some()
    }

    /// The configured Advertisement_Interval, as a duration.
    pub fn advert_interval(&self) -> Duration {
        cs(self.cfg.advert_interval_cs)
    }

    /// Skew_Time: (256 − Priority) × Master_Adver_Interval / 256 for v3 (RFC 9568 §6.1); (256 − Priority)
    /// / 256 seconds for v2 (RFC 3768 §6.1).
    pub fn skew_time(&self) -> Duration {
        let weight = u32::from(256 - u16::from(self.effective));
        match self.cfg.version {
            Version::V3 => cs(self.master_interval_cs) * weight / 256,
            Version::V2 => Duration::from_secs(1) * weight / 256,
        }
    }

    /// Master_Down_Interval: 3 × Master_Adver_Interval + Skew_Time (v2: the own Advertisement_Interval).
    pub fn master_down_interval(&self) -> Duration {
        let interval = match self.cfg.version {
            Version::V3 => cs(self.master_interval_cs),
            Version::V2 => self.advert_interval(),
        };
        interval * 3 + self.skew_time()
    }

    /// Handles one input at `now` and appends what to do to `out`.
    pub fn handle(&mut self, now: Duration, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Startup => self.startup(now, false, out),
            Input::Resume => self.startup(now, true, out),
            Input::Shutdown => self.shutdown(out),
            Input::Timer => self.timer(now, out),
            Input::Advertisement { from, advertisement } => self.receive(now, from, &advertisement, out),
            Input::Priority(p) => self.set_priority(now, p, out),
            Input::Fault(f) => self.set_fault(now, f, out),
            Input::Tune(t) => self.tune(now, t, out),
        }
    }

    fn tune(&mut self, now: Duration, t: Tuning, out: &mut Vec<Action>) {
        let interval_changed = t.advert_interval_cs != self.cfg.advert_interval_cs;
        self.cfg.advert_interval_cs = t.advert_interval_cs;
        if self.state != State::Backup {
            // Only a backup times a master by the interval it hears; anywhere else the interval that counts is
            // our own, and Master_Down_Interval (which sizes the VIP's lifetime) must follow it.
            self.master_interval_cs = t.advert_interval_cs;
        }
        self.cfg.preempt = t.preempt;
        self.cfg.preempt_delay = t.preempt_delay;
        self.cfg.announce = t.announce;
        match self.state {
            State::Master => {
                if interval_changed {
                    // The backups learn the new Master_Adver_Interval from the next advert (RFC 9568 §6.4.2):
                    // send it now rather than after the old, possibly much longer, interval.
                    out.push(Action::Advertise { priority: self.effective });
                    self.advert_at = Some(now + self.advert_interval());
                }
                if t.announce.refresh.is_zero() {
                    self.refresh_at = None;
                } else if self.refresh_at.is_none() {
                    self.refresh_at = Some(now + t.announce.refresh);
                }
            }
            // A backup keeps timing the master by the interval the master advertises; only a VRRPv2 backup
            // uses its own (RFC 3768 §6.1), and it restarts its down timer with it.
            State::Backup if self.cfg.version == Version::V2 && interval_changed => {
                self.down_at = Some(now + self.master_down_interval());
            }
            State::Backup | State::Initialize | State::Fault => {}
        }
    }

    /// `resumed`: this node's addresses were handed over in place by another process ([`Input::Resume`]).
    fn startup(&mut self, now: Duration, resumed: bool, out: &mut Vec<Action>) {
        if self.state != State::Initialize {
            return;
        }
        self.started = now;
        if self.faulted {
            self.go(State::Fault, Reason::FaultDetected, out);
        } else if self.effective == 255 {
            // RFC 9568 §6.4.1: the address owner becomes master at once.
            self.become_master(now, Reason::AddressOwner, out);
        } else if resumed {
            self.become_master(now, Reason::HandedOver, out);
        } else {
            self.become_backup(now, Reason::Startup, out);
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Action>) {
        if self.state == State::Master {
            // RFC 9568 §6.4.3: priority 0 tells the backups to take over after their Skew_Time.
            self.release(out);
        }
        self.stop_timers();
        if self.state != State::Initialize {
            self.go(State::Initialize, Reason::Shutdown, out);
        }
    }

    fn timer(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.down_at.is_some_and(|t| now >= t) {
            // RFC 9568 §6.4.2: Master_Down_Timer fired.
            self.down_at = None;
            if self.state == State::Backup {
                let reason = match core::mem::replace(&mut self.heard, Heard::Nothing) {
                    Heard::Release => Reason::MasterReleased,
                    Heard::LowerMaster => Reason::Preempted,
                    Heard::Nothing => Reason::MasterDown,
                };
                self.become_master(now, reason, out);
            }
        }
        if self.state != State::Master {
            return;
        }
        if self.claim_until.is_some_and(|t| now >= t) {
            // No release came: the old master stepped down silently, or is gone.
            self.take_addresses(now, out);
        }
        if self.advert_at.is_some_and(|t| now >= t) {
            out.push(Action::Advertise { priority: self.effective });
            self.advert_at = Some(now + self.advert_interval());
        }
        if self.second_burst_at.is_some_and(|t| now >= t) {
            self.second_burst_at = None;
            out.push(Action::Announce { count: self.cfg.announce.repeat });
        }
        if self.refresh_at.is_some_and(|t| now >= t) {
            out.push(Action::Announce { count: self.cfg.announce.repeat });
            self.refresh_at = Some(now + self.cfg.announce.refresh);
        }
    }

    fn receive(&mut self, now: Duration, from: IpAddr, adv: &Advertisement, out: &mut Vec<Action>) {
        if adv.vrid != self.cfg.vrid || adv.version != self.cfg.version {
            return;
        }
        match self.state {
            State::Backup => {
                if adv.priority == 0 {
                    if self.heard == Heard::Nothing && self.master_seen.is_some_and(|m| m != from) {
                        // Not in the RFC: a router this backup does not follow let the VIP go — the old
                        // master of a preemption whose new master it already heard. The master it follows
                        // is alive and keeps it.
                        return;
                    }
                    // RFC 9568 §6.4.2: the master leaves; the backup with the least skew goes first.
                    self.heard = Heard::Release;
                    self.down_at = Some(now + self.skew_time());
                    return;
                }
                let may_preempt = self.cfg.preempt && now >= self.started + self.cfg.preempt_delay;
                if !may_preempt || adv.priority >= self.effective {
                    // RFC 9568 §6.4.2: accept this master, learn its interval, restart the down timer.
                    self.heard = Heard::Nothing;
                    self.master_seen = Some(from);
                    if self.cfg.version == Version::V3 {
                        self.master_interval_cs = adv.interval_cs;
                    }
                    self.down_at = Some(now + self.master_down_interval());
                } else {
                    // A lower-priority master: discard (its advert does not restart the down timer, which then
                    // takes it over), and remember that the takeover is a preemption, to be claimed. Even after
                    // a release: a lower backup whose skew timer fired first (milliseconds apart at 100 ms
                    // adverts, closer than a busy host's scheduling) holds the VIP now, until it hears us.
                    self.heard = Heard::LowerMaster;
                }
            }
            State::Master => {
                if adv.priority == 0 {
                    // RFC 9568 §6.4.3: another router gave up; reassert at once.
                    out.push(Action::Advertise { priority: self.effective });
                    self.advert_at = Some(now + self.advert_interval());
                    if self.claim_until.is_some() {
                        // The master this router preempted has let the addresses go.
                        self.take_addresses(now, out);
                    } else {
                        // Not in the RFC: it held the VIP (a healed partition); clients that still send to
                        // its MAC come back to ours.
                        out.push(Action::Announce { count: self.cfg.announce.repeat });
                    }
                } else if adv.priority > self.effective || (adv.priority == self.effective && from > self.cfg.primary) {
                    // RFC 9568 §6.4.3: a better master exists.
                    self.master_seen = Some(from);
                    if self.cfg.version == Version::V3 {
                        self.master_interval_cs = adv.interval_cs;
                    }
                    // Not in the RFC: a release (priority 0) after the addresses are gone, so that the
                    // winner adds them if it waits for us (a preemption) and re-announces them if it held
                    // them too (a healed partition). Otherwise it never hears from us again and clients
                    // that still send to our MAC are black-holed.
                    if self.claim_until.is_none() {
                        self.release(out);
                    }
                    self.stop_timers();
                    self.down_at = Some(now + self.master_down_interval());
                    self.go(State::Backup, Reason::HigherPriority, out);
                } else if self.claim_until.is_some() {
                    // The master this router preempts has not heard it yet (the adverts crossed): claim again,
                    // and keep waiting for its release.
                    out.push(Action::Advertise { priority: self.effective });
                } else {
                    // Two masters (a partition healed): the loser will go quiet, but clients may still send to
                    // its MAC. Not in the RFC: advertise and announce at once so that they come back to us.
                    out.push(Action::Advertise { priority: self.effective });
                    out.push(Action::Announce { count: self.cfg.announce.repeat });
                    self.advert_at = Some(now + self.advert_interval());
                }
            }
            State::Initialize | State::Fault => {}
        }
    }

    fn set_priority(&mut self, now: Duration, p: u8, out: &mut Vec<Action>) {
        let p = p.max(1);
        if p == self.effective {
            return;
        }
        self.effective = p;
        if self.state == State::Master {
            // Not in the RFC: tell the backups now, so that one with a higher priority preempts within its
            // Master_Down_Interval instead of after the next advert interval.
            out.push(Action::Advertise { priority: p });
            self.advert_at = Some(now + self.advert_interval());
        }
    }

    fn set_fault(&mut self, now: Duration, fault: bool, out: &mut Vec<Action>) {
        if fault == self.faulted {
            return;
        }
        self.faulted = fault;
        match (fault, self.state) {
            (true, State::Master) => {
                self.release(out);
                self.stop_timers();
                self.go(State::Fault, Reason::FaultDetected, out);
            }
            (true, State::Backup) => {
                self.stop_timers();
                self.go(State::Fault, Reason::FaultDetected, out);
            }
            (false, State::Fault) => self.become_backup(now, Reason::FaultCleared, out),
            _ => {}
        }
    }

    fn become_master(&mut self, now: Duration, reason: Reason, out: &mut Vec<Action>) {
        self.stop_timers();
        self.master_seen = None;
        out.push(Action::Advertise { priority: self.effective });
        self.advert_at = Some(now + self.advert_interval());
        if reason == Reason::Preempted {
            // The old master is alive and holds the addresses until it hears this advert.
            self.claim_until = Some(now + self.advert_interval().min(CLAIM_WAIT_MAX));
        } else {
            self.take_addresses(now, out);
        }
        self.go(State::Master, reason, out);
    }

    /// Lets the addresses go: removed first, then the priority-0 advert, so that whoever takes them on
    /// hearing it never finds them still here. Nothing to remove while claiming.
    fn release(&mut self, out: &mut Vec<Action>) {
        if self.claim_until.is_none() {
            out.push(Action::RemoveAddresses);
        }
        out.push(Action::Advertise { priority: 0 });
    }

    fn take_addresses(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.claim_until = None;
        out.push(Action::AddAddresses);
        let a = self.cfg.announce;
        if a.repeat > 0 {
            out.push(Action::Announce { count: a.repeat });
            if !a.second_burst.is_zero() {
                self.second_burst_at = Some(now + a.second_burst);
            }
            if !a.refresh.is_zero() {
                self.refresh_at = Some(now + a.refresh);
            }
        }
    }

    fn become_backup(&mut self, now: Duration, reason: Reason, out: &mut Vec<Action>) {
        self.stop_timers();
        self.heard = Heard::Nothing;
        self.master_interval_cs = self.cfg.advert_interval_cs;
        self.down_at = Some(now + self.master_down_interval());
        self.go(State::Backup, reason, out);
    }

    fn stop_timers(&mut self) {
        self.down_at = None;
        self.advert_at = None;
        self.second_burst_at = None;
        self.refresh_at = None;
        self.claim_until = None;
    }

    fn go(&mut self, to: State, reason: Reason, out: &mut Vec<Action>) {
        let from = core::mem::replace(&mut self.state, to);
        out.push(Action::Transition { from, to, reason });
    }
}

fn cs(centis: u16) -> Duration {
    Duration::from_millis(u64::from(centis) * 10)
}
