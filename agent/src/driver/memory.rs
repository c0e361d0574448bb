//! An in-memory segment for the driver's tests: every driver's adverts reach the others at once, the VIP is
//! an entry in a shared table, and health verdicts are set by the test. With tokio's clock paused, a test of
//! seconds of VRRP runs in milliseconds and is the same on every run.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kubeha_crds::HealthCheck;
use tokio::sync::{mpsc, watch};

use super::link::Link;
use crate::health::{Checks, Verdict};
use crate::socket::Incoming;

/// The shared medium and the VIP's whereabouts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Segment {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    ports: Vec<(IpAddr, mpsc::UnboundedSender<Incoming>)>,
    /// Nodes whose link is cut: they neither send nor receive.
    cut: BTreeSet<IpAddr>,
    /// Nodes whose adverts arrive late: what is sent to them waits here until [`Segment::deliver_late`].
    late: Vec<(IpAddr, Vec<Incoming>)>,
    /// A host that runs no driver and has the VIP configured: it answers probes with this MAC.
    stranger: Option<[u8; 6]>,
    /// Probes asked, by the node that asked.
    probes: Vec<IpAddr>,
    holders: Vec<IpAddr>,
    /// (who added the VIP, who held it already)
    overlaps: Vec<(IpAddr, IpAddr)>,
    /// Every add and remove, with the virtual time since the segment was made.
    events: Vec<String>,
    origin: Option<tokio::time::Instant>,
    /// The lifetime each node gives the VIP at its next add or refresh.
    lifetimes: Vec<(IpAddr, Duration)>,
    /// Packets queued for a node without waking it (see [`Segment::inject_unnoticed`]).
    unnoticed: Vec<(IpAddr, Incoming)>,
}

/// A test's handle on one node's health: the carrier of its interface and any other check.
#[derive(Debug)]
pub(crate) struct Health {
    /// The carrier check (weight 0): false is a link without carrier.
    pub(crate) carrier: watch::Sender<Verdict>,
    /// The checks configured with [`Segment::join`], in order.
    pub(crate) checks: Vec<watch::Sender<Verdict>>,
}

/// A healthy verdict of a check called `name` with `weight`.
pub(crate) fn healthy(name: &str, weight: i32) -> Verdict {
    Verdict { name: name.into(), healthy: Some(true), detail: String::new(), weight, since: None }
}

impl Health {
    /// Sets the carrier.
    pub(crate) fn set_carrier(&self, up: bool) {
        self.carrier.send_modify(|v| v.healthy = Some(up));
    }

    /// Sets check `i`.
    pub(crate) fn set(&self, i: usize, ok: bool) {
        self.checks[i].send_modify(|v| v.healthy = Some(ok));
    }
}

impl Segment {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A node with primary address `me` on this segment, with checks of these weights; `holding` when the
    /// VIP is on its interface already.
    pub(crate) fn join(&self, me: IpAddr, weights: &[i32], holding: bool) -> (MemoryLink, Health) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.origin.get_or_insert_with(tokio::time::Instant::now);
        inner.ports.push((me, tx));
        if holding {
            inner.holders.push(me);
        }
        let (carrier, carrier_rx) = watch::channel(healthy("carrier", 0));
        let (checks, check_rxs): (Vec<_>, Vec<_>) =
            weights.iter().enumerate().map(|(i, w)| watch::channel(healthy(&format!("check-{i}"), *w))).unzip();
        let mut verdicts = vec![carrier_rx];
        verdicts.extend(check_rxs);
        let link = MemoryLink { me, segment: self.clone(), rx: tokio::sync::Mutex::new(rx), verdicts };
        (link, Health { carrier, checks })
    }

    /// Cuts or restores `node`'s link.
    pub(crate) fn set_cut(&self, node: IpAddr, cut: bool) {
        let mut inner = self.lock();
        if cut {
            inner.cut.insert(node)
        } else {
            inner.cut.remove(&node)
        };
    }

    /// Holds back every packet sent to `node` (a slow or lossy path: its probes are still answered) until
    /// [`Segment::deliver_late`].
    pub(crate) fn delay(&self, node: IpAddr) {
        self.lock().late.push((node, Vec::new()));
    }

    /// Delivers what was held back for `node`, in order, and stops holding back.
    pub(crate) fn deliver_late(&self, node: IpAddr) {
        self.end_delay(node, true);
    }

    /// Drops what was held back for `node` (lost on the way) and stops holding back.
    pub(crate) fn lose_late(&self, node: IpAddr) {
        self.end_delay(node, false);
    }

    fn end_delay(&self, node: IpAddr, deliver: bool) {
        let mut inner = self.lock();
        let Some(at) = inner.late.iter().position(|(n, _)| *n == node) else { return };
        let (_, held) = inner.late.remove(at);
        if let Some((_, port)) = inner.ports.iter().find(|(a, _)| *a == node).filter(|_| deliver) {
            for p in held {
                let _ = port.send(p);
            }
        }
    }

    /// Puts a packet on the wire from `from`, a host that runs no driver (a stranger), to every node.
    pub(crate) fn inject(&self, from: IpAddr, message: &[u8], ttl: u8) {
        let inner = self.lock();
        for (_, port) in inner.ports.iter().filter(|(a, _)| !inner.cut.contains(a)) {
            let _ =
                port.send(Incoming { message: message.to_vec(), ttl, src: from, dst: IpAddr::from([224, 0, 0, 18]) });
        }
    }

    /// Queues a packet from `from` for `node` without waking its driver, as the kernel queues one while the
    /// agent is not scheduled: the driver finds it when it runs next, whatever wakes it.
    pub(crate) fn inject_unnoticed(&self, node: IpAddr, from: IpAddr, message: &[u8], ttl: u8) {
        let incoming = Incoming { message: message.to_vec(), ttl, src: from, dst: IpAddr::from([224, 0, 0, 18]) };
        self.lock().unnoticed.push((node, incoming));
    }

    fn take_unnoticed(&self, node: IpAddr) -> Option<Incoming> {
        let mut inner = self.lock();
        let at = inner.unnoticed.iter().position(|(n, _)| *n == node)?;
        Some(inner.unnoticed.remove(at).1)
    }

    /// Gives the VIP to a host that runs no driver (`Some(its MAC)`), or takes it away.
    pub(crate) fn set_stranger(&self, mac: Option<[u8; 6]>) {
        self.lock().stranger = mac;
    }

    /// The nodes that probed for the VIP, one entry per probe.
    pub(crate) fn probes(&self) -> Vec<IpAddr> {
        self.lock().probes.clone()
    }

    /// Who holds the VIP now.
    pub(crate) fn holders(&self) -> Vec<IpAddr> {
        self.lock().holders.clone()
    }

    /// Every time a node added the VIP while another held it: (adder, holder).
    pub(crate) fn overlaps(&self) -> Vec<(IpAddr, IpAddr)> {
        self.lock().overlaps.clone()
    }

    /// The lifetime `node` gives the VIP now.
    pub(crate) fn lifetime(&self, node: IpAddr) -> Option<Duration> {
        self.lock().lifetimes.iter().find(|(n, _)| *n == node).map(|(_, l)| *l)
    }

    /// The adds and removes so far, for failure messages.
    pub(crate) fn events(&self) -> String {
        self.lock().events.join("\n")
    }

    fn record(inner: &mut Inner, what: String) {
        let at = inner.origin.map_or(Duration::ZERO, |o| o.elapsed());
        inner.events.push(format!("{:9.3}s {what}", at.as_secs_f64()));
    }
}

