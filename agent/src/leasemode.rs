//! Lease mode (`spec.election.mode: Lease`), for networks that block VRRP (IP protocol 112): the holder of
//! the Lease `kubeha-vip-<cluster>` holds the VIP. The Lease is renewed through the node's own API server,
//! so a master whose API server has no etcd quorum loses it; the holder adds the VIP and announces it on
//! acquisition, and removes it on its *own* deadline (last successful renewal + renewDeadline), before any
//! other candidate may acquire (leaseDuration > renewDeadline). Failover takes about leaseDuration − not
//! sub-second like VRRP — which is the price of a network without multicast or protocol 112.

use std::time::Duration;

use kube::Client;
use kubeha_common::lease::{ElectionConfig, Elector, Leadership};
use kubeha_crds::HighAvailabilityMemberSpec;
use kubeha_vrrp::router::State;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config;
use crate::driver::{Control, DriverError, Observed, Seen, VipHolder};
use crate::metrics::VrrpMetrics;
use crate::vip::{REFRESH, VipOnLink};

/// What a Lease-mode member needs from cluster mode.
#[derive(Clone)]
pub struct LeaseContext {
    /// The node-local API server's client.
    pub client: Client,
    /// The namespace of the Lease.
    pub namespace: String,
    /// The cluster: the Lease is `kubeha-vip-<cluster>`.
    pub cluster: String,
    /// This node: the holder identity.
    pub identity: String,
}

impl std::fmt::Debug for LeaseContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseContext")
            .field("namespace", &self.namespace)
            .field("cluster", &self.cluster)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

pub use kubeha_crds::contract::vip_lease;

/// A member in Lease mode.
#[derive(Debug)]
pub struct LeaseHolder {
    elector: Option<Elector>,
    leadership: watch::Receiver<Leadership>,
    vip: VipHolder,
    repeat: u8,
    priority: u8,
    metrics: VrrpMetrics,
    observed: watch::Sender<Observed>,
    commands: Option<mpsc::UnboundedReceiver<crate::driver::Command>>,
    holds: bool,
    last: Option<Seen>,
}

impl LeaseHolder {
    /// Sets up the VIP on the interface (removing one left from an earlier run) and the election.
    pub async fn new(
        spec: &HighAvailabilityMemberSpec,
        ctx: LeaseContext,
        metrics: VrrpMetrics,
    ) -> Result<(Self, Control), DriverError> {
        let vip = config::vip(spec).ok_or_else(|| DriverError::Config("vip is required".into()))?;
        let interface = spec.interface.as_deref().ok_or_else(|| DriverError::Config("interface is required".into()))?;
        let link = VipOnLink::open(interface, vip).await?;
        // Before the leftover removal below, which must never take the node's own address.
        crate::vipcheck::check(vip.address, interface, false, &link.on_link().await?).map_err(DriverError::Config)?;
        if link.present().await? {
            tracing::warn!(vip = %vip.address, "removing a VIP left over from an earlier run");
            link.remove().await?;
        }
        let holder = VipHolder::new(link, interface, vip.address, metrics.clone()).await?;
        let e = &spec.election;
        let config = ElectionConfig {
            namespace: ctx.namespace,
            name: vip_lease(&ctx.cluster),
            identity: ctx.identity,
            lease_duration: e.lease_duration.into(),
            renew_deadline: e.renew_deadline.into(),
            retry_period: e.retry_period.into(),
        };
        let (elector, leadership) =
            Elector::new(ctx.client, config).map_err(|e| DriverError::Config(format!("spec.election: {e}")))?;
        let priority = u8::try_from(spec.priority).unwrap_or(100);
        let (observed, observed_rx) = watch::channel(Observed {
            interface: Some(interface.to_string()),
            ..Observed::starting(State::Backup, priority)
        });
        let (tx, rx) = mpsc::unbounded_channel();
        metrics.set_state("Backup");
        let me = Self {
            elector: Some(elector),
            leadership,
            vip: holder,
            repeat: u8::try_from(spec.garp.repeat).unwrap_or(5),
            priority,
            metrics,
            observed,
            commands: Some(rx),
            holds: false,
            last: None,
        };
        Ok((me, Control { commands: tx, observed: observed_rx }))
    }

    /// Runs until `shutdown`, then removes the VIP and releases the Lease for a fast hand-over.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let elector = self.elector.take().map(|e| {
            tokio::spawn(e.run(async move {
                let _ = stop_rx.wait_for(|v| *v).await;
            }))
        });
        // The commands of VRRP mode (timers, priority, fencing) mean nothing here; drain them.
        let mut commands = self.commands.take();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let leadership = self.leadership.borrow_and_update().clone();
            let leader = leadership.is_leader_at(Instant::now());
            self.hold(leader).await;
            let until = match leadership {
                Leadership::Leader { until } => until,
                Leadership::Follower { .. } => Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                () = &mut shutdown => break,
                r = self.leadership.changed() => if r.is_err() { break },
                // The holder's own deadline: drop the VIP now, whether or not the elector has said so yet.
                () = tokio::time::sleep_until(until), if self.holds => {}
                _ = refresh.tick(), if self.holds => drop(self.vip.add().await),
                Some(_) = async { match commands.as_mut() { Some(c) => c.recv().await, None => std::future::pending().await } } => {}
            }
        }
        self.hold(false).await;
        stop_tx.send_replace(true);
        if let Some(e) = elector {
            let _ = e.await;
        }
    }

    async fn hold(&mut self, leader: bool) {
        if leader == self.holds {
            return;
        }
        let (from, to, reason) = if leader {
            if !self.vip.add().await {
                return;
            }
            self.vip.announce(self.repeat);
            (State::Backup, State::Master, "LeaseAcquired")
        } else {
            self.vip.remove().await;
            (State::Master, State::Backup, "LeaseLost")
        };
        self.holds = leader;
        tracing::info!(holds_vip = leader, "Lease mode: VIP {}", if leader { "taken" } else { "released" });
        self.metrics.set_state(if leader { "Master" } else { "Backup" });
        self.last = Some(Seen { from, to, reason: reason.into(), at: std::time::SystemTime::now() });
        self.observed.send_modify(|o| {
            *o = Observed {
                holds_vip: leader,
                last_transition: self.last.clone(),
                interface: o.interface.take(),
                ..Observed::starting(to, self.priority)
            }
        });
    }
}
