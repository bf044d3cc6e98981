//! keypair-operator: a Kubernetes operator that manages remote API key pairs
//! (ThreatWinds auth v2, Datonis v3) as `ApiKeyPair` custom resources.
//!
//! Module map:
//! - [`cli`]: the `run` command (flags, client set-up, signals).
//! - [`crd`]: the custom resource types (`ApiKeyPair`, `KeyPairProvider`,
//!   `ClusterKeyPairProvider`) and the CRD YAML generated from them.
//! - [`conditions`]: the one vocabulary of condition types and reasons.
//! - [`controller`]: the `ApiKeyPair` and provider controllers.
//! - [`provider`]: the provider trait, its ThreatWinds and Datonis clients and
//!   their shared HTTP layer.
//! - [`plugin`]: the `kubectl keypair` plugin (status, verify, new-code, rotate, inspect,
//!   orphans); the `kubectl-keypair` binary is its thin front.
//! - [`sandbox`]: sandbox provider servers that behave as the providers' docs say (cargo
//!   feature `sandbox`, on by default, off in the production image).
//! - [`telemetry`]: logging set-up.
//! - [`memory`]: one shared copy of strings that table entries repeat, and the heap's free
//!   pages given back to the OS (glibc builds).

pub mod cli;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod memory;
pub mod plugin;
pub mod provider;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod telemetry;
