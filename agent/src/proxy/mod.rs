//! The API proxy: an L4 TCP proxy for kube-apiserver (docs/proxy.md).
//!
//! accept → pick from the lock-free snapshot of backends in rotation → connect with a timeout (a refused
//! or timed-out connect takes that backend out and the client is retried on another) → relay both ways
//! with half-close. TLS passes through untouched. Connections to a backend that turns unhealthy are closed,
//! so watches reconnect to a healthy API server instead of hanging. No idle timeout unless configured.

mod pool;
mod relay;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubeha_crds::{Balance, MemberProxy};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

pub use pool::{Backend, BackendView, Evidence, Pool};
pub use relay::{Activity, Meters, relay};

use crate::config::{self, Problem};
use crate::metrics::{BackendDetail, ProxyMetrics};
use crate::probe;

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The section breaks the rules of `kubeha-agent check` (docs/agent-config.md); every problem named.
    #[error("the proxy section is not valid: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Every problem, by key.
        problems: Vec<Problem>,
    },
    /// The CA file exists but cannot be used.
    #[error(
        "proxy.healthCheck.caFile: {0}: set it to the PEM CA of the API servers' certificates (or insecureSkipVerify: true)"
    )]
    Ca(String),
    /// The listen address cannot be bound.
    #[error("proxy.listen: cannot listen on {addr}: {source} (is another process on that port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// The proxy's settings, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The API servers to start with.
    pub backends: Vec<SocketAddr>,
    /// How new clients are spread.
    pub balance: Balance,
    /// How long one backend connect may take before the next backend is tried.
    pub connect_timeout: Duration,
    /// Close connections idle this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Close connections to a backend that goes down.
    pub close_on_backend_down: bool,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// TCP keepalive idle time on both sides; `None`: off.
    pub tcp_keepalive: Option<Duration>,
    /// Switch bulk directions to splice(2).
    pub zero_copy: bool,
    /// Active checks.
    pub check: CheckSettings,
}

/// Active health checks: HTTPS GET of `path` on every backend.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// The path, e.g. /readyz.
    pub path: String,
    /// Time between checks of one backend.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Successes in a row to come back.
    pub rise: u32,
    /// Failures in a row to go out.
    pub fall: u32,
    /// TLS for the checks.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Settings {
    /// Validates a member's proxy section with the agent's config rules, then converts it.
    /// `KUBEHA_PROXY_ZERO_COPY=0` turns splice off (for comparison).
    pub fn from_spec(p: &MemberProxy) -> Result<Self, ProxyError> {
        let problems = config::proxy_problems(p);
        let parsed = (p.listen.parse(), p.backends.iter().map(|b| b.parse()).collect::<Result<Vec<SocketAddr>, _>>());
        let (true, Ok(listen), Ok(backends)) = (problems.is_empty(), parsed.0, parsed.1) else {
            return Err(ProxyError::Invalid { problems });
        };
        let hc = &p.health_check;
        let tls = probe::tls_config(hc.insecure_skip_verify, hc.ca_file.as_deref()).map_err(ProxyError::Ca)?;
        // The ranges below were checked by proxy_problems; the fallbacks are never taken.
        let count = |v: i32| u32::try_from(v).unwrap_or(1);
        let keepalive: Duration = p.tcp_keepalive.into();
        Ok(Self {
            listen,
            backends,
            balance: p.balance,
            connect_timeout: p.connect_timeout.into(),
            idle_timeout: p.idle_timeout.map(Into::into),
            close_on_backend_down: p.close_on_backend_down,
            max_connections: usize::try_from(p.max_connections).unwrap_or(1),
            tcp_keepalive: (!keepalive.is_zero()).then_some(keepalive),
            zero_copy: std::env::var("KUBEHA_PROXY_ZERO_COPY").map_or(true, |v| v != "0"),
            check: CheckSettings {
                path: hc.path.clone(),
                interval: hc.interval.into(),
                timeout: hc.timeout.into(),
                rise: count(hc.rise),
                fall: count(hc.fall),
                tls,
            },
        })
    }
}

/// Changes the backends of a running proxy and reads their health.
#[derive(Clone, Debug)]
pub struct ProxyHandle {
    pool: Arc<Pool>,
    settings: Arc<Settings>,
}

impl ProxyHandle {
    /// Replaces the backend list; starts checking new ones.
    pub fn set_backends(&self, backends: &[SocketAddr]) {
        for b in self.pool.set_backends(backends) {
            tokio::spawn(check_loop(self.pool.clone(), b, self.settings.clone()));
        }
    }

    /// The backends and their health.
    pub fn backends(&self) -> Vec<pool::BackendView> {
        self.pool.backends()
    }
}

/// A bound proxy.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
    pool: Arc<Pool>,
    settings: Arc<Settings>,
    metrics: ProxyMetrics,
}

