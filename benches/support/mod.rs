//! What `make bench` (`benches/scale.rs`) and `make soak` (`benches/soak.rs`) share: the
//! report of figures against goals, the operator's RSS and `/metrics`, a provider with its
//! sandbox in a fresh namespace, and creating `ApiKeyPair`s and waiting until they are
//! ready. Each bench declares `mod common` (`tests/common`) beside this module.
#![allow(dead_code)] // each bench uses a different part

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use keypair_operator::crd::ApiKeyPair;
use keypair_operator::sandbox::SandboxConfig;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::common;

/// A `/metrics` page, by series.
pub type Metrics = BTreeMap<String, f64>;

pub const SESSION_TOKEN: &str = "bench-session-token";
pub const ROLE: &str = "role-bench";
pub const KUBE: &str = common::KUBE_REQUESTS;
pub const PROVIDER: &str = "keypair_operator_provider_requests_total";
pub const RECONCILES: &str = "keypair_operator_reconciles_total";

/// A numeric knob from the environment, or its default.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fractional knob from the environment, or its default.
pub fn knob_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One printed figure and its goal.
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub goal: Option<(&'static str, f64)>,
}

impl Row {
    pub fn met(&self) -> Option<bool> {
        self.goal.map(|(op, goal)| match op {
            "<=" => self.value <= goal,
            ">=" => self.value >= goal,
            _ => false,
        })
    }
}

/// `value`, with -0.0 (what an empty `f64` sum gives) as 0.0, so that nothing prints "-0.00".
fn without_negative_zero(value: f64) -> f64 {
    value + 0.0
}

/// Figures, each with its goal when it has one; printed as a table and one JSON line.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.rows.push(Row {
            name: name.into(),
            value: without_negative_zero(value),
            unit,
            goal: None,
        });
    }

    pub fn goal(
        &mut self,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        op: &'static str,
        goal: f64,
    ) {
        // Progress on stderr: a long run (BENCH_N=10000) shows each goal as it is measured.
        let name = name.into();
        let value = without_negative_zero(value);
        eprintln!("  {name}: {value:.2} {unit} (goal {op} {goal:.2})");
        self.rows.push(Row {
            name,
            value,
            unit,
            goal: Some((op, goal)),
        });
    }

    /// Names of the figures that missed their goal (a NaN figure misses it).
    pub fn missed(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.met() == Some(false))
            .map(|r| r.name.as_str())
            .collect()
    }

    pub fn print(&self) {
        println!();
        println!(
            "{:<58} {:>12} {:<8} {:<16}",
            "figure", "value", "unit", "goal"
        );
        for row in &self.rows {
            let goal = row
                .goal
                .map(|(op, g)| format!("{op} {g:.2}"))
                .unwrap_or_default();
            let verdict = match row.met() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            println!(
                "{:<58} {:>12.2} {:<8} {:<16} {verdict}",
                row.name, row.value, row.unit, goal
            );
        }
        let json: serde_json::Map<String, serde_json::Value> = self
            .rows
            .iter()
            .map(|r| (r.name.replace(' ', "_"), json!(r.value)))
            .collect();
        println!("{}", serde_json::Value::Object(json));
    }
}

/// The operator's counters and gauges, by full series text.
pub async fn scrape(operator: &common::Operator) -> Metrics {
    common::metrics(&operator.http).await
}

/// Kube requests between two scrapes, by `verb resource`.
pub fn kube_by_verb(before: &Metrics, after: &Metrics) -> BTreeMap<String, f64> {
    common::grown(
        &common::kube_requests(before),
        &common::kube_requests(after),
    )
}

/// A field of the operator's `/proc/<pid>/status` (`VmRSS`, `Threads`, ...): its first
/// number, NaN when the process is gone.
pub fn proc_status(operator: &common::Operator, field: &str) -> f64 {
    let Some(pid) = operator.pid() else {
        return f64::NAN;
    };
    let prefix = format!("{field}:");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(&prefix))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

pub fn rss_mb(operator: &common::Operator) -> f64 {
    proc_status(operator, "VmRSS") / 1024.0
}

/// The anonymous part of RSS (heap, stacks): what the operator's data costs. The rest of
/// RSS is file-backed, mostly the binary's own code pages, and does not grow with keys.
pub fn rss_anon_mb(operator: &common::Operator) -> f64 {
    proc_status(operator, "RssAnon") / 1024.0
}

