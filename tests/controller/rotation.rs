//! Renewal before expiry and rotation (issue 8), end to end: renewal at `renewalTime` for
//! both providers and both Datonis strategies, the grace period of the previous key, manual
//! rotation, restarted consumers, Orphan, suspend, and a crash while the previous key is
//! retired.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use keypair_operator::crd::ApiKeyPair;
use keypair_operator::sandbox::Dialect;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use crate::Scenario;
use crate::common::{self, condition};

const ROLE: &str = "1946c4ce5c";

fn status(akp: &ApiKeyPair) -> keypair_operator::crd::ApiKeyPairStatus {
    akp.status.clone().unwrap_or_default()
}

fn key_id(akp: &ApiKeyPair) -> String {
    status(akp).key_id.unwrap_or_default()
}

fn datonis_spec(extra: Value) -> Value {
    let mut spec = json!({"providerRef": {"name": "p"}, "validityDays": 3,
        "datonis": {"roleKey": ROLE}, "rotation": {"gracePeriod": "3s"}});
    merge(&mut spec, extra);
    spec
}

fn threatwinds_spec(extra: Value) -> Value {
    let mut spec = json!({"providerRef": {"name": "p"}, "validityDays": 3,
        "verification": {"codeSecretRef": {"name": "code", "key": "code"}},
        "rotation": {"gracePeriod": "3s"}});
    merge(&mut spec, extra);
    spec
}

fn merge(spec: &mut Value, extra: Value) {
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
}

/// A `renewBefore` that puts the renewal time `seconds` from now for a key expiring then.
fn renew_in(expire_at: &str, seconds: i64) -> String {
    let expiry = DateTime::parse_from_rfc3339(expire_at)
        .expect("expireAt")
        .with_timezone(&Utc);
    let until = (expiry - Utc::now()).num_seconds() - seconds;
    format!("{until}s")
}

async fn wait_event(s: &Scenario, name: &str, reason: &str) {
    common::wait_for(
        &format!("event {reason}"),
        Duration::from_secs(60),
        || async {
            let events = common::events_for(&s.client, &s.ns, name).await;
            events.iter().any(|e| e.0 == reason).then_some(())
        },
    )
    .await;
}

async fn wait_new_key(s: &Scenario, name: &str, old: &str) -> ApiKeyPair {
    s.wait(name, "a new key in use", |a| {
        a.status
            .as_ref()
            .and_then(|st| st.key_id.as_deref())
            .is_some_and(|k| k != old)
            && a.status
                .as_ref()
                .is_some_and(|st| st.pending_create.is_none())
    })
    .await
}

async fn deployment(s: &Scenario, name: &str) {
    let object: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}}
    }))
    .expect("deployment");
    let api: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    api.create(&PostParams::default(), &object)
        .await
        .expect("create deployment");
}

async fn restarted_at(s: &Scenario, name: &str) -> Option<String> {
    let api: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let d = serde_json::to_value(api.get(name).await.expect("deployment")).ok()?;
    let stamp = &d["spec"]["template"]["metadata"]["annotations"]["keypairs.dev/restartedAt"];
    stamp.as_str().map(str::to_owned)
}

/// Datonis `Rotate` renewal: at `renewalTime` a new key takes over the Secret, the
/// consumers are restarted, and the previous key is deleted once its grace period ends.
#[tokio::test]
async fn datonis_renews_by_rotating_at_the_renewal_time() {
    let s = Scenario::datonis("renew-rotate", &[], &[]).await;
    deployment(&s, "app").await;
    let targets = json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "app"}]});
    s.akp("agent", datonis_spec(targets.clone())).await;
    let akp = s.wait_ready("agent", "True", "Ready").await;
    let first = key_id(&akp);
    assert!(status(&akp).renewal_time.is_some(), "renewalTime is shown");
    assert_eq!(
        restarted_at(&s, "app").await,
        None,
        "not restarted for the first key"
    );

    let mut spec = datonis_spec(targets);
    let renew_before = renew_in(status(&akp).expire_at.as_deref().expect("expiry"), 4);
    merge(&mut spec, json!({"renewBefore": renew_before}));
    s.akp("agent", spec.clone()).await;
    let renewal_time = s
        .wait("agent", "the new renewal time", |a| {
            a.status.as_ref().and_then(|st| st.observed_generation) == a.metadata.generation
        })
        .await
        .status
        .and_then(|st| st.renewal_time)
        .expect("renewalTime");
    let akp = wait_new_key(&s, "agent", &first).await;
    let second = key_id(&akp);
    // Stop renewing at once again: the new key would renew as soon too.
    merge(&mut spec, json!({"renewBefore": "1d"}));
    s.akp("agent", spec).await;
    wait_event(&s, "agent", "PreviousKeyRetired").await;
    let keys = s.sandbox.keys().await;
    assert_eq!(
        keys.len(),
        1,
        "the previous key is gone after its grace period"
    );
    assert_eq!(keys[0].id, second);
    let data = s.secret("agent").await.expect("Secret");
    assert_eq!(data["apiKey"], keys[0].api_key);
    let renewal = DateTime::parse_from_rfc3339(&renewal_time).expect("renewalTime");
    assert!(
        keys[0].created_at >= renewal.timestamp(),
        "rotated at the renewal time, not before"
    );
    assert!(
        restarted_at(&s, "app").await.is_some(),
        "consumers restarted"
    );
    assert_eq!(
        s.sandbox.count("DELETE /api/v3/key_pairs/{key}").await,
        1,
        "deleted once"
    );
}

