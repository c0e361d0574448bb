//! Several routers on one simulated segment in virtual time, with loss, delay, partitions, crashes and
//! priority changes: golden transcripts of the scenarios people reason about, and the convergence property.
//! Regenerate the golden files with `KUBEHA_UPDATE_GOLDEN=1 cargo test -p kubeha-vrrp --test segment`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use kubeha_vrrp::router::{Action, Announce, Config, Input, Router, State};
use kubeha_vrrp::wire::{Advertisement, Version};
use proptest::prelude::*;

struct Node {
    router: Router,
    name: String,
    addr: IpAddr,
    alive: bool,
    linked: bool,
    holds_vip: bool,
}

struct Segment {
    nodes: Vec<Node>,
    now: Duration,
    /// (delivery time, sequence) → (to, from, advertisement)
    queue: BTreeMap<(Duration, u64), (usize, usize, Advertisement)>,
    seq: u64,
    rng: u64,
    loss_permille: u64,
    delay: Duration,
    log: String,
    /// Every time a router added the VIP while another live one held it: (time, adder, holder).
    overlaps: Vec<(Duration, String, String)>,
}

fn config(priority: u8, addr: IpAddr, interval_cs: u16) -> Config {
    Config {
        version: Version::V3,
        vrid: 51,
        priority,
        addresses: vec!["198.51.100.10".parse().unwrap()],
        advert_interval_cs: interval_cs,
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary: addr,
        announce: Announce { repeat: 5, second_burst: Duration::from_secs(5), refresh: Duration::ZERO },
    }
}

impl Segment {
    fn new(priorities: &[u8], interval_cs: u16, seed: u64) -> Self {
        let nodes = priorities
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let addr: IpAddr = format!("198.51.100.{}", 11 + i).parse().unwrap();
                Node {
                    router: Router::new(config(*p, addr, interval_cs)),
                    name: format!("n{}", i + 1),
                    addr,
                    alive: true,
                    linked: true,
                    holds_vip: false,
                }
            })
            .collect();
        Self {
            nodes,
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            rng: seed | 1,
            loss_permille: 0,
            delay: Duration::from_millis(1),
            log: String::new(),
            overlaps: Vec::new(),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64: deterministic per seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn input(&mut self, i: usize, input: Input) {
        if !self.nodes[i].alive {
            return;
        }
        let mut out = Vec::new();
        self.nodes[i].router.handle(self.now, input, &mut out);
        for action in out {
            self.act(i, action);
        }
    }

    fn act(&mut self, i: usize, action: Action) {
        let t = self.now.as_secs_f64();
        let name = self.nodes[i].name.clone();
        match action {
            Action::Advertise { priority } => {
                if !self.nodes[i].linked {
                    return;
                }
                let adv = self.nodes[i].router.advertisement(priority);
                for j in 0..self.nodes.len() {
                    if j == i || !self.nodes[j].linked || self.random() % 1000 < self.loss_permille {
                        continue;
                    }
                    self.seq += 1;
                    self.queue.insert((self.now + self.delay, self.seq), (j, i, adv.clone()));
                }
            }
            Action::AddAddresses => {
                for other in self.nodes.iter().filter(|n| n.alive && n.holds_vip && n.name != name) {
                    self.overlaps.push((self.now, name.clone(), other.name.clone()));
                }
                self.nodes[i].holds_vip = true;
                let _ = writeln!(self.log, "{t:8.3}s {name} adds the VIP");
            }
            Action::RemoveAddresses => {
                self.nodes[i].holds_vip = false;
                let _ = writeln!(self.log, "{t:8.3}s {name} removes the VIP");
            }
            Action::Announce { count } => {
                let _ = writeln!(self.log, "{t:8.3}s {name} announces x{count}");
            }
            Action::Transition { from, to, reason } => {
                let _ = writeln!(self.log, "{t:8.3}s {name} {from:?} -> {to:?} ({reason:?})");
            }
        }
    }

    /// Runs every delivery and timer up to `until`.
    fn run_until(&mut self, until: Duration) {
        loop {
            let next_packet = self.queue.first_key_value().map(|((t, _), _)| *t);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.alive)
                .filter_map(|(i, n)| n.router.deadline().map(|d| (d, i)))
                .min();
            let next = match (next_packet, next_timer) {
                (Some(p), Some((t, _))) => p.min(t),
                (Some(p), None) => p,
                (None, Some((t, _))) => t,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if next_packet == Some(next) {
                let (_, (to, from, adv)) = self.queue.pop_first().unwrap();
                let sender = self.nodes[from].addr;
                if self.nodes[to].linked {
                    self.input(to, Input::Advertisement { from: sender, advertisement: adv });
                }
            } else if let Some((_, i)) = next_timer {
                self.input(i, Input::Timer);
            }
        }
        self.now = self.now.max(until);
    }

    fn at(&mut self, secs: f64) -> &mut Self {
        self.run_until(Duration::from_secs_f64(secs));
        self
    }

    fn start(&mut self, i: usize) -> &mut Self {
        self.nodes[i].alive = true;
        self.input(i, Input::Startup);
        self
    }

    fn crash(&mut self, i: usize) -> &mut Self {
        let t = self.now.as_secs_f64();
        let _ = writeln!(self.log, "{t:8.3}s {} crashes", self.nodes[i].name);
        self.nodes[i].alive = false;
        self.nodes[i].holds_vip = false;
        let cfg = self.nodes[i].router.config().clone();
        self.nodes[i].router = Router::new(cfg);
        self
    }

    fn set_link(&mut self, i: usize, up: bool) -> &mut Self {
        let t = self.now.as_secs_f64();
        let _ = writeln!(self.log, "{t:8.3}s {} link {}", self.nodes[i].name, if up { "restored" } else { "cut" });
        self.nodes[i].linked = up;
        self
    }

    fn masters(&self) -> Vec<&str> {
        self.nodes.iter().filter(|n| n.alive && n.router.state() == State::Master).map(|n| n.name.as_str()).collect()
    }

    fn holders(&self) -> Vec<&str> {
        self.nodes.iter().filter(|n| n.alive && n.holds_vip).map(|n| n.name.as_str()).collect()
    }
}

