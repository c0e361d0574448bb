//! The standalone config file (`kubeha-agent run --config FILE`): YAML with the shape of a
//! HighAvailabilityMember spec (docs/agent-config.md). A bad file stops the agent with every problem named
//! by its key, with the allowed values; nothing starts half-configured.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use kubeha_crds::HighAvailabilityMemberSpec;

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, as a dotted path (`vrrp.advertInterval`).
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not YAML of the right shape (a wrong type, a missing key).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parses, but values are not allowed.
    #[error("{path} is not a valid kubeha agent configuration:\n{}", list(.problems))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {}: {}", p.key, p.message)).collect::<Vec<_>>().join("\n")
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A validated VIP: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vip {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<HighAvailabilityMemberSpec, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Syntax { message, .. } => ConfigError::Syntax { path: shown.clone(), message },
        ConfigError::Invalid { problems, .. } => ConfigError::Invalid { path: shown.clone(), problems },
        other => other,
    })
}

/// Parses and validates the text of a config file.
pub fn parse(text: &str) -> Result<HighAvailabilityMemberSpec, ConfigError> {
    let mut unknown = Vec::new();
    let de = serde_norway::Deserializer::from_str(text);
    let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(de, &mut note_unknown);
    // The path names the key of a value of the wrong form (`vrrp.advertInterval`), where the parser alone
    // names only the section it was reading.
    let spec: HighAvailabilityMemberSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Syntax { path: String::new(), message: with_key(&key, &e.into_inner().to_string()) }
    })?;
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|key| Problem { key, message: "unknown key (check its spelling against docs/agent-config.md)".into() })
        .collect();
    problems.extend(validate(&spec));
    if spec.election.mode == kubeha_crds::ElectionMode::Lease {
        problems.push(Problem {
            key: "election.mode".into(),
            message: "Lease needs the Kubernetes API: only an agent in cluster mode (run --node-name) can hold a \
                      Lease; a config file runs VRRP (omit election.mode)"
                .into(),
        });
    }
    if problems.is_empty() { Ok(spec) } else { Err(ConfigError::Invalid { path: String::new(), problems }) }
}

/// The parser's `message` naming `key`: the parser puts the section it was in first (`vrrp: …`), which is
/// replaced by the whole key (`vrrp.advertInterval: …`).
fn with_key(key: &str, message: &str) -> String {
    if key == "." {
        return message.to_string();
    }
    match message.split_once(": ") {
        Some((section, rest))
            if key == section || key.strip_prefix(section).is_some_and(|r| r.starts_with(['.', '['])) =>
        {
            format!("{key}: {rest}")
        }
        _ => format!("{key}: {message}"),
    }
}

/// The VIP of a spec, if it has one and it is valid.
pub fn vip(spec: &HighAvailabilityMemberSpec) -> Option<Vip> {
    let (addr, prefix) = spec.vip.as_deref()?.split_once('/')?;
    let address: IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(Vip { address, prefix })
}

