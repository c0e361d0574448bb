//! The soak: random faults from the chaos suite, one after another, against kubeha installed with Helm, while
//! the client probes the VIP; then no leaked processes, file descriptors or memory growth in the agents and
//! operators that lived through it, one VIP holder, and the status naming it.
//!
//! `KUBEHA_SOAK_SECONDS` (default 1800: 30 minutes) bounds it; `make test` runs it shorter (see Makefile).
//! `KUBEHA_SOAK_SEED` repeats a run's fault sequence (the seed is printed).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Up;
use kubeha_e2e::chaos::{Chaos, Scenario, Stack, ready};
use kubeha_e2e::{CLIENTS, NODES, observe};

/// The faults the soak picks from: the suite's, less those that restart every agent or the operators (a
/// process that is restarted cannot show a leak).
const FAULTS: [Scenario; 7] = [
    Scenario::KillAgent,
    Scenario::KillNode,
    Scenario::Partition,
    Scenario::StopApiserver,
    Scenario::EtcdQuorumLoss,
    Scenario::ApiserversDown,
    Scenario::DeleteCluster,
];

/// Long enough for the kernel to give up on a connection whose peer lost power: keepalive's idle time and
/// unanswered probes, plus a margin.
const STALE_CONNECTIONS_CLOSED: Duration = Duration::from_secs(
    kubeha_common::client::KEEPALIVE_IDLE.as_secs()
        + kubeha_common::client::KEEPALIVE_INTERVAL.as_secs() * kubeha_common::client::KEEPALIVE_RETRIES as u64
        + 5,
);

/// `kubeha-agent` for `kubeha-agent/n2`: replicas of one kind.
fn kind_of(pod: &str) -> &str {
    pod.rsplit_once('/').map_or(pod, |(kind, _)| kind)
}

/// Each kubeha container's process: pid, RSS (KiB) and open fds, by `<kind>/<node>` (a DaemonSet's or a
/// Deployment's pod names change when the pods are replaced; their place does not).
fn sample(up: &Up) -> BTreeMap<String, (u32, u64, usize)> {
    up.cluster
        .kubeha_pods()
        .unwrap_or_default()
        .into_iter()
        .flat_map(|p| {
            p.containers
                .iter()
                .filter_map(|(container, _, _)| {
                    let pid = up.cluster.container_process(&p, container).ok()?.pid;
                    let kind = format!("kubeha-{container}/{}", p.node);
                    Some((kind, (pid, observe::rss_kib(pid)?, observe::open_fds(pid)?)))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The processes on each host, less the probe's kubectl (one per request in flight, and the watch).
fn processes(up: &Up) -> Vec<usize> {
    let probe = |pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "kubectl");
    NODES
        .iter()
        .chain(CLIENTS.iter())
        .map(|h| up.cluster.processes_on(h).iter().filter(|p| !probe(p)).count())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn random_faults_leak_nothing_and_leave_one_holder() {
    kubeha_e2e::skip_unless_root!();
    let seconds: u64 = std::env::var("KUBEHA_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1800);
    let mut seed: u64 = std::env::var("KUBEHA_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    println!("soak: {seconds} s, KUBEHA_SOAK_SEED={seed}");
    let up = Up::new().await;
    let mut chaos = Chaos::start(&up.cluster).expect("probe and sampler");
    chaos.use_stack(Stack::Kubeha { advert_ms: 100 }).await.expect("kubeha installed and steady");
    // A first fault, so that every lazily grown pool and cache exists before the baseline is taken.
    chaos.run(Scenario::Partition).await.expect("first fault");
    let baseline = sample(&up);
    let fd_kinds_before: BTreeMap<&String, _> =
        baseline.iter().map(|(pod, (pid, _, _))| (pod, observe::fd_kinds(*pid))).collect();
    let processes_before = processes(&up);

    let start = Instant::now();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        // xorshift64: a reproducible sequence from the seed.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let scenario = FAULTS[(seed % FAULTS.len() as u64) as usize];
        let run = chaos.run(scenario).await.unwrap_or_else(|e| panic!("{scenario:?} after {:?}: {e}", start.elapsed()));
        assert!(run.problems.is_empty(), "{scenario:?} after {:?}: {:?}", start.elapsed(), run.problems);
        assert_eq!(run.figures.holders_at_end.len(), 1, "{scenario:?}: VIP on {:?}", run.figures.holders_at_end);
        *count.entry(scenario.name()).or_default() += 1;
        // A few seconds of calm between faults.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!("faults: {count:?}");

    // One holder, and the status says so.
    let holders = chaos.holders();
    assert_eq!(holders.len(), 1, "VIP on {holders:?}");
    let hac: serde_json::Value =
        serde_json::from_str(&up.kubectl(&["get", "hac", "control-plane", "-o", "json"])).unwrap();
    assert!(ready(&hac), "{}", hac["status"]);
    assert_eq!(hac["status"]["activeNode"], holders[0].name());
    assert_eq!(hac["status"]["membersReady"], "3/3");

    // No process left behind on any host (a restarted pod replaces its process; a stray kubectl, health
    // check or half-stopped agent would add one).
    assert_eq!(processes(&up), processes_before, "processes per host (n1, n2, n3, c1, c2)");

    // Leaks: the processes that lived through the whole soak. A connection to a master that lost power
    // closes once keepalive gives up on it (kubeha_common::client), so the last fault's are let go first.
    tokio::time::sleep(STALE_CONNECTIONS_CLOSED).await;
    let end = sample(&up);
    let mut lived = 0;
    for (pod, (pid, _, _)) in &baseline {
        let Some((pid2, rss2, fds2)) = end.get(pod) else { continue };
        if pid != pid2 {
            continue;
        }
        lived += 1;
        // Replicas of one kind are compared with the largest of them: the operators swap roles during the
        // soak, and a standby that takes the lead opens the leader's watches and grows its caches.
        let kind = kind_of(pod);
        let (rss, fds) = baseline
            .iter()
            .filter(|(other, _)| kind_of(other) == kind)
            .fold((0, 0), |(r, f), (_, (_, rss, fds))| (r.max(*rss), f.max(*fds)));
        let (rss, fds) = (&rss, &fds);
        let (own_rss, own_fds) = (baseline[pod].1, baseline[pod].2);
        println!("{pod}: RSS {own_rss} → {rss2} KiB, fds {own_fds} → {fds2}");
        println!("  fds after the first fault: {:?}", fd_kinds_before[pod]);
        println!("  fds at the end: {:?}", observe::fd_kinds(*pid2));
        assert!(*fds2 <= fds + 8, "{pod} holds {fds2} fds; the most a {kind} held after the first fault: {fds}");
        assert!(
            *rss2 <= rss + rss / 2 + 8 * 1024,
            "{pod} has {rss2} KiB; the most a {kind} had after the first fault: {rss} KiB"
        );
    }
    assert!(lived >= 2, "at least the backups' agents and an operator live through the soak: {baseline:?} → {end:?}");
    chaos.stop();
}
