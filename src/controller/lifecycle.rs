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
    self, Confirmation, Deletion, Lookup, Observation, Recovery, RestartDue, RotationAction,
    RotationCause, SecretRepair, SteadyFacts, Step, VerificationStep, VerifyOutcome,
};
use super::secret::{self, Credentials, SecretContents, SecretView};
use super::state::{Intent, KeyRecord, KeyState, Replacement, Verification};
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
    /// Serializes creates on providers whose keys are told apart by fingerprint only.
    async fn serialize_creates(&self) -> Option<OwnedMutexGuard<()>>;
}

/// When checks are due and how often to look.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Now.
    pub now: DateTime<Utc>,
    /// Whether the periodic provider check is due for this key.
    pub check_due: bool,
    /// The periodic check interval.
    pub check_interval: Duration,
    /// How often a key waiting for its code looks for it.
    pub verification_poll_interval: Duration,
    /// A random number in `0..1` that spreads checks.
    pub jitter: f64,
}

/// What a successful reconcile decided.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When to reconcile again.
    pub requeue: Duration,
    /// Whether the key was observed at the provider (so the next check can wait).
    pub checked: bool,
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
    /// The rotate annotation value the next create attempt carries out.
    rotation_request: Option<String>,
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
            rotation_request: None,
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

    async fn apply_secret(&self, contents: &SecretContents) -> Result<(), Error> {
        let desired = secret::desired_secret(self.akp, contents);
        self.cluster.apply_secret(&desired).await
    }

    /// Writes the Secret to serve these credentials, with no pending slot.
    async fn serve(
        &self,
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
            status: self.status.clone(),
        }
    }

    // ---- apply ---------------------------------------------------------------------

    /// Brings the remote key and the Secret to what the spec asks.
    pub async fn apply(mut self) -> Result<Outcome, Error> {
        match self.apply_steps().await {
            Ok(requeue) => {
                self.status.observed_generation = self.generation();
                self.write(false).await?;
                Ok(self.outcome(requeue))
            }
            Err(error) => {
                let dirty = self.status != self.written;
                report(
                    self.akp,
                    self.cluster,
                    &mut self.status,
                    dirty,
                    &error,
                    "Reconcile",
                )
                .await?;
                Err(error)
            }
        }
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
        if view == SecretView::Missing {
            // The cache holds only Secrets with our label and may lag: confirm first.
            view = self.secret_view(true).await?;
        }
        match plan::next_step(&state, &view) {
            Step::SecretConflict => Err(Error::SecretConflict(format!(
                "Secret {} exists and is not owned by this ApiKeyPair; choose another spec.secretName or delete that Secret",
                self.secret_name()
            ))),
            Step::Create => self
                .create(CreatePurpose::Initial, None)
                .await
                .map(|()| SOON),
            Step::Recover { intent, previous } => {
                self.recover(intent, previous).await.map(|()| SOON)
            }
            Step::FinishPromotion { old, new } => {
                self.finish_promotion(old, new).await.map(|()| SOON)
            }
            Step::Steady { key, replacement } => self.steady(key, replacement, view).await,
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

    // ---- import --------------------------------------------------------------------

    /// Adopts a key pair made by hand: the Secret must hold its credentials and the
    /// provider must confirm them; then the key is recorded and the Secret taken over.
    async fn import(&mut self, key_id: &str) -> Result<(), Error> {
        let name = self.secret_name();
        let found = self.cluster.read_secret(&name, true).await?;
        let keys = secret::data_keys(self.akp);
        let held = found
            .as_ref()
            .and_then(|s| secret::credentials_in(s, &keys));
        let Some(credentials) = held else {
            return Err(Error::ImportRejected(format!(
                "Secret {name} does not hold the credentials of key pair {key_id} under {} and {}",
                keys.api_key, keys.api_secret
            )));
        };
        let remote = self.confirm_import(key_id, &credentials).await?;
        plan::import_matches(key_id, &credentials, &remote).map_err(Error::ImportRejected)?;
        self.apply_secret(&SecretContents {
            current: credentials,
            pending: None,
        })
        .await?;
        self.record_key(&remote, None);
        self.write(true).await?;
        let note = format!("adopted key pair {key_id} and Secret {name}");
        self.event(EventType::Normal, "Imported", "ImportKeyPair", note)
            .await;
        Ok(())
    }

    /// The provider's view of an imported key: ThreatWinds checks the credentials (a
    /// verified key) or finds the key in the session's list (one awaiting its code);
    /// Datonis reads it by id, secret included.
    async fn confirm_import(
        &self,
        key_id: &str,
        credentials: &Credentials,
    ) -> Result<RemoteKeyPair, Error> {
        let lookup = |api_secret| KeyLookup {
            key_id: key_id.to_owned(),
            api_key: credentials.api_key.clone(),
            api_secret,
        };
        let rejected = |e: ProviderError| {
            Error::ImportRejected(format!(
                "the provider does not confirm key pair {key_id}: {e}"
            ))
        };
        if self.kind == ProviderKind::Datonis {
            return self.provider.get(&lookup(None)).await.map_err(rejected);
        }
        let listed = self.provider.get(&lookup(None)).await.map_err(rejected)?;
        if listed.verified != Some(true) {
            return Ok(listed);
        }
        let secret = Some(credentials.api_secret.clone());
        self.provider.get(&lookup(secret)).await.map_err(rejected)
    }

    // ---- create and recovery -------------------------------------------------------

    /// Records the intent of a create attempt (fenced), then creates, writes the Secret,
    /// and records the key. `previous` is retired first when the purpose says so.
    async fn create(
        &mut self,
        purpose: CreatePurpose,
        previous: Option<&KeyRecord>,
    ) -> Result<(), Error> {
        let _serialized = self.provider.serialize_creates().await;
        // A staged replacement needs the current credentials to keep serving.
        let serving = if purpose == CreatePurpose::Replace {
            let view = self.secret_view(true).await?;
            Some(view.current().cloned().ok_or(Error::Stale)?)
        } else {
            None
        };
        let intent = self.record_intent(purpose);
        self.write(true).await?;
        failpoint!("intent-written");
        if let Some(previous) = previous.filter(|_| retires_previous(purpose)) {
            self.delete_remote(&previous.key_id).await?;
            failpoint!("remote-deleted");
        }
        let request = CreateKeyPair {
            name: (intent.remote_name.clone()).unwrap_or_else(|| plan::base_key_name(self.akp)),
            validity_days: self.akp.spec.validity_days,
            role_key: self.akp.spec.datonis.as_ref().map(|d| d.role_key.clone()),
        };
        let created = match self.provider.create(&request).await {
            Ok(created) => created,
            Err(e) => {
                if plan::create_error_clears_intent(&e) {
                    self.forget_intent(purpose);
                }
                return Err(e.into());
            }
        };
        failpoint!("remote-created");
        self.commit_created(&created, serving, purpose, previous)
            .await
    }

    /// Secret first, then status: the new key is recorded only once its secret is safe.
    async fn commit_created(
        &mut self,
        created: &CreatedKeyPair,
        serving: Option<Credentials>,
        purpose: CreatePurpose,
        previous: Option<&KeyRecord>,
    ) -> Result<(), Error> {
        let new = Credentials {
            api_key: created.key.api_key.clone(),
            api_secret: created.api_secret.clone(),
        };
        let staged = serving.is_some();
        let contents = match serving {
            Some(current) => SecretContents {
                current,
                pending: Some(new),
            },
            None => SecretContents {
                current: new,
                pending: None,
            },
        };
        self.apply_secret(&contents).await?;
        failpoint!("secret-written");
        let code_id = created.verification_code_id.clone();
        if staged {
            self.record_replacement(&created.key, code_id);
        } else {
            self.record_key(&created.key, code_id);
        }
        if let Some(previous) = previous.filter(|_| purpose == CreatePurpose::Rotate) {
            self.retire_later(&previous.key_id)?;
        }
        self.complete_intent();
        self.write(false).await?;
        failpoint!("status-written");
        let name = created.key.name.as_deref().unwrap_or(&created.key.api_key);
        let note = format!(
            "created key pair {name} ({}) at {} ({purpose:?})",
            created.key.key_id,
            self.provider.description()
        );
        self.event(EventType::Normal, "Created", "CreateKeyPair", note)
            .await;
        Ok(())
    }

    fn record_intent(&mut self, purpose: CreatePurpose) -> Intent {
        let attempt = self.status.create_attempts.unwrap_or(0).saturating_add(1);
        let remote_name = (self.kind == ProviderKind::Threatwinds).then(|| {
            let uid = self.akp.uid().unwrap_or_default();
            plan::remote_name(&plan::base_key_name(self.akp), &uid, attempt)
        });
        let started_at = self.timing.now;
        self.status.create_attempts = Some(attempt);
        self.status.pending_create = Some(PendingCreate {
            attempt,
            remote_name: remote_name.clone(),
            started_at: rfc3339(started_at),
            purpose,
            rotation_request: self.rotation_request.take(),
            role_key: self.akp.spec.datonis.as_ref().map(|d| d.role_key.clone()),
            validity_days: Some(self.akp.spec.validity_days),
        });
        self.status.provider_ref = Some(self.akp.spec.provider_ref.clone());
        if purpose != CreatePurpose::Replace {
            let message = format!("creating the key pair (attempt {attempt})");
            let why = match purpose {
                CreatePurpose::SecretLost => reason::SECRET_LOST,
                CreatePurpose::RemoteKeyMissing => reason::REMOTE_KEY_MISSING,
                _ => reason::PROGRESSING,
            };
            self.set(READY, (status::FALSE, why, message));
        }
        let pending = self.status.pending_create.as_ref();
        Intent {
            attempt,
            remote_name,
            started_at,
            purpose,
            role_key: pending.and_then(|p| p.role_key.clone()),
            validity_days: pending.and_then(|p| p.validity_days),
        }
    }

    fn record_key(&mut self, key: &RemoteKeyPair, verification_code_id: Option<String>) {
        let s = &mut self.status;
        s.key_id = Some(key.key_id.clone());
        s.api_key = Some(key.api_key.clone());
        s.key_name = key.name.clone();
        s.expire_at = key.expire_at.map(rfc3339);
        s.verified = key.verified;
        s.enabled = key.enabled;
        s.role_key = key.role_key.clone();
        s.validity_days = Some(self.akp.spec.validity_days);
        s.secret_name = Some(secret::secret_name(self.akp));
        s.secret_keys = Some(secret::data_keys(self.akp));
        s.provider_ref = Some(self.akp.spec.provider_ref.clone());
        // A new key's code id, or none: an older key's id must never be submitted for it.
        s.verification_code_id = verification_code_id;
        s.submitted_code_hash = None;
        s.update_refused_generation = None;
    }

    fn record_replacement(&mut self, key: &RemoteKeyPair, verification_code_id: Option<String>) {
        self.status.pending_key = Some(PendingKey {
            key_id: key.key_id.clone(),
            api_key: Some(key.api_key.clone()),
            key_name: key.name.clone(),
            expire_at: key.expire_at.map(rfc3339),
            verification_code_id,
            waiting_for: ReplacementStage::VerificationCode,
        });
        self.status.submitted_code_hash = None;
    }

    /// The remote keys an interrupted attempt may have created (a fresh list).
    async fn attempt_candidates(&self, intent: &Intent) -> Result<Vec<RemoteKeyPair>, Error> {
        let remote = self.provider.list().await?;
        let mut referenced = self.cluster.keys_referenced_elsewhere().await?;
        // This resource's own keys (serving, replacement, previous) are not the attempt's.
        let s = &self.status;
        let own = [&s.key_id, &s.pending_key.as_ref().map(|p| p.key_id.clone())];
        referenced.extend(own.into_iter().flatten().cloned());
        referenced.extend(s.previous_key.as_ref().map(|p| p.key_id.clone()));
        // What the attempt asked for (a spec edited since does not matter).
        let today = intent.started_at.date_naive();
        let days = intent.validity_days.unwrap_or(self.akp.spec.validity_days);
        let expiry = plan::datonis_expiry(today, days);
        let spec_role = self.akp.spec.datonis.as_ref().map(|d| d.role_key.as_str());
        let role = intent.role_key.as_deref().or(spec_role);
        let is_referenced = |id: &str| referenced.contains(id);
        let found = plan::attempt_candidates(
            self.kind,
            intent,
            role,
            Some(expiry),
            &remote,
            &is_referenced,
        );
        Ok(found.into_iter().cloned().collect())
    }

    async fn recover(&mut self, intent: Intent, previous: Option<KeyRecord>) -> Result<(), Error> {
        let _serialized = self.provider.serialize_creates().await;
        self.write(true).await?;
        if let Some(previous) = previous
            .as_ref()
            .filter(|_| retires_previous(intent.purpose))
        {
            self.delete_remote(&previous.key_id).await?;
        }
        let candidates = self.attempt_candidates(&intent).await?;
        let view = self.secret_view(true).await?;
        let slot = if intent.staged() {
            view.pending()
        } else {
            view.current()
        };
        let refs: Vec<&RemoteKeyPair> = candidates.iter().collect();
        let decision = plan::recover(self.kind, &refs, slot.map(|c| c.api_key.as_str()));
        info!(
            attempt = intent.attempt,
            ?decision,
            "recovering an interrupted create"
        );
        match decision {
            Recovery::Adopt(key) => {
                // Keys of this attempt other than the adopted one never reached the Secret.
                if self.kind == ProviderKind::Threatwinds {
                    for extra in candidates.iter().filter(|k| k.key_id != key.key_id) {
                        self.delete_remote(&extra.key_id).await?;
                    }
                }
                self.adopt(&key, intent.staged());
            }
            Recovery::AdoptWithProviderSecret(key) => {
                self.adopt_with_provider_secret(&key).await?;
            }
            Recovery::DeleteAndRetry(ids) => {
                for id in &ids {
                    self.delete_remote(id).await?;
                }
                failpoint!("remote-deleted");
                let note = format!(
                    "deleted {} key pair(s) of interrupted attempt {} whose secret never reached the Secret; creating anew",
                    ids.len(),
                    intent.attempt
                );
                self.event(
                    EventType::Warning,
                    "CreateInterrupted",
                    "RecoverCreate",
                    note,
                )
                .await;
                return self.give_up_attempt(&intent).await;
            }
            Recovery::Retry => return self.give_up_attempt(&intent).await,
        }
        if let Some(previous) = previous.filter(|_| intent.purpose == CreatePurpose::Rotate) {
            self.retire_later(&previous.key_id)?;
        }
        self.write(true).await
    }

    /// An attempt left nothing usable: forget it and try again with growing back-off (the
    /// error keeps the reconcile from counting as progress).
    async fn give_up_attempt(&mut self, intent: &Intent) -> Result<(), Error> {
        self.forget_intent(intent.purpose);
        self.write(true).await?;
        self.sweep_strays().await?;
        Err(Error::Retrying(format!(
            "create attempt {} left no usable key pair; trying again",
            intent.attempt
        )))
    }

    /// Deletes ThreatWinds keys of earlier attempts of this resource that committed after
    /// their recovery gave up on them (runs after a fenced write, from a fresh list).
    async fn sweep_strays(&self) -> Result<(), Error> {
        if self.kind != ProviderKind::Threatwinds {
            return Ok(());
        }
        let listed = self.provider.list().await?;
        let uid = self.akp.uid().unwrap_or_default();
        let s = &self.status;
        let owned: Vec<&str> = [
            s.key_id.as_deref(),
            s.pending_key.as_ref().map(|p| p.key_id.as_str()),
        ]
        .into_iter()
        .flatten()
        .chain(s.previous_key.as_ref().map(|p| p.key_id.as_str()))
        .collect();
        for stray in plan::stray_attempt_keys(&uid, &listed, &owned) {
            self.delete_remote(&stray.key_id).await?;
            let note = format!(
                "deleted key pair {} of an earlier interrupted attempt",
                stray.key_id
            );
            self.event(
                EventType::Warning,
                "CreateInterrupted",
                "RecoverCreate",
                note,
            )
            .await;
        }
        Ok(())
    }

    /// Clears the intent. An attempt that retired the previous key also forgets that key:
    /// it is deleted, so the next reconcile creates anew instead of serving it.
    fn forget_intent(&mut self, purpose: CreatePurpose) {
        self.status.pending_create = None;
        if retires_previous(purpose) {
            let s = &mut self.status;
            s.key_id = None;
            s.api_key = None;
            s.verified = None;
            s.verification_code_id = None;
            s.submitted_code_hash = None;
        }
    }

    /// Adopts an attempt's key whose credentials reached the Secret. Its code id was in
    /// the lost status write: the verification protocol asks for a new code.
    fn adopt(&mut self, key: &RemoteKeyPair, staged: bool) {
        if staged {
            self.record_replacement(key, None);
        } else {
            self.record_key(key, None);
        }
        self.complete_intent();
    }

    /// Clears an intent whose key is recorded; a rotation it carried out counts as done
    /// only now (a rotation whose attempt is given up is started again).
    fn complete_intent(&mut self) {
        if let Some(pending) = self.status.pending_create.take()
            && pending.rotation_request.is_some()
        {
            self.status.rotation_request = pending.rotation_request;
        }
    }

    async fn adopt_with_provider_secret(&mut self, key: &RemoteKeyPair) -> Result<(), Error> {
        let Some(api_secret) = key.api_secret.clone() else {
            return Err(Error::CreateAmbiguous(format!(
                "key pair {} of an interrupted create has no readable secret; delete it at the provider or set the {} annotation",
                key.key_id,
                super::FORCE_ORPHAN_ANNOTATION
            )));
        };
        self.serve(&key.api_key, api_secret).await?;
        self.adopt(key, false);
        Ok(())
    }

    /// The Secret serves the verified replacement: retire the old key, record the new.
    async fn finish_promotion(&mut self, old: KeyRecord, new: KeyRecord) -> Result<(), Error> {
        let Some(pending) = self.status.pending_key.clone() else {
            return Ok(());
        };
        let view = self.secret_view(true).await?;
        let holds =
            |c: Option<&Credentials>| c.map(|c| c.api_key.as_str()) == Some(new.api_key.as_str());
        if !holds(view.current()) {
            match (pending.waiting_for, view.pending().cloned()) {
                // Verified, but the swap did not reach the Secret (or was reverted): redo it.
                (ReplacementStage::Promotion, Some(creds)) if holds(Some(&creds)) => {
                    let contents = SecretContents {
                        current: creds,
                        pending: None,
                    };
                    self.apply_secret(&contents).await?;
                }
                // The cache lagged: the replacement is not in the Secret yet.
                (ReplacementStage::VerificationCode, _) => return Ok(()),
                // The replacement's credentials are gone: the old key keeps serving.
                _ => {
                    let replacement = Replacement {
                        key: new,
                        stage: pending.waiting_for,
                    };
                    return self.abandon_replacement(&replacement).await;
                }
            }
        }
        self.retire_later(&old.key_id)?;
        let s = &mut self.status;
        s.key_id = Some(pending.key_id.clone());
        s.api_key = pending.api_key.clone();
        s.key_name = pending.key_name.clone();
        s.expire_at = pending.expire_at.clone();
        s.verified = Some(true);
        s.verification_code_id = pending.verification_code_id.clone();
        s.validity_days = Some(self.akp.spec.validity_days);
        s.pending_key = None;
        s.submitted_code_hash = None;
        self.set_steady_conditions(None);
        self.write(false).await?;
        let note = format!(
            "key pair {} now serves; the previous key pair {} stays valid for the grace period",
            new.key_id, old.key_id
        );
        self.event(EventType::Normal, "Replaced", "ReplaceKeyPair", note)
            .await;
        Ok(())
    }

    /// Deletes a waiting replacement (fenced) and forgets it.
    async fn abandon_replacement(&mut self, replacement: &Replacement) -> Result<(), Error> {
        self.write(true).await?;
        self.delete_remote(&replacement.key.key_id).await?;
        self.status.pending_key = None;
        self.write(false).await?;
        let note = format!(
            "deleted replacement key pair {}: its credentials are no longer in the Secret",
            replacement.key.key_id
        );
        self.event(
            EventType::Warning,
            "ReplacementAbandoned",
            "ReplaceKeyPair",
            note,
        )
        .await;
        Ok(())
    }

    /// The serving key cannot be used any more (`SecretLost`) or is gone
    /// (`RemoteKeyMissing`): drop a waiting replacement, retire the key, create anew.
    async fn start_over(
        &mut self,
        purpose: CreatePurpose,
        key: &KeyRecord,
        replacement: Option<&Replacement>,
        why: &str,
    ) -> Result<Duration, Error> {
        let reason_ = match purpose {
            CreatePurpose::SecretLost => reason::SECRET_LOST,
            _ => reason::REMOTE_KEY_MISSING,
        };
        let note = format!("{why}; replacing key pair {}", key.key_id);
        self.event(EventType::Warning, reason_, "ReplaceKeyPair", note)
            .await;
        if let Some(replacement) = replacement {
            self.abandon_replacement(replacement).await?;
        }
        self.create(purpose, Some(key)).await?;
        Ok(SOON)
    }

    // ---- steady state ----------------------------------------------------------------

    async fn steady(
        &mut self,
        key: KeyRecord,
        replacement: Option<Replacement>,
        view: SecretView,
    ) -> Result<Duration, Error> {
        if self.status.update_refused_generation.is_some()
            && self.status.update_refused_generation != self.generation()
        {
            self.status.update_refused_generation = None;
        }
        self.retire_previous_if_due().await?;
        let view = match self.repair_secret(&key, replacement.as_ref(), view).await? {
            Repaired::Continue(view) => view,
            Repaired::StartedOver(requeue) => return Ok(requeue),
        };
        let replacement = replacement.filter(|_| self.status.pending_key.is_some());
        let due = self.timing.check_due || self.status.observed_generation != self.generation();
        if due && let Some(requeue) = self.observe(&key, replacement.as_ref(), &view).await? {
            return Ok(requeue);
        }
        self.record_renewal_time()?;
        let rotate = self
            .akp
            .annotations()
            .get(ROTATE_ANNOTATION)
            .map(String::as_str);
        let cause = plan::rotation_due(self.kind, self.akp, &self.status, rotate, self.timing.now);
        if let Some(cause) = cause.filter(|_| replacement.is_none()) {
            return self.rotate(cause, &key).await;
        }
        let was_verified = key.verification.usable();
        let waiting = self.verification(replacement.as_ref(), &view).await?;
        if !was_verified && self.status.verified == Some(true) {
            // Verified just now: check it with its own credentials, as every verified key.
            let verified = KeyRecord {
                verification: Verification::Verified,
                ..key.clone()
            };
            if let Some(requeue) = self.observe(&verified, None, &view).await? {
                return Ok(requeue);
            }
        }
        if self.status.pending_key.as_ref().map(|p| p.waiting_for)
            == Some(ReplacementStage::Promotion)
        {
            return Ok(SOON);
        }
        let was = conditions::find(&self.status.conditions, READY).map(|c| c.reason.clone());
        self.set_steady_conditions(waiting);
        self.warn_if_renewal_late(was.as_deref()).await;
        self.restart_consumers(&key).await?;
        Ok(self.next_requeue())
    }

    /// A Warning event when a renewal becomes late (its code has not arrived halfway to
    /// the expiry); the condition and the metric say so too.
    async fn warn_if_renewal_late(&self, was: Option<&str>) {
        let now = conditions::find(&self.status.conditions, READY)
            .map(|c| (c.reason.as_str(), c.message.clone()));
        if let Some((reason::RENEWAL_AWAITING_VERIFICATION, message)) = now
            && was != Some(reason::RENEWAL_AWAITING_VERIFICATION)
        {
            let why = reason::RENEWAL_AWAITING_VERIFICATION;
            self.event(EventType::Warning, why, "RotateKeyPair", message)
                .await;
        }
    }

    /// Records when the key in use is renewed (its expiry minus `renewBefore`).
    fn record_renewal_time(&mut self) -> Result<(), Error> {
        let renew_before = plan::renew_before(self.akp).map_err(Error::InvalidSpec)?;
        let expire_at = self.status.expire_at.as_deref().and_then(parse_time);
        self.status.renewal_time = expire_at.map(|t| rfc3339(plan::renewal_time(t, renew_before)));
        Ok(())
    }

    /// Starts a rotation of the key in use (renewal, request or spec change).
    async fn rotate(&mut self, cause: RotationCause, key: &KeyRecord) -> Result<Duration, Error> {
        // Two rotations within a grace period: the oldest key goes now.
        self.retire_previous_now().await?;
        let action = plan::rotation_action(self.kind, &cause, self.akp);
        if let RotationCause::Requested(value) = &cause {
            // Carried by the intent and recorded with the new key: once per distinct value.
            self.rotation_request = Some(value.clone());
        }
        let note = format!("rotating key pair {} ({cause:?}, {action:?})", key.key_id);
        self.event(EventType::Normal, "RotationStarted", "RotateKeyPair", note)
            .await;
        match action {
            RotationAction::Replace => self.create(CreatePurpose::Replace, Some(key)).await?,
            RotationAction::Rotate => self.create(CreatePurpose::Rotate, Some(key)).await?,
            RotationAction::Extend => self.extend(key).await?,
        }
        Ok(SOON)
    }

    /// Moves the expiry date of the key in use out by `validityDays` from today (Datonis).
    async fn extend(&mut self, key: &KeyRecord) -> Result<(), Error> {
        let expire_at = self.status.expire_at.as_deref().and_then(parse_time);
        let expiry = plan::extended_expiry(self.timing.now, expire_at, self.akp.spec.validity_days);
        let update = UpdateKeyPair {
            expiry_date: Some(expiry),
            ..Default::default()
        };
        let updated = self.provider.update(&key.key_id, &update).await?;
        self.record_observation(&updated);
        self.record_renewal_time()?;
        self.write(false).await?;
        let note = format!(
            "extended key pair {} to {}",
            key.key_id,
            self.status.expire_at.as_deref().unwrap_or("?")
        );
        self.event(EventType::Normal, "Extended", "RotateKeyPair", note)
            .await;
        Ok(())
    }

    /// Keeps a replaced key valid for the grace period (recorded, so a restart still
    /// retires it exactly once).
    fn retire_later(&mut self, key_id: &str) -> Result<(), Error> {
        let grace = plan::grace_period(self.akp).map_err(Error::InvalidSpec)?;
        self.status.previous_key = Some(PreviousKey {
            key_id: key_id.to_owned(),
            delete_after: rfc3339(self.timing.now + grace),
        });
        Ok(())
    }

    async fn retire_previous_if_due(&mut self) -> Result<(), Error> {
        let due = self
            .status
            .previous_key
            .as_ref()
            .is_some_and(|p| plan::previous_due(p, self.timing.now));
        if due {
            self.retire_previous_now().await?;
        }
        Ok(())
    }

    /// Deletes the previous key (fenced; kept with `deletionPolicy: Orphan`) and forgets it.
    async fn retire_previous_now(&mut self) -> Result<(), Error> {
        let Some(previous) = self.status.previous_key.clone() else {
            return Ok(());
        };
        let orphan = self.akp.spec.deletion_policy == DeletionPolicy::Orphan;
        if !orphan {
            self.write(true).await?;
            self.delete_remote(&previous.key_id).await?;
            failpoint!("previous-deleted");
        }
        self.status.previous_key = None;
        self.write(false).await?;
        let note = if orphan {
            format!(
                "the grace period of key pair {} is over; it is kept (deletionPolicy Orphan)",
                previous.key_id
            )
        } else {
            format!(
                "the grace period of key pair {} is over; it was deleted",
                previous.key_id
            )
        };
        self.event(
            EventType::Normal,
            "PreviousKeyRetired",
            "RotateKeyPair",
            note,
        )
        .await;
        Ok(())
    }

    /// Restarts the `rolloutRestartTargets` once the Secret serves a key they have not
    /// seen (not for the first key: nothing used another one before).
    async fn restart_consumers(&mut self, key: &KeyRecord) -> Result<(), Error> {
        let serving = &key.key_id;
        let serving = self.status.key_id.as_ref().unwrap_or(serving).clone();
        match plan::restart_due(self.akp, &self.status, &serving) {
            RestartDue::No => return Ok(()),
            RestartDue::RecordOnly => {
                self.status.consumers_restarted_for_key_id = Some(serving);
                return Ok(());
            }
            RestartDue::Restart => {}
        }
        let at = rfc3339(self.timing.now);
        let mut failures = Vec::new();
        for target in &self.akp.spec.rollout_restart_targets {
            if let Err(e) = self.cluster.restart_workload(target, &at).await {
                failures.push(format!("{:?} {}: {e}", target.kind, target.name));
            }
        }
        if !failures.is_empty() {
            let message = format!("cannot restart {}", failures.join("; "));
            let desired = (status::FALSE, reason::RESTART_FAILED, message.clone());
            if conditions::find(&self.status.conditions, CONSUMERS_RESTARTED)
                .map(|c| c.reason.as_str())
                != Some(reason::RESTART_FAILED)
            {
                self.event(
                    EventType::Warning,
                    reason::RESTART_FAILED,
                    "RestartConsumers",
                    message,
                )
                .await;
            }
            self.set(CONSUMERS_RESTARTED, desired);
            return Ok(());
        }
        let message = format!("restarted for key pair {serving}");
        self.set(
            CONSUMERS_RESTARTED,
            (status::TRUE, reason::RESTARTED, message.clone()),
        );
        self.status.consumers_restarted_for_key_id = Some(serving);
        self.event(
            EventType::Normal,
            reason::RESTARTED,
            "RestartConsumers",
            message,
        )
        .await;
        Ok(())
    }

    fn next_requeue(&self) -> Duration {
        let awaiting = KeyState::parse(&self.status, self.kind).is_ok_and(|state| match state {
            KeyState::Active { key, replacement } => {
                !key.verification.usable() || replacement.is_some()
            }
            _ => true,
        });
        if awaiting {
            return self.timing.verification_poll_interval;
        }
        // Sleep until the next thing is due: expiry, renewal, or the end of a grace period.
        let s = &self.status;
        let deadline = [
            s.expire_at.as_deref(),
            s.renewal_time.as_deref(),
            s.previous_key.as_ref().map(|p| p.delete_after.as_str()),
        ]
        .into_iter()
        .flatten()
        .filter_map(parse_time)
        .min();
        plan::next_check(
            self.timing.check_interval,
            self.timing.jitter,
            self.timing.now,
            deadline,
        )
    }

    /// Repairs the Secret of a key in place; returns the Secret as it now is.
    async fn repair_secret(
        &mut self,
        key: &KeyRecord,
        replacement: Option<&Replacement>,
        view: SecretView,
    ) -> Result<Repaired, Error> {
        let mut view = view;
        if plan::secret_repair(self.kind, key, replacement, &view) != SecretRepair::Intact {
            // The cache may lag behind our own writes: decide on the API server's copy.
            view = self.secret_view(true).await?;
        }
        match plan::secret_repair(self.kind, key, replacement, &view) {
            SecretRepair::Intact => {
                self.backfill_layout();
                Ok(Repaired::Continue(view))
            }
            // The swap is in the Secret; the next reconcile finishes the promotion.
            SecretRepair::Promoted => Ok(Repaired::StartedOver(SOON)),
            SecretRepair::ReplacementLost => {
                if let Some(replacement) = replacement {
                    self.abandon_replacement(replacement).await?;
                }
                Ok(Repaired::Continue(view))
            }
            SecretRepair::RestoreFromProvider => self.restore_from_provider(key).await,
            SecretRepair::RestoreApiKey => {
                let secret = view.current().map(|c| c.api_secret.clone());
                let Some(api_secret) = secret else {
                    return Ok(Repaired::StartedOver(
                        self.start_over(CreatePurpose::SecretLost, key, replacement, "the Secret lost its API secret").await?,
                    ));
                };
                let current = Credentials {
                    api_key: key.api_key.clone(),
                    api_secret,
                };
                let pending = view.pending().cloned();
                let contents = SecretContents { current, pending };
                self.apply_secret(&contents).await?;
                // The restored pair is checked now, not at the next interval.
                self.timing.check_due = true;
                Ok(Repaired::Continue(owned_view(contents)))
            }
            SecretRepair::Lost => Ok(Repaired::StartedOver(
                self.start_over(CreatePurpose::SecretLost, key, replacement, "the Secret holding the API secret was deleted or emptied, and ThreatWinds shows a secret only once").await?,
            )),
        }
    }

    /// Statuses written before the provider and the Secret layout were recorded get them
    /// now, from a Secret that holds the key under the spec's layout: an edit of either is
    /// then handled (moved or refused) instead of taken for a lost or missing key.
    fn backfill_layout(&mut self) {
        let s = &mut self.status;
        if s.provider_ref.is_none() {
            s.provider_ref = Some(self.akp.spec.provider_ref.clone());
        }
        if s.secret_name.is_none() || s.secret_keys.is_none() {
            s.secret_name = Some(secret::secret_name(self.akp));
            s.secret_keys = Some(secret::data_keys(self.akp));
        }
    }

    async fn restore_from_provider(&mut self, key: &KeyRecord) -> Result<Repaired, Error> {
        let lookup = KeyLookup {
            key_id: key.key_id.clone(),
            api_key: key.api_key.clone(),
            api_secret: None,
        };
        let remote = match self.provider.get(&lookup).await {
            Ok(remote) => remote,
            Err(e @ ProviderError::NotFound { .. }) => {
                // One 404 is not proof: a complete list must agree.
                let listed = self.provider.list().await?;
                if !matches!(
                    plan::confirmation(&key.key_id, &listed, &e),
                    Confirmation::Missing
                ) {
                    return Err(e.into());
                }
                let why = "the key pair is gone at the provider";
                let requeue = self.start_over(CreatePurpose::RemoteKeyMissing, key, None, why);
                return Ok(Repaired::StartedOver(requeue.await?));
            }
            Err(e) => return Err(e.into()),
        };
        let Some(api_secret) = remote.api_secret.clone() else {
            let why = "the provider no longer returns the secret";
            let requeue = self.start_over(CreatePurpose::SecretLost, key, None, why);
            return Ok(Repaired::StartedOver(requeue.await?));
        };
        let contents = self.serve(&remote.api_key, api_secret).await?;
        let note = "restored the Secret from the provider".to_owned();
        self.event(EventType::Normal, "SecretRestored", "RestoreSecret", note)
            .await;
        Ok(Repaired::Continue(owned_view(contents)))
    }

    /// Observes the serving key at the provider; returns a requeue when that started over.
    async fn observe(
        &mut self,
        key: &KeyRecord,
        replacement: Option<&Replacement>,
        view: &SecretView,
    ) -> Result<Option<Duration>, Error> {
        let lookup = plan::lookup_for(self.kind, key);
        let api_secret = match lookup {
            Lookup::WithOwnCredentials => view.current().map(|c| c.api_secret.clone()),
            _ => None,
        };
        let request = KeyLookup {
            key_id: key.key_id.clone(),
            api_key: key.api_key.clone(),
            api_secret,
        };
        let remote = match plan::observation(lookup, self.provider.get(&request).await) {
            Observation::Found(remote) => remote,
            Observation::Missing => return self.gone(key, replacement).await,
            Observation::Failed(e) => return Err(e.into()),
            Observation::Confirm(error) => {
                let listed = self.provider.list().await?;
                match plan::confirmation(&key.key_id, &listed, &error) {
                    Confirmation::Inconclusive => return Err(error.into()),
                    Confirmation::Unverified(remote) => *remote,
                    Confirmation::Missing => return self.gone(key, replacement).await,
                    Confirmation::SecretMismatch => match self.recheck_credentials(key).await? {
                        Some(remote) => remote,
                        None => {
                            let why = "the API secret in the Secret no longer matches the key pair";
                            let started =
                                self.start_over(CreatePurpose::SecretLost, key, replacement, why);
                            return Ok(Some(started.await?));
                        }
                    },
                }
            }
        };
        self.checked = true;
        self.record_observation(&remote);
        self.update_datonis(key, &remote).await?;
        Ok(None)
    }

    /// A second check of a verified key whose credentials were refused once, with the
    /// Secret read fresh (the cache may have lagged): `None` if they are refused again.
    async fn recheck_credentials(&self, key: &KeyRecord) -> Result<Option<RemoteKeyPair>, Error> {
        let view = self.secret_view(true).await?;
        let request = KeyLookup {
            key_id: key.key_id.clone(),
            api_key: key.api_key.clone(),
            api_secret: view.current().map(|c| c.api_secret.clone()),
        };
        match self.provider.get(&request).await {
            Ok(remote) => Ok(Some(remote)),
            Err(ProviderError::Unauthorized { .. }) if request.api_secret.is_some() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The key is gone at the provider: an expired key stays expired; any other is recreated.
    async fn gone(
        &mut self,
        key: &KeyRecord,
        replacement: Option<&Replacement>,
    ) -> Result<Option<Duration>, Error> {
        let why = if self.is_expired() {
            // Providers may drop expired keys: a new one replaces it.
            format!("expired key pair {} is gone at the provider", key.key_id)
        } else {
            format!("key pair {} was deleted at the provider", key.key_id)
        };
        let started = self.start_over(CreatePurpose::RemoteKeyMissing, key, replacement, &why);
        Ok(Some(started.await?))
    }

    fn record_observation(&mut self, remote: &RemoteKeyPair) {
        let s = &mut self.status;
        if remote.expire_at.is_some() {
            s.expire_at = remote.expire_at.map(rfc3339);
        }
        if remote.verified == Some(true) || s.verified != Some(true) {
            s.verified = remote.verified.or(s.verified);
        }
        if remote.enabled.is_some() {
            s.enabled = remote.enabled;
        }
        if remote.role_key.is_some() {
            s.role_key = remote.role_key.clone();
        }
        if !remote.roles.is_empty() || !remote.groups.is_empty() {
            s.roles = remote.roles.clone();
            s.groups = remote.groups.clone();
        }
        if remote.name.is_some() {
            s.key_name = remote.name.clone();
        }
    }

    /// Applies a Datonis update when the spec moved; a refusal is recorded for this
    /// generation and shown in `Ready` until the spec changes.
    async fn update_datonis(
        &mut self,
        key: &KeyRecord,
        remote: &RemoteKeyPair,
    ) -> Result<(), Error> {
        let Some(update) = plan::datonis_update(self.akp, remote, &self.status) else {
            return Ok(());
        };
        match self.provider.update(&key.key_id, &update).await {
            Ok(updated) => {
                self.record_observation(&updated);
                self.status.validity_days = Some(self.akp.spec.validity_days);
                let note = format!("updated key pair {} to match the spec", key.key_id);
                self.event(EventType::Normal, "Updated", "UpdateKeyPair", note)
                    .await;
                Ok(())
            }
            Err(e) if !e.is_retryable() => {
                self.status.update_refused_generation = self.generation();
                let message = format!("the provider refused the update; change the spec: {e}");
                let why = super::provider_reason(&e);
                self.set(READY, (status::FALSE, why, message.clone()));
                self.event(EventType::Warning, why, "UpdateKeyPair", message)
                    .await;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn is_expired(&self) -> bool {
        let expire_at = self.status.expire_at.as_deref().and_then(parse_time);
        expire_at.is_some_and(|t| t <= self.timing.now)
    }

    fn set_steady_conditions(&mut self, waiting: Option<&'static str>) {
        let Ok(KeyState::Active { key, replacement }) = KeyState::parse(&self.status, self.kind)
        else {
            return;
        };
        let secret_name = self.secret_name();
        let facts = SteadyFacts {
            kind: self.kind,
            key: &key,
            replacement: replacement.as_ref(),
            expired: self.is_expired(),
            disabled: self.status.enabled == Some(false),
            waiting,
            secret_name: &secret_name,
            expire_at: self.status.expire_at.as_deref(),
            renewal_overdue: plan::renewal_overdue(
                self.status.renewal_time.as_deref().and_then(parse_time),
                self.status.expire_at.as_deref().and_then(parse_time),
                self.timing.now,
            ),
        };
        let (ready, verified) = plan::steady_conditions(&facts);
        if let Some(verified) = verified {
            self.set(VERIFIED, verified);
        }
        let refused = self.status.update_refused_generation.is_some()
            && self.status.update_refused_generation == self.generation();
        if !refused {
            self.set(READY, ready);
        }
    }

    // ---- verification ----------------------------------------------------------------

    /// Runs the verification protocol for whichever key waits for its code (the
    /// replacement first). Returns the reason the serving key waits with, if it does.
    async fn verification(
        &mut self,
        replacement: Option<&Replacement>,
        view: &SecretView,
    ) -> Result<Option<&'static str>, Error> {
        let for_replacement = replacement.is_some_and(|r| !r.key.verification.usable());
        let serving_waits =
            self.status.verified != Some(true) && self.kind == ProviderKind::Threatwinds;
        if !for_replacement && !serving_waits {
            return Ok(None);
        }
        let creds = if for_replacement {
            view.pending()
        } else {
            view.current()
        };
        let Some(creds) = creds.cloned() else {
            return Ok(Some(reason::AWAITING_VERIFICATION_CODE));
        };
        let mut step = self.verification_step(for_replacement).await?;
        if let VerificationStep::RequestNewCode { requested } = step.0 {
            self.request_new_code(requested, for_replacement, &creds)
                .await?;
            // The code may be there already: look with the new code id right away.
            step = self.verification_step(for_replacement).await?;
        }
        let waiting = self
            .run_verification_step(step, for_replacement, &creds, view)
            .await?;
        Ok(waiting.filter(|_| !for_replacement))
    }

    fn code_id(&self, for_replacement: bool) -> Option<String> {
        if for_replacement {
            self.status
                .pending_key
                .as_ref()?
                .verification_code_id
                .clone()
        } else {
            self.status.verification_code_id.clone()
        }
    }

    /// The next verification step, with the code when there is one to submit.
    async fn verification_step(
        &self,
        for_replacement: bool,
    ) -> Result<(VerificationStep, Option<SecretString>), Error> {
        let annotation = self.akp.annotations().get(REQUEST_NEW_CODE_ANNOTATION);
        let reference = self
            .akp
            .spec
            .verification
            .as_ref()
            .map(|v| &v.code_secret_ref);
        let code_id = self.code_id(for_replacement);
        let start = plan::verification_start(
            code_id.as_deref(),
            annotation.map(String::as_str),
            self.status.new_code_request.as_deref(),
            reference.is_some(),
        );
        let (code_id, reference) = match (start, reference) {
            (Err(step), _) => return Ok((step, None)),
            (Ok(code_id), Some(reference)) => (code_id, reference),
            (Ok(_), None) => return Ok((VerificationStep::NoCodeSource, None)),
        };
        let code = self.cluster.read_code(reference).await?;
        let step = plan::verification_submit(
            code_id,
            code.as_ref().map(|c| c.expose_secret()),
            self.status.submitted_code_hash.as_deref(),
        );
        Ok((step, code))
    }

    async fn run_verification_step(
        &mut self,
        (step, code): (VerificationStep, Option<SecretString>),
        for_replacement: bool,
        creds: &Credentials,
        view: &SecretView,
    ) -> Result<Option<&'static str>, Error> {
        match (step, code) {
            (VerificationStep::RequestNewCode { requested }, _) => {
                self.request_new_code(requested, for_replacement, creds)
                    .await?;
                Ok(Some(reason::AWAITING_VERIFICATION_CODE))
            }
            (
                VerificationStep::Submit {
                    code_id,
                    fingerprint,
                },
                Some(code),
            ) => {
                let result = self.provider.verify(&code_id, &code).await;
                self.submitted(
                    plan::verify_outcome(result),
                    fingerprint,
                    for_replacement,
                    view,
                )
                .await
            }
            (VerificationStep::AlreadyRejected, _) => Ok(Some(reason::VERIFICATION_CODE_REJECTED)),
            (VerificationStep::CodeMissing | VerificationStep::Submit { .. }, _) => {
                Ok(Some(reason::VERIFICATION_CODE_MISSING))
            }
            (VerificationStep::NoCodeSource, _) => Ok(Some(reason::AWAITING_VERIFICATION_CODE)),
        }
    }

    async fn request_new_code(
        &mut self,
        requested: bool,
        for_replacement: bool,
        creds: &Credentials,
    ) -> Result<(), Error> {
        let new_id = self
            .provider
            .request_new_code(&creds.api_key, &creds.api_secret)
            .await?;
        if requested {
            let annotation = self.akp.annotations().get(REQUEST_NEW_CODE_ANNOTATION);
            self.status.new_code_request = annotation.cloned();
        }
        match (for_replacement, self.status.pending_key.as_mut()) {
            (true, Some(p)) => p.verification_code_id = Some(new_id),
            _ => self.status.verification_code_id = Some(new_id),
        }
        self.status.submitted_code_hash = None;
        let note = if requested {
            "asked the provider to email a new verification code"
        } else {
            "the verification code id was lost in an interrupted create; asked the provider to email a new code"
        };
        let note = note.to_owned();
        self.event(
            EventType::Normal,
            "NewCodeRequested",
            "RequestNewCode",
            note,
        )
        .await;
        Ok(())
    }

    async fn submitted(
        &mut self,
        outcome: VerifyOutcome,
        fingerprint: String,
        for_replacement: bool,
        view: &SecretView,
    ) -> Result<Option<&'static str>, Error> {
        // An earlier submission may have verified the key and lost its answer (the code is
        // then used up and refused): the session's list tells.
        let outcome = match outcome {
            VerifyOutcome::Verified => VerifyOutcome::Verified,
            other if self.verified_meanwhile(for_replacement).await => {
                debug!(?other, "the key was verified by an earlier submission");
                VerifyOutcome::Verified
            }
            other => other,
        };
        match outcome {
            VerifyOutcome::Verified => {
                let note = "the key pair was verified with the emailed code".to_owned();
                self.event(EventType::Normal, reason::VERIFIED, "VerifyKeyPair", note)
                    .await;
                if for_replacement {
                    self.promote(view).await?;
                } else {
                    self.status.verified = Some(true);
                }
                Ok(None)
            }
            VerifyOutcome::Rejected(e) => {
                self.status.submitted_code_hash = Some(fingerprint);
                let message = format!("the provider rejected the verification code: {e}");
                let why = reason::VERIFICATION_CODE_REJECTED;
                self.set(VERIFIED, (status::FALSE, why, message.clone()));
                self.event(EventType::Warning, why, "VerifyKeyPair", message)
                    .await;
                Ok(Some(why))
            }
            VerifyOutcome::NotDelivered(e) => Err(e.into()),
        }
    }

    /// Whether the provider's list shows the waiting key as verified already.
    async fn verified_meanwhile(&self, for_replacement: bool) -> bool {
        let key_id = if for_replacement {
            self.status.pending_key.as_ref().map(|p| p.key_id.clone())
        } else {
            self.status.key_id.clone()
        };
        let Ok(listed) = self.provider.list().await else {
            return false;
        };
        listed
            .iter()
            .any(|k| Some(&k.key_id) == key_id.as_ref() && k.verified == Some(true))
    }

    /// Swaps the verified replacement into the Secret's current slot (one apply), then
    /// records that promotion is under way; [`Step::FinishPromotion`] retires the old key.
    async fn promote(&mut self, view: &SecretView) -> Result<(), Error> {
        let Some(new) = view.pending().cloned() else {
            return Err(Error::Stale);
        };
        self.apply_secret(&SecretContents {
            current: new,
            pending: None,
        })
        .await?;
        failpoint!("secret-written");
        if let Some(p) = self.status.pending_key.as_mut() {
            p.waiting_for = ReplacementStage::Promotion;
        }
        self.write(false).await
    }

    // ---- delete ----------------------------------------------------------------------

    /// Deletes (or, with `disable`, disables) every remote key this resource owns (fenced,
    /// under the create lock so an attempt in flight elsewhere is never taken for this one's).
    pub async fn cleanup(mut self, disable: bool) -> Result<Outcome, Error> {
        match self.cleanup_steps(disable).await {
            Ok(()) => Ok(self.outcome(Duration::ZERO)),
            Err(error) => {
                let dirty = self.status != self.written;
                report(
                    self.akp,
                    self.cluster,
                    &mut self.status,
                    dirty,
                    &error,
                    "DeleteKeyPair",
                )
                .await?;
                Err(error)
            }
        }
    }

    async fn cleanup_steps(&mut self, disable: bool) -> Result<(), Error> {
        let state = KeyState::parse(&self.status, self.kind)?;
        let _serialized = self.provider.serialize_creates().await;
        self.write(true).await?;
        let mut doomed: Vec<String> = state
            .owned_key_ids()
            .into_iter()
            .map(str::to_owned)
            .chain(self.status.previous_key.as_ref().map(|p| p.key_id.clone()))
            .collect();
        if let KeyState::Creating { intent, .. } = &state {
            let candidates = self.attempt_candidates(intent).await?;
            if self.kind == ProviderKind::Datonis && candidates.len() > 1 {
                // Indistinguishable keys: deleting any could take another resource's.
                return Err(Error::CreateAmbiguous(format!(
                    "{} key pairs match the interrupted create attempt {}; delete the right one at the provider, then set the {} annotation",
                    candidates.len(),
                    intent.attempt,
                    super::FORCE_ORPHAN_ANNOTATION
                )));
            }
            doomed.extend(candidates.into_iter().map(|k| k.key_id));
        }
        if self.kind == ProviderKind::Threatwinds {
            let listed = self.provider.list().await?;
            let uid = self.akp.uid().unwrap_or_default();
            let strays = plan::stray_attempt_keys(&uid, &listed, &[]);
            doomed.extend(strays.into_iter().map(|k| k.key_id.clone()));
            doomed.sort();
            doomed.dedup();
        }
        let disable = disable && self.kind == ProviderKind::Datonis;
        for key_id in &doomed {
            if disable {
                self.disable_remote(key_id).await?;
            } else {
                self.delete_remote(key_id).await?;
            }
        }
        failpoint!("remote-deleted");
        if !doomed.is_empty() {
            let done = if disable { "disabled" } else { "deleted" };
            let note = format!(
                "{done} key pair(s) {} at {}",
                doomed.join(", "),
                self.provider.description()
            );
            self.event(EventType::Normal, "Deleted", "DeleteKeyPair", note)
                .await;
        }
        Ok(())
    }
}

impl Run<'_> {
    /// Disables a remote key (`deletionPolicy: Disable`); one that is gone counts as done.
    async fn disable_remote(&self, key_id: &str) -> Result<(), Error> {
        let update = UpdateKeyPair {
            enabled: Some(false),
            ..Default::default()
        };
        match self.provider.update(key_id, &update).await {
            Ok(_) | Err(ProviderError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
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
/// reason is new, in a Warning event. `dirty`: the status has other unwritten changes.
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
    let was = conditions::find(&status.conditions, READY).map(|c| c.reason.clone());
    let desired = conditions::Desired {
        type_: READY,
        status: status::FALSE,
        reason: error.reason(),
        message: error.to_string(),
    };
    let changed = conditions::set(&mut status.conditions, desired, akp.metadata.generation);
    let generation_moved = status.observed_generation != akp.metadata.generation;
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

/// Parses an RFC 3339 time from the status.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
