//! Making provider text safe to put in an error message or a log line.
//!
//! Provider bodies carry secrets (`apiSecret`, `secret_key`, `auth_token`, ...), and a
//! misbehaving server might echo a header or a field back into an error. Everything the
//! HTTP layer copies out of a response goes through here first: JSON values under
//! secret-looking keys are replaced, long token-like runs in plain text are masked, and
//! the secrets the client itself sent on that call are removed verbatim.

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// What replaces a secret.
pub(crate) const REDACTED: &str = "[redacted]";

/// Longest excerpt of a body kept in an error.
pub(crate) const MAX_EXCERPT_CHARS: usize = 200;

/// Longest provider message kept in an error.
pub(crate) const MAX_MESSAGE_CHARS: usize = 300;

/// Plain-text runs at least this long (of `[A-Za-z0-9_]`) look like tokens and are masked.
/// Shorter than any key, secret or token the providers issue, longer than ordinary words
/// and than each group of a UUID (so error ids in messages survive).
const TOKEN_RUN_MIN: usize = 20;

/// Known secrets shorter than this are not scrubbed verbatim: replacing a 3-letter string
/// everywhere would mangle ordinary words and hide nothing worth hiding.
const KNOWN_SECRET_MIN: usize = 6;

/// Whether a JSON key names a secret (`apiSecret`, `secret_key`, `api-secret`,
/// `auth_token`, `bearer`, `token`, `password`, `code`, ...).
pub(crate) fn is_secret_key(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const CONTAINS: [&str; 6] = [
        "secret",
        "token",
        "password",
        "passwd",
        "bearer",
        "authorization",
    ];
    CONTAINS.iter().any(|w| norm.contains(w)) || matches!(norm.as_str(), "code" | "otp" | "pin")
}

