//! The HTTP layer shared by every endpoint of both providers.
//!
//! [`HttpLayer::send`] is the only place that talks to the network: it builds the URL and
//! request, applies the timeouts, maps transport failures, reads the body (bounded, and
//! zeroed after use because it may hold secrets), maps every non-2xx status to a
//! [`ProviderError`] using the provider's error dialect, and decodes a 2xx body into the
//! endpoint's type. Endpoints only describe their request ([`Call`]) and response type, so
//! no status or error handling is repeated per endpoint or per provider.

use crate::provider::{ProviderError, ProviderKind, redact};
use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::error::Error as _;
use std::sync::Once;
use std::time::{Duration, Instant};
use url::Url;
use zeroize::Zeroizing;

/// Largest response body read; a provider answer is a few KiB, so more is a broken server.
/// The sandbox's `oversized` fault sends more than this.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Longest `Retry-After` honoured: a broken header must not park a resource for years.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Timeouts, identity and request rate of the HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Whole-request deadline: connect, send, and read the full body.
    pub timeout: Duration,
    /// Deadline for establishing the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
    /// A limit every request waits for, shared by all clients given the same limiter.
    pub rate_limiter: Option<RateLimiter>,
}

/// A token bucket that every request of a client waits for, including the ones a client
/// makes on its own (a Datonis sign-in), so that the provider never sees more than the
/// configured rate. Clones share one bucket.
#[derive(Clone)]
pub struct RateLimiter(std::sync::Arc<governor::DefaultDirectRateLimiter>);

impl RateLimiter {
    /// `requests_per_second` sustained, up to `burst` at once after a quiet period.
    pub fn new(requests_per_second: f64, burst: u32) -> Self {
        let period = Duration::from_secs_f64(1.0 / requests_per_second.max(0.0001));
        let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(burst);
        RateLimiter(std::sync::Arc::new(
            governor::DefaultDirectRateLimiter::direct(quota),
        ))
    }

    /// Waits until a request may be sent.
    pub async fn until_ready(&self) {
        self.0.until_ready().await;
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimiter")
    }
}

impl PartialEq for RateLimiter {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RateLimiter {}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            user_agent: concat!("keypair-operator/", env!("CARGO_PKG_VERSION")).to_owned(),
            rate_limiter: None,
        }
    }
}

/// How a provider reports errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorDialect {
    /// `x-error` / `x-error-id` headers (current page) or a JSON body `{uuid, error}`
    /// (detailed page); both are accepted on every response.
    ThreatWinds,
    /// JSON `{"error": ...}`, `{"errors": [...]}` or `{"message": ...}`.
    Datonis,
}

/// One request, described by an endpoint; [`HttpLayer::send`] does the rest. Cloning it
/// lets a caller repeat the request (e.g. after signing in again).
#[derive(Clone)]
pub(crate) struct Call<'a> {
    op: &'static str,
    method: Method,
    path: Vec<&'a str>,
    query: Vec<(&'static str, String)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Vec<u8>>,
    secrets: Vec<&'a SecretString>,
}

impl<'a> Call<'a> {
    /// A request for operation `op` (used in messages) to `path` below the base URL; each
    /// element is one path segment and is percent-encoded.
    pub(crate) fn new(op: &'static str, method: Method, path: &[&'a str]) -> Self {
        Call {
            op,
            method,
            path: path.to_vec(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            secrets: Vec::new(),
        }
    }

    /// The operation name, as used in messages.
    pub(crate) fn op(&self) -> &'static str {
        self.op
    }

    /// Adds a query parameter.
    pub(crate) fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }

    /// Adds a plain header.
    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Result<Self, ProviderError> {
        let value = HeaderValue::from_str(value).map_err(|_| self.invalid_header(name))?;
        self.headers.push((HeaderName::from_static(name), value));
        Ok(self)
    }

    /// Adds a header carrying a secret (`prefix` + secret). The value is marked sensitive
    /// (hyper and reqwest never print it) and the secret is scrubbed from any error text.
    pub(crate) fn secret_header(
        mut self,
        name: &'static str,
        prefix: &str,
        secret: &'a SecretString,
    ) -> Result<Self, ProviderError> {
        let raw = Zeroizing::new(format!("{prefix}{}", secret.expose_secret()));
        let mut value = HeaderValue::from_str(&raw).map_err(|_| self.invalid_header(name))?;
        value.set_sensitive(true);
        self.headers.push((HeaderName::from_static(name), value));
        self.secrets.push(secret);
        Ok(self)
    }

    /// Sets a JSON body.
    pub(crate) fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Result<Self, ProviderError> {
        let bytes = serde_json::to_vec(body).map_err(|_| ProviderError::BadRequest {
            message: format!("{}: could not encode the request body", self.op),
            error_id: None,
        })?;
        self.body = Some(bytes);
        Ok(self)
    }

    /// Registers a secret sent in the body, so it is scrubbed from any error text.
    pub(crate) fn secret(mut self, secret: &'a SecretString) -> Self {
        self.secrets.push(secret);
        self
    }

    fn invalid_header(&self, name: &str) -> ProviderError {
        // Never echo the value: it may be a secret.
        ProviderError::BadRequest {
            message: format!(
                "{}: value for header {name} has invalid characters",
                self.op
            ),
            error_id: None,
        }
    }
}

