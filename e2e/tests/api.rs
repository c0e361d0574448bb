//! The kubeha.io API on a real API server: the CRDs install, good objects are accepted with their defaults
//! and printer columns, and bad ones are rejected with a message that names the field and the fix.

use std::io::Write as _;
use std::process::{Output, Stdio};

use kubeha_e2e::Cluster;
use serde_json::{Value, json};

mod common;

use common::Up;

fn kubectl_stdin(cluster: &Cluster, args: &[&str], stdin: &str) -> Output {
    let mut child = cluster
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn hac(name: &str, spec: Value) -> String {
    json!({"apiVersion": "kubeha.io/v1alpha1", "kind": "HighAvailabilityCluster", "metadata": {"name": name}, "spec": spec})
        .to_string()
}

/// A valid spec with `patch` merged into it (one level deep per key).
fn spec_with(patch: Value) -> Value {
    let mut spec = json!({"vip": "198.51.100.10/24", "vrid": 51, "interface": "eth0"});
    for (k, v) in patch.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

#[tokio::test]
async fn the_api_server_accepts_good_clusters_and_explains_every_rejection() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::with_crds().await;
    let c = &up.cluster;

    let good = [
        ("ipv4", spec_with(json!({}))),
        ("ipv6", json!({"vip": "2001:db8::10/64", "vrid": 52, "interface": "eth0"})),
        ("host-route", json!({"vip": "198.51.100.10/32", "vrid": 53, "interface": "eth0"})),
        ("keepalived-v2", spec_with(json!({"vrid": 54, "vrrp": {"version": 2, "advertInterval": "1s"}}))),
        (
            "named-masters",
            spec_with(json!({"vrid": 55, "masters": {"nodes": ["n1", "n2", "n3"], "priorities": {"n1": 200}}})),
        ),
        (
            "lease-mode",
            spec_with(
                json!({"vrid": 56, "election": {"mode": "Lease", "leaseDuration": "6s", "renewDeadline": "4s", "retryPeriod": "1s"}}),
            ),
        ),
    ];
    for (name, spec) in good {
        let out = kubectl_stdin(c, &["create", "-f", "-"], &hac(name, spec));
        assert!(out.status.success(), "{name} rejected: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The server filled in the defaults the operator relies on.
    let out = c.kubectl().args(["get", "hac", "ipv4", "-o", "json"]).output().unwrap();
    let obj: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(obj["spec"]["vrrp"]["advertInterval"], "100ms");
    assert_eq!(obj["spec"]["proxy"]["port"], 8443);
    assert_eq!(obj["spec"]["election"]["mode"], "VRRP");

    let out = c.kubectl().args(["get", "hac"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "VIP", "VRID", "ACTIVE", "READY", "MEMBERS", "TOLERANCE", "AGE"]);
    assert!(table.contains("2001:db8::10/64"), "{table}");
    let out = c.kubectl().args(["explain", "hac.spec.vrrp.advertInterval"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("How often the master advertises"));

    // (what is wrong, spec, the field the error must name, words of the fix)
    let bad: Vec<(&str, Value, &str, &str)> = vec![
        ("vrid 0", spec_with(json!({"vrid": 0})), "spec.vrid", "from 1 to 255"),
        ("vrid 256", spec_with(json!({"vrid": 256})), "spec.vrid", "from 1 to 255"),
        ("no prefix length", spec_with(json!({"vip": "198.51.100.10"})), "spec.vip", "with its prefix length"),
        ("network address", spec_with(json!({"vip": "198.51.100.0/24"})), "spec.vip", "network address of its prefix"),
        (
            "IPv6 network address",
            spec_with(json!({"vip": "2001:db8::/64"})),
            "spec.vip",
            "network address of its prefix",
        ),
        ("broadcast address", spec_with(json!({"vip": "198.51.100.255/24"})), "spec.vip", "broadcast address"),
        ("broadcast of a /25", spec_with(json!({"vip": "198.51.100.127/25"})), "spec.vip", "broadcast address"),
        ("IPv4 link-local", spec_with(json!({"vip": "169.254.10.10/16"})), "spec.vip", "link-local"),
        ("IPv6 link-local", spec_with(json!({"vip": "fe80::10/64"})), "spec.vip", "link-local"),
        ("loopback", spec_with(json!({"vip": "127.0.0.10/8"})), "spec.vip", "loopback"),
        ("multicast", spec_with(json!({"vip": "224.0.0.18/24"})), "spec.vip", "unicast"),
        ("unspecified", spec_with(json!({"vip": "0.0.0.0/0"})), "spec.vip", "unspecified"),
        ("bad interface", spec_with(json!({"interface": "eth0/1"})), "spec.interface", "interface name"),
        ("VRRP version 4", spec_with(json!({"vrrp": {"version": 4}})), "spec.vrrp.version", "2 or 3"),
        (
            "v2 with sub-second adverts",
            spec_with(json!({"vrrp": {"version": 2, "advertInterval": "500ms"}})),
            "spec.vrrp.advertInterval",
            "whole seconds",
        ),
        (
            "v3 advert not in centiseconds",
            spec_with(json!({"vrrp": {"advertInterval": "15ms"}})),
            "spec.vrrp.advertInterval",
            "steps of 10ms",
        ),
        (
            "v3 advert too long",
            spec_with(json!({"vrrp": {"advertInterval": "41s"}})),
            "spec.vrrp.advertInterval",
            "10ms to 40950ms",
        ),
        (
            "fractional duration",
            spec_with(json!({"vrrp": {"advertInterval": "1.5s"}})),
            "spec.vrrp.advertInterval",
            "like 100ms or 2s",
        ),
        (
            "preempt delay too long",
            spec_with(json!({"vrrp": {"preemptDelay": "2000s"}})),
            "spec.vrrp.preemptDelay",
            "0s to 1000s",
        ),
        (
            "lease shorter than deadline",
            spec_with(json!({"election": {"leaseDuration": "5s", "renewDeadline": "10s"}})),
            "spec.election.leaseDuration",
            "longer than spec.election.renewDeadline",
        ),
        (
            "deadline within retry jitter",
            spec_with(json!({"election": {"renewDeadline": "2s", "retryPeriod": "2s"}})),
            "spec.election.renewDeadline",
            "1.2 × spec.election.retryPeriod",
        ),
        ("empty masters", spec_with(json!({"masters": {"nodes": []}})), "spec.masters.nodes", "at least one node"),
        (
            "nodes and selector",
            spec_with(json!({"masters": {"nodes": ["n1"], "nodeSelector": {}}})),
            "spec.masters",
            "either nodes or nodeSelector",
        ),
        (
            "priority 255",
            spec_with(json!({"masters": {"priorities": {"n1": 255}}})),
            "spec.masters.priorities",
            "1 to 254",
        ),
        (
            "proxy on the API server port",
            spec_with(json!({"proxy": {"port": 6443}})),
            "spec.proxy.port",
            "differ from spec.proxy.backendPort",
        ),
        ("unknown balance", spec_with(json!({"proxy": {"balance": "Random"}})), "spec.proxy.balance", "RoundRobin"),
        (
            "penalty above 254",
            spec_with(json!({"health": {"priorityPenalty": 300}})),
            "spec.health.priorityPenalty",
            "0 to 254",
        ),
    ];
    assert!(bad.len() >= 15);
    let mut failures = Vec::new();
    for (what, spec, field, fix) in &bad {
        let out = kubectl_stdin(c, &["create", "--dry-run=server", "-f", "-"], &hac("bad", spec.clone()));
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{what}: accepted"));
        } else if !err.contains(&format!("{field}:")) || !err.contains(fix) {
            failures.push(format!("{what}: wanted {field:?} and {fix:?} in: {}", err.trim()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad clusters not rejected as they should be:\n{}",
        failures.len(),
        bad.len(),
        failures.join("\n")
    );

    members_get_the_verdicts_of_the_shared_table(c);
}

/// The member rules on the API server, held to the table the agent's check of a file is held to as well
/// (crds/cases/member.yaml; agent/src/config.rs runs the other side): a rule only one side enforces fails here
/// or there.
fn members_get_the_verdicts_of_the_shared_table(c: &Cluster) {
    use kubeha_crds::cases::{Side, member_cases};
    let cases: Vec<_> = member_cases().into_iter().filter(|c| c.only != Some(Side::File)).collect();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let member = json!({
            "apiVersion": "kubeha.io/v1alpha1",
            "kind": "HighAvailabilityMember",
            "metadata": {"name": format!("case-{i}")},
            "spec": case.spec,
        });
        let out = kubectl_stdin(c, &["create", "--dry-run=server", "-f", "-"], &member.to_string());
        let err = String::from_utf8_lossy(&out.stderr);
        match (&case.rejected, out.status.success()) {
            (None, true) => {}
            (None, false) => failures.push(format!("{}: rejected: {}", case.name, err.trim())),
            (Some(field), true) => failures.push(format!("{}: accepted, wanted spec.{field} named", case.name)),
            (Some(field), false) if !err.contains(&format!("spec.{field}")) => {
                failures.push(format!("{}: wanted spec.{field} named in: {}", case.name, err.trim()));
            }
            (Some(_), false) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "the API server disagrees with the table in {} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