/// Datonis `Extend` renewal: the same key gets a later expiry; no new key, no restart.
#[tokio::test]
async fn datonis_renews_by_extending_the_expiry() {
    let s = Scenario::datonis("renew-extend", &[], &[]).await;
    s.akp(
        "agent",
        datonis_spec(json!({"renewal": {"strategy": "Extend"}})),
    )
    .await;
    let akp = s.wait_ready("agent", "True", "Ready").await;
    let (id, expiry) = (key_id(&akp), status(&akp).expire_at.expect("expiry"));
    let renew_before = renew_in(&expiry, 3);
    s.akp(
        "agent",
        datonis_spec(json!({"renewal": {"strategy": "Extend"}, "renewBefore": renew_before})),
    )
    .await;
    wait_event(&s, "agent", "Extended").await;
    let akp = s
        .wait("agent", "a later expiry", |a| {
            status(a).expire_at.is_some_and(|e| e > expiry)
        })
        .await;
    assert_eq!(key_id(&akp), id, "the same key");
    let keys = s.sandbox.keys().await;
    assert_eq!(keys.len(), 1);
    let moved = DateTime::parse_from_rfc3339(&status(&akp).expire_at.unwrap_or_default())
        .expect("expireAt")
        - DateTime::parse_from_rfc3339(&expiry).expect("expireAt");
    assert_eq!(moved.num_days(), 3, "by validityDays");
}

/// ThreatWinds renewal: the renewal key waits in the pending slot for its code while the
/// old key serves; after the code, it takes over and the old key is deleted after the grace
/// period.
#[tokio::test]
async fn threatwinds_renewal_waits_for_its_code_then_retires_the_old_key() {
    let s = Scenario::threatwinds("renew-tw", Dialect::Current, &[], &[]).await;
    s.akp("web", threatwinds_spec(json!({}))).await;
    let (akp, _) = s.verified("web").await;
    let first = key_id(&akp);
    let before = s.secret("web").await.expect("Secret");

    let renew_before = renew_in(status(&akp).expire_at.as_deref().expect("expiry"), 3);
    s.akp(
        "web",
        threatwinds_spec(json!({"renewBefore": renew_before})),
    )
    .await;
    let akp = s
        .wait("web", "a renewal key waiting for its code", |a| {
            status(a).pending_key.is_some()
        })
        .await;
    let during = s.secret("web").await.expect("Secret");
    assert_eq!(during["apiKey"], before["apiKey"], "the old key serves");
    assert!(during.contains_key("apiKey.pending"));
    s.akp("web", threatwinds_spec(json!({"renewBefore": "1d"})))
        .await;
    s.submit_code(&akp).await;
    let akp = wait_new_key(&s, "web", &first).await;
    wait_event(&s, "web", "PreviousKeyRetired").await;
    let keys = s.sandbox.keys().await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id, key_id(&akp));
    let after = s.secret("web").await.expect("Secret");
    assert_eq!(after["apiKey"], keys[0].api_key);
    assert!(!after.contains_key("apiKey.pending"));
}

