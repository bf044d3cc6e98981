//! The controllers: `ApiKeyPair` reconciliation (create, Secret, verification, observe,
//! update/replace, delete) and provider readiness, wired into kube-runtime.
//!
//! Layout: [`state`] parses the lifecycle state from the status, [`plan`] holds every
//! decision as a pure function, [`secret`] the pure Secret builder, [`lifecycle`] executes
//! the decisions in a safe order against two ports (cluster and provider), [`key_pair`]
//! is the kube-runtime entry point and the cluster port over the API server,
//! [`providers`] resolves provider resources into rate-limited clients and keeps provider
//! status, [`cached`] is what the key-pair cache keeps of each object, and this module
//! holds the shared [`Context`], the error type and the wiring.

pub mod cached;
pub mod code_secrets;
pub mod decode;
pub mod key_pair;
pub mod lifecycle;
pub mod plan;
pub mod providers;
pub mod secret;
pub mod state;
pub mod wakeups;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

pub use cached::CachedKeyPair;

use crate::conditions::reason;
use crate::crd::{ApiKeyPair, ClusterKeyPairProvider, KeyPairProvider, ProviderRefKind};
use crate::provider::ProviderError;
use crate::telemetry::events::{Event, EventType, Recorder, Reporter};
use crate::telemetry::{Health, Metrics};

/// Finalizer that keeps an `ApiKeyPair` until its remote key is dealt with.
pub const FINALIZER: &str = "keypairs.dev/remote-key";
/// Annotation: any new value asks the provider for a new verification code.
pub const REQUEST_NEW_CODE_ANNOTATION: &str = "keypairs.dev/request-new-code";
/// Annotation: any new value rotates the key pair once (like External Secrets' force-sync).
pub const ROTATE_ANNOTATION: &str = "keypairs.dev/rotate";
/// Pod template annotation set to restart `rolloutRestartTargets`.
pub const RESTARTED_AT_ANNOTATION: &str = "keypairs.dev/restartedAt";
/// Annotation: `"true"` releases a resource without touching the remote key.
pub const FORCE_ORPHAN_ANNOTATION: &str = "keypairs.dev/force-orphan";
/// Field manager of every server-side apply and patch the operator makes.
pub const MANAGER: &str = "keypair-operator";

/// Knobs of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often each key pair is checked at the provider (each at its own fixed point of
    /// the interval, drawn from its UID: see [`plan::check_slots`]).
    pub check_interval: Duration,
    /// How often a key pair that waits for its verification code looks for it.
    pub verification_poll_interval: Duration,
    /// Extend a ThreatWinds session when it expires sooner than this.
    pub session_refresh_margin: Duration,
    /// Reconciles running at once, per controller.
    pub concurrency: u16,
    /// Timeout of each provider request.
    pub provider_timeout: Duration,
    /// Largest back-off after repeated failures of one object.
    pub max_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(3600),
            verification_poll_interval: Duration::from_secs(30),
            session_refresh_margin: Duration::from_secs(3600),
            concurrency: 8,
            provider_timeout: Duration::from_secs(15),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Which namespaces the operator watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// Only these namespaces.
    Namespaces(Vec<String>),
}

/// State shared by every reconcile.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The one event recorder.
    pub recorder: Recorder,
    /// Provider clients and rate limiters.
    pub providers: providers::Registry,
    /// Cache of the Secrets this operator owns (selected by label).
    pub secrets: Store<secret::CachedSecret>,
    /// Knobs.
    pub settings: Settings,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for exponential back-off.
    failures: Mutex<HashMap<ObjectRef<CachedKeyPair>, u32>>,
    /// When each key pair was last checked at the provider (or first seen), by UID.
    last_checks: Mutex<HashMap<UidKey, LastCheck>>,
    /// The namespaces watched (to find keys other resources reference).
    pub scope: Scope,
    /// Verification codes, read only when their Secret changed.
    pub code_secrets: code_secrets::CodeSecrets,
    /// When each key pair is looked at again (fed back to the controller).
    pub wakeups: Arc<wakeups::Wakeups>,
}

