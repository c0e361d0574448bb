//! The faults tests and people inject: nodes killed or powered off and back, partitions, stopped API
//! servers and components, killed or stopped agents, VRRP blocked on the wire.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::net::{self, Host, NODES, Node};
use crate::node;
use crate::process;

use super::{AGENT_METRICS_PORT, Cluster, Component, http_get, master};

impl Cluster {
    /// Starts whatever of the node's components is not running and waits for its API server to be ready.
    /// etcd rejoins with the data it had.
    pub async fn start_node(&self, node: &Node) -> Result<()> {
        master(node)?;
        if self.is_kubeadm_world() {
            // kubeadm's node: its kubelet starts at boot and runs the control plane's static pods.
            self.start_runtime(node)?;
            self.wait_booted(node).await?;
            return self.wait_node_ready(node).await;
        }
        for c in Component::ALL {
            if self.daemon(node, c).pid().is_none() {
                self.start(node, c)?;
            }
        }
        self.wait_ready(node).await?;
        self.start_runtime(node)?;
        self.wait_node_ready(node).await
    }

    /// SIGKILLs every process of the node (everything in its network namespace), like a power loss.
    pub fn kill_node(&self, node: &Node) -> Result<()> {
        master(node)?;
        self.kill_runtime(node)?;
        process::kill_all_in(node, true, Duration::ZERO)?;
        for c in Component::ALL {
            let _ = fs::remove_file(self.daemon(node, c).pidfile);
        }
        Ok(())
    }

    /// Powers the node off, as far as anyone else can tell: every process SIGKILLed, its link down, and the
    /// addresses that software added to its interface (a VIP) gone, as they are from a machine without
    /// power. [`Cluster::power_on`] boots it.
    pub fn power_off(&self, node: &Node) -> Result<()> {
        self.kill_node(node)?;
        self.partition(node)?;
        let ns = node.netns();
        let shown = process::output(Command::new("ip").args(["-n", &ns, "-o", "addr", "show", "dev", "eth0"]))?;
        let own = [node.ipv4().to_string(), node.ipv6().to_string()];
        for line in shown.lines() {
            let mut words = line.split_whitespace().skip_while(|w| *w != "inet" && *w != "inet6");
            let (Some(_), Some(cidr)) = (words.next(), words.next()) else { continue };
            let address = cidr.split('/').next().unwrap_or_default();
            if !own.iter().any(|o| o == address) && !address.starts_with("fe80:") {
                net::ip(&["-n", &ns, "addr", "del", cidr, "dev", "eth0"])?;
            }
        }
        Ok(())
    }

    /// Boots a node that [`Cluster::power_off`] stopped: link up, its components started, its API server
    /// ready, its kubelet and containerd booted and the node Ready (its kubelet then starts its pods).
    pub async fn power_on(&self, node: &Node) -> Result<()> {
        self.heal(node)?;
        self.start_node(node).await
    }

    /// Cuts the host's link: it keeps its address and routes, but reaches nobody and nobody reaches it.
    pub fn partition(&self, host: &Host) -> Result<()> {
        net::ip(&["link", "set", &host.bridge_port(), "down"])
    }

    /// Restores the host's link.
    pub fn heal(&self, host: &Host) -> Result<()> {
        net::ip(&["link", "set", &host.bridge_port(), "up"])
    }

    /// Cuts the host off beyond its NIC, as a failed switch would: the bridge stops forwarding to and from
    /// its port while the host's link keeps carrier, so the host cannot tell from its interface.
    pub fn isolate(&self, host: &Host) -> Result<()> {
        process::run(Command::new("bridge").args(["link", "set", "dev", &host.bridge_port(), "state", "0"]))
    }

    /// Lets the bridge forward for the host again.
    pub fn rejoin(&self, host: &Host) -> Result<()> {
        process::run(Command::new("bridge").args(["link", "set", "dev", &host.bridge_port(), "state", "3"]))
    }

    /// Stops the node's API server gracefully (SIGTERM; SIGKILL after 15 s).
    pub fn stop_apiserver(&self, node: &Node) -> Result<()> {
        self.stop_component(node, Component::KubeApiserver)
    }

