//! The `ApiKeyPair` lifecycle as I/O in a safe order: it parses the [`KeyState`], asks
//! [`super::plan`] what to do, and executes that against two ports, [`Cluster`] (status,
//! Secrets, events) and [`Provider`] (the remote key-pair API). The ports keep this module
//! free of kube-rs and HTTP details, so the model-based test drives the very same code
//! against an in-memory cluster and provider, crashing it at every step.
//!
//! # Crash-safe create
//!
//! A provider shows a new API secret once, so a crash or a lost response between the
//! remote create and the Secret write must not orphan a key, lose a secret, or duplicate
//! one. The protocol:
//!
//! 1. **Intent.** Before the remote call, `status.createAttempts` is incremented and
//!    `status.pendingCreate` records the attempt (number, deterministic remote name, start
//!    time, purpose). The write carries the object's `resourceVersion`, so a reconcile
//!    working from a stale object is refused (409) and never reaches step 2.
//! 2. **Create** the remote key. Only a definite refusal clears the intent; anything that
//!    may have committed (5xx, timeout, a 2xx that cannot be decoded) leaves it.
//! 3. **Secret** first: the credentials are applied to the Secret...
//! 4. **...then status**: the key is recorded and the intent cleared.
//!
//! Recovery finds an attempt's keys by its deterministic name (ThreatWinds) or fingerprint
//! (Datonis, creates serialized per provider), adopts the one the Secret holds, adopts a
//! Datonis key with the secret Datonis still returns, or deletes keys whose secret never
//! reached the Secret and tries again.
//!
//! # No remote delete on a stale view
//!
//! Every status write carries the `resourceVersion` this reconcile read (or last wrote)
//! and fails if anyone changed the object since, so a reconcile working from a lagging
//! cache never overwrites a newer status. Every provider delete follows such a write (a
//! *fence*, made even when nothing changed) or a fresh read: what is deleted is what the
//! current status owns, or what a fresh provider list shows for an attempt. A single 404 or
//! 401 never deletes anything: the provider's full list must agree first.

mod create;
mod delete;
mod import;
mod steady;
mod verify;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OwnedMutexGuard;
use tracing::{debug, info};

use super::plan::{
    self, AfterRefusedCode, Confirmation, Deletion, Lookup, Observation, Recovery, RestartDue,
    RotationAction, RotationCause, SecretRepair, SteadyFacts, Step, VerificationStep,
    VerifyOutcome, parse_time,
};
use super::secret::{self, Credentials, SecretContents, SecretView};
use super::state::{Intent, KeyRecord, KeyState, Replacement, Verification, owned_key_ids};
use super::{Error, REQUEST_NEW_CODE_ANNOTATION, ROTATE_ANNOTATION};
use crate::conditions::{self, CONSUMERS_RESTARTED, READY, VERIFIED, reason, status};
use crate::crd::{
    ApiKeyPair, ApiKeyPairStatus, CreatePurpose, DeletionPolicy, PendingCreate, PendingKey,
    PreviousKey, ReplacementStage, RolloutRestartTarget, SecretKeyRef,
};
use crate::provider::{
    CreateKeyPair, CreatedKeyPair, KeyLookup, KeyPairApi, ProviderError, ProviderKind,
    RemoteKeyPair, UpdateKeyPair,
};

/// Aborts the process at a named step boundary when the `failpoints` feature is on and
/// `KPO_FAILPOINT` names that step: the crash-safety tests kill the operator exactly
/// there. Compiled to nothing otherwise.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if std::env::var("KPO_FAILPOINT").as_deref() == Ok($name) {
                eprintln!("failpoint {} reached: aborting", $name);
                std::process::abort();
            }
        }
    };
}
pub(crate) use failpoint;

/// How soon to look again after a structural change (verification, observation).
const SOON: Duration = Duration::from_millis(500);

