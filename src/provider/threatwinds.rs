//! ThreatWinds auth v2 key-pair client.
//!
//! Two published pages describe this API and disagree (200 vs 202, errors in `x-error`
//! headers vs a `{uuid, error}` body, `/keypair` vs `/KeyPair`); the shared HTTP layer
//! accepts any 2xx and both error forms, and this client always uses the lower-case paths
//! that both pages show in their curl examples.
//!
//! Key-pair management authenticates with a verified session's bearer token; the check
//! endpoint (`get`) authenticates with the key pair's own `api-key` / `api-secret`. A 404
//! on a bearer call is ambiguous (unknown record, or expired / unverified session), so it
//! is cross-checked with `GET /session` before it is reported as `NotFound`.
//!
//! Decisions where the docs are silent: verification (`PUT /keypair/verification`) sends
//! the bearer token although the detailed page's example has none (the current page has
//! it); `PUT /session/extend`'s answer is read for `expireAt` and, failing that, the
//! session is read again; `get` without a secret lists and matches `keyID`, and a check
//! answered for another `keyID` than asked is `NotFound`.
//!
//! # Open points in the ThreatWinds docs
//!
//! | Open point | What the pages say | Handling here |
//! |---|---|---|
//! | Success status | current: 200; detailed: 202 | any 2xx is success; an unusable 2xx body is `UnexpectedResponse` with the real status, which [`ProviderError::may_have_committed`] counts as applied |
//! | Where errors are | current: `x-error` / `x-error-id` headers; detailed: `{uuid, error}` body | both read on every response, headers first |
//! | Path case | detailed spells `/KeyPair/verification` and `/KeyPair` once | always the lower-case paths both pages' curl examples use |
//! | Delete path | `DELETE /keypair/{id}` (current, both examples) vs endpoint line `/keypair` (detailed) | `DELETE /keypair/{id}` |
//! | 404 on a management call | unknown record, *or* expired / unverified session (detailed) | cross-checked with `GET /session`: `NotFound` only with a live, verified session, else `Unauthorized` |
//! | 401 / 400 / 404 on verify | wrong code (401), unknown code id or dead session (404), bad `Authorization` (400) | cross-checked with `GET /session`: `CodeRejected` with a live, verified session; `Unauthorized` otherwise; a failed check's own (retryable) error is returned |
//! | 403 | current: user lacks permission; detailed: may be throttling or a blocked IP | `Forbidden`, retried with back-off; [`ProviderError::is_permission_denied`] when there is no `Retry-After` |
//! | `Bearer` on new code | the detailed page's new-code example sends the bare token; every other example `Bearer <token>` | `Bearer` first; on 401 / 400 once more with the bare token (a refusal commits nothing); the form that works is remembered by the client |
//! | What an unverified key may do | "verify this keypair before you can use it"; the list and check show `verified: false` | until the check has once answered 200 for an unverified key, a 401 from it is looked up in the list: a key listed unverified is returned from the list (`verified: Some(false)`; its secret cannot be checked before verification), anything else stays `Unauthorized` (wrong secret) |

use crate::provider::http::{Call, ErrorDialect, HttpLayer, HttpOptions};
use crate::provider::{
    CreateKeyPair, CreatedKeyPair, CredentialStatus, KeyLookup, KeyPairApi, ProviderError,
    ProviderKind, RemoteKeyPair, UpdateKeyPair, lenient,
};
use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Path of the auth v2 API below the host.
const API_PATH: [&str; 3] = ["api", "auth", "v2"];

/// A ThreatWinds client bound to one account session.
#[derive(Clone)]
pub struct ThreatWindsClient {
    http: HttpLayer,
    session_token: SecretString,
    /// What the server has shown about the docs' open points; shared by clones, so one
    /// answer teaches every copy of the client.
    learned: Arc<Learned>,
}

/// Readings of the docs' open points that the client learns from the server's answers.
#[derive(Default)]
struct Learned {
    /// "New Verification Code" last worked with the bare token (no `Bearer ` prefix).
    new_code_raw_auth: AtomicBool,
    /// The check endpoint has answered 200 for an unverified key pair, so a 401 from it
    /// is about the secret, never about the key being unverified.
    check_answers_unverified: AtomicBool,
}

