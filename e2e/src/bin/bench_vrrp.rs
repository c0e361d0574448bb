//! `cargo run --release -p kubeha-e2e --bin bench-vrrp`: kubeha-agent and keepalived side by side, in one
//! run, on the same three-node segment with the same priorities (200, 150, 100) and advert interval. Prints
//! a markdown report. Not a test: it measures and asserts nothing.
//!
//! Per implementation and fault (SIGKILL of every process of the master daemon, SIGTERM, the master's link
//! going down),
//! repeated: the client-visible outage (the longest gap between replies to 10 ms pings from c1 to the VIP),
//! the time until a backup holds the VIP, and how long two nodes hold it at once. Then the master daemon's
//! RSS and CPU over an idle period, and spurious elections with 10 ms adverts while two busy loops load both
//! cores. And after a partition heals: how long clients are cut off once the partitioned master is back.
//! BENCH_REPEAT (default 3) and BENCH_LOAD_SECONDS (default 120) change the run length; BENCH_ONLY=faults,
//! heal or resources runs one part.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use kubeha_e2e::{CLIENTS, Cluster, Host, NODES, Process, kubeha_binary, observe};

const VIP: &str = "198.51.100.10";
const PRIORITIES: [u8; 3] = [200, 150, 100];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Kubeha,
    Keepalived,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    SigKill,
    SigTerm,
    LinkDown,
}

struct Run {
    outage: Duration,
    takeover: Duration,
    dual: Duration,
    dual_at_end: bool,
}

fn main() -> Result<()> {
    let repeat: usize = std::env::var("BENCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let load_secs: u64 = std::env::var("BENCH_LOAD_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let cluster = Cluster::open()?;
    let _lock = cluster.lock()?;
    let version = String::from_utf8_lossy(&std::process::Command::new("keepalived").arg("--version").output()?.stderr)
        .lines()
        .next()
        .unwrap_or("keepalived")
        .to_string();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    println!("# VRRP failover: kubeha-agent vs keepalived\n");
    println!(
        "`cargo run --release -p kubeha-e2e --bin bench-vrrp` (BENCH_REPEAT={repeat}, BENCH_LOAD_SECONDS={load_secs}),"
    );
    println!("three nodes on one bridge, priorities 200/150/100, 100 ms adverts, VRRPv3; peer: {version}.");
    println!("Outage: longest gap between replies to 10 ms pings from a client to the VIP. Median (min–max).\n");
    if part("faults") {
        faults(&cluster, repeat)?;
    }
    if part("heal") {
        heal(&cluster, repeat)?;
    }
    if part("resources") {
        resources_and_load(&cluster, load_secs)?;
    }
    cluster.down()?;
    Ok(())
}

fn faults(cluster: &Cluster, repeat: usize) -> Result<()> {
    println!("| fault | implementation | client-visible outage | backup holds the VIP after | VIP on two nodes |");
    println!("| --- | --- | --- | --- | --- |");
    for fault in [Fault::SigKill, Fault::SigTerm, Fault::LinkDown] {
        for imp in [Impl::Kubeha, Impl::Keepalived] {
            let mut runs = Vec::new();
            for _ in 0..repeat {
                runs.push(run(cluster, imp, fault).with_context(|| format!("{imp:?} {fault:?}"))?);
            }
            let dual = if runs.iter().any(|r| r.dual_at_end) {
                format!("{} and still there at the end (the dead node keeps it)", stats(runs.iter().map(|r| r.dual)))
            } else {
                stats(runs.iter().map(|r| r.dual))
            };
            println!(
                "| {fault:?} | {imp:?} | {} | {} | {dual} |",
                stats(runs.iter().map(|r| r.outage)),
                stats(runs.iter().map(|r| r.takeover))
            );
        }
    }
    Ok(())
}

/// The master is cut off beyond its NIC for 3 s (a failed switch: its link keeps carrier, so it stays
/// master) while the backup takes over; then the switch heals and the two masters meet. Clients learnt the
/// backup's MAC meanwhile; the outage that counts is the one after the heal, over 40 s of probing.
fn heal(cluster: &Cluster, repeat: usize) -> Result<()> {
    println!("\n| after a partition heals | client-visible outage after the heal |");
    println!("| --- | --- |");
    for imp in [Impl::Kubeha, Impl::Keepalived] {
        let mut gaps = Vec::new();
        for _ in 0..repeat {
            let daemons = three(cluster, imp, 100)?;
            let n1 = NODES[0];
            // 4000 pings 10 ms apart: 40 s, bounded in count and time.
            let ping = ["ping", "-D", "-n", "-i", "0.01", "-W", "1", "-c", "4000", VIP].map(String::from);
            let mut prober = cluster.spawn(&CLIENTS[0], "prober", &ping)?;
            std::thread::sleep(Duration::from_secs(1));
            cluster.isolate(&n1)?;
            std::thread::sleep(Duration::from_secs(3));
            let healed = now();
            cluster.rejoin(&n1)?;
            while prober.exited().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let replies: Vec<f64> = prober
                .log()
                .lines()
                .filter(|l| l.contains("bytes from"))
                .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
                .filter(|t| *t > healed - 0.05)
                .collect();
            let mut worst = 0.0f64;
            let mut prev = healed;
            for t in &replies {
                worst = worst.max(t - prev);
                prev = *t;
            }
            // No reply at all after the heal: the outage lasts the whole probe.
            if replies.is_empty() {
                worst = 40.0;
            }
            gaps.push(Duration::from_secs_f64(worst.max(0.0)));
            drop(daemons);
        }
        println!("| {imp:?} | {} |", stats(gaps.into_iter()));
    }
    Ok(())
}

fn resources_and_load(cluster: &Cluster, load_secs: u64) -> Result<()> {
    println!(
        "\n| implementation | master RSS (idle) | master CPU (idle, 10 s) | spurious elections, 10 ms adverts, both cores busy, {load_secs} s |"
    );
    println!("| --- | --- | --- | --- |");
    for imp in [Impl::Kubeha, Impl::Keepalived] {
        let (rss, cpu) = resources(cluster, imp)?;
        let spurious = spurious_elections(cluster, imp, Duration::from_secs(load_secs))?;
        println!("| {imp:?} | {:.1} MiB | {:.2} % of one core | {spurious} |", rss as f64 / 1024.0, cpu * 100.0);
    }
    Ok(())
}

fn stats(values: impl Iterator<Item = Duration>) -> String {
    let mut v: Vec<Duration> = values.collect();
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("{:.0} ms ({:.0}–{:.0})", ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]))
}