/// What the lifecycle needs from Kubernetes for one `ApiKeyPair`.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    /// Writes the status if the object is still at the version this reconcile last read or
    /// wrote ([`Error::Stale`] otherwise), even when nothing changed: a fence.
    async fn write_status(&self, status: &ApiKeyPairStatus) -> Result<(), Error>;
    /// The Secret called `name`; `fresh` reads the API server instead of the watch cache.
    async fn read_secret(&self, name: &str, fresh: bool) -> Result<Option<Secret>, Error>;
    /// Whether the watch caches have synced and hold no Secret called `name`, neither among
    /// this operator's Secrets nor in the index of all others (they may lag).
    fn known_absent(&self, name: &str) -> bool;
    /// Writes a Secret no key of this resource has been written to yet, without taking
    /// over anyone else's: `false` (and the Secret as it was) when it turns out to exist
    /// and belong to someone else.
    async fn claim_secret(&self, secret: &Secret) -> Result<bool, Error>;
    /// Applies a desired Secret (skipped when it is already so).
    async fn apply_secret(&self, secret: &Secret) -> Result<(), Error>;
    /// Drops this resource's owner reference from the Secret, so garbage collection keeps it.
    async fn release_secret(&self, name: &str) -> Result<(), Error>;
    /// Key ids that other `ApiKeyPair`s (in every watched namespace) record, read fresh.
    async fn keys_referenced_elsewhere(&self) -> Result<HashSet<String>, Error>;
    /// The verification code in the referenced Secret key, trimmed, if any.
    async fn read_code(&self, reference: &SecretKeyRef) -> Result<Option<SecretString>, Error>;
    /// Restarts a workload like `kubectl rollout restart`: stamps its pod template with the
    /// `keypairs.dev/restartedAt` annotation.
    async fn restart_workload(&self, target: &RolloutRestartTarget, at: &str) -> Result<(), Error>;
    /// Publishes an event about the resource (failures are logged, never fatal).
    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String);
}

/// What the lifecycle needs from a provider beyond [`KeyPairApi`].
#[async_trait::async_trait]
pub trait Provider: KeyPairApi {
    /// `Kind namespace/name` of the provider resource, for messages.
    fn description(&self) -> &str;
    /// Serializes creates of one fingerprint on providers whose keys are told apart by
    /// fingerprint only.
    async fn serialize_creates(&self, fingerprint: &plan::CreateFingerprint)
    -> Option<CreateGuard>;
}

/// Held while a create attempt (or its recovery) of one fingerprint is in flight.
pub struct CreateGuard(pub Vec<OwnedMutexGuard<()>>);

/// When checks are due and how often to look.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Now.
    pub now: DateTime<Utc>,
    /// Whether the periodic provider check is due for this key.
    pub check_due: bool,
    /// How often a key waiting for its code looks for it.
    pub verification_poll_interval: Duration,
    /// The key's next periodic check slot ([`plan::check_slots`]).
    pub next_check_slot: DateTime<Utc>,
    /// [`Credentials::fingerprint`] of the credentials this process last knew to be the
    /// key's: written to the Secret from the provider's answer, or confirmed by a check that
    /// tests the secret (`None` after a restart, until then).
    pub known_credentials: Option<u64>,
}

/// What a successful reconcile decided.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When to reconcile again.
    pub requeue: Duration,
    /// Whether the key was observed at the provider (so the next check can wait).
    pub checked: bool,
    /// [`Credentials::fingerprint`] of the credentials known to be the key's, when this run
    /// learned them (see [`Timing::known_credentials`]).
    pub known_credentials: Option<u64>,
    /// The status as written.
    pub status: ApiKeyPairStatus,
}

/// One reconcile of one `ApiKeyPair`.
pub struct Run<'a> {
    akp: &'a ApiKeyPair,
    cluster: &'a dyn Cluster,
    provider: &'a dyn Provider,
    kind: ProviderKind,
    timing: Timing,
    status: ApiKeyPairStatus,
    written: ApiKeyPairStatus,
    checked: bool,
    known_credentials: Option<u64>,
    /// The rotate annotation value the next create attempt carries out.
    rotation_request: Option<String>,
    /// Whether the spec changed since the status was last written.
    spec_changed: bool,
    /// What this run last wrote to the Secret.
    applied: Option<SecretContents>,
}

