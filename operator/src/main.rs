//! `kubeha-operator`: runs active/standby behind a Lease; only the leader reconciles.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kubeha_common::lease::{ElectionConfig, Elector, Leadership};
use kubeha_common::telemetry::{self, LogFormat};
use kubeha_crds::Interval;
use kubeha_operator::controller::{self, Metrics, Settings};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;

/// The kubeha operator: reconciles HighAvailabilityClusters into HighAvailabilityMembers and their status.
/// Run two or more replicas: they elect a leader through a Lease and only the leader writes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "KUBEHA_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own namespace in a pod).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kubeha-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "kubeha-operator")]
    lease_name: String,
    /// This replica's identity in the Lease and in Events (the pod name in a pod).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the leader's Lease is valid without renewal.
    #[arg(long, default_value = "15s")]
    lease_duration: Interval,
    /// How long the leader keeps trying to renew before it stops acting.
    #[arg(long, default_value = "10s")]
    renew_deadline: Interval,
    /// Time between election attempts.
    #[arg(long, default_value = "2s")]
    retry_period: Interval,
    /// How long a deleted member may wait for its agent to release the VIP before the operator removes it.
    #[arg(long, default_value = "30s")]
    release_timeout: Interval,
    /// Log format: json or text.
    #[arg(long, env = "KUBEHA_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_logging(args.log_format);
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let election = ElectionConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        lease_duration: args.lease_duration.into(),
        renew_deadline: args.renew_deadline.into(),
        retry_period: args.retry_period.into(),
    };
    election.validate().context("--lease-duration, --renew-deadline and --retry-period")?;

    let client = kubeha_common::client::infer()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or the in-cluster service account)")?;
    client.apiserver_version().await.context("asking the Kubernetes API for its version")?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let leader_gauge = Gauge::<i64>::default();
    registry.register("kubeha_operator_leader", "1 while this replica leads", leader_gauge.clone());
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = telemetry::bind(args.metrics_addr).await?;
    let probes = tokio::spawn(telemetry::serve_probes(
        listener,
        telemetry::shared(registry),
        ready_rx,
        stopped(stop_rx.clone()),
    ));

    let (elector, mut leadership) = Elector::new(client.clone(), election)?;
    let elector = tokio::spawn(elector.run(stopped(stop_rx.clone())));
    ready_tx.send_replace(true);
    tracing::info!(identity = %identity, lease = %args.lease_name, "started; electing");

    // The agents run in the operator's namespace (one chart) and renew their heartbeat Leases there.
    let settings = Settings {
        instance: identity,
        release_timeout: args.release_timeout.into(),
        heartbeat_namespace: args.lease_namespace.clone(),
    };
    let mut running: Option<(tokio::task::JoinHandle<()>, watch::Sender<bool>)> = None;
    let mut terminate = signals()?;
    loop {
        let current = leadership.borrow().clone();
        let until = match current {
            Leadership::Leader { until } if Instant::now() < until => Some(until),
            _ => None,
        };
        match (until, running.is_some()) {
            (Some(_), false) => {
                let (halt_tx, halt_rx) = watch::channel(false);
                let watched = leadership.clone();
                let may_act = move || watched.borrow().is_leader_at(Instant::now());
                let task = tokio::spawn(controller::run(
                    client.clone(),
                    settings.clone(),
                    metrics.clone(),
                    may_act,
                    stopped(halt_rx),
                ));
                running = Some((task, halt_tx));
                leader_gauge.set(1);
                tracing::info!("leading: controller started");
            }
            (None, true) => {
                stop_controller(running.take()).await;
                leader_gauge.set(0);
                tracing::info!("not leading: controller stopped");
            }
            _ => {}
        }
        let deadline = until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            changed = leadership.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(deadline) => {}
            _ = terminate.recv() => break,
        }
    }
    tracing::info!("shutting down");
    stop_controller(running.take()).await;
    stop_tx.send_replace(true);
    let _ = elector.await; // releases the Lease if held, for a fast hand-over
    let _ = probes.await;
    Ok(())
}

async fn stop_controller(running: Option<(tokio::task::JoinHandle<()>, watch::Sender<bool>)>) {
    if let Some((mut task, halt)) = running {
        halt.send_replace(true);
        // The controller's own writes are guarded by the deadline; do not wait long for a graceful end.
        if tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err() {
            // A reconcile waiting on an API server that is gone keeps a graceful shutdown waiting. Dropping the
            // handle would only detach the task: it went on with its watches open (a soak saw the connections
            // of every lost leadership pile up, 10 → 56) and, once leadership came back, acted beside its
            // successor.
            tracing::warn!("controller did not stop within 2 s; aborting it");
            task.abort();
            let _ = task.await;
        }
    }
}

/// Resolves once `rx` turns true.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// SIGTERM or SIGINT, as one stream.
fn signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let mut s = signal(kind).context("installing signal handlers")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let _ = tx.send(()).await;
            }
        });
    }
    Ok(rx)
}

fn default_identity() -> String {
    let host = nix_hostname().unwrap_or_else(|| "kubeha-operator".into());
    format!("{host}_{}", std::process::id())
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Sets its flag when dropped: the controller's watches and connections go with its future.
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_that_ignores_the_halt_is_dropped_not_left_running() {
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        let (halt_tx, _halt_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _guard = guard;
            // A reconcile stuck on an API call that never answers.
            std::future::pending::<()>().await;
        });
        stop_controller(Some((task, halt_tx))).await;
        assert!(dropped.load(Ordering::SeqCst), "the stuck controller is still running after stop_controller");
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_that_heeds_the_halt_ends_on_its_own() {
        let (halt_tx, halt_rx) = watch::channel(false);
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let task = tokio::spawn(async move {
            stopped(halt_rx).await;
            done.store(true, Ordering::SeqCst);
        });
        stop_controller(Some((task, halt_tx))).await;
        assert!(finished.load(Ordering::SeqCst), "the controller did not finish its graceful end");
    }
}