/// Every rule the API server enforces with CEL on a member, checked again for a file nobody validated.
pub fn validate(spec: &HighAvailabilityMemberSpec) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut bad = |key: &str, message: String| p.push(Problem { key: key.into(), message });
    if spec.node_name.is_empty() {
        bad("nodeName", "required: the name of this node, e.g. n1".into());
    }
    match (&spec.vip, spec.vrid, &spec.interface) {
        (None, None, None) => {
            if !spec.proxy.as_ref().is_some_and(|p| p.enabled) {
                bad(
                    "vip",
                    "required unless the agent runs only the proxy: an address with prefix, e.g. 198.51.100.10/24"
                        .into(),
                );
            }
        }
        (Some(_), Some(_), _) => {}
        _ => bad(
            "vip",
            "vip and vrid go together, and interface needs them: set vip and vrid (and interface, or let the agent \
             find the one in the VIP's subnet), or none of them for a proxy-only agent"
                .into(),
        ),
    }
    if let Some(text) = &spec.vip {
        match vip(spec) {
            None => bad(
                "vip",
                format!("'{text}' is not an address with prefix length, like 198.51.100.10/24 or 2001:db8::10/64"),
            ),
            Some(v) => {
                if let Some(why) = unusable_vip(&v) {
                    bad("vip", format!("'{text}' {why}"));
                }
            }
        }
    }
    if let Some(vrid) = spec.vrid
        && !(1..=255).contains(&vrid)
    {
        bad("vrid", format!("{vrid} is not from 1 to 255"));
    }
    if let Some(i) = &spec.interface
        && (i.is_empty() || i.len() > 15 || i.contains(['/', ':', ' ']))
    {
        bad("interface", format!("'{i}' is not an interface name (1–15 characters, no '/', ':' or spaces), e.g. eth0"));
    }
    if !(1..=255).contains(&spec.priority) {
        bad("priority", format!("{} is not from 1 to 255 (255 only for the address owner)", spec.priority));
    }
    let v = &spec.vrrp;
    let ms = v.advert_interval.as_millis();
    match v.version {
        3 if !(10..=40_950).contains(&ms) || !ms.is_multiple_of(10) => bad(
            "vrrp.advertInterval",
            format!("{} is not allowed with version 3: 10ms to 40950ms in steps of 10ms", v.advert_interval),
        ),
        2 if !(1000..=255_000).contains(&ms) || !ms.is_multiple_of(1000) => bad(
            "vrrp.advertInterval",
            format!("{} is not allowed with version 2: whole seconds from 1s to 255s", v.advert_interval),
        ),
        2 if spec.vip.as_deref().is_some_and(|x| x.contains(':')) => {
            bad("vrrp.version", "2 is IPv4 only: use version 3 for an IPv6 VIP".into())
        }
        2 | 3 => {}
        other => bad("vrrp.version", format!("{other} is not 2 or 3")),
    }
    if v.preempt_delay.as_millis() > 1_000_000 {
        bad("vrrp.preemptDelay", format!("{} is more than 1000s", v.preempt_delay));
    }
    for (key, list) in [("peers", &v.peers), ("members", &v.members)] {
        for (i, a) in list.iter().enumerate() {
            if a.parse::<IpAddr>().is_err() {
                bad(&format!("vrrp.{key}[{i}]"), format!("'{a}' is not an IP address, e.g. 198.51.100.12"));
            }
        }
    }
    if !(0..=253).contains(&spec.fencing_boost) {
        bad(
            "fencingBoost",
            format!("{} is not from 0 to 253 (the operator sets it in cluster mode)", spec.fencing_boost),
        );
    }
    if !(0..=100).contains(&spec.garp.repeat) {
        bad("garp.repeat", format!("{} is not from 0 to 100", spec.garp.repeat));
    }
    for (i, h) in spec.health.iter().enumerate() {
        let key = |k: &str| format!("health[{i}].{k}");
        let kinds = [h.https.is_some(), h.tcp.is_some(), h.link.is_some()].iter().filter(|x| **x).count();
        if kinds != 1 {
            bad(&format!("health[{i}]"), "needs exactly one of https, tcp or link".into());
        }
        if !(1..=10).contains(&h.rise) {
            bad(&key("rise"), format!("{} is not from 1 to 10", h.rise));
        }
        if !(1..=10).contains(&h.fall) {
            bad(&key("fall"), format!("{} is not from 1 to 10", h.fall));
        }
        if !(-254..=0).contains(&h.weight) {
            bad(&key("weight"), format!("{} is not from -254 to 0 (0: give up the VIP while failing)", h.weight));
        }
        if !(10..=3_600_000).contains(&h.interval.as_millis()) {
            bad(&key("interval"), format!("{} is not from 10ms to 3600s", h.interval));
        }
        if let Some(https) = &h.https
            && !https.url.starts_with("https://")
        {
            bad(&key("https.url"), format!("'{}' is not an https:// URL", https.url));
        }
    }
    if let Some(proxy) = &spec.proxy {
        validate_proxy(proxy, &mut bad);
    }
    validate_etcd(&spec.etcd, &mut bad);
    if spec.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
        bad("metrics.listen", format!("'{}' is not address:port, e.g. 127.0.0.1:9641", spec.metrics.listen));
    }
    p
}

fn validate_etcd(etcd: &kubeha_crds::EtcdSpec, bad: &mut impl FnMut(&str, String)) {
    use kubeha_crds::EtcdTopology;
    match etcd.topology {
        EtcdTopology::External if etcd.members.is_empty() => {
            bad("etcd.members", "must list every etcd member (name and healthURL) when topology is External".into())
        }
        EtcdTopology::Stacked if !etcd.members.is_empty() => bad(
            "etcd.members",
            "is only for topology External: stacked etcd has one member on each master, which its agent probes \
             locally; remove members or set topology: External"
                .into(),
        ),
        _ => {}
    }
    if etcd.members.len() > 9 {
        bad("etcd.members", format!("lists {} members: at most 9", etcd.members.len()));
    }
    let mut names: Vec<&str> = etcd.members.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        bad("etcd.members", "must have unique names".into());
    }
    for (i, m) in etcd.members.iter().enumerate() {
        if m.name.is_empty() {
            bad(&format!("etcd.members[{i}].name"), "required: the member's name (etcd's --name)".into());
        }
        let url = &m.health_url;
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
            bad(
                &format!("etcd.members[{i}].healthURL"),
                format!("'{url}' must be an http:// or https:// URL, like http://198.51.100.31:2381/health"),
            );
        }
    }
}