impl<'a> Run<'a> {
    /// A reconcile of `akp` against these ports.
    pub fn new(
        akp: &'a ApiKeyPair,
        cluster: &'a dyn Cluster,
        provider: &'a dyn Provider,
        timing: Timing,
    ) -> Self {
        let status = akp.status.clone().unwrap_or_default();
        Run {
            akp,
            cluster,
            kind: provider.kind(),
            provider,
            timing,
            written: status.clone(),
            status,
            checked: false,
            known_credentials: None,
            rotation_request: None,
            spec_changed: akp.status.as_ref().and_then(|s| s.observed_generation)
                != akp.metadata.generation,
            applied: None,
        }
    }

    fn generation(&self) -> Option<i64> {
        self.akp.metadata.generation
    }

    fn set(&mut self, type_: &'static str, decided: plan::Decided) {
        let (status, reason, message) = decided;
        let desired = conditions::Desired {
            type_,
            status,
            reason,
            message,
        };
        let generation = self.generation();
        conditions::set(&mut self.status.conditions, desired, generation);
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        self.cluster.event(type_, reason, action, note).await;
    }

    /// Writes the status when it changed; with `fence`, always, as a precondition. Every
    /// write carries the resourceVersion this reconcile read (or last wrote): a reconcile
    /// working from a stale cached object never overwrites a newer status.
    async fn write(&mut self, fence: bool) -> Result<(), Error> {
        // Every write describes the generation this run acts on.
        self.status.observed_generation = self.generation();
        if self.status == self.written && !fence {
            return Ok(());
        }
        self.cluster.write_status(&self.status).await?;
        self.written = self.status.clone();
        Ok(())
    }

    fn secret_name(&self) -> String {
        secret::secret_name(self.akp)
    }

    async fn secret_view(&self, fresh: bool) -> Result<SecretView, Error> {
        let found = self.cluster.read_secret(&self.secret_name(), fresh).await?;
        Ok(secret::view_secret(self.akp, found.as_ref()))
    }

    async fn apply_secret(&mut self, contents: &SecretContents) -> Result<(), Error> {
        let desired = secret::desired_secret(self.akp, contents);
        self.cluster.apply_secret(&desired).await?;
        self.known_credentials = Some(contents.current.fingerprint());
        self.applied = Some(contents.clone());
        Ok(())
    }

    /// Writes the Secret of a first key ([`Cluster::claim_secret`]). When the Secret turns
    /// out to be someone else's, the key just created is deleted (the provider's answer
    /// names it, so no other resource can hold it) and the attempt forgotten.
    async fn claim_secret(
        &mut self,
        contents: &SecretContents,
        created: &str,
    ) -> Result<(), Error> {
        let desired = secret::desired_secret(self.akp, contents);
        if !self.cluster.claim_secret(&desired).await? {
            self.delete_remote(created).await?;
            self.forget_intent(CreatePurpose::Initial);
            return Err(self.secret_conflict());
        }
        self.known_credentials = Some(contents.current.fingerprint());
        self.applied = Some(contents.clone());
        Ok(())
    }

    fn secret_conflict(&self) -> Error {
        Error::SecretConflict(format!(
            "Secret {} exists and is not owned by this ApiKeyPair; choose another spec.secretName or delete that Secret",
            self.secret_name()
        ))
    }

    /// Writes the Secret to serve these credentials, with no pending slot.
    async fn serve(
        &mut self,
        api_key: &str,
        api_secret: SecretString,
    ) -> Result<SecretContents, Error> {
        let contents = SecretContents {
            current: Credentials {
                api_key: api_key.to_owned(),
                api_secret,
            },
            pending: None,
        };
        self.apply_secret(&contents).await?;
        Ok(contents)
    }

    async fn delete_remote(&self, key_id: &str) -> Result<(), Error> {
        delete_remote(self.provider, key_id).await
    }

    fn outcome(&self, requeue: Duration) -> Outcome {
        Outcome {
            requeue,
            checked: self.checked,
            known_credentials: self.known_credentials,
            status: self.status.clone(),
        }
    }

    // ---- apply ---------------------------------------------------------------------

    /// Brings the remote key and the Secret to what the spec asks.
    pub async fn apply(mut self) -> Result<Outcome, Error> {
        match self.apply_steps().await {
            Ok(requeue) => {
                self.write(false).await?;
                Ok(self.outcome(requeue))
            }
            Err(error) => self.fail(error, "Reconcile").await,
        }
    }