/// A `reqwest::Client` bound to one provider's base URL and error dialect.
#[derive(Clone)]
pub(crate) struct HttpLayer {
    client: reqwest::Client,
    base: Url,
    provider: ProviderKind,
    dialect: ErrorDialect,
    rate_limiter: Option<RateLimiter>,
}

impl std::fmt::Debug for HttpLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpLayer")
            .field("provider", &self.provider)
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

static CRYPTO_PROVIDER: Once = Once::new();

/// reqwest is built with `rustls-no-provider`, so a process-wide rustls crypto provider
/// must exist before the first client is built; installing it here means no caller can
/// forget. An already-installed provider (e.g. by the binary) is kept.
pub fn install_crypto_provider() {
    CRYPTO_PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl HttpLayer {
    /// Builds the client. `base_url` must be an `http(s)` URL without credentials, query
    /// or fragment; `base_path` segments are appended to it (unless it already ends with
    /// them).
    pub(crate) fn new(
        provider: ProviderKind,
        dialect: ErrorDialect,
        base_url: &str,
        base_path: &[&str],
        options: &HttpOptions,
    ) -> Result<Self, ProviderError> {
        let config_error = |what: &str| ProviderError::BadRequest {
            message: format!("{provider}: {what}"),
            error_id: None,
        };
        let mut base = Url::parse(base_url.trim())
            .map_err(|e| config_error(&format!("invalid base URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(config_error("base URL must be an http(s) URL with a host"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            // Credentials in a URL end up in logs; the providers use headers anyway.
            return Err(config_error("base URL must not contain credentials"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(config_error("base URL must not have a query or fragment"));
        }
        let existing: Vec<String> = base
            .path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        let already = existing.len() >= base_path.len()
            && existing[existing.len() - base_path.len()..]
                .iter()
                .zip(base_path)
                .all(|(a, b)| a.eq_ignore_ascii_case(b));
        {
            let mut segs = base
                .path_segments_mut()
                .map_err(|_| config_error("base URL cannot have a path"))?;
            segs.clear().extend(existing.iter());
            if !already {
                segs.extend(base_path);
            }
        }

        install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(options.user_agent.clone())
            // A redirect would resend `api-secret` / `X-Auth-Token` headers (which reqwest
            // does not strip) to wherever the server points; no documented endpoint
            // redirects, so a 3xx is reported instead of followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| config_error(&format!("could not build the HTTP client: {e}")))?;
        Ok(HttpLayer {
            client,
            base,
            provider,
            dialect,
            rate_limiter: options.rate_limiter.clone(),
        })
    }

    /// The base URL every path is appended to.
    pub(crate) fn base_url(&self) -> &Url {
        &self.base
    }

    /// `"<provider> <op>"`, the prefix of every message.
    fn context(&self, op: &str) -> String {
        format!("{} {op}", self.provider)
    }

    fn url(&self, call: &Call<'_>) -> Result<Url, ProviderError> {
        let mut url = self.base.clone();
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| ProviderError::BadRequest {
                    message: format!("{}: base URL cannot have a path", self.context(call.op)),
                    error_id: None,
                })?;
            segs.pop_if_empty();
            for s in &call.path {
                segs.push(s);
            }
        }
        if !call.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(call.query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// Sends `call` and decodes a 2xx JSON body into `T` (an empty body decodes as
    /// `null`, so `Option<_>` and `serde::de::IgnoredAny` accept it). Every other outcome
    /// is a [`ProviderError`].
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
    ) -> Result<T, ProviderError> {
        self.send_with_status(call).await.map(|(_, value)| value)
    }

    /// Like [`HttpLayer::send`], and also returns the 2xx status, so that a caller that
    /// finds a decoded answer unusable (no secret, no id) can report the status it got:
    /// a 2xx means a write was applied ([`ProviderError::may_have_committed`]).
    pub(crate) async fn send_with_status<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
    ) -> Result<(u16, T), ProviderError> {
        let url = self.url(&call)?;
        let Call {
            op,
            method,
            headers,
            body,
            secrets,
            ..
        } = call;
        let secrets = &secrets[..];
        if let Some(limiter) = &self.rate_limiter {
            limiter.until_ready().await;
        }
        let started = Instant::now();
        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .header(ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }

        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(op, &e, secrets)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = self.read_body(op, response, secrets).await?;
        tracing::debug!(
            provider = %self.provider,
            op,
            method = %method,
            path = url.path(),
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provider call"
        );

        if !status.is_success() {
            return Err(self.status_error(op, status, &headers, &body, secrets));
        }
        let value = decode(self.provider, op, status.as_u16(), &body, secrets)?;
        Ok((status.as_u16(), value))
    }

    /// Reads the whole body into a buffer that is zeroed on drop (it may hold secrets).
    async fn read_body(
        &self,
        op: &str,
        mut response: reqwest::Response,
        secrets: &[&SecretString],
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let status = response.status().as_u16();
        let mut body = Zeroizing::new(Vec::new());
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Err(ProviderError::UnexpectedResponse {
                            status,
                            message: format!(
                                "{}: response body larger than {MAX_BODY_BYTES} bytes",
                                self.context(op)
                            ),
                            excerpt: redact::excerpt(&body, secrets),
                        });
                    }
                    // Grow by hand so a reallocation never leaves an unzeroed copy behind.
                    if body.capacity() < body.len() + chunk.len() {
                        let mut bigger = Zeroizing::new(Vec::with_capacity(
                            (body.len() + chunk.len()).max(body.capacity() * 2),
                        ));
                        bigger.extend_from_slice(&body);
                        body = bigger;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(self.transport_error(op, &e, secrets)),
            }
        }
    }

    fn transport_error(
        &self,
        op: &str,
        e: &reqwest::Error,
        secrets: &[&SecretString],
    ) -> ProviderError {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else if e.is_body() || e.is_decode() {
            "connection broke while reading the response"
        } else if e.is_builder() {
            "could not build the request"
        } else {
            "request failed"
        };
        // The innermost cause says the most ("connection refused", "operation timed out")
        // and, unlike reqwest's own Display, carries no URL.
        let mut cause: Option<String> = None;
        let mut source = e.source();
        while let Some(s) = source {
            cause = Some(s.to_string());
            source = s.source();
        }
        let message = match cause {
            Some(c) if !c.is_empty() => format!("{kind}: {}", redact::message(&c, secrets)),
            _ => kind.to_owned(),
        };
        ProviderError::Transport {
            message: format!("{}: {message}", self.context(op)),
        }
    }

    fn status_error(
        &self,
        op: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        secrets: &[&SecretString],
    ) -> ProviderError {
        status_error(
            self.provider,
            self.dialect,
            op,
            status,
            headers,
            body,
            secrets,
        )
    }
}

/// Decodes a 2xx JSON body into `T` (an empty or all-whitespace body decodes as `null`).
/// A body of another shape is an [`ProviderError::UnexpectedResponse`] with `status` and a
/// redacted excerpt; serde's own message is not used, as it may quote a secret.
pub(crate) fn decode<T: DeserializeOwned>(
    provider: ProviderKind,
    op: &str,
    status: u16,
    body: &[u8],
    secrets: &[&SecretString],
) -> Result<T, ProviderError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        body
    };
    serde_json::from_slice::<T>(text).map_err(|e| ProviderError::UnexpectedResponse {
        status,
        // Only the category and position: serde's own message quotes the offending
        // value, which may be a secret.
        message: format!(
            "{provider} {op}: response does not match the documented shape ({} error at line {} column {})",
            match e.classify() {
                serde_json::error::Category::Io => "io",
                serde_json::error::Category::Syntax => "syntax",
                serde_json::error::Category::Data => "data",
                serde_json::error::Category::Eof => "truncated body",
            },
            e.line(),
            e.column()
        ),
        excerpt: redact::excerpt(body, secrets),
    })
}

