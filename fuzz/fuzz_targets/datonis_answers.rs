//! Every Datonis 2xx answer reader on arbitrary bytes: never panics, and a sign-in error
//! never shows the password sent.
#![no_main]

use keypair_operator::provider::fuzzing::datonis;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const PASSWORD: &str = "fuzz-password-value";

fuzz_target!(|body: &[u8]| {
    let _ = datonis::page(200, body, 1);
    let _ = datonis::key_pair(200, body);
    if let Err(e) = datonis::sign_in(200, body, &SecretString::from(PASSWORD)) {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
});