impl Context {
    /// A context over the given caches (the controllers build theirs from watches).
    pub fn new(
        client: Client,
        recorder: Recorder,
        providers: providers::Registry,
        secrets: Store<secret::CachedSecret>,
        settings: Settings,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics: providers.metrics().clone(),
            providers,
            secrets,
            settings,
            failures: Mutex::default(),
            last_checks: Mutex::default(),
            scope: Scope::All,
            code_secrets: code_secrets::CodeSecrets::default(),
            wakeups: Arc::default(),
        }
    }

    /// The same context reading verification codes through `codes`.
    pub fn with_code_secrets(mut self, codes: code_secrets::CodeSecrets) -> Self {
        self.code_secrets = codes;
        self
    }

    /// The same context watching `scope`.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Publishes an event about `akp`; failures to publish are logged, never fatal.
    pub async fn event(
        &self,
        akp: &ApiKeyPair,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let reference = akp.object_ref(&());
        publish_event(&self.recorder, &reference, type_, reason, action, note).await;
    }

    /// Whether the key pair with `uid` is due for its periodic provider check: a check
    /// slot ([`plan::check_slots`]) passed since its last check. A key first seen by this
    /// process counts as checked at its last slot, so a restart or failover checks each
    /// key at its own slot instead of all at once.
    pub fn check_due(&self, uid: &str, last_slot: DateTime<Utc>) -> bool {
        let Ok(mut checks) = self.last_checks.lock() else {
            return true;
        };
        let last = checks.entry(UidKey::of(uid)).or_insert(LastCheck {
            at: last_slot,
            credentials: None,
        });
        last.at < last_slot
    }

    /// The fingerprint of the credentials this process last knew to be `uid`'s key's: a
    /// Secret that holds others was edited, and is checked at once, not at the next slot.
    pub fn known_credentials(&self, uid: &str) -> Option<u64> {
        let checks = self.last_checks.lock().ok()?;
        checks.get(&UidKey::of(uid))?.credentials
    }

    /// Records a successful provider check of `uid` (a failed one stays due).
    pub fn mark_checked(&self, uid: &str, at: DateTime<Utc>) {
        if let Ok(mut checks) = self.last_checks.lock() {
            checks
                .entry(UidKey::of(uid))
                .and_modify(|last| last.at = at)
                .or_insert(LastCheck {
                    at,
                    credentials: None,
                });
        }
    }

    /// Records the credentials known to be `uid`'s key's (see [`Self::known_credentials`]).
    pub fn remember_credentials(&self, uid: &str, fingerprint: u64) {
        if let Ok(mut checks) = self.last_checks.lock() {
            checks
                .entry(UidKey::of(uid))
                .or_insert(LastCheck {
                    at: Utc::now(),
                    credentials: None,
                })
                .credentials = Some(fingerprint);
        }
    }

    fn record_failure(&self, object: ObjectRef<CachedKeyPair>) -> u32 {
        let Ok(mut failures) = self.failures.lock() else {
            return 1;
        };
        let count = failures.entry(object).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    pub(crate) fn reset_failures(&self, object: &ObjectRef<CachedKeyPair>) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(object);
        }
    }
}

/// A UID as a map key: the 16 bytes of the UUID the API server assigns, not its 36
/// characters on the heap (a digest of any other string, as in tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct UidKey(u128);

impl UidKey {
    fn of(uid: &str) -> Self {
        Self(uuid::Uuid::parse_str(uid).map_or_else(
            |_| crate::memory::digest128(uid.as_bytes()),
            |uuid| uuid.as_u128(),
        ))
    }
}

/// A key pair's last successful provider check in this process.
#[derive(Clone, Copy, Debug)]
struct LastCheck {
    at: DateTime<Utc>,
    /// [`secret::Credentials::fingerprint`] of the credentials known to be the key's.
    credentials: Option<u64>,
}

/// Publishes an event about `reference`; failures are logged, never fatal.
pub(crate) async fn publish_event(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, reference).await {
        warn!(%error, "cannot publish event");
    }
}

