//! Address arithmetic both binaries check a VIP with.

use std::net::IpAddr;

/// The first `prefix` bits of `a` (the network of `a/prefix`); a prefix beyond the family's width is the
/// whole address.
pub fn masked(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v4) => {
            IpAddr::V4((u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)).into())
        }
        IpAddr::V6(v6) => {
            IpAddr::V6((u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0)).into())
        }
    }
}

/// Whether `a` and `b` are of one family and share the first `prefix` bits.
pub fn same_network(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    a.is_ipv4() == b.is_ipv4() && masked(a, prefix) == masked(b, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_compare_by_prefix() {
        assert!(same_network(ip("198.51.100.11"), ip("198.51.100.10"), 24));
        assert!(!same_network(ip("198.51.100.12"), ip("198.51.100.10"), 31));
        assert!(same_network(ip("203.0.113.1"), ip("198.51.100.10"), 0));
        assert!(same_network(ip("2001:db8::1"), ip("2001:db8::ffff"), 64));
        assert!(!same_network(ip("2001:db8:1::1"), ip("2001:db8::1"), 64));
        assert!(!same_network(ip("198.51.100.11"), ip("2001:db8::1"), 0), "families never share a network");
        assert_eq!(masked(ip("198.51.100.11"), 24), ip("198.51.100.0"));
        assert_eq!(masked(ip("198.51.100.11"), 40), ip("198.51.100.11"));
        assert_eq!(masked(ip("2001:db8::11"), 64), ip("2001:db8::"));
    }
}
