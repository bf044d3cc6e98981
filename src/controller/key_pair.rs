//! kube-runtime's entry point for `ApiKeyPair`: the finalizer, the provider the resource
//! uses, and [`KubeCluster`], the [`Cluster`] port over the API server (status by
//! server-side apply with a `resourceVersion` fence, Secrets from the watch cache or read
//! fresh, events). The lifecycle itself is in [`super::lifecycle`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use secrecy::SecretString;
use serde_json::json;

use super::lifecycle::{self, Cluster, Outcome, Run, Timing, failpoint};
use super::plan::{self, Deletion};
use super::state::owned_key_ids;
use super::{
    CachedKeyPair, Context, Error, FINALIZER, MANAGER, RESTARTED_AT_ANNOTATION, Scope, secret,
};
use crate::crd::{ApiKeyPair, ApiKeyPairStatus, RolloutRestartTarget, SecretKeyRef, WorkloadKind};
use crate::telemetry::{KeyPairFigures, KeyPairLabels};

/// kube-runtime's reconcile entry point for `ApiKeyPair`.
pub async fn reconcile(cached: Arc<CachedKeyPair>, ctx: Arc<Context>) -> Result<Action, Error> {
    let akp = Arc::new(cached.decode().map_err(Error::Cache)?);
    let namespace = akp.namespace().unwrap_or_default();
    let api: Api<ApiKeyPair> = Api::namespaced(ctx.client.clone(), &namespace);
    let deleting = akp.meta().deletion_timestamp.is_some();
    let started = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, akp.clone(), |event| async {
        match event {
            Finalizer::Apply(akp) => apply(&akp, &ctx).await,
            Finalizer::Cleanup(akp) => cleanup(&akp, &ctx).await,
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
        ctx.reset_failures(&ObjectRef::from_obj(cached.as_ref()));
    }
    result
}

fn timing(ctx: &Context, akp: &ApiKeyPair) -> Timing {
    let check_interval = plan::check_interval(akp, ctx.settings.check_interval);
    let now = Utc::now();
    let uid = akp.uid().unwrap_or_default();
    let (last_slot, next_check_slot) = plan::check_slots(&uid, check_interval, now);
    Timing {
        now,
        check_due: ctx.check_due(&uid, last_slot),
        known_credentials: ctx.known_credentials(&uid),
        verification_poll_interval: ctx.settings.verification_poll_interval,
        next_check_slot,
    }
}

async fn apply(akp: &ApiKeyPair, ctx: &Arc<Context>) -> Result<Action, Error> {
    if akp.spec.suspend {
        // No provider call and no write until resumed (the spec change wakes it).
        ctx.wakeups
            .forget(&akp.namespace().unwrap_or_default(), &akp.name_any());
        return Ok(Action::await_change());
    }
    let cluster = KubeCluster::new(ctx.clone(), akp);
    // The provider the key lives at (an edit of providerRef is refused by the lifecycle).
    let reference = plan::provider_ref_in_use(akp);
    let provider = match ctx.providers.resolve(akp, reference).await {
        Ok(provider) => provider,
        Err(error) => return Err(report_alone(akp, &cluster, error, "Reconcile").await),
    };
    let result = Run::new(akp, &cluster, &provider, timing(ctx, akp))
        .apply()
        .await;
    let status = match &result {
        Ok(outcome) => &outcome.status,
        Err(_) => &cluster.last_status(),
    };
    record_gauges(ctx, akp, status);
    let Outcome {
        requeue,
        checked,
        known_credentials,
        ..
    } = result?;
    let uid = akp.uid().unwrap_or_default();
    if checked {
        ctx.mark_checked(&uid, Utc::now());
    }
    if let Some(known) = known_credentials {
        ctx.remember_credentials(&uid, known);
    }
    // Kept by the operator's own wake-ups, not kube-runtime's scheduler (see `wakeups`).
    ctx.wakeups.wake_in(
        &akp.namespace().unwrap_or_default(),
        &akp.name_any(),
        requeue,
    );
    Ok(Action::await_change())
}

async fn cleanup(akp: &ApiKeyPair, ctx: &Arc<Context>) -> Result<Action, Error> {
    let (namespace, name) = (akp.namespace().unwrap_or_default(), akp.name_any());
    ctx.metrics.forget_key_pair(&namespace, &name);
    ctx.wakeups.forget(&namespace, &name);
    let cluster = KubeCluster::new(ctx.clone(), akp);
    let forced = match lifecycle::deletion(akp) {
        Deletion::Orphan { forced } => forced,
        deletion @ (Deletion::DeleteRemote | Deletion::DisableRemote) => {
            let reference = plan::provider_ref_in_use(akp);
            let provider = match ctx.providers.resolve(akp, reference).await {
                Ok(provider) => provider,
                Err(error) => return Err(report_alone(akp, &cluster, error, "DeleteKeyPair").await),
            };
            Run::new(akp, &cluster, &provider, timing(ctx, akp))
                .cleanup(deletion == Deletion::DisableRemote)
                .await?;
            return Ok(Action::await_change());
        }
    };
    match lifecycle::orphan(akp, &cluster, forced).await {
        Ok(()) => Ok(Action::await_change()),
        Err(error) => Err(report_alone(akp, &cluster, error, "DeleteKeyPair").await),
    }
}

/// Reports an error that happened before a lifecycle run could start.
async fn report_alone(
    akp: &ApiKeyPair,
    cluster: &KubeCluster,
    error: Error,
    action: &str,
) -> Error {
    let mut status = akp.status.clone().unwrap_or_default();
    match lifecycle::report(akp, cluster, &mut status, false, &error, action).await {
        Ok(()) => error,
        Err(write_failed) => write_failed,
    }
}

/// Exports a key pair's expiry, renewal, readiness and verification as gauges, labelled
/// with the provider resource its key lives at.
fn record_gauges(ctx: &Context, akp: &ApiKeyPair, status: &ApiKeyPairStatus) {
    use crate::conditions::{self, READY, reason};
    let time = |t: &Option<String>| {
        t.as_deref()
            .and_then(plan::parse_time)
            .map(|t| t.timestamp())
    };
    let ready = conditions::find(&status.conditions, READY);
    let ready_reason_is =
        |reasons: &[&str]| ready.is_some_and(|c| reasons.contains(&c.reason.as_str()));
    let figures = KeyPairFigures {
        expires_at: time(&status.expire_at),
        renews_at: time(&status.renewal_time),
        ready: ready.is_some_and(|c| c.status == conditions::status::TRUE),
        renewal_overdue: ready_reason_is(&[reason::RENEWAL_AWAITING_VERIFICATION]),
        awaiting_verification: ready_reason_is(&[
            reason::AWAITING_VERIFICATION_CODE,
            reason::VERIFICATION_CODE_MISSING,
            reason::VERIFICATION_CODE_REJECTED,
        ]),
    };
    let provider = plan::provider_ref_in_use(akp);
    let labels = KeyPairLabels {
        namespace: akp.namespace().unwrap_or_default(),
        name: akp.name_any(),
        provider_kind: super::providers::kind_label(provider.kind).to_owned(),
        provider_name: provider.name.clone(),
    };
    ctx.metrics.key_pair(labels, figures);
}

/// The [`Cluster`] port over the API server, for one `ApiKeyPair`.
pub struct KubeCluster {
    ctx: Arc<Context>,
    akp: ApiKeyPair,
    api: Api<ApiKeyPair>,
    secrets: Api<Secret>,
    /// The resourceVersion the next fenced write must match, and the last status written.
    written: Mutex<(Option<String>, Option<ApiKeyPairStatus>)>,
}

impl KubeCluster {
    /// A port for `akp` as this reconcile read it.
    pub fn new(ctx: Arc<Context>, akp: &ApiKeyPair) -> Self {
        let namespace = akp.namespace().unwrap_or_default();
        KubeCluster {
            api: Api::namespaced(ctx.client.clone(), &namespace),
            secrets: Api::namespaced(ctx.client.clone(), &namespace),
            written: Mutex::new((akp.resource_version(), None)),
            akp: akp.clone(),
            ctx,
        }
    }

    fn last_status(&self) -> ApiKeyPairStatus {
        let written = self.written.lock().ok().and_then(|w| w.1.clone());
        written.unwrap_or_else(|| self.akp.status.clone().unwrap_or_default())
    }

    fn resource_version(&self) -> Option<String> {
        self.written.lock().ok().and_then(|w| w.0.clone())
    }

    /// The Secret as the watch cache holds it: `None` if the cache has not synced yet,
    /// `Some(None)` if it has and holds no such Secret.
    fn cached_secret(&self, name: &str) -> Option<Option<Arc<secret::CachedSecret>>> {
        // Never wait for the cache here: it is fed by the controller's own trigger stream,
        // which is not polled while every reconcile slot is busy. Until it has synced,
        // everything is read from the API server instead.
        futures::FutureExt::now_or_never(self.ctx.secrets.wait_until_ready())?.ok()?;
        let reference = ObjectRef::new(name).within(&self.akp.namespace().unwrap_or_default());
        Some(self.ctx.secrets.get(&reference))
    }

    async fn referenced_in(&self, api: Api<ApiKeyPair>) -> Result<HashSet<String>, Error> {
        let uid = self.akp.uid();
        let listed = api.list(&ListParams::default()).await?.items;
        Ok(listed
            .iter()
            .filter(|other| other.uid() != uid)
            .filter_map(|other| other.status.as_ref())
            .flat_map(owned_key_ids)
            .map(str::to_owned)
            .collect())
    }
}

#[async_trait::async_trait]
impl Cluster for KubeCluster {
    async fn write_status(&self, status: &ApiKeyPairStatus) -> Result<(), Error> {
        let patch = json!({
            "apiVersion": ApiKeyPair::api_version(&()),
            "kind": ApiKeyPair::kind(&()),
            "metadata": { "resourceVersion": self.resource_version() },
            "status": status,
        });
        let params = PatchParams::apply(MANAGER).force();
        let name = self.akp.name_any();
        match self
            .api
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(updated) => {
                if let Ok(mut written) = self.written.lock() {
                    *written = (updated.resource_version(), Some(status.clone()));
                }
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Stale),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_secret(&self, name: &str, fresh: bool) -> Result<Option<Secret>, Error> {
        // A cache miss is an answer too: the caller reads fresh when it matters.
        if !fresh && let Some(cached) = self.cached_secret(name) {
            return Ok(cached.map(|s| s.to_secret()));
        }
        Ok(self.secrets.get_opt(name).await?)
    }

    fn known_absent(&self, name: &str) -> bool {
        let namespace = self.akp.namespace().unwrap_or_default();
        matches!(self.cached_secret(name), Some(None))
            && self.ctx.code_secrets.known_absent(&namespace, name)
    }

    async fn claim_secret(&self, desired: &Secret) -> Result<bool, Error> {
        let name = desired.name_any();
        // Not forced: a field another manager set with another value is a conflict.
        let params = PatchParams::apply(MANAGER);
        let written = match self
            .secrets
            .patch(&name, &params, &Patch::Apply(desired))
            .await
        {
            Ok(written) => written,
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if !secret::written_by_others(&written, MANAGER) {
            return Ok(true);
        }
        // Someone made this Secret after the caches looked: give back every field this
        // apply added (an apply of nothing drops what only this manager owns).
        let nothing = secret::empty_apply(&name);
        self.secrets
            .patch(&name, &params, &Patch::Apply(&nothing))
            .await?;
        Ok(false)
    }

    async fn apply_secret(&self, desired: &Secret) -> Result<(), Error> {
        let name = desired.name_any();
        if let Some(Some(existing)) = self.cached_secret(&name)
            && secret::is_up_to_date(&existing, desired)
        {
            return Ok(());
        }
        let params = PatchParams::apply(MANAGER).force();
        self.secrets
            .patch(&name, &params, &Patch::Apply(desired))
            .await?;
        Ok(())
    }

    async fn release_secret(&self, name: &str) -> Result<(), Error> {
        let uid = self.akp.uid().unwrap_or_default();
        // ownerReferences merge by uid: this removes ours and keeps anyone else's.
        let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}]}});
        let params = PatchParams::default();
        self.secrets
            .patch(name, &params, &Patch::Strategic(&patch))
            .await?;
        Ok(())
    }

    async fn keys_referenced_elsewhere(&self) -> Result<HashSet<String>, Error> {
        let client = self.ctx.client.clone();
        match &self.ctx.scope {
            Scope::All => self.referenced_in(Api::all(client)).await,
            Scope::Namespaces(namespaces) => {
                let mut all = HashSet::new();
                for namespace in namespaces {
                    let api = Api::namespaced(client.clone(), namespace);
                    all.extend(self.referenced_in(api).await?);
                }
                Ok(all)
            }
        }
    }

    async fn read_code(&self, reference: &SecretKeyRef) -> Result<Option<SecretString>, Error> {
        let namespace = self.akp.namespace().unwrap_or_default();
        let codes = &self.ctx.code_secrets;
        codes.read(&self.ctx.client, &namespace, reference).await
    }

    async fn restart_workload(&self, target: &RolloutRestartTarget, at: &str) -> Result<(), Error> {
        use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: at}}}}});
        let (client, namespace) = (
            self.ctx.client.clone(),
            self.akp.namespace().unwrap_or_default(),
        );
        let (name, params, patch) = (&target.name, PatchParams::default(), Patch::Merge(&patch));
        match target.kind {
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(client, &namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
            WorkloadKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(client, &namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
            WorkloadKind::DaemonSet => {
                Api::<DaemonSet>::namespaced(client, &namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
        }
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        self.ctx.event(&self.akp, type_, reason, action, note).await;
    }
}
