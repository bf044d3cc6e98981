//! Model-based test of the `ApiKeyPair` lifecycle, in plain `cargo test` (no cluster).
//!
//! The real lifecycle code ([`Run`]) is driven against an in-memory cluster (status with a
//! resourceVersion, Secrets, code Secret) and an in-memory provider of each kind, through
//! scenarios of phases (create and verify, replace, Secret lost, key deleted behind the
//! operator's back, update, delete). In each phase one fault is injected:
//!
//! - a crash before every effect (status write, Secret write, provider mutation) in turn:
//!   the process dies there, nothing after it happens, and a new process starts over from
//!   what was persisted;
//! - every provider outcome for every mutating call in turn: 4xx refusal, 5xx before or
//!   after committing, a cut-off 2xx that committed, a timeout after committing;
//! - read faults: a 5xx on a read, a 404 on a live key;
//! - a reconcile from a stale object (the one the reconcile before it read);
//! - a Secret cache that lags (cached reads return the Secret as the phase found it).
//!
//! After every reconcile and at the end, the invariants are checked from the outside:
//! I1 no remote key without a resource that owns it (or the attempt in flight), I2 no served
//! secret lost (the Secret's credentials work once the phase converged), I3 never two live
//! keys except a declared replacement, I4 delete leaves nothing, I5 every phase converges.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use keypair_operator::conditions::{self, READY};
use keypair_operator::controller::Error;
use keypair_operator::controller::lifecycle::{self, Cluster, CreateGuard, Provider, Run, Timing};
use keypair_operator::controller::plan::{self, Deletion};
use keypair_operator::controller::secret::{self, SecretView};
use keypair_operator::crd::{ApiKeyPair, ApiKeyPairStatus, RolloutRestartTarget, SecretKeyRef};
use keypair_operator::provider::{
    CreateKeyPair, CreatedKeyPair, CredentialStatus, KeyLookup, KeyPairApi, ProviderError,
    ProviderKind, RemoteKeyPair, UpdateKeyPair,
};
use kube::runtime::events::EventType;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

// ---- faults --------------------------------------------------------------------------

/// How a mutating provider call ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Refused4xx,
    Server5xxBefore,
    Server5xxAfter,
    CutOff2xx,
    TimeoutAfter,
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Refused4xx,
    Outcome::Server5xxBefore,
    Outcome::Server5xxAfter,
    Outcome::CutOff2xx,
    Outcome::TimeoutAfter,
];

/// How a provider read ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadFault {
    Server5xx,
    NotFoundOnLiveKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    CrashBeforeEffect(usize),
    Mutation(usize, Outcome),
    Read(usize, ReadFault),
    /// The n-th reconcile of the phase works from the object the one before it read.
    StaleView(usize),
    /// The first n cached reads of the Secret in the phase return it as it was when the
    /// phase began (a watch cache that lags).
    StaleSecretCache(usize),
}

#[derive(Default)]
struct Faults {
    fault: Option<Fault>,
    effects: usize,
    mutations: usize,
    reads: usize,
    crashed: bool,
    fired: bool,
    reconciles: usize,
    previous: Option<(ApiKeyPair, u64)>,
    secrets_at_start: BTreeMap<String, Secret>,
    cached_reads: usize,
}

impl Faults {
    /// Counts an effect; false if the process is dead (or dies right now).
    fn effect(&mut self) -> bool {
        if self.crashed {
            return false;
        }
        self.effects += 1;
        if self.fault == Some(Fault::CrashBeforeEffect(self.effects)) {
            self.crashed = true;
            self.fired = true;
            return false;
        }
        true
    }

    fn mutation(&mut self) -> Option<Outcome> {
        self.mutations += 1;
        match self.fault {
            Some(Fault::Mutation(n, outcome)) if n == self.mutations => {
                self.fired = true;
                Some(outcome)
            }
            _ => None,
        }
    }

