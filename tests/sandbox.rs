//! Integration tests of the sandbox provider servers over real HTTP.

use std::time::{Duration, Instant};

use keypair_operator::sandbox::{
    self, DEFAULT_DATONIS_EMAIL, DEFAULT_DATONIS_PASSWORD, DEFAULT_SESSION_TOKEN, DatonisReadings,
    Dialect, EnabledFormat, ExpiryDateOrder, ListParamSource, NewCodeAuth, PathCase,
    RoleKeyPlacement, SandboxConfig, SandboxHandle, SandboxKey, ThreatWindsReadings,
    UnverifiedCheck, VerifyAuth,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const TW: &str = "/api/auth/v2";

async fn start(config: SandboxConfig) -> SandboxHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    sandbox::spawn(config, listener).await.expect("spawn")
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A running sandbox and a client for it.
struct Sb {
    handle: SandboxHandle,
    http: reqwest::Client,
}

impl Sb {
    async fn new(config: SandboxConfig) -> Self {
        Sb {
            handle: start(config).await,
            http: http(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// ThreatWinds call with the default session token.
    fn tw(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.req(method, &format!("{TW}{path}"))
            .bearer_auth(DEFAULT_SESSION_TOKEN)
    }

    async fn json(&self, path: &str) -> Value {
        self.req(Method::GET, path)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json")
    }

    async fn keys(&self) -> Vec<SandboxKey> {
        serde_json::from_value(self.json("/_sandbox/keys").await).expect("keys")
    }

    /// The code the outbox holds for a verification code id.
    async fn code(&self, code_id: &str) -> String {
        let outbox = self.json("/_sandbox/outbox").await;
        let mail = outbox
            .as_array()
            .expect("outbox array")
            .iter()
            .find(|mail| mail["verificationCodeID"] == code_id)
            .expect("mail for code id");
        mail["code"].as_str().expect("code").to_owned()
    }

    async fn set_faults(&self, faults: Value) {
        let response = self
            .req(Method::PUT, "/_sandbox/faults")
            .json(&faults)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK, "faults accepted");
    }

    /// Creates a ThreatWinds key pair with the default session.
    async fn tw_create(&self, name: &str) -> Value {
        let response = self
            .tw(Method::POST, "/keypair")
            .json(&json!({"name": name, "days": 30}))
            .send()
            .await
            .expect("send");
        assert!(response.status().is_success(), "{:?}", response.status());
        response.json().await.expect("json")
    }

    /// Signs in to Datonis with the default account; returns the token.
    async fn dt_sign_in(&self) -> String {
        let response = self
            .req(Method::POST, "/api_sign_in")
            .json(&json!({"email": DEFAULT_DATONIS_EMAIL, "password": DEFAULT_DATONIS_PASSWORD}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["success"], true);
        body["auth_token"].as_str().expect("token").to_owned()
    }

    fn dt(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.req(method, path).header("X-Auth-Token", token)
    }

    async fn dt_create(&self, token: &str, role_key: &str) -> Value {
        let response = self
            .dt(Method::POST, "/api/v3/key_pairs", token)
            .json(&json!({"key_pair": {"expiry_date": "09/09/2030", "role_key": role_key}}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        body["key_pair"].clone()
    }
}

/// Status, `x-error` header and body of a current-dialect error.
async fn current_error(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body");
    assert!(body.is_empty(), "current dialect errors have no body");
    let id = headers
        .get("x-error-id")
        .expect("x-error-id")
        .to_str()
        .unwrap();
    assert!(
        uuid::Uuid::parse_str(id).is_ok(),
        "error id is a uuid: {id}"
    );
    let message = headers.get("x-error").expect("x-error").to_str().unwrap();
    (status, message.to_owned())
}

/// Status and message of a detailed-dialect error.
async fn detailed_error(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    assert!(response.headers().get("x-error").is_none());
    let body: Value = response.json().await.expect("json error body");
    assert!(uuid::Uuid::parse_str(body["uuid"].as_str().expect("uuid")).is_ok());
    (status, body["error"].as_str().expect("error").to_owned())
}

/// Status and message of a Datonis error.
async fn datonis_error(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("json error body");
    assert_eq!(body["success"], false);
    (status, body["error"].as_str().expect("error").to_owned())
}

// ----------------------------------------------------------------------------------------
// ThreatWinds

#[tokio::test]
async fn threatwinds_current_dialect_key_pair_lifecycle() {
    let sb = Sb::new(SandboxConfig::threatwinds()).await;

    let created = sb.tw_create("Example").await;
    assert_eq!(created["keyName"], "Example");
    assert_eq!(created["verified"], false);
    assert_eq!(created["apiSecret"].as_str().unwrap().len(), 64);
    let key_id = created["keyID"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&key_id).is_ok());
    let now = chrono::Utc::now().timestamp();
    let expire_at = created["expireAt"].as_i64().unwrap();
    assert!((expire_at - (now + 30 * 86_400)).abs() <= 5);
    let (api_key, api_secret) = (
        created["apiKey"].as_str().unwrap().to_owned(),
        created["apiSecret"].as_str().unwrap().to_owned(),
    );

    // The outbox got a keypair code for this key.
    let outbox = sb.json("/_sandbox/outbox").await;
    let mail = &outbox.as_array().unwrap()[0];
    assert_eq!(mail["purpose"], "keypair");
    assert_eq!(mail["keyID"], key_id.as_str());
    assert_eq!(mail["code"].as_str().unwrap().len(), 6);

    let check = |secret: &str| {
        sb.req(Method::GET, &format!("{TW}/keypair"))
            .header("api-key", &api_key)
            .header("api-secret", secret)
            .send()
    };
    let response = check(&api_secret).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["verified"], false);
    assert_eq!(body["keyID"], key_id.as_str());
    assert_eq!(body["userAlias"], "sandbox");
    assert!(body["roles"].is_array() && body["groups"].is_array());

    // Wrong code: 401 "verification code not found"; right code: acknowledged.
    let code_id = created["verificationCodeID"].as_str().unwrap();
    let code = sb.code(code_id).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let response = sb
        .req(Method::PUT, &format!("{TW}/keypair/verification"))
        .json(&json!({"verificationCodeID": code_id, "code": wrong}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        current_error(response).await,
        (
            StatusCode::UNAUTHORIZED,
            "verification code not found".into()
        )
    );
    let response = sb
        .tw(Method::PUT, "/keypair/verification")
        .json(&json!({"verificationCodeID": code_id, "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "acknowledged"})
    );
    // A used code is gone.
    let response = sb
        .req(Method::PUT, &format!("{TW}/keypair/verification"))
        .json(&json!({"verificationCodeID": code_id, "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::NOT_FOUND);

    let body: Value = check(&api_secret).await.unwrap().json().await.unwrap();
    assert_eq!(body["verified"], true);
    let response = check("wrong-secret").await.unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::UNAUTHORIZED);

    // A new code invalidates the previous one.
    let first: Value = sb
        .tw(Method::POST, "/keypair/verification")
        .json(&json!({"apiKey": api_key, "apiSecret": api_secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second: Value = sb
        .tw(Method::POST, "/keypair/verification")
        .json(&json!({"apiKey": api_key, "apiSecret": api_secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_id = first["verificationCodeID"].as_str().unwrap();
    let first_code = sb.code(first_id).await;
    let response = sb
        .req(Method::PUT, &format!("{TW}/keypair/verification"))
        .json(&json!({"verificationCodeID": first_id, "code": first_code}))
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::NOT_FOUND);
    assert!(second["verificationCodeID"].is_string());

    // The list shows the key without its secret.
    let list: Value = sb
        .tw(Method::GET, "/keypairs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["keyID"], key_id.as_str());
    assert_eq!(keys[0]["verified"], true);
    assert!(keys[0].get("apiSecret").is_none());

    // Delete, then 404 on a second delete and on the check.
    let response = sb
        .tw(Method::DELETE, &format!("/keypair/{key_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "acknowledged"})
    );
    let response = sb
        .tw(Method::DELETE, &format!("/keypair/{key_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        current_error(response).await,
        (StatusCode::NOT_FOUND, "record not found".into())
    );
    let response = check(&api_secret).await.unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::NOT_FOUND);
    assert!(sb.keys().await.is_empty());
}

#[tokio::test]
async fn threatwinds_detailed_dialect_statuses_bodies_and_path_case() {
    let sb = Sb::new(SandboxConfig {
        dialect: Dialect::Detailed,
        ..SandboxConfig::threatwinds()
    })
    .await;

    let response = sb
        .tw(Method::POST, "/keypair")
        .json(&json!({"days": 365, "name": "Example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let created: Value = response.json().await.unwrap();
    let code_id = created["verificationCodeID"].as_str().unwrap();
    let code = sb.code(code_id).await;

    // The detailed page's spelling, without Authorization (as its example).
    let response = sb
        .req(Method::PUT, &format!("{TW}/KeyPair/verification"))
        .json(&json!({"code": code, "verificationCodeID": code_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let response = sb
        .req(Method::GET, &format!("{TW}/KeyPair"))
        .header("api-key", created["apiKey"].as_str().unwrap())
        .header("api-secret", created["apiSecret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().await.unwrap()["verified"], true);

    let response = sb.tw(Method::GET, "/keypairs").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // The new-code call with a bare token, as the detailed page's example sends it.
    let response = sb
        .req(Method::POST, &format!("{TW}/keypair/verification"))
        .header("Authorization", DEFAULT_SESSION_TOKEN)
        .json(&json!({"apiKey": created["apiKey"], "apiSecret": created["apiSecret"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // Errors: JSON bodies with uuid and error.
    let response = sb
        .tw(
            Method::DELETE,
            "/keypair/5f35d2c4-5633-4b16-bbf0-5ca22ef8ea2e",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        detailed_error(response).await,
        (StatusCode::NOT_FOUND, "record not found".into())
    );
    let response = sb
        .req(Method::POST, &format!("{TW}/keypair"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .json(&json!({"days": 1, "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        detailed_error(response).await,
        (
            StatusCode::BAD_REQUEST,
            "incorrect authorization header".into()
        )
    );
    let response = sb
        .req(Method::GET, &format!("{TW}/keypair"))
        .send()
        .await
        .unwrap();
    assert_eq!(detailed_error(response).await.0, StatusCode::BAD_REQUEST);
    let response = sb.req(Method::GET, "/nowhere").send().await.unwrap();
    assert_eq!(detailed_error(response).await.0, StatusCode::NOT_FOUND);

    // Delete by the id-less endpoint line, with the id as a query parameter.
    let key_id = created["keyID"].as_str().unwrap();
    let response = sb
        .tw(Method::DELETE, &format!("/keypair?id={key_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(sb.keys().await.is_empty());
}

#[tokio::test]
async fn threatwinds_request_errors() {
    let sb = Sb::new(SandboxConfig::threatwinds()).await;
    let create = |body: &'static str| {
        sb.tw(Method::POST, "/keypair")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in [
        "",
        "{",
        "[]",
        r#"{"name": "x"}"#,
        r#"{"days": 3}"#,
        r#"{"name": "", "days": 3}"#,
        r#"{"name": "x", "days": 0}"#,
        r#"{"name": "x", "days": -4}"#,
        r#"{"name": "x", "days": "365"}"#,
        r#"{"name": "x", "days": 1.5}"#,
        r#"{"name": "x", "days": 1e300}"#,
        r#"{"name": "x", "days": 99999999999999999999999}"#,
        r#"{"name": 7, "days": 3}"#,
    ] {
        let (status, _) = current_error(create(body).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "body {body:?}");
    }

    // Authentication: missing 401, malformed 400, unknown 401.
    let response = sb
        .req(Method::GET, &format!("{TW}/keypairs"))
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::UNAUTHORIZED);
    let response = sb
        .req(Method::GET, &format!("{TW}/keypairs"))
        .header("Authorization", "Bearer two words")
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::BAD_REQUEST);
    let response = sb
        .req(Method::GET, &format!("{TW}/keypairs"))
        .bearer_auth("unknown")
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::UNAUTHORIZED);

    // Key check: missing header 400, unknown key 404.
    let response = sb
        .req(Method::GET, &format!("{TW}/keypair"))
        .header("api-key", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::BAD_REQUEST);
    let response = sb
        .req(Method::GET, &format!("{TW}/keypair"))
        .header("api-key", "x")
        .header("api-secret", "y")
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::NOT_FOUND);

    // Verification of an unknown code id: 404; missing fields: 400.
    let response = sb
        .req(Method::PUT, &format!("{TW}/keypair/verification"))
        .json(&json!({"verificationCodeID": "nope", "code": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::NOT_FOUND);
    let response = sb
        .req(Method::PUT, &format!("{TW}/keypair/verification"))
        .json(&json!({"code": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::BAD_REQUEST);

    // Unknown path 404 and wrong method 405, both in the dialect's format.
    let response = sb.tw(Method::GET, "/nothing").send().await.unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::NOT_FOUND);
    let response = sb.tw(Method::PATCH, "/keypair").send().await.unwrap();
    assert_eq!(
        current_error(response).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn threatwinds_expired_code_and_session() {
    // Codes that expire at once.
    let sb = Sb::new(SandboxConfig {
        code_ttl: Duration::ZERO,
        ..SandboxConfig::threatwinds()
    })
    .await;
    let created = sb.tw_create("k").await;
    let code_id = created["verificationCodeID"].as_str().unwrap();
    let code = sb.code(code_id).await;
    let response = sb
        .req(Method::PUT, &format!("{TW}/keypair/verification"))
        .json(&json!({"verificationCodeID": code_id, "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        current_error(response).await,
        (StatusCode::UNAUTHORIZED, "verification code expired".into())
    );

    // Sessions that expire at once: management calls answer 404 "record not found".
    let sb = Sb::new(SandboxConfig {
        session_ttl: Duration::from_millis(1),
        ..SandboxConfig::threatwinds()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let response = sb.tw(Method::GET, "/keypairs").send().await.unwrap();
    assert_eq!(
        current_error(response).await,
        (StatusCode::NOT_FOUND, "record not found".into())
    );
}

#[tokio::test]
async fn threatwinds_sessions_and_user_isolation() {
    let sb = Sb::new(SandboxConfig::threatwinds()).await;
    let default_key = sb.tw_create("default user's").await;

    let response = sb
        .req(Method::POST, &format!("{TW}/session"))
        .json(&json!({"email": "alice@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let session: Value = response.json().await.unwrap();
    let bearer = session["bearer"].as_str().unwrap().to_owned();
    let session_id = session["sessionID"].as_str().unwrap().to_owned();
    let alice =
        |method: Method, path: &str| sb.req(method, &format!("{TW}{path}")).bearer_auth(&bearer);

    // Unverified: checkable, but management calls answer 404.
    let check: Value = alice(Method::GET, "/session")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(check["verified"], false);
    assert_eq!(check["alias"], "alice");
    let response = alice(Method::GET, "/keypairs").send().await.unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::NOT_FOUND);

    let code_id = session["verificationCodeID"].as_str().unwrap();
    let outbox = sb.json("/_sandbox/outbox").await;
    let mail = outbox
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["verificationCodeID"] == code_id)
        .unwrap();
    assert_eq!(mail["purpose"], "session");
    assert_eq!(mail["email"], "alice@example.com");
    let response = sb
        .req(Method::PUT, &format!("{TW}/session/verification"))
        .json(&json!({"verificationCodeID": code_id, "code": mail["code"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Alice sees none of the default user's keys and cannot delete them.
    let list: Value = alice(Method::GET, "/keypairs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!({"keys": []}));
    let response = alice(
        Method::DELETE,
        &format!("/keypair/{}", default_key["keyID"].as_str().unwrap()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::NOT_FOUND);
    let response = alice(Method::POST, "/keypair")
        .json(&json!({"name": "alice's", "days": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let owners: Vec<String> = sb.keys().await.into_iter().map(|k| k.owner).collect();
    assert_eq!(
        owners,
        [
            "sandbox@threatwinds.test".to_owned(),
            "alice@example.com".to_owned()
        ]
    );

    // Extend, list, close.
    let extended: Value = alice(Method::PUT, "/session/extend")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(extended["expireAt"].as_i64().unwrap() >= session["expireAt"].as_i64().unwrap());
    let sessions: Value = alice(Method::GET, "/sessions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sessions["sessions"][0]["sessionID"], session_id.as_str());
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);
    let response = alice(Method::DELETE, &format!("/session/{session_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = alice(Method::GET, "/session").send().await.unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::UNAUTHORIZED);
}

/// Status and message of an error in `dialect`'s format.
async fn tw_error(dialect: Dialect, response: reqwest::Response) -> (StatusCode, String) {
    match dialect {
        Dialect::Current => current_error(response).await,
        Dialect::Detailed => detailed_error(response).await,
    }
}

/// Asserts a success status and returns the JSON body.
async fn success(response: reqwest::Response, expected: StatusCode) -> Value {
    assert_eq!(response.status(), expected, "{}", response.url());
    response.json().await.expect("json body")
}

#[tokio::test]
async fn threatwinds_every_endpoint_in_both_dialects() {
    for (dialect, ok) in [
        (Dialect::Current, StatusCode::OK),
        (Dialect::Detailed, StatusCode::ACCEPTED),
    ] {
        let sb = Sb::new(SandboxConfig {
            dialect,
            ..SandboxConfig::threatwinds()
        })
        .await;
        let tw = |method: Method, path: &str| sb.req(method, &format!("{TW}{path}"));
        let status = |response: reqwest::Response| tw_error(dialect, response);

        // POST /session
        let response = tw(Method::POST, "/session")
            .json(&json!({"email": "no-at-sign"}))
            .send()
            .await
            .unwrap();
        assert_eq!(status(response).await.0, StatusCode::BAD_REQUEST);
        let session = success(
            tw(Method::POST, "/session")
                .json(&json!({"email": "Carol@Example.com"}))
                .send()
                .await
                .unwrap(),
            ok,
        )
        .await;
        let bearer = session["bearer"].as_str().unwrap().to_owned();
        let as_carol = |method: Method, path: &str| tw(method, path).bearer_auth(&bearer);

        // PUT /session/verification
        let code_id = session["verificationCodeID"].as_str().unwrap();
        let code = sb.code(code_id).await;
        let wrong = if code == "000000" { "999999" } else { "000000" };
        let response = tw(Method::PUT, "/session/verification")
            .json(&json!({"verificationCodeID": code_id, "code": wrong}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            status(response).await,
            (
                StatusCode::UNAUTHORIZED,
                "verification code not found".into()
            )
        );
        let body = success(
            tw(Method::PUT, "/session/verification")
                .json(&json!({"verificationCodeID": code_id, "code": code}))
                .send()
                .await
                .unwrap(),
            ok,
        )
        .await;
        assert_eq!(body, json!({"message": "acknowledged"}));

        // GET /session
        let body = success(as_carol(Method::GET, "/session").send().await.unwrap(), ok).await;
        assert_eq!(body["verified"], true);
        assert_eq!(body["fullName"], "Sandbox User");
        let response = tw(Method::GET, "/session").send().await.unwrap();
        assert_eq!(status(response).await.0, StatusCode::UNAUTHORIZED);

        // PUT /session/extend
        let body = success(
            as_carol(Method::PUT, "/session/extend")
                .send()
                .await
                .unwrap(),
            ok,
        )
        .await;
        assert!(body["expireAt"].is_i64());
        let response = tw(Method::PUT, "/session/extend")
            .bearer_auth("nobody")
            .send()
            .await
            .unwrap();
        assert_eq!(status(response).await.0, StatusCode::UNAUTHORIZED);

        // GET /sessions
        let body = success(as_carol(Method::GET, "/sessions").send().await.unwrap(), ok).await;
        assert_eq!(body["sessions"].as_array().unwrap().len(), 1);
        let response = tw(Method::GET, "/sessions").send().await.unwrap();
        assert_eq!(status(response).await.0, StatusCode::UNAUTHORIZED);

        // POST /keypair
        let response = as_carol(Method::POST, "/keypair")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(status(response).await.0, StatusCode::BAD_REQUEST);
        let key = success(
            as_carol(Method::POST, "/keypair")
                .json(&json!({"name": "carol's", "days": 7}))
                .send()
                .await
                .unwrap(),
            ok,
        )
        .await;

        // PUT /keypair/verification
        let response = tw(Method::PUT, "/keypair/verification")
            .json(&json!({"verificationCodeID": session["verificationCodeID"], "code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(status(response).await.0, StatusCode::NOT_FOUND);
        let code_id = key["verificationCodeID"].as_str().unwrap();
        let code = sb.code(code_id).await;
        success(
            tw(Method::PUT, "/keypair/verification")
                .json(&json!({"verificationCodeID": code_id, "code": code}))
                .send()
                .await
                .unwrap(),
            ok,
        )
        .await;

        // GET /keypair
        let check = |secret: &Value| {
            tw(Method::GET, "/keypair")
                .header("api-key", key["apiKey"].as_str().unwrap())
                .header("api-secret", secret.as_str().unwrap())
                .send()
        };
        let body = success(check(&key["apiSecret"]).await.unwrap(), ok).await;
        assert_eq!(body["verified"], true);
        assert_eq!(body["userAlias"], "carol");
        let response = check(&json!("wrong")).await.unwrap();
        assert_eq!(status(response).await.0, StatusCode::UNAUTHORIZED);

        // GET /keypairs
        let body = success(as_carol(Method::GET, "/keypairs").send().await.unwrap(), ok).await;
        assert_eq!(body["keys"][0]["keyID"], key["keyID"]);
        let response = tw(Method::GET, "/keypairs")
            .header("Authorization", "Basic eDp5")
            .send()
            .await
            .unwrap();
        assert_eq!(status(response).await.0, StatusCode::BAD_REQUEST);

        // POST /keypair/verification
        let body = success(
            as_carol(Method::POST, "/keypair/verification")
                .json(&json!({"apiKey": key["apiKey"], "apiSecret": key["apiSecret"]}))
                .send()
                .await
                .unwrap(),
            ok,
        )
        .await;
        assert!(body["verificationCodeID"].is_string());
        let response = as_carol(Method::POST, "/keypair/verification")
            .json(&json!({"apiKey": key["apiKey"], "apiSecret": "wrong"}))
            .send()
            .await
            .unwrap();
        assert_eq!(status(response).await.0, StatusCode::UNAUTHORIZED);

        // DELETE /keypair (id in the body), then DELETE /keypair/{id}: gone.
        success(
            as_carol(Method::DELETE, "/keypair")
                .json(&json!({"keyID": key["keyID"]}))
                .send()
                .await
                .unwrap(),
            ok,
        )
        .await;
        let response = as_carol(
            Method::DELETE,
            &format!("/keypair/{}", key["keyID"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(status(response).await.0, StatusCode::NOT_FOUND);

        // DELETE /session/{id}: the token is gone afterwards.
        let path = format!("/session/{}", session["sessionID"].as_str().unwrap());
        success(as_carol(Method::DELETE, &path).send().await.unwrap(), ok).await;
        let response = as_carol(Method::DELETE, &path).send().await.unwrap();
        assert_eq!(status(response).await.0, StatusCode::UNAUTHORIZED);
    }
}

// ----------------------------------------------------------------------------------------
// Datonis

#[tokio::test]
async fn datonis_sign_in_and_key_pair_crud() {
    let sb = Sb::new(SandboxConfig::datonis()).await;
    let response = sb
        .req(Method::POST, "/api_sign_in")
        .json(&json!({"email": DEFAULT_DATONIS_EMAIL, "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::UNAUTHORIZED);
    let token = sb.dt_sign_in().await;
    let response = sb
        .req(Method::GET, "/api/v3/key_pairs")
        .send()
        .await
        .unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::UNAUTHORIZED);

    // The docs' create example.
    let response = sb
        .dt(Method::POST, "/api/v3/key_pairs", &token)
        .json(&json!({"key_pair": {"expiry_date": "09/09/2016", "role_key": "517d8e4695"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let created: Value = response.json().await.unwrap();
    let key_pair = &created["key_pair"];
    assert_eq!(key_pair["expiry_date"], "2016-09-08T18:30:00.000Z");
    assert_eq!(key_pair["enabled"], true);
    assert_eq!(key_pair["role_name"], "Write Only");
    assert_eq!(key_pair["access_key"], key_pair["key_pair_key"]);
    let key = key_pair["key_pair_key"].as_str().unwrap().to_owned();
    for field in ["key_pair_key", "secret_key"] {
        let value = key_pair[field].as_str().unwrap();
        assert_eq!(value.len(), 40);
        assert!(value.chars().all(|c| c.is_ascii_hexdigit()));
    }
    assert!(key_pair["created_at"].is_i64());

    let path = format!("/api/v3/key_pairs/{key}");
    let got: Value = sb
        .dt(Method::GET, &path, &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(&got["key_pair"], key_pair);

    // The docs' update: enabled as a string, role_key beside key_pair.
    let response = sb
        .dt(Method::PUT, &path, &token)
        .json(&json!({"key_pair": {"expiry_date": "2016-09-10", "enabled": "false"}, "role_key": "dc459a67b3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["key_pair"]["enabled"], false);
    assert_eq!(updated["key_pair"]["role_key"], "dc459a67b3");
    assert_eq!(updated["key_pair"]["role_name"], "abc");
    assert_eq!(
        updated["key_pair"]["expiry_date"],
        "2016-09-09T18:30:00.000Z"
    );
    assert!(updated["key_pair"]["updated_at"].as_i64() >= key_pair["updated_at"].as_i64());
    let response = sb
        .dt(Method::PUT, &path, &token)
        .json(&json!({"key_pair": {"enabled": true}}))
        .send()
        .await
        .unwrap();
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["key_pair"]["enabled"], true);
    assert_eq!(updated["key_pair"]["role_key"], "dc459a67b3");

    // Validation: 400 for unreadable requests, 422 for invalid fields.
    for (body, status) in [
        (json!({}), StatusCode::BAD_REQUEST),
        (json!({"key_pair": "x"}), StatusCode::BAD_REQUEST),
        (
            json!({"key_pair": {"expiry_date": "09/09/2016"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"key_pair": {"expiry_date": "09/09/2016", "role_key": "nope"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"key_pair": {"expiry_date": "31/02/2016", "role_key": "517d8e4695"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"key_pair": {"role_key": "517d8e4695"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"key_pair": {"expiry_date": "09/09/2016", "role_key": "517d8e4695", "enabled": "maybe"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let response = sb
            .dt(Method::POST, "/api/v3/key_pairs", &token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(datonis_error(response).await.0, status, "{body}");
    }

    let response = sb.dt(Method::DELETE, &path, &token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));
    let response = sb.dt(Method::GET, &path, &token).send().await.unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::NOT_FOUND);
    let response = sb.dt(Method::DELETE, &path, &token).send().await.unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::NOT_FOUND);
    let response = sb
        .dt(Method::GET, "/api/v3/nothing", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::NOT_FOUND);

    // Sign out ends the token.
    let response = sb
        .dt(Method::DELETE, "/api_sign_out", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = sb
        .dt(Method::GET, "/api/v3/key_pairs", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn datonis_list_pagination_search_order_and_formats() {
    let sb = Sb::new(SandboxConfig::datonis()).await;
    let token = sb.dt_sign_in().await;
    let roles = [
        "1946c4ce5c",
        "dc459a67b3",
        "517d8e4695",
        "1946c4ce5c",
        "dc459a67b3",
    ];
    let mut keys = Vec::new();
    for role in roles {
        keys.push(
            sb.dt_create(&token, role).await["key_pair_key"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let list = |body: Value| {
        sb.dt(Method::GET, "/api/v3/key_pairs", &token)
            .json(&body)
            .send()
    };
    let page_keys = |page: &Value| -> Vec<String> {
        page["key_pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key_pair_key"].as_str().unwrap().to_owned())
            .collect()
    };

    // Defaults: everything, creation order, page 1 as a number.
    let all: Value = list(json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(all["total_count"], 5);
    assert_eq!(all["page"], 1);
    assert_eq!(page_keys(&all), keys);

    // The docs' paging example: strings in a GET body; page echoed as sent.
    let page2: Value = list(json!({"per": "2", "page": "2"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page2["total_count"], 5);
    assert_eq!(page2["page"], "2");
    assert_eq!(page_keys(&page2), keys[2..4]);
    let page3: Value = sb
        .dt(Method::GET, "/api/v3/key_pairs?per=2&page=3", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page_keys(&page3), keys[4..]);
    let beyond: Value = list(json!({"per": 2, "page": 99}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(beyond["total_count"], 5);
    assert_eq!(beyond["key_pairs"], json!([]));

    // Ordering: the docs' order_by=name (role_name), descending; ties in creation order.
    let ordered: Value = list(json!({"order_by": "name", "order": "desc"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = ordered["key_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["role_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["abc", "abc", "Write Only", "Agent", "Agent"]);
    assert_eq!(page_keys(&ordered)[0], keys[1]);

    // Search: one keyword, several with scope any / all.
    let needle_a = &keys[0][..12];
    let needle_b = &keys[3][..12];
    let found: Value = list(json!({"search": needle_a}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page_keys(&found), [keys[0].clone()]);
    let any: Value = list(json!({"search": format!("{needle_a}, {needle_b}"), "scope": "any"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page_keys(&any), [keys[0].clone(), keys[3].clone()]);
    let all_scope: Value = list(json!({"search": format!("{needle_a} {needle_b}")}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all_scope["total_count"], 0);

    // key_pairs filter, field_list and string timestamps.
    let only: Value = list(json!({"key_pairs": [keys[1], keys[4]], "timestamp_format": "str", "field_list": ["key_pair_key", "created_at"]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(only["total_count"], 2);
    let first = only["key_pairs"][0].as_object().unwrap();
    assert_eq!(first.len(), 2);
    let created_at = first["created_at"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(created_at, "%Y/%m/%d %H:%M:%S").is_ok(),
        "{created_at}"
    );

    // Bad parameters: 400.
    for body in [
        json!({"page": 0}),
        json!({"per": "two"}),
        json!({"per": -1}),
        json!({"order": "up"}),
        json!({"order_by": "colour"}),
        json!({"timestamp_format": "iso"}),
        json!({"scope": "some"}),
        json!({"key_pairs": 7}),
        json!({"page": 1.5}),
    ] {
        let response = list(body.clone()).await.unwrap();
        assert_eq!(
            datonis_error(response).await.0,
            StatusCode::BAD_REQUEST,
            "{body}"
        );
    }
    let response = sb
        .dt(Method::GET, "/api/v3/key_pairs?page=abc", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::BAD_REQUEST);
    let response = sb
        .dt(Method::GET, "/api/v3/key_pairs", &token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn datonis_accounts_oem_children_and_pretty() {
    let sb = Sb::new(SandboxConfig::datonis()).await;
    let token = sb.dt_sign_in().await;
    let own = sb.dt_create(&token, "1946c4ce5c").await;

    // A child account signed into directly sees only its own keys.
    let child: Value = sb
        .req(Method::POST, "/api_sign_in")
        .json(&json!({"email": DEFAULT_DATONIS_EMAIL, "password": DEFAULT_DATONIS_PASSWORD, "organisation_key": "child-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let child_token = child["auth_token"].as_str().unwrap();
    let list: Value = sb
        .dt(Method::GET, "/api/v3/key_pairs", child_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total_count"], 0);
    let response = sb
        .dt(
            Method::GET,
            &format!(
                "/api/v3/key_pairs/{}",
                own["key_pair_key"].as_str().unwrap()
            ),
            child_token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::NOT_FOUND);

    // The parent acts on the child's keys with is_oem + child_organisation_key.
    let response = sb
        .dt(Method::POST, "/api/v3/key_pairs", &token)
        .json(&json!({"is_oem": true, "child_organisation_key": "child-1", "key_pair": {"expiry_date": "2031-01-31", "role_key": "517d8e4695"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let list: Value = sb
        .dt(Method::GET, "/api/v3/key_pairs", child_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total_count"], 1);
    let response = sb
        .dt(Method::GET, "/api/v3/key_pairs?is_oem=true", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(datonis_error(response).await.0, StatusCode::BAD_REQUEST);
    let owners: Vec<String> = sb.keys().await.into_iter().map(|k| k.owner).collect();
    assert_eq!(owners, ["default", "child-1"]);

    // pretty=true indents.
    let text = sb
        .dt(Method::GET, "/api/v3/key_pairs?pretty=true", &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\n  \"key_pairs\""), "{text}");
}

#[tokio::test]
async fn datonis_token_expires_after_idle_timeout() {
    let idle = Duration::from_millis(500);
    let sb = Sb::new(SandboxConfig {
        token_idle_timeout: idle,
        ..SandboxConfig::datonis()
    })
    .await;
    let token = sb.dt_sign_in().await;
    let list = || sb.dt(Method::GET, "/api/v3/key_pairs", &token).send();

    // Activity keeps it alive well past the idle timeout.
    let start = Instant::now();
    while start.elapsed() < idle * 2 {
        assert_eq!(list().await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(idle / 4).await;
    }

    // Idle: it expires. Wait just past the timeout, then poll until a deadline (each poll
    // of a live token restarts its clock, so poll no faster than the timeout).
    let deadline = Instant::now() + idle * 10;
    loop {
        tokio::time::sleep(idle + Duration::from_millis(50)).await;
        let response = list().await.unwrap();
        if response.status() == StatusCode::UNAUTHORIZED {
            let (_, message) = datonis_error(response).await;
            assert_eq!(message, "auth token expired");
            break;
        }
        assert!(Instant::now() < deadline, "token never expired");
    }
    // Once expired it stays gone.
    assert_eq!(list().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

// ----------------------------------------------------------------------------------------
// Faults, statistics, control endpoints

#[tokio::test]
async fn deterministic_error_rate_and_stats() {
    let sb = Sb::new(SandboxConfig::threatwinds()).await;
    sb.set_faults(json!({"error_rate": 0.25, "error_status": 503}))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = sb.tw(Method::GET, "/keypairs").send().await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            // Injected errors use the dialect's format.
            current_error(response).await;
        }
    }
    assert_eq!(statuses, [200, 200, 200, 503, 200, 200, 200, 503]);

    // Control endpoints are not under faults, and not counted.
    sb.set_faults(json!({"error_rate": 1.0})).await;
    for _ in 0..3 {
        let response = sb.req(Method::GET, "/_sandbox/keys").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = sb.tw(Method::GET, "/keypairs").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let faults = sb.json("/_sandbox/faults").await;
    assert_eq!(faults["error_rate"], 1.0);
    assert_eq!(faults["error_status"], 500);
    let response = sb
        .req(Method::DELETE, "/_sandbox/faults")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    sb.tw(Method::GET, "/nowhere").send().await.unwrap();

    let stats = sb.json("/_sandbox/stats").await;
    assert_eq!(
        stats,
        json!({
            "GET /api/auth/v2/keypairs": {"200": 6, "503": 2, "500": 1},
            "GET (unmatched)": {"404": 1},
        })
    );
    let response = sb
        .req(Method::DELETE, "/_sandbox/stats")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(sb.json("/_sandbox/stats").await, json!({}));

    // Invalid fault settings are refused.
    for faults in [
        json!({"error_rate": 2.0}),
        json!({"error_status": 200}),
        json!({"rate_limit_rps": 0}),
        json!({"commit_then_fail": "explode"}),
        json!({"typo": 1}),
    ] {
        let response = sb
            .req(Method::PUT, "/_sandbox/faults")
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{faults}");
    }
}

#[tokio::test]
async fn latency_is_added() {
    let sb = Sb::new(SandboxConfig::threatwinds()).await;
    sb.set_faults(json!({"latency_ms": 150})).await;
    let start = Instant::now();
    let response = sb.tw(Method::GET, "/keypairs").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn rate_limit_threatwinds_403_datonis_429() {
    let sb = Sb::new(SandboxConfig::threatwinds()).await;
    sb.set_faults(json!({"rate_limit_rps": 1.0})).await;
    assert_eq!(
        sb.tw(Method::GET, "/keypairs")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let response = sb.tw(Method::GET, "/keypairs").send().await.unwrap();
    assert_eq!(
        current_error(response).await,
        (StatusCode::FORBIDDEN, "too many requests".into())
    );

    let sb = Sb::new(SandboxConfig::datonis()).await;
    let token = sb.dt_sign_in().await;
    sb.set_faults(json!({"rate_limit_rps": 0.5})).await;
    let list = || sb.dt(Method::GET, "/api/v3/key_pairs", &token).send();
    assert_eq!(list().await.unwrap().status(), StatusCode::OK);
    let response = list().await.unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(
        datonis_error(response).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn commit_then_fail_status500_creates_the_key() {
    let sb = Sb::new(SandboxConfig::threatwinds()).await;
    sb.set_faults(json!({"commit_then_fail": "status500"}))
        .await;
    let response = sb
        .tw(Method::POST, "/keypair")
        .json(&json!({"name": "orphan", "days": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        current_error(response).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let keys = sb.keys().await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].name.as_deref(), Some("orphan"));
    // Only one create fails by default; other calls are untouched.
    sb.tw_create("second").await;
    assert_eq!(sb.keys().await.len(), 2);
}

#[tokio::test]
async fn commit_then_fail_drop_breaks_the_response_but_creates_the_key() {
    let sb = Sb::new(SandboxConfig::datonis()).await;
    let token = sb.dt_sign_in().await;
    sb.set_faults(json!({"commit_then_fail": "drop", "commit_then_fail_count": 2}))
        .await;
    // Reads are not affected.
    let response = sb
        .dt(Method::GET, "/api/v3/key_pairs", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for _ in 0..2 {
        let result = sb
            .dt(Method::POST, "/api/v3/key_pairs", &token)
            .json(&json!({"key_pair": {"expiry_date": "01/01/2030", "role_key": "1946c4ce5c"}}))
            .send()
            .await;
        // The connection closes before a response arrives.
        let error = result.expect_err("a dropped create yields no response");
        assert!(error.is_request(), "{error:?}");
    }
    assert_eq!(sb.keys().await.len(), 2);
    sb.dt_create(&token, "1946c4ce5c").await;
    assert_eq!(sb.keys().await.len(), 3);
    let stats = sb.json("/_sandbox/stats").await;
    assert_eq!(
        stats["POST /api/v3/key_pairs"],
        json!({"dropped": 2, "200": 1})
    );
}

/// A raw create against either provider; returns status and body bytes.
async fn raw_create(sb: &Sb, dt_token: Option<&str>) -> (StatusCode, Vec<u8>) {
    let request = match dt_token {
        None => sb
            .tw(Method::POST, "/keypair")
            .json(&json!({"name": "spoiled", "days": 1})),
        Some(token) => sb
            .dt(Method::POST, "/api/v3/key_pairs", token)
            .json(&json!({"key_pair": {"expiry_date": "01/01/2030", "role_key": "1946c4ce5c"}})),
    };
    let response = request.send().await.expect("send");
    let status = response.status();
    (status, response.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn commit_then_fail_spoiled_answers_keep_the_status_and_create_the_key() {
    for datonis in [false, true] {
        let sb = Sb::new(if datonis {
            SandboxConfig::datonis()
        } else {
            SandboxConfig {
                dialect: Dialect::Detailed,
                ..SandboxConfig::threatwinds()
            }
        })
        .await;
        let token = if datonis {
            Some(sb.dt_sign_in().await)
        } else {
            None
        };
        let ok = if datonis {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        let (secret, ids): (&str, &[&str]) = if datonis {
            ("secret_key", &["key_pair_key", "access_key"])
        } else {
            ("apiSecret", &["keyID"])
        };
        let (_, whole) = raw_create(&sb, token.as_deref()).await;
        let whole: Value = serde_json::from_slice(&whole).expect("json");
        let object = |v: &Value| {
            if datonis {
                v["key_pair"].clone()
            } else {
                v.clone()
            }
        };
        let mut created = 1;
        for mode in [
            "truncated",
            "wrong_shape",
            "missing_secret",
            "missing_key_id",
            "oversized",
        ] {
            sb.set_faults(json!({"commit_then_fail": mode})).await;
            let (status, body) = raw_create(&sb, token.as_deref()).await;
            created += 1;
            assert_eq!(status, ok, "{mode}");
            assert_eq!(sb.keys().await.len(), created, "{mode}: key committed");
            let parsed = serde_json::from_slice::<Value>(&body);
            match mode {
                "truncated" => assert!(parsed.is_err(), "{mode}"),
                "wrong_shape" => assert_eq!(parsed.expect(mode), json!({"unexpected": 1})),
                "missing_secret" => {
                    let v = object(&parsed.expect(mode));
                    assert!(v.get(secret).is_none(), "{mode}: {v}");
                    assert!(ids.iter().all(|id| v.get(*id).is_some()), "{mode}: {v}");
                }
                "missing_key_id" => {
                    let v = object(&parsed.expect(mode));
                    assert!(ids.iter().all(|id| v.get(*id).is_none()), "{mode}: {v}");
                    assert!(v.get(secret).is_some(), "{mode}: {v}");
                }
                _ => {
                    assert!(body.len() > 4 * 1024 * 1024, "{mode}: {}", body.len());
                    let v = object(&parsed.expect(mode));
                    assert_eq!(
                        v.as_object().map(|o| o.len()),
                        object(&whole).as_object().map(|o| o.len())
                    );
                }
            }
        }
        // The counter (default 1) is used up: the next create is whole again.
        let (status, body) = raw_create(&sb, token.as_deref()).await;
        assert_eq!(status, ok);
        assert!(
            object(&serde_json::from_slice(&body).expect("json"))
                .get(secret)
                .is_some()
        );
    }
}

#[tokio::test]
async fn threatwinds_readings_change_what_the_server_accepts() {
    let strict = ThreatWindsReadings {
        new_code_auth: NewCodeAuth::Bearer,
        unverified_check: UnverifiedCheck::Unauthorized,
        path_case: PathCase::Lowercase,
        verify_auth: VerifyAuth::Session,
    };
    let sb = Sb::new(SandboxConfig {
        threatwinds_readings: strict,
        ..SandboxConfig::threatwinds()
    })
    .await;
    let key = sb.tw_create("strict").await;
    let (api_key, api_secret) = (
        key["apiKey"].as_str().unwrap(),
        key["apiSecret"].as_str().unwrap(),
    );
    let check = || {
        sb.req(Method::GET, &format!("{TW}/keypair"))
            .header("api-key", api_key)
            .header("api-secret", api_secret)
    };
    // An unverified key cannot even be checked.
    let (status, message) = current_error(check().send().await.unwrap()).await;
    assert_eq!(
        (status, message.as_str()),
        (StatusCode::UNAUTHORIZED, "keypair not verified")
    );
    // New code: `Bearer` only.
    let new_code = json!({"apiKey": api_key, "apiSecret": api_secret});
    let response = sb
        .req(Method::POST, &format!("{TW}/keypair/verification"))
        .header("authorization", DEFAULT_SESSION_TOKEN)
        .json(&new_code)
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::BAD_REQUEST);
    let response = sb
        .tw(Method::POST, "/keypair/verification")
        .json(&new_code)
        .send()
        .await
        .unwrap();
    let code_id = success(response, StatusCode::OK).await["verificationCodeID"]
        .as_str()
        .unwrap()
        .to_owned();
    let verify = json!({"verificationCodeID": code_id, "code": sb.code(&code_id).await});
    // Verify: a session is needed, and `/KeyPair/...` is an unknown path.
    let response = sb
        .req(Method::PUT, &format!("{TW}/keypair/verification"))
        .json(&verify)
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::UNAUTHORIZED);
    let response = sb
        .tw(Method::PUT, "/KeyPair/verification")
        .json(&verify)
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::NOT_FOUND);
    let response = sb
        .tw(Method::PUT, "/keypair/verification")
        .json(&verify)
        .send()
        .await
        .unwrap();
    success(response, StatusCode::OK).await;
    // Verified: the check answers.
    let body = success(check().send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(body["verified"], true);

    // The raw reading of new code: the bare token only; `Bearer` is an unknown token.
    let sb = Sb::new(SandboxConfig {
        threatwinds_readings: ThreatWindsReadings {
            new_code_auth: NewCodeAuth::Raw,
            ..ThreatWindsReadings::default()
        },
        ..SandboxConfig::threatwinds()
    })
    .await;
    let key = sb.tw_create("raw").await;
    let new_code = json!({"apiKey": key["apiKey"], "apiSecret": key["apiSecret"]});
    let response = sb
        .tw(Method::POST, "/keypair/verification")
        .json(&new_code)
        .send()
        .await
        .unwrap();
    assert_eq!(current_error(response).await.0, StatusCode::UNAUTHORIZED);
    let response = sb
        .req(Method::POST, &format!("{TW}/KeyPair/verification"))
        .header("authorization", DEFAULT_SESSION_TOKEN)
        .json(&new_code)
        .send()
        .await
        .unwrap();
    success(response, StatusCode::OK).await;
    // Lenient on the rest: an unverified key is checked, verify needs no session.
    let response = sb
        .req(Method::GET, &format!("{TW}/keypair"))
        .header("api-key", key["apiKey"].as_str().unwrap())
        .header("api-secret", key["apiSecret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(success(response, StatusCode::OK).await["verified"], false);
}

#[tokio::test]
async fn state_file_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("kp-sandbox-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();

    // ThreatWinds: keys, sessions and pending codes.
    let path = dir.join("tw.json");
    let config = SandboxConfig {
        state_file: Some(path.clone()),
        ..SandboxConfig::threatwinds()
    };
    let sb = Sb::new(config.clone()).await;
    let created = sb.tw_create("persisted").await;
    let session: Value = sb
        .req(Method::POST, &format!("{TW}/session"))
        .json(&json!({"email": "bob@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys_before = sb.keys().await;
    sb.handle.shutdown().await;

    let sb = Sb::new(config).await;
    assert_eq!(sb.keys().await, keys_before);
    let code_id = created["verificationCodeID"].as_str().unwrap();
    let code = sb.code(code_id).await;
    let response = sb
        .req(Method::PUT, &format!("{TW}/keypair/verification"))
        .json(&json!({"verificationCodeID": code_id, "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = sb
        .req(Method::GET, &format!("{TW}/session"))
        .bearer_auth(session["bearer"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    sb.handle.shutdown().await;

    // Datonis: keys and tokens.
    let path = dir.join("dt.json");
    let config = SandboxConfig {
        state_file: Some(path.clone()),
        ..SandboxConfig::datonis()
    };
    let sb = Sb::new(config.clone()).await;
    let token = sb.dt_sign_in().await;
    let key = sb.dt_create(&token, "517d8e4695").await;
    sb.handle.shutdown().await;
    let sb = Sb::new(config).await;
    let response = sb
        .dt(
            Method::GET,
            &format!(
                "/api/v3/key_pairs/{}",
                key["key_pair_key"].as_str().unwrap()
            ),
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["key_pair"], key);
    sb.handle.shutdown().await;

    // A corrupt state file is an error, not an empty sandbox.
    std::fs::write(&path, b"{corrupt").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SandboxConfig {
        state_file: Some(path),
        ..SandboxConfig::datonis()
    };
    assert!(sandbox::spawn(config, listener).await.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn garbage_inputs_do_not_break_the_server() {
    for config in [
        SandboxConfig::threatwinds(),
        SandboxConfig {
            dialect: Dialect::Detailed,
            ..SandboxConfig::threatwinds()
        },
        SandboxConfig::datonis(),
    ] {
        let datonis = config.provider == sandbox::SandboxProvider::Datonis;
        let sb = Sb::new(config).await;
        let token = if datonis {
            sb.dt_sign_in().await
        } else {
            DEFAULT_SESSION_TOKEN.to_owned()
        };
        let nested = "[".repeat(10_000);
        let bodies: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"null".to_vec(),
            b"\xff\xfe\x00garbage".to_vec(),
            b"{\"name\": \"\xff\", \"days\": 1}".to_vec(),
            b"{\"days\": 18446744073709551616, \"name\": \"x\"}".to_vec(),
            b"{\"key_pair\": {\"expiry_date\": \"99/99/99999\", \"role_key\": [1]}, \"page\": -1}"
                .to_vec(),
            b"{\"key_pair\": {\"expiry_date\": 5, \"enabled\": {}}, \"per\": 1e400}".to_vec(),
            b"{\"per\": \"18446744073709551615\", \"page\": \"18446744073709551615\"}".to_vec(),
            nested.into_bytes(),
        ];
        let paths = [
            "/api/auth/v2/keypair",
            "/api/auth/v2/keypair/verification",
            "/api/auth/v2/keypair/%FF%FE",
            "/api/auth/v2/session/..%2F..",
            "/api/auth/v2/KEYPAIRS",
            "/api/v3/key_pairs",
            "/api/v3/key_pairs/%00",
            "/api/v3/key_pairs?page=%FF&per=99999999999999999999999&key_pairs[]=x",
            "/api_sign_in",
            "/api_sign_out",
            "//////",
            "/%2e%2e/%2e%2e/etc/passwd",
        ];
        let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE];
        for path in paths {
            for method in &methods {
                for body in &bodies {
                    let response = sb
                        .req(method.clone(), path)
                        .header("Authorization", format!("Bearer {token}"))
                        .header("X-Auth-Token", &token)
                        .header("api-key", "k")
                        .header("api-secret", "s")
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("the server answers");
                    assert!(
                        !response.status().is_server_error(),
                        "{method} {path}: {}",
                        response.status()
                    );
                }
            }
        }
        // A body over the size limit.
        for path in ["/api/auth/v2/keypair", "/api/v3/key_pairs"] {
            let response = sb
                .req(Method::POST, path)
                .header("Authorization", format!("Bearer {token}"))
                .header("X-Auth-Token", &token)
                .body(vec![b'a'; 3 * 1024 * 1024])
                .send()
                .await
                .expect("the server answers");
            assert!(!response.status().is_server_error());
        }
        // Odd headers.
        let response = sb
            .req(Method::GET, "/api/auth/v2/keypairs")
            .header(
                "Authorization",
                reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
            )
            .header(
                "X-Auth-Token",
                reqwest::header::HeaderValue::from_bytes(b"\xff").unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert!(!response.status().is_server_error());
        let health = sb
            .req(Method::GET, "/_sandbox/health")
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
}

#[test]
fn cli_arguments_become_a_config() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sandbox: sandbox::SandboxArgs,
    }
    let cli = Cli::try_parse_from([
        "keypair-operator",
        "--provider",
        "datonis",
        "--listen",
        "127.0.0.1:9999",
        "--token-idle-timeout",
        "90s",
        "--utc-offset",
        "-03:00",
        "--user",
        "a@b.c:secret",
        "--role",
        "r1:Reader",
        "--state-file",
        "/tmp/x.json",
    ])
    .unwrap();
    let (config, addr) = cli.sandbox.into_config().unwrap();
    assert_eq!(addr.port(), 9999);
    assert_eq!(config.provider, sandbox::SandboxProvider::Datonis);
    assert_eq!(config.token_idle_timeout, Duration::from_secs(90));
    assert_eq!(config.utc_offset_minutes, -180);
    assert_eq!(config.users, [("a@b.c".to_owned(), "secret".to_owned())]);
    assert_eq!(config.roles, [("r1".to_owned(), "Reader".to_owned())]);
    assert_eq!(config.session_ttl, Duration::from_secs(86_400));
    assert_eq!(config.session_tokens, [DEFAULT_SESSION_TOKEN.to_owned()]);

    let cli = Cli::try_parse_from([
        "keypair-operator",
        "--provider",
        "threatwinds",
        "--dialect",
        "detailed",
        "--session-token",
        "t1",
        "--session-token",
        "t2",
        "--code-ttl",
        "0s",
    ])
    .unwrap();
    assert!(cli.sandbox.into_config().is_err(), "zero code TTL refused");
    let cli = Cli::try_parse_from([
        "keypair-operator",
        "--provider",
        "threatwinds",
        "--new-code-auth",
        "raw",
        "--unverified-check",
        "unauthorized",
        "--path-case",
        "lowercase",
        "--verify-auth",
        "session",
    ])
    .unwrap();
    let (config, _) = cli.sandbox.into_config().unwrap();
    assert_eq!(
        config.threatwinds_readings,
        ThreatWindsReadings {
            new_code_auth: NewCodeAuth::Raw,
            unverified_check: UnverifiedCheck::Unauthorized,
            path_case: PathCase::Lowercase,
            verify_auth: VerifyAuth::Session,
        }
    );
    let cli = Cli::try_parse_from(["keypair-operator", "--provider", "threatwinds"]).unwrap();
    let (config, _) = cli.sandbox.into_config().unwrap();
    assert_eq!(config.threatwinds_readings, ThreatWindsReadings::lenient());
    assert!(
        Cli::try_parse_from([
            "keypair-operator",
            "--provider",
            "datonis",
            "--session-ttl",
            "soon"
        ])
        .is_err()
    );
}

// ----------------------------------------------------------------------------------------
// Datonis readings (the docs' open points as modes)

fn datonis_with(readings: DatonisReadings) -> SandboxConfig {
    SandboxConfig {
        datonis_readings: readings,
        ..SandboxConfig::datonis()
    }
}

/// `(total_count, page echo, number of key pairs)` of one list call.
async fn dt_list(request: reqwest::RequestBuilder) -> (Value, Value, usize) {
    let response = request.send().await.expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let count = body["key_pairs"].as_array().expect("key_pairs").len();
    (body["total_count"].clone(), body["page"].clone(), count)
}

#[tokio::test]
async fn datonis_readings_list_params_from_query_body_or_either() {
    for source in [
        ListParamSource::Query,
        ListParamSource::Body,
        ListParamSource::Either,
    ] {
        let sb = Sb::new(datonis_with(DatonisReadings {
            list_params: source,
            preexisting_keys: 5,
            ..DatonisReadings::default()
        }))
        .await;
        let token = sb.dt_sign_in().await;
        let list = || sb.dt(Method::GET, "/api/v3/key_pairs", &token);
        let by_query = dt_list(list().query(&[("per", "2"), ("page", "2")])).await;
        let by_body = dt_list(list().json(&json!({"per": "2", "page": "3"}))).await;
        let query_read = (json!(5), json!("2"), 2);
        let body_read = (json!(5), json!("3"), 1);
        let ignored = (json!(5), json!(1), 5);
        match source {
            ListParamSource::Query => {
                assert_eq!(by_query, query_read);
                assert_eq!(by_body, ignored);
                // The body is not even parsed.
                let broken = list().body("{not json").send().await.expect("send");
                assert_eq!(broken.status(), StatusCode::OK);
            }
            ListParamSource::Body => {
                assert_eq!(by_query, ignored);
                assert_eq!(by_body, body_read);
                let broken = list().body("{not json").send().await.expect("send");
                assert_eq!(datonis_error(broken).await.0, StatusCode::BAD_REQUEST);
            }
            ListParamSource::Either => {
                assert_eq!(by_query, query_read);
                assert_eq!(by_body, body_read);
                // Both: the body wins.
                let both = list()
                    .query(&[("per", "2"), ("page", "2")])
                    .json(&json!({"page": "3"}));
                assert_eq!(dt_list(both).await, body_read);
            }
        }
    }
}

#[tokio::test]
async fn datonis_readings_update_role_key_nested_top_level_or_either() {
    for placement in [
        RoleKeyPlacement::Nested,
        RoleKeyPlacement::TopLevel,
        RoleKeyPlacement::Either,
    ] {
        let sb = Sb::new(datonis_with(DatonisReadings {
            update_role_key: placement,
            ..DatonisReadings::default()
        }))
        .await;
        let token = sb.dt_sign_in().await;
        // Creates read role_key inside key_pair whatever the mode (the create example).
        let key = sb.dt_create(&token, "517d8e4695").await;
        let path = format!(
            "/api/v3/key_pairs/{}",
            key["key_pair_key"].as_str().unwrap()
        );
        let put = |body: Value| sb.dt(Method::PUT, &path, &token).json(&body).send();
        let role_after = |response: reqwest::Response| async move {
            assert_eq!(response.status(), StatusCode::OK, "{placement:?}");
            let body: Value = response.json().await.expect("json");
            body["key_pair"]["role_key"].as_str().unwrap().to_owned()
        };
        let nested = role_after(
            put(json!({"key_pair": {"role_key": "1946c4ce5c"}}))
                .await
                .unwrap(),
        )
        .await;
        let beside = role_after(
            put(json!({"key_pair": {}, "role_key": "dc459a67b3"}))
                .await
                .unwrap(),
        )
        .await;
        match placement {
            RoleKeyPlacement::Nested => {
                assert_eq!(nested, "1946c4ce5c");
                assert_eq!(beside, "1946c4ce5c", "top-level role_key ignored");
            }
            RoleKeyPlacement::TopLevel => {
                assert_eq!(nested, "517d8e4695", "nested role_key ignored");
                assert_eq!(beside, "dc459a67b3");
            }
            RoleKeyPlacement::Either => {
                assert_eq!(nested, "1946c4ce5c");
                assert_eq!(beside, "dc459a67b3");
            }
        }
        // Both places: the one read wins (inside, under either).
        let both = role_after(
            put(json!({"key_pair": {"role_key": "517d8e4695"}, "role_key": "1946c4ce5c"}))
                .await
                .unwrap(),
        )
        .await;
        let want = match placement {
            RoleKeyPlacement::TopLevel => "1946c4ce5c",
            _ => "517d8e4695",
        };
        assert_eq!(both, want, "{placement:?}");
        // A role_key in the place not read is ignored, not validated.
        let (nested_bad, beside_bad) = (
            put(json!({"key_pair": {"role_key": "nope"}}))
                .await
                .unwrap()
                .status(),
            put(json!({"key_pair": {}, "role_key": "nope"}))
                .await
                .unwrap()
                .status(),
        );
        let (ok, bad) = (StatusCode::OK, StatusCode::UNPROCESSABLE_ENTITY);
        let want = match placement {
            RoleKeyPlacement::Nested => (bad, ok),
            RoleKeyPlacement::TopLevel => (ok, bad),
            RoleKeyPlacement::Either => (bad, bad),
        };
        assert_eq!((nested_bad, beside_bad), want, "{placement:?}");
    }
}

#[tokio::test]
async fn datonis_readings_expiry_date_day_first_or_month_first() {
    for order in [ExpiryDateOrder::DayFirst, ExpiryDateOrder::MonthFirst] {
        let sb = Sb::new(datonis_with(DatonisReadings {
            expiry_date_order: order,
            ..DatonisReadings::default()
        }))
        .await;
        let token = sb.dt_sign_in().await;
        let create = |date: &str| {
            sb.dt(Method::POST, "/api/v3/key_pairs", &token)
                .json(&json!({"key_pair": {"expiry_date": date, "role_key": "517d8e4695"}}))
                .send()
        };
        // India time: midnight of the day read is 18:30 UTC the day before.
        let expiry = |response: reqwest::Response| async move {
            assert_eq!(response.status(), StatusCode::OK, "{order:?}");
            let body: Value = response.json().await.expect("json");
            body["key_pair"]["expiry_date"].as_str().unwrap().to_owned()
        };
        let (ambiguous, valid, invalid) = match order {
            ExpiryDateOrder::DayFirst => ("2026-05-02T18:30:00.000Z", "25/12/2026", "12/25/2026"),
            ExpiryDateOrder::MonthFirst => ("2026-03-04T18:30:00.000Z", "12/25/2026", "25/12/2026"),
        };
        assert_eq!(expiry(create("03/05/2026").await.unwrap()).await, ambiguous);
        assert_eq!(
            expiry(create(valid).await.unwrap()).await,
            "2026-12-24T18:30:00.000Z"
        );
        let (status, message) = datonis_error(create(invalid).await.unwrap()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{order:?}");
        assert!(message.contains("expiry_date"), "{message}");
        // Day = month and ISO dates read the same either way.
        assert_eq!(
            expiry(create("09/09/2016").await.unwrap()).await,
            "2016-09-08T18:30:00.000Z"
        );
        assert_eq!(
            expiry(create("2026-03-05").await.unwrap()).await,
            "2026-03-04T18:30:00.000Z"
        );
        // Updates read dates the same way.
        let key = sb.dt_create(&token, "517d8e4695").await;
        let path = format!(
            "/api/v3/key_pairs/{}",
            key["key_pair_key"].as_str().unwrap()
        );
        let response = sb
            .dt(Method::PUT, &path, &token)
            .json(&json!({"key_pair": {"expiry_date": "03/05/2026"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(expiry(response).await, ambiguous);
        let response = sb
            .dt(Method::PUT, &path, &token)
            .json(&json!({"key_pair": {"expiry_date": invalid}}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            datonis_error(response).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}

#[tokio::test]
async fn datonis_readings_enabled_as_bool_or_string() {
    for format in [EnabledFormat::Bool, EnabledFormat::String] {
        let sb = Sb::new(datonis_with(DatonisReadings {
            enabled_in_answers: format,
            ..DatonisReadings::default()
        }))
        .await;
        let token = sb.dt_sign_in().await;
        let (yes, no) = match format {
            EnabledFormat::Bool => (json!(true), json!(false)),
            EnabledFormat::String => (json!("true"), json!("false")),
        };
        let key = sb.dt_create(&token, "517d8e4695").await;
        assert_eq!(key["enabled"], yes);
        let path = format!(
            "/api/v3/key_pairs/{}",
            key["key_pair_key"].as_str().unwrap()
        );
        // Requests may send either form in every mode.
        for (sent, want) in [
            (json!("false"), &no),
            (json!(true), &yes),
            (json!(false), &no),
        ] {
            let response = sb
                .dt(Method::PUT, &path, &token)
                .json(&json!({"key_pair": {"enabled": sent}}))
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            assert_eq!(&body["key_pair"]["enabled"], want, "{format:?}");
        }
        let got: Value = sb
            .dt(Method::GET, &path, &token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["key_pair"]["enabled"], no);
        let listed: Value = sb
            .dt(Method::GET, "/api/v3/key_pairs", &token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["key_pairs"][0]["enabled"], no);
        // The control endpoint keeps a boolean.
        assert_eq!(sb.keys().await[0].enabled, Some(false));
    }
}

#[tokio::test]
async fn datonis_readings_preexisting_keys_need_several_pages() {
    let sb = Sb::new(datonis_with(DatonisReadings {
        preexisting_keys: 45,
        ..DatonisReadings::default()
    }))
    .await;
    let keys = sb.keys().await;
    assert_eq!(keys.len(), 45);
    assert!(keys.iter().all(|k| k.owner == "default"));
    let roles: std::collections::HashSet<_> = keys.iter().map(|k| k.role_key.clone()).collect();
    assert_eq!(roles.len(), 3, "the configured roles in turn");
    let expiries: std::collections::HashSet<_> = keys.iter().map(|k| k.expires_at).collect();
    assert!(expiries.len() > 3, "varied expiries");
    let token = sb.dt_sign_in().await;
    let mut seen = std::collections::HashSet::new();
    for (page, want) in [(1, 20), (2, 20), (3, 5), (4, 0)] {
        let body: Value = sb
            .dt(Method::GET, "/api/v3/key_pairs", &token)
            .json(&json!({"page": page, "per": 20, "order_by": "created_at", "order": "asc"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["total_count"], 45);
        let items = body["key_pairs"].as_array().unwrap();
        assert_eq!(items.len(), want, "page {page}");
        seen.extend(items.iter().map(|k| k["key_pair_key"].clone()));
    }
    assert_eq!(seen.len(), 45);
    // A new key pair comes last in created_at order.
    let key = sb.dt_create(&token, "517d8e4695").await;
    let body: Value = sb
        .dt(Method::GET, "/api/v3/key_pairs", &token)
        .query(&[("page", "3"), ("per", "20"), ("order_by", "created_at")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["key_pairs"][5]["key_pair_key"], key["key_pair_key"]);
}

#[tokio::test]
async fn datonis_readings_ignore_page_always_answers_page_one() {
    let sb = Sb::new(datonis_with(DatonisReadings {
        preexisting_keys: 45,
        ignore_page: true,
        ..DatonisReadings::default()
    }))
    .await;
    let token = sb.dt_sign_in().await;
    let page = |n: u32| {
        sb.dt(Method::GET, "/api/v3/key_pairs", &token)
            .query(&[("page", n.to_string()), ("per", "20".to_owned())])
            .send()
    };
    let first: Value = page(1).await.unwrap().json().await.unwrap();
    let second: Value = page(2).await.unwrap().json().await.unwrap();
    assert_eq!(first["key_pairs"], second["key_pairs"]);
    assert_eq!(second["page"], 1);
    assert_eq!(second["total_count"], 45);
    assert_eq!(second["key_pairs"].as_array().unwrap().len(), 20);
}

#[test]
fn datonis_strict_profiles_are_usable_from_outside() {
    let profiles = DatonisReadings::strict_profiles();
    assert!(profiles.len() >= 4);
    assert!(profiles.iter().any(|(_, r)| {
        r.list_params == ListParamSource::Body
            && r.update_role_key == RoleKeyPlacement::TopLevel
            && r.expiry_date_order == ExpiryDateOrder::MonthFirst
            && r.enabled_in_answers == EnabledFormat::String
    }));
    assert!(profiles.iter().any(|(_, r)| {
        r.list_params == ListParamSource::Query
            && r.update_role_key == RoleKeyPlacement::Nested
            && r.expiry_date_order == ExpiryDateOrder::DayFirst
            && r.enabled_in_answers == EnabledFormat::Bool
    }));
    assert_eq!(
        SandboxConfig::datonis().datonis_readings,
        DatonisReadings::lenient()
    );
}

#[test]
fn cli_datonis_reading_flags_become_a_config() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sandbox: sandbox::SandboxArgs,
    }
    let cli = Cli::try_parse_from([
        "keypair-operator",
        "--provider",
        "datonis",
        "--datonis-list-params",
        "body",
        "--datonis-update-role-key",
        "top-level",
        "--datonis-date-order",
        "month-first",
        "--datonis-enabled",
        "string",
        "--datonis-preexisting-keys",
        "45",
        "--datonis-ignore-page",
    ])
    .unwrap();
    let (config, _) = cli.sandbox.into_config().unwrap();
    assert_eq!(
        config.datonis_readings,
        DatonisReadings {
            list_params: ListParamSource::Body,
            update_role_key: RoleKeyPlacement::TopLevel,
            expiry_date_order: ExpiryDateOrder::MonthFirst,
            enabled_in_answers: EnabledFormat::String,
            preexisting_keys: 45,
            ignore_page: true,
        }
    );
    let cli = Cli::try_parse_from(["keypair-operator", "--provider", "datonis"]).unwrap();
    let (config, _) = cli.sandbox.into_config().unwrap();
    assert_eq!(config.datonis_readings, DatonisReadings::lenient());
    let cli = Cli::try_parse_from([
        "keypair-operator",
        "--provider",
        "datonis",
        "--datonis-preexisting-keys",
        "100001",
    ])
    .unwrap();
    assert!(cli.sandbox.into_config().is_err());
    assert!(
        Cli::try_parse_from([
            "keypair-operator",
            "--provider",
            "datonis",
            "--datonis-date-order",
            "sideways"
        ])
        .is_err()
    );
}
