//! `make bench`: the operator at scale against the local control plane and the sandboxes.
//! Prints one table (each figure against its goal) and one JSON line.
//!
//! Figures: the apiserver's own create ceiling C for ~1 KB objects (the physical limit
//! here); what each request of a created key costs the apiserver's CPU, with the
//! `ApiKeyPair`s' own create ceiling and the floor per key those costs add up to; for
//! each provider, throughput to Ready for `BENCH_N` `ApiKeyPair`s and its ratio to C,
//! p50/p99 apply→Ready, kube and provider requests per created object; RSS idle, at
//! N keys, and after `BENCH_UNRELATED` unrelated 100 KB Secrets; kube and provider requests
//! per idle check during a `BENCH_IDLE_SECS` window with a short check interval; after a
//! kill -9 and restart, the time to ready, writes, and the provider calls in the first
//! `BENCH_RESTART_SECS` beside those of the same window just before (each key is checked
//! once per interval, restart or not; the goal holds what the restart adds); and under a
//! provider rate limit R, requests sent / R.
//!
//! Knobs (environment): `BENCH_N` (default 1000), `BENCH_UNRELATED` (default 1000),
//! `BENCH_IDLE_SECS` (60), `BENCH_RESTART_SECS` (60), `BENCH_LATENCY_MS` (10),
//! `BENCH_RATE` (R, default 20 requests/s), `BENCH_CLIENTS` (16), `BENCH_CONCURRENCY`
//! (the operator's `--concurrency` for the bursts, 32); `BENCH_BURSTS_ONLY` (set: stop
//! after C and the two bursts, for quick comparisons); `BENCH_DT_FINGERPRINTS` (1: every
//! Datonis key shares one fingerprint, so their creates are serialized); `KPO_WRAP` runs each
//! operator through a wrapper, e.g. `KPO_WRAP="benches/heaptrack-exec /tmp/hp"` profiles
//! its heap (see that script).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use keypair_operator::crd::ApiKeyPair;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::ListSemantic;
use serde_json::json;

use support::{
    KUBE, PROVIDER, Report, Setup, apiserver_cpu_seconds, create_key_pairs, delete_namespace, knob,
    kube_by_verb, percentile, proc_status, provider_setup, rss_anon_mb, rss_mb, sandbox_calls,
    scrape, wait_all_ready, wait_ready_endpoint,
};

/// Runs `request(i)` for i in 0..count, `clients` at a time: requests per second, and the
/// API server's CPU seconds per request.
async fn timed<F, Fut>(count: usize, clients: usize, request: F) -> (f64, f64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let cpu_before = apiserver_cpu_seconds();
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(clients, request)
        .await;
    let cpu = (apiserver_cpu_seconds() - cpu_before) / count as f64;
    (count as f64 / started.elapsed().as_secs_f64(), cpu)
}

/// The apiserver's own create ceiling: `clients` writers creating ~1 KB ConfigMaps.
async fn create_ceiling(client: &Client, ns: &str, count: usize, clients: usize) -> (f64, f64) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let payload = "x".repeat(1000);
    timed(count, clients, |i| {
        let (api, payload) = (api.clone(), payload.clone());
        async move {
            let object: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("c-{i}")}, "data": {"payload": payload}}),
            )
            .expect("configmap");
            let _ = api.create(&PostParams::default(), &object).await;
        }
    })
    .await
}

/// A Ready Datonis key's status, as the operator writes it.
fn ready_status(name: &str) -> serde_json::Value {
    use keypair_operator::conditions::{READY, reason, status};
    let ready = json!({"type": READY, "status": status::TRUE, "reason": reason::READY,
        "observedGeneration": 1, "lastTransitionTime": "2026-12-01T00:00:00Z",
        "message": format!("key pair {name} is at the provider and in its Secret")});
    json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair", "status": {
        "observedGeneration": 1,
        "conditions": [ready],
        "keyID": format!("{name}-0123456789abcdef"), "apiKey": format!("ak-{name}-0123456789"),
        "keyName": name, "expireAt": "2027-01-01T00:00:00Z", "enabled": true,
        "roleKey": "role", "validityDays": 30, "secretName": name,
        "providerRef": {"kind": "KeyPairProvider", "name": "dt"},
        "secretKeys": {"apiKey": "apiKey", "apiSecret": "apiSecret"},
        "renewalTime": "2026-12-25T00:00:00Z"}})
}

