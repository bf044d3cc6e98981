//! Datonis v3 `key_pairs` client.
//!
//! Calls authenticate with an `X-Auth-Token` from `POST /api_sign_in`. The token expires
//! after 30 minutes of inactivity, so with password credentials the client signs in
//! lazily, caches the token, and on a 401 signs in again once and repeats the call. A
//! generation counter makes concurrent calls that all saw the same stale token share one
//! new sign-in instead of each doing their own.

use crate::provider::http::{Call, ErrorDialect, HttpLayer, HttpOptions};
use crate::provider::{
    CreateKeyPair, CreatedKeyPair, CredentialStatus, KeyLookup, KeyPairApi, ProviderError,
    ProviderKind, RemoteKeyPair, UpdateKeyPair, lenient, redact,
};
use chrono::{DateTime, Days, NaiveDate, Utc};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use tokio::sync::Mutex;

/// How `expiry_date` is written in requests.
///
/// The docs only show `"09/09/2016"`, which does not say whether the day or the month
/// comes first. Day first is chosen: Datonis is an Indian product (its examples answer in
/// India time), and India writes dates day first; the sandbox follows the same choice.
/// Changing this one constant switches every request.
pub const EXPIRY_DATE_FORMAT: &str = "%d/%m/%Y";

/// Page size `list()` asks for; the docs' default is 20. Kept modest because every item
/// carries a secret that must be decoded and zeroed.
const DEFAULT_LIST_PAGE_SIZE: u32 = 100;

/// Most pages `list()` reads before deciding the server is looping.
const MAX_LIST_PAGES: u32 = 10_000;

/// Path of the key-pair collection.
const KEY_PAIRS: [&str; 3] = ["api", "v3", "key_pairs"];

/// How the client authenticates.
#[derive(Clone)]
pub enum DatonisCredentials {
    /// Sign in with these (and again whenever the token expires).
    Password {
        /// Account email.
        email: String,
        /// Account password.
        password: SecretString,
    },
    /// A ready auth token; when it expires, calls fail with `Unauthorized`.
    Token(SecretString),
}

impl fmt::Debug for DatonisCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatonisCredentials::Password { email, .. } => f
                .debug_struct("Password")
                .field("email", email)
                .field("password", &"[redacted]")
                .finish(),
            DatonisCredentials::Token(_) => f.debug_tuple("Token").field(&"[redacted]").finish(),
        }
    }
}

/// Sort direction for [`ListQuery::order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    /// Ascending.
    Asc,
    /// Descending.
    Desc,
}

/// Timestamp format for [`ListQuery::timestamp_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampFormat {
    /// Unix seconds (the default).
    Int,
    /// `yyyy/mm/dd hh:mm:ss` strings.
    Str,
}

/// One page request of `GET /api/v3/key_pairs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Page number, from 1.
    pub page: u32,
    /// Items per page.
    pub per: u32,
    /// Search keywords (Datonis searches `key_pair_key`).
    pub search: Option<String>,
    /// Field to sort on.
    pub order_by: Option<String>,
    /// Sort direction.
    pub order: Option<SortOrder>,
    /// Timestamp format of `created_at` / `updated_at` (both are parsed either way).
    pub timestamp_format: Option<TimestampFormat>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            page: 1,
            per: 20,
            search: None,
            order_by: None,
            order: None,
            timestamp_format: None,
        }
    }
}

/// One page of key pairs.
#[derive(Debug, Clone)]
pub struct Page {
    /// Total number of matching key pairs, when the server says.
    pub total_count: Option<u64>,
    /// The page number the server says this is (the requested one if it does not say).
    pub page: u32,
    /// The key pairs on this page.
    pub key_pairs: Vec<RemoteKeyPair>,
}

/// The cached auth token and how many times it has been replaced.
struct TokenState {
    token: Option<SecretString>,
    generation: u64,
}

/// A Datonis client for one account.
#[derive(Clone)]
pub struct DatonisClient {
    http: HttpLayer,
    credentials: DatonisCredentials,
    state: Arc<Mutex<TokenState>>,
    page_size: u32,
}

