//! The provider resources: `KeyPairProvider` (namespaced) and `ClusterKeyPairProvider`
//! (cluster-scoped) say which remote API issues key pairs and with which credentials.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DNS_SUBDOMAIN, SecretKeyRef, SecretRef};

/// CEL rule on a provider's spec: exactly one API. The `oneOf` beside it already enforces
/// this on every server; the rule adds a message that names the two fields (1.25+).
pub const ONE_API_RULE: &str = "has(self.threatwinds) != has(self.datonis)";

/// Pattern every provider base URL must match.
const HTTP_URL: &str = r"^https?://[^\s/?#]+(/[^\s?#]*)?$";

/// Desired state of a namespaced `KeyPairProvider`: exactly one of `threatwinds` or
/// `datonis`, with credentials from a Secret in the provider's own namespace.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keypairs.dev",
    version = "v1alpha1",
    kind = "KeyPairProvider",
    namespaced,
    shortname = "kpp",
    category = "keypairs",
    status = "ProviderStatus",
    doc = "A remote key-pair API (ThreatWinds or Datonis) and the credentials to use it, for the ApiKeyPairs of this namespace. Its Ready condition says whether the credentials work.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Session Expires","type":"string","jsonPath":".status.sessionExpireAt"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KeyPairProviderSpec {
    /// Which API, where, and with which credentials.
    #[serde(flatten)]
    pub connection: ProviderConnection,
}

/// Desired state of a cluster-scoped `ClusterKeyPairProvider`: like `KeyPairProvider`,
/// plus where its credential Secrets live and which namespaces may use it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keypairs.dev",
    version = "v1alpha1",
    kind = "ClusterKeyPairProvider",
    shortname = "ckpp",
    category = "keypairs",
    status = "ProviderStatus",
    doc = "A remote key-pair API (ThreatWinds or Datonis) shared by ApiKeyPairs of several namespaces (allowedNamespaces, namespaceSelector), with credentials from a Secret in credentialsNamespace.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Session Expires","type":"string","jsonPath":".status.sessionExpireAt"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterKeyPairProviderSpec {
    /// Which API, where, and with which credentials.
    #[serde(flatten)]
    pub connection: ProviderConnection,
    /// Namespace of the credential Secrets this provider refers to.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_SUBDOMAIN))]
    pub credentials_namespace: String,
    /// Namespaces whose `ApiKeyPair`s may use this provider. A namespace is allowed when it
    /// is listed here or matches `namespaceSelector`; when neither is set, every namespace
    /// is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// Label selector of namespaces whose `ApiKeyPair`s may use this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// The part of a provider's spec shared by both provider kinds: exactly one API, and an
/// optional client-side rate limit.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend(
    "oneOf" = [{"required": ["threatwinds"]}, {"required": ["datonis"]}],
    "x-kubernetes-validations" = [{
        "rule": ONE_API_RULE,
        "message": "set exactly one of threatwinds and datonis",
    }],
))]
pub struct ProviderConnection {
    /// ThreatWinds auth v2 key pairs. Exactly one of `threatwinds` and `datonis` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threatwinds: Option<ThreatWindsProvider>,
    /// Datonis v3 key_pairs. Exactly one of `threatwinds` and `datonis` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datonis: Option<DatonisProvider>,
    /// Client-side limit on requests to this provider, shared by every `ApiKeyPair` that
    /// uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Connection to ThreatWinds auth v2.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreatWindsProvider {
    /// Base URL of the ThreatWinds API (the client appends `/api/auth/v2`).
    #[serde(default = "default_threatwinds_url")]
    #[schemars(length(max = 2048), regex(pattern = HTTP_URL))]
    pub url: String,
    /// A Secret key holding the bearer token of an active, verified ThreatWinds session.
    pub session_secret_ref: SecretKeyRef,
}

/// Connection to Datonis v3.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatonisProvider {
    /// Base URL of the Datonis API.
    #[serde(default = "default_datonis_url")]
    #[schemars(length(max = 2048), regex(pattern = HTTP_URL))]
    pub url: String,
    /// A Secret holding either `email` and `password` (the operator signs in and signs in
    /// again when the token expires) or `authToken`.
    pub credentials_secret_ref: SecretRef,
}

/// The default ThreatWinds base URL.
pub fn default_threatwinds_url() -> String {
    "https://intelligence.threatwinds.com".to_owned()
}

/// The default Datonis base URL.
pub fn default_datonis_url() -> String {
    "https://api.datonis.io".to_owned()
}

/// A token-bucket limit on requests to one provider.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second (0.01 to 10000).
    #[schemars(range(min = 0.01, max = 10000.0))]
    pub requests_per_second: f64,
    /// Requests that may be sent at once after a quiet period (default 1).
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 10000))]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

/// Observed state of a provider resource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current conditions (`Ready`), each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the ThreatWinds session expires (RFC 3339); the operator extends it before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub session_expire_at: Option<String>,
}
