//! `make bench-proxy`: the kubeha API proxy and HAProxy side by side, in one run, in front of the same three
//! HTTPS backends, plus direct-to-backend as the physical limit. Prints a markdown report. Not a test: it
//! measures and asserts nothing.
//!
//! Backends are `kubeha_e2e::fakeapi` servers (HTTPS on :6443 like kube-apiserver, /healthz and /readyz,
//! fixed-cost routes) in the node namespaces n1–n3; both proxies and the client run in the root namespace on
//! loopback, so every proxied byte crosses the same bridge as a direct one. HAProxy (Debian's) runs the
//! kubeadm HA guide's configuration: `mode tcp`, round-robin, TLS GET /healthz checks at the default
//! inter 2s / fall 3 / rise 2, `timeout connect 5s`, `retries 1`, `option redispatch`. kubeha runs at its
//! defaults (checks of /readyz every 1s, fall 3, rise 2, connect timeout 1s).
//!
//! Measured: keep-alive requests/s and p50/p99 for small responses, new TLS connections/s, MB/s for 1 MiB
//! responses, and for a backend that is killed (connects refused) or black-holed (its link cut): time until
//! the proxy has it out of rotation (polled from its own status every 20 ms), failed and stalled requests
//! of a client opening a new connection every 10 ms. Then idle RSS.
//! BENCH_SECONDS (default 5) sets each throughput run's length; BENCH_CONNS (default 16) the concurrency;
//! BENCH_ROUNDS (default 5) the rounds whose median is shown; BENCH_ONLY=throughput skips the failure runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use kubeha_e2e::fakeapi::{Certs, Conn, FakeApi};
use kubeha_e2e::{Cluster, Host, NODES, Node, Process, kubeha_binary, observe};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const KUBEHA: SocketAddr = SocketAddr::new(LOCAL, 18443);
const KUBEHA_COPY: SocketAddr = SocketAddr::new(LOCAL, 18444);
const HAPROXY: SocketAddr = SocketAddr::new(LOCAL, 19443);
const KUBEHA_METRICS: SocketAddr = SocketAddr::new(LOCAL, 19641);
const KUBEHA_COPY_METRICS: SocketAddr = SocketAddr::new(LOCAL, 19642);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Direct,
    Kubeha,
    KubehaCopy,
    Haproxy,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct (client-side round-robin)",
            Target::Kubeha => "kubeha",
            Target::KubehaCopy => "kubeha, splice off",
            Target::Haproxy => "HAProxy (kubeadm guide)",
        }
    }

    /// Where connection `i` goes.
    fn addr(self, i: usize) -> SocketAddr {
        match self {
            Target::Direct => backend(&NODES[i % 3]),
            Target::Kubeha => KUBEHA,
            Target::KubehaCopy => KUBEHA_COPY,
            Target::Haproxy => HAPROXY,
        }
    }
}

fn backend(node: &Node) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(node.ipv4()), 6443)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        // A backend in a node namespace: bench-proxy serve NAME CERTDIR
        let (name, dir) = (args.get(2).context("name")?, PathBuf::from(args.get(3).context("certs dir")?));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(serve(name, &dir));
    }
    let secs: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let conns: usize = std::env::var("BENCH_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let cluster = Cluster::open()?;
    let _lock = cluster.lock()?;
    cluster.down()?;
    cluster.up_network()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = rt.block_on(bench(&cluster, Duration::from_secs(secs), conns, rounds));
    cluster.down()?;
    result
}

async fn serve(name: &str, dir: &Path) -> Result<()> {
    let certs = Certs::read_all(dir)?;
    let addr: SocketAddr = format!("{}:6443", Host::parse(name)?.ipv4()).parse()?;
    let _api = FakeApi::start(name, addr, certs.server_config()?).await?;
    std::future::pending::<()>().await;
    Ok(())
}

struct World {
    dir: PathBuf,
    certs: Certs,
    backends: Vec<Option<Process>>,
    kubeha: Process,
    _kubeha_copy: Process,
    haproxy: Process,
}