fn golden(name: &str, seg: &Segment) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.txt"));
    if std::env::var_os("KUBEHA_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &seg.log).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == seg.log,
        "{name}: the transcript changed; if that is intended, rerun with KUBEHA_UPDATE_GOLDEN=1 and review \
         the diff.\n--- golden\n{want}\n--- now\n{}",
        seg.log
    );
}

fn three() -> Segment {
    let mut s = Segment::new(&[200, 190, 180], 100, 1);
    s.start(0).at(0.01).start(1).at(0.02).start(2);
    s
}

#[test]
fn three_routers_elect_the_highest_priority() {
    let mut s = three();
    s.at(5.0);
    assert_eq!((s.masters(), s.holders()), (vec!["n1"], vec!["n1"]));
    golden("three_routers_elect", &s);
}

#[test]
fn a_graceful_stop_hands_over_after_the_skew_time() {
    let mut s = three();
    s.at(5.0);
    s.input(0, Input::Shutdown);
    s.at(5.3);
    // n2's skew with a 1 s master interval and priority 190: 66/256 s ≈ 0.258 s.
    assert_eq!((s.masters(), s.holders()), (vec!["n2"], vec!["n2"]));
    golden("graceful_stop", &s);
}

#[test]
fn a_crashed_master_is_replaced_after_the_master_down_interval() {
    let mut s = three();
    // n1's last advert left at 4.219 s; n2 waits 3 × 1 s + 66/256 s from its arrival: until 7.478 s.
    s.at(5.0).crash(0).at(7.45);
    assert!(s.masters().is_empty(), "n2 still waits");
    s.at(7.5);
    assert_eq!((s.masters(), s.holders()), (vec!["n2"], vec!["n2"]));
    golden("crash", &s);
}

#[test]
fn a_partition_makes_two_masters_and_healing_leaves_one_that_reannounces() {
    let mut s = three();
    s.at(5.0).set_link(0, false).at(10.0);
    assert_eq!(s.masters(), vec!["n1", "n2"], "each side elects its own");
    s.set_link(0, true).at(12.0);
    assert_eq!((s.masters(), s.holders()), (vec!["n1"], vec!["n1"]));
    assert!(s.log.lines().any(|l| l.contains("n1 announces") && l.trim_start().starts_with("10.")), "{}", s.log);
    golden("partition_heal", &s);
}

#[test]
fn a_health_penalty_moves_the_vip_to_the_next_priority() {
    let mut s = three();
    s.at(5.0);
    s.input(0, Input::Priority(140));
    s.at(10.0);
    assert_eq!((s.masters(), s.holders()), (vec!["n2"], vec!["n2"]));
    golden("health_penalty", &s);
}