/// CPU seconds the local kube-apiserver has used so far (NaN when it cannot be found):
/// what a phase costs the API server, the resource every request shares here.
pub fn apiserver_cpu_seconds() -> f64 {
    let cpu = |pid: &str| -> Option<f64> {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if comm.trim() != "kube-apiserver" {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command (which ends with ')'): utime and stime are 14 and 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|entry| cpu(&entry.file_name().to_string_lossy()))
        .unwrap_or(f64::NAN)
}

/// Open file descriptors of the operator (sockets included), NaN when it is gone.
pub fn open_fds(operator: &common::Operator) -> f64 {
    operator
        .pid()
        .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map_or(f64::NAN, |dir| dir.count() as f64)
}

pub async fn wait_ready_endpoint(operator: &common::Operator, timeout: Duration) -> Duration {
    let started = Instant::now();
    common::wait_for("operator /readyz", timeout, || async {
        let ok = reqwest::get(format!("{}/readyz", operator.http))
            .await
            .is_ok_and(|r| r.status().is_success());
        ok.then_some(())
    })
    .await;
    started.elapsed()
}

/// Creates `count` `ApiKeyPair`s (`k-0`, `k-1`, ...) with `clients` writers, each with the
/// spec `spec` gives for its name; returns when each was applied.
pub async fn create_key_pairs(
    client: &Client,
    ns: &str,
    count: usize,
    clients: usize,
    spec: &(dyn Fn(&str) -> serde_json::Value + Sync),
) -> HashMap<String, Instant> {
    let api: Api<ApiKeyPair> = Api::namespaced(client.clone(), ns);
    let applied = Arc::new(std::sync::Mutex::new(HashMap::new()));
    futures::stream::iter(0..count)
        .for_each_concurrent(clients, |i| {
            let (api, applied) = (api.clone(), applied.clone());
            async move {
                let name = format!("k-{i}");
                let object: ApiKeyPair = serde_json::from_value(json!({
                    "apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
                    "metadata": {"name": name}, "spec": spec(&name)}))
                .expect("key pair");
                let at = Instant::now();
                if api.create(&PostParams::default(), &object).await.is_ok()
                    && let Ok(mut applied) = applied.lock()
                {
                    applied.insert(name, at);
                }
            }
        })
        .await;
    applied.lock().map(|a| a.clone()).unwrap_or_default()
}

/// Watches until every key pair in `applied` meets `ready`; returns apply→ready per key
/// and when the last became ready.
pub async fn wait_all_ready(
    client: &Client,
    ns: &str,
    applied: &HashMap<String, Instant>,
    ready: impl Fn(&ApiKeyPair) -> bool,
    timeout: Duration,
) -> (Vec<Duration>, Instant) {
    let api: Api<ApiKeyPair> = Api::namespaced(client.clone(), ns);
    let mut latencies = HashMap::new();
    let mut last = Instant::now();
    // One key: watch that key only, so that the first list does not read every other one
    // (at 10k keys that list alone takes seconds).
    let mut config = watcher::Config::default();
    if let [name] = applied.keys().collect::<Vec<_>>()[..] {
        config = config.fields(&format!("metadata.name={name}"));
    }
    let mut stream = watcher(api, config).applied_objects().boxed();
    let deadline = tokio::time::Instant::now() + timeout;
    while latencies.len() < applied.len() {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(Some(Ok(akp))) = next else {
            if next.is_err() {
                eprintln!("timed out: {} of {} ready", latencies.len(), applied.len());
                break;
            }
            continue;
        };
        let name = akp.name_any();
        if ready(&akp)
            && !latencies.contains_key(&name)
            && let Some(at) = applied.get(&name)
        {
            last = Instant::now();
            latencies.insert(name, last - *at);
        }
    }
    let mut latencies: Vec<Duration> = latencies.into_values().collect();
    latencies.sort();
    (latencies, last)
}

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64()
}

/// A ThreatWinds key exists and is recorded (it may still await its code).
pub fn key_recorded(akp: &ApiKeyPair) -> bool {
    akp.status
        .as_ref()
        .is_some_and(|s| s.key_id.is_some() && s.pending_create.is_none())
}

/// A key exists, is recorded, and its `Ready` condition is True.
pub fn ready_true(akp: &ApiKeyPair) -> bool {
    key_recorded(akp) && common::condition(akp, "Ready").is_some_and(|(status, _)| status == "True")
}

/// A provider resource `p` in its own namespace, over its own sandbox.
pub struct Setup {
    pub ns: String,
    pub sandbox: common::Sandbox,
    pub provider_spec: serde_json::Value,
    pub spec: serde_json::Value,
    pub ready: fn(&ApiKeyPair) -> bool,
}

