//! docs/guide.md, executed: its marked command blocks (e2e/src/guide.rs), as they stand, on the test world's
//! hosts booted as empty kubeadm machines — bootstrap, `kubeadm init`, `kubeadm join --control-plane`,
//! `helm install`, the HighAvailabilityCluster — then what the guide promises along the way, and a worker
//! joining through the VIP while the first master is powered off.

mod common;

use std::fs;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::wait_until;
use kubeha_e2e::guide::{self, GUIDE};
use kubeha_e2e::{CLIENTS, Cluster, ClusterLock, Host, NODES, VIP_V4, yaml_documents};

/// What this machine needs of kubeadm, and nothing about kubeha or the VIP (the guide's "How this guide is
/// tested" lists them): cgroup v1, documentation ranges only, and no registry for the add-ons' images.
const TEST_MACHINE_FLAGS: &str = "--ignore-preflight-errors=SystemVerification";
const INIT_FLAGS: &str = "--service-cidr 203.0.113.128/25 --skip-phases=addon/kube-proxy,addon/coredns";

/// The kubeadm world, down again when the test ends, pass or fail.
struct World {
    cluster: Cluster,
    _lock: ClusterLock,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.down() {
            eprintln!("teardown: {e}");
        }
    }
}

impl World {
    fn kubectl(&self, args: &[&str]) -> Option<String> {
        let out = self.cluster.kubectl().args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
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
    let cluster = Cluster::open().unwrap();
    let lock = cluster.lock().unwrap();
    let world = World { cluster, _lock: lock };
    let cluster = &world.cluster;
    let vip = IpAddr::V4(VIP_V4);
    let [n1, n2, n3] = NODES;
    let start = Instant::now();
    cluster.up_kubeadm_world().await.unwrap();
    eprintln!("guide: five empty machines booted in {:.1} s", start.elapsed().as_secs_f64());

    // Step 1 on every master. The manifest carries no credential: no service account, and hostPath
    // volumes outside /etc/kubernetes only (no kubeconfig, no certificate).
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
    // The kubelets crash-loop unconfigured: no static pod runs, nobody holds the VIP yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(cluster.holders(vip).is_empty(), "the VIP is held before kubeadm init: {:?}", cluster.holders(vip));

    // Step 2: init on n1, with the flags only this machine needs. n1 holds the VIP by the time init is done
    // (init waited for its API server through it).
    let init = guide::block(GUIDE, "init").unwrap();
    let init_words = &guide::commands(&init)[0];
    assert_eq!(guide::flag_value(init_words, "--apiserver-advertise-address"), Some("198.51.100.11"), "{init}");
    let init = format!("{} {TEST_MACHINE_FLAGS} {INIT_FLAGS}", guide::shell_line(init_words));
    let printed = world.run(&n1, "kubeadm init", &init);
    let init_done = start.elapsed();
    assert_eq!(cluster.holders(vip), vec![n1], "after init");
    let joins = guide::printed_joins(&printed);
    assert_eq!(joins.len(), 2, "init printed a control-plane and a worker join:\n{printed}");
    assert!(joins[0].contains(&"--control-plane".to_string()) && !joins[1].contains(&"--control-plane".to_string()));
    cluster.adopt_admin_conf(&n1).unwrap();

    // The joins, one master at a time, each after its bootstrap (done above for all three).
    let join = guide::block(GUIDE, "join-control-plane").unwrap();
    for node in [n2, n3] {
        world.run(&node, "kubeadm join --control-plane", &join_command(&join, &joins[0], &node));
    }
    let masters: Vec<String> = NODES.iter().map(|n| n.name()).collect();
    world.run(&n1, "check nodes", &guide::block(GUIDE, "check-nodes").unwrap());
    world.wait_ready_nodes(&masters).await;
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
    for node in NODES {
        assert_eq!(world.server_in(&node, "/etc/kubernetes/admin.conf"), "https://198.51.100.10:6443", "{node}");
        // kubeadm's ControlPlaneKubeletLocalMode: a master's kubelet talks to its own API server.
        assert_eq!(world.server_in(&node, "/etc/kubernetes/kubelet.conf"), format!("https://{}:6443", node.ipv4()));
        let supers = cluster.node_path(&node, "/etc/kubernetes/super-admin.conf").unwrap();
        assert!(node == n1 || !supers.exists(), "{node} has a super-admin.conf");
    }

    // Steps 4 and 5 on n1: helm, then the cluster that matches the bootstrap flags.
    world.run(&n1, "helm install", &guide::block(GUIDE, "install").unwrap());
    let hac = guide::block(GUIDE, "hac.yaml").unwrap();
    fs::write(cluster.node_home(&n1).unwrap().join("hac.yaml"), &hac).unwrap();
    world.run(&n1, "kubectl apply", &guide::block(GUIDE, "apply").unwrap());
    wait_until("the HighAvailabilityCluster Ready", Duration::from_secs(180), || async {
        let ready = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
        world.kubectl(&["get", "hac", "control-plane", "-o", ready]).as_deref() == Some("True")
    })
    .await;
    let ready_after = start.elapsed();
    assert_eq!(cluster.holders(vip).len(), 1);
    wait_until("every bootstrap agent stepped aside", Duration::from_secs(60), || async {
        NODES.iter().all(|node| {
            let pods = cluster.pods("kube-system", "app.kubernetes.io/component=bootstrap").unwrap_or_default();
            pods.iter()
                .find(|p| p.name == format!("kubeha-bootstrap-{node}"))
                .and_then(|p| cluster.pod_log(p).ok())
                .is_some_and(|log| log.contains("stepping aside for the cluster-mode agent"))
        })
    })
    .await;
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
    world.run(&c1, "kubeadm join (worker, n1 off)", &join_command(&worker, &joins[1], &c1));
    assert_eq!(world.server_in(&c1, "/etc/kubernetes/kubelet.conf"), "https://198.51.100.10:6443");
    world.wait_ready_nodes(&[c1.name()]).await;
}