/// What each request a created key costs the API server's CPU, with no operator running
/// (so no watcher of these objects but the API server's own controllers), on `count`
/// key pairs: the user's create, the finalizer, a status apply, the Secret's apply and
/// the event. Every key needs its create, so the create rate is a ceiling no operator
/// passes; and the sum, with the status applied twice as the operator does, is the API
/// server's floor per created key. A refused request stops the bench (its cost would be
/// a refusal's). Returns the create rate.
async fn key_pair_request_costs(
    client: &Client,
    report: &mut Report,
    count: usize,
    clients: usize,
) -> f64 {
    let ns = common::test_namespace(client, "bench-kp-ceiling").await;
    let key_pairs: Api<ApiKeyPair> = Api::namespaced(client.clone(), &ns);
    let (secrets, events) = (
        Api::<Secret>::namespaced(client.clone(), &ns),
        Api::<Event>::namespaced(client.clone(), &ns),
    );
    let apply = PatchParams::apply("bench").force();
    let name = |i: usize| format!("k-{i}");
    let spec = |_: &str| json!({"providerRef": {"kind": "KeyPairProvider", "name": "dt"}});
    let started = Instant::now();
    let cpu_before = apiserver_cpu_seconds();
    let created = create_key_pairs(client, &ns, count, clients, &spec)
        .await
        .len();
    let create = (apiserver_cpu_seconds() - cpu_before) / created.max(1) as f64;
    let rate = created as f64 / started.elapsed().as_secs_f64();
    let finalizer = json!({"metadata": {"finalizers": ["keypairs.dev/cleanup"]}});
    let (_, finalize) = timed(count, clients, |i| {
        let (api, patch) = (key_pairs.clone(), &finalizer);
        async move {
            api.patch(&name(i), &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("finalizer patch");
        }
    })
    .await;
    let (_, status) = timed(count, clients, |i| {
        let (api, apply) = (key_pairs.clone(), &apply);
        async move {
            let status = Patch::Apply(ready_status(&name(i)));
            api.patch_status(&name(i), apply, &status)
                .await
                .expect("status apply");
        }
    })
    .await;
    let (_, secret) = timed(count, clients, |i| {
        let (api, apply) = (secrets.clone(), &apply);
        async move {
            let secret = json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name(i), "labels": {"app.kubernetes.io/managed-by": "bench"}},
                "data": {"apiKey": "YWJj", "apiSecret": "ZGVm"}});
            api.patch(&name(i), apply, &Patch::Apply(secret))
                .await
                .expect("Secret apply");
        }
    })
    .await;
    let (_, event) = timed(count, clients, |i| {
        let (api, ns) = (events.clone(), &ns);
        async move {
            let event: Event = serde_json::from_value(json!({
                "metadata": {"name": format!("e-{i}")}, "type": "Normal", "reason": "Created",
                "message": "created the key pair",
                "involvedObject": {"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
                    "name": name(i), "namespace": ns}}))
            .expect("event");
            api.create(&PostParams::default(), &event)
                .await
                .expect("event create");
        }
    })
    .await;
    delete_namespace(client, &ns).await;
    report.add(
        "C for ApiKeyPairs: their own create ceiling (no operator)",
        rate,
        "/s",
    );
    for (request, cpu) in [
        ("ApiKeyPair create", create),
        ("ApiKeyPair finalizer patch", finalize),
        ("ApiKeyPair status apply (a Ready key's)", status),
        ("Secret apply", secret),
        ("Event create", event),
    ] {
        report.add(format!("apiserver CPU per {request}"), cpu * 1000.0, "ms");
    }
    let floor = create + finalize + 2.0 * status + secret + event;
    report.add(
        "apiserver CPU floor per created key (its requests, no watcher)",
        floor * 1000.0,
        "ms",
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    report.add(
        "to-Ready bound from that floor (cores / floor)",
        cores / floor,
        "/s",
    );
    rate
}