/// Replaces, recursively, the value of every secret-looking key with `"[redacted]"`.
pub(crate) fn redact_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) {
                    *v = Value::String(REDACTED.to_owned());
                } else {
                    redact_json(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

/// Masks every run of [`TOKEN_RUN_MIN`] or more `[A-Za-z0-9_]` characters.
pub(crate) fn mask_token_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= TOKEN_RUN_MIN {
            out.push_str(REDACTED);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Removes every verbatim occurrence of the given secrets.
pub(crate) fn scrub_known(text: &str, known: &[&SecretString]) -> String {
    let mut out = text.to_owned();
    for secret in known {
        let s = secret.expose_secret();
        if s.chars().count() >= KNOWN_SECRET_MIN && out.contains(s) {
            out = out.replace(s, REDACTED);
        }
    }
    out
}

/// Collapses control characters and whitespace runs to single spaces, so a message is one
/// line, and cuts it to `max` characters (marking the cut with `…`).
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut last_space = false;
    for c in text.trim().chars() {
        if c.is_whitespace() || c.is_control() {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    if out.chars().count() > max {
        let mut cut: String = out.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        out
    }
}

/// Masks, in text that is JSON-like but does not parse (a body cut off on the way), the
/// string value of every secret-looking key, also one the cut left unterminated: a cut
/// inside a secret leaves a run too short for [`mask_token_runs`] to catch.
pub(crate) fn mask_secret_fields_in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // The previous complete string, if only whitespace and `:` follow it.
    let mut key: Option<&str> = None;
    while let Some(open) = rest.find('"') {
        let (between, string) = rest.split_at(open);
        let secret_value = between.trim() == ":" && key.is_some_and(is_secret_key);
        out.push_str(between);
        out.push('"');
        let string = &string[1..];
        let Some(close) = string_end(string) else {
            out.push_str(if secret_value { REDACTED } else { string });
            return out;
        };
        out.push_str(if secret_value {
            REDACTED
        } else {
            &string[..close]
        });
        out.push('"');
        key = (!secret_value).then(|| &string[..close]);
        rest = &string[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Byte index of the `"` closing a JSON string whose opening quote came just before.
fn string_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// A short, secret-free excerpt of a response body for an error message.
///
/// JSON bodies get secret-looking keys redacted; anything else gets the values of
/// secret-looking keys (in cut-off JSON) and token-like runs masked. Both also lose the
/// secrets the client sent on this call.
pub(crate) fn excerpt(body: &[u8], known: &[&SecretString]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            redact_json(&mut v);
            v.to_string()
        }
        Err(_) => mask_token_runs(&mask_secret_fields_in_text(&String::from_utf8_lossy(body))),
    };
    let text = if text.trim().is_empty() {
        "<empty>".to_owned()
    } else {
        text
    };
    one_line(&scrub_known(&text, known), MAX_EXCERPT_CHARS)
}

/// A provider's own error message (header, body field, or a short body that is not JSON,
/// such as a cut-off one), made safe to show: the values of secret-looking fields in it
/// are masked too, also one the cut left unterminated.
pub(crate) fn message(text: &str, known: &[&SecretString]) -> String {
    let text = mask_secret_fields_in_text(&scrub_known(text, known));
    one_line(&mask_token_runs(&text), MAX_MESSAGE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "fq6JoEFTsxiXAl1cVxPDnK4emIQCwaUBfq6JoEFTsxiXAl1cVxPDnK4emIQCwaUB";

    #[test]
    fn secret_keys_are_recognised() {
        for k in [
            "apiSecret",
            "secret_key",
            "api-secret",
            "auth_token",
            "bearer",
            "token",
            "password",
            "code",
            "X-Auth-Token",
            "Authorization",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "apiKey",
            "keyID",
            "verificationCodeID",
            "error",
            "uuid",
            "access_key",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn json_excerpt_redacts_nested_secret_values() {
        let body = format!(
            r#"{{"apiKey":"k1","apiSecret":"{SECRET}","nested":{{"auth_token":"{SECRET}","list":[{{"secret_key":"{SECRET}","code":"654321"}}]}},"password":"hunter2hunter2"}}"#
        );
        let e = excerpt(body.as_bytes(), &[]);
        assert!(!e.contains(SECRET), "{e}");
        assert!(!e.contains("654321"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("\"apiKey\":\"k1\""), "{e}");
        assert!(e.contains(REDACTED), "{e}");
        assert!(e.chars().count() <= MAX_EXCERPT_CHARS);
    }

    #[test]
    fn text_excerpt_masks_long_runs_and_keeps_uuids() {
        let body = format!(
            "<html>token {SECRET} for 7ae253bc-b1ca-4e8b-a5ca-268645e76f60 WtUFnj8pvSxVnH9e_xkq7A</html>"
        );
        let e = excerpt(body.as_bytes(), &[]);
        assert!(!e.contains(SECRET), "{e}");
        assert!(!e.contains("WtUFnj8pvSxVnH9e_xkq7A"), "{e}");
        assert!(e.contains("7ae253bc-b1ca-4e8b-a5ca-268645e76f60"), "{e}");
    }

    #[test]
    fn excerpt_is_short_single_line_and_marks_empty() {
        let long = "a b\n".repeat(500);
        let e = excerpt(long.as_bytes(), &[]);
        assert_eq!(e.chars().count(), MAX_EXCERPT_CHARS);
        assert!(e.ends_with('…'));
        assert!(!e.contains('\n'));
        assert_eq!(excerpt(b"", &[]), "<empty>");
        // Invalid UTF-8 must not panic.
        let _ = excerpt(&[0xff, 0xfe, b'{'], &[]);
    }

    #[test]
    fn known_secrets_are_scrubbed_even_when_short_of_a_run() {
        let known = SecretString::from("pa-ss-wo-rd");
        let m = message("bad password pa-ss-wo-rd given", &[&known]);
        assert_eq!(m, "bad password [redacted] given");
        let tiny = SecretString::from("tok");
        assert_eq!(message("token", &[&tiny]), "token");
        // Known secrets are also removed from JSON excerpts under harmless keys.
        let e = excerpt(br#"{"error":"pa-ss-wo-rd"}"#, &[&known]);
        assert!(!e.contains("pa-ss-wo-rd"), "{e}");
    }

    #[test]
    fn a_message_that_is_cut_off_json_loses_its_secret_values() {
        // A cut-off error body is taken as the message: its short secret is no token run.
        let m = message(r#"{"data":{"apiSecret":"Zq+_AAaA"#, &[]);
        assert!(!m.contains("Zq+_AAaA"), "{m}");
        let m = message(r#"invalid body {"password":"pw-1-2-3"}"#, &[]);
        assert!(!m.contains("pw-1-2-3") && m.contains("invalid body"), "{m}");
    }

    #[test]
    fn cut_off_json_loses_secret_values_even_when_cut_inside_one() {
        // Cut 12 characters into the secret: too short a run to be masked as a token.
        let body = r#"{"apiKey":"k1","note":"a \"q\" b","apiSecret" : "fq6JoEFTsxiX"#;
        let e = excerpt(body.as_bytes(), &[]);
        assert!(!e.contains("fq6JoEFTsxiX"), "{e}");
        assert!(e.contains(r#""apiKey":"k1""#), "{e}");
        assert!(e.contains(r#""apiSecret" : "[redacted]"#), "{e}");
        let body = r#"{"secret_key":"abc123","access_key":"a1","#;
        let e = excerpt(body.as_bytes(), &[]);
        assert!(
            !e.contains("abc123") && e.contains(r#""access_key":"a1""#),
            "{e}"
        );
    }
}
