//! Fault injection on the provider API (never on the `/_sandbox/...` control endpoints), set
//! with `PUT /_sandbox/faults`.
//!
//! Everything is deterministic so tests are repeatable: the error rate is an accumulator
//! that fails exactly every 1/rate-th request (rate 0.25: requests 4, 8, 12, ...), the rate
//! limit a token bucket, and commit-then-fail hits the next N successful key-pair creates
//! (or, with `commit_then_fail_on: update`, Datonis updates).
//! Per request, in order: latency, rate limit, error rate, then the handler (and
//! commit-then-fail on its response). Injected errors go through the provider's error
//! format like any other error.
//!
//! Commit-then-fail `drop`: the key pair is created and persisted, then the success
//! response is replaced by one whose body stream fails on its first poll. hyper then closes
//! the connection without a complete response (in practice before the status line is
//! flushed), so the client sees a connection error (or a body error if the head had already
//! gone out) — never a usable answer.
//!
//! The other commit-then-fail modes also create and persist the key pair, then answer the
//! success status with a body the client cannot use: `truncated` (the first half of the
//! JSON), `wrong_shape` (`{"unexpected":1}`), `missing_secret` (no `apiSecret` /
//! `secret_key`), `missing_key_id` (no `keyID`; for Datonis neither `key_pair_key` nor
//! `access_key`, since a client may take one for the other, as the docs show them equal) and
//! `oversized` (the JSON followed by spaces past the operator client's response limit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SandboxProvider;
use super::http::{ApiError, Dropped};
use super::state::{Shared, lock};
use crate::provider::MAX_BODY_BYTES;

/// Longest latency `PUT /_sandbox/faults` accepts, so a typo cannot hang a test run.
const MAX_LATENCY_MS: u64 = 300_000;

/// Faults to inject; every field is optional in JSON and off when omitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Fraction of API requests (0.0..=1.0) answered with `error_status`, deterministically.
    #[serde(default)]
    pub error_rate: f64,
    /// Status of error-rate failures (400..=599; default 500).
    #[serde(default = "default_error_status")]
    pub error_status: u16,
    /// Delay added to every API request, in milliseconds (at most 300000).
    #[serde(default)]
    pub latency_ms: u64,
    /// Requests per second allowed (token bucket holding `ceil(rps)` requests); over it
    /// ThreatWinds answers 403 and Datonis 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limit_rps: Option<f64>,
    /// Make key-pair writes (creates, or what `commit_then_fail_on` says) commit and then
    /// fail.
    #[serde(default)]
    pub commit_then_fail: Option<CommitThenFail>,
    /// How many writes fail that way (default 1 when `commit_then_fail` is set).
    #[serde(default)]
    pub commit_then_fail_count: Option<u32>,
    /// Which write commit-then-fail hits: `create` (the default) or `update` (Datonis
    /// `PUT /api/v3/key_pairs/{key}`; ThreatWinds has no update).
    #[serde(default)]
    pub commit_then_fail_on: CommittedWrite,
}

/// The key-pair write that commit-then-fail hits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommittedWrite {
    /// `POST`: a key-pair create.
    #[default]
    Create,
    /// `PUT`: a Datonis key-pair update.
    Update,
}

fn default_error_status() -> u16 {
    500
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            error_rate: 0.0,
            error_status: default_error_status(),
            latency_ms: 0,
            rate_limit_rps: None,
            commit_then_fail: None,
            commit_then_fail_count: None,
            commit_then_fail_on: CommittedWrite::Create,
        }
    }
}

impl FaultConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("error_rate must be between 0.0 and 1.0".into());
        }
        if !(400..=599).contains(&self.error_status) {
            return Err("error_status must be between 400 and 599".into());
        }
        if self.latency_ms > MAX_LATENCY_MS {
            return Err(format!("latency_ms must be at most {MAX_LATENCY_MS}"));
        }
        if let Some(rps) = self.rate_limit_rps
            && !(rps.is_finite() && rps > 0.0)
        {
            return Err("rate_limit_rps must be a positive number".into());
        }
        Ok(())
    }
}

/// How a committed write fails (JSON names in `snake_case`: `status500`, `drop`,
/// `truncated`, `wrong_shape`, `missing_secret`, `missing_key_id`, `oversized`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitThenFail {
    /// Answer 500 (in the provider's error format) after creating the key pair.
    Status500,
    /// Break the response after creating the key pair (see the module docs).
    Drop,
    /// Answer the success status with the first half of the JSON body.
    Truncated,
    /// Answer the success status with `{"unexpected":1}`.
    WrongShape,
    /// Answer the success status without the secret (`apiSecret` / `secret_key`).
    MissingSecret,
    /// Answer the success status without the key's id (`keyID`; Datonis `key_pair_key`
    /// and `access_key`).
    MissingKeyId,
    /// Answer the success status with a body larger than the operator client reads.
    Oversized,
}