/// Creates N keys at one provider and reports throughput, latency and requests per object.
async fn creates(
    client: &Client,
    report: &mut Report,
    threatwinds: bool,
    (ceiling, key_pair_ceiling): (f64, f64),
) -> (Setup, common::Operator) {
    let (n, clients) = (
        knob("BENCH_N", 1000) as usize,
        knob("BENCH_CLIENTS", 16) as usize,
    );
    let kind = if threatwinds {
        "threatwinds"
    } else {
        "datonis"
    };
    let setup = provider_setup(client, "bench", threatwinds, knob("BENCH_LATENCY_MS", 10)).await;
    let concurrency = knob("BENCH_CONCURRENCY", 32).to_string();
    let operator = common::Operator::start(&setup.ns, &["--concurrency", &concurrency], &[]).await;
    wait_ready_endpoint(&operator, Duration::from_secs(60)).await;
    if threatwinds {
        report.goal("RSS idle", rss_mb(&operator), "MB", "<=", 15.0);
        report.add("RSS idle, anonymous part", rss_anon_mb(&operator), "MB");
    }
    let before = scrape(&operator).await;
    let cpu_before = apiserver_cpu_seconds();
    let started = Instant::now();
    let spec = |name: &str| spec_of(&setup, threatwinds, name);
    let applied = create_key_pairs(client, &setup.ns, n, clients, &spec).await;
    let timeout = Duration::from_secs(120 + n as u64 / 2);
    let (latencies, last) = wait_all_ready(client, &setup.ns, &applied, setup.ready, timeout).await;
    let rate = latencies.len() as f64 / (last - started).as_secs_f64();
    let cpu = (apiserver_cpu_seconds() - cpu_before) / n as f64;
    // Let the follow-up reconciles of the last keys finish before counting, and the
    // operator give its free heap pages back once since (as it does every interval).
    let settle = (Duration::from_secs(1) + keypair_operator::memory::TRIM_INTERVAL)
        .max(Duration::from_secs(5));
    tokio::time::sleep(settle).await;
    let after = scrape(&operator).await;
    let per_object = |m: &str| {
        (common::metric_total(&after, m, &[]) - common::metric_total(&before, m, &[])) / n as f64
    };
    report.add(format!("{kind} keys ready"), latencies.len() as f64, "keys");
    if !threatwinds {
        let fingerprints = knob("BENCH_DT_FINGERPRINTS", 1).max(1) as f64;
        report.add(
            "datonis fingerprints (parallel create lanes)",
            fingerprints,
            "",
        );
    }
    report.goal(
        format!("{kind} to-Ready rate"),
        rate,
        "/s",
        ">=",
        0.8 * ceiling / 5.0,
    );
    report.add(format!("{kind} to-Ready rate / C"), rate / ceiling, "ratio");
    report.add(
        format!("{kind} to-Ready rate / C for ApiKeyPairs"),
        rate / key_pair_ceiling,
        "ratio",
    );
    // The API server's CPU per created object (the user's create and the operator's
    // requests), to set beside what one 1 KB ConfigMap create costs it (C's phase).
    report.add(
        format!("{kind} apiserver CPU per created object"),
        cpu * 1000.0,
        "ms",
    );
    // The most this API server could do with every core of the machine to itself.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    report.add(
        format!("{kind} to-Ready rate / (cores / apiserver CPU per object)"),
        rate * cpu / cores,
        "ratio",
    );
    report.add(
        format!("{kind} p50 apply->Ready"),
        percentile(&latencies, 0.5),
        "s",
    );
    report.add(
        format!("{kind} p99 apply->Ready"),
        percentile(&latencies, 0.99),
        "s",
    );
    // Watches are long-lived streams, renewed every few minutes whatever the load: listed
    // by verb below, but not a cost of each object (as in the e2e test of this figure).
    let requests: f64 = kube_by_verb(&before, &after)
        .iter()
        .filter(|(verb, _)| !verb.starts_with("watch "))
        .map(|(_, count)| count)
        .sum();
    report.goal(
        format!("{kind} kube requests per created object"),
        requests / n as f64,
        "req",
        "<=",
        5.0,
    );
    report.add(
        format!("{kind} provider requests per created object"),
        per_object(PROVIDER),
        "req",
    );
    // Where a create's time goes: how long a reconcile takes, and how many there are.
    let apikeypair = ["controller=\"apikeypair\""];
    let grown = |m: &str| {
        common::metric_total(&after, m, &apikeypair) - common::metric_total(&before, m, &apikeypair)
    };
    let reconciles = grown("keypair_operator_reconcile_duration_seconds_count");
    report.add(
        format!("{kind} mean reconcile duration"),
        grown("keypair_operator_reconcile_duration_seconds_sum") / reconciles.max(1.0),
        "s",
    );
    report.add(
        format!("{kind} reconciles per created object"),
        reconciles / n as f64,
        "runs",
    );
    for (verb, count) in kube_by_verb(&before, &after) {
        report.add(
            format!("{kind} per object: {verb}"),
            count / n as f64,
            "req",
        );
    }
    // A scrape builds the whole exposition (five series per key) at once: what that costs
    // is shown apart, and the settled figure is read once the operator gave the pages back.
    report.add(
        format!("RSS at {n} {kind} keys, just after a /metrics scrape"),
        rss_mb(&operator),
        "MB",
    );
    tokio::time::sleep(settle).await;
    report.goal(
        format!("RSS at {n} {kind} keys"),
        rss_mb(&operator),
        "MB",
        "<=",
        if n <= 1000 { 25.0 } else { 60.0 },
    );
    report.add(
        format!("RSS at {n} {kind} keys, anonymous part"),
        rss_anon_mb(&operator),
        "MB",
    );
    (setup, operator)
}

