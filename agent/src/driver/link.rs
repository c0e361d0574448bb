//! Everything the VRRP driver does to the world, behind one trait: adverts out and in, the VIP on the
//! interface, announcements, and the health checks that watch the link. [`NetLink`] is the node's raw
//! socket and netlink, with [`VipHolder`] (the VIP and its announcements, which Lease mode shares); the
//! driver's tests run the same driver on an in-memory segment (`memory.rs`) under
//! tokio's paused clock, without root, sockets or waiting.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use kubeha_crds::HealthCheck;

use super::DriverError;
use crate::announce::Announcer;
use crate::health::{self, Checks};
use crate::metrics::VrrpMetrics;
use crate::socket::{Incoming, SocketError, VrrpSocket};
use crate::vip::VipOnLink;

/// The driver's side of one interface.
pub trait Link: Send + Sync + 'static {
    /// Sends one encoded VRRP message to `dst` (the group or a peer).
    fn send_to(&self, message: &[u8], dst: IpAddr) -> impl Future<Output = io::Result<()>> + Send;
    /// Receives the next VRRP packet.
    fn recv(&self) -> impl Future<Output = io::Result<Incoming>> + Send;
    /// A packet received already, without waiting (`None`: none queued).
    fn try_recv(&self) -> io::Result<Option<Incoming>>;
    /// Where adverts go: the multicast group, or each unicast peer.
    fn destinations(&self) -> Vec<IpAddr>;
    /// New unicast peers (a unicast link only).
    fn set_peers(&mut self, peers: &[IpAddr]);
    /// Adds the VIP, or refreshes its lifetime; whether it is on the interface now. Failures are counted and
    /// logged here.
    fn add_vip(&self) -> impl Future<Output = bool> + Send;
    /// Removes the VIP; a failure is counted and logged, and the VIP's lifetime ends it.
    fn remove_vip(&self) -> impl Future<Output = ()> + Send;
    /// Sends `count` gratuitous ARPs / unsolicited NAs for the VIP.
    fn announce(&self, count: u8);
    /// Another host that answers for the VIP (an ARP probe, a neighbour solicitation: crate::dad), if one
    /// does. A probe that cannot be sent is logged and answers none: it must never keep a failover back.
    fn who_has_vip(&self) -> impl Future<Output = Option<crate::dad::Answer>> + Send;
    /// The lifetime the VIP gets at its next add or refresh.
    fn set_lifetime(&mut self, lifetime: Duration);
    /// Starts `checks`, plus the carrier check of the VIP's interface unless one is configured.
    fn checks(&self, checks: &[HealthCheck]) -> Checks;
    /// The interface's name, for the status; `None` where there is no real one (a test's segment).
    fn interface(&self) -> Option<String>;
}

/// The node's interface: the raw VRRP socket and the VIP by netlink.
#[derive(Debug)]
pub struct NetLink {
    pub(super) socket: VrrpSocket,
    pub(super) vip: VipHolder,
    pub(super) interface: String,
}

impl Link for NetLink {
    async fn send_to(&self, message: &[u8], dst: IpAddr) -> io::Result<()> {
        self.socket.send_to(message, dst).await
    }

    async fn recv(&self) -> io::Result<Incoming> {
        self.socket.recv().await
    }

    fn try_recv(&self) -> io::Result<Option<Incoming>> {
        self.socket.try_recv()
    }

    fn destinations(&self) -> Vec<IpAddr> {
        self.socket.destinations().to_vec()
    }

    fn set_peers(&mut self, peers: &[IpAddr]) {
        self.socket.set_peers(peers);
    }

    async fn add_vip(&self) -> bool {
        self.vip.add().await
    }

    async fn remove_vip(&self) {
        self.vip.remove().await;
    }

    fn announce(&self, count: u8) {
        self.vip.announce(count);
    }

    async fn who_has_vip(&self) -> Option<crate::dad::Answer> {
        self.vip.who_has().await
    }

    fn set_lifetime(&mut self, lifetime: Duration) {
        self.vip.link.set_lifetime(lifetime);
    }

    fn checks(&self, checks: &[HealthCheck]) -> Checks {
        health::spawn(&with_link_check(checks, &self.interface), Some(self.vip.link.clone()))
    }

