//! Decisions, as pure functions: given what the controller knows (spec, status, the
//! Secret, what the provider reported), what happens next. No I/O here, so every branch
//! of the lifecycle is reachable from unit tests without a cluster or a provider.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};

use crate::crd::{ApiKeyPair, ApiKeyPairStatus, PendingCreate};
use crate::provider::{ProviderKind, RemoteKeyPair, UpdateKeyPair};

use super::secret::SecretView;

/// Why a key pair is being created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The resource has no key yet.
    Initial,
    /// The spec changed in a way the provider cannot update (ThreatWinds).
    Replace,
    /// The API secret is gone for good (ThreatWinds Secret deleted or edited).
    SecretLost,
    /// The key was deleted at the provider by someone else.
    RemoteKeyMissing,
}

impl Purpose {
    /// The name recorded in `status.pendingCreate.purpose`.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Initial => "Initial",
            Purpose::Replace => "Replace",
            Purpose::SecretLost => "SecretLost",
            Purpose::RemoteKeyMissing => "RemoteKeyMissing",
        }
    }

    /// Parses a recorded purpose (unknown values count as `Initial`).
    pub fn parse(value: &str) -> Self {
        match value {
            "Replace" => Purpose::Replace,
            "SecretLost" => Purpose::SecretLost,
            "RemoteKeyMissing" => Purpose::RemoteKeyMissing,
            _ => Purpose::Initial,
        }
    }

    /// Whether the new key goes to the Secret's pending slot (the current key keeps
    /// serving until the new one is verified) instead of replacing it at once.
    pub fn stages_as_pending(self, kind: ProviderKind) -> bool {
        self == Purpose::Replace && kind == ProviderKind::Threatwinds
    }
}

/// The structural next step of an `ApiKeyPair` reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A Secret of the wanted name exists and is not ours: touch nothing.
    SecretConflict,
    /// A create was interrupted: find what it created before doing anything else.
    RecoverCreate(PendingCreate),
    /// Create a key pair through the crash-safe path.
    Create(Purpose),
    /// Finish a ThreatWinds replacement whose Secret swap was written but not recorded.
    FinishPromotion,
    /// The key is in place: observe it, apply updates, handle verification.
    Steady,
}

/// Picks the structural next step from the status and the Secret.
pub fn next_step(status: &ApiKeyPairStatus, secret: &SecretView) -> Step {
    if *secret == SecretView::Foreign {
        return Step::SecretConflict;
    }
    if let Some(pending) = &status.pending_create {
        return Step::RecoverCreate(pending.clone());
    }
    let Some(api_key) = status.api_key.as_deref() else {
        return Step::Create(Purpose::Initial);
    };
    // The Secret already serves the pending key (the swap was written, not recorded).
    let swapped = match (secret.current(), status.pending_key.as_ref()) {
        (Some(current), Some(pending)) => {
            Some(current.api_key.as_str()) == pending.api_key.as_deref()
                && current.api_key != api_key
        }
        _ => false,
    };
    if swapped {
        Step::FinishPromotion
    } else {
        Step::Steady
    }
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
}

