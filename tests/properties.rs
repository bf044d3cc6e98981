//! Property tests of every provider answer reader, the error mapping and its redaction,
//! the lenient timestamp / boolean / integer readings, `Retry-After`, the Datonis date
//! orders and listing logic, and the desired-Secret builder over arbitrary templates.
//!
//! Deterministic and bounded: every block runs a fixed number of cases from a fixed seed
//! (`PROPTEST_RNG_SEED` picks another seed for a local deep run, e.g.
//! `PROPTEST_RNG_SEED=7 cargo test --test properties`), and no failure file is written.
//! The fuzz targets under `fuzz/` drive the same readers for longer runs (`make fuzz`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use keypair_operator::controller::secret::{
    self, Credentials, MANAGED_BY_LABEL, OWNER_LABEL, SecretContents, SecretView,
};
use keypair_operator::crd::{ApiKeyPair, ApiKeyPairSpec, SecretDataKeys, SecretTemplate};
use keypair_operator::provider::fuzzing::{self, datonis, threatwinds};
use keypair_operator::provider::{DateOrder, Page, ProviderError, ProviderKind, RemoteKeyPair};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

/// `cases` cases from a fixed seed (or `PROPTEST_RNG_SEED`), no failure persistence, a
/// bounded shrink.
fn config(cases: u32) -> Config {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b70_6f5f_6261_6421);
    Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

// ---- strategies --------------------------------------------------------------------------

/// Field names the readers look for, and some they do not.
const FIELDS: &[&str] = &[
    "keyID",
    "keyId",
    "apiKey",
    "apiSecret",
    "keyName",
    "expireAt",
    "verified",
    "verificationCodeID",
    "verificationCodeId",
    "roles",
    "groups",
    "keys",
    "alias",
    "fullName",
    "key_pair",
    "key_pairs",
    "key_pair_key",
    "access_key",
    "secret_key",
    "enabled",
    "expiry_date",
    "created_at",
    "updated_at",
    "role_name",
    "role_key",
    "total_count",
    "page",
    "success",
    "auth_token",
    "message",
    "error",
    "errors",
    "uuid",
    "error_id",
    "detail",
    "other",
];

/// Scalar values of the shapes the providers use, and odd ones.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("true"),
            Just("FALSE"),
            Just("1"),
            Just("0"),
            Just("yes"),
            Just("2"),
            Just("1446017446"),
            Just("1446017446123"),
            Just("2015/10/28 09:54:47"),
            Just("2016-09-08T18:30:00.000Z"),
            Just("2016-09-09T05:30:00+05:30"),
            Just("09/09/2016"),
            Just("2016-09-09"),
            Just("9999-12-31T23:59:59Z"),
            Just("-99999999999999"),
            Just(""),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ]
}

/// JSON values whose object keys are mostly field names the readers know.
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..10).prop_map(
                |fields| {
                    Value::Object(
                        fields
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

/// Bodies: arbitrary bytes, JSON of known fields, and such JSON cut off anywhere.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        value().prop_map(|v| v.to_string().into_bytes()),
        (value(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let text = v.to_string().into_bytes();
            let at = cut.index(text.len() + 1);
            text[..at].to_vec()
        }),
    ]
}

/// A secret as providers issue them: long enough to matter, never a substring of the
/// surrounding JSON by accident (it has a marker no field name or value has).
fn secret_value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9+/=_.:-]{8,48}".prop_map(|s| format!("Zq{s}"))
}

fn shown(e: &ProviderError) -> String {
    format!("{e} {e:?}")
}

/// Whether `text` shows `secret`, or the first `len` characters of it when the body was
/// cut inside the secret (at least 8 of them: shorter bits say nothing).
fn leaks(text: &str, secret: &str, len: usize) -> bool {
    let len = len.min(secret.len());
    len >= 8 && text.contains(&secret[..len])
}

