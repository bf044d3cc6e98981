//! ThreatWinds auth v2 sandbox (`/api/auth/v2/...`): users, sessions, key pairs and
//! verification codes, in the current or the detailed documentation dialect.
//!
//! Decisions where the docs are silent or disagree:
//! - Dialects: successes answer 200 (current) or 202 (detailed). Errors carry `x-error` and
//!   `x-error-id` headers and an empty body (current), or a `{"uuid", "error"}` JSON body
//!   (detailed); either way every error has a fresh UUID. Both dialects serve every
//!   endpoint, including "New Verification Code" (documented only on the detailed page).
//! - Readings ([`ThreatWindsReadings`], `SandboxConfig::threatwinds_readings`): where the
//!   docs leave a server's behaviour open, each point can be read leniently (the default,
//!   described below) or strictly: "New Verification Code" with `Bearer` only or the bare
//!   token only; a check of an unverified key answered 401; lower-case paths only; a
//!   session needed to submit a key's code.
//! - Path case: route literals match ignoring case in both dialects (`/KeyPair/verification`);
//!   with `path_case: lowercase` any other spelling is an unknown path (404).
//! - Session auth on management calls: no `Authorization` header → 401; a header that is
//!   neither `Bearer <token>` nor a bare token (the docs' "New Verification Code" example sends
//!   the token without `Bearer`) → 400 "incorrect authorization header"; unknown token → 401;
//!   a known session that has expired or is not verified → 404 "record not found" (the
//!   detailed page: "the session ... no longer being active", "has not been verified").
//!   `GET /session` and `DELETE /session/{id}` also accept an unverified session.
//! - Key check (`GET /keypair`): a missing `api-key`/`api-secret` header → 400, unknown key →
//!   404, wrong secret → 401, expired key → 404 (secret checked first). An unverified key
//!   answers 200 with `verified: false` (`unverified_check: unauthorized`: 401 "keypair not
//!   verified").
//! - "New Verification Code" `Authorization`: either form (`new_code_auth: either`); with
//!   `bearer` a bare token is 400 "incorrect authorization header", with `raw` a
//!   `Bearer <token>` value is looked up whole, so it is an unknown token (401).
//! - Verification codes: six digits, valid for `code_ttl`, single use; a new code for a key
//!   invalidates its older ones. `PUT .../verification` needs no `Authorization` (the detailed
//!   page's example sends none; a header that is sent is ignored; with `verify_auth:
//!   session` it needs a verified session of the key's owner, checked like every management
//!   call, and another user's code is 404): unknown, used or
//!   other-purpose code id → 404 "record not found"; wrong code → 401 "verification code
//!   not found" (detailed page); expired code → 401 "verification code expired" (it is
//!   equally a code that cannot be accepted). A code whose session or key has expired or
//!   gone → 404.
//! - Create: `name` a non-empty string, `days` a JSON integer 1..=36500 (100 years, so
//!   `expireAt` cannot overflow); otherwise 400. Names need not be unique (the detailed page's
//!   "duplicated key not allowed" example never says what must be unique).
//! - Delete: `DELETE /keypair/{id}`, and also `DELETE /keypair` with the id as `?id=` or a
//!   JSON body `{"id"}`/`{"keyID"}` (the detailed page's endpoint line has no id). An unknown
//!   or another user's key → 404.
//! - `GET /keypairs` lists the user's keys, expired ones included, oldest first, never the
//!   secret. `GET /sessions` → `{"sessions": [{sessionID, expireAt, verified}]}` (the user's
//!   unexpired sessions). `PUT /session/extend` → `{"sessionID", "expireAt"}`.
//! - Users appear on the first `POST /session` for an e-mail (compared ignoring case): alias
//!   = the e-mail's local part, full name "Sandbox User", roles `["user"]`, groups
//!   `["public"]`. Sessions given by `session_tokens` belong to
//!   [`DEFAULT_THREATWINDS_EMAIL`]; at every start they are made verified and, when missing
//!   or expired, valid for `session_ttl` from then.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::http::{ApiError, json_object, optional_json_object};
use super::state::{Shared, add_ms, new_id, now_ms, random_alphanumeric, random_code};
use super::{
    CodePurpose, DEFAULT_THREATWINDS_EMAIL, Dialect, NewCodeAuth, OutboxEmail, SandboxConfig,
    SandboxKey, SandboxProvider, ThreatWindsReadings, UnverifiedCheck, VerifyAuth,
};