/// Everything a reconcile can fail with, each with a condition reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A provider call failed.
    #[error("{0}")]
    Provider(#[from] ProviderError),
    /// The referenced provider resource does not exist.
    #[error("{0}")]
    ProviderNotFound(String),
    /// The referenced provider may not be used from this namespace.
    #[error("{0}")]
    ProviderNotAllowed(String),
    /// The provider's credentials are missing or rejected.
    #[error("{0}")]
    ProviderNotReady(String),
    /// The spec cannot work with the chosen provider.
    #[error("{0}")]
    InvalidSpec(String),
    /// A Secret of the wanted name belongs to someone else.
    #[error("{0}")]
    SecretConflict(String),
    /// An interrupted create left keys that cannot be told apart safely.
    #[error("{0}")]
    CreateAmbiguous(String),
    /// `spec.import` cannot be adopted.
    #[error("{0}")]
    ImportRejected(String),
    /// A create attempt left nothing usable and is tried again (with back-off).
    #[error("{0}")]
    Retrying(String),
    /// The status contradicts itself; nothing is guessed.
    #[error("{0}")]
    InconsistentStatus(#[from] state::InconsistentStatus),
    /// The cached object was stale; the write was refused and will be retried.
    #[error("the object changed since it was read; retrying with the new version")]
    Stale,
    /// The provider refused the credentials the Secret holds for a key it still lists
    /// (someone overwrote them): the lifecycle replaces that key (the replacement, when
    /// `replacement`) instead of failing.
    #[error("the provider refuses the API secret in the Secret")]
    CredentialsLost {
        /// Whether the refused credentials are those of the pending replacement.
        replacement: bool,
    },
    /// A code was refused for a key the session no longer lists (deleted behind the
    /// operator's back): the lifecycle recreates it (drops the replacement, when
    /// `replacement`) instead of waiting for a code that cannot come.
    #[error("the key pair is gone at the provider")]
    KeyGone {
        /// Whether it is the pending replacement that is gone.
        replacement: bool,
    },
    /// A cached key pair did not decode (a bug: the cache encoded it).
    #[error("the cached key pair does not decode: {0}")]
    Cache(#[source] cached::DecodeError),
    /// The finalizer helper failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The error a reconcile step failed with, seen through the finalizer helper's wrapper.
    /// The helper's own failures (adding or removing the finalizer) stay wrapped: they are
    /// Kubernetes API errors.
    fn unwrapped(&self) -> &Error {
        use kube::runtime::finalizer::Error::{ApplyFailed, CleanupFailed};
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                ApplyFailed(e) | CleanupFailed(e) => e.unwrapped(),
                _ => self,
            },
            _ => self,
        }
    }

    /// The condition reason that describes this error.
    pub fn reason(&self) -> &'static str {
        match self.unwrapped() {
            Error::Kube(_) | Error::Stale | Error::Retrying(_) | Error::Finalizer(_) => {
                reason::PROGRESSING
            }
            Error::CredentialsLost { .. } => reason::SECRET_LOST,
            Error::KeyGone { .. } => reason::REMOTE_KEY_MISSING,
            Error::Provider(e) => provider_reason(e),
            Error::ProviderNotFound(_) => reason::PROVIDER_NOT_FOUND,
            Error::ProviderNotAllowed(_) => reason::PROVIDER_NOT_ALLOWED,
            Error::ProviderNotReady(_) => reason::PROVIDER_NOT_READY,
            Error::InvalidSpec(_) => reason::INVALID_SPEC,
            Error::SecretConflict(_) => reason::SECRET_CONFLICT,
            Error::CreateAmbiguous(_) => reason::CREATE_AMBIGUOUS,
            Error::InconsistentStatus(_) | Error::Cache(_) => reason::INCONSISTENT_STATUS,
            Error::ImportRejected(_) => reason::IMPORT_REJECTED,
        }
    }

    /// Whether retrying soon can help (as opposed to waiting for a spec or Secret change).
    pub fn is_retryable(&self) -> bool {
        match self.unwrapped() {
            Error::Kube(_)
            | Error::Stale
            | Error::Retrying(_)
            | Error::Finalizer(_)
            | Error::CredentialsLost { .. }
            | Error::KeyGone { .. } => true,
            // Only a definite refusal waits for a change. A write whose answer was
            // unusable (a 2xx the client cannot read) may have committed and left an
            // intent: recovery (a read first) settles it, so it is retried as soon as a
            // transient failure, not after a terminal error's wait.
            Error::Provider(e) => !e.is_definite_refusal(),
            // Fixed by someone else (a provider appears, a Secret is created): the watches
            // trigger a reconcile then, and a slow retry covers what they cannot see.
            _ => false,
        }
    }

    /// Whether the reconcile worked from an outdated object (a fenced write refused, or
    /// the finalizer helper's guarded patch): not a failure, the next reconcile reads the
    /// new version.
    pub fn is_stale(&self) -> bool {
        use kube::runtime::finalizer::Error::{AddFinalizer, RemoveFinalizer};
        let conflict =
            |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422);
        match self.unwrapped() {
            Error::Stale => true,
            Error::Finalizer(inner) => match inner.as_ref() {
                AddFinalizer(e) | RemoveFinalizer(e) => conflict(e),
                _ => false,
            },
            _ => false,
        }
    }

    /// The provider's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.unwrapped() {
            Error::Provider(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// The condition reason for a provider error.
pub fn provider_reason(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::Unauthorized { .. } => reason::PROVIDER_NOT_READY,
        // The current ThreatWinds page says 403 means no permission, the older one that it
        // may be throttling: with Retry-After it is throttling, without it a permission.
        ProviderError::Forbidden { .. } if error.is_permission_denied() => {
            reason::PERMISSION_DENIED
        }
        ProviderError::RateLimited { .. } | ProviderError::Forbidden { .. } => reason::RATE_LIMITED,
        ProviderError::CodeRejected { .. } => reason::VERIFICATION_CODE_REJECTED,
        ProviderError::Server { .. } | ProviderError::Transport { .. } => {
            reason::REMOTE_UNAVAILABLE
        }
        ProviderError::UnexpectedResponse { .. } => reason::UNEXPECTED_RESPONSE,
        ProviderError::NotFound { .. }
        | ProviderError::NotApplied { .. }
        | ProviderError::BadRequest { .. }
        | ProviderError::Unsupported { .. } => reason::REMOTE_REJECTED,
    }
}

