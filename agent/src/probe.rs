//! The HTTPS GET probe shared by the VRRP health checks and the proxy's backend checks.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The cluster CA in a pod's service-account volume: the default CA for checks.
pub const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

static DEFAULT_CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the CA that checks without a `caFile` verify against, instead of the service account's: for an agent
/// run outside a pod (`--cluster-ca`). Only the first call counts.
pub fn set_default_ca(path: &str) {
    let _ = DEFAULT_CA.set(path.to_string());
}

/// The CA that checks without a `caFile` verify against.
pub fn default_ca() -> &'static str {
    DEFAULT_CA.get().map_or(SERVICE_ACCOUNT_CA, String::as_str)
}

/// GET `url` over TLS: 200 is healthy; 401 and 403 mean the server is alive but refuses anonymous requests,
/// which for /readyz is still a serving API server.
pub async fn https(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<String, String> {
    let tls = tls.ok_or("TLS is not configured")?;
    let rest = url.strip_prefix("https://").ok_or("not an https:// URL")?;
    let (authority, path, tcp) = connect(rest, 443).await?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    match get(stream, authority, &path).await? {
        code @ (200 | 401 | 403) => Ok(format!("HTTP {code}")),
        other => Err(format!("HTTP {other}")),
    }
}

/// Splits `authority[/path]` and connects to the authority (`default_port` when it names none).
async fn connect(rest: &str, default_port: u16) -> Result<(&str, String, TcpStream), String> {
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let addr = if authority.contains(':') { authority.to_string() } else { format!("{authority}:{default_port}") };
    let tcp = TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    Ok((authority, path, tcp))
}

/// Sends one `GET path` on `stream` and returns the status code of the answer (from its first read).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, authority: &str, path: &str) -> Result<u16, String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: kubeha-agent\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| "no HTTP status line".to_string())
}

/// The TLS client configuration for a probe: verify against `ca_file` (default: the service account's cluster
/// CA), or accept any certificate when `insecure`.
pub fn tls_config(insecure: bool, ca_file: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
    } else {
        let path = ca_file.unwrap_or_else(|| default_ca());
        let pem = std::fs::read(path).map_err(|e| format!("reading the CA file {path}: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject as _;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.map_err(|e| format!("{path}: {e}"))?).map_err(|e| format!("{path}: {e}"))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Accepts any server certificate: only for `insecureSkipVerify: true`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// GET `url` over plain HTTP (etcd's metrics listener, `http://127.0.0.1:2381/health` under kubeadm): 200 is
/// healthy.
pub async fn http(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (authority, path, tcp) = connect(rest, 80).await?;
    match get(tcp, authority, &path).await? {
        200 => Ok("HTTP 200".into()),
        other => Err(format!("HTTP {other}")),
    }
}
