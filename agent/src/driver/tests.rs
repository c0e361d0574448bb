//! The driver on an in-memory segment under tokio's paused clock: the behaviour the e2e tests show on
//! network namespaces (handover, preemption both ways, carrier loss, a leftover VIP, quorum fencing), here
//! without root, sockets or waiting. Each test's seconds of VRRP run in milliseconds, the same every run.

use std::net::IpAddr;
use std::time::Duration;

use kubeha_vrrp::router::{Announce, Config, State};
use kubeha_vrrp::wire::Version;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::memory::{Health, MemoryLink, Segment};
use super::{Command, Control, Driver, Ended};
use crate::metrics::VrrpMetrics;

const VIP: [u8; 4] = [198, 51, 100, 10];

fn addr(n: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, 10 + n])
}

fn config(n: u8, priority: u8, preempt: bool) -> Config {
    Config {
        version: Version::V3,
        vrid: 51,
        priority,
        addresses: vec![IpAddr::from(VIP)],
        advert_interval_cs: 10,
        preempt,
        preempt_delay: Duration::ZERO,
        primary: addr(n),
        announce: Announce { repeat: 2, second_burst: Duration::ZERO, refresh: Duration::ZERO },
    }
}

/// One driver running on the segment.
struct Node {
    health: Health,
    control: Control,
    stop: watch::Sender<bool>,
    task: JoinHandle<Ended>,
}

impl Node {
    fn state(&self) -> State {
        self.control.observed.borrow().state
    }

    fn reason(&self) -> String {
        self.control.observed.borrow().last_transition.as_ref().map(|t| t.reason.clone()).unwrap_or_default()
    }

    async fn stop(self) -> Ended {
        self.stop.send_replace(true);
        self.task.await.unwrap()
    }
}

/// Starts node `n` (198.51.100.1n) with `priority`, health checks of `weights`, the VIP on its interface
/// already when `holding`.
async fn start(seg: &Segment, n: u8, cfg: Config, weights: &[i32], holding: bool) -> Node {
    start_with(seg, n, cfg, weights, holding, VrrpMetrics::default()).await
}

