//! The test world's kubelet: runs the pods of a Helm release's Deployments and DaemonSets as processes in
//! the hosts' namespaces, from the manifest Helm installed.
//!
//! There is no container runtime here, so a pod is its container's process, started with exactly the
//! command, arguments and environment of the pod template — `$(VAR)` expanded and downward-API fields
//! resolved as a kubelet does — in its host's network namespace, with its volumes bound into a mount
//! namespace of its own: the service-account token (minted by the TokenRequest API, bound to the node for
//! a DaemonSet pod, so it carries the node name as a real pod's token does) and its hostPath directories.
//! The image's binary path (`/usr/local/bin/kubeha-agent`) maps to this workspace's build. Not emulated:
//! image pulls, security contexts (processes run as root with every capability), resource limits, probes
//! after start-up, restarts, and tolerations (a DaemonSet runs on every master its nodeSelector matches).
//! DaemonSet pods run on the masters (host network); Deployment replicas on the clients, one per client,
//! which reach the API through the `kubernetes` Service as pods do.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, KUBEHA_NAMESPACE};
use crate::error::{Error, IoContext as _, Result};
use crate::net::{CLIENTS, Host, KUBERNETES_SERVICE, NODES};
use crate::process::{self, Bind, Daemon};

/// The Helm chart.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/kubeha");
/// Helm values for the test world.
pub const TEST_WORLD_VALUES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-world-values.yaml");

/// Where a container finds its service account, as every kubelet mounts it.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where a kubelet finds static pods (kubeadm's staticPodPath).
const STATIC_POD_DIR: &str = "/etc/kubernetes/manifests";
/// The environment a container image typically brings.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One pod as this kubelet runs it: everything that decides whether a running one is still current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// The pod's name: `<workload>-<node>` for a DaemonSet, `<workload>-<n>` for a Deployment.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// `/usr/bin/env -i <environment> <program> <arguments>`.
    pub argv: Vec<String>,
    /// Its volumes.
    binds: Vec<Bind>,
    /// The readiness probe's address and path, if it has one.
    pub ready: Option<(SocketAddr, String)>,
    /// A static pod (from a node's manifest directory, not from a release).
    r#static: bool,
    /// Its service account and namespace: a token is asked for when the pod starts (none for static pods).
    service_account: Option<(String, String)>,
    /// terminationGracePeriodSeconds.
    pub grace_seconds: u64,
}

impl Pod {
    /// The value of `--name=value` in its arguments.
    pub fn arg(&self, name: &str) -> Option<&str> {
        let prefix = format!("--{name}=");
        self.argv.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
    }

    /// The value of an environment variable it runs with.
    pub fn env(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.argv.iter().skip(2).take_while(|a| a.contains('=')).find_map(|a| a.strip_prefix(prefix.as_str()))
    }
}

