//! Provider clients: one trait ([`KeyPairApi`]) for everything the controller needs from a
//! remote key-pair API, a ThreatWinds and a Datonis implementation, and one shared HTTP
//! layer (`http.rs`) that every endpoint of both goes through.
//!
//! The types here are provider-neutral. Secrets (API secrets, session and auth tokens,
//! passwords, verification codes) are always [`SecretString`]: their `Debug` prints
//! `[REDACTED]` and their memory is zeroed on drop, so none of the structs below can leak
//! one through `{:?}` or a log line, and no [`ProviderError`] ever carries one.

mod datonis;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod lenient;
mod redact;
mod threatwinds;

pub use datonis::{
    DateOrder, DatonisClient, DatonisCredentials, EXPIRY_DATE_FORMAT, ListQuery, Page, SortOrder,
    TimestampFormat,
};
pub use error::ProviderError;
/// The client's response-size limit, for the sandbox's `oversized` fault.
#[cfg(feature = "sandbox")]
pub(crate) use http::MAX_BODY_BYTES;
pub use http::{HttpOptions, RateLimiter};
pub use threatwinds::{SessionInfo, ThreatWindsClient};

use chrono::{DateTime, NaiveDate, Utc};
use secrecy::SecretString;
use std::fmt;

/// Which remote API a client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// ThreatWinds auth v2 key pairs.
    Threatwinds,
    /// Datonis v3 `key_pairs`.
    Datonis,
}

impl ProviderKind {
    /// Lower-case name used as the prefix of every error message and log line.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Threatwinds => "threatwinds",
            ProviderKind::Datonis => "datonis",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateKeyPair {
    /// Display name (ThreatWinds `name`; Datonis has no name and ignores it).
    pub name: String,
    /// Days from today until the key pair expires (ThreatWinds `days`; Datonis
    /// `expiry_date` = today (UTC) + this many days).
    pub validity_days: u32,
    /// Datonis role the key pair gets (`role_key`; Datonis needs one, so without it the
    /// create fails with `BadRequest`); ignored by ThreatWinds.
    pub role_key: Option<String>,
}

/// Fields to change on an existing key pair (Datonis only); `None` leaves a field as is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateKeyPair {
    /// Enable or disable the key pair.
    pub enabled: Option<bool>,
    /// New expiry date (calendar day in the account's time zone).
    pub expiry_date: Option<NaiveDate>,
    /// New role.
    pub role_key: Option<String>,
}

/// How to find one key pair.
///
/// ThreatWinds can only look a key pair up by its API key and secret (the "check"
/// endpoint); without the secret the client falls back to listing and matching `key_id`.
/// Datonis looks it up by `key_id` (its `key_pair_key`) alone.
#[derive(Debug, Clone)]
pub struct KeyLookup {
    /// ThreatWinds `keyID`; Datonis `key_pair_key`.
    pub key_id: String,
    /// ThreatWinds `apiKey`; Datonis `access_key` (unused by the Datonis lookup).
    pub api_key: String,
    /// The API secret, when the caller has it (ThreatWinds check).
    pub api_secret: Option<SecretString>,
}

/// A key pair as the provider reports it, in provider-neutral form.
///
/// `Debug` is safe to log: `api_secret` is a [`SecretString`].
#[derive(Debug, Clone, Default)]
pub struct RemoteKeyPair {
    /// ThreatWinds `keyID`; Datonis `key_pair_key`.
    pub key_id: String,
    /// ThreatWinds `apiKey`; Datonis `access_key`.
    pub api_key: String,
    /// ThreatWinds `keyName`.
    pub name: Option<String>,
    /// When the key pair expires.
    pub expire_at: Option<DateTime<Utc>>,
    /// ThreatWinds: whether the emailed code has been submitted.
    pub verified: Option<bool>,
    /// Datonis: whether the key pair is enabled.
    pub enabled: Option<bool>,
    /// Datonis `role_key`.
    pub role_key: Option<String>,
    /// Datonis `role_name`.
    pub role_name: Option<String>,
    /// ThreatWinds check: roles of the owning user.
    pub roles: Vec<String>,
    /// ThreatWinds check: groups of the owning user.
    pub groups: Vec<String>,
    /// Datonis `created_at`.
    pub created_at: Option<DateTime<Utc>>,
    /// Datonis `updated_at`.
    pub updated_at: Option<DateTime<Utc>>,
    /// Datonis returns `secret_key` on every read; ThreatWinds never does after create.
    pub api_secret: Option<SecretString>,
}

