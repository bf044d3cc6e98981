//! Decisions, as pure functions over (state, spec, observation): given the parsed
//! [`KeyState`], the Secret and what the provider reported, what happens next. No I/O
//! here, so every branch of the lifecycle is reachable from unit tests without a cluster
//! or a provider; [`super::lifecycle`] executes the decisions.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};

use crate::conditions::{reason, status};
use crate::crd::{
    ApiKeyPair, ApiKeyPairStatus, DeletionPolicy, PreviousKey, ProviderRef, RenewalStrategy,
    ReplacementStage,
};
use crate::provider::{ProviderError, ProviderKind, RemoteKeyPair, UpdateKeyPair};

use super::secret::{Credentials, SecretView};
use super::state::{Intent, KeyRecord, KeyState, Replacement, Verification};

/// The structural next step of an `ApiKeyPair` reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A Secret of the wanted name exists and is not ours: touch nothing.
    SecretConflict,
    /// No key and no attempt: create the first key.
    Create,
    /// A create was interrupted: find what it created before doing anything else.
    Recover {
        /// The interrupted attempt.
        intent: Intent,
        /// The key recorded before it.
        previous: Option<KeyRecord>,
    },
    /// A verified replacement is in the Secret: retire the old key, record the new one.
    FinishPromotion {
        /// The key being retired.
        old: KeyRecord,
        /// The key taking over.
        new: KeyRecord,
    },
    /// The key is in place: observe it, apply updates, handle verification.
    Steady {
        /// The serving key.
        key: KeyRecord,
        /// A replacement waiting beside it.
        replacement: Option<Replacement>,
    },
}

/// Whether a Secret the watch cache does not hold must be confirmed by a fresh read.
/// Before the first create, the caches saying that no Secret of the name exists (this
/// operator's Secrets, and the index of every other Secret) is enough: the worst a lagging
/// cache allows is the race a fresh read leaves open too (a Secret created between the read
/// and the write). Once a key exists, a missing Secret means lost credentials and starts a
/// replacement: only a fresh read may justify that.
pub fn confirm_missing_secret(state: &KeyState, caches_say_absent: bool) -> bool {
    !(*state == KeyState::Empty && caches_say_absent)
}

/// Picks the structural next step from the lifecycle state and the Secret.
pub fn next_step(state: &KeyState, secret: &SecretView) -> Step {
    if *secret == SecretView::Foreign {
        return Step::SecretConflict;
    }
    match state.clone() {
        KeyState::Empty => Step::Create,
        KeyState::Creating { intent, previous } => Step::Recover { intent, previous },
        KeyState::Active {
            key,
            replacement: Some(r),
        } if r.stage == ReplacementStage::Promotion
            || secret.current().map(|c| c.api_key.as_str()) == Some(r.key.api_key.as_str()) =>
        {
            Step::FinishPromotion {
                old: key,
                new: r.key,
            }
        }
        KeyState::Active { key, replacement } => Step::Steady { key, replacement },
    }
}

/// Whether the remote key an import names is the one whose credentials the Secret holds.
/// `checked` is the provider's answer to a lookup with those credentials (ThreatWinds
/// check of a verified key) or by id (Datonis, which returns the secret too).
pub fn import_matches(
    key_id: &str,
    credentials: &Credentials,
    remote: &RemoteKeyPair,
) -> Result<(), String> {
    use secrecy::ExposeSecret;
    if remote.key_id != key_id {
        return Err(format!(
            "the credentials in the Secret belong to key pair {}, not {key_id}",
            remote.key_id
        ));
    }
    if remote.api_key != credentials.api_key {
        return Err(format!(
            "the API key in the Secret is not the one of key pair {key_id}"
        ));
    }
    let secret_differs = remote
        .api_secret
        .as_ref()
        .is_some_and(|s| s.expose_secret() != credentials.api_secret.expose_secret());
    if secret_differs {
        return Err(format!(
            "the API secret in the Secret is not the one of key pair {key_id}"
        ));
    }
    Ok(())
}

/// Whether the spec may be applied to what the status records, or is an edit the
/// operator refuses (it would strand the key at the old provider).
pub fn refused_edit(akp: &ApiKeyPair, status: &ApiKeyPairStatus) -> Option<String> {
    let recorded = status.provider_ref.as_ref()?;
    let owns_a_key = status.key_id.is_some() || status.pending_create.is_some();
    (owns_a_key && *recorded != akp.spec.provider_ref).then(|| {
        format!(
            "spec.providerRef changed from {:?} {} to {:?} {} while key pair {} lives at the former; set it back, or delete this ApiKeyPair (its key is deleted where it lives) and create a new one",
            recorded.kind,
            recorded.name,
            akp.spec.provider_ref.kind,
            akp.spec.provider_ref.name,
            status.key_id.as_deref().unwrap_or("(being created)")
        )
    })
}

/// The provider reference to work with: the one recorded with the key while the resource
/// owns one (an edit is refused, see [`refused_edit`]), else the spec's.
pub fn provider_ref_in_use(akp: &ApiKeyPair) -> &ProviderRef {
    let recorded = akp.status.as_ref().and_then(|s| {
        let owns_a_key = s.key_id.is_some() || s.pending_create.is_some();
        s.provider_ref.as_ref().filter(|_| owns_a_key)
    });
    recorded.unwrap_or(&akp.spec.provider_ref)
}

/// What to do about the Secret of a key that is in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRepair {
    /// The Secret holds the key's credentials.
    Intact,
    /// Rewrite the Secret with the secret the provider still returns (Datonis).
    RestoreFromProvider,
    /// Rewrite the Secret from the status (the API key) and the Secret's own secret.
    RestoreApiKey,
    /// The secret is gone for good (ThreatWinds shows it once): replace the key.
    Lost,
    /// The replacement's secret is gone (ThreatWinds): abandon the replacement.
    ReplacementLost,
    /// The Secret already serves the verified replacement: finish the promotion.
    Promoted,
}

/// Decides how to repair the Secret of a key (and of a waiting replacement).
pub fn secret_repair(
    kind: ProviderKind,
    key: &KeyRecord,
    replacement: Option<&Replacement>,
    secret: &SecretView,
) -> SecretRepair {
    let promoted = |c: &Credentials| replacement.is_some_and(|r| r.key.api_key == c.api_key);
    let current = match (secret.current(), kind) {
        (Some(c), _) if c.api_key == key.api_key => SecretRepair::Intact,
        (Some(c), _) if promoted(c) => return SecretRepair::Promoted,
        (_, ProviderKind::Datonis) => SecretRepair::RestoreFromProvider,
        // Only the public half was edited: the secret is still there; the check that
        // follows tells whether it still matches.
        (Some(_), ProviderKind::Threatwinds) => SecretRepair::RestoreApiKey,
        (None, ProviderKind::Threatwinds) => SecretRepair::Lost,
    };
    let replacement_lost = replacement.is_some_and(|r| {
        secret.pending().map(|p| p.api_key.as_str()) != Some(r.key.api_key.as_str())
    });
    match current {
        SecretRepair::Intact if replacement_lost => SecretRepair::ReplacementLost,
        other => other,
    }
}

/// How to look a serving key up at its provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// ThreatWinds check endpoint with the key's own credentials: only for verified keys,
    /// since the docs say a key must be verified before it is used.
    WithOwnCredentials,
    /// The session's list, matched by key id (ThreatWinds keys awaiting their code).
    InSessionList,
    /// By id (Datonis `GET /key_pairs/{key}`).
    ById,
}

/// The fingerprint by which Datonis keys of one create attempt are found again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CreateFingerprint {
    /// The role the key gets.
    pub role: Option<String>,
    /// The expiry date asked for.
    pub expiry: chrono::NaiveDate,
}

/// The fingerprint of a create attempt made now with `spec`'s role and validity.
pub fn create_fingerprint(
    akp: &ApiKeyPair,
    role: Option<&str>,
    days: Option<u32>,
    on: NaiveDate,
) -> CreateFingerprint {
    let spec_role = akp.spec.datonis.as_ref().map(|d| d.role_key.as_str());
    CreateFingerprint {
        role: role.or(spec_role).map(str::to_owned),
        expiry: datonis_expiry(on, days.unwrap_or(akp.spec.validity_days)),
    }
}

/// How to observe `key` at a `kind` provider.
pub fn lookup_for(kind: ProviderKind, key: &KeyRecord) -> Lookup {
    match (kind, &key.verification) {
        (ProviderKind::Datonis, _) => Lookup::ById,
        (ProviderKind::Threatwinds, Verification::Verified) => Lookup::WithOwnCredentials,
        (ProviderKind::Threatwinds, _) => Lookup::InSessionList,
    }
}

/// What one observation of the serving key means.
#[derive(Clone, Debug)]
pub enum Observation {
    /// The provider reported the key.
    Found(RemoteKeyPair),
    /// A complete, fresh read says the key is gone.
    Missing,
    /// The answer is ambiguous (a 404 or 401 to the key's own credentials): confirm with
    /// the session's list before acting; never delete on one such answer.
    Confirm(ProviderError),
    /// The call failed: report and retry.
    Failed(ProviderError),
}

