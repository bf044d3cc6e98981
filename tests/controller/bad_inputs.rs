//! A corpus of bad objects the schema lets through, end to end against the real apiserver
//! and the operator binary: each gets a clear condition with a reason, none creates a key
//! whose secret could not be stored, the operator neither panics nor restarts, and no bad
//! object causes a write storm (writes per object are counted with a watch over a window,
//! and the operator's own write requests from its `/metrics`). Inputs that are odd but fine
//! (credentials and codes with trailing newlines, huge annotations, unicode, names of 253
//! characters) work.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use keypair_operator::crd::{ApiKeyPair, KeyPairProvider};
use keypair_operator::sandbox::{
    DEFAULT_DATONIS_EMAIL, DEFAULT_DATONIS_PASSWORD, Dialect, SandboxConfig,
};
use kube::Api;
use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

use crate::common::{self, Sandbox};
use crate::{SESSION_TOKEN, Scenario};

/// How long writes are counted once every object has settled.
const WINDOW: Duration = Duration::from_secs(40);

/// Most writes (status or metadata changes) one settled object may see in [`WINDOW`].
const MAX_WRITES_PER_OBJECT: usize = 2;

fn tw(provider: &str, extra: Value) -> Value {
    let mut spec = json!({"providerRef": {"name": provider}, "validityDays": 30});
    if let (Value::Object(s), Value::Object(e)) = (&mut spec, extra) {
        s.extend(e);
    }
    spec
}

fn with_code(name: &str, extra: Value) -> Value {
    let mut spec = tw(
        "p",
        json!({"verification": {"codeSecretRef": {"name": format!("code-{name}"), "key": "code"}}}),
    );
    if let (Value::Object(s), Value::Object(e)) = (&mut spec, extra) {
        s.extend(e);
    }
    spec
}