fn start(cluster: &Cluster, imp: Impl, node: Host, priority: u8, advert_ms: u32) -> Result<Process> {
    let dir = cluster.dir().join(format!("bench-{node}"));
    std::fs::create_dir_all(&dir)?;
    let argv: Vec<String> = match imp {
        Impl::Kubeha => {
            let file = dir.join("agent.yaml");
            std::fs::write(
                &file,
                format!(
                    "nodeName: {node}\ninterface: eth0\nvip: {VIP}/24\nvrid: 51\npriority: {priority}\n\
                     vrrp: {{version: 3, advertInterval: {advert_ms}ms}}\nmetrics: {{listen: \"127.0.0.1:9641\"}}\n"
                ),
            )?;
            let bin = kubeha_binary("kubeha-agent")?.display().to_string();
            [bin.as_str(), "--log-format", "text", "run", "--config", &file.display().to_string()]
                .map(String::from)
                .to_vec()
        }
        Impl::Keepalived => {
            let file = dir.join("keepalived.conf");
            std::fs::write(
                &file,
                format!(
                    "global_defs {{\n  router_id {node}\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}}\n\
                     vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  \
                     advert_int {}\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n",
                    f64::from(advert_ms) / 1000.0
                ),
            )?;
            let p = |f: &str| dir.join(f).display().to_string();
            [
                "keepalived",
                "-n",
                "-l",
                "-D",
                "--vrrp",
                "-f",
                &p("keepalived.conf"),
                "-p",
                &p("k.pid"),
                "-r",
                &p("v.pid"),
            ]
            .map(String::from)
            .to_vec()
        }
    };
    Ok(cluster.spawn(&node, "daemon", &argv)?)
}

fn holders(cluster: &Cluster) -> Vec<Host> {
    cluster.holders(VIP.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])))
}

