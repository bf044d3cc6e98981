//! Sharding past one replica (issue 9): each shard's operator handles exactly the
//! `ApiKeyPair`s its label selector matches, under its own leader lease, and one shard's
//! failover never touches the other shard's keys.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use keypair_operator::crd::ApiKeyPair;
use kube::Api;
use serde_json::json;

use crate::Scenario;
use crate::common::{self, Operator};

/// A role the Datonis sandbox knows.
const ROLE: &str = "1946c4ce5c";

fn shard_args(ns: &str, shard: &str, instance: &str, providers: bool) -> Vec<String> {
    let mut args: Vec<String> = Operator::FAST.iter().map(|a| a.to_string()).collect();
    args.extend([
        "--leader-elect".into(),
        "--leader-election-namespace".into(),
        ns.to_owned(),
        "--instance".into(),
        instance.to_owned(),
        "--lease-duration".into(),
        "4s".into(),
        "--lease-name".into(),
        format!("kpo-{shard}"),
        "--shard-selector".into(),
        format!("shard={shard}"),
        "--manage-providers".into(),
        providers.to_string(),
    ]);
    args
}

async fn start(ns: &str, shard: &str, instance: &str, providers: bool) -> Operator {
    let args = shard_args(ns, shard, instance, providers);
    Operator::start(
        ns,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    )
    .await
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get_opt(name).await.ok()??.spec?.holder_identity
}

async fn wait_holder(leases: &Api<Lease>, name: &str, instance: &str) {
    common::wait_for(
        &format!("{instance} holds lease {name}"),
        Duration::from_secs(30),
        || async { (holder(leases, name).await.as_deref() == Some(instance)).then_some(()) },
    )
    .await;
}

async fn key_pair(s: &Scenario, name: &str, shard: &str) {
    let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
        "metadata": {"name": name, "labels": {"shard": shard}},
        "spec": {"providerRef": {"name": "p"}, "datonis": {"roleKey": ROLE}}});
    common::apply_json::<ApiKeyPair>(&s.client, Some(&s.ns), object).await;
}

/// Which operator instances published events about `name`.
async fn reporters(s: &Scenario, name: &str) -> Vec<String> {
    // An event may land just after the status it follows: wait for the first one.
    common::wait_for(
        &format!("events about {name}"),
        Duration::from_secs(30),
        || async {
            let mut instances: Vec<String> = common::all_events(&s.client, &s.ns)
                .await
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .filter_map(|e| e.reporting_instance)
                .collect();
            instances.sort();
            instances.dedup();
            (!instances.is_empty()).then_some(instances)
        },
    )
    .await
}

#[tokio::test]
async fn two_shards_split_the_key_pairs_and_fail_over_apart() {
    let mut s = Scenario::datonis("shards", &[], &[]).await;
    s.operator.stop().await;
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let mut a1 = start(&s.ns, "a", "a-1", true).await;
    let mut b1 = start(&s.ns, "b", "b-1", false).await;
    wait_holder(&leases, "kpo-a", "a-1").await;
    wait_holder(&leases, "kpo-b", "b-1").await;
    for i in 0..3 {
        key_pair(&s, &format!("a-{i}"), "a").await;
        key_pair(&s, &format!("b-{i}"), "b").await;
    }
    for i in 0..3 {
        s.wait_ready(&format!("a-{i}"), "True", "Ready").await;
        s.wait_ready(&format!("b-{i}"), "True", "Ready").await;
    }
    for i in 0..3 {
        assert_eq!(
            reporters(&s, &format!("a-{i}")).await,
            ["a-1"],
            "a-{i}: shard a only"
        );
        assert_eq!(
            reporters(&s, &format!("b-{i}")).await,
            ["b-1"],
            "b-{i}: shard b only"
        );
    }

    // Shard a fails over to its standby; shard b's keys and lease are not touched.
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    let versions = |names: Vec<String>| {
        let api = api.clone();
        async move {
            let mut versions = BTreeMap::new();
            for name in names {
                let akp = api.get(&name).await.expect("key pair");
                versions.insert(name, akp.metadata.resource_version);
            }
            versions
        }
    };
    let b_names: Vec<String> = (0..3).map(|i| format!("b-{i}")).collect();
    let b_before = versions(b_names.clone()).await;
    let mut a2 = start(&s.ns, "a", "a-2", true).await;
    a1.stop().await; // SIGKILL: the lease lapses
    wait_holder(&leases, "kpo-a", "a-2").await;
    key_pair(&s, "a-new", "a").await;
    s.wait_ready("a-new", "True", "Ready").await;
    assert_eq!(reporters(&s, "a-new").await, ["a-2"]);
    assert_eq!(holder(&leases, "kpo-b").await.as_deref(), Some("b-1"));
    assert_eq!(
        versions(b_names).await,
        b_before,
        "shard b's keys were not written during shard a's failover (checks every 3 s write nothing)"
    );
    s.assert_no_orphans(&["a-0", "a-1", "a-2", "a-new", "b-0", "b-1", "b-2"])
        .await;
    a2.stop().await;
    b1.stop().await;
}

#[tokio::test]
async fn an_invalid_shard_selector_is_refused_at_start() {
    let s = Scenario::datonis("bad-shard", &[], &[]).await;
    let mut operator = Operator::start(&s.ns, &["--shard-selector", "shard in (a"], &[]).await;
    let status = operator.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(
        operator.log_text().contains("--shard-selector"),
        "the error names the flag: {}",
        operator.log_text()
    );
}
