//! Names and addresses of the test world, and the network namespaces, bridge and links that make it.
//!
//! Only documentation ranges and names with a `kh` prefix are used, and teardown removes exactly the names
//! listed here, so nothing outside the test world is ever touched.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use crate::error::{Error, Result};

/// The bridge every host of the test world is plugged into.
pub(crate) const BRIDGE: &str = "kh-br0";
/// The root namespace's address on the bridge: how tests and people on the machine reach the hosts.
pub(crate) const GATEWAY_V4: &str = "198.51.100.1/24";
pub(crate) const GATEWAY_V6: &str = "2001:db8::1/64";
/// The Service ClusterIP range. Blackholed in the root namespace: no kube-proxy exists, and a packet to a
/// ClusterIP must die on this machine instead of following the default route out of it.
pub const SERVICE_CIDR: &str = "203.0.113.128/25";
/// The pods' addresses: a /28 per host (see [`pod_range`]), blackholed in the root namespace like the
/// Service range, so that nothing addressed to a pod ever leaves the machine.
pub const POD_CIDR: &str = "203.0.113.0/25";
/// The CNI bridge inside each host, between its pods and its eth0.
pub(crate) const POD_BRIDGE: &str = "khpod0";
/// The VIP the test world reserves for kubeha (in every API server certificate).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The IPv6 VIP the test world reserves for kubeha (in every API server certificate).
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

/// A host of the test world: a network namespace with one link (`eth0`) on the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Host {
    kind: HostKind,
    index: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum HostKind {
    Master,
    Client,
    Etcd,
}

/// A master node: `n1`, `n2`, `n3`.
pub type Node = Host;

/// The three masters, at 198.51.100.11–13 and 2001:db8::11–13.
pub const NODES: [Node; 3] = [Host::master(1), Host::master(2), Host::master(3)];
/// Client hosts on the same bridge, at 198.51.100.21 and up: where pods that are not on a master run
/// (the operator's two replicas) and where probes of the VIP come from.
pub const CLIENTS: [Host; 2] = [Host::client(1), Host::client(2)];
/// Hosts of an external etcd, at 198.51.100.31–33: booted only as empty machines in the kubeadm world, for
/// the guide's external-etcd topology; idle otherwise.
pub const ETCD_HOSTS: [Host; 3] = [Host::etcd(1), Host::etcd(2), Host::etcd(3)];

/// Every host of the test world: masters, clients, etcd hosts.
pub(crate) fn all_hosts() -> impl Iterator<Item = Host> {
    NODES.into_iter().chain(CLIENTS).chain(ETCD_HOSTS)
}
/// The `kubernetes` Service (the first address of [`SERVICE_CIDR`]), which pods find in
/// KUBERNETES_SERVICE_HOST. The clients reach the API servers behind it as kube-proxy would let them.
pub const KUBERNETES_SERVICE: (Ipv4Addr, u16) = (Ipv4Addr::new(203, 0, 113, 129), 443);

impl Host {
    const fn master(index: u8) -> Self {
        Self { kind: HostKind::Master, index }
    }

    const fn client(index: u8) -> Self {
        Self { kind: HostKind::Client, index }
    }

    const fn etcd(index: u8) -> Self {
        Self { kind: HostKind::Etcd, index }
    }

    /// Looks a host up by its name (`n2`, `c1`); what `e2e/cluster` accepts on its command line.
    pub fn parse(name: &str) -> Result<Self> {
        let known = all_hosts;
        known().find(|h| h.name() == name).ok_or_else(|| {
            let names: Vec<String> = known().map(|h| h.name()).collect();
            Error::Usage(format!("unknown host '{name}': the test world has {}", names.join(", ")))
        })
    }

    /// The host name its processes see (`n1`): lease holders and logs name the node.
    pub fn name(&self) -> String {
        match self.kind {
            HostKind::Master => format!("n{}", self.index),
            HostKind::Client => format!("c{}", self.index),
            HostKind::Etcd => format!("e{}", self.index),
        }
    }

    /// Whether this is a master (runs etcd and the control plane) rather than a client.
    pub fn is_master(&self) -> bool {
        self.kind == HostKind::Master
    }

    /// The network namespace (`kh-n1`).
    pub fn netns(&self) -> String {
        format!("kh-{}", self.name())
    }

    /// The root-namespace end of the host's link, a port of the bridge (`kh-n1-br`). Cutting it is a
    /// partition: the host keeps its address and routes but hears and reaches nobody.
    pub fn bridge_port(&self) -> String {
        format!("kh-{}-br", self.name())
    }

