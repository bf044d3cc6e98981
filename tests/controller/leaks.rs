//! Secret hygiene: a full scenario runs with logs at trace level; afterwards no API secret,
//! session token, password or verification code appears in the operator's log, in any
//! event, or in any status.

use keypair_operator::crd::ApiKeyPair;
use keypair_operator::sandbox::{DEFAULT_DATONIS_PASSWORD, Dialect, SandboxConfig};
use kube::Api;
use serde_json::json;

use crate::common::{self, Sandbox};
use crate::{SESSION_TOKEN, Scenario};

#[tokio::test]
async fn no_secret_reaches_logs_events_or_status() {
    let trace = ["--log-level", "trace"];
    let s = Scenario::threatwinds("leaks", Dialect::Detailed, &trace, &[]).await;
    let mut secrets: Vec<String> = vec![
        SESSION_TOKEN.to_owned(),
        DEFAULT_DATONIS_PASSWORD.to_owned(),
    ];
    let mut codes: Vec<String> = Vec::new();

    // ThreatWinds: create, a wrong code, the right code, a lost Secret, delete.
    s.akp("web", json!({"providerRef": {"name": "p"}, "verification": {"codeSecretRef": {"name": "code", "key": "code"}}})).await;
    let akp = s
        .wait_ready("web", "False", "VerificationCodeMissing")
        .await;
    common::put_secret(&s.client, &s.ns, "code", &[("code", "000000")]).await;
    s.wait_ready("web", "False", "VerificationCodeRejected")
        .await;
    s.submit_code(&akp).await;
    s.wait_ready("web", "True", "Ready").await;
    secrets.extend(s.sandbox.keys().await.into_iter().map(|k| k.secret));
    let secret_api: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(s.client.clone(), &s.ns);
    secret_api
        .delete("web", &Default::default())
        .await
        .expect("delete Secret");
    s.wait("web", "replaced", |a| {
        a.status
            .as_ref()
            .is_some_and(|st| st.create_attempts == Some(2) && st.pending_create.is_none())
    })
    .await;
    secrets.extend(s.sandbox.keys().await.into_iter().map(|k| k.secret));

    // Datonis in the same namespace: create, update, delete.
    let datonis = Sandbox::start(SandboxConfig::datonis()).await;
    common::put_secret(
        &s.client,
        &s.ns,
        "dt-creds",
        &[
            ("email", keypair_operator::sandbox::DEFAULT_DATONIS_EMAIL),
            ("password", DEFAULT_DATONIS_PASSWORD),
        ],
    )
    .await;
    s.provider(
        "dt",
        json!({"datonis": {"url": datonis.url(), "credentialsSecretRef": {"name": "dt-creds"}}}),
    )
    .await;
    s.akp(
        "agent",
        json!({"providerRef": {"name": "dt"}, "datonis": {"roleKey": "1946c4ce5c"}}),
    )
    .await;
    s.wait_ready("agent", "True", "Ready").await;
    s.akp("agent", json!({"providerRef": {"name": "dt"}, "datonis": {"roleKey": "1946c4ce5c", "enabled": false}})).await;
    s.wait_ready("agent", "True", "Disabled").await;
    secrets.extend(datonis.keys().await.into_iter().map(|k| k.secret));
    codes.extend(s.sandbox.outbox().await.into_iter().map(|m| m.code));
    let statuses: Vec<String> = Api::<ApiKeyPair>::namespaced(s.client.clone(), &s.ns)
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|a| serde_json::to_string(&a.status).unwrap_or_default())
        .collect();
    s.delete_and_wait_gone("web").await;
    s.delete_and_wait_gone("agent").await;

    let events =
        serde_json::to_string(&common::all_events(&s.client, &s.ns).await).unwrap_or_default();
    let providers = serde_json::to_string(
        &Api::<keypair_operator::crd::KeyPairProvider>::namespaced(s.client.clone(), &s.ns)
            .list(&Default::default())
            .await
            .expect("list")
            .items,
    )
    .unwrap_or_default();
    let log = s.operator.log_text();
    assert!(
        log.len() > 10_000,
        "trace logging produced a real log ({} bytes)",
        log.len()
    );
    assert!(secrets.len() >= 5 && codes.len() >= 2);

    let mut hits = Vec::new();
    for secret in &secrets {
        for (place, text) in [
            ("log", &log),
            ("events", &events),
            ("providers", &providers),
        ] {
            if text.contains(secret.as_str()) {
                hits.push(format!("a secret in the {place}"));
            }
        }
        if statuses.iter().any(|st| st.contains(secret.as_str())) {
            hits.push("a secret in a status".to_owned());
        }
    }
    // Six-digit codes are checked where they cannot collide with timestamps and counters.
    for code in &codes {
        if events.contains(code.as_str()) || statuses.iter().any(|st| st.contains(code.as_str())) {
            hits.push("a verification code in events or status".to_owned());
        }
    }
    assert!(
        hits.is_empty(),
        "leaks: {hits:?} (log: {})",
        s.operator.log.display()
    );
}
