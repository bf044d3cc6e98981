//! The `ApiKeyPair` resource: one remote API key pair whose credentials the operator keeps
//! in a Kubernetes Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DNS_SUBDOMAIN, DURATION, SECRET_DATA_KEY, SecretKeyRef};

/// CEL rule on the whole `ApiKeyPair` (a transition rule, enforced from Kubernetes 1.25 on):
/// `spec.providerRef` may not move away from the provider recorded in `status.providerRef`
/// while the resource owns a key there (a key id, or a create in flight). The same check
/// as [`crate::controller::plan::refused_edit`], made before the edit is stored. An edit
/// that leaves `providerRef` as it was, or sets it back to the recorded provider, passes,
/// so objects stored with a refused edit stay editable.
pub const PROVIDER_REF_RULE: &str = "!has(oldSelf.status) || !has(oldSelf.status.providerRef) \
    || !(has(oldSelf.status.keyID) || has(oldSelf.status.pendingCreate)) \
    || (self.spec.providerRef.kind == oldSelf.spec.providerRef.kind \
    && self.spec.providerRef.name == oldSelf.spec.providerRef.name) \
    || (self.spec.providerRef.kind == oldSelf.status.providerRef.kind \
    && self.spec.providerRef.name == oldSelf.status.providerRef.name)";

/// CEL rule on `ApiKeyPair.spec`: `renewBefore` is shorter than `validityDays`. Checked
/// only for values in units CEL's `duration()` parses (`h`, `m`, `s`, `ms`); values with
/// `d` or `w` are left to the controller ([`crate::controller::plan::renew_before`]), so
/// the rule never refuses a value the controller accepts.
pub const RENEW_BEFORE_RULE: &str = "!has(self.renewBefore) \
    || !self.renewBefore.matches('^([0-9]+(ms|s|m|h))+$') \
    || duration(self.renewBefore) < duration(string(self.validityDays * 24) + 'h')";

/// CEL rule on `ApiKeyPair.spec.secretTemplate`: the two data keys differ, also from each
/// other's `.pending` slot (where a replacement key waits), as
/// [`crate::controller::plan::invalid_spec`] checks at run time.
pub const SECRET_KEYS_RULE: &str = "!has(self.keys) || (self.keys.apiKey != self.keys.apiSecret \
    && self.keys.apiKey != self.keys.apiSecret + '.pending' \
    && self.keys.apiSecret != self.keys.apiKey + '.pending')";

/// Desired state of an `ApiKeyPair`: which provider issues the key, for how long, and
/// where its credentials go.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keypairs.dev",
    version = "v1alpha1",
    kind = "ApiKeyPair",
    namespaced,
    shortname = "akp",
    category = "keypairs",
    status = "ApiKeyPairStatus",
    doc = "An API key pair at a remote provider (ThreatWinds or Datonis), kept in a Secret: created, verified, checked, renewed before it expires, rotated on demand, and deleted with this resource. See kubectl explain apikeypair.spec.",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.providerRef.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Verified","type":"boolean","jsonPath":".status.verified"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expireAt"}"#,
    printcolumn = r#"{"name":"Renews","type":"string","jsonPath":".status.renewalTime"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new(PROVIDER_REF_RULE).message(
        "spec.providerRef cannot change while the key pair lives at the provider recorded in status.providerRef: set it back, or delete this ApiKeyPair (its key is deleted where it lives) and create a new one"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": RENEW_BEFORE_RULE,
    "message": "renewBefore must be shorter than validityDays",
}]))]
pub struct ApiKeyPairSpec {
    /// The provider that issues this key pair.
    pub provider_ref: ProviderRef,

    /// Display name of the key pair at the provider (ThreatWinds `name`). Defaults to
    /// `<namespace>/<name>` of this resource. Changing it replaces a ThreatWinds key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub key_name: Option<String>,

    /// How many days the key pair stays valid after it is created (1 to 3650).
    /// Changing it updates a Datonis key and replaces a ThreatWinds key.
    #[serde(default = "default_validity_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub validity_days: u32,

    /// Name of the Secret that receives the credentials, in this resource's namespace.
    /// Defaults to the name of this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub secret_name: Option<String>,

    /// Labels, annotations and data key names of the generated Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<Box<SecretTemplate>>,

    /// Where to find the verification code the provider emailed (ThreatWinds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,

    /// Datonis-specific settings; `roleKey` is required for Datonis providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datonis: Option<DatonisKeySettings>,

    /// What happens to the remote key pair when this resource is deleted:
    /// `Delete` (default) deletes it at the provider, `Orphan` leaves it, `Disable`
    /// (Datonis) disables it there.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How long before expiry the key pair is renewed, as a duration (`720h`, `30d`).
    /// Default: a third of `validityDays`, at least one day. Must be shorter than the
    /// validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub renew_before: Option<String>,

    /// How a key pair is renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalSettings>,

    /// How a rotation hands over from the previous key pair to the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSettings>,

