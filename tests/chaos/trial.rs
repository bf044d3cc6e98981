//! One trial: a namespace, a sandbox provider, the fault proxy and one or two operator
//! processes reaching the apiserver through it; the operations run in order, then every
//! fault is lifted and the invariants are checked from the outside:
//!
//! - I1 no remote key without an owning resource (orphans only where `deletionPolicy`
//!   keeps them),
//! - I2 no served secret lost: each Secret holds credentials of a live remote key,
//! - I3 no duplicate live keys: one remote key per resource once converged,
//! - I4 a deleted resource leaves no remote key (unless kept) and no finalizer,
//! - I5 every resource converges within [`CONVERGE`],
//! - I6 no secret the sandbox issued appears in a log line, event, status or metric.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use keypair_operator::controller::plan::attempt_name_owner;
use keypair_operator::crd::{ApiKeyPair, KeyPairProvider};
use keypair_operator::sandbox::{
    DEFAULT_DATONIS_EMAIL, DEFAULT_DATONIS_PASSWORD, DEFAULT_DATONIS_ROLES, SandboxConfig,
    SandboxKey,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::common::{self, Operator, Sandbox, TEST_MANAGER};
use crate::ops::{Edit, NAMES, Op, Provider, Sabotage, Shape};
use crate::proxy::{ApiFaults, KubeProxy};

/// How long every resource has, once the faults stop, to converge (I5).
pub const CONVERGE: Duration = Duration::from_secs(120);
/// How long a deleted resource has to go away (I4).
const GONE: Duration = Duration::from_secs(60);
/// Between two operations.
const STEP_GAP: Duration = Duration::from_millis(200);

/// What a trial found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Faults injected, by kind (operations, proxy faults, operator exits).
    pub faults: BTreeMap<String, u64>,
    /// Invariant violations, each naming its invariant.
    pub violations: Vec<String>,
    /// From lifting the faults to every resource converged.
    pub convergence: Duration,
    /// The operators' logs.
    pub logs: Vec<PathBuf>,
}

struct Replica {
    operator: Operator,
    /// Restart when the trial reaches this step (a kill keeps it down for a while).
    down_until: Option<usize>,
    /// The failpoint it was started armed with.
    armed: Option<String>,
    /// Failpoint aborts its log showed so far (the log is kept across restarts).
    aborts_seen: usize,
}

/// The user's desired spec of one name (see [`Edit`]).
#[derive(Clone, Copy, Default)]
struct Desired {
    validity: u32,
    label: u8,
    keep: bool,
    rename: u8,
    suspend: bool,
    secret_name: u8,
    renew_before: u8,
    check_interval: u8,
    annotation: u8,
    role: u8,
}

/// A resource deleted while its policy kept the remote key: keys it made may stay.
struct Kept {
    uid8: String,
    from: i64,
    to: i64,
}

struct World {
    client: Client,
    ns: String,
    shape: Shape,
    seed: u64,
    sandbox: Sandbox,
    proxy: KubeProxy,
    kubeconfig: PathBuf,
    replicas: Vec<Replica>,
    desired: [Desired; NAMES],
    preexisting: BTreeSet<String>,
    kept: Vec<Kept>,
    credentials_broken: bool,
    sessions: u32,
    counter: u32,
    outcome: Outcome,
}

/// Runs one trial.
pub async fn run(seed: u64, shape: Shape, ops: &[Op]) -> Outcome {
    let mut world = World::start(seed, shape).await;
    for (step, op) in ops.iter().enumerate() {
        world.supervise(step).await;
        world.count(op.kind());
        world.execute(step, op).await;
        tokio::time::sleep(STEP_GAP).await;
    }
    world.lift_faults().await;
    let started = Instant::now();
    world.converge().await;
    world.outcome.convergence = started.elapsed();
    world.check_converged_state().await;
    world.delete_everything().await;
    world.check_no_leak().await;
    world.finish().await
}

fn is_threatwinds(shape: Shape) -> bool {
    matches!(shape.provider, Provider::ThreatWinds(_))
}

