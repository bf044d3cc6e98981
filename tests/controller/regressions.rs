//! The faults of the lifecycle review (issue 7), end to end: the lifecycle under every
//! strict reading of the provider docs, refusals that back off (and unreadable answers
//! that are not taken for refusals), Orphan that keeps the Secret, spec edits that move or
//! refuse instead of destroying, and a replacement whose credentials are lost. (Undecodable creates are in `crash.rs`; the decision tables in the
//! unit tests of `src/controller/plan.rs`; crash × fault combinations in the model test.)

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use keypair_operator::crd::ApiKeyPair;
use keypair_operator::sandbox::{
    DEFAULT_DATONIS_EMAIL, DEFAULT_DATONIS_PASSWORD, DatonisReadings, Dialect, SandboxConfig,
    ThreatWindsReadings,
};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::common::{self, condition};
use crate::{SESSION_TOKEN, Scenario};

const ROLE: &str = "1946c4ce5c";
const OTHER_ROLE: &str = "517d8e4695";

fn tw_spec() -> serde_json::Value {
    json!({"providerRef": {"name": "p"}, "validityDays": 30, "verification": {"codeSecretRef": {"name": "code", "key": "code"}}})
}

fn dt_spec(role: &str, enabled: bool) -> serde_json::Value {
    json!({"providerRef": {"name": "p"}, "validityDays": 30, "datonis": {"roleKey": role, "enabled": enabled}})
}

fn key_id(akp: &ApiKeyPair) -> String {
    akp.status
        .clone()
        .unwrap_or_default()
        .key_id
        .unwrap_or_default()
}

/// Faults 1 and 4 (new-code header) under every strict ThreatWinds reading: a key that waits
/// for its code is observed through the session's list, never checked with its own
/// credentials (which the strict server refuses with 401), so it is neither deleted nor
/// replaced; a new code can be requested in either header form; the key verifies.
#[tokio::test]
async fn threatwinds_lifecycle_under_every_strict_reading() {
    for (i, (name, readings)) in ThreatWindsReadings::strict_profiles()
        .into_iter()
        .enumerate()
    {
        let mut config = SandboxConfig::threatwinds();
        config.session_tokens = vec![SESSION_TOKEN.to_owned()];
        config.threatwinds_readings = readings;
        let s = Scenario::with_sandbox(&format!("tw-strict-{i}"), config, &[], &[]).await;
        s.akp("web", tw_spec()).await;
        let akp = s
            .wait_ready("web", "False", "VerificationCodeMissing")
            .await;
        let first = key_id(&akp);
        // Two more checks (every 3 s) while unverified.
        let lists = s.sandbox.count("GET /api/auth/v2/keypairs").await;
        s.wait_count(
            "GET /api/auth/v2/keypairs",
            lists + 2,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            s.sandbox.count("GET /api/auth/v2/keypair").await,
            0,
            "{name}"
        );
        let keys = s.sandbox.keys().await;
        assert_eq!(keys.len(), 1, "{name}: no replacement while unverified");
        assert_eq!(keys[0].id, first, "{name}");

        s.annotate("web", "keypairs.dev/request-new-code", "1")
            .await;
        let akp = s
            .wait("web", "a new code id", |a| {
                a.status
                    .as_ref()
                    .is_some_and(|st| st.new_code_request.as_deref() == Some("1"))
            })
            .await;
        s.submit_code(&akp).await;
        let akp = s.wait_ready("web", "True", "Ready").await;
        assert_eq!(key_id(&akp), first, "{name}");
        assert!(
            s.sandbox.count("GET /api/auth/v2/keypair").await >= 1,
            "{name}: verified keys are checked"
        );
        s.delete_and_wait_gone("web").await;
        assert!(s.sandbox.keys().await.is_empty(), "{name}");
    }
}

