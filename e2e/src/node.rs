//! Real nodes: every host of the test world that runs pods (the masters and the client hosts) runs a real
//! kubelet of the control plane's version and its own containerd with runc, booted by
//! `e2e/noderuntime/node.sh` inside the host's network namespace. The kubeha image built by `make image`
//! and a locally built pause image are imported into each containerd; no registry is involved.
//!
//! Each node's processes live in a cgroup tree of its own, `/kubeha-e2e/<host>` in every v1 hierarchy:
//! the daemons and their shims in `runtime/`, the pods in `pods/` (the kubelet's cgroupRoot). A power loss
//! is every process of that tree killed; `down` removes the tree. The node's mounts (its /run, overlays
//! on /etc and /var/lib, container root file systems) live in the node's private mount namespace and
//! vanish with its last process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cluster::{Cluster, last_line, last_lines, target_dir};
use crate::error::{Error, IoContext as _, Result};
use crate::net::{self, CLIENTS, Host, NODES};
use crate::process::{self, Daemon};

/// The cgroup v1 hierarchies a node's tree lives in (the machine mounts each on its own).
const HIERARCHIES: [&str; 9] = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd"];
/// The root of every node's cgroup tree.
const CGROUP_ROOT: &str = "kubeha-e2e";
/// The control-plane taint kubeadm puts on masters.
const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// Every host that runs a kubelet.
pub(crate) fn hosts() -> impl Iterator<Item = Host> {
    NODES.into_iter().chain(CLIENTS)
}

/// Where a node's containerd, runc, CNI plugins and pause image were built.
#[derive(Debug, Clone)]
pub(crate) struct Runtime {
    /// The output of e2e/noderuntime/build.sh.
    pub(crate) dir: PathBuf,
    /// The kubeha image archive of `make image`.
    pub(crate) image: PathBuf,
    /// The reference of the sandbox image every containerd is pinned to, at the tag kubeadm of the pinned
    /// release expects (e2e/noderuntime/build.sh reads it from kubeadm's constants).
    pub(crate) pause: String,
}

impl Runtime {
    /// Builds (or finds cached) the node runtime and finds the kubeha image `make image` wrote.
    pub(crate) fn find() -> Result<Self> {
        let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("noderuntime/build.sh");
        let dir =
            PathBuf::from(last_line(process::output(Command::new(build).stderr(std::process::Stdio::inherit()))?));
        // "<reference> <digest>", as scripts/oci-image.py prints it.
        let pause = fs::read_to_string(dir.join("pause.ref")).ctx(|| format!("reading {}/pause.ref", dir.display()))?;
        let pause = pause.split_whitespace().next().unwrap_or_default().to_string();
        Ok(Self { pause, dir, image: kubeha_image()? })
    }
}

/// The archive of `make image` for this workspace's version: target/image/kubeha-<version>-amd64.oci.tar.
pub fn kubeha_image() -> Result<PathBuf> {
    let path = target_dir().join("image").join(format!("kubeha-{}-amd64.oci.tar", env!("CARGO_PKG_VERSION")));
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Usage(format!("{} is missing: run `make image` (make test and make demo do)", path.display())))
    }
}

/// The reference the chart runs: the repository and the version (the chart's appVersion).
pub fn kubeha_image_ref() -> String {
    format!("ghcr.io/kubeha/kubeha:{}", env!("CARGO_PKG_VERSION"))
}

