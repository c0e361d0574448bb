//! The Helm chart: lint, template assertions (what each value renders to), and the user's path on the real
//! control plane — `helm install`, `kubectl apply` an example, `kubectl get hac`, `helm upgrade`,
//! `helm uninstall` — with the agents and the operator run exactly as the rendered pods say.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Up, wait_until};
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubeha_crds::HighAvailabilityMember;
use kubeha_e2e::{CHART, CLIENTS, Cluster, Host, KUBEHA_NAMESPACE, NODES, TEST_WORLD_VALUES, VIP_V4, VipWatch};
use serde_json::{Value, json};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
const VAP: &str = "--api-versions=admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy";

fn helm() -> Command {
    Cluster::open().expect("kubectl and helm").helm()
}

/// `helm template` of the chart with `args`: the documents, or helm's error.
fn render(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = helm().args(["template", "kubeha", CHART, "-n", KUBEHA_NAMESPACE]).args(args).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(kubeha_e2e::yaml_documents(&String::from_utf8_lossy(&out.stdout)).unwrap())
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter().map(|d| d["kind"].as_str().unwrap_or_default().to_string()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(|s| s.as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn the_chart_lints_clean() {
    kubeha_e2e::skip_unless_root!();
    let out = helm().args(["lint", "--strict", CHART]).output().unwrap();
    assert!(out.status.success(), "helm lint:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_operator_runs_two_locked_down_replicas() {
    kubeha_e2e::skip_unless_root!();
    let docs = render(&[]).unwrap();
    let d = find(&docs, "Deployment", "kubeha-operator");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert!(c["securityContext"]["capabilities"]["add"].is_null());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string());
    let env: Vec<_> =
        c["env"].as_array().unwrap().iter().map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone()).collect();
    assert!(env.contains(&json!("metadata.name")) && env.contains(&json!("metadata.namespace")));
    let pdb = find(&docs, "PodDisruptionBudget", "kubeha-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    // Right after the guide's joins a cluster has masters only: the operator must fit there, and should
    // prefer any other node.
    let tolerations = pod["tolerations"].as_array().unwrap();
    assert!(
        tolerations.iter().any(|t| t["key"] == "node-role.kubernetes.io/control-plane" && t["effect"] == "NoSchedule")
    );
    let prefer = &pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(prefer["preference"]["matchExpressions"][0]["key"], "node-role.kubernetes.io/control-plane");
    assert_eq!(prefer["preference"]["matchExpressions"][0]["operator"], "DoesNotExist");

    // One replica cannot keep a minAvailable of 1 through a drain: no PDB then.
    let single = render(&["--set", "operator.replicas=1"]).unwrap();
    assert!(!kinds(&single).contains(&"PodDisruptionBudget".to_string()));
}

#[test]
fn the_agent_runs_on_every_master_with_two_capabilities() {
    kubeha_e2e::skip_unless_root!();
    let docs = render(&[]).unwrap();
    let ds = find(&docs, "DaemonSet", "kubeha-agent");
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 2);
    assert_eq!(pod["nodeSelector"], json!({"node-role.kubernetes.io/control-plane": ""}));
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node-role.kubernetes.io/control-plane" && t["effect"] == "NoSchedule")
    );
    let c = &pod["containers"][0];
    let caps = &c["securityContext"]["capabilities"];
    assert_eq!(strings(&caps["drop"]), ["ALL"]);
    assert_eq!(strings(&caps["add"]), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let node_name = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "NODE_NAME").unwrap();
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/var/lib/kubeha");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/var/lib/kubeha");
    let args = strings(&c["args"]);
    assert!(args.contains(&"run".to_string()) && args.contains(&"--state-dir=/var/lib/kubeha".to_string()));
    assert!(args.contains(&"--api-server=https://127.0.0.1:6443".to_string()), "never the VIP: {args:?}");

    // Values reach the command line.
    let custom = render(&[
        "--set",
        "agent.apiServers={https://127.0.0.1:6443,https://127.0.0.1:16443}",
        "--set",
        "agent.controlPlane.etcdHealthURL=",
        "--set",
        "agent.extraArgs={--api-server-name=api.example}",
    ])
    .unwrap();
    let args =
        strings(&find(&custom, "DaemonSet", "kubeha-agent")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.contains(&"--api-server=https://127.0.0.1:16443".to_string()));
    assert!(args.contains(&"--etcd-health-url=".to_string()));
    assert_eq!(args.last().unwrap(), "--api-server-name=api.example");
}

