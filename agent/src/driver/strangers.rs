//! Routers on this VRID that are not members of the cluster. In cluster mode the operator lists every
//! member's advert source (spec.vrrp.members); an advert from any other address is a stranger's: a
//! keepalived on the same VRID, another cluster's agent, a forgotten test box. It is counted, reported in
//! the member's status (the operator raises Conflict with reason StrangerOnVRID), and, unless the policy is
//! Elect (a migration from keepalived), left out of the election, so that it can neither take the VIP from
//! the members nor make them drop it. Without a member list (a standalone agent, or before every member
//! has reported its source) every router is a peer, as RFC 9568 has it; one that announces other
//! addresses is still counted and reported, since two virtual routers share one VRID.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::metrics::VrrpMetrics;

/// How long a stranger stays reported after its last advert.
pub(super) const FORGET_AFTER: Duration = Duration::from_secs(60);
/// At most this many strangers are reported; more are counted only.
const MAX_REPORTED: usize = 8;

/// A stranger as the member's status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stranger {
    /// Its adverts' source address.
    pub from: IpAddr,
    /// The addresses it announces.
    pub announced: Vec<IpAddr>,
    /// The priority of its latest advert.
    pub priority: u8,
    /// Whether it takes part in the election.
    pub elected: bool,
    /// When it was first heard (since its last minute of silence).
    pub since: SystemTime,
}

/// Who the members are, what strangers do, and the strangers heard lately.
#[derive(Debug, Default)]
pub(super) struct Strangers {
    members: Vec<IpAddr>,
    elect: bool,
    seen: Vec<(Stranger, Instant)>,
}

impl Strangers {
    /// With the members' advert sources (empty: everyone is a peer) and whether strangers take part.
    pub(super) fn new(members: Vec<IpAddr>, elect: bool) -> Self {
        Self { members, elect, seen: Vec::new() }
    }

    /// Whether strangers take part in the election (`spec.vrrp.strangers: Elect`, a migration).
    pub(super) fn elect(&self) -> bool {
        self.elect
    }

    /// New members or policy: a stranger that is now a member is no longer reported.
    pub(super) fn set(&mut self, members: Vec<IpAddr>, elect: bool) {
        self.seen.retain(|(s, _)| !members.contains(&s.from) || members.is_empty());
        for (s, _) in &mut self.seen {
            s.elected = elect || members.is_empty();
        }
        self.members = members;
        self.elect = elect;
    }

    /// Whether the advert from `from` announcing `announced` at `priority` takes part in the election, where
    /// this virtual router announces `ours`; counted and remembered when it is a stranger's.
    pub(super) fn hear(
        &mut self,
        from: IpAddr,
        announced: &[IpAddr],
        priority: u8,
        ours: &[IpAddr],
        now: Instant,
        metrics: &VrrpMetrics,
    ) -> bool {
        let outsider = !self.members.is_empty() && !self.members.contains(&from);
        // Every advert passes here: compared as sets in place (a VIP has a handful of addresses at most).
        let other_addresses = announced.len() != ours.len() || !announced.iter().all(|a| ours.contains(a));
        if outsider {
            metrics.stranger("source");
        }
        if other_addresses {
            metrics.stranger("addresses");
        }
        let takes_part = !outsider || self.elect;
        // A member that announces other addresses is a member in the middle of a VIP change: counted only.
        if outsider || (self.members.is_empty() && other_addresses) {
            let mut theirs = announced.to_vec();
            theirs.sort_unstable();
            let room = self.seen.len() < MAX_REPORTED;
            match self.seen.iter_mut().find(|(s, _)| s.from == from) {
                Some((s, last)) => {
                    s.announced = theirs;
                    s.priority = priority;
                    *last = now;
                }
                None if room => {
                    tracing::warn!(%from, announced = ?theirs, priority, elected = takes_part,
                        "a router that is not a member of this cluster advertises this VRID{}",
                        if takes_part { "" } else { ": left out of the election" });
                    let s =
                        Stranger { from, announced: theirs, priority, elected: takes_part, since: SystemTime::now() };
                    self.seen.push((s, now));
                }
                None => {}
            }
        }
        takes_part
    }