/// One node's side of the segment.
#[derive(Debug)]
pub(crate) struct MemoryLink {
    me: IpAddr,
    segment: Segment,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>,
    verdicts: Vec<watch::Receiver<Verdict>>,
}

impl Link for MemoryLink {
    async fn send_to(&self, message: &[u8], dst: IpAddr) -> io::Result<()> {
        let mut inner = self.segment.lock();
        if inner.cut.contains(&self.me) {
            return Ok(());
        }
        let Inner { ports, cut, late, .. } = &mut *inner;
        for (addr, port) in ports.iter() {
            let to_it = dst.is_multicast() || dst == *addr;
            if *addr != self.me && to_it && !cut.contains(addr) {
                let packet = Incoming { message: message.to_vec(), ttl: 255, src: self.me, dst };
                match late.iter_mut().find(|(n, _)| n == addr) {
                    Some((_, held)) => held.push(packet),
                    // A node whose driver ended has dropped its receiver: like a host that is off.
                    None => drop(port.send(packet)),
                }
            }
        }
        Ok(())
    }

    async fn recv(&self) -> io::Result<Incoming> {
        if let Some(p) = self.segment.take_unnoticed(self.me) {
            return Ok(p);
        }
        match self.rx.lock().await.recv().await {
            Some(p) => Ok(p),
            None => std::future::pending().await,
        }
    }

    fn try_recv(&self) -> io::Result<Option<Incoming>> {
        if let Some(p) = self.segment.take_unnoticed(self.me) {
            return Ok(Some(p));
        }
        Ok(self.rx.try_lock().ok().and_then(|mut rx| rx.try_recv().ok()))
    }

    fn destinations(&self) -> Vec<IpAddr> {
        vec![IpAddr::from([224, 0, 0, 18])]
    }

    fn set_peers(&mut self, _peers: &[IpAddr]) {}

    async fn add_vip(&self) -> bool {
        let mut inner = self.segment.lock();
        if !inner.holders.contains(&self.me) {
            let others: Vec<IpAddr> = inner.holders.clone();
            for other in others {
                inner.overlaps.push((self.me, other));
            }
            inner.holders.push(self.me);
            Segment::record(&mut inner, format!("{} adds the VIP", self.me));
        }
        true
    }

    async fn remove_vip(&self) {
        let mut inner = self.segment.lock();
        if inner.holders.contains(&self.me) {
            inner.holders.retain(|h| *h != self.me);
            Segment::record(&mut inner, format!("{} removes the VIP", self.me));
        }
    }

    fn announce(&self, count: u8) {
        let mut inner = self.segment.lock();
        Segment::record(&mut inner, format!("{} announces x{count}", self.me));
    }

    async fn who_has_vip(&self) -> Option<crate::dad::Answer> {
        let mut inner = self.segment.lock();
        inner.probes.push(self.me);
        if inner.cut.contains(&self.me) {
            return None;
        }
        // A node's MAC here: 02-00-00-00-00-<last octet of its address>.
        let node_mac = |a: &IpAddr| match a {
            IpAddr::V4(v4) => [2, 0, 0, 0, 0, v4.octets()[3]],
            IpAddr::V6(v6) => [2, 0, 0, 0, 0, v6.octets()[15]],
        };
        let other = inner.holders.iter().find(|h| **h != self.me && !inner.cut.contains(*h)).map(node_mac);
        inner.stranger.or(other).map(|mac| crate::dad::Answer { mac: Some(mac) })
    }

    fn set_lifetime(&mut self, lifetime: Duration) {
        let mut inner = self.segment.lock();
        inner.lifetimes.retain(|(n, _)| *n != self.me);
        inner.lifetimes.push((self.me, lifetime));
    }

    fn checks(&self, _checks: &[HealthCheck]) -> Checks {
        Checks::of(self.verdicts.clone())
    }

    fn interface(&self) -> Option<String> {
        None
    }
}