#[test]
fn the_proxy_runs_beside_the_agent_without_any_privilege() {
    kubeha_e2e::skip_unless_root!();
    let docs = render(&[]).unwrap();
    let pod = &find(&docs, "DaemonSet", "kubeha-agent")["spec"]["template"]["spec"];
    let names: Vec<&str> = pod["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["agent", "proxy"]);
    assert!(strings(&pod["containers"][0]["args"]).contains(&"--parts=vip".to_string()));
    let c = &pod["containers"][1];
    let args = strings(&c["args"]);
    assert!(args.contains(&"--parts=proxy".to_string()), "{args:?}");
    assert!(args.contains(&"--metrics=$(HOST_IP):9642".to_string()), "{args:?}");
    assert!(!args.iter().any(|a| a.contains("health-url")), "the proxy probes no component: {args:?}");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null());
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(c["volumeMounts"][0], json!({"name": "state", "mountPath": "/var/lib/kubeha", "readOnly": true}));
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "proxy-metrics");
    assert_eq!(
        find(&docs, "DaemonSet", "kubeha-agent")["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "agent",
        "kubectl logs without -c shows the agent"
    );
    let monitored = render(&["--set", "metrics.service.enabled=true"]).unwrap();
    let service = find(&monitored, "Service", "kubeha-agent-metrics");
    let ports: Vec<i64> =
        service["spec"]["ports"].as_array().unwrap().iter().map(|p| p["port"].as_i64().unwrap()).collect();
    assert_eq!(ports, [9641, 9642]);
    let moved = render(&["--set", "agent.proxy.metricsPort=19642"]).unwrap();
    let args = strings(&find(&moved, "DaemonSet", "kubeha-agent")["spec"]["template"]["spec"]["containers"][1]["args"]);
    assert!(args.contains(&"--metrics=$(HOST_IP):19642".to_string()), "{args:?}");
}

#[test]
fn rbac_grants_only_what_the_binaries_call() {
    kubeha_e2e::skip_unless_root!();
    let docs = render(&[]).unwrap();
    for d in docs.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role") {
        for rule in d["rules"].as_array().unwrap() {
            let all = [strings(&rule["verbs"]), strings(&rule["resources"]), strings(&rule["apiGroups"])].concat();
            assert!(!all.contains(&"*".to_string()), "wildcard in {}: {rule}", d["metadata"]["name"]);
            assert!(
                !strings(&rule["resources"]).contains(&"secrets".to_string()),
                "secrets in {}",
                d["metadata"]["name"]
            );
        }
    }
    let agent = find(&docs, "ClusterRole", "kubeha-agent");
    let granted: Vec<(String, Vec<String>)> = agent["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| strings(&r["resources"]).into_iter().map(move |res| (res, strings(&r["verbs"]))))
        .collect();
    assert_eq!(
        granted,
        [
            ("highavailabilitymembers".to_string(), vec!["list".to_string(), "watch".into(), "patch".into()]),
            ("highavailabilitymembers/status".to_string(), vec!["patch".to_string()]),
        ],
        "the agent reads its members and writes their status (and their finalizer)"
    );
    let agent_leases = find(&docs, "Role", "kubeha-agent");
    assert_eq!(agent_leases["metadata"]["namespace"], KUBEHA_NAMESPACE);
    assert!(!strings(&agent_leases["rules"][0]["verbs"]).contains(&"delete".to_string()));
    let slices = find(&docs, "Role", "kubeha-agent-apiserver-endpoints");
    assert_eq!(slices["metadata"]["namespace"], "default");
    assert_eq!(strings(&slices["rules"][0]["verbs"]), ["list"]);
    let kube_system = find(&docs, "Role", "kubeha-operator-controller-leases");
    assert_eq!(strings(&kube_system["rules"][0]["verbs"]), ["list", "watch"], "read-only in kube-system");
}

