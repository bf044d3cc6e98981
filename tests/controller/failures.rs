//! Bad input and provider outages: each gets a clear condition, nothing is lost, and
//! nothing is left behind.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use keypair_operator::crd::{ApiKeyPair, KeyPairProvider};
use keypair_operator::sandbox::Dialect;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::common::{self, Operator};
use crate::{SESSION_TOKEN, Scenario};

#[tokio::test]
async fn an_unknown_provider_is_reported() {
    let s = Scenario::threatwinds("bad-provider", Dialect::Current, &[], &[]).await;
    s.akp("web", json!({"providerRef": {"name": "nope"}})).await;
    let akp = s.wait_ready("web", "False", "ProviderNotFound").await;
    let message = &akp.status.unwrap_or_default().conditions[0].message;
    assert!(message.contains("nope"), "{message}");
    assert!(s.sandbox.keys().await.is_empty());
}

#[tokio::test]
async fn a_provider_in_another_namespace_cannot_be_used() {
    let s = Scenario::threatwinds("other-ns", Dialect::Current, &[], &[]).await;
    let other = common::test_namespace(&s.client, "other-ns-provider").await;
    common::put_secret(&s.client, &other, "tw-session", &[("token", SESSION_TOKEN)]).await;
    let provider = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider", "metadata": {"name": "theirs"},
        "spec": {"threatwinds": {"url": s.sandbox.url(), "sessionSecretRef": {"name": "tw-session", "key": "token"}}}});
    common::apply_json::<KeyPairProvider>(&s.client, Some(&other), provider).await;
    s.akp("web", json!({"providerRef": {"name": "theirs"}}))
        .await;
    let akp = s.wait_ready("web", "False", "ProviderNotFound").await;
    assert!(
        akp.status.unwrap_or_default().conditions[0]
            .message
            .contains("same namespace")
    );
    assert!(s.sandbox.keys().await.is_empty());
}

#[tokio::test]
async fn a_cluster_provider_serves_only_allowed_namespaces() {
    let s = Scenario::threatwinds("cluster-provider", Dialect::Current, &[], &[]).await;
    let creds_ns = common::test_namespace(&s.client, "cluster-creds").await;
    common::put_secret(
        &s.client,
        &creds_ns,
        "tw-session",
        &[("token", SESSION_TOKEN)],
    )
    .await;
    let name = format!("{}-shared", s.ns);
    let provider = |allowed: &str| {
        json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ClusterKeyPairProvider", "metadata": {"name": name},
            "spec": {"credentialsNamespace": creds_ns, "allowedNamespaces": [allowed],
                     "threatwinds": {"url": s.sandbox.url(), "sessionSecretRef": {"name": "tw-session", "key": "token"}}}})
    };
    common::apply_json::<keypair_operator::crd::ClusterKeyPairProvider>(
        &s.client,
        None,
        provider("somewhere-else"),
    )
    .await;
    s.akp(
        "web",
        json!({"providerRef": {"kind": "ClusterKeyPairProvider", "name": name}}),
    )
    .await;
    s.wait_ready("web", "False", "ProviderNotAllowed").await;
    assert!(s.sandbox.keys().await.is_empty());
    // Allowing the namespace lets the key be created (the provider watch triggers it).
    common::apply_json::<keypair_operator::crd::ClusterKeyPairProvider>(
        &s.client,
        None,
        provider(&s.ns),
    )
    .await;
    s.wait_ready("web", "False", "AwaitingVerificationCode")
        .await;
    assert_eq!(s.sandbox.keys().await.len(), 1);
    // Events about the cluster-scoped provider are accepted: they go to kube-system (a
    // 1.20 API server refuses them in `default`).
    let what = "an event about the ClusterKeyPairProvider";
    common::wait_for(what, Duration::from_secs(30), || async {
        let events = common::events_for(&s.client, "kube-system", &name).await;
        events
            .iter()
            .any(|(reason, _)| reason == "CredentialsValid")
            .then_some(())
    })
    .await;
    common::delete_cluster_provider(&s.client, &name).await;
}

#[tokio::test]
async fn a_foreign_secret_is_never_overwritten() {
    let s = Scenario::threatwinds("secret-conflict", Dialect::Current, &[], &[]).await;
    common::put_secret(&s.client, &s.ns, "web", &[("apiKey", "someone-elses")]).await;
    s.akp("web", json!({"providerRef": {"name": "p"}})).await;
    let akp = s.wait_ready("web", "False", "SecretConflict").await;
    assert!(
        akp.status.unwrap_or_default().conditions[0]
            .message
            .contains("not owned")
    );
    let data = s.secret("web").await.expect("Secret");
    assert_eq!(data.len(), 1);
    assert_eq!(data["apiKey"], "someone-elses");
    assert!(
        s.sandbox.keys().await.is_empty(),
        "no key created for a Secret it cannot write"
    );
}