    fn read(&mut self) -> Option<ReadFault> {
        self.reads += 1;
        match self.fault {
            Some(Fault::Read(n, fault)) if n == self.reads => {
                self.fired = true;
                Some(fault)
            }
            _ => None,
        }
    }
}

// ---- the world -------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Key {
    api_key: String,
    secret: String,
    name: Option<String>,
    verified: bool,
    code: Option<(String, String)>,
    created_at: DateTime<Utc>,
    role_key: Option<String>,
    enabled: bool,
    expire_at: DateTime<Utc>,
}

struct World {
    kind: ProviderKind,
    /// Creates the provider committed in the current phase.
    creates: usize,
    /// Workload restarts, each with the key the status served then.
    restarts: Vec<String>,
    now: DateTime<Utc>,
    akp: ApiKeyPair,
    resource_version: u64,
    secrets: BTreeMap<String, Secret>,
    keys: BTreeMap<String, Key>,
    next: u64,
    faults: Faults,
    events: Vec<String>,
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> std::sync::MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|e| e.into_inner())
}

fn crash_error() -> Error {
    Error::Stale
}

fn dead() -> ProviderError {
    ProviderError::Transport {
        message: "the process died".into(),
    }
}

struct ModelCluster {
    world: Shared,
    read_version: Mutex<u64>,
}

#[async_trait::async_trait]
impl Cluster for ModelCluster {
    async fn write_status(&self, status: &ApiKeyPairStatus) -> Result<(), Error> {
        let mut w = lock(&self.world);
        if !w.faults.effect() {
            return Err(crash_error());
        }
        let mut read = self.read_version.lock().unwrap_or_else(|e| e.into_inner());
        if *read != w.resource_version {
            return Err(Error::Stale);
        }
        w.akp.status = Some(status.clone());
        w.resource_version += 1;
        *read = w.resource_version;
        Ok(())
    }

    async fn read_secret(&self, name: &str, fresh: bool) -> Result<Option<Secret>, Error> {
        let mut w = lock(&self.world);
        if w.faults.crashed {
            return Err(crash_error());
        }
        if !fresh {
            w.faults.cached_reads += 1;
            if let Some(Fault::StaleSecretCache(n)) = w.faults.fault
                && w.faults.cached_reads <= n
            {
                w.faults.fired = true;
                return Ok(w.faults.secrets_at_start.get(name).cloned());
            }
        }
        Ok(w.secrets.get(name).cloned())
    }

    fn known_absent(&self, name: &str) -> bool {
        !lock(&self.world).secrets.contains_key(name)
    }

    async fn claim_secret(&self, secret: &Secret) -> Result<bool, Error> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let theirs = lock(&self.world).secrets.get(&name).is_some_and(|found| {
            found.metadata.owner_references != secret.metadata.owner_references
        });
        if theirs {
            return Ok(false);
        }
        self.apply_secret(secret).await?;
        Ok(true)
    }

    async fn apply_secret(&self, secret: &Secret) -> Result<(), Error> {
        let mut w = lock(&self.world);
        if !w.faults.effect() {
            return Err(crash_error());
        }
        let name = secret.metadata.name.clone().unwrap_or_default();
        w.secrets.insert(name, secret.clone());
        Ok(())
    }

    async fn release_secret(&self, name: &str) -> Result<(), Error> {
        let mut w = lock(&self.world);
        if !w.faults.effect() {
            return Err(crash_error());
        }
        if let Some(s) = w.secrets.get_mut(name) {
            s.metadata.owner_references = None;
        }
        Ok(())
    }

    async fn keys_referenced_elsewhere(&self) -> Result<HashSet<String>, Error> {
        Ok(HashSet::new())
    }

    async fn read_code(&self, reference: &SecretKeyRef) -> Result<Option<SecretString>, Error> {
        let w = lock(&self.world);
        let code = w
            .secrets
            .get(&reference.name)
            .and_then(|s| s.data.as_ref()?.get(&reference.key).cloned())
            .and_then(|v| String::from_utf8(v.0).ok());
        Ok(code.map(SecretString::from))
    }

    async fn restart_workload(
        &self,
        target: &RolloutRestartTarget,
        _at: &str,
    ) -> Result<(), Error> {
        let mut w = lock(&self.world);
        if !w.faults.effect() {
            return Err(crash_error());
        }
        let serving = w.akp.status.as_ref().and_then(|s| s.key_id.clone());
        w.restarts.push(format!("{} for {serving:?}", target.name));
        Ok(())
    }

    async fn event(&self, _type: EventType, reason: &str, _action: &str, note: String) {
        lock(&self.world).events.push(format!("{reason}: {note}"));
    }
}