/// `keypairs.dev/rotate`: one rotation per distinct value, however often it reconciles.
#[tokio::test]
async fn manual_rotation_happens_once_per_value() {
    let s = Scenario::datonis("rotate-once", &[], &[]).await;
    s.akp("agent", datonis_spec(json!({}))).await;
    let akp = s.wait_ready("agent", "True", "Ready").await;
    let first = key_id(&akp);
    s.annotate("agent", "keypairs.dev/rotate", "a").await;
    let akp = wait_new_key(&s, "agent", &first).await;
    assert_eq!(status(&akp).rotation_request.as_deref(), Some("a"));
    // Two more checks (every 3 s): no further rotation.
    let gets = s.sandbox.count("GET /api/v3/key_pairs/{key}").await;
    s.wait_count(
        "GET /api/v3/key_pairs/{key}",
        gets + 2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        s.sandbox.count("POST /api/v3/key_pairs").await,
        2,
        "one rotation"
    );
    let second = key_id(&akp);
    s.annotate("agent", "keypairs.dev/rotate", "b").await;
    wait_new_key(&s, "agent", &second).await;
    assert_eq!(s.sandbox.count("POST /api/v3/key_pairs").await, 3);
}

/// Restart targets are patched once per new key; a target that cannot be restarted shows
/// in the `ConsumersRestarted` condition and does not break the key pair.
#[tokio::test]
async fn consumers_are_restarted_once_per_rotation() {
    let s = Scenario::datonis("restarts", &[], &[]).await;
    deployment(&s, "app").await;
    let targets = json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "app"}]});
    s.akp("agent", datonis_spec(targets)).await;
    let akp = s.wait_ready("agent", "True", "Ready").await;
    s.annotate("agent", "keypairs.dev/rotate", "1").await;
    wait_new_key(&s, "agent", &key_id(&akp)).await;
    let stamp = common::wait_for("the restart", Duration::from_secs(30), || async {
        restarted_at(&s, "app").await
    })
    .await;
    let gets = s.sandbox.count("GET /api/v3/key_pairs/{key}").await;
    s.wait_count(
        "GET /api/v3/key_pairs/{key}",
        gets + 2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(restarted_at(&s, "app").await, Some(stamp.clone()), "once");
    let akp = s
        .wait("agent", "restarted", |a| {
            condition(a, "ConsumersRestarted").is_some()
        })
        .await;
    assert_eq!(
        condition(&akp, "ConsumersRestarted"),
        Some(("True".into(), "Restarted".into()))
    );

    let missing = json!({"rolloutRestartTargets": [{"kind": "StatefulSet", "name": "missing"}]});
    s.akp("agent", datonis_spec(missing)).await;
    s.annotate("agent", "keypairs.dev/rotate", "2").await;
    let akp = s
        .wait("agent", "a failed restart", |a| {
            condition(a, "ConsumersRestarted").is_some_and(|c| c.1 == "RestartFailed")
        })
        .await;
    assert!(
        common::ready_is(&akp, "True", "Ready"),
        "the key pair itself is fine"
    );
}

/// `deletionPolicy: Orphan` keeps the previous key after its grace period.
#[tokio::test]
async fn orphan_keeps_the_previous_key() {
    let s = Scenario::datonis("rotate-orphan", &[], &[]).await;
    s.akp("agent", datonis_spec(json!({"deletionPolicy": "Orphan"})))
        .await;
    let akp = s.wait_ready("agent", "True", "Ready").await;
    s.annotate("agent", "keypairs.dev/rotate", "1").await;
    wait_new_key(&s, "agent", &key_id(&akp)).await;
    wait_event(&s, "agent", "PreviousKeyRetired").await;
    assert_eq!(s.sandbox.keys().await.len(), 2, "the previous key is kept");
    assert_eq!(s.sandbox.count("DELETE /api/v3/key_pairs/{key}").await, 0);
}

