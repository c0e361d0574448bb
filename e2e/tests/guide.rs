//! docs/guide.md, executed: its marked command blocks (e2e/src/guide.rs), as they stand, on the test world's
//! hosts booted as empty kubeadm machines — bootstrap, `kubeadm init`, `kubeadm join --control-plane`,
//! `helm install`, the HighAvailabilityCluster — then what the guide promises along the way, and a worker
//! joining through the VIP while the first master is powered off. The same with external etcd; and the
//! move of a keepalived + HAProxy cluster (kubeadm's HA guide) to kubeha with its VIP and port kept, a
//! client on the segment measuring what it saw at each step.

mod common;

use std::fs;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::wait_until;
use kubeha_e2e::chaos::measure::{self, Figures, Window};
use kubeha_e2e::chaos::record::{self, Clock, ProbeTarget, Shared};
use kubeha_e2e::guide::{self, GUIDE};
use kubeha_e2e::{CLIENTS, Cluster, ClusterLock, ETCD_HOSTS, Host, NODES, VIP_V4, yaml_documents};

/// What this machine needs of kubeadm, and nothing about kubeha or the VIP (the guide's "How this guide is
/// tested" lists them): cgroup v1, documentation ranges only, and no registry for the add-ons' images.
const TEST_MACHINE_FLAGS: &str = "--ignore-preflight-errors=SystemVerification";
const INIT_FLAGS: &str = "--service-cidr 203.0.113.128/25 --skip-phases=addon/kube-proxy,addon/coredns";
/// The control-plane endpoint of the guide's steps: the VIP on kube-apiserver's port.
const GUIDE_ENDPOINT: &str = "198.51.100.10:6443";

/// The kubeadm world, down again when the test ends, pass or fail.
struct World {
    cluster: Cluster,
    _lock: ClusterLock,
    /// When this test had the machine to itself and began booting it: the tests of this file wait for each
    /// other's lock, which their timings must not count.
    start: Instant,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.down() {
            eprintln!("teardown: {e}");
        }
    }
}

impl World {
    /// The kubeadm world booted: every host an empty machine.
    async fn up() -> Self {
        let cluster = Cluster::open().unwrap();
        let lock = cluster.lock().unwrap();
        let world = World { cluster, _lock: lock, start: Instant::now() };
        world.cluster.up_kubeadm_world().await.unwrap();
        eprintln!("guide: the empty machines booted in {:.1} s", world.start.elapsed().as_secs_f64());
        world
    }

