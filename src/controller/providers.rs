//! Provider resources, seen from the controllers: which provider an `ApiKeyPair` may use,
//! clients built from the credential Secrets (cached until the provider or its Secret
//! changes), one shared rate limiter per provider, and the provider controllers that keep
//! each provider's `Ready` condition and ThreatWinds session alive.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use tracing::warn;

use super::code_secrets::{SecretVersion, indexed_version};
use super::lifecycle::CreateGuard;
use super::plan::CreateFingerprint;
use super::{Error, Settings};
use crate::conditions::{self, READY, reason, status};
use crate::crd::{
    ApiKeyPair, ClusterKeyPairProvider, KeyPairProvider, ProviderConnection, ProviderRef,
    ProviderRefKind, ProviderStatus, RateLimit,
};
use crate::provider::{
    CreateKeyPair, CreatedKeyPair, CredentialStatus, DatonisClient, DatonisCredentials,
    HttpOptions, KeyLookup, KeyPairApi, ProviderError, ProviderKind, RateLimiter, RemoteKeyPair,
    ThreatWindsClient, UpdateKeyPair,
};
use crate::telemetry::events::{EventType, Recorder};
use crate::telemetry::{Metrics, ProviderLabels};

/// What both provider kinds have in common for the controllers.
pub trait ProviderResource:
    Resource<DynamicType = ()>
    + Clone
    + DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The connection part of the spec.
    fn connection(&self) -> &ProviderConnection;
    /// The namespace of the credential Secrets.
    fn credentials_namespace(&self) -> Option<String>;
    /// The current status.
    fn provider_status(&self) -> Option<&ProviderStatus>;
    /// `Kind namespace/name`, for messages.
    fn describe(&self) -> String;
    /// An API handle for writing this object's status.
    fn api_for(&self, client: Client) -> Api<Self>;
}

impl ProviderResource for KeyPairProvider {
    fn connection(&self) -> &ProviderConnection {
        &self.spec.connection
    }
    fn credentials_namespace(&self) -> Option<String> {
        self.namespace()
    }
    fn provider_status(&self) -> Option<&ProviderStatus> {
        self.status.as_ref()
    }
    fn describe(&self) -> String {
        format!(
            "KeyPairProvider {}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        )
    }
    fn api_for(&self, client: Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }
}

impl ProviderResource for ClusterKeyPairProvider {
    fn connection(&self) -> &ProviderConnection {
        &self.spec.connection
    }
    fn credentials_namespace(&self) -> Option<String> {
        Some(self.spec.credentials_namespace.clone())
    }
    fn provider_status(&self) -> Option<&ProviderStatus> {
        self.status.as_ref()
    }
    fn describe(&self) -> String {
        format!("ClusterKeyPairProvider {}", self.name_any())
    }
    fn api_for(&self, client: Client) -> Api<Self> {
        Api::all(client)
    }
}

/// The `provider_kind` label of the metrics: the provider resource's kind.
pub fn kind_label(kind: ProviderRefKind) -> &'static str {
    match kind {
        ProviderRefKind::KeyPairProvider => "KeyPairProvider",
        ProviderRefKind::ClusterKeyPairProvider => "ClusterKeyPairProvider",
    }
}

/// The labels of a provider resource's gauges.
fn provider_labels<P: ProviderResource>(provider: &P, kind: ProviderRefKind) -> ProviderLabels {
    let connection = provider.connection();
    ProviderLabels {
        provider_kind: kind_label(kind).to_owned(),
        namespace: provider.namespace().unwrap_or_default(),
        provider_name: provider.name_any(),
        provider: match (&connection.threatwinds, &connection.datonis) {
            (Some(_), None) => ProviderKind::Threatwinds.as_str(),
            (None, Some(_)) => ProviderKind::Datonis.as_str(),
            _ => "",
        },
    }
}

/// A concrete provider client (ThreatWinds sessions need the concrete type).
#[derive(Clone)]
pub enum Backend {
    /// ThreatWinds auth v2.
    Threatwinds(Arc<ThreatWindsClient>),
    /// Datonis v3.
    Datonis(Arc<DatonisClient>),
}

impl Backend {
    fn api(&self) -> &dyn KeyPairApi {
        match self {
            Backend::Threatwinds(c) => c.as_ref(),
            Backend::Datonis(c) => c.as_ref(),
        }
    }
}

/// A provider client whose every call is counted in the metrics by operation and outcome.
/// (The provider's rate limit is enforced below, on every HTTP request the client makes.)
#[derive(Clone)]
pub struct ProviderHandle {
    backend: Backend,
    /// Set when the provider refused the credentials: the next resolve re-reads them.
    credentials_suspect: Arc<AtomicBool>,
    /// What every key pair using this provider shares.
    shared: Arc<SharedByKeyPairs>,
    metrics: Arc<Metrics>,
    /// `Kind namespace/name` of the provider resource.
    pub description: String,
}

