//! Custom resource types of the `keypairs.dev/v1alpha1` API and the CRD YAML generated
//! from them.
//!
//! This module owns the shape of what users write (`spec`) and what the operator reports
//! (`status`). The doc comments on every field become the CRD's OpenAPI descriptions, and
//! every rule the OpenAPI v3 schema can express (ranges, enums, patterns, required fields,
//! exactly-one-of) is declared here so the API server rejects bad input before the
//! controller sees it. CEL (`x-kubernetes-validations`) is deliberately not used: the
//! oldest API server we support (1.20) rejects CRDs that contain it.

mod api_key_pair;
mod provider;

pub use api_key_pair::*;
pub use provider::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde::{Deserialize, Serialize};

/// API group of every custom resource of this operator.
pub const GROUP: &str = "keypairs.dev";

/// Pattern of a Kubernetes object name (RFC 1123 DNS subdomain), used for references.
pub(crate) const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Pattern of a duration such as `720h`, `30d`, `1h30m` or `90s` (parsed with `humantime`).
pub(crate) const DURATION: &str = r"^([0-9]+(ms|s|m|h|d|w))+$";

/// Pattern of a key inside a Secret's `data`.
pub(crate) const SECRET_DATA_KEY: &str = r"^[-._a-zA-Z0-9]+$";

/// A reference to one key of a Secret in the same namespace as the referring object
/// (or, for cluster-scoped providers, in the provider's `credentialsNamespace`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_DATA_KEY))]
    pub key: String,
}

/// A reference to a whole Secret by name.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// Every CRD of this operator, in a stable order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        ApiKeyPair::crd(),
        KeyPairProvider::crd(),
        ClusterKeyPairProvider::crd(),
    ]
}

/// Every CRD as multi-document YAML: what `keypair-operator crds` prints and what is
/// committed under `crds/`.
pub fn all_crds_yaml() -> Result<String, serde_yaml::Error> {
    Ok(crd_files()?
        .into_iter()
        .map(|(_, yaml)| format!("---\n{yaml}"))
        .collect())
}

/// Every CRD as `(file name, YAML)`, one file per CRD named `<plural>.<group>.yaml`:
/// the layout of `crds/` and of the Helm chart's `files/crds/`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all_crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"));
            Ok((name, serde_yaml::to_string(&crd)?))
        })
        .collect()
}

/// Writes [`crd_files`] into `dir`.
pub fn write_crd_files(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, yaml) in crd_files().map_err(std::io::Error::other)? {
        std::fs::write(dir.join(name), yaml)?;
    }
    Ok(())
}