/// Route literals, matched ignoring case (see `http::normalize_path`).
pub(crate) const PATH_LITERALS: &[&str] = &[
    "api",
    "auth",
    "v2",
    "session",
    "sessions",
    "verification",
    "extend",
    "keypair",
    "keypairs",
];

/// Route template of `POST` key-pair create.
pub(crate) const CREATE_ROUTE: &str = "/api/auth/v2/keypair";

const MAX_DAYS: i64 = 36_500;
const API_KEY_LEN: usize = 32;
const API_SECRET_LEN: usize = 64;
const BEARER_LEN: usize = 64;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/api/auth/v2/session",
            post(create_session).get(check_session),
        )
        .route("/api/auth/v2/session/verification", put(verify_session))
        .route("/api/auth/v2/session/extend", put(extend_session))
        .route("/api/auth/v2/session/{id}", delete(close_session))
        .route("/api/auth/v2/sessions", get(list_sessions))
        .route(
            "/api/auth/v2/keypair",
            post(create_keypair)
                .get(check_keypair)
                .delete(delete_keypair_by_param),
        )
        .route(
            "/api/auth/v2/keypair/verification",
            put(verify_keypair).post(new_verification_code),
        )
        .route("/api/auth/v2/keypair/{id}", delete(delete_keypair))
        .route("/api/auth/v2/keypairs", get(list_keypairs))
}

// ---------------------------------------------------------------------------------------
// Dialect rendering (used by `http::render`).

/// Successes answer 202 on the detailed page, 200 on the current one.
pub(crate) fn render_success(dialect: Dialect, mut response: Response) -> Response {
    if dialect == Dialect::Detailed && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::ACCEPTED;
    }
    response
}

/// The one ThreatWinds error format per dialect; `message` is already header-safe.
pub(crate) fn error_body(dialect: Dialect, headers: &mut HeaderMap, message: &str) -> Body {
    let id = new_id();
    match dialect {
        Dialect::Current => {
            let message = HeaderValue::from_str(message)
                .unwrap_or_else(|_| HeaderValue::from_static("error"));
            headers.insert(HeaderName::from_static("x-error"), message);
            if let Ok(id) = HeaderValue::from_str(&id) {
                headers.insert(HeaderName::from_static("x-error-id"), id);
            }
            Body::empty()
        }
        Dialect::Detailed => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Body::from(json!({"uuid": id, "error": message}).to_string())
        }
    }
}

// ---------------------------------------------------------------------------------------
// State.

/// ThreatWinds state (persisted).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct TwState {
    /// By e-mail (lowercase).
    users: BTreeMap<String, User>,
    /// By session id.
    sessions: BTreeMap<String, Session>,
    /// By key id.
    keys: BTreeMap<String, Key>,
    /// By verification code id.
    codes: BTreeMap<String, Code>,
    outbox: Vec<OutboxEmail>,
    /// Every key secret and session bearer ever handed out, deleted ones included, so a
    /// test can search the operator's output for all of them.
    issued: Vec<String>,
    next_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: String,
    email: String,
    alias: String,
    full_name: String,
    roles: Vec<String>,
    groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    id: String,
    bearer: String,
    email: String,
    expires_at_ms: i64,
    verified: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Key {
    id: String,
    api_key: String,
    api_secret: String,
    name: String,
    /// Unix seconds.
    expire_at: i64,
    verified: bool,
    /// Owner's e-mail.
    owner: String,
    created_at: i64,
    updated_at: i64,
    seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Code {
    code: String,
    purpose: CodePurpose,
    /// Session id or key id.
    target: String,
    expires_at_ms: i64,
}

/// What a management call needs of its session.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Known and unexpired.
    Active,
    /// Known, unexpired and verified.
    Verified,
}

