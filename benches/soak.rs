//! `make soak`: one operator holding `SOAK_N` keys for `SOAK_MINUTES` while the providers
//! fail a fixed share of their requests, to show that nothing accumulates over time. Prints
//! a table of samples, then each summary figure against its goal and one JSON line; exits
//! non-zero when a goal is missed (after printing everything).
//!
//! Set-up: half the keys at a ThreatWinds sandbox and half at a Datonis sandbox, each in
//! its own namespace, one operator (release build) watching both with a short
//! `--check-interval` (`SOAK_CHECK_SECS`, default 60 s) so that every key is checked at
//! its provider many times and the faults hit routine checks, not only the creates. Both
//! sandboxes answer every 1/`SOAK_FAULT_RATE`-th API request with a 503 from the start
//! (creates included) and add `SOAK_LATENCY_MS` to each. The ThreatWinds keys are verified
//! (the bench puts each emailed code in the key's code Secret), so both kinds reach `Ready`
//! and spend the soak in their steady state: one provider call per check, no Kubernetes
//! request when the check succeeds.
//!
//! Samples every `SOAK_SAMPLE_SECS` from the moment every key is Ready: operator RSS,
//! threads and open descriptors; per minute since the previous sample, its kube writes,
//! its other kube requests (watches left out: long-lived streams), its provider calls and
//! failed calls, its `ApiKeyPair` reconciles and failed reconciles, their mean duration,
//! and the 503s the sandboxes injected; and the keys whose `Ready` is True (listed from the
//! API server). The first `SOAK_WARMUP_MINUTES` are warm-up (allocator pools, caches and
//! connection pools fill, the first checks of every key run); the goals look at what
//! follows.
//!
//! Goals, and why these:
//! - RSS: the highest sample after warm-up is at most 10% above the first one after it
//!   (the "no growth beyond 10% after warm-up"; the peak, not the last sample, so
//!   growth that a late free hides still counts).
//! - No unbounded queues and bounded kube writes: work that piles up shows as rates that
//!   climb (retries of retries, requeues that never drain) or as checks that fall behind.
//!   The operator has no queue gauge, so each rate (kube writes, other kube requests,
//!   provider calls, reconciles) is compared between the first and the last third of the
//!   post-warm-up samples, by their medians: last ≤ 1.1 × first + 5/min. The 10% is the
//!   sampling noise of a 30 s window over checks spread by UID; the 5/min keeps a
//!   near-zero rate (e.g. kube reads) from failing on one request; the median keeps one
//!   burst from reading as a trend (a provider whose own credential check meets a fault
//!   turns not Ready for 15 s, and each change of its `Ready` wakes every key using it:
//!   a burst of cheap reconciles, printed as the highest sample). Checks keep up: provider
//!   `get`s per minute reach at least 90% of N / check interval.
//! - Kube writes per injected fault ≤ 4: a healthy check writes nothing (`make bench`
//!   holds that at 0), so every write of the soak is the answer to a fault: a failed check
//!   reports `Ready` False (a status write and a Warning event) and the retry about a
//!   second later sets it back (a status write): 3, with room for a fault that hits the
//!   retry or a provider's own check. A bound per fault rather than per minute makes the
//!   figure independent of N, the check interval and the fault rate.
//! - Converged: every key is Ready at the end. A failed check shows `Ready` False until
//!   its retry (by design, `Ready` reports the last failure), so a key caught between the
//!   two counts as Ready if it is Ready again within `SOAK_GRACE_SECS` (default 30; the
//!   faults stay on); the instant count and the lowest count of any post-warm-up sample
//!   are printed beside it.
//!
//! Knobs (environment): `SOAK_N` (1000), `SOAK_MINUTES` (10), `SOAK_WARMUP_MINUTES` (2,
//! at most half the soak), `SOAK_FAULT_RATE` (0.05), `SOAK_SAMPLE_SECS` (30),
//! `SOAK_CHECK_SECS` (60), `SOAK_LATENCY_MS` (10), `SOAK_GRACE_SECS` (30),
//! `SOAK_CONCURRENCY` (32), `SOAK_CLIENTS` (16, writers creating the keys).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use keypair_operator::crd::ApiKeyPair;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use support::{
    KUBE, Metrics, PROVIDER, RECONCILES, Report, Setup, create_key_pairs, knob, knob_f64,
    kube_by_verb, open_fds, proc_status, provider_setup, ready_true, rss_mb, sandbox_answers,
    sandbox_calls, scrape, wait_ready_endpoint,
};

