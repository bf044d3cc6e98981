//! Every ThreatWinds 2xx answer reader on arbitrary bytes: never panics, and no error
//! shows the `apiSecret` the answer carried.
#![no_main]

use keypair_operator::provider::fuzzing::threatwinds;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let errors = [
        threatwinds::create(200, body, "name").err(),
        threatwinds::check(200, body).err(),
        threatwinds::list(200, body).err(),
        threatwinds::session(200, body).err(),
        threatwinds::extend(200, body).err(),
        threatwinds::new_code(200, body).err(),
    ];
    for e in errors.into_iter().flatten() {
        let _ = format!("{e} {e:?}");
    }
});
