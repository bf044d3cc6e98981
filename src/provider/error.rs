//! The one error type of every provider call, shaped by what the controller must do next.
//!
//! Messages are built by the shared HTTP layer: they start with `"<provider> <operation>:"`,
//! carry the provider's own message (scrubbed of anything that looks like a secret) and end
//! with the provider's error id when it sent one, so a user can quote it to support.

use std::fmt;
use std::time::Duration;

/// A failed provider call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// 404 (or 410): the key pair, code or record does not exist. Not retryable; for a
    /// delete the caller may count it as done.
    #[error("{message}{}", ErrorId(error_id))]
    NotFound {
        /// What the provider said, prefixed with provider and operation.
        message: String,
        /// The provider's error id, if any.
        error_id: Option<String>,
    },
    /// 401: credentials (session, auth token, API secret, verification code) are wrong or
    /// expired. Not retryable until they change.
    #[error("{message}{}", ErrorId(error_id))]
    Unauthorized {
        /// What the provider said, prefixed with provider and operation.
        message: String,
        /// The provider's error id, if any.
        error_id: Option<String>,
    },
    /// 403: refused. ThreatWinds also answers 403 to clients it thinks send too many
    /// requests, so this is retried with back-off.
    #[error("{message}{}{}", ErrorId(error_id), RetryAfter(retry_after))]
    Forbidden {
        /// What the provider said, prefixed with provider and operation.
        message: String,
        /// The provider's error id, if any.
        error_id: Option<String>,
        /// The provider's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// 429: too many requests. Retry after `retry_after` (or with back-off).
    #[error("{message}{}", RetryAfter(retry_after))]
    RateLimited {
        /// What the provider said, prefixed with provider and operation.
        message: String,
        /// The provider's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// 400 and other 4xx: the request itself is wrong. Terminal until the input changes.
    #[error("{message}{}", ErrorId(error_id))]
    BadRequest {
        /// What the provider (or the client, for bad input or configuration) said.
        message: String,
        /// The provider's error id, if any.
        error_id: Option<String>,
    },
    /// 5xx (and 408): the provider failed. Retryable; on a create the key may have been
    /// committed anyway.
    #[error("{message}{}{}", ErrorId(error_id), RetryAfter(retry_after))]
    Server {
        /// The HTTP status.
        status: u16,
        /// What the provider said, prefixed with provider and operation.
        message: String,
        /// The provider's error id, if any.
        error_id: Option<String>,
        /// The provider's `Retry-After` (503), if any.
        retry_after: Option<Duration>,
    },
    /// Connect failure, timeout, broken or oversized body. Retryable, and ambiguous for a
    /// create: the provider may have committed it before the connection broke.
    #[error("{message}")]
    Transport {
        /// What went wrong, prefixed with provider and operation.
        message: String,
    },
    /// A 2xx whose body is not what the docs describe, or a status the docs never mention
    /// (1xx, 3xx). Terminal.
    #[error("{message} (HTTP {status}); body: {excerpt}")]
    UnexpectedResponse {
        /// The HTTP status.
        status: u16,
        /// What could not be understood, prefixed with provider and operation.
        message: String,
        /// At most 200 characters of the body, with secret-looking values masked.
        excerpt: String,
    },
    /// The provider rejected a verification code while the session was alive: the code is
    /// wrong. Not retryable with the same code.
    #[error("{message}{}", ErrorId(error_id))]
    CodeRejected {
        /// What the provider said, prefixed with provider and operation.
        message: String,
        /// The provider's error id, if any.
        error_id: Option<String>,
    },
    /// The provider has no such operation (e.g. ThreatWinds update, Datonis verify).
    #[error("{operation}: not supported by this provider")]
    Unsupported {
        /// Provider and operation, e.g. `"datonis verify"`.
        operation: &'static str,
    },
}

impl ProviderError {
    /// Whether the same call may succeed later without any change by the user: server
    /// errors, transport failures, rate limiting and 403 (ThreatWinds' throttling answer).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Server { .. }
                | ProviderError::Transport { .. }
                | ProviderError::RateLimited { .. }
                | ProviderError::Forbidden { .. }
        )
    }

    /// A 403 without `Retry-After`: the current ThreatWinds page says 403 means the user
    /// lacks permission (with `Retry-After` it is throttling).
    pub fn is_permission_denied(&self) -> bool {
        matches!(
            self,
            ProviderError::Forbidden {
                retry_after: None,
                ..
            }
        )
    }

    /// How long the provider asked the client to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Forbidden { retry_after, .. }
            | ProviderError::RateLimited { retry_after, .. }
            | ProviderError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short, stable name of the error class, for metric labels.
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::NotFound { .. } => "not_found",
            ProviderError::Unauthorized { .. } => "unauthorized",
            ProviderError::Forbidden { .. } => "forbidden",
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::BadRequest { .. } => "bad_request",
            ProviderError::Server { .. } => "server_error",
            ProviderError::Transport { .. } => "transport_error",
            ProviderError::UnexpectedResponse { .. } => "unexpected_response",
            ProviderError::Unsupported { .. } => "unsupported",
            ProviderError::CodeRejected { .. } => "code_rejected",
        }
    }

    /// The provider's error id (ThreatWinds `x-error-id` / `uuid`), for support.
    pub fn error_id(&self) -> Option<&str> {
        match self {
            ProviderError::NotFound { error_id, .. }
            | ProviderError::Unauthorized { error_id, .. }
            | ProviderError::Forbidden { error_id, .. }
            | ProviderError::BadRequest { error_id, .. }
            | ProviderError::CodeRejected { error_id, .. }
            | ProviderError::Server { error_id, .. } => error_id.as_deref(),
            _ => None,
        }
    }

    /// Whether a failed *write* may nevertheless have been applied by the provider: the
    /// request may have reached it before a transport failure or a 5xx. After a failed
    /// create with this set, look the key pair up (list) before creating another.
    pub fn may_have_committed(&self) -> bool {
        match self {
            ProviderError::Server { .. } | ProviderError::Transport { .. } => true,
            // A success the client cannot read (cut off, wrong shape, missing fields).
            ProviderError::UnexpectedResponse { status, .. } => (200..300).contains(status),
            _ => false,
        }
    }
}

