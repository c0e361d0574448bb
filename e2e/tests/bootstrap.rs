//! Bootstrap: `kubeha-agent bootstrap` on every master gives the VIP before kubeha is installed (a static
//! pod, as kubeadm init needs it); `helm install` and the matching HighAvailabilityCluster adopt the nodes,
//! the DaemonSet agents taking the VRRP instance over in place; `helm uninstall` gives it back to the
//! static pods, which keep the control-plane endpoint up.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Up, wait_until};
use kubeha_e2e::{KUBEHA_NAMESPACE, NODES, VIP_V4, kubeha_binary};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ipv4-multicast.yaml");

#[tokio::test]
async fn the_daemonset_adopts_the_bootstrap_vip_without_a_failover() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let cluster = &up.cluster;
    let vip = IpAddr::V4(VIP_V4);

    // On every master, before anything of kubeha is in the API: the bootstrap static pod. n1 bootstraps with
    // the lowest priority, so the bootstrap holder is not the master the cluster prefers (n1, at 200): the
    // adoption includes a preemption besides the hand-overs.
    for node in NODES {
        let priority = if node == NODES[0] { 50 } else { 100 };
        let argv: Vec<String> = [
            kubeha_binary("kubeha-agent").unwrap().display().to_string(),
            "bootstrap".into(),
            "--vip=198.51.100.10/24".into(),
            "--vrid=51".into(),
            "--interface=eth0".into(),
            format!("--priority={priority}"),
            format!("--node-name={node}"),
        ]
        .into();
        let wrote = cluster.run_on_host(&node, &argv, &["/etc/kubeha", "/etc/kubernetes/manifests"]).unwrap();
        assert!(wrote.contains("/etc/kubernetes/manifests/kubeha-bootstrap.yaml"), "{wrote}");
    }
    // The kubelets find the manifests in their static pod path and run them; their mirror pods appear.
    wait_until("the kubelets run the bootstrap static pods", Duration::from_secs(60), || async {
        let pods = cluster.pods("kube-system", "app.kubernetes.io/component=bootstrap").unwrap_or_default();
        pods.len() == NODES.len() && pods.iter().all(|p| p.ready)
    })
    .await;
    wait_until("the bootstrap agents elect a VIP holder", Duration::from_secs(20), || async {
        cluster.holders(vip).len() == 1
    })
    .await;

    // kubeha installed as a user installs it, and the cluster that matches the bootstrap flags.
    let (_, pods) = up.install_chart(&[]).await;
    up.kubectl(&["apply", "-f", EXAMPLE]);
    wait_until("the cluster Ready on the DaemonSet agents", Duration::from_secs(60), || async {
        let out = up.kubectl(&[
            "get",
            "hac",
            "control-plane",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        out == "True"
    })
    .await;
    assert_eq!(cluster.holders(vip).len(), 1);

    // Every bootstrap agent steps aside (Ready needs a quorum of members, not all three: a node's DaemonSet
    // agent may still be starting); where one was master as it did, its node's DaemonSet agent resumed as
    // master in place; and no node ever saw the master go silent (a failover would log MasterDown; taking
    // over from a live master of lower priority logs Preempted).
    const ASIDE: &str = "stepping aside for the cluster-mode agent";
    let every_aside = wait_until("every bootstrap agent stepped aside", Duration::from_secs(60), || async {
        NODES.iter().all(|node| cluster.bootstrap_log(node).contains(ASIDE))
    });
    every_aside.await;
    let mut handed_over = 0;
    for node in NODES {
        let stepped = cluster.bootstrap_log(&node);
        let aside = stepped.lines().find(|l| l.contains(ASIDE));
        let agent = pods.iter().find(|p| p.node == node.name() && p.name.starts_with("kubeha-agent")).unwrap();
        let log = cluster.pod_log(agent).unwrap();
        assert!(!log.contains("reason=MasterDown"), "{node}'s agent took the VIP by a failover:\n{log}");
        if aside.is_some_and(|l| l.contains("\"master\":true")) {
            handed_over += 1;
            let resumed = log.lines().find(|l| l.contains("reason=HandedOver"));
            assert!(resumed.is_some(), "{node} held the VIP and resumes as master:\n{log}");
            if let (Some(a), Some(r)) =
                (aside.and_then(|l| l.split('"').nth(3)), resumed.and_then(|l| l.split(' ').next()))
            {
                let t = |s: &str| s.parse::<k8s_openapi::jiff::Timestamp>().unwrap();
                println!(
                    "hand-over on {node}: the last bootstrap advert to the DaemonSet agent's first: {}",
                    t(r) - t(a)
                );
            }
        }
    }
    println!("bootstrap masters handed over in place: {handed_over}");

    // Uninstalled, the DaemonSet agents stop and the static pods take the instance back: a bootstrapped
    // cluster keeps its control-plane endpoint.
    up.helm(&["uninstall", "kubeha", "-n", KUBEHA_NAMESPACE]);
    cluster.wait_release("kubeha", KUBEHA_NAMESPACE).await.unwrap();
    wait_until("a bootstrap agent holds the VIP again", Duration::from_secs(20), || async {
        cluster.holders(vip).len() == 1
    })
    .await;
}
