//! `kubectl keypair inspect NAME`: everything about one `ApiKeyPair` a human needs to see
//! why it is where it is: the spec's references, its conditions, the provider's last answer
//! (the condition messages, and the provider resource's own `Ready`), the status fields and
//! the core/v1 Events involving it.
//!
//! Nothing secret is read or printed: no Secret data, and the status' fingerprint of the
//! last submitted code is left out.

use std::io::Write;

use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::{PluginError, Target, relative, table};
use crate::conditions::{self, READY, status};
use crate::crd::{
    ApiKeyPair, ClusterKeyPairProvider, KeyPairProvider, ProviderRefKind, ProviderStatus,
};

/// Status fields left out of `inspect` (derived from a secret).
const HIDDEN_STATUS_FIELDS: [&str; 2] = ["conditions", "submittedCodeHash"];

/// The status fields shown, as YAML, without conditions and secret-derived fields.
pub fn status_fields(akp: &ApiKeyPair) -> String {
    let mut value = serde_json::to_value(akp.status.clone().unwrap_or_default())
        .unwrap_or(serde_json::Value::Null);
    if let Some(map) = value.as_object_mut() {
        for field in HIDDEN_STATUS_FIELDS {
            map.remove(field);
        }
    }
    match &value {
        serde_json::Value::Object(map) if map.is_empty() => "  (none)\n".to_owned(),
        _ => serde_yaml::to_string(&value)
            .unwrap_or_default()
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect(),
    }
}

async fn provider_status(
    target: &Target,
    akp: &ApiKeyPair,
) -> Result<Option<(String, ProviderStatus)>, PluginError> {
    let reference = &akp.spec.provider_ref;
    Ok(match reference.kind {
        ProviderRefKind::KeyPairProvider => {
            let api: Api<KeyPairProvider> =
                Api::namespaced(target.client.clone(), &target.namespace);
            api.get_opt(&reference.name).await?.map(|p| {
                (
                    format!("KeyPairProvider {}/{}", target.namespace, reference.name),
                    p.status.unwrap_or_default(),
                )
            })
        }
        ProviderRefKind::ClusterKeyPairProvider => {
            let api: Api<ClusterKeyPairProvider> = Api::all(target.client.clone());
            api.get_opt(&reference.name).await?.map(|p| {
                (
                    format!("ClusterKeyPairProvider {}", reference.name),
                    p.status.unwrap_or_default(),
                )
            })
        }
    })
}

/// The events involving the object, oldest first, as table rows.
async fn events(target: &Target, akp: &ApiKeyPair) -> Result<Vec<Vec<String>>, PluginError> {
    let api: Api<Event> = Api::namespaced(target.client.clone(), &target.namespace);
    let selector = match akp.uid() {
        Some(uid) => format!("involvedObject.uid={uid}"),
        None => format!(
            "involvedObject.kind=ApiKeyPair,involvedObject.name={}",
            akp.name_any()
        ),
    };
    let mut items = api
        .list(&ListParams::default().fields(&selector))
        .await?
        .items;
    let when = |e: &Event| -> Option<String> {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
            .or_else(|| {
                e.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
            })
    };
    items.sort_by_key(|e| when(e).unwrap_or_default());
    let now = chrono::Utc::now();
    Ok(items
        .iter()
        .map(|e| {
            let at = e
                .last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let age = at
                .map(|t| relative(&t.to_string(), now))
                .unwrap_or_default();
            let count = e
                .count
                .filter(|c| *c > 1)
                .or_else(|| e.series.as_ref().and_then(|s| s.count).filter(|c| *c > 1));
            let age = match count {
                Some(n) => format!("{age} (x{n})"),
                None => age,
            };
            vec![
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                age,
                e.message.clone().unwrap_or_default(),
            ]
        })
        .collect())
}