struct ModelProvider {
    world: Shared,
}

impl ModelProvider {
    /// Runs a mutation under the current fault: `commit` changes the world.
    fn mutate<T>(
        &self,
        commit: impl FnOnce(&mut World) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let mut w = lock(&self.world);
        if !w.faults.effect() {
            return Err(dead());
        }
        let outcome = w.faults.mutation();
        let server = || ProviderError::Server {
            status: 500,
            message: "model 500".into(),
            error_id: None,
            retry_after: None,
        };
        match outcome {
            None => commit(&mut w),
            Some(Outcome::Refused4xx) => Err(ProviderError::BadRequest {
                message: "model refusal".into(),
                error_id: None,
            }),
            Some(Outcome::Server5xxBefore) => Err(server()),
            Some(after) => {
                let _ = commit(&mut w);
                Err(match after {
                    Outcome::Server5xxAfter => server(),
                    Outcome::CutOff2xx => ProviderError::UnexpectedResponse {
                        status: 200,
                        message: "model cut-off body".into(),
                        excerpt: String::new(),
                    },
                    _ => ProviderError::Transport {
                        message: "model timeout".into(),
                    },
                })
            }
        }
    }

    fn read_fault(&self) -> Result<Option<ReadFault>, ProviderError> {
        let mut w = lock(&self.world);
        if w.faults.crashed {
            return Err(dead());
        }
        match w.faults.read() {
            Some(ReadFault::Server5xx) => Err(ProviderError::Server {
                status: 503,
                message: "model 503".into(),
                error_id: None,
                retry_after: None,
            }),
            other => Ok(other),
        }
    }
}

fn remote(kind: ProviderKind, id: &str, k: &Key) -> RemoteKeyPair {
    let datonis = kind == ProviderKind::Datonis;
    RemoteKeyPair {
        key_id: id.into(),
        api_key: k.api_key.clone(),
        name: k.name.clone(),
        expire_at: Some(k.expire_at),
        verified: (!datonis).then_some(k.verified),
        enabled: datonis.then_some(k.enabled),
        role_key: k.role_key.clone(),
        created_at: datonis.then_some(k.created_at),
        api_secret: datonis.then(|| SecretString::from(k.secret.clone())),
        ..Default::default()
    }
}

fn not_found() -> ProviderError {
    ProviderError::NotFound {
        message: "model: no such key pair".into(),
        error_id: None,
    }
}

#[async_trait::async_trait]
impl KeyPairApi for ModelProvider {
    fn kind(&self) -> ProviderKind {
        lock(&self.world).kind
    }

    async fn check_credentials(&self) -> Result<CredentialStatus, ProviderError> {
        Ok(CredentialStatus {
            verified: true,
            expire_at: None,
        })
    }

