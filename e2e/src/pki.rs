//! The test cluster's PKI: one real CA (rustls rejects a leaf used as its own CA, and X.509 v1 certificates
//! without extensions), the API servers' serving certificate with every address clients use, client
//! certificates for the admin and the two controllers, the shared service-account key, and kubeconfigs.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::json;

use crate::error::{IoContext as _, Result};
use crate::net::{CLIENTS as CLIENT_HOSTS, Host, NODES, VIP_V4, VIP_V6};

/// The first address of the Service range: what in-cluster clients dial as `kubernetes.default`.
const FIRST_SERVICE_IP: Ipv4Addr = crate::net::KUBERNETES_SERVICE.0;

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
}

/// A client identity the cluster knows: the file stem and the certificate's subject.
const CLIENTS: [(&str, &str, Option<&str>); 3] = [
    ("admin", "kubernetes-admin", Some("system:masters")),
    ("kube-controller-manager", "system:kube-controller-manager", None),
    ("kube-scheduler", "system:kube-scheduler", None),
];
/// How the API servers authenticate to the kubelets (logs, exec, port-forward), as kubeadm's
/// apiserver-kubelet-client certificate does.
const APISERVER_KUBELET_CLIENT: (&str, &str, Option<&str>) =
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", Some("system:masters"));

impl Pki {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The kubeconfig with one context per master (`n1`, `n2`, `n3`; `n1` current) as the admin.
    pub(crate) fn admin_kubeconfig(&self) -> PathBuf {
        self.path("admin.kubeconfig")
    }

    /// A controller's kubeconfig, pointing at the API server on its own node (127.0.0.1).
    pub(crate) fn kubeconfig(&self, identity: &str) -> PathBuf {
        self.path(&format!("{identity}.kubeconfig"))
    }

    /// Generates everything afresh.
    pub(crate) fn generate(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).ctx(|| format!("creating {}", self.dir.display()))?;

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = name("kubeha-e2e-ca", None);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca, ca_key)?;
        self.write("ca.crt", &ca.pem())?;
        self.write("ca.key", &ca.key().serialize_pem())?;

        let mut sans = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V4(VIP_V4)),
            SanType::IpAddress(IpAddr::V6(VIP_V6)),
            SanType::IpAddress(IpAddr::V4(FIRST_SERVICE_IP)),
        ];
        for node in NODES {
            sans.push(SanType::IpAddress(IpAddr::V4(node.ipv4())));
            sans.push(SanType::IpAddress(IpAddr::V6(node.ipv6())));
        }
        for dns in [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ] {
            sans.push(SanType::DnsName(dns.try_into()?));
        }
        let mut serving = CertificateParams::default();
        serving.distinguished_name = name("kube-apiserver", None);
        serving.subject_alt_names = sans;
        serving.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue("apiserver", serving, &ca)?;

        for (file, cn, org) in CLIENTS.into_iter().chain([APISERVER_KUBELET_CLIENT]) {
            let mut client = CertificateParams::default();
            client.distinguished_name = name(cn, org);
            client.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            self.issue(file, client, &ca)?;
        }

        // One service-account key for all three API servers: a token signed by one must verify on the others.
        let sa = KeyPair::generate()?;
        self.write("sa.key", &sa.serialize_pem())?;
        self.write("sa.pub", &sa.public_key_pem())?;

        // Every host's kubelet with its own identity, as the Node authorizer and NodeRestriction want it.
        for host in NODES.iter().chain(CLIENT_HOSTS.iter()) {
            let mut client = CertificateParams::default();
            client.distinguished_name = name(&format!("system:node:{host}"), Some("system:nodes"));
            client.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            self.issue(&format!("kubelet-{host}"), client, &ca)?;
        }

        self.write_kubeconfigs()
    }

    /// The kubeconfig of `host`'s kubelet (`system:node:<host>`).
    pub(crate) fn kubelet_kubeconfig(&self, host: &Host) -> PathBuf {
        self.path(&format!("kubelet-{host}.kubeconfig"))
    }

    fn issue(&self, stem: &str, params: CertificateParams, ca: &CertifiedIssuer<'_, KeyPair>) -> Result<()> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, ca)?;
        self.write(&format!("{stem}.crt"), &cert.pem())?;
        self.write(&format!("{stem}.key"), &key.serialize_pem())
    }

    fn write(&self, file: &str, contents: &str) -> Result<()> {
        let path = self.path(file);
        fs::write(&path, contents).ctx(|| format!("writing {}", path.display()))
    }

    fn write_kubeconfigs(&self) -> Result<()> {
        let ca = self.b64("ca.crt")?;
        let admin_clusters: Vec<_> =
            NODES.iter().map(|n| cluster_entry(&n.name(), &format!("https://{}:6443", n.ipv4()), &ca)).collect();
        let admin_contexts: Vec<_> = NODES.iter().map(|n| context_entry(&n.name(), &n.name(), "admin")).collect();
        let admin = kubeconfig(admin_clusters, admin_contexts, &NODES[0].name(), self.user("admin")?);
        self.write("admin.kubeconfig", &admin)?;
        for (identity, _, _) in &CLIENTS[1..] {
            let local = cluster_entry("local", "https://127.0.0.1:6443", &ca);
            let config =
                kubeconfig(vec![local], vec![context_entry("local", "local", identity)], "local", self.user(identity)?);
            self.write(&format!("{identity}.kubeconfig"), &config)?;
        }
        for host in NODES.iter().chain(CLIENT_HOSTS.iter()) {
            let server = format!("https://{}:6443", kubelet_apiserver(host).ipv4());
            let identity = format!("kubelet-{host}");
            let config = kubeconfig(
                vec![cluster_entry("default", &server, &ca)],
                vec![context_entry("default", "default", &identity)],
                "default",
                self.user(&identity)?,
            );
            self.write(&format!("{identity}.kubeconfig"), &config)?;
        }
        Ok(())
    }

    fn user(&self, identity: &str) -> Result<serde_json::Value> {
        Ok(json!({"name": identity, "user": {
            "client-certificate-data": self.b64(&format!("{identity}.crt"))?,
            "client-key-data": self.b64(&format!("{identity}.key"))?,
        }}))
    }

    fn b64(&self, file: &str) -> Result<String> {
        let path = self.path(file);
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

/// The API server a host's kubelet talks to: a master's own (as kubeadm's ControlPlaneKubeletLocalMode
/// does), and for a client host one master each, so that one master's power loss leaves a client Ready.
fn kubelet_apiserver(host: &Host) -> Host {
    if host.is_master() {
        *host
    } else {
        let i = CLIENT_HOSTS.iter().position(|h| h == host).unwrap_or(0);
        NODES[(i + 1) % NODES.len()]
    }
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn cluster_entry(name: &str, server: &str, ca: &str) -> serde_json::Value {
    json!({"name": name, "cluster": {"server": server, "certificate-authority-data": ca}})
}

fn context_entry(name: &str, cluster: &str, user: &str) -> serde_json::Value {
    json!({"name": name, "context": {"cluster": cluster, "user": user}})
}

/// A kubeconfig as JSON, which is valid YAML for every reader (kubectl, helm, client-go, kube-rs).
fn kubeconfig(
    clusters: Vec<serde_json::Value>,
    contexts: Vec<serde_json::Value>,
    current: &str,
    user: serde_json::Value,
) -> String {
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": clusters, "contexts": contexts, "current-context": current, "users": [user],
    });
    serde_json::to_string_pretty(&config).unwrap_or_default()
}