    /// Reports a failure (with any unwritten status change) and returns it.
    async fn fail(&mut self, error: Error, action: &str) -> Result<Outcome, Error> {
        let dirty = self.status != self.written;
        report(
            self.akp,
            self.cluster,
            &mut self.status,
            dirty,
            &error,
            action,
        )
        .await?;
        Err(error)
    }

    async fn apply_steps(&mut self) -> Result<Duration, Error> {
        if let Some(why) = plan::refused_edit(self.akp, &self.status) {
            return Err(Error::InvalidSpec(why));
        }
        if let Some(why) = plan::invalid_spec(self.akp, self.kind) {
            let provider = self.provider.description();
            return Err(Error::InvalidSpec(format!("{why} ({provider})")));
        }
        let state = KeyState::parse(&self.status, self.kind)?;
        if let (KeyState::Empty, Some(import)) = (&state, &self.akp.spec.import) {
            return self.import(&import.key_id).await.map(|()| SOON);
        }
        self.move_secret_if_relocated(&state).await?;
        let mut view = self.secret_view(false).await?;
        let name = self.secret_name();
        if view == SecretView::Missing
            && plan::confirm_missing_secret(&state, self.cluster.known_absent(&name))
        {
            view = self.secret_view(true).await?;
        }
        match plan::next_step(&state, &view) {
            Step::SecretConflict => Err(self.secret_conflict()),
            Step::Create => {
                self.create(CreatePurpose::Initial, None).await?;
                self.go_on_after_create().await
            }
            Step::Recover { intent, previous } => {
                self.recover(intent, previous).await.map(|()| SOON)
            }
            Step::FinishPromotion { old, new } => {
                self.finish_promotion(old, new).await.map(|()| SOON)
            }
            Step::Steady { key, replacement } => self.steady(key, replacement, view).await,
        }
    }

    /// Goes on with the key just created in the same reconcile, from the Secret as this
    /// run wrote it (the watch cache has not seen that write yet).
    async fn go_on_after_create(&mut self) -> Result<Duration, Error> {
        let state = KeyState::parse(&self.status, self.kind)?;
        // The create answer described the key: no need to look it up again now.
        self.spec_changed = false;
        match (state, self.applied.clone()) {
            (KeyState::Active { key, replacement }, Some(contents)) => {
                self.steady(key, replacement, owned_view(contents)).await
            }
            _ => Ok(SOON),
        }
    }

    /// `secretName` or `secretTemplate.keys` changed while a key exists: copy the
    /// credentials to the new place instead of taking them for lost. The old Secret stays
    /// (it is owned by this resource and goes with it).
    async fn move_secret_if_relocated(&mut self, state: &KeyState) -> Result<(), Error> {
        let keys = secret::data_keys(self.akp);
        let name = self.secret_name();
        let recorded_name = self.status.secret_name.clone().unwrap_or(name.clone());
        let recorded_keys = self.status.secret_keys.clone().unwrap_or(keys.clone());
        if state.serving().is_none() || (recorded_name == name && recorded_keys == keys) {
            return Ok(());
        }
        let old = self.cluster.read_secret(&recorded_name, true).await?;
        let old = secret::view_secret_as(self.akp, old.as_ref(), &recorded_keys);
        if self.secret_view(true).await? == SecretView::Foreign {
            return Err(Error::SecretConflict(format!(
                "Secret {name} exists and is not owned by this ApiKeyPair; the credentials stay in Secret {recorded_name}"
            )));
        }
        if let Some(current) = old.current().cloned() {
            let pending = old.pending().cloned();
            self.apply_secret(&SecretContents { current, pending })
                .await?;
            let note = format!("moved the credentials from Secret {recorded_name} to {name}");
            self.event(EventType::Normal, "SecretMoved", "MoveSecret", note)
                .await;
        }
        self.status.secret_name = Some(name);
        self.status.secret_keys = Some(keys);
        self.write(false).await
    }
}

/// What a Secret repair led to.
enum Repaired {
    /// The Secret serves the key (as this view shows): go on.
    Continue(SecretView),
    /// The key could not be kept: a new one is being created.
    StartedOver(Duration),
}