#[test]
fn the_admission_policy_follows_the_api_server_and_the_value() {
    kubeha_e2e::skip_unless_root!();
    let has = |docs: &[Value]| kinds(docs).contains(&"ValidatingAdmissionPolicy".to_string());
    assert!(!has(&render(&[]).unwrap()), "an API server without the API gets no policy");
    let docs = render(&[VAP]).unwrap();
    assert!(has(&docs));
    let policy = find(&docs, "ValidatingAdmissionPolicy", "kubeha-agent-own-node");
    assert!(
        policy["spec"]["matchConditions"][0]["expression"].as_str().unwrap().contains("kubeha-system:kubeha-agent")
    );
    // The names it checks are the ones the binaries use (kubeha_crds::contract), not a copy that may drift:
    // each appears quoted in a CEL expression (escaped in the JSON text).
    let policy_text = serde_json::to_string(&policy["spec"]).unwrap();
    use kubeha_crds::contract::{HEARTBEAT_PREFIX, NODE_LABEL, VIP_LEASE_PREFIX};
    for name in [NODE_LABEL, HEARTBEAT_PREFIX, VIP_LEASE_PREFIX] {
        let quoted = format!(r#"\"{name}\""#);
        assert!(policy_text.contains(&quoted), "the policy does not check {quoted}: {policy_text}");
    }
    find(&docs, "ValidatingAdmissionPolicyBinding", "kubeha-agent-own-node");
    assert!(!has(&render(&[VAP, "--set", "validatingAdmissionPolicy.enabled=false"]).unwrap()));
}

#[test]
fn crds_follow_enabled_and_keep() {
    kubeha_e2e::skip_unless_root!();
    let docs = render(&[]).unwrap();
    let crd = find(&docs, "CustomResourceDefinition", "highavailabilityclusters.kubeha.io");
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    let docs = render(&["--set", "crds.keep=false"]).unwrap();
    let crd = find(&docs, "CustomResourceDefinition", "highavailabilitymembers.kubeha.io");
    assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    let docs = render(&["--set", "crds.enabled=false"]).unwrap();
    assert!(!kinds(&docs).contains(&"CustomResourceDefinition".to_string()));
}

#[test]
fn metrics_and_the_install_time_cluster_are_opt_in() {
    kubeha_e2e::skip_unless_root!();
    let docs = render(&[]).unwrap();
    for kind in ["Service", "ServiceMonitor", "HighAvailabilityCluster"] {
        assert!(!kinds(&docs).contains(&kind.to_string()), "{kind} rendered by default");
    }
    let docs =
        render(&["--set", "metrics.service.enabled=true", "--set", "metrics.serviceMonitor.enabled=true"]).unwrap();
    let svc = find(&docs, "Service", "kubeha-agent-metrics");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9641);
    find(&docs, "ServiceMonitor", "kubeha-operator");

    let docs = render(&[
        "--set",
        "cluster.create=true",
        "--set",
        "cluster.spec.vip=198.51.100.10/24",
        "--set",
        "cluster.spec.vrid=51",
        "--set",
        "cluster.spec.interface=eth0",
    ])
    .unwrap();
    let hac = find(&docs, "HighAvailabilityCluster", "control-plane");
    assert_eq!(hac["spec"], json!({"vip": "198.51.100.10/24", "vrid": 51, "interface": "eth0"}));
    assert_eq!(hac["metadata"]["annotations"]["helm.sh/hook"], "post-install");
}

