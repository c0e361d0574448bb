//! Quorum fencing, pure: a member's own heartbeat renewals and what the API shows of the others' go in,
//! with the time; whether it is fenced, whom it finds stale, its boost and whether to take the VIP over come
//! out. No I/O and no clock of its own ([`super::heartbeat`] does the renewing and reading). The rules and
//! why: docs/adr/0004.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// The fencing state of one member, from its own renewals and its view of the others' heartbeats.
#[derive(Debug)]
pub struct Fencing {
    renew_deadline: Duration,
    started: Instant,
    last_renewal: Option<Instant>,
    /// Each other member: the resourceVersion of its heartbeat Lease and when that last changed here;
    /// members never seen with a Lease are not here (see [`Fencing::observe`]).
    peers: HashMap<String, (Option<String>, Instant)>,
    /// The other members whose last status says they hold the VIP.
    holding: Vec<String>,
}

impl Fencing {
    /// Starts with a grace of one renew deadline: nobody is judged before they could have renewed.
    pub fn new(renew_deadline: Duration, now: Instant) -> Self {
        Self { renew_deadline, started: now, last_renewal: None, peers: HashMap::new(), holding: Vec::new() }
    }

    /// A renewal that started at `at` succeeded; renewals are tried every `period`. The time this member
    /// itself could not renew (beyond one period since its last success) is added to every other member's
    /// deadline: their API servers were likely as slow or as down, and they get the same chance. Without
    /// this, the first member to renew after an outage of the whole control plane found every other Lease
    /// unchanged since before the outage, judged them stale and took the VIP (seen once in a full test run).
    /// A full reset of the others' deadlines after any gap instead (the first version) let renewals that
    /// fail now and then under load postpone fencing for good (also seen in a full test run).
    pub fn renewed(&mut self, at: Instant, period: Duration) {
        if let Some(prev) = self.last_renewal {
            let lost = at.saturating_duration_since(prev).saturating_sub(period);
            for (_, changed) in self.peers.values_mut() {
                *changed = (*changed + lost).min(at).max(*changed);
            }
        }
        self.last_renewal = Some(at);
    }

    /// A new renewDeadline (the member's election settings changed), from the next judgement on.
    pub fn set_renew_deadline(&mut self, renew_deadline: Duration) {
        self.renew_deadline = renew_deadline;
    }

    /// Whether this member cannot renew: its own deadline — the start of its last successful renewal plus
    /// renewDeadline — has passed.
    pub fn fenced(&self, now: Instant) -> bool {
        now >= self.last_renewal.unwrap_or(self.started) + self.renew_deadline
    }

    /// Records what the API shows of the other members: their heartbeat Leases' resourceVersions (`None`:
    /// no Lease). Members no longer listed are forgotten. A member not yet seen with a Lease is not judged:
    /// its agent has not renewed once, so it is starting (agents start seconds apart), and if it never
    /// renews its own deadline fences it. Judging it stale after the grace boosted only the members that
    /// started first, and moved the VIP away from the highest priority and back once the late one renewed
    /// (a full test run). Once seen with a Lease, a member whose Lease stops changing or vanishes is judged.
    pub fn observe(&mut self, now: Instant, peers: &[Peer]) {
        self.peers.retain(|name, _| peers.iter().any(|p| p.name == *name));
        self.holding = peers.iter().filter(|p| p.holds_vip).map(|p| p.name.clone()).collect();
        for Peer { name, lease_version: version, .. } in peers {
            match self.peers.get_mut(name) {
                Some((v, changed)) if v != version => {
                    *v = version.clone();
                    *changed = now;
                }
                Some(_) => {}
                None if version.is_some() => {
                    self.peers.insert(name.clone(), (version.clone(), now));
                }
                None => {}
            }
        }
    }

    /// The members whose heartbeat had not changed for renewDeadline when this member last renewed: their
    /// own deadlines have passed, so they have stopped counting themselves as renewing, and this member
    /// still could after that. The second half matters when every API server goes down one after the other
    /// within a deadline: the last member to lose its own would otherwise see the first ones go stale while
    /// its own deadline is still running, rise for those few seconds and take the VIP, only to fall back
    /// and hand it on (seen in a soak: n3 → n2 → n1 while every API server was down). Judging by the last
    /// renewal instead of the clock costs fencing at most one retry period.
    pub fn stale(&self, now: Instant) -> Vec<String> {
        let Some(renewed) = self.last_renewal else { return Vec::new() };
        let proof = renewed.min(now);
        let mut out: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, (_, changed))| proof >= *changed + self.renew_deadline)
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }

    /// The boost to apply: `boost` while this member renews and another does not.
    pub fn boost(&self, now: Instant, boost: u8) -> u8 {
        if boost > 0 && !self.fenced(now) && !self.stale(now).is_empty() { boost } else { 0 }
    }

    /// Whether to preempt the VIP holder whatever the preempt mode: this member renews, and the holder does
    /// not. (A stale member that does not hold the VIP raises every renewing member alike and moves nothing.)
    /// While a member that renews also says it holds the VIP, there is nothing to take over: that member is
    /// the master this side of a partition, and the stale holder's status is only the last it could write
    /// (a full test run saw n2 preempt the majority's master n3 for an isolated n1 that had long lost the
    /// VIP, in the second between n3's boost ending and n2's).
    pub fn take_over(&self, now: Instant) -> bool {
        let stale = self.stale(now);
        !self.fenced(now) && !self.holding.is_empty() && self.holding.iter().all(|h| stale.contains(h))
    }
}