    /// Forgets the strangers silent for [`FORGET_AFTER`]; whether any was forgotten.
    pub(super) fn forget(&mut self, now: Instant) -> bool {
        let before = self.seen.len();
        self.seen.retain(|(s, last)| {
            let silent = now.duration_since(*last) >= FORGET_AFTER;
            if silent {
                tracing::info!(from = %s.from, "the stranger on this VRID fell silent");
            }
            !silent
        });
        self.seen.len() != before
    }

    /// The strangers heard lately, first heard first.
    pub(super) fn reported(&self) -> Vec<Stranger> {
        self.seen.iter().map(|(s, _)| s.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn counted(m: &VrrpMetrics, reason: &str) -> u64 {
        m.stranger_adverts.get_or_create(&crate::metrics::Reason { reason: reason.into() }).get()
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_member_is_counted_reported_and_left_out_unless_elected() {
        let m = VrrpMetrics::default();
        let vip = [ip("198.51.100.10")];
        let mut s = Strangers::new(vec![ip("198.51.100.11"), ip("198.51.100.12")], false);
        let now = Instant::now();
        assert!(s.hear(ip("198.51.100.12"), &vip, 100, &vip, now, &m), "a member takes part");
        assert!(!s.hear(ip("198.51.100.31"), &[ip("198.51.100.99")], 254, &vip, now, &m));
        assert!(!s.hear(ip("198.51.100.31"), &[ip("198.51.100.99")], 253, &vip, now, &m));
        assert_eq!((counted(&m, "source"), counted(&m, "addresses")), (2, 2));
        let r = s.reported();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].from, r[0].announced.clone(), r[0].priority, r[0].elected),
            (ip("198.51.100.31"), vec![ip("198.51.100.99")], 253, false)
        );

        // A migration: the stranger takes part, and says so.
        s.set(vec![ip("198.51.100.11"), ip("198.51.100.12")], true);
        assert!(s.reported()[0].elected);
        assert!(s.hear(ip("198.51.100.31"), &vip, 200, &vip, now, &m));
        // It becomes a member: no longer reported.
        s.set(vec![ip("198.51.100.11"), ip("198.51.100.12"), ip("198.51.100.31")], false);
        assert!(s.reported().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn without_members_everyone_takes_part_and_only_other_addresses_are_reported() {
        let m = VrrpMetrics::default();
        let vip = [ip("198.51.100.10"), ip("198.51.100.20")];
        let mut s = Strangers::new(Vec::new(), false);
        let now = Instant::now();
        let reordered = [ip("198.51.100.20"), ip("198.51.100.10")];
        assert!(s.hear(ip("198.51.100.12"), &reordered, 100, &vip, now, &m), "the same set in another order");
        assert!(s.reported().is_empty());
        assert!(s.hear(ip("198.51.100.31"), &[ip("198.51.100.99")], 254, &vip, now, &m), "RFC 9568: a peer");
        assert_eq!((counted(&m, "source"), counted(&m, "addresses")), (0, 1));
        assert_eq!(s.reported()[0].from, ip("198.51.100.31"));
        assert!(s.reported()[0].elected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stranger_is_forgotten_after_a_minute_and_the_list_is_bounded() {
        let m = VrrpMetrics::default();
        let vip = [ip("198.51.100.10")];
        let mut s = Strangers::new(vec![ip("198.51.100.11")], false);
        for i in 0..20u8 {
            s.hear(IpAddr::from([198, 51, 100, 100 + i]), &vip, 100, &vip, Instant::now(), &m);
        }
        assert_eq!(s.reported().len(), MAX_REPORTED);
        assert_eq!(counted(&m, "source"), 20, "every advert is counted");
        tokio::time::advance(FORGET_AFTER - Duration::from_secs(1)).await;
        s.hear(IpAddr::from([198, 51, 100, 100]), &vip, 100, &vip, Instant::now(), &m);
        assert!(!s.forget(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.forget(Instant::now()));
        assert_eq!(s.reported().iter().map(|r| r.from).collect::<Vec<_>>(), vec![IpAddr::from([198, 51, 100, 100])]);
    }
}
