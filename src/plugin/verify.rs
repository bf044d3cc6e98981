//! `kubectl keypair verify NAME --code CODE`: puts the emailed code where the operator reads
//! it (the Secret `spec.verification.codeSecretRef` names, both created when absent), then
//! follows the status until the provider accepted or rejected that code.
//!
//! The code itself is never printed: settling is recognised by the status alone (the key
//! verified, or the fingerprint of this very code recorded as rejected).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{FIELD_MANAGER, PluginError, Target, short_duration};
use crate::conditions::{self, VERIFIED};
use crate::controller::plan::code_fingerprint;
use crate::crd::{ApiKeyPair, ApiKeyPairStatus, ReplacementStage, SecretKeyRef};

/// Flags of `verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Name of the ApiKeyPair.
    pub name: String,
    /// The emailed verification code; `-` reads it from stdin (keeps it out of `ps`).
    #[arg(long)]
    pub code: String,
    /// How long to wait for the provider's answer.
    #[arg(long, default_value = "2m", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,
}

/// Where a verification stands, as the status tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The key is verified.
    Verified,
    /// The provider rejected this code (with the condition's message).
    Rejected(String),
    /// Not settled yet (what it waits for).
    Waiting(String),
}

/// The key that waits for a code, and the id of its outstanding code: a replacement first,
/// else the key in use.
pub fn waiting_key(status: &ApiKeyPairStatus) -> (Option<&str>, Option<&str>) {
    match &status.pending_key {
        Some(p) if p.waiting_for == ReplacementStage::VerificationCode => {
            (Some(p.key_id.as_str()), p.verification_code_id.as_deref())
        }
        _ => (
            status.key_id.as_deref(),
            status.verification_code_id.as_deref(),
        ),
    }
}

/// Whether `code`, submitted for key `key` (the key that waited when the code was written),
/// has settled.
pub fn settle(status: &ApiKeyPairStatus, key: Option<&str>, code: &str) -> Settled {
    if let Some(key) = key {
        let serving = status.key_id.as_deref() == Some(key) && status.verified == Some(true);
        let promoting = status
            .pending_key
            .as_ref()
            .is_some_and(|p| p.key_id == key && p.waiting_for == ReplacementStage::Promotion);
        if serving || promoting {
            return Settled::Verified;
        }
    }
    let verified = conditions::find(&status.conditions, VERIFIED);
    if let (_, Some(code_id)) = waiting_key(status)
        && status.submitted_code_hash.as_deref() == Some(code_fingerprint(code_id, code).as_str())
    {
        let message = verified
            .map(|c| c.message.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "the provider rejected the verification code".to_owned());
        return Settled::Rejected(message);
    }
    let what = match (key, verified) {
        (None, _) => "the key pair to be created".to_owned(),
        (Some(_), Some(c)) => format!("Verified={} {}", c.status, c.reason),
        (Some(_), None) => "the operator to pick the code up".to_owned(),
    };
    Settled::Waiting(what)
}

/// The code reference, set to `<name>-code` / `code` in the spec when there is none.
async fn ensure_reference(
    target: &Target,
    akp: &ApiKeyPair,
    name: &str,
) -> Result<SecretKeyRef, PluginError> {
    if let Some(v) = &akp.spec.verification {
        return Ok(v.code_secret_ref.clone());
    }
    let reference = SecretKeyRef {
        name: format!("{name}-code"),
        key: "code".to_owned(),
    };
    let patch = serde_json::json!({"spec": {"verification": {"codeSecretRef": reference}}});
    target
        .key_pairs()
        .patch(name, &params(), &Patch::Merge(&patch))
        .await?;
    eprintln!(
        "set spec.verification.codeSecretRef of apikeypair {}/{name} to Secret {} key {}",
        target.namespace, reference.name, reference.key
    );
    Ok(reference)
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Writes `code` under the reference's key, creating the Secret when it does not exist.
async fn write_code(
    target: &Target,
    reference: &SecretKeyRef,
    code: &str,
) -> Result<(), PluginError> {
    let secrets: Api<Secret> = Api::namespaced(target.client.clone(), &target.namespace);
    let data = serde_json::json!({ reference.key.as_str(): code });
    if secrets.get_metadata_opt(&reference.name).await?.is_some() {
        let patch = serde_json::json!({ "stringData": data });
        secrets
            .patch(&reference.name, &params(), &Patch::Merge(&patch))
            .await?;
        return Ok(());
    }
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": reference.name,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "type": "Opaque",
        "stringData": data,
    }))
    .map_err(|e| PluginError::Invalid(format!("cannot build the code Secret: {e}")))?;
    secrets
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            },
            &secret,
        )
        .await?;
    Ok(())
}

fn read_code(arg: &str) -> Result<String, PluginError> {
    let code = if arg == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line
    } else {
        arg.to_owned()
    };
    let code = code.trim().to_owned();
    if code.is_empty() {
        return Err(PluginError::Invalid("the code is empty".to_owned()));
    }
    Ok(code)
}

