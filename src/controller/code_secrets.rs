//! Verification-code Secrets without polling: one metadata-only watch of the Secrets the
//! operator does not own (name and `resourceVersion` kept, nothing else, so unrelated
//! Secrets cost little memory) wakes the `ApiKeyPair`s that reference a Secret when it
//! changes, and a cache of the codes read means a key pair awaiting its code reads the
//! Secret from the API server only when its version moved.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use secrecy::SecretString;

use super::watch::{self, MapObjects};
use super::{Error, Scope, secret};
use crate::crd::{ApiKeyPair, SecretKeyRef};

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
        let versions = self.versions.as_ref()?;
        futures::FutureExt::now_or_never(versions.wait_until_ready())?.ok()?;
        let found = versions.get(&ObjectRef::new(name).within(namespace));
        Some(found.map(|m| m.resource_version().unwrap_or_default()))
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

/// The watch behind the index: every Secret in `scope` the operator does not own, as
/// stripped metadata, reflected into `store`.
pub fn watch(
    client: &Client,
    scope: &Scope,
    store: Store<SecretVersion>,
) -> impl Stream<Item = Result<watcher::Event<SecretVersion>, watcher::Error>> + Send + 'static {
    let not_owned = secret::MANAGED_SELECTOR.replacen('=', "!=", 1);
    let config = watcher::Config::default().labels(&not_owned);
    watch::scoped::<SecretVersion>(client, scope, &config, store)
        .map(|event| event.map(|e| e.map_objects(strip)))
        .boxed()
}

/// The `ApiKeyPair`s in `store` whose verification code lives in Secret `secret`.
pub fn key_pairs_reading(
    store: &Store<ApiKeyPair>,
    secret: &SecretVersion,
) -> Vec<ObjectRef<ApiKeyPair>> {
    let (namespace, name) = (secret.namespace(), secret.name_any());
    store
        .state()
        .into_iter()
        .filter(|akp| akp.namespace() == namespace)
        .filter(|akp| {
            akp.spec
                .verification
                .as_ref()
                .is_some_and(|v| v.code_secret_ref.name == name)
        })
        .map(|akp| ObjectRef::from_obj(akp.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
