//! Whether this node may carry the VIP, from the addresses on its interface: the VIP must not be the node's
//! own address (configured outside kubeha) unless the node owns it with priority 255, and it must lie in one
//! of the interface's subnets, or no client on that network can reach it. The operator checks the same from
//! node objects (operator/src/vipcheck.rs); this is the check on the node itself, where the interface's
//! prefix is known, and the only one in front of a standalone file or a bootstrap manifest. Pure: the
//! driver, `kubeha-agent check` and `kubeha-agent bootstrap` read the addresses and call it.

use std::net::IpAddr;

use kubeha_common::net::{masked, same_network};

/// One address on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnLink {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Configured without a lifetime (IFA_F_PERMANENT): an administrator's or the network configuration's
    /// address. kubeha always adds the VIP with a lifetime, so a permanent VIP is not one it left behind.
    pub permanent: bool,
}

/// Why this node may not carry `vip` on `interface`, as a sentence naming the field and the fix.
pub fn check(vip: IpAddr, interface: &str, owner: bool, on_link: &[OnLink]) -> Result<(), String> {
    if !owner && on_link.iter().any(|a| a.address == vip && a.permanent) {
        return Err(format!(
            "vip {vip} is this node's own address on {interface} (configured outside kubeha): taking it over \
             would take this node's traffic; set vip to an unused address in {interface}'s subnet, or priority \
             255 if this node owns the address"
        ));
    }
    let subnets: Vec<&OnLink> = on_link.iter().filter(|a| tells_the_network(a, vip)).collect();
    if subnets.is_empty() || subnets.iter().any(|a| same_network(a.address, vip, a.prefix)) {
        // No address of the family: the driver reports the missing source address itself.
        return Ok(());
    }
    let listed: Vec<String> = subnets.iter().map(|a| format!("{}/{}", a.address, a.prefix)).collect();
    Err(format!(
        "vip {vip} is outside every subnet of {interface} ({}): no client on that network could reach it; set vip \
         to an unused address in {}",
        listed.join(", "),
        network(subnets[0])
    ))
}

/// The interface that carries `vip` when the config names none: the one of `interfaces` (name, addresses)
/// with an address whose subnet holds the VIP. None or several is an error naming the field and the fix.
pub fn choose_interface(vip: IpAddr, interfaces: &[(String, Vec<OnLink>)]) -> Result<String, String> {
    let holds = |a: &OnLink| tells_the_network(a, vip) && same_network(a.address, vip, a.prefix);
    let found: Vec<&str> =
        interfaces.iter().filter(|(_, addrs)| addrs.iter().any(holds)).map(|(name, _)| name.as_str()).collect();
    match found.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(format!(
            "no interface of this node has an address in the subnet of vip {vip}: set `interface` (spec.interface \
             of a HighAvailabilityCluster) to the one that should carry it, or set vip to an unused address in \
             this node's subnet"
        )),
        several => Err(format!(
            "interfaces {} all have an address in the subnet of vip {vip}: set `interface` (spec.interface of a \
             HighAvailabilityCluster) to the one that should carry it",
            several.join(", ")
        )),
    }
}

/// Whether `a` says which network `vip` should be on: an address of the VIP's family, not the VIP itself,
/// and not IPv6 link-local (the VIP must be reachable beyond this link's own scope).
fn tells_the_network(a: &OnLink, vip: IpAddr) -> bool {
    a.address.is_ipv4() == vip.is_ipv4() && a.address != vip && !link_local(a.address)
}