/// The problems of a proxy section alone (keys under `proxy.`): what [`validate`] reports for it.
pub fn proxy_problems(p: &kubeha_crds::MemberProxy) -> Vec<Problem> {
    let mut found = Vec::new();
    validate_proxy(p, &mut |key: &str, message| found.push(Problem { key: key.into(), message }));
    found
}

fn validate_proxy(p: &kubeha_crds::MemberProxy, bad: &mut impl FnMut(&str, String)) {
    if p.listen.parse::<std::net::SocketAddr>().is_err() {
        bad("proxy.listen", format!("'{}' is not address:port, e.g. 198.51.100.10:8443 or 127.0.0.1:6444", p.listen));
    }
    if p.enabled && p.backends.is_empty() {
        bad("proxy.backends", "needs at least one kube-apiserver address:port, e.g. [\"198.51.100.11:6443\"]".into());
    }
    for (i, b) in p.backends.iter().enumerate() {
        if b.parse::<std::net::SocketAddr>().is_err() {
            bad(
                &format!("proxy.backends[{i}]"),
                format!("'{b}' is not address:port, e.g. 198.51.100.11:6443 or [2001:db8::11]:6443"),
            );
        }
    }
    let range = |v: &kubeha_crds::Interval, min: u64, max: u64| (min..=max).contains(&v.as_millis());
    if !range(&p.connect_timeout, 100, 30_000) {
        bad("proxy.connectTimeout", format!("{} is not from 100ms to 30s", p.connect_timeout));
    }
    if let Some(t) = &p.idle_timeout
        && !range(t, 1000, 86_400_000)
    {
        bad("proxy.idleTimeout", format!("{t} is not from 1s to 86400s (leave it out for no idle timeout)"));
    }
    if !(1..=1_000_000).contains(&p.max_connections) {
        bad("proxy.maxConnections", format!("{} is not from 1 to 1000000", p.max_connections));
    }
    if !range(&p.tcp_keepalive, 0, 7_200_000) {
        bad("proxy.tcpKeepalive", format!("{} is not from 0s (off) to 7200s", p.tcp_keepalive));
    }
    let hc = &p.health_check;
    if !hc.path.starts_with('/') {
        bad("proxy.healthCheck.path", format!("'{}' does not start with '/', like /readyz", hc.path));
    }
    for (key, v) in [("interval", &hc.interval), ("timeout", &hc.timeout)] {
        if !range(v, 100, 60_000) {
            bad(&format!("proxy.healthCheck.{key}"), format!("{v} is not from 100ms to 60s"));
        }
    }
    for (key, v) in [("rise", hc.rise), ("fall", hc.fall)] {
        if !(1..=10).contains(&v) {
            bad(&format!("proxy.healthCheck.{key}"), format!("{v} is not from 1 to 10"));
        }
    }
    if !hc.insecure_skip_verify {
        let path = hc.ca_file.as_deref().unwrap_or_else(|| crate::probe::default_ca());
        if !Path::new(path).exists() {
            bad(
                "proxy.healthCheck.caFile",
                format!(
                    "{path} does not exist: set caFile to the PEM CA that signed the API servers' certificates \
                     (kubeadm: /etc/kubernetes/pki/ca.crt), or insecureSkipVerify: true"
                ),
            );
        }
    }
}

