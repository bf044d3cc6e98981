//! `kubectl keypair status [NAME|-A]`: one row per `ApiKeyPair` (provider, state, verified,
//! expiry, renewal, the message of any failing condition) as a table, JSON or YAML.
//!
//! Rows are built from the resource's status only: no secret is read.

use std::io::Write;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::{Output, PluginError, Target, list_error, relative, table};
use crate::conditions::{self, READY, VERIFIED, status};
use crate::crd::{ApiKeyPair, ProviderRefKind};

/// Flags of `status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// One ApiKeyPair (default: every one of the namespace).
    pub name: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// One key pair, as `status` reports it.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    /// Namespace of the `ApiKeyPair`.
    pub namespace: String,
    /// Name of the `ApiKeyPair`.
    pub name: String,
    /// Kind of the provider resource.
    pub provider_kind: String,
    /// Name of the provider resource.
    pub provider: String,
    /// `Ready`, `Deleting`, `Suspended`, or the reason it is not ready.
    pub state: String,
    /// Status of the `Ready` condition (`True`, `False`, `Unknown`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Whether the provider reports the key as verified (ThreatWinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// When the key expires (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the key is renewed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renews_at: Option<String>,
    /// Provider-side id of the key in use.
    #[serde(rename = "keyID", skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Secret holding the credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Messages of the conditions that are not `True`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What `-o json|yaml` prints: a list, like `kubectl get -o json`.
#[derive(Serialize, Debug)]
pub struct StatusList {
    /// The rows.
    pub items: Vec<StatusRow>,
}

/// The row of one `ApiKeyPair`.
pub fn row(akp: &ApiKeyPair) -> StatusRow {
    let st = akp.status.clone().unwrap_or_default();
    let ready = conditions::find(&st.conditions, READY);
    let state = if akp.metadata.deletion_timestamp.is_some() {
        "Deleting".to_owned()
    } else if akp.spec.suspend {
        "Suspended".to_owned()
    } else {
        match ready {
            Some(c) if c.status == status::TRUE => "Ready".to_owned(),
            Some(c) if !c.reason.is_empty() => c.reason.clone(),
            _ => "Pending".to_owned(),
        }
    };
    let mut messages: Vec<&str> = Vec::new();
    for type_ in [READY, VERIFIED] {
        if let Some(c) = conditions::find(&st.conditions, type_)
            && c.status != status::TRUE
            && !c.message.is_empty()
            && !messages.contains(&c.message.as_str())
        {
            messages.push(&c.message);
        }
    }
    for c in &st.conditions {
        if ![READY, VERIFIED].contains(&c.type_.as_str())
            && c.status == status::FALSE
            && !c.message.is_empty()
            && !messages.contains(&c.message.as_str())
        {
            messages.push(&c.message);
        }
    }
    let kind = match akp.spec.provider_ref.kind {
        ProviderRefKind::KeyPairProvider => "KeyPairProvider",
        ProviderRefKind::ClusterKeyPairProvider => "ClusterKeyPairProvider",
    };
    StatusRow {
        namespace: akp.namespace().unwrap_or_default(),
        name: akp.name_any(),
        provider_kind: kind.to_owned(),
        provider: akp.spec.provider_ref.name.clone(),
        state,
        ready: ready.map(|c| c.status.clone()),
        verified: st.verified,
        expires_at: st.expire_at.clone(),
        renews_at: st.renewal_time.clone(),
        key_id: st.key_id.clone(),
        secret_name: st.secret_name.clone(),
        message: (!messages.is_empty()).then(|| messages.join("; ")),
    }
}

/// The table `status` prints.
pub fn render_table(rows: &[StatusRow], all_namespaces: bool) -> String {
    let now = chrono::Utc::now();
    let mut headers = vec![
        "NAME", "PROVIDER", "STATE", "VERIFIED", "EXPIRES", "RENEWS", "MESSAGE",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let provider = match r.provider_kind.as_str() {
                "ClusterKeyPairProvider" => format!("ClusterKeyPairProvider/{}", r.provider),
                _ => r.provider.clone(),
            };
            let mut cells = vec![
                r.name.clone(),
                provider,
                r.state.clone(),
                r.verified.map(|v| v.to_string()).unwrap_or_default(),
                r.expires_at
                    .as_deref()
                    .map(|t| relative(t, now))
                    .unwrap_or_default(),
                r.renews_at
                    .as_deref()
                    .map(|t| relative(t, now))
                    .unwrap_or_default(),
                r.message.clone().unwrap_or_default(),
            ];
            if all_namespaces {
                cells.insert(0, r.namespace.clone());
            }
            cells
        })
        .collect();
    table::render(&headers, &cells)
}

/// Runs `status`.
pub async fn run(
    target: &Target,
    args: &StatusArgs,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let mut items: Vec<ApiKeyPair> = match (&args.name, args.all_namespaces) {
        (Some(name), _) => vec![target.key_pair(name).await?],
        (None, true) => {
            Api::<ApiKeyPair>::all(target.client.clone())
                .list(&ListParams::default())
                .await
                .map_err(list_error)?
                .items
        }
        (None, false) => {
            target
                .key_pairs()
                .list(&ListParams::default())
                .await
                .map_err(list_error)?
                .items
        }
    };
    items.sort_by_key(|a| (a.namespace(), a.name_any()));
    let rows: Vec<StatusRow> = items.iter().map(row).collect();
    match args.output {
        Output::Table if rows.is_empty() => {
            let scope = if args.all_namespaces {
                "any namespace".to_owned()
            } else {
                format!("namespace {}", target.namespace)
            };
            eprintln!("No ApiKeyPairs found in {scope}.");
        }
        Output::Table => write!(out, "{}", render_table(&rows, args.all_namespaces))?,
        Output::Json => {
            let text = serde_json::to_string_pretty(&StatusList { items: rows })
                .map_err(|e| PluginError::Invalid(format!("cannot render JSON: {e}")))?;
            writeln!(out, "{text}")?;
        }
        Output::Yaml => {
            let text = serde_yaml::to_string(&StatusList { items: rows })
                .map_err(|e| PluginError::Invalid(format!("cannot render YAML: {e}")))?;
            write!(out, "{text}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn akp(status: serde_json::Value) -> ApiKeyPair {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"providerRef": {"name": "p"}},
            "status": status,
        }))
        .expect("an ApiKeyPair")
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn a_failing_key_shows_its_reason_and_messages() {
        let a = akp(serde_json::json!({
            "conditions": [
                condition("Ready", "False", "VerificationCodeRejected", "the provider rejected the verification code"),
                condition("Verified", "False", "VerificationCodeRejected", "the provider rejected the verification code"),
            ],
            "verified": false, "keyID": "k1", "expireAt": "2030-01-01T00:00:00Z",
        }));
        let r = row(&a);
        assert_eq!(r.state, "VerificationCodeRejected");
        assert_eq!(r.ready.as_deref(), Some("False"));
        assert_eq!(
            r.message.as_deref(),
            Some("the provider rejected the verification code")
        );
        let table = render_table(&[r], true);
        assert!(table.starts_with("NAMESPACE   NAME   PROVIDER"), "{table}");
        assert!(table.contains("ns          web    p"), "{table}");
    }

    #[test]
    fn a_ready_key_has_no_message() {
        let a = akp(serde_json::json!({
            "conditions": [condition("Ready", "True", "Ready", "the key pair is in the Secret")],
        }));
        let r = row(&a);
        assert_eq!((r.state.as_str(), r.message), ("Ready", None));
        let none = akp(serde_json::json!({}));
        assert_eq!(row(&none).state, "Pending");
    }
}
