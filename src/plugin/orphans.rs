//! `kubectl keypair orphans PROVIDER`: remote keys at one provider that no `ApiKeyPair` owns
//! ("did a crash leave keys behind?"), and `--delete` for the ones the operator provably
//! created.
//!
//! The provider client is built exactly as the operator builds it
//! ([`crate::controller::providers::Registry`], from the provider resource and its credential
//! Secret). A key is owned when any `ApiKeyPair` in the cluster records it
//! ([`crate::controller::state::owned_key_ids`]) or names it in `spec.import`. Provable:
//! ThreatWinds keys whose name carries the operator's attempt token
//! ([`crate::controller::plan::attempt_name_owner`]) and that no create in flight may still
//! adopt. Datonis keys have no names: unowned ones are reported, never deleted.
//!
//! Remote keys are listed before the `ApiKeyPair`s, and the `ApiKeyPair`s are listed again
//! right before deleting: a key an attempt creates after the first listing is not in it, and
//! an attempt's key exists only after its intent (`pendingCreate.remoteName`) is recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::{Output, PluginError, Target, table};
use crate::controller::plan::attempt_name_owner;
use crate::controller::providers::{ProviderHandle, Registry};
use crate::controller::state::owned_key_ids;
use crate::crd::{ApiKeyPair, ClusterKeyPairProvider, KeyPairProvider, ProviderRefKind};
use crate::provider::{KeyPairApi, ProviderKind, RemoteKeyPair};
use crate::telemetry::Metrics;

/// Flags of `orphans`.
#[derive(clap::Args, Debug)]
pub struct OrphansArgs {
    /// Name of the provider resource.
    pub provider: String,
    /// Kind of the provider resource.
    #[arg(long, value_enum, default_value_t = Kind::KeyPairProvider)]
    pub kind: Kind,
    /// Delete the orphans the operator provably created (after a confirmation).
    #[arg(long)]
    pub delete: bool,
    /// Do not ask for confirmation before deleting.
    #[arg(short = 'y', long, requires = "delete")]
    pub yes: bool,
    /// Timeout of each provider request.
    #[arg(long, default_value = "15s", value_parser = crate::cli::parse_duration)]
    pub provider_timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Provider resource kinds, as `--kind` spells them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A namespaced `KeyPairProvider` (in `-n`).
    #[value(name = "KeyPairProvider")]
    KeyPairProvider,
    /// A cluster-scoped `ClusterKeyPairProvider`.
    #[value(name = "ClusterKeyPairProvider")]
    ClusterKeyPairProvider,
}

/// What the cluster's `ApiKeyPair`s own or may still adopt.
#[derive(Debug, Default, Clone)]
pub struct Ownership {
    /// Key ids recorded in a status or named by `spec.import`.
    pub owned: BTreeSet<String>,
    /// Remote names of create attempts in flight (`pendingCreate.remoteName`).
    pub in_flight_names: BTreeSet<String>,
    /// Create attempts in flight without a name (Datonis).
    pub in_flight_unnamed: usize,
    /// `namespace/name` of each resource, by the 8 hex digits its attempt names carry.
    pub resources_by_uid8: BTreeMap<String, String>,
}

impl Ownership {
    /// Collects ownership from every `ApiKeyPair`.
    pub fn of(key_pairs: &[ApiKeyPair]) -> Ownership {
        let mut ownership = Ownership::default();
        for akp in key_pairs {
            if let Some(import) = &akp.spec.import {
                ownership.owned.insert(import.key_id.clone());
            }
            if let Some(uid) = akp.uid() {
                let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
                ownership.resources_by_uid8.insert(
                    short,
                    format!("{}/{}", akp.namespace().unwrap_or_default(), akp.name_any()),
                );
            }
            let Some(status) = &akp.status else { continue };
            ownership
                .owned
                .extend(owned_key_ids(status).into_iter().map(str::to_owned));
            if let Some(pending) = &status.pending_create {
                match &pending.remote_name {
                    Some(name) => {
                        ownership.in_flight_names.insert(name.clone());
                    }
                    None => ownership.in_flight_unnamed += 1,
                }
            }
        }
        ownership
    }
}

/// A remote key no `ApiKeyPair` owns.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Orphan {
    /// Provider-side id.
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// Display name (ThreatWinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it expires (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Whether the operator provably created it (only these are deleted).
    pub created_by_operator: bool,
    /// Why it is reported, and what `--delete` does with it.
    pub note: String,
}

/// The report of one provider.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `Kind namespace/name` of the provider resource.
    pub provider: String,
    /// Keys the provider listed.
    pub listed: usize,
    /// Unowned keys.
    pub orphans: Vec<Orphan>,
    /// Unowned ThreatWinds keys without the operator's naming (made by hand): not orphans
    /// of the operator, not listed.
    pub not_made_by_operator: usize,
    /// Unowned keys a create in flight may still adopt: not listed.
    pub in_flight: usize,
    /// Key ids deleted (with `--delete`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<String>,
}

