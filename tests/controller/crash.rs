//! Crash safety: the operator is aborted at every step boundary of create and delete (a
//! test-only fail-point), restarted, and must converge with no orphaned remote key, a
//! Secret whose credentials work, at most one live key per resource, and finalizers gone.
//! Also: the sandbox committing a create and then failing it, and a reconcile from a stale
//! object that must not create twice.

use std::sync::Arc;
use std::time::Duration;

use keypair_operator::controller::{
    CachedKeyPair, Context, Settings, key_pair, providers::Registry,
};
use keypair_operator::crd::ApiKeyPair;
use keypair_operator::sandbox::{Dialect, SandboxConfig};
use keypair_operator::telemetry::events::{Recorder, Reporter};
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::json;

use crate::common::{self, Operator};
use crate::{SESSION_TOKEN, Scenario};

fn tw_spec() -> serde_json::Value {
    json!({"providerRef": {"name": "p"}})
}

fn dt_spec() -> serde_json::Value {
    json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": "1946c4ce5c"}})
}

/// Waits until the key pair settled: a key recorded, no intent pending, the Secret
/// holding that key.
async fn wait_settled(s: &Scenario, name: &str) -> ApiKeyPair {
    let akp = s
        .wait(name, "a recorded key and no pending create", |a| {
            a.status
                .as_ref()
                .is_some_and(|st| st.key_id.is_some() && st.pending_create.is_none())
        })
        .await;
    let api_key = akp.status.clone().unwrap_or_default().api_key;
    common::wait_for(
        "the Secret holds the recorded key",
        Duration::from_secs(30),
        || async {
            let data = s.secret(name).await?;
            (data.get("apiKey") == api_key.as_ref()).then_some(())
        },
    )
    .await;
    akp
}

async fn assert_credentials_work(s: &Scenario, name: &str, threatwinds: bool) {
    let data = s.secret(name).await.expect("Secret");
    if threatwinds {
        assert!(
            crate::threatwinds::check(&s.sandbox.url(), &data["apiKey"], &data["apiSecret"])
                .await
                .is_some(),
            "credentials authenticate"
        );
    } else {
        let keys = s.sandbox.keys().await;
        assert!(
            keys.iter()
                .any(|k| k.api_key == data["apiKey"] && k.secret == data["apiSecret"]),
            "credentials match a live key"
        );
    }
}

async fn crash_during_create(test: &str, threatwinds: bool, failpoint: &str) {
    let env = [("KPO_FAILPOINT", failpoint)];
    let mut s = if threatwinds {
        Scenario::threatwinds(test, Dialect::Current, &[], &env).await
    } else {
        Scenario::datonis(test, &[], &env).await
    };
    s.akp("web", if threatwinds { tw_spec() } else { dt_spec() })
        .await;
    let exit = s.operator.wait_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "the operator aborted at {failpoint}");
    assert!(
        s.operator
            .log_text()
            .contains(&format!("failpoint {failpoint} reached"))
    );
    s.operator.restart_with(&[]).await;
    let akp = wait_settled(&s, "web").await;
    assert!(
        akp.status.unwrap_or_default().create_attempts.unwrap_or(0) <= 2,
        "at most one retry"
    );
    assert_credentials_work(&s, "web", threatwinds).await;
    s.assert_no_orphans(&["web"]).await;
}