/// Back-off after the `failures`-th consecutive failure: exponential from 1 s, capped,
/// with ±25% jitter so that objects failing together do not retry together; never
/// sooner than the provider's `Retry-After`.
pub fn backoff(
    failures: u32,
    jitter_unit: f64,
    cap: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let base = Duration::from_secs(1u64 << exponent).min(cap);
    let jittered = base.mul_f64(0.75 + 0.5 * jitter_unit.clamp(0.0, 1.0));
    retry_after.map_or(jittered, |r| jittered.max(r))
}

/// Failures a terminal error counts as, so its back-off starts at 2^5 = 32 s.
const TERMINAL_BACKOFF_HEAD_START: u32 = 5;

/// kube-runtime's error policy: per-object exponential back-off with jitter, from 32 s for
/// terminal errors (a spec change triggers a reconcile anyway).
pub fn error_policy(akp: Arc<CachedKeyPair>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_stale() {
        // Not counted: a stale read says nothing about whether the work can succeed.
        return Action::requeue(backoff(1, rand::random(), ctx.settings.max_backoff, None));
    }
    let failures = ctx.record_failure(ObjectRef::from_obj(akp.as_ref()));
    // An error that waits for a change elsewhere starts its back-off at half a minute; the
    // watches react to that change sooner anyway.
    let failures = match error.is_retryable() {
        true => failures,
        false => failures.saturating_add(TERMINAL_BACKOFF_HEAD_START),
    };
    Action::requeue(backoff(
        failures,
        rand::random(),
        ctx.settings.max_backoff,
        error.retry_after(),
    ))
}

/// Whether `new` differs from the version before it (`old`, None if there was none) in
/// what needs a reconcile: another object of that name (UID), the spec (generation), the
/// annotations (new-code and force-orphan requests), the finalizers and deletion. The
/// operator's own status writes change none of these.
fn user_changed(old: Option<&ObjectMeta>, new: &ObjectMeta) -> bool {
    let Some(old) = old else {
        return true;
    };
    old.uid != new.uid
        || old.generation != new.generation
        || old.annotations != new.annotations
        || old.finalizers != new.finalizers
        || old.deletion_timestamp.is_some() != new.deletion_timestamp.is_some()
}

/// Reflects the key-pair watch into its store, and passes on the key pairs a user changed
/// ([`user_changed`] against the version the store held). This is kube-runtime's
/// `reflect` followed by its `predicate_filter`, without the filter's own table of every
/// object's name, namespace, UID and hash (~0.25 KB per key pair): the store already holds
/// the version before. While a relist fills the writer's buffer, the store still holds
/// the versions from before it.
fn reflect_user_changes(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<CachedKeyPair>>>,
    mut writer: reflector::store::Writer<CachedKeyPair>,
) -> impl futures::Stream<Item = watcher::Result<CachedKeyPair>> {
    let store = writer.as_reader();
    events.try_filter_map(move |event| {
        let changed = match &event {
            watcher::Event::Apply(new) | watcher::Event::InitApply(new) => {
                let old = store.get(&ObjectRef::from_obj(new));
                user_changed(old.as_deref().map(Resource::meta), new.meta())
            }
            watcher::Event::Delete(_) | watcher::Event::Init | watcher::Event::InitDone => false,
        };
        writer.apply_watcher_event(&event);
        let passed = match event {
            watcher::Event::Apply(new) | watcher::Event::InitApply(new) if changed => Some(new),
            _ => None,
        };
        futures::future::ready(Ok(passed))
    })
}

