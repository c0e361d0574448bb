//! The control plane everything else is tested on behaves like a real HA control plane: three API servers
//! over one etcd cluster, active/standby controllers, quorum under partition. Needs root (namespaces).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, PostParams};
use kubeha_e2e::{CLIENTS, Cluster, Host, KUBERNETES_SERVICE, LEASES, NODES};

mod common;

use common::{Up, wait_until};

#[tokio::test]
async fn every_master_serves_the_cluster_and_one_holds_each_controller_lease() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let c = &up.cluster;

    for node in NODES {
        let names = up.kubectl(&["--context", &node.name(), "get", "nodes", "-o", "name"]);
        let names: BTreeSet<&str> = names.lines().collect();
        let want = BTreeSet::from(["node/n1", "node/n2", "node/n3", "node/c1", "node/c2"]);
        assert_eq!(names, want, "nodes as seen through {node}");

        let client = c.client(&node).await.unwrap();
        assert_eq!(client.apiserver_version().await.unwrap().git_version, "v1.37.1", "/version of {node}");
        let listed = Api::<Node>::all(client).list(&Default::default()).await.unwrap();
        for n in listed {
            let name = n.metadata.name.clone().unwrap_or_default();
            let host = Host::parse(&name).unwrap();
            // Registered by its own kubelet, of the control plane's version, and Ready.
            let status = n.status.unwrap_or_default();
            let info = status.node_info.clone().unwrap_or_default();
            assert_eq!(info.kubelet_version, "v1.37.1", "{name}'s kubelet");
            assert!(info.container_runtime_version.starts_with("containerd://2."), "{name}: {info:?}");
            let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
            assert!(ready, "{name} Ready");
            // Masters as kubeadm marks them: the role label and the NoSchedule taint; clients neither.
            let labels = n.metadata.labels.unwrap_or_default();
            let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
            let tainted =
                taints.iter().any(|t| t.key == "node-role.kubernetes.io/control-plane" && t.effect == "NoSchedule");
            assert_eq!(labels.contains_key("node-role.kubernetes.io/control-plane"), host.is_master(), "{name} label");
            assert_eq!(tainted, host.is_master(), "{name} taint: {taints:?}");
            let addresses = status.addresses.unwrap_or_default();
            let internal: Vec<_> = addresses.iter().filter(|a| a.type_ == "InternalIP").map(|a| &a.address).collect();
            assert!(internal.contains(&&host.ipv4().to_string()), "{name} InternalIPs {internal:?}");
        }
    }
    // Each kubelet renews its node's Lease as system:node:<name>: the Node authorizer lets a kubelet write
    // its own Lease only. (The first try comes before the Node exists and backs off for a few seconds.)
    for host in NODES.iter().chain(CLIENTS.iter()) {
        wait_until(&format!("{host}'s node Lease"), Duration::from_secs(30), || async {
            let out = c
                .kubectl()
                .args(["-n", "kube-node-lease", "get", "lease", &host.name()])
                .args(["-o", "jsonpath={.spec.holderIdentity}"])
                .output();
            out.is_ok_and(|o| o.stdout == host.name().as_bytes())
        })
        .await;
    }

    let leases = up.kubectl(&["-n", "kube-system", "get", "leases", "-o", "name"]);
    for lease in LEASES {
        assert!(leases.contains(&format!("lease.coordination.k8s.io/{lease}")), "{lease} in {leases}");
        let holder = c.lease_holder(lease).await.unwrap().expect("held");
        assert!(NODES.iter().any(|n| n.name() == holder), "{lease} held by {holder}");
    }

    // helm parses /version and needs the API: it must work against this plane as against a real one.
    let out = c.helm().args(["list", "--all-namespaces"]).output().unwrap();
    assert!(out.status.success(), "helm list: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn killing_the_node_that_holds_a_controller_lease_moves_it_to_another_master() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let c = &up.cluster;

    for lease in LEASES {
        let holder = c.lease_holder(lease).await.unwrap().expect("held before the fault");
        let victim = NODES.into_iter().find(|n| n.name() == holder).unwrap();
        let others: Vec<String> = NODES.iter().filter(|n| **n != victim).map(|n| n.name()).collect();
        // The other Lease either lived on the victim too (then it must move as well) or must stay put.
        let bystanders: Vec<(&str, String)> = {
            let mut v = Vec::new();
            for l in LEASES {
                v.push((l, c.lease_holder(l).await.unwrap().expect("held")));
            }
            v
        };

        c.kill_node(&victim).unwrap();
        assert!(!c.readyz(&victim).await, "{victim} still ready after kill-node");
        for (l, before) in bystanders {
            wait_until(
                &format!("{l} held by a live master after killing {victim}"),
                Duration::from_secs(60),
                || async {
                    let now = c.lease_holder(l).await.ok().flatten();
                    now.as_ref().is_some_and(|h| others.contains(h))
                        && (before == victim.name() || now == Some(before.clone()))
                },
            )
            .await;
        }

        c.start_node(&victim).await.unwrap();
        assert!(c.readyz(&victim).await, "{victim} ready again after start-node");
    }
}

