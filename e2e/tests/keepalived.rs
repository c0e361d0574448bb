//! Interop with Debian's keepalived in the same virtual router: VRRPv3 (checksum with the RFC 5798
//! pseudo-header, which keepalived expects by default) and VRRPv2. They agree on one master in both priority
//! orders and take over from each other.

mod common;

use std::time::Duration;

use common::{VIP, World};
use kubeha_e2e::{Host, NODES, Process};

/// keepalived on `node` in the same virtual router (VRID 51, the test VIP).
fn keepalived(w: &World, node: Host, version: u8, priority: u8, advert: &str) -> Process {
    let dir = w.cluster.dir().join(format!("keepalived-{node}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("keepalived.conf");
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  router_id {node}\n  vrrp_version {version}\n  script_user root\n  enable_script_security\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  \
             advert_int {advert}\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n"
        ),
    )
    .unwrap();
    // Separate pid files: the hosts share one filesystem, and keepalived refuses to start twice.
    let p = |f: &str| dir.join(f).display().to_string();
    let argv =
        ["keepalived", "-n", "-l", "-D", "--vrrp", "-f", &p("keepalived.conf"), "-p", &p("k.pid"), "-r", &p("v.pid")];
    w.cluster.spawn(&node, "keepalived", &argv.map(String::from)).unwrap()
}

fn interval(version: u8) -> (&'static str, &'static str, Duration) {
    // (kubeha advertInterval, keepalived advert_int, time to converge)
    if version == 3 { ("100ms", "0.1", Duration::from_secs(3)) } else { ("1s", "1", Duration::from_secs(8)) }
}

fn kubeha(w: &World, node: Host, version: u8, priority: u8) -> Process {
    let (adv, _, _) = interval(version);
    w.agent_with(node, priority, &format!("version: {version}, advertInterval: {adv}"), "")
}

fn kubeha_master_then_keepalived_takes_over(version: u8) {
    let w = World::new();
    let [n1, _, n3] = NODES;
    let (_, ka_adv, converge) = interval(version);
    let mut ours = kubeha(&w, n1, version, 200);
    let theirs = keepalived(&w, n3, version, 150, ka_adv);
    w.until_holders(&[n1], converge);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.holders(), [n1], "keepalived accepts kubeha as master\n{}", theirs.log());

    assert!(ours.terminate().unwrap().success());
    // kubeha's priority-0 advert makes keepalived take over after its skew time.
    w.until_holders(&[n3], converge);
}

fn keepalived_master_then_kubeha_takes_over(version: u8) {
    let w = World::new();
    let [n1, _, n3] = NODES;
    let (_, ka_adv, converge) = interval(version);
    let mut theirs = keepalived(&w, n3, version, 200, ka_adv);
    let ours = kubeha(&w, n1, version, 150);
    w.until_holders(&[n3], converge);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.holders(), [n3], "kubeha accepts keepalived as master\n{}", ours.log());
    assert!(!ours.log().contains("invalid VRRP packet"), "{}", ours.log());

    theirs.terminate().unwrap();
    w.until_holders(&[n1], converge);
}

#[test]
fn vrrp_v3_kubeha_master_keepalived_takes_over() {
    kubeha_e2e::skip_unless_root!();
    kubeha_master_then_keepalived_takes_over(3);
}

#[test]
fn vrrp_v3_keepalived_master_kubeha_takes_over() {
    kubeha_e2e::skip_unless_root!();
    keepalived_master_then_kubeha_takes_over(3);
}

#[test]
fn vrrp_v2_kubeha_master_keepalived_takes_over() {
    kubeha_e2e::skip_unless_root!();
    kubeha_master_then_keepalived_takes_over(2);
}

#[test]
fn vrrp_v2_keepalived_master_kubeha_takes_over() {
    kubeha_e2e::skip_unless_root!();
    keepalived_master_then_kubeha_takes_over(2);
}
