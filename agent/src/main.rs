//! `kubeha-agent`: the node agent. `kubeha-agent run --config FILE` runs standalone from a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kubeha_agent::bootstrap::{Bootstrap, Rendered};
use kubeha_agent::driver::Ended;
use kubeha_agent::handover::Role;
use kubeha_agent::instance::{self, Parts};
use kubeha_agent::metrics::{ProxyMetrics, VrrpMetrics};
use kubeha_agent::vip::Checked;
use kubeha_agent::{api, cluster, config};
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
    /// Run standalone from a config file (`--config`, the shape of a HighAvailabilityMember spec;
    /// docs/agent-config.md), or in cluster mode (`--node-name`, as the DaemonSet runs it;
    /// docs/cluster-mode.md): every HighAvailabilityMember of this node, from the API.
    Run {
        /// Standalone: the config file.
        #[arg(long, conflicts_with = "node_name", required_unless_present = "node_name")]
        config: Option<PathBuf>,
        /// The parts this process runs: `vip` (VRRP or Lease election; in cluster mode also the heartbeat,
        /// quorum fencing and the last-known-good store), `proxy` (the API proxy; needs no capability), or
        /// both. The chart runs each in a container of its own, so that a crash of one leaves the other
        /// serving (docs/adr/0008).
        #[arg(long, default_value = "vip,proxy", value_parser = Parts::parse)]
        parts: Parts,
        #[command(flatten)]
        cluster: Box<ClusterArgs>,
    },
    /// Check a config file and exit: 0 when it is valid, 2 with every problem listed when not.
    Check {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a standalone config and a static pod that holds the VIP before the API server exists (run on
    /// every master before `kubeadm init --control-plane-endpoint VIP:6443` or `kubeadm join`). The
    /// DaemonSet agent takes over in place once kubeha is installed (docs/guide.md).
    Bootstrap(Box<BootstrapArgs>),
}

/// `kubeha-agent bootstrap`.
#[derive(Debug, clap::Args)]
struct BootstrapArgs {
    #[command(flatten)]
    plan: Bootstrap,
    /// Print the files instead of writing them.
    #[arg(long)]
    dry_run: bool,
}

/// Cluster mode.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// This node's name (the DaemonSet sets NODE_NAME from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Credentials outside a pod (its server address is not used); in a pod, the service account's are.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node-local API server, tried first; repeat for more. The masters' addresses from the members
    /// follow. Never the VIP.
    #[arg(long = "api-server", default_value = "https://127.0.0.1:6443")]
    api_servers: Vec<String>,
    /// The name every API server certificate carries, checked instead of the address.
    #[arg(long, default_value = "kubernetes")]
    api_server_name: String,
    /// The CA for health checks without a caFile (default: the service account's).
    #[arg(long, env = "KUBEHA_CLUSTER_CA")]
    cluster_ca: Option<String>,
    /// The last-known-good directory (a hostPath in the chart).
    #[arg(long, default_value = "/var/lib/kubeha")]
    state_dir: PathBuf,
    /// The namespace of the heartbeat Leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kubeha-system")]
    namespace: String,
    /// address:port for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9641")]
    metrics: SocketAddr,
    /// This node's kube-apiserver readiness, for the control-plane view ("" to skip).
    #[arg(long, default_value = "https://127.0.0.1:6443/readyz")]
    apiserver_health_url: String,
    /// This node's etcd health (kubeadm serves it on the metrics listener; "" to skip).
    #[arg(long, default_value = "http://127.0.0.1:2381/health")]
    etcd_health_url: String,
    /// This node's kube-controller-manager health ("" to skip).
    #[arg(long, default_value = "https://127.0.0.1:10257/healthz")]
    controller_manager_health_url: String,
    /// This node's kube-scheduler health ("" to skip).
    #[arg(long, default_value = "https://127.0.0.1:10259/healthz")]
    scheduler_health_url: String,
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
    match command {
        Command::Run { config: Some(config), parts, .. } => run_standalone(config, parts).await,
        Command::Run { config: None, cluster, parts } => run_cluster(cluster, parts).await,
        Command::Check { config } => Ok(match config::load(&config) {
            Ok(spec) => match kubeha_agent::vip::check_here(&spec).await {
                Ok(Checked::Interface(interface)) => {
                    println!("{} is valid, and its vip fits {interface} on this host", config.display());
                    ExitCode::SUCCESS
                }
                Ok(Checked::NoInterface) => {
                    println!(
                        "{} is valid; its interface is not on this host, so the vip is checked against it when the \
                         agent starts on its node",
                        config.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kubeha-agent: {}: {e}", config.display());
                    ExitCode::from(2)
                }
            },
            Err(e) => {
                eprintln!("kubeha-agent: {e}");
                ExitCode::from(2)
            }
        }),
        Command::Bootstrap(args) => bootstrap(*args).await,
    }
}

async fn run_standalone(path: PathBuf, parts: Parts) -> anyhow::Result<ExitCode> {
    let spec = match config::load(&path) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("kubeha-agent: {e}");
            return Ok(ExitCode::from(2));
        }
    };

    let mut registry = Registry::default();
    let vrrp_metrics = VrrpMetrics::register(&mut registry);
    let proxy_metrics = ProxyMetrics::register(&mut registry);
    let listen: SocketAddr = spec.metrics.listen.parse().context("metrics.listen")?;
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = telemetry::bind(listen).await?;
    let probes = tokio::spawn(telemetry::serve_probes(
        listener,
        telemetry::shared(registry),
        ready_rx,
        stopped(stop_rx.clone()),
    ));

    // The proxy binds first: with IP_FREEBIND it does not need the VIP, and a takeover must not wait for it.
    let proxy = instance::proxy_of(&spec, parts, &proxy_metrics)?;
    let has_vip = config::vip(&spec).is_some() && parts.vip;
    ready_tx.send_replace(true);
    tracing::info!(node = %spec.node_name, vip = ?spec.vip, vrid = ?spec.vrid, priority = spec.priority,
        proxy = proxy.is_some(), %parts, "kubeha-agent running");
    let (term_tx, term_rx) = watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        term_tx.send_replace(true);
    });
    // A standalone agent yields its VRRP instance to the cluster-mode agent of this node when that one asks
    // (the bootstrap static pod and the DaemonSet, docs/adr/0005) and stands by to take it back.
    let vrrp = async {
        if !has_vip {
            return anyhow::Ok(());
        }
        let dir = std::path::Path::new(&spec.state_dir);
        loop {
            let next = instance::driver_of(&spec, &vrrp_metrics, dir, Role::Yields, stopped(term_rx.clone()));
            let Some(driver) = next.await? else { return Ok(()) };
            if driver.run(stopped(term_rx.clone())).await == Ended::Stopped {
                return Ok(());
            }
        }
    };
    // A proxy without the VIP part goes on serving while another process hands the VIP over.
    let proxying = async {
        if let Some(p) = proxy {
            p.run(async {
                stopped(term_rx.clone()).await;
                instance::let_the_vip_go(&spec, parts).await;
            })
            .await;
        }
    };
    let (vrrp, ()) = tokio::join!(vrrp, proxying);
    stop_tx.send_replace(true);
    let _ = probes.await;
    vrrp?;
    Ok(ExitCode::SUCCESS)
}