impl CommittedWrite {
    fn method(self) -> Method {
        match self {
            CommittedWrite::Create => Method::POST,
            CommittedWrite::Update => Method::PUT,
        }
    }
}

/// Live fault settings and their counters.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    config: FaultConfig,
    /// Error-rate accumulator in millionths of a request; integers keep it exact.
    accumulator: u64,
    bucket: Option<TokenBucket>,
    commit_then_fail_left: u32,
}

const MILLION: u64 = 1_000_000;

enum Admission {
    Pass,
    RateLimited { retry_after_secs: u64 },
    Fail(StatusCode),
}

impl FaultState {
    pub(crate) fn config(&self) -> FaultConfig {
        self.config.clone()
    }

    /// Replaces the settings and restarts every counter.
    pub(crate) fn set(&mut self, config: FaultConfig) {
        self.accumulator = 0;
        self.bucket = config.rate_limit_rps.map(TokenBucket::new);
        self.commit_then_fail_left = match config.commit_then_fail {
            Some(_) => config.commit_then_fail_count.unwrap_or(1),
            None => 0,
        };
        self.config = config;
    }

    fn latency(&self) -> Duration {
        Duration::from_millis(self.config.latency_ms)
    }

    fn admit(&mut self, now: Instant) -> Admission {
        if let Some(bucket) = &mut self.bucket
            && let Err(retry_after_secs) = bucket.take(now)
        {
            return Admission::RateLimited { retry_after_secs };
        }
        // Saturating float-to-int cast; validate() keeps the rate within 0..=1.
        let step = (self.config.error_rate * MILLION as f64).round() as u64;
        self.accumulator += step;
        if step > 0 && self.accumulator >= MILLION {
            self.accumulator -= MILLION;
            return Admission::Fail(
                StatusCode::from_u16(self.config.error_status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            );
        }
        Admission::Pass
    }

    fn take_commit_then_fail(&mut self) -> Option<CommitThenFail> {
        let mode = self.config.commit_then_fail?;
        if self.commit_then_fail_left == 0 {
            return None;
        }
        self.commit_then_fail_left -= 1;
        Some(mode)
    }
}

#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        let capacity = rate.ceil().max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says in how many whole seconds (at least 1) one will be there.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// The fault-injection middleware (a router layer, so the matched route is known).
pub(crate) async fn inject(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let provider = shared.config.provider;
    let latency = lock(&shared.faults).latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let admission = lock(&shared.faults).admit(Instant::now());
    match admission {
        Admission::Pass => {}
        Admission::RateLimited { retry_after_secs } => {
            return rate_limited(provider, retry_after_secs).into_response();
        }
        Admission::Fail(status) => {
            let reason = status.canonical_reason().unwrap_or("injected error");
            return ApiError::new(status, reason).into_response();
        }
    }
    let target = lock(&shared.faults).config.commit_then_fail_on;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let is_target = req.method() == target.method()
        && route.is_some_and(|route| provider.write_route(target) == Some(route));
    let response = next.run(req).await;
    if !is_target || !response.status().is_success() {
        return response;
    }
    let mode = lock(&shared.faults).take_commit_then_fail();
    match mode {
        None => response,
        Some(CommitThenFail::Status500) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                .into_response()
        }
        Some(CommitThenFail::Drop) => broken(response),
        Some(mode) => spoiled(provider, mode, response).await,
    }
}

/// Keeps the status and headers of a successful `response` but replaces its body by one
/// the client cannot use, as `mode` says.
async fn spoiled(provider: SandboxProvider, mode: CommitThenFail, response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    // The handlers' answers are small JSON objects; nothing near this limit.
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            .into_response();
    };
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(spoil(provider, mode, &bytes)))
}

/// The unusable body `mode` makes of a write's JSON answer `body`.
fn spoil(provider: SandboxProvider, mode: CommitThenFail, body: &[u8]) -> Vec<u8> {
    match mode {
        CommitThenFail::Truncated => body[..body.len() / 2].to_vec(),
        CommitThenFail::WrongShape => br#"{"unexpected":1}"#.to_vec(),
        CommitThenFail::MissingSecret => without(body, secret_fields(provider)),
        CommitThenFail::MissingKeyId => without(body, key_id_fields(provider)),
        CommitThenFail::Oversized => {
            // Valid JSON still (trailing whitespace): only the size is wrong.
            let mut big = body.to_vec();
            big.resize(body.len() + MAX_BODY_BYTES + 1, b' ');
            big
        }
        CommitThenFail::Status500 | CommitThenFail::Drop => body.to_vec(),
    }
}

fn secret_fields(provider: SandboxProvider) -> &'static [&'static str] {
    match provider {
        SandboxProvider::Threatwinds => &["apiSecret"],
        SandboxProvider::Datonis => &["secret_key"],
    }
}

fn key_id_fields(provider: SandboxProvider) -> &'static [&'static str] {
    match provider {
        SandboxProvider::Threatwinds => &["keyID"],
        SandboxProvider::Datonis => &["key_pair_key", "access_key"],
    }
}

