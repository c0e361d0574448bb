//! A stand-in for kube-apiserver, for the proxy's tests and benchmark: HTTPS on one port like the real one,
//! with /readyz and /healthz that can be turned unhealthy, and a few routes whose cost is known, so that a
//! measurement of the proxy is not a measurement of the API server. Plus the matching HTTPS client.
//!
//! Routes: `/readyz`, `/healthz` (200, or 500 while unready), `/name` (the server's name), `/bytes/N` (N
//! bytes), `/watch` (a line every 100 ms until the client leaves; no length, ends with the connection).
//! HTTP/1.1 keep-alive.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::error::{IoContext as _, Result};

/// A CA and one serving certificate for a set of addresses.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The CA, PEM.
    pub ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Certs {
    /// A fresh CA and a serving certificate for `ips`.
    pub fn generate(ips: &[IpAddr]) -> Result<Self> {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let mut serving = CertificateParams::default();
        serving.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        let key = KeyPair::generate()?;
        let cert = serving.signed_by(&key, &ca)?;
        Ok(Self { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Writes the CA to `path` (for a proxy's caFile).
    pub fn write_ca(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.ca_pem).ctx(|| format!("writing {}", path.display()))
    }

    /// Writes the three PEMs into `dir` (ca.crt, tls.crt, tls.key), for a server in another process.
    pub fn write_all(&self, dir: &Path) -> Result<()> {
        for (f, pem) in [("ca.crt", &self.ca_pem), ("tls.crt", &self.cert_pem), ("tls.key", &self.key_pem)] {
            std::fs::write(dir.join(f), pem).ctx(|| format!("writing {f}"))?;
        }
        Ok(())
    }

    /// Reads what `write_all` wrote.
    pub fn read_all(dir: &Path) -> Result<Self> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ctx(|| format!("reading {}", dir.join(f).display()));
        Ok(Self { ca_pem: read("ca.crt")?, cert_pem: read("tls.crt")?, key_pem: read("tls.key")? })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// The server side.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()).collect::<std::result::Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Ok(Arc::new(config))
    }

    /// A client that trusts only this CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// A running fake API server. Dropping it stops it: the listener closes and open connections are cut.
#[derive(Debug)]
pub struct FakeApi {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    accepting: Option<tokio::task::JoinHandle<()>>,
}

impl FakeApi {
    /// Serves on `addr` (port 0: any) as `name`.
    pub async fn start(name: &str, addr: SocketAddr, tls: Arc<rustls::ServerConfig>) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.ctx(|| format!("binding {addr}"))?;
        let addr = listener.local_addr().ctx(|| "local address".to_string())?;
        let ready = Arc::new(AtomicBool::new(true));
        let (stop, _) = watch::channel(false);
        let accepting =
            tokio::spawn(accept(listener, name.to_string(), TlsAcceptor::from(tls), ready.clone(), stop.subscribe()));
        Ok(Self { addr, ready, stop, accepting: Some(accepting) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it and returns once its listener is closed, so that connects are refused from then on (a
    /// dropped server closes it a moment later, on its runtime).
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.accepting.take() {
            let _ = task.await;
        }
    }

    /// Makes /readyz and /healthz answer 200 (true) or 500 (false).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn accept(
    listener: TcpListener,
    name: String,
    tls: TlsAcceptor,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.wait_for(|s| *s) => return,
        };
        let _ = tcp.set_nodelay(true);
        let (tls, name, ready, mut stop) = (tls.clone(), name.clone(), ready.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = serve(tcp, tls, &name, &ready) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

static FILL: [u8; 65536] = [b'x'; 65536];

async fn serve(tcp: TcpStream, tls: TlsAcceptor, name: &str, ready: &AtomicBool) -> std::io::Result<()> {
    let mut s: server::TlsStream<TcpStream> = tls.accept(tcp).await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some((path, close)) = read_request(&mut s, &mut buf).await? else { return Ok(()) };
        match path.as_str() {
            "/readyz" | "/healthz" => {
                let (code, body) =
                    if ready.load(Ordering::Relaxed) { ("200 OK", "ok") } else { ("500 Error", "unready") };
                respond(&mut s, code, body.as_bytes()).await?;
            }
            "/name" => respond(&mut s, "200 OK", name.as_bytes()).await?,
            "/watch" => {
                s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await?;
                for i in 0u64.. {
                    s.write_all(format!("event {i} from {name}\n").as_bytes()).await?;
                    s.flush().await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            p if p.starts_with("/bytes/") => {
                let n: usize = p["/bytes/".len()..].parse().unwrap_or(0);
                s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes()).await?;
                let mut left = n;
                while left > 0 {
                    let k = left.min(FILL.len());
                    s.write_all(&FILL[..k]).await?;
                    left -= k;
                }
                s.flush().await?;
            }
            _ => respond(&mut s, "404 Not Found", b"no such route").await?,
        }
        if close {
            // As Go's net/http does: the server closes first (close_notify, then FIN), so the TIME_WAIT
            // lands here, not on the client or a proxy's backend side.
            return s.shutdown().await;
        }
    }
}

async fn respond<S: AsyncWrite + Unpin>(s: &mut S, code: &str, body: &[u8]) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {code}\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out).await?;
    s.flush().await
}

/// Reads one request head; returns its path and whether it asked for `Connection: close`, or `None` at EOF
/// before a request.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<Option<(String, bool)>> {
    let Some(head) = read_until(s, buf, b"\r\n\r\n").await? else { return Ok(None) };
    let head = String::from_utf8_lossy(&head);
    let close = header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok(head.split_whitespace().nth(1).map(|p| (p.to_string(), close)))
}

/// The value of the first header `name` (case-insensitive) in a request or response head, trimmed.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// Reads until `buf` holds `delim`; takes what comes before it (and the delimiter) out of `buf`. `None` at
/// EOF. `read_buf` appends into spare capacity: no zeroed scratch buffer per read.
async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    delim: &[u8],
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(end) = find(buf, delim) {
            let found = buf[..end].to_vec();
            buf.drain(..end + delim.len());
            return Ok(Some(found));
        }
        buf.reserve(4096);
        if s.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An HTTPS connection to a (fake or real) API server, directly or through a proxy.
#[derive(Debug)]
pub struct Conn {
    stream: client::TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` and verifies the server as `server_ip` against `tls`'s roots.
    pub async fn open(addr: SocketAddr, server_ip: IpAddr, tls: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = TlsConnector::from(tls).connect(ServerName::IpAddress(server_ip.into()), tcp).await?;
        Ok(Self { stream, buf: Vec::with_capacity(4096) })
    }

    /// GET `path` with keep-alive: the status code and the body.
    pub async fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        self.send(path, false).await?;
        self.body().await
    }

    /// GET `path` with `Connection: close`, then wait for the server to close: the status code and the body.
    /// The server's FIN comes first, as when kube-apiserver ends a connection, so no TIME_WAIT is left on the
    /// client's side or on a proxy's backend side, where thousands of them would make every connect() search
    /// the port space (a cost of the kernel, the same for any proxy, that would swamp what is measured).
    pub async fn get_once(mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        self.send(path, true).await?;
        let answer = self.body().await?;
        if self.stream.read_buf(&mut self.buf).await? != 0 {
            return Err(std::io::Error::other("data after the answer to a Connection: close request"));
        }
        Ok(answer)
    }

    async fn body(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        let (code, length) = self.head().await?;
        let length = length.ok_or_else(|| std::io::Error::other("no Content-Length"))?;
        self.buf.reserve(length.saturating_sub(self.buf.len()));
        while self.buf.len() < length {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let body = self.buf.drain(..length).collect();
        Ok((code, body))
    }

    /// Starts a GET whose body has no length (/watch); read it with `line`.
    pub async fn start_stream(&mut self, path: &str) -> std::io::Result<u16> {
        self.send(path, false).await?;
        Ok(self.head().await?.0)
    }

    // The flush matters: when the socket is full, the TLS stream takes the request, keeps its records and
    // reports it written; only a flush sends them. Without it both ends could wait for good, with the request
    // stuck in this process and nothing queued in either socket.
    async fn send(&mut self, path: &str, close: bool) -> std::io::Result<()> {
        let connection = if close { "Connection: close\r\n" } else { "" };
        self.stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: kubeha\r\n{connection}\r\n").as_bytes()).await?;
        self.stream.flush().await
    }

    /// The next line of a streamed body; `None` when the connection ended (EOF or reset).
    pub async fn line(&mut self) -> Option<String> {
        let line = read_until(&mut self.stream, &mut self.buf, b"\n").await.ok()??;
        Some(String::from_utf8_lossy(&line).into_owned())
    }

    async fn head(&mut self) -> std::io::Result<(u16, Option<usize>)> {
        let head =
            read_until(&mut self.stream, &mut self.buf, b"\r\n\r\n").await?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let head = String::from_utf8_lossy(&head);
        let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let length = header(&head, "content-length").and_then(|v| v.parse().ok());
        Ok((code, length))
    }
}