const RECONCILE_SECONDS: &str = "keypair_operator_reconcile_duration_seconds";
const APIKEYPAIR: &str = "controller=\"apikeypair\"";

/// The soak's knobs, read once.
struct Knobs {
    n: usize,
    minutes: u64,
    warmup_secs: u64,
    fault_rate: f64,
    sample_secs: u64,
    check_secs: u64,
    latency_ms: u64,
    grace_secs: u64,
    concurrency: u64,
    clients: usize,
}

impl Knobs {
    fn read() -> Knobs {
        let minutes = knob("SOAK_MINUTES", 10).max(1);
        let warmup = knob("SOAK_WARMUP_MINUTES", 2) * 60;
        if warmup > minutes * 30 {
            eprintln!("warm-up cut to half the soak ({} s)", minutes * 30);
        }
        Knobs {
            n: knob("SOAK_N", 1000).max(2) as usize,
            minutes,
            warmup_secs: warmup.min(minutes * 30),
            fault_rate: knob_f64("SOAK_FAULT_RATE", 0.05).clamp(0.0, 1.0),
            sample_secs: knob("SOAK_SAMPLE_SECS", 30).max(1),
            check_secs: knob("SOAK_CHECK_SECS", 60).max(1),
            latency_ms: knob("SOAK_LATENCY_MS", 10),
            grace_secs: knob("SOAK_GRACE_SECS", 30),
            concurrency: knob("SOAK_CONCURRENCY", 32).clamp(1, 256),
            clients: knob("SOAK_CLIENTS", 16).max(1) as usize,
        }
    }
}

/// What one sample reads: the operator's counters (cumulative) and its process, the
/// sandboxes' answers (cumulative), and the keys Ready now.
struct Reading {
    at: Instant,
    metrics: Metrics,
    rss_mb: f64,
    threads: f64,
    fds: f64,
    sandbox_calls: f64,
    injected: f64,
    ready: usize,
}

/// One row of the sample table: the state at `secs`, and the rates per minute since the
/// sample before.
struct Sample {
    secs: f64,
    rss_mb: f64,
    threads: f64,
    fds: f64,
    ready: usize,
    kube_writes: f64,
    kube_reads: f64,
    provider_calls: f64,
    provider_failed: f64,
    checks: f64,
    reconciles: f64,
    reconciles_failed: f64,
    reconcile_ms: f64,
    injected: f64,
    sandbox_calls: f64,
}

/// Counters of one scrape the samples difference.
fn kube_reads(m: &Metrics) -> f64 {
    common::metric_total(m, KUBE, &[])
        - common::metric_total(m, KUBE, &["verb=\"watch\""])
        - common::kube_writes(m)
}

fn provider_failed(m: &Metrics) -> f64 {
    common::metric_total(m, PROVIDER, &[]) - common::metric_total(m, PROVIDER, &["status=\"ok\""])
}

