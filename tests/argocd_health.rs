//! The Argo CD health check (`gitops/argocd/apikeypair-health.lua`), run by a real Lua 5.1
//! interpreter (the dialect of Argo CD's gopher-lua) against sample `ApiKeyPair` objects,
//! and the ready-to-paste `argocd-cm` patch, which must embed the script verbatim.
//!
//! Needs the `lua5.1` binary (Debian package `lua5.1`); `scripts/test.sh` installs it.

use keypair_operator::conditions::reason;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const LUA: &str = "lua5.1";

fn gitops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gitops/argocd")
}

fn script_path() -> PathBuf {
    gitops_dir().join("apikeypair-health.lua")
}

/// A Lua string literal for any bytes: everything but plain ASCII letters, digits and a
/// few harmless characters becomes a three-digit decimal escape, which Lua 5.1 reads
/// unambiguously (no quote, backslash, newline or non-ASCII byte is ever written raw).
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b" .,:;-_/()=+*?!<>'".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:03}"));
        }
    }
    out.push('"');
    out
}

/// JSON as a Lua table constructor, the way Argo CD hands the object to the script.
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_value).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// Health as the script reports it.
#[derive(Debug)]
struct Health {
    status: String,
    message: String,
}

/// Runs the health script on `obj`; `name` keeps the temp files of parallel tests apart.
fn health(name: &str, obj: &Value) -> Health {
    let program = format!(
        "obj = {}\nlocal f = assert(loadfile({}))\nlocal hs = f()\n\
         assert(type(hs) == \"table\", \"the script must return a table\")\n\
         assert(type(hs.status) == \"string\", \"hs.status must be a string\")\n\
         assert(hs.message == nil or type(hs.message) == \"string\", \"hs.message must be a string\")\n\
         io.write(hs.status, \"\\t\", hs.message or \"\", \"\\n\")\n",
        lua_value(obj),
        lua_string(&script_path().to_string_lossy()),
    );
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("argocd_health_{name}.lua"));
    std::fs::write(&file, program).expect("write the Lua driver");
    let output = match Command::new(LUA).arg(&file).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{LUA}` is not installed; install the Debian package `{LUA}` \
             (apt-get install lua5.1; scripts/test.sh does this)"
        ),
        Err(e) => panic!("cannot run {LUA}: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{LUA} failed for {name}: {stderr}\nstdout: {stdout}"
    );
    let line = stdout.trim_end_matches('\n');
    let (status, message) = line
        .split_once('\t')
        .unwrap_or_else(|| panic!("unexpected output for {name}: {stdout:?}"));
    let health = Health {
        status: status.to_owned(),
        message: message.to_owned(),
    };
    assert!(
        ["Healthy", "Progressing", "Degraded", "Suspended", "Missing"]
            .contains(&health.status.as_str()),
        "{name}: not an Argo CD health status: {health:?}"
    );
    health
}

/// An `ApiKeyPair` at `generation` with the given status (`None`: never reconciled).
fn key_pair(generation: i64, status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "keypairs.dev/v1alpha1",
        "kind": "ApiKeyPair",
        "metadata": {"name": "ci", "namespace": "team-a", "generation": generation},
        "spec": {"providerRef": {"name": "threatwinds"}, "secretName": "ci-key"},
    });
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

/// A reconciled status at `generation` whose Ready condition has `status` and `reason`.
fn with_ready(generation: i64, status: &str, reason: &str, message: &str) -> Value {
    key_pair(
        generation,
        Some(json!({
            "observedGeneration": generation,
            "conditions": [condition("Ready", status, reason, message, generation)],
            "keyID": "kp-1",
            "expireAt": "2027-01-01T00:00:00Z",
            "verified": true,
        })),
    )
}

fn assert_health(name: &str, obj: &Value, status: &str, message_contains: &str) {
    let h = health(name, obj);
    assert_eq!(h.status, status, "{name}: {h:?}");
    assert!(
        h.message.contains(message_contains),
        "{name}: message {:?} lacks {message_contains:?}",
        h.message
    );
}

#[test]
fn no_status_is_progressing() {
    assert_health(
        "no_status",
        &key_pair(1, None),
        "Progressing",
        "Waiting for the operator",
    );
}

#[test]
fn empty_status_is_progressing() {
    assert_health(
        "empty_status",
        &key_pair(1, Some(json!({}))),
        "Progressing",
        "Waiting for the operator",
    );
}

#[test]
fn conditions_without_ready_are_progressing() {
    let obj = key_pair(
        2,
        Some(json!({
            "observedGeneration": 2,
            "conditions": [condition("Verified", "False", reason::AWAITING_VERIFICATION_CODE, "waiting for the code", 2)],
        })),
    );
    assert_health(
        "without_ready",
        &obj,
        "Progressing",
        "Waiting for the operator",
    );
}

#[test]
fn ready_is_healthy() {
    assert_health(
        "ready",
        &with_ready(
            3,
            "True",
            reason::READY,
            "key pair kp-1 is in Secret ci-key",
        ),
        "Healthy",
        "key pair kp-1 is in Secret ci-key",
    );
}

/// Issue 8: a key in its grace period, or whose renewal waits for its code, still serves.
#[test]
fn a_rotation_in_progress_is_healthy() {
    let late = "key pair kp-1 serves until it expires; its renewal kp-2 waits for the emailed verification code";
    assert_health(
        "renewal awaiting its code",
        &with_ready(5, "True", reason::RENEWAL_AWAITING_VERIFICATION, late),
        "Healthy",
        late,
    );
    let mut grace = with_ready(
        5,
        "True",
        reason::READY,
        "key pair kp-2 is in the Secret web",
    );
    grace["status"]["previousKey"] =
        json!({"keyID": "kp-1", "deleteAfter": "2026-01-01T00:10:00Z"});
    assert_health(
        "grace period",
        &grace,
        "Healthy",
        "key pair kp-2 is in the Secret web",
    );
}

#[test]
fn disabled_on_purpose_is_healthy() {
    assert_health(
        "disabled",
        &with_ready(3, "True", reason::DISABLED, "disabled as spec.enabled asks"),
        "Healthy",
        "disabled as spec.enabled asks",
    );
}

#[test]
fn replacement_pending_is_healthy_even_with_verified_false() {
    let obj = key_pair(
        4,
        Some(json!({
            "observedGeneration": 4,
            "conditions": [
                condition("Ready", "True", reason::REPLACEMENT_PENDING, "the old key serves while the new one waits for verification", 4),
                condition("Verified", "False", reason::AWAITING_VERIFICATION_CODE, "waiting for the emailed code", 4),
            ],
            "keyID": "kp-1",
            "verified": true,
            "pendingKey": {"keyID": "kp-2"},
        })),
    );
    assert_health("replacement_pending", &obj, "Healthy", "the old key serves");
}

#[test]
fn awaiting_verification_code_is_progressing() {
    assert_health(
        "awaiting_code",
        &with_ready(
            1,
            "False",
            reason::AWAITING_VERIFICATION_CODE,
            "waiting for the emailed verification code",
        ),
        "Progressing",
        "waiting for the emailed verification code",
    );
}

#[test]
fn verification_code_missing_is_progressing() {
    assert_health(
        "code_missing",
        &with_ready(
            1,
            "False",
            reason::VERIFICATION_CODE_MISSING,
            "Secret ci-code not found",
        ),
        "Progressing",
        "Secret ci-code not found",
    );
}

#[test]
fn verification_code_rejected_is_degraded() {
    assert_health(
        "code_rejected",
        &with_ready(
            1,
            "False",
            reason::VERIFICATION_CODE_REJECTED,
            "ThreatWinds rejected the code",
        ),
        "Degraded",
        "ThreatWinds rejected the code",
    );
}

#[test]
fn provider_not_found_is_degraded() {
    assert_health(
        "provider_not_found",
        &with_ready(
            1,
            "False",
            reason::PROVIDER_NOT_FOUND,
            "KeyPairProvider threatwinds not found",
        ),
        "Degraded",
        "KeyPairProvider threatwinds not found",
    );
}

#[test]
fn expired_is_degraded() {
    assert_health(
        "expired",
        &with_ready(
            5,
            "False",
            reason::EXPIRED,
            "expired at 2026-01-01T00:00:00Z",
        ),
        "Degraded",
        "expired at 2026-01-01T00:00:00Z",
    );
}

#[test]
fn secret_conflict_is_degraded() {
    assert_health(
        "secret_conflict",
        &with_ready(
            1,
            "False",
            reason::SECRET_CONFLICT,
            "Secret ci-key exists and is not owned by this ApiKeyPair",
        ),
        "Degraded",
        "Secret ci-key exists and is not owned",
    );
}

#[test]
fn stale_observed_generation_is_progressing_even_when_ready() {
    let mut obj = with_ready(3, "True", reason::READY, "ready at generation 3");
    obj["metadata"]["generation"] = json!(4);
    assert_health(
        "stale_ready",
        &obj,
        "Progressing",
        "Waiting for the operator",
    );
}

#[test]
fn stale_observed_generation_hides_an_old_failure() {
    let mut obj = with_ready(3, "False", reason::INVALID_SPEC, "the old spec was bad");
    obj["metadata"]["generation"] = json!(4);
    assert_health(
        "stale_failure",
        &obj,
        "Progressing",
        "Waiting for the operator",
    );
}

#[test]
fn stale_ready_condition_is_progressing() {
    let mut obj = with_ready(4, "True", reason::READY, "ready at generation 3");
    obj["status"]["conditions"][0]["observedGeneration"] = json!(3);
    assert_health(
        "stale_condition",
        &obj,
        "Progressing",
        "Waiting for the operator",
    );
}

#[test]
fn ready_unknown_is_progressing() {
    assert_health(
        "ready_unknown",
        &with_ready(1, "Unknown", reason::PROGRESSING, "creating the key pair"),
        "Progressing",
        "creating the key pair",
    );
}

#[test]
fn empty_message_falls_back_to_something_readable() {
    let h = health(
        "empty_message_degraded",
        &with_ready(1, "False", reason::RATE_LIMITED, ""),
    );
    assert_eq!(h.status, "Degraded");
    assert_eq!(h.message, reason::RATE_LIMITED);
}

#[test]
fn messages_pass_through_untouched() {
    let message = "quote \" backslash \\ newline\n tab\t ünïcode [[ ]] %s";
    let h = health(
        "odd_message",
        &with_ready(1, "False", reason::REMOTE_REJECTED, message),
    );
    assert_eq!(h.status, "Degraded");
    assert_eq!(h.message, message);
}

/// The health of `Ready=False` for every reason in `src/conditions.rs`. A new reason fails
/// this test until it is placed here, so its Argo CD health is a decision, not a default.
const READY_FALSE: &[(&str, &str)] = &[
    (reason::READY, "Degraded"),
    (reason::PROGRESSING, "Progressing"),
    (reason::CREDENTIALS_VALID, "Degraded"),
    (reason::CREDENTIALS_MISSING, "Degraded"),
    (reason::CREDENTIALS_REJECTED, "Degraded"),
    (reason::PROVIDER_NOT_FOUND, "Degraded"),
    (reason::PROVIDER_NOT_ALLOWED, "Degraded"),
    (reason::PROVIDER_NOT_READY, "Degraded"),
    (reason::INVALID_SPEC, "Degraded"),
    (reason::REMOTE_REJECTED, "Degraded"),
    (reason::RATE_LIMITED, "Degraded"),
    (reason::PERMISSION_DENIED, "Degraded"),
    (reason::INCONSISTENT_STATUS, "Degraded"),
    (reason::REMOTE_UNAVAILABLE, "Degraded"),
    (reason::UNEXPECTED_RESPONSE, "Degraded"),
    (reason::SECRET_CONFLICT, "Degraded"),
    (reason::SECRET_LOST, "Progressing"),
    (reason::REMOTE_KEY_MISSING, "Progressing"),
    (reason::EXPIRED, "Degraded"),
    (reason::DISABLED, "Degraded"),
    (reason::AWAITING_VERIFICATION_CODE, "Progressing"),
    (reason::VERIFICATION_CODE_MISSING, "Progressing"),
    (reason::VERIFICATION_CODE_REJECTED, "Degraded"),
    (reason::VERIFIED, "Degraded"),
    (reason::CREATE_AMBIGUOUS, "Degraded"),
    (reason::REPLACEMENT_PENDING, "Degraded"),
    (reason::RENEWAL_AWAITING_VERIFICATION, "Degraded"),
    (reason::RESTARTED, "Degraded"),
    (reason::IMPORT_REJECTED, "Degraded"),
    (reason::RESTART_FAILED, "Degraded"),
];

/// The string values of the `pub const`s inside `pub mod reason` of `src/conditions.rs`.
fn vocabulary() -> Vec<String> {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/conditions.rs"))
            .expect("read src/conditions.rs");
    let start = source
        .find("pub mod reason {")
        .expect("src/conditions.rs has `pub mod reason`");
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("end of `mod reason`")];
    body.lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .map(|decl| {
            let value = decl.split('"').nth(1).expect("a string constant");
            value.to_owned()
        })
        .collect()
}

#[test]
fn every_reason_has_a_decided_health() {
    let mut decided: Vec<String> = READY_FALSE.iter().map(|(r, _)| (*r).to_owned()).collect();
    decided.sort();
    let mut known = vocabulary();
    known.sort();
    assert_eq!(
        decided, known,
        "READY_FALSE in this test must list exactly the reasons of src/conditions.rs; \
         decide the Argo CD health of a new reason and update apikeypair-health.lua"
    );
    for (reason, expected) in READY_FALSE {
        let message = format!("{reason} happened");
        assert_health(
            &format!("false_{reason}"),
            &with_ready(2, "False", reason, &message),
            expected,
            &message,
        );
    }
}

#[test]
fn ready_true_is_healthy_for_every_reason_it_is_written_with() {
    for reason in [reason::READY, reason::DISABLED, reason::REPLACEMENT_PENDING] {
        let message = format!("{reason} message");
        assert_health(
            &format!("true_{reason}"),
            &with_ready(2, "True", reason, &message),
            "Healthy",
            &message,
        );
    }
}

#[test]
fn argocd_cm_patch_embeds_the_script_verbatim() {
    let script = std::fs::read_to_string(script_path()).expect("read the health script");
    let patch = std::fs::read_to_string(gitops_dir().join("argocd-cm-patch.yaml"))
        .expect("read argocd-cm-patch.yaml");
    let patch: serde_yaml::Value = serde_yaml::from_str(&patch).expect("patch is YAML");
    assert_eq!(patch["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(patch["metadata"]["name"].as_str(), Some("argocd-cm"));
    let embedded = patch["data"]["resource.customizations.health.keypairs.dev_ApiKeyPair"]
        .as_str()
        .expect(
            "argocd-cm-patch.yaml has data.resource.customizations.health.keypairs.dev_ApiKeyPair",
        );
    assert!(
        embedded == script,
        "argocd-cm-patch.yaml does not embed apikeypair-health.lua verbatim; \
         copy the script into it (indented by four spaces)"
    );
}