fn record_not_found() -> ApiError {
    ApiError::not_found("record not found")
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

impl TwState {
    fn ensure_user(&mut self, email: &str) {
        if self.users.contains_key(email) {
            return;
        }
        let alias = email.split('@').next().unwrap_or(email).to_owned();
        self.users.insert(
            email.to_owned(),
            User {
                id: new_id(),
                email: email.to_owned(),
                alias,
                full_name: "Sandbox User".to_owned(),
                roles: vec!["user".to_owned()],
                groups: vec!["public".to_owned()],
            },
        );
    }

    fn session(&self, token: &str, now: i64, need: Need) -> Result<&Session, ApiError> {
        let session = self
            .sessions
            .values()
            .find(|session| session.bearer == token)
            .ok_or_else(|| ApiError::unauthorized("invalid session"))?;
        if session.expires_at_ms <= now || (need == Need::Verified && !session.verified) {
            return Err(record_not_found());
        }
        Ok(session)
    }

    /// Creates a code and "e-mails" it; returns the code's id.
    fn send_code(
        &mut self,
        purpose: CodePurpose,
        target: &str,
        email: &str,
        now: i64,
        ttl: std::time::Duration,
    ) -> String {
        let id = new_id();
        let code = random_code();
        self.outbox.push(OutboxEmail {
            email: email.to_owned(),
            verification_code_id: id.clone(),
            code: code.clone(),
            purpose,
            key_id: (purpose == CodePurpose::Keypair).then(|| target.to_owned()),
            session_id: (purpose == CodePurpose::Session).then(|| target.to_owned()),
            sent_at: secs(now),
        });
        self.codes.insert(
            id.clone(),
            Code {
                code,
                purpose,
                target: target.to_owned(),
                expires_at_ms: add_ms(now, ttl),
            },
        );
        id
    }

    /// Checks a submitted code; returns its target. The caller removes the code once the
    /// target is known to exist, so a failed call changes nothing.
    fn check_code(
        &self,
        purpose: CodePurpose,
        id: &str,
        code: &str,
        now: i64,
    ) -> Result<String, ApiError> {
        let entry = self
            .codes
            .get(id)
            .filter(|entry| entry.purpose == purpose)
            .ok_or_else(record_not_found)?;
        if entry.expires_at_ms <= now {
            return Err(ApiError::unauthorized("verification code expired"));
        }
        if entry.code != code {
            return Err(ApiError::unauthorized("verification code not found"));
        }
        Ok(entry.target.clone())
    }

    fn forget_codes_of(&mut self, target: &str) {
        self.codes.retain(|_, code| code.target != target);
    }

    /// Copies of the sent e-mails, oldest first.
    pub(crate) fn outbox(&self) -> Vec<OutboxEmail> {
        self.outbox.clone()
    }
}

/// Creates the sessions of `config.session_tokens` (see the module docs).
pub(crate) fn init(state: &mut TwState, config: &SandboxConfig, now: i64) {
    let email = DEFAULT_THREATWINDS_EMAIL;
    if !config.session_tokens.is_empty() {
        state.ensure_user(email);
    }
    let expires_at_ms = add_ms(now, config.session_ttl);
    for token in &config.session_tokens {
        state.grant_session(token, email, now, expires_at_ms);
    }
}

impl TwState {
    /// Makes `token` the bearer of a verified session of `email` that runs until
    /// `expires_at_ms` (an existing, expired one is revived).
    fn grant_session(&mut self, token: &str, email: &str, now: i64, expires_at_ms: i64) {
        match self.sessions.values_mut().find(|s| s.bearer == token) {
            Some(session) => {
                session.verified = true;
                if session.expires_at_ms <= now {
                    session.expires_at_ms = expires_at_ms;
                }
            }
            None => {
                let id = new_id();
                self.sessions.insert(
                    id.clone(),
                    Session {
                        id,
                        bearer: token.to_owned(),
                        email: email.to_owned(),
                        expires_at_ms,
                        verified: true,
                    },
                );
            }
        }
    }

    /// `PUT /_sandbox/sessions/{token}`: new credentials, as a user signing in again would
    /// get (owned by [`DEFAULT_THREATWINDS_EMAIL`]).
    pub(crate) fn add_session(&mut self, token: &str, ttl: std::time::Duration) {
        let now = now_ms();
        self.ensure_user(DEFAULT_THREATWINDS_EMAIL);
        self.grant_session(token, DEFAULT_THREATWINDS_EMAIL, now, add_ms(now, ttl));
    }

    /// `POST /_sandbox/sessions/expire`: every session ends now.
    pub(crate) fn expire_sessions(&mut self) {
        let now = now_ms();
        for session in self.sessions.values_mut() {
            session.expires_at_ms = session.expires_at_ms.min(now);
        }
    }

    /// `DELETE /_sandbox/keys/{id}`: the key pair disappears as if deleted by someone else.
    pub(crate) fn remove_key(&mut self, id: &str) -> bool {
        self.forget_codes_of(id);
        self.keys.remove(id).is_some()
    }

    /// Every secret handed out (see `issued`), session bearers of the configuration
    /// included, and every code e-mailed.
    pub(crate) fn issued(&self) -> (Vec<String>, Vec<String>) {
        let bearers = self.sessions.values().map(|s| s.bearer.clone());
        let mut secrets: Vec<String> = self.issued.iter().cloned().chain(bearers).collect();
        secrets.sort();
        secrets.dedup();
        (
            secrets,
            self.outbox.iter().map(|m| m.code.clone()).collect(),
        )
    }
}

/// Every key pair, oldest first, for `GET /_sandbox/keys`.
pub(crate) fn sandbox_keys(state: &TwState) -> Vec<SandboxKey> {
    let mut keys: Vec<&Key> = state.keys.values().collect();
    keys.sort_by_key(|key| key.seq);
    keys.into_iter()
        .map(|key| SandboxKey {
            provider: SandboxProvider::Threatwinds,
            id: key.id.clone(),
            api_key: key.api_key.clone(),
            secret: key.api_secret.clone(),
            name: Some(key.name.clone()),
            expires_at: key.expire_at,
            verified: Some(key.verified),
            enabled: None,
            role_key: None,
            role_name: None,
            owner: key.owner.clone(),
            created_at: key.created_at,
            updated_at: key.updated_at,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Request helpers.

/// The session token from `Authorization` (see the module docs for the statuses).
fn bearer_token(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized("authentication required"));
    };
    let incorrect = || ApiError::bad_request("incorrect authorization header");
    let value = value.to_str().map_err(|_| incorrect())?.trim();
    let token = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return Err(incorrect()),
        None if value.eq_ignore_ascii_case("bearer") => return Err(incorrect()),
        None => value,
    };
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(incorrect());
    }
    Ok(token.to_owned())
}

