//! Sandbox provider servers (ThreatWinds auth v2, Datonis v3) that behave as the providers'
//! documentation says, so the operator's tests, demo and benchmarks (and users without an
//! account) have something faithful to talk to.
//!
//! This module owns the sandbox's public surface: its configuration ([`SandboxConfig`]), the
//! `keypair-operator sandbox` CLI arguments ([`SandboxArgs`]), starting and stopping a server
//! ([`spawn`], [`SandboxHandle`], [`run`]) and the JSON types of the `/_sandbox/...` control
//! endpoints. Submodules:
//! - `threatwinds`, `datonis`: the two provider APIs, their state and their error formats;
//!   each module's header lists the decisions it takes where the docs are silent.
//! - `http`: the API error type and the middleware shared by both providers (path
//!   normalisation, error/dialect rendering, per-route statistics, request logging).
//! - `faults`: fault injection (deterministic error rate, latency, rate limit, commit-then-fail).
//! - `control`: the `/_sandbox/...` endpoints (outbox, keys, stats, faults, health).
//! - `state`: the shared state, its lock discipline and the state-file persistence.
//! - `cli`: [`SandboxArgs`] and its value parsers.
//! - `tw_readings`: [`ThreatWindsReadings`], the ThreatWinds sandbox's lenient or strict
//!   reading of each point the two documentation pages leave open.
//!
//! Request path through the server: path normalisation (before routing) → routing →
//! statistics → dialect rendering → fault injection → provider handler. The control endpoints
//! are routed beside the provider API and bypass statistics, rendering and faults.

mod cli;
mod control;
mod datonis;
mod faults;
mod http;
mod readings;
mod state;
mod threatwinds;
mod tw_readings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cli::SandboxArgs;
pub use control::{Issued, SandboxStats};
pub use faults::{CommitThenFail, CommittedWrite, FaultConfig};
pub use readings::{
    DatonisReadings, EnabledFormat, ExpiryDateOrder, ListParamSource, RoleKeyPlacement,
};
pub use tw_readings::{NewCodeAuth, PathCase, ThreatWindsReadings, UnverifiedCheck, VerifyAuth};

use state::{Shared, State};

/// Bearer token of the verified ThreatWinds session that exists from the start when no
/// `--session-token` is given (and in [`SandboxConfig::threatwinds`]).
pub const DEFAULT_SESSION_TOKEN: &str =
    "sandboxSessionToken0000000000000000000000000000000000000000000000";
/// E-mail of the ThreatWinds user that owns the sessions given by `--session-token`.
pub const DEFAULT_THREATWINDS_EMAIL: &str = "sandbox@threatwinds.test";
/// Datonis account that exists when no `--user` is given (and in [`SandboxConfig::datonis`]).
pub const DEFAULT_DATONIS_EMAIL: &str = "sandbox@datonis.test";
/// Password of [`DEFAULT_DATONIS_EMAIL`].
pub const DEFAULT_DATONIS_PASSWORD: &str = "sandbox";
/// Datonis roles that exist when no `--role` is given: the three roles of the docs' examples.
pub const DEFAULT_DATONIS_ROLES: [(&str, &str); 3] = [
    ("1946c4ce5c", "Agent"),
    ("517d8e4695", "Write Only"),
    ("dc459a67b3", "abc"),
];

/// Which provider API a sandbox serves.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SandboxProvider {
    /// ThreatWinds auth v2 (`/api/auth/v2/...`).
    Threatwinds,
    /// Datonis v3 (`/api_sign_in`, `/api/v3/key_pairs...`).
    Datonis,
}

/// Which of the two ThreatWinds documentation pages the sandbox speaks (ignored for Datonis).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    clap::ValueEnum,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// The current page: successes answer 200, errors carry `x-error`/`x-error-id` headers.
    #[default]
    Current,
    /// The older detailed page: successes answer 202, errors carry `{"uuid", "error"}` bodies.
    Detailed,
}

/// Everything a sandbox server needs to know; build one with [`SandboxConfig::threatwinds`] or
/// [`SandboxConfig::datonis`] and adjust fields, or from the CLI with [`SandboxArgs::into_config`].
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Which provider API to serve.
    pub provider: SandboxProvider,
    /// ThreatWinds documentation dialect.
    pub dialect: Dialect,
    /// ThreatWinds: bearer tokens of sessions that exist (verified) from the start, owned by
    /// [`DEFAULT_THREATWINDS_EMAIL`].
    pub session_tokens: Vec<String>,
    /// ThreatWinds session lifetime; `PUT /session/extend` pushes expiry to now + this.
    pub session_ttl: Duration,
    /// ThreatWinds verification code lifetime.
    pub code_ttl: Duration,
    /// Datonis accounts as (email, password).
    pub users: Vec<(String, String)>,
    /// Datonis auth tokens expire after this much inactivity.
    pub token_idle_timeout: Duration,
    /// Datonis account time zone in minutes east of UTC (`expiry_date` is midnight there).
    pub utc_offset_minutes: i32,
    /// Datonis roles as (role_key, role_name).
    pub roles: Vec<(String, String)>,
    /// Where state is loaded from at start and persisted to after each mutation.
    pub state_file: Option<PathBuf>,
    /// ThreatWinds: how the points the docs leave open are read (default: lenient).
    pub threatwinds_readings: ThreatWindsReadings,
    /// Datonis: which reading of the docs' open points the sandbox follows (default: all).
    pub datonis_readings: DatonisReadings,
}