    fn interface(&self) -> Option<String> {
        Some(self.interface.clone())
    }
}

/// The configured checks, plus — unless one is configured for it — a link check of the VIP's own interface
/// with weight 0: a master whose link has no carrier cannot serve the VIP, so it goes to FAULT and releases
/// it, as keepalived does for the interface of an instance.
fn with_link_check(checks: &[HealthCheck], interface: &str) -> Vec<HealthCheck> {
    let mut all = checks.to_vec();
    if !checks.iter().any(|c| c.link.as_ref().is_some_and(|l| l.interface == interface)) {
        all.push(HealthCheck {
            name: format!("link-{interface}"),
            https: None,
            tcp: None,
            link: Some(kubeha_crds::LinkCheck { interface: interface.to_string() }),
            interval: kubeha_crds::Interval::from_millis(100),
            timeout: kubeha_crds::Interval::from_millis(100),
            rise: 1,
            fall: 1,
            weight: 0,
        });
    }
    all
}

/// The VIP on this node's interface with what goes with holding it — gratuitous ARP / unsolicited NA, and
/// the counts and logs of failures. The VRRP driver and Lease mode share it; they differ only in who decides.
#[derive(Debug)]
pub(crate) struct VipHolder {
    /// The address on its link (also what link checks ask about the interface).
    pub(crate) link: VipOnLink,
    announcer: Option<Announcer>,
    metrics: VrrpMetrics,
    interface: String,
    address: IpAddr,
    mac: Option<[u8; 6]>,
}

impl VipHolder {
    /// Opens the announcer for `address` on `interface`; without a MAC address there is none.
    pub(crate) async fn new(
        link: VipOnLink,
        interface: &str,
        address: IpAddr,
        metrics: VrrpMetrics,
    ) -> Result<Self, DriverError> {
        let mac = link.mac().await?;
        let announcer = match mac {
            Some(mac) => {
                Some(Announcer::new(interface, link.ifindex(), mac, address).map_err(SocketError::Permission)?)
            }
            None => {
                tracing::warn!(interface, "the interface has no MAC address: no gratuitous ARP will be sent");
                None
            }
        };
        Ok(Self { link, announcer, metrics, interface: interface.to_string(), address, mac })
    }

    /// Another host that answers for the VIP, if one does; none without a MAC address to probe from.
    pub(crate) async fn who_has(&self) -> Option<crate::dad::Answer> {
        let mac = self.mac?;
        match crate::dad::who_has(&self.interface, self.link.ifindex(), mac, self.address).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask whether another host uses the VIP; taking it");
                None
            }
        }
    }

    /// Adds the VIP, or refreshes its lifetime; whether it is on the interface now.
    pub(crate) async fn add(&self) -> bool {
        match self.link.add().await {
            Ok(()) => true,
            Err(e) => {
                self.metrics.vip_errors.inc();
                tracing::error!(error = %e, "adding or refreshing the VIP failed");
                false
            }
        }
    }

    /// Resets the connections to the VIP while it is still here (crate::sockdiag says why), then removes
    /// it; if that fails its short lifetime ends it.
    pub(crate) async fn remove(&self) {
        match crate::sockdiag::reset_tcp_to(self.address) {
            Ok(0) => {}
            Ok(n) => {
                self.metrics.connections_reset.inc_by(n as u64);
                tracing::info!(connections = n, "reset the connections to the VIP before giving it up");
            }
            Err(e) => tracing::warn!(error = %e,
                "cannot reset the connections to the VIP (needs CAP_NET_ADMIN and a kernel with SOCK_DESTROY): \
                 their clients notice the move only when they next send"),
        }
        if let Err(e) = self.link.remove().await {
            self.metrics.vip_errors.inc();
            tracing::error!(error = %e, "removing the VIP failed; it expires by itself");
        }
    }

    /// Sends `count` gratuitous ARPs / unsolicited NAs.
    pub(crate) fn announce(&self, count: u8) {
        let Some(a) = &self.announcer else { return };
        match a.announce(count) {
            Ok(sent) => drop(self.metrics.announcements.inc_by(u64::from(sent))),
            Err(e) => tracing::warn!(error = %e, "sending gratuitous ARP failed"),
        }
    }
}