impl fmt::Debug for ThreatWindsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreatWindsClient")
            .field("base_url", &self.http.base_url().as_str())
            .field("session_token", &"[redacted]")
            .finish()
    }
}

/// What `GET /session` says about the session the client uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionInfo {
    /// Whether the session's emailed code has been submitted; key-pair calls need it.
    pub verified: bool,
    /// When the session expires.
    pub expire_at: Option<DateTime<Utc>>,
    /// Roles of the user.
    pub roles: Vec<String>,
    /// Groups of the user.
    pub groups: Vec<String>,
    /// The user's alias.
    pub alias: Option<String>,
    /// The user's full name.
    pub full_name: Option<String>,
}

/// `GET /session` answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionWire {
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    verified: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    expire_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::string_list")]
    roles: Vec<String>,
    #[serde(default, deserialize_with = "lenient::string_list")]
    groups: Vec<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    alias: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    full_name: Option<String>,
}

/// `PUT /session/extend` answer: undocumented, so only `expireAt` is looked for.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExtendWire {
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    expire_at: Option<DateTime<Utc>>,
}

/// A key pair as create, check and list return it (each with a different subset).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyPairWire {
    #[serde(
        rename = "keyID",
        alias = "keyId",
        deserialize_with = "lenient::opt_string"
    )]
    key_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    api_key: Option<String>,
    #[serde(default)]
    api_secret: Option<SecretString>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    key_name: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    expire_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    verified: Option<bool>,
    #[serde(
        default,
        rename = "verificationCodeID",
        alias = "verificationCodeId",
        deserialize_with = "lenient::opt_string"
    )]
    verification_code_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::string_list")]
    roles: Vec<String>,
    #[serde(default, deserialize_with = "lenient::string_list")]
    groups: Vec<String>,
}

/// `GET /keypairs` answer.
#[derive(Deserialize)]
struct ListWire {
    #[serde(deserialize_with = "lenient::required_list")]
    keys: Vec<KeyPairWire>,
}

/// `POST /keypair/verification` answer.
#[derive(Deserialize)]
struct NewCodeWire {
    #[serde(
        rename = "verificationCodeID",
        alias = "verificationCodeId",
        deserialize_with = "lenient::opt_string"
    )]
    verification_code_id: Option<String>,
}

#[derive(Serialize)]
struct CreateBody<'a> {
    name: &'a str,
    days: u32,
}

#[derive(Serialize)]
struct VerifyBody<'a> {
    #[serde(rename = "verificationCodeID")]
    verification_code_id: &'a str,
    code: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NewCodeBody<'a> {
    api_key: &'a str,
    api_secret: &'a str,
}

impl ThreatWindsClient {
    /// A client for `base_url` (e.g. `https://intelligence.threatwinds.com`; `/api/auth/v2`
    /// is appended unless already there) using a verified session's bearer token.
    pub fn new(
        base_url: &str,
        session_token: SecretString,
        options: HttpOptions,
    ) -> Result<Self, ProviderError> {
        let http = HttpLayer::new(
            ProviderKind::Threatwinds,
            ErrorDialect::ThreatWinds,
            base_url,
            &API_PATH,
            &options,
        )?;
        Ok(ThreatWindsClient {
            http,
            session_token,
            learned: Arc::default(),
        })
    }

