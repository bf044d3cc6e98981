//! The desired Secret over arbitrary templates: the input, split at 0xff bytes, gives the
//! two data key names, a label, an annotation and the type. A template the validation lets
//! through yields each credential under its own key and the secrets nowhere but in `data`;
//! colliding data keys are always refused.
#![no_main]

use keypair_operator::controller::secret::{self, Credentials, SecretContents};
use keypair_operator::crd::{ApiKeyPair, ApiKeyPairSpec, SecretDataKeys, SecretTemplate};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const SECRET: &str = "current-secret-Zq0123";
const PENDING: &str = "pending-secret-Zq4567";

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(7, |b| *b == 0xff);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (api_key, api_secret) = (next(), next());
    let (label, label_value, annotation, annotation_value, type_) =
        (next(), next(), next(), next(), next());
    let template = SecretTemplate {
        labels: [(label, label_value)].into(),
        annotations: [(annotation, annotation_value)].into(),
        keys: SecretDataKeys {
            api_key: api_key.clone(),
            api_secret: api_secret.clone(),
        },
        type_: (!type_.is_empty()).then_some(type_),
    };
    let Ok(mut spec) =
        serde_json::from_value::<ApiKeyPairSpec>(serde_json::json!({"providerRef": {"name": "p"}}))
    else {
        return;
    };
    spec.secret_template = Some(template);
    let mut akp = ApiKeyPair::new("fuzz", spec);
    akp.metadata.namespace = Some("ns".into());
    akp.metadata.uid = Some("uid".into());
    let names = [
        api_key.clone(),
        api_secret.clone(),
        format!("{api_key}.pending"),
        format!("{api_secret}.pending"),
    ];
    let distinct = names
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        == 4;
    let problem = secret::template_problem(&akp);
    assert!(
        distinct || problem.is_some(),
        "colliding keys accepted: {names:?}"
    );
    if problem.is_some() {
        return;
    }
    let contents = SecretContents {
        current: Credentials {
            api_key: "current-key".into(),
            api_secret: SecretString::from(SECRET),
        },
        pending: Some(Credentials {
            api_key: "pending-key".into(),
            api_secret: SecretString::from(PENDING),
        }),
    };
    let mut desired = secret::desired_secret(&akp, &contents);
    let data = desired.data.take().unwrap_or_default();
    assert_eq!(data.len(), 4, "{names:?}");
    assert_eq!(data[&api_secret].0, SECRET.as_bytes());
    assert_eq!(data[&names[3]].0, PENDING.as_bytes());
    let outside = serde_json::to_string(&desired).unwrap_or_default();
    assert!(
        !outside.contains(SECRET) && !outside.contains(PENDING),
        "{outside}"
    );
});