/// Faults 3 and 4 under every strict Datonis reading, with 45 unrelated keys in the account
/// (several pages): create, update in place (role, enabled, validity), delete.
#[tokio::test]
async fn datonis_lifecycle_under_every_strict_reading() {
    for (i, (name, mut readings)) in DatonisReadings::strict_profiles().into_iter().enumerate() {
        readings.preexisting_keys = 45;
        let mut config = SandboxConfig::datonis();
        config.datonis_readings = readings;
        let s = Scenario::with_sandbox(&format!("dt-strict-{i}"), config, &[], &[]).await;
        s.akp("agent", dt_spec(ROLE, true)).await;
        let akp = s.wait_ready("agent", "True", "Ready").await;
        let id = key_id(&akp);
        s.akp("agent", dt_spec(OTHER_ROLE, false)).await;
        s.wait("agent", "updated", |a| {
            common::ready_is(a, "True", "Disabled")
                && a.status
                    .as_ref()
                    .is_some_and(|st| st.role_key.as_deref() == Some(OTHER_ROLE))
        })
        .await;
        let keys = s.sandbox.keys().await;
        assert_eq!(keys.len(), 46, "{name}: updated in place");
        let ours = keys.iter().find(|k| k.id == id).expect("our key");
        assert_eq!(ours.role_key.as_deref(), Some(OTHER_ROLE), "{name}");
        assert_eq!(ours.enabled, Some(false), "{name}");
        s.delete_and_wait_gone("agent").await;
        let keys = s.sandbox.keys().await;
        assert_eq!(keys.len(), 45, "{name}: only the unrelated keys remain");
    }
}

/// Fault 13: a create the provider refuses (a role the account lacks: 422) is recorded
/// once and retried with growing back-off, not in a hot loop driven by its own status
/// writes (1,053 creates in 30 s before). What is measured is a rate, so the test watches
/// a window measured by the operator's own checks of another key.
#[tokio::test]
async fn a_refused_create_backs_off() {
    let s = Scenario::datonis("refused-create", &[], &[]).await;
    // A provider turning ready is a reason to try again: start from a ready one, so that
    // any second attempt here is the back-off failing.
    s.wait_provider_ready("p").await;
    s.akp("agent", dt_spec("no-such-role", true)).await;
    s.wait_ready("agent", "False", "RemoteRejected").await;
    // The operator's own checks of a healthy key measure the time: four of them, every 3 s,
    // span about 10 s, in which a back-off from 1 s would have tried four more times.
    s.akp("witness", dt_spec(ROLE, true)).await;
    s.wait_ready("witness", "True", "Ready").await;
    let checks = s.sandbox.count("GET /api/v3/key_pairs/{key}").await;
    s.wait_count(
        "GET /api/v3/key_pairs/{key}",
        checks + 4,
        Duration::from_secs(30),
    )
    .await;
    // Back-off from 32 s: no second attempt, and the one attempt made at most two calls
    // (the client tries the other date order once on a refusal).
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    let now = api.get("agent").await.expect("get");
    let attempts = now.status.unwrap_or_default().create_attempts.unwrap_or(0);
    assert_eq!(attempts, 1, "{attempts} create attempts while backing off");
    let creates = s.sandbox.count("POST /api/v3/key_pairs").await;
    assert!(
        creates <= 3,
        "{creates} creates (the witness's one included)"
    );
    assert_eq!(s.sandbox.keys().await.len(), 1, "only the witness's key");
}