impl Cluster {
    /// Makes the processes match the pods of `release` (in `namespace`) as Helm installed it, as the
    /// kubelets and controllers would: starts missing pods, replaces changed ones one at a time (stop, start,
    /// wait until ready: a rolling update with maxUnavailable 1), and stops pods the release no longer has
    /// (all of them once it is uninstalled), each with SIGTERM and its grace period. Returns the pods running.
    pub async fn kubelet_sync(&self, release: &str, namespace: &str) -> Result<Vec<Pod>> {
        let desired = match self.release_manifest(release, namespace)? {
            Some(manifest) => self.pods_of(&manifest, namespace)?,
            None => Vec::new(),
        };
        self.converge(desired, |p| !p.r#static).await
    }

    /// `helm install kubeha` of the chart into `kubeha-system` with the test world's values and `extra`
    /// arguments, then its pods run as the kubelets would; returns helm's output (the NOTES) and the pods.
    pub async fn install_chart(&self, extra: &[&str]) -> Result<(String, Vec<Pod>)> {
        let mut helm = self.helm();
        helm.args(["install", "kubeha", CHART, "-n", KUBEHA_NAMESPACE, "--create-namespace", "-f", TEST_WORLD_VALUES]);
        let notes = process::output(helm.args(extra))?;
        Ok((notes, self.kubelet_sync("kubeha", KUBEHA_NAMESPACE).await?))
    }

    /// Starts, replaces (one at a time) and stops pods until those for which `mine` holds are `desired`.
    async fn converge(&self, desired: Vec<Pod>, mine: impl Fn(&Pod) -> bool) -> Result<Vec<Pod>> {
        let running: Vec<Pod> = self.pods_running().into_iter().filter(|p| mine(p)).collect();
        for r in running.iter().filter(|r| !desired.iter().any(|d| d.name == r.name)) {
            self.stop_pod(r, true)?;
        }
        for pod in &desired {
            match running.iter().find(|r| r.name == pod.name) {
                Some(c) if c == pod && self.pod_daemon(pod)?.pid().is_some() => continue,
                Some(c) => self.stop_pod(c, false)?,
                None => {}
            }
            self.start_pod(pod)?;
            if let Some((addr, path)) = &pod.ready {
                let what = format!("pod {} on {}", pod.name, pod.host);
                self.wait_served_path(&what, &self.pod_daemon(pod)?, *addr, path).await?;
            }
        }
        Ok(desired)
    }

    /// Runs the static pods of `node` (the manifests in its `/etc/kubernetes/manifests`) as its kubelet
    /// would: starts those not running, replaces changed ones, stops those whose manifest is gone.
    pub async fn kubelet_static_sync(&self, node: &Host) -> Result<Vec<Pod>> {
        let dir = self.host_path(node, STATIC_POD_DIR)?;
        let mut desired = Vec::new();
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .ctx(|| format!("reading {}", dir.display()))?
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        entries.sort();
        for path in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
            let text = fs::read_to_string(path).ctx(|| format!("reading {}", path.display()))?;
            let pod: k8s_openapi::api::core::v1::Pod = serde_norway::from_str(&text)
                .map_err(|e| Error::Usage(format!("static pod {}: {e}", path.display())))?;
            let name = format!("{}-{node}", pod.metadata.name.unwrap_or_default());
            let namespace = pod.metadata.namespace.unwrap_or_else(|| "default".into());
            let id = PodIdentity { name, namespace: &namespace, host: *node, node: true, r#static: true };
            desired.push(self.pod(&id, &pod.spec.unwrap_or_default())?);
        }
        self.converge(desired, |p: &Pod| p.r#static && p.host == node.name()).await
    }

    /// Runs `argv` on `host` with the host's files at `host_paths` (its own directories of the test world
    /// bound there), as a person logged in on that node would; returns its stdout.
    pub fn run_on_host(&self, host: &Host, argv: &[String], host_paths: &[&str]) -> Result<String> {
        let mut binds = Vec::new();
        for path in host_paths {
            binds.push(Bind { source: self.host_path(host, path)?, target: PathBuf::from(path) });
        }
        let program = argv.first().ok_or_else(|| Error::Usage("run_on_host needs a command".into()))?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(&argv[1..]);
        process::enter_with(&mut cmd, host, false, &binds)?;
        process::output(&mut cmd)
    }

    /// The test world's directory that stands for `path` on `host` (created if missing).
    pub fn host_path(&self, host: &Host, path: &str) -> Result<PathBuf> {
        let dir = self.dir().join(host.name()).join("hostpath").join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The pods this kubelet runs now.
    pub fn pods_running(&self) -> Vec<Pod> {
        let Ok(entries) = fs::read_dir(self.pods_dir()) else { return Vec::new() };
        let mut pods: Vec<Pod> = entries
            .filter_map(|e| {
                let path = e.ok()?.path().join("pod.json");
                serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        pods
    }

    /// SIGKILLs the pod's process, as a crash would: no SIGTERM, nothing cleaned up. The pod stays, so the
    /// next [`Cluster::kubelet_sync`] starts it again as a kubelet restarts a crashed container.
    pub fn kill_pod(&self, name: &str) -> Result<()> {
        self.pod_daemon(&self.running_pod(name)?)?.kill();
        Ok(())
    }

    /// Stops the pod's process with SIGTERM and its grace period, as a kubelet stops a pod; the pod stays,
    /// so the next [`Cluster::kubelet_sync`] starts it again.
    pub fn stop_pod_process(&self, name: &str) -> Result<()> {
        self.stop_pod(&self.running_pod(name)?, false)
    }

    /// Restarts the pod as `kubectl rollout restart` would have it replaced: stop (SIGTERM, grace), start,
    /// and wait until its readiness probe passes.
    pub async fn restart_pod(&self, name: &str) -> Result<()> {
        let pod = self.running_pod(name)?;
        self.stop_pod(&pod, false)?;
        self.start_pod(&pod)?;
        if let Some((addr, path)) = &pod.ready {
            let what = format!("pod {} on {}", pod.name, pod.host);
            self.wait_served_path(&what, &self.pod_daemon(&pod)?, *addr, path).await?;
        }
        Ok(())
    }

    /// The PID of the pod's process, if it runs.
    pub fn pod_pid(&self, name: &str) -> Option<u32> {
        self.pod_daemon(&self.running_pod(name).ok()?).ok()?.pid()
    }

    fn running_pod(&self, name: &str) -> Result<Pod> {
        self.pods_running()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Usage(format!("no pod {name} (see `e2e/cluster status`)")))
    }

    /// The pod's log.
    pub fn pod_log(&self, pod: &Pod) -> Result<String> {
        Ok(fs::read_to_string(self.pod_daemon(pod)?.log).unwrap_or_default())
    }

    fn release_manifest(&self, release: &str, namespace: &str) -> Result<Option<String>> {
        let out = self.helm().args(["get", "manifest", release, "-n", namespace]).output();
        let out = out.ctx(|| "running helm get manifest".into())?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("not found") {
            return Ok(None);
        }
        Err(Error::Command { cmd: format!("helm get manifest {release}"), detail: stderr.into_owned() })
    }

    /// The pods of every DaemonSet and Deployment in a rendered manifest.
    fn pods_of(&self, manifest: &str, namespace: &str) -> Result<Vec<Pod>> {
        let mut pods = Vec::new();
        let bad = |e: serde_json::Error| Error::Usage(format!("the release manifest does not parse: {e}"));
        for value in yaml_documents(manifest)? {
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("DaemonSet") => {
                    let ds: DaemonSet = serde_json::from_value(value).map_err(bad)?;
                    let name = ds.metadata.name.clone().unwrap_or_default();
                    let spec = ds.spec.template.spec.unwrap_or_default();
                    let selector = spec.node_selector.clone().unwrap_or_default();
                    for node in self.nodes_matching(&selector)? {
                        let identity = PodIdentity {
                            name: format!("{name}-{node}"),
                            namespace,
                            host: node,
                            node: true,
                            r#static: false,
                        };
                        pods.push(self.pod(&identity, &spec)?);
                    }
                }
                Some("Deployment") => {
                    let d: Deployment = serde_json::from_value(value).map_err(bad)?;
                    let name = d.metadata.name.clone().unwrap_or_default();
                    let spec = d.spec;
                    let replicas = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
                    if replicas > CLIENTS.len() {
                        return Err(Error::Usage(format!(
                            "{name} wants {replicas} replicas; the test world has {} client hosts",
                            CLIENTS.len()
                        )));
                    }
                    let template = spec.template.spec.unwrap_or_default();
                    for (i, host) in CLIENTS.iter().take(replicas).enumerate() {
                        let identity = PodIdentity {
                            name: format!("{name}-{i}"),
                            namespace,
                            host: *host,
                            node: false,
                            r#static: false,
                        };
                        pods.push(self.pod(&identity, &template)?);
                    }
                }
                _ => {}
            }
        }
        Ok(pods)
    }

    fn nodes_matching(&self, selector: &BTreeMap<String, String>) -> Result<Vec<Host>> {
        let out = process::output(self.kubectl().args(["get", "nodes", "-o", "json"]))?;
        let list: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| Error::Usage(format!("kubectl get nodes: {e}")))?;
        let mut hosts = Vec::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let labels = &item["metadata"]["labels"];
            if selector.iter().all(|(k, v)| labels[k].as_str() == Some(v.as_str()))
                && let Some(host) = NODES.iter().find(|n| Some(n.name().as_str()) == item["metadata"]["name"].as_str())
            {
                hosts.push(*host);
            }
        }
        Ok(hosts)
    }

    fn pod(&self, id: &PodIdentity<'_>, spec: &PodSpec) -> Result<Pod> {
        let [container] = spec.containers.as_slice() else {
            return Err(Error::Usage(format!("pod {}: this kubelet runs pods of one container", id.name)));
        };
        let env = self.environment(id, container)?;
        let expand = |s: &String| expand(s, &env);
        let mut words: Vec<String> = container.command.iter().flatten().map(expand).collect();
        words.extend(container.args.iter().flatten().map(expand));
        let program = words.first().ok_or_else(|| Error::Usage(format!("pod {}: no command", id.name)))?;
        let binary = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or_default();
        words[0] = crate::kubeha_binary(binary)?.display().to_string();
        let mut argv = vec!["/usr/bin/env".to_string(), "-i".to_string()];
        argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.extend(words);

        let mut binds = Vec::new();
        let service_account = (!id.r#static).then(|| {
            let account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
            (account, id.namespace.to_string())
        });
        if service_account.is_some() {
            binds.push(Bind { source: self.service_account_dir(&id.name), target: SERVICE_ACCOUNT_DIR.into() });
        }
        for mount in container.volume_mounts.iter().flatten() {
            let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name);
            let Some(host_path) = volume.and_then(|v| v.host_path.as_ref()) else {
                return Err(Error::Usage(format!("pod {}: volume {} is not a hostPath", id.name, mount.name)));
            };
            let source = self.host_path(&id.host, &host_path.path)?;
            binds.push(Bind { source, target: mount.mount_path.clone().into() });
        }