fn owned_view(contents: SecretContents) -> SecretView {
    SecretView::Owned {
        current: Some(contents.current),
        pending: contents.pending,
    }
}

/// Whether an attempt of this purpose retires the key recorded before it.
fn retires_previous(purpose: CreatePurpose) -> bool {
    matches!(
        purpose,
        CreatePurpose::SecretLost | CreatePurpose::RemoteKeyMissing
    )
}

/// Leaves the remote key in place and releases the Secret (drops the owner reference),
/// so garbage collection does not destroy the only copy of a ThreatWinds secret.
pub async fn orphan(akp: &ApiKeyPair, cluster: &dyn Cluster, forced: bool) -> Result<(), Error> {
    let name = akp
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| secret::secret_name(akp));
    if let Some(found) = cluster.read_secret(&name, true).await?
        && secret::view_secret(akp, Some(&found)) != SecretView::Foreign
    {
        cluster.release_secret(&name).await?;
    }
    let why = if forced {
        super::FORCE_ORPHAN_ANNOTATION
    } else {
        "deletionPolicy Orphan"
    };
    let note = format!(
        "left the remote key pair in place ({why}); Secret {name} is kept and no longer owned by this ApiKeyPair"
    );
    cluster
        .event(EventType::Normal, "Orphaned", "DeleteKeyPair", note)
        .await;
    Ok(())
}

/// The deletion decision for a resource being deleted.
pub fn deletion(akp: &ApiKeyPair) -> Deletion {
    let force = akp
        .annotations()
        .get(super::FORCE_ORPHAN_ANNOTATION)
        .map(String::as_str)
        == Some("true");
    plan::deletion(akp.spec.deletion_policy, force)
}

/// Puts a failure in the status (`Ready=False` with its reason and message) and, when the
/// reason is new, in a Warning event; a transient one of a Ready key goes in an event only
/// ([`plan::failure_keeps_ready`]). `dirty`: the status has other unwritten changes.
pub async fn report(
    akp: &ApiKeyPair,
    cluster: &dyn Cluster,
    status: &mut ApiKeyPairStatus,
    dirty: bool,
    error: &Error,
    action: &str,
) -> Result<(), Error> {
    if matches!(error, Error::Stale | Error::Retrying(_)) {
        // Nothing new to tell: the next reconcile works from the new version, or the
        // failure that interrupted the attempt is already in `Ready`.
        return Ok(());
    }
    let ready = conditions::find(&status.conditions, READY);
    let generation_moved = status.observed_generation != akp.metadata.generation;
    if !generation_moved
        && plan::failure_keeps_ready(ready.map(|c| c.status.as_str()), error.reason())
    {
        if dirty {
            match cluster.write_status(status).await {
                Err(Error::Stale) => return Ok(()),
                other => other?,
            }
        }
        let note = format!("{error} (the Secret keeps serving its key; Ready stands)");
        cluster
            .event(EventType::Warning, error.reason(), action, note)
            .await;
        return Ok(());
    }
    let was = ready.map(|c| c.reason.clone());
    let desired = conditions::Desired {
        type_: READY,
        status: status::FALSE,
        reason: error.reason(),
        message: error.to_string(),
    };
    let changed = conditions::set(&mut status.conditions, desired, akp.metadata.generation);
    status.observed_generation = akp.metadata.generation;
    if changed || generation_moved || dirty {
        match cluster.write_status(status).await {
            // A newer version exists: the next reconcile reports from it.
            Err(Error::Stale) => return Ok(()),
            other => other?,
        }
    }
    if was.as_deref() != Some(error.reason()) {
        cluster
            .event(
                EventType::Warning,
                error.reason(),
                action,
                error.to_string(),
            )
            .await;
    }
    debug!(%error, "reported");
    Ok(())
}

/// Deletes a remote key; one that is already gone counts as deleted.
async fn delete_remote(provider: &dyn Provider, key_id: &str) -> Result<(), Error> {
    if key_id.is_empty() {
        return Ok(());
    }
    match provider.delete(key_id).await {
        Ok(()) | Err(ProviderError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