/// Fault 13: an update the provider refuses shows as `Ready=False` with the provider's
/// message at the new generation, is not sent again on later checks, and clears when the
/// spec changes.
#[tokio::test]
async fn a_refused_update_shows_until_the_spec_changes() {
    let s = Scenario::datonis("refused-update", &[], &[]).await;
    s.akp("agent", dt_spec(ROLE, true)).await;
    s.wait_ready("agent", "True", "Ready").await;
    s.akp("agent", dt_spec("no-such-role", true)).await;
    let akp = s
        .wait("agent", "the refusal at the new generation", |a| {
            common::ready_is(a, "False", "RemoteRejected")
                && a.status.as_ref().and_then(|st| st.observed_generation) == a.metadata.generation
        })
        .await;
    let ready = akp.status.clone().unwrap_or_default().conditions;
    let message = conditions_message(&ready);
    assert!(message.contains("refused the update"), "{message}");
    let puts = s.sandbox.count("PUT /api/v3/key_pairs/{key}").await;
    let gets = s.sandbox.count("GET /api/v3/key_pairs/{key}").await;
    s.wait_count(
        "GET /api/v3/key_pairs/{key}",
        gets + 2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        s.sandbox.count("PUT /api/v3/key_pairs/{key}").await,
        puts,
        "not re-sent"
    );
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    let still = api.get("agent").await.expect("get");
    assert!(common::ready_is(&still, "False", "RemoteRejected"));
    s.akp("agent", dt_spec(OTHER_ROLE, true)).await;
    s.wait("agent", "the new role", |a| {
        common::ready_is(a, "True", "Ready")
            && a.status
                .as_ref()
                .is_some_and(|st| st.role_key.as_deref() == Some(OTHER_ROLE))
    })
    .await;
}

/// An update answered with success and a body the client cannot read may have been
/// applied: it is not reported as refused; the retry reads the key afresh and finds the
/// change made, so nothing is sent twice.
#[tokio::test]
async fn an_unreadable_update_answer_is_settled_by_a_fresh_read() {
    let s = Scenario::datonis("unreadable-update", &[], &[]).await;
    s.akp("agent", dt_spec(ROLE, true)).await;
    s.wait_ready("agent", "True", "Ready").await;
    s.sandbox
        .faults(json!({"commit_then_fail": "truncated", "commit_then_fail_on": "update"}))
        .await;
    s.akp("agent", dt_spec(OTHER_ROLE, true)).await;
    s.wait("agent", "the new role, Ready at the new generation", |a| {
        common::ready_is(a, "True", "Ready")
            && a.status.as_ref().is_some_and(|st| {
                st.role_key.as_deref() == Some(OTHER_ROLE)
                    && st.observed_generation == a.metadata.generation
            })
    })
    .await;
    assert_eq!(s.sandbox.count("PUT /api/v3/key_pairs/{key}").await, 1);
    let events = common::events_for(&s.client, &s.ns, "agent").await;
    assert!(
        events
            .iter()
            .any(|(reason, _)| reason == "UnexpectedResponse"),
        "the spoiled answer is told: {events:?}"
    );
    assert!(
        !events.iter().any(|(reason, _)| reason == "RemoteRejected"),
        "not taken for a refusal: {events:?}"
    );
}