/// A Secret of the key's name made while the key is being created (after the caches
/// looked, so only the write can tell) is left as it was: the Secret write gives way, the
/// new key is deleted and the key pair reports `SecretConflict`. Once with a data key in
/// common (the write conflicts with the other field manager and changes nothing), once
/// without (the write's answer shows the other manager, and what it added is taken back).
#[tokio::test]
async fn a_secret_made_during_the_create_is_never_taken_over() {
    for (i, data_key) in ["apiKey", "token"].into_iter().enumerate() {
        let test = format!("secret-race-{i}");
        let s = Scenario::threatwinds(&test, Dialect::Current, &[], &[]).await;
        s.wait_provider_ready("p").await;
        s.sandbox.faults(json!({"latency_ms": 1500})).await;
        s.akp("web", json!({"providerRef": {"name": "p"}})).await;
        s.wait("web", "the create under way", |a| {
            a.status
                .as_ref()
                .is_some_and(|st| st.pending_create.is_some())
        })
        .await;
        // `data`, not `stringData`: a field manager owns what it writes to `data` only.
        let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
        let theirs: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "web"}, "data": {data_key: "c29tZW9uZS1lbHNlcw=="}}))
        .expect("a Secret");
        let params = PatchParams::apply(common::TEST_MANAGER);
        secrets
            .patch("web", &params, &Patch::Apply(&theirs))
            .await
            .expect("their Secret");
        s.wait_ready("web", "False", "SecretConflict").await;
        let found = secrets.get("web").await.expect("the Secret");
        let data = s.secret("web").await.expect("Secret data");
        assert_eq!(data.len(), 1, "{:?}", data.keys());
        assert_eq!(data[data_key], "someone-elses");
        assert!(found.metadata.owner_references.is_none(), "{found:?}");
        assert!(found.metadata.labels.unwrap_or_default().is_empty());
        assert!(s.sandbox.keys().await.is_empty(), "the new key is deleted");
        s.sandbox.faults(json!({})).await;
    }
}