// ---- never panic on anything -------------------------------------------------------------

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn threatwinds_readers_never_panic(body in body(), status in 200u16..300) {
        let _ = threatwinds::create(status, &body, "name");
        let _ = threatwinds::check(status, &body);
        let _ = threatwinds::list(status, &body);
        let _ = threatwinds::session(status, &body);
        let _ = threatwinds::extend(status, &body);
        let _ = threatwinds::new_code(status, &body);
    }

    #[test]
    fn datonis_readers_never_panic(body in body(), status in 200u16..300, page in any::<u32>()) {
        let _ = datonis::page(status, &body, page);
        let _ = datonis::key_pair(status, &body);
        let _ = datonis::sign_in(status, &body, &SecretString::from("password-1"));
    }

    #[test]
    fn error_mapping_never_panics_and_keeps_the_status_class(
        status in 100u16..1000,
        body in body(),
        header_values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 3),
    ) {
        let names = ["x-error", "x-error-id", "retry-after"];
        let headers: Vec<(&str, &[u8])> =
            names.iter().copied().zip(header_values.iter().map(Vec::as_slice)).collect();
        for provider in [ProviderKind::Threatwinds, ProviderKind::Datonis] {
            let e = fuzzing::error_response(provider, status, &headers, &body, &[]);
            let text = e.to_string();
            prop_assert!(text.starts_with(provider.as_str()), "{}", text);
            prop_assert!(!text.contains('\n'), "{}", text);
            if let Some(id) = e.error_id() {
                prop_assert!(id.len() <= 64 && !id.is_empty());
            }
            if let Some(after) = e.retry_after() {
                prop_assert!(after <= Duration::from_secs(86_400));
            }
            let expected = match status {
                401 => "unauthorized",
                403 => "forbidden",
                404 | 410 => "not_found",
                429 => "rate_limited",
                408 | 500..=599 => "server_error",
                400..=499 => "bad_request",
                _ => "unexpected_response",
            };
            prop_assert_eq!(e.class(), expected);
        }
    }

    #[test]
    fn lenient_readings_never_panic(v in value()) {
        let _ = fuzzing::timestamp(&v);
        let _ = fuzzing::boolean(&v);
        let _ = fuzzing::integer(&v);
    }

    #[test]
    fn retry_after_never_panics_and_is_capped(text in ".{0,40}", secs in any::<i64>()) {
        let now = Utc.timestamp_opt(secs.rem_euclid(253_402_300_000), 0).single().unwrap_or_default();
        for v in [text.clone(), format!("{secs}"), format!("{}.5", secs), format!("-{text}")] {
            if let Some(d) = fuzzing::retry_after(&v, now) {
                prop_assert!(d <= Duration::from_secs(86_400), "{:?} -> {:?}", v, d);
            }
        }
    }

    #[test]
    fn redaction_never_panics_and_is_one_short_line(body in body(), text in ".{0,400}") {
        let e = fuzzing::excerpt(&body, &[]);
        prop_assert!(e.chars().count() <= 200 && !e.contains('\n'), "{}", e);
        let m = fuzzing::message(&text, &[]);
        prop_assert!(m.chars().count() <= 300 && !m.contains('\n'), "{}", m);
    }
}

// ---- no secret in any error --------------------------------------------------------------

/// A key-pair answer of either provider with `secret` as its secret, as JSON text.
fn key_pair_body(provider: ProviderKind, secret: &str, extra: &Value) -> String {
    let mut object = match provider {
        ProviderKind::Threatwinds => json!({
            "keyID": "5f35d2c4", "apiKey": "fq6JoEFTsxiX", "apiSecret": secret,
            "keyName": "n", "expireAt": 1674492894, "verified": false,
            "verificationCodeID": "6a2b4c5d"
        }),
        ProviderKind::Datonis => json!({
            "key_pair_key": "t711", "access_key": "t711", "secret_key": secret,
            "enabled": true, "expiry_date": "2016-09-08T18:30:00.000Z", "role_key": "r"
        }),
    };
    if let (Value::Object(o), Value::Object(e)) = (&mut object, extra) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    object.to_string()
}

/// Every reader of `provider` on `body`, as the errors they give.
fn reader_errors(provider: ProviderKind, body: &[u8], sent: &SecretString) -> Vec<ProviderError> {
    let mut errors = Vec::new();
    match provider {
        ProviderKind::Threatwinds => {
            errors.extend(threatwinds::create(200, body, "n").err());
            errors.extend(threatwinds::check(200, body).err());
            errors.extend(threatwinds::list(200, body).err());
            errors.extend(threatwinds::session(200, body).err());
            errors.extend(threatwinds::new_code(200, body).err());
        }
        ProviderKind::Datonis => {
            errors.extend(datonis::page(200, body, 1).err());
            errors.extend(datonis::key_pair(200, body).err());
            errors.extend(datonis::sign_in(200, body, sent).err());
        }
    }
    errors
}