    async fn create(&self, req: &CreateKeyPair) -> Result<CreatedKeyPair, ProviderError> {
        let req = req.clone();
        self.mutate(move |w| {
            w.next += 1;
            w.creates += 1;
            let n = w.next;
            let id = format!("key-{n}");
            let threatwinds = w.kind == ProviderKind::Threatwinds;
            let key = Key {
                api_key: format!("api-{n}"),
                secret: format!("secret-{n}"),
                name: threatwinds.then(|| req.name.clone()),
                verified: !threatwinds,
                code: threatwinds.then(|| (format!("code-id-{n}"), format!("code-{n}"))),
                created_at: w.now,
                role_key: req.role_key.clone(),
                enabled: true,
                expire_at: w.now + chrono::Duration::days(i64::from(req.validity_days)),
            };
            w.keys.insert(id.clone(), key.clone());
            Ok(CreatedKeyPair {
                key: remote(w.kind, &id, &key),
                api_secret: SecretString::from(key.secret.clone()),
                verification_code_id: key.code.map(|c| c.0),
            })
        })
    }

    async fn get(&self, lookup: &KeyLookup) -> Result<RemoteKeyPair, ProviderError> {
        let fault = self.read_fault()?;
        let w = lock(&self.world);
        let found = w.keys.get(&lookup.key_id);
        if fault == Some(ReadFault::NotFoundOnLiveKey) {
            return Err(not_found());
        }
        let Some(key) = found else {
            return Err(not_found());
        };
        if let Some(secret) = &lookup.api_secret {
            // The strict reading: a key is usable only when verified and with its secret.
            if secret.expose_secret() != key.secret || !key.verified {
                return Err(ProviderError::Unauthorized {
                    message: "model: credentials refused".into(),
                    error_id: None,
                });
            }
        }
        Ok(remote(w.kind, &lookup.key_id, key))
    }

    async fn list(&self) -> Result<Vec<RemoteKeyPair>, ProviderError> {
        self.read_fault()?;
        let w = lock(&self.world);
        Ok(w.keys.iter().map(|(id, k)| remote(w.kind, id, k)).collect())
    }

    async fn delete(&self, key_id: &str) -> Result<(), ProviderError> {
        let id = key_id.to_owned();
        self.mutate(move |w| w.keys.remove(&id).map(|_| ()).ok_or_else(not_found))
    }

    async fn verify(&self, code_id: &str, code: &SecretString) -> Result<(), ProviderError> {
        let (code_id, code) = (code_id.to_owned(), code.expose_secret().to_owned());
        self.mutate(move |w| {
            let key = w.keys.values_mut().find(|k| {
                k.code
                    .as_ref()
                    .is_some_and(|c| c.0 == code_id && c.1 == code)
            });
            match key {
                // A code works once, as ThreatWinds' does: a resubmission is refused.
                Some(key) if !key.verified => {
                    key.verified = true;
                    Ok(())
                }
                _ => Err(ProviderError::CodeRejected {
                    message: "model: wrong code".into(),
                    error_id: None,
                }),
            }
        })
    }

    async fn request_new_code(
        &self,
        api_key: &str,
        api_secret: &SecretString,
    ) -> Result<String, ProviderError> {
        let (api_key, secret) = (api_key.to_owned(), api_secret.expose_secret().to_owned());
        self.mutate(move |w| {
            w.next += 1;
            let n = w.next;
            let key = w
                .keys
                .values_mut()
                .find(|k| k.api_key == api_key && k.secret == secret)
                .ok_or_else(not_found)?;
            let code = (format!("code-id-{n}"), format!("code-{n}"));
            key.code = Some(code.clone());
            Ok(code.0)
        })
    }

    async fn update(
        &self,
        key_id: &str,
        req: &UpdateKeyPair,
    ) -> Result<RemoteKeyPair, ProviderError> {
        let (id, req) = (key_id.to_owned(), req.clone());
        self.mutate(move |w| {
            let kind = w.kind;
            let key = w.keys.get_mut(&id).ok_or_else(not_found)?;
            if let Some(role) = req.role_key {
                key.role_key = Some(role);
            }
            if let Some(enabled) = req.enabled {
                key.enabled = enabled;
            }
            if let Some(date) = req.expiry_date {
                key.expire_at =
                    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default());
            }
            Ok(remote(kind, &id, key))
        })
    }
}