fn conditions_message(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> String {
    keypair_operator::conditions::find(conditions, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Fault 10: `deletionPolicy: Orphan` and force-orphan release the Secret (drop the owner
/// reference), so garbage collection does not destroy the only copy of a ThreatWinds secret.
#[tokio::test]
async fn orphaning_keeps_the_secret() {
    let s = Scenario::threatwinds("orphan-secret", Default::default(), &[], &[]).await;
    let mut spec = tw_spec();
    spec["deletionPolicy"] = json!("Orphan");
    s.akp("web", spec).await;
    let akp = s
        .wait_ready("web", "False", "VerificationCodeMissing")
        .await;
    s.submit_code(&akp).await;
    s.wait_ready("web", "True", "Ready").await;
    s.akp("forced", json!({"providerRef": {"name": "p"}})).await;
    s.wait_ready("forced", "False", "AwaitingVerificationCode")
        .await;
    s.annotate("forced", "keypairs.dev/force-orphan", "true")
        .await;
    for name in ["web", "forced"] {
        s.delete_and_wait_gone(name).await;
        let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
        let secret = secrets.get(name).await.expect("the Secret is kept");
        assert!(
            secret
                .metadata
                .owner_references
                .unwrap_or_default()
                .is_empty(),
            "{name}: released"
        );
        assert!(
            secret.data.unwrap_or_default().contains_key("apiSecret"),
            "{name}"
        );
        let events = common::events_for(&s.client, &s.ns, name).await;
        assert!(
            events.iter().any(|e| e.0 == "Orphaned"),
            "{name}: {events:?}"
        );
    }
    assert_eq!(s.sandbox.keys().await.len(), 2, "both remote keys are left");
}

/// Fault 12: editing `secretName` or `secretTemplate.keys` moves the credentials (same key,
/// no new one); editing `providerRef` while a key exists is refused with a clear condition,
/// and deleting the resource then deletes the key where it lives.
#[tokio::test]
async fn spec_edits_move_the_secret_or_are_refused() {
    let s = Scenario::threatwinds("spec-edits", Default::default(), &[], &[]).await;
    s.akp("web", tw_spec()).await;
    let (akp, _) = s.verified("web").await;
    let id = key_id(&akp);
    let before = s.secret("web").await.expect("Secret");

    let mut spec = tw_spec();
    spec["secretName"] = json!("web-moved");
    spec["secretTemplate"] = json!({"keys": {"apiKey": "KEY", "apiSecret": "SECRET"}});
    s.akp("web", spec.clone()).await;
    let moved = common::wait_for("the moved Secret", Duration::from_secs(30), || async {
        s.secret("web-moved")
            .await
            .filter(|d| d.contains_key("KEY"))
    })
    .await;
    assert_eq!(moved["KEY"], before["apiKey"]);
    assert_eq!(moved["SECRET"], before["apiSecret"]);
    let akp = s
        .wait("web", "ready at the new generation", |a| {
            common::ready_is(a, "True", "Ready")
                && a.status.as_ref().and_then(|st| st.observed_generation) == a.metadata.generation
        })
        .await;
    assert_eq!(key_id(&akp), id, "the same key");
    assert_eq!(s.sandbox.keys().await.len(), 1, "no new key");

    spec["providerRef"] = json!({"name": "elsewhere"});
    s.akp("web", spec).await;
    let akp = s.wait_ready("web", "False", "InvalidSpec").await;
    let message = conditions_message(&akp.status.clone().unwrap_or_default().conditions);
    assert!(message.contains("providerRef"), "{message}");
    s.delete_and_wait_gone("web").await;
    assert!(
        s.sandbox.keys().await.is_empty(),
        "deleted at the provider it lives at"
    );
}

/// Fault 7: the Secret is lost while a replacement waits for its code: the replacement is
/// deleted at the provider (its secret is gone too), the key is replaced, and nothing is
/// left pending for ever.
#[tokio::test]
async fn a_lost_secret_during_a_replacement_abandons_the_replacement() {
    let s = Scenario::threatwinds("lost-during-replace", Default::default(), &[], &[]).await;
    s.akp("web", tw_spec()).await;
    let (akp, _) = s.verified("web").await;
    let old = key_id(&akp);
    let mut spec = tw_spec();
    spec["keyName"] = json!("renamed");
    s.akp("web", spec).await;
    let akp = s.wait_ready("web", "True", "ReplacementPending").await;
    let pending = akp
        .status
        .clone()
        .unwrap_or_default()
        .pending_key
        .expect("pending")
        .key_id;

    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .delete("web", &Default::default())
        .await
        .expect("delete Secret");
    let akp = s
        .wait("web", "a new key without a pending replacement", |a| {
            a.status.as_ref().is_some_and(|st| {
                st.pending_key.is_none()
                    && st
                        .key_id
                        .as_deref()
                        .is_some_and(|k| k != old && k != pending)
            })
        })
        .await;
    let keys = s.sandbox.keys().await;
    assert_eq!(keys.len(), 1, "old key and replacement deleted: {keys:?}");
    assert_eq!(keys[0].id, key_id(&akp));
    // Recorded with conditions that describe it, in the same write.
    assert_eq!(
        condition(&akp, "Verified").map(|c| c.0),
        Some("False".to_owned()),
        "the new key waits for its code"
    );
    s.submit_code(&akp).await;
    s.wait_ready("web", "True", "Ready").await;
}

/// Fault 11: with several watched namespaces, an interrupted Datonis create in one namespace
/// never adopts the key a resource in another namespace uses (the fingerprint check reads
/// every watched namespace, not only the one whose cache the reconcile has).
#[tokio::test]
async fn datonis_recovery_never_adopts_another_namespaces_key() {
    let mut s = Scenario::datonis("fp-a", &[], &[]).await;
    s.akp("a1", dt_spec(ROLE, true)).await;
    let a1 = s.wait_ready("a1", "True", "Ready").await;
    let taken = key_id(&a1);
    s.operator.stop().await;

    // Namespace B uses the same account and holds an attempt interrupted at the very time
    // a1's key was made, with the same role and validity: a1's key fits its fingerprint.
    let b = common::test_namespace(&s.client, "fp-b").await;
    let creds = [
        ("email", DEFAULT_DATONIS_EMAIL),
        ("password", DEFAULT_DATONIS_PASSWORD),
    ];
    common::put_secret(&s.client, &b, "dt-creds", &creds).await;
    let provider = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider", "metadata": {"name": "p"},
        "spec": {"datonis": {"url": s.sandbox.url(), "credentialsSecretRef": {"name": "dt-creds"}}}});
    common::apply_json::<keypair_operator::crd::KeyPairProvider>(&s.client, Some(&b), provider)
        .await;
    let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
        "metadata": {"name": "b1", "finalizers": ["keypairs.dev/remote-key"]}, "spec": dt_spec(ROLE, true)});
    common::apply_json::<ApiKeyPair>(&s.client, Some(&b), object).await;
    let started = a1
        .metadata
        .creation_timestamp
        .expect("created")
        .0
        .to_string();
    let status = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair", "metadata": {"name": "b1"},
        "status": {"createAttempts": 1, "pendingCreate": {"attempt": 1, "startedAt": started, "purpose": "Initial"}}});
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &b);
    api.patch_status(
        "b1",
        // Written by the operator's field manager, as if it had crashed right there.
        &PatchParams::apply("keypair-operator").force(),
        &Patch::Apply(&status),
    )
    .await
    .expect("interrupted attempt");

    s.operator =
        crate::common::Operator::start(&s.ns, &["--namespace", &b, "--check-interval", "3s"], &[])
            .await;
    let b1 = common::wait_akp(&s.client, &b, "b1", "its own key", |a| {
        a.status
            .as_ref()
            .is_some_and(|st| st.key_id.is_some() && st.pending_create.is_none())
    })
    .await;
    assert_ne!(key_id(&b1), taken, "b1 adopted a1's key");
    assert_eq!(s.sandbox.keys().await.len(), 2);
}

