//! Pods on the real nodes: what the tests ask of them and do to them. The kubelets, containerd and the
//! controllers run them (src/node.rs); this module only looks: the API for a pod's place and state, the
//! node's cgroups and `/proc` for its container's process (what a person would read on the node), the
//! node's `/var/log/pods` for its logs (what `kubectl logs` serves, readable while the API is down).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::cluster::{Cluster, KUBEHA_NAMESPACE};
use crate::error::{Error, IoContext as _, Result};
use crate::net::Host;
use crate::process::{self, Bind};

/// The Helm chart.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/kubeha");
/// Helm values for the test world.
pub const TEST_WORLD_VALUES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-world-values.yaml");
/// How long a rollout (pods scheduled, images present, probes passing) may take on two shared cores.
const ROLLOUT: Duration = Duration::from_secs(180);

/// A pod as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Its name (a DaemonSet's `kubeha-agent-x7k2p`, a static pod's mirror `kubeha-bootstrap-n1`).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The UID its kubelet knows it by: for a static pod its own (the mirror pod in the API has another,
    /// and names this one in its `kubernetes.io/config.mirror` annotation).
    pub uid: String,
    /// The node it was scheduled to (empty while pending).
    pub node: String,
    /// Whether its Ready condition is True.
    pub ready: bool,
    /// Its containers' IDs (`containerd://…` stripped) and restart counts, by container name.
    pub containers: Vec<(String, String, u32)>,
    /// Whether it is being deleted.
    pub terminating: bool,
}

impl Pod {
    fn from_api(item: &Value) -> Self {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let meta = &item["metadata"];
        let status = &item["status"];
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let containers = status["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let id = s(&c["containerID"]);
                let id = id.split_once("://").map_or(id.clone(), |(_, id)| id.to_string());
                (s(&c["name"]), id, c["restartCount"].as_u64().unwrap_or(0) as u32)
            })
            .collect();
        Self {
            name: s(&meta["name"]),
            namespace: s(&meta["namespace"]),
            uid: meta["annotations"]["kubernetes.io/config.mirror"]
                .as_str()
                .map_or_else(|| s(&meta["uid"]), str::to_string),
            node: s(&item["spec"]["nodeName"]),
            ready,
            containers,
            terminating: !meta["deletionTimestamp"].is_null(),
        }
    }

    /// The ID of the container `name` now (the runtime's), if it was started.
    pub fn container_id(&self, name: &str) -> Option<&str> {
        self.containers.iter().find(|(n, id, _)| n == name && !id.is_empty()).map(|(_, id, _)| id.as_str())
    }

    /// How often the kubelet restarted the container `name`.
    pub fn restarts(&self, name: &str) -> u32 {
        self.containers.iter().find(|(n, _, _)| n == name).map_or(0, |c| c.2)
    }
}

/// What a container's process runs with, read from `/proc` on its node.
#[derive(Debug, Clone)]
pub struct ContainerProcess {
    /// The PID (in the machine's PID namespace) of the container's first process.
    pub pid: u32,
    /// Its command line.
    pub argv: Vec<String>,
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// `/proc/<pid>/status`.
    pub status: String,
}

impl ContainerProcess {
    /// The value of `--name=value` on its command line.
    pub fn arg(&self, name: &str) -> Option<&str> {
        let prefix = format!("--{name}=");
        self.argv.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
    }

    /// The value of an environment variable.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A field of `/proc/<pid>/status` (`CapEff`, `Seccomp`, `NoNewPrivs`, `Uid`, …).
    pub fn status_field(&self, field: &str) -> Option<&str> {
        self.status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).map(str::trim)
    }

    /// A file inside the container, read through its root (e.g. its service-account token).
    pub fn read(&self, path: &str) -> Result<String> {
        let p = format!("/proc/{}/root{path}", self.pid);
        fs::read_to_string(&p).ctx(|| format!("reading {p}"))
    }
}