#[test]
fn bad_values_are_refused_by_name() {
    kubeha_e2e::skip_unless_root!();
    let cases: [(&[&str], &str); 5] = [
        (&["--set", "operator.replicass=3"], "replicass"),
        (&["--set", "logFormat=yaml"], "/logFormat"),
        (&["--set", "agent.metricsPort=70000"], "/agent/metricsPort"),
        (&["--set", "agent.stateDir=relative/dir"], "/agent/stateDir"),
        (&["--set", "cluster.create=true"], "cluster.spec"),
    ];
    for (args, named) in cases {
        let err = render(args).expect_err(&format!("{args:?} accepted"));
        assert!(err.contains(named), "{args:?}: the error does not name {named}: {err}");
    }
}

fn get_hac(up: &Up, name: &str) -> Value {
    serde_json::from_str(&up.kubectl(&["get", "hac", name, "-o", "json"])).unwrap()
}

fn ready(hac: &Value) -> bool {
    hac["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn wait_ready(up: &Up, name: &str) {
    wait_until(&format!("{name} Ready with all three members"), Duration::from_secs(60), || async {
        let hac = get_hac(up, name);
        ready(&hac)
            && hac["status"]["activeNode"].is_string()
            && hac["status"]["members"].as_array().is_some_and(|m| m.len() == 3)
    })
    .await;
}

#[tokio::test]
async fn helm_install_apply_upgrade_uninstall() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let cluster = &up.cluster;
    let helm = |args: &[&str]| up.helm(args);

    // Everything the chart renders is accepted by the real API server (the install-time cluster needs its
    // CRD first, so that one is checked after the install), in the namespace `--create-namespace` makes.
    up.kubectl(&["create", "namespace", KUBEHA_NAMESPACE]);
    let rendered = helm(&["template", "kubeha", CHART, "-n", KUBEHA_NAMESPACE, VAP, "-f", TEST_WORLD_VALUES]);
    let mut apply = cluster.kubectl();
    apply.args(["apply", "--dry-run=server", "-f", "-"]).stdin(std::process::Stdio::piped());
    apply.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = apply.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), rendered.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "dry-run of the rendered chart: {}", String::from_utf8_lossy(&out.stderr));

    // The user's path. A second cluster comes from the chart's `cluster:` section.
    let (notes, pods) = up
        .install_chart(&[
            "--set",
            "cluster.create=true",
            "--set",
            "cluster.name=from-values",
            "--set",
            "cluster.spec.vip=198.51.100.20/24",
            "--set",
            "cluster.spec.vrid=52",
            "--set",
            "cluster.spec.interface=eth0",
        ])
        .await;
    assert!(notes.contains("kubectl get hac from-values"), "NOTES tell how to read the cluster:\n{notes}");
    assert_eq!(pods.len(), NODES.len() + CLIENTS.len(), "an agent per master and two operators: {pods:?}");
    for node in NODES {
        let agent = pods
            .iter()
            .find(|p| p.node == node.name() && p.name.starts_with("kubeha-agent"))
            .expect("an agent on every master");
        let process = cluster.container_process(agent, "agent").unwrap();
        assert_eq!(process.env("NODE_NAME"), Some(node.name().as_str()));
        assert_eq!(process.arg("metrics"), Some(format!("{}:9641", node.ipv4()).as_str()));
        assert_eq!(process.arg("parts"), Some("vip"));
        let proxy = cluster.container_process(agent, "proxy").unwrap();
        assert_eq!(proxy.env("NODE_NAME"), Some(node.name().as_str()));
        assert_eq!(proxy.arg("metrics"), Some(format!("{}:9642", node.ipv4()).as_str()));
        assert_eq!(proxy.arg("parts"), Some("proxy"));
    }
    up.kubectl(&["apply", "--dry-run=server", "-f", EXAMPLES]);
    up.kubectl(&["apply", "-f", &format!("{EXAMPLES}/ipv4-multicast.yaml")]);
    wait_ready(&up, "control-plane").await;
    wait_ready(&up, "from-values").await;
    let table = up.kubectl(&["get", "hac"]);
    println!("{table}");
    assert!(table.lines().next().unwrap().split_whitespace().eq([
        "NAME",
        "VIP",
        "VRID",
        "ACTIVE",
        "READY",
        "MEMBERS",
        "TOLERANCE",
        "AGE"
    ]));
    assert_eq!(cluster.holders(IpAddr::V4(VIP_V4)).len(), 1);
    assert_eq!(cluster.holders("198.51.100.20".parse().unwrap()).len(), 1);

    // The admission policy: n1's agent, with its own token, may not write n2's member.
    let n1_agent = cluster.agent_pod(&NODES[0]).unwrap();
    let token = cluster
        .container_process(&n1_agent, "agent")
        .unwrap()
        .read("/var/run/secrets/kubernetes.io/serviceaccount/token")
        .unwrap();
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &KubeConfigOptions { context: Some("n1".into()), ..Default::default() },
    )
    .await
    .unwrap();
    config.auth_info = kube::config::AuthInfo { token: Some(token.trim().to_string().into()), ..Default::default() };
    let as_n1: Api<HighAvailabilityMember> = Api::all(kube::Client::try_from(config).unwrap());
    let patch =
        json!({"apiVersion": "kubeha.io/v1alpha1", "kind": "HighAvailabilityMember", "status": {"error": "forged"}});
    let err = as_n1
        .patch_status("control-plane-n2", &PatchParams::apply("forger").force(), &Patch::Apply(&patch))
        .await
        .expect_err("n1's agent wrote n2's member");
    assert!(err.to_string().contains("may only write members of its own node"), "{err}");

    // An upgrade that changes the agents' command line rolls them one node at a time; the VIP stays served.
    let watch = VipWatch::start(cluster, IpAddr::V4(VIP_V4)).unwrap();
    helm(&["upgrade", "kubeha", CHART, "-n", KUBEHA_NAMESPACE, "-f", TEST_WORLD_VALUES, "--set", "logFormat=json"]);
    let pods = cluster.wait_release("kubeha", KUBEHA_NAMESPACE).await.unwrap();
    wait_ready(&up, "control-plane").await;
    let moves = watch.finish();
    println!(
        "rolling upgrade of three agents: the VIP moved {} times, was on no node for {:?} at most; on two: {:?}",
        moves.adds, moves.longest_nowhere, moves.on_two
    );
    if !moves.on_two.is_empty() {
        // The replaced pods' logs are gone with them; the new ones tell how the VIP came back.
        panic!(
            "the VIP was on two nodes during the rolling upgrade: {:?}\n{}\n{}",
            moves.on_two,
            moves.events.join("\n"),
            cluster.agent_logs(usize::MAX)
        );
    }
    assert!(moves.adds >= 1, "the upgrade moved the VIP at least once (the active node's agent restarted)");
    for pod in &pods {
        for (container, _, _) in &pod.containers {
            let process = cluster.container_process(pod, container).unwrap();
            assert_eq!(process.arg("log-format"), Some("json"), "{} {container} runs the new values", pod.name);
        }
    }
    assert!(cluster.pod_log(&pods[0]).unwrap().lines().last().unwrap_or_default().starts_with('{'));
    assert_eq!(cluster.holders(IpAddr::V4(VIP_V4)).len(), 1);

    // Uninstall stops every agent; each hands the VIP over as it stops, the last one releases it.
    helm(&["uninstall", "kubeha", "-n", KUBEHA_NAMESPACE]);
    let pods = cluster.wait_release("kubeha", KUBEHA_NAMESPACE).await.unwrap();
    assert!(pods.is_empty() && cluster.kubeha_pods().unwrap().is_empty());
    for vip in [IpAddr::V4(VIP_V4), "198.51.100.20".parse().unwrap()] {
        assert!(cluster.holders(vip).is_empty(), "{vip} still held after helm uninstall");
    }
    let crds = up.kubectl(&["get", "crd", "-o", "name"]);
    assert!(crds.contains("highavailabilityclusters.kubeha.io"), "crds.keep keeps the CRDs: {crds}");
}

