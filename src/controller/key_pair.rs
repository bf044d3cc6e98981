//! The `ApiKeyPair` lifecycle: create (crash-safe), Secret, verification, observe,
//! update or replace, delete. Decisions come from [`super::plan`]; this module does the
//! I/O in the order that keeps every step safe to repeat.
//!
//! # Crash-safe create
//!
//! A provider shows a new API secret once, so a crash or a lost response between the
//! remote create and the Secret write must not orphan a key, lose a secret, or duplicate
//! one. The protocol:
//!
//! 1. **Intent.** Before the remote call, `status.createAttempts` is incremented and
//!    `status.pendingCreate` records the attempt (number, deterministic remote name,
//!    start time, purpose). The write is a server-side apply carrying the object's
//!    `resourceVersion`, so a reconcile working from a stale cached object is refused
//!    (409) and never reaches step 2: it cannot create twice.
//! 2. **Create** the remote key. A definite refusal (4xx) clears the intent. A failure
//!    that may have committed (5xx, broken connection) leaves it for recovery.
//! 3. **Secret** first: the credentials are applied to the Secret...
//! 4. **...then status**: the key's id and facts are recorded and the intent cleared.
//!
//! On every reconcile that finds an intent, recovery runs before anything else: it lists
//! the provider's keys and finds the attempt's own — by its deterministic name
//! (ThreatWinds), or by fingerprint (Datonis: `created_at` within the attempt's window,
//! role, expiry date, and referenced by no other `ApiKeyPair`). A key whose API key the
//! Secret (read from the API server, not a cache) already holds is adopted. Otherwise a
//! ThreatWinds key's secret is lost for good, so the key is deleted and a new attempt
//! starts; a Datonis key is adopted with the secret Datonis still returns. Several
//! indistinguishable Datonis candidates are the one truly ambiguous case: the resource
//! reports `CreateAmbiguous` with an event and waits for a human; it never creates a
//! silent duplicate.
//!
//! ThreatWinds replacements (new `keyName` or `validityDays`) use the same path but write
//! the new credentials to the Secret's pending slot; the current key keeps serving until
//! the new one is verified. The swap is one Secret apply (pending becomes current), then
//! the old key is deleted, then the status records the new key; a crash anywhere in
//! between is finished by the next reconcile ([`Step::FinishPromotion`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tracing::{debug, info};

