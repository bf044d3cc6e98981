//! What a trial does, as data: its shape (provider, dialect, replicas) and a list of
//! operations, all drawn from one seed. A list can be printed, edited and replayed
//! (`CHAOS_OPS`), and shrunk by dropping operations.

use keypair_operator::sandbox::Dialect;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::proxy::ApiFaults;

/// Names of the `ApiKeyPair`s a trial plays with (k0, k1, ...).
pub const NAMES: usize = 3;

/// The step boundaries the operator can be aborted at (`KPO_FAILPOINT`).
pub const FAILPOINTS: [&str; 7] = [
    "intent-written",
    "remote-created",
    "secret-written",
    "status-written",
    "remote-deleted",
    "previous-deleted",
    "finalizer-removed",
];

/// The provider a trial runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Provider {
    /// ThreatWinds in one of its documentation dialects.
    ThreatWinds(#[serde(with = "dialect")] Dialect),
    /// Datonis.
    Datonis,
}

mod dialect {
    use keypair_operator::sandbox::Dialect;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Dialect, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *d == Dialect::Current {
            "current"
        } else {
            "detailed"
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Dialect, D::Error> {
        Ok(if String::deserialize(d)? == "current" {
            Dialect::Current
        } else {
            Dialect::Detailed
        })
    }
}

/// A trial's fixed setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub provider: Provider,
    /// 1, or 2 with leader election.
    pub replicas: usize,
}

/// What a user edits in a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Edit {
    /// `validityDays` (ThreatWinds: a replacement; Datonis: an update).
    Validity(u32),
    /// A `secretTemplate` label value (a Secret update only).
    Label(u8),
    /// `deletionPolicy`: Delete, or Orphan (ThreatWinds) / Disable (Datonis).
    KeepOnDelete(bool),
    /// ThreatWinds `keyName` (a replacement); Datonis `enabled`.
    Rename(u8),
    /// `suspend` (lifted before the checks, as a user would).
    Suspend(bool),
    /// `secretName`: the resource's name (0), or `<name>-s<n>` (the Secret moves).
    SecretName(u8),
    /// `renewBefore`: the default (0), `72h`, `240h`.
    RenewBefore(u8),
    /// `checkInterval`: the operator's (0), `2s`, `1h`.
    CheckInterval(u8),
    /// A `secretTemplate` annotation value.
    Annotation(u8),
    /// Datonis `roleKey`, one of the sandbox's roles (no effect on ThreatWinds).
    Role(u8),
}

/// Provider misbehaviour set through the sandbox's `PUT /_sandbox/faults`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderFaults {
    pub latency_ms: u64,
    pub error_rate: f64,
    pub error_status: u16,
    pub rate_limit_rps: Option<f64>,
    /// A create that commits and then fails this way (sandbox `commit_then_fail`).
    pub commit_then_fail: Option<String>,
}

/// One step of a trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Apply `k<n>` with its current desired spec (create, or re-apply).
    Apply(usize),
    /// Change one field of `k<n>`'s desired spec and apply it.
    Edit(usize, Edit),
    /// Delete `k<n>` (without waiting).
    Delete(usize),
    /// Delete `k<n>`'s Secret.
    DeleteSecret(usize),
    /// Overwrite the secret in `k<n>`'s Secret with garbage.
    CorruptSecret(usize),
    /// `keypairs.dev/rotate` on `k<n>`.
    Rotate(usize),
    /// ThreatWinds: `keypairs.dev/request-new-code` on `k<n>`.
    RequestNewCode(usize),
    /// ThreatWinds: put the right (true) or a wrong code into `k<n>`'s code Secret.
    SubmitCode(usize, bool),
    /// Put wrong credentials into the provider's Secret.
    BreakCredentials,
    /// New valid credentials (ThreatWinds: a new session; Datonis: the right password).
    RenewCredentials,
    /// Every provider session / auth token expires.
    ExpireSessions,
    /// The key `k<n>` uses disappears at the provider behind the operator's back.
    RemoveRemoteKey(usize),
    /// Provider faults from now on.
    ProviderFaults(ProviderFaults),
    /// Apiserver faults (through the proxy) from now on.
    ApiFaults(ApiFaults),
    /// kill -9 replica `r` (the leader when 0 and there are two), down for `ops` steps.
    Kill { replica: usize, ops: usize },
    /// Restart replica `r` armed to abort at a failpoint.
    Failpoint { replica: usize, name: String },
    /// Let the operator work for this many milliseconds.
    Pause(u64),
    /// Never drawn: harm only a broken operator should cause, to prove the checks fail.
    Sabotage(Sabotage),
}

/// Planted faults for the campaign's self-test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sabotage {
    /// Once `k<n>` has a key, remove its finalizer and delete it: its key is orphaned.
    StripFinalizer(usize),
    /// An event quoting a remote key's secret.
    LeakToEvent,
}