/// The spec of Datonis key `k-<i>`: with `BENCH_DT_FINGERPRINTS` = F > 1, spread over F
/// validities 3 days apart, so F fingerprints (role, expiry date ±1 day) whose creates may
/// run in parallel; by default one, whose creates are serialized (recovery could not tell
/// their keys apart).
fn spec_of(setup: &Setup, threatwinds: bool, name: &str) -> serde_json::Value {
    let fingerprints = knob("BENCH_DT_FINGERPRINTS", 1).max(1);
    let index: u64 = name.trim_start_matches("k-").parse().unwrap_or(0);
    let mut spec = setup.spec.clone();
    if !threatwinds && fingerprints > 1 {
        spec["validityDays"] = json!(90 + 3 * (index % fingerprints));
    }
    spec
}

/// One more key, created when the operator is idle: apply→Ready.
async fn idle_latency(client: &Client, report: &mut Report, setup: &Setup) {
    let api: Api<ApiKeyPair> = Api::namespaced(client.clone(), &setup.ns);
    let object: ApiKeyPair = serde_json::from_value(json!({
        "apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
        "metadata": {"name": "idle-probe"}, "spec": setup.spec}))
    .expect("key pair");
    let at = Instant::now();
    let _ = api.create(&PostParams::default(), &object).await;
    let one: HashMap<String, Instant> = [("idle-probe".to_owned(), at)].into();
    let (latencies, _) = wait_all_ready(
        client,
        &setup.ns,
        &one,
        setup.ready,
        Duration::from_secs(60),
    )
    .await;
    report.goal(
        "apply->Ready when idle (p99 of one)",
        percentile(&latencies, 0.99),
        "s",
        "<=",
        1.0,
    );
}