#[async_trait::async_trait]
impl Provider for ModelProvider {
    fn description(&self) -> &str {
        "model provider"
    }

    async fn serialize_creates(&self, _: &plan::CreateFingerprint) -> Option<CreateGuard> {
        None
    }
}

// ---- the harness -----------------------------------------------------------------------

const CODE_SECRET: &str = "code";

fn new_world(kind: ProviderKind) -> World {
    let mut spec = json!({"providerRef": {"name": "p"}, "validityDays": 30,
        "rolloutRestartTargets": [{"kind": "Deployment", "name": "app"}]});
    match kind {
        ProviderKind::Threatwinds => {
            spec["verification"] = json!({"codeSecretRef": {"name": CODE_SECRET, "key": "code"}});
        }
        ProviderKind::Datonis => spec["datonis"] = json!({"roleKey": "r1"}),
    }
    let mut akp = ApiKeyPair::new(
        "web",
        serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}")),
    );
    akp.metadata.namespace = Some("ns".into());
    akp.metadata.uid = Some("0b6f3a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into());
    akp.metadata.generation = Some(1);
    World {
        kind,
        creates: 0,
        restarts: Vec::new(),
        now: Utc
            .with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
            .single()
            .unwrap_or_default(),
        akp,
        resource_version: 1,
        secrets: BTreeMap::new(),
        keys: BTreeMap::new(),
        next: 0,
        faults: Faults::default(),
        events: Vec::new(),
    }
}