impl SandboxConfig {
    fn defaults(provider: SandboxProvider) -> Self {
        SandboxConfig {
            provider,
            dialect: Dialect::Current,
            session_tokens: vec![DEFAULT_SESSION_TOKEN.to_owned()],
            session_ttl: Duration::from_secs(24 * 3600),
            code_ttl: Duration::from_secs(15 * 60),
            users: vec![(
                DEFAULT_DATONIS_EMAIL.to_owned(),
                DEFAULT_DATONIS_PASSWORD.to_owned(),
            )],
            token_idle_timeout: Duration::from_secs(30 * 60),
            // India time, so the docs' examples ("09/09/2016" -> "2016-09-08T18:30:00.000Z")
            // come out the same.
            utc_offset_minutes: 5 * 60 + 30,
            roles: DEFAULT_DATONIS_ROLES
                .iter()
                .map(|(key, name)| ((*key).to_owned(), (*name).to_owned()))
                .collect(),
            state_file: None,
            threatwinds_readings: ThreatWindsReadings::default(),
            datonis_readings: DatonisReadings::default(),
        }
    }

    /// A ThreatWinds sandbox (current dialect) with one verified session,
    /// [`DEFAULT_SESSION_TOKEN`], 24 h sessions and 15 min codes.
    pub fn threatwinds() -> Self {
        Self::defaults(SandboxProvider::Threatwinds)
    }

    /// A Datonis sandbox with the account [`DEFAULT_DATONIS_EMAIL`] /
    /// [`DEFAULT_DATONIS_PASSWORD`] on India time, the docs' three roles and a 30 min idle
    /// timeout.
    pub fn datonis() -> Self {
        Self::defaults(SandboxProvider::Datonis)
    }
}

/// Why a sandbox could not be configured, started or kept running.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A configuration value is unusable.
    #[error("invalid sandbox configuration: {0}")]
    InvalidConfig(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The state file could not be read, parsed or written.
    #[error("state file {}: {message}", path.display())]
    StateFile {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Any other I/O failure of the server (listener address, serving, signal handlers).
    #[error("sandbox I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A running sandbox server; dropping it stops the server too (without waiting).
#[derive(Debug)]
pub struct SandboxHandle {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SandboxHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL clients use, e.g. `http://127.0.0.1:8080` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests, lets in-flight ones finish (for at most 5 s) and waits for
    /// the server task to end.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => tracing::warn!(error = %err, "sandbox server failed"),
                Ok(Err(err)) => tracing::warn!(error = %err, "sandbox server task failed"),
                Err(_) => {
                    tracing::warn!("sandbox did not shut down within 5s; aborting it");
                    task.abort();
                }
            }
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a sandbox on `listener` (bind `127.0.0.1:0` for tests). Loads the state file if one
/// is configured and present, creates the configured sessions and writes the state file once
/// before serving, so an unwritable path fails here rather than on the first mutation.
pub async fn spawn(
    config: SandboxConfig,
    listener: TcpListener,
) -> Result<SandboxHandle, SandboxError> {
    let addr = listener.local_addr()?;
    let mut state = match &config.state_file {
        Some(path) => state::load(path).await?.unwrap_or_default(),
        None => State::default(),
    };
    if config.provider == SandboxProvider::Threatwinds {
        threatwinds::init(&mut state.threatwinds, &config, state::now_ms());
    }
    if config.provider == SandboxProvider::Datonis {
        datonis::init(&mut state.datonis, &config, state::now_ms());
    }
    let shared = Arc::new(Shared::new(config, state));
    shared.persist_initial().await?;

    let app = router(shared.clone());
    // Path normalisation has to happen before routing, so it wraps the whole router instead
    // of being a router layer (those run after a route has been chosen).
    let provider = shared.config.provider;
    let app = tower::util::MapRequest::new(app, move |req| {
        http::normalize_path(provider.path_literals(), req)
    });
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, axum::ServiceExt::into_make_service(app))
            .with_graceful_shutdown(async move { signal.cancelled().await })
            .await
    });
    tracing::debug!(%addr, provider = ?provider, "sandbox started");
    Ok(SandboxHandle {
        addr,
        shutdown,
        task: Some(task),
    })
}