async fn bench(cluster: &Cluster, secs: Duration, conns: usize, rounds: usize) -> Result<()> {
    let dir = cluster.dir().join("bench-proxy");
    std::fs::create_dir_all(&dir)?;
    let mut ips = vec![LOCAL];
    ips.extend(NODES.iter().map(|n| IpAddr::V4(n.ipv4())));
    let certs = Certs::generate(&ips)?;
    certs.write_all(&dir)?;
    let mut backends = Vec::new();
    for node in NODES {
        backends.push(Some(start_backend(cluster, &node, &dir)?));
    }
    let haproxy_version = String::from_utf8_lossy(&std::process::Command::new("haproxy").arg("-v").output()?.stdout)
        .lines()
        .next()
        .unwrap_or("HAProxy")
        .to_string();
    let world = World {
        kubeha: start_kubeha(cluster, &dir, KUBEHA, KUBEHA_METRICS, true)?,
        _kubeha_copy: start_kubeha(cluster, &dir, KUBEHA_COPY, KUBEHA_COPY_METRICS, false)?,
        haproxy: start_haproxy(cluster, &dir)?,
        dir,
        certs,
        backends,
    };
    wait_all_up(&world).await?;
    let idle = [rss(world.kubeha.pid()), rss(world.haproxy.pid())];

    println!("# API proxy: kubeha vs HAProxy\n");
    println!(
        "`make bench-proxy` (BENCH_SECONDS={}, BENCH_CONNS={conns}, BENCH_ROUNDS={rounds}) on this machine: {} cores;",
        secs.as_secs(),
        cores()
    );
    println!("peer: {haproxy_version}, configured as the kubeadm HA guide does. Three HTTPS backends in the node");
    println!("namespaces; the client and both proxies in the root namespace. Everything shares the same cores.\n");

    let targets = [Target::Direct, Target::Kubeha, Target::KubehaCopy, Target::Haproxy];
    println!("## Throughput\n");
    println!("| test | {} |", targets.map(Target::label).join(" | "));
    println!("| --- |{}", " --- |".repeat(targets.len()));
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    // Rounds interleave the targets, so that a slow moment of the shared machine does not land on one of them;
    // each cell is the round with the median rate.
    let (mut small, mut fresh, mut big) = (vec![Vec::new(); 4], vec![Vec::new(); 4], vec![Vec::new(); 4]);
    // The proxy's own CPU time and what it relayed, in the small-request and the 1 MiB runs: how much of the shared
    // cores it takes, a steadier figure than the rates, which move with whatever else the machine does.
    let (mut cpu_small, mut requests) = ([0.0f64; 4], [0.0f64; 4]);
    let (mut cpu, mut gigabytes) = ([0.0f64; 4], [0.0f64; 4]);
    let pid = |t: Target| match t {
        Target::Direct => None,
        Target::Kubeha => Some(world.kubeha.pid()),
        Target::KubehaCopy => Some(world._kubeha_copy.pid()),
        Target::Haproxy => Some(world.haproxy.pid()),
    };
    for _ in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let (r, spent) = with_cpu(pid(*t), keepalive(&world, *t, conns, secs, "/name")).await?;
            if let Some(spent) = spent {
                cpu_small[i] += spent;
                requests[i] += r.rate * secs.as_secs_f64();
            }
            small[i].push(r);
            fresh[i].push(new_connections(&world, *t, conns / 2, secs).await?);
            let (r, spent) = with_cpu(pid(*t), keepalive(&world, *t, 4, secs, "/bytes/1048576")).await?;
            if let Some(spent) = spent {
                cpu[i] += spent;
                gigabytes[i] += r.rate * secs.as_secs_f64() * 1_048_576.0 / 1e9;
            }
            big[i].push(r);
        }
    }
    // Shares are paired: each round's rate over the same round's direct rate, then the median of those, so a
    // slow minute of the machine weighs on both sides of a ratio instead of on one cell.
    let paired = |runs: &[Vec<Rate>], i: usize, of: usize| {
        let mut ratios: Vec<f64> =
            runs[i].iter().zip(&runs[of]).filter(|(_, d)| d.rate > 0.0).map(|(r, d)| r.rate / d.rate).collect();
        ratios.sort_by(f64::total_cmp);
        let ahead = ratios.iter().filter(|r| **r >= 1.0).count();
        (ratios.get(ratios.len() / 2).copied().unwrap_or(0.0), ahead, ratios.len())
    };
    // Their places in `targets`.
    let (kubeha, haproxy) = (1, 3);
    let versus: Vec<(&str, (f64, usize, usize))> = vec![
        ("keep-alive requests/s, small responses", paired(&small, kubeha, haproxy)),
        ("new TLS connections/s", paired(&fresh, kubeha, haproxy)),
        ("MB/s, 1 MiB responses", paired(&big, kubeha, haproxy)),
    ];
    let shares: [Vec<f64>; 3] =
        [&small, &fresh, &big].map(|runs| (0..targets.len()).map(|i| paired(runs, i, 0).0).collect());
    let (small, fresh, big) = (median(small), median(fresh), median(big));
    let share = |v: f64| format!(" ({:.0} %)", 100.0 * v);
    rows.push((
        "keep-alive requests/s, small responses".into(),
        small.iter().zip(&shares[0]).map(|(r, s)| format!("{:.0}{}", r.rate, share(*s))).collect(),
    ));
    rows.push(("… p50 / p99 latency".into(), small.iter().map(|r| format!("{} / {}", ms(r.p50), ms(r.p99))).collect()));
    rows.push((
        "… the proxy's CPU time per 1000 requests".into(),
        (0..targets.len())
            .map(|i| if requests[i] > 0.0 { format!("{:.1} ms", 1e6 * cpu_small[i] / requests[i]) } else { "—".into() })
            .collect(),
    ));
    rows.push((
        "new TLS connections/s (one request each, server closes)".into(),
        fresh.iter().zip(&shares[1]).map(|(r, s)| format!("{:.0}{}", r.rate, share(*s))).collect(),
    ));
    rows.push(("… p50 / p99 latency".into(), fresh.iter().map(|r| format!("{} / {}", ms(r.p50), ms(r.p99))).collect()));
    rows.push((
        "MB/s, 1 MiB responses (4 connections)".into(),
        big.iter().zip(&shares[2]).map(|(r, s)| format!("{:.0}{}", r.rate * 1.048576, share(*s))).collect(),
    ));
    rows.push((
        "… the proxy's CPU time per GB relayed".into(),
        (0..targets.len())
            .map(|i| if gigabytes[i] > 0.0 { format!("{:.2} s", cpu[i] / gigabytes[i]) } else { "—".into() })
            .collect(),
    ));
    rows.push((
        "failed requests (all of the above)".into(),
        small.iter().zip(&fresh).zip(&big).map(|((a, b), c)| (a.failed + b.failed + c.failed).to_string()).collect(),
    ));
    for (name, cells) in &rows {
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!();
    println!("Each cell: the round with the median rate. (%): the median over the rounds of the rate ÷ direct's rate");
    println!("in the same round.\n");
    println!("| kubeha ÷ HAProxy, same round | median | rounds kubeha ≥ HAProxy |");
    println!("| --- | --- | --- |");
    for (name, (ratio, ahead, n)) in &versus {
        println!("| {name} | {ratio:.2} | {ahead} of {n} |");
    }
    println!();

    println!("## A backend dies\n");
    println!("A client opens a new connection every 10 ms and sends one request (10 s timeout); at t=0 n2's backend");
    println!("is killed (its connects are refused) or black-holed (its bridge port stops forwarding: connects get no");
    println!(
        "answer). *Out of rotation*: until the proxy's own status shows it down. *Stalled*: requests slower than 1 s.\n"
    );
    println!("| fault | proxy | out of rotation after | failed requests | stalled requests | slowest request |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut world = world;
    let faults = if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "throughput") {
        vec![]
    } else {
        vec![Fault::Kill, Fault::BlackHole]
    };
    for fault in faults {
        for t in [Target::Kubeha, Target::Haproxy] {
            let r = backend_dies(cluster, &mut world, t, fault).await?;
            let out = r.out.map_or("not within 20 s".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
            println!(
                "| {fault:?} | {} | {out} | {} of {} | {} | {} |",
                t.label(),
                r.failed,
                r.total,
                r.stalled,
                ms(r.slowest)
            );
        }
    }
    println!();
    println!("## Memory\n");
    println!("| | kubeha-agent (proxy only) | HAProxy |");
    println!("| --- | --- | --- |");
    println!("| RSS idle, after start | {} | {} |", mib(idle[0]), mib(idle[1]));
    println!("| RSS after the runs above | {} | {} |", mib(rss(world.kubeha.pid())), mib(rss(world.haproxy.pid())));
    let mut per_conn = Vec::new();
    for (t, pid) in [(Target::Kubeha, world.kubeha.pid()), (Target::Haproxy, world.haproxy.pid())] {
        per_conn.push(idle_cost(t, pid, IDLE_CONNECTIONS).await?);
    }
    println!(
        "| RSS per idle connection ({IDLE_CONNECTIONS} open, each relayed to a backend, nothing sent) | {:.1} KiB | {:.1} KiB |",
        per_conn[0], per_conn[1]
    );
    Ok(())
}

/// Idle connections the memory row opens: quiet watches, as far as a proxy can tell.
const IDLE_CONNECTIONS: usize = 1000;

/// RSS growth per connection while `n` connections to `t` sit idle (each already connected upstream).
async fn idle_cost(t: Target, pid: u32, n: usize) -> Result<f64> {
    let before = rss(pid);
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        open.push(tokio::net::TcpStream::connect(t.addr(i)).await?);
    }
    // Both proxies connect upstream on accept; give them time to have done so for all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss(pid);
    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(during.saturating_sub(before) as f64 / n as f64)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn rss(pid: u32) -> u64 {
    observe::rss_kib(pid).unwrap_or(0)
}

fn start_backend(cluster: &Cluster, node: &Node, dir: &Path) -> Result<Process> {
    let me = std::env::current_exe()?;
    Ok(cluster.spawn(
        node,
        "bench-backend",
        &[me.display().to_string(), "serve".into(), node.name(), dir.display().to_string()],
    )?)
}

fn start_kubeha(
    cluster: &Cluster,
    dir: &Path,
    listen: SocketAddr,
    metrics: SocketAddr,
    splice: bool,
) -> Result<Process> {
    let list = NODES.iter().map(|n| format!("\"{}\"", backend(n))).collect::<Vec<_>>().join(", ");
    let config = format!(
        "nodeName: bench\nproxy:\n  listen: \"{listen}\"\n  backends: [{list}]\n  healthCheck: {{caFile: {}}}\nmetrics: {{listen: \"{metrics}\"}}\n",
        dir.join("ca.crt").display()
    );
    let path = dir.join(format!("kubeha-{}.yaml", listen.port()));
    std::fs::write(&path, config)?;
    let bin = kubeha_binary("kubeha-agent")?.display().to_string();
    let zero_copy = if splice { "1" } else { "0" };
    Ok(cluster.spawn_local(
        &format!("bench-kubeha-{}", listen.port()),
        &[
            "env".into(),
            format!("KUBEHA_PROXY_ZERO_COPY={zero_copy}"),
            bin,
            "run".into(),
            "--config".into(),
            path.display().to_string(),
        ],
    )?)
}

fn start_haproxy(cluster: &Cluster, dir: &Path) -> Result<Process> {
    let servers: String =
        NODES.iter().map(|n| format!("    server {} {} check verify none\n", n.name(), backend(n))).collect();
    // The kubeadm HA guide's haproxy.cfg (docs/ha-considerations.md in kubernetes/kubeadm), with logging
    // off (as kubeha logs no connections) and a stats socket for the benchmark to read server states.
    let config = format!(
        "global\n    stats socket {sock} mode 600 level admin\n\n\
         defaults\n    mode http\n    option http-server-close\n    option forwardfor except 127.0.0.0/8\n    \
         option redispatch\n    retries 1\n    timeout http-request 10s\n    timeout queue 20s\n    timeout connect 5s\n    \
         timeout client 35s\n    timeout server 35s\n    timeout http-keep-alive 10s\n    timeout check 10s\n\n\
         frontend apiserver\n    bind {HAPROXY}\n    mode tcp\n    default_backend apiserverbackend\n\n\
         backend apiserverbackend\n    option httpchk\n    http-check connect ssl\n    http-check send meth GET uri /healthz\n    \
         http-check expect status 200\n    mode tcp\n    balance roundrobin\n{servers}",
        sock = dir.join("haproxy.sock").display()
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    Ok(cluster
        .spawn_local("bench-haproxy", &["haproxy".into(), "-db".into(), "-f".into(), path.display().to_string()])?)
}

/// Whether each proxy has `backend` in rotation.
async fn in_rotation(world: &World, t: Target, backend: SocketAddr) -> Result<bool> {
    match t {
        Target::Kubeha | Target::KubehaCopy => {
            let metrics = if t == Target::Kubeha { KUBEHA_METRICS } else { KUBEHA_COPY_METRICS };
            let text = observe::scrape(metrics).await;
            Ok(observe::sample(&text, "kubeha_proxy_backend_up", &format!("backend=\"{backend}\"")) == Some(1.0))
        }
        Target::Haproxy => {
            let mut s = tokio::net::UnixStream::connect(world.dir.join("haproxy.sock")).await?;
            s.write_all(b"show stat\n").await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            let node = NODES.iter().find(|n| backend.ip() == IpAddr::V4(n.ipv4())).context("node")?;
            // CSV: pxname,svname,…; the 18th field is the status (UP, DOWN, "UP 1/3", "DOWN 1/2", …).
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("apiserverbackend,{},", node.name())))
                .context("haproxy stat line")?;
            Ok(line.split(',').nth(17).is_some_and(|s| s.starts_with("UP")))
        }
        Target::Direct => Ok(true),
    }
}