/// The user of the model: puts the emailed code of whichever key waits for one.
fn user_submits_codes(w: &mut World) {
    let Some(status) = w.akp.status.clone() else {
        return;
    };
    let waiting = status
        .pending_key
        .as_ref()
        .map(|p| p.key_id.clone())
        .or(status.key_id.clone());
    let code = waiting
        .and_then(|id| w.keys.get(&id))
        .filter(|k| !k.verified)
        .and_then(|k| k.code.clone());
    if let Some((_, code)) = code {
        let mut data = BTreeMap::new();
        data.insert("code".to_owned(), ByteString(code.into_bytes()));
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(CODE_SECRET.into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        w.secrets.insert(CODE_SECRET.into(), secret);
    }
}

/// One reconcile, from the persisted object (or the given stale one).
async fn reconcile(world: &Shared, stale: Option<(ApiKeyPair, u64)>) -> Result<(), Error> {
    let (akp, version, now, check_due) = {
        let mut w = lock(world);
        w.now += chrono::Duration::seconds(1);
        // The periodic check is due on every third reconcile only.
        let check_due = w.faults.reconciles % 3 == 1;
        user_submits_codes(&mut w);
        let (akp, version) = stale.unwrap_or_else(|| (w.akp.clone(), w.resource_version));
        (akp, version, w.now, check_due)
    };
    let cluster = ModelCluster {
        world: world.clone(),
        read_version: Mutex::new(version),
    };
    let provider = ModelProvider {
        world: world.clone(),
    };
    let timing = Timing {
        now,
        check_due,
        verification_poll_interval: Duration::from_secs(30),
        next_check_slot: now + chrono::Duration::seconds(3600),
        known_credentials: None,
    };
    if akp.metadata.deletion_timestamp.is_none() {
        return Run::new(&akp, &cluster, &provider, timing)
            .apply()
            .await
            .map(|_| ());
    }
    match lifecycle::deletion(&akp) {
        Deletion::Orphan { forced } => lifecycle::orphan(&akp, &cluster, forced).await,
        deletion => Run::new(&akp, &cluster, &provider, timing)
            .cleanup(deletion == Deletion::DisableRemote)
            .await
            .map(|_| ()),
    }
}

/// A process restart: the dead process's faults end with it.
fn restart(world: &Shared) {
    let mut w = lock(world);
    w.faults.crashed = false;
}

/// I1 and I3, checked after every reconcile: every remote key is owned by the status (key,
/// replacement) or belongs to the attempt the status records as in flight.
fn check_ownership(w: &World, case: &str) {
    let status = w.akp.status.clone().unwrap_or_default();
    let owned: HashSet<String> = [
        status.key_id.clone(),
        status.pending_key.as_ref().map(|p| p.key_id.clone()),
        status.previous_key.as_ref().map(|p| p.key_id.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let in_flight = |k: &Key| {
        status
            .pending_create
            .as_ref()
            .is_some_and(|p| match w.kind {
                ProviderKind::Threatwinds => k.name == p.remote_name,
                // Datonis keys have no names: keys made since the attempt started.
                ProviderKind::Datonis => {
                    DateTime::parse_from_rfc3339(&p.started_at).is_ok_and(|t| {
                        k.created_at >= t.with_timezone(&Utc) - chrono::Duration::seconds(1)
                    })
                }
            })
    };
    let retired =
        |id: &str| status.pending_create.is_some() && status.key_id.as_deref() == Some(id);
    let strays: Vec<&String> = w
        .keys
        .iter()
        .filter(|(id, k)| !owned.contains(*id) && !in_flight(k) && !retired(id))
        .map(|(id, _)| id)
        .collect();
    assert!(
        strays.is_empty(),
        "{case}: I1/I3 stray remote keys {strays:?}; status {status:?}; events {:?}",
        w.events
    );
}

/// I2: the Secret serves credentials that work at the provider.
fn check_served(w: &World, case: &str) {
    let status = w.akp.status.clone().unwrap_or_default();
    let name = status.secret_name.clone().unwrap_or("web".into());
    let view = secret::view_secret(&w.akp, w.secrets.get(&name));
    let SecretView::Owned {
        current: Some(current),
        ..
    } = view
    else {
        panic!("{case}: I2 no credentials served: {view:?}");
    };
    let live = w
        .keys
        .values()
        .any(|k| k.api_key == current.api_key && k.secret == current.api_secret.expose_secret());
    assert!(live, "{case}: I2 the served credentials do not work");
}

/// Reconciles until `done` holds (I5), restarting after a crash, checking I1/I3 on the way.
async fn converge(world: &Shared, case: &str, done: impl Fn(&World) -> bool) {
    for _ in 0..60 {
        let stale = {
            let mut w = lock(world);
            w.faults.reconciles += 1;
            let current = (w.akp.clone(), w.resource_version);
            let previous = w.faults.previous.replace(current);
            match w.faults.fault {
                Some(Fault::StaleView(n)) if n == w.faults.reconciles && previous.is_some() => {
                    w.faults.fired = true;
                    previous
                }
                _ => None,
            }
        };
        let result = reconcile(world, stale).await;
        let crashed = lock(world).faults.crashed;
        if crashed {
            restart(world);
        }
        let mut w = lock(world);
        check_ownership(&w, case);
        if result.is_ok() && !crashed && done(&w) {
            return;
        }
        // A refused update waits for the spec to change: the user edits it again.
        let refused = w
            .akp
            .status
            .as_ref()
            .and_then(|s| s.update_refused_generation);
        if refused.is_some() && refused == w.akp.metadata.generation {
            edit_spec(&mut w, |_| {});
        }
    }
    let w = lock(world);
    panic!(
        "{case}: I5 did not converge; status {:?}; keys {:?}; events {:?}",
        w.akp.status,
        w.keys.keys().collect::<Vec<_>>(),
        w.events
    );
}

fn ready(w: &World) -> bool {
    let Some(status) = &w.akp.status else {
        return false;
    };
    conditions::is_true(&status.conditions, READY)
        && status.pending_create.is_none()
        && status.pending_key.is_none()
        && status.observed_generation == w.akp.metadata.generation
}

/// A phase of a scenario: what the user does, and when it is done.
struct Phase {
    name: &'static str,
    act: fn(&mut World),
    done: fn(&World) -> bool,
    /// Whether the phase replaces the serving key (otherwise it must stay the same).
    rotates: bool,
}

fn edit_spec(w: &mut World, edit: impl FnOnce(&mut ApiKeyPair)) {
    edit(&mut w.akp);
    w.akp.metadata.generation = w.akp.metadata.generation.map(|g| g + 1);
    w.resource_version += 1;
}

fn phases(kind: ProviderKind) -> Vec<Phase> {
    let mut phases = vec![Phase {
        name: "create",
        act: |_| {},
        done: ready,
        rotates: true,
    }];
    match kind {
        ProviderKind::Threatwinds => phases.push(Phase {
            name: "replace",
            act: |w| edit_spec(w, |a| a.spec.key_name = Some("renamed".into())),
            done: |w| {
                ready(w)
                    && w.akp
                        .status
                        .as_ref()
                        .and_then(|s| s.key_name.clone())
                        .is_some_and(|n| n.starts_with("renamed"))
            },
            rotates: true,
        }),
        ProviderKind::Datonis => phases.push(Phase {
            name: "update",
            act: |w| {
                edit_spec(w, |a| {
                    a.spec.datonis = serde_json::from_value(json!({"roleKey": "r2"})).ok()
                })
            },
            done: |w| ready(w) && w.keys.values().all(|k| k.role_key.as_deref() == Some("r2")),
            rotates: false,
        }),
    }
    phases.extend([
        Phase {
            name: "secret-lost",
            act: |w| {
                w.secrets.remove("web");
            },
            done: |w| ready(w) && w.secrets.contains_key("web"),
            // ThreatWinds shows a secret once: a lost one means a new key.
            rotates: kind == ProviderKind::Threatwinds,
        },
        Phase {
            name: "rotate-requested",
            act: |w| {
                let annotations = w
                    .akp
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default);
                annotations.insert("keypairs.dev/rotate".into(), "1".into());
                w.resource_version += 1;
            },
            done: |w| {
                ready(w)
                    && w.akp
                        .status
                        .as_ref()
                        .is_some_and(|s| s.previous_key.is_some())
            },
            rotates: true,
        },
        Phase {
            name: "grace-over",
            act: |w| w.now += chrono::Duration::minutes(11),
            done: |w| {
                ready(w)
                    && w.akp
                        .status
                        .as_ref()
                        .is_some_and(|s| s.previous_key.is_none())
                    && w.keys.len() == 1
            },
            rotates: false,
        },
        Phase {
            name: "renewal",
            act: |w| {
                let renewal = w.akp.status.as_ref().and_then(|s| s.renewal_time.clone());
                let at = renewal.and_then(|t| DateTime::parse_from_rfc3339(&t).ok());
                w.now = at.map(|t| t.with_timezone(&Utc)).unwrap_or(w.now)
                    + chrono::Duration::seconds(1);
            },
            done: |w| {
                let renewed = w
                    .akp
                    .status
                    .as_ref()
                    .and_then(|s| s.renewal_time.as_deref())
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t > w.now);
                ready(w) && renewed
            },
            rotates: true,
        },
        Phase {
            name: "key-deleted-remotely",
            act: |w| {
                let id = w.akp.status.as_ref().and_then(|s| s.key_id.clone());
                if let Some(id) = id {
                    w.keys.remove(&id);
                }
            },
            done: |w| {
                let serving = w.akp.status.as_ref().and_then(|s| s.key_id.clone());
                ready(w) && serving.is_some_and(|id| w.keys.contains_key(&id))
            },
            rotates: true,
        },
        Phase {
            name: "expired-and-deleted",
            act: |w| {
                let status = w.akp.status.clone().unwrap_or_default();
                let expiry = status
                    .expire_at
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok());
                w.now = expiry.map(|t| t.with_timezone(&Utc)).unwrap_or(w.now)
                    + chrono::Duration::seconds(1);
                // Providers may drop expired keys: this one is gone with its replacement.
                w.keys.clear();
            },
            done: |w| {
                let serving = w.akp.status.as_ref().and_then(|s| s.key_id.clone());
                ready(w) && serving.is_some_and(|id| w.keys.contains_key(&id))
            },
            rotates: true,
        },
        Phase {
            name: "delete",
            act: |w| {
                w.akp.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ));
                w.resource_version += 1;
            },
            done: |w| w.keys.is_empty(),
            rotates: true,
        },
    ]);
    phases
}

