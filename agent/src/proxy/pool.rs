//! The backends, their health, and the choice of one for a new client.
//!
//! Selection reads a lock-free snapshot of the backends in rotation; only health flips and list changes
//! take a lock and publish a new snapshot. Health is fast down, slow up: `fall` failed checks in a row, or
//! one client whose connect was refused or timed out, take a backend out at once; `rise` good checks in a
//! row bring it back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use kubeha_crds::Balance;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};

use crate::health::Threshold;
use crate::metrics::{BackendDetail, BackendLabel, ProxyMetrics};

/// One kube-apiserver behind the proxy.
#[derive(Debug)]
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    health: Mutex<Health>,
    active: AtomicUsize,
    /// Bumped when open connections must close: the backend turned unhealthy or left the list.
    closing: watch::Sender<u64>,
    /// Wakes the active checker before its interval: a client just failed to connect.
    pub(super) check_now: Notify,
    /// Set when the backend left the list; its checker stops.
    pub(super) retired: watch::Sender<bool>,
    gauge: Gauge,
    connections: Counter,
    up: Gauge,
    pub(super) bytes_to_backend: Counter,
    pub(super) bytes_to_client: Counter,
    pub(super) closed_on_down: Counter,
}

#[derive(Debug)]
struct Health {
    threshold: Threshold,
    detail: String,
}

/// What the proxy knows of one backend, for status and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendView {
    /// Its address.
    pub addr: SocketAddr,
    /// In rotation: `None` before the first check (then it is tried), `Some(false)` when out.
    pub healthy: Option<bool>,
    /// What the last check or failed connect saw.
    pub detail: String,
    /// Open client connections.
    pub active: usize,
}

/// Where a health result came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// An active check.
    Check,
    /// A client's connect that was refused or timed out: takes the backend out at once.
    Connect,
}

impl Backend {
    fn new(addr: SocketAddr, rise: u32, fall: u32, metrics: &ProxyMetrics) -> Self {
        let label = BackendLabel { backend: addr.to_string() };
        let bytes = |kind: &str| {
            metrics.bytes.get_or_create(&BackendDetail { backend: addr.to_string(), kind: kind.into() }).clone()
        };
        Self {
            addr,
            health: Mutex::new(Health { threshold: Threshold::new(rise, fall), detail: "not checked yet".into() }),
            active: AtomicUsize::new(0),
            closing: watch::Sender::new(0),
            check_now: Notify::new(),
            retired: watch::Sender::new(false),
            gauge: metrics.active.get_or_create(&label).clone(),
            connections: metrics.connections.get_or_create(&label).clone(),
            up: metrics.up.get_or_create(&label).clone(),
            bytes_to_backend: bytes("to_backend"),
            bytes_to_client: bytes("to_client"),
            closed_on_down: metrics.closed_on_backend_down.get_or_create(&label).clone(),
        }
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        // A poisoned lock only means a panic elsewhere while holding it; the threshold is still consistent.
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether new clients may be sent here: not known to be down.
    pub fn in_rotation(&self) -> bool {
        self.health().threshold.state() != Some(false)
    }

    /// Open client connections.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a client connection for as long as the guard lives.
    pub fn open(self: &Arc<Self>) -> OpenGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.gauge.inc();
        self.connections.inc();
        OpenGuard(self.clone())
    }

    /// A receiver that changes when open connections to this backend must close.
    pub fn closing(&self) -> watch::Receiver<u64> {
        self.closing.subscribe()
    }

    fn view(&self) -> BackendView {
        let h = self.health();
        BackendView { addr: self.addr, healthy: h.threshold.state(), detail: h.detail.clone(), active: self.active() }
    }
}

/// Keeps a connection counted on its backend.
#[derive(Debug)]
pub struct OpenGuard(Arc<Backend>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
    }
}

/// Every backend, and the snapshot of those in rotation.
#[derive(Debug)]
pub struct Pool {
    balance: Balance,
    rise: u32,
    fall: u32,
    close_on_down: bool,
    metrics: ProxyMetrics,
    all: ArcSwap<Vec<Arc<Backend>>>,
    ready: ArcSwap<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    /// Serialises writers (health flips, list changes) so that snapshots are never published out of order.
    write: Mutex<()>,
}