impl fmt::Debug for DatonisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatonisClient")
            .field("base_url", &self.http.base_url().as_str())
            .field("credentials", &self.credentials)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

/// A key pair as every endpoint returns it.
#[derive(Deserialize)]
struct KeyPairWire {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    key_pair_key: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    access_key: Option<String>,
    #[serde(default)]
    secret_key: Option<SecretString>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    expiry_date: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    updated_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    role_name: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    role_key: Option<String>,
}

/// `{"key_pair": {...}}`: the answer of get, create and update.
#[derive(Deserialize)]
struct OneWire {
    key_pair: KeyPairWire,
}

/// The answer of list.
#[derive(Deserialize)]
struct PageWire {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    total_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    page: Option<u64>,
    #[serde(deserialize_with = "lenient::required_list")]
    key_pairs: Vec<KeyPairWire>,
}

/// The answer of `POST /api_sign_in`.
#[derive(Deserialize)]
struct SignInWire {
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    success: Option<bool>,
    #[serde(default)]
    auth_token: Option<SecretString>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    message: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    error: Option<String>,
}

#[derive(Serialize)]
struct SignInBody<'a> {
    email: &'a str,
    password: &'a str,
}

/// `{"key_pair": {...}}`: the body of create and update. `role_key` sits inside the
/// object for both (the update example also shows it beside; inside is what create uses).
#[derive(Serialize)]
struct KeyPairBody {
    key_pair: KeyPairFields,
}

#[derive(Serialize, Default)]
struct KeyPairFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    expiry_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role_key: Option<String>,
}

/// Writes a date the way requests carry `expiry_date`.
pub(crate) fn format_expiry_date(date: NaiveDate) -> String {
    date.format(EXPIRY_DATE_FORMAT).to_string()
}

fn unexpected(op: &'static str, what: &str) -> ProviderError {
    ProviderError::UnexpectedResponse {
        status: 200,
        message: format!("datonis {op}: {what}"),
        excerpt: String::new(),
    }
}

/// Provider-neutral view; `key_pair_key` falls back to `access_key` (the docs show them
/// equal), and a key pair with neither is not usable.
fn remote(op: &'static str, w: KeyPairWire) -> Result<RemoteKeyPair, ProviderError> {
    let key_id = w
        .key_pair_key
        .clone()
        .or_else(|| w.access_key.clone())
        .ok_or_else(|| unexpected(op, "key pair without key_pair_key"))?;
    Ok(RemoteKeyPair {
        api_key: w.access_key.unwrap_or_else(|| key_id.clone()),
        key_id,
        name: None,
        expire_at: w.expiry_date,
        verified: None,
        enabled: w.enabled,
        role_key: w.role_key,
        role_name: w.role_name,
        roles: Vec::new(),
        groups: Vec::new(),
        created_at: w.created_at,
        updated_at: w.updated_at,
        api_secret: w.secret_key,
    })
}

fn require_id(op: &'static str, id: &str) -> Result<(), ProviderError> {
    if id.trim().is_empty() {
        return Err(ProviderError::BadRequest {
            message: format!("datonis {op}: key pair key is empty"),
            error_id: None,
        });
    }
    Ok(())
}

impl DatonisClient {
    /// A client for `base_url` (e.g. `https://api.datonis.io`). Nothing is sent until the
    /// first call.
    pub fn new(
        base_url: &str,
        credentials: DatonisCredentials,
        options: HttpOptions,
    ) -> Result<Self, ProviderError> {
        let http = HttpLayer::new(
            ProviderKind::Datonis,
            ErrorDialect::Datonis,
            base_url,
            &[],
            &options,
        )?;
        let token = match &credentials {
            DatonisCredentials::Token(t) => Some(t.clone()),
            DatonisCredentials::Password { .. } => None,
        };
        Ok(DatonisClient {
            http,
            credentials,
            state: Arc::new(Mutex::new(TokenState {
                token,
                generation: 0,
            })),
            page_size: DEFAULT_LIST_PAGE_SIZE,
        })
    }

