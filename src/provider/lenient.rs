//! Lenient serde helpers for provider fields whose type the docs (or the providers'
//! examples) contradict: booleans sent as `"false"`, page numbers as `"2"`, timestamps as
//! unix seconds or as `yyyy/mm/dd hh:mm:ss` strings.
//!
//! A value of an unknown shape becomes `None` instead of failing the whole response: one
//! odd field must not hide every key pair of a list from the controller.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Unix times above this are taken as milliseconds (in seconds it is the year 5138).
const MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// `true`/`false`, `"true"`/`"false"` (any case), `1`/`0`, `"1"`/`"0"`, `"yes"`/`"no"`.
pub(crate) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(bool_of(&Value::deserialize(d)?))
}

/// A non-negative integer, or a string holding one.
pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(u64_of(&Value::deserialize(d)?))
}

/// A string, or a number written as one (ids and role keys).
pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// A list of strings; `null` is an empty list, non-string items are skipped.
pub(crate) fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Value::String(s) if !s.is_empty() => vec![s],
        _ => Vec::new(),
    })
}

/// A list that must be present but may be `null` (meaning empty). Not lenient about
/// absence: a missing list is a shape the docs do not describe, and treating it as empty
/// would make the controller think every key pair is gone.
pub(crate) fn required_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A timestamp in any shape the providers use: unix seconds (or milliseconds) as number
/// or string, RFC 3339 (`2016-09-08T18:30:00.000Z`), `yyyy/mm/dd hh:mm:ss` and
/// `yyyy-mm-dd hh:mm:ss` (taken as UTC), or a bare date (midnight UTC).
pub(crate) fn opt_timestamp<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    Ok(timestamp_of(&Value::deserialize(d)?))
}

pub(crate) fn bool_of(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn timestamp_of(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .and_then(unix),
        Value::String(s) => parse_timestamp_str(s.trim()),
        _ => None,
    }
}

fn unix(n: i64) -> Option<DateTime<Utc>> {
    if n.unsigned_abs() >= MILLIS_THRESHOLD.unsigned_abs() {
        Utc.timestamp_millis_opt(n).single()
    } else {
        Utc.timestamp_opt(n, 0).single()
    }
}

fn parse_timestamp_str(s: &str) -> Option<DateTime<Utc>> {
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i64>() {
        return unix(n);
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    const NAIVE: [&str; 4] = [
        "%Y/%m/%d %H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y/%m/%d %H:%M:%S%.f",
    ];
    if let Some(n) = NAIVE
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    {
        return Some(n.and_utc());
    }
    ["%Y-%m-%d", "%Y/%m/%d"]
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn booleans() {
        assert_eq!(bool_of(&json!(true)), Some(true));
        assert_eq!(bool_of(&json!("false")), Some(false));
        assert_eq!(bool_of(&json!("TRUE")), Some(true));
        assert_eq!(bool_of(&json!(0)), Some(false));
        assert_eq!(bool_of(&json!("1")), Some(true));
        assert_eq!(bool_of(&json!("maybe")), None);
        assert_eq!(bool_of(&json!(null)), None);
        assert_eq!(bool_of(&json!(7)), None);
    }

    #[test]
    fn integers() {
        assert_eq!(u64_of(&json!(2)), Some(2));
        assert_eq!(u64_of(&json!("2")), Some(2));
        assert_eq!(u64_of(&json!(" 3 ")), Some(3));
        assert_eq!(u64_of(&json!(4.0)), Some(4));
        assert_eq!(u64_of(&json!(4.5)), None);
        assert_eq!(u64_of(&json!(-1)), None);
        assert_eq!(u64_of(&json!("two")), None);
    }

    #[test]
    fn timestamps() {
        let t = |v: Value| timestamp_of(&v).map(|d| d.to_rfc3339());
        assert_eq!(
            t(json!(1446017446)),
            Some("2015-10-28T07:30:46+00:00".into())
        );
        assert_eq!(
            t(json!("1446017446")),
            Some("2015-10-28T07:30:46+00:00".into())
        );
        assert_eq!(
            t(json!(1446017446123_i64)),
            Some("2015-10-28T07:30:46.123+00:00".into())
        );
        assert_eq!(
            t(json!("2015/10/28 09:54:47")),
            Some("2015-10-28T09:54:47+00:00".into())
        );
        assert_eq!(
            t(json!("2016-09-08T18:30:00.000Z")),
            Some("2016-09-08T18:30:00+00:00".into())
        );
        assert_eq!(
            t(json!("2016-09-09T05:30:00+05:30")),
            Some("2016-09-09T00:00:00+00:00".into())
        );
        assert_eq!(
            t(json!("2016-09-09")),
            Some("2016-09-09T00:00:00+00:00".into())
        );
        assert_eq!(t(json!("yesterday")), None);
        assert_eq!(t(json!(null)), None);
        assert_eq!(t(json!("")), None);
        assert_eq!(t(json!(i64::MAX)), None);
        assert_eq!(t(json!(i64::MIN)), None);
    }

    #[test]
    fn strings_and_lists() {
        #[derive(Deserialize)]
        struct W {
            #[serde(default, deserialize_with = "opt_string")]
            s: Option<String>,
            #[serde(default, deserialize_with = "string_list")]
            l: Vec<String>,
            #[serde(deserialize_with = "required_list")]
            r: Vec<u8>,
        }
        let w: W = serde_json::from_value(json!({"s": 12, "l": ["a", 1, null], "r": null}))
            .expect("decode");
        assert_eq!(w.s.as_deref(), Some("12"));
        assert_eq!(w.l, vec!["a".to_owned(), "1".to_owned()]);
        assert!(w.r.is_empty());
        let w: W = serde_json::from_value(json!({"l": null, "r": [1]})).expect("decode");
        assert_eq!(w.s, None);
        assert!(w.l.is_empty());
        assert_eq!(w.r, vec![1]);
        assert!(serde_json::from_value::<W>(json!({"s": "x"})).is_err());
    }
}