impl Op {
    /// The kind, for the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Apply(_) => "user apply",
            Op::Edit(..) => "user edit spec",
            Op::Delete(_) => "user delete",
            Op::DeleteSecret(_) => "user delete Secret",
            Op::CorruptSecret(_) => "user corrupt Secret",
            Op::Rotate(_) => "user rotate",
            Op::RequestNewCode(_) => "user new code",
            Op::SubmitCode(_, true) => "user right code",
            Op::SubmitCode(_, false) => "user wrong code",
            Op::BreakCredentials => "user wrong credentials",
            Op::RenewCredentials => "user new credentials",
            Op::ExpireSessions => "provider session expiry",
            Op::RemoveRemoteKey(_) => "provider key deleted behind",
            Op::ProviderFaults(_) => "provider fault profile",
            Op::ApiFaults(_) => "api fault profile",
            Op::Kill { .. } => "operator kill -9",
            Op::Failpoint { .. } => "operator failpoint armed",
            Op::Pause(_) => "pause",
            Op::Sabotage(_) => "sabotage",
        }
    }
}

/// A trial drawn from `seed`: its shape and `steps` operations.
pub fn generate(seed: u64, steps: usize) -> (Shape, Vec<Op>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let provider = match rng.random_range(0..3) {
        0 => Provider::ThreatWinds(Dialect::Current),
        1 => Provider::ThreatWinds(Dialect::Detailed),
        _ => Provider::Datonis,
    };
    let shape = Shape {
        provider,
        replicas: if rng.random_bool(0.3) { 2 } else { 1 },
    };
    // Every trial starts with at least one resource, so faults have something to hit.
    let mut ops = vec![Op::Apply(0)];
    while ops.len() < steps {
        ops.push(one_op(&mut rng, shape));
    }
    (shape, ops)
}

fn one_op(rng: &mut StdRng, shape: Shape) -> Op {
    let threatwinds = matches!(shape.provider, Provider::ThreatWinds(_));
    let k = rng.random_range(0..NAMES);
    let replica = rng.random_range(0..shape.replicas);
    loop {
        let op = match rng.random_range(0..100) {
            0..12 => Op::Apply(k),
            12..22 => Op::Edit(k, edit(rng)),
            22..27 => Op::Delete(k),
            27..31 => Op::DeleteSecret(k),
            31..35 => Op::CorruptSecret(k),
            35..39 => Op::Rotate(k),
            39..42 if threatwinds => Op::RequestNewCode(k),
            42..50 if threatwinds => Op::SubmitCode(k, rng.random_bool(0.75)),
            50..53 => Op::BreakCredentials,
            53..56 => Op::RenewCredentials,
            56..58 => Op::ExpireSessions,
            58..61 => Op::RemoveRemoteKey(k),
            61..67 => Op::ProviderFaults(provider_faults(rng)),
            67..73 => Op::ApiFaults(api_faults(rng)),
            73..79 => Op::Kill {
                replica,
                ops: rng.random_range(0..3),
            },
            79..84 => Op::Failpoint {
                replica,
                name: FAILPOINTS[rng.random_range(0..FAILPOINTS.len())].to_owned(),
            },
            84..100 => Op::Pause(rng.random_range(100..2000)),
            _ => continue,
        };
        return op;
    }
}

fn edit(rng: &mut StdRng) -> Edit {
    match rng.random_range(0..10) {
        0 => Edit::Validity([30, 45, 90][rng.random_range(0..3)]),
        1 => Edit::Label(rng.random_range(0..4)),
        2 => Edit::KeepOnDelete(rng.random_bool(0.5)),
        3 => Edit::Rename(rng.random_range(0..3)),
        4 => Edit::Suspend(rng.random_bool(0.5)),
        5 => Edit::SecretName(rng.random_range(0..3)),
        6 => Edit::RenewBefore(rng.random_range(0..3)),
        7 => Edit::CheckInterval(rng.random_range(0..3)),
        8 => Edit::Annotation(rng.random_range(0..3)),
        _ => Edit::Role(rng.random_range(0..3)),
    }
}

fn provider_faults(rng: &mut StdRng) -> ProviderFaults {
    const SPOILED: [&str; 7] = [
        "status500",
        "drop",
        "truncated",
        "wrong_shape",
        "missing_secret",
        "missing_key_id",
        "oversized",
    ];
    ProviderFaults {
        latency_ms: [0, 0, 50, 300][rng.random_range(0..4)],
        error_rate: [0.0, 0.1, 0.3][rng.random_range(0..3)],
        error_status: [500, 502, 503][rng.random_range(0..3)],
        rate_limit_rps: rng.random_bool(0.2).then_some(3.0),
        commit_then_fail: rng
            .random_bool(0.4)
            .then(|| SPOILED[rng.random_range(0..SPOILED.len())].to_owned()),
    }
}

fn api_faults(rng: &mut StdRng) -> ApiFaults {
    ApiFaults {
        rate: [0.0, 0.05, 0.15, 0.3][rng.random_range(0..4)],
        watch_drop: [0.0, 0.2, 0.5][rng.random_range(0..3)],
        watch_lag_ms: [0, 0, 300, 1500][rng.random_range(0..4)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_draws_the_same_trial() {
        for seed in 0..50 {
            assert_eq!(generate(seed, 12), generate(seed, 12));
        }
        assert_ne!(generate(1, 12), generate(2, 12));
    }

    #[test]
    fn datonis_trials_have_no_verification_codes() {
        for seed in 0..200 {
            let (shape, ops) = generate(seed, 20);
            if shape.provider == Provider::Datonis {
                assert!(
                    !ops.iter()
                        .any(|op| matches!(op, Op::RequestNewCode(_) | Op::SubmitCode(..)))
                );
            }
        }
    }
}
