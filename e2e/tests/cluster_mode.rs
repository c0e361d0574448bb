//! The agent in cluster mode on the real control plane, installed as `e2e/cluster install-kubeha` installs it:
//! one HighAvailabilityCluster → the VIP on the highest priority, live changes, an API outage that the VIP
//! rides out (the agents run from their last-known-good members), and quorum fencing.

mod common;

use std::time::{Duration, Instant};

use common::{Up, wait_until};
use kubeha_e2e::{Component, Host, NODES, VIP_V4};

const N1: Host = NODES[0];
const N3: Host = NODES[2];

fn apply(up: &Up, name: &str, spec: &str) {
    let yaml = format!(
        "apiVersion: kubeha.io/v1alpha1\nkind: HighAvailabilityCluster\nmetadata: {{name: {name}}}\nspec:\n  \
         vip: 198.51.100.10/24\n  vrid: 51\n  interface: eth0\n{spec}"
    );
    let path = up.cluster.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    up.kubectl(&["apply", "-f", path.to_str().unwrap()]);
}

/// A fresh control plane with kubeha installed as `e2e/cluster install-kubeha` installs it.
async fn installed() -> Up {
    let up = Up::new().await;
    up.cluster.install_kubeha().await.expect("install kubeha");
    up
}

fn holders(up: &Up) -> Vec<Host> {
    up.cluster.holders(VIP_V4.into())
}

