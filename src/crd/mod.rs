//! Custom resource types of the `keypairs.dev/v1alpha1` API and the CRD YAML generated
//! from them.
//!
//! This module owns the shape of what users write (`spec`) and what the operator reports
//! (`status`). The doc comments on every field become the CRD's OpenAPI descriptions, and
//! every rule the OpenAPI v3 schema can express (ranges, enums, patterns, required fields,
//! exactly-one-of) is declared here so the API server rejects bad input before the
//! controller sees it. A few rules the OpenAPI schema cannot express (immutability while
//! a key exists, bounds across fields) are CEL rules (`x-kubernetes-validations`), each
//! with a message: API servers enforce them from Kubernetes 1.25 on (GA in 1.29), and
//! older ones (down to 1.20, the oldest we support) accept the CRDs and drop the field.
//! The controller makes the same checks at run time, so CEL only refuses earlier what the
//! controller would refuse anyway (`tests/cel_rules.rs` evaluates every rule).

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

/// Every CRD without its CEL rules (see [`strip_cel_rules`]), for API servers before 1.25.
pub fn all_crds_without_cel() -> Vec<CustomResourceDefinition> {
    all_crds().into_iter().map(strip_cel_rules).collect()
}

/// `crd` without any CEL rule (`x-kubernetes-validations`), for API servers that do not
/// enforce them (before 1.25). Servers of 1.20 to 1.22 take such a CRD by create or
/// replace (and drop the rules), but refuse it in a server-side apply ("field not declared
/// in schema"), as do kubectl's and Helm's client-side validation. The controller makes
/// the same checks at run time, so nothing is lost.
pub fn strip_cel_rules(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    strip(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Every CRD as multi-document YAML: what `keypair-operator crds` prints and what is
/// committed under `crds/`. Without CEL rules if `cel` is false.
pub fn all_crds_yaml(cel: bool) -> Result<String, serde_yaml::Error> {
    Ok(crd_files_of(if cel {
        all_crds()
    } else {
        all_crds_without_cel()
    })?
    .into_iter()
    .map(|(_, yaml)| format!("---\n{yaml}"))
    .collect())
}

/// Every CRD as `(file name, YAML)`, one file per CRD named `<plural>.<group>.yaml`:
/// the layout of `crds/` and of the Helm chart's `files/crds/`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    crd_files_of(all_crds())
}

fn crd_files_of(
    crds: Vec<CustomResourceDefinition>,
) -> Result<Vec<(String, String)>, serde_yaml::Error> {
    crds.into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"));
            Ok((name, serde_yaml::to_string(&crd)?))
        })
        .collect()
}

/// Writes the CRD files into `dir` ([`crd_files`], or without CEL rules if `cel` is false).
pub fn write_crd_files(dir: &std::path::Path, cel: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let crds = if cel {
        all_crds()
    } else {
        all_crds_without_cel()
    };
    for (name, yaml) in crd_files_of(crds).map_err(std::io::Error::other)? {
        std::fs::write(dir.join(name), yaml)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_rules_can_be_left_out() {
        let rules = |crds: &[CustomResourceDefinition]| {
            crds.iter()
                .map(|c| serde_json::to_string(c).unwrap_or_default())
                .map(|json| json.matches("x-kubernetes-validations").count())
                .sum::<usize>()
        };
        let with = all_crds();
        let without = all_crds_without_cel();
        assert_eq!(
            rules(&with),
            5,
            "a rule added or removed: update tests/cel_rules.rs"
        );
        assert_eq!(rules(&without), 0);
        let names = |crds: &[CustomResourceDefinition]| {
            crds.iter()
                .map(|c| c.metadata.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&with), names(&without));
    }
}
