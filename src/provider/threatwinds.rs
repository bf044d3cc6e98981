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

/// Path of the auth v2 API below the host.
const API_PATH: [&str; 3] = ["api", "auth", "v2"];

/// A ThreatWinds client bound to one account session.
#[derive(Clone)]
pub struct ThreatWindsClient {
    http: HttpLayer,
    session_token: SecretString,
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

    /// Sends a bearer call. ThreatWinds answers 404 "record not found" both for an unknown
    /// key pair or code *and* for a session that has expired or is not verified (detailed
    /// page). Taking the second for the first would make the controller count a delete as
    /// done with a dead session, so a 404 is cross-checked with `GET /session` and becomes
    /// `Unauthorized` when the session is the problem.
    async fn send_bearer<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, ProviderError> {
        match self.http.send(call).await {
            Err(ProviderError::NotFound { message, error_id }) => Err(match self.session().await {
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
            }),
            other => other,
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
        Ok(SessionInfo {
            verified: w.verified.unwrap_or(false),
            expire_at: w.expire_at,
            roles: w.roles,
            groups: w.groups,
            alias: w.alias,
            full_name: w.full_name,
        })
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
        let w: ListWire = self
            .send_bearer(self.bearer(op, Method::GET, &["keypairs"])?)
            .await?;
        w.keys.into_iter().map(|k| remote(op, k)).collect()
    }
}

/// Provider-neutral view of a wire key pair; a key pair without `keyID` is not usable.
fn remote(op: &'static str, w: KeyPairWire) -> Result<RemoteKeyPair, ProviderError> {
    let key_id = w.key_id.ok_or_else(|| ProviderError::UnexpectedResponse {
        status: 200,
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
        let mut w: KeyPairWire = self.send_bearer(call).await?;
        let Some(api_secret) = w.api_secret.take() else {
            return Err(ProviderError::UnexpectedResponse {
                status: 200,
                message: format!(
                    "threatwinds {op}: answer has no apiSecret; the key pair may exist without a usable secret"
                ),
                excerpt: String::new(),
            });
        };
        let verification_code_id = w.verification_code_id.take();
        let mut key = remote(op, w)?;
        if key.name.is_none() {
            key.name = Some(req.name.clone());
        }
        Ok(CreatedKeyPair {
            key,
            api_secret,
            verification_code_id,
        })
    }

    async fn get(&self, lookup: &KeyLookup) -> Result<RemoteKeyPair, ProviderError> {
        let op = "get";
        let Some(secret) = &lookup.api_secret else {
            // The check endpoint needs the secret; without it the list is the only view.
            require_id(op, "key id", &lookup.key_id)?;
            return self
                .list_keys(op)
                .await?
                .into_iter()
                .find(|k| k.key_id == lookup.key_id)
                .ok_or_else(|| ProviderError::NotFound {
                    message: format!(
                        "threatwinds {op}: key pair {} is not in the account's list",
                        lookup.key_id
                    ),
                    error_id: None,
                });
        };
        let call = Call::new(op, Method::GET, &["keypair"])
            .header("api-key", &lookup.api_key)?
            .secret_header("api-secret", "", secret)?;
        let w: KeyPairWire = self.http.send(call).await?;
        let key = remote(op, w)?;
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
        let _: IgnoredAny = self.send_bearer(call).await?;
        Ok(())
    }

    async fn request_new_code(
        &self,
        api_key: &str,
        api_secret: &SecretString,
    ) -> Result<String, ProviderError> {
        let op = "new code";
        let call = self
            .bearer(op, Method::POST, &["keypair", "verification"])?
            .json(&NewCodeBody {
                api_key,
                api_secret: api_secret.expose_secret(),
            })?
            .secret(api_secret);
        let w: NewCodeWire = self.send_bearer(call).await?;
        w.verification_code_id
            .ok_or_else(|| ProviderError::UnexpectedResponse {
                status: 200,
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
            key: remote("create", w).expect("remote"),
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
        let k = remote("list", w.keys.into_iter().next().expect("one")).expect("remote");
        assert_eq!(k.verified, Some(true));
        assert_eq!(k.expire_at.map(|d| d.timestamp()), Some(1674492894));
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
