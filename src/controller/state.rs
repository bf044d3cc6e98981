//! The lifecycle state of one `ApiKeyPair` as one typed value, [`KeyState`], parsed from its
//! status.
//!
//! The status keeps the state in flat fields (what `kubectl` shows and what older versions
//! wrote), where many combinations make no sense: an attempt to replace a key that does not
//! exist, a replacement without a serving key, a key id without its API key. Parsing turns
//! those into an [`InconsistentStatus`] error instead of a silent fallback, and every
//! decision in [`super::plan`] works on the parsed value, where they cannot be expressed.
//!
//! ```text
//!            create intent            recovery adopts
//!   Empty ─────────────────▶ Creating ───────────────▶ Active ──┐
//!     ▲                         ▲  │ refused / nothing made     │ replace (ThreatWinds),
//!     └─────────────────────────┼──┘                            │ secret lost, key missing
//!                               └───────────────────────────────┘
//!   Active { replacement: VerificationCode ─verified─▶ Promotion ─old key retired─▶ None }
//! ```

use chrono::{DateTime, Utc};

use crate::crd::{ApiKeyPairStatus, CreatePurpose, PendingCreate, PendingKey, ReplacementStage};
use crate::provider::ProviderKind;

/// One key pair the status records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// Provider-side id.
    pub key_id: String,
    /// The public half (to tell which key a Secret holds).
    pub api_key: String,
    /// Where the key stands with verification.
    pub verification: Verification,
}

/// Verification of a key pair (ThreatWinds keys need their emailed code; Datonis keys none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The provider has no verification (Datonis).
    NotRequired,
    /// The code was accepted.
    Verified,
    /// The key waits for its code; `code_id` is the id to submit it under, if known.
    Awaiting {
        /// The outstanding `verificationCodeID`.
        code_id: Option<String>,
    },
}

impl Verification {
    /// Whether the key may be used (verified, or no verification exists).
    pub fn usable(&self) -> bool {
        !matches!(self, Verification::Awaiting { .. })
    }

    /// The outstanding code id, if the key waits for one.
    pub fn code_id(&self) -> Option<&str> {
        match self {
            Verification::Awaiting { code_id } => code_id.as_deref(),
            _ => None,
        }
    }
}

/// A create attempt recorded before its remote call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// Attempt number (unique per resource).
    pub attempt: u32,
    /// Deterministic remote name (ThreatWinds).
    pub remote_name: Option<String>,
    /// When the attempt was recorded.
    pub started_at: DateTime<Utc>,
    /// Why the key is being created.
    pub purpose: CreatePurpose,
    /// Datonis role asked for, if recorded.
    pub role_key: Option<String>,
    /// Validity asked for, if recorded.
    pub validity_days: Option<u32>,
}

impl Intent {
    /// Whether the new key goes to the Secret's pending slot (the previous key keeps
    /// serving until the new one is verified).
    pub fn staged(&self) -> bool {
        self.purpose == CreatePurpose::Replace
    }
}

/// A created key pair that does not serve yet (ThreatWinds replacement).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    /// The waiting key.
    pub key: KeyRecord,
    /// What it waits for.
    pub stage: ReplacementStage,
}

/// Where an `ApiKeyPair`'s lifecycle stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// No key and no attempt in flight.
    Empty,
    /// A create attempt is recorded and its outcome is unknown until recovery looks.
    /// `previous` is the key the status still records: it keeps serving (`Replace`) or is
    /// being retired (`SecretLost`, `RemoteKeyMissing`).
    Creating {
        /// The attempt.
        intent: Intent,
        /// The key recorded before the attempt.
        previous: Option<KeyRecord>,
    },
    /// A key serves; a replacement may wait beside it.
    Active {
        /// The key in the Secret's current slot.
        key: KeyRecord,
        /// A replacement waiting for its code or for its promotion to finish.
        replacement: Option<Replacement>,
    },
}

