//! ThreatWinds key pairs end to end: create, verify, observe, replace, delete.

use keypair_operator::crd::ApiKeyPair;
use keypair_operator::sandbox::Dialect;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::common::{self, condition, ready_is};
use crate::{SESSION_TOKEN, Scenario};

/// Whether `api_key`/`api_secret` pass the ThreatWinds check endpoint, returning `verified`.
pub async fn check(sandbox_url: &str, api_key: &str, api_secret: &str) -> Option<bool> {
    let response = reqwest::Client::new()
        .get(format!("{sandbox_url}/api/auth/v2/keypair"))
        .header("api-key", api_key)
        .header("api-secret", api_secret)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    body["verified"].as_bool()
}

fn verification_spec() -> serde_json::Value {
    json!({"providerRef": {"name": "p"}, "validityDays": 30, "verification": {"codeSecretRef": {"name": "code", "key": "code"}}})
}

async fn lifecycle(test: &str, dialect: Dialect) {
    let s = Scenario::threatwinds(test, dialect, &[], &[]).await;
    s.akp("web", verification_spec()).await;

    // Created, stored, unverified and waiting for the code.
    let akp = s
        .wait_ready("web", "False", "VerificationCodeMissing")
        .await;
    let status = akp.status.clone().unwrap_or_default();
    assert_eq!(status.verified, Some(false));
    assert_eq!(
        condition(&akp, "Verified"),
        Some(("False".into(), "VerificationCodeMissing".into()))
    );
    let data = s.secret("web").await.expect("Secret written");
    let keys = s.sandbox.keys().await;
    assert_eq!(keys.len(), 1);
    assert_eq!(data["apiKey"], keys[0].api_key);
    assert_eq!(data["apiSecret"], keys[0].secret);
    assert_eq!(status.key_id.as_deref(), Some(keys[0].id.as_str()));
    assert_eq!(keys[0].name.as_deref(), status.key_name.as_deref());
    assert!(
        status
            .key_name
            .as_deref()
            .is_some_and(|n| n.starts_with(&format!("{}/web [", s.ns)))
    );
    assert_eq!(
        check(&s.sandbox.url(), &data["apiKey"], &data["apiSecret"]).await,
        Some(false)
    );

    // The code arrives: verified and ready.
    s.submit_code(&akp).await;
    let akp = s.wait_ready("web", "True", "Ready").await;
    assert_eq!(
        condition(&akp, "Verified"),
        Some(("True".into(), "Verified".into()))
    );
    let checked = akp.status.clone().unwrap_or_default();
    assert_eq!(
        (checked.roles, checked.groups),
        (vec!["user".to_owned()], vec!["public".to_owned()]),
        "roles and groups from the check"
    );
    assert_eq!(
        check(&s.sandbox.url(), &data["apiKey"], &data["apiSecret"]).await,
        Some(true)
    );
    let expire_at = akp
        .status
        .as_ref()
        .and_then(|st| st.expire_at.clone())
        .expect("expireAt");
    let days = (chrono::DateTime::parse_from_rfc3339(&expire_at)
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc)
        - chrono::Utc::now())
    .num_days();
    assert!((29..=30).contains(&days), "expires in {days} days");

    // Steady state writes nothing: the resourceVersion holds across several checks.
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    let version = api.get("web").await.expect("get").metadata.resource_version;
    let checks_before = s.sandbox.count("GET /api/auth/v2/keypair").await;
    let within = std::time::Duration::from_secs(30);
    s.wait_count("GET /api/auth/v2/keypair", checks_before + 2, within)
        .await;
    assert_eq!(
        api.get("web").await.expect("get").metadata.resource_version,
        version,
        "no status churn"
    );

    // Delete: the remote key goes, the finalizer is released, the Secret is collected.
    s.delete_and_wait_gone("web").await;
    assert!(s.sandbox.keys().await.is_empty(), "remote key deleted");
    common::wait_for(
        "Secret garbage-collected",
        std::time::Duration::from_secs(60),
        || async { s.secret("web").await.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn threatwinds_lifecycle_current_dialect() {
    lifecycle("tw-life-current", Dialect::Current).await;
}

#[tokio::test]
async fn threatwinds_lifecycle_detailed_dialect() {
    lifecycle("tw-life-detailed", Dialect::Detailed).await;
}

#[tokio::test]
async fn wrong_code_is_rejected_once_and_a_new_code_can_be_requested() {
    let s = Scenario::threatwinds("tw-codes", Dialect::Detailed, &[], &[]).await;
    s.akp("web", verification_spec()).await;
    let akp = s
        .wait_ready("web", "False", "VerificationCodeMissing")
        .await;
    let first_code_id = akp
        .status
        .clone()
        .unwrap_or_default()
        .verification_code_id
        .expect("code id");

    common::put_secret(&s.client, &s.ns, "code", &[("code", "000000")]).await;
    let akp = s
        .wait_ready("web", "False", "VerificationCodeRejected")
        .await;
    assert_eq!(
        condition(&akp, "Verified"),
        Some(("False".into(), "VerificationCodeRejected".into()))
    );
    // The same wrong code is not submitted again on later checks.
    let submissions = s
        .sandbox
        .count("PUT /api/auth/v2/keypair/verification")
        .await;
    assert_eq!(submissions, 1);

    // Ask for a new code: a new id appears in status.
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    let patch = json!({"metadata": {"annotations": {"keypairs.dev/request-new-code": "1"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    let akp = s
        .wait("web", "a new verification code id", |a| {
            a.status
                .as_ref()
                .and_then(|st| st.verification_code_id.as_deref())
                .is_some_and(|id| id != first_code_id)
        })
        .await;
    s.submit_code(&akp).await;
    s.wait_ready("web", "True", "Ready").await;
    // "000000", then "000000" again against the new code id (a distinct pair), then the
    // right code.
    assert_eq!(
        s.sandbox
            .count("PUT /api/auth/v2/keypair/verification")
            .await,
        3
    );
    assert_eq!(
        s.sandbox
            .count("POST /api/auth/v2/keypair/verification")
            .await,
        1
    );
}

/// The key id an `ApiKeyPair`'s status records.
fn key_id(akp: &ApiKeyPair) -> String {
    akp.status
        .clone()
        .unwrap_or_default()
        .key_id
        .expect("key id")
}

/// Waits until the `ApiKeyPair` records a key other than `old_id`.
async fn wait_new_key(s: &Scenario, name: &str, old_id: &str) -> ApiKeyPair {
    s.wait(name, "a new key", |a| {
        a.status
            .as_ref()
            .and_then(|st| st.key_id.as_deref())
            .is_some_and(|id| id != old_id)
    })
    .await
}

#[tokio::test]
async fn a_deleted_secret_means_the_secret_is_lost_and_the_key_is_replaced() {
    let s = Scenario::threatwinds("tw-secret-lost", Dialect::Current, &[], &[]).await;
    s.akp("web", verification_spec()).await;
    let (akp, data) = s.verified("web").await;
    let old_id = key_id(&akp);

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .delete("web", &Default::default())
        .await
        .expect("delete Secret");
    let akp = wait_new_key(&s, "web", &old_id).await;
    assert!(
        akp.status
            .as_ref()
            .and_then(|st| st.create_attempts)
            .is_some_and(|n| n >= 2)
    );
    let new_data = s.secret("web").await.expect("Secret rewritten");
    assert_ne!(new_data["apiKey"], data["apiKey"]);
    let events = common::events_for(&s.client, &s.ns, "web").await;
    assert!(
        events.iter().any(|e| e.0 == "SecretLost"),
        "SecretLost event: {events:?}"
    );
    s.assert_no_orphans(&["web"]).await;
}

#[tokio::test]
async fn a_key_deleted_at_the_provider_is_recreated() {
    let s = Scenario::threatwinds("tw-remote-missing", Dialect::Current, &[], &[]).await;
    s.akp("web", verification_spec()).await;
    let (akp, _) = s.verified("web").await;
    let old_id = key_id(&akp);

    let response = reqwest::Client::new()
        .delete(format!("{}/api/auth/v2/keypair/{old_id}", s.sandbox.url()))
        .bearer_auth(SESSION_TOKEN)
        .send()
        .await
        .expect("delete at sandbox");
    assert!(response.status().is_success());
    let akp = wait_new_key(&s, "web", &old_id).await;
    let events = common::events_for(&s.client, &s.ns, "web").await;
    assert!(
        events.iter().any(|e| e.0 == "RemoteKeyMissing"),
        "RemoteKeyMissing event: {events:?}"
    );
    // The new key needs its own code.
    assert!(
        akp.status
            .as_ref()
            .is_some_and(|st| st.verified == Some(false))
    );
    s.assert_no_orphans(&["web"]).await;
}

#[tokio::test]
async fn a_new_key_name_replaces_the_key_only_after_the_replacement_is_verified() {
    let s = Scenario::threatwinds("tw-replace", Dialect::Detailed, &[], &[]).await;
    let mut spec = verification_spec();
    spec["keyName"] = json!("billing");
    s.akp("web", spec.clone()).await;
    let (akp, old_data) = s.verified("web").await;
    let old_id = key_id(&akp);

    spec["keyName"] = json!("billing-v2");
    spec["rotation"] = json!({"gracePeriod": "2s"});
    s.akp("web", spec).await;
    let akp = s.wait_ready("web", "True", "ReplacementPending").await;
    let pending = akp
        .status
        .clone()
        .unwrap_or_default()
        .pending_key
        .expect("pending key");
    assert!(
        pending
            .key_name
            .as_deref()
            .is_some_and(|n| n.starts_with("billing-v2 ["))
    );
    // The old key keeps serving; the new one waits in the pending slot.
    let data = s.secret("web").await.expect("Secret");
    assert_eq!(data["apiKey"], old_data["apiKey"]);
    assert!(data.contains_key("apiKey.pending"));
    assert_eq!(s.sandbox.keys().await.len(), 2);

    s.submit_code(&akp).await;
    let akp = s
        .wait("web", "the replacement serves", |a| {
            a.status.as_ref().is_some_and(|st| {
                st.pending_key.is_none() && st.key_id.as_deref() == Some(pending.key_id.as_str())
            })
        })
        .await;
    assert!(ready_is(&akp, "True", "Ready"));
    let data = s.secret("web").await.expect("Secret");
    assert!(!data.contains_key("apiKey.pending"));
    assert_ne!(data["apiKey"], old_data["apiKey"]);
    // The old key stays valid for the grace period, then it is deleted.
    let previous = akp.status.clone().unwrap_or_default().previous_key;
    assert_eq!(previous.map(|p| p.key_id).as_deref(), Some(old_id.as_str()));
    s.wait("web", "the grace period over", |a| {
        a.status
            .as_ref()
            .is_some_and(|st| st.previous_key.is_none())
    })
    .await;
    let keys = s.sandbox.keys().await;
    assert!(keys.iter().all(|k| k.id != old_id), "old key deleted");
    s.assert_no_orphans(&["web"]).await;
}

#[tokio::test]
async fn secret_template_sets_labels_annotations_and_key_names() {
    let s = Scenario::threatwinds("tw-template", Dialect::Current, &[], &[]).await;
    s.akp(
        "web",
        json!({"providerRef": {"name": "p"}, "secretName": "web-credentials",
               "secretTemplate": {"labels": {"team": "payments"}, "annotations": {"note": "rotated by operator"},
                                  "keys": {"apiKey": "TW_API_KEY", "apiSecret": "TW_API_SECRET"}}}),
    )
    .await;
    s.wait_ready("web", "False", "AwaitingVerificationCode")
        .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let secret = secrets.get("web-credentials").await.expect("Secret");
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("keypair-operator")
    );
    assert_eq!(
        secret
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get("note")
            .map(String::as_str),
        Some("rotated by operator")
    );
    let owner = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.len(), 1);
    assert_eq!(owner[0].kind, "ApiKeyPair");
    let data: Vec<String> = secret.data.unwrap_or_default().into_keys().collect();
    assert_eq!(data, ["TW_API_KEY", "TW_API_SECRET"]);
}

#[tokio::test]
async fn provider_sessions_are_checked_and_extended_before_they_expire() {
    let mut config = keypair_operator::sandbox::SandboxConfig::threatwinds();
    config.session_tokens = vec![SESSION_TOKEN.to_owned()];
    // Sessions last 10 minutes; the operator extends them when less than 1 hour is left.
    config.session_ttl = std::time::Duration::from_secs(600);
    let s = Scenario::with_sandbox("tw-session", config, &[], &[]).await;
    let providers: Api<keypair_operator::crd::KeyPairProvider> =
        Api::namespaced(s.client.clone(), &s.ns);
    let provider = common::wait_for(
        "provider ready with a session expiry",
        std::time::Duration::from_secs(30),
        || async {
            let p = providers.get("p").await.ok()?;
            let status = p.status.clone()?;
            let ready = status.conditions.iter().any(|c| {
                c.type_ == "Ready" && c.status == "True" && c.reason == "CredentialsValid"
            });
            (ready && status.session_expire_at.is_some()).then_some(p)
        },
    )
    .await;
    assert!(s.sandbox.count("GET /api/auth/v2/session").await >= 1);
    assert!(
        s.sandbox.count("PUT /api/auth/v2/session/extend").await >= 1,
        "{}",
        s.sandbox.stats().await
    );
    let expire_at = provider
        .status
        .and_then(|st| st.session_expire_at)
        .expect("expiry");
    let left = chrono::DateTime::parse_from_rfc3339(&expire_at)
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc)
        - chrono::Utc::now();
    assert!(
        left.num_seconds() > 500,
        "extended to a fresh 10 minutes: {left}"
    );
}