/// The answer to a create: the key pair plus the secret, which ThreatWinds shows only once.
#[derive(Debug, Clone)]
pub struct CreatedKeyPair {
    /// The new key pair.
    pub key: RemoteKeyPair,
    /// The API secret (ThreatWinds `apiSecret`, Datonis `secret_key`).
    pub api_secret: SecretString,
    /// ThreatWinds: the id of the emailed verification code, for [`KeyPairApi::verify`].
    pub verification_code_id: Option<String>,
}

/// Result of a credentials check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialStatus {
    /// ThreatWinds: the session has been verified (key-pair calls need that). Datonis:
    /// always `true` when the check succeeds.
    pub verified: bool,
    /// When the session expires, if the provider says (ThreatWinds `expireAt`).
    pub expire_at: Option<DateTime<Utc>>,
}

/// Everything the controller needs from a remote key-pair API.
///
/// Every error is a [`ProviderError`] that says what to do next (retry, back off, fix
/// credentials, give up). Operations a provider does not have return
/// [`ProviderError::Unsupported`].
#[async_trait::async_trait]
pub trait KeyPairApi: Send + Sync {
    /// Which provider this client talks to.
    fn kind(&self) -> ProviderKind;

    /// Checks that the configured credentials work. ThreatWinds: `GET /session`.
    /// Datonis: a fresh sign-in with a password, or a one-item list with a token.
    async fn check_credentials(&self) -> Result<CredentialStatus, ProviderError>;

    /// Creates a key pair. A [`ProviderError::may_have_committed`] error means the key may
    /// exist anyway: list before creating again.
    async fn create(&self, req: &CreateKeyPair) -> Result<CreatedKeyPair, ProviderError>;

    /// Reads one key pair. ThreatWinds answers 401 when `api_secret` is wrong.
    async fn get(&self, key: &KeyLookup) -> Result<RemoteKeyPair, ProviderError>;

    /// Lists every key pair of the account (Datonis: all pages).
    async fn list(&self) -> Result<Vec<RemoteKeyPair>, ProviderError>;

    /// Deletes a key pair. An unknown id is [`ProviderError::NotFound`]; the caller decides
    /// whether that counts as done. (ThreatWinds also answers 404 for a dead session; the
    /// client checks the session first and reports that case as `Unauthorized`.)
    async fn delete(&self, key_id: &str) -> Result<(), ProviderError>;

    /// Submits the emailed verification code (ThreatWinds only).
    async fn verify(
        &self,
        verification_code_id: &str,
        code: &SecretString,
    ) -> Result<(), ProviderError>;

    /// Has a new verification code emailed and returns its `verificationCodeID`
    /// (ThreatWinds only).
    async fn request_new_code(
        &self,
        api_key: &str,
        api_secret: &SecretString,
    ) -> Result<String, ProviderError>;

    /// Changes a key pair (Datonis only).
    async fn update(
        &self,
        key_id: &str,
        req: &UpdateKeyPair,
    ) -> Result<RemoteKeyPair, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn both_clients_work_as_trait_objects() {
        let clients: Vec<Arc<dyn KeyPairApi>> = vec![
            Arc::new(
                ThreatWindsClient::new(
                    "http://127.0.0.1:1",
                    SecretString::from("token-value-123"),
                    HttpOptions::default(),
                )
                .expect("threatwinds"),
            ),
            Arc::new(
                DatonisClient::new(
                    "http://127.0.0.1:1",
                    DatonisCredentials::Token(SecretString::from("token-value-123")),
                    HttpOptions::default(),
                )
                .expect("datonis"),
            ),
        ];
        let kinds: Vec<String> = clients.iter().map(|c| c.kind().to_string()).collect();
        assert_eq!(kinds, ["threatwinds", "datonis"]);
    }

    #[test]
    fn created_key_pair_debug_hides_every_secret() {
        let created = CreatedKeyPair {
            key: RemoteKeyPair {
                key_id: "k".into(),
                api_key: "a".into(),
                api_secret: Some(SecretString::from("remote-secret-value")),
                ..RemoteKeyPair::default()
            },
            api_secret: SecretString::from("created-secret-value"),
            verification_code_id: Some("v".into()),
        };
        let debug = format!("{created:?}");
        assert!(!debug.contains("remote-secret-value"), "{debug}");
        assert!(!debug.contains("created-secret-value"), "{debug}");
        let lookup = KeyLookup {
            key_id: "k".into(),
            api_key: "a".into(),
            api_secret: Some(SecretString::from("lookup-secret-value")),
        };
        assert!(!format!("{lookup:?}").contains("lookup-secret-value"));
    }
}