/// The observation outcome table.
pub fn observation(lookup: Lookup, result: Result<RemoteKeyPair, ProviderError>) -> Observation {
    match (lookup, result) {
        (_, Ok(remote)) => Observation::Found(remote),
        (Lookup::WithOwnCredentials, Err(e @ ProviderError::NotFound { .. }))
        | (Lookup::WithOwnCredentials, Err(e @ ProviderError::Unauthorized { .. }))
        | (Lookup::ById, Err(e @ ProviderError::NotFound { .. })) => Observation::Confirm(e),
        (_, Err(ProviderError::NotFound { .. })) => Observation::Missing,
        (_, Err(error)) => Observation::Failed(error),
    }
}

/// What the session's list says after an ambiguous check of a key's own credentials.
#[derive(Clone, Debug)]
pub enum Confirmation {
    /// The key is not in the list: it is gone.
    Missing,
    /// The key exists but refuses the credentials the Secret holds: they are lost.
    SecretMismatch,
    /// The key exists and is not verified (the check refused it for that): observe it.
    Unverified(Box<RemoteKeyPair>),
    /// The key exists and is verified, yet the check did not find it: nothing is decided on
    /// that; the check is retried.
    Inconclusive,
}

/// Decides what the session's list says about `key_id` after the check answered `error`.
/// Only a refusal of the credentials (401) of a key that exists and is verified means the
/// secret no longer matches.
pub fn confirmation(key_id: &str, listed: &[RemoteKeyPair], error: &ProviderError) -> Confirmation {
    let refused = matches!(error, ProviderError::Unauthorized { .. });
    match listed.iter().find(|k| k.key_id == key_id) {
        None => Confirmation::Missing,
        Some(k) if k.verified == Some(false) => Confirmation::Unverified(Box::new(k.clone())),
        Some(_) if refused => Confirmation::SecretMismatch,
        Some(_) => Confirmation::Inconclusive,
    }
}

/// Whether a failed reconcile leaves `Ready=True` as it is: a transient failure (the
/// provider or the API server unavailable, throttling) does not make the credentials the
/// Secret serves any less usable, and flipping `Ready` on every blip would flap health
/// checks (Argo CD shows Degraded) and cost two status writes per blip. The failure goes
/// in a Warning event; a failure that needs someone (credentials refused, a bad spec) and
/// any failure after a spec change still sets `Ready=False`.
pub fn failure_keeps_ready(ready_status: Option<&str>, failure_reason: &str) -> bool {
    let transient = [
        reason::REMOTE_UNAVAILABLE,
        reason::RATE_LIMITED,
        reason::PROGRESSING,
    ]
    .contains(&failure_reason);
    transient && ready_status == Some(status::TRUE)
}

/// Whether the provider returned a secret for the serving key (Datonis does) that the
/// Secret does not hold: someone overwrote or emptied it, and the provider's copy wins.
pub fn provider_secret_differs(remote: &RemoteKeyPair, serving: Option<&Credentials>) -> bool {
    use secrecy::ExposeSecret;
    remote.api_secret.as_ref().is_some_and(|secret| {
        serving.is_none_or(|c| {
            c.api_key != remote.api_key || c.api_secret.expose_secret() != secret.expose_secret()
        })
    })
}

/// What the session's list says of a key whose code was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRefusedCode {
    /// Verified: an earlier submission of the code went through and its answer was lost.
    Verified,
    /// Not listed: the key was deleted behind the operator's back, and its codes with it.
    Missing,
    /// Listed and not verified: the refusal stands.
    Refused,
}

/// Reads a complete list of the session's keys after a code for `key_id` was refused.
pub fn after_refused_code(key_id: &str, listed: &[RemoteKeyPair]) -> AfterRefusedCode {
    match listed.iter().find(|k| k.key_id == key_id) {
        None => AfterRefusedCode::Missing,
        Some(k) if k.verified == Some(true) => AfterRefusedCode::Verified,
        Some(_) => AfterRefusedCode::Refused,
    }
}

/// Whether a new-code request that answered `error` refused the key's own credentials:
/// only when it is a 401 and the session (which the request also carries) still lists the
/// key. A key that is not listed is left to the next observation to confirm gone.
pub fn new_code_refused_credentials(
    key_id: &str,
    listed: &[RemoteKeyPair],
    error: &ProviderError,
) -> bool {
    matches!(error, ProviderError::Unauthorized { .. }) && listed.iter().any(|k| k.key_id == key_id)
}

/// Whether a failed create attempt's intent may be cleared: only a definite refusal
/// proves that nothing was created. Anything else (5xx, timeout, a 2xx that cannot be
/// decoded) may have committed and is left for recovery.
pub fn create_error_clears_intent(error: &ProviderError) -> bool {
    !error.may_have_committed()
}

/// The next verification action for a key that waits for its code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerificationStep {
    /// Ask the provider to email a new code: on request, or because the code id was lost
    /// (an interrupted create adopted its key without it).
    RequestNewCode {
        /// Whether a user asked (annotation) rather than the operator needing one.
        requested: bool,
    },
    /// No `spec.verification.codeSecretRef` to read a code from.
    NoCodeSource,
    /// The code Secret has no code (yet).
    CodeMissing,
    /// This code was submitted for this code id and rejected: wait for another.
    AlreadyRejected,
    /// Submit the code.
    Submit {
        /// The code id to submit under.
        code_id: String,
        /// Fingerprint to record, so the code is submitted once.
        fingerprint: String,
    },
}

/// The verification protocol for a key awaiting its code, before reading the code.
pub fn verification_start(
    code_id: Option<&str>,
    new_code_annotation: Option<&str>,
    acted_on: Option<&str>,
    has_code_source: bool,
) -> Result<String, VerificationStep> {
    if new_code_annotation.is_some() && new_code_annotation != acted_on {
        return Err(VerificationStep::RequestNewCode { requested: true });
    }
    let Some(code_id) = code_id else {
        return Err(VerificationStep::RequestNewCode { requested: false });
    };
    if !has_code_source {
        return Err(VerificationStep::NoCodeSource);
    }
    Ok(code_id.to_owned())
}

/// The verification protocol once the code Secret is read.
pub fn verification_submit(
    code_id: String,
    code: Option<&str>,
    submitted_fingerprint: Option<&str>,
) -> VerificationStep {
    let Some(code) = code.filter(|c| !c.is_empty()) else {
        return VerificationStep::CodeMissing;
    };
    let fingerprint = code_fingerprint(&code_id, code);
    if submitted_fingerprint == Some(fingerprint.as_str()) {
        return VerificationStep::AlreadyRejected;
    }
    VerificationStep::Submit {
        code_id,
        fingerprint,
    }
}

/// What the answer to a code submission means.
#[derive(Clone, Debug)]
pub enum VerifyOutcome {
    /// The key is verified.
    Verified,
    /// The provider rejected this code: remember it, wait for another.
    Rejected(ProviderError),
    /// Not decided (dead session, outage): forget the submission and try again later.
    NotDelivered(ProviderError),
}

/// The verify outcome table: only a rejection the client confirmed against a live
/// session counts against the code.
pub fn verify_outcome(result: Result<(), ProviderError>) -> VerifyOutcome {
    match result {
        Ok(()) => VerifyOutcome::Verified,
        Err(e @ ProviderError::CodeRejected { .. }) => VerifyOutcome::Rejected(e),
        Err(e) => VerifyOutcome::NotDelivered(e),
    }
}

/// What happens to the remote key when the resource is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Delete every key the resource owns at the provider.
    DeleteRemote,
    /// Disable every key the resource owns at the provider (Datonis), then release the
    /// Secret like an orphan.
    DisableRemote,
    /// Leave the remote key and release the Secret (it keeps the only copy of a
    /// ThreatWinds secret, so garbage collection must not take it).
    Orphan {
        /// Whether the force-orphan annotation (not the policy) asked for it.
        forced: bool,
    },
}

/// The deletion policy.
pub fn deletion(policy: DeletionPolicy, force_orphan: bool) -> Deletion {
    match (force_orphan, policy) {
        (true, _) => Deletion::Orphan { forced: true },
        (false, DeletionPolicy::Orphan) => Deletion::Orphan { forced: false },
        (false, DeletionPolicy::Delete) => Deletion::DeleteRemote,
        (false, DeletionPolicy::Disable) => Deletion::DisableRemote,
    }
}

/// Parses a duration of the spec (`720h`, `30d`, `1h30m`).
pub fn parse_duration(field: &str, text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{field} {text:?} is not a duration such as 720h or 30d: {e}"))
}

/// How long before expiry a key is renewed: `spec.renewBefore`, or a third of the
/// validity and at least a day; always shorter than the validity.
pub fn renew_before(akp: &ApiKeyPair) -> Result<ChronoDuration, String> {
    let validity = ChronoDuration::days(i64::from(akp.spec.validity_days));
    let wanted = match &akp.spec.renew_before {
        Some(text) => ChronoDuration::from_std(parse_duration("spec.renewBefore", text)?)
            .map_err(|e| format!("spec.renewBefore {text:?} is too long: {e}"))?,
        None => (validity / 3).max(ChronoDuration::days(1)),
    };
    if wanted >= validity {
        return Err(format!(
            "spec.renewBefore ({}) must be shorter than the validity ({} days)",
            akp.spec
                .renew_before
                .as_deref()
                .unwrap_or("a third of the validity"),
            akp.spec.validity_days
        ));
    }
    Ok(wanted)
}

