//! The one pure builder of the desired credentials Secret, and the one reader that turns
//! an existing Secret back into what the controller needs to know about it.
//!
//! A Secret holds the credentials in use under `secretTemplate.keys` (default `apiKey` and
//! `apiSecret`) and, while a ThreatWinds replacement waits for verification, the
//! replacement's credentials under the same names with a `.pending` suffix. Keeping both
//! in the one Secret means a single server-side apply moves a key from pending to current,
//! which is what makes the swap crash-safe.
//!
//! [`CachedSecret`] is an owned Secret as the watch cache keeps it: compact, since at scale
//! the cached Secrets are the largest part of the operator's memory.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
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

impl Credentials {
    /// A digest of both halves, kept in memory only: tells whether the Secret's
    /// credentials changed since they were last checked at the provider.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.api_key.hash(&mut hasher);
        self.api_secret.expose_secret().hash(&mut hasher);
        hasher.finish()
    }
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
    labels.insert(OWNER_LABEL.to_owned(), owner_label_value(&akp.name_any()));

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

/// Longest label value Kubernetes accepts.
const LABEL_VALUE_MAX: usize = 63;

/// Most bytes all annotations of one object may take (keys and values), as the API server
/// counts them.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Longest Secret data key.
const DATA_KEY_MAX: usize = 253;

/// The [`OWNER_LABEL`] value for an `ApiKeyPair` called `name`: the name itself when it
/// fits a label value (63 characters), else its first characters and a hash of the whole
/// (names may have up to 253).
pub fn owner_label_value(name: &str) -> String {
    if name.len() <= LABEL_VALUE_MAX {
        return name.to_owned();
    }
    use sha2::{Digest, Sha256};
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..4]);
    let head: String = name
        .chars()
        .take(LABEL_VALUE_MAX - hash.len() - 1)
        .collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{hash}")
}

/// Why the data key names cannot hold a key pair: each of the four names the Secret may
/// get (the two keys and their [`PENDING_SUFFIX`] twins) must be a valid, distinct data
/// key, or one credential would silently replace another (or the API server would refuse
/// the Secret after the key pair was created).
pub fn data_keys_problem(keys: &SecretDataKeys) -> Option<String> {
    let names = [
        ("apiKey", keys.api_key.clone()),
        ("apiSecret", keys.api_secret.clone()),
        (
            "apiKey (pending)",
            format!("{}{PENDING_SUFFIX}", keys.api_key),
        ),
        (
            "apiSecret (pending)",
            format!("{}{PENDING_SUFFIX}", keys.api_secret),
        ),
    ];
    for (i, (what, name)) in names.iter().enumerate() {
        if let Some(why) = data_key_problem(name) {
            return Some(format!(
                "spec.secretTemplate.keys: the {what} data key {name:?} {why}"
            ));
        }
        if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
            return Some(format!(
                "spec.secretTemplate.keys: the {other} and {what} data keys are both {name:?}; each credential needs its own key"
            ));
        }
    }
    None
}

/// Why `key` is no valid Secret data key (Kubernetes' rules), if it is not.
fn data_key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("is empty")
    } else if key.len() > DATA_KEY_MAX {
        Some("is longer than 253 characters")
    } else if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        Some("may only have letters, digits, '-', '.' and '_'")
    } else if key == "." || key.starts_with("..") {
        Some("may not be '.' or start with '..'")
    } else {
        None
    }
}

/// Whether `name` is a DNS-1123 subdomain (a label or annotation key prefix).
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Whether `name` is a label value, or the name part of a label or annotation key: at most
/// 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric (or empty,
/// where `empty_ok`).
fn is_label_name(name: &str, empty_ok: bool) -> bool {
    if name.is_empty() {
        return empty_ok;
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() <= LABEL_VALUE_MAX
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `key` is a qualified name (`[prefix/]name`), as label and annotation keys are.
fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name, false),
        None => is_label_name(key, false),
    }
}

/// A key or value cut for a message (labels and annotations are not secret, but may be
/// huge).
fn shown(text: &str) -> String {
    const MAX: usize = 64;
    if text.chars().count() <= MAX {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head:?}… ({} bytes)", text.len())
    }
}

