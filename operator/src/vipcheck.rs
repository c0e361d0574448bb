//! Mistakes in `spec.vip` that would hurt someone if a member took the address: it is a node's own address
//! (the master that takes it answers ARP for it, and that node's traffic — its API server, its etcd peer
//! port — goes to the wrong host), or it lies outside the network the masters are on (no client could reach
//! it). Pure: the cluster's VIP and the nodes in, the first mistake out. The operator then hands the VIP to
//! no member; the agents check the same on their nodes before they add an address (agent/src/vipcheck.rs),
//! where they also see the interface's prefix, which node objects do not carry.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt as _;

use kubeha_common::net::same_network;

use crate::desired::node_address;

/// Why the VIP cannot be handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipMistake {
    /// CamelCase, for machines: `VIPIsNodeAddress` or `VIPOutsideSubnet`.
    pub reason: &'static str,
    /// A sentence for people, naming the node, the address and the fix.
    pub message: String,
}

/// The first mistake of `vip` (as written in the spec, `address/prefix`) among `nodes`, whose `masters`
/// would carry it; `None` when it looks right as far as the node objects tell. A master given priority 255
/// in `priorities` owns the address (RFC 9568 §1.6): the VIP may be its own.
pub fn check(vip: &str, masters: &[&Node], nodes: &[Node], priorities: &BTreeMap<String, i32>) -> Option<VipMistake> {
    let (address, prefix) = parse(vip)?;
    for node in nodes.iter().filter(|n| priorities.get(&n.name_any()) != Some(&255)) {
        let mut own = node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten();
        if let Some(a) = own.find(|a| a.address.parse::<IpAddr>().ok() == Some(address)) {
            return Some(VipMistake {
                reason: "VIPIsNodeAddress",
                message: format!(
                    "spec.vip {address} is node {}'s own address ({}): the master holding the VIP would answer for \
                     it and take that node's traffic; set spec.vip to an unused address in the masters' subnet",
                    node.name_any(),
                    a.type_
                ),
            });
        }
    }
    // A host route says nothing about the network: the agents check it against their interface.
    if is_host_route(address, prefix) {
        return None;
    }
    let outside: Vec<String> = masters
        .iter()
        .filter_map(|n| Some((n.name_any(), node_address(n, &address)?)))
        .filter(|(_, ip)| !same_network(*ip, address, prefix))
        .map(|(name, ip)| format!("{name} ({ip})"))
        .collect();
    (!outside.is_empty()).then(|| VipMistake {
        reason: "VIPOutsideSubnet",
        message: format!(
            "spec.vip {vip} is not on the network of master {}: clients on the masters' network could not reach \
             it; set spec.vip to an unused address in the masters' subnet, with its prefix length",
            outside.join(", ")
        ),
    })
}

/// Whether `vip` (`address/prefix`) is a host route (/32, /128), which says nothing of the masters' network.
pub fn host_route(vip: &str) -> bool {
    parse(vip).is_some_and(|(a, p)| is_host_route(a, p))
}

fn is_host_route(address: IpAddr, prefix: u8) -> bool {
    prefix == if address.is_ipv4() { 32 } else { 128 }
}

fn parse(vip: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = vip.split_once('/')?;
    Some((a.parse().ok()?, p.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::tests::node;

    fn three() -> Vec<Node> {
        (1..=3).map(|i| node(&format!("n{i}"), &[&format!("198.51.100.1{i}")], true)).collect()
    }

    fn run(vip: &str, nodes: &[Node]) -> Option<VipMistake> {
        check(vip, &nodes.iter().collect::<Vec<_>>(), nodes, &BTreeMap::new())
    }

    #[test]
    fn a_free_address_in_the_masters_subnet_is_fine() {
        assert_eq!(run("198.51.100.10/24", &three()), None);
        assert_eq!(run("198.51.100.10/32", &three()), None, "a host route: the agents check the interface");
        let v6: Vec<Node> = (1..=3).map(|i| node(&format!("n{i}"), &[&format!("2001:db8::1{i}")], true)).collect();
        assert_eq!(run("2001:db8::10/64", &v6), None);
    }

    #[test]
    fn a_nodes_own_address_is_refused_with_the_node_and_the_fix() {
        let m = run("198.51.100.12/24", &three()).unwrap();
        assert_eq!(m.reason, "VIPIsNodeAddress");
        assert!(m.message.contains("198.51.100.12 is node n2's own address (InternalIP)"), "{}", m.message);
        assert!(m.message.contains("set spec.vip to an unused address"), "{}", m.message);
        // Any node's, not only a master's; any address type.
        let mut nodes = three();
        nodes.push(node("w1", &["198.51.100.21"], false));
        assert_eq!(run("198.51.100.21/24", &nodes).unwrap().reason, "VIPIsNodeAddress");
        assert_eq!(run("198.51.100.12/32", &three()).unwrap().reason, "VIPIsNodeAddress");
        // Unless that master owns it, with priority 255.
        let nodes = three();
        let owner = BTreeMap::from([("n2".to_string(), 255)]);
        assert_eq!(check("198.51.100.12/24", &nodes.iter().collect::<Vec<_>>(), &nodes, &owner), None);
    }

    #[test]
    fn a_vip_outside_the_masters_network_is_refused_naming_them() {
        let m = run("203.0.113.10/24", &three()).unwrap();
        assert_eq!(m.reason, "VIPOutsideSubnet");
        assert!(m.message.contains("spec.vip 203.0.113.10/24 is not on the network of master n1 (198.51.100.11)"));
        assert!(m.message.contains("n3 (198.51.100.13)"), "{}", m.message);
        // The prefix decides: a /16 covering the masters is their network as far as node objects tell.
        assert_eq!(run("198.51.0.10/16", &three()), None);
    }
}