/// The session token of a "New Verification Code" call under the configured reading.
fn new_code_token(headers: &HeaderMap, mode: NewCodeAuth) -> Result<String, ApiError> {
    let token = bearer_token(headers)?;
    let value = header_value(headers, AUTHORIZATION.as_str()).unwrap_or_default();
    let had_prefix = value.contains(char::is_whitespace);
    match (mode, had_prefix) {
        (NewCodeAuth::Bearer, false) => {
            Err(ApiError::bad_request("incorrect authorization header"))
        }
        // The whole value is the token, and no token has a space in it.
        (NewCodeAuth::Raw, true) => Err(ApiError::unauthorized("invalid session")),
        _ => Ok(token),
    }
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// A required non-empty string field.
fn string_field(request: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match request.get(name) {
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("missing field {name}"))),
        Some(Value::String(value)) if !value.trim().is_empty() => Ok(value.clone()),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be a non-empty string"
        ))),
    }
}

fn days_field(request: &Map<String, Value>) -> Result<i64, ApiError> {
    match request.get("days") {
        None | Some(Value::Null) => Err(ApiError::bad_request("missing field days")),
        Some(value) => value
            .as_i64()
            .filter(|days| (1..=MAX_DAYS).contains(days))
            .ok_or_else(|| {
                ApiError::bad_request(format!("days must be an integer from 1 to {MAX_DAYS}"))
            }),
    }
}

