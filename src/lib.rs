//! keypair-operator: a Kubernetes operator that manages remote API key pairs
//! (ThreatWinds auth v2, Datonis v3) as `ApiKeyPair` custom resources.
//!
//! Module map:
//! - [`conditions`]: the one vocabulary of condition types and reasons.
//! - [`crd`]: the custom resource types (`ApiKeyPair`, `KeyPairProvider`,
//!   `ClusterKeyPairProvider`) and the CRD YAML generated from them.
//! - [`provider`]: the provider trait, its ThreatWinds and Datonis clients and
//!   their shared HTTP layer.
//! - [`sandbox`]: sandbox provider servers that behave as the providers' docs say.
//! - [`telemetry`]: logging set-up.

pub mod conditions;
pub mod crd;
pub mod provider;
pub mod sandbox;
pub mod telemetry;