/// Formats `" (error id X)"` when an id is present, nothing otherwise.
struct ErrorId<'a>(&'a Option<String>);

impl fmt::Display for ErrorId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (error id {id})"),
            None => Ok(()),
        }
    }
}

/// Formats `" (retry after Ns)"` when the provider sent `Retry-After`.
struct RetryAfter<'a>(&'a Option<Duration>);

impl fmt::Display for RetryAfter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, " (retry after {}s)", d.as_secs()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_includes_error_id_and_retry_after() {
        let e = ProviderError::NotFound {
            message: "threatwinds delete: record not found".into(),
            error_id: Some("7ae253bc-b1ca-4e8b-a5ca-268645e76f60".into()),
        };
        assert_eq!(
            e.to_string(),
            "threatwinds delete: record not found (error id 7ae253bc-b1ca-4e8b-a5ca-268645e76f60)"
        );
        let e = ProviderError::RateLimited {
            message: "datonis list: slow down".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(e.to_string(), "datonis list: slow down (retry after 3s)");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let e = ProviderError::Unsupported {
            operation: "datonis verify",
        };
        assert_eq!(
            e.to_string(),
            "datonis verify: not supported by this provider"
        );
    }

    #[test]
    fn retryability_follows_the_variant() {
        let server = ProviderError::Server {
            status: 503,
            message: "x".into(),
            error_id: None,
            retry_after: Some(Duration::from_secs(1)),
        };
        assert!(server.is_retryable() && server.may_have_committed());
        assert_eq!(server.retry_after(), Some(Duration::from_secs(1)));
        let transport = ProviderError::Transport {
            message: "x".into(),
        };
        assert!(transport.is_retryable() && transport.may_have_committed());
        let forbidden = ProviderError::Forbidden {
            message: "x".into(),
            error_id: Some("id".into()),
            retry_after: None,
        };
        assert!(forbidden.is_retryable() && !forbidden.may_have_committed());
        assert_eq!(forbidden.error_id(), Some("id"));
        for terminal in [
            ProviderError::BadRequest {
                message: "x".into(),
                error_id: None,
            },
            ProviderError::Unauthorized {
                message: "x".into(),
                error_id: None,
            },
            ProviderError::NotFound {
                message: "x".into(),
                error_id: None,
            },
            ProviderError::UnexpectedResponse {
                status: 302,
                message: "x".into(),
                excerpt: String::new(),
            },
            ProviderError::Unsupported { operation: "x" },
        ] {
            assert!(!terminal.is_retryable(), "{terminal:?}");
            assert!(!terminal.may_have_committed(), "{terminal:?}");
        }
    }
}