/// Every commented example in examples/ comes up Ready on the chart-installed kubeha, and deleting it
/// releases its VIP everywhere.
#[tokio::test]
async fn every_example_comes_up_ready() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let cluster = &up.cluster;
    up.install_chart(&[]).await;
    let mut files: Vec<_> = std::fs::read_dir(EXAMPLES)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the examples the issue asks for: {files:?}");
    for file in files {
        let example: Value = serde_norway::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = example["metadata"]["name"].as_str().unwrap().to_string();
        let vip: IpAddr = example["spec"]["vip"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
        let path = file.display().to_string();
        up.kubectl(&["apply", "-f", &path]);
        wait_ready(&up, &name).await;
        // The first master elected may be preempted by the preferred one a moment later; the status follows.
        let active = || get_hac(&up, &name)["status"]["activeNode"].as_str().unwrap_or_default().to_string();
        wait_until(&format!("{path}: the status names the one holder of {vip}"), Duration::from_secs(20), || async {
            let holders = cluster.holders(vip);
            holders.len() == 1 && holders[0].name() == active()
        })
        .await;
        println!("{}: Ready, {vip} on {}", file.file_name().unwrap().to_string_lossy(), active());
        up.kubectl(&["delete", "-f", &path, "--timeout=60s"]);
        wait_until(&format!("{path}: {vip} released"), Duration::from_secs(30), || async {
            cluster.holders(vip).is_empty()
        })
        .await;
    }
}