/// What this machine needs of every kubelet, whoever configures the rest (the test world here, kubeadm in
/// its world, through a drop-in): cgroup v1 without systemd, a cgroup tree per node, no OOM score below the
/// machine's own, and eviction and image GC that ignore the disk every node shares.
pub(crate) fn machine_kubelet_settings(host: &Host) -> String {
    format!(
        r#"# The machine's cgroups are v1 only (hybrid, no systemd): kubelets since 1.35 refuse v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{CGROUP_ROOT}/{host}/pods
cgroupsPerQOS: true
failSwapOn: false
oomScoreAdj: 0
# Every node shares one disk: eviction must not start because another node filled it.
evictionHard: {{memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 30
serializeImagePulls: false
"#
    )
}

impl Cluster {
    /// The sandbox (pause) image every node's containerd runs pods with.
    pub fn pause_image(&self) -> Result<String> {
        Ok(self.runtime()?.pause.clone())
    }

    fn node_dir(&self, host: &Host) -> PathBuf {
        self.dir().join(host.name()).join("node")
    }

    fn node_daemon(&self, host: &Host) -> Daemon {
        Daemon {
            pidfile: self.dir().join("run").join(host.name()).join("node.pid"),
            log: self.dir().join("logs").join(host.name()).join("node.log"),
        }
    }

    /// A host's own view of a path that node.sh binds from its node directory (`/etc/kubernetes`,
    /// `/etc/kubeha`, `/var/lib/kubeha`, `/var/log`): where a test reads and writes what the node sees there.
    pub fn node_path(&self, host: &Host, path: &str) -> Result<PathBuf> {
        let binds = [
            ("/etc/kubernetes", "etc-kubernetes"),
            ("/etc/kubeha", "etc-kubeha"),
            ("/var/lib/kubeha", "var-lib-kubeha"),
            ("/var/log", "var-log"),
        ];
        for (prefix, dir) in binds {
            if let Ok(rest) = Path::new(path).strip_prefix(prefix) {
                return Ok(self.node_dir(host).join(dir).join(rest));
            }
        }
        Err(Error::Usage(format!("{path} is not one of the node directories a test can reach ({binds:?})")))
    }

    /// Writes a host's containerd, kubelet and CNI configuration.
    fn write_node_config(&self, host: &Host, runtime: &Runtime) -> Result<()> {
        let dir = self.node_dir(host);
        for d in ["cni", "kubelet-pki", "containerd", "etc-kubernetes/manifests", "var-log"] {
            fs::create_dir_all(dir.join(d)).ctx(|| format!("creating {}", dir.join(d).display()))?;
        }
        let rt = runtime.dir.display();
        let containerd = format!(
            r#"version = 3
root = "{root}"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"
[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # The machine's bounding set lacks CAP_SYS_RESOURCE: runc may not lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "{rt}/runc"
      SystemdCgroup = false
      Root = "/run/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{rt}/cni"]
    conf_dir = "{cni}"
"#,
            root = dir.join("containerd").display(),
            cni = dir.join("cni").display(),
            pause = runtime.pause,
        );
        write(&dir.join("containerd.toml"), &containerd)?;

        let (subnet, _) = net::pod_range(host);
        let cni = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "kh-pods",
            "plugins": [{
                "type": "bridge",
                "bridge": net::POD_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]},
            }],
        });
        write(&dir.join("cni/10-kh-pods.conflist"), &cni.to_string())?;

        if self.is_kubeadm_world() {
            // kubeadm writes the kubelet's configuration and credentials; the machine's needs come as a drop-in.
            let dropin = dir.join("kubelet.conf.d");
            fs::create_dir_all(&dropin).ctx(|| format!("creating {}", dropin.display()))?;
            let settings = machine_kubelet_settings(host);
            let text = format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{settings}");
            return write(&dropin.join("10-test-world.conf"), &text);
        }
        let taints = if host.is_master() {
            format!("registerWithTaints:\n  - key: {CONTROL_PLANE_TAINT}\n    effect: NoSchedule\n")
        } else {
            String::new()
        };
        let kubelet = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
{machine}staticPodPath: /etc/kubernetes/manifests
fileCheckFrequency: 5s
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
imageServiceEndpoint: unix:///run/containerd/containerd.sock
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
{taints}"#,
            machine = machine_kubelet_settings(host),
            ip = host.ipv4(),
            ca = self.ca_path().display(),
        );
        write(&dir.join("kubelet.yaml"), &kubelet)?;
        fs::copy(self.pki().kubelet_kubeconfig(host), dir.join("kubelet.kubeconfig"))
            .ctx(|| format!("copying {host}'s kubelet kubeconfig"))?;
        Ok(())
    }

    /// Boots a host without a kubelet (an external etcd host of the kubeadm world): its cgroup tree and
    /// node.sh --bare, which holds the host's mount namespace for the services started there.
    pub(crate) fn start_bare(&self, host: &Host) -> Result<()> {
        if self.node_daemon(host).pid().is_some() {
            return Ok(());
        }
        self.spawn_node_sh(host, Some("--bare"), host.ipv4().to_string(), vec!["-".into(), "-".into()])
    }

    /// Boots a host's containerd and kubelet (if they are not running): its cgroup tree, then node.sh.
    pub(crate) fn start_runtime(&self, host: &Host) -> Result<()> {
        if self.node_daemon(host).pid().is_some() {
            return Ok(());
        }
        let runtime = self.runtime()?;
        self.write_node_config(host, runtime)?;
        let kubeadm = self.is_kubeadm_world();
        let mut rest: Vec<String> = [
            self.bins().join("kubelet"),
            runtime.dir.clone(),
            runtime.dir.join("pause.oci.tar"),
            runtime.image.clone(),
        ]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
        if kubeadm {
            rest.extend(self.plane_images()?.iter().map(|p| p.display().to_string()));
        }
        // Both families, as a dual-stack kubeadm node reports them: the IPv6 clusters find their members'
        // addresses here.
        let address = format!("{},{}", host.ipv4(), host.ipv6());
        self.spawn_node_sh(host, kubeadm.then_some("--kubeadm"), address, rest)
    }

    /// Starts node.sh for `host` in a mount namespace of its own, in the host's cgroup tree: `mode` first
    /// (`--kubeadm`, `--bare`), then the host, `address`, its node and log directories, and `rest`.
    fn spawn_node_sh(&self, host: &Host, mode: Option<&str>, address: String, rest: Vec<String>) -> Result<()> {
        make_cgroups(host)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("noderuntime/node.sh");
        let logs = self.dir().join("logs").join(host.name());
        let _ = fs::remove_file(self.node_dir(host).join("booted"));
        let mut argv: Vec<String> = ["unshare", "--mount", "--propagation", "private"].map(String::from).to_vec();
        argv.push(script.display().to_string());
        argv.extend(mode.map(String::from));
        argv.extend([host.name(), address, self.node_dir(host).display().to_string(), logs.display().to_string()]);
        argv.extend(rest);
        self.node_daemon(host).spawn(host, &argv).map(drop)
    }

    /// The PID of the host's node.sh: the process whose mount namespace is the node's own.
    pub(crate) fn node_pid(&self, host: &Host) -> Option<u32> {
        self.node_daemon(host).pid()
    }

    /// Waits until a kubeadm node's containerd runs with every image imported (node.sh --kubeadm then
    /// writes `booted` and waits for `systemctl start kubelet`).
    pub(crate) async fn wait_booted(&self, host: &Host) -> Result<()> {
        let booted = self.node_dir(host).join("booted");
        let daemon = self.node_daemon(host);
        let log = self.dir().join("logs").join(host.name()).join("node.log");
        self.poll(&format!("node {host} booted"), Duration::from_secs(120), Duration::from_millis(200), || {
            let result = if booted.exists() {
                Ok(Some(()))
            } else if daemon.pid().is_none() {
                let log = fs::read_to_string(&log).unwrap_or_default();
                Err(Error::Usage(format!("the node {host} stopped booting:\n{}", last_lines(&log, 10))))
            } else {
                Ok(None)
            };
            async move { result }
        })
        .await
    }

    /// Stops every process of a host's node — node.sh, containerd, the kubelet, the shims, every container
    /// — at once with SIGKILL, as a power loss does, and removes the pods' cgroups (a machine that reboots
    /// starts with none).
    pub(crate) fn kill_runtime(&self, host: &Host) -> Result<()> {
        kill_cgroup_tree(host)?;
        let _ = fs::remove_file(self.node_daemon(host).pidfile);
        remove_cgroups(host)
    }

    /// Boots every host's node and waits until each is Ready, then labels the masters as kubeadm does
    /// (a kubelet may not set node-role labels on itself).
    pub(crate) async fn start_nodes(&self) -> Result<()> {
        for host in hosts() {
            self.start_runtime(&host)?;
        }
        for host in hosts() {
            self.wait_node_ready(&host).await?;
        }
        for node in NODES {
            process::run(self.kubectl().args([
                "label",
                "node",
                &node.name(),
                &format!("{CONTROL_PLANE_TAINT}="),
                "node.kubernetes.io/exclude-from-external-load-balancers=",
                "--overwrite",
            ]))?;
        }
        Ok(())
    }

    /// Waits until the host's Node reports Ready (its kubelet registered and its runtime and CNI work).
    pub(crate) async fn wait_node_ready(&self, host: &Host) -> Result<()> {
        let daemon = self.node_daemon(host);
        let log = |f: &str| fs::read_to_string(self.dir().join("logs").join(host.name()).join(f)).unwrap_or_default();
        self.poll(&format!("node {host} Ready"), Duration::from_secs(120), Duration::from_millis(500), || {
            let ready = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
            let out = self.kubectl().args(["get", "node", &host.name(), "-o", ready]).output();
            let result = if out.is_ok_and(|o| o.status.success() && o.stdout == b"True") {
                Ok(Some(()))
            } else if daemon.pid().is_none() {
                Err(Error::Usage(format!(
                    "the node {host} stopped booting:\n{}\n{}",
                    last_lines(&log("node.log"), 10),
                    last_lines(&log("kubelet.log"), 10)
                )))
            } else {
                Ok(None)
            };
            async move { result }
        })
        .await
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).ctx(|| format!("writing {}", path.display()))
}