/// Sorts the provider's keys into orphans (and what is left out).
pub fn classify(kind: ProviderKind, remote: &[RemoteKeyPair], ownership: &Ownership) -> Report {
    let mut report = Report {
        listed: remote.len(),
        ..Report::default()
    };
    for key in remote
        .iter()
        .filter(|k| !ownership.owned.contains(&k.key_id))
    {
        let expires_at = key
            .expire_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let orphan = |created_by_operator, note: String| Orphan {
            key_id: key.key_id.clone(),
            name: key.name.clone(),
            expires_at: expires_at.clone(),
            created_by_operator,
            note,
        };
        match kind {
            ProviderKind::Threatwinds => {
                let name = key.name.as_deref().unwrap_or_default();
                if ownership.in_flight_names.contains(name) {
                    report.in_flight += 1;
                    continue;
                }
                let Some(short) = attempt_name_owner(name) else {
                    report.not_made_by_operator += 1;
                    continue;
                };
                let note = match ownership.resources_by_uid8.get(short) {
                    Some(resource) => format!(
                        "left by an earlier create attempt of {resource} (the operator sweeps these too)"
                    ),
                    None => {
                        "made by the operator for an ApiKeyPair that no longer exists".to_owned()
                    }
                };
                report.orphans.push(orphan(true, note));
            }
            ProviderKind::Datonis => {
                let note = if ownership.in_flight_unnamed > 0 {
                    "no ApiKeyPair references it (a create is in flight and may adopt it); report only"
                } else {
                    "no ApiKeyPair references it; report only (Datonis keys carry no name the operator could prove it made)"
                };
                report.orphans.push(orphan(false, note.to_owned()));
            }
        }
    }
    report
}

async fn all_key_pairs(target: &Target) -> Result<Vec<ApiKeyPair>, PluginError> {
    Api::<ApiKeyPair>::all(target.client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| match e {
            kube::Error::Api(status) if status.code == 403 => PluginError::Invalid(format!(
                "orphans needs to list ApiKeyPairs in every namespace (a key may belong to any of them): {}",
                status.message
            )),
            other => super::list_error(other),
        })
}

/// A client for the provider, built the way the operator builds it.
async fn provider_handle(
    target: &Target,
    args: &OrphansArgs,
) -> Result<ProviderHandle, PluginError> {
    let registry = Registry::new(
        target.client.clone(),
        args.provider_timeout,
        Arc::new(Metrics::new()),
    );
    let provider_error = |e: crate::controller::Error| PluginError::Provider(e.to_string());
    match args.kind {
        Kind::KeyPairProvider => {
            let api: Api<KeyPairProvider> =
                Api::namespaced(target.client.clone(), &target.namespace);
            let provider = api.get_opt(&args.provider).await?.ok_or_else(|| {
                PluginError::NotFound(format!(
                    "KeyPairProvider {}/{}",
                    target.namespace, args.provider
                ))
            })?;
            registry
                .handle(&provider, ProviderRefKind::KeyPairProvider)
                .await
                .map_err(provider_error)
        }
        Kind::ClusterKeyPairProvider => {
            let api: Api<ClusterKeyPairProvider> = Api::all(target.client.clone());
            let provider = api.get_opt(&args.provider).await?.ok_or_else(|| {
                PluginError::NotFound(format!("ClusterKeyPairProvider {}", args.provider))
            })?;
            registry
                .handle(&provider, ProviderRefKind::ClusterKeyPairProvider)
                .await
                .map_err(provider_error)
        }
    }
}

/// The table of orphans.
pub fn render_table(report: &Report) -> String {
    let rows: Vec<Vec<String>> = report
        .orphans
        .iter()
        .map(|o| {
            vec![
                o.key_id.clone(),
                o.name.clone().unwrap_or_default(),
                o.expires_at.clone().unwrap_or_default(),
                if o.created_by_operator { "yes" } else { "no" }.to_owned(),
                o.note.clone(),
            ]
        })
        .collect();
    table::render(&["KEY ID", "NAME", "EXPIRES", "BY OPERATOR", "NOTE"], &rows)
}

