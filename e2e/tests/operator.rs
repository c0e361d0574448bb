//! The operator on the real control plane: members from a cluster, status from members, conflicts,
//! deletion through the release finalizer, and active/standby replicas. The tests write member statuses
//! the way agents do, so the operator's side is tested on its own.

mod common;

use std::time::{Duration, Instant};

use common::{Up, wait_until};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kubeha_crds::{HighAvailabilityCluster, HighAvailabilityMember};
use serde_json::json;

const OPERATOR_ARGS: [&str; 10] = [
    "--log-format",
    "text",
    "--lease-duration",
    "6s",
    "--renew-deadline",
    "4s",
    "--retry-period",
    "1s",
    "--release-timeout",
    "5s",
];

fn operator(up: &Up, identity: &str, metrics_port: u16) -> kubeha_e2e::Process {
    let addr = format!("127.0.0.1:{metrics_port}");
    let mut args: Vec<&str> = OPERATOR_ARGS.to_vec();
    args.extend(["--identity", identity, "--metrics-addr", &addr]);
    let bin = kubeha_e2e::kubeha_binary("kubeha-operator").expect("kubeha binaries built").display().to_string();
    let mut argv = vec![bin];
    argv.extend(args.iter().map(|a| a.to_string()));
    up.cluster.spawn_local(identity, &argv).expect("start the operator")
}

fn apply_hac(up: &Up, name: &str, vip: &str, vrid: i32) {
    let yaml = format!(
        "{{\"apiVersion\":\"kubeha.io/v1alpha1\",\"kind\":\"HighAvailabilityCluster\",\"metadata\":{{\"name\":\"{name}\"}},\
         \"spec\":{{\"vip\":\"{vip}\",\"vrid\":{vrid},\"interface\":\"eth0\"}}}}"
    );
    let path = up.cluster.dir().join(format!("{name}.json"));
    std::fs::write(&path, yaml).unwrap();
    up.kubectl(&["apply", "-f", path.to_str().unwrap()]);
}

async fn api<K>(up: &Up) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>,
{
    Api::all(up.cluster.client(&kubeha_e2e::NODES[0]).await.unwrap())
}

/// Writes a member's status as its agent's two containers would (server-side apply; one field manager here).
async fn report(members: &Api<HighAvailabilityMember>, name: &str, state: &str, holds_vip: bool, effective: i32) {
    let now = Timestamp::now().to_string();
    let status = json!({
        "apiVersion": "kubeha.io/v1alpha1", "kind": "HighAvailabilityMember",
        "status": {
            "state": state, "holdsVIP": holds_vip, "effectivePriority": effective, "heartbeatTime": now,
            "health": [{"name": "apiserver", "healthy": true}],
            "proxyBackends": [{"address": "198.51.100.11:6443", "healthy": true, "activeConnections": 0}],
            "proxyHeartbeatTime": now,
            "lastTransition": {"from": "Backup", "to": state, "at": now, "reason": "test"},
        }
    });
    members
        .patch_status(name, &PatchParams::apply(&format!("agent-{name}")).force(), &Patch::Apply(&status))
        .await
        .unwrap_or_else(|e| panic!("status of {name}: {e}"));
}

async fn condition(hacs: &Api<HighAvailabilityCluster>, name: &str, type_: &str) -> Option<(String, String)> {
    let h = hacs.get_opt(name).await.ok()??;
    let c = h.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason))
}

fn events(up: &Up, name: &str) -> String {
    up.kubectl(&[
        "get",
        "events",
        "-A",
        "--field-selector",
        &format!("involvedObject.kind=HighAvailabilityCluster,involvedObject.name={name}"),
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
    ])
}