/// The `ApiKeyPair` controller: one controller over one set of watches whatever the scope,
/// and the futures that resolve when its caches have synced.
fn key_pair_controller(
    shared: &Shared,
    providers: ProviderTriggers,
    (code_store, code_writer): SecretVersions,
) -> (Task, Vec<CacheReady>) {
    let client = &shared.client;
    let scope = &shared.scope;
    let (secret_store, secret_writer) = reflector::store();
    let owned_secrets = watcher::Config::default().labels(secret::MANAGED_SELECTOR);
    // The operator's own Secret writes do not wake the key pair (it goes on from what it
    // wrote); a Secret edited or deleted by someone else does.
    let cached: fn(Secret) -> secret::CachedSecret = secret::CachedSecret::from;
    let secret_stream = watch::scoped(client, scope, &owned_secrets, secret_store.clone(), cached)
        .reflect(secret_writer)
        .try_filter_map(|event| async move {
            Ok(match event {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                    (!s.is_as_written()).then_some(s)
                }
                watcher::Event::Delete(s) => Some(s),
                watcher::Event::Init | watcher::Event::InitDone => None,
            })
        });
    let (key_pair_store, key_pair_writer) = reflector::store();
    let mut key_pairs = watch::from_watch_cache(watcher::Config::default());
    if let Some(selector) = &shared.shard_selector {
        key_pairs = key_pairs.labels(selector);
    }
    // Only changes a user makes trigger a reconcile, never the operator's own status writes:
    // otherwise every write of a failing reconcile would start the next one at once and the
    // back-off would never apply.
    let code_readers = Arc::new(code_secrets::CodeReaders::default());
    let index = code_readers.clone();
    let key_pair_events = watch::scoped(
        client,
        scope,
        &key_pairs,
        key_pair_store.clone(),
        <CachedKeyPair as From<ApiKeyPair>>::from,
    )
    .inspect(move |event| {
        if let Ok(event) = event {
            index.observe(event);
        }
    });
    let key_pair_stream = reflect_user_changes(key_pair_events, key_pair_writer);
    let code_stream = code_secrets::watch(client, scope, code_store.clone())
        .reflect(code_writer)
        .touched_objects();
    let caches = vec![
        ready_future("ApiKeyPair", key_pair_store.clone()),
        ready_future("owned Secret", secret_store.clone()),
        ready_future("other Secret metadata", code_store.clone()),
    ];
    let ctx = Context::new(
        client.clone(),
        shared.recorder.clone(),
        shared.registry.clone(),
        secret_store,
        shared.settings.clone(),
    )
    .with_scope(scope.clone())
    .with_code_secrets(code_secrets::CodeSecrets::new(code_store));
    let wakeups = ctx.wakeups.clone().due();
    let (namespaced, cluster) = (key_pair_store.clone(), key_pair_store.clone());
    let config =
        kube::runtime::controller::Config::default().concurrency(shared.settings.concurrency);
    let controller = Controller::for_stream(key_pair_stream, key_pair_store)
        .with_config(config)
        .owns_stream(secret_stream)
        .reconcile_on(wakeups)
        .watches_stream(code_stream, move |s| code_readers.of(&s))
        .watches_shared_stream(providers.namespaced, move |p: Arc<KeyPairProvider>| {
            let kind = ProviderRefKind::KeyPairProvider;
            key_pairs_using(&namespaced, kind, &p.name_any(), p.namespace())
        })
        .watches_shared_stream(providers.cluster, move |p: Arc<ClusterKeyPairProvider>| {
            let kind = ProviderRefKind::ClusterKeyPairProvider;
            key_pairs_using(&cluster, kind, &p.name_any(), None)
        })
        .graceful_shutdown_on(shared.shutdown.clone())
        .run(key_pair::reconcile, error_policy, Arc::new(ctx))
        .for_each(|result| async move {
            use kube::runtime::controller::Error::{ObjectNotFound, ReconcilerFailed};
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                // A Secret or provider change about a resource this replica does not
                // handle (another shard's, or deleted meanwhile).
                Err(error @ ObjectNotFound(_)) => tracing::debug!(%error, "skipped"),
                // A fenced write refused on a stale cache: not a failure, the next
                // reconcile works from the new version (see `error_policy`).
                Err(ReconcilerFailed(error, object)) if error.is_stale() => {
                    tracing::debug!(%error, %object, "reconcile retried on a newer version");
                }
                Err(error) => warn!(%error, "reconcile failed"),
            }
        });
    (futures::FutureExt::boxed(controller), caches)
}

/// Resolves when `store` has its first full list; logs how long that took (what a start
/// or a failover spends before it may act).
fn ready_future<K>(kind: &'static str, store: Store<K>) -> CacheReady
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let started = std::time::Instant::now();
    futures::FutureExt::boxed(async move {
        store.wait_until_ready().await?;
        let objects = store.state().len();
        info!(kind, objects, elapsed = ?started.elapsed(), "cache synced");
        Ok(())
    })
}

/// The `ApiKeyPair`s whose keys live at a provider (the one recorded with the key: an edit
/// of the reference is refused).
fn key_pairs_using(
    store: &Store<CachedKeyPair>,
    kind: ProviderRefKind,
    name: &str,
    namespace: Option<String>,
) -> Vec<ObjectRef<CachedKeyPair>> {
    store
        .state()
        .into_iter()
        .filter(|cached| {
            if namespace.is_some() && cached.namespace() != namespace {
                return false;
            }
            match cached.decode() {
                Ok(akp) => {
                    let reference = plan::provider_ref_in_use(&akp);
                    reference.kind == kind && reference.name == name
                }
                // Woken too: its reconcile reports why it does not decode.
                Err(_) => true,
            }
        })
        .map(|cached| ObjectRef::from_obj(cached.as_ref()))
        .collect()
}

/// What of a provider concerns the `ApiKeyPair`s using it: the spec, and whether the
/// provider is ready (with its reason). Its other status writes (session extensions) do
/// not reconcile every key pair.
fn provider_relevance<P: providers::ProviderResource>(p: &P) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    p.meta().generation.hash(&mut hasher);
    let ready = p
        .provider_status()
        .and_then(|s| crate::conditions::find(&s.conditions, crate::conditions::READY));
    ready.map(|c| (&c.status, &c.reason)).hash(&mut hasher);
    hasher.finish()
}