/// Maps a non-2xx answer to a [`ProviderError`] in the provider's error dialect: the
/// provider's message (redacted), its error id (sanitized) and `Retry-After` (403, 429,
/// 503).
pub(crate) fn status_error(
    provider: ProviderKind,
    dialect: ErrorDialect,
    op: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&SecretString],
) -> ProviderError {
    let context = format!("{provider} {op}");
    let code = status.as_u16();
    let (message, error_id) = extract_error(dialect, headers, body);
    let text = message
        .map(|m| redact::message(&m, secrets))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
        });
    let message = format!("{context}: HTTP {code}: {text}");
    // An id is shown as is, so a secret the request sent that a server echoes there goes,
    // also one the id's character filter would join up (`sec ret` is `secret` once the
    // space is dropped): scrubbed before and after filtering, cut to length only then.
    let error_id = error_id.and_then(|id| {
        let kept: String = redact::scrub_known(&id, secrets)
            .chars()
            .filter(|c| is_error_id_char(*c))
            .collect();
        sanitize_error_id(&redact::scrub_known(&kept, secrets))
    });
    let retry_after = if matches!(code, 403 | 429 | 503) {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()))
    } else {
        None
    };
    match code {
        401 => ProviderError::Unauthorized { message, error_id },
        403 => ProviderError::Forbidden {
            message,
            error_id,
            retry_after,
        },
        404 | 410 => ProviderError::NotFound { message, error_id },
        429 => ProviderError::RateLimited {
            message,
            retry_after,
        },
        // 408: the server gave up waiting for us; the same request may well succeed.
        408 | 500..=599 => ProviderError::Server {
            status: code,
            message,
            error_id,
            retry_after,
        },
        400..=499 => ProviderError::BadRequest { message, error_id },
        _ => ProviderError::UnexpectedResponse {
            status: code,
            message: format!("{context}: undocumented status {code}"),
            excerpt: redact::excerpt(body, secrets),
        },
    }
}