#[tokio::test]
async fn a_partitioned_master_loses_readiness_while_the_majority_keeps_writing() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let c = &up.cluster;
    let [isolated, a, b] = NODES;

    c.partition(&isolated).unwrap();
    wait_until(&format!("{isolated} not ready while partitioned"), Duration::from_secs(60), || async {
        !c.readyz(&isolated).await
    })
    .await;

    for (i, node) in [a, b].iter().enumerate() {
        // If the isolated member led etcd, the majority elects a new leader first (election timeout 2 s).
        wait_until(&format!("{node} ready in the majority"), Duration::from_secs(30), || c.readyz(node)).await;
        let maps: Api<ConfigMap> = Api::namespaced(c.client(node).await.unwrap(), "default");
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(format!("written-during-partition-{i}"));
        maps.create(&PostParams::default(), &cm).await.unwrap_or_else(|e| panic!("write through {node}: {e}"));
    }

    c.heal(&isolated).unwrap();
    c.wait_ready(&isolated).await.unwrap();
    // The healed member caught up: what the majority wrote is readable through it.
    let maps: Api<ConfigMap> = Api::namespaced(c.client(&isolated).await.unwrap(), "default");
    for i in 0..2 {
        maps.get(&format!("written-during-partition-{i}")).await.unwrap();
    }
}

#[tokio::test]
async fn a_stopped_api_server_is_the_only_one_not_ready_and_comes_back() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let c = &up.cluster;
    let [stopped, a, b] = NODES;

    c.stop_apiserver(&stopped).unwrap();
    assert!(!c.readyz(&stopped).await, "{stopped} ready with its API server stopped");
    assert!(c.readyz(&a).await && c.readyz(&b).await, "the other API servers stay ready");
    c.start_apiserver(&stopped).await.unwrap();
    assert!(c.readyz(&stopped).await);
}

#[tokio::test]
async fn down_leaves_no_process_namespace_or_link_behind() {
    kubeha_e2e::skip_unless_root!();
    let cluster = Cluster::open().unwrap();
    let _lock = cluster.lock().unwrap();
    cluster.up().await.unwrap();

    // A pod that is not hostNetwork, on each client host: an address from the host's pod range, and the
    // `kubernetes` Service reachable from its network namespace (what the operator's pods rely on). Its
    // sandbox, mounts and cgroups are what `down` must remove below.
    let pause = cluster.pause_image().unwrap();
    for host in CLIENTS {
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"probe-{host}","namespace":"default"}},
            "spec":{{"nodeName":"{host}","containers":[{{"name":"pause","image":"{pause}"}}]}}}}"#
        );
        let mut apply = cluster.kubectl();
        apply.args(["apply", "-f", "-"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        let mut child = apply.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), pod.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }
    for host in CLIENTS {
        let name = format!("probe-{host}");
        let ready =
            || cluster.kubectl().args(["wait", "--for=condition=Ready", "--timeout=60s", "pod", &name]).status();
        assert!(ready().unwrap().success(), "{name} Ready");
        let pod = cluster.pods("default", "").unwrap().into_iter().find(|p| p.name == name).unwrap();
        let ip = String::from_utf8(
            cluster.kubectl().args(["get", "pod", &name, "-o", "jsonpath={.status.podIP}"]).output().unwrap().stdout,
        )
        .unwrap();
        let range: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
        assert!(range[..3] == [203, 0, 113] && range[3] < 128, "{name} got {ip}, not from the pod range");
        let pid = cluster.container_process(&pod, "pause").unwrap().pid;
        let (service, port) = KUBERNETES_SERVICE;
        let mut version = cluster.kubectl();
        version.args([
            "--server",
            &format!("https://{service}:{port}"),
            "--request-timeout=10s",
            "get",
            "--raw",
            "/version",
        ]);
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/proc/{pid}/ns/net")).arg(version.get_program()).args(version.get_args());
        cmd.env("KUBECONFIG", cluster.kubeconfig());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{name} → kubernetes Service: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("v1.37.1"));
    }

    assert!(!cluster.leftovers().is_empty(), "up created nothing?");
    cluster.down().unwrap();
    assert_eq!(cluster.leftovers(), Vec::<String>::new());
}