/// What the chart asks of the runtime is what the container runtime enforces, read from the containers'
/// processes on the nodes; the kubelet's probes and restarts act on kubeha's pods; `kubectl logs` and
/// `kubectl describe pod` work as a user expects.
#[tokio::test]
async fn the_runtime_enforces_the_security_context_and_the_kubelet_restarts_a_killed_agent() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let cluster = &up.cluster;
    let (_, pods) = up.install_chart(&[]).await;
    up.kubectl(&["apply", "-f", &format!("{EXAMPLES}/ipv4-multicast.yaml")]);
    wait_ready(&up, "control-plane").await;

    // mountinfo's line for the container's root: its mount options say whether it is read-only.
    let root_mount = |pid: u32| {
        let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let line = info.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).unwrap().to_string();
        line.split_whitespace().nth(5).unwrap().split(',').any(|o| o == "ro")
    };
    for (pod, container) in pods.iter().flat_map(|p| p.containers.iter().map(move |(c, _, _)| (p, c))) {
        let p = cluster.container_process(pod, container).unwrap();
        let field = |f: &str| p.status_field(f).unwrap_or_default().to_string();
        println!(
            "{} {container} on {}: Uid {} CapEff {} CapBnd {} Seccomp {} NoNewPrivs {} read-only root {}",
            pod.name,
            pod.node,
            field("Uid"),
            field("CapEff"),
            field("CapBnd"),
            field("Seccomp"),
            field("NoNewPrivs"),
            root_mount(p.pid)
        );
        assert_eq!(field("Seccomp"), "2", "{}: seccomp RuntimeDefault (filter mode)", pod.name);
        assert_eq!(field("NoNewPrivs"), "1", "{}: allowPrivilegeEscalation false", pod.name);
        assert!(root_mount(p.pid), "{}: readOnlyRootFilesystem", pod.name);
        match container.as_str() {
            // Exactly NET_ADMIN (12) and NET_RAW (13): effective, permitted and bounding.
            "agent" => {
                assert_eq!(field("Uid").split_whitespace().next(), Some("0"));
                for f in ["CapEff", "CapPrm", "CapBnd"] {
                    assert_eq!(field(f), "0000000000003000", "{}: {f}", pod.name);
                }
            }
            // The proxy and the operator: no privilege at all.
            "proxy" | "operator" => {
                assert!(field("Uid").split_whitespace().all(|u| u == "65532"), "{}: {}", pod.name, field("Uid"));
                for f in ["CapEff", "CapPrm", "CapBnd"] {
                    assert_eq!(field(f), "0000000000000000", "{}: {f}", pod.name);
                }
            }
            other => panic!("unexpected container {other}"),
        }
    }

    // What a user reads: the logs through the API server and the kubelet, the pod's events.
    for pod in &pods {
        // Without -c: the default container (the agent's is annotated).
        let logs = up.kubectl(&["logs", "-n", KUBEHA_NAMESPACE, &pod.name]);
        assert!(!logs.trim().is_empty(), "kubectl logs {}", pod.name);
        for (container, _, _) in &pod.containers {
            let logs = up.kubectl(&["logs", "-n", KUBEHA_NAMESPACE, &pod.name, "-c", container]);
            assert!(!logs.trim().is_empty(), "kubectl logs {} -c {container}", pod.name);
        }
        let described = up.kubectl(&["describe", "pod", "-n", KUBEHA_NAMESPACE, &pod.name]);
        let node_line = described.lines().find(|l| l.starts_with("Node:")).unwrap_or_default();
        assert!(
            node_line.ends_with(&format!(" {}/{}", pod.node, Host::parse(&pod.node).unwrap().ipv4())),
            "{node_line}"
        );
        assert!(described.contains("already present on machine") && described.contains("Started"), "{described}");
    }

    // The active master's agent crashes inside its container: its kubelet restarts it, and it takes its
    // node's place again (back in VRRP, reporting to its member). The proxy container beside it goes on
    // serving: a client of VIP:8443 is never refused (the backup's proxy listens already when it takes over).
    let active = get_hac(&up, "control-plane")["status"]["activeNode"].as_str().unwrap().to_string();
    let node = NODES.into_iter().find(|n| n.name() == active).unwrap();
    let before = cluster.agent_pod(&node).unwrap();
    let old = before.container_id("agent").unwrap().to_string();
    let vip_proxy = std::net::SocketAddr::from((VIP_V4, 8443));
    let client =
        cluster.connect_loop(&CLIENTS[0], vip_proxy, Duration::from_millis(10), Duration::from_secs(4)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    cluster.kill_agent(&node).unwrap();
    let after = cluster.wait_agent_ready(&node, Some(&old)).await.unwrap();
    let ready_after = killed.elapsed();
    let connects = tokio::task::spawn_blocking(move || client.join().unwrap()).await.unwrap();
    println!("connects to {vip_proxy} from 0.5 s before to 3.5 s after the kill: {connects:?}");
    assert_eq!(connects.refused, 0, "the proxy went away with the agent: {connects:?}");
    assert!(connects.ok > 100, "{connects:?}");
    assert_eq!(after.name, before.name, "the same pod, its container restarted");
    assert_eq!(after.restarts("agent"), before.restarts("agent") + 1);
    assert_eq!(after.container_id("proxy"), before.container_id("proxy"), "the proxy container was not touched");
    assert_eq!(after.restarts("proxy"), before.restarts("proxy"));
    let member = format!("control-plane-{node}");
    wait_until(&format!("{member} reports from its restarted agent"), Duration::from_secs(30), || async {
        let out = up.kubectl(&["get", "ham", &member, "-o", "jsonpath={.status.state}"]);
        out == "Master" || out == "Backup"
    })
    .await;
    println!(
        "kubelet restart of a SIGKILLed agent on {node}: Ready again {:.2} s after the kill, member back in VRRP {:.2} s after",
        ready_after.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    wait_ready(&up, "control-plane").await;
}