/// Pulls the provider's error message and id out of an error response.
///
/// Both dialects read the JSON body (`error`, `errors`, `message`; id from `uuid`,
/// `error_id`, `errorId`); ThreatWinds' `x-error` / `x-error-id` headers win when present.
/// A short non-JSON, non-HTML body is taken as the message.
pub(crate) fn extract_error(
    dialect: ErrorDialect,
    headers: &HeaderMap,
    body: &[u8],
) -> (Option<String>, Option<String>) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let (mut message, mut id) = match dialect {
        ErrorDialect::ThreatWinds => (header("x-error"), header("x-error-id")),
        ErrorDialect::Datonis => (None, None),
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => {
            if message.is_none() {
                message = ["error", "errors", "message", "msg", "detail"]
                    .iter()
                    .find_map(|k| map.get(*k).and_then(flatten_message));
            }
            if id.is_none() {
                id = ["uuid", "error_id", "errorId", "errorID"]
                    .iter()
                    .find_map(|k| map.get(*k).and_then(scalar_text));
            }
        }
        Ok(_) => {}
        Err(_) => {
            if message.is_none() {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if !text.is_empty() && text.len() <= 300 && !text.starts_with('<') {
                    message = Some(text.to_owned());
                }
            }
        }
    }
    (message, id)
}

