//! The router's transitions, one row per rule, each citing where it comes from (RFC 9568 unless said).

use std::net::IpAddr;
use std::time::Duration;

use kubeha_vrrp::router::{Action, Announce, Config, Input, Reason, Router, State, Tuning};
use kubeha_vrrp::wire::{Advertisement, Version};

const ME: &str = "198.51.100.12";

fn cfg(priority: u8) -> Config {
    Config {
        version: Version::V3,
        vrid: 51,
        priority,
        addresses: vec!["198.51.100.10".parse().unwrap()],
        advert_interval_cs: 100,
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary: ME.parse().unwrap(),
        announce: Announce { repeat: 5, second_burst: Duration::from_secs(5), refresh: Duration::ZERO },
    }
}

fn adv(priority: u8) -> Input {
    Input::Advertisement {
        from: "198.51.100.11".parse().unwrap(),
        advertisement: Advertisement {
            version: Version::V3,
            vrid: 51,
            priority,
            interval_cs: 100,
            addresses: vec!["198.51.100.10".parse().unwrap()],
        },
    }
}

fn adv_from(from: &str, priority: u8) -> Input {
    let Input::Advertisement { advertisement, .. } = adv(priority) else { unreachable!() };
    Input::Advertisement { from: from.parse::<IpAddr>().unwrap(), advertisement }
}