/// A window with a short check interval: requests per key check.
async fn idle_checks(report: &mut Report, setup: &Setup, keys: usize) {
    let secs = knob("BENCH_IDLE_SECS", 60);
    let interval = (secs / 3).max(5);
    // Without the provider controllers: their cost is per provider (and per
    // ClusterKeyPairProvider anywhere in the cluster), not per key check.
    let mut operator = common::Operator::start(
        &setup.ns,
        &[
            "--check-interval",
            &format!("{interval}s"),
            "--concurrency",
            "32",
            "--manage-providers",
            "false",
        ],
        &[],
    )
    .await;
    wait_ready_endpoint(&operator, Duration::from_secs(120)).await;
    // The initial pass is not idle: wait one interval, then measure.
    tokio::time::sleep(Duration::from_secs(interval)).await;
    let before = scrape(&operator).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = scrape(&operator).await;
    operator.stop().await;
    let checks = (common::metric_total(&after, PROVIDER, &[])
        - common::metric_total(&before, PROVIDER, &[]))
    .max(1.0);
    let kube = common::metric_total(&after, KUBE, &[]) - common::metric_total(&before, KUBE, &[]);
    report.add("idle window checks (provider calls)", checks, "calls");
    report.add(
        "idle window expected checks",
        (keys as u64 * secs / interval) as f64,
        "checks",
    );
    report.goal(
        "kube requests per idle check",
        kube / checks,
        "req",
        "<=",
        0.0,
    );
    for (verb, count) in kube_by_verb(&before, &after) {
        report.add(format!("idle window: {verb}"), count, "req");
    }
}

/// kill -9 and restart: time to ready, writes and provider calls in the first window.
async fn restart(
    client: &Client,
    report: &mut Report,
    setup: &Setup,
    operator: &mut common::Operator,
    keys: usize,
) {
    let secs = knob("BENCH_RESTART_SECS", 60);
    // The same window without a restart, just before it: each key is checked at its own
    // slot once per interval, so any window costs about N × window / interval calls (1.67 %
    // of N per minute at the default 1 h), restart or not. The restart's share is the
    // difference.
    let steady_start = setup.sandbox.stats().await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let steady = sandbox_calls(&setup.sandbox.stats().await) - sandbox_calls(&steady_start);
    operator.stop().await;
    report.add(
        format!("restart: one paged list of the {keys} ApiKeyPairs alone"),
        list_time(client, &setup.ns, ListSemantic::MostRecent)
            .await
            .as_secs_f64(),
        "s",
    );
    // How the operator lists them: from the API server's watch cache, which serves only
    // an unpaged list (`resourceVersion=0`, no limit), one response decoded at once.
    report.add(
        format!("restart: one unpaged list of the {keys} ApiKeyPairs from the watch cache alone"),
        list_time(client, &setup.ns, ListSemantic::Any)
            .await
            .as_secs_f64(),
        "s",
    );
    let sandbox_before = setup.sandbox.stats().await;
    let started = Instant::now();
    operator.restart_with(&[]).await;
    let ready = wait_ready_endpoint(operator, Duration::from_secs(120)).await;
    let left = Duration::from_secs(secs).saturating_sub(started.elapsed());
    tokio::time::sleep(left).await;
    // Read before the scrape below, which builds the whole exposition at once (its cost is
    // a figure of the bursts).
    let (peak, settled) = (proc_status(operator, "VmHWM") / 1024.0, rss_mb(operator));
    let after = scrape(operator).await;
    let sandbox_after = setup.sandbox.stats().await;
    let calls = sandbox_calls(&sandbox_after) - sandbox_calls(&sandbox_before);
    report.goal(
        format!("restart at {keys} keys: time to ready"),
        ready.as_secs_f64(),
        "s",
        "<=",
        5.0,
    );
    // A restart lists every object again (the key pairs in one response, the Secrets in
    // pages): the most the operator held meanwhile, and what it holds once the window is
    // over.
    report.add(format!("restart at {keys} keys: peak RSS"), peak, "MB");
    report.goal(
        format!("RSS at {keys} keys after the restart"),
        settled,
        "MB",
        "<=",
        60.0,
    );
    report.goal(
        "restart: kube writes in the first window",
        common::kube_writes(&after),
        "req",
        "<=",
        0.0,
    );
    report.add(
        "restart: provider calls in the first window / N",
        calls / keys as f64,
        "ratio",
    );
    report.add(
        "restart: provider calls in the window before it / N",
        steady / keys as f64,
        "ratio",
    );
    report.goal(
        "restart: provider calls it adds in its first window / N",
        (calls - steady) / keys as f64,
        "ratio",
        "<=",
        0.01,
    );
}

