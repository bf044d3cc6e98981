//! The one pure builder of the desired credentials Secret, and the one reader that turns
//! an existing Secret back into what the controller needs to know about it.
//!
//! A Secret holds the credentials in use under `secretTemplate.keys` (default `apiKey` and
//! `apiSecret`) and, while a ThreatWinds replacement waits for verification, the
//! replacement's credentials under the same names with a `.pending` suffix. Keeping both
//! in the one Secret means a single server-side apply moves a key from pending to current,
//! which is what makes the swap crash-safe.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use crate::crd::{ApiKeyPair, SecretDataKeys};

/// Label on every Secret this operator writes; the controller watches Secrets by it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "keypair-operator";
/// Label naming the `ApiKeyPair` a Secret belongs to.
pub const OWNER_LABEL: &str = "keypairs.dev/api-key-pair";
/// The label selector of the Secrets this operator owns.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=keypair-operator";
/// Annotation with a hash of the Secret's data: it changes exactly when the credentials do
/// (for Reloader-style tools, and for humans comparing Secrets).
pub const DATA_HASH_ANNOTATION: &str = "keypairs.dev/data-hash";
/// Suffix of the data keys that hold a replacement waiting to take over.
pub const PENDING_SUFFIX: &str = ".pending";

/// One API key and its secret.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The public half.
    pub api_key: String,
    /// The secret half (redacted in `Debug`).
    pub api_secret: SecretString,
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        self.api_key == other.api_key
            && self.api_secret.expose_secret() == other.api_secret.expose_secret()
    }
}

/// What the Secret should hold.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretContents {
    /// The credentials applications use.
    pub current: Credentials,
    /// A replacement that is not in use yet.
    pub pending: Option<Credentials>,
}

/// What an existing Secret of the wanted name tells the controller.
#[derive(Clone, Debug, PartialEq)]
pub enum SecretView {
    /// No Secret of that name.
    Missing,
    /// A Secret of that name that this `ApiKeyPair` does not own: never touched.
    Foreign,
    /// Our Secret; either half may be absent if someone edited it.
    Owned {
        /// The credentials in use, if both keys are present.
        current: Option<Credentials>,
        /// The pending replacement, if both keys are present.
        pending: Option<Credentials>,
    },
}

impl SecretView {
    /// The credentials in use, when the Secret is ours and holds them.
    pub fn current(&self) -> Option<&Credentials> {
        match self {
            SecretView::Owned { current, .. } => current.as_ref(),
            _ => None,
        }
    }

    /// The pending replacement, when the Secret is ours and holds one.
    pub fn pending(&self) -> Option<&Credentials> {
        match self {
            SecretView::Owned { pending, .. } => pending.as_ref(),
            _ => None,
        }
    }
}

/// Name of the Secret an `ApiKeyPair` writes.
pub fn secret_name(akp: &ApiKeyPair) -> String {
    akp.spec
        .secret_name
        .clone()
        .unwrap_or_else(|| akp.name_any())
}

/// The data key names the spec asks for.
pub fn data_keys(akp: &ApiKeyPair) -> SecretDataKeys {
    akp.spec
        .secret_template
        .as_ref()
        .map(|t| t.keys.clone())
        .unwrap_or_default()
}

/// The Secret as it should be: owned by (and garbage-collected with) the `ApiKeyPair`,
/// labelled for the operator's watch, with the template's labels and annotations.
pub fn desired_secret(akp: &ApiKeyPair, contents: &SecretContents) -> Secret {
    let keys = data_keys(akp);
    let template = akp.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    // The operator's own labels win: the watch depends on them.
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    labels.insert(OWNER_LABEL.to_owned(), akp.name_any());

    let mut data = BTreeMap::new();
    let mut put = |suffix: &str, creds: &Credentials| {
        let api_key = creds.api_key.clone().into_bytes();
        let api_secret = creds.api_secret.expose_secret().as_bytes().to_vec();
        data.insert(format!("{}{suffix}", keys.api_key), ByteString(api_key));
        data.insert(
            format!("{}{suffix}", keys.api_secret),
            ByteString(api_secret),
        );
    };
    put("", &contents.current);
    if let Some(pending) = &contents.pending {
        put(PENDING_SUFFIX, pending);
    }

    let mut annotations = template.annotations;
    annotations.insert(DATA_HASH_ANNOTATION.to_owned(), data_hash(&data));
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(secret_name(akp)),
            namespace: akp.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: akp.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        type_: Some(template.type_.unwrap_or_else(|| "Opaque".to_owned())),
        data: Some(data),
        ..Default::default()
    }
}