/// Progress on stderr: a spinner on a terminal, one line per change otherwise.
struct Progress {
    tty: bool,
    tick: usize,
    last: String,
}

impl Progress {
    fn show(&mut self, what: &str, elapsed: Duration) {
        if self.tty {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            self.tick += 1;
            let frame = FRAMES[self.tick % FRAMES.len()];
            eprint!(
                "\r{frame} waiting for {what} ({})\x1b[K",
                short_duration(elapsed)
            );
        } else if self.last != what {
            eprintln!("waiting for {what} ({})", short_duration(elapsed));
        }
        self.last = what.to_owned();
    }

    fn done(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// Runs `verify`.
pub async fn run(
    target: &Target,
    args: &VerifyArgs,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let code = read_code(&args.code)?;
    let name = args.name.as_str();
    let who = format!("apikeypair {}/{name}", target.namespace);
    let akp = target.key_pair(name).await?;
    if akp.spec.datonis.is_some() {
        return Err(PluginError::Invalid(format!(
            "{who} is a Datonis key pair: Datonis keys need no verification code"
        )));
    }
    let status = akp.status.clone().unwrap_or_default();
    let mut key = waiting_key(&status).0.map(str::to_owned);
    if key.is_some() && status.verified == Some(true) && status.pending_key.is_none() {
        writeln!(out, "{who}: already verified; nothing to do")?;
        return Ok(());
    }
    let reference = ensure_reference(target, &akp, name).await?;
    write_code(target, &reference, &code).await?;
    eprintln!(
        "wrote the code into Secret {}/{} key {}",
        target.namespace, reference.name, reference.key
    );
    let started = tokio::time::Instant::now();
    let deadline = started + args.timeout;
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        tick: 0,
        last: String::new(),
    };
    loop {
        let akp = target.key_pair(name).await?;
        let status = akp.status.unwrap_or_default();
        if key.is_none() {
            key = waiting_key(&status).0.map(str::to_owned);
        }
        match settle(&status, key.as_deref(), &code) {
            Settled::Verified => {
                progress.done();
                writeln!(
                    out,
                    "{who}: verified (key {})",
                    key.as_deref().unwrap_or("-")
                )?;
                return Ok(());
            }
            Settled::Rejected(message) => {
                progress.done();
                writeln!(out, "{who}: code rejected: {message}")?;
                return Err(PluginError::Rejected(format!(
                    "{who}: the provider rejected the code; request a new one with `kubectl keypair new-code {name}`"
                )));
            }
            Settled::Waiting(what) => {
                if tokio::time::Instant::now() >= deadline {
                    progress.done();
                    return Err(PluginError::Timeout(format!(
                        "{who}: not settled after {}: still waiting for {what}",
                        humantime::format_duration(args.timeout)
                    )));
                }
                progress.show(&what, started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(value: serde_json::Value) -> ApiKeyPairStatus {
        serde_json::from_value(value).expect("a status")
    }

    #[test]
    fn a_verified_key_settles() {
        let s = status(serde_json::json!({"keyID": "k1", "verified": true}));
        assert_eq!(settle(&s, Some("k1"), "123456"), Settled::Verified);
        let promoting = status(serde_json::json!({"keyID": "k1", "verified": true,
            "pendingKey": {"keyID": "k2", "waitingFor": "Promotion"}}));
        assert_eq!(settle(&promoting, Some("k2"), "1"), Settled::Verified);
    }

    #[test]
    fn only_this_codes_rejection_settles() {
        let rejected = status(serde_json::json!({
            "keyID": "k1", "verified": false, "verificationCodeID": "c1",
            "submittedCodeHash": code_fingerprint("c1", "111111"),
            "conditions": [{"type": "Verified", "status": "False", "reason": "VerificationCodeRejected",
                "message": "the provider rejected the verification code: wrong", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }));
        assert_eq!(
            settle(&rejected, Some("k1"), "111111"),
            Settled::Rejected("the provider rejected the verification code: wrong".into())
        );
        assert_eq!(
            settle(&rejected, Some("k1"), "222222"),
            Settled::Waiting("Verified=False VerificationCodeRejected".into())
        );
    }

    #[test]
    fn a_replacement_waits_before_the_serving_key() {
        let s = status(serde_json::json!({"keyID": "k1", "verified": true,
            "verificationCodeID": "old",
            "pendingKey": {"keyID": "k2", "verificationCodeID": "c2", "waitingFor": "VerificationCode"}}));
        assert_eq!(waiting_key(&s), (Some("k2"), Some("c2")));
        assert!(matches!(settle(&s, Some("k2"), "1"), Settled::Waiting(_)));
        let empty = ApiKeyPairStatus::default();
        assert_eq!(
            settle(&empty, None, "1"),
            Settled::Waiting("the key pair to be created".into())
        );
    }
}