/// [`start`] with the metrics the test reads.
async fn start_with(seg: &Segment, n: u8, cfg: Config, weights: &[i32], holding: bool, metrics: VrrpMetrics) -> Node {
    let (link, health): (MemoryLink, Health) = seg.join(addr(n), weights, holding);
    let mut driver = Driver::with_link(link, cfg, &[], holding, metrics);
    driver.prepare().await;
    driver.take(None).await.unwrap();
    let control = driver.control();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(driver.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Node { health, control, stop, task }
}

/// n1 (priority 150, checks of `weights`) and n2 (100), settled: n1 holds the VIP.
async fn two(weights: &[i32]) -> (Segment, Node, Node) {
    let seg = Segment::default();
    let n1 = start(&seg, 1, config(1, 150, true), weights, false).await;
    let n2 = start(&seg, 2, config(2, 100, true), &[], false).await;
    after(1000).await;
    assert_eq!((n1.state(), n2.state(), seg.holders()), (State::Master, State::Backup, vec![addr(1)]));
    (seg, n1, n2)
}

/// Fails the test if the VIP was ever added while another node held it.
fn never_two(seg: &Segment) {
    assert!(seg.overlaps().is_empty(), "the VIP was on two nodes: {:?}\n{}", seg.overlaps(), seg.events());
}

/// Lets virtual time pass.
async fn after(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A VRRPv3 advert for the test VIP on VRID 51 at 100 ms, from `from` at `priority`, as sent on the wire.
fn v3_advert(from: IpAddr, priority: u8) -> Vec<u8> {
    use kubeha_vrrp::wire::{Advertisement, ChecksumForm, Endpoints};
    Advertisement { version: Version::V3, vrid: 51, priority, interval_cs: 10, addresses: vec![VIP.into()] }
        .encode(&Endpoints { src: from, dst: IpAddr::from([224, 0, 0, 18]) }, ChecksumForm::PseudoHeader)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_higher_priority_holds_the_vip_and_a_graceful_stop_hands_it_over_within_the_skew_time() {
    let (seg, n1, n2) = two(&[]).await;

    assert_eq!(n1.stop().await, Ended::Stopped);
    // n2's Skew_Time at priority 100 and 100 ms adverts: 156/256 × 100 ms ≈ 61 ms; not its down interval.
    after(70).await;
    assert_eq!((n2.state(), n2.reason().as_str()), (State::Master, "MasterReleased"));
    assert_eq!(seg.holders(), [addr(2)]);
    never_two(&seg);
}

#[tokio::test(start_paused = true)]
async fn a_health_penalty_moves_the_vip_and_its_end_moves_it_back_never_onto_two_nodes() {
    let (seg, n1, n2) = two(&[-60]).await;

    n1.health.set(0, false); // 150 − 60 = 90 < 100
    after(500).await;
    assert_eq!((n2.state(), n2.reason().as_str()), (State::Master, "Preempted"));
    assert_eq!((n1.state(), n1.control.observed.borrow().effective_priority), (State::Backup, 90));
    assert_eq!(seg.holders(), [addr(2)]);

    n1.health.set(0, true);
    after(500).await;
    assert_eq!((n1.state(), n1.reason().as_str()), (State::Master, "Preempted"));
    assert_eq!(seg.holders(), [addr(1)]);
    never_two(&seg);
}

#[tokio::test(start_paused = true)]
async fn a_master_that_loses_its_carrier_gives_the_vip_up_at_once() {
    let (seg, n1, n2) = two(&[]).await;

    n1.health.set_carrier(false);
    // Fault: the VIP is removed and released; n2 takes over after its skew, not 3 advert intervals.
    after(70).await;
    assert_eq!((n1.state(), n2.state(), n2.reason().as_str()), (State::Fault, State::Master, "MasterReleased"));
    assert_eq!(seg.holders(), [addr(2)]);

    n1.health.set_carrier(true);
    after(1000).await;
    assert_eq!((n1.state(), seg.holders()), (State::Master, vec![addr(1)]), "back, by preemption");
    never_two(&seg);
}

#[tokio::test(start_paused = true)]
async fn a_leftover_vip_is_kept_when_no_other_master_speaks() {
    // The agent was killed and restarted before any backup took over: it resumes with the VIP in place.
    let seg = Segment::default();
    let n1 = start(&seg, 1, config(1, 100, true), &[], true).await;
    after(10).await;
    assert_eq!((n1.state(), n1.reason().as_str()), (State::Master, "HandedOver"));
    assert_eq!(seg.holders(), [addr(1)]);
    assert!(!seg.events().contains("removes"), "{}", seg.events());
}

#[tokio::test(start_paused = true)]
async fn a_leftover_vip_is_removed_when_another_master_holds_it_and_won_back_by_preemption() {
    let seg = Segment::default();
    let n2 = start(&seg, 2, config(2, 100, true), &[], false).await;
    after(1000).await;
    assert_eq!(seg.holders(), [addr(2)]);
    // n1 comes back with its old VIP still on its interface while n2 holds it.
    let n1 = start(&seg, 1, config(1, 150, true), &[], true).await;
    assert!(seg.events().contains(&format!("{} removes the VIP", addr(1))), "{}", seg.events());
    after(1000).await;
    assert_eq!((n1.state(), n1.reason().as_str(), n2.state()), (State::Master, "Preempted", State::Backup));
    assert_eq!(seg.holders(), [addr(1)]);
    assert!(seg.overlaps().is_empty(), "n1 added the VIP only after n2 released it\n{}", seg.events());
}

#[tokio::test(start_paused = true)]
async fn quorum_fencing_takes_over_from_a_master_without_quorum_even_with_preempt_off() {
    let seg = Segment::default();
    let n1 = start(&seg, 1, config(1, 100, false), &[], false).await;
    after(1000).await;
    let n2 = start(&seg, 2, config(2, 150, false), &[], false).await;
    after(1000).await;
    assert_eq!((n1.state(), n2.state()), (State::Master, State::Backup), "preempt off: the first master stays");

    n2.control.commands.send(Command::Fencing { boost: 0, take_over: true }).unwrap();
    after(1000).await;
    assert_eq!((n2.state(), n2.reason().as_str()), (State::Master, "Preempted"));
    assert_eq!(seg.holders(), [addr(2)]);
    never_two(&seg);
}

#[tokio::test(start_paused = true)]
async fn a_partition_makes_two_masters_and_healing_leaves_the_higher_one() {
    let (seg, n1, n2) = two(&[]).await;
    seg.set_cut(addr(1), true);
    after(1000).await;
    assert_eq!((n1.state(), n2.state()), (State::Master, State::Master), "each side elects its own");
    seg.set_cut(addr(1), false);
    after(500).await;
    assert_eq!((n1.state(), n2.state(), n2.reason().as_str()), (State::Master, State::Backup, "HigherPriority"));
    assert_eq!(seg.holders(), [addr(1)]);
    assert!(seg.events().contains(&format!("{} announces", addr(1))), "the winner re-announces\n{}", seg.events());
}

#[tokio::test(start_paused = true)]
async fn a_master_tuned_to_slower_adverts_gives_its_vip_the_longer_lifetime() {
    // A crashed master's VIP must outlive the backups' wait: 2 s at 100 ms adverts, 5 s at 1 s
    // (Master_Down_Interval + 1.5 s, rounded up). Tuned in place, the master must not keep the 2 s.
    let seg = Segment::default();
    let n1 = start(&seg, 1, config(1, 200, true), &[], false).await;
    after(1000).await;
    assert_eq!((n1.state(), seg.lifetime(addr(1))), (State::Master, Some(Duration::from_secs(2))));
    let tuning = kubeha_vrrp::router::Tuning {
        advert_interval_cs: 100,
        ..kubeha_vrrp::router::Tuning::of(&config(1, 200, true))
    };
    n1.control.commands.send(Command::Tune(tuning)).unwrap();
    after(100).await;
    assert_eq!(seg.lifetime(addr(1)), Some(Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn a_strangers_bad_packets_change_nothing_and_are_counted_by_reason() {
    let seg = Segment::default();
    let metrics = VrrpMetrics::default();
    let n1 = start_with(&seg, 1, config(1, 150, true), &[], false, metrics.clone()).await;
    after(1000).await;
    assert_eq!((n1.state(), seg.holders()), (State::Master, vec![addr(1)]));

    // A stranger's advert that would win every election (priority 254), damaged in the ways a wire or a
    // careless sender damages it: none may take effect.
    let stranger = IpAddr::from([198, 51, 100, 99]);
    let good = v3_advert(stranger, 254);
    let mut flipped = good.clone();
    flipped[4] ^= 0x01;
    let mut v9 = good.clone();
    v9[0] = 0x91;
    for _ in 0..10 {
        seg.inject(stranger, &flipped, 255); // a changed byte: checksum
        seg.inject(stranger, &good, 64); // routed from off the link: ttl
        seg.inject(stranger, &good[..7], 255); // cut short: truncated
        seg.inject(stranger, &v9, 255); // an unknown version
        seg.inject(stranger, &[0xff; 40], 255); // noise
        after(50).await;
    }
    assert_eq!((n1.state(), seg.holders()), (State::Master, vec![addr(1)]), "{}", seg.events());
    let count =
        |reason: &str| metrics.invalid_packets.get_or_create(&crate::metrics::Reason { reason: reason.into() }).get();
    assert_eq!((count("checksum"), count("ttl")), (10, 10));
    assert!(count("truncated") >= 10 && count("version") >= 10);
    let reasons = ["truncated", "trailing_bytes", "ttl", "version", "type", "checksum", "no_addresses"];
    assert_eq!(reasons.iter().map(|r| count(r)).sum::<u64>(), 50, "every packet, the noise too, counted once");
    assert_eq!(metrics.adverts_received.get(), 0);
    never_two(&seg);
    n1.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_host_that_answers_for_the_vip_keeps_a_cold_cluster_out_until_it_lets_go() {
    // Another host has the VIP configured (a typo in the config, or a forgotten address): nobody takes it.
    let seg = Segment::default();
    seg.set_stranger(Some([2, 0, 0, 0, 0, 99]));
    let n1 = start(&seg, 1, config(1, 150, true), &[], false).await;
    let n2 = start(&seg, 2, config(2, 100, true), &[], false).await;
    after(3000).await;
    assert!(seg.holders().is_empty(), "{}", seg.events());
    assert_eq!((n1.state(), n2.state()), (State::Fault, State::Fault));
    let told = n1.control.observed.borrow().vip_in_use.clone().unwrap_or_default();
    assert!(told.contains("in use by another host on this link (MAC 02:00:00:00:00:63"), "{told}");
    assert!(told.contains("set vip to an unused address"), "{told}");

    // The host lets it go: within a re-probe and the usual election, the higher priority holds it.
    seg.set_stranger(None);
    after(2500).await;
    assert_eq!((n1.state(), n2.state(), seg.holders()), (State::Master, State::Backup, vec![addr(1)]));
    assert_eq!(n1.control.observed.borrow().vip_in_use, None);
    never_two(&seg);
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn only_the_first_takeover_of_a_cold_segment_probes_never_a_failover() {
    let (seg, n1, n2) = two(&[]).await;
    assert_eq!(seg.probes(), vec![addr(1)], "n1's first takeover; n2 heard n1");
    // A graceful hand-over and a crash: the backups heard the master that held the VIP.
    assert_eq!(n1.stop().await, Ended::Stopped);
    after(500).await;
    assert_eq!(seg.holders(), vec![addr(2)]);
    let n3 = start(&seg, 3, config(3, 50, true), &[], false).await;
    after(500).await;
    n2.task.abort();
    after(1000).await;
    assert!(seg.holders().contains(&addr(3)), "{}", seg.events());
    assert_eq!(seg.probes(), vec![addr(1)], "no failover probed");
    n3.stop().await;
}

/// A cold start's close election: n1's adverts reach n2 late (held back), so n2's own down timer fires while
/// n1 already holds the VIP, n2's probe is answered by n1, and n2 is kept out (Fault).
async fn kept_out_by_a_late_winner() -> (Segment, Node, Node) {
    let seg = Segment::default();
    seg.delay(addr(2));
    let n1 = start(&seg, 1, config(1, 150, true), &[], false).await;
    let n2 = start(&seg, 2, config(2, 100, true), &[], false).await;
    after(3500).await;
    assert_eq!((n1.state(), n2.state(), seg.holders()), (State::Master, State::Fault, vec![addr(1)]));
    (seg, n1, n2)
}

#[tokio::test(start_paused = true)]
async fn a_member_that_took_the_vip_during_a_probe_and_released_it_at_once_hands_it_over() {
    // The race of probe-wip's full run: the winner is stopped moments after its takeover, so the first thing
    // the kept-out router hears from it is its release (priority 0). That is a member's last advert as
    // master, not a stranger's: n2 leaves Fault and takes the VIP at its skew time, without a probe.
    let (seg, n1, n2) = kept_out_by_a_late_winner().await;
    seg.lose_late(addr(2));
    let probes = seg.probes().len();
    n1.stop().await;
    after(200).await;
    assert_eq!((n2.state(), n2.reason().as_str(), seg.holders()), (State::Master, "MasterReleased", vec![addr(2)]));
    assert_eq!(n2.control.observed.borrow().vip_in_use, None);
    assert_eq!(seg.probes().len(), probes, "the takeover after a member's release probed: {:?}", seg.probes());
    n2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_member_that_took_the_vip_during_a_probe_is_not_a_stranger_once_its_advert_arrives() {
    // A cold start's close election (the race of 3ecf21e's full run): n1's adverts reach n2 late, so n2's own
    // down timer fires while n1 already holds the VIP, and n2's probe is answered by n1.
    let (seg, n1, n2) = kept_out_by_a_late_winner().await;
    assert!(n2.control.observed.borrow().vip_in_use.is_some());
    // n1's adverts arrive: n2 is a backup of a member, not kept out by a stranger, and stays one (re-probes
    // would see n1 answer for the VIP).
    seg.deliver_late(addr(2));
    after(100).await;
    assert_eq!((n2.state(), n2.control.observed.borrow().vip_in_use.clone()), (State::Backup, None));
    after(3000).await;
    assert_eq!((n1.state(), n2.state(), seg.holders()), (State::Master, State::Backup, vec![addr(1)]));
    never_two(&seg);
    // And it is ready for its job: n1's crash moves the VIP to n2 without a probe.
    let probes = seg.probes().len();
    n1.task.abort();
    after(1000).await;
    assert!(seg.holders().contains(&addr(2)), "{}", seg.events());
    assert_eq!(seg.probes().len(), probes, "a failover probed: {:?}", seg.probes());
    n2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stranger_on_the_vrid_is_reported_and_left_out_unless_elected() {
    let metrics = VrrpMetrics::default();
    let seg = Segment::default();
    let n1 = start_with(&seg, 1, config(1, 150, true), &[], false, metrics.clone()).await;
    let n2 = start(&seg, 2, config(2, 100, true), &[], false).await;
    let members = vec![addr(1), addr(2)];
    for n in [&n1, &n2] {
        n.control.commands.send(Command::Strangers { members: members.clone(), elect: false }).unwrap();
    }
    after(1000).await;
    assert_eq!((n1.state(), seg.holders()), (State::Master, vec![addr(1)]));

    // A keepalived on the same VRID with the same VIP, at a priority that would win any election.
    let stranger = IpAddr::from([198, 51, 100, 31]);
    let advert = v3_advert(stranger, 254);
    for _ in 0..20 {
        seg.inject(stranger, &advert, 255);
        after(100).await;
    }
    assert_eq!(
        (n1.state(), n2.state(), seg.holders()),
        (State::Master, State::Backup, vec![addr(1)]),
        "{}",
        seg.events()
    );
    let count =
        |reason: &str| metrics.stranger_adverts.get_or_create(&crate::metrics::Reason { reason: reason.into() }).get();
    assert_eq!((count("source"), count("addresses")), (20, 0));
    let seen = n1.control.observed.borrow().strangers.clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].from, seen[0].priority, seen[0].elected), (stranger, 254, false));
    assert_eq!(n1.control.observed.borrow().advert_source, Some(addr(1)));

    // A migration: it takes part, and its priority wins; when it goes, the members take the VIP back
    // (without a probe: they heard it hold the VIP).
    for n in [&n1, &n2] {
        n.control.commands.send(Command::Strangers { members: members.clone(), elect: true }).unwrap();
    }
    for _ in 0..10 {
        seg.inject(stranger, &advert, 255);
        after(100).await;
    }
    assert_eq!((n1.state(), n2.state(), seg.holders()), (State::Backup, State::Backup, vec![]), "{}", seg.events());
    assert!(n1.control.observed.borrow().strangers[0].elected);
    after(1000).await;
    assert_eq!((n1.state(), seg.holders()), (State::Master, vec![addr(1)]), "{}", seg.events());
    assert_eq!(seg.probes(), vec![addr(1)], "only the cold start probed");
    // Silent for a minute: no longer reported.
    after(61_000).await;
    assert!(n1.control.observed.borrow().strangers.is_empty());
    never_two(&seg);
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_keepalived_with_a_password_is_heard_only_while_strangers_are_elected() {
    use kubeha_vrrp::wire::{Advertisement, ChecksumForm, Endpoints, checksum};

    let v2 =
        |n: u8, priority: u8| Config { version: Version::V2, advert_interval_cs: 100, ..config(n, priority, true) };
    let seg = Segment::default();
    let metrics = VrrpMetrics::default();
    let n1 = start_with(&seg, 1, v2(1, 150), &[], false, metrics.clone()).await;
    let n2 = start(&seg, 2, v2(2, 100), &[], false).await;
    let members = vec![addr(1), addr(2)];
    let strangers = |elect: bool| {
        for n in [&n1, &n2] {
            n.control.commands.send(Command::Strangers { members: members.clone(), elect }).unwrap();
        }
    };
    strangers(false);
    after(5000).await;
    assert_eq!((n1.state(), seg.holders()), (State::Master, vec![addr(1)]));

    // kubeadm's HA guide: keepalived, VRRPv2, `auth_type PASS` (type 1, the password in clear in the
    // authentication data), on the cluster's VRID and VIP.
    let keepalived = IpAddr::from([198, 51, 100, 31]);
    let pass = |priority: u8| {
        let mut b =
            Advertisement { version: Version::V2, vrid: 51, priority, interval_cs: 100, addresses: vec![VIP.into()] }
                .encode(&Endpoints { src: keepalived, dst: IpAddr::from([224, 0, 0, 18]) }, ChecksumForm::Message)
                .unwrap();
        b[4] = 1;
        b[12..16].copy_from_slice(b"pw42");
        b[6..8].copy_from_slice(&[0, 0]);
        let sum = checksum(&b, None);
        b[6..8].copy_from_slice(&sum.to_be_bytes());
        b
    };
    let count =
        |reason: &str| metrics.invalid_packets.get_or_create(&crate::metrics::Reason { reason: reason.into() }).get();
    for _ in 0..5 {
        seg.inject(keepalived, &pass(254), 255);
        after(1000).await;
    }
    assert_eq!((n1.state(), seg.holders()), (State::Master, vec![addr(1)]), "{}", seg.events());
    assert_eq!(count("auth_type"), 5, "left out of the election, it is not even heard: dropped by reason");

    // A migration elects strangers: the members hear it, and its priority wins.
    strangers(true);
    after(100).await; // the drivers take the command before the next advert
    for _ in 0..5 {
        seg.inject(keepalived, &pass(254), 255);
        after(1000).await;
    }
    assert_eq!((n1.state(), n2.state(), seg.holders()), (State::Backup, State::Backup, vec![]), "{}", seg.events());
    assert_eq!(count("auth_type"), 5);
    let seen = n1.control.observed.borrow().strangers.clone();
    assert_eq!((seen.len(), seen[0].from, seen[0].elected), (1, keepalived, true), "{seen:?}");
    // keepalived stops: its priority-0 advert hands the VIP to the highest member within its skew time
    // ((256 - 150) / 256 s), not after three missed adverts.
    seg.inject(keepalived, &pass(0), 255);
    after(500).await;
    assert_eq!((n1.state(), seg.holders()), (State::Master, vec![addr(1)]), "{}", seg.events());
    never_two(&seg);
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_backup_that_was_not_scheduled_reads_the_queued_advert_before_its_timer() {
    // n2 follows a master (n1, priority 150) that this test plays. A busy node does not run the agent for a
    // moment: the master's advert arrives in time, but by the time the driver runs, its down timer (3 × 100
    // ms + skew) has passed too. The advert must win.
    let seg = Segment::default();
    let n2 = start(&seg, 2, config(2, 100, true), &[], false).await;
    let master = addr(1);
    let advert = v3_advert(master, 150);
    for _ in 0..5 {
        seg.inject(master, &advert, 255);
        after(100).await;
    }
    assert_eq!(n2.state(), State::Backup);
    // From now on the driver learns of the master's adverts (every 300 ms, within its 361 ms down interval)
    // only when its timer wakes it, as after a stall: each one is queued by then.
    for _ in 0..20 {
        seg.inject_unnoticed(addr(2), master, &advert, 255);
        after(300).await;
        assert_eq!((n2.state(), seg.holders()), (State::Backup, vec![]), "{}", seg.events());
    }
    // Not even for an instant (before the drain it added and removed the VIP at each timer).
    assert!(!seg.events().contains("adds the VIP"), "{}", seg.events());
    n2.stop().await;
}