impl ProviderHandle {
    /// Runs one provider call and counts its outcome.
    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        self.shared.hold.wait().await;
        let started = std::time::Instant::now();
        let result = call.await;
        if let Err(ProviderError::Unauthorized { .. }) = &result {
            self.credentials_suspect.store(true, Ordering::Relaxed);
        }
        if let Err(e @ (ProviderError::RateLimited { .. } | ProviderError::Forbidden { .. })) =
            &result
            && let Some(wait) = e.retry_after()
        {
            self.shared.hold.hold_for(wait);
        }
        let status = result.as_ref().map_or_else(ProviderError::class, |_| "ok");
        self.metrics
            .provider_call(self.kind().as_str(), operation, status, started.elapsed());
        result
    }

    /// Serializes creates (and their recovery) on this provider when its keys can only be
    /// told apart by fingerprint (Datonis): then at most one attempt per fingerprint is
    /// ever in flight, so an interrupted attempt's key is the only unreferenced one of its
    /// fingerprint in its window. ThreatWinds attempts carry unique names and run
    /// concurrently.
    pub async fn serialize_creates(&self, fingerprint: &CreateFingerprint) -> Option<CreateGuard> {
        if !matches!(self.backend, Backend::Datonis(_)) {
            return None;
        }
        Some(self.shared.create_locks.lock(fingerprint).await)
    }

    /// The key `key_id` from a list taken less than the cache's age ago, taking a new list
    /// if the last one is older. `None` when that list does not show the key: only a
    /// fresh read may say a key is gone.
    async fn listed_recently(&self, key_id: &str) -> Option<RemoteKeyPair> {
        let cache = &self.shared.list;
        if cache.ttl.is_zero() {
            return None;
        }
        let mut cached = cache.keys.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|(taken, _)| taken.elapsed() < cache.ttl);
        if !fresh {
            let listed = self.call("list", self.backend.api().list()).await.ok()?;
            let mut listed: Box<[ListedKey]> = listed.into_iter().map(ListedKey::from).collect();
            // Sorted once, so that each of the N keys awaiting a code finds itself in
            // log N steps instead of a scan of N.
            listed.sort_unstable_by(|a, b| a.key_id.cmp(&b.key_id));
            *cached = Some((tokio::time::Instant::now(), listed));
        }
        let (_, keys) = cached.as_ref()?;
        let found = keys.binary_search_by(|k| (*k.key_id).cmp(key_id));
        found
            .ok()
            .and_then(|index| keys.get(index))
            .map(ListedKey::to_remote)
    }

    /// Extends the ThreatWinds session (no-op for Datonis); returns the new expiry.
    pub async fn extend_session(&self) -> Result<Option<chrono::DateTime<Utc>>, ProviderError> {
        match &self.backend {
            Backend::Threatwinds(c) => self.call("extend_session", c.extend_session()).await,
            Backend::Datonis(_) => Ok(None),
        }
    }
}

#[async_trait::async_trait]
impl super::lifecycle::Provider for ProviderHandle {
    fn description(&self) -> &str {
        &self.description
    }

    async fn serialize_creates(&self, fingerprint: &CreateFingerprint) -> Option<CreateGuard> {
        ProviderHandle::serialize_creates(self, fingerprint).await
    }
}

