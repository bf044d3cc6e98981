//! How the ThreatWinds sandbox reads the points the two documentation pages leave open
//! about a server's behaviour ([`ThreatWindsReadings`]).
//!
//! The default is lenient (every documented variant is accepted, as the sandbox always
//! did); each other value is one strict reading a real server might implement. A client
//! that works against every [`ThreatWindsReadings::strict_profiles`] entry (in both
//! dialects) works whichever reading the real server follows.

use axum::extract::Request;

use super::http::{ApiError, CaseFolded};

/// Which `Authorization` form "New Verification Code" (`POST /keypair/verification`)
/// accepts. The detailed page's example sends the bare token; every other example sends
/// `Bearer <token>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NewCodeAuth {
    /// Only `Bearer <token>`; a bare token is a 400 "incorrect authorization header".
    Bearer,
    /// Only the bare token; `Bearer <token>` is taken as an unknown token (401).
    Raw,
    /// Both forms.
    #[default]
    Either,
}

/// What the check endpoint (`GET /keypair` with `api-key` / `api-secret`) answers for a
/// key pair whose e-mailed code was never submitted ("you need to verify this keypair
/// before you can use it").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnverifiedCheck {
    /// 200 with `verified: false` (the pages' check answer has a `verified` field).
    #[default]
    Allowed,
    /// 401, as for a wrong secret: an unverified key cannot be used, not even to check it.
    Unauthorized,
}

/// How route literals in a path are matched (the detailed page spells
/// `/KeyPair/verification` and `/KeyPair` once, the curl examples `/keypair/...`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PathCase {
    /// Ignoring case: `/KeyPair/verification` reaches `/keypair/verification`.
    #[default]
    AnyCase,
    /// Only the lower-case spelling; any other is an unknown path (404).
    Lowercase,
}

/// What `PUT /keypair/verification` (submit a key pair's code) needs besides the code.
/// The detailed page's example sends no `Authorization`; the current page's sends one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyAuth {
    /// Nothing: a sent `Authorization` header is ignored.
    #[default]
    Ignored,
    /// An active, verified session owning the key, checked like every management call
    /// (missing header 401, bad header 400, unknown token 401, dead session 404).
    Session,
}

/// The ThreatWinds sandbox's reading of each open point (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreatWindsReadings {
    /// `Authorization` form accepted by "New Verification Code".
    pub new_code_auth: NewCodeAuth,
    /// Check (`GET /keypair`) of an unverified key pair.
    pub unverified_check: UnverifiedCheck,
    /// Case of route literals.
    pub path_case: PathCase,
    /// Session needed to submit a key pair's verification code.
    pub verify_auth: VerifyAuth,
}

impl ThreatWindsReadings {
    /// Every reading lenient: what the sandbox did before readings existed.
    pub fn lenient() -> Self {
        Self::default()
    }

    /// Named combinations in which every open point is read strictly one way: each strict
    /// value of `new_code_auth` and `unverified_check`, with lower-case paths only and a
    /// session required for verification. Loop over these (in both dialects) to check a
    /// client against every strict reading.
    pub fn strict_profiles() -> Vec<(&'static str, ThreatWindsReadings)> {
        let strict = |new_code_auth, unverified_check| ThreatWindsReadings {
            new_code_auth,
            unverified_check,
            path_case: PathCase::Lowercase,
            verify_auth: VerifyAuth::Session,
        };
        vec![
            (
                "new-code-bearer+unverified-allowed",
                strict(NewCodeAuth::Bearer, UnverifiedCheck::Allowed),
            ),
            (
                "new-code-bearer+unverified-401",
                strict(NewCodeAuth::Bearer, UnverifiedCheck::Unauthorized),
            ),
            (
                "new-code-raw+unverified-allowed",
                strict(NewCodeAuth::Raw, UnverifiedCheck::Allowed),
            ),
            (
                "new-code-raw+unverified-401",
                strict(NewCodeAuth::Raw, UnverifiedCheck::Unauthorized),
            ),
        ]
    }

    /// The refusal a request gets before routing-level handling, if this reading refuses
    /// it: a path whose literals were written in another case under [`PathCase::Lowercase`].
    pub(crate) fn refuse(&self, req: &Request) -> Option<ApiError> {
        let folded = req.extensions().get::<CaseFolded>().is_some();
        (self.path_case == PathCase::Lowercase && folded).then(|| ApiError::not_found("not found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_lenient() {
        let r = ThreatWindsReadings::default();
        assert_eq!(r, ThreatWindsReadings::lenient());
        assert_eq!(r.new_code_auth, NewCodeAuth::Either);
        assert_eq!(r.unverified_check, UnverifiedCheck::Allowed);
        assert_eq!(r.path_case, PathCase::AnyCase);
        assert_eq!(r.verify_auth, VerifyAuth::Ignored);
    }

    #[test]
    fn strict_profiles_cover_every_strict_value_and_are_distinct() {
        let profiles = ThreatWindsReadings::strict_profiles();
        let names: std::collections::HashSet<_> = profiles.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), profiles.len());
        for (name, r) in &profiles {
            assert_ne!(r.new_code_auth, NewCodeAuth::Either, "{name}");
            assert_eq!(r.path_case, PathCase::Lowercase, "{name}");
            assert_eq!(r.verify_auth, VerifyAuth::Session, "{name}");
        }
        for want in [NewCodeAuth::Bearer, NewCodeAuth::Raw] {
            assert!(profiles.iter().any(|(_, r)| r.new_code_auth == want));
        }
        for want in [UnverifiedCheck::Allowed, UnverifiedCheck::Unauthorized] {
            assert!(profiles.iter().any(|(_, r)| r.unverified_check == want));
        }
    }
}
