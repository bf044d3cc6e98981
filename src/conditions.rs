//! The one vocabulary of condition types and reasons used in every status this operator
//! writes. Every reason a user can see is a constant here, so that docs, alerts and the
//! Argo CD health check can rely on a closed set.

/// Condition type: the resource is fully reconciled and usable.
pub const READY: &str = "Ready";
/// Condition type: the key pair is verified at the provider (ThreatWinds).
pub const VERIFIED: &str = "Verified";
/// Condition type: the `rolloutRestartTargets` picked up the key pair in the Secret.
pub const CONSUMERS_RESTARTED: &str = "ConsumersRestarted";

/// Condition status values (Kubernetes uses the strings `True`, `False`, `Unknown`).
pub mod status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// The operator cannot tell yet.
    pub const UNKNOWN: &str = "Unknown";
}

/// Reasons, in `UpperCamelCase` as the Kubernetes API conventions ask.
pub mod reason {
    /// Everything is in place.
    pub const READY: &str = "Ready";
    /// The key pair is being created or reconciled.
    pub const PROGRESSING: &str = "Progressing";
    /// The provider's credentials were checked and work.
    pub const CREDENTIALS_VALID: &str = "CredentialsValid";
    /// The provider's credential Secret is missing or lacks a key.
    pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";
    /// The provider rejected the credentials.
    pub const CREDENTIALS_REJECTED: &str = "CredentialsRejected";
    /// The referenced provider resource does not exist.
    pub const PROVIDER_NOT_FOUND: &str = "ProviderNotFound";
    /// The referenced provider may not be used from this namespace.
    pub const PROVIDER_NOT_ALLOWED: &str = "ProviderNotAllowed";
    /// The referenced provider exists but is not ready.
    pub const PROVIDER_NOT_READY: &str = "ProviderNotReady";
    /// The spec is valid for the schema but not for the chosen provider.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The provider refused the request as invalid (terminal until the spec changes).
    pub const REMOTE_REJECTED: &str = "RemoteRejected";
    /// The provider throttled the operator.
    pub const RATE_LIMITED: &str = "RateLimited";
    /// The provider refused the operation (403 without `Retry-After`): the account lacks
    /// a permission. Retried with growing back-off in case it was throttling after all.
    pub const PERMISSION_DENIED: &str = "PermissionDenied";
    /// The status contradicts itself (edited by hand?); the operator does not guess.
    pub const INCONSISTENT_STATUS: &str = "InconsistentStatus";
    /// The provider could not be reached or failed (retried with backoff).
    pub const REMOTE_UNAVAILABLE: &str = "RemoteUnavailable";
    /// The provider answered in a way the operator does not understand.
    pub const UNEXPECTED_RESPONSE: &str = "UnexpectedResponse";
    /// A Secret of the wanted name exists and is not owned by this resource.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The API secret is gone for good; the key pair is being replaced.
    pub const SECRET_LOST: &str = "SecretLost";
    /// The key pair was deleted at the provider by someone else; it is being recreated.
    pub const REMOTE_KEY_MISSING: &str = "RemoteKeyMissing";
    /// The key pair has expired.
    pub const EXPIRED: &str = "Expired";
    /// The key pair is disabled at the provider (Datonis).
    pub const DISABLED: &str = "Disabled";
    /// The key pair waits for its emailed verification code.
    pub const AWAITING_VERIFICATION_CODE: &str = "AwaitingVerificationCode";
    /// The code Secret named in `spec.verification` is missing.
    pub const VERIFICATION_CODE_MISSING: &str = "VerificationCodeMissing";
    /// The provider rejected the submitted verification code.
    pub const VERIFICATION_CODE_REJECTED: &str = "VerificationCodeRejected";
    /// The key pair is verified.
    pub const VERIFIED: &str = "Verified";
    /// The outcome of an interrupted create cannot be determined safely; a human decides.
    pub const CREATE_AMBIGUOUS: &str = "CreateAmbiguous";
    /// A replacement key pair waits (for verification) before it takes over.
    pub const REPLACEMENT_PENDING: &str = "ReplacementPending";
    /// The renewal time passed and the renewal key still waits for its emailed code; the
    /// key in use serves until it expires.
    pub const RENEWAL_AWAITING_VERIFICATION: &str = "RenewalAwaitingVerification";
    /// `spec.import` names a key pair whose credentials the Secret does not hold, or that the
    /// provider does not confirm.
    pub const IMPORT_REJECTED: &str = "ImportRejected";
    /// The `rolloutRestartTargets` were restarted for the key pair in the Secret.
    pub const RESTARTED: &str = "Restarted";
    /// The operator may not restart a `rolloutRestartTargets` workload (RBAC), or it does
    /// not exist.
    pub const RESTART_FAILED: &str = "RestartFailed";
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as the controller wants it; [`set`] turns it into a Kubernetes `Condition`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    /// Condition type, one of the constants of this module.
    pub type_: &'a str,
    /// `True`, `False` or `Unknown` (see [`status`]).
    pub status: &'a str,
    /// One of the [`reason`] constants.
    pub reason: &'a str,
    /// Human-readable, secret-free explanation.
    pub message: String,
}

/// Sets `desired` in `conditions` for `generation`. `lastTransitionTime` moves only when
/// the status changes, so re-applying an unchanged condition yields an identical list
/// (no status churn for GitOps tools). Returns whether anything changed.
pub fn set(conditions: &mut Vec<Condition>, desired: Desired<'_>, generation: Option<i64>) -> bool {
    let existing = conditions.iter().position(|c| c.type_ == desired.type_);
    let last_transition_time = match existing.map(|i| &conditions[i]) {
        Some(current) if current.status == desired.status => current.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let condition = Condition {
        type_: desired.type_.to_owned(),
        status: desired.status.to_owned(),
        reason: desired.reason.to_owned(),
        message: desired.message,
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(i) if conditions[i] == condition => false,
        Some(i) => {
            conditions[i] = condition;
            true
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// The condition of `type_`, if present.
pub fn find<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == status::TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: &'static str, reason: &'static str) -> Desired<'static> {
        Desired {
            type_: READY,
            status,
            reason,
            message: format!("{reason} message"),
        }
    }

    #[test]
    fn setting_the_same_condition_twice_changes_nothing() {
        let mut conditions = Vec::new();
        assert!(set(
            &mut conditions,
            ready(status::FALSE, reason::PROGRESSING),
            Some(1)
        ));
        let before = conditions.clone();
        assert!(!set(
            &mut conditions,
            ready(status::FALSE, reason::PROGRESSING),
            Some(1)
        ));
        assert_eq!(conditions, before);
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let old = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let mut conditions = vec![Condition {
            type_: READY.into(),
            status: status::FALSE.into(),
            reason: reason::PROGRESSING.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: old.clone(),
        }];
        assert!(set(
            &mut conditions,
            ready(status::FALSE, reason::RATE_LIMITED),
            Some(2)
        ));
        assert_eq!(
            conditions[0].last_transition_time, old,
            "same status keeps the time"
        );
        assert_eq!(conditions[0].reason, reason::RATE_LIMITED);
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert!(set(
            &mut conditions,
            ready(status::TRUE, reason::READY),
            Some(2)
        ));
        assert_ne!(
            conditions[0].last_transition_time, old,
            "a new status moves the time"
        );
        assert!(is_true(&conditions, READY));
        assert_eq!(conditions.len(), 1);
    }
}