impl Sample {
    fn between(start: Instant, before: &Reading, after: &Reading) -> Sample {
        let minutes = (after.at - before.at).as_secs_f64() / 60.0;
        let (b, a) = (&before.metrics, &after.metrics);
        let rate = |f: &dyn Fn(&Metrics) -> f64| (f(a) - f(b)) / minutes;
        let total = |metric: &'static str, with: &'static [&'static str]| {
            move |m: &Metrics| common::metric_total(m, metric, with)
        };
        let count = format!("{RECONCILE_SECONDS}_count");
        let sum = format!("{RECONCILE_SECONDS}_sum");
        let took = common::metric_total(a, &sum, &[APIKEYPAIR])
            - common::metric_total(b, &sum, &[APIKEYPAIR]);
        let ran = common::metric_total(a, &count, &[APIKEYPAIR])
            - common::metric_total(b, &count, &[APIKEYPAIR]);
        Sample {
            secs: (after.at - start).as_secs_f64(),
            rss_mb: after.rss_mb,
            threads: after.threads,
            fds: after.fds,
            ready: after.ready,
            kube_writes: rate(&common::kube_writes),
            kube_reads: rate(&kube_reads),
            provider_calls: rate(&total(PROVIDER, &[])),
            provider_failed: rate(&provider_failed),
            checks: rate(&total(PROVIDER, &["operation=\"get\""])),
            reconciles: rate(&total(RECONCILES, &[APIKEYPAIR])),
            reconciles_failed: rate(&total(RECONCILES, &[APIKEYPAIR, "result=\"error\""])),
            reconcile_ms: if ran > 0.0 { 1000.0 * took / ran } else { 0.0 },
            injected: (after.injected - before.injected) / minutes,
            sandbox_calls: (after.sandbox_calls - before.sandbox_calls) / minutes,
        }
    }

    fn print_header() {
        println!(
            "{:>6} {:>8} {:>5} {:>5} {:>6} | per minute: {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9}",
            "t(s)",
            "RSS(MB)",
            "thr",
            "fds",
            "ready",
            "kube_wr",
            "kube_rd",
            "prov_call",
            "prov_err",
            "checks",
            "reconcile",
            "rec_err",
            "rec_ms",
            "injected",
            "sandbox",
        );
    }

    fn print(&self) {
        println!(
            "{:>6.0} {:>8.1} {:>5.0} {:>5.0} {:>6} |             {:>8.1} {:>8.1} {:>9.1} {:>8.1} {:>8.1} {:>9.1} {:>8.1} {:>8.2} {:>8.1} {:>9.1}",
            self.secs,
            self.rss_mb,
            self.threads,
            self.fds,
            self.ready,
            self.kube_writes,
            self.kube_reads,
            self.provider_calls,
            self.provider_failed,
            self.checks,
            self.reconciles,
            self.reconciles_failed,
            self.reconcile_ms,
            self.injected,
            self.sandbox_calls,
        );
    }
}

/// Every `ApiKeyPair` in the soak's namespaces.
async fn list_all(client: &Client, namespaces: &[&str]) -> Vec<ApiKeyPair> {
    let mut all = Vec::new();
    for ns in namespaces {
        let api: Api<ApiKeyPair> = Api::namespaced(client.clone(), ns);
        match api.list(&ListParams::default()).await {
            Ok(list) => all.extend(list.items),
            Err(e) => eprintln!("list ApiKeyPairs in {ns}: {e}"),
        }
    }
    all
}

/// `namespace/name` of the keys whose `Ready` is True.
async fn ready_keys(client: &Client, namespaces: &[&str]) -> BTreeSet<String> {
    list_all(client, namespaces)
        .await
        .iter()
        .filter(|akp| ready_true(akp))
        .map(|akp| format!("{}/{}", akp.namespace().unwrap_or_default(), akp.name_any()))
        .collect()
}

async fn read(
    client: &Client,
    operator: &common::Operator,
    sandboxes: &[&Setup],
    namespaces: &[&str],
) -> Reading {
    let metrics = scrape(operator).await;
    let (mut calls, mut injected) = (0.0, 0.0);
    for setup in sandboxes {
        let stats = setup.sandbox.stats().await;
        calls += sandbox_calls(&stats);
        injected += sandbox_answers(&stats, |status| status == "503");
    }
    Reading {
        at: Instant::now(),
        metrics,
        rss_mb: rss_mb(operator),
        threads: proc_status(operator, "Threads"),
        fds: open_fds(operator),
        sandbox_calls: calls,
        injected,
        ready: ready_keys(client, namespaces).await.len(),
    }
}