/// `spec.suspend`: no provider call while suspended; resuming creates the key. What is
/// measured is an absence, so the test watches a window of two checks of a healthy key.
#[tokio::test]
async fn suspend_makes_no_provider_calls() {
    let s = Scenario::datonis("suspend", &[], &[]).await;
    s.akp("agent", datonis_spec(json!({"suspend": true}))).await;
    s.akp("witness", datonis_spec(json!({}))).await;
    s.wait_ready("witness", "True", "Ready").await;
    let key_gets = "GET /api/v3/key_pairs/{key}";
    let checks = s.sandbox.count(key_gets).await + 2;
    s.wait_count(key_gets, checks, Duration::from_secs(30))
        .await;
    // The suspended key pair has no key to check: every create and list is the witness's.
    assert_eq!(
        s.sandbox.count("POST /api/v3/key_pairs").await,
        1,
        "one create"
    );
    assert_eq!(s.sandbox.count("GET /api/v3/key_pairs").await, 0, "no list");
    assert_eq!(s.sandbox.keys().await.len(), 1, "the witness's key only");
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    assert!(
        api.get("agent").await.expect("get").status.is_none(),
        "no status write"
    );
    s.akp("agent", datonis_spec(json!({}))).await;
    s.wait_ready("agent", "True", "Ready").await;
}

/// A kill -9 at each step boundary of a rotation: after the restart the rotation
/// finishes, the previous key is deleted exactly once (after its grace period), the
/// Secret serves the one remaining key, and nothing is left behind.
async fn crash_during_rotation(test: &str, threatwinds: bool, failpoint: &str) {
    let grace = json!({"rotation": {"gracePeriod": "2s"}});
    let mut s = if threatwinds {
        Scenario::threatwinds(test, Dialect::Current, &[], &[]).await
    } else {
        Scenario::datonis(test, &[], &[]).await
    };
    let spec = if threatwinds {
        threatwinds_spec(grace)
    } else {
        datonis_spec(grace)
    };
    s.akp("web", spec).await;
    if threatwinds {
        let akp = s
            .wait_ready("web", "False", "VerificationCodeMissing")
            .await;
        s.submit_code(&akp).await;
    }
    let akp = s.wait_ready("web", "True", "Ready").await;
    let first = key_id(&akp);
    s.operator
        .restart_with(&[("KPO_FAILPOINT", failpoint)])
        .await;
    s.annotate("web", "keypairs.dev/rotate", "1").await;
    // The promotion (and so the retirement) of a ThreatWinds key needs its code.
    let needs_code_first = threatwinds && failpoint == "previous-deleted";
    if needs_code_first {
        submit_renewal_code(&s).await;
    }
    let exit = s.operator.wait_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "{failpoint}: aborted at the failpoint");
    s.operator.restart_with(&[]).await;
    if threatwinds && !needs_code_first {
        submit_renewal_code(&s).await;
    }
    let akp = s
        .wait("web", "rotated, grace period over", |a| {
            let st = status(a);
            st.key_id.as_deref().is_some_and(|k| k != first)
                && st.previous_key.is_none()
                && st.pending_key.is_none()
                && st.pending_create.is_none()
        })
        .await;
    let keys = s.sandbox.keys().await;
    assert_eq!(keys.len(), 1, "{failpoint}: {keys:?}");
    assert_eq!(keys[0].id, key_id(&akp));
    s.assert_no_orphans(&["web"]).await;
}

/// Puts the code of the renewal key (ThreatWinds) once it waits for one.
async fn submit_renewal_code(s: &Scenario) {
    let akp = s
        .wait("web", "a replacement with its code id", |a| {
            status(a)
                .pending_key
                .is_some_and(|p| p.verification_code_id.is_some())
        })
        .await;
    s.submit_code(&akp).await;
}

macro_rules! rotation_crash_tests {
    ($($name:ident: $provider:ident $failpoint:literal,)*) => {$(
        #[tokio::test]
        async fn $name() {
            let threatwinds = stringify!($provider) == "threatwinds";
            crash_during_rotation(&stringify!($name).replace('_', "-"), threatwinds, $failpoint).await;
        }
    )*};
}

rotation_crash_tests! {
    rotate_crash_dt_intent_written: datonis "intent-written",
    rotate_crash_dt_remote_created: datonis "remote-created",
    rotate_crash_dt_secret_written: datonis "secret-written",
    rotate_crash_dt_status_written: datonis "status-written",
    rotate_crash_dt_previous_deleted: datonis "previous-deleted",
    rotate_crash_tw_intent_written: threatwinds "intent-written",
    rotate_crash_tw_remote_created: threatwinds "remote-created",
    rotate_crash_tw_secret_written: threatwinds "secret-written",
    rotate_crash_tw_status_written: threatwinds "status-written",
    rotate_crash_tw_previous_deleted: threatwinds "previous-deleted",
}