fn cgroup(hierarchy: &str, host: &Host, sub: &str) -> PathBuf {
    let mut p = Path::new("/sys/fs/cgroup").join(hierarchy).join(CGROUP_ROOT).join(host.name());
    if !sub.is_empty() {
        p.push(sub);
    }
    p
}

/// Creates `/kubeha-e2e/<host>/{runtime,pods}` in every hierarchy; a cpuset needs CPUs and memory nodes
/// before it can hold a task, copied from its parent.
fn make_cgroups(host: &Host) -> Result<()> {
    for h in HIERARCHIES {
        for sub in ["runtime", "pods"] {
            let dir = cgroup(h, host, sub);
            fs::create_dir_all(&dir).ctx(|| format!("creating cgroup {}", dir.display()))?;
        }
    }
    let root = Path::new("/sys/fs/cgroup/cpuset");
    for rel in [CGROUP_ROOT.to_string(), format!("{CGROUP_ROOT}/{host}")]
        .into_iter()
        .chain(["runtime", "pods"].map(|s| format!("{CGROUP_ROOT}/{host}/{s}")))
    {
        let dir = root.join(&rel);
        let parent = dir.parent().unwrap_or(root);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let mine = fs::read_to_string(dir.join(file)).unwrap_or_default();
            if mine.trim().is_empty() {
                let theirs = fs::read_to_string(parent.join(file)).ctx(|| format!("reading {}", parent.display()))?;
                fs::write(dir.join(file), theirs.trim()).ctx(|| format!("writing {}/{file}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// `dir` and every cgroup below it, parents before children.
fn cgroup_tree(dir: PathBuf) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
        }
        all.push(dir);
    }
    all
}

/// The processes in one cgroup (not below it).
pub(crate) fn procs(cgroup: &Path) -> Vec<u32> {
    let text = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Every process in the host's tree (the pids hierarchy holds them all).
fn tasks(host: &Host) -> Vec<u32> {
    cgroup_tree(cgroup("pids", host, "")).iter().flat_map(|d| procs(d)).collect()
}

/// SIGKILLs every process of the host's tree until none is left. The freezer stops a process from forking
/// a new one while its siblings die.
fn kill_cgroup_tree(host: &Host) -> Result<()> {
    let freezer = cgroup("freezer", host, "");
    if !freezer.exists() {
        return Ok(());
    }
    let state = |s: &str| fs::write(freezer.join("freezer.state"), s);
    let _ = state("FROZEN");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = tasks(host);
        if pids.is_empty() {
            let _ = state("THAWED");
            return Ok(());
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        // A frozen task dies only once thawed; SIGKILL is pending, so it cannot run user code any more.
        let _ = state("THAWED");
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() > deadline {
            return Err(Error::Usage(format!("processes {pids:?} of node {host} survive SIGKILL")));
        }
        let _ = state("FROZEN");
    }
}

/// Removes the host's cgroup tree, deepest first, in every hierarchy.
fn remove_cgroups(host: &Host) -> Result<()> {
    for h in HIERARCHIES {
        for dir in cgroup_tree(cgroup(h, host, "")).iter().rev().filter(|d| d.exists()) {
            fs::remove_dir(dir).ctx(|| format!("removing cgroup {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Removes the empty `/kubeha-e2e` roots once no node is left.
pub(crate) fn remove_cgroup_root() {
    for h in HIERARCHIES {
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(h).join(CGROUP_ROOT));
    }
}

/// What of the nodes exists right now: cgroup trees, and mounts of the test world visible on the machine.
pub(crate) fn leftovers(dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for h in HIERARCHIES {
        let root = Path::new("/sys/fs/cgroup").join(h).join(CGROUP_ROOT);
        if root.exists() {
            left.push(format!("cgroup {}", root.display()));
        }
    }
    let dir = dir.display().to_string();
    if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
        left.extend(mounts.lines().filter(|l| l.contains(&dir)).map(|l| format!("mount {l}")));
    }
    left
}

/// The cgroup (in the pids hierarchy) of the container `id` on `host`: the kubelet's cgroupfs layout puts
/// it at `<cgroupRoot>/kubepods/[<qos>/]pod<uid>/<id>`.
pub(crate) fn container_cgroup(host: &Host, id: &str) -> Option<PathBuf> {
    cgroup_tree(cgroup("pids", host, "pods")).into_iter().find(|d| d.file_name().is_some_and(|n| n == id))
}

/// The PID of the DaemonSet agent's process on `node` (the init of the container that holds the VIP,
/// running `kubeha-agent run` in cluster mode; the bootstrap static pod's agent runs from a file,
/// `--config`, and the proxy container with `--parts=proxy`), found in the node's pod cgroups without asking
/// the API.
pub(crate) fn agent_pid(host: &Host) -> Option<u32> {
    let pids = cgroup_tree(cgroup("pids", host, "pods")).into_iter().flat_map(|d| procs(&d));
    pids.into_iter().find(|pid| {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        argv.first().is_some_and(|a| a.ends_with(b"/kubeha-agent"))
            && argv.iter().any(|a| *a == b"run")
            && !argv.iter().any(|a| a.starts_with(b"--config") || *a == b"--parts=proxy")
    })
}