/// The provider API behind the shared layers, beside the (unlayered) control endpoints.
fn router(shared: Arc<Shared>) -> Router {
    let api = match shared.config.provider {
        SandboxProvider::Threatwinds => threatwinds::router(),
        SandboxProvider::Datonis => datonis::router(),
    };
    // A custom fallback (not axum's default) so that merging the control router below keeps
    // this layered one: unknown paths get the provider's 404 format, statistics and faults.
    api.fallback(http::unknown_path)
        .layer(from_fn_with_state(shared.clone(), faults::inject))
        .layer(from_fn_with_state(shared.clone(), http::render))
        .layer(from_fn_with_state(shared.clone(), http::record_stats))
        .merge(control::router())
        .with_state(shared)
}

impl SandboxProvider {
    /// Route literals matched case-insensitively (the detailed ThreatWinds page spells
    /// `/KeyPair`); everything else in a path (ids, keys) keeps its case.
    fn path_literals(self) -> &'static [&'static str] {
        match self {
            SandboxProvider::Threatwinds => threatwinds::PATH_LITERALS,
            SandboxProvider::Datonis => datonis::PATH_LITERALS,
        }
    }

    /// Route template of the key-pair `write` that commit-then-fail hits, if the provider
    /// has that call.
    fn write_route(self, write: faults::CommittedWrite) -> Option<&'static str> {
        use faults::CommittedWrite::{Create, Update};
        match (self, write) {
            (SandboxProvider::Threatwinds, Create) => Some(threatwinds::CREATE_ROUTE),
            (SandboxProvider::Datonis, Create) => Some(datonis::CREATE_ROUTE),
            (SandboxProvider::Datonis, Update) => Some(datonis::UPDATE_ROUTE),
            (SandboxProvider::Threatwinds, Update) => None,
        }
    }
}

/// Runs a sandbox from CLI arguments until SIGINT or SIGTERM.
pub async fn run(args: SandboxArgs) -> Result<(), SandboxError> {
    let (config, addr) = args.into_config()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SandboxError::Bind { addr, source })?;
    let provider = config.provider;
    let handle = spawn(config, listener).await?;
    tracing::info!(
        provider = ?provider,
        url = %handle.base_url(),
        "sandbox listening; control endpoints under /_sandbox/"
    );
    let result = wait_for_signal().await;
    tracing::info!("sandbox shutting down");
    handle.shutdown().await;
    result
}

async fn wait_for_signal() -> Result<(), SandboxError> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// One key pair as `GET /_sandbox/keys` shows it: the full server-side state, secret
/// included, in one shape for both providers (fields a provider lacks are `null`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxKey {
    /// Which provider holds the key.
    pub provider: SandboxProvider,
    /// ThreatWinds `keyID`; Datonis `key_pair_key`.
    pub id: String,
    /// ThreatWinds `apiKey`; Datonis `access_key` (equal to `key_pair_key`).
    pub api_key: String,
    /// ThreatWinds `apiSecret`; Datonis `secret_key`.
    pub secret: String,
    /// ThreatWinds `keyName`.
    pub name: Option<String>,
    /// Expiry, unix seconds (Datonis: midnight of the account's zone).
    pub expires_at: i64,
    /// ThreatWinds: whether the key's e-mailed code was submitted.
    pub verified: Option<bool>,
    /// Datonis: whether the key is enabled.
    pub enabled: Option<bool>,
    /// Datonis `role_key`.
    pub role_key: Option<String>,
    /// Datonis `role_name`.
    pub role_name: Option<String>,
    /// ThreatWinds: owning user's e-mail; Datonis: owning account (`default`, or the
    /// organisation key signed in with / the OEM child organisation key).
    pub owner: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Last change, unix seconds.
    pub updated_at: i64,
}

/// What a verification code was sent for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodePurpose {
    /// Activating a session (`PUT /session/verification`).
    Session,
    /// Verifying a key pair (`PUT /keypair/verification`).
    Keypair,
}

/// One "e-mail" the ThreatWinds sandbox sent, as `GET /_sandbox/outbox` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEmail {
    /// Recipient (the user's e-mail).
    pub email: String,
    /// The code's id, as returned by the API call that sent it.
    #[serde(rename = "verificationCodeID")]
    pub verification_code_id: String,
    /// The six-digit code.
    pub code: String,
    /// What the code is for.
    pub purpose: CodePurpose,
    /// The key pair, for [`CodePurpose::Keypair`].
    #[serde(rename = "keyID", default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The session, for [`CodePurpose::Session`].
    #[serde(rename = "sessionID", default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When it was sent, unix seconds.
    #[serde(rename = "sentAt")]
    pub sent_at: i64,
}
