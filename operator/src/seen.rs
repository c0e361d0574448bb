//! When the operator last saw a value change, by its own monotonic clock.
//!
//! Agents stamp their heartbeats with their nodes' wall clocks. Compared with the operator's wall clock, a
//! node a minute ahead looks alive a minute after it died, and a node a minute behind never looks alive at
//! all. What the operator can know without trusting anyone's clock is *when it saw a stamp change*: an agent
//! that renews keeps changing it, a dead one stops. The agent judges its peers the same way (it notes a
//! Lease's resourceVersion change on its own clock). A value seen for the first time counts as just
//! changed: after the operator starts, a member that is already gone turns stale one timeout later.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Values by key (`heartbeat:<member>`, `lease:<member>`, …) and when each last changed.
#[derive(Debug, Default)]
pub struct Sightings {
    values: HashMap<String, (String, Instant)>,
}

impl Sightings {
    /// Notes that `key` reads `value` at `now`.
    pub fn note(&mut self, key: String, value: String, now: Instant) {
        match self.values.get_mut(&key) {
            Some((v, _)) if *v == value => {}
            Some(entry) => *entry = (value, now),
            None => drop(self.values.insert(key, (value, now))),
        }
    }

    /// Forgets `key` (its object was deleted).
    pub fn forget(&mut self, key: &str) {
        self.values.remove(key);
    }

    /// How long before `now` the value of `key` last changed; `None` if it was never seen.
    pub fn age(&self, key: &str, now: Instant) -> Option<Duration> {
        self.values.get(key).map(|(_, at)| now.saturating_duration_since(*at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_counts_from_the_last_change_not_the_last_look() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut seen = Sightings::default();
        assert_eq!(seen.age("k", at(0)), None);
        seen.note("k".into(), "a".into(), at(0));
        seen.note("k".into(), "a".into(), at(5));
        assert_eq!(seen.age("k", at(7)), Some(Duration::from_secs(7)), "the same value again is no change");
        seen.note("k".into(), "b".into(), at(8));
        assert_eq!(seen.age("k", at(9)), Some(Duration::from_secs(1)));
        seen.forget("k");
        assert_eq!(seen.age("k", at(9)), None);
    }
}