    fn kubectl(&self, args: &[&str]) -> Option<String> {
        let out = self.cluster.kubectl().args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A JSONPath of the HighAvailabilityCluster `control-plane`; `None` while kubectl fails.
    fn hac(&self, path: &str) -> Option<String> {
        self.kubectl(&["get", "hac", "control-plane", "-o", &format!("jsonpath={path}")])
    }

    /// Whether the HighAvailabilityCluster says Ready.
    fn hac_ready(&self) -> bool {
        self.hac(r#"{.status.conditions[?(@.type=="Ready")].status}"#).as_deref() == Some("True")
    }

    /// Runs a block on a host, failing the test with what it printed if it fails.
    fn run(&self, host: &Host, what: &str, script: &str) -> String {
        let started = Instant::now();
        let out = self.cluster.on_node(host, script).unwrap_or_else(|e| panic!("{what} on {host}: {e}"));
        eprintln!("guide: {what} on {host} done in {:.1} s", started.elapsed().as_secs_f64());
        out
    }

    /// The `server:` of a kubeconfig kubeadm wrote on `host`.
    fn server_in(&self, host: &Host, kubeconfig: &str) -> String {
        let path = self.cluster.node_path(host, kubeconfig).unwrap();
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{host}:{kubeconfig}: {e}"));
        let line = text.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap_or_default();
        line.trim().to_string()
    }

    async fn wait_ready_nodes(&self, names: &[String]) {
        wait_until(&format!("nodes {names:?} Ready"), Duration::from_secs(180), || async {
            let ready =
                r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}"#;
            let out = self.kubectl(&["get", "nodes", "-o", ready]).unwrap_or_default();
            names.iter().all(|n| out.split_whitespace().any(|w| w == format!("{n}=True")))
        })
        .await;
    }
}

/// Step 1 on every master, as the guide has it. The manifest carries no credential: no service account, and
/// hostPath volumes outside /etc/kubernetes only (no kubeconfig, no certificate). The kubelets crash-loop
/// unconfigured, so no static pod runs and nobody holds the VIP yet.
async fn bootstrap_masters(world: &World) {
    let cluster = &world.cluster;
    let bootstrap = guide::block(GUIDE, "bootstrap").unwrap();
    for node in NODES {
        world.run(&node, "bootstrap", &bootstrap);
        let path = cluster.node_path(&node, "/etc/kubernetes/manifests/kubeha-bootstrap.yaml").unwrap();
        let pod = &yaml_documents(&fs::read_to_string(path).unwrap()).unwrap()[0];
        assert!(pod["spec"]["serviceAccountName"].is_null(), "{pod}");
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let host_path = volume["hostPath"]["path"].as_str().unwrap_or_else(|| panic!("not a hostPath: {volume}"));
            assert!(!host_path.starts_with("/etc/kubernetes"), "the bootstrap pod mounts {host_path}: {pod}");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let vip = IpAddr::V4(VIP_V4);
    assert!(cluster.holders(vip).is_empty(), "the VIP is held before kubeadm init: {:?}", cluster.holders(vip));
}

/// After init on n1 printed `printed`: n1 holds the VIP, its admin.conf becomes the test's, and n2 and n3
/// join with the guide's command, one at a time. Returns the worker's join command init printed.
async fn join_masters(world: &World, printed: &str) -> Vec<String> {
    join_masters_at(world, printed, GUIDE_ENDPOINT).await
}

/// [`join_masters`] for a cluster whose control-plane endpoint is `endpoint` (the guide's join block names
/// [`GUIDE_ENDPOINT`]).
async fn join_masters_at(world: &World, printed: &str, endpoint: &str) -> Vec<String> {
    let cluster = &world.cluster;
    let [n1, n2, n3] = NODES;
    assert_eq!(cluster.holders(IpAddr::V4(VIP_V4)), vec![n1], "after init");
    let joins = guide::printed_joins(printed);
    assert_eq!(joins.len(), 2, "init printed a control-plane and a worker join:\n{printed}");
    assert!(joins[0].contains(&"--control-plane".to_string()) && !joins[1].contains(&"--control-plane".to_string()));
    cluster.adopt_admin_conf(&n1).unwrap();
    let join = guide::block(GUIDE, "join-control-plane").unwrap().replace(GUIDE_ENDPOINT, endpoint);
    for node in [n2, n3] {
        world.run(&node, "kubeadm join --control-plane", &join_command(&join, &joins[0], &node));
    }
    let masters: Vec<String> = NODES.iter().map(|n| n.name()).collect();
    world.run(&n1, "check nodes", &guide::block(GUIDE, "check-nodes").unwrap());
    world.wait_ready_nodes(&masters).await;
    joins[1].clone()
}

/// Steps 4 and 5 on n1 with `hac` as hac.yaml; returns once the cluster is Ready and every bootstrap agent
/// has stepped aside.
async fn install_and_declare(world: &World, hac: &str) {
    let cluster = &world.cluster;
    let n1 = NODES[0];
    world.run(&n1, "helm install", &guide::block(GUIDE, "install").unwrap());
    fs::write(cluster.node_home(&n1).unwrap().join("hac.yaml"), hac).unwrap();
    world.run(&n1, "kubectl apply", &guide::block(GUIDE, "apply").unwrap());
    wait_until("the HighAvailabilityCluster Ready", Duration::from_secs(180), || async { world.hac_ready() }).await;
    assert_eq!(cluster.holders(IpAddr::V4(VIP_V4)).len(), 1);
    wait_until("every bootstrap agent stepped aside", Duration::from_secs(60), || async {
        NODES.iter().all(|node| cluster.bootstrap_log(node).contains("stepping aside for the cluster-mode agent"))
    })
    .await;
}

/// The guide's join block, its placeholders filled from the command init printed, and `--apiserver-advertise-address`
/// (where the block has it) set to `host`'s own address. It must be the printed command plus only that flag.
fn join_command(block: &str, printed: &[String], host: &Host) -> String {
    let commands = guide::commands(block);
    assert_eq!(commands.len(), 1, "the guide's join block holds one command: {block}");
    let mut words = commands[0].clone();
    for flag in ["--token", "--discovery-token-ca-cert-hash", "--certificate-key"] {
        if let Some(value) = guide::flag_value(printed, flag) {
            guide::set_flag(&mut words, flag, value).unwrap();
        }
    }
    if guide::flag_value(&words, "--apiserver-advertise-address").is_some() {
        guide::set_flag(&mut words, "--apiserver-advertise-address", &host.ipv4().to_string()).unwrap();
    }
    let mut extra: Vec<&String> = words.iter().filter(|w| !printed.contains(w)).collect();
    extra.retain(|w| !w.starts_with("--apiserver-advertise-address") && **w != host.ipv4().to_string());
    assert!(
        extra.is_empty(),
        "the guide's join `{}` is not the one init printed (`{}`): {extra:?}",
        words.join(" "),
        printed.join(" ")
    );
    assert!(
        printed.iter().all(|w| words.contains(w)),
        "the guide's join `{}` lacks part of the printed `{}`",
        words.join(" "),
        printed.join(" ")
    );
    format!("{} {TEST_MACHINE_FLAGS}", guide::shell_line(&words))
}

#[tokio::test]
async fn the_guide_takes_three_empty_masters_to_a_ready_cluster() {
    kubeha_e2e::skip_unless_root!();
    let world = World::up().await;
    let start = world.start;
    let cluster = &world.cluster;
    let vip = IpAddr::V4(VIP_V4);
    let n1 = NODES[0];

    bootstrap_masters(&world).await;

    // Step 2: init on n1, with the flags only this machine needs. n1 holds the VIP by the time init is done
    // (init's phases after the wait for its API server go through it: admin.conf names the VIP).
    let init = guide::block(GUIDE, "init").unwrap();
    let init_words = &guide::commands(&init)[0];
    assert_eq!(guide::flag_value(init_words, "--apiserver-advertise-address"), Some("198.51.100.11"), "{init}");
    let init = format!("{} {TEST_MACHINE_FLAGS} {INIT_FLAGS}", guide::shell_line(init_words));
    let printed = world.run(&n1, "kubeadm init", &init);
    let init_done = start.elapsed();
    let worker_join = join_masters(&world, &printed).await;
    wait_until("three etcd members and three bootstrap pods running", Duration::from_secs(90), || async {
        let running = |selector: &str| {
            let phases = world
                .kubectl(&[
                    "-n",
                    "kube-system",
                    "get",
                    "pods",
                    "-l",
                    selector,
                    "-o",
                    "jsonpath={.items[*].status.phase}",
                ])
                .unwrap_or_default();
            phases.split_whitespace().filter(|p| *p == "Running").count()
        };
        running("component=etcd") == 3 && running("app.kubernetes.io/component=bootstrap") == 3
    })
    .await;

    // Step 3 on the holder: its bootstrap pod stops, another master takes the VIP, the API answers through
    // it; the pod comes back as a backup.
    let holder = cluster.holders(vip);
    assert_eq!(holder, vec![n1], "n1 holds the VIP after the joins");
    let shown = world.run(&n1, "see the VIP move", &guide::block(GUIDE, "see-the-vip-move").unwrap());
    let now = cluster.holders(vip);
    assert!(matches!(now.as_slice(), [h] if *h != n1), "another master holds the VIP: {now:?}");
    assert!(!shown.contains("198.51.100.10/"), "n1's eth0 no longer lists the VIP:\n{shown}");
    assert!(["n1", "n2", "n3"].iter().all(|n| shown.contains(n)), "kubectl get nodes answered:\n{shown}");
    world.run(&n1, "put the bootstrap pod back", &guide::block(GUIDE, "see-the-vip-move-back").unwrap());
    wait_until("n1's bootstrap pod running again", Duration::from_secs(60), || async {
        let phase = "jsonpath={.status.phase}";
        world.kubectl(&["-n", "kube-system", "get", "pod", "kubeha-bootstrap-n1", "-o", phase]).as_deref()
            == Some("Running")
    })
    .await;
    for node in NODES {
        assert_eq!(world.server_in(&node, "/etc/kubernetes/admin.conf"), "https://198.51.100.10:6443", "{node}");
        // kubeadm's ControlPlaneKubeletLocalMode: a master's kubelet talks to its own API server.
        assert_eq!(world.server_in(&node, "/etc/kubernetes/kubelet.conf"), format!("https://{}:6443", node.ipv4()));
        let supers = cluster.node_path(&node, "/etc/kubernetes/super-admin.conf").unwrap();
        assert!(node == n1 || !supers.exists(), "{node} has a super-admin.conf");
    }

    install_and_declare(&world, &guide::block(GUIDE, "hac.yaml").unwrap()).await;
    let ready_after = start.elapsed();
    eprintln!(
        "guide: empty masters to a Ready HighAvailabilityCluster in {:.0} s (kubeadm init done at {:.0} s)",
        ready_after.as_secs_f64(),
        init_done.as_secs_f64()
    );

    // A join while the first master is powered off: through the VIP, which another master holds.
    let names = |hosts: Vec<Host>| hosts.iter().map(Host::name).collect::<Vec<_>>().join(",");
    let holder = names(cluster.holders(vip));
    cluster.power_off(&n1).unwrap();
    wait_until("another master holds the VIP", Duration::from_secs(10), || async {
        matches!(cluster.holders(vip).as_slice(), [h] if *h != n1)
    })
    .await;
    eprintln!("guide: n1 powered off (the VIP was on {holder}); the VIP is on {}", names(cluster.holders(vip)));
    let c1 = CLIENTS[0];
    let worker = guide::block(GUIDE, "join-worker").unwrap();
    world.run(&c1, "kubeadm join (worker, n1 off)", &join_command(&worker, &worker_join, &c1));
    assert_eq!(world.server_in(&c1, "/etc/kubernetes/kubelet.conf"), "https://198.51.100.10:6443");
    world.wait_ready_nodes(&[c1.name()]).await;
}

/// The guide's etcd command for `host`: its name, and its own address in every URL but the shared
/// `--initial-cluster`.
fn etcd_command(block: &str, host: &Host) -> String {
    let mut words = guide::commands(block).remove(0);
    let own = host.ipv4().to_string();
    let mut in_cluster = false;
    for w in &mut words {
        let shared = in_cluster || w.starts_with("--initial-cluster=");
        in_cluster = w == "--initial-cluster";
        if !shared {
            *w = w.replace("198.51.100.31", &own);
        }
    }
    guide::set_flag(&mut words, "--name", &host.name()).unwrap();
    format!("exec {}", guide::shell_line(&words))
}

#[tokio::test]
async fn the_guide_with_external_etcd_shows_etcds_own_members_and_tolerance() {
    kubeha_e2e::skip_unless_root!();
    let world = World::up().await;
    let start = world.start;
    let cluster = &world.cluster;
    let [n1, ..] = NODES;
    let [e1, e2, e3] = ETCD_HOSTS;

    // The etcd hosts: certificates by kubeadm, the CA copied from e1, etcd run as the guide runs it.
    let copy = |from: &Host, to: &Host, path: &str| {
        let (src, dst) = (cluster.node_path(from, path).unwrap(), cluster.node_path(to, path).unwrap());
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {path} from {from} to {to}: {e}"));
    };
    let config = guide::block(GUIDE, "etcd-kubeadm.yaml").unwrap();
    for host in ETCD_HOSTS {
        let own =
            config.replace("198.51.100.31", &host.ipv4().to_string()).replace("name: e1", &format!("name: {host}"));
        fs::write(cluster.node_home(&host).unwrap().join("etcd-kubeadm.yaml"), own).unwrap();
    }
    world.run(&e1, "etcd CA", &guide::block(GUIDE, "etcd-ca").unwrap());
    for to in [e2, e3] {
        copy(&e1, &to, "/etc/kubernetes/pki/etcd/ca.crt");
        copy(&e1, &to, "/etc/kubernetes/pki/etcd/ca.key");
    }
    for host in ETCD_HOSTS {
        world.run(&host, "etcd certificates", &guide::block(GUIDE, "etcd-certs").unwrap());
    }
    world.run(&e1, "the API servers' etcd client certificate", &guide::block(GUIDE, "etcd-client-cert").unwrap());
    for path in ["etcd/ca.crt", "apiserver-etcd-client.crt", "apiserver-etcd-client.key"] {
        copy(&e1, &n1, &format!("/etc/kubernetes/pki/{path}"));
    }
    let run = guide::block(GUIDE, "etcd-run").unwrap();
    for host in ETCD_HOSTS {
        cluster.start_node_service(&host, "etcd", &etcd_command(&run, &host)).unwrap();
    }
    wait_until("the three etcd members healthy on their metrics listeners", Duration::from_secs(60), || async {
        ETCD_HOSTS.iter().all(|h| {
            let check = format!("curl -sf http://{}:2381/health", h.ipv4());
            cluster.on_node(&n1, &check).is_ok_and(|out| out.contains(r#""health":"true""#))
        })
    })
    .await;
    eprintln!("guide: external etcd healthy at {:.0} s", start.elapsed().as_secs_f64());

    // The masters: bootstrap, init from the guide's configuration (plus the Service range this machine may
    // use: kubeadm takes no --service-cidr beside --config), the joins, kubeha.
    bootstrap_masters(&world).await;
    let kubeadm_config = guide::block(GUIDE, "kubeadm-external.yaml").unwrap().replacen(
        "kind: ClusterConfiguration\n",
        "kind: ClusterConfiguration\nnetworking:\n  serviceSubnet: 203.0.113.128/25\n",
        1,
    );
    fs::write(cluster.node_home(&n1).unwrap().join("kubeadm-external.yaml"), kubeadm_config).unwrap();
    let init = guide::block(GUIDE, "init-external").unwrap();
    let init = format!(
        "{} {TEST_MACHINE_FLAGS} --skip-phases=addon/kube-proxy,addon/coredns",
        guide::shell_line(&guide::commands(&init)[0])
    );
    let printed = world.run(&n1, "kubeadm init (external etcd)", &init);
    join_masters(&world, &printed).await;
    let on_masters = world.kubectl(&["-n", "kube-system", "get", "pods", "-l", "component=etcd", "-o", "name"]);
    assert_eq!(on_masters.as_deref(), Some(""), "no etcd runs on the masters");
    install_and_declare(&world, &guide::block(GUIDE, "hac-external.yaml").unwrap()).await;
    eprintln!(
        "guide: external etcd, empty masters to a Ready HighAvailabilityCluster in {:.0} s",
        start.elapsed().as_secs_f64()
    );

    // etcd's own members and tolerance in the status, not the masters'.
    // Every agent reports on its own probe period (2 s): wait until all three have, then read the status.
    let reached = |e: &Host| format!(r#"{e}=true:["n1","n2","n3"]"#);
    let members = || world.hac("{range .status.controlPlane.etcdMembers[*]}{.name}={.healthy}:{.healthyFrom} {end}");
    wait_until("every master reaches all three etcd members", Duration::from_secs(30), || async {
        members().is_some_and(|m| ETCD_HOSTS.iter().all(|e| m.contains(&reached(e))))
    })
    .await;
    assert_eq!(
        world.hac("{.status.controlPlane.etcd.healthy}/{.status.controlPlane.etcd.members}").as_deref(),
        Some("3/3")
    );
    assert_eq!(world.hac("{.status.faultTolerance}").as_deref(), Some("1"), "etcd's tolerance");
    wait_until("no master reports an etcd of its own", Duration::from_secs(10), || async {
        world.hac("{.status.controlPlane.masters[*].etcd}").as_deref() == Some("")
    })
    .await;

    // One etcd member stops: one failure from quorum loss, by name, while the VIP stays served.
    cluster.stop_service(&e3, "etcd", false);
    wait_until("the status sees e3 down", Duration::from_secs(30), || async {
        let risk = r#"{.status.conditions[?(@.type=="QuorumAtRisk")].reason}"#;
        world.hac(risk).as_deref() == Some("OneFailureFromQuorumLoss")
            && world.hac("{.status.controlPlane.etcd.healthy}").as_deref() == Some("2")
    })
    .await;
    let e3_view = world.hac(r#"{.status.controlPlane.etcdMembers[?(@.name=="e3")].message}"#).unwrap();
    assert!(e3_view.contains("2381"), "e3's failing probe is shown: {e3_view}");
    eprintln!(
        "guide: e3 stopped; the cluster says: {}",
        world.hac(r#"{.status.conditions[?(@.type=="QuorumAtRisk")].message}"#).unwrap()
    );
    assert!(world.hac_ready(), "two of three etcd members keep the API served");
}

/// What a client saw in one stretch of the migration, for the test's output and the guide.
fn outage_line(what: &str, f: &Figures) -> String {
    let outages: Vec<String> = f.outages.iter().map(|o| format!("{o:.2}")).collect();
    format!(
        "{what}: {} of {} connects failed, outages [{}] s (longest {:.2} s), the slowest good connect {:.2} s; \
         {} of {} kubectl requests failed; the watch restarted {} times, its longest silence {:.1} s; the VIP on no \
         master {:.2} s, on two {:.2} s; then on {}",
        f.connects.1,
        f.connects.0,
        outages.join(", "),
        f.worst_outage(),
        f.slowest_connect,
        f.requests.1,
        f.requests.0,
        f.watch_restarts,
        f.watch_silence,
        f.on_none,
        f.on_two,
        f.holders_at_end.join(",")
    )
}

/// Waits until the client's watch has printed an event after `t` and 3 s have passed, for 60 s at most: a
/// step's stretch ends once the watch is heard again, so that a silent one is measured to its end.
async fn watch_heard_after(log: &Shared, t: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !record::lock(log).watch_events.iter().any(|e| *e > t + 3.0) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `text` written to `path` on `host`, through the node's own file system (its /etc is its own).
fn write_on(world: &World, host: &Host, path: &str, text: &str) {
    let dir = path.rsplit_once('/').map_or("/", |(d, _)| d);
    world.run(host, &format!("write {path}"), &format!("mkdir -p {dir}\ncat >{path} <<'KH_EOF'\n{text}KH_EOF\n"));
}

#[tokio::test]
async fn a_keepalived_and_haproxy_cluster_moves_to_kubeha_keeping_its_vip_and_port() {
    kubeha_e2e::skip_unless_root!();
    let world = World::up().await;
    let cluster = &world.cluster;
    let vip = IpAddr::V4(VIP_V4);
    let [n1, n2, n3] = NODES;

    // The cluster kubeadm's HA guide builds: keepalived and HAProxy as services on every master, the
    // endpoint VIP:8443.
    let keepalived = guide::block(GUIDE, "ka-keepalived.conf").unwrap();
    let backup = keepalived.replace("state MASTER", "state BACKUP").replace("priority 101", "priority 100");
    assert_ne!(backup, keepalived, "the guide's keepalived.conf is n1's: MASTER at 101");
    let check = guide::block(GUIDE, "ka-check-apiserver.sh").unwrap();
    let haproxy = guide::block(GUIDE, "ka-haproxy.cfg").unwrap();
    for node in NODES {
        write_on(&world, &node, "/etc/keepalived/keepalived.conf", if node == n1 { &keepalived } else { &backup });
        write_on(&world, &node, "/etc/keepalived/check_apiserver.sh", &check);
        world.run(&node, "chmod", "chmod 755 /etc/keepalived/check_apiserver.sh");
        write_on(&world, &node, "/etc/haproxy/haproxy.cfg", &haproxy);
        // As Debian's units run them.
        cluster
            .start_node_service(&node, "haproxy", "exec haproxy -Ws -f /etc/haproxy/haproxy.cfg -p /run/haproxy.pid")
            .unwrap();
        cluster
            .start_node_service(&node, "keepalived", "exec keepalived --dont-fork --log-console --log-detail")
            .unwrap();
    }
    wait_until("keepalived on n1 holds the VIP", Duration::from_secs(15), || async {
        cluster.holders(vip) == vec![n1]
    })
    .await;
    let init = guide::block(GUIDE, "ka-init").unwrap();
    let init = format!("{} {TEST_MACHINE_FLAGS} {INIT_FLAGS}", guide::shell_line(&guide::commands(&init)[0]));
    let printed = world.run(&n1, "kubeadm init (keepalived + HAProxy)", &init);
    join_masters_at(&world, &printed, "198.51.100.10:8443").await;
    for node in NODES {
        assert_eq!(world.server_in(&node, "/etc/kubernetes/admin.conf"), "https://198.51.100.10:8443", "{node}");
    }
    world.run(&n1, "helm install", &guide::block(GUIDE, "install").unwrap());
    wait_until("three agents ready", Duration::from_secs(120), || async {
        let ready = "jsonpath={.status.numberReady}";
        world.kubectl(&["-n", "kubeha-system", "get", "ds", "kubeha-agent", "-o", ready]).as_deref() == Some("3")
    })
    .await;
    eprintln!(
        "guide: keepalived + HAProxy cluster with kubeha installed at {:.0} s",
        world.start.elapsed().as_secs_f64()
    );

    // A client on the segment, through the endpoint every kubeconfig names, from before the first step to
    // after the last; and who holds the VIP, every 20 ms.
    let kubeconfig = cluster.dir().join("admin-8443.conf");
    fs::copy(cluster.node_path(&n1, "/etc/kubernetes/admin.conf").unwrap(), &kubeconfig).unwrap();
    let clock = Clock::start();
    let log = Shared::default();
    let bound = Duration::from_secs(300);
    let sampler = record::sample_holders(VIP_V4, clock, log.clone(), bound).unwrap();
    let target = ProbeTarget {
        connect: std::net::SocketAddr::new(vip, 8443),
        kubectl: cluster.tools_dir().join("kubectl"),
        kubeconfig,
    };
    let probe = record::probe(&CLIENTS[0], target, clock, log.clone(), bound).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 2. The backups: keepalived and HAProxy off, a cluster of those two masters that defers to keepalived.
    let begin = clock.now();
    for node in [n2, n3] {
        world.run(&node, "keepalived and HAProxy off (backup)", &guide::block(GUIDE, "migrate-backups").unwrap());
        assert!(world.run(&node, "is-active", "systemctl is-active keepalived haproxy || true").contains("inactive"));
    }
    fs::write(
        cluster.node_home(&n1).unwrap().join("hac-migrate.yaml"),
        guide::block(GUIDE, "hac-migrate.yaml").unwrap(),
    )
    .unwrap();
    world.run(&n1, "kubectl apply (migration)", &guide::block(GUIDE, "migrate-apply").unwrap());
    let ham = |path: &str| {
        world.kubectl(&["get", "ham", "-l", "kubeha.io/cluster=control-plane", "-o", &format!("jsonpath={path}")])
    };
    wait_until("n2 and n3 are backups that elect n1's keepalived", Duration::from_secs(60), || async {
        ham("{.items[*].status.state}").as_deref() == Some("Backup Backup")
            && ham("{.items[*].status.strangers[*].address}").as_deref() == Some("198.51.100.11 198.51.100.11")
            && ham("{.items[*].status.strangers[*].elected}").as_deref() == Some("true true")
    })
    .await;
    // Settled for a few adverts: still keepalived's VIP, on n1 alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cluster.holders(vip), vec![n1], "kubeha's members defer to keepalived");

    // 3. The master: keepalived's priority-0 advert hands the VIP to kubeha's n2.
    let handover = clock.now();
    world.run(&n1, "keepalived and HAProxy off (master)", &guide::block(GUIDE, "migrate-master").unwrap());
    wait_until("kubeha's n2 holds the VIP", Duration::from_secs(10), || async { cluster.holders(vip) == vec![n2] })
        .await;
    let took = clock.now() - handover;
    wait_until("the cluster of n2 and n3 Ready", Duration::from_secs(60), || async { world.hac_ready() }).await;
    watch_heard_after(&log, clock.now()).await;

    // 4. The cluster of step 5: every master, VRRPv3 at 100 ms, strangers left out.
    let finish = clock.now();
    fs::write(cluster.node_home(&n1).unwrap().join("hac.yaml"), guide::block(GUIDE, "hac.yaml").unwrap()).unwrap();
    world.run(&n1, "kubectl apply (finish)", &guide::block(GUIDE, "migrate-finish").unwrap());
    wait_until("three members, VRRPv3, Ready", Duration::from_secs(90), || async {
        ham("{.items[*].spec.vrrp.version}").as_deref() == Some("3 3 3")
            && world.hac_ready()
            && cluster.holders(vip).len() == 1
    })
    .await;
    watch_heard_after(&log, clock.now()).await;
    let end = clock.now();
    probe.stop();
    sampler.stop();

    let log = record::lock(&log).clone();
    let stretch =
        |start: f64, stop: f64| measure::figures(&log, &Window { start, fault: start, restore: None, end: stop });
    let (backups, master, last) = (stretch(begin, handover), stretch(handover, finish), stretch(finish, end));
    eprintln!("guide: migration, {}", outage_line("the backups handed over (step 2)", &backups));
    eprintln!("guide: migration, {}", outage_line("the VIP handed over (step 3)", &master));
    eprintln!("guide: migration, keepalived stopped on n1 → kubeha's n2 held the VIP {took:.2} s later");
    eprintln!("guide: migration, {}", outage_line("VRRPv3 on every master (step 4)", &last));
    assert_eq!(backups.connects.1, 0, "nothing moves while the backups hand over: {backups:?}");
    for (step, f) in [("step 3", &master), ("step 4", &last)] {
        assert!(!f.outage_open, "{step}: the client is served again: {f:?}");
        assert_eq!(f.on_two, 0.0, "{step}: the VIP is never on two masters: {f:?}");
    }
    assert!(
        took < 2.0,
        "keepalived's priority-0 advert hands over within the skew time, not after 3 adverts: {took:.2} s"
    );
}