/// What `helm upgrade` does to the agents: each node's router stops and starts again in turn, and each time
/// the restarted one with the highest priority preempts its successor. At no instant does the VIP sit on two
/// routers. (Delays stay below the Skew_Time between neighbouring priorities, 10 × interval / 256: beyond it,
/// two backups may both take a released VIP, which is RFC 9568's own race and not the one this test is about.)
#[test]
fn a_rolling_restart_never_puts_the_vip_on_two_routers() {
    for (interval, delay_us) in [(1u16, 100u64), (10, 100), (10, 1000), (100, 1000), (100, 20_000)] {
        let mut s = Segment::new(&[200, 190, 180], interval, 1);
        s.delay = Duration::from_micros(delay_us);
        let settle = f64::from(interval) / 100.0 * 5.0;
        let mut at = 0.0;
        for i in 0..3 {
            s.start(i);
            at += settle;
            s.at(at);
        }
        for i in [0, 1, 2, 0] {
            s.input(i, Input::Shutdown);
            at += 0.05;
            s.at(at).start(i);
            at += settle;
            s.at(at);
        }
        let case = format!("interval {interval} cs, delay {delay_us} µs");
        assert_eq!(s.holders(), vec!["n1"], "{case}\n{}", s.log);
        assert!(s.overlaps.is_empty(), "{case}: {:?}\n{}", s.overlaps, s.log);
        assert!(s.log.contains("(Preempted)"), "{case}: the scenario preempts\n{}", s.log);
    }
}

#[test]
fn equal_priorities_started_together_go_to_the_highest_address() {
    let mut s = Segment::new(&[150, 150, 150], 100, 7);
    s.start(0).start(1).start(2).at(6.0);
    assert_eq!(s.masters(), vec!["n3"]);
}

#[test]
fn ten_millisecond_adverts_converge_too() {
    let mut s = Segment::new(&[200, 190, 180], 1, 3);
    s.start(0).start(1).start(2).at(0.5);
    assert_eq!(s.masters(), vec!["n1"]);
    s.crash(0).at(0.6);
    assert_eq!(s.masters(), vec!["n2"]);
}

#[derive(Clone, Debug)]
enum Fault {
    Crash(usize),
    Restart(usize),
    Cut(usize),
    Restore(usize),
    Priority(usize, u8),
    Loss(u64),
    Shutdown(usize),
}

fn fault(n: usize) -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0..n).prop_map(Fault::Crash),
        (0..n).prop_map(Fault::Restart),
        (0..n).prop_map(Fault::Cut),
        (0..n).prop_map(Fault::Restore),
        ((0..n), 1u8..=254).prop_map(|(i, p)| Fault::Priority(i, p)),
        (0u64..800).prop_map(Fault::Loss),
        (0..n).prop_map(Fault::Shutdown),
    ]
}

fn scenario() -> impl Strategy<Value = (Vec<u8>, u16, Vec<(u32, Fault)>, u64)> {
    (2usize..=5).prop_flat_map(|n| {
        (
            prop::collection::vec(1u8..=254, n),
            prop_oneof![Just(1u16), Just(10), Just(100)],
            prop::collection::vec((0u32..20_000, fault(n)), 0..12),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Once the network has been quiet for a while (all links up, no loss, no more faults), exactly one
    /// live router is master, it holds the VIP alone, and no live router has a higher effective priority.
    #[test]
    fn after_quiet_there_is_exactly_one_master_with_the_highest_priority((priorities, interval, mut faults, seed) in scenario()) {
        let n = priorities.len();
        let mut s = Segment::new(&priorities, interval, seed);
        for i in 0..n {
            s.start(i);
            let t = s.now + Duration::from_millis(seed % 50);
            s.run_until(t);
        }
        faults.sort_by_key(|(t, _)| *t);
        for (t, f) in faults {
            s.run_until(Duration::from_millis(u64::from(t)));
            match f {
                Fault::Crash(i) => { s.crash(i); }
                Fault::Restart(i) => if !s.nodes[i].alive { s.start(i); },
                Fault::Cut(i) => { s.set_link(i, false); }
                Fault::Restore(i) => { s.set_link(i, true); }
                Fault::Priority(i, p) => s.input(i, Input::Priority(p)),
                Fault::Loss(p) => s.loss_permille = p,
                Fault::Shutdown(i) => { s.input(i, Input::Shutdown); s.input(i, Input::Startup); }
            }
        }
        // Quiet: every link up, no loss; then wait out several Master_Down_Intervals of the slowest router.
        s.loss_permille = 0;
        for i in 0..n { s.set_link(i, true); }
        let quiet = s.now + Duration::from_millis(u64::from(interval) * 10 * 3 + 1000) * 3;
        s.run_until(quiet);

        let live: Vec<&Node> = s.nodes.iter().filter(|n| n.alive).collect();
        if !live.is_empty() {
            let masters: Vec<&&Node> = live.iter().filter(|n| n.router.state() == State::Master).collect();
            prop_assert_eq!(masters.len(), 1, "masters: {:?}\n{}", s.masters(), s.log);
            let top = live.iter().map(|n| n.router.effective_priority()).max().unwrap();
            prop_assert_eq!(masters[0].router.effective_priority(), top, "{}", s.log);
            prop_assert_eq!(s.holders(), vec![masters[0].name.as_str()], "{}", s.log);
        }
    }
}