/// `providers`, keeping only the changes that concern the `ApiKeyPair`s using them.
fn provider_changes<P: providers::ProviderResource>(
    providers: impl futures::Stream<Item = Arc<P>> + Send + 'static,
) -> impl futures::Stream<Item = Arc<P>> + Send + 'static {
    let mut seen: HashMap<ObjectRef<P>, u64> = HashMap::new();
    providers.filter(move |p| {
        let relevance = provider_relevance(p.as_ref());
        let changed = seen.insert(ObjectRef::from_obj(p.as_ref()), relevance) != Some(relevance);
        futures::future::ready(changed)
    })
}

/// The provider streams that wake the `ApiKeyPair`s using a provider.
struct ProviderTriggers {
    namespaced: futures::stream::BoxStream<'static, Arc<KeyPairProvider>>,
    cluster: futures::stream::BoxStream<'static, Arc<ClusterKeyPairProvider>>,
}

/// How the controllers run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Knobs.
    pub settings: Settings,
    /// Watched namespaces.
    pub scope: Option<Scope>,
    /// Only the `ApiKeyPair`s matching this label selector (this replica's shard).
    pub shard_selector: Option<String>,
    /// Leave the provider controllers to another replica (with shards, one runs them).
    pub without_providers: bool,
    /// Name of this instance in events (pod name).
    pub instance: Option<String>,
    /// Where metrics are recorded.
    pub metrics: Arc<Metrics>,
    /// Set ready once every cache has synced.
    pub health: Arc<Health>,
}

type Shutdown =
    futures::future::Shared<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>>;
type Task = futures::future::BoxFuture<'static, ()>;
type CacheReady = futures::future::BoxFuture<'static, Result<(), reflector::store::WriterDropped>>;

/// The index of the Secrets the operator does not own: its store (which the registry reads
/// too) and the writer the `ApiKeyPair` controller's metadata watch feeds.
type SecretVersions = (
    Store<code_secrets::SecretVersion>,
    reflector::store::Writer<code_secrets::SecretVersion>,
);

/// What every controller shares.
#[derive(Clone)]
struct Shared {
    client: Client,
    recorder: Recorder,
    registry: providers::Registry,
    settings: Settings,
    scope: Scope,
    shard_selector: Option<String>,
    shutdown: Shutdown,
}

