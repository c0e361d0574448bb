//! What one scenario run did to the client and to the VIP, computed from the log of the whole run: pure
//! functions, unit-tested.

use serde::Serialize;

use super::record::{Log, hosts};
use crate::net::Host;

/// The moments of one scenario run, in the run clock's seconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    /// Where its picture starts (a little before the fault).
    pub start: f64,
    /// When the fault was applied.
    pub fault: f64,
    /// When the fault was removed, for faults that are.
    pub restore: Option<f64>,
    /// When the world was steady again (or the scenario gave up waiting).
    pub end: f64,
}

/// The figures of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Client-visible outages: each from a failed TCP connect to the next one that succeeded.
    pub outages: Vec<f64>,
    /// From the first failed connect to the last recovery: the stretch in which the client saw trouble.
    pub outage_span: f64,
    /// Whether the last outage lasted to the end of the window.
    pub outage_open: bool,
    /// TCP connects started in the window, and how many failed.
    pub connects: (usize, usize),
    /// The longest a connect started in the window took and still succeeded (0 when none took 50 ms).
    pub slowest_connect: f64,
    /// Seconds with the VIP on no master, and on two or more, from the fault to the end.
    pub on_none: f64,
    /// See `on_none`.
    pub on_two: f64,
    /// When the VIP was on exactly one master for good: seconds after the fault, or after the restore when
    /// that came later (`settled_after_restore`). `None`: not on exactly one at the end.
    pub settled: Option<f64>,
    /// See `settled`.
    pub settled_after_restore: bool,
    /// kubectl requests started in the window, and how many failed.
    pub requests: (usize, usize),
    /// Why kubectl requests failed: each distinct reason with its count.
    pub request_errors: Vec<(String, usize)>,
    /// Whether the watch printed an event after the fault was over (after the restore, or the fault).
    pub watch_resumed: bool,
    /// How often the watch had to be started again in the window.
    pub watch_restarts: usize,
    /// The longest the watch printed nothing, from the fault (or its last event before) to the end: a
    /// watch on a connection that died without a word stays silent until TCP notices.
    pub watch_silence: f64,
    /// The first master other than the one holding the VIP at the fault to hold it alone, and how long
    /// after the fault.
    pub took_over: Option<(String, f64)>,
    /// How long after the fault the VIP was first off every master that held it at the fault (the
    /// faulty one, for faults on the active master): `None` if it never left them in the window.
    pub left_faulty: Option<f64>,
    /// Who holds the VIP at the end.
    pub holders_at_end: Vec<String>,
}

impl Figures {
    /// The longest client-visible outage.
    pub fn worst_outage(&self) -> f64 {
        self.outages.iter().copied().fold(0.0, f64::max)
    }
}