        let ready = container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|get| {
            let port = match &get.port {
                IntOrString::Int(p) => u16::try_from(*p).unwrap_or(0),
                IntOrString::String(name) => container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .and_then(|p| u16::try_from(p.container_port).ok())
                    .unwrap_or(0),
            };
            (SocketAddr::new(IpAddr::V4(id.host.ipv4()), port), get.path.clone().unwrap_or_else(|| "/".into()))
        });
        let grace_seconds = spec.termination_grace_period_seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(30);
        Ok(Pod {
            name: id.name.clone(),
            host: id.host.name(),
            argv,
            binds,
            ready,
            grace_seconds,
            r#static: id.r#static,
            service_account,
        })
    }

    /// The container's environment: the image's PATH, the Service variables every kubelet adds, then the
    /// container's own variables in order (each may refer to earlier ones), downward-API fields resolved.
    fn environment(&self, id: &PodIdentity<'_>, container: &Container) -> Result<Vec<(String, String)>> {
        let (service, port) = KUBERNETES_SERVICE;
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), IMAGE_PATH.into()),
            ("HOSTNAME".into(), if id.node { id.host.name() } else { id.name.clone() }),
            ("KUBERNETES_SERVICE_HOST".into(), service.to_string()),
            ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ];
        for var in container.env.iter().flatten() {
            let value = if let Some(v) = &var.value {
                expand(v, &env)
            } else if let Some(field) = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
                match field.field_path.as_str() {
                    "spec.nodeName" => id.host.name(),
                    "metadata.name" => id.name.clone(),
                    "metadata.namespace" => id.namespace.to_string(),
                    "status.hostIP" | "status.podIP" => id.host.ipv4().to_string(),
                    other => {
                        return Err(Error::Usage(format!("pod {}: fieldRef {other} is not emulated", id.name)));
                    }
                }
            } else {
                return Err(Error::Usage(format!("pod {}: env {} has a source not emulated", id.name, var.name)));
            };
            env.retain(|(k, _)| *k != var.name);
            env.push((var.name.clone(), value));
        }
        Ok(env)
    }

    fn service_account_dir(&self, pod: &str) -> PathBuf {
        self.pods_dir().join(pod).join("serviceaccount")
    }

    /// A fresh token for the pod's service account (TokenRequest, as a kubelet asks for it; bound to the Node
    /// for a pod on a master, so it carries the node name), with the CA and namespace, where the pod's
    /// service-account mount finds them.
    fn write_service_account(&self, pod: &Pod, host: &Host, account: &str, namespace: &str) -> Result<()> {
        let dir = self.service_account_dir(&pod.name);
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let mut create = self.kubectl();
        create.args(["create", "token", account, "-n", namespace, "--duration=24h"]);
        if host.is_master() {
            create.args(["--bound-object-kind=Node", &format!("--bound-object-name={host}")]);
        }
        let token = process::output(&mut create)?;
        let write = |name: &str, data: &[u8]| {
            let path = dir.join(name);
            fs::write(&path, data).ctx(|| format!("writing {}", path.display()))
        };
        write("token", token.trim().as_bytes())?;
        write("ca.crt", &fs::read(self.ca_path()).ctx(|| "reading the cluster CA".into())?)?;
        write("namespace", namespace.as_bytes())
    }

    fn start_pod(&self, pod: &Pod) -> Result<()> {
        let host = Host::parse(&pod.host)?;
        let dir = self.pods_dir().join(&pod.name);
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        if let Some((account, namespace)) = &pod.service_account {
            self.write_service_account(pod, &host, account, namespace)?;
        }
        let record = dir.join("pod.json");
        let json = serde_json::to_string_pretty(pod).map_err(|e| Error::Usage(e.to_string()))?;
        fs::write(&record, json).ctx(|| format!("writing {}", record.display()))?;
        self.pod_daemon(pod)?.spawn_with(&host, &pod.argv, &pod.binds).map(drop)
    }

    /// Stops the pod's process; `deleted` also removes its record and volumes (the pod is gone, not replaced).
    fn stop_pod(&self, pod: &Pod, deleted: bool) -> Result<()> {
        self.pod_daemon(pod)?.stop(Duration::from_secs(pod.grace_seconds));
        let dir = self.pods_dir().join(&pod.name);
        if deleted {
            fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    fn pod_daemon(&self, pod: &Pod) -> Result<Daemon> {
        let host = Host::parse(&pod.host)?;
        Ok(Daemon {
            pidfile: self.dir().join("run").join(host.name()).join(format!("pod-{}.pid", pod.name)),
            log: self.dir().join("logs").join(host.name()).join(format!("pod-{}.log", pod.name)),
        })
    }

    fn pods_dir(&self) -> PathBuf {
        self.dir().join("pods")
    }
}

struct PodIdentity<'a> {
    name: String,
    namespace: &'a str,
    host: Host,
    /// A DaemonSet or static pod on a master (host network, token bound to the node), or a Deployment
    /// replica.
    node: bool,
    /// A static pod: no service account (the kubelet gives static pods none).
    r#static: bool,
}

/// The documents of a multi-document YAML stream (Helm's output), empty ones left out.
pub fn yaml_documents(text: &str) -> Result<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for doc in text.split("\n---") {
        let value: serde_json::Value =
            serde_norway::from_str(doc).map_err(|e| Error::Usage(format!("YAML that does not parse: {e}")))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// `$(VAR)` → its value when VAR is defined earlier, `$$` → `$`, anything else as written: the kubelet's
/// expansion of command, args and env values.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expansion_is_the_kubelets() {
        let env = vec![("HOST_IP".to_string(), "198.51.100.11".to_string())];
        assert_eq!(expand("--metrics=$(HOST_IP):9641", &env), "--metrics=198.51.100.11:9641");
        assert_eq!(expand("$(UNDEFINED) $$(HOST_IP) $", &env), "$(UNDEFINED) $(HOST_IP) $");
    }
}
