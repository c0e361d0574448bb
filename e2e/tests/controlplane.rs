//! The control plane everything else is tested on behaves like a real HA control plane: three API servers
//! over one etcd cluster, active/standby controllers, quorum under partition. Needs root (namespaces).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, PostParams};
use kubeha_e2e::{Cluster, LEASES, NODES};

mod common;

use common::{Up, wait_until};

#[tokio::test]
async fn every_master_serves_the_cluster_and_one_holds_each_controller_lease() {
    let up = Up::new().await;
    let c = &up.cluster;

    for node in NODES {
        let names = up.kubectl(&["--context", &node.name(), "get", "nodes", "-o", "name"]);
        let names: BTreeSet<&str> = names.lines().collect();
        assert_eq!(names, BTreeSet::from(["node/n1", "node/n2", "node/n3"]), "nodes as seen through {node}");

        let client = c.client(&node).await.unwrap();
        assert_eq!(client.apiserver_version().await.unwrap().git_version, "v1.37.1", "/version of {node}");
        let listed = Api::<Node>::all(client).list(&Default::default()).await.unwrap();
        for n in listed {
            let labels = n.metadata.labels.unwrap_or_default();
            assert!(labels.contains_key("node-role.kubernetes.io/control-plane"), "{:?} label", n.metadata.name);
            let addresses = n.status.and_then(|s| s.addresses).unwrap_or_default();
            let internal: Vec<_> = addresses.iter().filter(|a| a.type_ == "InternalIP").map(|a| &a.address).collect();
            let want = NODES.iter().find(|m| Some(m.name()) == n.metadata.name).unwrap().ipv4().to_string();
            assert!(internal.contains(&&want), "{:?} InternalIPs {internal:?}", n.metadata.name);
        }
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
    let cluster = Cluster::open().unwrap();
    let _lock = cluster.lock().unwrap();
    cluster.up().await.unwrap();
    assert!(!cluster.leftovers().is_empty(), "up created nothing?");
    cluster.down().unwrap();
    assert_eq!(cluster.leftovers(), Vec::<String>::new());
}