/// A string or number as text.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An error field as one line: a string, a list of strings/objects, an object with a
/// message, or Rails-style `{field: [messages]}`.
fn flatten_message(v: &Value) -> Option<String> {
    match v {
        Value::String(_) | Value::Number(_) => scalar_text(v),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(flatten_message).collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        Value::Object(map) => {
            for k in ["message", "error", "detail", "description"] {
                if let Some(m) = map.get(k).and_then(flatten_message) {
                    return Some(m);
                }
            }
            let parts: Vec<String> = map
                .iter()
                // Never quote the value of a secret-looking field, even inside an error.
                .filter(|(k, _)| !redact::is_secret_key(k))
                .filter_map(|(k, v)| flatten_message(v).map(|m| format!("{k} {m}")))
                .collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        _ => None,
    }
}

/// Whether an error id keeps this character.
fn is_error_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// Keeps an error id short and printable (it is shown to users as is).
fn sanitize_error_id(id: &str) -> Option<String> {
    let clean: String = id
        .chars()
        .filter(|c| is_error_id_char(*c))
        .take(64)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

/// Parses `Retry-After`: delay-seconds (fractions tolerated) or an HTTP-date (IMF-fixdate,
/// RFC 850 or asctime), relative to `now`. A date in the past means "now" (zero); the
/// result is capped at one day.
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let at = DateTime::parse_from_rfc2822(v)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(v, f).ok())
                .map(|n| n.and_utc())
        })?;
    let delta = (at - now).to_std().unwrap_or(Duration::ZERO);
    Some(delta.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn layer(dialect: ErrorDialect) -> HttpLayer {
        let provider = match dialect {
            ErrorDialect::ThreatWinds => ProviderKind::Threatwinds,
            ErrorDialect::Datonis => ProviderKind::Datonis,
        };
        HttpLayer::new(
            provider,
            dialect,
            "http://127.0.0.1:1",
            &[],
            &HttpOptions::default(),
        )
        .expect("test layer")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn map(
        dialect: ErrorDialect,
        status: u16,
        hdrs: &[(&'static str, &str)],
        body: &str,
    ) -> ProviderError {
        let status = StatusCode::from_u16(status).expect("status");
        layer(dialect).status_error("create", status, &headers(hdrs), body.as_bytes(), &[])
    }

    const ID: &str = "7ae253bc-b1ca-4e8b-a5ca-268645e76f60";

    #[test]
    fn threatwinds_header_dialect_maps_every_status() {
        let tw = ErrorDialect::ThreatWinds;
        let h = [("x-error", "record not found"), ("x-error-id", ID)];
        let e = map(tw, 404, &h, "");
        assert!(matches!(e, ProviderError::NotFound { .. }), "{e:?}");
        assert_eq!(e.error_id(), Some(ID));
        assert_eq!(
            e.to_string(),
            format!("threatwinds create: HTTP 404: record not found (error id {ID})")
        );
        assert!(matches!(
            map(tw, 400, &h, ""),
            ProviderError::BadRequest { .. }
        ));
        assert!(matches!(
            map(tw, 401, &h, ""),
            ProviderError::Unauthorized { .. }
        ));
        assert!(matches!(
            map(tw, 403, &h, ""),
            ProviderError::Forbidden { .. }
        ));
        assert!(matches!(
            map(tw, 429, &h, ""),
            ProviderError::RateLimited { .. }
        ));
        for s in [500, 502, 503, 504] {
            let e = map(tw, s, &h, "");
            assert!(
                matches!(e, ProviderError::Server { status, .. } if status == s),
                "{e:?}"
            );
            assert!(e.is_retryable());
            assert_eq!(e.error_id(), Some(ID));
        }
    }

    #[test]
    fn threatwinds_body_dialect_maps_every_status() {
        let tw = ErrorDialect::ThreatWinds;
        let body = format!(r#"{{"uuid":"{ID}","error":"incorrect authorization header"}}"#);
        for (status, check) in [
            (
                400,
                (|e: &ProviderError| matches!(e, ProviderError::BadRequest { .. }))
                    as fn(&ProviderError) -> bool,
            ),
            (401, |e| matches!(e, ProviderError::Unauthorized { .. })),
            (403, |e| matches!(e, ProviderError::Forbidden { .. })),
            (404, |e| matches!(e, ProviderError::NotFound { .. })),
            (429, |e| matches!(e, ProviderError::RateLimited { .. })),
            (500, |e| matches!(e, ProviderError::Server { .. })),
        ] {
            let e = map(tw, status, &[], &body);
            assert!(check(&e), "{status}: {e:?}");
            assert!(
                e.to_string().contains("incorrect authorization header"),
                "{e}"
            );
            if status != 429 {
                assert_eq!(e.error_id(), Some(ID), "{status}");
                assert!(e.to_string().contains(ID), "{e}");
            }
        }
    }

    #[test]
    fn threatwinds_headers_win_over_body_and_missing_message_uses_reason() {
        let tw = ErrorDialect::ThreatWinds;
        let e = map(
            tw,
            404,
            &[("x-error", "from header")],
            r#"{"uuid":"body-id","error":"from body"}"#,
        );
        assert!(e.to_string().contains("from header"), "{e}");
        assert_eq!(e.error_id(), Some("body-id"));
        let e = map(tw, 401, &[], "");
        assert_eq!(e.to_string(), "threatwinds create: HTTP 401: unauthorized");
        assert_eq!(e.error_id(), None);
    }

    #[test]
    fn datonis_dialect_reads_error_errors_and_message() {
        let d = ErrorDialect::Datonis;
        let e = map(
            d,
            422,
            &[],
            r#"{"errors":["expiry_date is invalid","role_key missing"]}"#,
        );
        assert!(matches!(e, ProviderError::BadRequest { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("expiry_date is invalid; role_key missing"),
            "{e}"
        );
        let e = map(d, 401, &[], r#"{"error":"Invalid auth token"}"#);
        assert!(matches!(e, ProviderError::Unauthorized { .. }));
        assert!(e.to_string().contains("Invalid auth token"));
        let e = map(d, 404, &[], r#"{"message":"key_pair not found"}"#);
        assert!(matches!(e, ProviderError::NotFound { .. }));
        assert!(e.to_string().contains("key_pair not found"));
        let e = map(
            d,
            400,
            &[],
            r#"{"errors":{"expiry_date":["can't be blank"]}}"#,
        );
        assert!(e.to_string().contains("expiry_date can't be blank"), "{e}");
        let e = map(d, 500, &[], "Internal Server Error");
        assert!(matches!(e, ProviderError::Server { status: 500, .. }));
        // Datonis does not use the x-error headers.
        let e = map(d, 404, &[("x-error", "hdr")], r#"{"error":"body"}"#);
        assert!(e.to_string().contains("body") && !e.to_string().contains("hdr"));
    }

    #[test]
    fn undocumented_statuses_are_unexpected_and_408_is_retryable() {
        let e = map(ErrorDialect::Datonis, 302, &[], "");
        assert!(
            matches!(e, ProviderError::UnexpectedResponse { status: 302, .. }),
            "{e:?}"
        );
        let e = map(ErrorDialect::Datonis, 408, &[], "");
        assert!(e.is_retryable());
        let e = map(ErrorDialect::Datonis, 409, &[], "");
        assert!(matches!(e, ProviderError::BadRequest { .. }));
        let e = map(ErrorDialect::Datonis, 410, &[], "");
        assert!(matches!(e, ProviderError::NotFound { .. }));
    }

    #[test]
    fn retry_after_is_read_on_403_429_503_only() {
        let tw = ErrorDialect::ThreatWinds;
        let h = [("retry-after", "7")];
        assert_eq!(
            map(tw, 403, &h, "").retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            map(tw, 429, &h, "").retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            map(tw, 503, &h, "").retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(map(tw, 500, &h, "").retry_after(), None);
        assert_eq!(map(tw, 429, &[], "").retry_after(), None);
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = Utc
            .with_ymd_and_hms(2015, 10, 21, 7, 28, 0)
            .single()
            .expect("date");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::from_secs(0)));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:10 2015", now),
            Some(Duration::from_secs(10))
        );
        // In the past: retry now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Capped.
        assert_eq!(parse_retry_after("99999999999", now), Some(MAX_RETRY_AFTER));
        for bad in ["", "soon", "-5", "NaN", "inf"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn error_text_never_carries_a_secret() {
        let secret = SecretString::from("S3cr3tValue-with-dashes");
        let long = "abcdefghijklmnopqrstuvwxyz0123456789";
        let status = StatusCode::from_u16(401).expect("status");
        let hdrs = headers(&[("x-error", "bad api-secret S3cr3tValue-with-dashes")]);
        let body = format!(r#"{{"apiSecret":"{long}","error":"x"}}"#);
        let e = layer(ErrorDialect::ThreatWinds).status_error(
            "get",
            status,
            &hdrs,
            body.as_bytes(),
            &[&secret],
        );
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("S3cr3tValue-with-dashes"), "{shown}");
        // A token-like run in a provider message is masked too.
        let e = map(
            ErrorDialect::Datonis,
            400,
            &[],
            &format!(r#"{{"error":"token {long} rejected"}}"#),
        );
        assert!(!e.to_string().contains(long), "{e}");
        // A secret-looking field inside an error object is never quoted.
        let e = map(
            ErrorDialect::Datonis,
            400,
            &[],
            r#"{"errors":{"password":["pw-value-1"]}}"#,
        );
        assert!(!e.to_string().contains("pw-value-1"), "{e}");
    }

    #[test]
    fn an_error_id_echoing_a_sent_secret_is_scrubbed() {
        let sent = SecretString::from("Zq_0A0_00-");
        let hdrs = headers(&[("x-error-id", "Zq_0A0_00-")]);
        let status = StatusCode::from_u16(400).expect("status");
        let e = layer(ErrorDialect::ThreatWinds).status_error("get", status, &hdrs, b"", &[&sent]);
        assert!(!format!("{e} {e:?}").contains("Zq_0A0_00-"), "{e:?}");
        // Also when the filter of id characters would join it up.
        let hdrs = headers(&[("x-error-id", "Zq_0A0 _00-")]);
        let e = layer(ErrorDialect::ThreatWinds).status_error("get", status, &hdrs, b"", &[&sent]);
        assert!(!format!("{e} {e:?}").contains("Zq_0A0_00-"), "{e:?}");
    }

    #[test]
    fn error_ids_are_sanitized() {
        assert_eq!(sanitize_error_id(ID).as_deref(), Some(ID));
        assert_eq!(sanitize_error_id("a b\nc").as_deref(), Some("abc"));
        assert_eq!(sanitize_error_id("   ").as_deref(), None);
        assert_eq!(
            sanitize_error_id(&"x".repeat(100)).map(|s| s.len()),
            Some(64)
        );
    }

    #[test]
    fn base_url_is_validated_and_path_appended_once() {
        let opts = HttpOptions::default();
        let new = |u: &str| {
            HttpLayer::new(
                ProviderKind::Threatwinds,
                ErrorDialect::ThreatWinds,
                u,
                &["api", "auth", "v2"],
                &opts,
            )
        };
        for (input, want) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/api/auth/v2"),
            ("https://h.example/", "https://h.example/api/auth/v2"),
            (
                "https://h.example/api/auth/v2/",
                "https://h.example/api/auth/v2",
            ),
            (
                "https://h.example/prefix",
                "https://h.example/prefix/api/auth/v2",
            ),
        ] {
            let l = new(input).expect(input);
            assert_eq!(l.base_url().as_str(), want, "{input}");
        }
        for bad in [
            "ftp://h.example",
            "not a url",
            "https://user:pw@h.example",
            "https://h.example/?q=1",
        ] {
            let e = new(bad).expect_err(bad);
            assert!(matches!(e, ProviderError::BadRequest { .. }), "{bad}");
            assert!(!e.to_string().contains("pw@"), "{e}");
        }
        let l = new("http://127.0.0.1:1").expect("layer");
        let call = Call::new("delete", Method::DELETE, &["keypair", "a/b c"]).query("q", "x y");
        assert_eq!(
            l.url(&call).expect("url").as_str(),
            "http://127.0.0.1:1/api/auth/v2/keypair/a%2Fb%20c?q=x+y"
        );
    }

    /// Serves one canned HTTP response on a local port and hands back the raw request.
    async fn canned(response: String) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            loop {
                let n = sock.read(&mut chunk).await.expect("read");
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            // The client may hang up before reading it all (an oversized body).
            let _ = sock.write_all(response.as_bytes()).await;
            sock.shutdown().await.ok();
            String::from_utf8_lossy(&buf).to_string()
        });
        (format!("http://{addr}"), task)
    }

    fn http_response(status: &str, headers: &[&str], body: &str) -> String {
        let mut r = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        for h in headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        r.push_str(body);
        r
    }

    fn layer_at(url: &str) -> HttpLayer {
        HttpLayer::new(
            ProviderKind::Threatwinds,
            ErrorDialect::ThreatWinds,
            url,
            &["api", "auth", "v2"],
            &HttpOptions::default(),
        )
        .expect("layer")
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Needs {
        #[serde(rename = "keyID")]
        key_id: String,
    }

    #[tokio::test]
    async fn any_2xx_decodes_and_request_carries_auth_and_json() {
        let (url, req) = canned(http_response("202 Accepted", &[], r#"{"keyID":"k1"}"#)).await;
        let token = SecretString::from("bearer-token-value-123");
        let call = Call::new("create", Method::POST, &["keypair"])
            .secret_header("authorization", "Bearer ", &token)
            .expect("header")
            .json(&serde_json::json!({"name": "n", "days": 1}))
            .expect("body");
        let got: Needs = layer_at(&url).send(call).await.expect("202 is success");
        assert_eq!(got.key_id, "k1");
        let req = req.await.expect("request");
        assert!(
            req.starts_with("POST /api/auth/v2/keypair HTTP/1.1"),
            "{req}"
        );
        let lower = req.to_ascii_lowercase();
        assert!(
            lower.contains("authorization: bearer bearer-token-value-123"),
            "{req}"
        );
        assert!(lower.contains("content-type: application/json"), "{req}");
        assert!(lower.contains("accept: application/json"), "{req}");
        assert!(req.ends_with(r#"{"days":1,"name":"n"}"#), "{req}");
    }

    #[tokio::test]
    async fn empty_2xx_body_is_accepted_where_nothing_is_needed() {
        let (url, _req) = canned(http_response("200 OK", &[], "")).await;
        let call = Call::new("delete", Method::DELETE, &["keypair", "k"]);
        let _: serde::de::IgnoredAny = layer_at(&url).send(call).await.expect("empty ok");
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (url, _req) = canned(http_response(
            "302 Found",
            &["location: http://127.0.0.1:9/elsewhere"],
            "",
        ))
        .await;
        let call = Call::new("list", Method::GET, &["keypairs"]);
        let e = layer_at(&url).send::<Value>(call).await.expect_err("3xx");
        assert!(
            matches!(e, ProviderError::UnexpectedResponse { status: 302, .. }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn undecodable_2xx_gives_a_redacted_excerpt() {
        let secret = "fq6JoEFTsxiXAl1cVxPDnK4emIQCwaUBfq6JoEFTsxiXAl1cVxPDnK4emIQCwaUB";
        let body = format!(r#"{{"apiSecret":"{secret}","keyId":5}}"#);
        let (url, _req) = canned(http_response("200 OK", &[], &body)).await;
        let call = Call::new("create", Method::POST, &["keypair"]);
        let e = layer_at(&url).send::<Needs>(call).await.expect_err("shape");
        let shown = format!("{e} {e:?}");
        assert!(
            matches!(e, ProviderError::UnexpectedResponse { status: 200, .. }),
            "{e:?}"
        );
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(shown.starts_with("threatwinds create: "), "{shown}");

        let (url, _req) = canned(http_response("200 OK", &[], &format!("token={secret}"))).await;
        let call = Call::new("list", Method::GET, &["keypairs"]);
        let e = layer_at(&url).send::<Needs>(call).await.expect_err("text");
        assert!(!format!("{e} {e:?}").contains(secret), "{e}");
    }

    #[tokio::test]
    async fn connection_refused_is_transport() {
        // Bind and drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let call = Call::new("list", Method::GET, &["keypairs"]);
        let e = layer_at(&format!("http://127.0.0.1:{port}"))
            .send::<Value>(call)
            .await
            .expect_err("refused");
        assert!(matches!(e, ProviderError::Transport { .. }), "{e:?}");
        assert!(e.is_retryable());
        assert!(
            e.to_string()
                .starts_with("threatwinds list: could not connect"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_cut_off_2xx_body_may_have_committed() {
        // Complete as sent, but the JSON stops halfway: an undecodable 2xx.
        let half = r#"{"keyID":"k1","apiSecr"#;
        let (url, _req) = canned(http_response("202 Accepted", &[], half)).await;
        let call = Call::new("create", Method::POST, &["keypair"]);
        let e = layer_at(&url).send::<Needs>(call).await.expect_err("half");
        assert!(
            matches!(e, ProviderError::UnexpectedResponse { status: 202, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("truncated body"), "{e}");
        assert!(e.may_have_committed());

        // The connection closes before Content-Length bytes arrived: Transport.
        let mut short = http_response("200 OK", &[], r#"{"keyID":"k1"}"#);
        short = short.replace("content-length: 14", "content-length: 400");
        let (url, _req) = canned(short).await;
        let call = Call::new("create", Method::POST, &["keypair"]);
        let e = layer_at(&url).send::<Needs>(call).await.expect_err("short");
        assert!(matches!(e, ProviderError::Transport { .. }), "{e:?}");
        assert!(e.may_have_committed());
    }

    #[tokio::test]
    async fn an_oversized_2xx_body_reports_its_status() {
        let body = format!(r#"{{"keyID":"k1","pad":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        let (url, _req) = canned(http_response("201 Created", &[], &body)).await;
        let call = Call::new("create", Method::POST, &["keypair"]);
        let e = layer_at(&url).send::<Needs>(call).await.expect_err("big");
        assert!(
            matches!(e, ProviderError::UnexpectedResponse { status: 201, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("larger than"), "{e}");
        assert!(e.may_have_committed());
    }

    #[tokio::test]
    async fn send_with_status_returns_the_2xx_status() {
        let (url, _req) = canned(http_response("202 Accepted", &[], r#"{"keyID":"k1"}"#)).await;
        let call = Call::new("create", Method::POST, &["keypair"]);
        let (status, got) = layer_at(&url)
            .send_with_status::<Needs>(call)
            .await
            .expect("202");
        assert_eq!((status, got.key_id.as_str()), (202, "k1"));
    }
}