/// Datonis recovery looks for what the interrupted attempt asked for (recorded with its
/// intent), not for a spec edited while the operator was down: the committed key is adopted
/// and updated in place, not leaked beside a new one.
#[tokio::test]
async fn datonis_recovery_matches_the_attempt_not_a_later_spec() {
    let mut s = Scenario::datonis(
        "recover-edited",
        &[],
        &[("KPO_FAILPOINT", "remote-created")],
    )
    .await;
    s.akp("agent", dt_spec(ROLE, true)).await;
    let exit = s.operator.wait_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "aborted after the remote create");
    s.akp("agent", dt_spec(OTHER_ROLE, true)).await;
    s.operator.restart_with(&[]).await;
    s.wait("agent", "ready with the edited role", |a| {
        common::ready_is(a, "True", "Ready")
            && a.status
                .as_ref()
                .is_some_and(|st| st.role_key.as_deref() == Some(OTHER_ROLE))
    })
    .await;
    let keys = s.sandbox.keys().await;
    assert_eq!(keys.len(), 1, "adopted, not leaked: {keys:?}");
    assert_eq!(keys[0].role_key.as_deref(), Some(OTHER_ROLE));
}

/// Found by the fault campaign (`make chaos`, seed 8): a Secret whose API secret someone
/// overwrote stayed Ready until the key's next check slot (an hour by default). An edit of
/// the Secret's credentials is now checked at once: ThreatWinds (which shows a secret only
/// once) replaces the key; Datonis restores the secret from the provider.
#[tokio::test]
async fn an_overwritten_api_secret_is_noticed_at_once() {
    let slow = [
        "--check-interval",
        "1h",
        "--verification-poll-interval",
        "1s",
    ];
    let corrupt = |s: &Scenario| {
        let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
        async move {
            let patch = json!({"stringData": {"apiSecret": "overwritten-by-hand"}});
            secrets
                .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("overwrite the API secret");
        }
    };

    let tw = Scenario::threatwinds("edited-secret-tw", Dialect::Current, &slow, &[]).await;
    tw.akp("web", tw_spec()).await;
    tw.verified("web").await;
    corrupt(&tw).await;
    tw.wait("web", "a replacement for the lost secret", |a| {
        a.status.as_ref().and_then(|s| s.create_attempts) == Some(2)
    })
    .await;

    // Found by the campaign (seed 1097): a key still waiting for its code, whose secret was
    // overwritten, failed every new-code request with a 401 forever. Now the session's
    // list shows the key exists, so the secret is taken for lost and the key replaced.
    let waiting =
        Scenario::threatwinds("edited-secret-unverified", Dialect::Current, &slow, &[]).await;
    waiting.akp("web", tw_spec()).await;
    waiting
        .wait_ready("web", "False", "VerificationCodeMissing")
        .await;
    corrupt(&waiting).await;
    waiting
        .annotate("web", "keypairs.dev/request-new-code", "1")
        .await;
    waiting
        .wait("web", "a replacement for the refused secret", |a| {
            a.status.as_ref().and_then(|s| s.create_attempts) == Some(2)
        })
        .await;
    let (_, data) = waiting.verified("web").await;
    assert_ne!(data["apiSecret"], "overwritten-by-hand");
    waiting.assert_no_orphans(&["web"]).await;

    let dt = Scenario::datonis("edited-secret-dt", &slow, &[]).await;
    dt.akp("web", dt_spec(ROLE, true)).await;
    dt.wait_ready("web", "True", "Ready").await;
    let served = dt.secret("web").await.expect("Secret");
    corrupt(&dt).await;
    common::wait_for("the secret restored", Duration::from_secs(30), || async {
        (dt.secret("web").await? == served).then_some(())
    })
    .await;
    assert_eq!(dt.sandbox.keys().await.len(), 1, "no new key");
}