fn link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// `198.51.100.11/24` → `198.51.100.0/24`.
fn network(a: &OnLink) -> String {
    format!("{}/{}", masked(a.address, a.prefix), a.prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(a: &str, prefix: u8, permanent: bool) -> OnLink {
        OnLink { address: a.parse().unwrap(), prefix, permanent }
    }

    fn ip(a: &str) -> IpAddr {
        a.parse().unwrap()
    }

    fn eth0() -> Vec<OnLink> {
        vec![on("198.51.100.11", 24, true), on("fe80::1", 64, true), on("2001:db8::11", 64, true)]
    }

    #[test]
    fn the_one_interface_in_the_vips_subnet_carries_it() {
        let lo = ("lo".to_string(), vec![on("127.0.0.1", 8, true), on("::1", 128, true)]);
        let ens3 = ("ens3".to_string(), vec![on("198.51.100.11", 24, true), on("fe80::1", 64, true)]);
        let eno1 = ("eno1".to_string(), vec![on("203.0.113.5", 24, true), on("2001:db8::11", 64, true)]);
        let all = [lo.clone(), ens3.clone(), eno1.clone()];
        assert_eq!(choose_interface(ip("198.51.100.10"), &all).as_deref(), Ok("ens3"));
        assert_eq!(choose_interface(ip("2001:db8::10"), &all).as_deref(), Ok("eno1"));
        // A link-local address is on every link: it chooses nothing.
        let e = choose_interface(ip("fe80::10"), &all).unwrap_err();
        assert!(e.starts_with("no interface of this node has an address in the subnet of vip fe80::10"), "{e}");
        // The VIP left behind on an interface (a /32 here) does not make that interface one with its subnet.
        let left = ("eth1".to_string(), vec![on("192.0.2.10", 32, false)]);
        let e = choose_interface(ip("192.0.2.10"), &[lo, left]).unwrap_err();
        assert!(e.contains("set `interface` (spec.interface of a HighAvailabilityCluster)"), "{e}");
        let twin = ("eth1".to_string(), vec![on("198.51.100.99", 16, true)]);
        let e = choose_interface(ip("198.51.100.10"), &[ens3, eno1, twin]).unwrap_err();
        assert!(e.starts_with("interfaces ens3, eth1 all have an address in the subnet of vip 198.51.100.10"), "{e}");
    }

    #[test]
    fn a_free_address_in_the_interfaces_subnet_is_fine() {
        assert_eq!(check(ip("198.51.100.10"), "eth0", false, &eth0()), Ok(()));
        assert_eq!(check(ip("2001:db8::10"), "eth0", false, &eth0()), Ok(()));
        // The VIP left by this node's agent a moment ago: added with a lifetime, so not the node's own.
        let mut left = eth0();
        left.push(on("198.51.100.10", 24, false));
        assert_eq!(check(ip("198.51.100.10"), "eth0", false, &left), Ok(()));
    }

    #[test]
    fn the_nodes_own_address_is_refused_unless_it_owns_it() {
        let e = check(ip("198.51.100.11"), "eth0", false, &eth0()).unwrap_err();
        assert!(e.starts_with("vip 198.51.100.11 is this node's own address on eth0"), "{e}");
        assert!(e.contains("set vip to an unused address") && e.contains("priority 255"), "{e}");
        assert_eq!(check(ip("198.51.100.11"), "eth0", true, &eth0()), Ok(()), "RFC 9568 §1.6: the owner");
    }

    #[test]
    fn a_vip_outside_the_interfaces_subnets_is_refused_with_the_subnet_to_use() {
        let e = check(ip("203.0.113.10"), "eth0", false, &eth0()).unwrap_err();
        assert_eq!(
            e,
            "vip 203.0.113.10 is outside every subnet of eth0 (198.51.100.11/24): no client on that network could \
             reach it; set vip to an unused address in 198.51.100.0/24"
        );
        let e = check(ip("2001:db8:1::10"), "eth0", false, &eth0()).unwrap_err();
        assert!(e.contains("(2001:db8::11/64)") && e.ends_with("2001:db8::/64"), "{e}");
        // Inside any one of several subnets will do; an interface with none of the family is left to the driver.
        let mut two = eth0();
        two.push(on("203.0.113.5", 28, true));
        assert_eq!(check(ip("203.0.113.10"), "eth0", false, &two), Ok(()));
        assert_eq!(check(ip("203.0.113.10"), "eth0", false, &[on("fe80::1", 64, true)]), Ok(()));
    }
}