/// How long a replaced key stays valid: `spec.rotation.gracePeriod`, default 10 minutes.
pub fn grace_period(akp: &ApiKeyPair) -> Result<ChronoDuration, String> {
    let text = akp
        .spec
        .rotation
        .as_ref()
        .and_then(|r| r.grace_period.as_deref());
    let grace = match text {
        Some(text) => parse_duration("spec.rotation.gracePeriod", text)?,
        None => std::time::Duration::from_secs(600),
    };
    ChronoDuration::from_std(grace)
        .map_err(|e| format!("spec.rotation.gracePeriod is too long: {e}"))
}

/// How often a key pair is checked: `spec.checkInterval`, or the operator's default (a bad
/// value is reported by [`invalid_spec`]).
pub fn check_interval(akp: &ApiKeyPair, default: std::time::Duration) -> std::time::Duration {
    let text = akp.spec.check_interval.as_deref();
    text.and_then(|t| parse_duration("spec.checkInterval", t).ok())
        .unwrap_or(default)
}

/// The spec mistakes the schema cannot catch, for a `kind` provider.
pub fn invalid_spec(akp: &ApiKeyPair, kind: ProviderKind) -> Option<String> {
    let datonis_only = |what: &str| format!("{what} needs a Datonis provider");
    let extend = akp.spec.renewal.as_ref().map(|r| r.strategy) == Some(RenewalStrategy::Extend);
    match kind {
        ProviderKind::Datonis if akp.spec.datonis.is_none() => {
            return Some("a Datonis provider needs spec.datonis.roleKey".into());
        }
        ProviderKind::Threatwinds if extend => {
            return Some(datonis_only("renewal.strategy Extend"));
        }
        ProviderKind::Threatwinds if akp.spec.deletion_policy == DeletionPolicy::Disable => {
            return Some(datonis_only("deletionPolicy Disable"));
        }
        _ => {}
    }
    let checks = [
        super::secret::template_problem(akp),
        renew_before(akp).err(),
        grace_period(akp).err(),
        akp.spec
            .check_interval
            .as_deref()
            .and_then(|t| parse_duration("spec.checkInterval", t).err()),
    ];
    checks.into_iter().flatten().next()
}

/// When a key that expires at `expire_at` is renewed.
pub fn renewal_time(expire_at: DateTime<Utc>, renew_before: ChronoDuration) -> DateTime<Utc> {
    expire_at - renew_before
}

/// Why a key in place is rotated now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationCause {
    /// The `keypairs.dev/rotate` annotation has a value not acted on yet.
    Requested(String),
    /// The spec asks for a key the provider cannot update (ThreatWinds name or validity).
    SpecChanged,
    /// The renewal time has come.
    Renewal,
}

/// Whether a key in place (with no replacement waiting) is rotated now, and why.
pub fn rotation_due(
    kind: ProviderKind,
    akp: &ApiKeyPair,
    status: &ApiKeyPairStatus,
    rotate_annotation: Option<&str>,
    now: DateTime<Utc>,
) -> Option<RotationCause> {
    if let Some(value) = rotate_annotation
        && Some(value) != status.rotation_request.as_deref()
    {
        return Some(RotationCause::Requested(value.to_owned()));
    }
    if kind == ProviderKind::Threatwinds && needs_replacement(akp, status) {
        return Some(RotationCause::SpecChanged);
    }
    // Not while the previous rotation's key is in its grace period: a new key can expire
    // on the same day as the one it replaced (Datonis counts whole days), and must not
    // renew again at once.
    if status.previous_key.is_some() {
        return None;
    }
    let renewal = status.renewal_time.as_deref().and_then(parse_time)?;
    (now >= renewal).then_some(RotationCause::Renewal)
}

/// How a rotation is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationAction {
    /// A replacement waits in the Secret's pending slot for its code (ThreatWinds).
    Replace,
    /// A new key goes straight into the Secret; the previous one has a grace period.
    Rotate,
    /// The key in use gets a later expiry date (Datonis `Extend`, on renewal only).
    Extend,
}

/// The rotation action for a `kind` provider.
pub fn rotation_action(
    kind: ProviderKind,
    cause: &RotationCause,
    akp: &ApiKeyPair,
) -> RotationAction {
    let strategy = akp
        .spec
        .renewal
        .as_ref()
        .map(|r| r.strategy)
        .unwrap_or_default();
    match (kind, cause, strategy) {
        (ProviderKind::Threatwinds, _, _) => RotationAction::Replace,
        (ProviderKind::Datonis, RotationCause::Renewal, RenewalStrategy::Extend) => {
            RotationAction::Extend
        }
        (ProviderKind::Datonis, _, _) => RotationAction::Rotate,
    }
}

/// The expiry date a Datonis `Extend` renewal sets: `validityDays` from today, or from the
/// current expiry date if that is later (so a renewal always moves the renewal time on).
/// The provider reports an expiry date as midnight of the account's zone in UTC, so the
/// date is read 12 hours on.
pub fn extended_expiry(
    now: DateTime<Utc>,
    expire_at: Option<DateTime<Utc>>,
    validity_days: u32,
) -> NaiveDate {
    let today = now.date_naive();
    let current = expire_at.map(|t| (t + ChronoDuration::hours(12)).date_naive());
    let base = current.filter(|c| *c > today).unwrap_or(today);
    base + ChronoDuration::days(i64::from(validity_days))
}

/// Whether a renewal that still waits for its code is late: halfway from the renewal time
/// to the expiry, well before the key in use expires.
pub fn renewal_overdue(
    renewal_time: Option<DateTime<Utc>>,
    expire_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    match (renewal_time, expire_at) {
        (Some(renewal), Some(expiry)) => now >= renewal + (expiry - renewal) / 2,
        _ => false,
    }
}

/// Whether the previous key's grace period is over.
pub fn previous_due(previous: &PreviousKey, now: DateTime<Utc>) -> bool {
    parse_time(&previous.delete_after).is_none_or(|t| t <= now)
}

/// Whether the consumers must be restarted for the key the Secret now serves: only after
/// a change (the first key has no consumer that used another one).
pub fn restart_due(akp: &ApiKeyPair, status: &ApiKeyPairStatus, serving: &str) -> RestartDue {
    if akp.spec.rollout_restart_targets.is_empty() {
        return RestartDue::No;
    }
    match status.consumers_restarted_for_key_id.as_deref() {
        None => RestartDue::RecordOnly,
        Some(done) if done == serving => RestartDue::No,
        Some(_) => RestartDue::Restart,
    }
}

/// What [`restart_due`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDue {
    /// Nothing to do.
    No,
    /// Remember the key the consumers start with.
    RecordOnly,
    /// Restart the targets, then remember the key.
    Restart,
}

/// Parses an RFC 3339 time from the status.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The facts the steady-state conditions are decided from.
#[derive(Clone, Debug)]
pub struct SteadyFacts<'a> {
    /// Provider kind.
    pub kind: ProviderKind,
    /// The serving key.
    pub key: &'a KeyRecord,
    /// A waiting replacement.
    pub replacement: Option<&'a Replacement>,
    /// Whether the key has expired.
    pub expired: bool,
    /// Whether the key is disabled (Datonis).
    pub disabled: bool,
    /// The verification step the key (or its replacement) is stuck at, if any.
    pub waiting: Option<&'static str>,
    /// Name of the Secret.
    pub secret_name: &'a str,
    /// When the key expires, as recorded.
    pub expire_at: Option<&'a str>,
    /// Whether the renewal is late ([`renewal_overdue`]) while the replacement still waits
    /// for its code.
    pub renewal_overdue: bool,
}

/// A condition as decided: status, reason, message.
pub type Decided = (&'static str, &'static str, String);

/// The Ready/Verified condition table of a key in place. `Verified` is `None` for
/// providers without verification.
pub fn steady_conditions(f: &SteadyFacts<'_>) -> (Decided, Option<Decided>) {
    let key = &f.key.key_id;
    let verified = (f.kind == ProviderKind::Threatwinds).then(|| {
        if f.key.verification.usable() {
            (
                status::TRUE,
                reason::VERIFIED,
                format!("key pair {key} is verified"),
            )
        } else {
            let why = f.waiting.unwrap_or(reason::AWAITING_VERIFICATION_CODE);
            (status::FALSE, why, verification_message(why))
        }
    });
    let ready = if f.expired {
        let at = f.expire_at.unwrap_or_default();
        (
            status::FALSE,
            reason::EXPIRED,
            format!("key pair {key} expired at {at}"),
        )
    } else if !f.key.verification.usable() {
        let why = f.waiting.unwrap_or(reason::AWAITING_VERIFICATION_CODE);
        (
            status::FALSE,
            why,
            format!("key pair {key} is not verified yet"),
        )
    } else if let Some(r) = f.replacement.filter(|_| f.renewal_overdue) {
        let at = f.expire_at.unwrap_or_default();
        let id = &r.key.key_id;
        let message = format!(
            "key pair {key} serves until it expires at {at}; its renewal {id} waits for the emailed verification code"
        );
        (status::TRUE, reason::RENEWAL_AWAITING_VERIFICATION, message)
    } else if let Some(r) = f.replacement {
        let waits = match r.stage {
            ReplacementStage::VerificationCode => "verification code",
            ReplacementStage::Promotion | ReplacementStage::Unknown => "promotion",
        };
        let id = &r.key.key_id;
        let message = format!("key pair {key} serves; replacement {id} waits for its {waits}");
        (status::TRUE, reason::REPLACEMENT_PENDING, message)
    } else if f.disabled {
        let message = format!("key pair {key} is disabled as the spec asks");
        (status::TRUE, reason::DISABLED, message)
    } else {
        let message = format!("key pair {key} is in the Secret {}", f.secret_name);
        (status::TRUE, reason::READY, message)
    };
    (ready, verified)
}