    /// A call authenticated with the session's bearer token.
    fn bearer<'a>(
        &'a self,
        op: &'static str,
        method: Method,
        path: &[&'a str],
    ) -> Result<Call<'a>, ProviderError> {
        Call::new(op, method, path).secret_header("authorization", "Bearer ", &self.session_token)
    }

    /// A call authenticated with the bare session token (no `Bearer ` prefix), as the
    /// detailed page's "New Verification Code" example sends it.
    fn raw_token<'a>(
        &'a self,
        op: &'static str,
        method: Method,
        path: &[&'a str],
    ) -> Result<Call<'a>, ProviderError> {
        Call::new(op, method, path).secret_header("authorization", "", &self.session_token)
    }

    /// Sends a bearer call. ThreatWinds answers 404 "record not found" both for an unknown
    /// key pair or code *and* for a session that has expired or is not verified (detailed
    /// page). Taking the second for the first would make the controller count a delete as
    /// done with a dead session, so a 404 is cross-checked with `GET /session` and becomes
    /// `Unauthorized` when the session is the problem.
    async fn send_bearer<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, ProviderError> {
        self.send_bearer_with_status(call).await.map(|(_, v)| v)
    }

    /// [`Self::send_bearer`], also returning the 2xx status (for `UnexpectedResponse`).
    async fn send_bearer_with_status<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
    ) -> Result<(u16, T), ProviderError> {
        match self.http.send_with_status(call).await {
            Err(e @ ProviderError::NotFound { .. }) => Err(self.explain_not_found(e).await),
            other => other,
        }
    }

    /// A 404 stays `NotFound` only when `GET /session` shows a live, verified session.
    async fn explain_not_found(&self, e: ProviderError) -> ProviderError {
        let ProviderError::NotFound { message, error_id } = e else {
            return e;
        };
        match self.session().await {
            Ok(s) if s.verified => ProviderError::NotFound { message, error_id },
            Ok(_) => ProviderError::Unauthorized {
                message: format!("{message} (the session is not verified)"),
                error_id,
            },
            Err(ProviderError::Unauthorized { .. }) => ProviderError::Unauthorized {
                message: format!("{message} (the session has expired or is unknown)"),
                error_id,
            },
            // The session could not be checked: a retryable error keeps the caller
            // from acting on an ambiguous 404.
            Err(other) => other,
        }
    }

    /// Decides what a refused verification (401, 400 or 404) means. The detailed page
    /// gives each of them for a wrong code *and* for a dead session or a bad
    /// `Authorization` header, so only a session that `GET /session` shows alive and
    /// verified makes it [`ProviderError::CodeRejected`]; a dead or unverified session is
    /// `Unauthorized` (the code may be fine), and a session check that fails otherwise is
    /// returned as is, so a retryable one makes the caller submit the code again later.
    async fn explain_refused_code(
        &self,
        message: String,
        error_id: Option<String>,
    ) -> ProviderError {
        match self.session().await {
            Ok(s) if s.verified => ProviderError::CodeRejected { message, error_id },
            Ok(_) => ProviderError::Unauthorized {
                message: format!(
                    "{message} (the session is not verified, so the code may not be at fault)"
                ),
                error_id,
            },
            Err(ProviderError::Unauthorized { .. } | ProviderError::BadRequest { .. }) => {
                ProviderError::Unauthorized {
                    message: format!(
                        "{message} (the session has expired or is unknown, so the code may not be at fault)"
                    ),
                    error_id,
                }
            }
            Err(other) => other,
        }
    }

    /// `GET /session`: whether the session is verified, when it expires, and the user.
    /// A 404 (the session has expired) is reported as `Unauthorized`.
    pub async fn session(&self) -> Result<SessionInfo, ProviderError> {
        let w: SessionWire = match self
            .http
            .send(self.bearer("session", Method::GET, &["session"])?)
            .await
        {
            Err(ProviderError::NotFound { message, error_id }) => {
                return Err(ProviderError::Unauthorized {
                    message: format!("{message} (the session has expired or is unknown)"),
                    error_id,
                });
            }
            other => other?,
        };
        Ok(session_info(w))
    }

    /// `PUT /session/extend`: pushes the session's expiry out and returns the new one.
    /// The answer's shape is undocumented; if it has no `expireAt`, the session is read.
    pub async fn extend_session(&self) -> Result<Option<DateTime<Utc>>, ProviderError> {
        let w: Option<ExtendWire> = self
            .send_bearer(self.bearer("extend session", Method::PUT, &["session", "extend"])?)
            .await?;
        match w.and_then(|w| w.expire_at) {
            Some(at) => Ok(Some(at)),
            None => Ok(self.session().await?.expire_at),
        }
    }

    /// `GET /keypairs`.
    async fn list_keys(&self, op: &'static str) -> Result<Vec<RemoteKeyPair>, ProviderError> {
        let (status, w): (u16, ListWire) = self
            .send_bearer_with_status(self.bearer(op, Method::GET, &["keypairs"])?)
            .await?;
        w.keys.into_iter().map(|k| remote(op, status, k)).collect()
    }

    /// The list's entry for `key_id`, or `NotFound`.
    async fn listed(&self, op: &'static str, key_id: &str) -> Result<RemoteKeyPair, ProviderError> {
        require_id(op, "key id", key_id)?;
        self.list_keys(op)
            .await?
            .into_iter()
            .find(|k| k.key_id == key_id)
            .ok_or_else(|| ProviderError::NotFound {
                message: format!(
                    "threatwinds {op}: key pair {key_id} is not in the account's list"
                ),
                error_id: None,
            })
    }

    /// A 401 from the check endpoint means a wrong secret, or (one reading of "verify
    /// this keypair before you can use it") an unverified key. Once the server has
    /// answered a check of an unverified key, it is the first. Until then the list tells
    /// them apart: a key it shows unverified is reported from the list (its secret cannot
    /// be checked until the key is verified); otherwise the 401 stands. A list that fails
    /// with a retryable error is returned instead, so the caller does not act on the
    /// ambiguity.
    async fn explain_check_refusal(
        &self,
        op: &'static str,
        key_id: &str,
        refusal: ProviderError,
    ) -> Result<RemoteKeyPair, ProviderError> {
        let learned = self
            .learned
            .check_answers_unverified
            .load(Ordering::Relaxed);
        if learned || key_id.trim().is_empty() {
            return Err(refusal);
        }
        match self.listed(op, key_id).await {
            Ok(k) if k.verified == Some(false) => Ok(k),
            Err(e) if e.is_retryable() => Err(e),
            _ => Err(refusal),
        }
    }

    /// One "New Verification Code" attempt with the bare or the `Bearer` token form.
    async fn send_new_code(
        &self,
        raw: bool,
        api_key: &str,
        api_secret: &SecretString,
    ) -> Result<(u16, NewCodeWire), ProviderError> {
        let (op, path) = ("new code", ["keypair", "verification"]);
        let call = if raw {
            self.raw_token(op, Method::POST, &path)?
        } else {
            self.bearer(op, Method::POST, &path)?
        };
        let call = call
            .json(&NewCodeBody {
                api_key,
                api_secret: api_secret.expose_secret(),
            })?
            .secret(api_secret);
        self.http.send_with_status(call).await
    }

    /// "New Verification Code" in the token form that last worked, falling back once to
    /// the other form on 401 or 400 (an `Authorization` header the server did not take;
    /// a refused request committed nothing, so repeating it is safe). The form that
    /// works is remembered. When both are refused, the first answer is reported.
    async fn send_new_code_either_form(
        &self,
        api_key: &str,
        api_secret: &SecretString,
    ) -> Result<(u16, NewCodeWire), ProviderError> {
        let raw = self.learned.new_code_raw_auth.load(Ordering::Relaxed);
        let first = match self.send_new_code(raw, api_key, api_secret).await {
            Err(e @ (ProviderError::Unauthorized { .. } | ProviderError::BadRequest { .. })) => e,
            other => return other,
        };
        tracing::debug!(
            raw,
            "threatwinds new code: token form refused; trying the other"
        );
        match self.send_new_code(!raw, api_key, api_secret).await {
            Ok(answer) => {
                self.learned
                    .new_code_raw_auth
                    .store(!raw, Ordering::Relaxed);
                Ok(answer)
            }
            Err(ProviderError::Unauthorized { .. } | ProviderError::BadRequest { .. }) => {
                Err(first)
            }
            Err(other) => Err(other),
        }
    }
}

