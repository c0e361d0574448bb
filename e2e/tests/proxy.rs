//! The API proxy, black box: the kubeha-agent binary in proxy-only mode on loopback, in front of real TLS
//! servers (the fake API servers of `kubeha_e2e::fakeapi`), and then in front of the real three-master
//! control plane with kubectl as the client.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Up, wait_until};
use kubeha_e2e::fakeapi::{Certs, Conn, FakeApi};
use kubeha_e2e::{NODES, kubeha_binary, observe};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const FAST_CHECKS: &str = "interval: 200ms, timeout: 500ms, rise: 2, fall: 2";

/// The address the agent logged for `what` (`proxy listening`, `metrics and probes listening`): it binds
/// port 0 and the kernel picks the port, so no other process can take it between a test's choice and the bind.
fn logged_address(log: &str, what: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(what))?;
    line.split_whitespace().find_map(|w| w.strip_prefix("listen=")).and_then(|a| a.parse().ok())
}

/// A kubeha-agent in proxy-only mode; killed when dropped.
struct Agent {
    child: Child,
    listen: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Agent {
    /// Starts it with `check` as the healthCheck timings and `extra` YAML under `proxy:` (indented two
    /// spaces), and waits until it listens.
    async fn start(dir: &Path, backends: &[SocketAddr], ca: &Path, check: &str, extra: &str) -> Self {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (listen, metrics) = (SocketAddr::new(LOCAL, 0), SocketAddr::new(LOCAL, 0));
        let list = backends.iter().map(|b| format!("\"{b}\"")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "nodeName: local\nproxy:\n  listen: \"{listen}\"\n  backends: [{list}]\n  healthCheck: {{{check}, caFile: {}}}\n  \
             connectTimeout: 500ms\n{extra}metrics: {{listen: \"{metrics}\"}}\n",
            ca.display()
        );
        let path = dir.join(format!("agent-{n}.yaml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("agent-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(kubeha_binary("kubeha-agent").unwrap())
            .args(["run", "--log-format", "text", "--config"])
            .arg(&path)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until("the agent logs where it listens", Duration::from_secs(20), || async {
            let text = read();
            logged_address(&text, "proxy listening").is_some()
                && logged_address(&text, "metrics and probes listening").is_some()
        })
        .await;
        let text = read();
        let listen = logged_address(&text, "proxy listening").unwrap();
        let metrics = logged_address(&text, "metrics and probes listening").unwrap();
        Self { child, listen, metrics, log }
    }

    /// One sample from /metrics (0 when absent).
    async fn metric(&self, name: &str, labels: &str) -> u64 {
        observe::sample(&observe::scrape(self.metrics).await, name, labels).unwrap_or(0.0) as u64
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three fake API servers on loopback, their CA in a file, and a scratch directory.
struct Backends {
    certs: Certs,
    apis: Vec<Option<FakeApi>>,
    addrs: Vec<SocketAddr>,
    dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);
    impl Dir {
        pub(crate) fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("kubeha-proxy-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Backends {
    async fn start(tag: &str) -> Self {
        let certs = Certs::generate(&[LOCAL]).unwrap();
        let mut apis = Vec::new();
        for i in 1..=3 {
            apis.push(Some(
                FakeApi::start(&format!("api{i}"), SocketAddr::new(LOCAL, 0), certs.server_config().unwrap())
                    .await
                    .unwrap(),
            ));
        }
        let addrs = apis.iter().map(|a| a.as_ref().unwrap().addr()).collect();
        let dir = tempdir::Dir::new(tag);
        certs.write_ca(&dir.0.join("ca.crt")).unwrap();
        Self { certs, apis, addrs, dir }
    }

    async fn agent(&self, extra: &str) -> Agent {
        self.agent_with(FAST_CHECKS, extra).await
    }

    async fn agent_with(&self, check: &str, extra: &str) -> Agent {
        Agent::start(&self.dir.0, &self.addrs, &self.dir.0.join("ca.crt"), check, extra).await
    }

    fn api(&self, i: usize) -> &FakeApi {
        self.apis[i].as_ref().unwrap()
    }

    /// A new TLS connection through the proxy, verifying the backend's certificate.
    async fn conn(&self, agent: &Agent) -> Conn {
        Conn::open(agent.listen, LOCAL, self.certs.client_config().unwrap()).await.unwrap()
    }

    /// GET /name on a new connection.
    async fn name(&self, agent: &Agent) -> String {
        let (code, body) = self.conn(agent).await.get("/name").await.unwrap();
        assert_eq!(code, 200);
        String::from_utf8(body).unwrap()
    }
}

fn labels(backend: SocketAddr, kind: Option<&str>) -> String {
    match kind {
        Some(k) => format!("backend=\"{backend}\",kind=\"{k}\""),
        None => format!("backend=\"{backend}\""),
    }
}

#[tokio::test]
async fn tls_passes_through_and_new_connections_go_round_robin() {
    let b = Backends::start("rr").await;
    let agent = b.agent("").await;
    wait_until("every backend checked healthy", Duration::from_secs(10), || async {
        let mut up = 0;
        for a in &b.addrs {
            up += agent.metric("kubeha_proxy_health_transitions_total", &labels(*a, Some("down"))).await;
        }
        up == 0 && agent.log().contains("proxy listening")
    })
    .await;
    // The client verifies the backend's own certificate through the proxy: TLS is not terminated.
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(b.name(&agent).await);
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["api1", "api1", "api2", "api2", "api3", "api3"], "{names:?}");
    assert_eq!(names[0..3], names[3..6], "in turn: {names:?}");
    // A keep-alive connection stays on its backend; 1 MiB comes through intact.
    let mut c = b.conn(&agent).await;
    let first = c.get("/name").await.unwrap().1;
    for _ in 0..3 {
        assert_eq!(c.get("/name").await.unwrap().1, first);
    }
    let (code, big) = c.get("/bytes/1048576").await.unwrap();
    assert_eq!((code, big.len()), (200, 1 << 20));
    // A server that closes after its answer (`Connection: close`, as kube-apiserver does): its close_notify and
    // FIN reach the client through the proxy, which ends the connection instead of holding it open.
    let once =
        tokio::time::timeout(Duration::from_secs(5), async { b.conn(&agent).await.get_once("/name").await }).await;
    assert!(matches!(&once, Ok(Ok((200, _)))), "{once:?}");
    let to_client: u64 = {
        let mut sum = 0;
        for a in &b.addrs {
            sum += agent.metric("kubeha_proxy_bytes_total", &labels(*a, Some("to_client"))).await;
        }
        sum
    };
    assert!(to_client > 1 << 20, "bytes are counted: {to_client}");
}

#[tokio::test]
async fn a_stopped_backend_costs_no_client_a_failed_request() {
    let mut b = Backends::start("stopped").await;
    let agent = b.agent("").await;
    let dead = b.addrs[1];
    // Stopped, not stopping: a connect that the dying listener had already queued would be reset after the
    // proxy had forwarded the client's bytes, which no proxy can retry.
    b.apis[1].take().unwrap().stop().await;
    for i in 0..30 {
        let name = b.name(&agent).await;
        assert_ne!(name, "api2", "request {i}");
    }
    let refused = agent.metric("kubeha_proxy_connect_failures_total", &labels(dead, Some("refused"))).await;
    assert!(refused <= 1, "after the first refused connect it is out of rotation: {refused} refused connects");
    wait_until("api2 out of rotation", Duration::from_secs(5), || async {
        agent.metric("kubeha_proxy_backend_up", &labels(dead, None)).await == 0
    })
    .await;
    assert!(agent.log().contains("proxy backend out of rotation"), "a health flip is logged");
}

/// A listener whose accept queue is full: the kernel drops new SYNs, as a black-holed host would.
async fn black_hole(addr: SocketAddr) -> (socket2::Socket, Vec<std::net::TcpStream>) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    // Connections the stopped server had accepted close asynchronously, on this runtime.
    let t = Instant::now();
    while let Err(e) = s.bind(&addr.into()) {
        assert!(t.elapsed() < Duration::from_secs(5), "cannot bind {addr}: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.listen(0).unwrap();
    let mut fill = Vec::new();
    while let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        fill.push(c);
        assert!(fill.len() < 16, "the accept queue does not fill up");
    }
    (s, fill)
}

#[tokio::test]
async fn a_black_holed_backend_is_out_after_one_timed_out_connect_and_no_request_fails() {
    let mut b = Backends::start("blackhole").await;
    // Checks every 5 s: the client's connect, not the active check, has to find the dead backend.
    let agent = b.agent_with("interval: 5s, timeout: 1s, rise: 2, fall: 3", "").await;
    let dead = b.addrs[1];
    b.apis[1].take().unwrap().stop().await;
    let _hole = black_hole(dead).await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let t = Instant::now();
        let name = b.name(&agent).await;
        slowest = slowest.max(t.elapsed());
        assert_ne!(name, "api2", "request {i}");
    }
    let timeouts = agent.metric("kubeha_proxy_connect_failures_total", &labels(dead, Some("timeout"))).await;
    assert_eq!(timeouts, 1, "one timed-out connect takes it out; no client is sent there again");
    assert_eq!(agent.metric("kubeha_proxy_backend_up", &labels(dead, None)).await, 0);
    eprintln!("30 requests in {:?}, slowest {slowest:?} (connect timeout 500ms)", started.elapsed());
}

#[tokio::test]
async fn a_watch_is_closed_when_its_backend_turns_unready_and_idle_connections_are_kept() {
    let b = Backends::start("watch").await;
    let agent = b.agent("").await;
    let mut idle = b.conn(&agent).await;
    idle.get("/name").await.unwrap();

    let mut watch = b.conn(&agent).await;
    assert_eq!(watch.start_stream("/watch").await.unwrap(), 200);
    let first = watch.line().await.unwrap();
    let server = first.rsplit(' ').next().unwrap().to_string();
    let i: usize = server.trim_start_matches("api").parse::<usize>().unwrap() - 1;
    b.api(i).set_ready(false);
    let t = Instant::now();
    let mut lines = 0;
    while watch.line().await.is_some() {
        lines += 1;
        assert!(t.elapsed() < Duration::from_secs(10), "the watch to an unready backend is still open");
    }
    eprintln!("watch on {server} closed {:?} after it turned unready ({lines} more lines)", t.elapsed());
    let mut again = b.conn(&agent).await;
    again.start_stream("/watch").await.unwrap();
    let line = again.line().await.unwrap();
    assert!(!line.ends_with(&server), "the new watch goes to a ready backend: {line}");
    assert!(agent.metric("kubeha_proxy_closed_on_backend_down_total", &labels(b.addrs[i], None)).await >= 1);

    // Idle for longer than the health-check interval many times over: no idle timeout by default.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(idle.get("/readyz").await.unwrap().0, 200, "an idle keep-alive connection survives");
}

#[tokio::test]
async fn past_max_connections_a_client_waits_until_one_closes() {
    let b = Backends::start("limit").await;
    let agent = b.agent("  maxConnections: 2\n").await;
    let one = b.conn(&agent).await;
    let _two = b.conn(&agent).await;
    let (addr, tls) = (agent.listen, b.certs.client_config().unwrap());
    let third = tokio::spawn(async move { Conn::open(addr, LOCAL, tls).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!third.is_finished(), "a third client is not served while two are open");
    drop(one);
    tokio::time::timeout(Duration::from_secs(5), third).await.expect("served once one closed").unwrap().unwrap();
}

#[test]
fn bad_proxy_settings_are_named_by_key() {
    let dir = tempdir::Dir::new("bad");
    let path = dir.0.join("bad.yaml");
    std::fs::write(
        &path,
        "nodeName: local\nproxy:\n  listen: \"localhost:8443\"\n  backends: [\"198.51.100.11\"]\n  maxConnections: 0\n  \
         healthCheck: {path: readyz, caFile: /nonexistent/ca.crt}\n",
    )
    .unwrap();
    let out =
        Command::new(kubeha_binary("kubeha-agent").unwrap()).arg("check").arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for key in [
        "proxy.listen",
        "proxy.backends[0]",
        "proxy.maxConnections",
        "proxy.healthCheck.path",
        "proxy.healthCheck.caFile",
    ] {
        assert!(err.contains(&format!("{key}:")), "{key} not named in:\n{err}");
    }
}

// --- On the real control plane -------------------------------------------------------------------------

fn kubectl_via(up: &Up, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out =
        up.cluster.kubectl().env("KUBECONFIG", kubeconfig).args(["--request-timeout=10s"]).args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The proxy on 127.0.0.1 in front of the three API servers, verifying them against the cluster CA.
async fn proxy_for(up: &Up, dir: &Path) -> Agent {
    let backends: Vec<SocketAddr> = NODES.iter().map(|n| SocketAddr::new(IpAddr::V4(n.ipv4()), 6443)).collect();
    Agent::start(
        dir,
        &backends,
        &up.cluster.dir().join("pki/ca.crt"),
        "interval: 500ms, timeout: 1s, rise: 2, fall: 3",
        "",
    )
    .await
}

#[tokio::test]
async fn kubectl_through_the_proxy_keeps_working_while_api_servers_stop_and_start_one_at_a_time() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let dir = tempdir::Dir::new("plane");
    let agent = proxy_for(&up, &dir.0).await;
    let kubeconfig = dir.0.join("kubeconfig");
    up.cluster.write_kubeconfig_via(&format!("https://{}", agent.listen), &kubeconfig).unwrap();
    let mut failed = Vec::new();
    for node in NODES {
        up.cluster.stop_apiserver(&node).unwrap();
        for i in 0..8 {
            if let Err(e) = kubectl_via(&up, &kubeconfig, &["get", "nodes", "-o", "name"]) {
                failed.push(format!("{} stopped, request {i}: {e}", node.name()));
            }
        }
        up.cluster.start_apiserver(&node).await.unwrap();
        let backend = SocketAddr::new(IpAddr::V4(node.ipv4()), 6443);
        wait_until("the restarted API server back in rotation", Duration::from_secs(60), || async {
            agent.metric("kubeha_proxy_backend_up", &labels(backend, None)).await == 1
        })
        .await;
        for i in 0..3 {
            if let Err(e) = kubectl_via(&up, &kubeconfig, &["get", "nodes", "-o", "name"]) {
                failed.push(format!("{} back, request {i}: {e}", node.name()));
            }
        }
    }
    assert!(failed.is_empty(), "kubectl failed through the proxy:\n{}\nproxy log:\n{}", failed.join("\n"), agent.log());
}

/// `kubectl get --watch` in the background; its lines arrive on the channel.
fn watcher(up: &Up, kubeconfig: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = up
        .cluster
        .kubectl()
        .env("KUBECONFIG", kubeconfig)
        .args(["get", "configmaps", "-n", "default", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn expect_line(rx: &mpsc::Receiver<String>, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.ends_with(want) => return,
            Ok(_) => {}
            Err(e) => panic!("the watch did not show {want} within {within:?}: {e}"),
        }
    }
}

#[tokio::test]
async fn a_watch_through_the_proxy_survives_idle_and_a_new_one_lands_elsewhere_when_its_api_server_stops() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let dir = tempdir::Dir::new("watch-plane");
    let agent = proxy_for(&up, &dir.0).await;
    let kubeconfig = dir.0.join("kubeconfig");
    up.cluster.write_kubeconfig_via(&format!("https://{}", agent.listen), &kubeconfig).unwrap();
    let (mut first, rx) = watcher(&up, &kubeconfig);
    kubectl_via(&up, &kubeconfig, &["create", "configmap", "before-idle"]).unwrap();
    expect_line(&rx, "configmap/before-idle", Duration::from_secs(20));

    // Quiet for 20 s: no idle timeout cuts the watch.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(first.try_wait().unwrap().is_none(), "the watch ended while idle");
    kubectl_via(&up, &kubeconfig, &["create", "configmap", "after-idle"]).unwrap();
    expect_line(&rx, "configmap/after-idle", Duration::from_secs(20));

    // The only open connection through the proxy now is the watch: find its API server and stop it.
    let mut serving = None;
    for node in NODES {
        let backend = SocketAddr::new(IpAddr::V4(node.ipv4()), 6443);
        if agent.metric("kubeha_proxy_active_connections", &labels(backend, None)).await > 0 {
            serving = Some(node);
        }
    }
    let node = serving.expect("one backend carries the watch");
    up.cluster.stop_apiserver(&node).unwrap();
    let t = Instant::now();
    while first.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "the watch still hangs on the stopped API server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the watch on {} ended {:?} after its API server stopped", node.name(), t.elapsed());

    // What an informer does: watch again. It goes through the same proxy to a live API server.
    let (mut second, rx) = watcher(&up, &kubeconfig);
    kubectl_via(&up, &kubeconfig, &["create", "configmap", "after-stop"]).unwrap();
    expect_line(&rx, "configmap/after-stop", Duration::from_secs(20));
    let _ = second.kill();
    let _ = second.wait();
    up.cluster.start_apiserver(&node).await.unwrap();
}