fn wait_holders(cluster: &Cluster, want: &[Host], within: Duration) -> Result<()> {
    let start = Instant::now();
    while holders(cluster) != want {
        if start.elapsed() > within {
            bail!("holders {:?}, wanted {want:?}", holders(cluster));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn three(cluster: &Cluster, imp: Impl, advert_ms: u32) -> Result<Vec<Process>> {
    cluster.up_network()?;
    let daemons =
        NODES.iter().zip(PRIORITIES).map(|(n, p)| start(cluster, imp, *n, p, advert_ms)).collect::<Result<Vec<_>>>()?;
    wait_holders(cluster, &[NODES[0]], Duration::from_secs(10))?;
    // Let the start-up announcements (keepalived: 5, then 5 after 5 s) pass.
    std::thread::sleep(Duration::from_secs(6));
    Ok(daemons)
}

fn run(cluster: &Cluster, imp: Impl, fault: Fault) -> Result<Run> {
    let mut daemons = three(cluster, imp, 100)?;
    let [n1, n2, _] = NODES;
    // 500 pings 10 ms apart: 5 s of probing around the fault, bounded in count and time.
    let ping = ["ping", "-D", "-n", "-i", "0.01", "-W", "1", "-c", "500", VIP].map(String::from);
    let mut prober = cluster.spawn(&CLIENTS[0], "prober", &ping)?;
    // A random phase within one advert interval: otherwise the fault lands at the same point of a precise
    // advert timer every run, and the takeover times measure that phase, not the implementation.
    let phase = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) % 100_000_000;
    std::thread::sleep(Duration::from_secs(1) + Duration::from_nanos(u64::from(phase)));
    let t0 = now();
    let at = Instant::now();
    match fault {
        // Every process of the daemon: keepalived's VRRP child would otherwise get a parent-death signal and
        // shut down gracefully, which is not a crash.
        Fault::SigKill => {
            for pid in cluster.processes_on(&n1) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            daemons[0].kill();
        }
        Fault::SigTerm => {
            daemons[0].terminate()?;
        }
        Fault::LinkDown => cluster.partition(&n1)?,
    }
    let (mut takeover, mut dual, mut last) = (None, Duration::ZERO, at);
    while at.elapsed() < Duration::from_secs(4) {
        let h = holders(cluster);
        let step = last.elapsed();
        last = Instant::now();
        if h.len() >= 2 {
            dual += step;
        }
        if takeover.is_none() && h.contains(&n2) {
            takeover = Some(at.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let dual_at_end = holders(cluster).len() >= 2;
    while prober.exited().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let replies: Vec<f64> = prober
        .log()
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let before = replies.iter().copied().filter(|t| *t <= t0).fold(f64::MIN, f64::max);
    let after = replies.iter().copied().find(|t| *t > t0).unwrap_or(t0 + 5.0);
    drop(daemons);
    Ok(Run {
        outage: Duration::from_secs_f64((after - before).max(0.0)),
        takeover: takeover.unwrap_or(Duration::from_secs(4)),
        dual,
        dual_at_end,
    })
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// (RSS in KiB, CPU share of one core) of every process on the master over 10 idle seconds.
fn resources(cluster: &Cluster, imp: Impl) -> Result<(u64, f64)> {
    let _daemons = three(cluster, imp, 100)?;
    let master = NODES[0];
    let ticks = |pids: &[u32]| -> u64 {
        pids.iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .filter_map(|s| {
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .sum()
    };
    let pids = cluster.processes_on(&master);
    let start = ticks(&pids);
    std::thread::sleep(Duration::from_secs(10));
    let used = ticks(&pids) - start;
    let rss: u64 = pids.iter().filter_map(|p| observe::rss_kib(*p)).sum();
    // USER_HZ is 100 on Linux.
    Ok((rss, used as f64 / 100.0 / 10.0))
}

/// Master elections beyond the first one, over `length` with 10 ms adverts and both cores busy.
fn spurious_elections(cluster: &Cluster, imp: Impl, length: Duration) -> Result<usize> {
    let daemons = three(cluster, imp, 10)?;
    let initial: usize = daemons.iter().map(|d| masters_in(&d.log(), imp)).sum();
    // Two busy loops, bounded by `timeout` itself: waited for, never killed (killing `timeout` would leave
    // its child spinning).
    let hogs: Vec<std::process::Child> = (0..2)
        .map(|_| {
            std::process::Command::new("timeout")
                .args(["-s", "KILL", &length.as_secs().to_string(), "sh", "-c", "while :; do :; done"])
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut h in hogs {
        let _ = h.wait();
    }
    let total: usize = daemons.iter().map(|d| masters_in(&d.log(), imp)).sum();
    Ok(total - initial)
}

fn masters_in(log: &str, imp: Impl) -> usize {
    let needle = match imp {
        Impl::Kubeha => "to=\"Master\"",
        Impl::Keepalived => "Entering MASTER STATE",
    };
    log.lines().filter(|l| l.contains(needle)).count()
}
