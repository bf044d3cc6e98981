//! The lenient readings (timestamps, booleans, integers), `Retry-After`, the expiry date
//! in both orders, and redaction, on arbitrary input: never panic, `Retry-After` is capped
//! at a day, excerpts and messages are short single lines without the sent secret.
#![no_main]

use std::time::Duration;

use chrono::{TimeZone, Utc};
use keypair_operator::provider::DateOrder;
use keypair_operator::provider::fuzzing;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use serde_json::Value;

const SENT: &str = "sent-secret-Zq0123";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values = [
        serde_json::from_slice::<Value>(data).ok(),
        Some(Value::String(text.to_string())),
    ];
    for v in values.iter().flatten() {
        let _ = fuzzing::timestamp(v);
        let _ = fuzzing::boolean(v);
        let _ = fuzzing::integer(v);
    }
    let now = Utc
        .timestamp_opt(1_700_000_000, 0)
        .single()
        .unwrap_or_default();
    if let Some(d) = fuzzing::retry_after(&text, now) {
        assert!(d <= Duration::from_secs(86_400), "{text:?} -> {d:?}");
    }
    for order in [DateOrder::DayFirst, DateOrder::MonthFirst] {
        if let Some(date) = fuzzing::parse_expiry_date(&text, order) {
            let again = fuzzing::format_expiry_date(date, order);
            assert_eq!(fuzzing::parse_expiry_date(&again, order), Some(date));
        }
    }
    let with_sent = text.replace('~', SENT);
    let sent = [SecretString::from(SENT)];
    let e = fuzzing::excerpt(with_sent.as_bytes(), &sent);
    assert!(
        e.chars().count() <= 200 && !e.contains('\n') && !e.contains(SENT),
        "{e}"
    );
    let m = fuzzing::message(&with_sent, &sent);
    assert!(
        m.chars().count() <= 300 && !m.contains('\n') && !m.contains(SENT),
        "{m}"
    );
});
