//! What one replica costs at scale (issue 9), counted from the outside: the operator's own
//! Kubernetes requests (`keypair_operator_kube_requests_total`) and the sandbox's request
//! statistics. `make bench` measures the same at 1k–10k keys.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::Scenario;
use crate::common::{self, Operator};
use keypair_operator::sandbox::Dialect;

const ROLE: &str = "1946c4ce5c";
const KEY_GETS: &str = "GET /api/v3/key_pairs/{key}";
const TW_LISTS: &str = "GET /api/auth/v2/keypairs";

/// The operator's Kubernetes requests so far, by `verb resource` (watches left out: they
/// are long-lived streams, not per-object costs).
async fn kube_requests(operator: &Operator) -> BTreeMap<String, f64> {
    let metrics = common::metrics(&operator.http).await;
    common::kube_requests(&metrics)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("watch "))
        .collect()
}

/// `ApiKeyPair` reconciles this operator process ran (0 while it does not answer yet).
async fn reconciles(operator: &Operator) -> f64 {
    let Some(metrics) = common::try_metrics(&operator.http).await else {
        return 0.0;
    };
    let apikeypair = ["controller=\"apikeypair\""];
    common::metric_total(&metrics, "keypair_operator_reconciles_total", &apikeypair)
}

#[tokio::test]
async fn an_idle_check_of_a_healthy_key_makes_no_kube_request() {
    let s = Scenario::datonis("idle-check", &[], &[]).await;
    for i in 0..3 {
        s.akp(
            &format!("k-{i}"),
            json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": ROLE}}),
        )
        .await;
    }
    for i in 0..3 {
        s.wait_ready(&format!("k-{i}"), "True", "Ready").await;
    }
    // Past the follow-ups of the creates: one check of every key first.
    let first = s.sandbox.count(KEY_GETS).await;
    s.wait_count(KEY_GETS, first + 3, Duration::from_secs(60))
        .await;
    let before = kube_requests(&s.operator).await;
    let checks_before = s.sandbox.count(KEY_GETS).await;
    // Eleven more checks of every key (the check interval is 3 s): longer than the 30 s
    // after which a provider's credential Secret version used to be read again. It comes
    // from the index of Secret versions now, for the key pairs and the provider alike.
    s.wait_count(KEY_GETS, checks_before + 3 * 11, Duration::from_secs(60))
        .await;
    let after = kube_requests(&s.operator).await;
    let spent = common::grown(&before, &after);
    assert!(
        spent.is_empty(),
        "idle checks made kube requests: {spent:?}"
    );
}

/// A create costs the operator five kube requests: finalizer, intent, Secret, key status,
/// event. No Secret is read: the caches (the operator's Secrets and the index of all
/// others) say that none of the name exists. And no reconcile is spent on the operator's
/// own Secret write.
#[tokio::test]
async fn a_create_makes_five_kube_requests_and_reads_no_secret() {
    let s = Scenario::datonis("create-cost", &[], &[]).await;
    s.wait_provider_ready("p").await;
    common::wait_for("operator /readyz", Duration::from_secs(30), || async {
        let ready = reqwest::get(format!("{}/readyz", s.operator.http)).await;
        ready.is_ok_and(|r| r.status().is_success()).then_some(())
    })
    .await;
    let before = kube_requests(&s.operator).await;
    let reconciles_before = reconciles(&s.operator).await;
    let keys = 4;
    for i in 0..keys {
        s.akp(
            &format!("k-{i}"),
            json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": ROLE}}),
        )
        .await;
    }
    for i in 0..keys {
        s.wait_ready(&format!("k-{i}"), "True", "Ready").await;
    }
    // Past every follow-up of the creates: one check of every key (those cost nothing).
    let checks = s.sandbox.count(KEY_GETS).await;
    s.wait_count(KEY_GETS, checks + keys, Duration::from_secs(60))
        .await;
    let spent = common::grown(&before, &kube_requests(&s.operator).await);
    assert!(!spent.contains_key("get secrets"), "{spent:?}");
    let per_create = spent.values().sum::<f64>() / keys as f64;
    assert!(
        per_create <= 5.0,
        "{per_create} requests per create: {spent:?}"
    );
    // Three reconciles per key: the finalizer, the create, the check. The operator's own
    // Secret write wakes nothing (it used to add a fourth).
    let runs = (reconciles(&s.operator).await - reconciles_before) / keys as f64;
    assert!(runs <= 3.5, "{runs} reconciles per key");
}