use super::plan::{self, Purpose, Recovery, SecretRepair, Step};
use super::providers::ProviderHandle;
use super::secret::{self, Credentials, SecretContents, SecretView};
use super::{
    Context, Error, FINALIZER, FORCE_ORPHAN_ANNOTATION, MANAGER, REQUEST_NEW_CODE_ANNOTATION,
};
use crate::conditions::{self, READY, VERIFIED, reason, status};
use crate::crd::{ApiKeyPair, ApiKeyPairStatus, DeletionPolicy, PendingCreate, PendingKey};
use crate::provider::{
    CreateKeyPair, KeyLookup, KeyPairApi, ProviderError, ProviderKind, RemoteKeyPair,
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

/// kube-runtime's reconcile entry point for `ApiKeyPair`.
pub async fn reconcile(akp: Arc<ApiKeyPair>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = akp.namespace().unwrap_or_default();
    let api: Api<ApiKeyPair> = Api::namespaced(ctx.client.clone(), &namespace);
    let deleting = akp.meta().deletion_timestamp.is_some();
    let started = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, akp.clone(), |event| async {
        match event {
            Finalizer::Apply(akp) => Run::new(akp, ctx.clone()).apply().await,
            Finalizer::Cleanup(akp) => Run::new(akp, ctx.clone()).cleanup().await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled("apikeypair", result.is_ok(), started.elapsed());
    if result.is_ok() {
        if deleting {
            failpoint!("finalizer-removed");
        }
        ctx.reset_failures(&ObjectRef::from_obj(akp.as_ref()));
    }
    result
}

/// One reconcile of one `ApiKeyPair`: the object, a working copy of its status, and the
/// shared context.
struct Run {
    akp: Arc<ApiKeyPair>,
    ctx: Arc<Context>,
    api: Api<ApiKeyPair>,
    status: ApiKeyPairStatus,
    written: ApiKeyPairStatus,
    /// resourceVersion the next precondition write must match.
    resource_version: Option<String>,
}

impl Run {
    fn new(akp: Arc<ApiKeyPair>, ctx: Arc<Context>) -> Self {
        let api = Api::namespaced(ctx.client.clone(), &akp.namespace().unwrap_or_default());
        let status = akp.status.clone().unwrap_or_default();
        Self {
            resource_version: akp.resource_version(),
            written: status.clone(),
            status,
            akp,
            ctx,
            api,
        }
    }

    fn generation(&self) -> Option<i64> {
        self.akp.meta().generation
    }

    fn set(
        &mut self,
        type_: &'static str,
        status: &'static str,
        reason: &'static str,
        message: String,
    ) {
        let generation = self.generation();
        conditions::set(
            &mut self.status.conditions,
            conditions::Desired {
                type_,
                status,
                reason,
                message,
            },
            generation,
        );
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        self.ctx.event(&self.akp, type_, reason, action, note).await;
    }

    // ---- status and Secret writes -------------------------------------------------

    /// Writes the status by server-side apply when it changed. With `precondition`, the
    /// write only succeeds if the object is still at the version this reconcile read.
    async fn write_status(&mut self, precondition: bool) -> Result<(), Error> {
        if self.status == self.written && !precondition {
            return Ok(());
        }
        let mut patch = json!({
            "apiVersion": ApiKeyPair::api_version(&()),
            "kind": ApiKeyPair::kind(&()),
            "status": self.status,
        });
        if precondition {
            patch["metadata"] = json!({ "resourceVersion": self.resource_version });
        }
        let params = PatchParams::apply(MANAGER).force();
        match self
            .api
            .patch_status(&self.akp.name_any(), &params, &Patch::Apply(&patch))
            .await
        {
            Ok(updated) => {
                self.resource_version = updated.resource_version();
                self.written = self.status.clone();
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Stale),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies the Secret when it differs from what it should be.
    async fn apply_secret(&self, contents: &SecretContents) -> Result<(), Error> {
        let desired = secret::desired_secret(&self.akp, contents);
        let name = secret::secret_name(&self.akp);
        if let Some(existing) = self.cached_secret()
            && secret::is_up_to_date(&existing, &desired)
        {
            return Ok(());
        }
        let api: Api<Secret> = Api::namespaced(
            self.ctx.client.clone(),
            &self.akp.namespace().unwrap_or_default(),
        );
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await?;
        Ok(())
    }

    fn cached_secret(&self) -> Option<Secret> {
        // Never wait for the cache here: it is fed by the controller's own trigger stream,
        // which is not polled while every reconcile slot is busy. Until it has synced,
        // everything is read from the API server instead.
        futures::FutureExt::now_or_never(self.ctx.secrets.wait_until_ready())?.ok()?;
        let name = secret::secret_name(&self.akp);
        let reference = ObjectRef::new(&name).within(&self.akp.namespace().unwrap_or_default());
        self.ctx.secrets.get(&reference).map(|s| s.as_ref().clone())
    }

    /// The Secret as the watch cache has it (cheap; may lag behind our own writes).
    fn secret_view_cached(&self) -> SecretView {
        secret::view_secret(&self.akp, self.cached_secret().as_ref())
    }

    /// The Secret as the API server has it: required before destructive decisions.
    async fn secret_view_confirmed(&self) -> Result<SecretView, Error> {
        let api: Api<Secret> = Api::namespaced(
            self.ctx.client.clone(),
            &self.akp.namespace().unwrap_or_default(),
        );
        let secret = api.get_opt(&secret::secret_name(&self.akp)).await?;
        Ok(secret::view_secret(&self.akp, secret.as_ref()))
    }

    // ---- apply ---------------------------------------------------------------------

    async fn apply(mut self) -> Result<Action, Error> {
        let result = self.apply_steps().await;
        match result {
            Ok(action) => {
                self.status.observed_generation = self.generation();
                self.record_gauges();
                self.write_status(false).await?;
                Ok(action)
            }
            Err(error) => {
                self.record_gauges();
                self.report(error, "Reconcile").await
            }
        }
    }

    /// Puts a failure in the status (`Ready=False` with its reason and message) and, when
    /// the reason is new, in a Warning event; then returns it for the error policy.
    async fn report(mut self, error: Error, action: &str) -> Result<Action, Error> {
        if matches!(error, Error::Stale) {
            // Nothing to tell: the next reconcile works from the new version.
            return Err(error);
        }
        let was = conditions::find(&self.status.conditions, READY).map(|c| c.reason.clone());
        self.set(READY, status::FALSE, error.reason(), error.to_string());
        self.status.observed_generation = self.generation();
        self.write_status(false).await?;
        if was.as_deref() != Some(error.reason()) {
            self.event(
                EventType::Warning,
                error.reason(),
                action,
                error.to_string(),
            )
            .await;
        }
        Err(error)
    }

    async fn apply_steps(&mut self) -> Result<Action, Error> {
        let provider = self.ctx.providers.for_key_pair(&self.akp).await?;
        let kind = provider.kind();
        if kind == ProviderKind::Datonis && self.akp.spec.datonis.is_none() {
            return Err(Error::InvalidSpec(format!(
                "{} is a Datonis provider: spec.datonis.roleKey is required",
                provider.description
            )));
        }
        let mut view = self.secret_view_cached();
        if view == SecretView::Missing {
            // The cache only holds Secrets with our label (and may not have synced yet):
            // a foreign Secret of that name is invisible to it, so confirm first.
            view = self.secret_view_confirmed().await?;
        }
        match plan::next_step(&self.status, &view) {
            Step::SecretConflict => Err(Error::SecretConflict(format!(
                "Secret {} exists and is not owned by this ApiKeyPair; choose another spec.secretName or delete that Secret",
                secret::secret_name(&self.akp)
            ))),
            Step::RecoverCreate(attempt) => {
                self.recover(&provider, attempt).await?;
                Ok(Action::requeue(Duration::from_millis(500)))
            }
            Step::Create(purpose) => {
                self.create(&provider, purpose).await?;
                Ok(self.after_change())
            }
            Step::FinishPromotion => {
                self.finish_promotion(&provider).await?;
                Ok(self.after_change())
            }
            Step::Steady => self.steady(&provider, view).await,
        }
    }

    /// After a structural change, look again soon (verification, observation).
    fn after_change(&self) -> Action {
        Action::requeue(Duration::from_millis(500))
    }

    /// Exports this key pair's expiry and readiness as gauges.
    fn record_gauges(&self) {
        let expires_at = self
            .status
            .expire_at
            .as_deref()
            .and_then(parse_time)
            .map(|t| t.timestamp());
        let ready = conditions::is_true(&self.status.conditions, READY);
        self.ctx.metrics.key_pair(
            &self.akp.namespace().unwrap_or_default(),
            &self.akp.name_any(),
            expires_at,
            ready,
        );
    }

    // ---- create and recovery ---------------------------------------------------------

    async fn create(&mut self, provider: &ProviderHandle, purpose: Purpose) -> Result<(), Error> {
        let _serialized = provider.serialize_creates().await;
        let kind = provider.kind();
        let staged = purpose.stages_as_pending(kind);
        // A staged replacement needs the current credentials to keep serving.
        let serving = if staged {
            match self.secret_view_confirmed().await?.current() {
                Some(c) => Some(c.clone()),
                None => return Err(Error::Stale),
            }
        } else {
            None
        };
        let attempt = self.status.create_attempts.unwrap_or(0).saturating_add(1);
        let base = plan::base_key_name(&self.akp);
        let uid = self.akp.uid().unwrap_or_default();
        let remote_name =
            (kind == ProviderKind::Threatwinds).then(|| plan::remote_name(&base, &uid, attempt));
        self.status.create_attempts = Some(attempt);
        self.status.pending_create = Some(PendingCreate {
            attempt,
            remote_name: remote_name.clone(),
            started_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            purpose: purpose.as_str().to_owned(),
        });
        if !staged {
            self.set(
                READY,
                status::FALSE,
                reason::PROGRESSING,
                format!("creating the key pair (attempt {attempt})"),
            );
        }
        self.write_status(true).await?;
        failpoint!("intent-written");

        let request = CreateKeyPair {
            name: remote_name.unwrap_or(base),
            validity_days: self.akp.spec.validity_days,
            role_key: self.akp.spec.datonis.as_ref().map(|d| d.role_key.clone()),
        };
        let created = match provider.create(&request).await {
            Ok(created) => created,
            Err(e) if e.may_have_committed() => return Err(e.into()),
            Err(e) => {
                self.status.pending_create = None;
                return Err(e.into());
            }
        };
        failpoint!("remote-created");

        let new = Credentials {
            api_key: created.key.api_key.clone(),
            api_secret: created.api_secret.clone(),
        };
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
            self.record_pending_key(&created.key, code_id);
        } else {
            self.record_key(&created.key, code_id);
        }
        self.status.pending_create = None;
        self.write_status(false).await?;
        failpoint!("status-written");
        self.event(
            EventType::Normal,
            "Created",
            "CreateKeyPair",
            format!(
                "created key pair {} ({}) at {} ({})",
                created.key.name.as_deref().unwrap_or(&created.key.api_key),
                created.key.key_id,
                provider.description,
                purpose.as_str()
            ),
        )
        .await;
        Ok(())
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
        s.secret_name = Some(secret::secret_name(&self.akp));
        if verification_code_id.is_some() || key.verified == Some(true) {
            s.verification_code_id = verification_code_id;
        }
    }

    fn record_pending_key(&mut self, key: &RemoteKeyPair, verification_code_id: Option<String>) {
        self.status.pending_key = Some(PendingKey {
            key_id: key.key_id.clone(),
            api_key: Some(key.api_key.clone()),
            key_name: key.name.clone(),
            expire_at: key.expire_at.map(rfc3339),
            verification_code_id,
            waiting_for: "verification code".to_owned(),
        });
    }

    /// Keys referenced by any `ApiKeyPair` other than this one: this namespace read fresh
    /// from the API server (statuses this process just wrote may not be cached yet),
    /// other namespaces from the cache.
    async fn referenced_elsewhere(&self) -> Result<impl Fn(&str) -> bool + use<>, Error> {
        let uid = self.akp.uid();
        let namespace = self.akp.namespace();
        let fresh = self.api.list(&Default::default()).await?.items;
        let cached = self.ctx.key_pairs.state();
        let others = fresh
            .iter()
            .chain(
                cached
                    .iter()
                    .map(|a| a.as_ref())
                    .filter(|a| a.namespace() != namespace),
            )
            .filter(|other| other.uid() != uid);
        let referenced: std::collections::HashSet<String> = others
            .filter_map(|other| other.status.as_ref())
            .flat_map(|s| {
                [
                    s.key_id.clone(),
                    s.pending_key.as_ref().map(|p| p.key_id.clone()),
                ]
            })
            .flatten()
            .collect();
        Ok(move |key_id: &str| referenced.contains(key_id))
    }

    async fn attempt_candidates(
        &self,
        provider: &ProviderHandle,
        attempt: &PendingCreate,
    ) -> Result<Vec<RemoteKeyPair>, Error> {
        let remote = provider.list().await?;
        let referenced = self.referenced_elsewhere().await?;
        let expiry = DateTime::parse_from_rfc3339(&attempt.started_at)
            .ok()
            .map(|t| {
                plan::datonis_expiry(
                    t.with_timezone(&Utc).date_naive(),
                    self.akp.spec.validity_days,
                )
            });
        let role = self.akp.spec.datonis.as_ref().map(|d| d.role_key.as_str());
        let found =
            plan::attempt_candidates(provider.kind(), attempt, role, expiry, &remote, &referenced);
        Ok(found.into_iter().cloned().collect())
    }

    async fn recover(
        &mut self,
        provider: &ProviderHandle,
        attempt: PendingCreate,
    ) -> Result<(), Error> {
        let _serialized = provider.serialize_creates().await;
        let kind = provider.kind();
        let purpose = Purpose::parse(&attempt.purpose);
        let staged = purpose.stages_as_pending(kind);
        let candidates = self.attempt_candidates(provider, &attempt).await?;
        let view = self.secret_view_confirmed().await?;
        let slot = if staged {
            view.pending()
        } else {
            view.current()
        };
        let refs: Vec<&RemoteKeyPair> = candidates.iter().collect();
        let decision = plan::recover(kind, &refs, slot.map(|c| c.api_key.as_str()));
        info!(
            attempt = attempt.attempt,
            ?decision,
            "recovering an interrupted create"
        );
        match decision {
            Recovery::Adopt(key) => {
                // The attempt got as far as the Secret; delete any extra key it made.
                for extra in candidates
                    .iter()
                    .filter(|k| k.key_id != key.key_id && kind == ProviderKind::Threatwinds)
                {
                    delete_remote(provider, &extra.key_id).await?;
                }
                self.adopt(&key, staged);
            }
            Recovery::AdoptWithProviderSecret(key) => {
                let Some(api_secret) = key.api_secret.clone() else {
                    return Err(Error::CreateAmbiguous(format!(
                        "key pair {} of an interrupted create has no readable secret; delete it at the provider or set the {FORCE_ORPHAN_ANNOTATION} annotation",
                        key.key_id
                    )));
                };
                let contents = SecretContents {
                    current: Credentials {
                        api_key: key.api_key.clone(),
                        api_secret,
                    },
                    pending: None,
                };
                self.apply_secret(&contents).await?;
                self.adopt(&key, false);
            }
            Recovery::DeleteAndRetry(ids) => {
                for id in &ids {
                    delete_remote(provider, id).await?;
                }
                failpoint!("remote-deleted");
                self.event(
                    EventType::Warning,
                    "CreateInterrupted",
                    "RecoverCreate",
                    format!("deleted {} key pair(s) of interrupted attempt {} whose secret never reached the Secret; creating anew", ids.len(), attempt.attempt),
                )
                .await;
                self.status.pending_create = None;
            }
            Recovery::Retry => self.status.pending_create = None,
        }
        self.write_status(true).await
    }

    fn adopt(&mut self, key: &RemoteKeyPair, staged: bool) {
        if staged {
            self.record_pending_key(key, None);
        } else {
            self.record_key(key, None);
        }
        self.status.pending_create = None;
    }

    /// The Secret already serves the pending key: delete the old key, record the new.
    async fn finish_promotion(&mut self, provider: &ProviderHandle) -> Result<(), Error> {
        let Some(pending) = self.status.pending_key.clone() else {
            return Ok(());
        };
        if let Some(old) = self.status.key_id.clone() {
            delete_remote(provider, &old).await?;
            failpoint!("remote-deleted");
        }
        self.status.key_id = Some(pending.key_id.clone());
        self.status.api_key = pending.api_key.clone();
        self.status.key_name = pending.key_name.clone();
        self.status.expire_at = pending.expire_at.clone();
        self.status.verified = Some(true);
        self.status.verification_code_id = pending.verification_code_id.clone();
        self.status.validity_days = Some(self.akp.spec.validity_days);
        self.status.pending_key = None;
        // The conditions describe the new key in the same write.
        self.set_steady_conditions(provider.kind());
        self.write_status(false).await?;
        self.event(
            EventType::Normal,
            "Replaced",
            "ReplaceKeyPair",
            format!(
                "key pair {} now serves; the previous key pair was deleted",
                pending.key_id
            ),
        )
        .await;
        Ok(())
    }

    // ---- steady state ------------------------------------------------------------------

    async fn steady(
        &mut self,
        provider: &ProviderHandle,
        view: SecretView,
    ) -> Result<Action, Error> {
        let kind = provider.kind();
        let Some(status_api_key) = self.status.api_key.clone() else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let key_id = self.status.key_id.clone().unwrap_or_default();
        let uid = self.akp.uid().unwrap_or_default();

        // 1. The Secret.
        let mut view = view;
        if plan::secret_repair(kind, &status_api_key, &view) != SecretRepair::Intact {
            // The cache may lag behind our own writes: decide on the API server's copy.
            view = self.secret_view_confirmed().await?;
        }
        let credentials = match plan::secret_repair(kind, &status_api_key, &view) {
            SecretRepair::Intact => view.current().cloned(),
            SecretRepair::RestoreFromProvider => {
                let remote = provider.get(&lookup(&key_id, &status_api_key, None)).await;
                match remote {
                    Ok(remote) => match remote.api_secret.clone() {
                        Some(api_secret) => {
                            let creds = Credentials {
                                api_key: remote.api_key.clone(),
                                api_secret,
                            };
                            self.apply_secret(&SecretContents {
                                current: creds.clone(),
                                pending: None,
                            })
                            .await?;
                            self.event(
                                EventType::Normal,
                                "SecretRestored",
                                "RestoreSecret",
                                "restored the Secret from the provider".to_owned(),
                            )
                            .await;
                            Some(creds)
                        }
                        None => {
                            return self
                                .replace_lost(provider, "the provider no longer returns the secret")
                                .await;
                        }
                    },
                    Err(ProviderError::NotFound { .. }) => {
                        return self.replace_missing(provider).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            SecretRepair::RestoreApiKey => {
                let Some(current) = view.current().cloned() else {
                    return self
                        .replace_lost(provider, "the Secret lost its API secret")
                        .await;
                };
                let creds = Credentials {
                    api_key: status_api_key.clone(),
                    api_secret: current.api_secret,
                };
                self.apply_secret(&SecretContents {
                    current: creds.clone(),
                    pending: view.pending().cloned(),
                })
                .await?;
                self.ctx.forget_check(&uid);
                Some(creds)
            }
            SecretRepair::Lost => {
                return self.replace_lost(provider, "the Secret holding the API secret was deleted or emptied, and ThreatWinds shows a secret only once").await;
            }
        };

        // 2. Observe at the provider (every check interval, on start, and after changes).
        let generation_changed = self.status.observed_generation != self.generation();
        let unverified = kind == ProviderKind::Threatwinds && self.status.verified != Some(true);
        if generation_changed || unverified || self.ctx.check_due(&uid) {
            let secret_value = credentials.as_ref().map(|c| c.api_secret.clone());
            let with_secret = secret_value.is_some();
            let remote = match provider
                .get(&lookup(&key_id, &status_api_key, secret_value))
                .await
            {
                Ok(remote) => Some(remote),
                Err(ProviderError::NotFound { .. }) if self.is_expired() => None,
                Err(ProviderError::NotFound { .. }) => return self.replace_missing(provider).await,
                // Only a check made with the secret can tell that the secret is wrong; without
                // one, 401 is about the session, which the provider's status reports.
                Err(ProviderError::Unauthorized { .. })
                    if kind == ProviderKind::Threatwinds && with_secret =>
                {
                    return self
                        .replace_lost(
                            provider,
                            "the API secret in the Secret no longer matches the key pair",
                        )
                        .await;
                }
                Err(e) => {
                    self.ctx.forget_check(&uid);
                    return Err(e.into());
                }
            };
            if let Some(remote) = remote {
                self.observe(&remote);
                // 3. Update (Datonis) when the spec moved.
                if let Some(update) = plan::datonis_update(&self.akp, &remote, &self.status) {
                    let updated = provider.update(&key_id, &update).await?;
                    self.observe(&updated);
                    self.status.validity_days = Some(self.akp.spec.validity_days);
                    self.event(
                        EventType::Normal,
                        "Updated",
                        "UpdateKeyPair",
                        format!("updated key pair {key_id} to match the spec"),
                    )
                    .await;
                }
            }
        }
        // 3'. Replace (ThreatWinds has no update call) when the spec moved.
        if kind == ProviderKind::Threatwinds
            && self.status.pending_key.is_none()
            && plan::needs_replacement(&self.akp, &self.status)
        {
            self.create(provider, Purpose::Replace).await?;
            return Ok(self.after_change());
        }

        // 4. Verification (ThreatWinds): the pending replacement if any, else the key.
        let mut awaiting = false;
        if kind == ProviderKind::Threatwinds {
            awaiting = self
                .verification(provider, credentials.as_ref(), view.pending())
                .await?;
        }

        // 5. Conditions.
        self.set_steady_conditions(kind);
        let next = if awaiting {
            self.ctx.settings.verification_poll_interval
        } else {
            let expire_at = self.status.expire_at.as_deref().and_then(parse_time);
            plan::next_check(
                self.ctx.settings.check_interval,
                rand::random(),
                Utc::now(),
                expire_at,
            )
        };
        debug!(?next, "steady");
        Ok(Action::requeue(next))
    }

    fn observe(&mut self, remote: &RemoteKeyPair) {
        let s = &mut self.status;
        if remote.expire_at.is_some() {
            s.expire_at = remote.expire_at.map(rfc3339);
        }
        if remote.verified.is_some() {
            s.verified = remote.verified;
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

    fn is_expired(&self) -> bool {
        self.status
            .expire_at
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|t| t <= Utc::now())
    }

    async fn replace_missing(&mut self, provider: &ProviderHandle) -> Result<Action, Error> {
        let key = self.status.key_id.clone().unwrap_or_default();
        self.set(
            READY,
            status::FALSE,
            reason::REMOTE_KEY_MISSING,
            format!("key pair {key} was deleted at the provider; creating a new one"),
        );
        self.event(
            EventType::Warning,
            reason::REMOTE_KEY_MISSING,
            "ObserveKeyPair",
            format!(
                "key pair {key} is gone at {}; creating a new one",
                provider.description
            ),
        )
        .await;
        self.create(provider, Purpose::RemoteKeyMissing).await?;
        Ok(self.after_change())
    }

    async fn replace_lost(
        &mut self,
        provider: &ProviderHandle,
        why: &str,
    ) -> Result<Action, Error> {
        let key = self.status.key_id.clone().unwrap_or_default();
        self.set(
            READY,
            status::FALSE,
            reason::SECRET_LOST,
            format!("{why}; replacing key pair {key}"),
        );
        self.event(
            EventType::Warning,
            reason::SECRET_LOST,
            "ReplaceKeyPair",
            format!("{why}; replacing key pair {key}"),
        )
        .await;
        // The old key can never be used again: delete it so it does not linger.
        delete_remote(provider, &key).await?;
        failpoint!("remote-deleted");
        self.create(provider, Purpose::SecretLost).await?;
        Ok(self.after_change())
    }

    /// Handles new-code requests and code submission. Returns whether a key still waits
    /// for its code.
    async fn verification(
        &mut self,
        provider: &ProviderHandle,
        current: Option<&Credentials>,
        pending_creds: Option<&Credentials>,
    ) -> Result<bool, Error> {
        let pending = self.status.pending_key.clone();
        let (creds, code_id) = match (&pending, pending_creds) {
            (Some(p), Some(c)) => (c.clone(), p.verification_code_id.clone()),
            _ if self.status.verified == Some(true) => return Ok(false),
            _ => match current {
                Some(c) => (c.clone(), self.status.verification_code_id.clone()),
                None => return Ok(false),
            },
        };

        // A new code on request (any new annotation value).
        let request = self
            .akp
            .annotations()
            .get(REQUEST_NEW_CODE_ANNOTATION)
            .cloned();
        let mut code_id = code_id;
        if request.is_some() && request != self.status.new_code_request {
            let new_id = provider
                .request_new_code(&creds.api_key, &creds.api_secret)
                .await?;
            self.status.new_code_request = request;
            self.set_code_id(pending.is_some(), new_id.clone());
            code_id = Some(new_id);
            self.event(
                EventType::Normal,
                "NewCodeRequested",
                "RequestNewCode",
                "asked the provider to email a new verification code".to_owned(),
            )
            .await;
        }
        let Some(code_id) = code_id else {
            return Ok(true);
        };

        // Submit each distinct code once.
        let Some(reference) = self
            .akp
            .spec
            .verification
            .clone()
            .map(|v| v.code_secret_ref)
        else {
            self.set(VERIFIED, status::FALSE, reason::AWAITING_VERIFICATION_CODE, "waiting for the emailed verification code; put it in a Secret and name it in spec.verification.codeSecretRef".to_owned());
            return Ok(true);
        };
        let secrets: Api<Secret> = Api::namespaced(
            self.ctx.client.clone(),
            &self.akp.namespace().unwrap_or_default(),
        );
        let code = secrets
            .get_opt(&reference.name)
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get(&reference.key).cloned())
            .and_then(|v| String::from_utf8(v.0).ok())
            .map(|s| SecretString::from(s.trim().to_owned()))
            .filter(|s| !s.expose_secret().is_empty());
        let Some(code) = code else {
            self.set(
                VERIFIED,
                status::FALSE,
                reason::VERIFICATION_CODE_MISSING,
                format!(
                    "Secret {} has no key {}; waiting for the emailed verification code",
                    reference.name, reference.key
                ),
            );
            return Ok(true);
        };
        let fingerprint = plan::code_fingerprint(&code_id, code.expose_secret());
        if self.status.submitted_code_hash.as_deref() == Some(fingerprint.as_str()) {
            // Already submitted and rejected: wait for a different code.
            return Ok(true);
        }
        self.status.submitted_code_hash = Some(fingerprint);
        match provider.verify(&code_id, &code).await {
            Ok(()) => {
                self.event(
                    EventType::Normal,
                    reason::VERIFIED,
                    "VerifyKeyPair",
                    "the key pair was verified with the emailed code".to_owned(),
                )
                .await;
                if pending.is_some() {
                    // Swap: pending becomes current in one Secret apply; the next reconcile
                    // (FinishPromotion) deletes the old key and records the new one.
                    let new = pending_creds.cloned().unwrap_or(creds);
                    self.apply_secret(&SecretContents {
                        current: new,
                        pending: None,
                    })
                    .await?;
                    failpoint!("secret-written");
                    if let Some(p) = self.status.pending_key.as_mut() {
                        p.waiting_for = "promotion".to_owned();
                    }
                } else {
                    self.status.verified = Some(true);
                }
                Ok(false)
            }
            Err(
                e @ (ProviderError::CodeRejected { .. }
                | ProviderError::Unauthorized { .. }
                | ProviderError::NotFound { .. }
                | ProviderError::BadRequest { .. }),
            ) => {
                let message = format!("the provider rejected the verification code: {e}");
                self.set(
                    VERIFIED,
                    status::FALSE,
                    reason::VERIFICATION_CODE_REJECTED,
                    message.clone(),
                );
                self.event(
                    EventType::Warning,
                    reason::VERIFICATION_CODE_REJECTED,
                    "VerifyKeyPair",
                    message,
                )
                .await;
                Ok(true)
            }
            Err(e) => {
                // Not rejected, just not delivered: submit it again next time.
                self.status.submitted_code_hash = None;
                Err(e.into())
            }
        }
    }

    fn set_code_id(&mut self, pending: bool, code_id: String) {
        if pending {
            if let Some(p) = self.status.pending_key.as_mut() {
                p.verification_code_id = Some(code_id);
            }
        } else {
            self.status.verification_code_id = Some(code_id);
        }
    }

    fn set_steady_conditions(&mut self, kind: ProviderKind) {
        let key = self.status.key_id.clone().unwrap_or_default();
        if kind == ProviderKind::Threatwinds {
            if self.status.verified == Some(true) {
                self.set(
                    VERIFIED,
                    status::TRUE,
                    reason::VERIFIED,
                    format!("key pair {key} is verified"),
                );
            } else if conditions::find(&self.status.conditions, VERIFIED)
                .is_none_or(|c| c.status == status::TRUE)
            {
                self.set(
                    VERIFIED,
                    status::FALSE,
                    reason::AWAITING_VERIFICATION_CODE,
                    "waiting for the emailed verification code".to_owned(),
                );
            }
        }
        let (state, why, message) = if self.is_expired() {
            (
                status::FALSE,
                reason::EXPIRED,
                format!(
                    "key pair {key} expired at {}",
                    self.status.expire_at.clone().unwrap_or_default()
                ),
            )
        } else if kind == ProviderKind::Threatwinds && self.status.verified != Some(true) {
            let why = conditions::find(&self.status.conditions, VERIFIED).map_or(
                reason::AWAITING_VERIFICATION_CODE,
                |c| match c.reason.as_str() {
                    reason::VERIFICATION_CODE_REJECTED => reason::VERIFICATION_CODE_REJECTED,
                    reason::VERIFICATION_CODE_MISSING => reason::VERIFICATION_CODE_MISSING,
                    _ => reason::AWAITING_VERIFICATION_CODE,
                },
            );
            (
                status::FALSE,
                why,
                format!("key pair {key} is not verified yet"),
            )
        } else if let Some(p) = &self.status.pending_key {
            (
                status::TRUE,
                reason::REPLACEMENT_PENDING,
                format!(
                    "key pair {key} serves; replacement {} waits for its {}",
                    p.key_id, p.waiting_for
                ),
            )
        } else if self.status.enabled == Some(false) {
            (
                status::TRUE,
                reason::DISABLED,
                format!("key pair {key} is disabled as the spec asks"),
            )
        } else {
            (
                status::TRUE,
                reason::READY,
                format!(
                    "key pair {key} is in the Secret {}",
                    secret::secret_name(&self.akp)
                ),
            )
        };
        self.set(READY, state, why, message);
    }

    // ---- delete ------------------------------------------------------------------------

    async fn cleanup(self) -> Result<Action, Error> {
        match self.cleanup_steps().await {
            Ok(action) => Ok(action),
            // A resource stuck in deletion says why (and that force-orphan releases it).
            Err(error) => self.report(error, "DeleteKeyPair").await,
        }
    }

    async fn cleanup_steps(&self) -> Result<Action, Error> {
        let akp = &self.akp;
        self.ctx
            .metrics
            .forget_key_pair(&akp.namespace().unwrap_or_default(), &akp.name_any());
        let force = akp
            .annotations()
            .get(FORCE_ORPHAN_ANNOTATION)
            .map(String::as_str)
            == Some("true");
        if force || akp.spec.deletion_policy == DeletionPolicy::Orphan {
            let why = if force {
                FORCE_ORPHAN_ANNOTATION
            } else {
                "deletionPolicy Orphan"
            };
            self.event(
                EventType::Normal,
                "Orphaned",
                "DeleteKeyPair",
                format!("left the remote key pair in place ({why})"),
            )
            .await;
            return Ok(Action::await_change());
        }
        let provider = self.ctx.providers.for_key_pair(akp).await?;
        let mut doomed: Vec<String> = [
            self.status.key_id.clone(),
            self.status.pending_key.as_ref().map(|p| p.key_id.clone()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(attempt) = self.status.pending_create.clone() {
            let candidates = self.attempt_candidates(&provider, &attempt).await?;
            if provider.kind() == ProviderKind::Threatwinds || candidates.len() == 1 {
                doomed.extend(candidates.into_iter().map(|k| k.key_id));
            }
        }
        for key_id in &doomed {
            delete_remote(&provider, key_id).await?;
        }
        failpoint!("remote-deleted");
        if !doomed.is_empty() {
            self.event(
                EventType::Normal,
                "Deleted",
                "DeleteKeyPair",
                format!(
                    "deleted key pair(s) {} at {}",
                    doomed.join(", "),
                    provider.description
                ),
            )
            .await;
        }
        Ok(Action::await_change())
    }
}

/// Deletes a remote key; one that is already gone counts as deleted.
async fn delete_remote(provider: &ProviderHandle, key_id: &str) -> Result<(), Error> {
    if key_id.is_empty() {
        return Ok(());
    }
    match provider.delete(key_id).await {
        Ok(()) | Err(ProviderError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn lookup(key_id: &str, api_key: &str, api_secret: Option<SecretString>) -> KeyLookup {
    KeyLookup {
        key_id: key_id.to_owned(),
        api_key: api_key.to_owned(),
        api_secret,
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