fn acknowledged() -> Json<Value> {
    Json(json!({"message": "acknowledged"}))
}

type ApiResult = Result<Json<Value>, ApiError>;

// ---------------------------------------------------------------------------------------
// Sessions.

async fn create_session(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let request = json_object(&body)?;
    let email = string_field(&request, "email")?.trim().to_ascii_lowercase();
    let plausible = email.len() <= 254
        && !email.contains(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if !plausible {
        return Err(ApiError::bad_request("invalid email"));
    }
    let now = now_ms();
    let (session_ttl, code_ttl) = (shared.config.session_ttl, shared.config.code_ttl);
    shared
        .mutate(|state| {
            let tw = &mut state.threatwinds;
            tw.ensure_user(&email);
            let session = Session {
                id: new_id(),
                bearer: random_alphanumeric(BEARER_LEN),
                email: email.clone(),
                expires_at_ms: add_ms(now, session_ttl),
                verified: false,
            };
            tw.issued.push(session.bearer.clone());
            let code_id = tw.send_code(CodePurpose::Session, &session.id, &email, now, code_ttl);
            let response = json!({
                "bearer": session.bearer,
                "sessionID": session.id,
                "expireAt": secs(session.expires_at_ms),
                "verificationCodeID": code_id,
            });
            tw.sessions.insert(session.id.clone(), session);
            Ok(Json(response))
        })
        .await
}

async fn verify_session(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let request = json_object(&body)?;
    let code_id = string_field(&request, "verificationCodeID")?;
    let code = string_field(&request, "code")?;
    let now = now_ms();
    shared
        .mutate(|state| {
            let tw = &mut state.threatwinds;
            let session_id = tw.check_code(CodePurpose::Session, &code_id, &code, now)?;
            let session = tw
                .sessions
                .get_mut(&session_id)
                .filter(|session| session.expires_at_ms > now)
                .ok_or_else(record_not_found)?;
            session.verified = true;
            tw.codes.remove(&code_id);
            Ok(acknowledged())
        })
        .await
}

async fn check_session(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let token = bearer_token(&headers)?;
    let now = now_ms();
    shared.read(|state| {
        let tw = &state.threatwinds;
        let session = tw.session(&token, now, Need::Active)?;
        let user = tw.users.get(&session.email).ok_or_else(record_not_found)?;
        Ok(Json(json!({
            "sessionID": session.id,
            "email": user.email,
            "userID": user.id,
            "verified": session.verified,
            "expireAt": secs(session.expires_at_ms),
            "roles": user.roles,
            "groups": user.groups,
            "alias": user.alias,
            "fullName": user.full_name,
        })))
    })
}

async fn extend_session(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let token = bearer_token(&headers)?;
    let now = now_ms();
    let expires_at_ms = add_ms(now, shared.config.session_ttl);
    shared
        .mutate(|state| {
            let tw = &mut state.threatwinds;
            let id = tw.session(&token, now, Need::Verified)?.id.clone();
            let session = tw.sessions.get_mut(&id).ok_or_else(record_not_found)?;
            session.expires_at_ms = expires_at_ms;
            Ok(Json(
                json!({"sessionID": id, "expireAt": secs(expires_at_ms)}),
            ))
        })
        .await
}

async fn close_session(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let token = bearer_token(&headers)?;
    let now = now_ms();
    shared
        .mutate(|state| {
            let tw = &mut state.threatwinds;
            let email = tw.session(&token, now, Need::Active)?.email.clone();
            if tw.sessions.get(&id).is_none_or(|s| s.email != email) {
                return Err(record_not_found());
            }
            tw.sessions.remove(&id);
            tw.forget_codes_of(&id);
            Ok(acknowledged())
        })
        .await
}

async fn list_sessions(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let token = bearer_token(&headers)?;
    let now = now_ms();
    shared.read(|state| {
        let tw = &state.threatwinds;
        let email = &tw.session(&token, now, Need::Verified)?.email;
        let sessions: Vec<Value> = tw
            .sessions
            .values()
            .filter(|s| &s.email == email && s.expires_at_ms > now)
            .map(|s| {
                json!({
                    "sessionID": s.id,
                    "expireAt": secs(s.expires_at_ms),
                    "verified": s.verified,
                })
            })
            .collect();
        Ok(Json(json!({ "sessions": sessions })))
    })
}

// ---------------------------------------------------------------------------------------
// Key pairs.

async fn create_keypair(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let token = bearer_token(&headers)?;
    let request = json_object(&body);
    let now = now_ms();
    let code_ttl = shared.config.code_ttl;
    shared
        .mutate(|state| {
            let tw = &mut state.threatwinds;
            // Authentication first, then the body, as a server with auth middleware would.
            let email = tw.session(&token, now, Need::Verified)?.email.clone();
            let request = request?;
            let name = string_field(&request, "name")?;
            let days = days_field(&request)?;
            tw.next_seq += 1;
            let key = Key {
                id: new_id(),
                api_key: random_alphanumeric(API_KEY_LEN),
                api_secret: random_alphanumeric(API_SECRET_LEN),
                name,
                expire_at: secs(now) + days * 86_400,
                verified: false,
                owner: email.clone(),
                created_at: secs(now),
                updated_at: secs(now),
                seq: tw.next_seq,
            };
            tw.issued.push(key.api_secret.clone());
            let code_id = tw.send_code(CodePurpose::Keypair, &key.id, &email, now, code_ttl);
            let response = json!({
                "apiKey": key.api_key,
                "apiSecret": key.api_secret,
                "keyID": key.id,
                "keyName": key.name,
                "expireAt": key.expire_at,
                "verified": false,
                "verificationCodeID": code_id,
            });
            tw.keys.insert(key.id.clone(), key);
            Ok(Json(response))
        })
        .await
}

async fn check_keypair(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let api_key = header_value(&headers, "api-key")
        .ok_or_else(|| ApiError::bad_request("incorrect apiKey"))?;
    let api_secret = header_value(&headers, "api-secret")
        .ok_or_else(|| ApiError::bad_request("incorrect apiSecret"))?;
    let now = now_ms();
    let readings = shared.config.threatwinds_readings;
    shared.read(|state| {
        let tw = &state.threatwinds;
        let key = tw
            .keys
            .values()
            .find(|key| key.api_key == api_key)
            .ok_or_else(record_not_found)?;
        if key.api_secret != api_secret {
            return Err(ApiError::unauthorized("invalid api secret"));
        }
        if key.expire_at <= secs(now) {
            return Err(record_not_found());
        }
        if !key.verified && readings.unverified_check == UnverifiedCheck::Unauthorized {
            return Err(ApiError::unauthorized("keypair not verified"));
        }
        let user = tw.users.get(&key.owner).ok_or_else(record_not_found)?;
        Ok(Json(json!({
            "apiKey": key.api_key,
            "keyID": key.id,
            "keyName": key.name,
            "expireAt": key.expire_at,
            "verified": key.verified,
            "userID": user.id,
            "userName": user.full_name,
            "userAlias": user.alias,
            "roles": user.roles,
            "groups": user.groups,
        })))
    })
}

async fn list_keypairs(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let token = bearer_token(&headers)?;
    let now = now_ms();
    shared.read(|state| {
        let tw = &state.threatwinds;
        let email = &tw.session(&token, now, Need::Verified)?.email;
        let mut keys: Vec<&Key> = tw.keys.values().filter(|k| &k.owner == email).collect();
        keys.sort_by_key(|key| key.seq);
        let keys: Vec<Value> = keys
            .into_iter()
            .map(|key| {
                json!({
                    "apiKey": key.api_key,
                    "keyID": key.id,
                    "keyName": key.name,
                    "expireAt": key.expire_at,
                    "verified": key.verified,
                })
            })
            .collect();
        Ok(Json(json!({ "keys": keys })))
    })
}

async fn delete_keypair(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    delete_key(&shared, &headers, Ok(id)).await
}

/// `DELETE /keypair` with the id in the query (`id`) or the body (`id` or `keyID`).
async fn delete_keypair_by_param(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult {
    let from_query = query.as_deref().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, value)| (name == "id" || name == "keyID") && !value.is_empty())
            .map(|(_, value)| value.into_owned())
    });
    let id = match from_query {
        Some(id) => Ok(id),
        None => optional_json_object(&body).and_then(|request| {
            ["id", "keyID"]
                .iter()
                .find_map(|name| request.get(*name).and_then(Value::as_str))
                .map(str::to_owned)
                .ok_or_else(|| ApiError::bad_request("missing key pair id"))
        }),
    };
    delete_key(&shared, &headers, id).await
}