/// A status whose fields contradict each other: reported, never guessed at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the status is inconsistent: {0}; the operator changes nothing until status.{1} is corrected (removing the key's fields would make it create a new key and lose this one)"
)]
pub struct InconsistentStatus(pub String, pub &'static str);

impl KeyState {
    /// Parses the lifecycle state of a resource whose keys live at a `kind` provider.
    pub fn parse(
        status: &ApiKeyPairStatus,
        kind: ProviderKind,
    ) -> Result<Self, InconsistentStatus> {
        let key = serving_key(status, kind)?;
        if let Some(pending) = &status.pending_create {
            if status.pending_key.is_some() {
                return Err(InconsistentStatus(
                    "a create attempt and a replacement are both recorded".into(),
                    "pendingKey",
                ));
            }
            let intent = intent(pending)?;
            if intent.purpose != CreatePurpose::Initial && key.is_none() {
                return Err(InconsistentStatus(
                    format!("a {:?} attempt without a recorded key", intent.purpose),
                    "pendingCreate",
                ));
            }
            return Ok(KeyState::Creating {
                intent,
                previous: key,
            });
        }
        let replacement = status.pending_key.as_deref().map(replacement).transpose()?;
        match (key, replacement) {
            (None, None) => Ok(KeyState::Empty),
            (None, Some(_)) => Err(InconsistentStatus(
                "a replacement without a serving key".into(),
                "pendingKey",
            )),
            (Some(key), replacement) => Ok(KeyState::Active { key, replacement }),
        }
    }

    /// The key the status records as serving, if any.
    pub fn serving(&self) -> Option<&KeyRecord> {
        match self {
            KeyState::Empty => None,
            KeyState::Creating { previous, .. } => previous.as_ref(),
            KeyState::Active { key, .. } => Some(key),
        }
    }
}

/// Every remote key a status owns: the serving key, a replacement, and a previous key in
/// its grace period. (A key an attempt in flight may have made is not recorded yet.)
pub fn owned_key_ids(status: &ApiKeyPairStatus) -> Vec<&str> {
    [
        status.key_id.as_deref(),
        status.pending_key.as_ref().map(|p| p.key_id.as_str()),
        status.previous_key.as_ref().map(|p| p.key_id.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn intent(pending: &PendingCreate) -> Result<Intent, InconsistentStatus> {
    let started_at = DateTime::parse_from_rfc3339(&pending.started_at)
        .map_err(|_| {
            InconsistentStatus(
                format!("startedAt {:?} is not RFC 3339", pending.started_at),
                "pendingCreate",
            )
        })?
        .with_timezone(&Utc);
    if pending.purpose == CreatePurpose::Unknown {
        return Err(InconsistentStatus(
            "pendingCreate.purpose has a value this version does not know".into(),
            "pendingCreate",
        ));
    }
    Ok(Intent {
        attempt: pending.attempt,
        remote_name: pending.remote_name.clone(),
        started_at,
        purpose: pending.purpose,
        role_key: pending.role_key.clone(),
        validity_days: pending.validity_days,
    })
}

fn replacement(pending: &PendingKey) -> Result<Replacement, InconsistentStatus> {
    let api_key = pending
        .api_key
        .clone()
        .ok_or_else(|| InconsistentStatus("the replacement has no apiKey".into(), "pendingKey"))?;
    let verification = match pending.waiting_for {
        ReplacementStage::VerificationCode => Verification::Awaiting {
            code_id: pending.verification_code_id.clone(),
        },
        ReplacementStage::Promotion => Verification::Verified,
        ReplacementStage::Unknown => {
            return Err(InconsistentStatus(
                "pendingKey.waitingFor has a value this version does not know".into(),
                "pendingKey",
            ));
        }
    };
    Ok(Replacement {
        key: KeyRecord {
            key_id: pending.key_id.clone(),
            api_key,
            verification,
        },
        stage: pending.waiting_for,
    })
}

fn serving_key(
    status: &ApiKeyPairStatus,
    kind: ProviderKind,
) -> Result<Option<KeyRecord>, InconsistentStatus> {
    match (&status.key_id, &status.api_key) {
        (None, None) => Ok(None),
        (Some(key_id), Some(api_key)) => {
            let verification = match (kind, status.verified) {
                (ProviderKind::Datonis, _) => Verification::NotRequired,
                (ProviderKind::Threatwinds, Some(true)) => Verification::Verified,
                (ProviderKind::Threatwinds, _) => Verification::Awaiting {
                    code_id: status.verification_code_id.clone(),
                },
            };
            Ok(Some(KeyRecord {
                key_id: key_id.clone(),
                api_key: api_key.clone(),
                verification,
            }))
        }
        (Some(_), None) => Err(InconsistentStatus(
            "keyID is recorded without apiKey".into(),
            "keyID",
        )),
        (None, Some(_)) => Err(InconsistentStatus(
            "apiKey is recorded without keyID".into(),
            "apiKey",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(verified: Option<bool>) -> ApiKeyPairStatus {
        ApiKeyPairStatus {
            key_id: Some("k1".into()),
            api_key: Some("a1".into()),
            verified,
            verification_code_id: Some("c1".into()),
            ..Default::default()
        }
    }

    fn intent(purpose: CreatePurpose) -> PendingCreate {
        PendingCreate {
            attempt: 2,
            remote_name: Some("n [x.2]".into()),
            started_at: "2026-01-01T00:00:00Z".into(),
            purpose,
            rotation_request: None,
            role_key: None,
            validity_days: None,
        }
    }

    fn pending_key(stage: ReplacementStage) -> PendingKey {
        PendingKey {
            key_id: "k2".into(),
            api_key: Some("a2".into()),
            key_name: None,
            expire_at: None,
            verification_code_id: Some("c2".into()),
            waiting_for: stage,
        }
    }

    #[test]
    fn an_empty_status_is_empty() {
        let state = KeyState::parse(&ApiKeyPairStatus::default(), ProviderKind::Threatwinds);
        assert_eq!(state, Ok(KeyState::Empty));
    }

    #[test]
    fn verification_depends_on_the_provider_and_the_flag() {
        let tw = KeyState::parse(&keyed(Some(false)), ProviderKind::Threatwinds).unwrap();
        assert_eq!(
            tw.serving().unwrap().verification,
            Verification::Awaiting {
                code_id: Some("c1".into())
            }
        );
        let tw = KeyState::parse(&keyed(None), ProviderKind::Threatwinds).unwrap();
        assert!(
            !tw.serving().unwrap().verification.usable(),
            "unknown is not verified"
        );
        let tw = KeyState::parse(&keyed(Some(true)), ProviderKind::Threatwinds).unwrap();
        assert_eq!(tw.serving().unwrap().verification, Verification::Verified);
        let d = KeyState::parse(&keyed(None), ProviderKind::Datonis).unwrap();
        assert_eq!(d.serving().unwrap().verification, Verification::NotRequired);
    }

    #[test]
    fn an_attempt_is_creating_with_its_previous_key() {
        let mut status = keyed(Some(true));
        status.pending_create = Some(Box::new(intent(CreatePurpose::Replace)));
        let state = KeyState::parse(&status, ProviderKind::Threatwinds).unwrap();
        let KeyState::Creating { intent, previous } = state else {
            panic!("not creating");
        };
        assert!(intent.staged());
        assert_eq!(previous.unwrap().key_id, "k1");
    }

    #[test]
    fn a_replacement_is_parsed_with_its_stage() {
        let mut status = keyed(Some(true));
        status.pending_key = Some(Box::new(pending_key(ReplacementStage::VerificationCode)));
        let state = KeyState::parse(&status, ProviderKind::Threatwinds).unwrap();
        let KeyState::Active {
            replacement: Some(r),
            ..
        } = &state
        else {
            panic!("no replacement");
        };
        assert_eq!(r.key.verification.code_id(), Some("c2"));
        assert_eq!(owned_key_ids(&status), ["k1", "k2"]);
    }

    #[test]
    fn contradictions_are_errors_not_guesses() {
        let replace_nothing = ApiKeyPairStatus {
            pending_create: Some(Box::new(intent(CreatePurpose::Replace))),
            ..Default::default()
        };
        let orphan_replacement = ApiKeyPairStatus {
            pending_key: Some(Box::new(pending_key(ReplacementStage::Promotion))),
            ..Default::default()
        };
        let mut both = keyed(Some(true));
        both.pending_create = Some(Box::new(intent(CreatePurpose::Replace)));
        both.pending_key = Some(Box::new(pending_key(ReplacementStage::VerificationCode)));
        let half = ApiKeyPairStatus {
            key_id: Some("k".into()),
            ..Default::default()
        };
        let mut bad_time = ApiKeyPairStatus::default();
        let mut i = intent(CreatePurpose::Initial);
        i.started_at = "yesterday".into();
        bad_time.pending_create = Some(Box::new(i));
        for status in [replace_nothing, orphan_replacement, both, half, bad_time] {
            let parsed = KeyState::parse(&status, ProviderKind::Threatwinds);
            assert!(parsed.is_err(), "{status:?} parsed as {parsed:?}");
        }
    }

    #[test]
    fn unknown_purposes_and_stages_are_inconsistent_not_undecodable() {
        let bad = serde_json::json!({"attempt": 1, "startedAt": "2026-01-01T00:00:00Z", "purpose": "Whatever"});
        let parsed: PendingCreate = serde_json::from_value(bad).expect("decodes");
        assert_eq!(parsed.purpose, CreatePurpose::Unknown);
        let status = ApiKeyPairStatus {
            pending_create: Some(Box::new(parsed)),
            ..Default::default()
        };
        assert!(KeyState::parse(&status, ProviderKind::Datonis).is_err());
        let old = serde_json::json!({"keyID": "k", "waitingFor": "verification code"});
        let parsed: PendingKey = serde_json::from_value(old).expect("older spelling");
        assert_eq!(parsed.waiting_for, ReplacementStage::VerificationCode);
    }
}