/// `deletionPolicy: Disable` (Datonis): deleting the resource disables the key at the
/// provider instead of deleting it; `secretTemplate.type` types the Secret.
#[tokio::test]
async fn disable_policy_and_typed_secret() {
    let s = Scenario::datonis("disable", &[], &[]).await;
    let extra =
        json!({"deletionPolicy": "Disable", "secretTemplate": {"type": "example.com/api-key"}});
    s.akp("agent", datonis_spec(extra)).await;
    s.wait_ready("agent", "True", "Ready").await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let secret = secrets.get("agent").await.expect("Secret");
    assert_eq!(secret.type_.as_deref(), Some("example.com/api-key"));
    let hash = secret.metadata.annotations.unwrap_or_default();
    assert!(hash.contains_key("keypairs.dev/data-hash"), "{hash:?}");
    s.delete_and_wait_gone("agent").await;
    let keys = s.sandbox.keys().await;
    assert_eq!(keys.len(), 1, "kept at the provider");
    assert_eq!(keys[0].enabled, Some(false), "disabled");
}

/// `spec.import`: a key pair made by hand, whose credentials are in a Secret, is adopted
/// after the provider confirms them; wrong credentials are refused with a condition.
#[tokio::test]
async fn a_key_made_by_hand_is_imported_after_the_provider_confirms_it() {
    use keypair_operator::provider::{
        CreateKeyPair, DatonisClient, DatonisCredentials, HttpOptions, KeyPairApi,
    };
    use keypair_operator::sandbox::{DEFAULT_DATONIS_EMAIL, DEFAULT_DATONIS_PASSWORD};
    use secrecy::{ExposeSecret, SecretString};
    let s = Scenario::datonis("import", &[], &[]).await;
    let credentials = DatonisCredentials::Password {
        email: DEFAULT_DATONIS_EMAIL.into(),
        password: SecretString::from(DEFAULT_DATONIS_PASSWORD),
    };
    let client =
        DatonisClient::new(&s.sandbox.url(), credentials, HttpOptions::default()).expect("client");
    let request = CreateKeyPair {
        name: "by hand".into(),
        validity_days: 30,
        role_key: Some(ROLE.into()),
    };
    let made = client.create(&request).await.expect("create by hand");
    let secret = made.api_secret.expose_secret().to_owned();
    let api_key = made.key.api_key.clone();
    common::put_secret(
        &s.client,
        &s.ns,
        "wrong",
        &[("apiKey", &api_key), ("apiSecret", "not-it")],
    )
    .await;
    common::put_secret(
        &s.client,
        &s.ns,
        "agent",
        &[("apiKey", &api_key), ("apiSecret", &secret)],
    )
    .await;
    let import = json!({"import": {"keyID": made.key.key_id}});

    let mut refused = datonis_spec(import.clone());
    merge(&mut refused, json!({"secretName": "wrong"}));
    s.akp("refused", refused).await;
    let akp = s.wait_ready("refused", "False", "ImportRejected").await;
    let message = keypair_operator::conditions::find(&status(&akp).conditions, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("API secret"), "{message}");
    assert!(
        !message.contains(&secret) && !message.contains("not-it"),
        "no secret in the message"
    );

    s.akp("agent", datonis_spec(import)).await;
    let akp = s.wait_ready("agent", "True", "Ready").await;
    assert_eq!(key_id(&akp), made.key.key_id, "the same key");
    assert_eq!(s.sandbox.keys().await.len(), 1, "no new key");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let taken = secrets.get("agent").await.expect("Secret");
    assert!(
        taken
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|r| r.name == "agent"),
        "the Secret is taken over"
    );
    let data = s.secret("agent").await.expect("data");
    assert_eq!(data["apiSecret"], secret, "the same credentials");
}

/// `spec.checkInterval` overrides the operator's `--check-interval` for one resource.
#[tokio::test]
async fn check_interval_is_set_per_resource() {
    let s = Scenario::datonis("check-interval", &["--check-interval", "1h"], &[]).await;
    s.akp("agent", datonis_spec(json!({"checkInterval": "1s"})))
        .await;
    s.wait_ready("agent", "True", "Ready").await;
    // Checks every second.
    let gets = s.sandbox.count("GET /api/v3/key_pairs/{key}").await;
    s.wait_count(
        "GET /api/v3/key_pairs/{key}",
        gets + 3,
        Duration::from_secs(30),
    )
    .await;
}