/// Provider-neutral view of a wire key pair; a key pair without `keyID` is not usable.
/// `status` is the 2xx it came with, reported if it cannot be used.
fn remote(op: &'static str, status: u16, w: KeyPairWire) -> Result<RemoteKeyPair, ProviderError> {
    let key_id = w.key_id.ok_or_else(|| ProviderError::UnexpectedResponse {
        status,
        message: format!("threatwinds {op}: key pair without keyID"),
        excerpt: String::new(),
    })?;
    Ok(RemoteKeyPair {
        key_id,
        api_key: w.api_key.unwrap_or_default(),
        name: w.key_name,
        expire_at: w.expire_at,
        verified: w.verified,
        enabled: None,
        role_key: None,
        role_name: None,
        roles: w.roles,
        groups: w.groups,
        created_at: None,
        updated_at: None,
        api_secret: None,
    })
}

/// What `GET /session` answered, in neutral form (unverified unless it says so).
fn session_info(w: SessionWire) -> SessionInfo {
    SessionInfo {
        verified: w.verified.unwrap_or(false),
        expire_at: w.expire_at,
        roles: w.roles,
        groups: w.groups,
        alias: w.alias,
        full_name: w.full_name,
    }
}

/// A create answer (with the 2xx `status` it came with) as the created key pair: it must
/// carry `apiSecret` and `keyID`; the name asked for stands in for a missing `keyName`.
fn created(
    op: &'static str,
    status: u16,
    mut w: KeyPairWire,
    name: &str,
) -> Result<CreatedKeyPair, ProviderError> {
    let Some(api_secret) = w.api_secret.take() else {
        return Err(ProviderError::UnexpectedResponse {
            status,
            message: format!(
                "threatwinds {op}: answer has no apiSecret; the key pair may exist without a usable secret"
            ),
            excerpt: String::new(),
        });
    };
    let verification_code_id = w.verification_code_id.take();
    let mut key = remote(op, status, w)?;
    if key.name.is_none() {
        key.name = Some(name.to_owned());
    }
    Ok(CreatedKeyPair {
        key,
        api_secret,
        verification_code_id,
    })
}