/// How long listing every `ApiKeyPair` in `ns` takes: `MostRecent` in pages of 500 from
/// etcd (as the operator's watches list Secrets, and listed key pairs before); `Any`
/// unpaged from the API server's watch cache, as its key-pair watch lists.
async fn list_time(client: &Client, ns: &str, semantic: ListSemantic) -> Duration {
    let api: Api<ApiKeyPair> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut params = match semantic {
        ListSemantic::MostRecent => kube::api::ListParams::default().limit(500),
        ListSemantic::Any => kube::api::ListParams::default().match_any(),
    };
    loop {
        let page = api.list(&params).await.expect("list ApiKeyPairs");
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    started.elapsed()
}

/// Unrelated 100 KB Secrets in the watched namespace: what they cost the operator.
async fn unrelated_secrets(
    client: &Client,
    report: &mut Report,
    setup: &Setup,
    operator: &common::Operator,
) {
    let count = knob("BENCH_UNRELATED", 1000) as usize;
    let before = rss_mb(operator);
    let api: Api<Secret> = Api::namespaced(client.clone(), &setup.ns);
    let payload = k8s_openapi::ByteString(vec![b'u'; 100 * 1024]);
    futures::stream::iter(0..count)
        .for_each_concurrent(16, |i| {
            let (api, payload) = (api.clone(), payload.clone());
            async move {
                let mut secret = Secret::default();
                secret.metadata.name = Some(format!("unrelated-{i}"));
                secret.data = Some([("blob".to_owned(), payload)].into());
                let _ = api.create(&PostParams::default(), &secret).await;
            }
        })
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    report.goal(
        format!("RSS added by {count} unrelated 100 KB Secrets"),
        rss_mb(operator) - before,
        "MB",
        "<=",
        5.0,
    );
}

/// Under a provider rate limit R: requests sent / (R × seconds), and refusals; with the
/// limit declared in the provider's `spec.rateLimit` (the goal), and without (the
/// operator only learns it from 429s and their `Retry-After`).
async fn rate_limited(client: &Client, report: &mut Report, declared: bool) {
    let rate = knob("BENCH_RATE", 20) as f64;
    let setup = provider_setup(client, "bench", false, 0).await;
    setup.sandbox.faults(json!({"rate_limit_rps": rate})).await;
    if declared {
        let mut spec = setup.provider_spec.clone();
        spec["rateLimit"] = json!({"requestsPerSecond": rate, "burst": rate as u64});
        let provider = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider",
            "metadata": {"name": "p"}, "spec": spec});
        common::apply_json::<keypair_operator::crd::KeyPairProvider>(
            client,
            Some(&setup.ns),
            provider,
        )
        .await;
    }
    let mut operator = common::Operator::start(&setup.ns, &["--concurrency", "32"], &[]).await;
    wait_ready_endpoint(&operator, Duration::from_secs(60)).await;
    let count = (rate as usize * 15).max(50);
    let before = setup.sandbox.stats().await;
    let started = Instant::now();
    let applied = create_key_pairs(client, &setup.ns, count, 16, &|_| setup.spec.clone()).await;
    let (ready, _) = wait_all_ready(
        client,
        &setup.ns,
        &applied,
        setup.ready,
        Duration::from_secs(300),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    let after = setup.sandbox.stats().await;
    operator.stop().await;
    delete_namespace(client, &setup.ns).await;
    let sent = sandbox_calls(&after) - sandbox_calls(&before);
    let refused = refusals(&after) - refusals(&before);
    let how = if declared { "declared" } else { "undeclared" };
    report.add(
        format!("rate limit R, {how} ({count} keys, {} ready)", ready.len()),
        rate,
        "/s",
    );
    let ratio = sent / (rate * secs);
    if declared {
        report.goal(
            format!("rate limit {how}: sent / (R x duration)"),
            ratio,
            "ratio",
            "<=",
            1.1,
        );
    } else {
        report.add(
            format!("rate limit {how}: sent / (R x duration)"),
            ratio,
            "ratio",
        );
    }
    report.add(
        format!("rate limit {how}: refused (429 with Retry-After)"),
        refused,
        "req",
    );
}