/// Runs every phase, with `fault` in phase `faulty`; returns whether the fault fired.
async fn scenario(kind: ProviderKind, faulty: usize, fault: Fault) -> bool {
    let world: Shared = Arc::new(Mutex::new(new_world(kind)));
    let mut fired = false;
    for (i, phase) in phases(kind).iter().enumerate() {
        let served_before = {
            let mut w = lock(&world);
            (phase.act)(&mut w);
            w.faults = Faults::default();
            w.creates = 0;
            if i == faulty {
                w.faults.fault = Some(fault);
                w.faults.secrets_at_start = w.secrets.clone();
            }
            w.akp.status.as_ref().and_then(|s| s.key_id.clone())
        };
        let case = format!("{kind} phase {} with {fault:?}", phase.name);
        converge(&world, &case, phase.done).await;
        let w = lock(&world);
        // No needless rotation, and no create loop: one fault costs at most a retry.
        let served_after = w.akp.status.as_ref().and_then(|s| s.key_id.clone());
        if !phase.rotates {
            assert_eq!(
                served_after, served_before,
                "{case}: the serving key was replaced"
            );
        }
        assert!(w.creates <= 3, "{case}: {} creates in one phase", w.creates);
        if phase.name != "delete" {
            check_served(&w, &case);
        } else {
            assert!(w.keys.is_empty(), "{case}: I4 keys left after delete");
        }
        fired |= i == faulty && w.faults.fired;
    }
    fired
}