    /// Workloads in this namespace restarted (like `kubectl rollout restart`) after the
    /// Secret starts serving a new key pair. Needs the chart's `rbac.rolloutRestart`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,

    /// While true, the operator makes no provider call and no write for this resource
    /// (deletion still proceeds).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Adopt a key pair made by hand instead of creating one: its credentials must already
    /// be in the Secret named by `secretName` (under `secretTemplate.keys`); the operator
    /// checks them at the provider before taking the key and the Secret over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<Import>,

    /// How often this key pair is checked at its provider (a duration such as `30m`);
    /// overrides the operator's `--check-interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub check_interval: Option<String>,
}

/// A key pair made by hand, to adopt.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Import {
    /// Provider-side id of the key pair (ThreatWinds `keyID`, Datonis `key_pair_key`).
    #[serde(rename = "keyID")]
    #[schemars(length(min = 1, max = 253))]
    pub key_id: String,
}

/// How a key pair is renewed before it expires.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenewalSettings {
    /// `Rotate` (default): a new key pair takes over. `Extend` (Datonis): the expiry date of
    /// the key pair in use is moved out, with no new secret and no restart.
    #[serde(default)]
    pub strategy: RenewalStrategy,
}

/// How a key pair is renewed.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RenewalStrategy {
    /// A new key pair replaces the one in use.
    #[default]
    Rotate,
    /// The key pair in use gets a later expiry date (Datonis only).
    Extend,
}

/// How a rotation hands over.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationSettings {
    /// How long the previous key pair stays valid after the new one is in the Secret, so
    /// consumers can pick the new one up (a duration; default `10m`). Then it is deleted at
    /// the provider (kept with `deletionPolicy: Orphan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub grace_period: Option<String>,
}

/// A workload restarted after the Secret changes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartTarget {
    /// Kind of the workload.
    pub kind: WorkloadKind,
    /// Name of the workload, in this resource's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// Kinds of workloads that can be restarted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

fn default_validity_days() -> u32 {
    365
}

/// A reference to a `KeyPairProvider` (same namespace) or a `ClusterKeyPairProvider`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRef {
    /// Kind of the provider resource.
    #[serde(default)]
    pub kind: ProviderRefKind,
    /// Name of the provider resource.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// Kind of provider resource an `ApiKeyPair` refers to.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProviderRefKind {
    /// A namespaced `KeyPairProvider` in the same namespace as the `ApiKeyPair`.
    #[default]
    KeyPairProvider,
    /// A cluster-scoped `ClusterKeyPairProvider` that allows the `ApiKeyPair`'s namespace.
    ClusterKeyPairProvider,
}

/// Shape of the generated Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": SECRET_KEYS_RULE,
    "message": "keys.apiKey and keys.apiSecret must differ, and neither may be the other with a .pending suffix (where a replacement key waits)",
}]))]
pub struct SecretTemplate {
    /// Extra labels on the Secret (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Names of the data keys that hold the credentials.
    #[serde(default)]
    pub keys: SecretDataKeys,
    /// Type of the Secret (default `Opaque`), for consumers that select Secrets by type.
    /// A Secret's type cannot change once it exists.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub type_: Option<String>,
}

/// Names of the Secret data keys that hold the API key and the API secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretDataKeys {
    /// Data key for the API key (default `apiKey`).
    #[serde(default = "default_api_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_DATA_KEY))]
    pub api_key: String,
    /// Data key for the API secret (default `apiSecret`).
    #[serde(default = "default_api_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_DATA_KEY))]
    pub api_secret: String,
}

impl Default for SecretDataKeys {
    fn default() -> Self {
        Self {
            api_key: default_api_key_key(),
            api_secret: default_api_secret_key(),
        }
    }
}

fn default_api_key_key() -> String {
    "apiKey".to_owned()
}

fn default_api_secret_key() -> String {
    "apiSecret".to_owned()
}

/// How the operator gets the emailed verification code (ThreatWinds).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// A key of a Secret in this namespace that holds the code. The operator submits each
    /// distinct code once.
    pub code_secret_ref: SecretKeyRef,
}

/// Datonis key pair settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatonisKeySettings {
    /// Datonis `role_key` of the role the key pair gets.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub role_key: String,
    /// Whether the key pair is enabled (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

/// What to do with the remote key pair when the `ApiKeyPair` is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the key pair at the provider.
    #[default]
    Delete,
    /// Leave the key pair at the provider.
    Orphan,
    /// Disable the key pair at the provider (Datonis `enabled: false`), so a human can
    /// re-enable it there.
    Disable,
}