/// Why a VIP cannot be used, if it cannot.
fn unusable_vip(v: &Vip) -> Option<&'static str> {
    let ip = v.address;
    if ip.is_unspecified() {
        return Some("is the unspecified address");
    }
    if ip.is_loopback() {
        return Some("is a loopback address: other nodes cannot reach it");
    }
    if ip.is_multicast() {
        return Some("is a multicast address: a VIP is unicast");
    }
    match ip {
        IpAddr::V4(a) => {
            if a.is_link_local() {
                return Some("is link-local (169.254.0.0/16): clients off the link cannot reach it");
            }
            if a.is_broadcast() {
                return Some("is the broadcast address");
            }
            if v.prefix < 31 {
                let host = u32::from(a) & (u32::MAX >> v.prefix);
                if host == 0 {
                    return Some(
                        "is the network address of its prefix: pick a host address inside it, e.g. 198.51.100.10/24",
                    );
                }
                if host == u32::MAX >> v.prefix {
                    return Some("is the broadcast address of its prefix: pick a host address inside it");
                }
            }
        }
        IpAddr::V6(a) => {
            if a.segments()[0] & 0xffc0 == 0xfe80 {
                return Some("is link-local (fe80::/10): clients off the link cannot reach it");
            }
            if v.prefix < 127 && u128::from(a) & (u128::MAX >> v.prefix) == 0 {
                return Some(
                    "is the network address of its prefix: pick a host address inside it, e.g. 2001:db8::10/64",
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../../examples/agent/n1.yaml");

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn the_documented_example_is_valid() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(vip(&spec), Some(Vip { address: "198.51.100.10".parse().unwrap(), prefix: 24 }));
    }

    #[test]
    fn every_bad_value_is_named_by_its_key_with_what_is_allowed() {
        let cases = [
            ("vrid: 51", "vrid: 0", "vrid", "from 1 to 255"),
            ("vip: 198.51.100.10/24", "vip: 198.51.100.0/24", "vip", "network address"),
            ("vip: 198.51.100.10/24", "vip: 198.51.100.255/24", "vip", "broadcast address"),
            ("vip: 198.51.100.10/24", "vip: 169.254.1.1/16", "vip", "link-local"),
            ("vip: 198.51.100.10/24", "vip: 198.51.100.10", "vip", "with prefix length"),
            ("advertInterval: 100ms", "advertInterval: 15ms", "vrrp.advertInterval", "steps of 10ms"),
            (
                "version: 3, advertInterval: 100ms",
                "version: 2, advertInterval: 100ms",
                "vrrp.advertInterval",
                "whole seconds",
            ),
            ("version: 3", "version: 4", "vrrp.version", "2 or 3"),
            ("priority: 150", "priority: 300", "priority", "from 1 to 255"),
            ("interface: eth0", "interface: eth0/1", "interface", "interface name"),
            ("peers: []", "peers: [n2]", "vrrp.peers[0]", "not an IP address"),
            ("weight: -60", "weight: 10", "health[0].weight", "-254 to 0"),
            ("listen: \"127.0.0.1:9641\"", "listen: \"localhost\"", "metrics.listen", "address:port"),
            ("advertInterval: 100ms", "advertIntervall: 100ms", "vrrp.advertIntervall", "unknown key"),
        ];
        for (from, to, key, words) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from} not in the example");
            let found = problems(&text);
            assert!(found.iter().any(|p| p.key == key && p.message.contains(words)), "{to}: {found:?}");
        }
    }

    /// The table the API server's CEL rules are held to as well (`e2e/tests/api.rs`): a rule one side
    /// enforces and the other does not fails here or there.
    #[test]
    fn the_shared_member_cases_get_the_verdicts_the_api_server_gives() {
        use kubeha_crds::cases::{Side, member_cases};
        let mut failures = Vec::new();
        for case in member_cases().into_iter().filter(|c| c.only != Some(Side::Api)) {
            // JSON is YAML: the file the case describes.
            let verdict = parse(&case.spec.to_string());
            let names = |field: &str, key: &str| {
                key == field || key.strip_prefix(field).is_some_and(|rest| rest.starts_with(['.', '[']))
            };
            match (&case.rejected, verdict) {
                (None, Ok(_)) => {}
                (None, Err(e)) => failures.push(format!("{}: rejected: {e}", case.name)),
                (Some(field), Ok(_)) => failures.push(format!("{}: accepted, wanted {field} named", case.name)),
                (Some(field), Err(ConfigError::Invalid { problems, .. })) => {
                    if !problems.iter().any(|p| names(field, &p.key)) {
                        failures.push(format!("{}: wanted {field} named, got {problems:?}", case.name));
                    }
                }
                // A value of the wrong form stops the parser, which names the key (its last part).
                (Some(field), Err(e)) => {
                    let last = field.rsplit('.').next().unwrap_or(field);
                    if !e.to_string().contains(last) {
                        failures.push(format!("{}: wanted {field} named, got {e}", case.name));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "the file check disagrees with the table:\n{}", failures.join("\n"));
    }

    #[test]
    fn a_wrong_type_names_the_line() {
        let err = parse(&GOOD.replace("vrid: 51", "vrid: fifty")).unwrap_err().to_string();
        assert!(err.contains("vrid") && err.contains("line"), "{err}");
    }

    #[test]
    fn lease_mode_is_refused_in_a_file() {
        let e = parse("nodeName: n1\nvip: 198.51.100.10/24\nvrid: 51\ninterface: eth0\nelection: {mode: Lease}\n")
            .unwrap_err();
        assert!(e.to_string().contains("election.mode: Lease needs the Kubernetes API"), "{e}");
    }

    #[test]
    fn vip_and_vrid_go_together_and_the_interface_may_be_found() {
        let found = problems(&GOOD.replace("vrid: 51\n", ""));
        assert!(found.iter().any(|p| p.key == "vip" && p.message.contains("go together")), "{found:?}");
        let found = parse(&GOOD.replace("interface: eth0\n", "")).unwrap();
        assert_eq!((found.vip.as_deref(), found.interface), (Some("198.51.100.10/24"), None));
    }
}