/// The figures of the run in `w`.
pub fn figures(log: &Log, w: &Window) -> Figures {
    let mut f = Figures::default();
    let mut connects: Vec<(f64, bool)> =
        log.connects.iter().copied().filter(|(t, _)| *t >= w.fault && *t <= w.end).collect();
    connects.sort_by(|a, b| a.0.total_cmp(&b.0));
    f.connects = (connects.len(), connects.iter().filter(|(_, ok)| !ok).count());
    f.slowest_connect = log
        .slow_connects
        .iter()
        .filter(|(t, _)| *t >= w.fault && *t <= w.end)
        .map(|(_, took)| *took)
        .fold(0.0, f64::max);
    let mut failing_since = None;
    let mut first_failure = None;
    for (t, ok) in connects {
        match (ok, failing_since) {
            (false, None) => {
                failing_since = Some(t);
                first_failure.get_or_insert(t);
            }
            (true, Some(since)) => {
                f.outages.push(t - since);
                f.outage_span = t - first_failure.unwrap_or(since);
                failing_since = None;
            }
            _ => {}
        }
    }
    if let Some(since) = failing_since {
        f.outages.push(w.end - since);
        f.outage_span = w.end - first_failure.unwrap_or(since);
        f.outage_open = true;
    }

    // Holder stretches from the fault to the end.
    let mut changes: Vec<(f64, u8)> = vec![(w.fault, log.holders_at(w.fault))];
    changes.extend(log.holders.iter().copied().filter(|(t, _)| *t > w.fault && *t <= w.end));
    let mut settle = None;
    for (i, (t, mask)) in changes.iter().enumerate() {
        let until = changes.get(i + 1).map_or(w.end, |c| c.0);
        match mask.count_ones() {
            0 => f.on_none += until - t,
            1 => {}
            _ => f.on_two += until - t,
        }
        settle = if mask.count_ones() == 1 { settle.or(Some(*t)) } else { None };
    }
    let before = changes[0].1;
    f.took_over = changes
        .iter()
        .find(|(_, m)| m.count_ones() == 1 && m & before == 0)
        .map(|(t, m)| (hosts(*m)[0].name(), (t - w.fault).max(0.0)));
    f.left_faulty =
        changes.iter().find(|(_, m)| m & before == 0).filter(|_| before != 0).map(|(t, _)| (t - w.fault).max(0.0));
    let end_mask = changes.last().map_or(0, |c| c.1);
    f.holders_at_end = hosts(end_mask).iter().map(Host::name).collect();
    if let Some(t) = settle {
        match w.restore {
            Some(r) if t >= r => {
                f.settled = Some(t - r);
                f.settled_after_restore = true;
            }
            _ => f.settled = Some((t - w.fault).max(0.0)),
        }
    }

    let requests: Vec<_> = log.requests.iter().filter(|(t, _, _)| *t >= w.fault && *t <= w.end).collect();
    f.requests = (requests.len(), requests.iter().filter(|(_, _, ok)| !ok).count());
    for (_, why) in log.request_errors.iter().filter(|(t, _)| *t >= w.fault && *t <= w.end) {
        // The reason without addresses and ports, so that the same failure on two backends counts once.
        let key: String =
            why.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit())).collect::<Vec<_>>().join(" ");
        match f.request_errors.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => f.request_errors.push((key, 1)),
        }
    }
    let over = w.restore.unwrap_or(w.fault);
    f.watch_resumed = log.watch_events.iter().any(|t| *t > over && *t <= w.end);
    f.watch_restarts = log.watch_starts.iter().filter(|t| **t > w.fault && **t <= w.end).count();
    let mut events: Vec<f64> = log.watch_events.iter().copied().filter(|t| *t <= w.end).collect();
    events.sort_by(f64::total_cmp);
    let from = events.iter().copied().rfind(|t| *t <= w.fault).unwrap_or(w.fault);
    let mut last = from;
    for t in events.into_iter().filter(|t| *t > w.fault).chain([w.end]) {
        f.watch_silence = f.watch_silence.max(t - last);
        last = t;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NODES;

    fn window() -> Window {
        Window { start: 0.0, fault: 1.0, restore: Some(5.0), end: 10.0 }
    }

    #[test]
    fn the_watch_is_silent_from_its_last_event_before_the_fault_to_its_next() {
        let log = Log { watch_events: vec![0.2, 0.8, 2.0, 7.5, 9.0], ..Log::default() };
        assert_eq!(figures(&log, &window()).watch_silence, 5.5);
        let log = Log { watch_events: vec![0.8, 2.0], ..Log::default() };
        assert_eq!(figures(&log, &window()).watch_silence, 8.0, "silent from 2.0 to the end");
    }

    #[test]
    fn a_slow_connect_in_the_window_is_a_delay_not_an_outage() {
        let log = Log {
            connects: vec![(0.5, true), (2.0, true), (3.0, true)],
            slow_connects: vec![(0.5, 0.9), (2.0, 0.4), (3.0, 0.1)],
            ..Log::default()
        };
        let f = figures(&log, &window());
        assert_eq!((f.connects, f.outages.len()), ((2, 0), 0));
        assert_eq!(f.slowest_connect, 0.4, "the one before the fault is not counted");
    }

    #[test]
    fn an_outage_runs_from_the_first_failed_connect_to_the_next_good_one() {
        // Completion order differs from start order: results are sorted by start.
        let log = Log {
            connects: vec![(0.5, false), (1.0, true), (1.03, false), (1.01, false), (1.02, false), (1.5, true)],
            ..Log::default()
        };
        let f = figures(&log, &window());
        assert_eq!(f.connects, (5, 3));
        assert_eq!(f.slowest_connect, 0.0);
        assert_eq!(f.outages.len(), 1);
        assert!((f.outages[0] - 0.49).abs() < 1e-9, "{:?}", f.outages);
        assert!(!f.outage_open);

        let log = Log { connects: vec![(2.0, false), (3.0, true), (7.0, false)], ..Log::default() };
        let f = figures(&log, &window());
        assert_eq!(f.outages, [1.0, 3.0]);
        assert_eq!(f.outage_span, 8.0, "from the first failure at 2 to the end");
        assert!(f.outage_open, "still failing at the end");
        assert_eq!(f.worst_outage(), 3.0);
    }

    #[test]
    fn holder_stretches_and_when_one_master_holds_it_for_good() {
        // n1 holds; the fault at 1; n2 joins at 2 (two holders), n1 drops at 2.5; restore at 5; n1 preempts
        // through a gap at 6.0–6.1.
        let log = Log {
            holders: vec![(0.0, 0b001), (2.0, 0b011), (2.5, 0b010), (6.0, 0b000), (6.1, 0b001)],
            ..Log::default()
        };
        let f = figures(&log, &window());
        assert!((f.on_two - 0.5).abs() < 1e-9);
        assert!((f.on_none - 0.1).abs() < 1e-9);
        assert!(f.settled_after_restore);
        assert!((f.settled.unwrap() - 1.1).abs() < 1e-9);
        assert_eq!(f.holders_at_end, [NODES[0].name()]);
        let (who, after) = f.took_over.clone().unwrap();
        assert_eq!(who, NODES[1].name(), "n2 was the first other master alone with the VIP");
        assert!((after - 1.5).abs() < 1e-9);
        assert!((f.left_faulty.unwrap() - 1.5).abs() < 1e-9, "n1 dropped it at 2.5, 1.5 s after the fault");

        // The faulty master never let go.
        let log = Log { holders: vec![(0.0, 0b001), (2.0, 0b011)], ..Log::default() };
        assert_eq!(figures(&log, &window()).left_faulty, None);

        // Settled during the fault: measured from the fault.
        let log = Log { holders: vec![(0.0, 0b001), (1.5, 0b011), (1.8, 0b010)], ..Log::default() };
        let f = figures(&log, &window());
        assert!(!f.settled_after_restore);
        assert!((f.settled.unwrap() - 0.8).abs() < 1e-9);

        // Never one holder at the end.
        let log = Log { holders: vec![(0.0, 0b001), (1.5, 0b011)], ..Log::default() };
        assert_eq!(figures(&log, &window()).settled, None);
    }

    #[test]
    fn the_watch_resumes_with_an_event_after_the_restore() {
        let mut log = Log { watch_events: vec![0.5, 4.0], watch_starts: vec![0.0, 3.0], ..Log::default() };
        let f = figures(&log, &window());
        assert!(!f.watch_resumed, "an event during the fault is not a resumed watch");
        assert_eq!(f.watch_restarts, 1);
        log.watch_events.push(6.0);
        assert!(figures(&log, &window()).watch_resumed);
    }
}