impl World {
    async fn start(seed: u64, shape: Shape) -> World {
        let client = common::client_with_crds().await;
        let ns = common::test_namespace(&client, &format!("chaos-{seed}")).await;
        let config = match shape.provider {
            Provider::ThreatWinds(dialect) => {
                let mut config = SandboxConfig::threatwinds();
                config.dialect = dialect;
                config.session_tokens = vec![format!("chaos-token-{seed}-0")];
                config
            }
            Provider::Datonis => SandboxConfig::datonis(),
        };
        let sandbox = Sandbox::start(config).await;
        let preexisting = sandbox.keys().await.into_iter().map(|k| k.id).collect();
        let proxy = KubeProxy::start(common::client().await, seed).await;
        let kubeconfig = std::env::temp_dir().join(format!("kpo-chaos-{seed}-{ns}.kubeconfig"));
        proxy.write_kubeconfig(&kubeconfig);
        let mut world = World {
            client,
            ns,
            shape,
            seed,
            sandbox,
            proxy,
            kubeconfig,
            replicas: Vec::new(),
            desired: [Desired {
                validity: 30,
                ..Desired::default()
            }; NAMES],
            preexisting,
            kept: Vec::new(),
            credentials_broken: false,
            sessions: 0,
            counter: 0,
            outcome: Outcome::default(),
        };
        world.put_credentials(true).await;
        world.apply_provider().await;
        for replica in 0..shape.replicas {
            let operator = world.start_operator(replica).await;
            world.outcome.logs.push(operator.log.clone());
            world.replicas.push(Replica {
                operator,
                down_until: None,
                armed: None,
                aborts_seen: 0,
            });
        }
        world
    }

    fn count(&mut self, what: &str) {
        *self.outcome.faults.entry(what.to_owned()).or_default() += 1;
    }

    fn violation(&mut self, text: String) {
        self.outcome.violations.push(text);
    }

    fn operator_args(&self, replica: usize) -> Vec<String> {
        let mut args: Vec<String> = Operator::FAST.iter().map(|s| s.to_string()).collect();
        let log_level = "info,keypair_operator=debug";
        args.extend(["--max-backoff", "3s", "--log-level", log_level].map(String::from));
        if self.shape.replicas > 1 {
            args.extend([
                "--leader-elect".to_owned(),
                "--leader-election-namespace".to_owned(),
                self.ns.clone(),
                "--instance".to_owned(),
                format!("chaos-{replica}"),
                "--lease-duration".to_owned(),
                "3s".to_owned(),
            ]);
        }
        args
    }

    async fn start_operator(&self, replica: usize) -> Operator {
        let args = self.operator_args(replica);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Operator::start_via(Some(self.kubeconfig.clone()), &self.ns, &args, &[]).await
    }

    /// Restarts what died (a failpoint abort; any other exit is itself a finding) and what
    /// was killed once its downtime is over, as Kubernetes would.
    async fn supervise(&mut self, step: usize) {
        for r in 0..self.replicas.len() {
            let replica = &mut self.replicas[r];
            if replica.operator.running() || replica.down_until.is_some_and(|until| step < until) {
                continue;
            }
            let killed = replica.down_until.take().is_some();
            let aborts = replica
                .operator
                .log_text()
                .matches("reached: aborting")
                .count();
            let aborted = replica
                .armed
                .take()
                .filter(|_| aborts > replica.aborts_seen);
            replica.aborts_seen = aborts;
            if let Some(name) = aborted {
                self.count(&format!("operator aborted at {name}"));
            } else if !killed {
                let log = replica.operator.log.display().to_string();
                self.violation(format!("operator replica {r} exited by itself (log {log})"));
            }
            self.replicas[r].operator.restart_with(&[]).await;
        }
    }

