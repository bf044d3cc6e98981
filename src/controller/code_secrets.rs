//! Verification-code Secrets without polling: one metadata-only watch of the Secrets the
//! operator does not own (name and `resourceVersion` kept, nothing else, so unrelated
//! Secrets cost little memory) wakes the `ApiKeyPair`s that reference a Secret when it
//! changes (found through an index of who reads which Secret, not a scan), and a cache of
//! the codes read means a key pair awaiting its code reads the Secret from the API server
//! only when its version moved. The provider registry reads the versions of provider
//! credential Secrets from the same index ([`indexed_version`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures::Stream;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use secrecy::SecretString;

use super::watch;
use super::{CachedKeyPair, Error, Scope, secret};
use crate::crd::SecretKeyRef;

/// Secret metadata as kept in the index.
pub type SecretVersion = PartialObjectMeta<Secret>;

/// Keeps only what the index needs: which Secret, at which version.
fn strip(meta: SecretVersion) -> SecretVersion {
    PartialObjectMeta {
        types: meta.types,
        metadata: ObjectMeta {
            name: meta.metadata.name,
            namespace: meta.metadata.namespace,
            resource_version: meta.metadata.resource_version,
            ..ObjectMeta::default()
        },
        _phantom: Default::default(),
    }
}

/// A code's place: namespace, Secret name, key.
type CodeRef = (String, String, String);
/// The Secret version a code was read at, and the code.
type CodeRead = (String, Option<SecretString>);

/// The index of Secret versions, and the codes read at those versions.
#[derive(Default)]
pub struct CodeSecrets {
    versions: Option<Store<SecretVersion>>,
    /// (namespace, name, key) → the version read and the code it held.
    read: Mutex<HashMap<CodeRef, CodeRead>>,
}

impl CodeSecrets {
    /// A cache over the index `versions` (without one, every read goes to the API server).
    pub fn new(versions: Store<SecretVersion>) -> Self {
        CodeSecrets {
            versions: Some(versions),
            read: Mutex::default(),
        }
    }

    /// What the index knows of `name`: `Some(None)` if it has no such Secret,
    /// `Some(Some(version))` if it has, `None` if it cannot tell (not synced, no index).
    fn known(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        lookup(self.versions.as_ref()?, namespace, name)
    }

    /// Whether the index has synced and holds no Secret `namespace/name`.
    pub fn known_absent(&self, namespace: &str, name: &str) -> bool {
        self.known(namespace, name) == Some(None)
    }