/// Why the Secret this `ApiKeyPair` asks for could never be written (the API server would
/// refuse its labels, annotations or type), or would lose a credential (colliding data
/// keys). Checked before any key pair is created for it: a key pair whose secret cannot be
/// stored must not be made.
pub fn template_problem(akp: &ApiKeyPair) -> Option<String> {
    if let Some(why) = data_keys_problem(&data_keys(akp)) {
        return Some(why);
    }
    let template = akp.spec.secret_template.clone().unwrap_or_default();
    for (key, value) in &template.labels {
        if !is_qualified_name(key) {
            return Some(format!(
                "spec.secretTemplate.labels: {} is no valid label key ([prefix/]name, name at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric)",
                shown(key)
            ));
        }
        if !is_label_name(value, true) {
            return Some(format!(
                "spec.secretTemplate.labels: the value of {} is no valid label value (at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric)",
                shown(key)
            ));
        }
    }
    let mut total = DATA_HASH_ANNOTATION.len() + 32;
    for (key, value) in &template.annotations {
        if !is_qualified_name(key) {
            return Some(format!(
                "spec.secretTemplate.annotations: {} is no valid annotation key ([prefix/]name, name at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric)",
                shown(key)
            ));
        }
        total += key.len() + value.len();
    }
    if total > ANNOTATIONS_MAX_BYTES {
        return Some(format!(
            "spec.secretTemplate.annotations take {total} bytes with the operator's own; a Secret's annotations may take at most {ANNOTATIONS_MAX_BYTES}"
        ));
    }
    if let Some(type_) = &template.type_ {
        let keys = data_keys(akp);
        let has = |k: &str| keys.api_key == k || keys.api_secret == k;
        let fits = match type_.as_str() {
            "kubernetes.io/basic-auth" => has("username") || has("password"),
            "kubernetes.io/tls" => has("tls.crt") && has("tls.key"),
            t => !t.starts_with("kubernetes.io/"),
        };
        if type_.trim().is_empty() || !fits {
            return Some(format!(
                "spec.secretTemplate.type {} cannot hold the credentials under keys {:?} and {:?} (kubernetes.io/basic-auth needs a key username or password, kubernetes.io/tls the keys tls.crt and tls.key; other kubernetes.io/ types cannot be used)",
                shown(type_),
                keys.api_key,
                keys.api_secret
            ));
        }
    }
    None
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

/// Whether a Secret is as the operator last wrote it: its data matches the hash written
/// with it, and a controller owns it. Only a change that leaves it otherwise (an edit of
/// its data, a lost owner) needs its `ApiKeyPair` reconciled; the operator's own writes do
/// not.
pub fn as_written(secret: &Secret) -> bool {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let hash = secret.annotations().get(DATA_HASH_ANNOTATION);
    let controlled = secret
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true));
    controlled && hash.is_some_and(|h| *h == data_hash(data))
}

/// Reads an existing Secret (or its absence) against an `ApiKeyPair`.
pub fn view_secret(akp: &ApiKeyPair, secret: Option<&Secret>) -> SecretView {
    view_secret_as(akp, secret, &data_keys(akp))
}

/// The credentials a Secret holds under `keys`, whoever owns it (to import them). Values
/// are trimmed: a Secret made by hand (`kubectl create secret --from-file`) often ends them
/// with a newline, which is no part of a key or secret.
pub fn credentials_in(secret: &Secret, keys: &SecretDataKeys) -> Option<Credentials> {
    let data = secret.data.as_ref()?;
    let read = |key: &str| {
        String::from_utf8(data.get(key)?.0.clone())
            .ok()
            .map(|s| s.trim().to_owned())
    };
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

/// Whether a field manager other than `manager` has written to `secret` (its
/// `managedFields`, as a write's answer shows them).
pub fn written_by_others(secret: &Secret, manager: &str) -> bool {
    let mut entries = secret.metadata.managed_fields.iter().flatten();
    entries.any(|entry| entry.manager.as_deref() != Some(manager))
}

/// A server-side apply that sets nothing: it gives up every field of Secret `name` that
/// only the applying manager owns.
pub fn empty_apply(name: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Secret::default()
    }
}