    /// Sets the page size `list()` uses (at least 1).
    pub fn with_page_size(mut self, per: u32) -> Self {
        self.page_size = per.max(1);
        self
    }

    /// `POST /api_sign_in`; a 2xx with `success: false` counts as wrong credentials.
    /// `op` names the call that needed the token, for the no-password error; the sign-in's
    /// own errors say `datonis sign in`.
    async fn sign_in(&self, op: &'static str) -> Result<SecretString, ProviderError> {
        let DatonisCredentials::Password { email, password } = &self.credentials else {
            return Err(ProviderError::Unauthorized {
                message: format!(
                    "datonis {op}: the auth token was refused and no password is configured to sign in again"
                ),
                error_id: None,
            });
        };
        let op = "sign in";
        let call = Call::new(op, Method::POST, &["api_sign_in"])
            .json(&SignInBody {
                email,
                password: password.expose_secret(),
            })?
            .secret(password);
        let w: SignInWire = self.http.send(call).await?;
        if w.success == Some(false) {
            let said = w
                .error
                .or(w.message)
                .unwrap_or_else(|| "sign-in refused".into());
            return Err(ProviderError::Unauthorized {
                message: format!("datonis {op}: {}", redact::message(&said, &[password])),
                error_id: None,
            });
        }
        w.auth_token
            .filter(|t| !t.expose_secret().is_empty())
            .ok_or_else(|| unexpected(op, "sign-in answer has no auth_token"))
    }

    /// The cached token (signing in first if there is none) and its generation.
    async fn token(&self, op: &'static str) -> Result<(SecretString, u64), ProviderError> {
        let mut state = self.state.lock().await;
        if let Some(t) = &state.token {
            return Ok((t.clone(), state.generation));
        }
        let t = self.sign_in(op).await?;
        state.token = Some(t.clone());
        state.generation += 1;
        Ok((t, state.generation))
    }

    /// After a 401 with the token of generation `failed`: signs in again, unless another
    /// call already did (then its token is used).
    async fn renew(&self, op: &'static str, failed: u64) -> Result<SecretString, ProviderError> {
        let mut state = self.state.lock().await;
        if state.generation != failed
            && let Some(t) = &state.token
        {
            return Ok(t.clone());
        }
        state.token = None;
        let t = self.sign_in(op).await?;
        state.token = Some(t.clone());
        state.generation += 1;
        Ok(t)
    }

    /// Sends `call` with the auth token; on a 401 (password credentials only) signs in
    /// again once and repeats it.
    async fn authed<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, ProviderError> {
        let op = call.op();
        let (token, generation) = self.token(op).await?;
        let first = call.clone().secret_header("x-auth-token", "", &token)?;
        match self.http.send(first).await {
            Err(ProviderError::Unauthorized { .. })
                if matches!(self.credentials, DatonisCredentials::Password { .. }) =>
            {
                tracing::debug!(op, "datonis auth token refused; signing in again");
                let token = self.renew(op, generation).await?;
                let again = call.secret_header("x-auth-token", "", &token)?;
                self.http.send(again).await
            }
            other => other,
        }
    }

    /// `GET /api/v3/key_pairs` for one page.
    pub async fn list_page(&self, query: &ListQuery) -> Result<Page, ProviderError> {
        self.list_page_op("list", query).await
    }