/// Another member of the cluster, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The member's name.
    pub name: String,
    /// The resourceVersion of its heartbeat Lease; `None` without one.
    pub lease_version: Option<String>,
    /// Whether its last status says it holds the VIP.
    pub holds_vip: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn a_member_that_stops_renewing_is_fenced_on_its_own_deadline() {
        let s = Instant::now();
        let mut f = Fencing::new(Duration::from_secs(10), s);
        assert!(!f.fenced(t(s, 9)), "grace of one deadline after start");
        assert!(f.fenced(t(s, 10)));
        f.renewed(t(s, 8), Duration::from_secs(2));
        assert!(!f.fenced(t(s, 17)));
        assert!(f.fenced(t(s, 18)), "last renewal start + renewDeadline");
    }

    #[test]
    fn renewing_members_are_boosted_only_while_another_member_is_stale() {
        let s = Instant::now();
        let mut f = Fencing::new(Duration::from_secs(10), s);
        let peers = |a: &str, b: &str| {
            vec![
                Peer { name: "c-n2".into(), lease_version: Some(a.into()), holds_vip: false },
                Peer { name: "c-n3".into(), lease_version: Some(b.into()), holds_vip: true },
            ]
        };
        for i in 0..6 {
            f.renewed(t(s, i * 2), Duration::from_secs(2));
            f.observe(t(s, i * 2), &peers(&format!("{i}"), &format!("{i}")));
        }
        assert_eq!(f.boost(t(s, 11), 21), 0, "everyone renews");
        // n3's Lease stops changing at t=10.
        for i in 6..12 {
            f.renewed(t(s, i * 2), Duration::from_secs(2));
            f.observe(t(s, i * 2), &peers(&format!("{i}"), "5"));
        }
        assert_eq!(f.stale(t(s, 19)), Vec::<String>::new(), "within n3's renew deadline");
        assert_eq!(f.stale(t(s, 20)), vec!["c-n3".to_string()]);
        assert_eq!(f.boost(t(s, 22), 21), 21, "this member renews, n3 does not");
        assert!(f.take_over(t(s, 22)), "and n3 holds the VIP: preempt it");
        // This member stops renewing too (the whole control plane is down): nobody is boosted.
        assert_eq!(f.boost(t(s, 32), 21), 0, "its own deadline passed at 22 + 10");
        assert_eq!(f.boost(t(s, 22), 0), 0, "no boost configured");
    }

    /// Fencing that renewed at `s` and saw n3, holding the VIP, with its Lease at version 1.
    fn renewing_with_n3(renew_deadline: u64, retry: Duration) -> (Instant, Fencing) {
        let s = Instant::now();
        let mut f = Fencing::new(Duration::from_secs(renew_deadline), s);
        f.renewed(s, retry);
        f.observe(s, &n3_at("1"));
        (s, f)
    }

    fn n3_at(version: &str) -> Vec<Peer> {
        vec![Peer { name: "c-n3".into(), lease_version: Some(version.into()), holds_vip: true }]
    }

    #[test]
    fn after_an_outage_of_every_api_server_the_others_get_a_full_deadline_to_renew() {
        let retry = Duration::from_secs(2);
        let (s, mut f) = renewing_with_n3(10, retry);
        let peer = n3_at;
        // Nobody renews from t=1 to t=30. This member is back first, at t=30; n3's Lease is as it was.
        f.renewed(t(s, 30), retry);
        f.observe(t(s, 30), &peer("1"));
        assert!(f.stale(t(s, 31)).is_empty(), "n3 has not had its chance to renew yet");
        assert!(!f.take_over(t(s, 31)));
        // n3 does not renew within a deadline of this member being back (at 28, with the 28 s this member
        // lost): stale once this member has renewed after 38.
        for at in [32, 34, 36] {
            f.renewed(t(s, at), retry);
        }
        f.observe(t(s, 38), &peer("1"));
        assert!(f.stale(t(s, 38)).is_empty(), "this member has not renewed since n3's deadline");
        f.renewed(t(s, 38), retry);
        f.observe(t(s, 38), &peer("1"));
        assert_eq!(f.stale(t(s, 38)), vec!["c-n3".to_string()]);
        assert!(f.take_over(t(s, 38)));
    }

    #[test]
    fn a_renewal_that_fails_now_and_then_postpones_fencing_only_by_the_time_lost() {
        let retry = Duration::from_secs(1);
        let (s, mut f) = renewing_with_n3(4, retry);
        let peer = n3_at;
        // n3 stops renewing at 0. This member renews at 1 and 2, fails once, and is back at 4 (2 s lost: 1 s
        // beyond a period): n3 gets until 0 + 1 + 4 = 5, not a new deadline from 4.
        f.renewed(t(s, 1), retry);
        f.renewed(t(s, 2), retry);
        f.renewed(t(s, 4), retry);
        f.observe(t(s, 4), &peer("1"));
        assert!(f.stale(t(s, 4)).is_empty());
        f.renewed(t(s, 5), retry);
        f.observe(t(s, 5), &peer("1"));
        assert_eq!(f.stale(t(s, 5)), vec!["c-n3".to_string()], "stale one lost second after its deadline");
    }

    #[test]
    fn members_that_lose_their_api_servers_one_after_the_other_within_a_deadline_do_not_rise() {
        // Every API server stops, n3's (holding the VIP) first at 0, this member's at 4: this member's last
        // renewal was at 4, so n3's deadline (0 + 10) passes when this member can no longer prove anything.
        let retry = Duration::from_secs(2);
        let (s, mut f) = renewing_with_n3(10, retry);
        for at in [2, 4] {
            f.renewed(t(s, at), retry);
            f.observe(t(s, at), &n3_at("1"));
        }
        for at in 10..=15 {
            assert!(f.stale(t(s, at)).is_empty(), "at {at} s");
            assert_eq!(f.boost(t(s, at), 21), 0, "at {at} s");
            assert!(!f.take_over(t(s, at)), "at {at} s");
        }
        assert!(f.fenced(t(s, 14)), "and from 14 on this member is fenced itself");
        // Had this member kept renewing, n3 would be stale at its first renewal from 10 on.
        let (s, mut f) = renewing_with_n3(10, retry);
        for at in (2..=10).step_by(2) {
            f.renewed(t(s, at), retry);
            f.observe(t(s, at), &n3_at("1"));
        }
        assert_eq!(f.boost(t(s, 10), 21), 21);
        assert!(f.take_over(t(s, 10)));
    }

    #[test]
    fn a_member_not_yet_seen_with_a_lease_is_never_stale_and_removed_members_are_forgotten() {
        // Agents start seconds apart (image pulls, scheduling): a member whose agent has not renewed yet is
        // starting, not failing, and its own deadline fences it if it never renews. Judging it stale boosted
        // the early starters only and moved the VIP away from the highest priority and back (a full test run).
        let s = Instant::now();
        let mut f = Fencing::new(Duration::from_secs(10), s);
        let n2 = |lease: Option<&str>, holds_vip| Peer {
            name: "c-n2".into(),
            lease_version: lease.map(Into::into),
            holds_vip,
        };
        for at in (0..=30).step_by(2) {
            f.observe(t(s, at), &[n2(None, true)]);
            f.renewed(t(s, at), Duration::from_secs(2));
        }
        assert!(f.stale(t(s, 30)).is_empty(), "n2 never renewed: starting, not stale");
        assert!(!f.take_over(t(s, 30)));
        // Once n2 has renewed, its Lease going silent or vanishing makes it stale like any member.
        f.observe(t(s, 31), &[n2(Some("7"), true)]);
        f.observe(t(s, 33), &[n2(None, true)]);
        for at in (32..=44).step_by(2) {
            f.renewed(t(s, at), Duration::from_secs(2));
        }
        assert!(f.stale(t(s, 42)).is_empty(), "within the deadline since its Lease vanished");
        assert_eq!(f.stale(t(s, 44)), vec!["c-n2".to_string()]);
        assert!(f.take_over(t(s, 44)), "a stale holder is preempted");
        f.observe(t(s, 45), &[]);
        assert!(f.stale(t(s, 60)).is_empty());
    }

    #[test]
    fn a_stale_holder_is_not_taken_over_while_a_renewing_member_holds_the_vip() {
        let retry = Duration::from_secs(1);
        let s = Instant::now();
        let mut f = Fencing::new(Duration::from_secs(4), s);
        let peers = |n1: &str, n3: &str, n3_holds: bool| {
            vec![
                Peer { name: "c-n1".into(), lease_version: Some(n1.into()), holds_vip: true },
                Peer { name: "c-n3".into(), lease_version: Some(n3.into()), holds_vip: n3_holds },
            ]
        };
        // n1 holds the VIP, then is cut off: its Lease and its status stop changing at t=0.
        for i in 0..6 {
            f.renewed(t(s, i), retry);
            f.observe(t(s, i), &peers("1", &format!("{i}"), false));
        }
        assert!(f.take_over(t(s, 5)), "n1 is stale and alone holds the VIP: preempt it");
        // The majority elected n3 and its status says so: n1's status is only the last it could write.
        f.renewed(t(s, 6), retry);
        f.observe(t(s, 6), &peers("1", "6", true));
        assert_eq!(f.stale(t(s, 6)), vec!["c-n1".to_string()]);
        assert!(!f.take_over(t(s, 6)), "n3 renews and holds the VIP: nothing to take over");
        assert!(f.boost(t(s, 6), 21) > 0, "the boost stays: n1 is still stale");
    }
}