    async fn execute(&mut self, step: usize, op: &Op) {
        match op {
            Op::Apply(k) => self.apply(*k).await,
            Op::Edit(k, edit) => {
                let desired = &mut self.desired[*k];
                match *edit {
                    Edit::Validity(days) => desired.validity = days,
                    Edit::Label(value) => desired.label = value,
                    Edit::KeepOnDelete(keep) => desired.keep = keep,
                    Edit::Rename(value) => desired.rename = value,
                    Edit::Suspend(on) => desired.suspend = on,
                    Edit::SecretName(n) => desired.secret_name = n,
                    Edit::RenewBefore(n) => desired.renew_before = n,
                    Edit::CheckInterval(n) => desired.check_interval = n,
                    Edit::Annotation(n) => desired.annotation = n,
                    Edit::Role(n) => desired.role = n,
                }
                self.apply(*k).await;
            }
            Op::Delete(k) => self.delete(*k).await,
            Op::DeleteSecret(k) => {
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
                let _ = secrets
                    .delete(&self.secret_of(*k), &DeleteParams::default())
                    .await;
            }
            Op::CorruptSecret(k) => {
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
                let patch = json!({"stringData": {"apiSecret": "chaos-corrupted"}});
                let _ = secrets
                    .patch(
                        &self.secret_of(*k),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await;
            }
            Op::Rotate(k) => self.annotate(*k, "keypairs.dev/rotate").await,
            Op::RequestNewCode(k) => self.annotate(*k, "keypairs.dev/request-new-code").await,
            Op::SubmitCode(k, right) => self.submit_code(*k, *right).await,
            Op::BreakCredentials => {
                self.credentials_broken = true;
                self.put_credentials(false).await;
            }
            Op::RenewCredentials => self.renew_credentials().await,
            Op::ExpireSessions => {
                self.sandbox.expire_sessions().await;
                // A ThreatWinds session cannot be revived: new credentials are needed.
                self.credentials_broken |= is_threatwinds(self.shape);
            }
            Op::RemoveRemoteKey(k) => {
                if let Some(id) = self.key_id(*k).await {
                    self.sandbox.remove_key(&id).await;
                }
            }
            Op::ProviderFaults(faults) => {
                let mut config = json!({
                    "latency_ms": faults.latency_ms,
                    "error_rate": faults.error_rate,
                    "error_status": faults.error_status,
                    "rate_limit_rps": faults.rate_limit_rps,
                });
                if let Some(mode) = &faults.commit_then_fail {
                    config["commit_then_fail"] = json!(mode);
                    config["commit_then_fail_count"] = json!(1);
                }
                self.sandbox.faults(config).await;
            }
            Op::ApiFaults(faults) => self.proxy.set(*faults),
            Op::Kill { replica, ops } => {
                let r = self.target(*replica).await;
                self.replicas[r].operator.stop().await;
                self.replicas[r].down_until = Some(step + 1 + ops);
            }
            Op::Failpoint { replica, name } => {
                let r = self.target(*replica).await;
                let replica = &mut self.replicas[r];
                replica
                    .operator
                    .restart_with(&[("KPO_FAILPOINT", name)])
                    .await;
                replica.armed = Some(name.clone());
                replica.down_until = None;
            }
            Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Op::Sabotage(sabotage) => self.sabotage(*sabotage).await,
        }
    }

    async fn sabotage(&mut self, sabotage: Sabotage) {
        match sabotage {
            Sabotage::StripFinalizer(k) => {
                let what = format!("{} has a key", name(k));
                common::wait_for(&what, Duration::from_secs(60), || self.key_id(k)).await;
                // A running operator would put its finalizer back between the strip and the
                // delete, and then clean up properly: the orphan is made while it is down.
                for replica in &mut self.replicas {
                    replica.operator.stop().await;
                }
                let api: Api<ApiKeyPair> = Api::namespaced(self.client.clone(), &self.ns);
                let patch = json!({"metadata": {"finalizers": null}});
                api.patch(&name(k), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("strip the finalizer");
                api.delete(&name(k), &DeleteParams::default())
                    .await
                    .expect("delete the resource");
                let gone = format!("{} is gone", name(k));
                common::wait_for(&gone, Duration::from_secs(30), || async {
                    (!self.key_pair_exists(k).await).then_some(())
                })
                .await;
                for replica in &mut self.replicas {
                    replica.operator.restart_with(&[]).await;
                }
            }
            Sabotage::LeakToEvent => {
                let secret = self
                    .sandbox
                    .keys()
                    .await
                    .into_iter()
                    .last()
                    .map(|k| k.secret);
                let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
                    "metadata": {"name": "chaos-planted-leak"},
                    "involvedObject": {"kind": "ApiKeyPair", "name": "k0", "namespace": self.ns},
                    "reason": "Planted", "message": format!("secret {}", secret.unwrap_or_default()),
                }))
                .expect("event object");
                let events: Api<k8s_openapi::api::core::v1::Event> =
                    Api::namespaced(self.client.clone(), &self.ns);
                events
                    .create(&Default::default(), &event)
                    .await
                    .expect("plant an event");
            }
        }
    }

    /// Replica 0 of two is whichever holds the lease (the leader), 1 the other.
    async fn target(&self, replica: usize) -> usize {
        if self.replicas.len() < 2 {
            return 0;
        }
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.ns);
        let holder = leases
            .get_opt("keypair-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity);
        let leader = usize::from(holder.as_deref() == Some("chaos-1"));
        if replica == 0 { leader } else { 1 - leader }
    }

    /// The Secret `k<n>` is meant to be served in.
    fn secret_of(&self, k: usize) -> String {
        match self.desired[k].secret_name {
            0 => name(k),
            n => format!("{}-s{n}", name(k)),
        }
    }

    fn spec(&self, k: usize) -> Value {
        let d = self.desired[k];
        let mut spec = json!({
            "providerRef": {"name": "p"},
            "validityDays": d.validity,
            "rotation": {"gracePeriod": "2s"},
            "secretTemplate": {
                "labels": {"chaos": format!("l{}", d.label)},
                "annotations": {"chaos/annotation": format!("a{}", d.annotation)},
            },
        });
        if d.suspend {
            spec["suspend"] = json!(true);
        }
        if d.secret_name > 0 {
            spec["secretName"] = json!(self.secret_of(k));
        }
        if let Some(before) = [None, Some("72h"), Some("240h")][usize::from(d.renew_before % 3)] {
            spec["renewBefore"] = json!(before);
        }
        if let Some(every) = [None, Some("2s"), Some("1h")][usize::from(d.check_interval % 3)] {
            spec["checkInterval"] = json!(every);
        }
        if is_threatwinds(self.shape) {
            spec["verification"] =
                json!({"codeSecretRef": {"name": code_secret(k), "key": "code"}});
            spec["keyName"] = json!(format!("chaos {} v{}", name(k), d.rename));
            spec["deletionPolicy"] = json!(if d.keep { "Orphan" } else { "Delete" });
        } else {
            let role = DEFAULT_DATONIS_ROLES[usize::from(d.role) % DEFAULT_DATONIS_ROLES.len()].0;
            spec["datonis"] = json!({"roleKey": role, "enabled": d.rename != 1});
            spec["deletionPolicy"] = json!(if d.keep { "Disable" } else { "Delete" });
        }
        spec
    }

    async fn apply(&mut self, k: usize) {
        let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
            "metadata": {"name": name(k)}, "spec": self.spec(k)});
        let api: Api<ApiKeyPair> = Api::namespaced(self.client.clone(), &self.ns);
        let params = PatchParams::apply(TEST_MANAGER).force();
        let Ok(applied) = api.patch(&name(k), &params, &Patch::Apply(&object)).await else {
            return;
        };
        if applied.metadata.deletion_timestamp.is_some() {
            // A spec change on a resource on its way out still decides its key's fate.
            self.note_kept(&applied, k);
        } else if self.desired[k].keep && is_threatwinds(self.shape) {
            // `Orphan` keeps replaced keys too (rotation, renamed or re-validated keys).
            self.kept.push(Kept {
                uid8: uid8(&applied),
                from: i64::MAX,
                to: i64::MIN,
            });
        }
    }

    fn note_kept(&mut self, akp: &ApiKeyPair, k: usize) {
        if !self.desired[k].keep {
            return;
        }
        let uid8 = uid8(akp);
        let from = akp
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        self.kept.push(Kept {
            uid8,
            from: from - 1,
            // A resource on its way out creates nothing new.
            to: chrono::Utc::now().timestamp() + 2,
        });
    }

    async fn delete(&mut self, k: usize) {
        let api: Api<ApiKeyPair> = Api::namespaced(self.client.clone(), &self.ns);
        if let Ok(Some(akp)) = api.get_opt(&name(k)).await {
            self.note_kept(&akp, k);
            let _ = api.delete(&name(k), &DeleteParams::default()).await;
        }
    }

    async fn annotate(&mut self, k: usize, key: &str) {
        self.counter += 1;
        let api: Api<ApiKeyPair> = Api::namespaced(self.client.clone(), &self.ns);
        let patch = json!({"metadata": {"annotations": {key: format!("chaos-{}", self.counter)}}});
        let _ = api
            .patch(&name(k), &PatchParams::default(), &Patch::Merge(&patch))
            .await;
    }

    async fn key_pair_exists(&self, k: usize) -> bool {
        let api: Api<ApiKeyPair> = Api::namespaced(self.client.clone(), &self.ns);
        matches!(api.get_opt(&name(k)).await, Ok(Some(_)))
    }

    async fn key_id(&self, k: usize) -> Option<String> {
        let api: Api<ApiKeyPair> = Api::namespaced(self.client.clone(), &self.ns);
        api.get_opt(&name(k)).await.ok()??.status?.key_id
    }

    /// The code id a resource waits on: its pending replacement's, else its own.
    fn awaited_code(akp: &ApiKeyPair) -> Option<String> {
        let status = akp.status.as_ref()?;
        status
            .pending_key
            .as_ref()
            .and_then(|p| p.verification_code_id.clone())
            .or_else(|| {
                (status.verified != Some(true))
                    .then(|| status.verification_code_id.clone())
                    .flatten()
            })
    }

    async fn submit_code(&mut self, k: usize, right: bool) {
        let api: Api<ApiKeyPair> = Api::namespaced(self.client.clone(), &self.ns);
        let Some(code_id) = api
            .get_opt(&name(k))
            .await
            .ok()
            .flatten()
            .as_ref()
            .and_then(Self::awaited_code)
        else {
            return;
        };
        let code = self
            .sandbox
            .outbox()
            .await
            .into_iter()
            .find(|m| m.verification_code_id == code_id)
            .map(|m| m.code);
        let Some(code) = code else { return };
        let code = if right { code } else { wrong_code(&code) };
        let current = common::secret_data(&self.client, &self.ns, &code_secret(k)).await;
        if current.as_ref().and_then(|d| d.get("code")) != Some(&code) {
            common::put_secret(&self.client, &self.ns, &code_secret(k), &[("code", &code)]).await;
        }
    }

    async fn put_credentials(&mut self, valid: bool) {
        let wrong = format!("chaos-wrong-credential-{}", self.seed);
        if is_threatwinds(self.shape) {
            let token = if valid {
                format!("chaos-token-{}-{}", self.seed, self.sessions)
            } else {
                wrong
            };
            common::put_secret(&self.client, &self.ns, "tw-session", &[("token", &token)]).await;
        } else {
            let password = if valid {
                DEFAULT_DATONIS_PASSWORD
            } else {
                &wrong
            };
            common::put_secret(
                &self.client,
                &self.ns,
                "dt-creds",
                &[("email", DEFAULT_DATONIS_EMAIL), ("password", password)],
            )
            .await;
        }
    }

    async fn renew_credentials(&mut self) {
        if is_threatwinds(self.shape) {
            self.sessions += 1;
            let token = format!("chaos-token-{}-{}", self.seed, self.sessions);
            self.sandbox.add_session(&token).await;
        }
        self.credentials_broken = false;
        self.put_credentials(true).await;
    }

    async fn apply_provider(&self) {
        let spec = if is_threatwinds(self.shape) {
            json!({"threatwinds": {"url": self.sandbox.url(), "sessionSecretRef": {"name": "tw-session", "key": "token"}}})
        } else {
            json!({"datonis": {"url": self.sandbox.url(), "credentialsSecretRef": {"name": "dt-creds"}}})
        };
        let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider",
            "metadata": {"name": "p"}, "spec": spec});
        common::apply_json::<KeyPairProvider>(&self.client, Some(&self.ns), object).await;
    }

    /// Every fault off, valid credentials, every replica up and unarmed.
    async fn lift_faults(&mut self) {
        for (kind, n) in self.proxy.injected() {
            *self.outcome.faults.entry(kind.to_owned()).or_default() += n;
        }
        self.proxy.set(ApiFaults::default());
        self.sandbox.faults(json!({})).await;
        for k in 0..NAMES {
            // Resumed, and checked soon: a key deleted behind the operator's back is found
            // at its next check, which `checkInterval: 1h` puts beyond the deadline.
            let desired = &mut self.desired[k];
            let held = desired.suspend || desired.check_interval == 2;
            desired.suspend = false;
            desired.check_interval %= 2;
            if held && self.key_pair_exists(k).await {
                self.apply(k).await;
            }
        }
        if self.credentials_broken {
            self.renew_credentials().await;
        }
        self.supervise(usize::MAX).await;
        for replica in &mut self.replicas {
            if replica.armed.take().is_some() {
                // Disarmed: a failpoint left armed would abort again during convergence.
                replica.operator.restart_with(&[]).await;
            }
        }
    }

    async fn names(&self) -> Vec<String> {
        self.key_pairs()
            .await
            .iter()
            .map(|a| a.name_any())
            .collect()
    }

    async fn key_pairs(&self) -> Vec<ApiKeyPair> {
        let api: Api<ApiKeyPair> = Api::namespaced(self.client.clone(), &self.ns);
        // The harness talks to the API server directly, not through the proxy.
        api.list(&Default::default())
            .await
            .expect("list ApiKeyPairs")
            .items
    }

    /// Whether a resource settled: its spec observed, Ready, nothing in flight, and its
    /// Secret serving the recorded key's credentials.
    async fn settled(&self, akp: &ApiKeyPair, keys: &[SandboxKey]) -> bool {
        let Some(status) = &akp.status else {
            return false;
        };
        let quiet = status.observed_generation == akp.metadata.generation
            && common::condition(akp, "Ready").is_some_and(|(s, _)| s == "True")
            && status.key_id.is_some()
            && status.pending_create.is_none()
            && status.pending_key.is_none()
            && status.previous_key.is_none()
            // A rotation asked for by annotation moves no generation: it is done once the
            // status records the value.
            && akp
                .annotations()
                .get("keypairs.dev/rotate")
                .is_none_or(|asked| status.rotation_request.as_ref() == Some(asked));
        if !quiet {
            return false;
        }
        let data = common::secret_data(&self.client, &self.ns, &served_by(akp))
            .await
            .unwrap_or_default();
        keys.iter().any(|k| {
            Some(&k.id) == status.key_id.as_ref()
                && data.get("apiKey") == Some(&k.api_key)
                && data.get("apiSecret") == Some(&k.secret)
        })
    }

    /// Waits (submitting the right codes, as a user would) until every resource settled
    /// and every deleted one is gone (I5).
    async fn converge(&mut self) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            self.supervise(usize::MAX).await;
            let mut waiting = Vec::new();
            let keys = self.sandbox.keys().await;
            for akp in self.key_pairs().await {
                let name = akp.name_any();
                if akp.metadata.deletion_timestamp.is_some() {
                    waiting.push(format!("{name} still terminating"));
                    continue;
                }
                if self.settled(&akp, &keys).await {
                    continue;
                }
                if let Some(k) = index_of(&name)
                    && Self::awaited_code(&akp).is_some()
                {
                    self.submit_code(k, true).await;
                }
                let ready = common::condition(&akp, "Ready");
                if ready
                    .as_ref()
                    .is_some_and(|(_, reason)| reason == "SecretConflict")
                {
                    // A Secret kept by an earlier resource of this name (Orphan): the
                    // user clears it, as the troubleshooting table says.
                    self.count("user removed a conflicting Secret");
                    let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
                    let _ = secrets
                        .delete(&served_by(&akp), &DeleteParams::default())
                        .await;
                }
                waiting.push(format!("{name} {ready:?}"));
            }
            if waiting.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                self.violation(format!("I5 not converged within {CONVERGE:?}: {waiting:?}"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn kept_allows(&self, key: &SandboxKey) -> bool {
        match key.name.as_deref().and_then(attempt_name_owner) {
            Some(owner) => self.kept.iter().any(|k| k.uid8 == owner),
            None => self
                .kept
                .iter()
                .any(|k| (k.from..=k.to).contains(&key.created_at)),
        }
    }

    async fn remote_keys(&self) -> Vec<SandboxKey> {
        let keys = self.sandbox.keys().await;
        keys.into_iter()
            .filter(|k| !self.preexisting.contains(&k.id))
            .collect()
    }

    /// I1, I2 and I3 on the converged state.
    async fn check_converged_state(&mut self) {
        let keys = self.remote_keys().await;
        let mut owners: BTreeMap<String, String> = BTreeMap::new();
        for akp in self.key_pairs().await {
            let name = akp.name_any();
            let Some(key_id) = akp.status.as_ref().and_then(|s| s.key_id.clone()) else {
                continue;
            };
            if let Some(other) = owners.insert(key_id.clone(), name.clone()) {
                self.violation(format!("I3 {name} and {other} record the same key"));
            }
            let data = common::secret_data(&self.client, &self.ns, &served_by(&akp))
                .await
                .unwrap_or_default();
            let live = keys.iter().find(|k| k.id == key_id);
            let serves = live.is_some_and(|k| {
                data.get("apiKey") == Some(&k.api_key)
                    && data.get("apiSecret") == Some(&k.secret)
                    && k.verified != Some(false)
            });
            if !serves {
                self.violation(format!(
                    "I2 {name}: its Secret does not serve its live key (remote key {})",
                    if live.is_some() { "exists" } else { "missing" }
                ));
            }
            let uid8 = uid8(&akp);
            let kept = self.kept.iter().any(|k| k.uid8 == uid8);
            let made = keys
                .iter()
                .filter(|k| k.name.as_deref().and_then(attempt_name_owner) == Some(uid8.as_str()))
                .count();
            if made > 1 && !kept {
                self.violation(format!("I3 {name}: {made} live remote keys"));
            }
        }
        for key in &keys {
            if !owners.contains_key(&key.id) && !self.kept_allows(key) {
                self.violation(format!(
                    "I1 orphaned remote key {} ({:?})",
                    key.id, key.name
                ));
            }
        }
    }

    /// Deletes every resource; each must go (its finalizer released) and take its remote
    /// key along unless its policy keeps it (I4).
    async fn delete_everything(&mut self) {
        for name in self.names().await {
            if let Some(k) = index_of(&name) {
                self.delete(k).await;
            }
        }
        let deadline = Instant::now() + GONE;
        loop {
            let left = self.names().await;
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                self.violation(format!("I4 not deleted within {GONE:?}: {left:?}"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for key in self.remote_keys().await {
            if !self.kept_allows(&key) {
                self.violation(format!(
                    "I4 remote key {} ({:?}) left after delete",
                    key.id, key.name
                ));
            }
        }
    }

    /// I6: no secret the sandbox issued, nor the wrong credential, in any log line, event,
    /// status, provider object or metric.
    async fn check_no_leak(&mut self) {
        let issued = self.sandbox.issued().await;
        let mut secrets: Vec<String> = issued
            .secrets
            .into_iter()
            .filter(|s| s.len() >= 12)
            .collect();
        secrets.push(format!("chaos-wrong-credential-{}", self.seed));
        let mut places: Vec<(String, String)> = Vec::new();
        for path in &self.outcome.logs {
            places.push((
                format!("log {}", path.display()),
                std::fs::read_to_string(path).unwrap_or_default(),
            ));
        }
        for replica in &self.replicas {
            if let Ok(response) = reqwest::get(format!("{}/metrics", replica.operator.http)).await {
                places.push((
                    "metrics".to_owned(),
                    response.text().await.unwrap_or_default(),
                ));
            }
        }
        let events = serde_json::to_string(&common::all_events(&self.client, &self.ns).await)
            .unwrap_or_default();
        let key_pairs = serde_json::to_string(&self.key_pairs().await).unwrap_or_default();
        let providers = serde_json::to_string(
            &Api::<KeyPairProvider>::namespaced(self.client.clone(), &self.ns)
                .list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        // Six-digit codes only where digits cannot collide with timestamps and counters.
        for code in &issued.codes {
            if events.contains(code.as_str()) || key_pairs.contains(code.as_str()) {
                self.violation("I6 a verification code in an event or status".to_owned());
            }
        }
        places.extend([
            ("events".to_owned(), events),
            ("ApiKeyPairs".to_owned(), key_pairs),
            ("providers".to_owned(), providers),
        ]);
        for secret in &secrets {
            for (place, text) in &places {
                if text.contains(secret.as_str()) {
                    self.violation(format!("I6 a secret in the {place}"));
                }
            }
        }
    }

    async fn finish(mut self) -> Outcome {
        for replica in &mut self.replicas {
            replica.operator.stop().await;
        }
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &DeleteParams::default()).await;
        let _ = std::fs::remove_file(&self.kubeconfig);
        self.outcome.violations.dedup();
        self.outcome
    }
}

/// The first 8 hex digits of a resource's UID, as the operator's ThreatWinds key names
/// carry them.
fn uid8(akp: &ApiKeyPair) -> String {
    akp.uid()
        .unwrap_or_default()
        .replace('-', "")
        .chars()
        .take(8)
        .collect()
}

/// The Secret a resource's spec names.
fn served_by(akp: &ApiKeyPair) -> String {
    akp.spec
        .secret_name
        .clone()
        .unwrap_or_else(|| akp.name_any())
}

fn index_of(name: &str) -> Option<usize> {
    name.strip_prefix('k')?.parse().ok().filter(|k| *k < NAMES)
}

fn name(k: usize) -> String {
    format!("k{k}")
}

fn code_secret(k: usize) -> String {
    format!("code-k{k}")
}

/// A six-digit code that is not `right`.
fn wrong_code(right: &str) -> String {
    let n: u32 = right.parse().unwrap_or(0);
    format!("{:06}", (n + 1) % 1_000_000)
}
