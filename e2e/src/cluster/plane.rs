//! The control-plane components of each master: their daemons and command lines.

use crate::error::Result;
use crate::net::{NODES, Node, SERVICE_CIDR};
use crate::process::Daemon;

use super::{Cluster, Component, LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD};

impl Cluster {
    pub(super) fn daemon(&self, node: &Node, c: Component) -> Daemon {
        Daemon {
            pidfile: self.dir.join("run").join(node.name()).join(format!("{}.pid", c.name())),
            log: self.dir.join("logs").join(node.name()).join(format!("{}.log", c.name())),
        }
    }

    pub(super) fn start(&self, node: &Node, c: Component) -> Result<()> {
        let mut argv = vec![self.bins.join(c.name()).display().to_string()];
        argv.extend(self.args(node, c));
        if c.restarts() {
            let mut supervised: Vec<String> =
                ["/bin/sh", "-c", "while :; do \"$@\"; sleep 1; done", "supervise"].map(String::from).to_vec();
            supervised.append(&mut argv);
            argv = supervised;
        }
        self.daemon(node, c).spawn(node, &argv).map(drop)
    }

    pub(super) fn args(&self, node: &Node, c: Component) -> Vec<String> {
        let p = |f: &str| self.pki.path(f).display().to_string();
        let ip = node.ipv4();
        let name = node.name();
        let state = self.dir.join(&name);
        let mut args: Vec<String> = match c {
            Component::Etcd => {
                let peers: Vec<String> = NODES.iter().map(|n| format!("{n}=http://{}:2380", n.ipv4())).collect();
                vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", state.join("etcd").display()),
                    format!("--listen-client-urls=http://{ip}:2379,http://127.0.0.1:2379"),
                    format!("--advertise-client-urls=http://{ip}:2379"),
                    format!("--listen-peer-urls=http://{ip}:2380"),
                    format!("--initial-advertise-peer-urls=http://{ip}:2380"),
                    format!("--initial-cluster={}", peers.join(",")),
                    "--initial-cluster-state=new".into(),
                    "--initial-cluster-token=kubeha-e2e".into(),
                    // Six control-plane processes share two cores; the defaults (100 ms / 1 s) elect spuriously.
                    "--heartbeat-interval=200".into(),
                    "--election-timeout=2000".into(),
                    "--unsafe-no-fsync".into(),
                    "--log-level=warn".into(),
                ]
            }
            Component::KubeApiserver => {
                vec![
                    format!("--advertise-address={ip}"),
                    "--bind-address=0.0.0.0".into(),
                    "--secure-port=6443".into(),
                    // Stacked etcd as kubeadm sets it up: each API server talks to its own member only, so
                    // it is exactly as healthy as that member's view of quorum.
                    "--etcd-servers=http://127.0.0.1:2379".into(),
                    format!("--tls-cert-file={}", p("apiserver.crt")),
                    format!("--tls-private-key-file={}", p("apiserver.key")),
                    format!("--client-ca-file={}", p("ca.crt")),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                    format!("--service-account-key-file={}", p("sa.pub")),
                    format!("--service-account-signing-key-file={}", p("sa.key")),
                    format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                    "--authorization-mode=Node,RBAC".into(),
                    "--allow-privileged=true".into(),
                    "--enable-aggregator-routing=true".into(),
                    format!("--cert-dir={}", state.join("apiserver").display()),
                    "--profiling=false".into(),
                    // logs, exec: to the kubelets by address (the machine's resolver knows no node names),
                    // as the kubelet-client identity the kubelets' webhook authorization admits.
                    "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
                    format!("--kubelet-client-certificate={}", p("apiserver-kubelet-client.crt")),
                    format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
                ]
            }
            Component::KubeControllerManager | Component::KubeScheduler => {
                let kubeconfig = self.pki.kubeconfig(c.name()).display().to_string();
                let mut args = vec![
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--authentication-kubeconfig={kubeconfig}"),
                    format!("--authorization-kubeconfig={kubeconfig}"),
                    "--bind-address=0.0.0.0".into(),
                    format!("--cert-dir={}", state.join(c.name()).display()),
                    "--leader-elect=true".into(),
                    format!("--leader-elect-lease-duration={LEASE_DURATION}"),
                    format!("--leader-elect-renew-deadline={RENEW_DEADLINE}"),
                    format!("--leader-elect-retry-period={RETRY_PERIOD}"),
                    "--profiling=false".into(),
                ];
                if c == Component::KubeControllerManager {
                    args.extend([
                        "--use-service-account-credentials=true".into(),
                        format!("--service-account-private-key-file={}", p("sa.key")),
                        format!("--root-ca-file={}", p("ca.crt")),
                        format!("--cluster-signing-cert-file={}", p("ca.crt")),
                        format!("--cluster-signing-key-file={}", p("ca.key")),
                        "--cluster-name=kubeha-e2e".into(),
                    ]);
                }
                args
            }
        };
        args.shrink_to_fit();
        args
    }
}