proptest! {
    #![proptest_config(config(256))]

    /// Answers carrying a secret, whole, wrapped, with odd extra fields or cut off at any
    /// point (also inside the secret): no error shows the secret or the part that came.
    #[test]
    fn reader_errors_never_show_a_secret_of_the_answer(
        secret in secret_value(),
        extra in value(),
        wrap in 0usize..4,
        cut in any::<prop::sample::Index>(),
    ) {
        for provider in [ProviderKind::Threatwinds, ProviderKind::Datonis] {
            let one = key_pair_body(provider, &secret, &extra);
            let body = match wrap {
                0 => one,
                1 => format!(r#"{{"keys":[{one}],"key_pairs":[{one}],"total_count":"1"}}"#),
                2 => format!(r#"{{"key_pair":{one}}}"#),
                _ => format!(r#"{{"success":true,"auth_token":"{secret}","key_pair":[{one}]}}"#),
            };
            let at = cut.index(body.len() + 1);
            let Some(start) = body.find(&secret) else { continue };
            let came = at.saturating_sub(start);
            for bytes in [body.as_bytes(), &body.as_bytes()[..at]] {
                let len = if bytes.len() == body.len() { secret.len() } else { came };
                let password = SecretString::from("password-value-1");
                for e in reader_errors(provider, bytes, &password) {
                    let text = shown(&e);
                    prop_assert!(!leaks(&text, &secret, len), "{} leaks {:?}", text, secret);
                }
            }
        }
    }

    /// Error answers with a secret under a secret-looking key (at any depth), the secret
    /// the request sent echoed in headers and messages, and bodies cut anywhere: the
    /// error never shows either secret.
    #[test]
    fn error_answers_never_show_a_secret(
        secret in secret_value(),
        sent in secret_value(),
        status in prop::sample::select(vec![400u16, 401, 403, 404, 409, 422, 429, 500, 503, 302]),
        key in prop::sample::select(vec!["apiSecret", "secret_key", "auth_token", "password", "token", "code", "Authorization"]),
        depth in 0usize..3,
        cut in any::<prop::sample::Index>(),
        echo in 0usize..4,
    ) {
        let mut inner = json!({ key: secret });
        for _ in 0..depth {
            inner = json!({"errors": [inner], "detail": {"field": inner.clone()}});
        }
        let message = match echo {
            0 => "request refused".to_owned(),
            1 => format!("bad api-secret {sent}"),
            2 => format!(r#"invalid body {{"apiSecret":"{sent}"}}"#),
            _ => format!("token={sent};"),
        };
        let body = json!({"error": message, "uuid": "7ae253bc", "data": inner}).to_string();
        let headers: [(&str, &[u8]); 3] = [
            ("x-error", message.as_bytes()),
            ("x-error-id", sent.as_bytes()),
            ("retry-after", b"5"),
        ];
        let at = cut.index(body.len() + 1);
        let sent_secret = SecretString::from(sent.clone());
        for provider in [ProviderKind::Threatwinds, ProviderKind::Datonis] {
            for (bytes, secret_len) in [
                (body.as_bytes(), secret.len()),
                (&body.as_bytes()[..at], at.saturating_sub(body.find(&secret).unwrap_or(at))),
            ] {
                let e = fuzzing::error_response(
                    provider, status, &headers, bytes, std::slice::from_ref(&sent_secret),
                );
                let text = shown(&e);
                prop_assert!(!leaks(&text, &secret, secret_len), "{} leaks {:?}", text, secret);
                prop_assert!(!text.contains(&sent), "{} shows the sent secret {:?}", text, sent);
            }
        }
    }

    /// A sign-in refusal quoting the password never shows it.
    #[test]
    fn a_refused_sign_in_never_shows_the_password(password in secret_value(), before in "[a-z ]{0,20}") {
        let body = json!({"success": false, "error": format!("{before}{password} is wrong")}).to_string();
        let e = datonis::sign_in(200, body.as_bytes(), &SecretString::from(password.clone()))
            .expect_err("refused");
        let refused = matches!(e, ProviderError::Unauthorized { .. });
        prop_assert!(refused, "{:?}", e);
        prop_assert!(!shown(&e).contains(&password), "{}", shown(&e));
    }

    /// Excerpts and messages never show a secret the request sent.
    #[test]
    fn redaction_removes_sent_secrets(sent in secret_value(), before in ".{0,30}", after in ".{0,30}") {
        let text = format!("{before}{sent}{after}");
        let known = [SecretString::from(sent.clone())];
        prop_assert!(!fuzzing::message(&text, &known).contains(&sent));
        prop_assert!(!fuzzing::excerpt(text.as_bytes(), &known).contains(&sent));
        let as_json = json!({"note": text}).to_string();
        prop_assert!(!fuzzing::excerpt(as_json.as_bytes(), &known).contains(&sent));
    }
}

// ---- what is read is what was written ----------------------------------------------------

/// Any instant from 1970 to 5000, to the nanosecond.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..95_617_584_000, 0u32..1_000_000_000)
        .prop_map(|(s, n)| Utc.timestamp_opt(s, n).single().unwrap_or_default())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn timestamps_round_trip_in_every_written_form(at in instant()) {
        let secs = Utc.timestamp_opt(at.timestamp(), 0).single().unwrap_or_default();
        let millis = Utc.timestamp_millis_opt(at.timestamp_millis()).single().unwrap_or_default();
        let t = |v: Value| fuzzing::timestamp(&v);
        prop_assert_eq!(t(json!(at.to_rfc3339())), Some(at));
        prop_assert_eq!(t(json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))), Some(millis));
        prop_assert_eq!(t(json!(at.timestamp())), Some(secs));
        prop_assert_eq!(t(json!(at.timestamp().to_string())), Some(secs));
        // Unix milliseconds are told from seconds by size (from March 1973 on).
        if at.timestamp_millis() >= 100_000_000_000 {
            prop_assert_eq!(t(json!(at.timestamp_millis())), Some(millis));
        }
        prop_assert_eq!(t(json!(at.format("%Y/%m/%d %H:%M:%S").to_string())), Some(secs));
        prop_assert_eq!(t(json!(at.format("%Y-%m-%d %H:%M:%S").to_string())), Some(secs));
        let midnight = at.date_naive().and_hms_opt(0, 0, 0).map(|n| n.and_utc());
        prop_assert_eq!(t(json!(at.format("%Y-%m-%d").to_string())), midnight);
        prop_assert_eq!(t(json!(at.format("%Y/%m/%d").to_string())), midnight);
        // In another zone: the same instant.
        let east = at.with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).expect("zone"));
        prop_assert_eq!(t(json!(east.to_rfc3339())), Some(at));
    }

    #[test]
    fn booleans_and_integers_round_trip(b in any::<bool>(), n in any::<u64>()) {
        prop_assert_eq!(fuzzing::boolean(&json!(b)), Some(b));
        prop_assert_eq!(fuzzing::boolean(&json!(b.to_string().to_uppercase())), Some(b));
        prop_assert_eq!(fuzzing::boolean(&json!(u8::from(b))), Some(b));
        prop_assert_eq!(fuzzing::integer(&json!(n)), Some(n));
        prop_assert_eq!(fuzzing::integer(&json!(format!(" {n} "))), Some(n));
    }

    #[test]
    fn retry_after_reads_seconds_and_every_http_date_form(
        now in instant(),
        wait in 0u64..86_400,
    ) {
        let now = Utc.timestamp_opt(now.timestamp(), 0).single().unwrap_or_default();
        let then = now + chrono::Duration::seconds(wait as i64);
        let want = Some(Duration::from_secs(wait));
        prop_assert_eq!(fuzzing::retry_after(&wait.to_string(), now), want);
        for form in ["%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"] {
            // RFC 850 has a two-digit year: only where it reads back as the same century.
            if form.contains("%y") && !(1970..2070).contains(&chrono::Datelike::year(&then)) {
                continue;
            }
            let text = then.format(form).to_string();
            prop_assert_eq!(fuzzing::retry_after(&text, now), want, "{}", text);
        }
        // A date in the past means now.
        let past = (now - chrono::Duration::seconds(wait as i64 + 1)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        prop_assert_eq!(fuzzing::retry_after(&past, now), Some(Duration::ZERO));
    }

    #[test]
    fn expiry_dates_round_trip_in_both_orders(days in 0u64..3_000_000) {
        let date = NaiveDate::from_ymd_opt(1000, 1, 1)
            .and_then(|d| d.checked_add_days(Days::new(days)))
            .unwrap_or_default();
        for order in [DateOrder::DayFirst, DateOrder::MonthFirst] {
            let text = fuzzing::format_expiry_date(date, order);
            prop_assert_eq!(fuzzing::parse_expiry_date(&text, order), Some(date), "{}", text);
        }
    }

    /// The answered expiry (midnight of the account's zone, in UTC) tells the order the
    /// provider read: the order sent when it is on the date, the other one when it is on
    /// the date read the other way, nothing when day = month.
    #[test]
    fn the_answered_expiry_shows_the_date_order(
        days in 0u64..40_000,
        zone_hours in -12i64..=14,
        first in any::<bool>(),
    ) {
        let date = NaiveDate::from_ymd_opt(1990, 1, 1)
            .and_then(|d| d.checked_add_days(Days::new(days)))
            .unwrap_or_default();
        let sent = if first { DateOrder::DayFirst } else { DateOrder::MonthFirst };
        let other = if first { DateOrder::MonthFirst } else { DateOrder::DayFirst };
        let stored = |d: NaiveDate| {
            d.and_hms_opt(0, 0, 0).map(|n| n.and_utc() - chrono::Duration::hours(zone_hours))
        };
        let (day, month) = (chrono::Datelike::day(&date), chrono::Datelike::month(&date));
        let shown = datonis::order_shown(date, sent, stored(date));
        if day == month {
            prop_assert_eq!(shown, None);
        } else {
            prop_assert_eq!(shown, Some(sent));
            let misread = NaiveDate::from_ymd_opt(chrono::Datelike::year(&date), day, month);
            if let Some(m) = misread {
                prop_assert_eq!(datonis::order_shown(date, sent, stored(m)), Some(other));
            }
        }
    }
}

