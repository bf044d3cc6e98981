//! What operators of the operator rely on: metrics and probes on the HTTP port, and
//! leader election that hands over cleanly when the leader dies mid-batch.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use keypair_operator::sandbox::Dialect;
use kube::Api;
use serde_json::json;

use crate::Scenario;
use crate::common::{self, Operator};

async fn scrape(operator: &Operator, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("{}{path}", operator.http))
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The value of one sample line `name{labels} value` in a Prometheus text page.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_and_probes_describe_a_running_scenario() {
    let s = Scenario::threatwinds("metrics", Dialect::Current, &[], &[]).await;
    common::wait_for("/healthz", Duration::from_secs(30), || async {
        scrape(&s.operator, "/healthz")
            .await
            .filter(|(code, _)| *code == 200)
            .map(|_| ())
    })
    .await;
    common::wait_for("/readyz", Duration::from_secs(30), || async {
        scrape(&s.operator, "/readyz")
            .await
            .filter(|(code, _)| *code == 200)
            .map(|_| ())
    })
    .await;
    s.akp("web", json!({"providerRef": {"name": "p"}, "verification": {"codeSecretRef": {"name": "code", "key": "code"}}})).await;
    let akp = s
        .wait_ready("web", "False", "VerificationCodeMissing")
        .await;
    let awaiting = format!(
        "keypair_operator_awaiting_verification{{namespace=\"{}\",name=\"web\",provider_kind=\"KeyPairProvider\",provider_name=\"p\"}}",
        s.ns
    );
    common::wait_for(
        "the awaiting-verification gauge",
        Duration::from_secs(30),
        || async {
            let (_, text) = scrape(&s.operator, "/metrics").await?;
            (sample(&text, &awaiting) == Some(1.0)).then_some(())
        },
    )
    .await;
    s.submit_code(&akp).await;
    let akp = s.wait_ready("web", "True", "Ready").await;
    let expire_at = akp.status.and_then(|st| st.expire_at).expect("expireAt");
    let expected = chrono::DateTime::parse_from_rfc3339(&expire_at)
        .expect("RFC 3339")
        .timestamp() as f64;

    let key = format!(
        "namespace=\"{}\",name=\"web\",provider_kind=\"KeyPairProvider\",provider_name=\"p\"",
        s.ns
    );
    let series = format!("keypair_operator_ready{{{key}}}");
    let text = common::wait_for("the ready gauge", Duration::from_secs(30), || async {
        let (_, text) = scrape(&s.operator, "/metrics").await?;
        (sample(&text, &series) == Some(1.0)).then_some(text)
    })
    .await;
    let expiry = format!("keypair_operator_expiration_timestamp_seconds{{{key}}}");
    assert_eq!(sample(&text, &expiry), Some(expected), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("keypair_operator_awaiting_verification{{{key}}}")
        ),
        Some(0.0),
        "verified"
    );
    let provider = format!(
        "provider_kind=\"KeyPairProvider\",namespace=\"{}\",provider_name=\"p\",provider=\"threatwinds\"",
        s.ns
    );
    assert_eq!(
        sample(
            &text,
            &format!("keypair_operator_provider_ready{{{provider}}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "keypair_operator_provider_request_duration_seconds_count{provider=\"threatwinds\",operation=\"create\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "keypair_operator_provider_requests_total{provider=\"threatwinds\",operation=\"create\",status=\"ok\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "keypair_operator_provider_requests_total{provider=\"threatwinds\",operation=\"verify\",status=\"ok\"}"
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            "keypair_operator_reconciles_total{controller=\"apikeypair\",result=\"success\"}"
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    assert!(
        sample(
            &text,
            "keypair_operator_reconciles_total{controller=\"provider\",result=\"success\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        sample(
            &text,
            "keypair_operator_reconcile_duration_seconds_count{controller=\"apikeypair\"}"
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    assert_eq!(sample(&text, "keypair_operator_leader"), Some(1.0));

    // A deleted key pair leaves no series behind.
    s.delete_and_wait_gone("web").await;
    let (_, text) = scrape(&s.operator, "/metrics").await.expect("scrape");
    assert_eq!(sample(&text, &series), None, "{text}");

    // Nor does a deleted provider.
    let providers: Api<keypair_operator::crd::KeyPairProvider> =
        Api::namespaced(s.client.clone(), &s.ns);
    providers
        .delete("p", &Default::default())
        .await
        .expect("delete the provider");
    let provider_series = format!("keypair_operator_provider_ready{{{provider}}}");
    common::wait_for(
        "the provider's series to go",
        Duration::from_secs(30),
        || async {
            let (_, text) = scrape(&s.operator, "/metrics").await?;
            sample(&text, &provider_series).is_none().then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_dies_mid_batch() {
    let mut s = Scenario::datonis("leader", &[], &[]).await;
    s.operator.stop().await;
    let ns = s.ns.clone();
    let elect = |instance: &'static str| {
        vec![
            "--leader-elect",
            "--leader-election-namespace",
            "LEASE_NS",
            "--instance",
            instance,
            "--lease-duration",
            "4s",
        ]
    };
    let args = |instance: &'static str| -> Vec<String> {
        Operator::FAST
            .iter()
            .map(|s| s.to_string())
            .chain(elect(instance).into_iter().map(|a| {
                if a == "LEASE_NS" {
                    ns.clone()
                } else {
                    a.to_owned()
                }
            }))
            .collect()
    };
    let a_args = args("op-a");
    let b_args = args("op-b");
    let mut a = Operator::start(
        &ns,
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &ns);
    let holder = || async {
        leases
            .get_opt("keypair-operator")
            .await
            .ok()??
            .spec?
            .holder_identity
    };
    common::wait_for("op-a holds the lease", Duration::from_secs(30), || async {
        (holder().await.as_deref() == Some("op-a")).then_some(())
    })
    .await;
    let mut b = Operator::start(
        &ns,
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    )
    .await;
    common::wait_for(
        "op-b stands by (ready)",
        Duration::from_secs(30),
        || async {
            scrape(&b, "/readyz")
                .await
                .filter(|(code, _)| *code == 200)
                .map(|_| ())
        },
    )
    .await;
    let (_, metrics_b) = scrape(&b, "/metrics").await.expect("scrape standby");
    assert_eq!(sample(&metrics_b, "keypair_operator_leader"), Some(0.0));

    // Slow the provider down so the batch is still in flight when the leader dies.
    s.sandbox.faults(json!({"latency_ms": 150})).await;
    for i in 0..8 {
        s.akp(
            &format!("agent-{i}"),
            json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": "1946c4ce5c"}}),
        )
        .await;
    }
    common::wait_for("a first key", Duration::from_secs(30), || async {
        (!s.sandbox.keys().await.is_empty()).then_some(())
    })
    .await;
    a.stop().await; // SIGKILL: no lease release
    let killed = std::time::Instant::now();
    common::wait_for("op-b takes the lease", Duration::from_secs(30), || async {
        (holder().await.as_deref() == Some("op-b")).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(4 + 4),
        "took over in {took:?} (lease 4s)"
    );
    for i in 0..8 {
        s.wait_ready(&format!("agent-{i}"), "True", "Ready").await;
    }
    let names: Vec<String> = (0..8).map(|i| format!("agent-{i}")).collect();
    s.assert_no_orphans(&names.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let (_, metrics_b) = scrape(&b, "/metrics").await.expect("scrape new leader");
    assert_eq!(sample(&metrics_b, "keypair_operator_leader"), Some(1.0));
    b.stop().await;
}

#[tokio::test]
async fn sigterm_finishes_work_and_releases_the_lease() {
    let mut s = Scenario::datonis("sigterm", &[], &[]).await;
    s.operator.stop().await;
    let ns = s.ns.clone();
    let mut args: Vec<String> = Operator::FAST.iter().map(|a| a.to_string()).collect();
    args.extend(
        [
            "--leader-elect",
            "--leader-election-namespace",
            &ns,
            "--instance",
            "op-t",
            "--lease-duration",
            "30s",
        ]
        .map(String::from),
    );
    let mut operator = Operator::start(
        &ns,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    )
    .await;
    s.akp(
        "agent",
        json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": "1946c4ce5c"}}),
    )
    .await;
    s.wait_ready("agent", "True", "Ready").await;
    operator.terminate();
    let status = operator.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "a clean exit on SIGTERM: {status:?}");
    let log = operator.log_text();
    assert!(
        log.contains("controllers stopped"),
        "the controllers shut down gracefully"
    );
    // Released, not left to expire: a new instance need not wait 30 s.
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &ns);
    let lease = leases.get("keypair-operator").await.expect("lease");
    let holder = lease.spec.and_then(|spec| spec.holder_identity);
    assert_ne!(holder.as_deref(), Some("op-t"), "the lease was released");
}

/// A repeat of an event within six minutes is counted in the first event's series, as
/// kube's recorder does (the recorder keeps only a digest of each event's key and its
/// first time, from which the event's name is derived).
#[tokio::test]
async fn a_repeated_event_becomes_a_series_of_the_first() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event as KubeEvent;
    use keypair_operator::telemetry::events::{Event, EventType, Recorder, Reporter};

    let client = common::client().await;
    let ns = common::test_namespace(&client, "event-series").await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "event-series-test".into(),
            instance: None,
        },
    );
    let about = |name: &str| ObjectReference {
        api_version: Some("keypairs.dev/v1alpha1".into()),
        kind: Some("ApiKeyPair".into()),
        name: Some(name.into()),
        namespace: Some(ns.clone()),
        uid: Some(format!("uid-{name}")),
        ..ObjectReference::default()
    };
    let event = |note: &str| Event {
        type_: EventType::Normal,
        reason: "Checked".into(),
        note: Some(note.into()),
        action: "Check".into(),
        secondary: None,
    };
    for note in ["first", "second", "third"] {
        recorder
            .publish(&event(note), &about("web"))
            .await
            .expect("published");
    }
    recorder
        .publish(&event("first"), &about("api"))
        .await
        .expect("published");
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), &ns);
    let listed = events.list(&Default::default()).await.expect("list");
    let about_web: Vec<_> = listed
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web"))
        .collect();
    assert_eq!(about_web.len(), 1, "one event object for three occurrences");
    assert_eq!(about_web[0].note.as_deref(), Some("first"));
    assert_eq!(about_web[0].series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(listed.items.len(), 2, "another object's event is its own");
}
