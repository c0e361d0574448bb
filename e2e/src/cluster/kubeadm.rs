//! The kubeadm world: the test world's five hosts as empty machines — containerd running, the kubelet
//! installed as a package would install it, the control-plane images imported — on which a person (or
//! e2e/tests/guide.rs) runs docs/guide.md: `kubeha-agent bootstrap`, `kubeadm init`, `kubeadm join`,
//! `helm install`. Nothing of the hand-assembled control plane runs here; kubeadm makes it, as static pods.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext as _, Result};
use crate::net::{self, ETCD_HOSTS, Host};
use crate::node;
use crate::process;

use super::{Cluster, last_line, target_dir};

/// The file in the world's directory that says its nodes are kubeadm's (node.sh --kubeadm), so that a node
/// powered back on boots as one.
const MARKER: &str = "kubeadm-world";

impl Cluster {
    /// Whether the world that is up was made by [`Cluster::up_kubeadm_world`].
    pub(crate) fn is_kubeadm_world(&self) -> bool {
        self.dir().join(MARKER).exists()
    }

    /// The control-plane images kubeadm's static pods run (e2e/controlplane/images.sh), one OCI archive each.
    pub(crate) fn plane_images(&self) -> Result<&[PathBuf]> {
        if let Some(found) = self.plane_images.get() {
            return Ok(found);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/images.sh");
        let dir = PathBuf::from(last_line(process::output(Command::new(script).stderr(Stdio::inherit()))?));
        let mut archives: Vec<PathBuf> = fs::read_dir(&dir)
            .ctx(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".oci.tar"))
            .collect();
        archives.sort();
        Ok(self.plane_images.get_or_init(|| archives))
    }

    /// Tears down leftovers, then boots every host as an empty kubeadm node: the network, containerd with
    /// the pause, kubeha and control-plane images imported, the kubelet unit enabled (crash-looping until
    /// kubeadm configures it). No certificate, kubeconfig or control plane exists yet.
    pub async fn up_kubeadm_world(&self) -> Result<()> {
        self.runtime()?;
        self.plane_images()?;
        self.down()?;
        if self.dir().exists() {
            fs::remove_dir_all(self.dir()).ctx(|| format!("removing {}", self.dir().display()))?;
        }
        fs::create_dir_all(self.dir()).ctx(|| format!("creating {}", self.dir().display()))?;
        fs::write(self.dir().join(MARKER), "").ctx(|| "writing the kubeadm world's marker".into())?;
        net::setup()?;
        for host in node::hosts() {
            self.start_runtime(&host)?;
        }
        for host in ETCD_HOSTS {
            self.start_bare(&host)?;
        }
        for host in node::hosts().chain(ETCD_HOSTS) {
            self.wait_booted(&host).await?;
        }
        Ok(())
    }

    /// The directory a person logged in on `host` works in: the checkout's `charts/` is there, as in the
    /// guide ("from a checkout of this repository"), and files a test writes for them (hac.yaml).
    pub fn node_home(&self, host: &Host) -> Result<PathBuf> {
        let home = self.dir().join(host.name()).join("home");
        fs::create_dir_all(&home).ctx(|| format!("creating {}", home.display()))?;
        let charts = home.join("charts");
        if !charts.exists() {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts");
            std::os::unix::fs::symlink(&repo, &charts).ctx(|| format!("linking {}", charts.display()))?;
        }
        Ok(home)
    }

    /// Runs a shell script on `host` as root logged in there: in the node's own mount, network and UTS
    /// namespaces (its /etc/kubernetes, /var/lib/kubelet, containerd socket), in [`Cluster::node_home`],
    /// with kubeadm, the kubelet, kubectl, helm, kubeha-agent and the node's `systemctl` on PATH, and
    /// `KUBECONFIG=/etc/kubernetes/admin.conf` (kubeadm's advice to root). Returns what it printed on
    /// stdout; a failure carries stdout and stderr.
    pub fn on_node(&self, host: &Host, script: &str) -> Result<String> {
        let out =
            self.login(host, script)?.stdin(Stdio::null()).output().ctx(|| format!("running a script on {host}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(Error::Usage(format!(
                "on {host}, `{script}` failed ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Starts a shell script on `host` as the system service `name` would run there (etcd on an etcd host,
    /// keepalived and HAProxy on a master), logged in as [`Cluster::on_node`] is; it outlives the caller and
    /// stops with the host ([`Cluster::stop_service`] stops it earlier, and so does `systemctl stop <name>`
    /// on the node: its main PID is in the node's `/run/units/<name>.pid`, which the test world's systemctl
    /// reads). Its output is in `logs/<host>/svc-<name>.log`.
    pub fn start_node_service(&self, host: &Host, name: &str, script: &str) -> Result<()> {
        let script = format!("mkdir -p /run/units\necho $$ >/run/units/{name}.pid\n{script}");
        let cmd = self.login(host, &script)?;
        let mut argv: Vec<String> = vec!["env".into()];
        argv.extend(cmd.get_envs().filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?))));
        argv.push(cmd.get_program().to_string_lossy().into_owned());
        argv.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
        self.start_service(host, name, &argv)
    }

    /// The command that runs `script` logged in on `host`: its namespaces, home, PATH and KUBECONFIG.
    fn login(&self, host: &Host, script: &str) -> Result<Command> {
        let pid = self.node_pid(host).ok_or_else(|| Error::Usage(format!("node {host} is not running")))?;
        let home = self.node_home(host)?;
        let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = [
            e2e.join("noderuntime/bin"),
            self.bins().to_path_buf(),
            self.tools_dir().to_path_buf(),
            target_dir().join("debug"),
            self.runtime()?.dir.clone(),
        ]
        .iter()
        .map(|p| p.display().to_string())
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(String::from))
        .collect::<Vec<_>>()
        .join(":");
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-m", "-n", "-u", &format!("--wd={}", home.display())])
            .args(["bash", "-euo", "pipefail", "-c", script])
            .env_clear()
            .env("PATH", path)
            .env("HOME", &home)
            .env("KUBECONFIG", "/etc/kubernetes/admin.conf");
        Ok(cmd)
    }

    /// Takes the admin kubeconfig kubeadm wrote on `host` (and its CA) as this world's: from then on
    /// [`Cluster::kubectl`], the pod helpers and the API clients work as in the hand-assembled world.
    pub fn adopt_admin_conf(&self, host: &Host) -> Result<()> {
        let admin = self.node_path(host, "/etc/kubernetes/admin.conf")?;
        let ca = self.node_path(host, "/etc/kubernetes/pki/ca.crt")?;
        for (from, to) in [(admin, self.kubeconfig()), (ca, self.ca_path())] {
            if let Some(dir) = to.parent() {
                fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
            }
            fs::copy(&from, &to).ctx(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    }
}