/// The ThreatWinds answer readers, from raw 2xx bodies, exactly as the client reads them
/// (for the property tests and fuzz targets, through [`crate::provider::fuzzing`]).
pub(crate) mod read {
    use super::*;
    use crate::provider::http::decode;

    const TW: ProviderKind = ProviderKind::Threatwinds;

    /// `POST /keypair` (create), asked with the name `name`.
    pub fn create(status: u16, body: &[u8], name: &str) -> Result<CreatedKeyPair, ProviderError> {
        created(
            "create",
            status,
            decode(TW, "create", status, body, &[])?,
            name,
        )
    }

    /// `GET /keypair` (the check).
    pub fn check(status: u16, body: &[u8]) -> Result<RemoteKeyPair, ProviderError> {
        remote("get", status, decode(TW, "get", status, body, &[])?)
    }

    /// `GET /keypairs`.
    pub fn list(status: u16, body: &[u8]) -> Result<Vec<RemoteKeyPair>, ProviderError> {
        let w: ListWire = decode(TW, "list", status, body, &[])?;
        w.keys
            .into_iter()
            .map(|k| remote("list", status, k))
            .collect()
    }

    /// `GET /session`.
    pub fn session(status: u16, body: &[u8]) -> Result<SessionInfo, ProviderError> {
        decode(TW, "session", status, body, &[]).map(session_info)
    }

    /// `PUT /session/extend`: the new expiry, if the answer has one.
    pub fn extend(status: u16, body: &[u8]) -> Result<Option<DateTime<Utc>>, ProviderError> {
        let w: Option<ExtendWire> = decode(TW, "extend session", status, body, &[])?;
        Ok(w.and_then(|w| w.expire_at))
    }

    /// `POST /keypair/verification` (new code): the new code id.
    pub fn new_code(status: u16, body: &[u8]) -> Result<String, ProviderError> {
        let w: NewCodeWire = decode(TW, "new code", status, body, &[])?;
        w.verification_code_id
            .ok_or_else(|| ProviderError::UnexpectedResponse {
                status,
                message: "threatwinds new code: answer has no verificationCodeID".to_owned(),
                excerpt: String::new(),
            })
    }
}