/// An owned Secret as the watch cache keeps it: its name, owner references and data (what
/// the controller reads), and of its labels and annotations only a hash of each entry
/// (enough to tell whether the Secret has those the operator wants). A `Secret` keeps
/// labels, annotations and data in three `BTreeMap`s, each a full B-tree node however few
/// its entries: cached as such, they were the largest part of the operator's memory at
/// 10 000 keys.
#[derive(Clone)]
pub struct CachedSecret {
    /// Name, namespace, UID, `resourceVersion` and owner references only.
    metadata: ObjectMeta,
    /// The data, sorted by key.
    data: Box<[(String, ByteString)]>,
    /// [`entry_hash`] of every label and annotation, sorted.
    entries: Box<[u64]>,
    /// Whether the Secret was [`as_written`] when cached.
    as_written: bool,
}

/// A label entry, for [`entry_hash`].
const LABEL: u8 = 0;
/// An annotation entry, for [`entry_hash`].
const ANNOTATION: u8 = 1;

/// A 64-bit hash of one label or annotation entry (`kind` is [`LABEL`] or [`ANNOTATION`]).
/// SipHash with fixed keys: the same in the cache and in every comparison.
fn entry_hash(kind: u8, key: &str, value: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (kind, key, value).hash(&mut hasher);
    hasher.finish()
}

fn entry_hashes(kind: u8, entries: &Option<BTreeMap<String, String>>) -> impl Iterator<Item = u64> {
    let entries = entries.iter().flatten();
    entries.map(move |(key, value)| entry_hash(kind, key, value))
}

impl From<Secret> for CachedSecret {
    fn from(secret: Secret) -> Self {
        let as_written = as_written(&secret);
        let mut entries: Vec<u64> = entry_hashes(LABEL, &secret.metadata.labels)
            .chain(entry_hashes(ANNOTATION, &secret.metadata.annotations))
            .collect();
        entries.sort_unstable();
        let metadata = secret.metadata;
        CachedSecret {
            metadata: ObjectMeta {
                name: metadata.name,
                namespace: metadata.namespace,
                uid: metadata.uid,
                resource_version: metadata.resource_version,
                owner_references: metadata.owner_references,
                ..ObjectMeta::default()
            },
            data: secret.data.unwrap_or_default().into_iter().collect(),
            entries: entries.into(),
            as_written,
        }
    }
}

impl CachedSecret {
    /// Whether the Secret was as the operator last wrote it ([`as_written`]).
    pub fn is_as_written(&self) -> bool {
        self.as_written
    }

    /// The Secret with what the cache keeps of it: name, owner references and data, no
    /// labels or annotations (which no reader of a Secret's view looks at).
    pub fn to_secret(&self) -> Secret {
        let data = self.data.iter().cloned().collect();
        Secret {
            metadata: self.metadata.clone(),
            data: Some(data),
            ..Secret::default()
        }
    }

    fn has_entries(&self, kind: u8, wanted: &Option<BTreeMap<String, String>>) -> bool {
        entry_hashes(kind, wanted).all(|hash| self.entries.binary_search(&hash).is_ok())
    }
}

/// Never the data's values: a cached Secret holds credentials.
impl std::fmt::Debug for CachedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSecret")
            .field("namespace", &self.metadata.namespace)
            .field("name", &self.metadata.name)
            .field(
                "data_keys",
                &self.data.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("as_written", &self.as_written)
            .finish_non_exhaustive()
    }
}

super::watch::cached_resource!(CachedSecret, Secret);