// ---- Datonis listing over pages as a server may send them ---------------------------------

fn key(id: &str) -> RemoteKeyPair {
    RemoteKeyPair {
        key_id: id.to_owned(),
        api_key: id.to_owned(),
        ..RemoteKeyPair::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Whatever pages come (short, empty, repeated, overlapping, with changing totals):
    /// a listing that ends Ok has no duplicate and at least `total_count` key pairs; a
    /// server that pages correctly gives exactly the account's keys.
    #[test]
    fn a_listing_is_complete_or_an_error(
        pages in prop::collection::vec(
            (prop::option::of(0u64..30), prop::collection::vec(0u8..30, 0..8)),
            1..8,
        ),
        per in 1u32..8,
        total in 0usize..40,
    ) {
        let as_pages: Vec<Page> = pages
            .iter()
            .enumerate()
            .map(|(i, (t, ids))| Page {
                total_count: *t,
                page: i as u32 + 1,
                key_pairs: ids.iter().map(|n| key(&format!("k{n}"))).collect(),
            })
            .collect();
        // The first page is always read: a listing never ends short of its total.
        let first_total = pages[0].0;
        if let Some(Ok(keys)) = datonis::listing(as_pages, per) {
            let mut ids: Vec<&str> = keys.iter().map(|k| k.key_id.as_str()).collect();
            ids.sort_unstable();
            let before = ids.len();
            ids.dedup();
            prop_assert_eq!(ids.len(), before, "duplicates");
            if let Some(t) = first_total {
                prop_assert!(keys.len() as u64 >= t, "{} of {}", keys.len(), t);
            }
        }
        // A well-behaved server: `total` keys in pages of `per`.
        let all: Vec<String> = (0..total).map(|n| format!("k{n}")).collect();
        let mut good: Vec<Page> = all
            .chunks(per as usize)
            .enumerate()
            .map(|(i, c)| Page {
                total_count: Some(total as u64),
                page: i as u32 + 1,
                key_pairs: c.iter().map(|id| key(id)).collect(),
            })
            .collect();
        good.push(Page { total_count: Some(total as u64), page: 0, key_pairs: Vec::new() });
        let listed = datonis::listing(good, per);
        let got: Vec<String> = match listed {
            Some(Ok(keys)) => keys.into_iter().map(|k| k.key_id).collect(),
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(got, all);
    }
}

// ---- the desired Secret over arbitrary templates -----------------------------------------

fn akp(template: SecretTemplate, name: &str) -> ApiKeyPair {
    let mut spec: ApiKeyPairSpec = serde_json::from_value(json!({
        "providerRef": {"name": "p"}, "validityDays": 30
    }))
    .expect("spec");
    spec.secret_template = Some(Box::new(template));
    let mut akp = ApiKeyPair::new(name, spec);
    akp.metadata.namespace = Some("apps".into());
    akp.metadata.uid = Some("uid-1".into());
    akp
}

/// Data key names from a small alphabet, so that collisions (also with `.pending`) happen.
fn data_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("apiKey".to_owned()),
        Just("apiSecret".to_owned()),
        Just("k".to_owned()),
        Just("k.pending".to_owned()),
        Just(".".to_owned()),
        Just("..k".to_owned()),
        Just(String::new()),
        "[a-z.]{1,6}",
        "[-._a-zA-Z0-9]{240,250}",
        ".{1,8}",
    ]
}