async fn wait_all_up(world: &World) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for t in [Target::Kubeha, Target::KubehaCopy, Target::Haproxy] {
            for node in NODES {
                all &= in_rotation(world, t, backend(&node)).await.unwrap_or(false);
            }
        }
        // Direct reachability too: a request to each backend.
        for node in NODES {
            all &= request(world, backend(&node), "/name").await.is_ok();
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the proxies did not see every backend up within 30 s; logs in {}", world.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn request(world: &World, addr: SocketAddr, path: &str) -> Result<usize> {
    let mut c = Conn::open(addr, LOCAL, world.certs.client_config()?).await?;
    let (code, body) = c.get(path).await?;
    if code != 200 {
        bail!("HTTP {code}");
    }
    Ok(body.len())
}

/// Runs `run`; with it, the CPU seconds process `pid` spent meanwhile, when there is a process (not for direct).
async fn with_cpu(pid: Option<u32>, run: impl Future<Output = Result<Rate>>) -> Result<(Rate, Option<f64>)> {
    let before = pid.and_then(observe::cpu_seconds);
    let r = run.await?;
    let after = pid.and_then(observe::cpu_seconds);
    Ok((r, before.zip(after).map(|(b, a)| a - b)))
}

fn median(runs: Vec<Vec<Rate>>) -> Vec<Rate> {
    runs.into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            r.swap_remove(r.len() / 2)
        })
        .collect()
}