#[tokio::test]
async fn the_lifecycle_keeps_its_invariants_under_every_single_fault() {
    let mut covered = BTreeMap::<String, usize>::new();
    for kind in [ProviderKind::Threatwinds, ProviderKind::Datonis] {
        for faulty in 0..phases(kind).len() {
            let phase = phases(kind)[faulty].name;
            let mut run = |fault_kind: &str, fired: bool| {
                if fired {
                    *covered
                        .entry(format!("{kind}/{phase}/{fault_kind}"))
                        .or_default() += 1;
                }
                fired
            };
            for n in 1.. {
                if !run(
                    "crash",
                    scenario(kind, faulty, Fault::CrashBeforeEffect(n)).await,
                ) {
                    break;
                }
            }
            for outcome in OUTCOMES {
                for n in 1.. {
                    let fired = scenario(kind, faulty, Fault::Mutation(n, outcome)).await;
                    if !run(&format!("{outcome:?}"), fired) {
                        break;
                    }
                }
            }
            for read in [ReadFault::Server5xx, ReadFault::NotFoundOnLiveKey] {
                for n in 1..=4 {
                    let fired = scenario(kind, faulty, Fault::Read(n, read)).await;
                    run(&format!("{read:?}"), fired);
                }
            }
            for n in 2..=8 {
                let fired = scenario(kind, faulty, Fault::StaleView(n)).await;
                run("StaleView", fired);
            }
            for n in [1, 3, 6] {
                let fired = scenario(kind, faulty, Fault::StaleSecretCache(n)).await;
                run("StaleSecretCache", fired);
            }
        }
    }
    let total: usize = covered.values().sum();
    println!(
        "lifecycle model: {total} (state, fault) cases over {} (provider, phase, fault kind) classes",
        covered.len()
    );
    for (class, n) in &covered {
        println!("  {class}: {n}");
    }
    assert!(total >= 150, "the model covered too little: {covered:?}");
}
