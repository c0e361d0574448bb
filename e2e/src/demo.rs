//! `make demo`: kubeha's main job on the three-master test cluster, as a user would see it.

use std::path::Path;

use anyhow::Context as _;
use kubeha_e2e::Cluster;
use kubeha_e2e::chaos::{Chaos, EXAMPLE, Scenario, Stack};

/// Where the demo's timeline and report go (outside the test world, which `down` removes).
const OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/demo");

pub(crate) async fn run(cluster: &Cluster) -> anyhow::Result<()> {
    say(
        "bringing up three masters (etcd, kube-apiserver and the controllers on each) and five nodes (kubelet, containerd)",
    );
    let t = cluster.up().await?;
    println!(
        "API servers ready after {:.1} s; admin kubeconfig: {}",
        t.apiservers_ready.as_secs_f64(),
        cluster.kubeconfig().display()
    );
    let mut chaos = Chaos::start(cluster)?;
    say(&format!(
        "helm install kubeha charts/kubeha -n kubeha-system --create-namespace -f e2e/test-world-values.yaml\n   \
         then kubectl apply -f {}",
        Path::new(EXAMPLE).file_name().and_then(|n| n.to_str()).unwrap_or(EXAMPLE)
    ));
    chaos.use_stack(Stack::Kubeha { advert_ms: 100 }).await.context("installing kubeha")?;
    show(cluster, &["get", "hac,ham"]);
    let active = chaos.holders().first().map(|h| h.name()).unwrap_or_default();
    say(&format!(
        "powering {active} off (every process killed, link down) while a client on c1 connects to the VIP every 10 ms; \
         booting it again 8 s later"
    ));
    let run = chaos.run(Scenario::KillNode).await?.clone();
    let f = &run.figures;
    match &f.took_over {
        Some((who, after)) => println!("{who} took the VIP over {:.2} s after {active} went dark", after),
        None => println!("no other master took the VIP over"),
    }
    println!(
        "the VIP was unreachable for {:.2} s ({} of {} probes failed); kubectl requests failed: {} of {}; the watch {}",
        f.worst_outage(),
        f.connects.1,
        f.connects.0,
        f.requests.1,
        f.requests.0,
        if f.watch_resumed { "resumed" } else { "did not resume" }
    );
    for line in run.said.iter().filter(|l| l.starts_with("Event")) {
        println!("  {line}");
    }
    for p in &run.problems {
        println!("  problem: {p}");
    }
    show(cluster, &["get", "hac,ham"]);
    chaos.stop();
    let out = Path::new(OUT);
    chaos.report(out, "make demo")?;
    let out = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
    say(&format!("timeline: {}  (report: {})", out.join("timeline.png").display(), out.join("report.md").display()));
    Ok(())
}

fn say(what: &str) {
    println!("\n== {what}");
}

fn show(cluster: &Cluster, args: &[&str]) {
    println!("\n$ kubectl {}", args.join(" "));
    let out = cluster.kubectl().args(args).output();
    match out {
        Ok(o) => print!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => println!("kubectl: {e}"),
    }
}