    /// The trimmed code in `reference` (in `namespace`), read from the API server only
    /// when the index shows a version this cache has not read.
    pub async fn read(
        &self,
        client: &Client,
        namespace: &str,
        reference: &SecretKeyRef,
    ) -> Result<Option<SecretString>, Error> {
        let cache_key = (
            namespace.to_owned(),
            reference.name.clone(),
            reference.key.clone(),
        );
        let known = self.known(namespace, &reference.name);
        match &known {
            Some(None) => return Ok(None),
            Some(Some(version)) => {
                let cached = self.read.lock().ok().and_then(|read| {
                    read.get(&cache_key)
                        .filter(|(v, _)| v == version)
                        .map(|(_, code)| code.clone())
                });
                if let Some(code) = cached {
                    return Ok(code);
                }
            }
            None => {}
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let found = api.get_opt(&reference.name).await?;
        let version = found.as_ref().and_then(|s| s.resource_version());
        let code = found
            .and_then(|s| s.data)
            .and_then(|d| d.get(&reference.key).cloned())
            .and_then(|v| String::from_utf8(v.0).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .map(SecretString::from);
        if let (Some(version), Ok(mut read)) = (version, self.read.lock()) {
            read.insert(cache_key, (version, code.clone()));
        }
        Ok(code)
    }
}

/// What `versions` knows of Secret `namespace/name`: `Some(None)` if it has no such
/// Secret, `Some(Some(version))` if it has, `None` if it cannot tell (not synced yet).
fn lookup(versions: &Store<SecretVersion>, namespace: &str, name: &str) -> Option<Option<String>> {
    futures::FutureExt::now_or_never(versions.wait_until_ready())?.ok()?;
    let found = versions.get(&ObjectRef::new(name).within(namespace));
    Some(found.map(|m| m.resource_version().unwrap_or_default()))
}

/// The `resourceVersion` of Secret `namespace/name` if the index holds it. `None` says
/// nothing: the index may not have synced, and it leaves out the operator's own Secrets and
/// the namespaces outside the operator's scope, so the caller asks the API server then.
pub fn indexed_version(
    versions: &Store<SecretVersion>,
    namespace: &str,
    name: &str,
) -> Option<String> {
    lookup(versions, namespace, name).flatten()
}

/// The watch behind the index: every Secret in `scope` the operator does not own, as
/// stripped metadata, reflected into `store`.
pub fn watch(
    client: &Client,
    scope: &Scope,
    store: Store<SecretVersion>,
) -> impl Stream<Item = Result<watcher::Event<SecretVersion>, watcher::Error>> + Send + 'static {
    let not_owned = secret::MANAGED_SELECTOR.replacen('=', "!=", 1);
    let config = watcher::Config::default().labels(&not_owned);
    watch::scoped(client, scope, &config, store, strip)
}

/// A Secret by namespace and name.
type SecretName = (String, String);

/// Which `ApiKeyPair`s read their verification code from which Secret, kept up to date from
/// the `ApiKeyPair` watch, so that a change to any Secret finds its readers without a scan
/// of every key pair.
#[derive(Default)]
pub struct CodeReaders {
    inner: Mutex<Readers>,
}

/// A reference to a key pair by namespace and name only: the index holds two per key pair,
/// and the `resourceVersion` and UID that [`ObjectRef::from_obj`] also copies are never
/// read (nor compared) here.
fn reader(akp: &CachedKeyPair) -> ObjectRef<CachedKeyPair> {
    ObjectRef::new(&akp.name_any()).within(&akp.namespace().unwrap_or_default())
}

#[derive(Default)]
struct Readers {
    by_secret: HashMap<SecretName, HashSet<ObjectRef<CachedKeyPair>>>,
    by_key_pair: HashMap<ObjectRef<CachedKeyPair>, SecretName>,
    /// The key pairs seen since a relist began; the others are dropped when it ends.
    relisted: Option<HashSet<ObjectRef<CachedKeyPair>>>,
}

impl Readers {
    fn set(&mut self, akp: &CachedKeyPair) {
        let object = reader(akp);
        self.remove(&object);
        let code_secret = akp.code_secret_name().map(|name| {
            let namespace = akp.namespace().unwrap_or_default();
            (namespace, name.to_owned())
        });
        if let Some(code_secret) = code_secret {
            let readers = self.by_secret.entry(code_secret.clone()).or_default();
            readers.insert(object.clone());
            self.by_key_pair.insert(object, code_secret);
        }
    }

    fn remove(&mut self, object: &ObjectRef<CachedKeyPair>) {
        let Some(code_secret) = self.by_key_pair.remove(object) else {
            return;
        };
        if let Some(readers) = self.by_secret.get_mut(&code_secret) {
            readers.remove(object);
            if readers.is_empty() {
                self.by_secret.remove(&code_secret);
            }
        }
    }
}

impl CodeReaders {
    /// Follows one event of the `ApiKeyPair` watch.
    pub fn observe(&self, event: &watcher::Event<CachedKeyPair>) {
        let Ok(mut readers) = self.inner.lock() else {
            return;
        };
        match event {
            watcher::Event::Apply(akp) => readers.set(akp),
            watcher::Event::Delete(akp) => readers.remove(&reader(akp)),
            watcher::Event::Init => readers.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(akp) => {
                readers.set(akp);
                if let Some(seen) = readers.relisted.as_mut() {
                    seen.insert(reader(akp));
                }
            }
            watcher::Event::InitDone => {
                let seen = readers.relisted.take().unwrap_or_default();
                let gone: Vec<_> = readers
                    .by_key_pair
                    .keys()
                    .filter(|object| !seen.contains(*object))
                    .cloned()
                    .collect();
                for object in gone {
                    readers.remove(&object);
                }
            }
        }
    }