/// Runs `inspect`.
pub async fn run(target: &Target, name: &str, out: &mut dyn Write) -> Result<(), PluginError> {
    let akp = target.key_pair(name).await?;
    let st = akp.status.clone().unwrap_or_default();
    let now = chrono::Utc::now();
    let mut text = String::new();
    text.push_str(&format!("Name:       {}\n", akp.name_any()));
    text.push_str(&format!("Namespace:  {}\n", target.namespace));
    let reference = &akp.spec.provider_ref;
    let kind = match reference.kind {
        ProviderRefKind::KeyPairProvider => "KeyPairProvider",
        ProviderRefKind::ClusterKeyPairProvider => "ClusterKeyPairProvider",
    };
    text.push_str(&format!("Provider:   {kind} {}\n", reference.name));
    let secret = st
        .secret_name
        .clone()
        .or(akp.spec.secret_name.clone())
        .unwrap_or_else(|| akp.name_any());
    text.push_str(&format!("Secret:     {secret}\n"));
    if let Some(v) = &akp.spec.verification {
        text.push_str(&format!(
            "Code from:  Secret {} key {}\n",
            v.code_secret_ref.name, v.code_secret_ref.key
        ));
    }
    if akp.metadata.deletion_timestamp.is_some() {
        text.push_str("Deleting:   yes (waiting for the remote key to be dealt with)\n");
    }
    if akp.spec.suspend {
        text.push_str("Suspended:  yes\n");
    }

    text.push_str("\nConditions:\n");
    if st.conditions.is_empty() {
        text.push_str("  (none yet)\n");
    } else {
        let rows: Vec<Vec<String>> = st
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    relative(&c.last_transition_time.0.to_string(), now),
                    c.message.clone(),
                ]
            })
            .collect();
        for line in table::render(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], &rows).lines()
        {
            text.push_str(&format!("  {line}\n"));
        }
    }

    text.push_str("\nProvider's last answer:\n");
    let failing: Vec<_> = st
        .conditions
        .iter()
        .filter(|c| c.status != status::TRUE && !c.message.is_empty())
        .collect();
    match (failing.is_empty(), conditions::find(&st.conditions, READY)) {
        (false, _) => {
            for c in failing {
                text.push_str(&format!("  {} ({}): {}\n", c.type_, c.reason, c.message));
            }
        }
        (true, Some(ready)) => text.push_str(&format!("  {}\n", ready.message)),
        (true, None) => text.push_str("  (no answer recorded yet)\n"),
    }
    match provider_status(target, &akp).await? {
        Some((what, status)) => {
            let ready = conditions::find(&status.conditions, READY);
            let line = match ready {
                Some(c) => format!("{what}: Ready={} {}: {}", c.status, c.reason, c.message),
                None => format!("{what}: not checked yet"),
            };
            text.push_str(&format!("  {line}\n"));
            if let Some(expiry) = &status.session_expire_at {
                text.push_str(&format!(
                    "  session expires {expiry} ({})\n",
                    relative(expiry, now)
                ));
            }
        }
        None => text.push_str(&format!("  {kind} {} does not exist\n", reference.name)),
    }

    text.push_str("\nStatus:\n");
    text.push_str(&status_fields(&akp));

    text.push_str("\nEvents:\n");
    let rows = events(target, &akp).await?;
    if rows.is_empty() {
        text.push_str("  (none)\n");
    } else {
        for line in table::render(&["TYPE", "REASON", "AGE", "MESSAGE"], &rows).lines() {
            text.push_str(&format!("  {line}\n"));
        }
    }
    write!(out, "{text}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_fingerprint_is_not_shown() {
        let akp: ApiKeyPair = serde_json::from_value(serde_json::json!({
            "apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"providerRef": {"name": "p"}},
            "status": {"keyID": "k1", "submittedCodeHash": "abcdef", "conditions": []},
        }))
        .expect("an ApiKeyPair");
        let fields = status_fields(&akp);
        assert!(fields.contains("keyID: k1"), "{fields}");
        assert!(!fields.contains("abcdef") && !fields.contains("submittedCodeHash"));
    }
}