async fn delete_key(
    shared: &Shared,
    headers: &HeaderMap,
    id: Result<String, ApiError>,
) -> ApiResult {
    let token = bearer_token(headers)?;
    let now = now_ms();
    shared
        .mutate(|state| {
            let tw = &mut state.threatwinds;
            let email = tw.session(&token, now, Need::Verified)?.email.clone();
            let id = id?;
            if tw.keys.get(&id).is_none_or(|key| key.owner != email) {
                return Err(record_not_found());
            }
            tw.keys.remove(&id);
            tw.forget_codes_of(&id);
            Ok(acknowledged())
        })
        .await
}

/// The session token `PUT /keypair/verification` needs under the configured reading.
fn verify_token(
    readings: &ThreatWindsReadings,
    headers: &HeaderMap,
) -> Result<Option<String>, ApiError> {
    match readings.verify_auth {
        VerifyAuth::Ignored => Ok(None),
        VerifyAuth::Session => bearer_token(headers).map(Some),
    }
}

async fn verify_keypair(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let token = verify_token(&shared.config.threatwinds_readings, &headers)?;
    let request = json_object(&body);
    let now = now_ms();
    shared
        .mutate(|state| {
            let tw = &mut state.threatwinds;
            // Authentication first, then the body, as for every management call.
            let owner = match &token {
                Some(token) => Some(tw.session(token, now, Need::Verified)?.email.clone()),
                None => None,
            };
            let request = request?;
            let code_id = string_field(&request, "verificationCodeID")?;
            let code = string_field(&request, "code")?;
            let key_id = tw.check_code(CodePurpose::Keypair, &code_id, &code, now)?;
            let key = tw
                .keys
                .get_mut(&key_id)
                .filter(|key| key.expire_at > secs(now))
                .filter(|key| owner.as_ref().is_none_or(|owner| &key.owner == owner))
                .ok_or_else(record_not_found)?;
            key.verified = true;
            key.updated_at = secs(now);
            tw.codes.remove(&code_id);
            Ok(acknowledged())
        })
        .await
}

async fn new_verification_code(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let token = new_code_token(&headers, shared.config.threatwinds_readings.new_code_auth)?;
    let request = json_object(&body);
    let now = now_ms();
    let code_ttl = shared.config.code_ttl;
    shared
        .mutate(|state| {
            let tw = &mut state.threatwinds;
            let email = tw.session(&token, now, Need::Verified)?.email.clone();
            let request = request?;
            let api_key = string_field(&request, "apiKey")?;
            let api_secret = string_field(&request, "apiSecret")?;
            let key = tw
                .keys
                .values()
                .find(|key| key.api_key == api_key && key.owner == email)
                .ok_or_else(record_not_found)?;
            if key.api_secret != api_secret {
                return Err(ApiError::unauthorized("invalid api secret"));
            }
            if key.expire_at <= secs(now) {
                return Err(record_not_found());
            }
            let key_id = key.id.clone();
            tw.forget_codes_of(&key_id);
            let code_id = tw.send_code(CodePurpose::Keypair, &key_id, &email, now, code_ttl);
            Ok(Json(json!({ "verificationCodeID": code_id })))
        })
        .await
}