/// Seen in the fault campaign (seeds 7031, 7159 of 883c54b): a ThreatWinds key deleted
/// behind the operator's back while it waited for its code refused every code (its codes
/// died with it) until the next periodic check, an hour by default. A refused code is now
/// read against the session's list, and a key it no longer shows is recreated.
#[tokio::test]
async fn a_key_deleted_while_it_waits_for_its_code_is_recreated_when_the_code_is_refused() {
    let slow = [
        "--check-interval",
        "1h",
        "--verification-poll-interval",
        "1s",
    ];
    let s = Scenario::threatwinds("gone-waiting", Dialect::Current, &slow, &[]).await;
    s.akp("web", tw_spec()).await;
    let waiting = s
        .wait_ready("web", "False", "VerificationCodeMissing")
        .await;
    let key_id = waiting
        .status
        .clone()
        .and_then(|st| st.key_id)
        .expect("key id");
    assert!(
        s.sandbox.remove_key(&key_id).await,
        "removed behind the operator's back"
    );
    s.submit_code(&waiting).await;
    let recreated = s
        .wait("web", "a new key", |a| {
            a.status.as_ref().and_then(|st| st.create_attempts) == Some(2)
                && a.status.as_ref().and_then(|st| st.key_id.as_deref()) != Some(key_id.as_str())
        })
        .await;
    s.submit_code(&recreated).await;
    s.wait_ready("web", "True", "Ready").await;
    s.assert_no_orphans(&["web"]).await;
}