/// Rejects an empty id locally: it would address a different endpoint (`/keypair/`).
fn require_id(op: &'static str, what: &str, id: &str) -> Result<(), ProviderError> {
    if id.trim().is_empty() {
        return Err(ProviderError::BadRequest {
            message: format!("threatwinds {op}: {what} is empty"),
            error_id: None,
        });
    }
    Ok(())
}

#[async_trait::async_trait]
impl KeyPairApi for ThreatWindsClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Threatwinds
    }

    async fn check_credentials(&self) -> Result<CredentialStatus, ProviderError> {
        let s = self.session().await?;
        Ok(CredentialStatus {
            verified: s.verified,
            expire_at: s.expire_at,
        })
    }

    async fn create(&self, req: &CreateKeyPair) -> Result<CreatedKeyPair, ProviderError> {
        let op = "create";
        let call = self
            .bearer(op, Method::POST, &["keypair"])?
            .json(&CreateBody {
                name: &req.name,
                days: req.validity_days,
            })?;
        let (status, w): (u16, KeyPairWire) = self.send_bearer_with_status(call).await?;
        created(op, status, w, &req.name)
    }

    async fn get(&self, lookup: &KeyLookup) -> Result<RemoteKeyPair, ProviderError> {
        let op = "get";
        let Some(secret) = &lookup.api_secret else {
            // The check endpoint needs the secret; without it the list is the only view.
            return self.listed(op, &lookup.key_id).await;
        };
        let call = Call::new(op, Method::GET, &["keypair"])
            .header("api-key", &lookup.api_key)?
            .secret_header("api-secret", "", secret)?;
        let (status, w): (u16, KeyPairWire) = match self.http.send_with_status(call).await {
            Err(e @ ProviderError::Unauthorized { .. }) => {
                return self.explain_check_refusal(op, &lookup.key_id, e).await;
            }
            other => other?,
        };
        let key = remote(op, status, w)?;
        if key.verified == Some(false) {
            self.learned
                .check_answers_unverified
                .store(true, Ordering::Relaxed);
        }
        if !lookup.key_id.is_empty() && key.key_id != lookup.key_id {
            // The secret belongs to some other key pair: ours is not what answered.
            return Err(ProviderError::NotFound {
                message: format!(
                    "threatwinds {op}: the api key answers as key pair {}, not {}",
                    key.key_id, lookup.key_id
                ),
                error_id: None,
            });
        }
        Ok(key)
    }

    async fn list(&self) -> Result<Vec<RemoteKeyPair>, ProviderError> {
        self.list_keys("list").await
    }

    async fn delete(&self, key_id: &str) -> Result<(), ProviderError> {
        let op = "delete";
        require_id(op, "key id", key_id)?;
        let _: IgnoredAny = self
            .send_bearer(self.bearer(op, Method::DELETE, &["keypair", key_id])?)
            .await?;
        Ok(())
    }

    async fn verify(
        &self,
        verification_code_id: &str,
        code: &SecretString,
    ) -> Result<(), ProviderError> {
        let op = "verify";
        require_id(op, "verification code id", verification_code_id)?;
        let call = self
            .bearer(op, Method::PUT, &["keypair", "verification"])?
            .json(&VerifyBody {
                verification_code_id,
                code: code.expose_secret(),
            })?
            .secret(code);
        match self.http.send::<IgnoredAny>(call).await {
            Ok(_) => Ok(()),
            Err(
                ProviderError::Unauthorized { message, error_id }
                | ProviderError::BadRequest { message, error_id }
                | ProviderError::NotFound { message, error_id },
            ) => Err(self.explain_refused_code(message, error_id).await),
            Err(other) => Err(other),
        }
    }

    async fn request_new_code(
        &self,
        api_key: &str,
        api_secret: &SecretString,
    ) -> Result<String, ProviderError> {
        let op = "new code";
        require_id(op, "api key", api_key)?;
        let (status, w) = match self.send_new_code_either_form(api_key, api_secret).await {
            Err(e @ ProviderError::NotFound { .. }) => return Err(self.explain_not_found(e).await),
            other => other?,
        };
        // A 2xx means a code was e-mailed, so a missing id is reported with that status.
        w.verification_code_id
            .ok_or_else(|| ProviderError::UnexpectedResponse {
                status,
                message: format!("threatwinds {op}: answer has no verificationCodeID"),
                excerpt: String::new(),
            })
    }

    async fn update(
        &self,
        _key_id: &str,
        _req: &UpdateKeyPair,
    ) -> Result<RemoteKeyPair, ProviderError> {
        Err(ProviderError::Unsupported {
            operation: "threatwinds update",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_answer_decodes_and_keeps_the_secret_out_of_debug() {
        let secret = "fq6JoEFTsxiXAl1cVxPDnK4emIQCwaUBfq6JoEFTsxiXAl1cVxPDnK4emIQCwaUB";
        let body = format!(
            r#"{{"apiKey":"fq6JoEFTsxiXAl1cVxPDnK4emIQCwaUB","apiSecret":"{secret}",
            "keyID":"5f35d2c4-5633-4b16-bbf0-5ca22ef8ea2e","keyName":"Example",
            "expireAt":1674492894,"verified":false,
            "verificationCodeID":"6a2b4c5d-0000-4000-8000-2k3l4m5n6o7p"}}"#
        );
        let mut w: KeyPairWire = serde_json::from_str(&body).expect("decode");
        let api_secret = w.api_secret.take().expect("secret");
        let verification_code_id = w.verification_code_id.take();
        let created = CreatedKeyPair {
            key: remote("create", 202, w).expect("remote"),
            api_secret,
            verification_code_id,
        };
        assert_eq!(created.api_secret.expose_secret(), secret);
        assert_eq!(created.key.key_id, "5f35d2c4-5633-4b16-bbf0-5ca22ef8ea2e");
        assert_eq!(created.key.verified, Some(false));
        assert_eq!(
            created.key.expire_at.map(|d| d.timestamp()),
            Some(1674492894)
        );
        let debug = format!("{created:?}");
        assert!(!debug.contains(secret), "{debug}");
    }

    #[test]
    fn list_requires_keys_but_accepts_null() {
        assert!(serde_json::from_str::<ListWire>(r#"{"keys":null}"#).is_ok());
        assert!(serde_json::from_str::<ListWire>(r#"{"keypairs":[]}"#).is_err());
        let w: ListWire = serde_json::from_str(
            r#"{"keys":[{"apiKey":"a","keyID":"1","keyName":"n","expireAt":"1674492894","verified":"true"}]}"#,
        )
        .expect("decode");
        let k = remote("list", 200, w.keys.into_iter().next().expect("one")).expect("remote");
        assert_eq!(k.verified, Some(true));
        assert_eq!(k.expire_at.map(|d| d.timestamp()), Some(1674492894));
    }

    #[test]
    fn a_key_pair_without_key_id_reports_the_2xx_it_came_with() {
        let w: KeyPairWire =
            serde_json::from_str(r#"{"keyID":null,"apiKey":"a"}"#).expect("decode");
        let e = remote("create", 202, w).expect_err("no keyID");
        assert!(
            matches!(e, ProviderError::UnexpectedResponse { status: 202, .. }),
            "{e:?}"
        );
        assert!(e.may_have_committed());
    }

    #[test]
    fn client_debug_hides_the_token() {
        let token = "sessiontoken-0123456789abcdef";
        let c = ThreatWindsClient::new(
            "http://127.0.0.1:1",
            SecretString::from(token),
            HttpOptions::default(),
        )
        .expect("client");
        let debug = format!("{c:?}");
        assert!(!debug.contains(token), "{debug}");
        assert!(debug.contains("127.0.0.1"), "{debug}");
    }

    #[tokio::test]
    async fn unsupported_and_local_validation() {
        let c = ThreatWindsClient::new(
            "http://127.0.0.1:1",
            SecretString::from("t"),
            HttpOptions::default(),
        )
        .expect("client");
        let e = c
            .update("k", &UpdateKeyPair::default())
            .await
            .expect_err("update");
        assert_eq!(
            e,
            ProviderError::Unsupported {
                operation: "threatwinds update"
            }
        );
        let e = c.delete(" ").await.expect_err("empty id");
        assert!(matches!(e, ProviderError::BadRequest { .. }), "{e:?}");
    }
}
