//! Non-2xx answers of both providers: the first two bytes pick the status, the rest is
//! split at 0xff bytes into `x-error`, `x-error-id`, `Retry-After` and the body. Never
//! panics; the error is one line, and never shows the secret the request sent (which a
//! server may echo anywhere).
#![no_main]

use keypair_operator::provider::ProviderKind;
use keypair_operator::provider::fuzzing;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const SENT: &str = "sent-secret-Zq0123";

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 900;
    let mut parts = data[2..].splitn(4, |b| *b == 0xff);
    let mut next = || parts.next().unwrap_or_default().to_vec();
    let with_sent = |mut v: Vec<u8>| {
        // `~` in the input stands for the sent secret, so echoes are easy to find.
        let mut out = Vec::new();
        for b in v.drain(..) {
            if b == b'~' {
                out.extend_from_slice(SENT.as_bytes());
            } else {
                out.push(b);
            }
        }
        out
    };
    let (message, id, retry, body) = (
        with_sent(next()),
        with_sent(next()),
        next(),
        with_sent(next()),
    );
    let headers: [(&str, &[u8]); 3] = [
        ("x-error", &message),
        ("x-error-id", &id),
        ("retry-after", &retry),
    ];
    let sent = [SecretString::from(SENT)];
    for provider in [ProviderKind::Threatwinds, ProviderKind::Datonis] {
        let e = fuzzing::error_response(provider, status, &headers, &body, &sent);
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(SENT), "{shown}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
});