async fn until_holders(up: &Up, want: &[Host], within: Duration) {
    let start = Instant::now();
    while start.elapsed() < within {
        if holders(up) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("VIP holders {:?}, wanted {want:?} within {within:?}\n{}", holders(up), agent_logs(up));
}

/// The end of every agent's log, for a failure message.
fn agent_logs(up: &Up) -> String {
    up.cluster.agent_logs(80)
}

/// Asserts that `want` alone holds the VIP for all of `how_long`, sampling every 20 ms.
async fn holds_throughout(up: &Up, want: &[Host], how_long: Duration, during: &str) {
    let start = Instant::now();
    while start.elapsed() < how_long {
        let now = holders(up);
        assert_eq!(now, want, "VIP moved {during} after {:?}\n{}", start.elapsed(), agent_logs(up));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn get(up: &Up, what: &str, path: &str) -> String {
    up.kubectl(&["get", what, "-o", &format!("jsonpath={path}")])
}

async fn status_shows(up: &Up, master: &str) {
    let want = format!("{master} True");
    let members: String =
        NODES.iter().map(|n| format!("{n}={} ", if n.name() == master { "Master" } else { "Backup" })).collect();
    wait_until(
        &format!("hac api shows {master} active and Ready, members {members}"),
        Duration::from_secs(30),
        || async {
            get(up, "hac/api", "{.status.activeNode} {.status.conditions[?(@.type==\"Ready\")].status}") == want
                && get(up, "ham", "{range .items[*]}{.spec.nodeName}={.status.state} {end}") == members
        },
    )
    .await;
}

#[tokio::test]
async fn a_cluster_gets_its_vip_follows_changes_and_rides_out_an_api_outage() {
    kubeha_e2e::skip_unless_root!();
    let up = installed().await;
    apply(&up, "api", "");
    // Default priorities: n1 200, n2 190, n3 180.
    until_holders(&up, &[N1], Duration::from_secs(20)).await;
    status_shows(&up, "n1").await;
    let table = up.kubectl(&["get", "hac"]);
    assert!(table.contains("n1") && table.contains("True") && table.contains("3/3"), "{table}");

    // Slower adverts and a new priority that keeps n1 on top: applied in place, the VIP does not move.
    apply(&up, "api", "  vrrp: {advertInterval: 300ms}\n  masters: {priorities: {n2: 195}}\n");
    holds_throughout(&up, &[N1], Duration::from_secs(4), "on a change that keeps n1 on top").await;
    for n in NODES {
        wait_until(&format!("{n} applied the new timers in place"), Duration::from_secs(10), || async {
            up.cluster.agent_log(&n).contains("VRRP timers changed advert_interval_cs=30")
        })
        .await;
        assert!(!up.cluster.agent_log(&n).contains("restart_vrrp=true"), "{n} restarted VRRP for a timer change");
    }
    // A new top priority: the VIP moves, once, to n3.
    apply(&up, "api", "  vrrp: {advertInterval: 300ms}\n  masters: {priorities: {n2: 195, n3: 250}}\n");
    until_holders(&up, &[N3], Duration::from_secs(10)).await;
    status_shows(&up, "n3").await;

    // Every API server down: the VIP stays, and VRRP still fails over when the master's agent dies.
    for n in NODES {
        up.cluster.stop_apiserver(&n).unwrap();
    }
    holds_throughout(&up, &[N3], Duration::from_secs(8), "while every API server is down").await;
    // n3's agent SIGKILLed: it cannot remove its VIP, whose lifetime (3 s at 300 ms adverts) keeps it there
    // while n1 (200) takes over after its down interval (about 1 s) — unless the kubelet restarts the agent
    // sooner, which then resumes with the VIP in place. Either way the VIP is served throughout, and the
    // agent, restarted with no API, runs from its last-known-good member and holds the VIP (250).
    let watch = kubeha_e2e::VipWatch::start(&up.cluster, std::net::IpAddr::V4(kubeha_e2e::VIP_V4)).unwrap();
    up.cluster.kill_agent(&N3).unwrap();
    up.cluster.start_agent(&N3).await.unwrap();
    until_holders(&up, &[N3], Duration::from_secs(10)).await;
    let moves = watch.finish();
    eprintln!(
        "n3's agent killed with every API server down: the VIP moved {} times, on no node for {:?} at most, on two for {:?}",
        moves.adds, moves.longest_nowhere, moves.on_two
    );
    assert!(moves.longest_nowhere < Duration::from_secs(3), "the VIP was lost for longer than its lifetime: {moves:?}");
    assert!(up.cluster.agent_log(&N3).contains("starting from the last-known-good members"));

    // The API returns: status catches up with what happened meanwhile.
    for n in NODES {
        up.cluster.start_apiserver(&n).await.unwrap();
    }
    // The API servers come back one after the other, and each member's health check takes `rise` passes to
    // see its own: meanwhile the VIP may rightly follow a master whose API server answers. Settled means every
    // member at its full priority again, n3 holding.
    wait_until("every member at its full priority again", Duration::from_secs(30), || async {
        get(&up, "ham", "{range .items[*]}{.spec.priority}={.status.effectivePriority} {end}")
            .split_whitespace()
            .all(|p| p.split_once('=').is_some_and(|(a, b)| a == b))
    })
    .await;
    status_shows(&up, "n3").await;
    holds_throughout(&up, &[N3], Duration::from_secs(2), "after the API returned").await;

    // Deleting the cluster releases the VIP everywhere.
    up.kubectl(&["delete", "hac", "api", "--wait=true", "--timeout=60s"]);
    until_holders(&up, &[], Duration::from_secs(10)).await;
    assert_eq!(up.kubectl(&["get", "ham", "-o", "name"]).trim(), "", "members are gone");
}

#[tokio::test]
async fn a_master_that_loses_etcd_quorum_hands_the_vip_to_the_majority_and_a_partition_heals_cleanly() {
    kubeha_e2e::skip_unless_root!();
    let up = installed().await;
    // No API-server health check: only quorum fencing may move the VIP here.
    let spec = |preempt: bool| {
        format!(
            "  health: {{enabled: false}}\n  masters: {{priorities: {{n3: 250}}}}\n  vrrp: {{preempt: {preempt}}}\n  \
             election: {{leaseDuration: 6s, renewDeadline: 4s, retryPeriod: 1s}}\n"
        )
    };
    apply(&up, "api", &spec(true));
    until_holders(&up, &[N3], Duration::from_secs(20)).await;
    status_shows(&up, "n3").await;
    // Preempt off from here on (applied in place), so that what moves the VIP below is fencing alone.
    apply(&up, "api", &spec(false));
    wait_until("n1 turned preempt off", Duration::from_secs(10), || async {
        up.cluster.agent_log(&N1).contains("preempt=false")
    })
    .await;

    // n3's etcd member dies: its API server (which talks only to it) cannot write, so n3 cannot renew its
    // heartbeat. n1 and n2 still can; they rise above n3 and the higher, n1, takes over.
    up.cluster.kill_component(&N3, Component::Etcd).unwrap();
    let gone = Instant::now();
    until_holders(&up, &[N1], Duration::from_secs(15)).await;
    // Recorded, not asserted: about renewDeadline (4 s) after n3's last renewal, plus a Master_Down_Interval.
    eprintln!("fencing: n3's etcd killed → VIP on n1 alone after {:.2} s", gone.elapsed().as_secs_f64());
    wait_until("n3 reported as fenced", Duration::from_secs(15), || async {
        get(&up, "ham/api-n3", "{.status.penalties[*].source}").contains("QuorumFencing")
    })
    .await;
    up.cluster.start_component(&N3, Component::Etcd).unwrap();
    // n3 renews again and the boost ends; preempt is off, so n1 keeps the VIP. (With preempt off, it was
    // fencing that made n1 preempt a master without quorum.)
    wait_until("n3 renews again", Duration::from_secs(30), || async {
        !get(&up, "ham/api-n3", "{.status.penalties[*].source}").contains("QuorumFencing")
    })
    .await;
    holds_throughout(&up, &[N1], Duration::from_secs(5), "after n3's etcd returned (preempt off)").await;

    // A partition of the master (n1) from the other two: the majority takes over; on its side n1 keeps it.
    let cut = Instant::now();
    up.cluster.isolate(&N1).unwrap();
    until_holders(&up, &[N1, N3], Duration::from_secs(5)).await;
    eprintln!(
        "partition: n1 isolated → n3 holds the VIP on the majority side after {:.2} s",
        cut.elapsed().as_secs_f64()
    );
    // Until n1's heartbeat is stale on the majority side and fencing raises n3 there, as n3's own API
    // server shows it (n1's cannot be asked).
    wait_until("the majority raises n3 over the isolated n1", Duration::from_secs(30), || async {
        let out = up
            .cluster
            .kubectl()
            .args(["--context", "n3", "get", "ham", "api-n3", "-o", "jsonpath={.status.effectivePriority}"])
            .output()
            .expect("kubectl runs");
        String::from_utf8_lossy(&out.stdout).trim().parse::<i32>().is_ok_and(|p| p > 250)
    })
    .await;
    let healed = Instant::now();
    up.cluster.rejoin(&N1).unwrap();
    // When the two masters meet, the majority's boosted n3 wins; n1 steps down and, preempt off, stays down.
    until_holders(&up, &[N3], Duration::from_secs(5)).await;
    eprintln!("heal: one VIP holder (n3) again after {:.2} s", healed.elapsed().as_secs_f64());
    holds_throughout(&up, &[N3], Duration::from_secs(8), "after the partition healed").await;
    status_shows(&up, "n3").await;
}

#[tokio::test]
async fn lease_mode_holds_one_vip_on_a_network_that_drops_vrrp() {
    kubeha_e2e::skip_unless_root!();
    let up = installed().await;
    up.cluster.block_vrrp().unwrap();
    apply(&up, "api", "  election: {mode: Lease, leaseDuration: 4s, renewDeadline: 3s, retryPeriod: 1s}\n");
    // Whoever acquires the Lease first holds the VIP; with VRRP blocked, VRRP mode would put it on all three.
    wait_until("one VIP holder", Duration::from_secs(20), || async { holders(&up).len() == 1 }).await;
    let first = holders(&up)[0];
    status_shows(&up, &first.name()).await;
    holds_throughout(&up, &[first], Duration::from_secs(5), "in Lease mode").await;

    // Its API server dies: it cannot renew through it, drops the VIP on its own deadline, and another
    // master acquires the Lease after it expires.
    up.cluster.kill_component(&first, Component::KubeApiserver).unwrap();
    let started = Instant::now();
    wait_until("another single VIP holder", Duration::from_secs(20), || async {
        let h = holders(&up);
        h.len() == 1 && h[0] != first
    })
    .await;
    eprintln!("lease mode: {first}'s API server killed → VIP elsewhere after {:.2} s", started.elapsed().as_secs_f64());
    let second = holders(&up)[0];
    up.cluster.start_apiserver(&first).await.unwrap();

    // The holder's agent is SIGKILLed. Its kubelet restarts it at once, and the restarted agent, holding the
    // node's identity, renews the Lease it still holds or, if the Lease ran out meanwhile, another master
    // acquires it: either way one holder at the end, which stays.
    up.cluster.kill_agent(&second).unwrap();
    up.cluster.start_agent(&second).await.unwrap();
    wait_until("one VIP holder after the restart", Duration::from_secs(20), || async { holders(&up).len() == 1 }).await;
    let third = holders(&up)[0];
    eprintln!("lease mode: {second}'s agent killed and restarted by its kubelet → the VIP on {third}");
    holds_throughout(&up, &[third], Duration::from_secs(3), "after the agent restarted").await;
}

#[tokio::test]
async fn the_proxy_adds_the_api_servers_of_the_kubernetes_endpointslice() {
    kubeha_e2e::skip_unless_root!();
    let up = installed().await;
    // Only n1 and n2 are masters of this cluster, so their members list only their two API servers; the API
    // servers themselves list all three in default/kubernetes, and the agents add the third.
    apply(&up, "api", "  masters: {nodes: [n1, n2]}\n");
    let spec = "{.items[?(@.metadata.name==\"api-n1\")].spec.proxy.backends}";
    wait_until("the operator wrote n1's member", Duration::from_secs(20), || async {
        !get(&up, "ham", spec).is_empty()
    })
    .await;
    let backends = get(&up, "ham", spec);
    assert!(!backends.contains("198.51.100.13"), "spec backends: {backends}");
    wait_until("n1's proxy balances over n3's API server too", Duration::from_secs(40), || async {
        get(&up, "ham/api-n1", "{.status.proxyBackends[*].address}").contains("198.51.100.13:6443")
    })
    .await;
}

#[tokio::test]
async fn the_status_shows_the_control_plane_and_follows_the_controller_manager_leader() {
    kubeha_e2e::skip_unless_root!();
    let up = installed().await;
    apply(&up, "api", "");
    let healthy = "true true true true";
    for n in NODES {
        let path = format!(
            "{{.status.controlPlane.masters[?(@.node==\"{n}\")].apiserver}} \
             {{.status.controlPlane.masters[?(@.node==\"{n}\")].etcd}} \
             {{.status.controlPlane.masters[?(@.node==\"{n}\")].controllerManager}} \
             {{.status.controlPlane.masters[?(@.node==\"{n}\")].scheduler}}"
        );
        wait_until(&format!("every component of {n} healthy"), Duration::from_secs(40), || async {
            get(&up, "hac/api", &path) == healthy
        })
        .await;
    }
    let etcd = "{.status.controlPlane.etcd.members} {.status.controlPlane.etcd.healthy}";
    assert_eq!(get(&up, "hac/api", etcd), "3 3");
    let leader_path = "{.status.controlPlane.controllerManagerLeader}";
    let holder = |lease: &'static str| {
        let cluster = &up.cluster;
        async move { cluster.lease_holder(lease).await.ok().flatten() }
    };
    // The operator reads the API through n1 (the admin kubeconfig): move the leadership off n1 before n1 could
    // be the node that is killed.
    if holder("kube-controller-manager").await.as_deref() == Some("n1") {
        up.cluster.kill_component(&N1, Component::KubeControllerManager).unwrap();
        wait_until("the controller-manager Lease leaves n1", Duration::from_secs(30), || async {
            holder("kube-controller-manager").await.is_some_and(|h| h != "n1")
        })
        .await;
        up.cluster.start_component(&N1, Component::KubeControllerManager).unwrap();
    }
    let leader = holder("kube-controller-manager").await.unwrap();
    wait_until(&format!("the status names {leader} as controller-manager leader"), Duration::from_secs(20), || async {
        get(&up, "hac/api", leader_path) == leader
    })
    .await;

    let node = NODES.into_iter().find(|n| n.name() == leader).unwrap();
    up.cluster.kill_node(&node).unwrap();
    wait_until(
        "the status follows the controller-manager leader to a live master",
        Duration::from_secs(60),
        || async {
            let shown = get(&up, "hac/api", leader_path);
            !shown.is_empty()
                && shown != leader
                && holder("kube-controller-manager").await.as_deref() == Some(shown.as_str())
        },
    )
    .await;
    wait_until("etcd quorum one failure from loss", Duration::from_secs(30), || async {
        get(&up, "hac/api", etcd) == "3 2"
            && get(&up, "hac/api", "{.status.conditions[?(@.type==\"QuorumAtRisk\")].reason}")
                == "OneFailureFromQuorumLoss"
    })
    .await;
}
