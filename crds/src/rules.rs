//! CEL validation rules shared by both kinds, written for what the Kubernetes 1.37 CEL environment offers.
//!
//! Three things learned against the real API server shape these rules (see docs/adr/0002):
//! - the cost estimator does not know `!=` on IP values and refuses such a rule as >100× over budget, while
//!   `==` is nominal: write `!(a == b)`;
//! - there is no `cel.bind`, and no IP arithmetic: the IPv4 broadcast check adds up the octets itself;
//! - `duration(x).getMilliseconds()` is the whole duration in milliseconds, not its millisecond part.

use kube::core::Rule;

/// `2^n` for n in 0..=32, as a CEL list literal: host-part sizes of IPv4 prefixes.
const POW2: &str = "[1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192,16384,32768,65536,131072,262144,524288,\
1048576,2097152,4194304,8388608,16777216,33554432,67108864,134217728,268435456,536870912,1073741824,2147483648,\
4294967296]";

/// The rules of a VIP written as address/prefix, in the order a person would fix them.
pub(crate) fn vip(field: &str) -> Vec<Rule> {
    let octets = "self.split('/')[0].split('.')";
    let ipv4_value =
        format!("int({octets}[0]) * 16777216 + int({octets}[1]) * 65536 + int({octets}[2]) * 256 + int({octets}[3])");
    vec![
        Rule::new("isCIDR(self)").message(
            format!("{field} must be an address with its prefix length, like 198.51.100.10/24 or 2001:db8::10/64")
                .as_str(),
        ),
        Rule::new("!isCIDR(self) || !cidr(self).ip().isUnspecified()")
            .message(format!("{field} must not be the unspecified address (0.0.0.0 or ::)").as_str()),
        Rule::new("!isCIDR(self) || !cidr(self).ip().isLoopback()")
            .message(format!("{field} must not be a loopback address: other nodes cannot reach it").as_str()),
        Rule::new("!isCIDR(self) || !cidr(self).ip().isLinkLocalUnicast()").message(
            format!("{field} must not be link-local (169.254.0.0/16, fe80::/10): clients off the link cannot reach it")
                .as_str(),
        ),
        Rule::new(
            "!isCIDR(self) || cidr(self).ip().isUnspecified() || cidr(self).ip().isLoopback() || \
             cidr(self).ip().isLinkLocalUnicast() || cidr(self).ip().isGlobalUnicast()",
        )
        .message(format!("{field} must be a unicast address, not multicast or broadcast").as_str()),
        Rule::new(
            "!isCIDR(self) || cidr(self).prefixLength() >= (cidr(self).ip().family() == 4 ? 31 : 127) || \
             !(cidr(self).ip() == cidr(self).masked().ip())",
        )
        .message(
            format!(
                "{field} is the network address of its prefix (all host bits zero): pick a host address inside it, \
             like 198.51.100.10/24"
            )
            .as_str(),
        ),
        Rule::new(format!(
            "!isCIDR(self) || cidr(self).ip().family() != 4 || cidr(self).prefixLength() >= 31 || \
             ({ipv4_value} + 1) % {POW2}[32 - cidr(self).prefixLength()] != 0"
        ))
        .message(
            format!(
                "{field} is the broadcast address of its prefix (all host bits one): pick a host address inside it"
            )
            .as_str(),
        ),
    ]
}

/// A network interface name as the kernel accepts it.
pub(crate) fn interface(field: &str) -> Rule {
    Rule::new("self.matches('^[^/\\\\s:]{1,15}$')").message(
        format!("{field} must be a network interface name: 1 to 15 characters without '/', ':' or spaces, like eth0")
            .as_str(),
    )
}

/// A VRRP virtual router id.
pub(crate) fn vrid(field: &str) -> Rule {
    Rule::new("self >= 1 && self <= 255").message(
        format!("{field} must be from 1 to 255: the VRRP virtual router id, unique among the routers on the segment")
            .as_str(),
    )
}

/// A TCP port.
pub(crate) fn port(field: &str) -> Rule {
    Rule::new("self >= 1 && self <= 65535").message(format!("{field} must be a TCP port from 1 to 65535").as_str())
}