    async fn list_page_op(
        &self,
        op: &'static str,
        query: &ListQuery,
    ) -> Result<Page, ProviderError> {
        let mut call = Call::new(op, Method::GET, &KEY_PAIRS)
            .query("page", query.page.to_string())
            .query("per", query.per.to_string());
        if let Some(s) = &query.search {
            call = call.query("search", s.clone());
        }
        if let Some(o) = &query.order_by {
            call = call.query("order_by", o.clone());
        }
        if let Some(o) = query.order {
            call = call.query(
                "order",
                match o {
                    SortOrder::Asc => "asc",
                    SortOrder::Desc => "desc",
                },
            );
        }
        if let Some(f) = query.timestamp_format {
            call = call.query(
                "timestamp_format",
                match f {
                    TimestampFormat::Int => "int",
                    TimestampFormat::Str => "str",
                },
            );
        }
        let w: PageWire = self.authed(call).await?;
        Ok(Page {
            total_count: w.total_count,
            page: w
                .page
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(query.page),
            key_pairs: w
                .key_pairs
                .into_iter()
                .map(|k| remote(op, k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Sends a `{"key_pair": ...}` write and reads the `{"key_pair": ...}` answer.
    async fn write(
        &self,
        op: &'static str,
        method: Method,
        path: &[&str],
        fields: KeyPairFields,
    ) -> Result<RemoteKeyPair, ProviderError> {
        let call = Call::new(op, method, path).json(&KeyPairBody { key_pair: fields })?;
        let w: OneWire = self.authed(call).await?;
        remote(op, w.key_pair)
    }
}

#[async_trait::async_trait]
impl KeyPairApi for DatonisClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Datonis
    }

    async fn check_credentials(&self) -> Result<CredentialStatus, ProviderError> {
        let op = "check credentials";
        match &self.credentials {
            DatonisCredentials::Password { .. } => {
                // A fresh sign-in is the only real test of the password; the new token
                // replaces the cached one.
                let mut state = self.state.lock().await;
                let t = self.sign_in(op).await?;
                state.token = Some(t);
                state.generation += 1;
            }
            DatonisCredentials::Token(_) => {
                let query = ListQuery {
                    per: 1,
                    ..ListQuery::default()
                };
                self.list_page_op(op, &query).await?;
            }
        }
        Ok(CredentialStatus {
            verified: true,
            expire_at: None,
        })
    }

    async fn create(&self, req: &CreateKeyPair) -> Result<CreatedKeyPair, ProviderError> {
        let op = "create";
        let expiry = Utc::now()
            .date_naive()
            .checked_add_days(Days::new(u64::from(req.validity_days)))
            .ok_or_else(|| ProviderError::BadRequest {
                message: format!(
                    "datonis {op}: validity of {} days is out of range",
                    req.validity_days
                ),
                error_id: None,
            })?;
        let mut key = self
            .write(
                op,
                Method::POST,
                &KEY_PAIRS,
                KeyPairFields {
                    expiry_date: Some(format_expiry_date(expiry)),
                    enabled: None,
                    role_key: req.role_key.clone(),
                },
            )
            .await?;
        let api_secret = key.api_secret.clone().ok_or_else(|| {
            unexpected(
                op,
                "answer has no secret_key; the key pair may exist without a usable secret",
            )
        })?;
        key.name = None;
        Ok(CreatedKeyPair {
            key,
            api_secret,
            verification_code_id: None,
        })
    }

    async fn get(&self, lookup: &KeyLookup) -> Result<RemoteKeyPair, ProviderError> {
        let op = "get";
        require_id(op, &lookup.key_id)?;
        let [a, b, c] = KEY_PAIRS;
        let w: OneWire = self
            .authed(Call::new(op, Method::GET, &[a, b, c, &lookup.key_id]))
            .await?;
        remote(op, w.key_pair)
    }

    async fn list(&self) -> Result<Vec<RemoteKeyPair>, ProviderError> {
        let op = "list";
        let mut all = Vec::new();
        let mut seen = HashSet::new();
        for page in 1..=MAX_LIST_PAGES {
            let query = ListQuery {
                page,
                per: self.page_size,
                ..ListQuery::default()
            };
            let p = self.list_page_op(op, &query).await?;
            let count = p.key_pairs.len();
            if count == 0 {
                return Ok(all);
            }
            let before = all.len();
            for k in p.key_pairs {
                if seen.insert(k.key_id.clone()) {
                    all.push(k);
                }
            }
            if all.len() == before {
                // Nothing new: the server ignores `page` (or repeats the last one).
                return Ok(all);
            }
            // The total alone is not trusted (it may be stale or wrong): stop when it is
            // reached *and* the page was short; a full page means there may be more, which
            // costs one extra (empty) request at worst.
            let reached = p.total_count.is_some_and(|t| all.len() as u64 >= t);
            if reached && (count as u64) < u64::from(self.page_size) {
                return Ok(all);
            }
        }
        Err(unexpected(
            op,
            &format!("still returning new key pairs after {MAX_LIST_PAGES} pages"),
        ))
    }

    async fn delete(&self, key_id: &str) -> Result<(), ProviderError> {
        let op = "delete";
        require_id(op, key_id)?;
        let [a, b, c] = KEY_PAIRS;
        let _: IgnoredAny = self
            .authed(Call::new(op, Method::DELETE, &[a, b, c, key_id]))
            .await?;
        Ok(())
    }

    async fn verify(
        &self,
        _verification_code_id: &str,
        _code: &SecretString,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported {
            operation: "datonis verify",
        })
    }

    async fn request_new_code(
        &self,
        _api_key: &str,
        _api_secret: &SecretString,
    ) -> Result<String, ProviderError> {
        Err(ProviderError::Unsupported {
            operation: "datonis new code",
        })
    }

    async fn update(
        &self,
        key_id: &str,
        req: &UpdateKeyPair,
    ) -> Result<RemoteKeyPair, ProviderError> {
        let op = "update";
        require_id(op, key_id)?;
        if req.enabled.is_none() && req.expiry_date.is_none() && req.role_key.is_none() {
            // Nothing to change: an empty `key_pair` object may be rejected, and reading
            // gives the same answer.
            return self
                .get(&KeyLookup {
                    key_id: key_id.to_owned(),
                    api_key: String::new(),
                    api_secret: None,
                })
                .await;
        }
        let [a, b, c] = KEY_PAIRS;
        self.write(
            op,
            Method::PUT,
            &[a, b, c, key_id],
            KeyPairFields {
                expiry_date: req.expiry_date.map(format_expiry_date),
                enabled: req.enabled,
                role_key: req.role_key.clone(),
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "fte4bc52f791eb8513ac71a52ff5463t1bbf2tf9";

    #[test]
    fn page_with_int_timestamps_and_bool_enabled() {
        let body = format!(
            r#"{{"total_count":3,"page":1,"key_pairs":[{{"access_key":"t711","enabled":false,
            "expiry_date":"2015-10-29T18:30:00.000Z","secret_key":"{SECRET}","key_pair_key":"t711",
            "created_at":1446017446,"updated_at":1446104758,"role_name":"Agent","role_key":"1946c4ce5c"}}]}}"#
        );
        let w: PageWire = serde_json::from_str(&body).expect("decode");
        assert_eq!(w.total_count, Some(3));
        assert_eq!(w.page, Some(1));
        let k = remote("list", w.key_pairs.into_iter().next().expect("one")).expect("remote");
        assert_eq!(k.key_id, "t711");
        assert_eq!(k.enabled, Some(false));
        assert_eq!(
            k.expire_at.map(|d| d.to_rfc3339()),
            Some("2015-10-29T18:30:00+00:00".into())
        );
        assert_eq!(k.created_at.map(|d| d.timestamp()), Some(1446017446));
        assert_eq!(k.role_key.as_deref(), Some("1946c4ce5c"));
        assert_eq!(
            k.api_secret.as_ref().map(|s| s.expose_secret().to_owned()),
            Some(SECRET.to_owned())
        );
        assert!(!format!("{k:?}").contains(SECRET));
    }