/// `body` re-encoded without `fields`, at any depth (Datonis nests them in `key_pair`).
fn without(body: &[u8], fields: &[&str]) -> Vec<u8> {
    fn strip(value: &mut Value, fields: &[&str]) {
        match value {
            Value::Object(map) => {
                map.retain(|name, _| !fields.contains(&name.as_str()));
                map.values_mut().for_each(|v| strip(v, fields));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| strip(v, fields)),
            _ => {}
        }
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            strip(&mut value, fields);
            serde_json::to_vec(&value).unwrap_or_default()
        }
        Err(_) => body.to_vec(),
    }
}

/// The providers' "too many requests": ThreatWinds documents it as 403 Forbidden; for
/// Datonis (undocumented) the conventional 429 with `Retry-After`.
fn rate_limited(provider: SandboxProvider, retry_after_secs: u64) -> ApiError {
    match provider {
        SandboxProvider::Threatwinds => ApiError::new(StatusCode::FORBIDDEN, "too many requests"),
        SandboxProvider::Datonis => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded")
                .with_retry_after(retry_after_secs)
        }
    }
}

/// Keeps the head of `response` but gives it a body that fails at once.
fn broken(response: Response) -> Response {
    let (mut parts, _body) = response.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    parts.extensions.insert(Dropped);
    let body = Body::from_stream(futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other(
            "sandbox fault: connection dropped after commit",
        ))
    }));
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tw_body() -> Vec<u8> {
        json!({"apiKey": "k", "apiSecret": "s3cret", "keyID": "id1", "verified": false})
            .to_string()
            .into_bytes()
    }

    fn parsed(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("json")
    }

    #[test]
    fn spoiled_bodies_lose_what_the_mode_says() {
        let tw = SandboxProvider::Threatwinds;
        let body = tw_body();
        let cut = spoil(tw, CommitThenFail::Truncated, &body);
        assert_eq!(cut, body[..body.len() / 2]);
        assert!(serde_json::from_slice::<Value>(&cut).is_err());
        assert_eq!(
            parsed(&spoil(tw, CommitThenFail::WrongShape, &body)),
            json!({"unexpected": 1})
        );
        let v = parsed(&spoil(tw, CommitThenFail::MissingSecret, &body));
        assert!(v.get("apiSecret").is_none() && v["keyID"] == "id1", "{v}");
        let v = parsed(&spoil(tw, CommitThenFail::MissingKeyId, &body));
        assert!(
            v.get("keyID").is_none() && v["apiSecret"] == "s3cret",
            "{v}"
        );
    }

    #[test]
    fn datonis_fields_are_removed_inside_key_pair() {
        let dt = SandboxProvider::Datonis;
        let body = json!({"key_pair": {"key_pair_key": "a", "access_key": "a", "secret_key": "s"}})
            .to_string()
            .into_bytes();
        let v = parsed(&spoil(dt, CommitThenFail::MissingSecret, &body));
        assert_eq!(
            v,
            json!({"key_pair": {"key_pair_key": "a", "access_key": "a"}})
        );
        let v = parsed(&spoil(dt, CommitThenFail::MissingKeyId, &body));
        assert_eq!(v, json!({"key_pair": {"secret_key": "s"}}));
    }

    #[test]
    fn oversized_is_valid_json_past_the_client_limit() {
        let body = tw_body();
        let big = spoil(
            SandboxProvider::Threatwinds,
            CommitThenFail::Oversized,
            &body,
        );
        assert!(big.len() > MAX_BODY_BYTES);
        assert_eq!(parsed(&big), parsed(&body));
    }

    #[test]
    fn commit_then_fail_names_keep_their_json_spelling() {
        for (mode, name) in [
            (CommitThenFail::Status500, "status500"),
            (CommitThenFail::Drop, "drop"),
            (CommitThenFail::Truncated, "truncated"),
            (CommitThenFail::WrongShape, "wrong_shape"),
            (CommitThenFail::MissingSecret, "missing_secret"),
            (CommitThenFail::MissingKeyId, "missing_key_id"),
            (CommitThenFail::Oversized, "oversized"),
        ] {
            assert_eq!(serde_json::to_value(mode).expect("ser"), json!(name));
        }
        for (write, name) in [
            (CommittedWrite::Create, "create"),
            (CommittedWrite::Update, "update"),
        ] {
            assert_eq!(serde_json::to_value(write).expect("ser"), json!(name));
        }
    }

    #[test]
    fn the_counter_limits_every_mode() {
        let mut state = FaultState::default();
        state.set(FaultConfig {
            commit_then_fail: Some(CommitThenFail::MissingSecret),
            commit_then_fail_count: Some(2),
            ..FaultConfig::default()
        });
        assert_eq!(
            state.take_commit_then_fail(),
            Some(CommitThenFail::MissingSecret)
        );
        assert_eq!(
            state.take_commit_then_fail(),
            Some(CommitThenFail::MissingSecret)
        );
        assert_eq!(state.take_commit_then_fail(), None);
    }
}