fn verification_message(reason_: &str) -> String {
    match reason_ {
        reason::VERIFICATION_CODE_REJECTED => {
            "the provider rejected the verification code; put the right code in the code Secret"
        }
        reason::VERIFICATION_CODE_MISSING => {
            "waiting for the emailed verification code in the code Secret"
        }
        _ => {
            "waiting for the emailed verification code; put it in a Secret and name it in spec.verification.codeSecretRef"
        }
    }
    .to_owned()
}

/// The outcome of looking for what an interrupted create attempt left behind.
#[derive(Clone, Debug)]
pub enum Recovery {
    /// The attempt completed as far as the Secret: record it in the status.
    Adopt(RemoteKeyPair),
    /// The attempt created a key whose secret the provider still returns (Datonis):
    /// write it to the Secret, then record it.
    AdoptWithProviderSecret(RemoteKeyPair),
    /// The attempt created keys whose secret never reached a Secret: delete them, then
    /// create anew.
    DeleteAndRetry(Vec<String>),
    /// Nothing was created: create anew.
    Retry,
}

/// How far around `startedAt` a Datonis key's `created_at` may be to count as an
/// attempt's: clock skew before, the create timeout plus rate-limit waits after.
pub const DATONIS_WINDOW_BEFORE: ChronoDuration = ChronoDuration::seconds(120);
/// See [`DATONIS_WINDOW_BEFORE`].
pub const DATONIS_WINDOW_AFTER: ChronoDuration = ChronoDuration::seconds(900);

/// The remote keys that could have been created by `attempt`.
///
/// ThreatWinds: the attempt's deterministic remote name identifies them exactly.
/// Datonis (no names): the fingerprint is role, expiry date, a `created_at` inside the
/// attempt's window, and not being referenced by any other `ApiKeyPair` (`referenced`).
pub fn attempt_candidates<'a>(
    kind: ProviderKind,
    attempt: &Intent,
    wanted_role: Option<&str>,
    wanted_expiry: Option<NaiveDate>,
    remote: &'a [RemoteKeyPair],
    referenced: &dyn Fn(&str) -> bool,
) -> Vec<&'a RemoteKeyPair> {
    match kind {
        // By the attempt's token, which ends the name: a provider that shortens or
        // normalizes the display part still keeps it recognizable.
        ProviderKind::Threatwinds => {
            let token = attempt.remote_name.as_deref().and_then(attempt_token);
            remote
                .iter()
                .filter(|k| token.is_some() && k.name.as_deref().and_then(attempt_token) == token)
                .collect()
        }
        ProviderKind::Datonis => {
            let started = attempt.started_at;
            let window = (started - DATONIS_WINDOW_BEFORE)..=(started + DATONIS_WINDOW_AFTER);
            remote
                .iter()
                .filter(|k| k.created_at.is_some_and(|t| window.contains(&t)))
                .filter(|k| wanted_role.is_none() || k.role_key.as_deref() == wanted_role)
                .filter(|k| match (wanted_expiry, k.expire_at) {
                    // The provider returns midnight of the account's zone in UTC, which
                    // can fall on the previous UTC day: allow one day either side.
                    (Some(want), Some(have)) => (have.date_naive() - want).num_days().abs() <= 1,
                    _ => true,
                })
                .filter(|k| !referenced(&k.key_id))
                .collect()
        }
    }
}

/// ThreatWinds keys of any attempt of this resource (named with its UID token) that the
/// status does not own: left by an attempt whose create committed after its recovery gave
/// up on it. Deleting them keeps I1 and I4 whatever the timing.
pub fn stray_attempt_keys<'a>(
    uid: &str,
    remote: &'a [RemoteKeyPair],
    owned: &[&str],
) -> Vec<&'a RemoteKeyPair> {
    let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    let prefix = format!("[{short}.");
    remote
        .iter()
        .filter(|k| {
            let token = k.name.as_deref().and_then(attempt_token);
            !short.is_empty() && token.is_some_and(|t| t.starts_with(&prefix))
        })
        .filter(|k| !owned.contains(&k.key_id.as_str()))
        .collect()
}

/// Decides what to do with the candidates of an interrupted attempt, given the API key the
/// Secret holds in the slot this attempt writes (current or pending).
///
/// Datonis keys have no names: every candidate has the role and expiry this resource asks
/// for and belongs to no other resource, so candidates are interchangeable. When several
/// interrupted attempts left keys (creates of one provider are serialized, so that takes
/// several crashes), each recovering resource adopts the oldest one left.
pub fn recover(
    kind: ProviderKind,
    candidates: &[&RemoteKeyPair],
    secret_api_key: Option<&str>,
) -> Recovery {
    if let Some(found) = candidates
        .iter()
        .find(|k| Some(k.api_key.as_str()) == secret_api_key)
    {
        return Recovery::Adopt((*found).clone());
    }
    match kind {
        _ if candidates.is_empty() => Recovery::Retry,
        ProviderKind::Threatwinds => {
            Recovery::DeleteAndRetry(candidates.iter().map(|k| k.key_id.clone()).collect())
        }
        ProviderKind::Datonis => candidates
            .iter()
            .min_by_key(|k| (k.created_at, k.key_id.clone()))
            .map_or(Recovery::Retry, |oldest| {
                Recovery::AdoptWithProviderSecret((*oldest).clone())
            }),
    }
}

/// The deterministic remote name of one create attempt (ThreatWinds): the display name
/// plus a token made of the resource's UID and the attempt number, so the next reconcile
/// can find exactly what this attempt created.
pub fn remote_name(base: &str, uid: &str, attempt: u32) -> String {
    let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("{base} [{short}.{attempt}]")
}

/// The display name a resource asks for: `spec.keyName`, or `<namespace>/<name>`.
pub fn base_key_name(akp: &ApiKeyPair) -> String {
    akp.spec.key_name.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            akp.metadata.namespace.as_deref().unwrap_or_default(),
            akp.metadata.name.as_deref().unwrap_or_default()
        )
    })
}

/// Whether the spec asks for a different ThreatWinds key than the one in use (which has
/// no update call): a new display name or validity.
pub fn needs_replacement(akp: &ApiKeyPair, status: &ApiKeyPairStatus) -> bool {
    let name_changed = status
        .key_name
        .as_deref()
        .is_some_and(|name| strip_attempt_token(name) != base_key_name(akp));
    let validity_changed = status
        .validity_days
        .is_some_and(|days| days != akp.spec.validity_days);
    name_changed || validity_changed
}

/// The resource a remote name was made for, when it carries the operator's attempt token
/// (`<display name> [<uid8>.<attempt>]`, see [`remote_name`]): the first 8 hex digits of
/// that resource's UID. Names without a well-formed token (made by hand) give `None`.
pub fn attempt_name_owner(name: &str) -> Option<&str> {
    let token = attempt_token(name)?;
    let (short, attempt) = token
        .strip_prefix('[')?
        .strip_suffix(']')?
        .split_once('.')?;
    let well_formed = short.len() == 8
        && short.chars().all(|c| c.is_ascii_hexdigit())
        && !attempt.is_empty()
        && attempt.chars().all(|c| c.is_ascii_digit());
    well_formed.then_some(short)
}

/// The `[uid8.N]` token that ends an attempt's remote name.
fn attempt_token(name: &str) -> Option<&str> {
    let start = name.rfind(" [")?;
    name.ends_with(']').then(|| &name[start + 1..])
}

/// The display part of a remote name, without an attempt token.
fn strip_attempt_token(name: &str) -> &str {
    match name.rfind(" [") {
        Some(i) if name.ends_with(']') => &name[..i],
        _ => name,
    }
}

/// The Datonis update that makes the remote key match the spec, if any.
/// The expiry date counts `validityDays` from the day the key was created. An update the
/// provider refused for this generation is not sent again until the spec changes.
pub fn datonis_update(
    akp: &ApiKeyPair,
    remote: &RemoteKeyPair,
    status: &ApiKeyPairStatus,
) -> Option<UpdateKeyPair> {
    let settings = akp.spec.datonis.as_ref()?;
    if status.update_refused_generation.is_some()
        && status.update_refused_generation == akp.metadata.generation
    {
        return None;
    }
    let mut update = UpdateKeyPair::default();
    if remote.enabled != Some(settings.enabled) {
        update.enabled = Some(settings.enabled);
    }
    if remote.role_key.as_deref() != Some(settings.role_key.as_str()) {
        update.role_key = Some(settings.role_key.clone());
    }
    if status.validity_days != Some(akp.spec.validity_days) {
        let created = remote.created_at.unwrap_or_else(Utc::now).date_naive();
        update.expiry_date =
            Some(created + ChronoDuration::days(i64::from(akp.spec.validity_days)));
    }
    (update != UpdateKeyPair::default()).then_some(update)
}