/// `address:port` with an IP address (IPv6 in brackets), as a socket address is written.
pub(crate) fn host_port(field: &str) -> Rule {
    Rule::new(HOST_PORT.replace("$v", "self"))
        .message(format!("{field} must be address:port, like 127.0.0.1:9641 or [2001:db8::10]:8443").as_str())
}

/// Every item of a list is `address:port`.
pub(crate) fn host_ports(field: &str) -> Rule {
    Rule::new(format!("self.all(s, {})", HOST_PORT.replace("$v", "s")))
        .message(format!("{field} must be address:port items, like 198.51.100.11:6443 or [2001:db8::11]:6443").as_str())
}

/// `$v` is `address:port`: the shape by pattern, the address by `isIP`, the port by value.
const HOST_PORT: &str = "$v.matches('^([0-9.]+|\\\\[[0-9a-fA-F:.]+\\\\]):[0-9]{1,5}$') && \
     isIP($v.startsWith('[') ? $v.substring(1, $v.lastIndexOf(']')) : $v.substring(0, $v.lastIndexOf(':'))) && \
     int($v.substring($v.lastIndexOf(':') + 1)) <= 65535";

/// An integer in `min..=max`, with what it means.
pub(crate) fn range(field: &str, min: i64, max: i64, meaning: &str) -> Rule {
    Rule::new(format!("self >= {min} && self <= {max}"))
        .message(format!("{field} must be from {min} to {max}: {meaning}").as_str())
}

/// A duration field bounded to `min..=max` (both written like the field: `100ms`, `60s`).
pub(crate) fn duration_range(field: &str, min: &str, max: &str) -> Rule {
    Rule::new(format!(
        "!self.matches('^[0-9]{{1,12}}(ms|s)$') || (duration(self) >= duration('{min}') && duration(self) <= duration('{max}'))"
    ))
    .message(format!("{field} must be from {min} to {max}").as_str())
}

/// The advert interval rules of VRRPv3 (centiseconds on the wire) and VRRPv2 (whole seconds), on an object
/// with `version` and `advertInterval`.
pub(crate) fn advert_interval(field: &str) -> Vec<Rule> {
    vec![
        Rule::new(
            "self.version != 3 || (duration(self.advertInterval) >= duration('10ms') && \
             duration(self.advertInterval) <= duration('40950ms') && duration(self.advertInterval).getMilliseconds() % 10 == 0)",
        )
        .message(format!(
            "{field}.advertInterval must be from 10ms to 40950ms in steps of 10ms with VRRP version 3 (it is sent in centiseconds)"
        ).as_str())
        .field_path(".advertInterval"),
        Rule::new(
            "self.version != 2 || (duration(self.advertInterval) >= duration('1s') && \
             duration(self.advertInterval) <= duration('255s') && duration(self.advertInterval).getMilliseconds() % 1000 == 0)",
        )
        .message(format!(
            "{field}.advertInterval must be whole seconds from 1s to 255s with VRRP version 2 (keepalived interop); \
             use version 3 for sub-second adverts"
        ).as_str())
        .field_path(".advertInterval"),
    ]
}

/// client-go's leader-election margins, on an object with `leaseDuration`, `renewDeadline`, `retryPeriod`.
pub(crate) fn lease_timings(field: &str) -> Vec<Rule> {
    vec![
        Rule::new("duration(self.leaseDuration) > duration(self.renewDeadline)")
            .message(format!(
                "{field}.leaseDuration must be longer than {field}.renewDeadline: a holder must give up before others may take over"
            ).as_str())
            .field_path(".leaseDuration"),
        Rule::new("duration(self.renewDeadline).getMilliseconds() * 10 > duration(self.retryPeriod).getMilliseconds() * 12")
            .message(format!(
                "{field}.renewDeadline must be more than 1.2 × {field}.retryPeriod (the retry jitter), e.g. 10s and 2s"
            ).as_str())
            .field_path(".renewDeadline"),
    ]
}

/// A schemars transform that adds `rules` to a schema's `x-kubernetes-validations`.
pub(crate) fn with(rules: impl IntoIterator<Item = Rule>) -> impl FnMut(&mut schemars::Schema) {
    let rules: Vec<Rule> = rules.into_iter().collect();
    move |schema| {
        for rule in &rules {
            // Serialising a Rule (strings and options) cannot fail.
            let _ = kube::core::validate(schema, rule.clone());
        }
    }
}
