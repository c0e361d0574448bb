//! Two clusters that would fight on the wire: the same VRID for the same address family on the same
//! interface of a shared master (their adverts collide), or the same VIP. Both are told; only the older one
//! keeps changing its members. IPv4 and IPv6 routers have separate VRID spaces (RFC 9568 §5.2.3: IPv4
//! adverts go to 224.0.0.18 and carry the virtual MAC 00-00-5E-00-01-{VRID}, IPv6 ones go to ff02::12 with
//! 00-00-5E-00-02-{VRID}), so a dual-stack control plane may use one VRID for both.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::jiff::Timestamp;

/// What one cluster claims on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The cluster's name.
    pub name: String,
    /// When it was created (older wins).
    pub created: Option<Timestamp>,
    /// The VIP's address.
    pub vip: Option<IpAddr>,
    /// The VRRP virtual router id.
    pub vrid: i32,
    /// The interface, `None` when each agent finds the one in the VIP's subnet: that could be any interface,
    /// so it is taken to be the other cluster's (a VRID clash is reported rather than risked).
    pub interface: Option<String>,
    /// The nodes it selects.
    pub masters: BTreeSet<String>,
}

/// A conflict of one cluster with another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The other cluster.
    pub with: String,
    /// What collides: "VRIDInUse" or "VIPInUse".
    pub reason: &'static str,
    /// A sentence for people, with the fix.
    pub message: String,
    /// Whether this cluster is the newer of the two, and so must not change its members.
    pub newer: bool,
}

impl Claim {
    /// Whether this claim is newer than `other` (creation time, then name, so that exactly one of two is).
    fn newer_than(&self, other: &Claim) -> bool {
        (self.created, &self.name) > (other.created, &other.name)
    }
}

/// Every conflict of `me` with `others` (which may include `me`; it is skipped).
pub fn conflicts(me: &Claim, others: &[Claim]) -> Vec<Conflict> {
    let mut out = Vec::new();
    for other in others.iter().filter(|o| o.name != me.name) {
        let newer = me.newer_than(other);
        let shared: Vec<&String> = me.masters.intersection(&other.masters).collect();
        if me.vip.is_some() && me.vip == other.vip {
            out.push(Conflict {
                with: other.name.clone(),
                reason: "VIPInUse",
                message: format!(
                    "HighAvailabilityCluster {} uses the same VIP address; give one of them another spec.vip",
                    other.name
                ),
                newer,
            });
        } else if me.vrid == other.vrid
            && (me.interface == other.interface || me.interface.is_none() || other.interface.is_none())
            && !shared.is_empty()
            && me.vip.map(|v| v.is_ipv4()) == other.vip.map(|v| v.is_ipv4())
        {
            let nodes: Vec<&str> = shared.iter().map(|s| s.as_str()).collect();
            out.push(Conflict {
                with: other.name.clone(),
                reason: "VRIDInUse",
                message: format!(
                    "HighAvailabilityCluster {} uses VRID {} for {} on {} of {}; give one of them another spec.vrid",
                    other.name,
                    me.vrid,
                    if me.vip.is_some_and(|v| v.is_ipv6()) { "IPv6" } else { "IPv4" },
                    me.interface
                        .as_deref()
                        .or(other.interface.as_deref())
                        .unwrap_or("the interface of the VIP's subnet"),
                    nodes.join(", ")
                ),
                newer,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, secs: i64, vip: &str, vrid: i32, masters: &[&str]) -> Claim {
        Claim {
            name: name.into(),
            created: Some(Timestamp::from_second(secs).unwrap()),
            vip: vip.parse().ok(),
            vrid,
            interface: Some("eth0".into()),
            masters: masters.iter().map(|m| (*m).to_string()).collect(),
        }
    }

    #[test]
    fn the_same_vrid_on_shared_masters_conflicts_and_the_newer_yields() {
        let old = claim("old", 1, "198.51.100.10", 51, &["n1", "n2", "n3"]);
        let new = claim("new", 2, "198.51.100.20", 51, &["n3", "n4"]);
        let all = [old.clone(), new.clone()];
        let c_new = conflicts(&new, &all);
        assert_eq!(c_new.len(), 1);
        assert_eq!((c_new[0].with.as_str(), c_new[0].reason, c_new[0].newer), ("old", "VRIDInUse", true));
        assert!(c_new[0].message.contains("n3"), "{}", c_new[0].message);
        let c_old = conflicts(&old, &all);
        assert_eq!((c_old[0].with.as_str(), c_old[0].newer), ("new", false));
    }

    #[test]
    fn the_same_vrid_elsewhere_or_on_another_interface_is_fine() {
        let a = claim("a", 1, "198.51.100.10", 51, &["n1", "n2"]);
        let b = claim("b", 2, "198.51.100.20", 51, &["n3", "n4"]);
        assert!(conflicts(&b, &[a.clone(), b.clone()]).is_empty());
        let mut c = claim("c", 3, "198.51.100.30", 51, &["n1"]);
        c.interface = Some("eth1".into());
        assert!(conflicts(&c, &[a.clone(), c.clone()]).is_empty());
        // An interface each agent finds may be eth1 as well as eth0: the VRID is taken as in use there.
        c.interface = None;
        let found = conflicts(&c, &[a, c.clone()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("VRID 51 for IPv4 on eth0 of n1"), "{}", found[0].message);
    }

    #[test]
    fn the_same_vrid_in_the_other_address_family_is_fine() {
        let v4 = claim("v4", 1, "198.51.100.10", 51, &["n1", "n2", "n3"]);
        let v6 = claim("v6", 2, "2001:db8::10", 51, &["n1", "n2", "n3"]);
        assert!(conflicts(&v6, &[v4.clone(), v6.clone()]).is_empty(), "IPv4 and IPv6 have separate VRID spaces");
        let v6b = claim("v6b", 3, "2001:db8::20", 51, &["n3"]);
        let c = conflicts(&v6b, &[v4, v6, v6b.clone()]);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].with.as_str(), c[0].reason), ("v6", "VRIDInUse"));
        assert!(c[0].message.contains("VRID 51 for IPv6"), "{}", c[0].message);
    }

    #[test]
    fn the_same_vip_conflicts_whatever_the_vrid() {
        let a = claim("a", 1, "198.51.100.10", 51, &["n1"]);
        let b = claim("b", 1, "198.51.100.10", 52, &["n9"]);
        let c = conflicts(&b, &[a.clone(), b.clone()]);
        assert_eq!((c[0].reason, c[0].newer), ("VIPInUse", true), "same creation time: the name decides");
        assert!(!conflicts(&a, &[a.clone(), b])[0].newer);
    }
}