/// Deletes the ConfigMaps C was measured with, and their namespace.
async fn delete_ceiling_namespace(client: &Client, ns: &str) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    support::delete_every(&config_maps, &format!("the ConfigMaps of {ns}")).await;
    delete_namespace(client, ns).await;
}

fn refusals(stats: &serde_json::Value) -> f64 {
    stats
        .as_object()
        .map(|endpoints| {
            endpoints
                .values()
                .flat_map(|by_status| by_status.as_object().into_iter().flatten())
                .filter(|(status, _)| status.as_str() == "429" || status.as_str() == "403")
                .filter_map(|(_, v)| v.as_f64())
                .sum()
        })
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries too: only `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the scale benchmark runs with `make bench`");
        return;
    }
    let client = common::client_with_crds().await;
    let mut report = Report::default();
    let n = knob("BENCH_N", 1000) as usize;
    let clients = knob("BENCH_CLIENTS", 16) as usize;
    let ceiling_ns = common::test_namespace(&client, "bench-ceiling").await;
    let (ceiling, ceiling_cpu) = create_ceiling(&client, &ceiling_ns, n.max(500), clients).await;
    delete_ceiling_namespace(&client, &ceiling_ns).await;
    report.add("C: apiserver create ceiling (1 KB objects)", ceiling, "/s");
    report.add(
        "apiserver CPU per 1 KB ConfigMap create (C's phase)",
        ceiling_cpu * 1000.0,
        "ms",
    );
    let key_pair_ceiling =
        key_pair_request_costs(&client, &mut report, n.clamp(500, 2000), clients).await;
    let ceilings = (ceiling, key_pair_ceiling);
    eprintln!("C = {ceiling:.1}/s; creating {n} ThreatWinds keys");
    let (tw, mut tw_operator) = creates(&client, &mut report, true, ceilings).await;
    tw_operator.stop().await;
    // Each phase's objects go once it is measured: left behind, every later list the API
    // server serves (and a control plane reused for another run) pays for them.
    delete_namespace(&client, &tw.ns).await;
    eprintln!("creating {n} Datonis keys");
    let (dt, mut dt_operator) = creates(&client, &mut report, false, ceilings).await;
    if std::env::var_os("BENCH_BURSTS_ONLY").is_some() {
        dt_operator.stop().await;
        delete_namespace(&client, &dt.ns).await;
        report.print();
        return;
    }
    idle_latency(&client, &mut report, &dt).await;
    eprintln!("restart");
    restart(&client, &mut report, &dt, &mut dt_operator, n).await;
    eprintln!("unrelated Secrets");
    unrelated_secrets(&client, &mut report, &dt, &dt_operator).await;
    dt_operator.stop().await;
    eprintln!("idle window");
    idle_checks(&mut report, &dt, n).await;
    delete_namespace(&client, &dt.ns).await;
    eprintln!("rate limit");
    rate_limited(&client, &mut report, true).await;
    rate_limited(&client, &mut report, false).await;
    report.print();
}