#[derive(Clone)]
struct Rate {
    rate: f64,
    p50: Duration,
    p99: Duration,
    failed: usize,
}

/// Waits for the client loops, each returning (latencies of good requests, failed requests), and sums them up.
async fn gather(tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>, start: Instant) -> Result<Rate> {
    let (mut lat, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (l, f) = task.await?;
        lat.extend(l);
        failed += f;
    }
    Ok(summarize(lat, failed, start.elapsed()))
}

fn summarize(mut lat: Vec<Duration>, failed: usize, elapsed: Duration) -> Rate {
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    Rate { rate: lat.len() as f64 / elapsed.as_secs_f64(), p50: q(0.5), p99: q(0.99), failed }
}

/// `conns` keep-alive connections each sending GET `path` back to back for `secs`.
async fn keepalive(world: &World, t: Target, conns: usize, secs: Duration, path: &str) -> Result<Rate> {
    let tls = world.certs.client_config()?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (tls, addr, path) = (tls.clone(), t.addr(i), path.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed) = (Vec::new(), 0);
            let mut conn: Option<Conn> = None;
            while start.elapsed() < secs {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match tokio::time::timeout(REQUEST_TIMEOUT, Conn::open(addr, LOCAL, tls.clone())).await {
                        Ok(Ok(c)) => conn.insert(c),
                        _ => {
                            failed += 1;
                            continue;
                        }
                    },
                };
                let t = Instant::now();
                match tokio::time::timeout(REQUEST_TIMEOUT, c.get(&path)).await {
                    Ok(Ok((200, _))) => lat.push(t.elapsed()),
                    _ => {
                        failed += 1;
                        conn = None;
                    }
                }
            }
            (lat, failed)
        }));
    }
    gather(tasks, start).await
}