#[async_trait::async_trait]
impl KeyPairApi for ProviderHandle {
    fn kind(&self) -> ProviderKind {
        self.backend.api().kind()
    }
    async fn check_credentials(&self) -> Result<CredentialStatus, ProviderError> {
        self.call("check_credentials", self.backend.api().check_credentials())
            .await
    }
    async fn create(&self, req: &CreateKeyPair) -> Result<CreatedKeyPair, ProviderError> {
        self.call("create", self.backend.api().create(req)).await
    }
    async fn get(&self, key: &KeyLookup) -> Result<RemoteKeyPair, ProviderError> {
        // A ThreatWinds key without its secret (awaiting its code) is seen only in the
        // list: one list per interval serves every such key of the provider.
        if key.api_secret.is_none()
            && self.kind() == ProviderKind::Threatwinds
            && let Some(found) = self.listed_recently(&key.key_id).await
        {
            return Ok(found);
        }
        self.call("get", self.backend.api().get(key)).await
    }
    async fn list(&self) -> Result<Vec<RemoteKeyPair>, ProviderError> {
        self.call("list", self.backend.api().list()).await
    }
    async fn delete(&self, key_id: &str) -> Result<(), ProviderError> {
        self.call("delete", self.backend.api().delete(key_id)).await
    }
    async fn verify(
        &self,
        verification_code_id: &str,
        code: &SecretString,
    ) -> Result<(), ProviderError> {
        self.call(
            "verify",
            self.backend.api().verify(verification_code_id, code),
        )
        .await
    }
    async fn request_new_code(
        &self,
        api_key: &str,
        api_secret: &SecretString,
    ) -> Result<String, ProviderError> {
        self.call(
            "request_new_code",
            self.backend.api().request_new_code(api_key, api_secret),
        )
        .await
    }
    async fn update(
        &self,
        key_id: &str,
        req: &UpdateKeyPair,
    ) -> Result<RemoteKeyPair, ProviderError> {
        self.call("update", self.backend.api().update(key_id, req))
            .await
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct ProviderKey {
    kind: ProviderRefKind,
    namespace: Option<String>,
    name: String,
}

struct CachedBackend {
    /// Provider UID + generation + credential Secret resourceVersion.
    fingerprint: String,
    /// When the credential Secret's version was last compared.
    compared: tokio::time::Instant,
    /// Set when the provider refused these credentials.
    suspect: Arc<AtomicBool>,
    backend: Backend,
}

/// How long a provider client is used without comparing its credential Secret's version
/// again, when the index of Secret versions does not hold that Secret (a ClusterKeyPair-
/// Provider's Secret outside the operator's namespaces); a refusal by the provider
/// compares at once.
const CREDENTIALS_RECHECK: Duration = Duration::from_secs(30);

/// One provider's create locks, by fingerprint.
#[derive(Default)]
pub struct CreateLocks(Mutex<HashMap<CreateFingerprint, Arc<tokio::sync::Mutex<()>>>>);

impl CreateLocks {
    /// Locks every fingerprint an attempt with `fingerprint` could be confused with:
    /// recovery matches expiry dates one day either side (the provider may report the
    /// previous UTC day), so attempts less than three days apart share a lock. Locks are
    /// taken in date order, so two attempts never wait for each other crosswise.
    pub async fn lock(&self, fingerprint: &CreateFingerprint) -> CreateGuard {
        let mut guards = Vec::with_capacity(3);
        for offset in -1..=1 {
            let date = fingerprint.expiry + chrono::Duration::days(offset);
            let key = CreateFingerprint {
                role: fingerprint.role.clone(),
                expiry: date,
            };
            let lock = match self.0.lock() {
                Ok(mut locks) => locks.entry(key).or_default().clone(),
                Err(_) => Arc::default(),
            };
            guards.push(lock.lock_owned().await);
        }
        CreateGuard(guards)
    }
}

/// The last key list of a provider (sorted by key id), and how long it serves key pairs
/// awaiting a code.
#[derive(Default)]
pub struct ListCache {
    ttl: Duration,
    keys: tokio::sync::Mutex<Option<(tokio::time::Instant, Box<[ListedKey]>)>>,
}

/// What the list cache keeps of a listed ThreatWinds key: the fields a ThreatWinds list
/// entry has, without the room of those only Datonis fills. The list holds every key of
/// the account for a poll interval: 104 bytes a key inline against a whole
/// [`RemoteKeyPair`]'s 240 (1.4 MB less at 10k keys).
#[derive(Debug)]
struct ListedKey {
    key_id: Box<str>,
    api_key: Box<str>,
    name: Option<Box<str>>,
    expire_at: Option<chrono::DateTime<Utc>>,
    verified: Option<bool>,
    roles: Box<[String]>,
    groups: Box<[String]>,
}

impl From<RemoteKeyPair> for ListedKey {
    fn from(key: RemoteKeyPair) -> Self {
        ListedKey {
            key_id: key.key_id.into(),
            api_key: key.api_key.into(),
            name: key.name.map(Into::into),
            expire_at: key.expire_at,
            verified: key.verified,
            roles: key.roles.into(),
            groups: key.groups.into(),
        }
    }
}

impl ListedKey {
    /// The key as the ThreatWinds client reads it from a list.
    fn to_remote(&self) -> RemoteKeyPair {
        RemoteKeyPair {
            key_id: self.key_id.to_string(),
            api_key: self.api_key.to_string(),
            name: self.name.as_deref().map(str::to_owned),
            expire_at: self.expire_at,
            verified: self.verified,
            roles: self.roles.to_vec(),
            groups: self.groups.to_vec(),
            ..RemoteKeyPair::default()
        }
    }
}

/// A provider's `Retry-After`, honoured by every key pair using it: when the provider
/// asks one caller to wait, no other caller sends meanwhile.
#[derive(Default)]
pub struct Hold(Mutex<Option<tokio::time::Instant>>);

impl Hold {
    /// Holds every call until `wait` from now (a longer hold stays).
    fn hold_for(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        if let Ok(mut held) = self.0.lock() {
            *held = Some(held.map_or(until, |h| h.max(until)));
        }
    }

    /// Waits until the provider's last `Retry-After` has passed.
    async fn wait(&self) {
        let until = self.0.lock().ok().and_then(|held| *held);
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// What every key pair using one provider shares: its key list, its create locks and its
/// `Retry-After`.
#[derive(Default)]
pub struct SharedByKeyPairs {
    list: ListCache,
    create_locks: CreateLocks,
    hold: Hold,
}

struct CachedLimiter {
    rate_limit: RateLimit,
    limiter: RateLimiter,
}

/// Builds and caches provider clients; shared by every controller.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    timeout: Duration,
    metrics: Arc<Metrics>,
    backends: Arc<Mutex<HashMap<ProviderKey, CachedBackend>>>,
    limiters: Arc<Mutex<HashMap<ProviderKey, CachedLimiter>>>,
    shared: Arc<Mutex<HashMap<ProviderKey, Arc<SharedByKeyPairs>>>>,
    list_ttl: Duration,
    stores: Option<ProviderStores>,
    namespaces: Arc<NamespaceLabels>,
    /// The versions of the Secrets the operator does not own (credential Secrets among
    /// them), from the `ApiKeyPair` controller's metadata watch.
    secret_versions: Option<Store<SecretVersion>>,
}

/// The provider resources as the shared watches see them.
#[derive(Clone)]
struct ProviderStores {
    namespaced: Store<KeyPairProvider>,
    cluster: Store<ClusterKeyPairProvider>,
}

/// Namespace labels for `namespaceSelector`s, from a metadata watch of the namespaces
/// started the first time a selector needs one (and stopped with the registry).
#[derive(Default)]
struct NamespaceLabels {
    store: tokio::sync::OnceCell<Store<PartialObjectMeta<Namespace>>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for NamespaceLabels {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

impl NamespaceLabels {
    async fn store(&self, client: &Client) -> &Store<PartialObjectMeta<Namespace>> {
        self.store
            .get_or_init(|| async {
                let (store, writer) = reflector::store();
                let api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
                let watch = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .reflect(writer)
                    .for_each(|_| futures::future::ready(()));
                let task = tokio::spawn(watch);
                if let Ok(mut slot) = self.task.lock() {
                    *slot = Some(task.abort_handle());
                }
                store
            })
            .await
    }

    /// The labels of `namespace`, from the watch once it has synced (read from the API
    /// server before that, or when the watch does not show the namespace yet).
    async fn labels(
        &self,
        client: &Client,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, Error> {
        let store = self.store(client).await;
        let synced = tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready());
        if matches!(synced.await, Ok(Ok(())))
            && let Some(found) = store.get(&ObjectRef::new(namespace))
        {
            return Ok(found.labels().clone());
        }
        let found = Api::<Namespace>::all(client.clone()).get(namespace).await?;
        Ok(found.metadata.labels.unwrap_or_default())
    }
}

impl Registry {
    /// The metrics every handle records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// An empty registry.
    pub fn new(client: Client, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            timeout,
            metrics,
            backends: Arc::default(),
            limiters: Arc::default(),
            shared: Arc::default(),
            list_ttl: Duration::ZERO,
            stores: None,
            namespaces: Arc::default(),
            secret_versions: None,
        }
    }

    /// The same registry comparing credential Secret versions in `versions` (the index of
    /// the Secrets the operator does not own) instead of asking the API server, where the
    /// index holds the Secret.
    pub fn with_secret_versions(mut self, versions: Store<SecretVersion>) -> Self {
        self.secret_versions = Some(versions);
        self
    }

    /// The same registry reading provider resources from the shared watches' stores.
    pub fn with_stores(
        mut self,
        namespaced: Store<KeyPairProvider>,
        cluster: Store<ClusterKeyPairProvider>,
    ) -> Self {
        self.stores = Some(ProviderStores {
            namespaced,
            cluster,
        });
        self
    }

    /// The same registry sharing one ThreatWinds key list per provider for `ttl` among
    /// the key pairs awaiting their code.
    pub fn with_list_ttl(mut self, ttl: Duration) -> Self {
        self.list_ttl = ttl;
        self
    }

    /// The provider `name` (in `namespace`), from the store once it has synced.
    async fn provider<P: ProviderResource>(
        &self,
        store: Option<&Store<P>>,
        key: ObjectRef<P>,
        api: Api<P>,
    ) -> Result<Option<P>, Error> {
        if let Some(store) = store
            && matches!(
                futures::FutureExt::now_or_never(store.wait_until_ready()),
                Some(Ok(()))
            )
        {
            return Ok(store.get(&key).map(|p| p.as_ref().clone()));
        }
        Ok(api.get_opt(&key.name).await?)
    }

    /// Resolves the provider `reference` (from an `ApiKeyPair`'s spec or status) names,
    /// enforcing who may use it.
    pub async fn resolve(
        &self,
        akp: &ApiKeyPair,
        reference: &ProviderRef,
    ) -> Result<ProviderHandle, Error> {
        let namespace = akp.namespace().unwrap_or_default();
        match reference.kind {
            ProviderRefKind::KeyPairProvider => {
                let store = self.stores.as_ref().map(|s| &s.namespaced);
                let key = ObjectRef::new(&reference.name).within(&namespace);
                let api = Api::namespaced(self.client.clone(), &namespace);
                let found = self.provider(store, key, api);
                let provider = found.await?.ok_or_else(|| {
                    Error::ProviderNotFound(format!(
                        "KeyPairProvider {namespace}/{} not found (a KeyPairProvider must be in the same namespace as the ApiKeyPair)",
                        reference.name
                    ))
                })?;
                self.handle_checked(&provider, ProviderRefKind::KeyPairProvider)
                    .await
            }
            ProviderRefKind::ClusterKeyPairProvider => {
                let store = self.stores.as_ref().map(|s| &s.cluster);
                let key = ObjectRef::new(&reference.name);
                let found = self.provider(store, key, Api::all(self.client.clone()));
                let provider = found.await?.ok_or_else(|| {
                    Error::ProviderNotFound(format!(
                        "ClusterKeyPairProvider {} not found",
                        reference.name
                    ))
                })?;
                self.check_namespace_allowed(&provider, &namespace).await?;
                self.handle_checked(&provider, ProviderRefKind::ClusterKeyPairProvider)
                    .await
            }
        }
    }

    async fn check_namespace_allowed(
        &self,
        provider: &ClusterKeyPairProvider,
        namespace: &str,
    ) -> Result<(), Error> {
        let spec = &provider.spec;
        if spec.allowed_namespaces.is_empty() && spec.namespace_selector.is_none() {
            return Ok(());
        }
        if spec.allowed_namespaces.iter().any(|n| n == namespace) {
            return Ok(());
        }
        if let Some(selector) = &spec.namespace_selector {
            let labels = self.namespaces.labels(&self.client, namespace).await?;
            if selector_matches(selector, &labels) {
                return Ok(());
            }
        }
        Err(Error::ProviderNotAllowed(format!(
            "ClusterKeyPairProvider {} does not allow namespace {namespace}",
            provider.name_any()
        )))
    }

    /// A handle for `provider` that also refuses a provider whose credentials its last
    /// check found missing or rejected, so that every `ApiKeyPair` reports
    /// `ProviderNotReady` with the provider's reason. A provider that was merely
    /// unreachable is not refused: the key pair's own call finds out whether it still is.
    async fn handle_checked<P: ProviderResource>(
        &self,
        provider: &P,
        kind: ProviderRefKind,
    ) -> Result<ProviderHandle, Error> {
        if let Some(ready) = provider
            .provider_status()
            .and_then(|s| conditions::find(&s.conditions, READY))
            && ready.status == status::FALSE
            && [reason::CREDENTIALS_MISSING, reason::CREDENTIALS_REJECTED]
                .contains(&ready.reason.as_str())
        {
            return Err(Error::ProviderNotReady(format!(
                "{} is not ready: {}",
                provider.describe(),
                ready.message
            )));
        }
        self.handle(provider, kind).await
    }

    /// A (cached) rate-limited client for `provider`.
    pub async fn handle<P: ProviderResource>(
        &self,
        provider: &P,
        kind: ProviderRefKind,
    ) -> Result<ProviderHandle, Error> {
        let key = ProviderKey {
            kind,
            namespace: provider.namespace(),
            name: provider.name_any(),
        };
        let connection = provider.connection();
        let credentials_ns = provider.credentials_namespace().unwrap_or_default();
        let secret_name = match (&connection.threatwinds, &connection.datonis) {
            (Some(tw), None) => tw.session_secret_ref.name.clone(),
            (None, Some(d)) => d.credentials_secret_ref.name.clone(),
            _ => {
                return Err(Error::ProviderNotReady(format!(
                    "{} must set exactly one of threatwinds and datonis",
                    provider.describe()
                )));
            }
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &credentials_ns);
        let missing = || {
            Error::ProviderNotReady(format!(
                "{}: credentials Secret {credentials_ns}/{secret_name} not found",
                provider.describe()
            ))
        };
        let identity = format!(
            "{}/{}",
            provider.uid().unwrap_or_default(),
            provider.meta().generation.unwrap_or_default(),
        );
        let indexed = self
            .secret_versions
            .as_ref()
            .and_then(|versions| indexed_version(versions, &credentials_ns, &secret_name));
        // Without the index, a client compared recently is used as it is.
        let recent = match indexed {
            Some(_) => None,
            None => self.recent_backend(&key, &identity),
        };
        let cached = match recent {
            Some(cached) => cached,
            None => {
                // Metadata only: the data is read again only when the Secret changed.
                let version = match indexed {
                    Some(version) => version,
                    None => secrets
                        .get_metadata_opt(&secret_name)
                        .await?
                        .ok_or_else(missing)?
                        .resource_version()
                        .unwrap_or_default(),
                };
                let fingerprint = format!("{identity}/{version}");
                match self.compared_backend(&key, &fingerprint) {
                    Some(cached) => cached,
                    None => {
                        let secret = secrets.get_opt(&secret_name).await?.ok_or_else(missing)?;
                        let limiter = self.limiter(&key, connection.rate_limit.as_ref());
                        let backend = self.build_backend(provider, connection, &secret, limiter)?;
                        self.cache_backend(&key, fingerprint, backend)
                    }
                }
            }
        };
        let (backend, suspect) = cached;
        Ok(ProviderHandle {
            credentials_suspect: suspect,
            shared: self.shared(&key),
            backend,
            metrics: self.metrics.clone(),
            description: provider.describe(),
        })
    }

    /// The cached client of `key` if it is for this provider `identity` (UID and
    /// generation) and its credentials were compared recently and not refused since.
    fn recent_backend(
        &self,
        key: &ProviderKey,
        identity: &str,
    ) -> Option<(Backend, Arc<AtomicBool>)> {
        let map = self.backends.lock().ok()?;
        let cached = map.get(key)?;
        let current = cached.fingerprint.starts_with(&format!("{identity}/"))
            && cached.compared.elapsed() < CREDENTIALS_RECHECK
            && !cached.suspect.load(Ordering::Relaxed);
        current.then(|| (cached.backend.clone(), cached.suspect.clone()))
    }

    /// The cached client of `key` if its credentials have `fingerprint`; marks them compared.
    fn compared_backend(
        &self,
        key: &ProviderKey,
        fingerprint: &str,
    ) -> Option<(Backend, Arc<AtomicBool>)> {
        let mut map = self.backends.lock().ok()?;
        let cached = map.get_mut(key).filter(|c| c.fingerprint == fingerprint)?;
        cached.compared = tokio::time::Instant::now();
        cached.suspect.store(false, Ordering::Relaxed);
        Some((cached.backend.clone(), cached.suspect.clone()))
    }

    /// Caches `backend` for `fingerprint`, unless a resolve that raced this one cached a
    /// client for the same fingerprint first: then that one is used, so that a burst of
    /// key pairs after a provider change signs in once, not once per key pair.
    fn cache_backend(
        &self,
        key: &ProviderKey,
        fingerprint: String,
        backend: Backend,
    ) -> (Backend, Arc<AtomicBool>) {
        let suspect = Arc::new(AtomicBool::new(false));
        if let Ok(mut map) = self.backends.lock() {
            if let Some(first) = map.get(key).filter(|c| c.fingerprint == fingerprint) {
                return (first.backend.clone(), first.suspect.clone());
            }
            let cached = CachedBackend {
                fingerprint,
                compared: tokio::time::Instant::now(),
                suspect: suspect.clone(),
                backend: backend.clone(),
            };
            map.insert(key.clone(), cached);
        }
        (backend, suspect)
    }

    fn shared(&self, key: &ProviderKey) -> Arc<SharedByKeyPairs> {
        let fresh = || {
            Arc::new(SharedByKeyPairs {
                list: ListCache {
                    ttl: self.list_ttl,
                    ..ListCache::default()
                },
                ..SharedByKeyPairs::default()
            })
        };
        match self.shared.lock() {
            Ok(mut shared) => shared.entry(key.clone()).or_insert_with(fresh).clone(),
            Err(_) => fresh(),
        }
    }

    /// The provider's shared limiter: the same one for as long as `rateLimit` stays the
    /// same, so rebuilt clients (new credentials) keep counting in one bucket.
    fn limiter(&self, key: &ProviderKey, rate_limit: Option<&RateLimit>) -> Option<RateLimiter> {
        let mut limiters = self.limiters.lock().ok()?;
        let Some(rate_limit) = rate_limit else {
            limiters.remove(key);
            return None;
        };
        if let Some(cached) = limiters.get(key).filter(|c| &c.rate_limit == rate_limit) {
            return Some(cached.limiter.clone());
        }
        let limiter = RateLimiter::new(rate_limit.requests_per_second, rate_limit.burst);
        limiters.insert(
            key.clone(),
            CachedLimiter {
                rate_limit: rate_limit.clone(),
                limiter: limiter.clone(),
            },
        );
        Some(limiter)
    }

    fn build_backend<P: ProviderResource>(
        &self,
        provider: &P,
        connection: &ProviderConnection,
        secret: &Secret,
        rate_limiter: Option<RateLimiter>,
    ) -> Result<Backend, Error> {
        let data = secret.data.clone().unwrap_or_default();
        let value = |key: &str| -> Option<String> {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let options = HttpOptions {
            timeout: self.timeout,
            rate_limiter,
            ..HttpOptions::default()
        };
        let not_ready =
            |what: String| Error::ProviderNotReady(format!("{}: {what}", provider.describe()));
        let secret_name = secret.name_any();
        if let Some(tw) = &connection.threatwinds {
            let key = &tw.session_secret_ref.key;
            let token = value(key).ok_or_else(|| {
                not_ready(format!(
                    "credentials Secret {secret_name} has no usable value under key {key} (missing, empty, blank or not UTF-8)"
                ))
            })?;
            if !fits_a_header(&token) {
                return Err(not_ready(format!(
                    "credentials Secret {secret_name}: the value under key {key} has control characters, which no HTTP header can carry"
                )));
            }
            let client = ThreatWindsClient::new(&tw.url, SecretString::from(token), options)?;
            return Ok(Backend::Threatwinds(Arc::new(client)));
        }
        let Some(datonis) = &connection.datonis else {
            return Err(not_ready("no provider configured".to_owned()));
        };
        let credentials = match (value("email"), value("password"), value("authToken")) {
            (Some(email), Some(password), _) => DatonisCredentials::Password {
                email,
                password: SecretString::from(password),
            },
            (_, _, Some(token)) if !fits_a_header(&token) => {
                return Err(not_ready(format!(
                    "credentials Secret {secret_name}: the value under key authToken has control characters, which no HTTP header can carry"
                )));
            }
            (_, _, Some(token)) => DatonisCredentials::Token(SecretString::from(token)),
            _ => {
                return Err(not_ready(format!(
                    "credentials Secret {secret_name} needs keys email and password, or authToken (each non-empty UTF-8 text)"
                )));
            }
        };
        let client = DatonisClient::new(&datonis.url, credentials, options)?;
        Ok(Backend::Datonis(Arc::new(client)))
    }
}

/// Whether a credential can be sent in an HTTP header (no control characters but tab).
fn fits_a_header(value: &str) -> bool {
    http::HeaderValue::from_str(value).is_ok()
}

/// Whether `labels` match a Kubernetes label selector (matchLabels and matchExpressions).
pub fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Context of the provider controllers.
struct ProviderContext {
    client: Client,
    registry: Registry,
    recorder: Recorder,
    settings: Settings,
}

/// The status a credential check leads to, and when to check again.
fn provider_outcome(
    result: &Result<CredentialStatus, Error>,
    settings: &Settings,
) -> (conditions::Desired<'static>, Option<String>, Duration) {
    let ready = |status, reason, message| conditions::Desired {
        type_: READY,
        status,
        reason,
        message,
    };
    match result {
        Ok(creds) if creds.verified => {
            let next = creds
                .expire_at
                .and_then(|t| (t - Utc::now()).to_std().ok())
                .map(|left| {
                    left.saturating_sub(settings.session_refresh_margin)
                        .max(Duration::from_secs(5))
                })
                .map_or(settings.check_interval, |d| d.min(settings.check_interval));
            (
                ready(
                    status::TRUE,
                    reason::CREDENTIALS_VALID,
                    "credentials checked with the provider".to_owned(),
                ),
                creds
                    .expire_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                next,
            )
        }
        Ok(_) => (
            ready(
                status::FALSE,
                reason::CREDENTIALS_REJECTED,
                "the session is not verified; submit its emailed code at the provider".to_owned(),
            ),
            None,
            settings.check_interval.min(Duration::from_secs(60)),
        ),
        Err(Error::Provider(e @ ProviderError::Unauthorized { .. })) => (
            ready(status::FALSE, reason::CREDENTIALS_REJECTED, e.to_string()),
            None,
            settings.check_interval.min(Duration::from_secs(60)),
        ),
        Err(e) => (
            ready(
                status::FALSE,
                if matches!(e, Error::ProviderNotReady(_)) {
                    reason::CREDENTIALS_MISSING
                } else {
                    e.reason()
                },
                e.to_string(),
            ),
            None,
            Duration::from_secs(15),
        ),
    }
}

async fn reconcile_provider<P: ProviderResource>(
    provider: Arc<P>,
    ctx: Arc<ProviderContext>,
    kind: ProviderRefKind,
) -> Result<Action, Error> {
    let result = async {
        let handle = ctx.registry.handle(provider.as_ref(), kind).await?;
        let mut creds = handle.check_credentials().await?;
        if let Some(expire_at) = creds.expire_at {
            let left = (expire_at - Utc::now()).to_std().unwrap_or_default();
            if left < ctx.settings.session_refresh_margin {
                let extended = handle.extend_session().await?;
                creds.expire_at = extended.or(Some(expire_at));
            }
        }
        Ok(creds)
    }
    .await;
    let (ready, session_expire_at, next) = provider_outcome(&result, &ctx.settings);
    let mut status = provider.provider_status().cloned().unwrap_or_default();
    let current = conditions::find(&status.conditions, READY).map(|c| c.status.as_str());
    let observed = status.observed_generation == provider.meta().generation;
    if ready.status == status::FALSE
        && observed
        && super::plan::failure_keeps_ready(current, ready.reason)
    {
        // A blip does not unmake valid credentials; flipping Ready would also wake every
        // key pair that uses this provider, twice.
        let note = format!("{} (Ready stands; checked again soon)", ready.message);
        credentials_event(
            &ctx,
            provider.as_ref(),
            EventType::Warning,
            ready.reason,
            note,
        )
        .await;
        return Ok(Action::requeue(next));
    }
    let previous = status.clone();
    let was_ready = conditions::is_true(&status.conditions, READY);
    let now_ready = ready.status == status::TRUE;
    let note = ready.message.clone();
    let reason = ready.reason;
    conditions::set(&mut status.conditions, ready, provider.meta().generation);
    status.observed_generation = provider.meta().generation;
    status.session_expire_at = session_expire_at.or(if now_ready {
        None
    } else {
        previous.session_expire_at.clone()
    });
    ctx.registry.metrics.provider_status(
        provider_labels(provider.as_ref(), kind),
        now_ready,
        status
            .session_expire_at
            .as_deref()
            .and_then(super::plan::parse_time)
            .map(|t| t.timestamp()),
    );
    if status != previous {
        let api = provider.api_for(ctx.client.clone());
        let patch = serde_json::json!({ "status": status });
        api.patch_status(
            &provider.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        if was_ready != now_ready {
            let type_ = if now_ready {
                EventType::Normal
            } else {
                EventType::Warning
            };
            credentials_event(&ctx, provider.as_ref(), type_, reason, note).await;
        }
    }
    Ok(Action::requeue(next))
}

/// Publishes an event about a provider's credential check.
async fn credentials_event<P: ProviderResource>(
    ctx: &ProviderContext,
    provider: &P,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let reference = provider.object_ref(&());
    super::publish_event(
        &ctx.recorder,
        &reference,
        type_,
        reason,
        "CheckCredentials",
        note,
    )
    .await;
}

fn provider_error_policy<P>(_: Arc<P>, _: &Error, _: Arc<ProviderContext>) -> Action {
    Action::requeue(Duration::from_secs(15))
}

/// Runs the controller of one provider kind over a shared watch (`trigger`, `store`) until
/// shutdown.
pub(super) async fn run<P: ProviderResource>(
    trigger: impl futures::Stream<Item = Arc<P>> + Send + 'static,
    store: kube::runtime::reflector::Store<P>,
    kind: ProviderRefKind,
    shared: super::Shared,
) {
    let ctx = Arc::new(ProviderContext {
        client: shared.client.clone(),
        registry: shared.registry,
        recorder: shared.recorder,
        settings: shared.settings,
    });
    let reconcile = move |provider: Arc<P>, ctx: Arc<ProviderContext>| async move {
        let started = std::time::Instant::now();
        let result = reconcile_provider(provider, ctx.clone(), kind).await;
        ctx.registry
            .metrics
            .reconciled("provider", result.is_ok(), started.elapsed());
        result
    };
    Controller::for_shared_stream(trigger, store)
        .graceful_shutdown_on(shared.shutdown)
        .run(reconcile, provider_error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "provider reconcile failed");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    #[test]
    fn a_listed_threatwinds_key_reads_back_as_the_client_listed_it() {
        let expire_at = chrono::DateTime::parse_from_rfc3339("2027-01-02T03:04:05Z")
            .map(|at| at.with_timezone(&Utc))
            .ok();
        let listed = RemoteKeyPair {
            key_id: "k-1".into(),
            api_key: "ak-1".into(),
            name: Some("team-a".into()),
            expire_at,
            verified: Some(false),
            roles: vec!["reader".into()],
            groups: vec!["ops".into()],
            ..RemoteKeyPair::default()
        };
        let read = ListedKey::from(listed.clone()).to_remote();
        // Debug shows every field (the secret redacted, and none is listed anyway).
        assert_eq!(format!("{read:?}"), format!("{listed:?}"));
        let bare = RemoteKeyPair {
            key_id: "k-2".into(),
            ..RemoteKeyPair::default()
        };
        assert_eq!(
            format!("{:?}", ListedKey::from(bare.clone()).to_remote()),
            format!("{bare:?}")
        );
    }

    #[tokio::test]
    async fn resolves_racing_for_the_same_credentials_share_the_first_client() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        let registry = Registry::new(client, Duration::from_secs(1), Arc::default());
        let backend = || {
            let credentials = DatonisCredentials::Token(SecretString::from("t"));
            let dt = DatonisClient::new("http://127.0.0.1:9", credentials, HttpOptions::default())
                .expect("client");
            Backend::Datonis(Arc::new(dt))
        };
        let ptr = |b: &Backend| match b {
            Backend::Datonis(dt) => Arc::as_ptr(dt),
            Backend::Threatwinds(_) => std::ptr::null(),
        };
        let key = ProviderKey {
            kind: ProviderRefKind::KeyPairProvider,
            namespace: Some("ns".into()),
            name: "p".into(),
        };
        let (first, _) = registry.cache_backend(&key, "uid/1/7".into(), backend());
        let (raced, _) = registry.cache_backend(&key, "uid/1/7".into(), backend());
        assert_eq!(ptr(&raced), ptr(&first), "the first one cached is kept");
        let (changed, _) = registry.cache_backend(&key, "uid/2/7".into(), backend());
        assert_ne!(
            ptr(&changed),
            ptr(&first),
            "new credentials get a new client"
        );
    }

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let labels: BTreeMap<String, String> = [("team".to_owned(), "a".to_owned())].into();
        let by_label = LabelSelector {
            match_labels: Some([("team".to_owned(), "a".to_owned())].into()),
            ..Default::default()
        };
        assert!(selector_matches(&by_label, &labels));
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        assert!(selector_matches(&expr("In", &["a", "b"]), &labels));
        assert!(!selector_matches(&expr("NotIn", &["a"]), &labels));
        assert!(selector_matches(&expr("Exists", &[]), &labels));
        assert!(!selector_matches(&expr("DoesNotExist", &[]), &labels));
        assert!(!selector_matches(&expr("Bogus", &[]), &labels));
    }

    #[tokio::test]
    async fn a_retry_after_holds_every_caller_and_is_never_shortened() {
        let hold = Hold::default();
        let started = tokio::time::Instant::now();
        hold.hold_for(Duration::from_millis(200));
        hold.hold_for(Duration::from_millis(10));
        hold.wait().await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        let again = tokio::time::Instant::now();
        hold.wait().await;
        assert!(
            again.elapsed() < Duration::from_millis(100),
            "a past hold does not wait"
        );
    }

    #[test]
    fn provider_outcome_schedules_the_session_extension() {
        let settings = Settings {
            session_refresh_margin: Duration::from_secs(600),
            ..Settings::default()
        };
        let creds = CredentialStatus {
            verified: true,
            expire_at: Some(Utc::now() + chrono::Duration::seconds(1200)),
        };
        let (ready, expiry, next) = provider_outcome(&Ok(creds), &settings);
        assert_eq!(ready.status, status::TRUE);
        assert!(expiry.is_some());
        assert!(
            next <= Duration::from_secs(600) && next >= Duration::from_secs(590),
            "{next:?}"
        );
        let (ready, _, _) = provider_outcome(&Err(Error::ProviderNotReady("x".into())), &settings);
        assert_eq!(ready.reason, reason::CREDENTIALS_MISSING);
    }
}