impl Pool {
    /// An empty pool.
    pub fn new(balance: Balance, rise: u32, fall: u32, close_on_down: bool, metrics: ProxyMetrics) -> Self {
        Self {
            balance,
            rise,
            fall,
            close_on_down,
            metrics,
            all: ArcSwap::from_pointee(Vec::new()),
            ready: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            write: Mutex::new(()),
        }
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the list: kept addresses keep their state and connections; new ones start unchecked (and
    /// in rotation); removed ones are retired and, with close-on-down, their connections closed. Returns
    /// the new backends, whose checkers the caller starts.
    pub fn set_backends(&self, addrs: &[SocketAddr]) -> Vec<Arc<Backend>> {
        let _w = self.writer();
        let old = self.all.load_full();
        let mut next = Vec::with_capacity(addrs.len());
        let mut added = Vec::new();
        for addr in addrs {
            if next.iter().any(|b: &Arc<Backend>| b.addr == *addr) {
                continue;
            }
            match old.iter().find(|b| b.addr == *addr) {
                Some(b) => next.push(b.clone()),
                None => {
                    let b = Arc::new(Backend::new(*addr, self.rise, self.fall, &self.metrics));
                    b.up.set(1);
                    added.push(b.clone());
                    next.push(b);
                }
            }
        }
        for gone in old.iter().filter(|b| !addrs.contains(&b.addr)) {
            gone.retired.send_replace(true);
            if self.close_on_down {
                gone.closing.send_modify(|n| *n += 1);
            }
            gone.up.set(0);
            tracing::info!(backend = %gone.addr, "proxy backend removed from the list");
        }
        for b in &added {
            tracing::info!(backend = %b.addr, "proxy backend added to the list");
        }
        self.all.store(Arc::new(next));
        self.publish();
        added
    }

    /// Every backend as the proxy sees it.
    pub fn backends(&self) -> Vec<BackendView> {
        self.all.load().iter().map(|b| b.view()).collect()
    }

    fn publish(&self) {
        let ready: Vec<_> = self.all.load().iter().filter(|b| b.in_rotation()).cloned().collect();
        self.ready.store(Arc::new(ready));
    }

    /// Records a health result and, on a flip, logs it, publishes the new snapshot and closes the
    /// backend's connections when it went down. Returns whether it flipped.
    pub fn record(&self, backend: &Backend, ok: bool, evidence: Evidence, detail: String) -> bool {
        let _w = self.writer();
        let (before, after) = {
            let mut h = backend.health();
            let before = h.threshold.state();
            match (ok, evidence) {
                (false, Evidence::Connect) => h.threshold.fail_now(),
                _ => h.threshold.record(ok),
            }
            h.detail.clone_from(&detail);
            (before, h.threshold.state())
        };
        if before == after || (before.is_none() && after == Some(true)) {
            // The first good check changes nothing: an unchecked backend is already in rotation.
            return false;
        }
        let up = after == Some(true);
        backend.up.set(i64::from(up));
        let kind = if up { "up" } else { "down" };
        self.metrics
            .transitions
            .get_or_create(&BackendDetail { backend: backend.addr.to_string(), kind: kind.into() })
            .inc();
        if up {
            tracing::info!(backend = %backend.addr, healthy = true, detail = %detail, "proxy backend is back in rotation");
        } else {
            tracing::warn!(backend = %backend.addr, healthy = false, detail = %detail, by = ?evidence,
                active = backend.active(), "proxy backend out of rotation");
            if self.close_on_down {
                backend.closing.send_modify(|n| *n += 1);
            }
        }
        self.publish();
        true
    }

    /// Picks a backend for a new client, skipping those this client already tried. Only backends in
    /// rotation are candidates; when none is, every backend is, so that checks failing for the wrong
    /// reason (a wrong CA) degrade to no checking instead of refusing every client.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Backend>> {
        let ready = self.ready.load();
        let all;
        let candidates: &[Arc<Backend>] = if ready.is_empty() {
            all = self.all.load();
            &all
        } else {
            &ready
        };
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotated = (0..n).map(|i| &candidates[(start + i) % n]).filter(|b| !tried.contains(&b.addr));
        match self.balance {
            Balance::RoundRobin => rotated.into_iter().next().cloned(),
            // Ties go to the first in rotated order, so equal loads still spread round-robin.
            Balance::LeastConnections => rotated.min_by_key(|b| b.active()).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 10 + i], 6443))
    }

    fn pool(balance: Balance) -> Pool {
        let p = Pool::new(balance, 2, 3, true, ProxyMetrics::default());
        p.set_backends(&[addr(1), addr(2), addr(3)]);
        p
    }

    fn picks(p: &Pool, n: usize) -> Vec<SocketAddr> {
        (0..n).map(|_| p.pick(&[]).unwrap().addr).collect()
    }

    fn backend(p: &Pool, a: SocketAddr) -> Arc<Backend> {
        p.all.load().iter().find(|b| b.addr == a).unwrap().clone()
    }

    #[test]
    fn round_robin_takes_each_backend_in_turn() {
        let p = pool(Balance::RoundRobin);
        assert_eq!(picks(&p, 6), [addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]);
    }

    #[test]
    fn a_refused_connect_takes_a_backend_out_at_once_and_rise_checks_bring_it_back() {
        let p = pool(Balance::RoundRobin);
        let b2 = backend(&p, addr(2));
        assert!(p.record(&b2, false, Evidence::Connect, "refused".into()));
        assert!(!picks(&p, 10).contains(&addr(2)));
        assert!(!p.record(&b2, true, Evidence::Check, "HTTP 200".into()), "one success is not rise=2");
        assert!(!picks(&p, 10).contains(&addr(2)));
        assert!(p.record(&b2, true, Evidence::Check, "HTTP 200".into()));
        assert!(picks(&p, 3).contains(&addr(2)));
    }

    #[test]
    fn failed_checks_need_fall_in_a_row() {
        let p = pool(Balance::RoundRobin);
        let b1 = backend(&p, addr(1));
        p.record(&b1, true, Evidence::Check, "HTTP 200".into());
        for _ in 0..2 {
            p.record(&b1, false, Evidence::Check, "HTTP 500".into());
        }
        assert!(picks(&p, 3).contains(&addr(1)), "two failures are fewer than fall=3");
        p.record(&b1, false, Evidence::Check, "HTTP 500".into());
        assert!(!picks(&p, 10).contains(&addr(1)));
        assert_eq!(p.backends()[0].healthy, Some(false));
        assert_eq!(p.backends()[0].detail, "HTTP 500");
    }

    #[test]
    fn a_client_never_gets_a_backend_it_tried_or_one_known_down() {
        let p = pool(Balance::RoundRobin);
        p.record(&backend(&p, addr(3)), false, Evidence::Connect, "timeout".into());
        for _ in 0..6 {
            let first = p.pick(&[]).unwrap().addr;
            let second = p.pick(&[first]).unwrap().addr;
            assert_ne!(first, second);
            assert!(![first, second].contains(&addr(3)));
            assert!(p.pick(&[first, second]).is_none(), "the down backend is not a candidate while others are up");
        }
    }

    #[test]
    fn with_every_backend_down_every_backend_is_tried() {
        let p = pool(Balance::RoundRobin);
        for i in 1..=3 {
            p.record(&backend(&p, addr(i)), false, Evidence::Connect, "refused".into());
        }
        let mut tried = Vec::new();
        while let Some(b) = p.pick(&tried) {
            tried.push(b.addr);
        }
        tried.sort();
        assert_eq!(tried, [addr(1), addr(2), addr(3)]);
    }

    #[test]
    fn least_connections_prefers_the_idlest_and_spreads_ties() {
        let p = pool(Balance::LeastConnections);
        let g1 = backend(&p, addr(1)).open();
        let g2 = backend(&p, addr(1)).open();
        let g3 = backend(&p, addr(2)).open();
        assert_eq!(p.pick(&[]).unwrap().addr, addr(3));
        let g4 = backend(&p, addr(3)).open();
        assert_eq!(p.pick(&[]).unwrap().addr, addr(2), "2 and 3 have one each, 1 has two: a tie between 2 and 3");
        drop((g1, g2));
        assert_eq!(p.pick(&[]).unwrap().addr, addr(1));
        drop((g3, g4));
        let mut spread = picks(&p, 3);
        spread.sort();
        assert_eq!(spread, [addr(1), addr(2), addr(3)], "all idle: round-robin among equals");
    }

    #[test]
    fn going_down_closes_open_connections_and_so_does_leaving_the_list() {
        let p = pool(Balance::RoundRobin);
        let b1 = backend(&p, addr(1));
        let rx = b1.closing();
        p.record(&b1, true, Evidence::Check, "HTTP 200".into());
        p.record(&b1, false, Evidence::Check, "x".into());
        assert!(!rx.has_changed().unwrap(), "one failure of three");
        p.record(&b1, false, Evidence::Connect, "refused".into());
        assert!(rx.has_changed().unwrap());
        let b2 = backend(&p, addr(2));
        let rx2 = b2.closing();
        p.set_backends(&[addr(1), addr(3)]);
        assert!(rx2.has_changed().unwrap());
        assert!(*b2.retired.borrow());
        assert_eq!(p.backends().iter().map(|b| b.addr).collect::<Vec<_>>(), [addr(1), addr(3)]);
        assert_eq!(p.backends()[0].healthy, Some(false), "kept backends keep their state");
    }

    #[test]
    fn without_close_on_down_connections_stay() {
        let p = Pool::new(Balance::RoundRobin, 2, 1, false, ProxyMetrics::default());
        p.set_backends(&[addr(1)]);
        let b1 = backend(&p, addr(1));
        let rx = b1.closing();
        p.record(&b1, false, Evidence::Check, "x".into());
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn open_connections_are_counted_until_the_guard_drops() {
        let p = pool(Balance::RoundRobin);
        let b = backend(&p, addr(1));
        let g = b.open();
        assert_eq!(p.backends()[0].active, 1);
        drop(g);
        assert_eq!(p.backends()[0].active, 0);
    }
}
