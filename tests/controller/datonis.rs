//! Datonis key pairs end to end: create, observe, update, restore, delete, re-sign-in.

use std::time::Duration;

use keypair_operator::sandbox::SandboxConfig;
use serde_json::json;

use crate::Scenario;
use crate::common;

const ROLE: &str = "1946c4ce5c";
const OTHER_ROLE: &str = "517d8e4695";

fn spec(enabled: bool, role: &str, days: u32) -> serde_json::Value {
    json!({"providerRef": {"name": "p"}, "validityDays": days, "datonis": {"roleKey": role, "enabled": enabled}})
}

#[tokio::test]
async fn datonis_lifecycle_with_updates() {
    let s = Scenario::datonis("dt-life", &[], &[]).await;
    s.akp("agent", spec(true, ROLE, 30)).await;
    let akp = s.wait_ready("agent", "True", "Ready").await;
    let status = akp.status.clone().unwrap_or_default();
    let keys = s.sandbox.keys().await;
    assert_eq!(keys.len(), 1);
    let data = s.secret("agent").await.expect("Secret");
    assert_eq!(data["apiKey"], keys[0].api_key);
    assert_eq!(data["apiSecret"], keys[0].secret);
    assert_eq!(status.key_id.as_deref(), Some(keys[0].id.as_str()));
    assert_eq!(status.enabled, Some(true));
    assert_eq!(status.role_key.as_deref(), Some(ROLE));
    assert_eq!(keys[0].role_key.as_deref(), Some(ROLE));
    let first_expiry = keys[0].expires_at;

    // Disable, change role and validity: one update call, same key.
    s.akp("agent", spec(false, OTHER_ROLE, 60)).await;
    let akp = s
        .wait("agent", "updated", |a| {
            a.status.as_ref().is_some_and(|st| {
                st.enabled == Some(false)
                    && st.role_key.as_deref() == Some(OTHER_ROLE)
                    && st.validity_days == Some(60)
            })
        })
        .await;
    assert!(common::ready_is(&akp, "True", "Disabled"));
    let keys = s.sandbox.keys().await;
    assert_eq!(keys.len(), 1, "updated in place");
    assert_eq!(keys[0].enabled, Some(false));
    assert_eq!(keys[0].role_key.as_deref(), Some(OTHER_ROLE));
    assert_eq!(
        (keys[0].expires_at - first_expiry) / 86_400,
        30,
        "expiry moved by 30 days"
    );
    assert!(s.sandbox.count("PUT /api/v3/key_pairs/{key}").await >= 1);
    let events = common::events_for(&s.client, &s.ns, "agent").await;
    assert!(events.iter().any(|e| e.0 == "Updated"), "{events:?}");

    s.delete_and_wait_gone("agent").await;
    assert!(s.sandbox.keys().await.is_empty());
}

#[tokio::test]
async fn a_deleted_secret_is_restored_from_the_provider_with_the_same_key() {
    let s = Scenario::datonis("dt-restore", &[], &[]).await;
    s.akp("agent", spec(true, ROLE, 30)).await;
    s.wait_ready("agent", "True", "Ready").await;
    let data = s.secret("agent").await.expect("Secret");
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .delete("agent", &Default::default())
        .await
        .expect("delete Secret");
    common::wait_for("Secret restored", Duration::from_secs(60), || async {
        s.secret("agent").await.filter(|d| *d == data).map(|_| ())
    })
    .await;
    assert_eq!(s.sandbox.keys().await.len(), 1, "no new key");
    let events = common::events_for(&s.client, &s.ns, "agent").await;
    assert!(events.iter().any(|e| e.0 == "SecretRestored"), "{events:?}");
}

#[tokio::test]
async fn an_expired_auth_token_is_renewed_by_signing_in_again() {
    let mut config = SandboxConfig::datonis();
    config.token_idle_timeout = Duration::from_secs(1);
    // Slow checks, so that nothing touches the token while it idles out.
    let s = Scenario::with_sandbox("dt-token", config, &["--check-interval", "1h"], &[]).await;
    s.akp("agent", spec(true, ROLE, 30)).await;
    s.wait_ready("agent", "True", "Ready").await;
    let sign_ins = s.sandbox.count("POST /api_sign_in").await;
    // The behaviour under test is time itself: let the token idle past its timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.akp("agent", spec(false, ROLE, 30)).await;
    s.wait("agent", "disabled", |a| {
        a.status
            .as_ref()
            .is_some_and(|st| st.enabled == Some(false))
    })
    .await;
    let stats = s.sandbox.stats().await;
    assert!(
        stats["GET /api/v3/key_pairs/{key}"]["401"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "a call met the expired token: {stats}"
    );
    assert!(
        s.sandbox.count("POST /api_sign_in").await > sign_ins,
        "signed in again: {stats}"
    );
    s.wait_ready("agent", "True", "Disabled").await;
}

#[tokio::test]
async fn a_provider_rate_limit_is_never_exceeded_by_a_burst_of_resources() {
    let s = Scenario::datonis("dt-rate", &[], &[]).await;
    // The sandbox answers 429 above 4 requests/s; the provider asks the operator for 2/s.
    s.sandbox.faults(json!({"rate_limit_rps": 4.0})).await;
    s.provider("p", json!({"datonis": {"url": s.sandbox.url(), "credentialsSecretRef": {"name": "dt-creds"}}, "rateLimit": {"requestsPerSecond": 2.0, "burst": 1}})).await;
    // The limit holds from when the operator has seen it: a key pair reconciled before
    // would still use the client of the provider as it was.
    s.wait_provider_ready("p").await;
    for i in 0..6 {
        s.akp(&format!("agent-{i}"), spec(true, ROLE, 30)).await;
    }
    for i in 0..6 {
        s.wait_ready(&format!("agent-{i}"), "True", "Ready").await;
    }
    let stats = s.sandbox.stats().await;
    let limited: u64 = stats
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, by_status)| by_status["429"].as_u64())
        .sum();
    assert_eq!(
        limited, 0,
        "the operator stayed under the provider's limit: {stats}"
    );
    assert_eq!(s.sandbox.keys().await.len(), 6);
}