/// A provider watch task, its store, and two subscriptions.
type ProviderWatch<P> = (
    Task,
    Store<P>,
    [futures::stream::BoxStream<'static, Arc<P>>; 2],
);

/// Room for provider changes not yet taken by every subscriber (providers are few).
const PROVIDER_BUFFER: usize = 256;

/// One watch of a provider kind, reflected into a store that the provider controller, the
/// registry and the `ApiKeyPair` controller share; returns the watch task, the store, and
/// two subscriptions (provider controller, `ApiKeyPair` controller).
fn provider_watch<P: providers::ProviderResource>(
    watch: impl FnOnce(Store<P>) -> watch::Events<P>,
    kind: ProviderRefKind,
    metrics: Arc<Metrics>,
) -> Option<ProviderWatch<P>> {
    let (store, writer) = reflector::store_shared(PROVIDER_BUFFER);
    let subscriptions = [writer.subscribe()?.boxed(), writer.subscribe()?.boxed()];
    let task = watch(store.clone())
        .inspect(move |event| {
            // A deleted provider's gauges go with it.
            if let Ok(watcher::Event::Delete(provider)) = event {
                let (namespace, name) = (
                    provider.namespace().unwrap_or_default(),
                    provider.name_any(),
                );
                metrics.forget_provider(providers::kind_label(kind), &namespace, &name);
            }
        })
        .reflect_shared(writer)
        .for_each(|event| async move {
            if let Err(error) = event {
                tracing::debug!(%error, "provider watch failed; retrying");
            }
        });
    Some((futures::FutureExt::boxed(task), store, subscriptions))
}

/// Runs the `ApiKeyPair` and provider controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let scope = options.scope.unwrap_or(Scope::All);
    let all = watcher::Config::default();
    let metrics = options.metrics.clone();
    let namespaced = provider_watch(
        |store| watch::scoped(&client, &scope, &all, store, watch::slimmed),
        ProviderRefKind::KeyPairProvider,
        metrics.clone(),
    );
    let cluster = provider_watch(
        |_| {
            let api = kube::Api::<ClusterKeyPairProvider>::all(client.clone());
            watcher(api, all.clone()).default_backoff().boxed()
        },
        ProviderRefKind::ClusterKeyPairProvider,
        metrics,
    );
    let (Some(namespaced), Some(cluster)) = (namespaced, cluster) else {
        warn!("cannot subscribe to the provider watches");
        return;
    };
    let (namespaced_watch, namespaced_store, [namespaced_own, namespaced_keys]) = namespaced;
    let (cluster_watch, cluster_store, [cluster_own, cluster_keys]) = cluster;
    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: options.instance,
    };
    let registry = providers::Registry::new(
        client.clone(),
        options.settings.provider_timeout,
        options.metrics.clone(),
    )
    .with_stores(namespaced_store.clone(), cluster_store.clone())
    .with_list_ttl(options.settings.verification_poll_interval);
    let secret_versions = reflector::store();
    let registry = registry.with_secret_versions(secret_versions.0.clone());
    let shared = Shared {
        recorder: Recorder::new(client.clone(), reporter),
        registry,
        client,
        settings: options.settings,
        scope: scope.clone(),
        shard_selector: options.shard_selector,
        shutdown: futures::FutureExt::shared(Box::pin(shutdown) as std::pin::Pin<Box<_>>),
    };
    let triggers = ProviderTriggers {
        namespaced: provider_changes(namespaced_keys).boxed(),
        cluster: provider_changes(cluster_keys).boxed(),
    };
    let (key_pairs, mut caches) = key_pair_controller(&shared, triggers, secret_versions);
    caches.push(ready_future("KeyPairProvider", namespaced_store.clone()));
    caches.push(ready_future(
        "ClusterKeyPairProvider",
        cluster_store.clone(),
    ));
    let s = shared.clone();
    let mut controllers = vec![key_pairs];
    if !options.without_providers {
        controllers.push(futures::FutureExt::boxed(providers::run(
            namespaced_own,
            namespaced_store,
            ProviderRefKind::KeyPairProvider,
            s.clone(),
        )));
        controllers.push(futures::FutureExt::boxed(providers::run(
            cluster_own,
            cluster_store,
            ProviderRefKind::ClusterKeyPairProvider,
            s,
        )));
    } else {
        // Nobody else takes these subscriptions: drop them so the watch never waits on them.
        drop((namespaced_own, cluster_own));
    }
    let health = options.health.clone();
    controllers.push(futures::FutureExt::boxed(async move {
        if futures::future::try_join_all(caches).await.is_ok() {
            health.set_ready(true);
        }
    }));
    info!(?scope, shard = ?shared.shard_selector, "controllers started");
    // The provider watches never end by themselves: they stop with the controllers.
    let watches = futures::future::join(namespaced_watch, cluster_watch);
    futures::future::select(futures::future::join_all(controllers), watches).await;
    info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_retagging_a_key_pair_is_no_user_change() {
        let spec = serde_json::from_value(serde_json::json!({
            "providerRef": {"name": "tw"},
            "validityDays": 30
        }))
        .expect("spec");
        let mut akp = ApiKeyPair::new("web", spec);
        let rotate = (ROTATE_ANNOTATION.to_owned(), "1".to_owned());
        let tracking = ("argocd.argoproj.io/tracking-id".to_owned(), "x".to_owned());
        akp.metadata.annotations = Some([rotate, tracking].into());
        let mut retagged = akp.clone();
        retagged
            .annotations_mut()
            .insert("argocd.argoproj.io/tracking-id".into(), "y".into());
        retagged.labels_mut().insert("app".into(), "web".into());
        let cached = |akp: &ApiKeyPair| CachedKeyPair::from(akp.clone());
        let (before, after) = (cached(&akp), cached(&retagged));
        assert!(!user_changed(Some(before.meta()), after.meta()));
        retagged
            .annotations_mut()
            .insert(ROTATE_ANNOTATION.into(), "2".into());
        assert!(user_changed(Some(before.meta()), cached(&retagged).meta()));
    }

    #[tokio::test]
    async fn only_what_a_user_changed_passes_and_a_relist_passes_nothing_unchanged() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let spec = serde_json::from_value(serde_json::json!({
            "providerRef": {"name": "tw"}, "secretName": "web-key"
        }))
        .expect("spec");
        let mut v1 = ApiKeyPair::new("web", spec);
        v1.metadata.namespace = Some("ns".into());
        v1.metadata.uid = Some("uid-1".into());
        v1.metadata.generation = Some(1);
        let mut status_write = v1.clone();
        status_write.status = Some(Default::default());
        status_write.metadata.resource_version = Some("2".into());
        let mut spec_edit = status_write.clone();
        spec_edit.metadata.generation = Some(2);
        let mut finalized = spec_edit.clone();
        finalized.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let mut recreated = v1.clone();
        recreated.metadata.uid = Some("uid-2".into());
        let events = [
            Init,
            InitApply(v1.clone()),
            InitDone,
            Apply(status_write),
            Apply(spec_edit.clone()),
            Apply(finalized.clone()),
            // A relist (after the watch expired): nothing changed meanwhile.
            Init,
            InitApply(finalized),
            InitDone,
            // Another relist: deleted and created again while the watch was down.
            Init,
            InitApply(recreated.clone()),
            InitDone,
            Delete(recreated),
        ];
        let (store, writer) = reflector::store();
        let passed: Vec<(Option<String>, Option<i64>, bool)> = reflect_user_changes(
            futures::stream::iter(events.map(|e| Ok(watch::map_objects(e, CachedKeyPair::from)))),
            writer,
        )
        .map_ok(|a| {
            let meta = a.meta();
            (meta.uid.clone(), meta.generation, meta.finalizers.is_some())
        })
        .try_collect()
        .await
        .expect("no error");
        let uid = |u: &str| Some(u.to_owned());
        assert_eq!(
            passed,
            [
                (uid("uid-1"), Some(1), false),
                (uid("uid-1"), Some(2), false),
                (uid("uid-1"), Some(2), true),
                (uid("uid-2"), Some(1), false),
            ]
        );
        assert!(store.state().is_empty(), "every event reached the store");
    }

    #[test]
    fn a_uid_key_is_the_uuid_itself_and_other_strings_still_differ() {
        let uid = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        assert_eq!(UidKey::of(uid).0, 0x7c9e_6679_7425_40de_944b_e07f_c1f9_0ae7);
        assert_ne!(
            UidKey::of(uid),
            UidKey::of("7c9e6679-7425-40de-944b-e07fc1f90ae8")
        );
        assert_eq!(UidKey::of("uid-1"), UidKey::of("uid-1"));
        assert_ne!(UidKey::of("uid-1"), UidKey::of("uid-2"));
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, 0.5, cap, None), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.5, cap, None), Duration::from_secs(8));
        assert_eq!(backoff(4, 0.0, cap, None), Duration::from_secs(6));
        assert_eq!(backoff(4, 1.0, cap, None), Duration::from_secs(10));
        assert_eq!(backoff(30, 0.5, cap, None), cap, "capped");
        assert_eq!(backoff(u32::MAX, 0.5, cap, None), cap, "no overflow");
    }

    #[test]
    fn retry_after_is_never_undercut() {
        let cap = Duration::from_secs(300);
        let retry_after = Some(Duration::from_secs(42));
        assert_eq!(backoff(1, 0.5, cap, retry_after), Duration::from_secs(42));
        assert_eq!(
            backoff(10, 0.5, cap, retry_after),
            cap.min(Duration::from_secs(512))
        );
    }

    /// Issue 7, fault 6: the current ThreatWinds page says 403 means no permission.
    #[test]
    fn forbidden_is_a_permission_problem_unless_retry_after_says_throttling() {
        let forbidden = |retry_after| {
            Error::Provider(ProviderError::Forbidden {
                message: "no".into(),
                error_id: None,
                retry_after,
            })
        };
        let denied = forbidden(None);
        assert_eq!(denied.reason(), reason::PERMISSION_DENIED);
        assert!(denied.is_retryable(), "retried with growing back-off");
        let throttled = forbidden(Some(Duration::from_secs(5)));
        assert_eq!(throttled.reason(), reason::RATE_LIMITED);
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_finalizer_patch_on_an_outdated_object_is_stale_not_a_failure() {
        let invalid = kube::Error::Api(Box::new(
            kube::core::Status::failure("outdated", "Invalid").with_code(422),
        ));
        let add = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::AddFinalizer(
            invalid,
        )));
        assert!(add.is_stale());
        assert!(Error::Stale.is_stale());
        assert!(!Error::Retrying("x".into()).is_stale());
    }

    #[test]
    fn a_retried_attempt_and_a_stale_object_are_progress_not_failure_reasons() {
        assert_eq!(Error::Retrying("x".into()).reason(), reason::PROGRESSING);
        assert!(Error::Retrying("x".into()).is_retryable());
        assert!(Error::Stale.is_retryable());
    }

    #[test]
    fn errors_say_whether_to_retry_and_why() {
        let server = Error::Provider(ProviderError::Server {
            status: 503,
            message: "down".into(),
            error_id: None,
            retry_after: Some(Duration::from_secs(7)),
        });
        assert!(server.is_retryable());
        assert_eq!(server.reason(), reason::REMOTE_UNAVAILABLE);
        assert_eq!(server.retry_after(), Some(Duration::from_secs(7)));
        let bad = Error::Provider(ProviderError::BadRequest {
            message: "no".into(),
            error_id: None,
        });
        assert!(!bad.is_retryable());
        assert_eq!(bad.reason(), reason::REMOTE_REJECTED);
        let unreadable_success = Error::Provider(ProviderError::UnexpectedResponse {
            status: 200,
            message: "wrong shape".into(),
            excerpt: String::new(),
        });
        assert!(unreadable_success.is_retryable(), "recovered at once");
        let unreadable_redirect = Error::Provider(ProviderError::UnexpectedResponse {
            status: 302,
            message: "redirect".into(),
            excerpt: String::new(),
        });
        assert!(!unreadable_redirect.is_retryable());
        assert!(!Error::InvalidSpec("x".into()).is_retryable());
        assert_eq!(
            Error::SecretConflict("x".into()).reason(),
            reason::SECRET_CONFLICT
        );
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(
            server,
        )));
        assert!(wrapped.is_retryable());
        assert_eq!(wrapped.reason(), reason::REMOTE_UNAVAILABLE);
    }
}
