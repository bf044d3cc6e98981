//! The provider clients' pure readers, reachable from outside the crate for the property
//! tests (`tests/properties.rs`) and the fuzz targets (`fuzz/`). Not part of the supported
//! API: every function here is a thin door to the very code the clients run on each answer.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use secrecy::SecretString;
use serde_json::Value;

use super::http::{ErrorDialect, parse_retry_after, status_error};
use super::{ProviderError, ProviderKind, lenient, redact};

/// ThreatWinds 2xx answer readers.
pub mod threatwinds {
    pub use crate::provider::threatwinds::read::*;
}
/// Datonis 2xx answer readers and the listing logic.
pub mod datonis {
    pub use crate::provider::datonis::read::*;
}

/// The error a non-2xx answer becomes: `status` (any u16; one outside 100..=999 is taken as
/// 500), raw `headers` (invalid names or values are dropped, as the HTTP stack would refuse
/// them) and `body`, with `sent` the secrets the request carried.
pub fn error_response(
    provider: ProviderKind,
    status: u16,
    headers: &[(&str, &[u8])],
    body: &[u8],
    sent: &[SecretString],
) -> ProviderError {
    let dialect = match provider {
        ProviderKind::Threatwinds => ErrorDialect::ThreatWinds,
        ProviderKind::Datonis => ErrorDialect::Datonis,
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    let sent: Vec<&SecretString> = sent.iter().collect();
    status_error(provider, dialect, "fuzz", status, &map, body, &sent)
}

/// `Retry-After` (delay-seconds or an HTTP-date) relative to `now`.
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    parse_retry_after(value, now)
}

/// A lenient timestamp (unix seconds or milliseconds, RFC 3339, `yyyy/mm/dd hh:mm:ss`, ...).
pub fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    lenient::timestamp_of(value)
}

/// A lenient boolean (`true`, `"false"`, `1`, `"yes"`, ...).
pub fn boolean(value: &Value) -> Option<bool> {
    lenient::bool_of(value)
}

/// A lenient non-negative integer (a number or a string holding one).
pub fn integer(value: &Value) -> Option<u64> {
    lenient::u64_of(value)
}

/// A short, redacted excerpt of a body, as errors carry.
pub fn excerpt(body: &[u8], sent: &[SecretString]) -> String {
    let sent: Vec<&SecretString> = sent.iter().collect();
    redact::excerpt(body, &sent)
}

/// A provider's own error message, made safe to show.
pub fn message(text: &str, sent: &[SecretString]) -> String {
    let sent: Vec<&SecretString> = sent.iter().collect();
    redact::message(text, &sent)
}

/// Whether a JSON key names a secret (its value is always redacted).
pub fn is_secret_key(key: &str) -> bool {
    redact::is_secret_key(key)
}

/// Writes a date the way Datonis requests carry `expiry_date`, in `order`.
pub fn format_expiry_date(date: NaiveDate, order: super::DateOrder) -> String {
    super::datonis::format_expiry_date(date, order)
}

/// Reads back an `expiry_date` written in `order` (the inverse of [`format_expiry_date`]).
pub fn parse_expiry_date(text: &str, order: super::DateOrder) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, order.format()).ok()
}
