//! Shared sandbox state, its lock discipline and state-file persistence.
//!
//! All provider state sits in one [`State`] behind a std `Mutex`: handlers do their whole
//! check-and-change inside one closure ([`Shared::read`] / [`Shared::mutate`]), so a request
//! is atomic and the lock is never held across an `.await`. With a state file, `mutate`
//! serialises a snapshot under the lock and writes it (temp file + rename) after releasing
//! it, before the response goes out; snapshots carry a sequence number so a slow, older write
//! never replaces a newer one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::control::SandboxStats;
use super::datonis::DtState;
use super::faults::FaultState;
use super::threatwinds::TwState;
use super::{SandboxConfig, SandboxError};

/// Everything a restarted sandbox must keep. Only the configured provider's half is used.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    #[serde(default)]
    pub(crate) threatwinds: TwState,
    #[serde(default)]
    pub(crate) datonis: DtState,
}

/// State and configuration shared by every request of one sandbox.
pub(crate) struct Shared {
    pub(crate) config: SandboxConfig,
    state: Mutex<State>,
    pub(crate) faults: Mutex<FaultState>,
    pub(crate) stats: Mutex<SandboxStats>,
    persister: Option<Persister>,
}

impl Shared {
    pub(crate) fn new(config: SandboxConfig, state: State) -> Self {
        let persister = config.state_file.clone().map(Persister::new);
        Shared {
            config,
            state: Mutex::new(state),
            faults: Mutex::new(FaultState::default()),
            stats: Mutex::new(SandboxStats::new()),
            persister,
        }
    }

    /// Runs `f` under the state lock without persisting: for reads, and for bookkeeping a
    /// restart may lose (a Datonis token's last-activity time).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut lock(&self.state))
    }

    /// Runs `f` under the state lock and, if it succeeded and a state file is configured,
    /// persists the new state before returning.
    pub(crate) async fn mutate<T, E>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let (result, snapshot) = {
            let mut state = lock(&self.state);
            let result = f(&mut state);
            let snapshot = match (&result, &self.persister) {
                (Ok(_), Some(persister)) => persister.snapshot(&state),
                _ => None,
            };
            (result, snapshot)
        };
        if let (Some(persister), Some(snapshot)) = (&self.persister, snapshot)
            && let Err(err) = persister.write(snapshot).await
        {
            // The change is already visible to other requests; failing this one would only
            // make the client retry something that happened.
            tracing::error!(error = %err, "sandbox could not persist its state");
        }
        result
    }

    /// Writes the state file once at start.
    pub(crate) async fn persist_initial(&self) -> Result<(), SandboxError> {
        let Some(persister) = &self.persister else {
            return Ok(());
        };
        let snapshot = persister.snapshot(&lock(&self.state));
        match snapshot {
            Some(snapshot) => persister.write(snapshot).await,
            None => Ok(()),
        }
    }
}

/// Locks a mutex, recovering from poisoning: a panicking request must not take the whole
/// sandbox down with it (and the state is only changed by code that cannot panic midway).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Snapshot {
    seq: u64,
    bytes: Vec<u8>,
}

struct Persister {
    path: PathBuf,
    next_seq: AtomicU64,
    /// Sequence number of the newest snapshot on disk; also serialises writers.
    written: tokio::sync::Mutex<u64>,
}

impl Persister {
    fn new(path: PathBuf) -> Self {
        Persister {
            path,
            next_seq: AtomicU64::new(1),
            written: tokio::sync::Mutex::new(0),
        }
    }

    /// Called under the state lock, so sequence numbers follow the order of changes.
    fn snapshot(&self, state: &State) -> Option<Snapshot> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        match serde_json::to_vec(state) {
            Ok(bytes) => Some(Snapshot { seq, bytes }),
            Err(err) => {
                tracing::error!(error = %err, "sandbox could not serialise its state");
                None
            }
        }
    }

    async fn write(&self, snapshot: Snapshot) -> Result<(), SandboxError> {
        let mut written = self.written.lock().await;
        if snapshot.seq <= *written {
            return Ok(());
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let result = async {
            tokio::fs::write(&tmp, &snapshot.bytes).await?;
            tokio::fs::rename(&tmp, &self.path).await
        }
        .await;
        result.map_err(|err| state_file_error(&self.path, err))?;
        *written = snapshot.seq;
        Ok(())
    }
}

/// Loads the state file; `None` if it does not exist yet.
pub(crate) async fn load(path: &Path) -> Result<Option<State>, SandboxError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(state_file_error(path, err)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| state_file_error(path, err))
}

fn state_file_error(path: &Path, err: impl std::fmt::Display) -> SandboxError {
    SandboxError::StateFile {
        path: path.to_owned(),
        message: err.to_string(),
    }
}

/// Wall-clock now in unix milliseconds. Wall clock (not `Instant`) because expiry times are
/// persisted and shown to clients.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `now_ms + d`, saturating (a huge configured TTL must not overflow).
pub(crate) fn add_ms(now_ms: i64, d: std::time::Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

/// Random letters and digits (ThreatWinds keys, secrets, bearer tokens).
pub(crate) fn random_alphanumeric(len: usize) -> String {
    random_string(ALPHANUMERIC, len)
}

/// Random lowercase hex (Datonis keys and secrets).
pub(crate) fn random_hex(len: usize) -> String {
    random_string(HEX, len)
}

/// Random URL-safe base64 alphabet (Datonis auth tokens look like `WtUFnj8pvSxVnH9e_xkq7A`).
pub(crate) fn random_url_safe(len: usize) -> String {
    random_string(URL_SAFE, len)
}

/// A six-digit verification code.
pub(crate) fn random_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000u32))
}

/// A fresh UUID v4 string (ids, error ids).
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