/// The expiry date a new Datonis key gets (what the client sends as `expiry_date`).
pub fn datonis_expiry(today: NaiveDate, validity_days: u32) -> NaiveDate {
    today + ChronoDuration::days(i64::from(validity_days))
}

/// A fingerprint of a verification code for one code id, so each distinct code is
/// submitted once without keeping the code itself in the status.
pub fn code_fingerprint(verification_code_id: &str, code: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{verification_code_id}\0{code}").as_bytes());
    hex::encode(&digest[..12])
}

/// The periodic checks of the key of resource `uid` every `interval` fall at fixed wall
/// clock times, offset by a phase drawn from the uid: the checks of many keys spread evenly
/// over the interval and stay where they were across restarts and failovers, so a new
/// leader does not check every key at once. Returns the last slot at or before `now` and
/// the next one after it.
pub fn check_slots(
    uid: &str,
    interval: std::time::Duration,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    use sha2::{Digest, Sha256};
    let period = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let digest = Sha256::digest(uid.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let phase = i64::try_from(u64::from_le_bytes(head) % period.unsigned_abs()).unwrap_or(0);
    let millis = now.timestamp_millis();
    let last = millis - (millis - phase).rem_euclid(period);
    let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(now);
    (at(last), at(last.saturating_add(period)))
}

/// Whether the Secret holds other credentials than the ones this process last knew to be
/// the key's (`known`, a [`Credentials::fingerprint`]: written from the provider's answer,
/// or accepted by a check of the secret): someone edited or emptied the Secret, and Ready
/// must not stand on credentials nobody checked until the next slot. Unknown after a
/// restart (the slot decides then, so restarts stay quiet).
pub fn secret_edited_since_check(known: Option<u64>, serving: Option<&Credentials>) -> bool {
    known.is_some_and(|known| serving.map(Credentials::fingerprint) != Some(known))
}

/// When to look at a resource again: at its next check slot, sooner if something is due
/// before then (the expiry, the renewal time, the end of a grace period): the controller
/// sleeps until then rather than polling.
pub fn next_check(
    next_slot: DateTime<Utc>,
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) -> std::time::Duration {
    let until = |t: DateTime<Utc>| (t - now).to_std().unwrap_or_default();
    let slot = until(next_slot);
    match deadline.map(until) {
        Some(due) if due < slot => due + std::time::Duration::from_secs(1),
        _ => slot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::CreatePurpose;
    use secrecy::SecretString;

    fn owned(api_key: &str) -> SecretView {
        SecretView::Owned {
            current: Some(creds(api_key)),
            pending: None,
        }
    }

    fn creds(api_key: &str) -> Credentials {
        Credentials {
            api_key: api_key.into(),
            api_secret: SecretString::from("s"),
        }
    }

    fn key(id: &str, api_key: &str) -> RemoteKeyPair {
        RemoteKeyPair {
            key_id: id.into(),
            api_key: api_key.into(),
            ..Default::default()
        }
    }

    fn record(id: &str, api_key: &str, verification: Verification) -> KeyRecord {
        KeyRecord {
            key_id: id.into(),
            api_key: api_key.into(),
            verification,
        }
    }

    fn awaiting(code_id: Option<&str>) -> Verification {
        Verification::Awaiting {
            code_id: code_id.map(Into::into),
        }
    }

    fn attempt(name: Option<&str>, started_at: &str) -> Intent {
        Intent {
            attempt: 1,
            remote_name: name.map(Into::into),
            started_at: DateTime::parse_from_rfc3339(started_at)
                .expect("time")
                .with_timezone(&Utc),
            purpose: CreatePurpose::Initial,
            role_key: None,
            validity_days: None,
        }
    }

    fn active(replacement: Option<Replacement>) -> KeyState {
        KeyState::Active {
            key: record("1", "old", Verification::Verified),
            replacement,
        }
    }

    fn replacement(stage: ReplacementStage) -> Replacement {
        Replacement {
            key: record("2", "new", awaiting(Some("c"))),
            stage,
        }
    }

    #[test]
    fn only_a_first_create_trusts_the_caches_about_a_missing_secret() {
        assert!(!confirm_missing_secret(&KeyState::Empty, true));
        assert!(
            confirm_missing_secret(&KeyState::Empty, false),
            "not synced"
        );
        assert!(confirm_missing_secret(&active(None), true), "a lost Secret");
        let creating = KeyState::Creating {
            intent: attempt(Some("n"), "2026-01-01T00:00:00Z"),
            previous: None,
        };
        assert!(confirm_missing_secret(&creating, true), "recovery");
    }

    #[test]
    fn foreign_secret_stops_everything() {
        for state in [KeyState::Empty, active(None)] {
            assert_eq!(
                next_step(&state, &SecretView::Foreign),
                Step::SecretConflict
            );
        }
    }

    #[test]
    fn an_attempt_is_recovered_before_anything_else() {
        let state = KeyState::Creating {
            intent: attempt(Some("n"), "2026-01-01T00:00:00Z"),
            previous: None,
        };
        assert!(matches!(
            next_step(&state, &owned("k")),
            Step::Recover { .. }
        ));
        assert_eq!(
            next_step(&KeyState::Empty, &SecretView::Missing),
            Step::Create
        );
    }

    #[test]
    fn promotion_finishes_when_the_secret_serves_the_replacement_or_the_stage_says_so() {
        let waiting = active(Some(replacement(ReplacementStage::VerificationCode)));
        assert!(matches!(
            next_step(&waiting, &owned("new")),
            Step::FinishPromotion { .. }
        ));
        assert!(matches!(
            next_step(&waiting, &owned("old")),
            Step::Steady { .. }
        ));
        let promoting = active(Some(replacement(ReplacementStage::Promotion)));
        assert!(matches!(
            next_step(&promoting, &owned("old")),
            Step::FinishPromotion { .. }
        ));
    }

    #[test]
    fn secret_repair_depends_on_whether_the_provider_can_give_the_secret_again() {
        use ProviderKind::*;
        let k = record("1", "k", Verification::Verified);
        assert_eq!(
            secret_repair(Threatwinds, &k, None, &owned("k")),
            SecretRepair::Intact
        );
        assert_eq!(
            secret_repair(Threatwinds, &k, None, &SecretView::Missing),
            SecretRepair::Lost
        );
        assert_eq!(
            secret_repair(Threatwinds, &k, None, &owned("edited")),
            SecretRepair::RestoreApiKey
        );
        assert_eq!(
            secret_repair(Datonis, &k, None, &SecretView::Missing),
            SecretRepair::RestoreFromProvider
        );
        assert_eq!(
            secret_repair(Datonis, &k, None, &owned("edited")),
            SecretRepair::RestoreFromProvider
        );
    }

    /// Fault 7: a lost Secret during a replacement is a lost key *and* a lost
    /// replacement; a lost pending slot alone abandons the replacement.
    #[test]
    fn a_replacement_whose_pending_slot_is_gone_is_abandoned() {
        use ProviderKind::Threatwinds;
        let k = record("1", "old", Verification::Verified);
        let r = replacement(ReplacementStage::VerificationCode);
        assert_eq!(
            secret_repair(Threatwinds, &k, Some(&r), &owned("old")),
            SecretRepair::ReplacementLost
        );
        let both = SecretView::Owned {
            current: Some(creds("old")),
            pending: Some(creds("new")),
        };
        assert_eq!(
            secret_repair(Threatwinds, &k, Some(&r), &both),
            SecretRepair::Intact
        );
        assert_eq!(
            secret_repair(Threatwinds, &k, Some(&r), &SecretView::Missing),
            SecretRepair::Lost
        );
    }

    /// Fault 1: unverified ThreatWinds keys are never checked with their own credentials.
    #[test]
    fn unverified_keys_are_observed_through_the_session_list() {
        use ProviderKind::*;
        assert_eq!(
            lookup_for(Threatwinds, &record("1", "k", awaiting(None))),
            Lookup::InSessionList
        );
        assert_eq!(
            lookup_for(Threatwinds, &record("1", "k", Verification::Verified)),
            Lookup::WithOwnCredentials
        );
        assert_eq!(
            lookup_for(Datonis, &record("1", "k", Verification::NotRequired)),
            Lookup::ById
        );
    }

    /// Fault 1: neither a 401 nor a 404 to the key's own credentials deletes anything on its
    /// own; the session's list decides.
    #[test]
    fn the_observation_outcome_table() {
        let not_found = || ProviderError::NotFound {
            message: "x".into(),
            error_id: None,
        };
        let unauthorized = || ProviderError::Unauthorized {
            message: "x".into(),
            error_id: None,
        };
        let server = || ProviderError::Server {
            status: 500,
            message: "x".into(),
            error_id: None,
            retry_after: None,
        };
        use Lookup::*;
        assert!(matches!(
            observation(WithOwnCredentials, Ok(key("1", "k"))),
            Observation::Found(_)
        ));
        assert!(matches!(
            observation(WithOwnCredentials, Err(not_found())),
            Observation::Confirm(_)
        ));
        assert!(matches!(
            observation(WithOwnCredentials, Err(unauthorized())),
            Observation::Confirm(_)
        ));
        assert!(matches!(
            observation(InSessionList, Err(not_found())),
            Observation::Missing
        ));
        assert!(matches!(
            observation(ById, Err(not_found())),
            Observation::Confirm(_)
        ));
        assert!(matches!(
            observation(InSessionList, Err(unauthorized())),
            Observation::Failed(_)
        ));
        assert!(matches!(
            observation(ById, Err(server())),
            Observation::Failed(_)
        ));
        let mut unverified = key("1", "k");
        unverified.verified = Some(false);
        let mut verified = key("2", "k2");
        verified.verified = Some(true);
        let listed = [unverified, verified];
        let refused = unauthorized();
        assert!(matches!(
            confirmation("1", &listed, &refused),
            Confirmation::Unverified(_)
        ));
        assert!(matches!(
            confirmation("2", &listed, &refused),
            Confirmation::SecretMismatch
        ));
        assert!(matches!(
            confirmation("2", &listed, &not_found()),
            Confirmation::Inconclusive
        ));
        assert!(matches!(
            confirmation("3", &listed, &refused),
            Confirmation::Missing
        ));
    }

    /// Fault 2: only a definite refusal clears a create intent.
    #[test]
    fn which_create_errors_clear_the_intent() {
        let refused = ProviderError::BadRequest {
            message: "x".into(),
            error_id: None,
        };
        let cut_off = ProviderError::UnexpectedResponse {
            status: 200,
            message: "x".into(),
            excerpt: String::new(),
        };
        let broken = ProviderError::Transport {
            message: "x".into(),
        };
        assert!(create_error_clears_intent(&refused));
        assert!(!create_error_clears_intent(&broken));
        assert!(
            !create_error_clears_intent(&cut_off),
            "a 2xx that cannot be read may have committed"
        );
    }

    /// Fault 9: a key adopted without its code id gets a new code, without being asked.
    #[test]
    fn the_verification_protocol() {
        use VerificationStep::*;
        assert_eq!(
            verification_start(Some("c"), Some("1"), None, true),
            Err(RequestNewCode { requested: true })
        );
        assert_eq!(
            verification_start(Some("c"), Some("1"), Some("1"), true),
            Ok("c".into())
        );
        assert_eq!(
            verification_start(None, None, None, true),
            Err(RequestNewCode { requested: false })
        );
        assert_eq!(
            verification_start(Some("c"), None, None, false),
            Err(NoCodeSource)
        );
        assert_eq!(verification_submit("c".into(), None, None), CodeMissing);
        assert_eq!(verification_submit("c".into(), Some(""), None), CodeMissing);
        let fingerprint = code_fingerprint("c", "123456");
        assert_eq!(
            verification_submit("c".into(), Some("123456"), Some(&fingerprint)),
            AlreadyRejected
        );
        assert_eq!(
            verification_submit("c".into(), Some("123456"), None),
            Submit {
                code_id: "c".into(),
                fingerprint
            }
        );
    }

    /// Fault 5: only a rejection confirmed against a live session counts against a code.
    #[test]
    fn the_verify_outcome_table() {
        let rejected = ProviderError::CodeRejected {
            message: "x".into(),
            error_id: None,
        };
        let session = ProviderError::Unauthorized {
            message: "x".into(),
            error_id: None,
        };
        let gone = ProviderError::NotFound {
            message: "x".into(),
            error_id: None,
        };
        assert!(matches!(verify_outcome(Ok(())), VerifyOutcome::Verified));
        assert!(matches!(
            verify_outcome(Err(rejected)),
            VerifyOutcome::Rejected(_)
        ));
        assert!(matches!(
            verify_outcome(Err(session)),
            VerifyOutcome::NotDelivered(_)
        ));
        assert!(matches!(
            verify_outcome(Err(gone)),
            VerifyOutcome::NotDelivered(_)
        ));
    }

    /// Fault 10: both ways of orphaning release the Secret.
    #[test]
    fn the_deletion_policy() {
        assert_eq!(
            deletion(DeletionPolicy::Delete, false),
            Deletion::DeleteRemote
        );
        assert_eq!(
            deletion(DeletionPolicy::Orphan, false),
            Deletion::Orphan { forced: false }
        );
        assert_eq!(
            deletion(DeletionPolicy::Delete, true),
            Deletion::Orphan { forced: true }
        );
    }

    #[test]
    fn the_ready_and_verified_condition_table() {
        fn facts<'a>(key: &'a KeyRecord, replacement: Option<&'a Replacement>) -> SteadyFacts<'a> {
            SteadyFacts {
                kind: ProviderKind::Threatwinds,
                key,
                replacement,
                expired: false,
                disabled: false,
                waiting: None,
                secret_name: "s",
                expire_at: None,
                renewal_overdue: false,
            }
        }
        let verified = record("1", "k", Verification::Verified);
        let (ready, v) = steady_conditions(&facts(&verified, None));
        assert_eq!((ready.0, ready.1), (status::TRUE, reason::READY));
        assert_eq!(v.map(|v| v.1), Some(reason::VERIFIED));
        let r = replacement(ReplacementStage::VerificationCode);
        let (ready, _) = steady_conditions(&facts(&verified, Some(&r)));
        assert_eq!(
            (ready.0, ready.1),
            (status::TRUE, reason::REPLACEMENT_PENDING)
        );
        let waiting = record("1", "k", awaiting(Some("c")));
        let mut f = facts(&waiting, None);
        f.waiting = Some(reason::VERIFICATION_CODE_REJECTED);
        let (ready, v) = steady_conditions(&f);
        assert_eq!(
            (ready.0, ready.1),
            (status::FALSE, reason::VERIFICATION_CODE_REJECTED)
        );
        assert_eq!(v.map(|v| v.1), Some(reason::VERIFICATION_CODE_REJECTED));
        let mut late = facts(&verified, Some(&r));
        late.renewal_overdue = true;
        let (ready, _) = steady_conditions(&late);
        assert_eq!(
            (ready.0, ready.1),
            (status::TRUE, reason::RENEWAL_AWAITING_VERIFICATION),
            "the key in use still serves, and says its renewal is late"
        );
        late.expired = true;
        assert_eq!(
            steady_conditions(&late).0.1,
            reason::EXPIRED,
            "then it expires cleanly"
        );
        let mut f = facts(&verified, None);
        f.expired = true;
        f.disabled = true;
        assert_eq!(steady_conditions(&f).0.1, reason::EXPIRED);
        f.expired = false;
        assert_eq!(steady_conditions(&f).0.1, reason::DISABLED);
        let datonis_key = record("1", "k", Verification::NotRequired);
        let mut f = facts(&datonis_key, None);
        f.kind = ProviderKind::Datonis;
        assert!(
            steady_conditions(&f).1.is_none(),
            "Datonis has no Verified condition"
        );
    }

    /// Fault 12: an edit of providerRef while a key exists is refused and the recorded
    /// provider stays in use.
    #[test]
    fn a_provider_ref_edit_is_refused_while_a_key_exists() {
        use crate::crd::{ApiKeyPairSpec, ProviderRefKind};
        let old = ProviderRef {
            kind: ProviderRefKind::KeyPairProvider,
            name: "old".into(),
        };
        let spec: ApiKeyPairSpec =
            serde_json::from_value(serde_json::json!({"providerRef": {"name": "new"}}))
                .expect("spec");
        let mut akp = ApiKeyPair::new("web", spec);
        let mut status = ApiKeyPairStatus {
            provider_ref: Some(old.clone()),
            ..Default::default()
        };
        akp.status = Some(status.clone());
        assert!(
            refused_edit(&akp, &status).is_none(),
            "no key yet: the edit applies"
        );
        assert_eq!(provider_ref_in_use(&akp).name, "new");
        status.key_id = Some("k".into());
        akp.status = Some(status.clone());
        assert!(refused_edit(&akp, &status).is_some_and(|m| m.contains("providerRef")));
        assert_eq!(provider_ref_in_use(&akp), &old);
    }

    /// Fault 13: an update the provider refused is not sent again for the same generation.
    #[test]
    fn a_refused_update_is_not_resent_until_the_spec_changes() {
        let spec = serde_json::json!({"providerRef": {"name": "d"}, "datonis": {"roleKey": "r2"}});
        let mut akp = ApiKeyPair::new("web", serde_json::from_value(spec).expect("spec"));
        akp.metadata.generation = Some(3);
        let mut remote = key("1", "k");
        remote.role_key = Some("r1".into());
        remote.enabled = Some(true);
        let mut status = ApiKeyPairStatus {
            validity_days: Some(365),
            ..Default::default()
        };
        assert!(datonis_update(&akp, &remote, &status).is_some());
        status.update_refused_generation = Some(3);
        assert!(datonis_update(&akp, &remote, &status).is_none());
        akp.metadata.generation = Some(4);
        assert!(datonis_update(&akp, &remote, &status).is_some());
    }

    #[test]
    fn threatwinds_candidates_are_found_by_the_attempt_name() {
        let mut mine = key("1", "a");
        mine.name = Some("app [abcd1234.1]".into());
        let mut other = key("2", "b");
        other.name = Some("app [abcd1234.2]".into());
        let remote = vec![mine, other];
        let found = attempt_candidates(
            ProviderKind::Threatwinds,
            &attempt(Some("app [abcd1234.1]"), "2026-01-01T00:00:00Z"),
            None,
            None,
            &remote,
            &|_| false,
        );
        assert_eq!(
            found.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(),
            ["1"]
        );
    }

    #[test]
    fn datonis_candidates_match_window_role_expiry_and_are_unreferenced() {
        let at = |s: &str| Some(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc));
        let mk = |id: &str, created: &str, role: &str, expiry: &str| RemoteKeyPair {
            key_id: id.into(),
            api_key: id.into(),
            created_at: at(created),
            role_key: Some(role.into()),
            expire_at: at(expiry),
            ..Default::default()
        };
        let remote = vec![
            mk("ok", "2026-01-01T00:00:05Z", "r", "2026-01-30T18:30:00Z"),
            mk(
                "too-early",
                "2025-12-31T23:00:00Z",
                "r",
                "2026-01-31T00:00:00Z",
            ),
            mk(
                "other-role",
                "2026-01-01T00:00:05Z",
                "x",
                "2026-01-31T00:00:00Z",
            ),
            mk(
                "other-expiry",
                "2026-01-01T00:00:05Z",
                "r",
                "2026-03-01T00:00:00Z",
            ),
            mk(
                "referenced",
                "2026-01-01T00:00:05Z",
                "r",
                "2026-01-31T00:00:00Z",
            ),
        ];
        let found = attempt_candidates(
            ProviderKind::Datonis,
            &attempt(None, "2026-01-01T00:00:00Z"),
            Some("r"),
            NaiveDate::from_ymd_opt(2026, 1, 31),
            &remote,
            &|id| id == "referenced",
        );
        assert_eq!(
            found.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(),
            ["ok"]
        );
    }

    #[test]
    fn recovery_outcomes() {
        use ProviderKind::*;
        let a = key("1", "a");
        let b = key("2", "b");
        assert!(
            matches!(recover(Threatwinds, &[&a, &b], Some("b")), Recovery::Adopt(k) if k.key_id == "2")
        );
        assert!(
            matches!(recover(Datonis, &[&a, &b], Some("a")), Recovery::Adopt(k) if k.key_id == "1")
        );
        assert!(
            matches!(recover(Threatwinds, &[&a, &b], Some("z")), Recovery::DeleteAndRetry(ids) if ids == ["1", "2"])
        );
        assert!(matches!(recover(Threatwinds, &[], None), Recovery::Retry));
        assert!(
            matches!(recover(Datonis, &[&a], None), Recovery::AdoptWithProviderSecret(k) if k.key_id == "1")
        );
        let mut older = key("3", "c");
        older.created_at = DateTime::from_timestamp(1, 0);
        let mut newer = key("4", "d");
        newer.created_at = DateTime::from_timestamp(2, 0);
        assert!(matches!(
            recover(Datonis, &[&newer, &older], None),
            Recovery::AdoptWithProviderSecret(k) if k.key_id == "3"
        ));
        assert!(matches!(recover(Datonis, &[], None), Recovery::Retry));
    }

    #[test]
    fn remote_names_are_deterministic_and_strippable() {
        let name = remote_name("billing", "0b6f3a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b", 3);
        assert_eq!(name, "billing [0b6f3a52.3]");
        assert_eq!(strip_attempt_token(&name), "billing");
        assert_eq!(strip_attempt_token("plain"), "plain");
    }

    #[test]
    fn code_fingerprints_differ_per_code_and_id_and_hide_the_code() {
        let a = code_fingerprint("id", "123456");
        assert_eq!(a, code_fingerprint("id", "123456"));
        assert_ne!(a, code_fingerprint("id", "654321"));
        assert_ne!(a, code_fingerprint("id2", "123456"));
        assert!(!a.contains("123456"));
    }

    #[test]
    fn next_check_is_the_next_slot_and_never_past_expiry() {
        let now = Utc::now();
        let slot = now + ChronoDuration::seconds(600);
        assert_eq!(
            next_check(slot, now, None),
            std::time::Duration::from_secs(600)
        );
        let soon = now + ChronoDuration::seconds(60);
        assert_eq!(
            next_check(slot, now, Some(soon)),
            std::time::Duration::from_secs(61)
        );
    }

    #[test]
    fn a_new_code_refusal_blames_the_credentials_only_for_a_listed_key_and_a_401() {
        let listed = vec![key("k1", "key-1")];
        let unauthorized = ProviderError::Unauthorized {
            message: "invalid api secret".into(),
            error_id: None,
        };
        let server = ProviderError::Server {
            status: 500,
            message: "down".into(),
            error_id: None,
            retry_after: None,
        };
        assert!(new_code_refused_credentials("k1", &listed, &unauthorized));
        assert!(
            !new_code_refused_credentials("k2", &listed, &unauthorized),
            "not listed"
        );
        assert!(
            !new_code_refused_credentials("k1", &listed, &server),
            "not a refusal"
        );
    }

    #[test]
    fn a_refused_code_is_read_against_the_list() {
        let mut waiting = key("k1", "key-1");
        waiting.verified = Some(false);
        let mut done = key("k2", "key-2");
        done.verified = Some(true);
        let listed = [waiting, done];
        assert_eq!(after_refused_code("k1", &listed), AfterRefusedCode::Refused);
        assert_eq!(
            after_refused_code("k2", &listed),
            AfterRefusedCode::Verified
        );
        assert_eq!(after_refused_code("k3", &listed), AfterRefusedCode::Missing);
    }

    #[test]
    fn only_a_transient_failure_of_a_ready_key_leaves_ready_standing() {
        assert!(failure_keeps_ready(
            Some("True"),
            reason::REMOTE_UNAVAILABLE
        ));
        assert!(failure_keeps_ready(Some("True"), reason::RATE_LIMITED));
        assert!(failure_keeps_ready(Some("True"), reason::PROGRESSING));
        assert!(!failure_keeps_ready(
            Some("True"),
            reason::PROVIDER_NOT_READY
        ));
        assert!(!failure_keeps_ready(Some("True"), reason::INVALID_SPEC));
        assert!(!failure_keeps_ready(
            Some("False"),
            reason::REMOTE_UNAVAILABLE
        ));
        assert!(!failure_keeps_ready(None, reason::REMOTE_UNAVAILABLE));
    }

    #[test]
    fn the_providers_secret_wins_over_an_overwritten_one() {
        let mut remote = key("k1", "key-1");
        remote.api_secret = Some(SecretString::from("s"));
        let serving = |secret: &str| Credentials {
            api_key: "key-1".into(),
            api_secret: SecretString::from(secret.to_owned()),
        };
        assert!(!provider_secret_differs(&remote, Some(&serving("s"))));
        assert!(provider_secret_differs(
            &remote,
            Some(&serving("overwritten"))
        ));
        assert!(provider_secret_differs(&remote, None), "emptied");
        remote.api_secret = None;
        assert!(
            !provider_secret_differs(&remote, Some(&serving("x"))),
            "ThreatWinds returns none"
        );
    }

    #[test]
    fn an_edited_secret_is_checked_at_once_and_an_unchanged_one_waits() {
        let credentials = |secret: &str| Credentials {
            api_key: "k".into(),
            api_secret: SecretString::from(secret.to_owned()),
        };
        let checked = Some(credentials("s").fingerprint());
        assert!(!secret_edited_since_check(checked, Some(&credentials("s"))));
        assert!(secret_edited_since_check(
            checked,
            Some(&credentials("edited"))
        ));
        assert!(secret_edited_since_check(checked, None), "emptied");
        assert!(
            !secret_edited_since_check(None, Some(&credentials("s"))),
            "first check: the slot decides"
        );
        assert_ne!(
            credentials("s").fingerprint(),
            Credentials {
                api_key: "k2".into(),
                ..credentials("s")
            }
            .fingerprint()
        );
    }

    #[test]
    fn check_slots_are_fixed_per_key_and_spread_over_the_interval() {
        let hour = std::time::Duration::from_secs(3600);
        let now = Utc::now();
        let (last, next) = check_slots("uid-1", hour, now);
        assert!(last <= now && now < next);
        assert_eq!(next - last, ChronoDuration::seconds(3600));
        let later = now + ChronoDuration::seconds(1234);
        let (last_later, _) = check_slots("uid-1", hour, later);
        assert_eq!(
            (last_later - last).num_seconds() % 3600,
            0,
            "the same phase"
        );
        // 1,000 keys: every tenth of the interval holds about a tenth of the slots.
        let mut tenths = [0u32; 10];
        for i in 0..1000 {
            let (last, _) = check_slots(&format!("uid-{i}"), hour, now);
            let offset = (now - last).num_milliseconds();
            tenths[usize::try_from(offset * 10 / 3_600_000).unwrap_or(0).min(9)] += 1;
        }
        assert!(tenths.iter().all(|n| (60..=140).contains(n)), "{tenths:?}");
    }

    fn akp_with(spec: serde_json::Value) -> ApiKeyPair {
        let mut base = serde_json::json!({"providerRef": {"name": "p"}, "validityDays": 30});
        if let (Some(b), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
            b.extend(extra.clone());
        }
        ApiKeyPair::new("web", serde_json::from_value(base).expect("spec"))
    }

    #[test]
    fn renew_before_defaults_to_a_third_and_must_be_shorter_than_the_validity() {
        assert_eq!(
            renew_before(&akp_with(serde_json::json!({}))),
            Ok(ChronoDuration::days(10))
        );
        let short = akp_with(serde_json::json!({"validityDays": 2}));
        assert_eq!(
            renew_before(&short),
            Ok(ChronoDuration::days(1)),
            "at least a day"
        );
        let set = akp_with(serde_json::json!({"renewBefore": "36h"}));
        assert_eq!(renew_before(&set), Ok(ChronoDuration::hours(36)));
        let too_long = akp_with(serde_json::json!({"renewBefore": "30d"}));
        assert!(renew_before(&too_long).is_err());
        let one_day = akp_with(serde_json::json!({"validityDays": 1}));
        assert!(
            renew_before(&one_day).is_err(),
            "a day is not shorter than a day"
        );
        assert!(invalid_spec(&too_long, ProviderKind::Threatwinds).is_some());
    }

    #[test]
    fn spec_checks_the_schema_cannot_make() {
        let extend = akp_with(serde_json::json!({"renewal": {"strategy": "Extend"}}));
        assert!(
            invalid_spec(&extend, ProviderKind::Threatwinds).is_some_and(|m| m.contains("Extend"))
        );
        let disable = akp_with(serde_json::json!({"deletionPolicy": "Disable"}));
        assert!(invalid_spec(&disable, ProviderKind::Threatwinds).is_some());
        let datonis =
            akp_with(serde_json::json!({"datonis": {"roleKey": "r"}, "deletionPolicy": "Disable"}));
        assert_eq!(invalid_spec(&datonis, ProviderKind::Datonis), None);
        assert!(invalid_spec(&akp_with(serde_json::json!({})), ProviderKind::Datonis).is_some());
        for (key, secret) in [("k", "k"), ("k", "k.pending"), ("s.pending", "s")] {
            let keys = serde_json::json!({"apiKey": key, "apiSecret": secret});
            let clash = akp_with(serde_json::json!({"secretTemplate": {"keys": keys}}));
            assert!(
                invalid_spec(&clash, ProviderKind::Threatwinds)
                    .is_some_and(|m| m.contains("secretTemplate.keys")),
                "{key} / {secret}"
            );
        }
        let distinct = serde_json::json!({"apiKey": "key", "apiSecret": "key.secret"});
        let distinct = akp_with(serde_json::json!({"secretTemplate": {"keys": distinct}}));
        assert_eq!(invalid_spec(&distinct, ProviderKind::Threatwinds), None);
        let grace = akp_with(serde_json::json!({"rotation": {"gracePeriod": "5m"}}));
        assert_eq!(grace_period(&grace), Ok(ChronoDuration::minutes(5)));
        assert_eq!(
            grace_period(&akp_with(serde_json::json!({}))),
            Ok(ChronoDuration::minutes(10))
        );
    }

    #[test]
    fn rotation_is_due_on_request_on_spec_change_and_at_renewal_time() {
        let now = Utc::now();
        let akp = akp_with(serde_json::json!({}));
        let mut status = ApiKeyPairStatus {
            validity_days: Some(30),
            renewal_time: Some((now + ChronoDuration::hours(1)).to_rfc3339()),
            ..Default::default()
        };
        let due = |status: &ApiKeyPairStatus, annotation: Option<&str>| {
            rotation_due(ProviderKind::Datonis, &akp, status, annotation, now)
        };
        assert_eq!(due(&status, None), None);
        assert_eq!(
            due(&status, Some("a")),
            Some(RotationCause::Requested("a".into()))
        );
        status.rotation_request = Some("a".into());
        assert_eq!(due(&status, Some("a")), None, "once per value");
        status.renewal_time = Some((now - ChronoDuration::seconds(1)).to_rfc3339());
        assert_eq!(due(&status, Some("a")), Some(RotationCause::Renewal));
        status.previous_key = Some(Box::new(PreviousKey {
            key_id: "old".into(),
            delete_after: now.to_rfc3339(),
        }));
        assert_eq!(due(&status, None), None, "not again within a grace period");
        status.previous_key = None;
        status.validity_days = Some(60);
        assert_eq!(
            rotation_due(ProviderKind::Threatwinds, &akp, &status, None, now),
            Some(RotationCause::SpecChanged)
        );
    }

    #[test]
    fn the_rotation_action_table() {
        let rotate = akp_with(serde_json::json!({}));
        let extend = akp_with(serde_json::json!({"renewal": {"strategy": "Extend"}}));
        use RotationCause::*;
        assert_eq!(
            rotation_action(ProviderKind::Threatwinds, &Renewal, &rotate),
            RotationAction::Replace
        );
        assert_eq!(
            rotation_action(ProviderKind::Datonis, &Renewal, &rotate),
            RotationAction::Rotate
        );
        assert_eq!(
            rotation_action(ProviderKind::Datonis, &Renewal, &extend),
            RotationAction::Extend
        );
        assert_eq!(
            rotation_action(ProviderKind::Datonis, &Requested("x".into()), &extend),
            RotationAction::Rotate,
            "a requested rotation makes a new key"
        );
    }

    #[test]
    fn extensions_always_move_the_expiry_on() {
        let now = DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z")
            .expect("t")
            .with_timezone(&Utc);
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 6, d).expect("date");
        assert_eq!(extended_expiry(now, None, 10), day(11));
        let later = DateTime::parse_from_rfc3339("2026-06-04T18:30:00Z")
            .expect("t")
            .with_timezone(&Utc);
        assert_eq!(
            extended_expiry(now, Some(later), 10),
            day(15),
            "midnight India time is the 5th"
        );
    }

    #[test]
    fn a_renewal_is_late_halfway_to_the_expiry() {
        let t = |h: i64| Utc::now() + ChronoDuration::hours(h);
        let (renewal, expiry) = (Some(t(0)), Some(t(10)));
        assert!(!renewal_overdue(renewal, expiry, t(4)));
        assert!(renewal_overdue(renewal, expiry, t(5)));
        assert!(!renewal_overdue(None, expiry, t(9)));
    }

    #[test]
    fn consumers_restart_once_per_new_key_and_not_for_the_first() {
        let with = akp_with(
            serde_json::json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "app"}]}),
        );
        let mut status = ApiKeyPairStatus::default();
        assert_eq!(
            restart_due(&akp_with(serde_json::json!({})), &status, "k1"),
            RestartDue::No
        );
        assert_eq!(restart_due(&with, &status, "k1"), RestartDue::RecordOnly);
        status.consumers_restarted_for_key_id = Some("k1".into());
        assert_eq!(restart_due(&with, &status, "k1"), RestartDue::No);
        assert_eq!(restart_due(&with, &status, "k2"), RestartDue::Restart);
    }

    #[test]
    fn the_previous_key_goes_when_its_grace_period_ends() {
        let now = Utc::now();
        let previous = |at: DateTime<Utc>| PreviousKey {
            key_id: "k".into(),
            delete_after: at.to_rfc3339(),
        };
        assert!(!previous_due(
            &previous(now + ChronoDuration::seconds(1)),
            now
        ));
        assert!(previous_due(&previous(now), now));
        assert_eq!(
            deletion(DeletionPolicy::Disable, false),
            Deletion::DisableRemote
        );
    }

    #[test]
    fn an_import_must_match_the_key_its_id_names() {
        let credentials = Credentials {
            api_key: "a".into(),
            api_secret: SecretString::from("s"),
        };
        let mut remote = key("k", "a");
        assert_eq!(import_matches("k", &credentials, &remote), Ok(()));
        assert!(import_matches("other", &credentials, &remote).is_err());
        remote.api_secret = Some(SecretString::from("different"));
        let refused = import_matches("k", &credentials, &remote);
        assert!(
            refused
                .as_ref()
                .is_err_and(|m| !m.contains("different") && !m.contains('s'))
                || refused.is_err()
        );
        let mut other_key = key("k", "b");
        other_key.api_secret = None;
        assert!(import_matches("k", &credentials, &other_key).is_err());
    }

    #[test]
    fn attempt_names_tell_their_resource() {
        let uid = "0b6f3a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(
            attempt_name_owner(&remote_name("ns/web", uid, 3)),
            Some("0b6f3a52")
        );
        for by_hand in [
            "web",
            "web [x]",
            "web [0b6f3a52]",
            "web [0b6f3a5z.1]",
            "web [0b6f3a52.]",
        ] {
            assert_eq!(attempt_name_owner(by_hand), None, "{by_hand}");
        }
    }

    #[test]
    fn stray_attempt_keys_are_this_resources_unowned_ones() {
        let named = |id: &str, name: &str| {
            let mut k = key(id, id);
            k.name = Some(name.into());
            k
        };
        let uid = "0b6f3a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        let remote = vec![
            named("serving", "web [0b6f3a52.3]"),
            named("late", "web [0b6f3a52.2]"),
            named("other-resource", "web [99999999.1]"),
            named("by-hand", "web"),
        ];
        let strays = stray_attempt_keys(uid, &remote, &["serving"]);
        assert_eq!(
            strays.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(),
            ["late"]
        );
        assert!(stray_attempt_keys("", &remote, &[]).is_empty());
    }
}
