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
    /// 403: refused. The current ThreatWinds page says "authenticated user lacks
    /// permission"; the older page says it also answers 403 to clients it thinks send too
    /// many requests. Both readings are kept: it is retried with back-off, and
    /// [`ProviderError::is_permission_denied`] tells the controller when to report it as a
    /// permission problem.
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
    /// A 2xx whose body is not what the docs describe (cut off, the wrong shape, without
    /// a required field, oversized), or a status the docs never mention (1xx, 3xx).
    /// Terminal; with a 2xx `status` a write may have been applied
    /// ([`ProviderError::may_have_committed`]).
    #[error("{message} (HTTP {status}); body: {excerpt}")]
    UnexpectedResponse {
        /// The HTTP status.
        status: u16,
        /// What could not be understood, prefixed with provider and operation.
        message: String,
        /// At most 200 characters of the body, with secret-looking values masked.
        excerpt: String,
    },
    /// The provider answered a write with success and a readable body that shows a field
    /// it was sent unchanged (e.g. a Datonis server ignoring `role_key` where the client
    /// put it). A definite outcome, unlike an unreadable answer: the write was not applied.
    /// Terminal until the input changes.
    #[error("{message}")]
    NotApplied {
        /// The field, what was asked and what the answer shows, prefixed with provider
        /// and operation.
        message: String,
    },
    /// ThreatWinds refused a verification code (wrong, expired, unknown or used code id)
    /// while its `GET /session` confirmed that the session is alive and verified, so the
    /// refusal is about the code and not the credentials. Terminal until a new code is given.
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
            ProviderError::NotApplied { .. } => "not_applied",
            ProviderError::CodeRejected { .. } => "code_rejected",
            ProviderError::Unsupported { .. } => "unsupported",
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
    /// request may have reached it before a transport failure or a 5xx, or the provider
    /// answered 2xx (so it did the work) with a body the client could not use (cut off,
    /// the wrong shape, no secret or id, oversized). After a failed create with this set,
    /// look the key pair up (list) before creating another.
    pub fn may_have_committed(&self) -> bool {
        match self {
            ProviderError::Server { .. } | ProviderError::Transport { .. } => true,
            ProviderError::UnexpectedResponse { status, .. } => (200..300).contains(status),
            _ => false,
        }
    }

    /// Whether the provider definitely refused: repeating the call cannot help (not
    /// [`Self::is_retryable`]) and nothing was applied (not [`Self::may_have_committed`]).
    /// Only a change of input (spec, credentials, code) can.
    pub fn is_definite_refusal(&self) -> bool {
        !self.is_retryable() && !self.may_have_committed()
    }

    /// Whether a 403 reads as "the user lacks permission" rather than as throttling: the
    /// provider sent no `Retry-After` with it. Still retryable (the older ThreatWinds page
    /// says 403 may be throttling without saying so); the controller uses this to name the
    /// condition reason.
    pub fn is_permission_denied(&self) -> bool {
        matches!(
            self,
            ProviderError::Forbidden {
                retry_after: None,
                ..
            }
        )
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
            ProviderError::CodeRejected {
                message: "x".into(),
                error_id: None,
            },
            ProviderError::NotApplied {
                message: "x".into(),
            },
            ProviderError::Unsupported { operation: "x" },
        ] {
            assert!(!terminal.is_retryable(), "{terminal:?}");
            assert!(!terminal.may_have_committed(), "{terminal:?}");
            assert!(terminal.is_definite_refusal(), "{terminal:?}");
        }
    }

    fn unexpected(status: u16) -> ProviderError {
        ProviderError::UnexpectedResponse {
            status,
            message: "threatwinds create: response does not match the documented shape".into(),
            excerpt: String::new(),
        }
    }

    #[test]
    fn an_undecodable_2xx_may_have_committed() {
        // The provider did the work and answered success; only the body is unusable.
        for status in [200, 201, 202, 204, 299] {
            let e = unexpected(status);
            assert!(e.may_have_committed(), "{status}");
            assert!(!e.is_retryable(), "{status}");
            assert!(!e.is_definite_refusal(), "{status}");
        }
        // A status the docs never mention says nothing about a commit.
        for status in [101, 199, 300, 302, 308] {
            assert!(!unexpected(status).may_have_committed(), "{status}");
        }
    }

    #[test]
    fn code_rejected_is_terminal_and_names_its_class() {
        let e = ProviderError::CodeRejected {
            message: "threatwinds verify: HTTP 401: verification code not found".into(),
            error_id: Some("39908d33".into()),
        };
        assert!(!e.is_retryable());
        assert!(!e.may_have_committed());
        assert!(!e.is_permission_denied());
        assert_eq!(e.class(), "code_rejected");
        assert_eq!(e.error_id(), Some("39908d33"));
        assert_eq!(e.retry_after(), None);
        assert_eq!(
            e.to_string(),
            "threatwinds verify: HTTP 401: verification code not found (error id 39908d33)"
        );
    }

    #[test]
    fn permission_denied_is_a_forbidden_without_retry_after() {
        let forbidden = |retry_after| ProviderError::Forbidden {
            message: "threatwinds create: HTTP 403: forbidden".into(),
            error_id: None,
            retry_after,
        };
        let denied = forbidden(None);
        assert!(denied.is_permission_denied());
        // Still retried: the older page says 403 may be throttling.
        assert!(denied.is_retryable());
        let throttled = forbidden(Some(Duration::from_secs(5)));
        assert!(!throttled.is_permission_denied());
        assert!(throttled.is_retryable());
        let limited = ProviderError::RateLimited {
            message: "x".into(),
            retry_after: None,
        };
        assert!(!limited.is_permission_denied());
        let unauthorized = ProviderError::Unauthorized {
            message: "x".into(),
            error_id: None,
        };
        assert!(!unauthorized.is_permission_denied());
    }
}