impl Cluster {
    /// The pods in `namespace` that match the label `selector` (`""` for all), sorted by name.
    pub fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<Pod>> {
        let mut cmd = self.kubectl();
        cmd.args(["get", "pods", "-n", namespace, "-o", "json"]);
        if !selector.is_empty() {
            cmd.args(["-l", selector]);
        }
        let list: Value = serde_json::from_str(&process::output(&mut cmd)?)
            .map_err(|e| Error::Usage(format!("kubectl get pods: {e}")))?;
        let mut pods: Vec<Pod> = list["items"].as_array().into_iter().flatten().map(Pod::from_api).collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pods)
    }

    /// The pods of kubeha's release (agents and operators).
    pub fn kubeha_pods(&self) -> Result<Vec<Pod>> {
        self.pods(KUBEHA_NAMESPACE, "app.kubernetes.io/instance=kubeha")
    }

    /// The DaemonSet agent's pod on `node`.
    pub fn agent_pod(&self, node: &Host) -> Result<Pod> {
        self.kubeha_pods()?
            .into_iter()
            .find(|p| p.node == node.name() && p.name.starts_with("kubeha-agent") && !p.terminating)
            .ok_or_else(|| Error::Usage(format!("no kubeha agent pod on {node}")))
    }

    /// `helm install kubeha` of the chart into `kubeha-system` with the test world's values and `extra`
    /// arguments, then waits until the controllers and kubelets have rolled it out; returns helm's output
    /// (the NOTES) and the release's pods.
    pub async fn install_chart(&self, extra: &[&str]) -> Result<(String, Vec<Pod>)> {
        let mut helm = self.helm();
        helm.args(["install", "kubeha", CHART, "-n", KUBEHA_NAMESPACE, "--create-namespace", "-f", TEST_WORLD_VALUES]);
        let notes = process::output(helm.args(extra))?;
        Ok((notes, self.wait_release("kubeha", KUBEHA_NAMESPACE).await?))
    }

    /// Waits until the release's DaemonSets and Deployments are rolled out (every pod current and Ready,
    /// the old ones gone) or, once it is uninstalled, until none of its pods is left. Returns its pods.
    pub async fn wait_release(&self, release: &str, namespace: &str) -> Result<Vec<Pod>> {
        let selector = format!("app.kubernetes.io/instance={release}");
        let workloads = process::output(self.kubectl().args([
            "get",
            "daemonset,deployment",
            "-n",
            namespace,
            "-l",
            &selector,
            "-o",
            "name",
        ]))?;
        for workload in workloads.lines().filter(|l| !l.is_empty()) {
            process::run(self.kubectl().args([
                "rollout",
                "status",
                "-n",
                namespace,
                workload,
                &format!("--timeout={}s", ROLLOUT.as_secs()),
            ]))?;
        }
        let what = format!("release {release}'s pods settled");
        self.poll(&what, ROLLOUT, Duration::from_millis(500), || {
            // Rolled out: no pod of an older revision still terminating; uninstalled: none at all.
            let pods = self.pods(namespace, &selector).map(|pods| {
                let settled =
                    pods.iter().all(|p| !p.terminating && p.ready) && (!workloads.trim().is_empty() || pods.is_empty());
                settled.then_some(pods)
            });
            async move { pods }
        })
        .await
    }

    /// Waits until `node` runs a Ready agent pod whose container is not `old` (a restarted or replaced
    /// one), and returns it.
    pub async fn wait_agent_ready(&self, node: &Host, old: Option<&str>) -> Result<Pod> {
        self.poll(&format!("a new Ready agent on {node}"), ROLLOUT, Duration::from_millis(100), || {
            let pod = self
                .agent_pod(node)
                .ok()
                .filter(|p| p.ready && p.container_id("agent").is_some_and(|id| Some(id) != old));
            async move { Ok(pod) }
        })
        .await
    }

    /// The process of `pod`'s container `container`, found through its node's cgroups.
    pub fn container_process(&self, pod: &Pod, container: &str) -> Result<ContainerProcess> {
        let id = pod
            .container_id(container)
            .ok_or_else(|| Error::Usage(format!("pod {}: container {container} has not started", pod.name)))?;
        let host = Host::parse(&pod.node)?;
        let dir = crate::node::container_cgroup(&host, id)
            .ok_or_else(|| Error::Usage(format!("pod {}: no cgroup of container {id} on {host}", pod.name)))?;
        let pids = crate::node::procs(&dir);
        let status = |pid: u32| fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        // The container's own init: PID 1 in its PID namespace.
        let pid = pids
            .iter()
            .copied()
            .find(|p| status(*p).lines().any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")))
            .or_else(|| pids.first().copied())
            .ok_or_else(|| Error::Usage(format!("pod {}: container {container} has no process", pod.name)))?;
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect()
        };
        let argv = split(fs::read(format!("/proc/{pid}/cmdline")).ctx(|| format!("reading /proc/{pid}/cmdline"))?);
        let env = split(fs::read(format!("/proc/{pid}/environ")).ctx(|| format!("reading /proc/{pid}/environ"))?)
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        Ok(ContainerProcess { pid, argv, env, status: status(pid) })
    }

    /// SIGKILLs the container's process, as a crash: its kubelet restarts it.
    pub fn kill_container(&self, pod: &Pod, container: &str) -> Result<()> {
        let pid = self.container_process(pod, container)?.pid;
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).map_err(|e| Error::Usage(format!("kill {pid}: {e}")))
    }

    /// Deletes the pod (SIGTERM, its grace period) and, for a DaemonSet's, waits until the replacement on
    /// the same node is Ready: a restart as `kubectl rollout restart` gives it.
    pub async fn replace_agent(&self, node: &Host) -> Result<Pod> {
        let pod = self.agent_pod(node)?;
        process::run(self.kubectl().args(["delete", "pod", "-n", &pod.namespace, &pod.name, "--timeout=60s"]))?;
        self.wait_agent_ready(node, pod.container_id("agent")).await
    }

    /// The pod's logs on its node, every container start in order (what `kubectl logs` and
    /// `kubectl logs --previous` show), the CRI prefix (time, stream, tag) removed.
    pub fn pod_log(&self, pod: &Pod) -> Result<String> {
        let host = Host::parse(&pod.node)?;
        let dir = self.node_path(&host, &format!("/var/log/pods/{}_{}_{}", pod.namespace, pod.name, pod.uid))?;
        self.logs_under(&dir)
    }

    /// The log of `node`'s bootstrap agent (the static pod `kubeha-bootstrap-<node>` in kube-system), empty
    /// while its mirror pod or its log is not there yet.
    pub fn bootstrap_log(&self, node: &Host) -> String {
        let pods = self.pods("kube-system", "app.kubernetes.io/component=bootstrap").unwrap_or_default();
        let name = format!("kubeha-bootstrap-{node}");
        pods.iter().find(|p| p.name == name).and_then(|p| self.pod_log(p).ok()).unwrap_or_default()
    }

    /// The logs of the agent pods that ran on `node` (all of them, oldest first): a node's agent history
    /// across restarts and replacements, read from the node even while the API is down.
    pub fn agent_log(&self, node: &Host) -> String {
        let Ok(root) = self.node_path(node, "/var/log/pods") else { return String::new() };
        let Ok(entries) = fs::read_dir(&root) else { return String::new() };
        let agents = format!("{KUBEHA_NAMESPACE}_kubeha-agent-");
        let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&agents))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        dirs.sort();
        dirs.iter().filter_map(|(_, d)| self.logs_under(d).ok()).collect::<Vec<_>>().join("")
    }

    /// The last `lines` lines of every master's agent log, each under a heading: for a failure message, since
    /// the next test's world replaces the files.
    pub fn agent_logs(&self, lines: usize) -> String {
        crate::NODES
            .iter()
            .map(|n| {
                let log = self.agent_log(n);
                let all: Vec<&str> = log.lines().collect();
                format!("--- {n}'s agent\n{}", all[all.len().saturating_sub(lines)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn logs_under(&self, dir: &Path) -> Result<String> {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).ctx(|| format!("reading {}", d.display()))?.filter_map(|e| e.ok()) {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "log") {
                    files.push(path);
                }
            }
        }
        // <container>/<restart>.log: restarts in numeric order.
        files.sort_by_key(|p| {
            let n: u32 = p.file_stem().and_then(|s| s.to_str()?.parse().ok()).unwrap_or(0);
            (p.parent().map(Path::to_path_buf), n)
        });
        let mut out = String::new();
        for f in files {
            for line in fs::read_to_string(&f).unwrap_or_default().lines() {
                // 2026-12-06T08:00:00.000000000Z stdout F <text>
                let mut parts = line.splitn(4, ' ');
                let (_, _, _, text) = (parts.next(), parts.next(), parts.next(), parts.next());
                out.push_str(text.unwrap_or(line));
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// Runs `argv` on `host` with the node's directories at `node_paths` (`/etc/kubernetes/manifests`,
    /// `/etc/kubeha`) bound where the node sees them, as a person logged in on that node would; returns
    /// its stdout.
    pub fn run_on_host(&self, host: &Host, argv: &[String], node_paths: &[&str]) -> Result<String> {
        let mut binds = Vec::new();
        for path in node_paths {
            let source = self.node_path(host, path)?;
            fs::create_dir_all(&source).ctx(|| format!("creating {}", source.display()))?;
            binds.push(Bind { source, target: PathBuf::from(path) });
        }
        let program = argv.first().ok_or_else(|| Error::Usage("run_on_host needs a command".into()))?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(&argv[1..]);
        process::enter_with(&mut cmd, host, false, &binds)?;
        process::output(&mut cmd)
    }
}

/// The documents of a multi-document YAML stream (Helm's output), empty ones left out.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in text.split("\n---") {
        let value: Value =
            serde_norway::from_str(doc).map_err(|e| Error::Usage(format!("YAML that does not parse: {e}")))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}
