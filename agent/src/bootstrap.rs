//! `kubeha-agent bootstrap`: the VIP before the API exists. Writes a standalone agent config and a static
//! pod that runs it, so that the kubelet holds the VIP up before `kubeadm init --control-plane-endpoint
//! VIP:6443` needs it; joining masters do the same. When kubeha is installed with Helm, the DaemonSet
//! agent of each node takes the VRRP instance over in place (crate::handover, docs/adr/0005).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use kubeha_crds::HighAvailabilityMemberSpec;
use serde_json::json;

use crate::config;

/// What `kubeha-agent bootstrap` is told: its command-line flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Bootstrap {
    /// The VIP with its prefix (198.51.100.10/24, 2001:db8::10/64); the same on every master.
    #[arg(long)]
    pub vip: String,
    /// The VRRP router id, 1-255, unique on the segment; the same on every master and in the
    /// HighAvailabilityCluster you apply later.
    #[arg(long)]
    pub vrid: u8,
    /// The interface on the VIP's subnet.
    #[arg(long)]
    pub interface: String,
    /// The other masters' addresses for unicast VRRP (comma-separated); omit for multicast.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<IpAddr>,
    /// This node's priority, 1-254. The default stays below the operator's (200 and down), so a DaemonSet
    /// agent elsewhere is never preempted by a bootstrap agent.
    #[arg(long, default_value_t = 100)]
    pub priority: u8,
    /// The advertisement interval (VRRPv3: 10ms-40950ms in steps of 10ms).
    #[arg(long, default_value = "100ms")]
    pub advert_interval: String,
    /// This node's name (default: the host name, as the kubelet names the node).
    #[arg(long, env = "NODE_NAME", default_value_t = host_name())]
    pub node_name: String,
    /// This node's kube-apiserver readiness: the VIP avoids a master whose API server is down ("" for none).
    #[arg(long, default_value = "https://127.0.0.1:6443/readyz")]
    pub apiserver_health_url: String,
    /// Where the bootstrap agent serves /metrics (not the DaemonSet agent's port).
    #[arg(long, default_value = "127.0.0.1:9642")]
    pub metrics: String,
    /// The state directory: must be the DaemonSet agent's (agent.stateDir), which locks the instance there.
    #[arg(long, default_value = "/var/lib/kubeha")]
    pub state_dir: PathBuf,
    /// Where the config goes (mounted read-only into the static pod).
    #[arg(long, default_value = "/etc/kubeha")]
    pub config_dir: PathBuf,
    /// The kubelet's static-pod directory.
    #[arg(long, default_value = "/etc/kubernetes/manifests")]
    pub manifest_dir: PathBuf,
    /// The agent image of the static pod.
    #[arg(long, default_value = concat!("ghcr.io/kubeha/kubeha:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
}

/// The host name, or "" when it cannot be read (the config check then names --node-name).
fn host_name() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Where.
    pub path: PathBuf,
    /// What.
    pub contents: String,
}

/// Flags that do not make a valid agent config, each named with what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("not a valid bootstrap:\n{}", .0.join("\n"))]
pub struct BootstrapError(Vec<String>);

/// The flag that sets a config key.
fn flag(key: &str) -> String {
    let name = match key.split('.').next().unwrap_or(key) {
        "vrrp" if key.ends_with("peers") || key.contains("peers[") => "--peers",
        "vrrp" => "--advert-interval",
        "health" => "--apiserver-health-url",
        "metrics" => "--metrics",
        "stateDir" => "--state-dir",
        "nodeName" => "--node-name",
        other => return format!("--{other}"),
    };
    format!("{name} ({key})")
}

/// The config file's name in the config directory.
pub const CONFIG_FILE: &str = "bootstrap.yaml";
/// The static pod manifest's name in the manifest directory.
pub const MANIFEST_FILE: &str = "kubeha-bootstrap.yaml";

/// What [`Bootstrap::render`] makes.
#[derive(Debug)]
pub struct Rendered {
    /// The config file and the static pod manifest.
    pub files: Vec<File>,
    /// The spec the config file gives the agent.
    pub spec: HighAvailabilityMemberSpec,
}

impl Bootstrap {
    /// The standalone config and the static pod, checked as `kubeha-agent check` checks a config: a bad
    /// flag is refused here, not by a crash-looping static pod. With the spec the agent will run, for the
    /// checks that need the node (crate::vip::check_here).
    pub fn render(&self) -> Result<Rendered, BootstrapError> {
        let (text, spec) = self.spec()?;
        let config_path = self.config_dir.join(CONFIG_FILE);
        let mut contents = String::new();
        let _ = writeln!(
            contents,
            "# Written by `kubeha-agent bootstrap` for node {}: the VIP before the API exists (docs/guide.md).\n\
             # The DaemonSet agent takes this VRRP instance over once kubeha is installed; keep this file and the\n\
             # static pod: after a cold start of the whole cluster they hold the VIP until the DaemonSet runs.",
            spec.node_name
        );
        contents.push_str(&text);
        let files = vec![
            File { path: config_path.clone(), contents },
            File { path: self.manifest_dir.join(MANIFEST_FILE), contents: self.static_pod(&spec, &config_path) },
        ];
        Ok(Rendered { files, spec })
    }