    /// Starts the node's API server (if it is not running) and waits until it is ready.
    pub async fn start_apiserver(&self, node: &Node) -> Result<()> {
        master(node)?;
        if self.daemon(node, Component::KubeApiserver).pid().is_none() {
            self.start(node, Component::KubeApiserver)?;
        }
        self.wait_ready(node).await
    }

    /// Installs kubeha as a user does: `helm install` of the chart with the test world's values; returns once
    /// the agents (one per master) and the operators are rolled out and Ready.
    pub async fn install_kubeha(&self) -> Result<()> {
        self.install_chart(&[]).await.map(drop)
    }

    /// Waits until the node's agent (its kubelet restarts a stopped or killed one) runs and answers /readyz
    /// on the node's address. Asks the node, not the API, so that it works while every API server is down.
    pub async fn start_agent(&self, node: &Node) -> Result<()> {
        master(node)?;
        let readyz = SocketAddr::from((node.ipv4(), AGENT_METRICS_PORT));
        self.poll(
            &format!("kubeha-agent on {node} ready"),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || {
                let ready = node::agent_pid(node).is_some() && http_get(readyz, "/readyz").starts_with("HTTP/1.0 200");
                async move { Ok(ready.then_some(())) }
            },
        )
        .await
    }

    /// SIGKILLs the process of the node's agent container, like a crash: it cannot hand the VIP over; its
    /// kubelet restarts it. Found through the node's cgroups, so it works while the API is down.
    pub fn kill_agent(&self, node: &Node) -> Result<()> {
        master(node)?;
        self.signal_agent(node, nix::sys::signal::Signal::SIGKILL)
    }

    /// SIGTERMs the process of the node's agent container, as a kubelet stops one: it hands the VIP over and
    /// exits; its kubelet starts it again.
    pub fn stop_agent(&self, node: &Node) -> Result<()> {
        master(node)?;
        self.signal_agent(node, nix::sys::signal::Signal::SIGTERM)
    }

    pub(super) fn signal_agent(&self, node: &Node, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = node::agent_pid(node).ok_or_else(|| Error::Usage(format!("no kubeha agent runs on {node}")))?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        // Gone before the caller goes on: a start_agent right after must not find the old process.
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while node::agent_pid(node) == Some(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Drops every VRRP packet (IP protocol 112) to and from every master, as a network that blocks VRRP
    /// does: an nftables table `khvrrp` in each master's namespace (gone with the namespace).
    pub fn block_vrrp(&self) -> Result<()> {
        for node in NODES {
            let ns = node.netns();
            let nft = |args: &[&str]| process::run(Command::new("ip").args(["netns", "exec", &ns, "nft"]).args(args));
            nft(&["add", "table", "inet", "khvrrp"])?;
            for (chain, hook) in [("in", "input"), ("out", "output")] {
                nft(&["add", "chain", "inet", "khvrrp", chain, &format!("{{ type filter hook {hook} priority 0; }}")])?;
                nft(&["add", "rule", "inet", "khvrrp", chain, "meta", "l4proto", "112", "drop"])?;
            }
        }
        Ok(())
    }

    /// Undoes [`Cluster::block_vrrp`].
    pub fn allow_vrrp(&self) -> Result<()> {
        for node in NODES {
            let _ = Command::new("ip")
                .args(["netns", "exec", &node.netns(), "nft", "delete", "table", "inet", "khvrrp"])
                .output();
        }
        Ok(())
    }

    /// Stops one component of a master (SIGTERM; SIGKILL after 15 s).
    pub fn stop_component(&self, node: &Node, c: Component) -> Result<()> {
        master(node)?;
        self.daemon(node, c).stop(Duration::from_secs(15));
        Ok(())
    }

    /// SIGKILLs one component of a master, like a crash.
    pub fn kill_component(&self, node: &Node, c: Component) -> Result<()> {
        master(node)?;
        self.daemon(node, c).kill();
        Ok(())
    }

    /// Starts one component of a master unless it runs (without waiting for it).
    pub fn start_component(&self, node: &Node, c: Component) -> Result<()> {
        master(node)?;
        if self.daemon(node, c).pid().is_none() {
            self.start(node, c)?;
        }
        Ok(())
    }
}
