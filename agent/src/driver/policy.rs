//! What the driver decides beside the protocol, as pure code: the priority and fault state it feeds the
//! router from health and quorum fencing, the tuning fencing may force, the address owner's rules, and what
//! becomes of a VIP found on the interface at start. The driver asks; it does the I/O.

use std::net::IpAddr;
use std::time::Duration;

use kubeha_vrrp::router::Tuning;

use crate::health::{self, Verdict};

/// The driver's policy for one virtual router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    base: u8,
    boost: u8,
    take_over: bool,
    /// This node owns the address (priority 255): it is never added or removed by the agent, and its
    /// priority does not change.
    owner: bool,
    /// The tuning the spec asks for; fencing may turn preempt on over it.
    tuning: Tuning,
}

/// What to do at start about the VIP on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AtStart {
    /// Nothing there (or handed over in place, or the owner's own address): start as the router says.
    Start,
    /// A VIP left over from this node's earlier run: listen this long for another master first.
    Listen(Duration),
}

/// What becomes of a leftover VIP after listening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leftover {
    /// Another master holds it now: remove ours and start as a backup.
    Remove(IpAddr),
    /// Nobody else speaks: this node's agent was killed moments ago and restarted before any backup took
    /// over; keep the VIP and resume as master.
    Resume,
}

/// A change the driver must pass to the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Effective {
    /// The priority to advertise.
    pub(crate) priority: u8,
    /// Whether the router must be in Fault.
    pub(crate) fault: bool,
}

impl Policy {
    /// The policy of a router configured with `priority` and `tuning`.
    pub(crate) fn new(priority: u8, tuning: Tuning) -> Self {
        Self { base: priority, boost: 0, take_over: false, owner: priority == 255, tuning }
    }

    /// Whether this node owns the address.
    pub(crate) fn owner(&self) -> bool {
        self.owner
    }

    /// The configured priority.
    pub(crate) fn base(&self) -> u8 {
        self.base
    }

    /// The quorum-fencing boost in effect.
    pub(crate) fn boost(&self) -> u8 {
        self.boost
    }

    /// A new configured priority; false when it changes nothing or the owner's 255 cannot change.
    pub(crate) fn set_base(&mut self, priority: u8) -> bool {
        if self.owner || priority == self.base {
            return false;
        }
        self.base = priority;
        true
    }

    /// New fencing orders: whether the boost changed, and whether take-over changed (the tuning then
    /// changes too).
    pub(crate) fn set_fencing(&mut self, boost: u8, take_over: bool) -> (bool, bool) {
        let changed = (boost != self.boost, take_over != self.take_over);
        self.boost = boost;
        self.take_over = take_over;
        changed
    }

    /// New tuning from the spec.
    pub(crate) fn set_tuning(&mut self, tuning: Tuning) {
        self.tuning = tuning;
    }

    /// The tuning for the router: preempt is on while fencing orders a take-over — a master without quorum
    /// is not one to defer to.
    pub(crate) fn tuning(&self) -> Tuning {
        Tuning { preempt: self.tuning.preempt || self.take_over, ..self.tuning }
    }

    /// What the verdicts of the health checks make of the priority: their weights, then the fencing boost
    /// (at most 254; 255 stays the owner's), and Fault while a check of weight 0 fails.
    pub(crate) fn effective(&self, verdicts: &[Verdict]) -> Effective {
        let (priority, fault) = health::effective(self.base, verdicts);
        let priority =
            if self.owner || self.boost == 0 { priority } else { priority.saturating_add(self.boost).min(254) };
        Effective { priority, fault }
    }

    /// What to do about the VIP found (`present`) on the interface at start, with the advert interval to
    /// listen by; `resumed` when another agent of this node handed the instance over as master in place.
    pub(crate) fn at_start(&self, present: bool, resumed: bool, advert_interval: Duration) -> AtStart {
        if present && !self.owner && !resumed { AtStart::Listen(advert_interval * 3 / 2) } else { AtStart::Start }
    }

    /// What becomes of the leftover VIP when `heard` is the master heard while listening, if any.
    pub(crate) fn leftover(heard: Option<IpAddr>) -> Leftover {
        heard.map_or(Leftover::Resume, Leftover::Remove)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeha_vrrp::router::Announce;

    fn tuning(preempt: bool) -> Tuning {
        Tuning {
            advert_interval_cs: 100,
            preempt,
            preempt_delay: Duration::ZERO,
            announce: Announce { repeat: 5, second_burst: Duration::ZERO, refresh: Duration::ZERO },
        }
    }

    fn verdict(healthy: bool, weight: i32) -> Verdict {
        Verdict { name: "c".into(), healthy: Some(healthy), detail: String::new(), weight, since: None }
    }

    #[test]
    fn health_lowers_the_priority_fencing_raises_it_and_a_zero_weight_is_a_fault() {
        let mut p = Policy::new(150, tuning(true));
        assert_eq!(p.effective(&[verdict(true, -60)]), Effective { priority: 150, fault: false });
        assert_eq!(p.effective(&[verdict(false, -60)]), Effective { priority: 90, fault: false });
        assert_eq!(p.effective(&[verdict(false, 0)]), Effective { priority: 150, fault: true });
        assert_eq!(p.set_fencing(120, false), (true, false));
        assert_eq!(p.effective(&[]).priority, 254, "the boost stops at 254: 255 is the owner's");
        assert_eq!(p.effective(&[verdict(false, -60)]).priority, 210);
    }

    #[test]
    fn the_owner_keeps_255_and_never_touches_its_address() {
        let mut p = Policy::new(255, tuning(true));
        assert!(p.owner());
        assert!(!p.set_base(200), "the owner's priority does not change");
        p.set_fencing(50, false);
        assert_eq!(p.effective(&[]).priority, 255);
        assert_eq!(p.at_start(true, false, Duration::from_secs(1)), AtStart::Start, "its own address, not a leftover");
    }

    #[test]
    fn take_over_turns_preempt_on_over_the_spec_and_off_again() {
        let mut p = Policy::new(100, tuning(false));
        assert!(!p.tuning().preempt);
        assert_eq!(p.set_fencing(0, true), (false, true));
        assert!(p.tuning().preempt);
        p.set_tuning(tuning(false));
        assert!(p.tuning().preempt, "a new spec does not end the take-over");
        p.set_fencing(0, false);
        assert!(!p.tuning().preempt);
    }

    #[test]
    fn a_leftover_vip_is_listened_for_then_kept_or_removed() {
        let p = Policy::new(100, tuning(true));
        let second = Duration::from_secs(1);
        assert_eq!(p.at_start(false, false, second), AtStart::Start);
        assert_eq!(p.at_start(true, true, second), AtStart::Start, "handed over in place: it is ours");
        assert_eq!(p.at_start(true, false, second), AtStart::Listen(Duration::from_millis(1500)));
        let other: IpAddr = "198.51.100.12".parse().unwrap();
        assert_eq!(Policy::leftover(Some(other)), Leftover::Remove(other));
        assert_eq!(Policy::leftover(None), Leftover::Resume);
    }
}
