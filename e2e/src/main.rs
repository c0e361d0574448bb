//! `e2e/cluster`: the three-master test control plane and its faults, for people and scripts.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kubeha_e2e::{Cluster, Host};

mod demo;

/// The kubeha test world: three masters (n1–n3, 198.51.100.11–13) each running etcd, kube-apiserver,
/// kube-controller-manager and kube-scheduler in its own network namespace, plus clients (c1, c2) on the
/// same bridge; every host a real node (kubelet and containerd). State lives in $KUBEHA_E2E_DIR (default
/// /tmp/kubeha-e2e). Needs root, and the image of `make image`.
#[derive(Debug, Parser)]
#[command(name = "e2e/cluster")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the cluster from scratch (removing any leftovers first); prints the admin kubeconfig path.
    Up,
    /// Boot the five hosts as empty kubeadm machines (containerd, the kubelet unit, the control-plane images;
    /// no control plane, no certificate) for running docs/guide.md by hand with `node-shell`.
    UpKubeadm,
    /// Run a shell script on a node as root logged in there (its mount namespace: /etc/kubernetes, the
    /// kubelet unit, containerd), with kubeadm, kubectl, helm and kubeha-agent on PATH:
    /// `e2e/cluster node-shell n1 'kubeadm init …'`.
    NodeShell { host: String, script: String },
    /// Stop every process and remove the namespaces, bridge, links and routes.
    Down,
    /// Show each node's link, processes and /readyz, and who holds the controller Leases.
    Status,
    /// Print the admin kubeconfig path (contexts n1, n2, n3).
    Kubeconfig,
    /// SIGKILL every process of a master (its kubelet, containerd and containers too), like a power loss.
    KillNode { node: String },
    /// Start a master's stopped processes and wait until its API server is ready and its node Ready.
    StartNode { node: String },
    /// Cut a host's link to the bridge.
    Partition { host: String },
    /// Restore a host's link to the bridge.
    Heal { host: String },
    /// Cut a host off at the bridge while its link keeps carrier (a failed switch, not a cable).
    Isolate { host: String },
    /// Undo isolate.
    Rejoin { host: String },
    /// Stop a master's kube-apiserver gracefully.
    StopApiserver { node: String },
    /// Start a master's kube-apiserver and wait until it is ready.
    StartApiserver { node: String },
    /// `helm install` kubeha's chart with the test world's values and wait until it is rolled out.
    InstallKubeha,
    /// Wait until a Helm release's DaemonSets and Deployments are rolled out (or, once it is uninstalled,
    /// its pods gone) and print its pods.
    WaitRelease {
        /// The Helm release.
        #[arg(long, default_value = "kubeha")]
        release: String,
        /// Its namespace.
        #[arg(long, default_value = kubeha_e2e::KUBEHA_NAMESPACE)]
        namespace: String,
    },
    /// SIGKILL a master's kubeha-agent container (a crash: no hand-over); its kubelet restarts it.
    KillAgent { node: String },
    /// SIGTERM a master's kubeha-agent container (it hands the VIP over); its kubelet restarts it.
    StopAgent { node: String },
    /// Wait until a master's kubeha-agent pod is Ready.
    StartAgent { node: String },
    /// Drop VRRP (IP protocol 112) to and from every master, as a network that blocks it.
    BlockVrrp,
    /// Undo block-vrrp.
    AllowVrrp,
    /// The demo (`make demo`): bring the cluster up, install kubeha with helm, apply the example cluster, show
    /// `kubectl get hac,ham`, power the active master off while a client probes the VIP, print how long the VIP
    /// was unreachable and who took over, and draw the timeline. Leaves the cluster up (`down` removes it).
    Demo,
    /// Run a command on a host: `e2e/cluster exec n1 -- ip addr`.
    Exec {
        host: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("e2e/cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cluster = Cluster::open().context("preparing binaries")?;
    match cli.command {
        Cmd::Up => {
            let _lock = cluster.lock()?;
            let t = cluster.up().await?;
            eprintln!(
                "e2e/cluster: etcd 3/3 healthy at {:.1} s, kube-apiserver 3/3 ready at {:.1} s, \
                 5 nodes Ready at {:.1} s, controller leases held at {:.1} s",
                t.etcd_healthy.as_secs_f64(),
                t.apiservers_ready.as_secs_f64(),
                t.nodes_ready.as_secs_f64(),
                t.leases_held.as_secs_f64()
            );
            println!("{}", cluster.kubeconfig().display());
        }
        Cmd::UpKubeadm => {
            let _lock = cluster.lock()?;
            cluster.up_kubeadm_world().await?;
            eprintln!("e2e/cluster: n1-n3, c1, c2 booted as empty kubeadm nodes; run docs/guide.md with node-shell");
        }
        Cmd::NodeShell { host, script } => print!("{}", cluster.on_node(&Host::parse(&host)?, &script)?),
        Cmd::Down => {
            let _lock = cluster.lock()?;
            cluster.down()?;
        }
        Cmd::Status => print!("{}", cluster.status().await),
        Cmd::Kubeconfig => println!("{}", cluster.kubeconfig().display()),
        Cmd::KillNode { node } => cluster.kill_node(&Host::parse(&node)?)?,
        Cmd::StartNode { node } => cluster.start_node(&Host::parse(&node)?).await?,
        Cmd::Partition { host } => cluster.partition(&Host::parse(&host)?)?,
        Cmd::Heal { host } => cluster.heal(&Host::parse(&host)?)?,
        Cmd::Isolate { host } => cluster.isolate(&Host::parse(&host)?)?,
        Cmd::Rejoin { host } => cluster.rejoin(&Host::parse(&host)?)?,
        Cmd::InstallKubeha => cluster.install_kubeha().await?,
        Cmd::WaitRelease { release, namespace } => {
            for pod in cluster.wait_release(&release, &namespace).await? {
                println!("{} on {}", pod.name, pod.node);
            }
        }
        Cmd::BlockVrrp => cluster.block_vrrp()?,
        Cmd::AllowVrrp => cluster.allow_vrrp()?,
        Cmd::KillAgent { node } => cluster.kill_agent(&Host::parse(&node)?)?,
        Cmd::StopAgent { node } => cluster.stop_agent(&Host::parse(&node)?)?,
        Cmd::StartAgent { node } => cluster.start_agent(&Host::parse(&node)?).await?,
        Cmd::StopApiserver { node } => cluster.stop_apiserver(&Host::parse(&node)?)?,
        Cmd::StartApiserver { node } => cluster.start_apiserver(&Host::parse(&node)?).await?,
        Cmd::Demo => {
            let _lock = cluster.lock()?;
            tokio::select! {
                r = demo::run(&cluster) => r?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            }
        }
        Cmd::Exec { host, command } => {
            let status = cluster.exec(&Host::parse(&host)?, &command)?;
            return Ok(ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)));
        }
    }
    Ok(ExitCode::SUCCESS)
}