#[tokio::test]
async fn the_operator_renders_members_reports_status_and_cleans_up() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::with_crds().await;
    up.kubectl(&["create", "namespace", "kubeha-system"]);
    let _op = operator(&up, "op-a", 18081);
    let hacs: Api<HighAvailabilityCluster> = api(&up).await;
    let members: Api<HighAvailabilityMember> = api(&up).await;

    apply_hac(&up, "api", "198.51.100.10/24", 51);
    let started = Instant::now();
    wait_until("three members", Duration::from_secs(30), || async {
        members.list(&Default::default()).await.is_ok_and(|l| l.items.len() == 3)
    })
    .await;
    eprintln!("three members {:?} after the cluster was applied", started.elapsed());
    for (node, priority) in [("n1", 200), ("n2", 190), ("n3", 180)] {
        let m = members.get(&format!("api-{node}")).await.unwrap();
        assert_eq!((m.spec.node_name.as_str(), m.spec.priority), (node, priority));
        assert_eq!((m.spec.vip.as_deref(), m.spec.vrid), (Some("198.51.100.10/24"), Some(51)));
        let proxy = m.spec.proxy.as_ref().unwrap();
        assert_eq!(proxy.backends, ["198.51.100.11:6443", "198.51.100.12:6443", "198.51.100.13:6443"]);
        assert_eq!(m.metadata.owner_references.unwrap()[0].name, "api");
        assert_eq!(m.metadata.labels.unwrap()["kubeha.io/node"], node);
    }
    wait_until("awaiting agents", Duration::from_secs(15), || async {
        condition(&hacs, "api", "VIPAvailable").await == Some(("False".into(), "AwaitingAgents".into()))
    })
    .await;

    // The agents report: n1 holds the VIP.
    for (node, state, vip, prio) in
        [("n1", "Master", true, 200), ("n2", "Backup", false, 190), ("n3", "Backup", false, 180)]
    {
        report(&members, &format!("api-{node}"), state, vip, prio).await;
    }
    wait_until("ready with n1 active", Duration::from_secs(15), || async {
        let h = hacs.get("api").await.unwrap();
        let s = h.status.unwrap_or_default();
        // All three reports in: the operator may have aggregated after the first one only.
        s.active_node.as_deref() == Some("n1")
            && s.members_ready.as_deref() == Some("3/3")
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
    .await;
    let table = up.kubectl(&["get", "hac", "api"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..7], ["api", "198.51.100.10/24", "51", "n1", "True", "3/3", "1"], "{table}");

    // n1 stops reporting (its node died); after a gap, n2 takes the VIP.
    report(&members, "api-n1", "Backup", false, 200).await;
    report(&members, "api-n2", "Master", true, 190).await;
    wait_until("failover n1 → n2 recorded", Duration::from_secs(15), || async {
        let s = hacs.get("api").await.unwrap().status.unwrap_or_default();
        s.active_node.as_deref() == Some("n2") && s.failover_count == 1
    })
    .await;
    let f = hacs.get("api").await.unwrap().status.unwrap().last_failover.unwrap();
    assert_eq!((f.from.as_deref(), f.to.as_str()), (Some("n1"), "n2"));
    let ev = events(&up, "api");
    assert!(ev.contains("VIP moved from n1 to n2"), "{ev}");
    for node in ["n1", "n2", "n3"] {
        assert!(ev.contains(&format!("{node} joined as a master")), "{ev}");
    }

    // A master that leaves the control plane loses its member (after the release timeout: no agent here);
    // when it comes back, it gets one again.
    up.kubectl(&["label", "node", "n3", "node-role.kubernetes.io/control-plane-"]);
    wait_until("api-n3 removed", Duration::from_secs(30), || async {
        members.get_opt("api-n3").await.is_ok_and(|m| m.is_none())
    })
    .await;
    assert!(events(&up, "api").contains("n3 is no longer a master"));
    up.kubectl(&["label", "node", "n3", "node-role.kubernetes.io/control-plane="]);
    wait_until("api-n3 back", Duration::from_secs(30), || async {
        members.get_opt("api-n3").await.is_ok_and(|m| m.is_some())
    })
    .await;

    // A second cluster with the same VRID on the same masters conflicts; the newer one gets no members.
    apply_hac(&up, "other", "198.51.100.20/24", 51);
    wait_until("Conflict on both", Duration::from_secs(15), || async {
        condition(&hacs, "other", "Conflict").await == Some(("True".into(), "VRIDInUse".into()))
            && condition(&hacs, "api", "Conflict").await == Some(("True".into(), "VRIDInUse".into()))
    })
    .await;
    let others = members.list(&kube::api::ListParams::default().labels("kubeha.io/cluster=other")).await.unwrap();
    assert!(others.items.is_empty(), "the newer cluster must not get members");
    up.kubectl(&["delete", "hac", "other", "--wait=true", "--timeout=60s"]);

    // Deleting the cluster removes its members: no agent releases here, so after the release timeout.
    up.kubectl(&["delete", "hac", "api", "--wait=true", "--timeout=60s"]);
    let left = members.list(&Default::default()).await.unwrap();
    assert!(
        left.items.is_empty(),
        "members left: {:?}",
        left.items.iter().map(|m| m.metadata.name.clone()).collect::<Vec<_>>()
    );
    let ev = up.kubectl(&["get", "events", "-A", "-o", "custom-columns=REASON:.reason,MESSAGE:.message"]);
    assert!(ev.contains("ReleaseTimeout"), "{ev}");
}

#[tokio::test]
async fn a_standby_operator_takes_over_when_the_leader_dies() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::with_crds().await;
    up.kubectl(&["create", "namespace", "kubeha-system"]);
    let leases: Api<Lease> = Api::namespaced(up.cluster.client(&kubeha_e2e::NODES[0]).await.unwrap(), "kubeha-system");
    let holder =
        || async { leases.get_opt("kubeha-operator").await.ok().flatten().and_then(|l| l.spec?.holder_identity) };

    let mut a = operator(&up, "op-a", 18082);
    wait_until("op-a leads", Duration::from_secs(20), || async { holder().await.as_deref() == Some("op-a") }).await;
    let mut b = operator(&up, "op-b", 18083);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder().await.as_deref(), Some("op-a"), "the standby must not take a held lease");

    // A crash: no release, so op-b waits out the lease (6 s) from the last renewal it saw.
    a.kill();
    let killed = Instant::now();
    wait_until("op-b leads after op-a was killed", Duration::from_secs(20), || async {
        holder().await.as_deref() == Some("op-b")
    })
    .await;
    let handover = killed.elapsed();
    eprintln!("handover after SIGKILL of the leader: {handover:?} (lease 6 s, retry 1 s)");
    // Not before the lease ran out: op-a renewed at most one retry (1 s, jittered up to 1.2 s) before it
    // was killed, and the lease lasts 6 s from that renewal. (How late is load-dependent: wait_until bounds
    // it, and the figure above records it.)
    assert!(handover >= Duration::from_millis(6000 - 1200), "op-b took a lease that had not run out: {handover:?}");

    // The new leader reconciles.
    let members: Api<HighAvailabilityMember> = api(&up).await;
    apply_hac(&up, "api", "198.51.100.10/24", 51);
    wait_until("members from the new leader", Duration::from_secs(20), || async {
        members.list(&Default::default()).await.is_ok_and(|l| l.items.len() == 3)
    })
    .await;

    // A graceful stop releases the lease: a restarted op-a takes over at its next retry, not after 6 s.
    let mut a = operator(&up, "op-a", 18082);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(b.terminate().unwrap().success(), "op-b exits cleanly on SIGTERM");
    let stopped = Instant::now();
    wait_until("op-a leads after op-b released", Duration::from_secs(10), || async {
        holder().await.as_deref() == Some("op-a")
    })
    .await;
    eprintln!("handover after SIGTERM of the leader: {:?}", stopped.elapsed());
    assert!(stopped.elapsed() < Duration::from_secs(6), "a released lease is taken before it would expire");
    a.kill();
}
