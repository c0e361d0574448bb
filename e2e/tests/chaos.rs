//! The failover chaos suite (e2e/src/chaos): every scenario against kubeha installed with Helm, at 100 ms
//! and at 1 s adverts, then against keepalived + HAProxy at the kubeadm guide's settings and at matched
//! settings, in one run on one cluster. Writes the report and the timeline picture (to
//! `KUBEHA_CHAOS_REPORT`, default `target/chaos`, relative to the workspace), then asserts kubeha's behaviour in each scenario — one
//! VIP holder in the end, the watch resumed, the status telling the truth, and what the scenario is about.
//! Timings are recorded, never asserted.
//!
//! `KUBEHA_CHAOS_STACKS` (kubeha-100ms, kubeha-1s, keepalived-matched, keepalived-guide) and
//! `KUBEHA_CHAOS_ONLY` (scenario names, e.g. KillAgent,Partition) narrow a run; both are comma lists.

mod common;

use std::path::PathBuf;

use common::Up;
use kubeha_e2e::chaos::{Chaos, Run, Scenario, Stack};

const COMMAND: &str = "cargo test -p kubeha-e2e --test chaos -- --nocapture";

fn stacks() -> Vec<Stack> {
    let all = [
        ("kubeha-100ms", Stack::Kubeha { advert_ms: 100 }),
        ("kubeha-1s", Stack::Kubeha { advert_ms: 1000 }),
        ("keepalived-matched", Stack::KeepalivedMatched),
        ("keepalived-guide", Stack::KeepalivedGuide),
    ];
    let wanted = std::env::var("KUBEHA_CHAOS_STACKS").unwrap_or_default();
    let picked: Vec<Stack> =
        all.iter().filter(|(n, _)| wanted.is_empty() || wanted.split(',').any(|w| w == *n)).map(|(_, s)| *s).collect();
    assert!(!picked.is_empty(), "KUBEHA_CHAOS_STACKS={wanted}: none of {:?}", all.map(|a| a.0));
    picked
}

fn scenarios() -> Vec<Scenario> {
    let wanted = std::env::var("KUBEHA_CHAOS_ONLY").unwrap_or_default();
    let picked: Vec<Scenario> =
        Scenario::ALL.into_iter().filter(|s| wanted.is_empty() || wanted.split(',').any(|w| w == s.name())).collect();
    assert!(!picked.is_empty(), "KUBEHA_CHAOS_ONLY={wanted}: none of {:?}", Scenario::ALL.map(Scenario::name));
    picked
}

/// What is wrong with a kubeha run.
fn wrong(run: &Run) -> Vec<String> {
    let f = &run.figures;
    let mut wrong = run.problems.clone();
    if f.holders_at_end.len() != 1 {
        wrong.push(format!("VIP on {:?} at the end", f.holders_at_end));
    }
    if !f.watch_resumed {
        wrong.push("the watch did not resume".into());
    }
    // The scenarios' own checks (the VIP stays while the operators or every API server are down, released
    // when the cluster is deleted, taken by the joining backup) are in `problems`.
    wrong
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_chaos_suite_against_keepalived_and_haproxy() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let mut chaos = Chaos::start(&up.cluster).expect("probe and sampler");
    let mut aborted = Vec::new();
    'stacks: for stack in stacks() {
        if let Err(e) = chaos.use_stack(stack).await {
            aborted.push(format!("{}: {e}", stack.label()));
            continue;
        }
        for scenario in scenarios().into_iter().filter(|s| s.applies_to(stack)) {
            match chaos.run(scenario).await {
                Ok(run) => eprintln!(
                    "{} / {}: outages {:?}, problems {:?}",
                    stack.label(),
                    scenario.title(),
                    run.figures.outages,
                    run.problems
                ),
                Err(e) => {
                    aborted.push(format!("{} / {}: {e}", stack.label(), scenario.title()));
                    continue 'stacks;
                }
            }
        }
    }
    // A relative directory is the workspace's (cargo runs the test in e2e/).
    let workspace = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let dir =
        workspace.join(std::env::var_os("KUBEHA_CHAOS_REPORT").map_or_else(|| "target/chaos".into(), PathBuf::from));
    chaos.report(&dir, COMMAND).expect("the report is written");
    println!("{}", std::fs::read_to_string(dir.join("report.md")).unwrap());
    println!("timeline: {}", dir.join("timeline.png").display());

    // kubeha must behave in every scenario; the peer is measured, not judged.
    assert!(aborted.iter().all(|a| !a.starts_with("kubeha")), "kubeha runs could not go on: {aborted:?}");
    if !aborted.is_empty() {
        eprintln!("peer runs that could not go on (recorded, not asserted): {aborted:?}");
    }
    let failures: Vec<String> = chaos
        .runs
        .iter()
        .filter(|r| matches!(r.stack, Stack::Kubeha { .. }))
        .flat_map(|r| wrong(r).into_iter().map(move |w| format!("{} / {}: {w}", r.stack.label(), r.scenario.title())))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    chaos.stop();
}