/// Whether `existing` already has everything `desired` sets (so the apply can be skipped):
/// the same data and owner references, and each of `desired`'s labels and annotations
/// (others may have added their own).
pub fn is_up_to_date(existing: &CachedSecret, desired: &Secret) -> bool {
    let data = existing.data.iter().map(|(key, value)| (key, value));
    data.eq(desired.data.iter().flatten())
        && existing.has_entries(LABEL, &desired.metadata.labels)
        && existing.has_entries(ANNOTATION, &desired.metadata.annotations)
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
        spec.secret_template = template.map(Box::new);
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
        assert!(is_up_to_date(&CachedSecret::from(secret.clone()), &secret));
        let other = desired_secret(
            &akp,
            &SecretContents {
                current: creds("k1", "s1"),
                pending: None,
            },
        );
        assert!(!is_up_to_date(&CachedSecret::from(secret), &other));
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
    fn a_secret_is_as_written_until_its_data_or_owner_changes() {
        let akp = akp(None);
        let contents = SecretContents {
            current: creds("k", "s1"),
            pending: None,
        };
        let written = desired_secret(&akp, &contents);
        assert!(as_written(&written));
        let mut edited = written.clone();
        let data = edited.data.get_or_insert_default();
        data.insert("apiSecret".into(), ByteString(b"other".to_vec()));
        assert!(!as_written(&edited), "data edited");
        let mut released = written.clone();
        released.metadata.owner_references = None;
        assert!(!as_written(&released), "no owner");
        let mut unhashed = written;
        unhashed.metadata.annotations = None;
        assert!(!as_written(&unhashed), "hash removed");
    }

    #[test]
    fn the_cache_tells_an_up_to_date_secret_from_one_that_lost_or_changed_what_we_set() {
        let mut template = SecretTemplate::default();
        template.labels.insert("team".into(), "a".into());
        template.annotations.insert("note".into(), "x".into());
        let akp = akp(Some(template));
        let contents = SecretContents {
            current: creds("k", "s1"),
            pending: None,
        };
        let desired = desired_secret(&akp, &contents);
        let cached = |edit: &dyn Fn(&mut Secret)| {
            let mut secret = desired.clone();
            edit(&mut secret);
            CachedSecret::from(secret)
        };
        assert!(is_up_to_date(&cached(&|_| ()), &desired));
        let others_added = cached(&|s| {
            s.labels_mut()
                .insert("argocd.argoproj.io/instance".into(), "x".into());
            s.annotations_mut().insert("reloader".into(), "y".into());
        });
        assert!(is_up_to_date(&others_added, &desired), "others' entries");
        type Edit<'a> = (&'a str, &'a dyn Fn(&mut Secret));
        let edits: [Edit; 6] = [
            ("label removed", &|s| drop(s.labels_mut().remove("team"))),
            ("label changed", &|s| {
                drop(s.labels_mut().insert("team".into(), "b".into()))
            }),
            ("annotation removed", &|s| {
                drop(s.annotations_mut().remove("note"))
            }),
            // A label with the annotation's key and value is not that annotation.
            ("annotation moved to labels", &|s| {
                s.annotations_mut().remove("note");
                s.labels_mut().insert("note".into(), "x".into());
            }),
            ("data changed", &|s| {
                let data = s.data.get_or_insert_default();
                data.insert("apiSecret".into(), ByteString(b"other".to_vec()));
            }),
            ("owner lost", &|s| s.metadata.owner_references = None),
        ];
        for (what, edit) in edits {
            assert!(!is_up_to_date(&cached(edit), &desired), "{what}");
        }
    }

    #[test]
    fn a_cached_secret_keeps_what_its_view_needs_and_never_shows_its_data() {
        let akp = akp(None);
        let contents = SecretContents {
            current: creds("k", "s3cret-value"),
            pending: Some(creds("k2", "s2")),
        };
        let written = desired_secret(&akp, &contents);
        let cached = CachedSecret::from(written.clone());
        assert!(cached.is_as_written());
        let read = cached.to_secret();
        assert_eq!(
            view_secret(&akp, Some(&read)),
            view_secret(&akp, Some(&written))
        );
        assert_eq!(read.metadata.name, written.metadata.name);
        assert_eq!(read.data, written.data);
        let mut edited = written;
        edited.data.get_or_insert_default().remove("apiSecret");
        assert!(!CachedSecret::from(edited).is_as_written());
        let shown = format!("{cached:?}");
        assert!(
            shown.contains("apiSecret") && !shown.contains("s3cret"),
            "{shown}"
        );
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
    fn imported_credentials_are_trimmed_and_blank_ones_are_none() {
        let secret = |k: &[u8], s: &[u8]| Secret {
            data: Some(
                [
                    ("apiKey".to_owned(), ByteString(k.to_vec())),
                    ("apiSecret".to_owned(), ByteString(s.to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let keys = SecretDataKeys::default();
        assert_eq!(
            credentials_in(&secret(b"key\n", b" s3cret \r\n"), &keys),
            Some(creds("key", "s3cret"))
        );
        assert_eq!(credentials_in(&secret(b"key", b" \n"), &keys), None);
        assert_eq!(credentials_in(&secret(b"key", &[0xff]), &keys), None);
    }

    fn keys(api_key: &str, api_secret: &str) -> SecretDataKeys {
        SecretDataKeys {
            api_key: api_key.into(),
            api_secret: api_secret.into(),
        }
    }

    #[test]
    fn colliding_or_invalid_data_keys_are_refused() {
        assert_eq!(data_keys_problem(&SecretDataKeys::default()), None);
        assert_eq!(data_keys_problem(&keys("user", "pass")), None);
        for (k, s, want) in [
            ("same", "same", "are both \"same\""),
            ("k", "k.pending", "are both \"k.pending\""),
            ("s.pending", "s", "are both \"s.pending\""),
            (".", "s", "may not be '.'"),
            ("..k", "s", "start with '..'"),
            ("k", "", "is empty"),
            ("k/x", "s", "may only have"),
        ] {
            let why = data_keys_problem(&keys(k, s)).expect(k);
            assert!(why.contains(want), "{k} {s}: {why}");
        }
        // The pending twin of a 250-character key is too long for a data key.
        let long = "k".repeat(250);
        let why = data_keys_problem(&keys(&long, "s")).expect("long");
        assert!(why.contains("longer than 253"), "{why}");
    }

    #[test]
    fn templates_the_api_server_would_refuse_are_refused_first() {
        let with = |f: &dyn Fn(&mut SecretTemplate)| {
            let mut t = SecretTemplate::default();
            f(&mut t);
            template_problem(&akp(Some(t)))
        };
        assert_eq!(with(&|_| {}), None);
        assert_eq!(
            with(&|t| {
                t.labels.insert("example.com/team".into(), "a-b.c_d".into());
                t.labels.insert("empty".into(), String::new());
                t.annotations
                    .insert("note".into(), "any text at all: ü ✓".into());
                t.type_ = Some("example.com/api-key".into());
            }),
            None
        );
        let bad: [&dyn Fn(&mut SecretTemplate); 8] = [
            &|t| {
                t.labels.insert("ü".into(), "a".into());
            },
            &|t| {
                t.labels.insert("a".into(), "x".repeat(64));
            },
            &|t| {
                t.labels.insert("a".into(), "-a".into());
            },
            &|t| {
                t.labels.insert("Upper.Case/a".into(), "a".into());
            },
            &|t| {
                t.annotations.insert("with space".into(), "a".into());
            },
            &|t| {
                t.annotations.insert("big".into(), "x".repeat(256 * 1024));
            },
            &|t| {
                t.type_ = Some("kubernetes.io/tls".into());
            },
            &|t| {
                t.keys.api_secret = "apiKey".into();
            },
        ];
        for (i, f) in bad.iter().enumerate() {
            assert!(with(f).is_some(), "case {i}");
        }
        assert_eq!(
            with(&|t| {
                t.type_ = Some("kubernetes.io/basic-auth".into());
                t.keys = keys("username", "password");
            }),
            None
        );
    }

    #[test]
    fn the_owner_label_fits_a_label_value_for_any_name() {
        assert_eq!(owner_label_value("web"), "web");
        let exact = "a".repeat(63);
        assert_eq!(owner_label_value(&exact), exact);
        let long = format!("{}.b", "a-".repeat(120));
        let v = owner_label_value(&long);
        assert!(v.len() <= 63 && is_label_name(&v, false), "{v}");
        assert_ne!(v, owner_label_value(&format!("{long}c")));
    }

    #[test]
    fn debug_output_of_credentials_hides_the_secret() {
        let c = creds("public-key", "very-secret-value");
        assert!(!format!("{c:?}").contains("very-secret-value"));
    }
}