#[tokio::test]
async fn keys_awaiting_their_code_share_one_list_and_read_no_secret() {
    let s = Scenario::threatwinds(
        "awaiting",
        Dialect::Current,
        &[
            "--check-interval",
            "2s",
            "--verification-poll-interval",
            "1s",
        ],
        &[],
    )
    .await;
    let spec = json!({"providerRef": {"name": "p"}, "verification": {"codeSecretRef": {"name": "codes", "key": "code"}}});
    let names: Vec<String> = (0..8).map(|i| format!("k-{i}")).collect();
    for name in &names {
        s.akp(name, spec.clone()).await;
    }
    for name in &names {
        s.wait(name, "a key awaiting its code", |a| {
            a.status
                .as_ref()
                .is_some_and(|st| st.key_id.is_some() && st.pending_create.is_none())
        })
        .await;
    }
    let before = kube_requests(&s.operator).await;
    let lists_before = s.sandbox.count(TW_LISTS).await;
    let reconciled = reconciles(&s.operator).await;
    // About six seconds: each key polls every second and is observed every 2 s, so
    // without sharing about 24 lists.
    common::wait_for("48 more reconciles", Duration::from_secs(60), || async {
        (reconciles(&s.operator).await >= reconciled + 48.0).then_some(())
    })
    .await;
    let lists = s.sandbox.count(TW_LISTS).await - lists_before;
    let spent = common::grown(&before, &kube_requests(&s.operator).await);
    assert!(
        lists <= 8,
        "{lists} lists for 8 awaiting keys over 48 reconciles: one list per poll interval serves them all"
    );
    assert!(
        spent.is_empty(),
        "keys awaiting a code made kube requests: {spent:?}"
    );

    // The code arrives: the Secret's change wakes the key without polling it.
    let k0 = s
        .wait("k-0", "a code id", |a| {
            a.status
                .as_ref()
                .is_some_and(|st| st.verification_code_id.is_some())
        })
        .await;
    let code_id = k0
        .status
        .and_then(|st| st.verification_code_id)
        .expect("code id");
    let code = s.sandbox.code_for(&code_id).await;
    common::put_secret(&s.client, &s.ns, "codes", &[("code", &code)]).await;
    s.wait("k-0", "verified", |a| {
        a.status
            .as_ref()
            .is_some_and(|st| st.verified == Some(true))
    })
    .await;
}

#[tokio::test]
async fn a_restart_checks_nothing_at_once_and_writes_nothing() {
    let mut s = Scenario::datonis("quiet-restart", &["--check-interval", "1h"], &[]).await;
    let names: Vec<String> = (0..3).map(|i| format!("k-{i}")).collect();
    for name in &names {
        s.akp(
            name,
            json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": ROLE}}),
        )
        .await;
    }
    for name in &names {
        s.wait_ready(name, "True", "Ready").await;
    }
    let checks_before = s.sandbox.count(KEY_GETS).await;
    s.operator.restart_with(&[]).await;
    // Every key reconciled once by the new process (its first pass over the cache).
    common::wait_for(
        "the first pass after the restart",
        Duration::from_secs(60),
        || async { (reconciles(&s.operator).await >= 3.0).then_some(()) },
    )
    .await;
    let spent = kube_requests(&s.operator).await;
    let writes: Vec<_> = spent
        .iter()
        .filter(|(k, _)| {
            ["create", "patch", "update", "delete"]
                .iter()
                .any(|w| k.starts_with(w))
        })
        .filter(|(k, _)| !k.ends_with("events") && !k.contains("keypairproviders"))
        .collect();
    assert!(
        writes.is_empty(),
        "a restart wrote to converged resources: {writes:?}"
    );
    let checks = s.sandbox.count(KEY_GETS).await - checks_before;
    // Each key's check falls at its own time in the hour; a second one within these few
    // seconds would take two of three random slots falling in them.
    assert!(checks <= 1, "{checks} keys checked right after the restart");
}