    /// The standalone config these flags make, as written and as the agent reads it; the problems by flag.
    fn spec(&self) -> Result<(String, HighAvailabilityMemberSpec), BootstrapError> {
        let text = serde_norway::to_string(&self.config()).unwrap_or_default();
        let spec = config::parse(&text).map_err(|e| match e {
            config::ConfigError::Invalid { problems, .. } => {
                BootstrapError(problems.iter().map(|p| format!("  - {}: {}", flag(&p.key), p.message)).collect())
            }
            other => BootstrapError(vec![format!("  - {other}")]),
        })?;
        Ok((text, spec))
    }

    fn config(&self) -> serde_json::Value {
        let mut health = Vec::new();
        if !self.apiserver_health_url.is_empty() {
            // Before `kubeadm init` there is no CA to verify against; this checks that the local API server
            // answers, not whom to trust. The weight keeps a master whose API server is down below the others.
            health.push(json!({
                "name": "apiserver",
                "https": {"url": self.apiserver_health_url, "insecureSkipVerify": true},
                "interval": "500ms", "timeout": "1s", "rise": 2, "fall": 3, "weight": -50,
            }));
        }
        json!({
            "nodeName": self.node_name,
            "interface": self.interface,
            "vip": self.vip,
            "vrid": self.vrid,
            "priority": self.priority,
            "vrrp": {
                "version": 3,
                "advertInterval": self.advert_interval,
                "preempt": true,
                "peers": self.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            },
            "health": health,
            "metrics": {"listen": self.metrics},
            "stateDir": self.state_dir.display().to_string(),
        })
    }

    fn static_pod(&self, spec: &HighAvailabilityMemberSpec, config_path: &Path) -> String {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "kubeha-bootstrap",
                "namespace": "kube-system",
                "labels": {"app.kubernetes.io/name": "kubeha", "app.kubernetes.io/component": "bootstrap"},
            },
            "spec": {
                "hostNetwork": true,
                "priorityClassName": "system-node-critical",
                "terminationGracePeriodSeconds": 30,
                "containers": [{
                    "name": "agent",
                    "image": self.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/usr/local/bin/kubeha-agent"],
                    "args": ["--log-format=json", "run", format!("--config={}", config_path.display())],
                    "securityContext": {
                        "runAsUser": 0,
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
                    },
                    "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                    "volumeMounts": [
                        {"name": "config", "mountPath": self.config_dir.display().to_string(), "readOnly": true},
                        {"name": "state", "mountPath": spec.state_dir},
                    ],
                }],
                "volumes": [
                    {"name": "config", "hostPath": {"path": self.config_dir.display().to_string(), "type": "Directory"}},
                    {"name": "state", "hostPath": {"path": spec.state_dir, "type": "DirectoryOrCreate"}},
                ],
            },
        });
        format!(
            "# Written by `kubeha-agent bootstrap` (docs/guide.md): the kubelet runs the VIP's agent before the\n\
             # API server exists. Shares {} with the DaemonSet agent, which takes over in place.\n{}",
            spec.state_dir,
            serde_norway::to_string(&pod).unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Bootstrap {
        Bootstrap {
            node_name: "n1".into(),
            vip: "198.51.100.10/24".into(),
            vrid: 51,
            interface: "eth0".into(),
            peers: vec![],
            priority: 100,
            advert_interval: "100ms".into(),
            apiserver_health_url: "https://127.0.0.1:6443/readyz".into(),
            metrics: "127.0.0.1:9642".into(),
            state_dir: "/var/lib/kubeha".into(),
            config_dir: "/etc/kubeha".into(),
            manifest_dir: "/etc/kubernetes/manifests".into(),
            image: "ghcr.io/kubeha/kubeha:0.1.0".into(),
        }
    }

    #[test]
    fn writes_a_config_the_agent_accepts_and_a_static_pod_that_runs_it() {
        let files = flags().render().unwrap().files;
        assert_eq!(files[0].path, Path::new("/etc/kubeha/bootstrap.yaml"));
        let spec = config::parse(&files[0].contents).unwrap();
        assert_eq!((spec.vrid, spec.priority, spec.interface.as_deref()), (Some(51), 100, Some("eth0")));
        assert!(spec.vrrp.peers.is_empty(), "multicast without --peers");
        assert_eq!(files[1].path, Path::new("/etc/kubernetes/manifests/kubeha-bootstrap.yaml"));
        let pod: serde_json::Value = serde_norway::from_str(&files[1].contents).unwrap();
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["args"], json!(["--log-format=json", "run", "--config=/etc/kubeha/bootstrap.yaml"]));
        assert_eq!(c["securityContext"]["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
        assert_eq!(pod["spec"]["hostNetwork"], true);
        assert_eq!(pod["spec"]["volumes"][1]["hostPath"]["path"], "/var/lib/kubeha", "shared with the DaemonSet");
    }

    #[test]
    fn peers_make_it_unicast() {
        let b =
            Bootstrap { peers: vec!["198.51.100.12".parse().unwrap(), "198.51.100.13".parse().unwrap()], ..flags() };
        let spec = config::parse(&b.render().unwrap().files[0].contents).unwrap();
        assert_eq!(spec.vrrp.peers, ["198.51.100.12", "198.51.100.13"]);
    }

    #[test]
    fn a_bad_flag_is_refused_before_anything_is_written() {
        let b = Bootstrap { vip: "198.51.100.10".into(), ..flags() };
        let err = b.render().unwrap_err().to_string();
        assert!(err.contains("--vip: '198.51.100.10' is not an address with prefix length"), "{err}");
        let b = Bootstrap { advert_interval: "15ms".into(), ..flags() };
        let err = b.render().unwrap_err().to_string();
        assert!(err.contains("--advert-interval (vrrp.advertInterval)"), "{err}");
    }
}