    /// The host's IPv4 address on the bridge.
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, self.last_octet())
    }

    /// The host's IPv6 address on the bridge.
    pub fn ipv6(&self) -> Ipv6Addr {
        // 2001:db8::11 for 198.51.100.11: the same digits, read as hex, so the two are easy to match up.
        let digits = self.last_octet().to_string();
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from_str_radix(&digits, 16).unwrap_or(0))
    }

    /// The host's position among all hosts (n1…n3, then c1…): it picks the host's pod range.
    fn ordinal(&self) -> u8 {
        match self.kind {
            HostKind::Master => self.index,
            HostKind::Client => NODES.len() as u8 + self.index,
            // No pods: etcd hosts run no kubelet.
            HostKind::Etcd => 0,
        }
    }

    fn last_octet(&self) -> u8 {
        match self.kind {
            HostKind::Master => 10 + self.index,
            HostKind::Client => 20 + self.index,
            HostKind::Etcd => 30 + self.index,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The host's pod subnet and its gateway on the host's CNI bridge: n1 203.0.113.16/28, n2 .32/28, … c2
/// .80/28, all inside [`POD_CIDR`].
pub(crate) fn pod_range(host: &Host) -> (String, Ipv4Addr) {
    let base = 16 * host.ordinal();
    (format!("203.0.113.{base}/28"), Ipv4Addr::new(203, 0, 113, base + 1))
}

/// Runs `ip` with the given arguments.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    crate::process::run(Command::new("ip").args(args))
}

/// Creates the bridge, every host's namespace and link, and the blackhole route. Expects a clean slate
/// (call [`teardown`] first).
pub(crate) fn setup() -> Result<()> {
    // No multicast snooping: VRRP adverts to 224.0.0.18 / ff02::12 must reach every port without an IGMP
    // querier on the segment.
    ip(&["link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0"])?;
    ip(&["addr", "add", GATEWAY_V4, "dev", BRIDGE])?;
    ip(&["-6", "addr", "add", GATEWAY_V6, "dev", BRIDGE, "nodad"])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    ip(&["route", "add", "blackhole", SERVICE_CIDR])?;
    ip(&["route", "add", "blackhole", POD_CIDR])?;
    for host in &all_hosts().collect::<Vec<_>>() {
        let (ns, port) = (host.netns(), host.bridge_port());
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", host.ipv4()), "dev", "eth0"])?;
        ip(&["-n", &ns, "-6", "addr", "add", &format!("{}/64", host.ipv6()), "dev", "eth0", "nodad"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        kube_proxy(host)?;
    }
    Ok(())
}

/// What kube-proxy does on a host, for the one Service pods here use: connections to the `kubernetes`
/// Service, from the host or from its pods, go to one of the three API servers, chosen at random per
/// connection (nftables DNAT in the host's own namespace, so nothing changes outside the test world); the
/// pods' traffic leaves through eth0 masqueraded behind the host's address, as the pod network of a cloud
/// provider or an overlay would carry it. As with kube-proxy, a stopped API server keeps its share until its
/// endpoint is removed; client-go retries. (kube-proxy itself is not run: its only Service here is this one.)
fn kube_proxy(host: &Host) -> Result<()> {
    let (service, port) = KUBERNETES_SERVICE;
    ip(&["-n", &host.netns(), "route", "add", SERVICE_CIDR, "dev", "eth0"])?;
    crate::process::run(Command::new("ip").args([
        "netns",
        "exec",
        &host.netns(),
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]))?;
    let backends: Vec<String> = NODES.iter().enumerate().map(|(i, n)| format!("{i} : {} . 6443", n.ipv4())).collect();
    let dnat = format!(
        "ip daddr {service} tcp dport {port} dnat to numgen random mod {} map {{ {} }}",
        NODES.len(),
        backends.join(", ")
    );
    let rules = format!(
        "table ip khsvc {{ chain out {{ type nat hook output priority -100; {dnat} ; }} ; \
         chain pre {{ type nat hook prerouting priority -100; {dnat} ; }} ; \
         chain post {{ type nat hook postrouting priority 100; ip saddr {POD_CIDR} oifname eth0 masquerade ; }} ; }}"
    );
    let mut nft = Command::new("ip");
    nft.args(["netns", "exec", &host.netns(), "nft", &rules]);
    crate::process::run(&mut nft)
}

/// Removes every namespace, link and route [`setup`] creates, whichever of them exist. Processes must be
/// gone first: a namespace with processes in it outlives its name.
pub(crate) fn teardown() {
    for host in all_hosts() {
        // Deleting the namespace deletes its eth0 and with it the veth peer in the root namespace.
        let _ = ip(&["netns", "delete", &host.netns()]);
        let _ = ip(&["link", "delete", &host.bridge_port()]);
    }
    let _ = ip(&["link", "delete", BRIDGE]);
    let _ = ip(&["route", "delete", "blackhole", SERVICE_CIDR]);
    let _ = ip(&["route", "delete", "blackhole", POD_CIDR]);
}

/// Which of the test world's namespaces and links exist right now (for `status` and leak checks).
pub(crate) fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    for host in all_hosts() {
        if std::path::Path::new("/run/netns").join(host.netns()).exists() {
            found.push(format!("netns {}", host.netns()));
        }
        if link_exists(&host.bridge_port()) {
            found.push(format!("link {}", host.bridge_port()));
        }
    }
    if link_exists(BRIDGE) {
        found.push(format!("link {BRIDGE}"));
    }
    found
}

pub(crate) fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Whether the host's bridge port is administratively up (i.e. the host is not partitioned).
pub(crate) fn link_up(host: &Host) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{}/flags", host.bridge_port()))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 1 == 1) // IFF_UP
}
