//! A stranger on the wire: Debian's keepalived on client c1, on the masters' segment, with the cluster's
//! VRID. By default (spec.vrrp.strangers: Ignore) it is reported (Conflict with reason StrangerOnVRID, an
//! Event, the members' status.strangers) and cannot take the VIP or make the masters drop theirs, even at
//! priority 254. With Elect, as for a migration from keepalived, the two agree on one master: keepalived
//! with the cluster's own VIP takes it, and when it stops a member takes it back.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Up, wait_until};
use kubeha_e2e::{CLIENTS, Host, NODES, Process};

const C1: Host = CLIENTS[0];
const VIP: &str = "198.51.100.60";
const VRID: u8 = 70;

/// keepalived on c1 with VRID 70 at priority 254, 100 ms adverts (VRRPv3), announcing `vip`.
fn keepalived(up: &Up, name: &str, vip: &str) -> Process {
    let dir = up.cluster.dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let conf = format!(
        "global_defs {{\n  router_id c1\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id {VRID}\n  priority 254\n  \
         advert_int 0.1\n  virtual_ipaddress {{\n    {vip}/24\n  }}\n}}\n"
    );
    std::fs::write(dir.join("keepalived.conf"), conf).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    let argv =
        ["keepalived", "-n", "-l", "-D", "--vrrp", "-f", &p("keepalived.conf"), "-p", &p("k.pid"), "-r", &p("v.pid")];
    up.cluster.spawn(&C1, name, &argv.map(String::from)).unwrap()
}

fn condition(up: &Up, type_: &str) -> String {
    up.kubectl(&[
        "get",
        "hac",
        "api",
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].status}}/{{.status.conditions[?(@.type==\"{type_}\")].reason}}"),
    ])
}

fn members(up: &Up, path: &str) -> String {
    up.kubectl(&["get", "ham", "-l", "kubeha.io/cluster=api", "-o", &format!("jsonpath={path}")])
}

fn holders(up: &Up, vip: &str) -> Vec<Host> {
    up.cluster.holders(vip.parse::<IpAddr>().unwrap())
}

#[tokio::test]
async fn a_keepalived_on_the_vrid_is_reported_and_left_out_and_takes_part_only_when_elected() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    up.cluster.install_kubeha().await.expect("install kubeha");
    let path = up.cluster.dir().join("api.yaml");
    let apply = |strangers: &str| {
        let yaml = format!(
            "apiVersion: kubeha.io/v1alpha1\nkind: HighAvailabilityCluster\nmetadata: {{name: api}}\nspec:\n  \
             vip: {VIP}/24\n  vrid: {VRID}\n  interface: eth0\n  vrrp: {{strangers: {strangers}}}\n"
        );
        std::fs::write(&path, yaml).unwrap();
        up.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    };
    apply("Ignore");
    wait_until("api Ready", Duration::from_secs(90), || async { condition(&up, "Ready") == "True/Ready" }).await;
    // The operator lists the members' advert sources once each has reported its own.
    wait_until("members listed", Duration::from_secs(30), || async {
        members(&up, "{.items[*].spec.vrrp.members}").matches("198.51.100.1").count() == 9
    })
    .await;
    let [holder] = holders(&up, VIP)[..] else { panic!("one holder: {:?}", holders(&up, VIP)) };
    assert!(NODES.contains(&holder));

    // Another virtual router on the VRID, with its own address and a priority that would win any election.
    let mut theirs = keepalived(&up, "keepalived-other", "198.51.100.61");
    wait_until("Conflict StrangerOnVRID", Duration::from_secs(30), || async {
        condition(&up, "Conflict") == "True/StrangerOnVRID"
    })
    .await;
    let c1 = C1.ipv4().to_string();
    let text = up.kubectl(&["describe", "hac", "api"]);
    println!("--- kubectl describe hac api (a keepalived on VRID {VRID})\n{text}");
    for says in [
        &format!("VRRP adverts for VRID {VRID} from {c1}, which is not a master of this cluster"),
        "announcing 198.51.100.61 at priority 254",
        "it is left out of the election (spec.vrrp.strangers: Ignore)",
        "set spec.vrrp.strangers: Elect",
    ] {
        assert!(text.contains(says), "describe lacks {says:?}:\n{text}");
    }
    let events =
        up.kubectl(&["get", "events", "--field-selector", "reason=Conflict", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains(&c1), "a Warning Event names it: {events}");
    assert!(members(&up, "{.items[*].status.strangers[*].address}").contains(&c1));
    // Left out: the members keep their VIP, on one node, and the cluster stays Ready.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(holders(&up, VIP), vec![holder], "{}", theirs.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(condition(&up, "Ready"), "True/Ready");
    theirs.terminate().unwrap();

    // A migration: the cluster lets strangers take part, and a keepalived with the cluster's own VIP takes it
    // by priority; when it stops (a priority-0 advert), a member takes the VIP back.
    apply("Elect");
    wait_until("members Elect", Duration::from_secs(30), || async {
        members(&up, "{.items[*].spec.vrrp.strangers}") == "Elect Elect Elect"
    })
    .await;
    let mut migrating = keepalived(&up, "keepalived-same", VIP);
    wait_until("keepalived holds the VIP", Duration::from_secs(10), || async { holders(&up, VIP) == vec![C1] }).await;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(holders(&up, VIP), vec![C1], "the members defer to the elected keepalived\n{}", migrating.log());
    wait_until("Conflict names Elect", Duration::from_secs(30), || async {
        up.kubectl(&["get", "hac", "api", "-o", "jsonpath={.status.conditions[?(@.type==\"Conflict\")].message}"])
            .contains("spec.vrrp.strangers: Elect, for a migration")
    })
    .await;
    migrating.terminate().unwrap();
    let gone = Instant::now();
    loop {
        let now = holders(&up, VIP);
        if now.len() == 1 && NODES.contains(&now[0]) {
            break;
        }
        assert!(gone.elapsed() < Duration::from_secs(5), "no member took the VIP back: {now:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("keepalived stopped: a member held the VIP {:?} later", gone.elapsed());
}
