//! The mistakes a new user makes, tried as one would: a VIP that is a master's own address, a VIP off the
//! masters' subnet, a VIP another host of the segment already has, a missing interface (and one left out, found by the VIP's subnet), and one VRID for an
//! IPv4 and an IPv6 cluster. Each is refused or reported with a message that names the field and the fix,
//! and nothing is taken from anyone: a client's ARP entry for the node whose address was given still points
//! at that node.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Up, World, wait_until};
use kubeha_e2e::{CLIENTS, Host, NODES};

const N1: Host = NODES[0];
const N2: Host = NODES[1];
const C1: Host = CLIENTS[0];

/// The MAC address `host` has for `ip` after reaching it once (`ip neigh`), if any.
fn neighbour(host: Host, ip: IpAddr) -> Option<String> {
    let _ = Command::new("ip")
        .args(["netns", "exec", &host.netns(), "ping", "-c", "1", "-W", "1", &ip.to_string()])
        .output();
    let out = Command::new("ip").args(["-n", &host.netns(), "neigh", "show", &ip.to_string()]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

/// `kubeha-agent ARGS` on `host`: its exit code and everything it printed.
fn agent_on(world: &World, host: Host, args: &[&str]) -> (Option<i32>, String) {
    let bin = kubeha_e2e::kubeha_binary("kubeha-agent").unwrap().display().to_string();
    let mut argv = vec![bin];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut p = world.cluster.spawn(&host, "kubeha-agent-once", &argv).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = p.exited() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "kubeha-agent {args:?} still running:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), p.log())
}

fn config(world: &World, name: &str, vip: &str, interface: &str) -> String {
    let path = world.cluster.dir().join(format!("{name}.yaml"));
    // No interface: the agent finds the one in the VIP's subnet.
    let interface = if interface.is_empty() { String::new() } else { format!("interface: {interface}\n") };
    let yaml = format!(
        "nodeName: n1\n{interface}vip: {vip}\nvrid: 51\npriority: 100\nmetrics: {{listen: \"127.0.0.1:9641\"}}\n"
    );
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

/// `kubeha-agent check` on n1 of a config `name` for `vip` on `interface` (none when empty): the file, the
/// exit code, the output.
fn check(world: &World, name: &str, vip: &str, interface: &str) -> (String, Option<i32>, String) {
    let file = config(world, name, vip, interface);
    let (code, out) = agent_on(world, N1, &["check", "--config", &file]);
    (file, code, out)
}

#[test]
fn the_standalone_agent_and_its_check_refuse_a_vip_that_is_the_nodes_own_or_off_its_subnet() {
    kubeha_e2e::skip_unless_root!();
    let world = World::new();
    let own: IpAddr = N1.ipv4().into();
    let before = neighbour(C1, own).expect("c1 reaches n1");

    // kubeha-agent check on the node sees the interface.
    let (_, code, out) = check(&world, "good", "198.51.100.10/24", "eth0");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("its vip fits eth0 on this host"), "{out}");

    let (mine, code, out) = check(&world, "mine", "198.51.100.11/24", "eth0");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("vip 198.51.100.11 is this node's own address on eth0 (configured outside kubeha)"), "{out}");
    println!("kubeha-agent check, the node's own address:\n{out}");

    let (off, code, out) = check(&world, "off", "203.0.113.10/32", "eth0");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("vip 203.0.113.10 is outside every subnet of eth0 (198.51.100.11/24)"), "{out}");
    assert!(out.contains("set vip to an unused address in 198.51.100.0/24"), "{out}");
    println!("kubeha-agent check, off the subnet:\n{out}");

    // No interface: the one in the VIP's subnet, or a clear error when none is.
    let (_, code, out) = check(&world, "found", "198.51.100.10/24", "");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("its vip fits eth0 on this host"), "{out}");
    let (nowhere, code, out) = check(&world, "nowhere", "203.0.113.10/24", "");
    assert_eq!(code, Some(2), "{out}");
    let unfound = "no interface of this node has an address in the subnet of vip 203.0.113.10: set `interface`";
    assert!(out.contains(unfound), "{out}");
    println!("kubeha-agent check, no interface in the VIP's subnet:\n{out}");

    // Off its node, check cannot see the interface and says so.
    let (_, code, out) = check(&world, "elsewhere", "198.51.100.11/24", "eth9");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("its interface is not on this host"), "{out}");

    // The agent itself refuses to start, and leaves the node's address where it is.
    for (file, says) in
        [(&mine, "is this node's own address"), (&off, "is outside every subnet of eth0"), (&nowhere, unfound)]
    {
        let (code, out) = agent_on(&world, N1, &["--log-format", "text", "run", "--config", file]);
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains(says), "{out}");
        assert_eq!(world.cluster.holders(own), vec![N1], "n1 keeps its own address");
    }
    // bootstrap on the node refuses before it writes anything.
    let dir = world.cluster.dir().join("bootstrap");
    let (code, out) = agent_on(
        &world,
        N1,
        &[
            "bootstrap",
            "--vip",
            "198.51.100.11/24",
            "--vrid",
            "51",
            "--interface",
            "eth0",
            "--node-name",
            "n1",
            "--config-dir",
            dir.join("etc").to_str().unwrap(),
            "--manifest-dir",
            dir.join("manifests").to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--vip: vip 198.51.100.11 is this node's own address on eth0"), "{out}");
    assert!(!dir.exists(), "nothing written");
    assert_eq!(neighbour(C1, own).as_deref(), Some(before.as_str()), "c1 still reaches n1's address at n1");
}

#[test]
fn a_standalone_agent_does_not_take_an_address_another_host_answers_for() {
    kubeha_e2e::skip_unless_root!();
    let world = World::new();
    // n1's config names n2's address: nothing on n1 can tell, but n2 answers the ARP probe for it.
    let n2: IpAddr = N2.ipv4().into();
    let n2_mac = neighbour(C1, n2).expect("c1 reaches n2");
    let agent = world.agent_for(&format!("{n2}/24"), N1, 150, "version: 3, advertInterval: 100ms", "");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert_eq!(world.cluster.holders(n2), vec![N2], "n1 took n2's address:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = agent.log();
    assert!(log.contains("another host answers for the VIP") && log.contains(&n2_mac), "{log}");
    assert!(log.contains("to=\"Fault\""), "{log}");
    assert_eq!(neighbour(C1, n2), Some(n2_mac), "c1 still reaches n2's address at n2's MAC");
    println!("the standalone agent on n1 with vip {n2}/24:\n{log}");
    drop(agent);

    // A client host with the VIP configured keeps both masters out until it lets the address go.
    let vip = "198.51.100.10/24";
    let client = |op: &str| {
        let ok = Command::new("ip").args(["-n", &C1.netns(), "addr", op, vip, "dev", "eth0"]).status().unwrap();
        assert!(ok.success(), "ip addr {op} {vip} on c1");
    };
    client("add");
    let _n1 = world.agent(N1, 150, "");
    let _n2 = world.agent(N2, 100, "");
    std::thread::sleep(Duration::from_secs(2));
    assert!(world.holders().iter().all(|h| *h == C1), "a master took c1's address: {:?}", world.holders());
    client("del");
    let took = world.until_holders(&[N1], Duration::from_secs(5));
    println!("c1 let the VIP go: n1 took it {took:?} later (a re-probe every second, then the election)");
}

fn apply(up: &Up, name: &str, vip: &str, vrid: u8, interface: &str) {
    // No interface: each agent finds the one in the VIP's subnet.
    let interface = if interface.is_empty() { String::new() } else { format!("  interface: {interface}\n") };
    let yaml = format!(
        "apiVersion: kubeha.io/v1alpha1\nkind: HighAvailabilityCluster\nmetadata: {{name: {name}}}\nspec:\n  \
         vip: {vip}\n  vrid: {vrid}\n{interface}"
    );
    let path = up.cluster.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    up.kubectl(&["apply", "-f", path.to_str().unwrap()]);
}

fn condition(up: &Up, name: &str, type_: &str) -> String {
    up.kubectl(&[
        "get",
        "hac",
        name,
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].status}}/{{.status.conditions[?(@.type==\"{type_}\")].reason}}"),
    ])
}

async fn until_condition(up: &Up, name: &str, type_: &str, want: &str) {
    wait_until(&format!("{name} {type_} {want}"), Duration::from_secs(60), || async {
        condition(up, name, type_) == want
    })
    .await;
}

/// `kubectl describe hac NAME` once it says all of `says` (the agents report one by one: within 30 s),
/// printed for the closing note.
fn describe(up: &Up, name: &str, says: &[&str]) {
    let start = Instant::now();
    loop {
        let text = up.kubectl(&["describe", "hac", name]);
        let missing = says.iter().find(|s| !text.contains(**s));
        match missing {
            None => return println!("--- kubectl describe hac {name}\n{text}"),
            Some(s) if start.elapsed() > Duration::from_secs(30) => {
                panic!("describe hac {name} lacks {s:?}:\n{text}")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn members_of(up: &Up, name: &str) -> String {
    up.kubectl(&["get", "ham", "-l", &format!("kubeha.io/cluster={name}"), "-o", "name"])
}

#[tokio::test]
async fn the_operator_and_the_agents_catch_a_users_mistakes_and_take_nothing_from_anyone() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    up.cluster.install_kubeha().await.expect("install kubeha");
    let n2: IpAddr = N2.ipv4().into();
    let n2_mac = neighbour(C1, n2).expect("c1 reaches n2");

    // A one-character typo: n2's own address. No member, so nobody takes it.
    apply(&up, "typo", "198.51.100.12/24", 61, "eth0");
    until_condition(&up, "typo", "VIPAccepted", "False/VIPIsNodeAddress").await;
    assert_eq!(condition(&up, "typo", "Ready"), "False/VIPIsNodeAddress");
    assert_eq!(condition(&up, "typo", "VIPAvailable"), "False/NoMembers");
    describe(&up, "typo", &["spec.vip 198.51.100.12 is node n2's own address (InternalIP)", "VIPIsNodeAddress"]);
    assert_eq!(members_of(&up, "typo").trim(), "", "no member gets n2's address");

    // Off the masters' subnet, with a prefix that says so: refused by the operator.
    apply(&up, "elsewhere", "203.0.113.10/24", 62, "eth0");
    until_condition(&up, "elsewhere", "VIPAccepted", "False/VIPOutsideSubnet").await;
    describe(&up, "elsewhere", &["spec.vip 203.0.113.10/24 is not on the network of master n1 (198.51.100.11)"]);
    assert_eq!(members_of(&up, "elsewhere").trim(), "");

    // Off the subnet as a host route: only the agents can tell, from their interface; each reports it. (Not
    // 203.0.113.10: that VIP is the refused cluster's, a conflict that would hold this one back.)
    apply(&up, "host-route", "203.0.113.11/32", 63, "eth0");
    until_condition(&up, "host-route", "VIPAvailable", "False/MemberErrors").await;
    describe(
        &up,
        "host-route",
        &["n1: VRRP: vip 203.0.113.11 is outside every subnet of eth0 (198.51.100.11/24)", "MemberErrors"],
    );
    assert!(up.cluster.holders("203.0.113.11".parse().unwrap()).is_empty());

    // A missing interface: the agents' error reaches the cluster's conditions with each node.
    apply(&up, "no-such-interface", "198.51.100.40/24", 64, "eth9");
    until_condition(&up, "no-such-interface", "VIPAvailable", "False/MemberErrors").await;
    describe(
        &up,
        "no-such-interface",
        &["n1: VRRP: interface 'eth9' does not exist on this node", "n3: VRRP: interface 'eth9'"],
    );

    // An address a host that is not a node already has (c1, a client): no node object tells the operator,
    // so the members are made; each probes before the first add (ADR 0010), hears c1 answer and stays out.
    let taken: IpAddr = "198.51.100.45".parse().unwrap();
    let on_c1 = |op: &str| {
        let ok = Command::new("ip").args(["-n", &C1.netns(), "addr", op, "198.51.100.45/24", "dev", "eth0"]).status();
        assert!(ok.unwrap().success(), "ip addr {op} 198.51.100.45/24 on c1");
    };
    on_c1("add");
    let c1_mac = neighbour(N2, taken).expect("n2 reaches c1's second address");
    apply(&up, "in-use", "198.51.100.45/24", 66, "");
    until_condition(&up, "in-use", "VIPAvailable", "False/MemberErrors").await;
    describe(
        &up,
        "in-use",
        &[
            &format!("n1: vip 198.51.100.45 is in use by another host on this link (MAC {c1_mac}"),
            "n3: vip 198.51.100.45",
        ],
    );
    assert_eq!(up.cluster.holders(taken), vec![C1], "a master took c1's address");
    assert_eq!(neighbour(N2, taken), Some(c1_mac), "n2 still reaches c1's address at c1's MAC");
    // Once c1 lets it go, a re-probe (every second) finds it free and the election runs as usual.
    on_c1("del");
    until_condition(&up, "in-use", "Ready", "True/Ready").await;
    assert_eq!(up.cluster.holders(taken).len(), 1);

    // Dual stack with one VRID: two virtual routers, one per family, both served. The IPv6 one names no
    // interface: each agent finds eth0 by the VIP's subnet and says so in its member's status.
    apply(&up, "v4", "198.51.100.50/24", 65, "eth0");
    apply(&up, "v6", "2001:db8::50/64", 65, "");
    for name in ["v4", "v6"] {
        until_condition(&up, name, "Ready", "True/Ready").await;
        assert_eq!(condition(&up, name, "Conflict"), "False/NoConflict");
    }
    let found =
        up.kubectl(&["get", "ham", "-l", "kubeha.io/cluster=v6", "-o", "jsonpath={.items[*].status.interface}"]);
    assert_eq!(found.trim(), "eth0 eth0 eth0");
    assert_eq!(up.cluster.holders("198.51.100.50".parse().unwrap()).len(), 1);
    assert_eq!(up.cluster.holders("2001:db8::50".parse().unwrap()).len(), 1);

    // Through all of it n2's address stayed n2's.
    assert_eq!(up.cluster.holders(n2), vec![N2]);
    assert_eq!(neighbour(C1, n2), Some(n2_mac), "c1 still reaches n2's address at n2's MAC");
}