    #[test]
    fn page_with_string_page_str_timestamps_and_string_enabled() {
        let body = r#"{"total_count":"3","page":"2","key_pairs":[{"access_key":"e98f",
            "enabled":"true","expiry_date":"2015-11-05T18:30:00.000Z","key_pair_key":"e98f",
            "created_at":"2015/10/29 07:39:32","updated_at":"2015/10/29 07:39:32"}]}"#;
        let w: PageWire = serde_json::from_str(body).expect("decode");
        assert_eq!(w.total_count, Some(3));
        assert_eq!(w.page, Some(2));
        let k = remote("list", w.key_pairs.into_iter().next().expect("one")).expect("remote");
        assert_eq!(k.enabled, Some(true));
        assert_eq!(
            k.created_at.map(|d| d.to_rfc3339()),
            Some("2015-10-29T07:39:32+00:00".into())
        );
        assert!(k.api_secret.is_none());
    }

    #[test]
    fn page_without_key_pairs_is_rejected_and_null_is_empty() {
        assert!(serde_json::from_str::<PageWire>(r#"{"total_count":0}"#).is_err());
        let w: PageWire =
            serde_json::from_str(r#"{"total_count":0,"key_pairs":null}"#).expect("decode");
        assert!(w.key_pairs.is_empty());
    }

    #[test]
    fn key_pair_key_falls_back_to_access_key() {
        let w: KeyPairWire = serde_json::from_str(r#"{"access_key":"abc"}"#).expect("decode");
        assert_eq!(remote("get", w).expect("remote").key_id, "abc");
        let w: KeyPairWire = serde_json::from_str(r#"{"enabled":true}"#).expect("decode");
        assert!(matches!(
            remote("get", w),
            Err(ProviderError::UnexpectedResponse { .. })
        ));
    }

    #[test]
    fn request_bodies_have_the_documented_shape() {
        let date = NaiveDate::from_ymd_opt(2016, 9, 9).expect("date");
        assert_eq!(format_expiry_date(date), "09/09/2016");
        let date = NaiveDate::from_ymd_opt(2016, 2, 1).expect("date");
        assert_eq!(format_expiry_date(date), "01/02/2016");
        let body = KeyPairBody {
            key_pair: KeyPairFields {
                expiry_date: Some(format_expiry_date(date)),
                enabled: Some(false),
                role_key: Some("517d8e4695".into()),
            },
        };
        assert_eq!(
            serde_json::to_string(&body).expect("encode"),
            r#"{"key_pair":{"expiry_date":"01/02/2016","enabled":false,"role_key":"517d8e4695"}}"#
        );
        let body = KeyPairBody {
            key_pair: KeyPairFields::default(),
        };
        assert_eq!(
            serde_json::to_string(&body).expect("encode"),
            r#"{"key_pair":{}}"#
        );
    }

    #[test]
    fn sign_in_answer_and_debug_output_hide_secrets() {
        let w: SignInWire =
            serde_json::from_str(r#"{"success":true,"auth_token":"WtUFnj8pvSxVnH9e_xkq7A"}"#)
                .expect("decode");
        assert_eq!(w.success, Some(true));
        let t = w.auth_token.expect("token");
        assert!(!format!("{t:?}").contains("WtUFnj8pvSxVnH9e_xkq7A"));

        let password = "correct horse battery staple";
        let c = DatonisClient::new(
            "http://127.0.0.1:1",
            DatonisCredentials::Password {
                email: "ops@example.com".into(),
                password: SecretString::from(password),
            },
            HttpOptions::default(),
        )
        .expect("client");
        let debug = format!("{c:?}");
        assert!(!debug.contains(password), "{debug}");
        assert!(debug.contains("ops@example.com"), "{debug}");
        let token = "tokentokentoken-123";
        let c = DatonisClient::new(
            "http://127.0.0.1:1",
            DatonisCredentials::Token(SecretString::from(token)),
            HttpOptions::default(),
        )
        .expect("client");
        assert!(!format!("{c:?}").contains(token));
    }

    #[tokio::test]
    async fn unsupported_operations() {
        let c = DatonisClient::new(
            "http://127.0.0.1:1",
            DatonisCredentials::Token(SecretString::from("t")),
            HttpOptions::default(),
        )
        .expect("client");
        let code = SecretString::from("123456");
        assert_eq!(
            c.verify("id", &code).await,
            Err(ProviderError::Unsupported {
                operation: "datonis verify"
            })
        );
        assert_eq!(
            c.request_new_code("k", &code).await,
            Err(ProviderError::Unsupported {
                operation: "datonis new code"
            })
        );
        assert!(matches!(
            c.delete("").await,
            Err(ProviderError::BadRequest { .. })
        ));
    }
}