pub async fn provider_setup(
    client: &Client,
    prefix: &str,
    threatwinds: bool,
    latency_ms: u64,
) -> Setup {
    let kind = if threatwinds { "tw" } else { "dt" };
    let ns = common::test_namespace(client, &format!("{prefix}-{kind}")).await;
    let sandbox = if threatwinds {
        let mut config = SandboxConfig::threatwinds();
        config.session_tokens = vec![SESSION_TOKEN.to_owned()];
        common::Sandbox::start(config).await
    } else {
        let mut config = SandboxConfig::datonis();
        config.roles = vec![(ROLE.to_owned(), "Bench".to_owned())];
        common::Sandbox::start(config).await
    };
    sandbox.faults(json!({"latency_ms": latency_ms})).await;
    let spec = if threatwinds {
        common::put_secret(client, &ns, "creds", &[("token", SESSION_TOKEN)]).await;
        json!({"threatwinds": {"url": sandbox.url(), "sessionSecretRef": {"name": "creds", "key": "token"}}})
    } else {
        let (email, password) = (
            keypair_operator::sandbox::DEFAULT_DATONIS_EMAIL,
            keypair_operator::sandbox::DEFAULT_DATONIS_PASSWORD,
        );
        common::put_secret(
            client,
            &ns,
            "creds",
            &[("email", email), ("password", password)],
        )
        .await;
        json!({"datonis": {"url": sandbox.url(), "credentialsSecretRef": {"name": "creds"}}})
    };
    let provider = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider",
        "metadata": {"name": "p"}, "spec": spec.clone()});
    common::apply_json::<keypair_operator::crd::KeyPairProvider>(client, Some(&ns), provider).await;
    let key_spec = if threatwinds {
        json!({"providerRef": {"name": "p"}, "validityDays": 90})
    } else {
        json!({"providerRef": {"name": "p"}, "validityDays": 90, "datonis": {"roleKey": ROLE}})
    };
    Setup {
        ns,
        sandbox,
        provider_spec: spec,
        spec: key_spec,
        ready: if threatwinds {
            key_recorded
        } else {
            ready_true
        },
    }
}

/// Requests a sandbox answered on its provider API (its `/_sandbox` control endpoints
/// left out), by its `GET /_sandbox/stats`.
pub fn sandbox_calls(stats: &serde_json::Value) -> f64 {
    sandbox_answers(stats, |_| true)
}

/// Provider API requests a sandbox answered with a status `status` accepts.
pub fn sandbox_answers(stats: &serde_json::Value, status: impl Fn(&str) -> bool) -> f64 {
    stats
        .as_object()
        .map(|endpoints| {
            endpoints
                .iter()
                .filter(|(endpoint, _)| !endpoint.starts_with("/_sandbox"))
                .flat_map(|(_, by_status)| by_status.as_object().into_iter().flatten())
                .filter(|(code, _)| status(code))
                .filter_map(|(_, v)| v.as_f64())
                .sum()
        })
        .unwrap_or(0.0)
}

/// Deletes every object `api` lists. One deletecollection of 10 000 objects can outlast
/// the API server's request timeout (it answers 504 part way), so it is repeated while
/// objects remain, a few times at most.
pub async fn delete_every<K>(api: &Api<K>, what: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (delete, every) = (DeleteParams::default(), ListParams::default());
    for _ in 0..5 {
        let Err(e) = api.delete_collection(&delete, &every).await else {
            return;
        };
        eprintln!("delete {what}: {e}");
        let remaining = api.list_metadata(&ListParams::default().limit(1)).await;
        if remaining.is_ok_and(|l| l.items.is_empty()) {
            return;
        }
    }
}

/// Deletes a namespace the bench made once no operator runs: the `ApiKeyPair`s' finalizers
/// are dropped first (nothing would remove them), so the namespace does not stay
/// Terminating. Its `ApiKeyPair`s and Secrets are deleted here too: the local control plane
/// has no namespace controller to empty it, and 20 000 leftover key pairs make every later
/// cluster-wide list (the plugin's `orphans`) take seconds.
pub async fn delete_namespace(client: &Client, ns: &str) {
    let api: Api<ApiKeyPair> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = api
        .list_metadata(&ListParams::default())
        .await
        .map(|l| l.items.iter().map(|m| m.name_any()).collect())
        .unwrap_or_default();
    let unfinalize = json!({"metadata": {"finalizers": null}});
    futures::stream::iter(names)
        .for_each_concurrent(16, |name| {
            let (api, patch) = (api.clone(), &unfinalize);
            async move {
                let _ = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await;
            }
        })
        .await;
    delete_every(&api, &format!("the ApiKeyPairs of {ns}")).await;
    delete_every(
        &Api::<Secret>::namespaced(client.clone(), ns),
        &format!("the Secrets of {ns}"),
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Err(e) = namespaces.delete(ns, &DeleteParams::default()).await {
        eprintln!("delete namespace {ns}: {e}");
    }
}