#[tokio::test]
async fn missing_credentials_make_provider_and_key_pairs_not_ready() {
    let s = Scenario::threatwinds("missing-creds", Dialect::Current, &[], &[]).await;
    s.provider("broken", json!({"threatwinds": {"url": s.sandbox.url(), "sessionSecretRef": {"name": "absent", "key": "token"}}})).await;
    s.akp("web", json!({"providerRef": {"name": "broken"}}))
        .await;
    let akp = s.wait_ready("web", "False", "ProviderNotReady").await;
    assert!(
        akp.status.unwrap_or_default().conditions[0]
            .message
            .contains("absent")
    );
    let providers: Api<KeyPairProvider> = Api::namespaced(s.client.clone(), &s.ns);
    common::wait_for("provider not ready", Duration::from_secs(30), || async {
        let p = providers.get("broken").await.ok()?;
        let ready = p
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.status == "False" && ready.reason == "CredentialsMissing").then_some(())
    })
    .await;
    // A wrong token is rejected by the provider.
    common::put_secret(&s.client, &s.ns, "absent", &[("token", "not-a-session")]).await;
    common::wait_for(
        "provider credentials rejected",
        Duration::from_secs(30),
        || async {
            let p = providers.get("broken").await.ok()?;
            let ready = p
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.reason == "CredentialsRejected").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_datonis_key_pair_without_a_role_is_invalid() {
    let s = Scenario::datonis("dt-no-role", &[], &[]).await;
    s.akp("agent", json!({"providerRef": {"name": "p"}})).await;
    let akp = s.wait_ready("agent", "False", "InvalidSpec").await;
    assert!(
        akp.status.unwrap_or_default().conditions[0]
            .message
            .contains("roleKey")
    );
}

#[tokio::test]
async fn a_provider_outage_during_create_is_retried_without_duplicates() {
    let s = Scenario::threatwinds("outage-create", Dialect::Current, &[], &[]).await;
    s.sandbox
        .faults(json!({"error_rate": 1.0, "error_status": 503}))
        .await;
    s.akp("web", json!({"providerRef": {"name": "p"}})).await;
    s.wait_ready("web", "False", "RemoteUnavailable").await;
    // A 5xx on create may have committed, so the retries look for the attempt's key
    // (list) before creating again.
    assert_eq!(s.sandbox.count("POST /api/auth/v2/keypair").await, 1);
    // Retries with back-off.
    s.wait_count("GET /api/auth/v2/keypairs", 2, Duration::from_secs(30))
        .await;
    s.sandbox.faults(json!({})).await;
    s.wait_ready("web", "False", "AwaitingVerificationCode")
        .await;
    s.assert_no_orphans(&["web"]).await;
}

#[tokio::test]
async fn a_provider_outage_during_delete_keeps_the_finalizer_until_it_succeeds() {
    let s = Scenario::threatwinds("outage-delete", Dialect::Current, &[], &[]).await;
    s.akp("web", json!({"providerRef": {"name": "p"}})).await;
    s.wait_ready("web", "False", "AwaitingVerificationCode")
        .await;
    s.sandbox
        .faults(json!({"error_rate": 1.0, "error_status": 500}))
        .await;
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    api.delete("web", &Default::default())
        .await
        .expect("delete");
    // Two failed deletes.
    s.wait_count(
        "DELETE /api/auth/v2/keypair/{id}",
        2,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        api.get_opt("web").await.expect("get").is_some(),
        "finalizer holds the resource"
    );
    assert_eq!(s.sandbox.keys().await.len(), 1);
    s.sandbox.faults(json!({})).await;
    common::wait_for("deleted", Duration::from_secs(60), || async {
        api.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(s.sandbox.keys().await.is_empty());
}

#[tokio::test]
async fn force_orphan_releases_a_resource_whose_provider_is_gone() {
    let s = Scenario::threatwinds("force-orphan", Dialect::Current, &[], &[]).await;
    s.akp("web", json!({"providerRef": {"name": "p"}})).await;
    s.wait_ready("web", "False", "AwaitingVerificationCode")
        .await;
    let providers: Api<KeyPairProvider> = Api::namespaced(s.client.clone(), &s.ns);
    providers
        .delete("p", &Default::default())
        .await
        .expect("delete provider");
    let api: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    api.delete("web", &Default::default())
        .await
        .expect("delete");
    s.wait("web", "stuck on the missing provider", |a| {
        a.status
            .as_ref()
            .is_some_and(|st| st.conditions.iter().any(|c| c.reason == "ProviderNotFound"))
    })
    .await;
    let patch = json!({"metadata": {"annotations": {"keypairs.dev/force-orphan": "true"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    common::wait_for("released", Duration::from_secs(60), || async {
        api.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(
        s.sandbox.keys().await.len(),
        1,
        "the remote key is left in place"
    );
}

#[tokio::test]
async fn deletion_policy_orphan_leaves_the_remote_key() {
    let s = Scenario::datonis("orphan-policy", &[], &[]).await;
    s.akp("agent", json!({"providerRef": {"name": "p"}, "deletionPolicy": "Orphan", "datonis": {"roleKey": "1946c4ce5c"}})).await;
    s.wait_ready("agent", "True", "Ready").await;
    s.delete_and_wait_gone("agent").await;
    assert_eq!(s.sandbox.keys().await.len(), 1);
}

#[tokio::test]
async fn a_restarted_operator_picks_up_where_it_left_off() {
    let mut s = Scenario::datonis("restart", &[], &[]).await;
    s.akp(
        "agent",
        json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": "1946c4ce5c"}}),
    )
    .await;
    s.wait_ready("agent", "True", "Ready").await;
    s.operator.stop().await;
    s.akp("agent", json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": "1946c4ce5c", "enabled": false}})).await;
    s.operator = Operator::start(&s.ns, &Operator::FAST, &[]).await;
    s.wait("agent", "disabled after restart", |a| {
        a.status
            .as_ref()
            .is_some_and(|st| st.enabled == Some(false))
    })
    .await;
    assert_eq!(s.sandbox.keys().await.len(), 1);
}

/// Found by the soak (`make soak`): every failed routine check flipped a healthy key's
/// `Ready` to False for a second (Argo CD showed Degraded) at the cost of two status
/// writes. A transient failure of a Ready key is now a Warning event, and `Ready` stands.
#[tokio::test]
async fn a_provider_outage_leaves_a_ready_key_ready() {
    let s = Scenario::datonis("outage-ready", &[], &[]).await;
    s.akp(
        "agent",
        json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": "1946c4ce5c"}}),
    )
    .await;
    let ready = s.wait_ready("agent", "True", "Ready").await;
    s.sandbox
        .faults(json!({"error_rate": 1.0, "error_status": 503}))
        .await;
    let failed_checks = || async {
        let stats = s.sandbox.stats().await;
        stats["GET /api/v3/key_pairs/{key}"]["503"]
            .as_u64()
            .unwrap_or(0)
    };
    let failed_sign_ins = || async {
        let stats = s.sandbox.stats().await;
        let all: u64 = stats
            .as_object()
            .map(|m| m.values().filter_map(|v| v["503"].as_u64()).sum())
            .unwrap_or(0);
        all - failed_checks().await
    };
    common::wait_for(
        "three failed key checks and a failed provider check",
        Duration::from_secs(30),
        || async { (failed_checks().await >= 3 && failed_sign_ins().await >= 1).then_some(()) },
    )
    .await;
    let during = s.wait("agent", "read", |_| true).await;
    assert!(common::ready_is(&during, "True", "Ready"));
    assert_eq!(
        during.metadata.resource_version, ready.metadata.resource_version,
        "no status write for a transient failure"
    );
    let events = common::events_for(&s.client, &s.ns, "agent").await;
    assert!(
        events
            .iter()
            .any(|(reason, note)| reason == "RemoteUnavailable" && note.contains("Ready stands")),
        "{events:?}"
    );
    // The provider's own credential check failed too, and it stays Ready as well: its
    // status does not move, so it wakes none of its key pairs.
    let providers: Api<KeyPairProvider> = Api::namespaced(s.client.clone(), &s.ns);
    let provider = providers.get("p").await.expect("provider");
    let ready = provider
        .status
        .and_then(|st| st.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .expect("provider Ready");
    assert_eq!(ready.status, "True", "{ready:?}");
    s.sandbox.faults(json!({})).await;
}