/// A Secret with raw bytes as data (binary values, trailing newlines).
async fn put_raw_secret(s: &Scenario, name: &str, data: &[(&str, &[u8])]) {
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let data: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
        .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    secrets
        .patch(
            name,
            &PatchParams::apply(common::TEST_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("apply secret {name}: {e}"));
}

/// A ThreatWinds provider whose session Secret is `secret` (key `token`).
async fn tw_provider(s: &Scenario, name: &str, secret: &str) {
    s.provider(name, json!({"threatwinds": {"url": s.sandbox.url(), "sessionSecretRef": {"name": secret, "key": "token"}}})).await;
}

/// The message of the `Ready` condition.
fn ready_message(akp: &ApiKeyPair) -> String {
    akp.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The operator's write requests (create, patch, update, delete) so far, from `/metrics`.
async fn kube_writes(operator_http: &str) -> u64 {
    common::kube_writes(&common::metrics(operator_http).await) as u64
}

/// Every object of `api` (with a zero count) and the version to count changes from.
async fn count_from<K>(api: &Api<K>) -> (BTreeMap<String, usize>, String)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(&Default::default()).await.expect("list");
    let version = list.metadata.resource_version.clone().unwrap_or_default();
    let counts = list
        .items
        .iter()
        .map(|o| (kube::ResourceExt::name_any(o), 0))
        .collect();
    (counts, version)
}

/// Counts, with a watch from `version`, the changes of every object of `api` during
/// `window`.
async fn writes_per_object<K>(
    api: Api<K>,
    (mut counts, version): (BTreeMap<String, usize>, String),
    window: Duration,
) -> BTreeMap<String, usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let params = WatchParams::default().timeout(window.as_secs() as u32);
    let mut stream = api.watch(&params, &version).await.expect("watch").boxed();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, stream.next()).await {
        match event.expect("watch event") {
            WatchEvent::Modified(o) | WatchEvent::Added(o) | WatchEvent::Deleted(o) => {
                *counts.entry(kube::ResourceExt::name_any(&o)).or_default() += 1;
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
    }
    counts
}

#[tokio::test]
async fn bad_inputs_get_clear_conditions_and_no_write_storm() {
    let s = Scenario::threatwinds("bad-inputs", Dialect::Current, &[], &[]).await;

    // ---- providers whose credentials Secret has the wrong shape -------------------------
    common::put_secret(
        &s.client,
        &s.ns,
        "s-creds-no-key",
        &[("other", SESSION_TOKEN)],
    )
    .await;
    common::put_secret(&s.client, &s.ns, "s-creds-empty", &[("token", "")]).await;
    put_raw_secret(
        &s,
        "s-creds-binary",
        &[("token", &[0xff, 0xfe, 0x00, 0x80])],
    )
    .await;
    put_raw_secret(&s, "s-creds-blank", &[("token", b" \n\t\n")]).await;
    let newline = format!("{SESSION_TOKEN}\n");
    put_raw_secret(&s, "s-creds-newline", &[("token", newline.as_bytes())]).await;
    let control = format!("{SESSION_TOKEN}\u{1}x");
    put_raw_secret(&s, "s-creds-control", &[("token", control.as_bytes())]).await;
    let spaced = format!("  {SESSION_TOKEN} \r\n");
    put_raw_secret(&s, "s-creds-spaced", &[("token", spaced.as_bytes())]).await;
    for (provider, secret) in [
        ("p-no-key", "s-creds-no-key"),
        ("p-empty", "s-creds-empty"),
        ("p-binary", "s-creds-binary"),
        ("p-blank", "s-creds-blank"),
        ("p-absent", "s-creds-absent"),
        ("p-control", "s-creds-control"),
        ("p-newline", "s-creds-newline"),
        ("p-spaced", "s-creds-spaced"),
    ] {
        tw_provider(&s, provider, secret).await;
    }

    // A Datonis provider whose credentials end in newlines and blanks.
    let dt = Sandbox::start(SandboxConfig::datonis()).await;
    let (email, password) = (
        format!("{DEFAULT_DATONIS_EMAIL}\n"),
        format!("{DEFAULT_DATONIS_PASSWORD} \n"),
    );
    put_raw_secret(
        &s,
        "dt-newline",
        &[
            ("email", email.as_bytes()),
            ("password", password.as_bytes()),
        ],
    )
    .await;
    s.provider(
        "dt",
        json!({"datonis": {"url": dt.url(), "credentialsSecretRef": {"name": "dt-newline"}}}),
    )
    .await;

    // Providers with both or neither API: the schema's oneOf refuses them.
    let providers: Api<KeyPairProvider> = Api::namespaced(s.client.clone(), &s.ns);
    for (name, spec) in [
        (
            "both",
            json!({"threatwinds": {"url": s.sandbox.url(), "sessionSecretRef": {"name": "tw-session", "key": "token"}},
                         "datonis": {"url": dt.url(), "credentialsSecretRef": {"name": "dt-newline"}}}),
        ),
        ("neither", json!({})),
    ] {
        let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider", "metadata": {"name": name}, "spec": spec});
        let refused = providers
            .patch(
                name,
                &PatchParams::apply(common::TEST_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await;
        assert!(refused.is_err(), "a provider with {name} API was accepted");
    }

    // ---- the corpus: (name, spec, expected Ready reason, message fragment) ---------------
    let long_name = format!("{}.end", "a-very-long-name".repeat(15));
    let corpus: Vec<(String, Value, &str, &str)> = vec![
        (
            "collide".into(),
            tw(
                "p",
                json!({"secretTemplate": {"keys": {"apiKey": "token", "apiSecret": "token"}}}),
            ),
            "InvalidSpec",
            "both \"token\"",
        ),
        (
            "collide-pending".into(),
            tw(
                "p",
                json!({"secretTemplate": {"keys": {"apiKey": "k", "apiSecret": "k.pending"}}}),
            ),
            "InvalidSpec",
            "both \"k.pending\"",
        ),
        (
            "dot-key".into(),
            tw("p", json!({"secretTemplate": {"keys": {"apiKey": "."}}})),
            "InvalidSpec",
            "may not be '.'",
        ),
        (
            "long-key".into(),
            tw(
                "p",
                json!({"secretTemplate": {"keys": {"apiSecret": "s".repeat(250)}}}),
            ),
            "InvalidSpec",
            "longer than 253",
        ),
        (
            "bad-label-key".into(),
            tw(
                "p",
                json!({"secretTemplate": {"labels": {"not a label": "x"}}}),
            ),
            "InvalidSpec",
            "no valid label key",
        ),
        (
            "unicode-label".into(),
            tw("p", json!({"secretTemplate": {"labels": {"team": "ключ"}}})),
            "InvalidSpec",
            "no valid label value",
        ),
        (
            "long-label".into(),
            tw(
                "p",
                json!({"secretTemplate": {"labels": {"team": "x".repeat(64)}}}),
            ),
            "InvalidSpec",
            "no valid label value",
        ),
        (
            "bad-annotation-key".into(),
            tw(
                "p",
                json!({"secretTemplate": {"annotations": {"-x-": "y"}}}),
            ),
            "InvalidSpec",
            "no valid annotation key",
        ),
        (
            "huge-template-annotation".into(),
            tw(
                "p",
                json!({"secretTemplate": {"annotations": {"big": "x".repeat(300 * 1024)}}}),
            ),
            "InvalidSpec",
            "at most 262144",
        ),
        (
            "tls-type".into(),
            tw(
                "p",
                json!({"secretTemplate": {"type": "kubernetes.io/tls"}}),
            ),
            "InvalidSpec",
            "kubernetes.io/tls",
        ),
        (
            "missing-provider".into(),
            tw("nope", json!({})),
            "ProviderNotFound",
            "nope",
        ),
        (
            "creds-no-key".into(),
            tw("p-no-key", json!({})),
            "ProviderNotReady",
            "no usable value under key token",
        ),
        (
            "creds-empty".into(),
            tw("p-empty", json!({})),
            "ProviderNotReady",
            "no usable value under key token",
        ),
        (
            "creds-binary".into(),
            tw("p-binary", json!({})),
            "ProviderNotReady",
            "no usable value under key token",
        ),
        (
            "creds-blank".into(),
            tw("p-blank", json!({})),
            "ProviderNotReady",
            "no usable value under key token",
        ),
        (
            "creds-control".into(),
            tw("p-control", json!({})),
            "ProviderNotReady",
            "control characters",
        ),
        (
            "creds-absent".into(),
            tw("p-absent", json!({})),
            "ProviderNotReady",
            "s-creds-absent",
        ),
        (
            "code-no-key".into(),
            with_code("code-no-key", json!({})),
            "VerificationCodeMissing",
            "",
        ),
        (
            "code-blank".into(),
            with_code("code-blank", json!({})),
            "VerificationCodeMissing",
            "",
        ),
        (
            "code-binary".into(),
            with_code("code-binary", json!({})),
            "VerificationCodeMissing",
            "",
        ),
    ];
    put_raw_secret(&s, "code-code-no-key", &[("other", b"123456")]).await;
    put_raw_secret(&s, "code-code-blank", &[("code", b" \n")]).await;
    put_raw_secret(&s, "code-code-binary", &[("code", &[0xff, 0x00, 0xc3])]).await;

    // Odd but fine: each must become Ready.
    let huge_annotation = "a".repeat(250 * 1024);
    let fine: Vec<(String, Value)> = vec![
        (
            "newline-creds".into(),
            with_code(
                "newline-creds",
                json!({"providerRef": {"name": "p-newline"}}),
            ),
        ),
        (
            "spaced-creds".into(),
            with_code("spaced-creds", json!({"providerRef": {"name": "p-spaced"}})),
        ),
        (
            "unicode".into(),
            with_code(
                "unicode",
                json!({"keyName": "Schlüssel 🔑 ключ", "secretTemplate": {"annotations": {"note": "für 🔑 ключ"}, "labels": {"team": "a.b-c_d"}}}),
            ),
        ),
        (
            long_name.clone(),
            with_code(
                &long_name,
                json!({"secretName": "long-name", "keyName": "long"}),
            ),
        ),
        (
            "huge-annotation".into(),
            with_code("huge-annotation", json!({})),
        ),
        (
            "basic-auth".into(),
            with_code(
                "basic-auth",
                json!({"secretTemplate": {"type": "kubernetes.io/basic-auth", "keys": {"apiKey": "username", "apiSecret": "password"}}}),
            ),
        ),
    ];

    for (name, spec, _, _) in &corpus {
        s.akp(name, spec.clone()).await;
    }
    for (name, spec) in &fine {
        let mut object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair", "metadata": {"name": name}, "spec": spec});
        if name == "huge-annotation" {
            object["metadata"]["annotations"] =
                json!({"example.com/huge": huge_annotation, "note": "ünïcödé ✓"});
        }
        common::apply_json::<ApiKeyPair>(&s.client, Some(&s.ns), object).await;
    }
    s.akp(
        "datonis-newline",
        json!({"providerRef": {"name": "dt"}, "validityDays": 30, "datonis": {"roleKey": "1946c4ce5c"}}),
    )
    .await;

    // Each bad object gets its reason and a message that says what is wrong.
    for (name, _, reason, fragment) in &corpus {
        let akp = s.wait_ready(name, "False", reason).await;
        let message = ready_message(&akp);
        assert!(message.contains(fragment), "{name}: {message}");
        assert!(message.len() < 1024, "{name}: a short message: {message}");
    }
    // Codes with trailing newlines work; each fine object becomes Ready with its Secret.
    for (name, _) in &fine {
        let akp = s.wait_ready(name, "False", "VerificationCodeMissing").await;
        let status = akp.status.clone().unwrap_or_default();
        let code_id = status.verification_code_id.expect("code id");
        let code = format!("{}\n", s.sandbox.code_for(&code_id).await);
        put_raw_secret(&s, &format!("code-{name}"), &[("code", code.as_bytes())]).await;
    }
    for (name, spec) in &fine {
        let akp = s.wait_ready(name, "True", "Ready").await;
        let secret_name = spec["secretName"].as_str().unwrap_or(name).to_owned();
        let data = s.secret(&secret_name).await.expect("Secret");
        let (k, v) = match name.as_str() {
            "basic-auth" => ("username", "password"),
            _ => ("apiKey", "apiSecret"),
        };
        assert_eq!(data.len(), 2, "{name}: {data:?}");
        assert_eq!(
            data.get(k),
            akp.status.as_ref().and_then(|s| s.api_key.as_ref()),
            "{name}"
        );
        assert!(data.get(v).is_some_and(|v| !v.is_empty()), "{name}");
    }
    s.wait_ready("datonis-newline", "True", "Ready").await;

    // A key made by hand, imported from a Secret whose values end in newlines: adopted,
    // and the Secret holds them trimmed.
    let by_hand = {
        use keypair_operator::provider::{
            CreateKeyPair, DatonisClient, DatonisCredentials, HttpOptions, KeyPairApi,
        };
        let credentials = DatonisCredentials::Password {
            email: DEFAULT_DATONIS_EMAIL.into(),
            password: secrecy::SecretString::from(DEFAULT_DATONIS_PASSWORD),
        };
        let client =
            DatonisClient::new(&dt.url(), credentials, HttpOptions::default()).expect("client");
        let request = CreateKeyPair {
            name: "by hand".into(),
            validity_days: 30,
            role_key: Some("1946c4ce5c".into()),
        };
        client.create(&request).await.expect("create by hand")
    };
    let hand_secret = secrecy::ExposeSecret::expose_secret(&by_hand.api_secret).to_owned();
    let (k, v) = (
        format!("{}\n", by_hand.key.api_key),
        format!("{hand_secret} \r\n"),
    );
    put_raw_secret(
        &s,
        "by-hand",
        &[("apiKey", k.as_bytes()), ("apiSecret", v.as_bytes())],
    )
    .await;
    s.akp(
        "datonis-import",
        json!({"providerRef": {"name": "dt"}, "validityDays": 30, "secretName": "by-hand",
               "datonis": {"roleKey": "1946c4ce5c"}, "import": {"keyID": by_hand.key.key_id}}),
    )
    .await;
    s.wait_ready("datonis-import", "True", "Ready").await;
    let data = s.secret("by-hand").await.expect("Secret by-hand");
    assert_eq!(data["apiKey"], by_hand.key.api_key);
    assert_eq!(data["apiSecret"], hand_secret);
    let unicode: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let secret = unicode.get("unicode").await.expect("Secret unicode");
    assert_eq!(
        secret
            .metadata
            .annotations
            .unwrap_or_default()
            .get("note")
            .map(String::as_str),
        Some("für 🔑 ключ")
    );
    // Events about an object with a name too long for the usual event names are published.
    let events = common::events_for(&s.client, &s.ns, &long_name).await;
    assert!(!events.is_empty(), "no event about {long_name}");
    let long = unicode.get("long-name").await.expect("Secret long-name");
    let owner = long.metadata.labels.unwrap_or_default()["keypairs.dev/api-key-pair"].clone();
    assert!(owner.len() <= 63, "{owner}");

    // No key was created for a bad object: only the fine ones and those waiting for a
    // usable code have keys.
    let keys = s.sandbox.keys().await;
    let waiting = corpus.iter().filter(|c| c.0.starts_with("code-")).count();
    assert_eq!(keys.len(), fine.len() + waiting, "{keys:?}");
    for (name, _, _, _) in &corpus {
        if !name.starts_with("code-") {
            assert!(
                keys.iter()
                    .all(|k| k.name.as_deref() != Some(&format!("{}/{name}", s.ns))),
                "a key was created for {name}"
            );
        }
    }

    // ---- no write storm --------------------------------------------------------------------
    let before = kube_writes(&s.operator.http).await;
    assert!(before > 0, "the operator's write requests are counted");
    let akps: Api<ApiKeyPair> = Api::namespaced(s.client.clone(), &s.ns);
    // One user change to a bad object during the window: it is seen (the count works)
    // and the reconcile it triggers adds at most a handful of writes.
    let (akp_start, provider_start) = (count_from(&akps).await, count_from(&providers).await);
    s.annotate("collide", "example.com/touched", "1").await;
    let (akp_writes, provider_writes) = tokio::join!(
        writes_per_object(akps, akp_start, WINDOW),
        writes_per_object(providers.clone(), provider_start, WINDOW),
    );
    let after = kube_writes(&s.operator.http).await;
    assert!(akp_writes["collide"] >= 1, "the watch saw the touch");
    eprintln!(
        "writes in {WINDOW:?}: ApiKeyPairs {akp_writes:?}; providers {provider_writes:?}; operator write requests {}",
        after - before
    );
    for (name, count) in akp_writes.iter().chain(provider_writes.iter()) {
        let touched = usize::from(name == "collide");
        assert!(
            *count <= MAX_WRITES_PER_OBJECT + touched,
            "{name} was written {count} times in {WINDOW:?}"
        );
    }
    let objects = (akp_writes.len() + provider_writes.len()) as u64;
    assert!(
        after - before <= objects * MAX_WRITES_PER_OBJECT as u64,
        "{} operator writes in {WINDOW:?} for {objects} objects",
        after - before
    );

    // Never a panic or a restart.
    let log = s.operator.log_text();
    assert!(!log.contains("panicked"), "the operator panicked");
    let health = reqwest::get(format!("{}/healthz", s.operator.http)).await;
    assert!(
        health.is_ok_and(|r| r.status().is_success()),
        "the operator is down"
    );
    assert!(s.operator.pid().is_some());
    assert_eq!(dt.keys().await.len(), 2, "the created and the imported key");
}