/// Observed state of an `ApiKeyPair`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyPairStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current conditions (`Ready`, `Verified`), each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Provider-side id of the key pair in use (ThreatWinds `keyID`, Datonis `key_pair_key`).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "keyID")]
    pub key_id: Option<String>,

    /// The API key (public half) of the key pair in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,

    /// Display name of the key pair at the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,

    /// When the key pair expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expire_at: Option<String>,

    /// Whether the provider reports the key pair as verified (ThreatWinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,

    /// Id of the outstanding verification code (ThreatWinds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "verificationCodeID"
    )]
    pub verification_code_id: Option<String>,

    /// Roles of the key pair's owner, as the provider's check reports them (ThreatWinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,

    /// Groups of the key pair's owner, as the provider's check reports them (ThreatWinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,

    /// Whether the key pair is enabled at the provider (Datonis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Datonis role key the key pair has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_key: Option<String>,

    /// Validity in days the key pair in use was created (or last updated) with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_days: Option<u32>,

    /// Name of the Secret that holds the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// Number of create attempts so far. Incremented, with a resourceVersion precondition,
    /// before every remote create, so a stale cached object can never create twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_attempts: Option<u32>,

    /// An in-flight create attempt: recorded before the remote call so that the next
    /// reconcile can find (and clean up or adopt) whatever that attempt created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<Box<PendingCreate>>,

    /// A replacement key pair that is created but not yet in use (ThreatWinds keys wait for
    /// verification while the current key keeps serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_key: Option<Box<PendingKey>>,

    /// Fingerprint of the last verification code submitted, so each code is sent once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_code_hash: Option<String>,

    /// Last value of the `keypairs.dev/request-new-code` annotation that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_code_request: Option<String>,

    /// The provider the key pair lives at (recorded with the key): the remote key is
    /// deleted there even if `spec.providerRef` is edited, and such an edit is refused
    /// while a key exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<ProviderRef>,

    /// Data key names the Secret holds the credentials under (recorded with the key), so
    /// an edit of `secretTemplate.keys` or `secretName` moves the credentials instead of
    /// taking them for lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_keys: Option<SecretDataKeys>,

    /// The `metadata.generation` whose update the provider refused; the update is not
    /// sent again until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_refused_generation: Option<i64>,

    /// When the key pair in use is renewed (RFC 3339): its expiry minus `renewBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub renewal_time: Option<String>,

    /// Last value of the `keypairs.dev/rotate` annotation that started a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request: Option<String>,

    /// The key pair a rotation replaced, valid until `deleteAfter` so consumers can move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<Box<PreviousKey>>,

    /// Key id whose arrival in the Secret the `rolloutRestartTargets` were restarted for.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "consumersRestartedForKeyID"
    )]
    pub consumers_restarted_for_key_id: Option<String>,
}

/// A replaced key pair in its grace period.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousKey {
    /// Provider-side id of the previous key pair.
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// When it is deleted at the provider (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub delete_after: String,
}

/// A create attempt whose outcome is not yet recorded.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingCreate {
    /// Attempt number (matches `createAttempts` when it was recorded).
    pub attempt: u32,
    /// Deterministic remote name this attempt uses (ThreatWinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_name: Option<String>,
    /// When the attempt was recorded (RFC 3339): keys created before it are not its own.
    #[schemars(extend("format" = "date-time"))]
    pub started_at: String,
    /// Why the key is being created.
    pub purpose: CreatePurpose,
    /// The `keypairs.dev/rotate` value this attempt carries out (recorded in
    /// `rotationRequest` once the new key is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request: Option<String>,
    /// Datonis role the attempt asked for (recovery matches on it, not on a later spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_key: Option<String>,
    /// Validity in days the attempt asked for (recovery matches its expiry date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_days: Option<u32>,
}

/// Why a key pair is being created.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CreatePurpose {
    /// The resource has no key yet.
    Initial,
    /// The spec asks for a key the provider cannot update in place (ThreatWinds): the new
    /// key waits in the Secret's pending slot while the current one keeps serving.
    Replace,
    /// The API secret is gone for good (ThreatWinds shows it once): the old key is deleted
    /// and a new one takes its place.
    SecretLost,
    /// The key was deleted at the provider by someone else.
    RemoteKeyMissing,
    /// Rotation without verification (Datonis): the new key goes straight into the Secret
    /// and the previous one stays valid for the grace period.
    Rotate,
    /// A value this version does not know (written by another version): reported as an
    /// inconsistent status for this resource instead of failing the watch of all of them.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// What a replacement key pair waits for before it serves.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ReplacementStage {
    /// Its emailed verification code.
    #[serde(alias = "verification code")]
    VerificationCode,
    /// It is verified and already in the Secret: the old key is being retired.
    #[serde(alias = "promotion")]
    Promotion,
    /// A value this version does not know (see [`CreatePurpose::Unknown`]).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// A created replacement key pair that is not serving yet.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingKey {
    /// Provider-side id of the pending key pair.
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// The API key (public half) of the pending key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Display name of the pending key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// When the pending key pair expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expire_at: Option<String>,
    /// Id of its outstanding verification code.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "verificationCodeID"
    )]
    pub verification_code_id: Option<String>,
    /// What the pending key waits for before it replaces the current one.
    pub waiting_for: ReplacementStage,
}
