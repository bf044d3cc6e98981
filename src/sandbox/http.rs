//! HTTP plumbing shared by both providers: the API error type, JSON body helpers, path
//! normalisation, the dialect renderer and per-route statistics.
//!
//! Handlers and the fault layer never format an error themselves: they return an
//! [`ApiError`] (status + message), and [`render`] turns every error response — also those
//! axum produces itself (405, 413, path rejections, the 404 fallback) — into the configured
//! provider's format through that provider's one `error_body` function.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::state::{Shared, lock};
use super::{SandboxProvider, datonis, threatwinds};

/// An API error: status and a message for the client (never containing secrets).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub(crate) fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn unprocessable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// Adds a `Retry-After: secs` header.
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

/// The message of an [`ApiError`], carried to [`render`] in the response extensions.
#[derive(Clone, Debug)]
struct ErrorMessage(Cow<'static, str>);

/// Marks a response whose body was made to fail on purpose (commit-then-fail `drop`), so
/// statistics count it as `dropped` rather than by its never-delivered status.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dropped;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(ErrorMessage(self.message));
        response
    }
}

/// The router's fallback: unknown paths are a 404 in the provider's format.
pub(crate) async fn unknown_path() -> ApiError {
    ApiError::not_found("not found")
}

/// A JSON object from a request body that must hold one.
pub(crate) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("missing JSON body"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("JSON body must be an object")),
        Err(err) => Err(ApiError::bad_request(format!("malformed JSON: {err}"))),
    }
}

/// Like [`json_object`], but an empty body is an empty object (GETs with optional bodies).
pub(crate) fn optional_json_object(
    body: &[u8],
) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    json_object(body)
}

/// A response with a JSON body (compact, or indented for Datonis' `pretty`).
pub(crate) fn json_response(status: StatusCode, value: &Value, pretty: bool) -> Response {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    match text {
        Ok(text) => (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            text,
        )
            .into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            .into_response(),
    }
}

/// Marks a request whose path had a route literal written in another case (e.g.
/// `/KeyPair`), so a strict reading can refuse it after routing has been made to work.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CaseFolded;

/// Rewrites a request path before routing: empty segments (`//`, a trailing `/`) are dropped
/// and segments equal to a route literal ignoring ASCII case are spelled as the literal, so
/// `/api/auth/v2/KeyPair/verification` reaches `/api/auth/v2/keypair/verification` while
/// ids keep their case. A request whose case was changed is marked [`CaseFolded`].
pub(crate) fn normalize_path(literals: &[&str], mut req: Request) -> Request {
    let path = req.uri().path();
    let mut normalized = String::with_capacity(path.len());
    let mut folded = false;
    for segment in path.split('/').filter(|segment| !segment.is_empty()) {
        normalized.push('/');
        let literal = literals
            .iter()
            .find(|literal| literal.eq_ignore_ascii_case(segment));
        folded |= literal.is_some_and(|literal| *literal != segment);
        normalized.push_str(literal.copied().unwrap_or(segment));
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    if normalized == path {
        return req;
    }
    if folded {
        req.extensions_mut().insert(CaseFolded);
    }
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut parts = req.uri().clone().into_parts();
    let Ok(path_and_query) = path_and_query.parse() else {
        return req;
    };
    parts.path_and_query = Some(path_and_query);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req
}

/// Renders responses in the provider's dialect: error responses get the provider's error
/// format (message from the [`ApiError`], or from the body axum wrote), successes the
/// dialect's status. Status and other headers (`Retry-After`, `Allow`) are kept.
pub(crate) async fn render(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let provider = shared.config.provider;
    let dialect = shared.config.dialect;
    let refusal = match provider {
        SandboxProvider::Threatwinds => shared.config.threatwinds_readings.refuse(&req),
        SandboxProvider::Datonis => None,
    };
    let response = match refusal {
        Some(refusal) => refusal.into_response(),
        None => next.run(req).await,
    };
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return match provider {
            SandboxProvider::Threatwinds => threatwinds::render_success(dialect, response),
            SandboxProvider::Datonis => response,
        };
    }
    let (mut parts, body) = response.into_parts();
    let message = match parts.extensions.remove::<ErrorMessage>() {
        Some(ErrorMessage(message)) => message.into_owned(),
        None => framework_message(status, body).await,
    };
    let message = sanitize(&message);
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    let body = match provider {
        SandboxProvider::Threatwinds => {
            threatwinds::error_body(dialect, &mut parts.headers, &message)
        }
        SandboxProvider::Datonis => datonis::error_body(&mut parts.headers, &message),
    };
    Response::from_parts(parts, body)
}

/// The text axum put in an error response it produced itself, or the status' reason.
async fn framework_message(status: StatusCode, body: Body) -> String {
    let reason = status.canonical_reason().unwrap_or("error");
    match axum::body::to_bytes(body, 1024).await {
        Ok(bytes) if !bytes.is_empty() => {
            String::from_utf8(bytes.to_vec()).unwrap_or_else(|_| reason.to_owned())
        }
        _ => reason.to_owned(),
    }
}

/// Keeps an error message header-safe (printable ASCII) and short.
fn sanitize(message: &str) -> String {
    message
        .chars()
        .take(200)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Route label of requests that matched no route, in statistics and logs.
const UNMATCHED: &str = "(unmatched)";

/// Counts every API request by route template and final status (`dropped` for a response
/// broken on purpose) and logs it at debug — the route template, never the raw path or
/// query, so ids, keys and tokens stay out of the logs.
pub(crate) async fn record_stats(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let response = next.run(req).await;
    let outcome = if response.extensions().get::<Dropped>().is_some() {
        "dropped".to_owned()
    } else {
        response.status().as_str().to_owned()
    };
    tracing::debug!(%method, %route, status = %outcome, "sandbox request");
    *lock(&shared.stats)
        .entry(format!("{method} {route}"))
        .or_default()
        .entry(outcome)
        .or_default() += 1;
    response
}