    /// The `ApiKeyPair`s whose verification code lives in Secret `secret`.
    pub fn of(&self, secret: &SecretVersion) -> Vec<ObjectRef<CachedKeyPair>> {
        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
        self.inner
            .lock()
            .ok()
            .and_then(|readers| readers.by_secret.get(&key).cloned())
            .map(|readers| readers.into_iter().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ApiKeyPair;

    fn key_pair(name: &str, code_secret: Option<&str>) -> CachedKeyPair {
        let mut spec = serde_json::json!({"providerRef": {"name": "p"}, "validityDays": 30});
        if let Some(secret) = code_secret {
            spec["verification"] =
                serde_json::json!({"codeSecretRef": {"name": secret, "key": "code"}});
        }
        let mut akp = ApiKeyPair::new(name, serde_json::from_value(spec).expect("spec"));
        akp.metadata.namespace = Some("team".into());
        CachedKeyPair::from(akp)
    }

    fn secret(namespace: &str, name: &str) -> SecretVersion {
        let mut meta: SecretVersion = PartialObjectMeta::default();
        meta.metadata.name = Some(name.into());
        meta.metadata.namespace = Some(namespace.into());
        meta
    }

    fn readers_of(index: &CodeReaders, namespace: &str, name: &str) -> Vec<String> {
        let mut names: Vec<String> = index
            .of(&secret(namespace, name))
            .into_iter()
            .map(|r| r.name)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_reader_index_follows_edits_deletes_and_relists() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let index = CodeReaders::default();
        index.observe(&Apply(key_pair("a", Some("codes"))));
        index.observe(&Apply(key_pair("b", Some("codes"))));
        index.observe(&Apply(key_pair("c", None)));
        assert_eq!(readers_of(&index, "team", "codes"), ["a", "b"]);
        assert!(
            readers_of(&index, "other", "codes").is_empty(),
            "same name, other namespace"
        );

        index.observe(&Apply(key_pair("b", Some("other-codes"))));
        assert_eq!(readers_of(&index, "team", "codes"), ["a"]);
        assert_eq!(readers_of(&index, "team", "other-codes"), ["b"]);

        index.observe(&Delete(key_pair("a", Some("codes"))));
        assert!(readers_of(&index, "team", "codes").is_empty());

        // A relist that no longer shows b (deleted while the watch was down) drops it.
        index.observe(&Init);
        index.observe(&InitApply(key_pair("d", Some("codes"))));
        assert_eq!(
            readers_of(&index, "team", "other-codes"),
            ["b"],
            "kept until the relist ends"
        );
        index.observe(&InitDone);
        assert_eq!(readers_of(&index, "team", "codes"), ["d"]);
        assert!(readers_of(&index, "team", "other-codes").is_empty());
    }

    #[test]
    fn the_index_keeps_only_name_namespace_and_version() {
        let mut meta: SecretVersion = PartialObjectMeta::default();
        meta.metadata.name = Some("code".into());
        meta.metadata.namespace = Some("team".into());
        meta.metadata.resource_version = Some("42".into());
        meta.metadata.annotations = Some([("big".to_owned(), "x".repeat(1000))].into());
        meta.metadata.managed_fields = Some(vec![Default::default()]);
        let stripped = strip(meta);
        assert_eq!(stripped.name_any(), "code");
        assert_eq!(stripped.namespace().as_deref(), Some("team"));
        assert_eq!(stripped.resource_version().as_deref(), Some("42"));
        assert!(stripped.metadata.annotations.is_none());
        assert!(stripped.metadata.managed_fields.is_none());
    }
}