impl Proxy {
    /// Binds the listener (with IP_FREEBIND, so the VIP need not be present yet) and starts the checks of
    /// the settings' backends.
    pub fn bind(settings: Settings, metrics: ProxyMetrics) -> Result<Self, ProxyError> {
        let listener = listen(settings.listen).map_err(|source| ProxyError::Bind { addr: settings.listen, source })?;
        let pool = Arc::new(Pool::new(
            settings.balance,
            settings.check.rise,
            settings.check.fall,
            settings.close_on_backend_down,
            metrics.clone(),
        ));
        let settings = Arc::new(settings);
        let proxy = Self { listener, pool, settings, metrics };
        proxy.set_backends(&proxy.settings.backends);
        Ok(proxy)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The backends and their health.
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.clone()
    }

    /// Replaces the backend list (the member's masters, the EndpointSlice); starts checking new ones.
    pub fn set_backends(&self, backends: &[SocketAddr]) {
        self.handle().set_backends(backends);
    }

    /// A handle that changes the backends of the running proxy.
    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle { pool: self.pool.clone(), settings: self.settings.clone() }
    }

    /// Accepts clients until `shutdown` completes; then stops accepting and retires every backend: the
    /// checks stop, and open connections are closed when `closeOnBackendDown` is set (else they end with the
    /// process).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.settings.max_connections));
        // The bound address, not the configured one: port 0 is a port the kernel picked.
        let listen = self.listener.local_addr().map_or_else(|_| self.settings.listen.to_string(), |a| a.to_string());
        tracing::info!(%listen, backends = self.pool.backends().len(),
            zero_copy = self.settings.zero_copy, "proxy listening");
        tokio::pin!(shutdown);
        loop {
            // Past the limit the next client waits in the kernel's accept queue, not in our memory.
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = &mut shutdown => break,
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                () = &mut shutdown => break,
            };
            match accepted {
                Ok((client, peer)) => {
                    self.metrics.accepted.inc();
                    let (pool, settings, metrics) = (self.pool.clone(), self.settings.clone(), self.metrics.clone());
                    tokio::spawn(async move {
                        serve(client, peer, &pool, &settings, &metrics).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on a listener that stays readable.
                    tracing::warn!(error = %e, "proxy cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        self.pool.set_backends(&[]);
        tracing::info!(listen = %self.settings.listen, "proxy stopped accepting");
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
    } else {
        s.set_freebind_v4(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// No Nagle delay (the proxy forwards what it gets at once) and, when set, TCP keepalive.
fn tune(stream: &TcpStream, idle: Option<Duration>) {
    let sock = SockRef::from(stream);
    let _ = sock.set_tcp_nodelay(true);
    if let Some(idle) = idle {
        let ka =
            TcpKeepalive::new().with_time(idle).with_interval((idle / 3).max(Duration::from_secs(1))).with_retries(3);
        if let Err(e) = sock.set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
    }
}

/// Why a connect to a backend failed, for the metric label.
fn reason(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::TimedOut => "timeout",
        _ => "error",
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {timeout:?}"))),
    }
}

async fn serve(mut client: TcpStream, peer: SocketAddr, pool: &Pool, s: &Settings, metrics: &ProxyMetrics) {
    tune(&client, s.tcp_keepalive);
    let mut tried = Vec::new();
    let (backend, mut upstream, mut closing) = loop {
        let Some(b) = pool.pick(&tried) else {
            metrics.no_backend.inc();
            tracing::warn!(client = %peer, tried = ?tried, "no backend accepted the connection; closing the client");
            return;
        };
        tried.push(b.addr);
        // Subscribed before the connect, so a flip to down during it is not missed.
        let closing = b.closing();
        match connect(b.addr, s.connect_timeout).await {
            Ok(up) => break (b, up, closing),
            Err(e) => {
                let kind = reason(&e);
                metrics
                    .connect_failures
                    .get_or_create(&BackendDetail { backend: b.addr.to_string(), kind: kind.into() })
                    .inc();
                pool.record(&b, false, Evidence::Connect, format!("client connect: {e}"));
                b.check_now.notify_one();
            }
        }
    };
    tune(&upstream, s.tcp_keepalive);
    let _open = backend.open();
    let activity = Activity::new();
    let meters =
        Meters { to_backend: &backend.bytes_to_backend, to_client: &backend.bytes_to_client, activity: &activity };
    tokio::select! {
        r = relay(&mut client, &mut upstream, s.zero_copy, meters) => {
            if let Err(e) = r {
                tracing::debug!(client = %peer, backend = %backend.addr, error = %e, "connection ended with an error");
            }
        }
        _ = closing.changed() => {
            backend.closed_on_down.inc();
            tracing::debug!(client = %peer, backend = %backend.addr, "closing a connection: its backend went down");
        }
        () = idle(&activity, s.idle_timeout) => {
            tracing::debug!(client = %peer, backend = %backend.addr, "closing an idle connection");
        }
    }
}

async fn idle(activity: &Activity, timeout: Option<Duration>) {
    let Some(timeout) = timeout else { return std::future::pending().await };
    loop {
        let deadline = activity.last() + timeout;
        if std::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

async fn check_loop(pool: Arc<Pool>, backend: Arc<Backend>, s: Arc<Settings>) {
    let tls = s.check.tls.clone();
    let probe = move |url: String| {
        let tls = tls.clone();
        async move { probe::https(&url, Some(tls)).await }
    };
    run_checks(&pool, &backend, &s.check, probe).await;
}

/// Checks one backend every interval, and at once when a client's connect failed, until it is retired.
async fn run_checks<P, F>(pool: &Pool, backend: &Backend, s: &CheckSettings, probe: P)
where
    P: Fn(String) -> F,
    F: Future<Output = Result<String, String>>,
{
    let url = format!("https://{}{}", backend.addr, s.path);
    let mut retired = backend.retired.subscribe();
    loop {
        let attempt = tokio::time::timeout(s.timeout, probe(url.clone()));
        let (ok, detail) = tokio::select! {
            r = attempt => match r {
                Ok(Ok(d)) => (true, d),
                Ok(Err(e)) => (false, e),
                Err(_) => (false, format!("no answer within {:?}", s.timeout)),
            },
            _ = retired.wait_for(|r| *r) => return,
        };
        pool.record(backend, ok, Evidence::Check, detail);
        tokio::select! {
            () = tokio::time::sleep(s.interval) => {}
            () = backend.check_now.notified() => {}
            _ = retired.wait_for(|r| *r) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::{Instant, sleep};

    #[test]
    fn settings_refuse_a_section_that_check_refuses_naming_every_key() {
        let spec: MemberProxy = serde_json::from_value(serde_json::json!({
            "listen": "localhost:8443", "backends": ["198.51.100.11"], "maxConnections": 0,
            "healthCheck": {"insecureSkipVerify": true}
        }))
        .unwrap();
        let err = Settings::from_spec(&spec).unwrap_err().to_string();
        for key in ["proxy.listen", "proxy.backends[0]", "proxy.maxConnections"] {
            assert!(err.contains(key), "{key} not named: {err}");
        }
    }

    fn settings() -> CheckSettings {
        CheckSettings {
            path: "/readyz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            tls: probe::tls_config(true, None).unwrap(),
        }
    }

    /// A backend whose checks answer by the (virtual) time: good, bad from 1.5 s, good again from 6.5 s,
    /// silent (no answer at all) from 20 s.
    #[tokio::test(start_paused = true)]
    async fn checks_flip_after_fall_and_rise_in_a_row_and_a_failed_connect_checks_at_once() {
        let pool = Arc::new(Pool::new(Balance::RoundRobin, 2, 3, true, ProxyMetrics::default()));
        let addr: SocketAddr = "198.51.100.11:6443".parse().unwrap();
        let backend = pool.set_backends(&[addr]).remove(0);
        let t0 = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = {
            let seen = seen.clone();
            move |_url: String| {
                let at = t0.elapsed();
                seen.lock().unwrap().push(at);
                async move {
                    if at >= Duration::from_secs(20) {
                        std::future::pending::<()>().await;
                    }
                    let bad = at >= Duration::from_millis(1500) && at < Duration::from_millis(6500);
                    if bad { Err("HTTP 500".to_string()) } else { Ok("HTTP 200".to_string()) }
                }
            }
        };
        let task = {
            let (pool, backend) = (pool.clone(), backend.clone());
            tokio::spawn(async move { run_checks(&pool, &backend, &settings(), probe).await })
        };
        let up_at = |ms: u64| {
            let (pool, t0) = (pool.clone(), t0);
            async move {
                sleep((t0 + Duration::from_millis(ms)).saturating_duration_since(Instant::now())).await;
                pool.backends()[0].healthy != Some(false)
            }
        };
        // Checks at 0, 1, 2, 3, 4 s: failures at 2, 3 and 4 s take it out at 4 s, not before.
        assert!(up_at(3_900).await, "two failures are fewer than fall=3");
        assert!(!up_at(4_100).await, "the third failure in a row takes it out");
        // Good again from 6.5 s: checks at 7 and 8 s bring it back at 8 s.
        assert!(!up_at(7_900).await, "one success is fewer than rise=2");
        assert!(up_at(8_100).await);
        // A client's failed connect at 10.2 s takes it out and checks at once instead of at 11 s.
        up_at(10_200).await;
        pool.record(&backend, false, Evidence::Connect, "client connect: refused".into());
        backend.check_now.notify_one();
        sleep(Duration::from_millis(10)).await;
        assert_eq!(seen.lock().unwrap().last().copied(), Some(Duration::from_millis(10_200)));
        assert!(!pool.backends()[0].healthy.unwrap(), "one good check is fewer than rise=2");
        assert!(up_at(11_300).await, "the regular check at 11.2 s is the second good one");
        // Silent from 20 s: the checks at 20.2, 22.2 and 24.2 s each time out 1 s later: out at 25.2 s.
        assert!(up_at(25_100).await);
        assert!(!up_at(25_300).await);
        assert!(pool.backends()[0].detail.contains("no answer within"), "{}", pool.backends()[0].detail);
        pool.set_backends(&[]);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("a retired backend's checker stops").unwrap();
    }
}
