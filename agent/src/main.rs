//! `kubeha-agent`: the node agent. `kubeha-agent run --config FILE` runs standalone from a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kubeha_agent::config;
use kubeha_agent::driver::Driver;
use kubeha_agent::metrics::{ProxyMetrics, VrrpMetrics};
use kubeha_agent::proxy;
use kubeha_common::telemetry::{self, LogFormat};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// The kubeha node agent: holds the VIP by VRRP on this node and runs the API proxy.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Log format: json or text.
    #[arg(long, global = true, env = "KUBEHA_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run from a standalone config file (the shape of a HighAvailabilityMember spec; docs/agent-config.md).
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config file and exit: 0 when it is valid, 2 with every problem listed when not.
    Check {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init_logging(args.log_format);
    match run(args.command).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "kubeha-agent cannot run");
            eprintln!("kubeha-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let path = match &command {
        Command::Run { config } | Command::Check { config } => config.clone(),
    };
    let spec = match config::load(&path) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("kubeha-agent: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if matches!(command, Command::Check { .. }) {
        println!("{} is valid", path.display());
        return Ok(ExitCode::SUCCESS);
    }

    let mut registry = Registry::default();
    let vrrp_metrics = VrrpMetrics::register(&mut registry);
    let proxy_metrics = ProxyMetrics::register(&mut registry);
    let listen: SocketAddr = spec.metrics.listen.parse().context("metrics.listen")?;
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = telemetry::bind(listen).await?;
    let probes = tokio::spawn(telemetry::serve_probes(listener, telemetry::shared(registry), ready_rx, stopped(stop_rx.clone())));

    // The proxy binds first: with IP_FREEBIND it does not need the VIP, and a takeover must not wait for it.
    let proxy = match spec.proxy.as_ref().filter(|p| p.enabled) {
        Some(p) => Some(proxy::Proxy::bind(proxy::Settings::from_spec(p)?, proxy_metrics)?),
        None => None,
    };
    let driver = match config::vip(&spec) {
        Some(_) => Some(Driver::new(&spec, vrrp_metrics).await?),
        None => None,
    };
    ready_tx.send_replace(true);
    tracing::info!(node = %spec.node_name, vip = ?spec.vip, vrid = ?spec.vrid, priority = spec.priority,
        proxy = proxy.is_some(), "kubeha-agent running");
    let (term_tx, term_rx) = watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        term_tx.send_replace(true);
    });
    let vrrp = async {
        if let Some(d) = driver {
            d.run(stopped(term_rx.clone())).await;
        }
    };
    let proxying = async {
        if let Some(p) = proxy {
            p.run(stopped(term_rx.clone())).await;
        }
    };
    tokio::join!(vrrp, proxying);
    stop_tx.send_replace(true);
    let _ = probes.await;
    Ok(ExitCode::SUCCESS)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