fn confirm(question: &str) -> Result<bool, PluginError> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Runs `orphans`.
pub async fn run(
    target: &Target,
    args: &OrphansArgs,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let handle = provider_handle(target, args).await?;
    let kind = handle.kind();
    let remote = handle
        .list()
        .await
        .map_err(|e| PluginError::Provider(format!("{}: list: {e}", handle.description)))?;
    let ownership = Ownership::of(&all_key_pairs(target).await?);
    let mut report = classify(kind, &remote, &ownership);
    report.provider = handle.description.clone();

    if args.output == Output::Table {
        if report.orphans.is_empty() {
            writeln!(
                out,
                "No orphaned keys at {} ({} listed).",
                report.provider, report.listed
            )?;
        } else {
            write!(out, "{}", render_table(&report))?;
        }
        if report.not_made_by_operator > 0 {
            eprintln!(
                "{} unowned key(s) without the operator's naming (made by hand) are not listed.",
                report.not_made_by_operator
            );
        }
        if report.in_flight > 0 {
            eprintln!(
                "{} key(s) of create attempts in flight are not listed.",
                report.in_flight
            );
        }
    }

    if args.delete {
        let provable: Vec<&Orphan> = report
            .orphans
            .iter()
            .filter(|o| o.created_by_operator)
            .collect();
        let unprovable = report.orphans.len() - provable.len();
        if unprovable > 0 {
            eprintln!(
                "{unprovable} orphan(s) the operator cannot prove it created are kept; delete them at the provider if they are yours."
            );
        }
        if provable.is_empty() {
            eprintln!("Nothing to delete.");
        } else if args.yes
            || confirm(&format!(
                "Delete {} key(s) at {}?",
                provable.len(),
                report.provider
            ))?
        {
            // Ownership again, right before deleting: nothing may have claimed them since.
            let now_owned = Ownership::of(&all_key_pairs(target).await?);
            let mut deleted = Vec::new();
            for orphan in provable {
                let name = orphan.name.as_deref().unwrap_or_default();
                if now_owned.owned.contains(&orphan.key_id)
                    || now_owned.in_flight_names.contains(name)
                {
                    eprintln!("kept {}: an ApiKeyPair claimed it meanwhile", orphan.key_id);
                    continue;
                }
                handle.delete(&orphan.key_id).await.map_err(|e| {
                    PluginError::Provider(format!("delete key {}: {e}", orphan.key_id))
                })?;
                eprintln!("deleted key {} ({name})", orphan.key_id);
                deleted.push(orphan.key_id.clone());
            }
            report.deleted = deleted;
        } else {
            eprintln!("Nothing deleted.");
        }
    }

    match args.output {
        Output::Table => {}
        Output::Json => {
            let text = serde_json::to_string_pretty(&report)
                .map_err(|e| PluginError::Invalid(format!("cannot render JSON: {e}")))?;
            writeln!(out, "{text}")?;
        }
        Output::Yaml => {
            let text = serde_yaml::to_string(&report)
                .map_err(|e| PluginError::Invalid(format!("cannot render YAML: {e}")))?;
            write!(out, "{text}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, name: Option<&str>) -> RemoteKeyPair {
        RemoteKeyPair {
            key_id: id.into(),
            name: name.map(Into::into),
            ..RemoteKeyPair::default()
        }
    }

    fn akp(uid: &str, status: serde_json::Value) -> ApiKeyPair {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
            "metadata": {"name": "web", "namespace": "ns", "uid": uid},
            "spec": {"providerRef": {"name": "p"}},
            "status": status,
        }))
        .expect("an ApiKeyPair")
    }

    #[test]
    fn threatwinds_orphans_are_the_operators_unowned_unclaimed_keys() {
        let live = akp(
            "0b6f3a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            serde_json::json!({
                "keyID": "serving",
                "pendingCreate": {"attempt": 4, "remoteName": "ns/web [0b6f3a52.4]",
                    "startedAt": "2026-01-01T00:00:00Z", "purpose": "Replace"},
            }),
        );
        let ownership = Ownership::of(&[live]);
        let remote = [
            key("serving", Some("ns/web [0b6f3a52.3]")),
            key("in-flight", Some("ns/web [0b6f3a52.4]")),
            key("earlier", Some("ns/web [0b6f3a52.2]")),
            key("gone", Some("ns/old [99999999.1]")),
            key("by-hand", Some("my key")),
        ];
        let report = classify(ProviderKind::Threatwinds, &remote, &ownership);
        let ids: Vec<_> = report.orphans.iter().map(|o| o.key_id.as_str()).collect();
        assert_eq!(ids, ["earlier", "gone"]);
        assert!(report.orphans.iter().all(|o| o.created_by_operator));
        assert!(report.orphans[0].note.contains("ns/web"));
        assert_eq!((report.in_flight, report.not_made_by_operator), (1, 1));
    }

    #[test]
    fn datonis_orphans_are_reported_never_provable() {
        let imported: ApiKeyPair = {
            let mut a = akp("u", serde_json::json!({"keyID": "owned"}));
            a.spec.import = Some(crate::crd::Import {
                key_id: "importing".into(),
            });
            a
        };
        let ownership = Ownership::of(&[imported]);
        let remote = [
            key("owned", None),
            key("importing", None),
            key("stray", None),
        ];
        let report = classify(ProviderKind::Datonis, &remote, &ownership);
        assert_eq!(report.orphans.len(), 1);
        assert_eq!(report.orphans[0].key_id, "stray");
        assert!(!report.orphans[0].created_by_operator);
    }
}