/// A short SHA-256 of the data (keys and values), which cannot be turned back into them.
fn data_hash(data: &BTreeMap<String, ByteString>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (key, value) in data {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(&value.0);
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// Reads an existing Secret (or its absence) against an `ApiKeyPair`.
pub fn view_secret(akp: &ApiKeyPair, secret: Option<&Secret>) -> SecretView {
    view_secret_as(akp, secret, &data_keys(akp))
}

/// The credentials a Secret holds under `keys`, whoever owns it (to import them).
pub fn credentials_in(secret: &Secret, keys: &SecretDataKeys) -> Option<Credentials> {
    let data = secret.data.as_ref()?;
    let read = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
    let api_key = read(&keys.api_key)?;
    let api_secret = read(&keys.api_secret)?;
    (!api_key.is_empty() && !api_secret.is_empty()).then(|| Credentials {
        api_key,
        api_secret: SecretString::from(api_secret),
    })
}

/// Reads an existing Secret with the credentials under `keys` (a layout recorded earlier).
pub fn view_secret_as(
    akp: &ApiKeyPair,
    secret: Option<&Secret>,
    keys: &SecretDataKeys,
) -> SecretView {
    let Some(secret) = secret else {
        return SecretView::Missing;
    };
    let owned = akp.uid().is_some_and(|uid| {
        secret
            .owner_references()
            .iter()
            .any(|r| r.uid == uid && r.controller == Some(true))
    });
    if !owned {
        return SecretView::Foreign;
    }
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let read = |key: &str, secret_key: &str| -> Option<Credentials> {
        let api_key = String::from_utf8(data.get(key)?.0.clone()).ok()?;
        let api_secret = String::from_utf8(data.get(secret_key)?.0.clone()).ok()?;
        (!api_key.is_empty() && !api_secret.is_empty()).then(|| Credentials {
            api_key,
            api_secret: SecretString::from(api_secret),
        })
    };
    SecretView::Owned {
        current: read(&keys.api_key, &keys.api_secret),
        pending: read(
            &format!("{}{PENDING_SUFFIX}", keys.api_key),
            &format!("{}{PENDING_SUFFIX}", keys.api_secret),
        ),
    }
}

/// Whether `existing` already has everything `desired` sets (so the apply can be skipped).
pub fn is_up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    existing.data == desired.data
        && subset(&desired.metadata.labels, &existing.metadata.labels)
        && subset(
            &desired.metadata.annotations,
            &existing.metadata.annotations,
        )
        && existing.metadata.owner_references == desired.metadata.owner_references
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ApiKeyPairSpec, SecretTemplate};

    fn akp(template: Option<SecretTemplate>) -> ApiKeyPair {
        let mut spec: ApiKeyPairSpec = serde_json::from_value(serde_json::json!({
            "providerRef": {"name": "tw"},
            "validityDays": 30
        }))
        .expect("spec");
        spec.secret_template = template;
        let mut akp = ApiKeyPair::new("web", spec);
        akp.metadata.namespace = Some("apps".into());
        akp.metadata.uid = Some("uid-1".into());
        akp
    }

    fn creds(key: &str, secret: &str) -> Credentials {
        Credentials {
            api_key: key.into(),
            api_secret: SecretString::from(secret.to_owned()),
        }
    }

    #[test]
    fn desired_secret_is_owned_labelled_and_uses_template_keys() {
        let mut template = SecretTemplate::default();
        template.keys.api_key = "KEY".into();
        template.labels.insert("team".into(), "a".into());
        template
            .labels
            .insert(MANAGED_BY_LABEL.into(), "someone-else".into());
        template.annotations.insert("note".into(), "x".into());
        let akp = akp(Some(template));
        let secret = desired_secret(
            &akp,
            &SecretContents {
                current: creds("k1", "s1"),
                pending: None,
            },
        );
        assert_eq!(secret.metadata.name.as_deref(), Some("web"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("apps"));
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[OWNER_LABEL], "web");
        let owner = &secret.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
        let data = secret.data.clone().unwrap_or_default();
        assert_eq!(data["KEY"].0, b"k1");
        assert_eq!(data["apiSecret"].0, b"s1");
        assert_eq!(data.len(), 2);
        assert_eq!(
            view_secret(&akp, Some(&secret)),
            SecretView::Owned {
                current: Some(creds("k1", "s1")),
                pending: None
            }
        );
    }

    #[test]
    fn pending_credentials_round_trip() {
        let akp = akp(None);
        let contents = SecretContents {
            current: creds("k1", "s1"),
            pending: Some(creds("k2", "s2")),
        };
        let secret = desired_secret(&akp, &contents);
        assert_eq!(secret.data.as_ref().map(|d| d.len()), Some(4));
        let view = view_secret(&akp, Some(&secret));
        assert_eq!(view.current(), Some(&creds("k1", "s1")));
        assert_eq!(view.pending(), Some(&creds("k2", "s2")));
        assert!(is_up_to_date(&secret, &secret));
        let other = desired_secret(
            &akp,
            &SecretContents {
                current: creds("k1", "s1"),
                pending: None,
            },
        );
        assert!(!is_up_to_date(&secret, &other));
    }

    #[test]
    fn a_secret_without_our_owner_reference_is_foreign() {
        let akp = akp(None);
        let mut secret = desired_secret(
            &akp,
            &SecretContents {
                current: creds("k", "s"),
                pending: None,
            },
        );
        secret.metadata.owner_references = None;
        assert_eq!(view_secret(&akp, Some(&secret)), SecretView::Foreign);
        assert_eq!(view_secret(&akp, None), SecretView::Missing);
    }

    #[test]
    fn an_edited_secret_missing_a_key_has_no_current_credentials() {
        let akp = akp(None);
        let mut secret = desired_secret(
            &akp,
            &SecretContents {
                current: creds("k", "s"),
                pending: None,
            },
        );
        secret.data.as_mut().map(|d| d.remove("apiSecret"));
        assert_eq!(
            view_secret(&akp, Some(&secret)),
            SecretView::Owned {
                current: None,
                pending: None
            }
        );
    }

    #[test]
    fn the_data_hash_follows_the_credentials_and_hides_them() {
        let akp = akp(None);
        let hash = |key: &str, secret: &str| {
            let contents = SecretContents {
                current: creds(key, secret),
                pending: None,
            };
            let secret = desired_secret(&akp, &contents);
            secret.metadata.annotations.unwrap_or_default()[DATA_HASH_ANNOTATION].clone()
        };
        assert_eq!(hash("k", "s1"), hash("k", "s1"));
        assert_ne!(hash("k", "s1"), hash("k", "s2"));
        assert!(!hash("k", "secret-value").contains("secret-value"));
    }

    #[test]
    fn the_template_types_the_secret() {
        let mut template = SecretTemplate::default();
        let contents = SecretContents {
            current: creds("k", "s"),
            pending: None,
        };
        assert_eq!(
            desired_secret(&akp(Some(template.clone())), &contents)
                .type_
                .as_deref(),
            Some("Opaque")
        );
        template.type_ = Some("example.com/api-key".into());
        assert_eq!(
            desired_secret(&akp(Some(template)), &contents)
                .type_
                .as_deref(),
            Some("example.com/api-key")
        );
    }

    #[test]
    fn debug_output_of_credentials_hides_the_secret() {
        let c = creds("public-key", "very-secret-value");
        assert!(!format!("{c:?}").contains("very-secret-value"));
    }
}
