//! The seeded fault campaign (issue 10): trials that mix user operations, operator kills
//! and failpoint aborts, one or two replicas with leader election, apiserver faults through
//! a proxy and provider faults, then check the invariants I1–I6 from the outside (see
//! `trial.rs`).
//!
//! `make test` runs the short profile (20 trials from seed 1); `make chaos` runs 200 from a
//! fresh seed. Knobs (environment): `CHAOS_SEED` (first trial's seed; trial i uses seed+i),
//! `CHAOS_TRIALS`, `CHAOS_STEPS` (operations per trial, default 12), `CHAOS_PARALLEL`
//! (trials at once, default 3), `CHAOS_SHRINK=1` (reduce a failing trial to fewer
//! operations that still fail), `CHAOS_OPS` (replay one trial given as the JSON a failure
//! prints).

#[path = "../common/mod.rs"]
mod common;
mod ops;
mod proxy;
mod trial;

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use ops::{Op, Shape};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A trial as printed on failure and accepted by `CHAOS_OPS`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Replay {
    seed: u64,
    shape: Shape,
    ops: Vec<Op>,
}

struct Finished {
    replay: Replay,
    outcome: trial::Outcome,
}

async fn run(replay: Replay) -> Finished {
    let started = Instant::now();
    let outcome = trial::run(replay.seed, replay.shape, &replay.ops).await;
    println!(
        "trial seed={} {:?} replicas={} ops={} converged in {:.1}s, took {:.1}s: {}",
        replay.seed,
        replay.shape.provider,
        replay.shape.replicas,
        replay.ops.len(),
        outcome.convergence.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        if outcome.violations.is_empty() {
            "ok".to_owned()
        } else {
            format!("{} VIOLATIONS", outcome.violations.len())
        }
    );
    for violation in &outcome.violations {
        println!("  seed {}: {violation}", replay.seed);
    }
    Finished { replay, outcome }
}

/// Drops operations one at a time, keeping each drop after which the trial still fails.
async fn shrink(mut replay: Replay) -> Replay {
    let mut i = replay.ops.len();
    while i > 1 {
        i -= 1;
        let mut candidate = replay.clone();
        candidate.ops.remove(i);
        if !run(candidate.clone()).await.outcome.violations.is_empty() {
            replay = candidate;
        }
    }
    replay
}

fn trials() -> Vec<Replay> {
    if let Ok(json) = std::env::var("CHAOS_OPS") {
        let replay: Replay = serde_json::from_str(&json).expect("CHAOS_OPS is a printed trial");
        return vec![replay];
    }
    let seed = knob("CHAOS_SEED", 1);
    let steps = usize::try_from(knob("CHAOS_STEPS", 12)).unwrap_or(12);
    (0..knob("CHAOS_TRIALS", 20))
        .map(|i| {
            let seed = seed.wrapping_add(i);
            let (shape, ops) = ops::generate(seed, steps);
            Replay { seed, shape, ops }
        })
        .collect()
}

/// The checks can fail: an orphan made by stripping a finalizer and a secret planted in an
/// event are both reported.
#[tokio::test]
async fn the_invariant_checks_catch_planted_faults() {
    use ops::{Provider, Sabotage};
    let shape = Shape {
        provider: Provider::Datonis,
        replicas: 1,
    };
    // One resource only: a second Datonis one of the same role and validity, created after
    // the strip, would rightly adopt the orphan as the key of its own interrupted attempt.
    let ops = [
        Op::Apply(0),
        Op::Sabotage(Sabotage::StripFinalizer(0)),
        Op::Sabotage(Sabotage::LeakToEvent),
    ];
    let outcome = trial::run(0, shape, &ops).await;
    let found = |invariant: &str| outcome.violations.iter().any(|v| v.starts_with(invariant));
    assert!(
        found("I1") && found("I4") && found("I6"),
        "{:?}",
        outcome.violations
    );
    assert!(!found("I5"), "{:?}", outcome.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariants_hold_under_randomized_faults() {
    let parallel = usize::try_from(knob("CHAOS_PARALLEL", 3))
        .unwrap_or(3)
        .max(1);
    let trials = trials();
    let seed = knob("CHAOS_SEED", 1);
    let steps = knob("CHAOS_STEPS", 12);
    println!(
        "chaos campaign: {} trials of {steps} steps from seed {seed} (replay: make chaos SEED={seed} TRIALS={} STEPS={steps})",
        trials.len(),
        trials.len(),
    );
    let started = Instant::now();
    let finished: Vec<Finished> = futures::stream::iter(trials)
        .map(run)
        .buffer_unordered(parallel)
        .collect()
        .await;

    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    for f in &finished {
        for (kind, n) in &f.outcome.faults {
            *faults.entry(kind.clone()).or_default() += n;
        }
        if !f.outcome.violations.is_empty() {
            failed.push(f);
        }
    }
    let slowest = finished
        .iter()
        .max_by_key(|f| f.outcome.convergence)
        .map(|f| (f.replay.seed, f.outcome.convergence));
    println!("\n== chaos report ==");
    println!(
        "trials: {} in {:.0}s",
        finished.len(),
        started.elapsed().as_secs_f64()
    );
    println!("faults injected by kind:");
    for (kind, n) in &faults {
        println!("  {kind:<32} {n}");
    }
    if let Some((seed, took)) = slowest {
        println!(
            "slowest convergence: {:.1}s (seed {seed})",
            took.as_secs_f64()
        );
    }
    println!(
        "invariant violations: {}",
        failed
            .iter()
            .map(|f| f.outcome.violations.len())
            .sum::<usize>()
    );
    for f in &failed {
        println!("\n-- seed {} --", f.replay.seed);
        for v in &f.outcome.violations {
            println!("  {v}");
        }
        println!("  logs: {:?}", f.outcome.logs);
        println!(
            "  replay: make chaos SEED={} TRIALS=1 STEPS={}",
            f.replay.seed,
            f.replay.ops.len()
        );
        let replay = if knob("CHAOS_SHRINK", 0) == 1 {
            shrink(f.replay.clone()).await
        } else {
            f.replay.clone()
        };
        println!(
            "  reproduction ({} ops): CHAOS_OPS='{}'",
            replay.ops.len(),
            serde_json::to_string(&replay).unwrap_or_default()
        );
    }
    assert!(
        failed.is_empty(),
        "{} trial(s) broke an invariant (report above)",
        failed.len()
    );
}