fn t(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A router of `priority` brought to `state` at t=0 (Backup: after Startup; Master: after its down timer).
fn in_state(priority: u8, state: State) -> Router {
    let mut r = Router::new(cfg(priority));
    if state == State::Initialize {
        return r;
    }
    let mut out = Vec::new();
    r.handle(t(0), Input::Startup, &mut out);
    if state == State::Master && r.state() != State::Master {
        r.handle(r.deadline().unwrap(), Input::Timer, &mut out);
    }
    assert_eq!(r.state(), state);
    r
}

fn transitions(out: &[Action]) -> Vec<(State, State, Reason)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Transition { from, to, reason } => Some((*from, *to, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_timers_follow_section_6_1() {
    // Skew_Time = ((256 − Priority) × Master_Adver_Interval) / 256; Master_Down_Interval = 3 × MAI + Skew.
    let r = Router::new(cfg(100));
    assert_eq!(r.skew_time(), Duration::from_secs(1) * 156 / 256);
    assert_eq!(r.master_down_interval(), Duration::from_secs(3) + Duration::from_secs(1) * 156 / 256);
    let mut v2 = cfg(200);
    v2.version = Version::V2;
    // RFC 3768 §6.1: Skew_Time = (256 − Priority) / 256 seconds.
    assert_eq!(Router::new(v2).skew_time(), Duration::from_secs(1) * 56 / 256);
}

#[test]
fn table() {
    struct Row {
        rule: &'static str,
        priority: u8,
        start: State,
        input: Input,
        at: u64,
        state: State,
        reason: Option<Reason>,
        does: &'static [Action],
    }
    let rows = [
        Row {
            rule: "§6.4.1 Startup, priority < 255 → Backup",
            priority: 100,
            start: State::Initialize,
            input: Input::Startup,
            at: 0,
            state: State::Backup,
            reason: Some(Reason::Startup),
            does: &[],
        },
        Row {
            rule: "§6.4.1 Startup, address owner (255) → Master, advertise, announce",
            priority: 255,
            start: State::Initialize,
            input: Input::Startup,
            at: 0,
            state: State::Master,
            reason: Some(Reason::AddressOwner),
            does: &[Action::Advertise { priority: 255 }, Action::AddAddresses, Action::Announce { count: 5 }],
        },
        Row {
            rule: "kubeha: Resume (handed over in place on this node) → Master at once, advertise, announce",
            priority: 100,
            start: State::Initialize,
            input: Input::Resume,
            at: 0,
            state: State::Master,
            reason: Some(Reason::HandedOver),
            does: &[Action::Advertise { priority: 100 }, Action::AddAddresses, Action::Announce { count: 5 }],
        },
        Row {
            rule: "kubeha: Resume is only for a router that has not started",
            priority: 100,
            start: State::Backup,
            input: Input::Resume,
            at: 0,
            state: State::Backup,
            reason: None,
            does: &[],
        },
        Row {
            rule: "§6.4.2 Backup, Master_Down_Timer fires → Master",
            priority: 100,
            start: State::Backup,
            input: Input::Timer,
            at: 3610,
            state: State::Master,
            reason: Some(Reason::MasterDown),
            does: &[Action::Advertise { priority: 100 }, Action::AddAddresses, Action::Announce { count: 5 }],
        },
        Row {
            rule: "§6.4.2 Backup, timer not yet due → nothing",
            priority: 100,
            start: State::Backup,
            input: Input::Timer,
            at: 3000,
            state: State::Backup,
            reason: None,
            does: &[],
        },
        Row {
            rule: "§6.4.2 Backup, advert ≥ own priority → stay, restart down timer",
            priority: 100,
            start: State::Backup,
            input: adv(150),
            at: 100,
            state: State::Backup,
            reason: None,
            does: &[],
        },
        Row {
            rule: "§6.4.2 Backup, advert priority 0 → down timer = Skew_Time",
            priority: 100,
            start: State::Backup,
            input: adv(0),
            at: 100,
            state: State::Backup,
            reason: None,
            does: &[],
        },
        Row {
            rule: "§6.4.2 Backup, Shutdown → Initialize",
            priority: 100,
            start: State::Backup,
            input: Input::Shutdown,
            at: 100,
            state: State::Initialize,
            reason: Some(Reason::Shutdown),
            does: &[],
        },
        Row {
            rule: "§6.4.3 Master, Adver_Timer fires → advertise",
            priority: 100,
            start: State::Master,
            input: Input::Timer,
            at: 4610,
            state: State::Master,
            reason: None,
            does: &[Action::Advertise { priority: 100 }],
        },
        Row {
            rule: "§6.4.3 Master, higher priority advert → Backup, remove addresses; kubeha: then release them (priority 0)",
            priority: 100,
            start: State::Master,
            input: adv(150),
            at: 3700,
            state: State::Backup,
            reason: Some(Reason::HigherPriority),
            does: &[Action::RemoveAddresses, Action::Advertise { priority: 0 }],
        },
        Row {
            rule: "§6.4.3 Master, equal priority from a higher address → Backup (removed, then released)",
            priority: 100,
            start: State::Master,
            input: adv_from("198.51.100.13", 100),
            at: 3700,
            state: State::Backup,
            reason: Some(Reason::HigherPriority),
            does: &[Action::RemoveAddresses, Action::Advertise { priority: 0 }],
        },
        Row {
            rule: "§6.4.3 Master, equal priority from a lower address → stay; kubeha: two masters met, reassert and announce",
            priority: 100,
            start: State::Master,
            input: adv_from("198.51.100.11", 100),
            at: 3700,
            state: State::Master,
            reason: None,
            does: &[Action::Advertise { priority: 100 }, Action::Announce { count: 5 }],
        },
        Row {
            rule: "kubeha: Master meets a lower master (healed partition) → advertise and announce at once",
            priority: 100,
            start: State::Master,
            input: adv(50),
            at: 3700,
            state: State::Master,
            reason: None,
            does: &[Action::Advertise { priority: 100 }, Action::Announce { count: 5 }],
        },
        Row {
            rule: "§6.4.3 Master, advert priority 0 → advertise at once; kubeha: and announce (it held the VIP)",
            priority: 100,
            start: State::Master,
            input: adv(0),
            at: 3700,
            state: State::Master,
            reason: None,
            does: &[Action::Advertise { priority: 100 }, Action::Announce { count: 5 }],
        },
        Row {
            rule: "§6.4.3 Master, Shutdown → remove addresses (kubeha: first), priority-0 advert, Initialize",
            priority: 100,
            start: State::Master,
            input: Input::Shutdown,
            at: 3700,
            state: State::Initialize,
            reason: Some(Reason::Shutdown),
            does: &[Action::RemoveAddresses, Action::Advertise { priority: 0 }],
        },
        Row {
            rule: "kubeha: Master, effective priority changes → advertise it at once",
            priority: 100,
            start: State::Master,
            input: Input::Priority(40),
            at: 3700,
            state: State::Master,
            reason: None,
            does: &[Action::Advertise { priority: 40 }],
        },
        Row {
            rule: "kubeha: Master, fault → remove addresses, priority-0 advert, Fault",
            priority: 100,
            start: State::Master,
            input: Input::Fault(true),
            at: 3700,
            state: State::Fault,
            reason: Some(Reason::FaultDetected),
            does: &[Action::RemoveAddresses, Action::Advertise { priority: 0 }],
        },
        Row {
            rule: "kubeha: Backup, fault → Fault, no timers",
            priority: 100,
            start: State::Backup,
            input: Input::Fault(true),
            at: 100,
            state: State::Fault,
            reason: Some(Reason::FaultDetected),
            does: &[],
        },
    ];
    for row in rows {
        let mut r = in_state(row.priority, row.start);
        let mut out = Vec::new();
        r.handle(t(row.at), row.input, &mut out);
        assert_eq!(r.state(), row.state, "{}", row.rule);
        let changed = transitions(&out);
        match row.reason {
            Some(reason) => assert_eq!(changed, vec![(row.start, row.state, reason)], "{}", row.rule),
            None => assert!(changed.is_empty(), "{}: {changed:?}", row.rule),
        }
        let actions: Vec<&Action> = out.iter().filter(|a| !matches!(a, Action::Transition { .. })).collect();
        assert_eq!(actions, row.does.iter().collect::<Vec<_>>(), "{}", row.rule);
    }
}

#[test]
fn a_released_master_is_replaced_after_the_skew_time_not_the_down_interval() {
    let mut r = in_state(200, State::Backup);
    let mut out = Vec::new();
    r.handle(t(100), adv(250), &mut out);
    r.handle(t(200), adv(0), &mut out);
    // Skew_Time with MAI 1 s and priority 200: 56/256 s ≈ 219 ms.
    assert_eq!(r.deadline(), Some(t(200) + Duration::from_secs(1) * 56 / 256));
    r.handle(r.deadline().unwrap(), Input::Timer, &mut out);
    assert_eq!(transitions(&out).last(), Some(&(State::Backup, State::Master, Reason::MasterReleased)));
}

#[test]
fn a_backup_learns_the_masters_interval() {
    let mut r = in_state(100, State::Backup);
    let mut out = Vec::new();
    let Input::Advertisement { from, mut advertisement } = adv(150) else { unreachable!() };
    advertisement.interval_cs = 10;
    r.handle(t(100), Input::Advertisement { from, advertisement }, &mut out);
    // 3 × 100 ms + (156/256) × 100 ms
    assert_eq!(r.deadline(), Some(t(100) + Duration::from_millis(300) + Duration::from_millis(100) * 156 / 256));
}

#[test]
fn the_preempt_delay_holds_back_a_higher_priority_after_start() {
    let mut c = cfg(200);
    c.preempt_delay = Duration::from_secs(10);
    let mut r = Router::new(c);
    let mut out = Vec::new();
    r.handle(t(0), Input::Startup, &mut out);
    // A lower-priority master is accepted while the delay runs: the down timer restarts.
    r.handle(t(3000), adv(100), &mut out);
    assert_eq!(r.deadline(), Some(t(3000) + r.master_down_interval()));
    // After the delay it is discarded, and the down timer takes over.
    let before = r.deadline();
    r.handle(t(11_000), adv(100), &mut out);
    assert_eq!(r.deadline(), before);
}

#[test]
fn leaving_fault_returns_to_backup_and_adverts_of_other_routers_are_ignored() {
    let mut r = in_state(100, State::Backup);
    let mut out = Vec::new();
    r.handle(t(100), Input::Fault(true), &mut out);
    r.handle(t(200), adv(50), &mut out);
    assert_eq!((r.state(), r.deadline()), (State::Fault, None));
    r.handle(t(300), Input::Fault(false), &mut out);
    assert_eq!(r.state(), State::Backup);
    assert_eq!(transitions(&out).last(), Some(&(State::Fault, State::Backup, Reason::FaultCleared)));
    let Input::Advertisement { from, mut advertisement } = adv(250) else { unreachable!() };
    advertisement.vrid = 52;
    let d = r.deadline();
    r.handle(t(400), Input::Advertisement { from, advertisement }, &mut out);
    assert_eq!(r.deadline(), d, "another VRID's advert changes nothing");
}

#[test]
fn a_master_announces_twice_and_refreshes() {
    let mut c = cfg(100);
    c.announce.refresh = Duration::from_secs(60);
    let mut r = Router::new(c);
    let mut out = Vec::new();
    r.handle(t(0), Input::Startup, &mut out);
    let became = r.deadline().unwrap();
    r.handle(became, Input::Timer, &mut out);
    out.clear();
    let mut now = became;
    let mut announced = Vec::new();
    while now < became + Duration::from_secs(61) {
        now = r.deadline().unwrap();
        r.handle(now, Input::Timer, &mut out);
        if out.iter().any(|a| matches!(a, Action::Announce { .. })) {
            announced.push(now - became);
        }
        out.clear();
    }
    assert_eq!(announced, [Duration::from_secs(5), Duration::from_secs(60)]);
}

/// Not in the RFC: a tuned master stays master and advertises the new interval at once.
#[test]
fn a_tuned_master_keeps_the_vip_and_advertises_the_new_interval_now() {
    let mut r = in_state(200, State::Master);
    let mut out = Vec::new();
    let tuning = Tuning { advert_interval_cs: 10, ..Tuning::of(r.config()) };
    r.handle(t(300), Input::Tune(tuning), &mut out);
    assert_eq!(r.state(), State::Master);
    assert_eq!(out, vec![Action::Advertise { priority: 200 }]);
    assert_eq!(r.advertisement(200).interval_cs, 10);
    assert_eq!(r.deadline(), Some(t(400)), "the next advert follows the new 100 ms interval");
}

/// Not in the RFC: a tuning that changes nothing the master sends sends nothing.
#[test]
fn a_tuned_master_counts_its_down_interval_by_the_new_interval() {
    // The driver sizes the VIP's kernel lifetime by Master_Down_Interval: a master tuned from 100 ms to 1 s
    // adverts must not keep the 100 ms figure (its VIP would expire 2 s after a crash, before the backups,
    // waiting 3 s, take over).
    let mut r = Router::new(Config { advert_interval_cs: 10, ..cfg(200) });
    let mut out = Vec::new();
    r.handle(t(0), Input::Startup, &mut out);
    r.handle(r.deadline().unwrap(), Input::Timer, &mut out);
    assert_eq!(r.state(), State::Master);
    let before = r.master_down_interval();
    r.handle(t(5000), Input::Tune(Tuning { advert_interval_cs: 100, ..Tuning::of(r.config()) }), &mut out);
    assert_eq!(r.master_down_interval(), before * 10);
}

#[test]
fn tuning_without_an_interval_change_sends_nothing() {
    let mut r = in_state(200, State::Master);
    let mut out = Vec::new();
    let tuning = Tuning { preempt: false, ..Tuning::of(r.config()) };
    r.handle(t(300), Input::Tune(tuning), &mut out);
    assert!(out.is_empty());
    assert!(!r.config().preempt);
}

/// RFC 9568 §6.4.2: a tuned backup still times the master by the master's advertised interval, and after
/// preempt is turned off it accepts a lower-priority master.
#[test]
fn a_tuned_backup_follows_the_new_preempt_mode() {
    let mut r = in_state(200, State::Backup);
    let mut out = Vec::new();
    r.handle(t(10), Input::Tune(Tuning { preempt: false, ..Tuning::of(r.config()) }), &mut out);
    assert!(out.is_empty());
    r.handle(t(20), adv(100), &mut out);
    assert_eq!(r.deadline(), Some(t(20) + r.master_down_interval()), "the lower master was accepted");
    assert_eq!(r.state(), State::Backup);
}

#[test]
fn taking_over_from_a_lower_master_is_a_preemption_not_a_master_down() {
    // §6.4.2: with preempt on, a backup discards adverts of a lower priority, so its down timer fires while
    // that master is alive. The reason tells it apart from a master that went silent.
    let mut r = in_state(200, State::Backup);
    let mut out = Vec::new();
    r.handle(t(100), adv(100), &mut out);
    r.handle(r.deadline().unwrap(), Input::Timer, &mut out);
    assert_eq!(transitions(&out), vec![(State::Backup, State::Master, Reason::Preempted)]);

    // A higher master heard after a lower one: accepted, so a later silence is a MasterDown again.
    let mut r = in_state(150, State::Backup);
    let mut out = Vec::new();
    r.handle(t(100), adv(100), &mut out);
    r.handle(t(200), adv(200), &mut out);
    r.handle(r.deadline().unwrap(), Input::Timer, &mut out);
    assert_eq!(transitions(&out), vec![(State::Backup, State::Master, Reason::MasterDown)]);
}

/// A router of priority 200 that has just preempted a live master of priority 100 (198.51.100.11), with the
/// actions of the preemption and when it happened.
fn preempting() -> (Router, Vec<Action>, Duration) {
    let mut r = in_state(200, State::Backup);
    let mut out = Vec::new();
    r.handle(t(100), adv(100), &mut out);
    let due = r.deadline().unwrap();
    out.clear();
    r.handle(due, Input::Timer, &mut out);
    (r, out, due)
}

fn actions(out: &[Action]) -> Vec<Action> {
    out.iter().filter(|a| !matches!(a, Action::Transition { .. })).cloned().collect()
}

#[test]
fn a_preempting_master_adds_the_vip_only_once_the_old_master_released_it() {
    // kubeha: advertise first; the old master removes the VIP, then sends priority 0.
    let (mut r, out, _) = preempting();
    assert_eq!(r.state(), State::Master);
    assert!(r.claiming());
    assert_eq!(actions(&out), vec![Action::Advertise { priority: 200 }]);
    let claimed = r.deadline().unwrap();

    // Its regular advert crossed ours: it has not heard the claim yet. Claim again, keep waiting.
    let mut out = Vec::new();
    r.handle(claimed - t(99), adv(100), &mut out);
    assert_eq!(actions(&out), vec![Action::Advertise { priority: 200 }]);
    assert!(r.claiming());

    let mut out = Vec::new();
    r.handle(claimed - t(98), adv(0), &mut out);
    assert_eq!(
        actions(&out),
        vec![Action::Advertise { priority: 200 }, Action::AddAddresses, Action::Announce { count: 5 }]
    );
    assert!(!r.claiming());
    assert!(transitions(&out).is_empty(), "the transition to Master was reported with the claim");
}

#[test]
fn a_preempting_master_adds_the_vip_after_the_claim_wait_without_a_release() {
    // keepalived steps down silently: the VIP is nowhere for CLAIM_WAIT_MAX (or one advert interval).
    let (mut r, _, preempted) = preempting();
    let claimed = r.deadline().unwrap();
    let mut out = Vec::new();
    r.handle(claimed - t(1), Input::Timer, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(claimed, preempted + kubeha_vrrp::router::CLAIM_WAIT_MAX.min(t(1000)));
    r.handle(claimed, Input::Timer, &mut out);
    assert_eq!(actions(&out), vec![Action::AddAddresses, Action::Announce { count: 5 }]);
    assert!(!r.claiming());
}

#[test]
fn a_claim_ends_without_a_trace_when_a_better_master_speaks_or_the_router_stops() {
    let (mut r, _, _) = preempting();
    let mut out = Vec::new();
    r.handle(t(3720), adv_from("198.51.100.13", 250), &mut out);
    assert_eq!(r.state(), State::Backup);
    assert!(actions(&out).is_empty(), "nothing was added, nothing to remove or release: {out:?}");

    let (mut r, _, _) = preempting();
    let mut out = Vec::new();
    r.handle(t(3720), Input::Shutdown, &mut out);
    assert_eq!(actions(&out), vec![Action::Advertise { priority: 0 }], "a release, but nothing to remove");
    assert_eq!(r.deadline(), None);
}

#[test]
fn a_backup_ignores_the_release_of_a_router_it_does_not_follow() {
    // The old master of a preemption releases after the new master's advert reached this backup: the new
    // master is alive, so no Skew_Time takeover from under it (kubeha; RFC 9568 §6.4.2 would take over).
    let mut r = in_state(150, State::Backup);
    let mut out = Vec::new();
    r.handle(t(100), adv_from("198.51.100.13", 200), &mut out);
    let down = r.deadline().unwrap();
    r.handle(t(101), adv_from("198.51.100.11", 0), &mut out);
    assert_eq!(r.deadline(), Some(down), "the down timer still counts from the followed master");

    // The followed master's own release is the RFC's hand-over.
    r.handle(t(102), adv_from("198.51.100.13", 0), &mut out);
    assert!(r.deadline().unwrap() < down);
}

#[test]
fn a_backup_that_a_lower_one_beat_to_a_release_claims_the_vip_from_it() {
    // kubeha: the master (.11) releases; a lower backup (.13) fires its Skew_Time first — the skews of
    // priorities 10 apart differ by 4 ms at 100 ms adverts — and holds the VIP. This backup's own timer
    // then preempts it: it claims, so that the VIP is not on both until .13 has heard it.
    let mut r = in_state(190, State::Backup);
    let mut out = Vec::new();
    r.handle(t(100), adv_from("198.51.100.11", 200), &mut out);
    r.handle(t(150), adv_from("198.51.100.11", 0), &mut out);
    r.handle(t(180), adv_from("198.51.100.13", 180), &mut out);
    out.clear();
    r.handle(r.deadline().unwrap(), Input::Timer, &mut out);
    assert_eq!(transitions(&out), vec![(State::Backup, State::Master, Reason::Preempted)]);
    assert_eq!(actions(&out), vec![Action::Advertise { priority: 190 }], "no address before .13 lets go");
    assert!(r.claiming());
    let mut out = Vec::new();
    r.handle(r.deadline().unwrap() - t(1), adv_from("198.51.100.13", 0), &mut out);
    assert!(actions(&out).contains(&Action::AddAddresses));

    // Nobody took over after the release: the hand-over adds the VIP at once.
    let mut r = in_state(190, State::Backup);
    let mut out = Vec::new();
    r.handle(t(100), adv_from("198.51.100.11", 200), &mut out);
    r.handle(t(150), adv_from("198.51.100.11", 0), &mut out);
    out.clear();
    r.handle(r.deadline().unwrap(), Input::Timer, &mut out);
    assert_eq!(transitions(&out), vec![(State::Backup, State::Master, Reason::MasterReleased)]);
    assert!(actions(&out).contains(&Action::AddAddresses));
}

/// What dashboards and alerts match on (`kubeha_vrrp_transitions_total{reason=…}`, the member status) is
/// spelled out once and stays put when a variant is renamed.
#[test]
fn reasons_and_states_have_fixed_names() {
    let reasons = [
        (Reason::Startup, "Startup"),
        (Reason::AddressOwner, "AddressOwner"),
        (Reason::HandedOver, "HandedOver"),
        (Reason::Preempted, "Preempted"),
        (Reason::MasterDown, "MasterDown"),
        (Reason::MasterReleased, "MasterReleased"),
        (Reason::HigherPriority, "HigherPriority"),
        (Reason::Shutdown, "Shutdown"),
        (Reason::FaultDetected, "FaultDetected"),
        (Reason::FaultCleared, "FaultCleared"),
    ];
    for (r, name) in reasons {
        assert_eq!(r.as_str(), name);
    }
    let states = [State::Initialize, State::Backup, State::Master, State::Fault].map(State::as_str);
    assert_eq!(states, ["Initialize", "Backup", "Master", "Fault"]);
}