/// Puts each ThreatWinds key's emailed code in its code Secret (`code-<name>`, which its
/// spec names) until every key of both namespaces is Ready or `timeout` passes; a key
/// whose code id changes (a code re-requested after a fault) gets the new code. Returns
/// the keys Ready.
async fn converge(
    client: &Client,
    tw: &Setup,
    namespaces: &[&str],
    n: usize,
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    let mut submitted: HashMap<String, String> = HashMap::new();
    loop {
        let all = list_all(client, namespaces).await;
        let ready = all.iter().filter(|akp| ready_true(akp)).count();
        if ready >= n || Instant::now() > deadline {
            return ready;
        }
        let waiting: Vec<(String, String)> = all
            .iter()
            .filter(|akp| akp.namespace().as_deref() == Some(tw.ns.as_str()))
            .filter_map(|akp| {
                let status = akp.status.as_ref()?;
                let code_id = status.verification_code_id.clone()?;
                (status.verified != Some(true) && submitted.get(&akp.name_any()) != Some(&code_id))
                    .then(|| (akp.name_any(), code_id))
            })
            .collect();
        if !waiting.is_empty() {
            let codes: HashMap<String, String> = tw
                .sandbox
                .outbox()
                .await
                .into_iter()
                .map(|m| (m.verification_code_id, m.code))
                .collect();
            let due: Vec<(String, String, String)> = waiting
                .into_iter()
                .filter_map(|(name, id)| codes.get(&id).map(|code| (name, id, code.clone())))
                .collect();
            futures::stream::iter(&due)
                .for_each_concurrent(16, |(name, _, code)| async move {
                    common::put_secret(client, &tw.ns, &format!("code-{name}"), &[("code", code)])
                        .await;
                })
                .await;
            submitted.extend(due.into_iter().map(|(name, id, _)| (name, id)));
        }
        eprintln!("{ready} of {n} keys Ready");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// A rate's median over the first and over the last third of the post-warm-up samples,
/// and the goal that the last stays within 10% (plus 5/min) of the first.
fn trend(report: &mut Report, what: &str, samples: &[&Sample], rate: fn(&Sample) -> f64) {
    let third = (samples.len() / 3).max(1);
    let first = median(samples.iter().take(third).map(|s| rate(s)));
    let last = median(samples.iter().rev().take(third).map(|s| rate(s)));
    report.add(format!("{what}/min, first third (median)"), first, "/min");
    report.goal(
        format!("{what}/min, last third (median)"),
        last,
        "/min",
        "<=",
        1.1 * first + 5.0,
    );
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries too: only `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the soak runs with `make soak`");
        return;
    }
    let k = Knobs::read();
    let client = common::client_with_crds().await;
    let mut report = Report::default();
    let n_tw = k.n / 2;
    let n_dt = k.n - n_tw;

    let tw = provider_setup(&client, "soak", true, k.latency_ms).await;
    let dt = provider_setup(&client, "soak", false, k.latency_ms).await;
    let faults =
        json!({"error_rate": k.fault_rate, "error_status": 503, "latency_ms": k.latency_ms});
    for setup in [&tw, &dt] {
        setup.sandbox.faults(faults.clone()).await;
    }
    let namespaces = [tw.ns.as_str(), dt.ns.as_str()];
    let mut operator = common::Operator::start(
        &namespaces.join(","),
        &[
            "--check-interval",
            &format!("{}s", k.check_secs),
            "--concurrency",
            &k.concurrency.to_string(),
        ],
        &[],
    )
    .await;
    wait_ready_endpoint(&operator, Duration::from_secs(60)).await;
    eprintln!(
        "creating {n_tw} ThreatWinds keys in {} and {n_dt} Datonis keys in {}, faults {faults}",
        tw.ns, dt.ns
    );
    let created = Instant::now();
    let tw_spec = |name: &str| {
        let mut spec = tw.spec.clone();
        spec["verification"] =
            json!({"codeSecretRef": {"name": format!("code-{name}"), "key": "code"}});
        spec
    };
    let dt_spec = |_: &str| dt.spec.clone();
    let applied_tw = create_key_pairs(&client, &tw.ns, n_tw, k.clients, &tw_spec).await;
    let applied_dt = create_key_pairs(&client, &dt.ns, n_dt, k.clients, &dt_spec).await;
    let applied = applied_tw.len() + applied_dt.len();
    let converge_timeout = Duration::from_secs(180 + k.n as u64 / 2);
    let ready = converge(&client, &tw, &namespaces, applied, converge_timeout).await;
    report.add("keys created", applied as f64, "keys");
    // Every ClusterKeyPairProvider in the cluster is checked by this operator too: ones a
    // crashed test left behind, with their sandboxes gone, add failed provider calls and
    // credential Secret reads to the figures below.
    let strangers: Api<keypair_operator::crd::ClusterKeyPairProvider> = Api::all(client.clone());
    let strangers = strangers
        .list(&ListParams::default())
        .await
        .map_or(0, |l| l.items.len());
    report.add(
        "ClusterKeyPairProviders in the cluster (not the soak's)",
        strangers as f64,
        "",
    );
    report.goal(
        "keys Ready before the soak",
        ready as f64,
        "keys",
        ">=",
        k.n as f64,
    );
    report.add(
        "create to all Ready (under faults)",
        created.elapsed().as_secs_f64(),
        "s",
    );
    report.add("RSS when all Ready", rss_mb(&operator), "MB");

    eprintln!(
        "soak: {} min ({} s warm-up), a sample every {} s",
        k.minutes, k.warmup_secs, k.sample_secs
    );
    let sandboxes = [&tw, &dt];
    let start = Instant::now();
    let first = read(&client, &operator, &sandboxes, &namespaces).await;
    let soak_started = first.metrics.clone();
    let mut previous = first;
    let mut samples: Vec<Sample> = Vec::new();
    let mut warm: Option<Metrics> = None;
    Sample::print_header();
    let rounds = k.minutes * 60 / k.sample_secs;
    for round in 1..=rounds {
        tokio::time::sleep_until((start + Duration::from_secs(round * k.sample_secs)).into()).await;
        let reading = read(&client, &operator, &sandboxes, &namespaces).await;
        let sample = Sample::between(start, &previous, &reading);
        sample.print();
        if warm.is_none() && sample.secs + 1.0 >= k.warmup_secs as f64 {
            warm = Some(reading.metrics.clone());
        }
        samples.push(sample);
        previous = reading;
    }
    let soak_secs = start.elapsed().as_secs_f64();
    let last_metrics = previous.metrics.clone();

    // Converged at the end: Ready now, or Ready again within the grace period.
    let mut converged = ready_keys(&client, &namespaces).await;
    let ready_at_end = converged.len();
    let grace_end = Instant::now() + Duration::from_secs(k.grace_secs);
    while converged.len() < k.n && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_secs(2)).await;
        converged.extend(ready_keys(&client, &namespaces).await);
    }

    // Post-warm-up samples: those whose interval starts at or after the warm-up.
    let warmup = k.warmup_secs as f64;
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.secs - k.sample_secs as f64 + 1.0 >= warmup)
        .collect();
    let baseline = samples
        .iter()
        .find(|s| s.secs + 1.0 >= warmup)
        .map_or(f64::NAN, |s| s.rss_mb);
    let peak = after
        .iter()
        .map(|s| s.rss_mb)
        .fold(f64::NAN, f64::max)
        .max(baseline);
    let end = samples.last().map_or(f64::NAN, |s| s.rss_mb);
    report.add("RSS after warm-up (baseline)", baseline, "MB");
    report.add("RSS peak after warm-up", peak, "MB");
    report.add("RSS at end", end, "MB");
    report.goal(
        "RSS growth after warm-up (peak vs baseline)",
        100.0 * (peak - baseline) / baseline,
        "%",
        "<=",
        10.0,
    );
    report.add(
        "RSS growth after warm-up (end vs baseline)",
        100.0 * (end - baseline) / baseline,
        "%",
    );
    let at_warmup = samples.iter().find(|s| s.secs + 1.0 >= warmup);
    if let (Some(w), Some(e)) = (at_warmup, samples.last()) {
        report.add(
            "threads after warm-up -> end",
            e.threads - w.threads,
            "threads",
        );
        report.add("open fds after warm-up -> end", e.fds - w.fds, "fds");
    }

    trend(&mut report, "kube writes", &after, |s| s.kube_writes);
    trend(&mut report, "kube reads", &after, |s| s.kube_reads);
    trend(&mut report, "provider calls", &after, |s| s.provider_calls);
    trend(&mut report, "reconciles", &after, |s| s.reconciles);
    report.add(
        "reconciles/min, highest sample after warm-up",
        after.iter().map(|s| s.reconciles).fold(f64::NAN, f64::max),
        "/min",
    );
    let expected_checks = k.n as f64 * 60.0 / k.check_secs as f64;
    report.add(
        "expected checks (N / check interval)",
        expected_checks,
        "/min",
    );
    report.goal(
        "provider gets / expected checks, after warm-up",
        mean(after.iter().map(|s| s.checks)) / expected_checks,
        "ratio",
        ">=",
        0.9,
    );
    report.add(
        "failed reconciles after warm-up",
        mean(after.iter().map(|s| s.reconciles_failed)),
        "/min",
    );
    report.add(
        "mean reconcile duration after warm-up",
        mean(after.iter().map(|s| s.reconcile_ms)),
        "ms",
    );

    let warm = warm.unwrap_or_else(|| soak_started.clone());
    let warm_minutes = (soak_secs - warmup).max(1.0) / 60.0;
    let injected = mean(after.iter().map(|s| s.injected)) * warm_minutes;
    let writes = common::kube_writes(&last_metrics) - common::kube_writes(&warm);
    report.add("injected 503s after warm-up", injected, "req");
    report.add(
        "injected 503s / sandbox requests after warm-up",
        injected / (mean(after.iter().map(|s| s.sandbox_calls)) * warm_minutes),
        "ratio",
    );
    report.add("kube writes after warm-up", writes, "req");
    report.goal(
        "kube writes per injected fault after warm-up",
        writes / injected.max(1.0),
        "req",
        "<=",
        4.0,
    );
    report.add(
        "kube writes per key check after warm-up",
        writes / (expected_checks * warm_minutes),
        "req",
    );
    let by_verb: BTreeMap<String, f64> = kube_by_verb(&warm, &last_metrics);
    for (verb, count) in by_verb.iter().filter(|(v, _)| !v.starts_with("watch ")) {
        report.add(
            format!("after warm-up: {verb}"),
            count / warm_minutes,
            "/min",
        );
    }
    let provider = |m: &Metrics| common::by_labels(m, PROVIDER, &["operation", "status"]);
    let by_outcome = common::grown(&provider(&warm), &provider(&last_metrics));
    for (call, count) in by_outcome {
        report.add(
            format!("after warm-up: provider {call}"),
            count / warm_minutes,
            "/min",
        );
    }

    report.add("keys Ready at the last sample", ready_at_end as f64, "keys");
    report.add(
        "fewest keys Ready in a sample after warm-up",
        after.iter().map(|s| s.ready).min().unwrap_or(0) as f64,
        "keys",
    );
    report.goal(
        format!("keys Ready at end (or within {} s)", k.grace_secs),
        converged.len() as f64,
        "keys",
        ">=",
        k.n as f64,
    );
    report.print();

    operator.stop().await;
    for ns in namespaces {
        support::delete_namespace(&client, ns).await;
    }
    let missed = report.missed();
    if !missed.is_empty() {
        eprintln!("goals missed: {}", missed.join("; "));
        std::process::exit(1);
    }
}
