//! The provider clients against the project's sandbox servers, in process.
//!
//! Every client operation of both providers, both ThreatWinds dialects (current: 200 and
//! `x-error` headers; detailed: 202 and `{uuid, error}` bodies), every documented error
//! status, injected faults, Datonis pagination and re-sign-in, and that no secret ever
//! shows up in an error message or a `Debug` output.

use chrono::{Datelike, NaiveDate};
use keypair_operator::provider::{
    CreateKeyPair, CreatedKeyPair, DateOrder, DatonisClient, DatonisCredentials, HttpOptions,
    KeyLookup, KeyPairApi, ListQuery, ProviderError, ProviderKind, SortOrder, ThreatWindsClient,
    TimestampFormat, UpdateKeyPair,
};
use keypair_operator::sandbox::{
    DatonisReadings, Dialect, EnabledFormat, ExpiryDateOrder, ListParamSource, NewCodeAuth,
    OutboxEmail, RoleKeyPlacement, SandboxConfig, SandboxHandle, SandboxKey, SandboxStats,
    ThreatWindsReadings, UnverifiedCheck, VerifyAuth, spawn,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const TW_TOKEN: &str = "twSessionToken-3f9a1c7e5b2d4086a1e9c3b7d5f20486";
const DT_EMAIL: &str = "ops@datonis.test";
const DT_PASSWORD: &str = "dt-Pa55word-7c1e9a3b5d";

/// A running sandbox plus a plain HTTP client for its control endpoints.
struct Sandbox {
    handle: SandboxHandle,
    control: reqwest::Client,
}

impl Sandbox {
    async fn start(config: SandboxConfig) -> Sandbox {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let handle = spawn(config, listener).await.expect("spawn sandbox");
        Sandbox {
            handle,
            control: reqwest::Client::new(),
        }
    }

    async fn threatwinds(dialect: Dialect) -> Sandbox {
        let mut cfg = SandboxConfig::threatwinds();
        cfg.dialect = dialect;
        cfg.session_tokens = vec![TW_TOKEN.into()];
        Sandbox::start(cfg).await
    }

    async fn threatwinds_reading(dialect: Dialect, readings: ThreatWindsReadings) -> Sandbox {
        let mut cfg = SandboxConfig::threatwinds();
        cfg.dialect = dialect;
        cfg.session_tokens = vec![TW_TOKEN.into()];
        cfg.threatwinds_readings = readings;
        Sandbox::start(cfg).await
    }

    async fn datonis(idle: Duration) -> Sandbox {
        let mut cfg = SandboxConfig::datonis();
        cfg.users = vec![(DT_EMAIL.into(), DT_PASSWORD.into())];
        cfg.token_idle_timeout = idle;
        Sandbox::start(cfg).await
    }

    fn url(&self) -> String {
        self.handle.base_url()
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.control
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .expect("control request")
            .error_for_status()
            .expect("control status")
            .json()
            .await
            .expect("control json")
    }

    async fn outbox(&self) -> Vec<OutboxEmail> {
        self.get_json("/_sandbox/outbox").await
    }

    async fn keys(&self) -> Vec<SandboxKey> {
        self.get_json("/_sandbox/keys").await
    }

    async fn stats(&self) -> SandboxStats {
        self.get_json("/_sandbox/stats").await
    }

    /// How many times `route` answered `status`.
    async fn count(&self, route: &str, status: &str) -> u64 {
        self.stats()
            .await
            .get(route)
            .and_then(|m| m.get(status))
            .copied()
            .unwrap_or(0)
    }

    async fn faults(&self, config: Value) {
        self.control
            .put(format!("{}/_sandbox/faults", self.url()))
            .json(&config)
            .send()
            .await
            .expect("faults request")
            .error_for_status()
            .expect("faults accepted");
    }

    async fn clear_faults(&self) {
        self.control
            .delete(format!("{}/_sandbox/faults", self.url()))
            .send()
            .await
            .expect("faults request")
            .error_for_status()
            .expect("faults cleared");
    }

    fn tw_client(&self, token: &str, options: HttpOptions) -> ThreatWindsClient {
        ThreatWindsClient::new(&self.url(), SecretString::from(token), options)
            .expect("threatwinds client")
    }

    fn dt_client(&self, options: HttpOptions) -> DatonisClient {
        DatonisClient::new(
            &self.url(),
            DatonisCredentials::Password {
                email: DT_EMAIL.into(),
                password: SecretString::from(DT_PASSWORD),
            },
            options,
        )
        .expect("datonis client")
    }
}

/// Collects everything a user or a log could see and checks no secret is in it.
#[derive(Default)]
struct Leaks {
    seen: Vec<String>,
    secrets: Vec<String>,
}

impl Leaks {
    fn err(&mut self, e: &ProviderError) {
        self.seen.push(format!("{e}"));
        self.seen.push(format!("{e:?}"));
    }
    fn debug(&mut self, v: &dyn std::fmt::Debug) {
        self.seen.push(format!("{v:?}"));
    }
    fn secret(&mut self, s: impl Into<String>) {
        let s = s.into();
        assert!(s.len() >= 6, "test secrets must be distinctive");
        self.secrets.push(s);
    }
    fn check(&self) {
        assert!(!self.seen.is_empty());
        for text in &self.seen {
            for s in &self.secrets {
                assert!(!text.contains(s.as_str()), "secret leaked into: {text}");
            }
        }
    }
}

fn tw_req(name: &str) -> CreateKeyPair {
    CreateKeyPair {
        name: name.into(),
        validity_days: 30,
        role_key: None,
    }
}

fn short_timeout() -> HttpOptions {
    HttpOptions {
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..HttpOptions::default()
    }
}

#[track_caller]
fn assert_variant(e: &ProviderError, want: &str) {
    let got = match e {
        ProviderError::NotFound { .. } => "NotFound",
        ProviderError::Unauthorized { .. } => "Unauthorized",
        ProviderError::Forbidden { .. } => "Forbidden",
        ProviderError::RateLimited { .. } => "RateLimited",
        ProviderError::BadRequest { .. } => "BadRequest",
        ProviderError::Server { .. } => "Server",
        ProviderError::Transport { .. } => "Transport",
        ProviderError::UnexpectedResponse { .. } => "UnexpectedResponse",
        ProviderError::NotApplied { .. } => "NotApplied",
        ProviderError::Unsupported { .. } => "Unsupported",
        ProviderError::CodeRejected { .. } => "CodeRejected",
    };
    assert_eq!(got, want, "{e:?}");
}

/// Documented provider errors carry an error id in both dialects (header or body).
#[track_caller]
fn assert_error_id(e: &ProviderError) {
    let id = e.error_id().unwrap_or_else(|| panic!("no error id: {e:?}"));
    assert!(
        e.to_string().contains(&format!("error id {id}")),
        "id not shown: {e}"
    );
}

fn code_for(outbox: &[OutboxEmail], verification_code_id: &str) -> SecretString {
    let mail = outbox
        .iter()
        .find(|m| m.verification_code_id == verification_code_id)
        .unwrap_or_else(|| panic!("no mail for code {verification_code_id}"));
    SecretString::from(mail.code.clone())
}

async fn threatwinds_lifecycle(dialect: Dialect) {
    let sb = Sandbox::threatwinds(dialect).await;
    let tw = sb.tw_client(TW_TOKEN, HttpOptions::default());
    let mut leaks = Leaks::default();
    leaks.secret(TW_TOKEN);
    leaks.debug(&tw);
    assert_eq!(tw.kind(), ProviderKind::Threatwinds);

    // Session.
    let status = tw.check_credentials().await.expect("check credentials");
    assert!(status.verified);
    let before = status.expire_at.expect("session expiry");
    let session = tw.session().await.expect("session");
    assert!(session.verified);
    let extended = tw
        .extend_session()
        .await
        .expect("extend")
        .expect("new expiry");
    assert!(extended >= before, "{extended} < {before}");

    // Create.
    let created = tw.create(&tw_req("first key")).await.expect("create");
    leaks.secret(created.api_secret.expose_secret());
    leaks.debug(&created);
    assert_eq!(created.key.name.as_deref(), Some("first key"));
    assert_eq!(created.key.verified, Some(false));
    assert!(created.key.expire_at.is_some());
    assert!(!created.key.api_key.is_empty());
    let code_id = created
        .verification_code_id
        .clone()
        .expect("verification code id");
    let stored = sb.keys().await;
    let stored = stored
        .iter()
        .find(|k| k.id == created.key.key_id)
        .expect("key in sandbox");
    assert_eq!(stored.secret, created.api_secret.expose_secret());
    assert_eq!(stored.api_key, created.key.api_key);

    // List.
    let listed = tw.list().await.expect("list");
    let mine = listed
        .iter()
        .find(|k| k.key_id == created.key.key_id)
        .expect("listed");
    assert_eq!(mine.verified, Some(false));
    assert_eq!(mine.api_key, created.key.api_key);
    assert!(mine.api_secret.is_none());

    // Get with the secret (check endpoint) and without (falls back to the list).
    let lookup = KeyLookup {
        key_id: created.key.key_id.clone(),
        api_key: created.key.api_key.clone(),
        api_secret: Some(created.api_secret.clone()),
    };
    let got = tw.get(&lookup).await.expect("get with secret");
    assert_eq!(got.key_id, created.key.key_id);
    assert_eq!(got.name.as_deref(), Some("first key"));
    let got = tw
        .get(&KeyLookup {
            api_secret: None,
            ..lookup.clone()
        })
        .await
        .expect("get via list");
    assert_eq!(got.api_key, created.key.api_key);
    let e = tw
        .get(&KeyLookup {
            key_id: "00000000-0000-4000-8000-000000000000".into(),
            api_key: "nope".into(),
            api_secret: None,
        })
        .await
        .expect_err("unknown id via list");
    assert_variant(&e, "NotFound");

    // Wrong api-secret: 401.
    let wrong_secret = "wrongApiSecret0123456789abcdefABCDEF0123456789";
    leaks.secret(wrong_secret);
    let e = tw
        .get(&KeyLookup {
            api_secret: Some(SecretString::from(wrong_secret)),
            ..lookup.clone()
        })
        .await
        .expect_err("wrong secret");
    assert_variant(&e, "Unauthorized");
    assert_error_id(&e);
    leaks.err(&e);

    // Wrong code: 401; unknown code id: 404.
    let wrong_code = SecretString::from("000000");
    // With a live, verified session both are the code's fault: CodeRejected.
    let e = tw
        .verify(&code_id, &wrong_code)
        .await
        .expect_err("wrong code");
    assert_variant(&e, "CodeRejected");
    assert_error_id(&e);
    leaks.err(&e);
    let e = tw
        .verify("00000000-0000-4000-8000-000000000000", &wrong_code)
        .await
        .expect_err("unknown code id");
    assert_variant(&e, "CodeRejected");
    assert_error_id(&e);
    leaks.err(&e);

    // Verify with the code from the outbox.
    let code = code_for(&sb.outbox().await, &code_id);
    leaks.secret(code.expose_secret());
    tw.verify(&code_id, &code).await.expect("verify");
    let listed = tw.list().await.expect("list");
    let mine = listed
        .iter()
        .find(|k| k.key_id == created.key.key_id)
        .expect("listed");
    assert_eq!(mine.verified, Some(true));
    let got = tw.get(&lookup).await.expect("get verified");
    assert_eq!(got.verified, Some(true));

    // New code for a second key, then verify with it.
    let second = tw.create(&tw_req("second key")).await.expect("create 2");
    leaks.secret(second.api_secret.expose_secret());
    let new_id = tw
        .request_new_code(&second.key.api_key, &second.api_secret)
        .await
        .expect("new code");
    assert_ne!(Some(&new_id), second.verification_code_id.as_ref());
    let outbox = sb.outbox().await;
    let mail = outbox
        .iter()
        .find(|m| m.verification_code_id == new_id)
        .expect("new code mailed");
    assert_eq!(mail.key_id.as_deref(), Some(second.key.key_id.as_str()));
    let code = code_for(&outbox, &new_id);
    leaks.secret(code.expose_secret());
    tw.verify(&new_id, &code)
        .await
        .expect("verify with new code");
    // New code with a wrong secret is refused without echoing it.
    let e = tw
        .request_new_code(&second.key.api_key, &SecretString::from(wrong_secret))
        .await
        .expect_err("new code with wrong secret");
    assert!(
        matches!(
            e,
            ProviderError::Unauthorized { .. } | ProviderError::NotFound { .. }
        ),
        "{e:?}"
    );
    leaks.err(&e);

    // Bad input: 400.
    let e = tw
        .create(&CreateKeyPair {
            name: String::new(),
            validity_days: 30,
            role_key: None,
        })
        .await
        .expect_err("empty name");
    assert_variant(&e, "BadRequest");
    assert_error_id(&e);
    leaks.err(&e);
    let e = tw
        .create(&CreateKeyPair {
            name: "zero days".into(),
            validity_days: 0,
            role_key: None,
        })
        .await
        .expect_err("zero days");
    assert_variant(&e, "BadRequest");
    leaks.err(&e);

    // Delete, then delete again: 404 with an error id.
    tw.delete(&created.key.key_id).await.expect("delete");
    let e = tw
        .delete(&created.key.key_id)
        .await
        .expect_err("delete twice");
    assert_variant(&e, "NotFound");
    assert_error_id(&e);
    assert!(e.to_string().starts_with("threatwinds delete: "), "{e}");
    leaks.err(&e);
    assert!(
        !tw.list()
            .await
            .expect("list")
            .iter()
            .any(|k| k.key_id == created.key.key_id)
    );
    // A deleted key's secret no longer checks.
    let e = tw.get(&lookup).await.expect_err("get deleted");
    assert!(
        matches!(
            e,
            ProviderError::NotFound { .. } | ProviderError::Unauthorized { .. }
        ),
        "{e:?}"
    );
    leaks.err(&e);

    // No update API.
    let e = tw
        .update(&second.key.key_id, &UpdateKeyPair::default())
        .await
        .expect_err("update");
    assert_variant(&e, "Unsupported");

    // A bad session: 401 on every bearer call.
    let bad_token = "badSessionToken-0123456789abcdef0123456789";
    leaks.secret(bad_token);
    let bad = sb.tw_client(bad_token, HttpOptions::default());
    leaks.debug(&bad);
    let e = bad.check_credentials().await.expect_err("bad session");
    assert_variant(&e, "Unauthorized");
    leaks.err(&e);
    let e = bad.list().await.expect_err("bad session list");
    assert_variant(&e, "Unauthorized");
    assert!(!e.is_retryable());
    leaks.err(&e);
    let e = bad
        .create(&tw_req("x"))
        .await
        .expect_err("bad session create");
    assert_variant(&e, "Unauthorized");
    leaks.err(&e);

    leaks.check();
}

#[tokio::test]
async fn threatwinds_current_dialect_lifecycle() {
    threatwinds_lifecycle(Dialect::Current).await;
}

#[tokio::test]
async fn threatwinds_detailed_dialect_lifecycle() {
    threatwinds_lifecycle(Dialect::Detailed).await;
}

async fn threatwinds_faults(dialect: Dialect) {
    let sb = Sandbox::threatwinds(dialect).await;
    let tw = sb.tw_client(TW_TOKEN, HttpOptions::default());
    let mut leaks = Leaks::default();
    leaks.secret(TW_TOKEN);

    // Every request fails with 500: Server, retryable, with the provider's error id.
    sb.faults(json!({"error_rate": 1.0, "error_status": 500}))
        .await;
    let e = tw.list().await.expect_err("injected 500");
    assert!(
        matches!(e, ProviderError::Server { status: 500, .. }),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_error_id(&e);
    leaks.err(&e);
    sb.faults(json!({"error_rate": 1.0, "error_status": 503}))
        .await;
    let e = tw.check_credentials().await.expect_err("injected 503");
    assert!(
        matches!(e, ProviderError::Server { status: 503, .. }),
        "{e:?}"
    );
    leaks.err(&e);
    sb.clear_faults().await;

    // Rate limit: ThreatWinds answers 403, which is retried with back-off.
    sb.faults(json!({"rate_limit_rps": 1.0})).await;
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = tw.list().await {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("rate limited within 10 calls");
    assert_variant(&e, "Forbidden");
    assert!(e.is_retryable());
    leaks.err(&e);
    sb.clear_faults().await;

    // Slower than the client's timeout: Transport, retryable.
    sb.faults(json!({"latency_ms": 2000})).await;
    let fast = sb.tw_client(TW_TOKEN, short_timeout());
    let started = Instant::now();
    let e = fast.list().await.expect_err("timeout");
    assert_variant(&e, "Transport");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    leaks.err(&e);
    sb.clear_faults().await;

    // Commit, then 500: Server; the key exists anyway.
    let before = sb.keys().await.len();
    sb.faults(json!({"commit_then_fail": "status500"})).await;
    let e = tw.create(&tw_req("committed 500")).await.expect_err("500");
    assert!(
        matches!(e, ProviderError::Server { status: 500, .. }),
        "{e:?}"
    );
    assert!(e.may_have_committed());
    leaks.err(&e);
    let keys = sb.keys().await;
    assert_eq!(keys.len(), before + 1);
    assert!(
        keys.iter()
            .any(|k| k.name.as_deref() == Some("committed 500"))
    );

    // Commit, then drop the connection: Transport; the key exists anyway.
    sb.faults(json!({"commit_then_fail": "drop"})).await;
    let e = tw
        .create(&tw_req("committed drop"))
        .await
        .expect_err("drop");
    assert_variant(&e, "Transport");
    assert!(e.may_have_committed() && e.is_retryable());
    leaks.err(&e);
    let keys = sb.keys().await;
    for k in &keys {
        leaks.secret(k.secret.clone());
    }
    assert_eq!(keys.len(), before + 2);
    assert!(
        keys.iter()
            .any(|k| k.name.as_deref() == Some("committed drop"))
    );
    // Only one create was affected: the next one works.
    let ok = tw.create(&tw_req("after faults")).await.expect("create");
    leaks.debug(&ok);
    // The controller's recovery path: the committed keys are visible in the list.
    let listed = tw.list().await.expect("list");
    assert!(
        listed
            .iter()
            .any(|k| k.name.as_deref() == Some("committed drop"))
    );

    leaks.check();
}

#[tokio::test]
async fn threatwinds_current_dialect_faults() {
    threatwinds_faults(Dialect::Current).await;
}

#[tokio::test]
async fn threatwinds_detailed_dialect_faults() {
    threatwinds_faults(Dialect::Detailed).await;
}

/// ThreatWinds answers 404 both for an unknown key and for an expired or unverified
/// session; the client tells them apart so a delete is never "done" with a dead session.
async fn threatwinds_dead_sessions(dialect: Dialect) {
    // An unverified session, made the documented way.
    let sb = Sandbox::threatwinds(dialect).await;
    let answer: Value = sb
        .control
        .post(format!("{}/api/auth/v2/session", sb.url()))
        .json(&json!({"email": "new.user@threatwinds.test"}))
        .send()
        .await
        .expect("create session")
        .json()
        .await
        .expect("session json");
    let unverified = answer["bearer"].as_str().expect("bearer").to_owned();
    let tw = sb.tw_client(&unverified, HttpOptions::default());
    let status = tw.check_credentials().await.expect("unverified session");
    assert!(!status.verified);
    let e = tw.list().await.expect_err("list with unverified session");
    assert_variant(&e, "Unauthorized");
    assert!(e.to_string().contains("not verified"), "{e}");
    let e = tw
        .delete("00000000-0000-4000-8000-000000000000")
        .await
        .expect_err("delete with unverified session");
    assert_variant(&e, "Unauthorized");
    let e = tw.create(&tw_req("x")).await.expect_err("create");
    assert_variant(&e, "Unauthorized");
    assert!(!format!("{e} {e:?}").contains(&unverified));

    // An expired session.
    let mut cfg = SandboxConfig::threatwinds();
    cfg.dialect = dialect;
    cfg.session_tokens = vec![TW_TOKEN.into()];
    cfg.session_ttl = Duration::from_millis(500);
    let sb = Sandbox::start(cfg).await;
    let tw = sb.tw_client(TW_TOKEN, HttpOptions::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    let e = loop {
        match tw.check_credentials().await {
            Ok(_) => {
                assert!(Instant::now() < deadline, "session never expired");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break e,
        }
    };
    assert_variant(&e, "Unauthorized");
    let e = tw
        .delete("00000000-0000-4000-8000-000000000000")
        .await
        .expect_err("delete with expired session");
    assert_variant(&e, "Unauthorized");
    assert!(e.to_string().contains("expired"), "{e}");
    let e = tw.extend_session().await.expect_err("extend expired");
    assert_variant(&e, "Unauthorized");
}

#[tokio::test]
async fn threatwinds_current_dialect_dead_sessions() {
    threatwinds_dead_sessions(Dialect::Current).await;
}

#[tokio::test]
async fn threatwinds_detailed_dialect_dead_sessions() {
    threatwinds_dead_sessions(Dialect::Detailed).await;
}

#[tokio::test]
async fn datonis_lifecycle() {
    let sb = Sandbox::datonis(Duration::from_secs(1800)).await;
    let dt = sb.dt_client(HttpOptions::default());
    let mut leaks = Leaks::default();
    leaks.secret(DT_PASSWORD);
    leaks.debug(&dt);
    assert_eq!(dt.kind(), ProviderKind::Datonis);

    let status = dt.check_credentials().await.expect("sign in");
    assert!(status.verified);

    // Create with a role.
    let created = dt
        .create(&CreateKeyPair {
            name: "ignored".into(),
            validity_days: 30,
            role_key: Some("517d8e4695".into()),
        })
        .await
        .expect("create");
    leaks.secret(created.api_secret.expose_secret());
    leaks.debug(&created);
    assert_eq!(created.key.role_key.as_deref(), Some("517d8e4695"));
    assert_eq!(created.key.role_name.as_deref(), Some("Write Only"));
    assert_eq!(created.key.enabled, Some(true));
    assert!(created.verification_code_id.is_none());
    let expiry = created.key.expire_at.expect("expiry");
    let days = (expiry - chrono::Utc::now()).num_days();
    assert!((28..=30).contains(&days), "expiry in {days} days: {expiry}");
    assert!(created.key.created_at.is_some());
    let stored = sb.keys().await;
    let stored = stored
        .iter()
        .find(|k| k.id == created.key.key_id)
        .expect("stored");
    assert_eq!(stored.secret, created.api_secret.expose_secret());
    assert_eq!(stored.expires_at, expiry.timestamp());

    // Get returns the secret too.
    let lookup = KeyLookup {
        key_id: created.key.key_id.clone(),
        api_key: created.key.api_key.clone(),
        api_secret: None,
    };
    let got = dt.get(&lookup).await.expect("get");
    assert_eq!(got.api_key, created.key.api_key);
    assert_eq!(
        got.api_secret
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        Some(created.api_secret.expose_secret().to_owned())
    );
    leaks.debug(&got);

    // Update: disable, move expiry, change role.
    let new_expiry = chrono::Utc::now().date_naive() + chrono::Days::new(60);
    let updated = dt
        .update(
            &created.key.key_id,
            &UpdateKeyPair {
                enabled: Some(false),
                expiry_date: Some(new_expiry),
                role_key: Some("1946c4ce5c".into()),
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.enabled, Some(false));
    assert_eq!(updated.role_name.as_deref(), Some("Agent"));
    let stored = sb.keys().await;
    let stored = stored
        .iter()
        .find(|k| k.id == created.key.key_id)
        .expect("stored");
    assert_eq!(stored.enabled, Some(false));
    assert_eq!(stored.role_key.as_deref(), Some("1946c4ce5c"));
    assert_eq!(
        Some(stored.expires_at),
        updated.expire_at.map(|d| d.timestamp())
    );
    // Midnight of the account's zone (India) on the day sent: the day before, 18:30 UTC.
    let at = updated.expire_at.expect("expiry");
    assert_eq!(
        at.date_naive() + chrono::Days::new(1),
        new_expiry,
        "expiry {at} for {new_expiry}"
    );
    // Nothing to change: a read.
    let same = dt
        .update(&created.key.key_id, &UpdateKeyPair::default())
        .await
        .expect("empty update");
    assert_eq!(same.enabled, Some(false));

    // Errors: unknown key (404), unknown role (4xx), unsupported operations.
    let e = dt
        .get(&KeyLookup {
            key_id: "0000000000000000000000000000000000000000".into(),
            ..lookup.clone()
        })
        .await
        .expect_err("unknown key");
    assert_variant(&e, "NotFound");
    assert!(e.to_string().starts_with("datonis get: "), "{e}");
    leaks.err(&e);
    let e = dt
        .create(&CreateKeyPair {
            name: String::new(),
            validity_days: 30,
            role_key: Some("no-such-role".into()),
        })
        .await
        .expect_err("unknown role");
    assert_variant(&e, "BadRequest");
    leaks.err(&e);
    let code = SecretString::from("123456");
    assert_variant(
        &dt.verify("x", &code).await.expect_err("verify"),
        "Unsupported",
    );
    assert_variant(
        &dt.request_new_code("x", &code).await.expect_err("new code"),
        "Unsupported",
    );

    // Delete, then delete again: 404.
    dt.delete(&created.key.key_id).await.expect("delete");
    let e = dt
        .delete(&created.key.key_id)
        .await
        .expect_err("delete twice");
    assert_variant(&e, "NotFound");
    leaks.err(&e);
    assert!(sb.keys().await.iter().all(|k| k.id != created.key.key_id));

    // Wrong password: 401, and the password is nowhere in the error.
    let wrong = DatonisClient::new(
        &sb.url(),
        DatonisCredentials::Password {
            email: DT_EMAIL.into(),
            password: SecretString::from("wrong-Pa55word-123456"),
        },
        HttpOptions::default(),
    )
    .expect("client");
    leaks.secret("wrong-Pa55word-123456");
    leaks.debug(&wrong);
    let e = wrong.check_credentials().await.expect_err("wrong password");
    assert_variant(&e, "Unauthorized");
    leaks.err(&e);
    let e = wrong.list().await.expect_err("wrong password list");
    assert_variant(&e, "Unauthorized");
    leaks.err(&e);

    leaks.check();
}

#[tokio::test]
async fn datonis_token_credentials() {
    let sb = Sandbox::datonis(Duration::from_secs(1800)).await;
    // Sign in by hand to get a token.
    let answer: Value = sb
        .control
        .post(format!("{}/api_sign_in", sb.url()))
        .json(&json!({"email": DT_EMAIL, "password": DT_PASSWORD}))
        .send()
        .await
        .expect("sign in")
        .json()
        .await
        .expect("sign-in json");
    let token = answer["auth_token"]
        .as_str()
        .expect("auth_token")
        .to_owned();
    let mut leaks = Leaks::default();
    leaks.secret(token.clone());

    let dt = DatonisClient::new(
        &sb.url(),
        DatonisCredentials::Token(SecretString::from(token.clone())),
        HttpOptions::default(),
    )
    .expect("client");
    leaks.debug(&dt);
    assert!(dt.check_credentials().await.expect("token works").verified);
    let created = dt
        .create(&CreateKeyPair {
            name: String::new(),
            validity_days: 7,
            role_key: Some("1946c4ce5c".into()),
        })
        .await
        .expect("create");
    leaks.secret(created.api_secret.expose_secret());
    assert_eq!(dt.list().await.expect("list").len(), 1);

    // A bad token: 401, and no sign-in attempt (there is no password).
    let bad_token = "badAuthToken-0123456789abcdef";
    leaks.secret(bad_token);
    let bad = DatonisClient::new(
        &sb.url(),
        DatonisCredentials::Token(SecretString::from(bad_token)),
        HttpOptions::default(),
    )
    .expect("client");
    let e = bad.check_credentials().await.expect_err("bad token");
    assert_variant(&e, "Unauthorized");
    leaks.err(&e);
    let e = bad.list().await.expect_err("bad token list");
    assert_variant(&e, "Unauthorized");
    leaks.err(&e);
    assert_eq!(sb.count("POST /api_sign_in", "200").await, 1);

    leaks.check();
}

#[tokio::test]
async fn datonis_pagination_search_and_order() {
    let sb = Sandbox::datonis(Duration::from_secs(1800)).await;
    let dt = sb.dt_client(HttpOptions::default());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let k = dt
            .create(&CreateKeyPair {
                name: String::new(),
                validity_days: 10,
                role_key: Some("1946c4ce5c".into()),
            })
            .await
            .expect("create");
        ids.push(k.key.key_id);
    }
    ids.sort();

    // Explicit pages of 2: 2 + 2 + 1, each with the total.
    let mut seen = Vec::new();
    for page in 1..=3 {
        let p = dt
            .list_page(&ListQuery {
                page,
                per: 2,
                ..ListQuery::default()
            })
            .await
            .expect("page");
        assert_eq!(p.total_count, Some(5));
        assert_eq!(p.page, page);
        assert_eq!(p.key_pairs.len(), if page < 3 { 2 } else { 1 });
        seen.extend(p.key_pairs.into_iter().map(|k| k.key_id));
    }
    let p = dt
        .list_page(&ListQuery {
            page: 4,
            per: 2,
            ..ListQuery::default()
        })
        .await
        .expect("page past the end");
    assert!(p.key_pairs.is_empty());
    seen.sort();
    assert_eq!(seen, ids);

    // list() follows every page.
    sb.control
        .delete(format!("{}/_sandbox/stats", sb.url()))
        .send()
        .await
        .expect("reset stats");
    let small = dt.clone().with_page_size(2);
    let mut all: Vec<String> = small
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    all.sort();
    assert_eq!(all, ids);
    assert_eq!(sb.count("GET /api/v3/key_pairs", "200").await, 3);
    // Exactly full last page: one extra, empty request ends it.
    let exact = dt.clone().with_page_size(5);
    assert_eq!(exact.list().await.expect("list").len(), 5);
    assert_eq!(dt.list().await.expect("list").len(), 5);

    // Search on key_pair_key.
    let p = dt
        .list_page(&ListQuery {
            search: Some(ids[2].clone()),
            ..ListQuery::default()
        })
        .await
        .expect("search");
    assert_eq!(p.key_pairs.len(), 1);
    assert_eq!(p.key_pairs[0].key_id, ids[2]);
    assert_eq!(p.total_count, Some(1));

    // Ordering.
    for (order, want) in [
        (SortOrder::Asc, ids.clone()),
        (SortOrder::Desc, ids.iter().rev().cloned().collect()),
    ] {
        let p = dt
            .list_page(&ListQuery {
                order_by: Some("key_pair_key".into()),
                order: Some(order),
                ..ListQuery::default()
            })
            .await
            .expect("ordered");
        let got: Vec<String> = p.key_pairs.into_iter().map(|k| k.key_id).collect();
        assert_eq!(got, want, "{order:?}");
    }

    // String timestamps parse the same as integer ones.
    for format in [TimestampFormat::Str, TimestampFormat::Int] {
        let p = dt
            .list_page(&ListQuery {
                timestamp_format: Some(format),
                ..ListQuery::default()
            })
            .await
            .expect("timestamps");
        assert!(
            p.key_pairs
                .iter()
                .all(|k| k.created_at.is_some() && k.updated_at.is_some()),
            "{format:?}"
        );
    }
}

#[tokio::test]
async fn datonis_signs_in_again_after_token_expiry() {
    let idle = Duration::from_millis(300);
    let sb = Sandbox::datonis(idle).await;
    let dt = sb.dt_client(HttpOptions::default());
    dt.list().await.expect("first list signs in");
    assert_eq!(sb.count("POST /api_sign_in", "200").await, 1);

    // Wait out the idle timeout (polling, with a deadline), then the next call gets a 401,
    // signs in again once, and succeeds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(idle + Duration::from_millis(100)).await;
        dt.list().await.expect("list after expiry");
        if sb.count("POST /api_sign_in", "200").await >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no second sign-in before deadline"
        );
    }
    assert_eq!(sb.count("POST /api_sign_in", "200").await, 2);
    assert!(sb.count("GET /api/v3/key_pairs", "401").await >= 1);

    // Concurrent calls after another expiry share one new sign-in.
    tokio::time::sleep(idle + Duration::from_millis(100)).await;
    let (a, b, c) = tokio::join!(dt.list(), dt.list(), dt.list());
    a.and(b).and(c).expect("concurrent lists");
    assert_eq!(sb.count("POST /api_sign_in", "200").await, 3);
}

#[tokio::test]
async fn datonis_faults() {
    let sb = Sandbox::datonis(Duration::from_secs(1800)).await;
    let dt = sb.dt_client(HttpOptions::default());
    let mut leaks = Leaks::default();
    leaks.secret(DT_PASSWORD);
    // Sign in before any fault, so faults hit the key-pair calls.
    dt.check_credentials().await.expect("sign in");

    sb.faults(json!({"error_rate": 1.0, "error_status": 500}))
        .await;
    let e = dt.list().await.expect_err("injected 500");
    assert!(
        matches!(e, ProviderError::Server { status: 500, .. }),
        "{e:?}"
    );
    assert!(e.is_retryable());
    leaks.err(&e);
    sb.faults(json!({"error_rate": 1.0, "error_status": 400}))
        .await;
    let e = dt.list().await.expect_err("injected 400");
    assert_variant(&e, "BadRequest");
    assert!(!e.is_retryable());
    leaks.err(&e);
    sb.clear_faults().await;

    // Rate limit: 429 with Retry-After.
    sb.faults(json!({"rate_limit_rps": 1.0})).await;
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = dt.list().await {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("rate limited within 10 calls");
    assert_variant(&e, "RateLimited");
    assert!(e.is_retryable());
    let wait = e.retry_after().expect("retry after");
    assert!(
        wait >= Duration::from_secs(1) && wait <= Duration::from_secs(5),
        "{wait:?}"
    );
    leaks.err(&e);
    sb.clear_faults().await;

    // Timeout (signed in first, so the key-pair call is what times out).
    let fast = sb.dt_client(short_timeout());
    fast.check_credentials().await.expect("sign in");
    sb.faults(json!({"latency_ms": 2000})).await;
    let e = fast.list().await.expect_err("timeout");
    assert_variant(&e, "Transport");
    assert!(e.to_string().starts_with("datonis list: timed out"), "{e}");
    leaks.err(&e);
    sb.clear_faults().await;

    // Commit-then-fail, both ways; the keys exist anyway.
    let req = CreateKeyPair {
        name: String::new(),
        validity_days: 30,
        role_key: Some("1946c4ce5c".into()),
    };
    sb.faults(json!({"commit_then_fail": "status500", "commit_then_fail_count": 1}))
        .await;
    let e = dt.create(&req).await.expect_err("500 after commit");
    assert!(
        matches!(e, ProviderError::Server { status: 500, .. }),
        "{e:?}"
    );
    assert!(e.may_have_committed());
    leaks.err(&e);
    assert_eq!(sb.keys().await.len(), 1);
    sb.faults(json!({"commit_then_fail": "drop"})).await;
    let e = dt.create(&req).await.expect_err("drop after commit");
    assert_variant(&e, "Transport");
    assert!(e.may_have_committed());
    leaks.err(&e);
    let keys = sb.keys().await;
    assert_eq!(keys.len(), 2);
    for k in &keys {
        leaks.secret(k.secret.clone());
    }
    // The controller's recovery path sees both.
    assert_eq!(dt.list().await.expect("list").len(), 2);

    leaks.check();
}

/// The create-response faults: the key is committed, then the 2xx answer is unusable.
const SPOILED_CREATES: [&str; 5] = [
    "truncated",
    "wrong_shape",
    "missing_secret",
    "missing_key_id",
    "oversized",
];

/// A create whose 2xx answer cannot be used may have committed; the key is in the list.
#[track_caller]
fn assert_spoiled_create(e: &ProviderError, mode: &str, success: u16) {
    assert!(e.may_have_committed(), "{mode}: {e:?}");
    assert!(!e.is_retryable(), "{mode}: {e:?}");
    match e {
        ProviderError::UnexpectedResponse { status, .. } => assert_eq!(*status, success, "{mode}"),
        // A body cut off on the wire is as ambiguous, and allowed too.
        ProviderError::Transport { .. } => {}
        other => panic!("{mode}: {other:?}"),
    }
}

async fn threatwinds_spoiled_create_answers(dialect: Dialect, success: u16) {
    let sb = Sandbox::threatwinds(dialect).await;
    let tw = sb.tw_client(TW_TOKEN, HttpOptions::default());
    let mut errors = Vec::new();
    for mode in SPOILED_CREATES {
        sb.faults(json!({"commit_then_fail": mode, "commit_then_fail_count": 1}))
            .await;
        let name = format!("spoiled {mode}");
        let e = tw.create(&tw_req(&name)).await.expect_err(mode);
        assert_spoiled_create(&e, mode, success);
        // The controller's recovery: the key is found by listing.
        let listed = tw.list().await.expect("list");
        assert!(
            listed
                .iter()
                .any(|k| k.name.as_deref() == Some(name.as_str())),
            "{mode}: key not listed"
        );
        errors.push(e);
    }
    sb.clear_faults().await;
    let mut leaks = Leaks::default();
    leaks.secret(TW_TOKEN);
    for k in sb.keys().await {
        leaks.secret(k.secret);
    }
    errors.iter().for_each(|e| leaks.err(e));
    leaks.check();
}

#[tokio::test]
async fn threatwinds_current_dialect_spoiled_create_answers_may_have_committed() {
    threatwinds_spoiled_create_answers(Dialect::Current, 200).await;
}

#[tokio::test]
async fn threatwinds_detailed_dialect_spoiled_create_answers_may_have_committed() {
    threatwinds_spoiled_create_answers(Dialect::Detailed, 202).await;
}

#[tokio::test]
async fn datonis_spoiled_create_answers_may_have_committed() {
    let sb = Sandbox::datonis(Duration::from_secs(1800)).await;
    let dt = sb.dt_client(HttpOptions::default());
    dt.check_credentials().await.expect("sign in");
    let req = CreateKeyPair {
        name: String::new(),
        validity_days: 30,
        role_key: Some("1946c4ce5c".into()),
    };
    let mut errors = Vec::new();
    for mode in SPOILED_CREATES {
        let before: Vec<String> = sb.keys().await.into_iter().map(|k| k.id).collect();
        sb.faults(json!({"commit_then_fail": mode})).await;
        let e = dt.create(&req).await.expect_err(mode);
        assert_spoiled_create(&e, mode, 200);
        let new: Vec<String> = sb
            .keys()
            .await
            .into_iter()
            .map(|k| k.id)
            .filter(|id| !before.contains(id))
            .collect();
        assert_eq!(new.len(), 1, "{mode}: one key committed");
        let listed = dt.list().await.expect("list");
        assert!(
            listed.iter().any(|k| k.key_id == new[0]),
            "{mode}: not listed"
        );
        errors.push(e);
    }
    let mut leaks = Leaks::default();
    leaks.secret(DT_PASSWORD);
    for k in sb.keys().await {
        leaks.secret(k.secret);
    }
    errors.iter().for_each(|e| leaks.err(e));
    leaks.check();
}

/// A session made the documented way and left unverified; returns its bearer token.
async fn unverified_session(sb: &Sandbox) -> String {
    let answer: Value = sb
        .control
        .post(format!("{}/api/auth/v2/session", sb.url()))
        .json(&json!({"email": "someone.else@threatwinds.test"}))
        .send()
        .await
        .expect("create session")
        .json()
        .await
        .expect("session json");
    answer["bearer"].as_str().expect("bearer").to_owned()
}

async fn threatwinds_verify_refusals(dialect: Dialect) {
    let readings = ThreatWindsReadings {
        verify_auth: VerifyAuth::Session,
        ..ThreatWindsReadings::default()
    };
    for readings in [ThreatWindsReadings::default(), readings] {
        let sb = Sandbox::threatwinds_reading(dialect, readings).await;
        let tw = sb.tw_client(TW_TOKEN, HttpOptions::default());
        let created = tw.create(&tw_req("verify me")).await.expect("create");
        let code_id = created.verification_code_id.clone().expect("code id");
        let wrong = SecretString::from("000000");

        // Live, verified session: the code is at fault.
        let e = tw.verify(&code_id, &wrong).await.expect_err("wrong code");
        assert_variant(&e, "CodeRejected");
        assert!(!e.is_retryable() && !e.may_have_committed());
        assert_eq!(e.class(), "code_rejected");

        // Unverified session: a credentials problem, not the code's.
        let other = sb.tw_client(&unverified_session(&sb).await, HttpOptions::default());
        let e = other
            .verify(&code_id, &wrong)
            .await
            .expect_err("unverified");
        assert_variant(&e, "Unauthorized");
        assert!(e.to_string().contains("not verified"), "{e}");

        // Unknown session: a credentials problem too.
        let unknown = sb.tw_client("unknownSessionToken-0123456789", HttpOptions::default());
        let e = unknown.verify(&code_id, &wrong).await.expect_err("unknown");
        assert_variant(&e, "Unauthorized");
        assert!(e.to_string().contains("expired or is unknown"), "{e}");

        // The session check itself fails (every 2nd request answers 500): that error is
        // returned, so the code is submitted again later.
        sb.faults(json!({"error_rate": 0.5})).await;
        let e = tw.verify(&code_id, &wrong).await.expect_err("check fails");
        assert!(
            matches!(e, ProviderError::Server { status: 500, .. }),
            "{e:?}"
        );
        assert!(e.is_retryable());
        sb.clear_faults().await;

        // 403 stays Forbidden (retryable), without a session check.
        sb.faults(json!({"rate_limit_rps": 0.001})).await;
        let _ = tw.list().await;
        let e = tw.verify(&code_id, &wrong).await.expect_err("throttled");
        assert_variant(&e, "Forbidden");
        assert!(e.is_retryable());
        sb.clear_faults().await;

        // The right code still works afterwards.
        let code = code_for(&sb.outbox().await, &code_id);
        tw.verify(&code_id, &code).await.expect("verify");
    }
}

#[tokio::test]
async fn threatwinds_current_dialect_verify_tells_a_refused_code_from_a_dead_session() {
    threatwinds_verify_refusals(Dialect::Current).await;
}

#[tokio::test]
async fn threatwinds_detailed_dialect_verify_tells_a_refused_code_from_a_dead_session() {
    threatwinds_verify_refusals(Dialect::Detailed).await;
}

#[tokio::test]
async fn threatwinds_verify_with_an_expired_session_is_unauthorized() {
    let mut cfg = SandboxConfig::threatwinds();
    cfg.session_tokens = vec![TW_TOKEN.into()];
    cfg.session_ttl = Duration::from_secs(2);
    cfg.threatwinds_readings.verify_auth = VerifyAuth::Session;
    let sb = Sandbox::start(cfg).await;
    let tw = sb.tw_client(TW_TOKEN, HttpOptions::default());
    let created = tw.create(&tw_req("late")).await.expect("create");
    let code_id = created.verification_code_id.expect("code id");
    let code = code_for(&sb.outbox().await, &code_id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tw.check_credentials().await.is_ok() {
        assert!(Instant::now() < deadline, "session never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Even the right code: the server answers 404 for the dead session.
    let e = tw.verify(&code_id, &code).await.expect_err("dead session");
    assert_variant(&e, "Unauthorized");
    assert!(e.to_string().contains("expired or is unknown"), "{e}");
}

/// "New Verification Code" under one `Authorization` reading: at most one refused
/// attempt, then the working form is used directly.
async fn threatwinds_new_code_auth(dialect: Dialect, mode: NewCodeAuth) {
    let success = match dialect {
        Dialect::Current => "200",
        Dialect::Detailed => "202",
    };
    let readings = ThreatWindsReadings {
        new_code_auth: mode,
        ..ThreatWindsReadings::default()
    };
    let sb = Sandbox::threatwinds_reading(dialect, readings).await;
    let tw = sb.tw_client(TW_TOKEN, HttpOptions::default());
    let created = tw.create(&tw_req("new code")).await.expect("create");
    let route = "POST /api/auth/v2/keypair/verification";
    let first = tw
        .request_new_code(&created.key.api_key, &created.api_secret)
        .await
        .unwrap_or_else(|e| panic!("{mode:?}: {e:?}"));
    let refused = sb.count(route, "401").await + sb.count(route, "400").await;
    let expected_refusals = u64::from(mode == NewCodeAuth::Raw);
    assert_eq!(refused, expected_refusals, "{mode:?}: first call");
    // The working form is remembered, also by clones: no further refusals.
    let clone = tw.clone();
    let second = clone
        .request_new_code(&created.key.api_key, &created.api_secret)
        .await
        .expect("second new code");
    assert_ne!(first, second);
    let refused = sb.count(route, "401").await + sb.count(route, "400").await;
    assert_eq!(refused, expected_refusals, "{mode:?}: remembered");
    assert_eq!(sb.count(route, success).await, 2, "{mode:?}");
    // The newest code verifies the key.
    let code = code_for(&sb.outbox().await, &second);
    tw.verify(&second, &code).await.expect("verify");
    // A wrong secret is still refused (both forms tried at most once more).
    let e = tw
        .request_new_code(
            &created.key.api_key,
            &SecretString::from("wrongSecret-0123456789"),
        )
        .await
        .expect_err("wrong secret");
    assert_variant(&e, "Unauthorized");
    assert!(!format!("{e} {e:?}").contains("wrongSecret-0123456789"));
}

#[tokio::test]
async fn threatwinds_new_code_falls_back_to_the_bare_token_and_remembers_it() {
    for dialect in [Dialect::Current, Dialect::Detailed] {
        for mode in [NewCodeAuth::Bearer, NewCodeAuth::Raw, NewCodeAuth::Either] {
            threatwinds_new_code_auth(dialect, mode).await;
        }
    }
}

#[tokio::test]
async fn threatwinds_unverified_key_check_reads_either_way() {
    for check in [UnverifiedCheck::Allowed, UnverifiedCheck::Unauthorized] {
        let readings = ThreatWindsReadings {
            unverified_check: check,
            ..ThreatWindsReadings::default()
        };
        let sb = Sandbox::threatwinds_reading(Dialect::Current, readings).await;
        let tw = sb.tw_client(TW_TOKEN, HttpOptions::default());
        let created = tw.create(&tw_req("unverified")).await.expect("create");
        let lookup = KeyLookup {
            key_id: created.key.key_id.clone(),
            api_key: created.key.api_key.clone(),
            api_secret: Some(created.api_secret.clone()),
        };
        let without_secret = KeyLookup {
            api_secret: None,
            ..lookup.clone()
        };
        // Unverified: seen as such with and without the secret.
        let got = tw.get(&lookup).await.expect("get unverified");
        assert_eq!(got.verified, Some(false), "{check:?}");
        assert_eq!(got.key_id, created.key.key_id);
        let got = tw.get(&without_secret).await.expect("get via list");
        assert_eq!(got.verified, Some(false), "{check:?}");
        let wrong_secret = KeyLookup {
            api_secret: Some(SecretString::from("wrongSecret-0123456789")),
            ..lookup.clone()
        };
        let wrong = tw.get(&wrong_secret).await;
        match check {
            // The server has shown it answers checks of unverified keys: 401 is the secret.
            UnverifiedCheck::Allowed => assert_variant(&wrong.expect_err("wrong"), "Unauthorized"),
            // Indistinguishable from "unverified" until the key is verified (documented).
            UnverifiedCheck::Unauthorized => {
                assert_eq!(wrong.expect("as unverified").verified, Some(false));
            }
        }

        let code_id = created.verification_code_id.clone().expect("code id");
        let code = code_for(&sb.outbox().await, &code_id);
        tw.verify(&code_id, &code).await.expect("verify");

        // Verified: both views say so, and a wrong secret is Unauthorized again.
        let got = tw.get(&lookup).await.expect("get verified");
        assert_eq!(got.verified, Some(true), "{check:?}");
        let got = tw.get(&without_secret).await.expect("get via list");
        assert_eq!(got.verified, Some(true), "{check:?}");
        let e = tw.get(&wrong_secret).await.expect_err("wrong secret");
        assert_variant(&e, "Unauthorized");
    }
}

/// The whole client flow under one sandbox reading.
async fn threatwinds_flow(dialect: Dialect, name: &str, readings: ThreatWindsReadings) {
    let sb = Sandbox::threatwinds_reading(dialect, readings).await;
    let tw = sb.tw_client(TW_TOKEN, HttpOptions::default());
    let ctx = format!("{name} ({dialect:?})");
    let created = tw.create(&tw_req("flow")).await.expect(&ctx);
    let lookup = KeyLookup {
        key_id: created.key.key_id.clone(),
        api_key: created.key.api_key.clone(),
        api_secret: Some(created.api_secret.clone()),
    };
    let got = tw.get(&lookup).await.expect(&ctx);
    assert_eq!(got.verified, Some(false), "{ctx}");
    let code_id = tw
        .request_new_code(&created.key.api_key, &created.api_secret)
        .await
        .expect(&ctx);
    let e = tw
        .verify(&code_id, &SecretString::from("000000"))
        .await
        .expect_err(&ctx);
    assert_variant(&e, "CodeRejected");
    let code = code_for(&sb.outbox().await, &code_id);
    tw.verify(&code_id, &code).await.expect(&ctx);
    let got = tw.get(&lookup).await.expect(&ctx);
    assert_eq!(got.verified, Some(true), "{ctx}");
    let listed = tw.list().await.expect(&ctx);
    assert!(
        listed.iter().any(|k| k.key_id == created.key.key_id),
        "{ctx}"
    );
    tw.delete(&created.key.key_id).await.expect(&ctx);
    let e = tw.delete(&created.key.key_id).await.expect_err(&ctx);
    assert_variant(&e, "NotFound");
}

#[tokio::test]
async fn threatwinds_client_works_under_every_strict_reading() {
    for dialect in [Dialect::Current, Dialect::Detailed] {
        threatwinds_flow(dialect, "lenient", ThreatWindsReadings::lenient()).await;
        for (name, readings) in ThreatWindsReadings::strict_profiles() {
            threatwinds_flow(dialect, name, readings).await;
        }
    }
}

// ----------------------------------------------------------------------------------------
// Datonis: every reading of the docs' open points (sandbox `DatonisReadings`).

impl Sandbox {
    async fn datonis_readings(readings: DatonisReadings) -> Sandbox {
        let mut cfg = SandboxConfig::datonis();
        cfg.users = vec![(DT_EMAIL.into(), DT_PASSWORD.into())];
        cfg.datonis_readings = readings;
        Sandbox::start(cfg).await
    }

    async fn reset_stats(&self) {
        self.control
            .delete(format!("{}/_sandbox/stats", self.url()))
            .send()
            .await
            .expect("reset stats")
            .error_for_status()
            .expect("stats reset");
    }

    async fn stored(&self, key_id: &str) -> SandboxKey {
        self.keys()
            .await
            .into_iter()
            .find(|k| k.id == key_id)
            .unwrap_or_else(|| panic!("key {key_id} not in the sandbox"))
    }
}

const ROLE_AGENT: &str = "1946c4ce5c";
const ROLE_WRITE_ONLY: &str = "517d8e4695";
const ROLE_ABC: &str = "dc459a67b3";

fn dt_req(validity_days: u32, role: &str) -> CreateKeyPair {
    CreateKeyPair {
        name: String::new(),
        validity_days,
        role_key: Some(role.into()),
    }
}

/// Whether an answered expiry (midnight of the account's zone, in UTC) is on `date`.
#[track_caller]
fn assert_on_day(at: Option<chrono::DateTime<chrono::Utc>>, date: NaiveDate) {
    let at = at.unwrap_or_else(|| panic!("no expiry, expected {date}"));
    let off = (at.date_naive() - date).num_days();
    assert!(off.abs() <= 1, "expiry {at} is not on {date}");
}

fn day_month_ambiguous(d: NaiveDate) -> bool {
    d.day() <= 12 && d.day() != d.month()
}

fn provider_order(order: ExpiryDateOrder) -> DateOrder {
    match order {
        ExpiryDateOrder::DayFirst => DateOrder::DayFirst,
        ExpiryDateOrder::MonthFirst => DateOrder::MonthFirst,
    }
}

fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("date")
}

/// Creates a key pair expiring on the first day after today that `wanted` accepts, and
/// returns it with that day. Creating again if the UTC day rolled over meanwhile keeps the
/// expected date exact.
async fn create_expiring(
    dt: &DatonisClient,
    wanted: fn(NaiveDate) -> bool,
) -> (CreatedKeyPair, NaiveDate) {
    for _ in 0..2 {
        let today = chrono::Utc::now().date_naive();
        let (days, date) = (1..=400u32)
            .map(|n| (n, today + chrono::Days::new(u64::from(n))))
            .find(|(_, d)| wanted(*d))
            .expect("such a day within 400 days");
        let created = dt
            .create(&dt_req(days, ROLE_WRITE_ONLY))
            .await
            .expect("create");
        if chrono::Utc::now().date_naive() == today {
            return (created, date);
        }
        dt.delete(&created.key.key_id).await.expect("delete");
    }
    panic!("the UTC day rolled over twice");
}

#[tokio::test]
async fn datonis_list_45_keys_in_pages_of_20_under_query_body_and_either() {
    for source in [
        ListParamSource::Query,
        ListParamSource::Body,
        ListParamSource::Either,
    ] {
        let sb = Sandbox::datonis_readings(DatonisReadings {
            list_params: source,
            preexisting_keys: 45,
            ..DatonisReadings::default()
        })
        .await;
        let dt = sb.dt_client(HttpOptions::default()).with_page_size(20);
        let listed: Vec<String> = dt
            .list()
            .await
            .unwrap_or_else(|e| panic!("{source:?}: {e}"))
            .into_iter()
            .map(|k| k.key_id)
            .collect();
        // Every key, once, in creation order (the client asks order_by=created_at asc).
        let stored: Vec<String> = sb.keys().await.into_iter().map(|k| k.id).collect();
        assert_eq!(listed, stored, "{source:?}");
        assert_eq!(
            sb.count("GET /api/v3/key_pairs", "200").await,
            3,
            "{source:?}"
        );
    }
}

#[tokio::test]
async fn datonis_list_page_sends_parameters_in_query_and_body() {
    for source in [ListParamSource::Query, ListParamSource::Body] {
        let sb = Sandbox::datonis_readings(DatonisReadings {
            list_params: source,
            preexisting_keys: 5,
            ..DatonisReadings::default()
        })
        .await;
        let dt = sb.dt_client(HttpOptions::default());
        let p = dt
            .list_page(&ListQuery {
                page: 2,
                per: 2,
                order_by: Some("created_at".into()),
                order: Some(SortOrder::Desc),
                timestamp_format: Some(TimestampFormat::Str),
                ..ListQuery::default()
            })
            .await
            .expect("page");
        let stored: Vec<String> = sb.keys().await.into_iter().map(|k| k.id).collect();
        let got: Vec<String> = p.key_pairs.into_iter().map(|k| k.key_id).collect();
        // Newest first, second page of two.
        assert_eq!(got, [stored[2].clone(), stored[1].clone()], "{source:?}");
        assert_eq!(p.total_count, Some(5));
        assert_eq!(p.page, 2);
    }
}

#[tokio::test]
async fn datonis_list_from_a_provider_ignoring_page_is_an_error() {
    let sb = Sandbox::datonis_readings(DatonisReadings {
        preexisting_keys: 45,
        ignore_page: true,
        ..DatonisReadings::default()
    })
    .await;
    let dt = sb.dt_client(HttpOptions::default()).with_page_size(20);
    let e = dt.list().await.expect_err("a partial list must not pass");
    assert_variant(&e, "UnexpectedResponse");
    assert!(e.to_string().contains("listed 20 of 45 key pairs"), "{e}");
    assert!(e.to_string().starts_with("datonis list: "), "{e}");
    // It gave up at the first repeated page instead of looping.
    assert_eq!(sb.count("GET /api/v3/key_pairs", "200").await, 2);
    // One page that holds everything is complete even if `page` is ignored.
    let big = dt.clone().with_page_size(100);
    assert_eq!(big.list().await.expect("one page").len(), 45);
}

#[tokio::test]
async fn datonis_update_role_key_under_nested_top_level_and_either() {
    for placement in [
        RoleKeyPlacement::Nested,
        RoleKeyPlacement::TopLevel,
        RoleKeyPlacement::Either,
    ] {
        let sb = Sandbox::datonis_readings(DatonisReadings {
            update_role_key: placement,
            ..DatonisReadings::default()
        })
        .await;
        let dt = sb.dt_client(HttpOptions::default());
        let created = dt
            .create(&dt_req(30, ROLE_WRITE_ONLY))
            .await
            .expect("create");
        let id = &created.key.key_id;
        for role in [ROLE_AGENT, ROLE_ABC] {
            let updated = dt
                .update(
                    id,
                    &UpdateKeyPair {
                        role_key: Some(role.into()),
                        ..UpdateKeyPair::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{placement:?}: {e}"));
            assert_eq!(updated.role_key.as_deref(), Some(role), "{placement:?}");
            assert_eq!(sb.stored(id).await.role_key.as_deref(), Some(role));
        }
    }
}

/// Serves `body` as a 200 JSON answer to every request and records the raw requests.
async fn canned_datonis(body: Value) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let body = body.to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let len = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
            log.lock()
                .expect("log")
                .push(String::from_utf8_lossy(&buf).to_string());
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn datonis_update_the_provider_did_not_apply_is_an_error() {
    // A provider that answers every update with the key pair unchanged.
    let unchanged = json!({"key_pair": {
        "key_pair_key": "abec9bb3d2e18c2c1dt4t792b3t73768bf7d68cd",
        "access_key": "abec9bb3d2e18c2c1dt4t792b3t73768bf7d68cd",
        "secret_key": "f2ddt21at5f56128a36t8t9949231acc89481f2f",
        "enabled": "true",
        "expiry_date": "2016-09-08T18:30:00.000Z",
        "role_key": ROLE_WRITE_ONLY,
        "role_name": "Write Only"
    }});
    let (url, seen) = canned_datonis(unchanged).await;
    let dt = DatonisClient::new(
        &url,
        DatonisCredentials::Token(SecretString::from("canned-token-123")),
        HttpOptions::default(),
    )
    .expect("client");
    let id = "abec9bb3d2e18c2c1dt4t792b3t73768bf7d68cd";
    let mut leaks = Leaks::default();
    leaks.secret("f2ddt21at5f56128a36t8t9949231acc89481f2f");
    leaks.secret("canned-token-123");
    for (req, field) in [
        (
            UpdateKeyPair {
                role_key: Some(ROLE_AGENT.into()),
                ..UpdateKeyPair::default()
            },
            "role_key",
        ),
        (
            UpdateKeyPair {
                enabled: Some(false),
                ..UpdateKeyPair::default()
            },
            "enabled",
        ),
        (
            UpdateKeyPair {
                expiry_date: Some(ymd(2031, 3, 5)),
                ..UpdateKeyPair::default()
            },
            "expiry_date",
        ),
    ] {
        let e = dt.update(id, &req).await.expect_err(field);
        assert_variant(&e, "NotApplied");
        assert!(!e.may_have_committed(), "the answer shows it unchanged");
        assert!(
            e.to_string()
                .contains(&format!("the provider did not apply {field}")),
            "{e}"
        );
        leaks.err(&e);
    }
    // What it did apply passes (enabled answered as the string "true").
    let same = dt
        .update(
            id,
            &UpdateKeyPair {
                enabled: Some(true),
                role_key: Some(ROLE_WRITE_ONLY.into()),
                expiry_date: Some(ymd(2016, 9, 9)),
            },
        )
        .await
        .expect("applied");
    assert_eq!(same.enabled, Some(true));
    leaks.check();

    // The update body: role_key inside and beside key_pair, enabled a JSON boolean.
    let requests = seen.lock().expect("log").clone();
    let last = requests.last().expect("a request");
    assert!(
        last.starts_with(&format!("PUT /api/v3/key_pairs/{id} ")),
        "{last}"
    );
    let body: Value =
        serde_json::from_str(last.split("\r\n\r\n").nth(1).expect("body")).expect("json body");
    assert_eq!(
        body,
        json!({"key_pair": {"expiry_date": "09/09/2016", "enabled": true, "role_key": ROLE_WRITE_ONLY}, "role_key": ROLE_WRITE_ONLY})
    );
}

#[tokio::test]
async fn datonis_list_request_carries_parameters_both_ways() {
    let (url, seen) = canned_datonis(json!({"total_count": 0, "page": 1, "key_pairs": []})).await;
    let dt = DatonisClient::new(
        &url,
        DatonisCredentials::Token(SecretString::from("canned-token-123")),
        HttpOptions::default(),
    )
    .expect("client")
    .with_page_size(20);
    assert!(dt.list().await.expect("empty list").is_empty());
    let requests = seen.lock().expect("log").clone();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert!(
        request.starts_with(
            "GET /api/v3/key_pairs?page=1&per=20&order_by=created_at&order=asc HTTP/1.1"
        ),
        "{request}"
    );
    let body: Value =
        serde_json::from_str(request.split("\r\n\r\n").nth(1).expect("body")).expect("json body");
    assert_eq!(
        body,
        json!({"page": "1", "per": "20", "order_by": "created_at", "order": "asc"})
    );
}

#[tokio::test]
async fn datonis_expiry_date_day_first_and_month_first_on_create_and_update() {
    for order in [ExpiryDateOrder::DayFirst, ExpiryDateOrder::MonthFirst] {
        let sb = Sandbox::datonis_readings(DatonisReadings {
            expiry_date_order: order,
            ..DatonisReadings::default()
        })
        .await;
        let learned = Some(provider_order(order));
        let month_first = order == ExpiryDateOrder::MonthFirst;

        // Create, ambiguous date (day <= 12, day != month), fresh client: the answer
        // shows the reading; month first, the key is fixed at once with an update.
        let dt = sb.dt_client(HttpOptions::default());
        sb.reset_stats().await;
        let (created, date) = create_expiring(&dt, day_month_ambiguous).await;
        assert_on_day(created.key.expire_at, date);
        assert_eq!(dt.date_order(), learned, "{order:?}");
        let stored = sb.stored(&created.key.key_id).await;
        assert_eq!(
            Some(stored.expires_at),
            created.key.expire_at.map(|t| t.timestamp())
        );
        let fixes = sb.count("PUT /api/v3/key_pairs/{key}", "200").await;
        assert_eq!(fixes, u64::from(month_first), "{order:?}");

        // Create, day > 12, fresh client: month first refuses it (422) once.
        let dt = sb.dt_client(HttpOptions::default());
        sb.reset_stats().await;
        let (created, date) = create_expiring(&dt, |d| d.day() > 12).await;
        assert_on_day(created.key.expire_at, date);
        assert_eq!(dt.date_order(), learned, "{order:?}");
        let refused = sb.count("POST /api/v3/key_pairs", "422").await;
        assert_eq!(refused, u64::from(month_first), "{order:?}");
        assert_eq!(sb.count("POST /api/v3/key_pairs", "200").await, 1);
        let id = created.key.key_id.clone();

        // Update, fresh client, ambiguous and then unambiguous dates.
        for date in [ymd(2031, 3, 5), ymd(2031, 12, 25), ymd(2032, 4, 7)] {
            let dt = sb.dt_client(HttpOptions::default());
            let updated = dt
                .update(
                    &id,
                    &UpdateKeyPair {
                        expiry_date: Some(date),
                        ..UpdateKeyPair::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{order:?} {date}: {e}"));
            assert_on_day(updated.expire_at, date);
            assert_eq!(dt.date_order(), learned, "{order:?} {date}");
            assert_on_day(
                chrono::DateTime::from_timestamp(sb.stored(&id).await.expires_at, 0),
                date,
            );
        }

        // Once learned: one request per update, whatever the date.
        sb.reset_stats().await;
        for date in [ymd(2033, 2, 1), ymd(2033, 1, 31), ymd(2033, 9, 9)] {
            let updated = dt
                .update(
                    &id,
                    &UpdateKeyPair {
                        expiry_date: Some(date),
                        enabled: Some(false),
                        ..UpdateKeyPair::default()
                    },
                )
                .await
                .expect("update");
            assert_on_day(updated.expire_at, date);
        }
        assert_eq!(sb.count("PUT /api/v3/key_pairs/{key}", "200").await, 3);

        // Day = month tells nothing, and needs nothing.
        let fresh = sb.dt_client(HttpOptions::default());
        let updated = fresh
            .update(
                &id,
                &UpdateKeyPair {
                    expiry_date: Some(ymd(2034, 9, 9)),
                    ..UpdateKeyPair::default()
                },
            )
            .await
            .expect("update");
        assert_on_day(updated.expire_at, ymd(2034, 9, 9));
        assert_eq!(fresh.date_order(), None);
    }
}

/// A Datonis create on a day whose date reads both ways, from a provider that reads it
/// month first, with every request failing at `error_rate` from the create on: the create
/// passes and its date fix fails. Returns the sandbox and the create's error.
async fn create_whose_date_fix_fails(error_rate: f64) -> (Sandbox, ProviderError) {
    let sb = Sandbox::datonis_readings(DatonisReadings {
        expiry_date_order: ExpiryDateOrder::MonthFirst,
        ..DatonisReadings::default()
    })
    .await;
    let dt = sb.dt_client(HttpOptions::default());
    dt.check_credentials().await.expect("sign in");
    let today = chrono::Utc::now().date_naive();
    let days = (1..=400u32)
        .find(|n| day_month_ambiguous(today + chrono::Days::new(u64::from(*n))))
        .expect("an ambiguous day");
    sb.faults(json!({"error_rate": error_rate})).await;
    let e = dt
        .create(&dt_req(days, ROLE_AGENT))
        .await
        .expect_err("fix failed");
    sb.clear_faults().await;
    (sb, e)
}

#[tokio::test]
async fn datonis_create_whose_date_cannot_be_fixed_is_deleted_again() {
    // Every second request fails: the create passes, its date fix fails, the delete passes.
    let (sb, e) = create_whose_date_fix_fails(0.5).await;
    assert!(
        matches!(e, ProviderError::Server { status: 500, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("was deleted again"), "{e}");
    assert!(sb.keys().await.is_empty());
    assert_eq!(sb.count("DELETE /api/v3/key_pairs/{key}", "200").await, 1);
}

/// A key created with the wrong fields that cannot be deleted again stays at the provider:
/// the error then says the write may have committed, so the caller keeps its intent.
#[tokio::test]
async fn datonis_create_that_cannot_be_undone_may_have_committed() {
    // Two requests in three fail: the create passes, its date fix and the delete fail.
    let (sb, e) = create_whose_date_fix_fails(0.67).await;
    assert_variant(&e, "UnexpectedResponse");
    assert!(e.may_have_committed(), "{e:?}");
    assert!(e.to_string().contains("failed too"), "{e}");
    assert_eq!(sb.keys().await.len(), 1, "the key stayed");
}

#[tokio::test]
async fn datonis_enabled_answered_as_bool_or_string() {
    for format in [EnabledFormat::Bool, EnabledFormat::String] {
        let sb = Sandbox::datonis_readings(DatonisReadings {
            enabled_in_answers: format,
            ..DatonisReadings::default()
        })
        .await;
        let dt = sb.dt_client(HttpOptions::default());
        let created = dt.create(&dt_req(30, ROLE_AGENT)).await.expect("create");
        assert_eq!(created.key.enabled, Some(true), "{format:?}");
        let id = created.key.key_id.clone();
        for enabled in [false, true, false] {
            let updated = dt
                .update(
                    &id,
                    &UpdateKeyPair {
                        enabled: Some(enabled),
                        ..UpdateKeyPair::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(updated.enabled, Some(enabled), "{format:?}");
        }
        let lookup = KeyLookup {
            key_id: id.clone(),
            api_key: created.key.api_key.clone(),
            api_secret: None,
        };
        assert_eq!(dt.get(&lookup).await.expect("get").enabled, Some(false));
        let listed = dt.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].enabled, Some(false));
        assert_eq!(sb.stored(&id).await.enabled, Some(false));
    }
}

#[tokio::test]
async fn datonis_client_works_under_every_strict_profile() {
    for (name, readings) in DatonisReadings::strict_profiles() {
        let sb = Sandbox::datonis_readings(DatonisReadings {
            preexisting_keys: 45,
            ..readings
        })
        .await;
        let dt = sb.dt_client(HttpOptions::default()).with_page_size(20);
        let created = dt
            .create(&dt_req(30, ROLE_WRITE_ONLY))
            .await
            .unwrap_or_else(|e| panic!("{name}: create: {e}"));
        let id = created.key.key_id.clone();
        let date = ymd(2031, 3, 5);
        let updated = dt
            .update(
                &id,
                &UpdateKeyPair {
                    enabled: Some(false),
                    expiry_date: Some(date),
                    role_key: Some(ROLE_AGENT.into()),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: update: {e}"));
        assert_eq!(updated.enabled, Some(false), "{name}");
        assert_eq!(updated.role_key.as_deref(), Some(ROLE_AGENT), "{name}");
        assert_on_day(updated.expire_at, date);
        let stored = sb.stored(&id).await;
        assert_eq!(stored.enabled, Some(false), "{name}");
        assert_eq!(stored.role_key.as_deref(), Some(ROLE_AGENT), "{name}");
        let listed = dt
            .list()
            .await
            .unwrap_or_else(|e| panic!("{name}: list: {e}"));
        assert_eq!(listed.len(), 46, "{name}");
        let mine = listed.iter().find(|k| k.key_id == id).expect("listed");
        assert_eq!(mine.enabled, Some(false), "{name}");
        assert_eq!(mine.role_key.as_deref(), Some(ROLE_AGENT), "{name}");
        dt.delete(&id).await.expect("delete");
        assert_eq!(dt.list().await.expect("list").len(), 45, "{name}");
    }
}