/// Decides how to repair the Secret of a key whose API key the status records.
pub fn secret_repair(
    kind: ProviderKind,
    status_api_key: &str,
    secret: &SecretView,
) -> SecretRepair {
    match (secret.current(), kind) {
        (Some(c), _) if c.api_key == status_api_key => SecretRepair::Intact,
        (_, ProviderKind::Datonis) => SecretRepair::RestoreFromProvider,
        // Only the public half was edited: the secret is still there; the check that follows
        // tells whether it still matches.
        (Some(_), ProviderKind::Threatwinds) => SecretRepair::RestoreApiKey,
        (None, ProviderKind::Threatwinds) => SecretRepair::Lost,
    }
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
    attempt: &PendingCreate,
    wanted_role: Option<&str>,
    wanted_expiry: Option<NaiveDate>,
    remote: &'a [RemoteKeyPair],
    referenced: &dyn Fn(&str) -> bool,
) -> Vec<&'a RemoteKeyPair> {
    match kind {
        ProviderKind::Threatwinds => remote
            .iter()
            .filter(|k| k.name.is_some() && k.name == attempt.remote_name)
            .collect(),
        ProviderKind::Datonis => {
            let Ok(started) = DateTime::parse_from_rfc3339(&attempt.started_at) else {
                return Vec::new();
            };
            let started = started.with_timezone(&Utc);
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

fn strip_attempt_token(name: &str) -> &str {
    match name.rfind(" [") {
        Some(i) if name.ends_with(']') => &name[..i],
        _ => name,
    }
}

/// The Datonis update that makes the remote key match the spec, if any.
/// The expiry date counts `validityDays` from the day the key was created.
pub fn datonis_update(
    akp: &ApiKeyPair,
    remote: &RemoteKeyPair,
    status: &ApiKeyPairStatus,
) -> Option<UpdateKeyPair> {
    let settings = akp.spec.datonis.as_ref()?;
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

/// When to look at a resource again: the check interval with up to ±10% jitter (so
/// checks of many resources spread out), sooner if the key expires before then.
pub fn next_check(
    check_interval: std::time::Duration,
    jitter_unit: f64,
    now: DateTime<Utc>,
    expire_at: Option<DateTime<Utc>>,
) -> std::time::Duration {
    let factor = 0.9 + 0.2 * jitter_unit.clamp(0.0, 1.0);
    let jittered = check_interval.mul_f64(factor);
    match expire_at.and_then(|t| (t - now).to_std().ok()) {
        Some(until_expiry) if until_expiry < jittered => {
            until_expiry + std::time::Duration::from_secs(1)
        }
        _ => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::secret::Credentials;
    use secrecy::SecretString;

    fn owned(api_key: &str) -> SecretView {
        SecretView::Owned {
            current: Some(Credentials {
                api_key: api_key.into(),
                api_secret: SecretString::from("s"),
            }),
            pending: None,
        }
    }

    fn key(id: &str, api_key: &str) -> RemoteKeyPair {
        RemoteKeyPair {
            key_id: id.into(),
            api_key: api_key.into(),
            ..Default::default()
        }
    }

    fn attempt(name: Option<&str>, started_at: &str) -> PendingCreate {
        PendingCreate {
            attempt: 1,
            remote_name: name.map(Into::into),
            started_at: started_at.into(),
            purpose: "Initial".into(),
        }
    }

    #[test]
    fn foreign_secret_stops_everything() {
        let status = ApiKeyPairStatus::default();
        assert_eq!(
            next_step(&status, &SecretView::Foreign),
            Step::SecretConflict
        );
    }

    #[test]
    fn pending_create_is_recovered_before_anything_else() {
        let status = ApiKeyPairStatus {
            api_key: Some("k".into()),
            pending_create: Some(attempt(Some("n"), "2026-01-01T00:00:00Z")),
            ..Default::default()
        };
        assert!(matches!(
            next_step(&status, &owned("k")),
            Step::RecoverCreate(_)
        ));
    }

    #[test]
    fn no_key_means_initial_create() {
        let status = ApiKeyPairStatus::default();
        assert_eq!(
            next_step(&status, &SecretView::Missing),
            Step::Create(Purpose::Initial)
        );
    }

    #[test]
    fn secret_holding_the_pending_key_finishes_the_promotion() {
        let status = ApiKeyPairStatus {
            api_key: Some("old".into()),
            pending_key: Some(crate::crd::PendingKey {
                key_id: "2".into(),
                api_key: Some("new".into()),
                key_name: None,
                expire_at: None,
                verification_code_id: None,
                waiting_for: "verification".into(),
            }),
            ..Default::default()
        };
        assert_eq!(next_step(&status, &owned("new")), Step::FinishPromotion);
        assert_eq!(next_step(&status, &owned("old")), Step::Steady);
    }

    #[test]
    fn secret_repair_depends_on_whether_the_provider_can_give_the_secret_again() {
        use ProviderKind::*;
        assert_eq!(
            secret_repair(Threatwinds, "k", &owned("k")),
            SecretRepair::Intact
        );
        assert_eq!(
            secret_repair(Threatwinds, "k", &SecretView::Missing),
            SecretRepair::Lost
        );
        assert_eq!(
            secret_repair(Threatwinds, "k", &owned("edited")),
            SecretRepair::RestoreApiKey
        );
        assert_eq!(
            secret_repair(Datonis, "k", &SecretView::Missing),
            SecretRepair::RestoreFromProvider
        );
        assert_eq!(
            secret_repair(Datonis, "k", &owned("edited")),
            SecretRepair::RestoreFromProvider
        );
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
    fn next_check_is_jittered_and_never_past_expiry() {
        let now = Utc::now();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(next_check(hour, 0.0, now, None), hour.mul_f64(0.9));
        assert_eq!(next_check(hour, 1.0, now, None), hour.mul_f64(1.1));
        let soon = now + ChronoDuration::seconds(60);
        assert_eq!(
            next_check(hour, 0.5, now, Some(soon)),
            std::time::Duration::from_secs(61)
        );
    }
}