async fn crash_during_delete(test: &str, threatwinds: bool, failpoint: &str) {
    let mut s = if threatwinds {
        Scenario::threatwinds(test, Dialect::Detailed, &[], &[]).await
    } else {
        Scenario::datonis(test, &[], &[]).await
    };
    s.akp("web", if threatwinds { tw_spec() } else { dt_spec() })
        .await;
    wait_settled(&s, "web").await;
    s.operator
        .restart_with(&[("KPO_FAILPOINT", failpoint)])
        .await;
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    api.delete("web", &Default::default())
        .await
        .expect("delete");
    let exit = s.operator.wait_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "the operator aborted at {failpoint}");
    s.operator.restart_with(&[]).await;
    common::wait_for("deleted", Duration::from_secs(60), || async {
        api.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(s.sandbox.keys().await.is_empty(), "no orphaned remote key");
}

macro_rules! crash_tests {
    ($($name:ident: $kind:ident $fn:ident $failpoint:literal,)*) => {$(
        #[tokio::test]
        async fn $name() {
            $fn(&stringify!($name).replace('_', "-"), stringify!($kind) == "threatwinds", $failpoint).await;
        }
    )*};
}

crash_tests! {
    crash_tw_intent_written: threatwinds crash_during_create "intent-written",
    crash_tw_remote_created: threatwinds crash_during_create "remote-created",
    crash_tw_secret_written: threatwinds crash_during_create "secret-written",
    crash_tw_status_written: threatwinds crash_during_create "status-written",
    crash_dt_intent_written: datonis crash_during_create "intent-written",
    crash_dt_remote_created: datonis crash_during_create "remote-created",
    crash_dt_secret_written: datonis crash_during_create "secret-written",
    crash_dt_status_written: datonis crash_during_create "status-written",
    crash_tw_remote_deleted: threatwinds crash_during_delete "remote-deleted",
    crash_tw_finalizer_removed: threatwinds crash_during_delete "finalizer-removed",
    crash_dt_remote_deleted: datonis crash_during_delete "remote-deleted",
}

async fn commit_then_fail(test: &str, threatwinds: bool, mode: &str) {
    let s = if threatwinds {
        Scenario::threatwinds(test, Dialect::Current, &[], &[]).await
    } else {
        Scenario::datonis(test, &[], &[]).await
    };
    s.sandbox
        .faults(json!({"commit_then_fail": mode, "commit_then_fail_count": 1}))
        .await;
    s.akp("web", if threatwinds { tw_spec() } else { dt_spec() })
        .await;
    let akp = wait_settled(&s, "web").await;
    assert_eq!(
        akp.status.unwrap_or_default().create_attempts,
        Some(if threatwinds { 2 } else { 1 })
    );
    assert_credentials_work(&s, "web", threatwinds).await;
    s.assert_no_orphans(&["web"]).await;
}

#[tokio::test]
async fn commit_then_500_threatwinds() {
    commit_then_fail("ctf-tw-500", true, "status500").await;
}

#[tokio::test]
async fn commit_then_drop_threatwinds() {
    commit_then_fail("ctf-tw-drop", true, "drop").await;
}

#[tokio::test]
async fn commit_then_500_datonis() {
    commit_then_fail("ctf-dt-500", false, "status500").await;
}

#[tokio::test]
async fn commit_then_drop_datonis() {
    commit_then_fail("ctf-dt-drop", false, "drop").await;
}

#[tokio::test]
async fn a_stale_object_never_creates_a_second_key() {
    let client = common::client_with_crds().await;
    let ns = common::test_namespace(&client, "stale").await;
    let sandbox = common::Sandbox::start({
        let mut c = SandboxConfig::threatwinds();
        c.session_tokens = vec![SESSION_TOKEN.to_owned()];
        c
    })
    .await;
    common::put_secret(&client, &ns, "tw-session", &[("token", SESSION_TOKEN)]).await;
    let provider = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider", "metadata": {"name": "p"},
        "spec": {"threatwinds": {"url": sandbox.url(), "sessionSecretRef": {"name": "tw-session", "key": "token"}}}});
    common::apply_json::<keypair_operator::crd::KeyPairProvider>(&client, Some(&ns), provider)
        .await;
    let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair", "metadata": {"name": "web"}, "spec": tw_spec()});
    let applied: ApiKeyPair = common::apply_json(&client, Some(&ns), object).await;
    let old_version = applied.metadata.resource_version.clone();

    let mut operator = Operator::start(&ns, &Operator::FAST, &[]).await;
    let fresh = common::wait_akp(&client, &ns, "web", "a key", |a| {
        a.status.as_ref().is_some_and(|st| st.key_id.is_some())
    })
    .await;
    operator.stop().await;
    assert_eq!(sandbox.keys().await.len(), 1);

    // The object as a lagging cache would hold it: finalizer on, no status, old version.
    let mut stale = fresh.clone();
    stale.status = None;
    stale.metadata.resource_version = old_version;
    let (secrets, mut secret_writer) = reflector::store();
    secret_writer.apply_watcher_event(&watcher::Event::InitDone);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "stale-test".into(),
            instance: None,
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        Registry::new(client.clone(), Duration::from_secs(5), Default::default()),
        secrets,
        Settings::default(),
    ));
    let result = key_pair::reconcile(Arc::new(CachedKeyPair::from(stale)), ctx).await;
    assert!(result.is_err(), "the stale reconcile is refused");
    assert_eq!(sandbox.keys().await.len(), 1, "no second key");
    let after = common::wait_akp(&client, &ns, "web", "status intact", |_| true).await;
    assert_eq!(
        after.status.and_then(|st| st.key_id),
        fresh.status.and_then(|st| st.key_id)
    );
}

/// Issue 7, fault 2: a 2xx create answer the client cannot use (cut off, wrong shape,
/// missing `apiSecret`/`keyID`, oversized) may have committed: the intent is kept and
/// recovery finds the key, so nothing leaks and the next attempt does not leak another.
macro_rules! spoiled_create_tests {
    ($($name:ident: $provider:ident $mode:literal,)*) => {$(
        #[tokio::test]
        async fn $name() {
            let threatwinds = stringify!($provider) == "threatwinds";
            commit_then_fail(&stringify!($name).replace('_', "-"), threatwinds, $mode).await;
        }
    )*};
}

spoiled_create_tests! {
    spoiled_tw_truncated: threatwinds "truncated",
    spoiled_tw_wrong_shape: threatwinds "wrong_shape",
    spoiled_tw_missing_secret: threatwinds "missing_secret",
    spoiled_tw_missing_key_id: threatwinds "missing_key_id",
    spoiled_tw_oversized: threatwinds "oversized",
    spoiled_dt_truncated: datonis "truncated",
    spoiled_dt_wrong_shape: datonis "wrong_shape",
    spoiled_dt_missing_secret: datonis "missing_secret",
    spoiled_dt_missing_key_id: datonis "missing_key_id",
    spoiled_dt_oversized: datonis "oversized",
}