async fn bootstrap(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    let plan = args.plan;
    let Rendered { files, spec } = match plan.render() {
        Ok(rendered) => rendered,
        Err(e) => {
            eprintln!("kubeha-agent bootstrap: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // Run on the master itself: its interface tells whether the VIP is its own address or off its subnet.
    // A dry run elsewhere has no such interface, and the agent checks again when it starts.
    match kubeha_agent::vip::check_here(&spec).await {
        Ok(Checked::Interface(_)) => {}
        Ok(Checked::NoInterface) if args.dry_run => {}
        Ok(Checked::NoInterface) => {
            eprintln!("kubeha-agent bootstrap: interface {} does not exist on this host: --interface", plan.interface);
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            eprintln!("kubeha-agent bootstrap: --vip: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    for f in files {
        if args.dry_run {
            println!("--- {}\n{}", f.path.display(), f.contents);
            continue;
        }
        if let Some(dir) = f.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // The static pod last and atomically: the kubelet must never read half a manifest or start the pod
        // before its config exists.
        let tmp = f.path.with_extension("tmp");
        std::fs::write(&tmp, &f.contents).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &f.path).with_context(|| format!("renaming {} into place", tmp.display()))?;
        println!("wrote {}", f.path.display());
    }
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

async fn run_cluster(args: Box<ClusterArgs>, parts: Parts) -> anyhow::Result<ExitCode> {
    let node = args.node_name.context("--node-name (or NODE_NAME) is required in cluster mode")?;
    if let Some(ca) = &args.cluster_ca {
        kubeha_agent::probe::set_default_ca(ca);
    }
    let credentials = api::Credentials::load(args.kubeconfig.as_deref(), &args.api_server_name).await?;
    let servers = Arc::new(api::ApiServers::new(credentials, args.api_servers)?);
    let registry = telemetry::shared(Registry::default());
    let metrics = cluster::MemberMetrics::new(registry.clone());
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = telemetry::bind(args.metrics).await?;
    let probes = tokio::spawn(telemetry::serve_probes(listener, registry, ready_rx, stopped(stop_rx)));
    let (term_tx, term_rx) = watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        term_tx.send_replace(true);
    });
    tracing::info!(node = %node, api_servers = ?servers.addresses(), state_dir = %args.state_dir.display(),
        namespace = %args.namespace, %parts, "kubeha-agent running in cluster mode");
    let components = cluster::ComponentUrls {
        apiserver: args.apiserver_health_url,
        etcd: args.etcd_health_url,
        controller_manager: args.controller_manager_health_url,
        scheduler: args.scheduler_health_url,
    };
    let opts = cluster::Options {
        node,
        namespace: args.namespace,
        state_dir: args.state_dir,
        api: servers,
        components,
        parts,
    };
    // Ready once running: members come and go while it runs, and no API is needed to run the saved ones.
    ready_tx.send_replace(true);
    let result = cluster::run(opts, metrics, term_rx).await;
    stop_tx.send_replace(true);
    let _ = probes.await;
    result.map(|()| ExitCode::SUCCESS)
}