/// A request that takes longer counts as failed, and the loop goes on: a run once hung for good on one
/// direct connection whose request and answer were both lost, with nothing queued on either side.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `conns` loops each opening a new TLS connection for one small request with `Connection: close` (the server
/// closes first, see [`Conn::get_once`]), for `secs`.
async fn new_connections(world: &World, t: Target, conns: usize, secs: Duration) -> Result<Rate> {
    let tls = world.certs.client_config()?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns.max(1) {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed, mut n) = (Vec::new(), 0, i);
            while start.elapsed() < secs {
                let t0 = Instant::now();
                let ok = async { Conn::open(t.addr(n), LOCAL, tls.clone()).await?.get_once("/name").await };
                let ok = tokio::time::timeout(REQUEST_TIMEOUT, ok).await;
                n += 1;
                match ok {
                    Ok(Ok((200, _))) => lat.push(t0.elapsed()),
                    _ => failed += 1,
                }
            }
            (lat, failed)
        }));
    }
    gather(tasks, start).await
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    BlackHole,
}

struct Death {
    out: Option<Duration>,
    failed: usize,
    stalled: usize,
    total: usize,
    slowest: Duration,
}

async fn backend_dies(cluster: &Cluster, world: &mut World, t: Target, fault: Fault) -> Result<Death> {
    let victim = NODES[1];
    let addr = t.addr(0);
    let tls = world.certs.client_config()?;
    let stop = Arc::new(AtomicBool::new(false));
    // The client: a new connection every 10 ms, each with its own request, for 20 s after the fault.
    let probes = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut handles = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let tls = tls.clone();
                handles.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = tokio::time::timeout(Duration::from_secs(10), async {
                        let mut c = Conn::open(addr, LOCAL, tls).await?;
                        c.get("/name").await
                    })
                    .await;
                    (matches!(r, Ok(Ok((200, _)))), t0.elapsed())
                }));
            }
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap_or((false, Duration::ZERO)));
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = Instant::now();
    match fault {
        Fault::Kill => {
            if let Some(mut p) = world.backends[1].take() {
                p.kill();
            }
        }
        Fault::BlackHole => cluster.partition(&victim)?,
    }
    let mut out = None;
    while at.elapsed() < Duration::from_secs(20) {
        if out.is_none() && !in_rotation(world, t, backend(&victim)).await.unwrap_or(true) {
            out = Some(at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let results = probes.await?;
    // Restore the backend, and wait until every proxy has it back, before the next run.
    match fault {
        Fault::Kill => world.backends[1] = Some(start_backend(cluster, &victim, &world.dir)?),
        Fault::BlackHole => cluster.heal(&victim)?,
    }
    wait_all_up(world).await?;
    Ok(Death {
        out,
        failed: results.iter().filter(|r| !r.0).count(),
        stalled: results.iter().filter(|r| r.0 && r.1 > Duration::from_secs(1)).count(),
        total: results.len(),
        slowest: results.iter().map(|r| r.1).max().unwrap_or_default(),
    })
}