fn template() -> impl Strategy<Value = SecretTemplate> {
    let map = || {
        prop::collection::btree_map(
            prop_oneof!["[a-z]{1,10}", "[a-z.]{1,8}/[a-zA-Z0-9_.-]{1,12}", ".{0,12}"],
            prop_oneof!["[a-zA-Z0-9_.-]{0,20}", ".{0,70}"],
            0..4,
        )
    };
    (
        map(),
        map(),
        data_key(),
        data_key(),
        prop::option::of(prop_oneof![
            Just("Opaque".to_owned()),
            Just("kubernetes.io/basic-auth".to_owned()),
            Just("kubernetes.io/tls".to_owned()),
            "[a-z./-]{1,20}",
        ]),
    )
        .prop_map(
            |(labels, annotations, api_key, api_secret, type_)| SecretTemplate {
                labels,
                annotations,
                keys: SecretDataKeys {
                    api_key,
                    api_secret,
                },
                type_,
            },
        )
}

fn credentials() -> impl Strategy<Value = Credentials> {
    ("[A-Za-z0-9]{1,24}", secret_value()).prop_map(|(api_key, s)| Credentials {
        api_key,
        api_secret: SecretString::from(s),
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// A template the validation lets through gives a Secret with each credential under its
    /// own key, that reads back as written, with labels Kubernetes accepts, and with the
    /// secrets nowhere but in `data`. Colliding data keys are always refused, never merged.
    #[test]
    fn the_desired_secret_keeps_every_credential_or_the_template_is_refused(
        template in template(),
        name in prop_oneof!["[a-z0-9]{1,10}", "[a-z0-9]([-a-z0-9.]{60,240}[a-z0-9])"],
        current in credentials(),
        pending in prop::option::of(credentials()),
    ) {
        let keys = template.keys.clone();
        let akp = akp(template, &name);
        let problem = secret::template_problem(&akp);
        let names = [
            keys.api_key.clone(),
            keys.api_secret.clone(),
            format!("{}.pending", keys.api_key),
            format!("{}.pending", keys.api_secret),
        ];
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        if distinct.len() < names.len() {
            prop_assert!(problem.is_some(), "colliding keys {:?} not refused", names);
        }
        if problem.is_some() {
            return Ok(());
        }
        let contents = SecretContents { current: current.clone(), pending: pending.clone() };
        let desired = secret::desired_secret(&akp, &contents);
        let data = desired.data.clone().unwrap_or_default();
        let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        want.insert(keys.api_key.clone(), current.api_key.clone().into_bytes());
        want.insert(keys.api_secret.clone(), current.api_secret.expose_secret().as_bytes().to_vec());
        if let Some(p) = &pending {
            want.insert(names[2].clone(), p.api_key.clone().into_bytes());
            want.insert(names[3].clone(), p.api_secret.expose_secret().as_bytes().to_vec());
        }
        let got: BTreeMap<String, Vec<u8>> = data.into_iter().map(|(k, v)| (k, v.0)).collect();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(
            secret::view_secret(&akp, Some(&desired)),
            SecretView::Owned { current: Some(current.clone()), pending: pending.clone() }
        );
        let labels = desired.metadata.labels.clone().unwrap_or_default();
        prop_assert_eq!(labels.get(MANAGED_BY_LABEL).map(String::as_str), Some("keypair-operator"));
        let owner = labels.get(OWNER_LABEL).cloned().unwrap_or_default();
        prop_assert!(owner.len() <= 63 && !owner.is_empty(), "{}", owner);
        // Nothing but `data` holds a secret.
        let mut outside = desired.clone();
        outside.data = None;
        let outside = serde_json::to_string(&outside).expect("json");
        for s in std::iter::once(&current).chain(pending.as_ref()) {
            prop_assert!(!outside.contains(s.api_secret.expose_secret()), "{}", outside);
        }
    }
}
