//! The `/_sandbox/...` control endpoints: no auth, no faults, not counted in statistics.
//! Errors here are plain `{"error": "..."}` bodies whatever the provider.
//!
//! - `GET /_sandbox/health`: `{"status": "ok", "provider": ...}`.
//! - `GET /_sandbox/outbox`: the e-mails sent ([`OutboxEmail`]; Datonis sends none: `[]`).
//! - `GET /_sandbox/keys`: every existing key pair with its full state ([`SandboxKey`]).
//! - `DELETE /_sandbox/keys/{id}`: removes a key pair behind its owner's back (404 if none).
//! - `GET /_sandbox/issued`: [`Issued`], every secret the sandbox ever handed out or was
//!   configured with, so a test can prove none of them leaked.
//! - `POST /_sandbox/sessions/expire`: every ThreatWinds session and Datonis auth token
//!   stops working now.
//! - `PUT /_sandbox/sessions/{token}`: ThreatWinds only, a verified session with this
//!   bearer (new credentials, as after signing in again).
//! - `GET /_sandbox/stats`, `DELETE /_sandbox/stats`: [`SandboxStats`], and resetting them.
//! - `GET /_sandbox/faults`, `PUT /_sandbox/faults`, `DELETE /_sandbox/faults`: the
//!   [`FaultConfig`] in force; `PUT` replaces it whole (and restarts its counters),
//!   `DELETE` turns every fault off.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::faults::FaultConfig;
use super::state::{Shared, lock};
use super::{OutboxEmail, SandboxKey, SandboxProvider, datonis, threatwinds};

/// Request counts: `"METHOD /route/{template}"` → status (or `dropped`) → count. Requests
/// that matched no route count under `"METHOD (unmatched)"`.
pub type SandboxStats = BTreeMap<String, BTreeMap<String, u64>>;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sandbox/health", get(health))
        .route("/_sandbox/outbox", get(outbox))
        .route("/_sandbox/keys", get(keys))
        .route("/_sandbox/keys/{id}", delete(remove_key))
        .route("/_sandbox/issued", get(issued))
        .route("/_sandbox/sessions/expire", post(expire_sessions))
        .route("/_sandbox/sessions/{token}", put(add_session))
        .route("/_sandbox/stats", get(stats).delete(reset_stats))
        .route(
            "/_sandbox/faults",
            get(get_faults).put(put_faults).delete(clear_faults),
        )
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({"status": "ok", "provider": shared.config.provider})).into_response()
}

async fn outbox(State(shared): State<Arc<Shared>>) -> Json<Vec<OutboxEmail>> {
    Json(match shared.config.provider {
        SandboxProvider::Threatwinds => shared.read(|state| state.threatwinds.outbox()),
        SandboxProvider::Datonis => Vec::new(),
    })
}

async fn keys(State(shared): State<Arc<Shared>>) -> Json<Vec<SandboxKey>> {
    Json(shared.read(|state| match shared.config.provider {
        SandboxProvider::Threatwinds => threatwinds::sandbox_keys(&state.threatwinds),
        SandboxProvider::Datonis => datonis::sandbox_keys(&state.datonis),
    }))
}

/// Every secret a sandbox handed out or was configured with (`GET /_sandbox/issued`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Key secrets, session bearers, auth tokens and passwords, deleted keys' included.
    pub secrets: Vec<String>,
    /// Every verification code e-mailed (six digits: search for them only where digits
    /// cannot collide, e.g. not in timestamped logs).
    pub codes: Vec<String>,
}

async fn issued(State(shared): State<Arc<Shared>>) -> Json<Issued> {
    Json(shared.read(|state| match shared.config.provider {
        SandboxProvider::Threatwinds => {
            let (secrets, codes) = state.threatwinds.issued();
            Issued { secrets, codes }
        }
        SandboxProvider::Datonis => Issued {
            secrets: state.datonis.issued(&shared.config),
            codes: Vec::new(),
        },
    }))
}

async fn remove_key(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> StatusCode {
    let provider = shared.config.provider;
    let removed = shared
        .mutate(|state| {
            let removed = match provider {
                SandboxProvider::Threatwinds => state.threatwinds.remove_key(&id),
                SandboxProvider::Datonis => state.datonis.remove_key(&id),
            };
            removed.then_some(()).ok_or(())
        })
        .await;
    match removed {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(()) => StatusCode::NOT_FOUND,
    }
}

async fn expire_sessions(State(shared): State<Arc<Shared>>) -> StatusCode {
    let provider = shared.config.provider;
    let _: Result<(), ()> = shared
        .mutate(|state| {
            match provider {
                SandboxProvider::Threatwinds => state.threatwinds.expire_sessions(),
                SandboxProvider::Datonis => state.datonis.expire_tokens(),
            }
            Ok(())
        })
        .await;
    StatusCode::NO_CONTENT
}

async fn add_session(State(shared): State<Arc<Shared>>, Path(token): Path<String>) -> Response {
    if shared.config.provider != SandboxProvider::Threatwinds {
        return control_error("Datonis signs in with its configured users".to_owned());
    }
    let ttl = shared.config.session_ttl;
    let _: Result<(), ()> = shared
        .mutate(|state| {
            state.threatwinds.add_session(&token, ttl);
            Ok(())
        })
        .await;
    StatusCode::NO_CONTENT.into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<SandboxStats> {
    Json(lock(&shared.stats).clone())
}

async fn reset_stats(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.stats).clear();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Json<FaultConfig> {
    Json(lock(&shared.faults).config())
}

async fn put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let config = if body.iter().all(u8::is_ascii_whitespace) {
        FaultConfig::default()
    } else {
        match serde_json::from_slice::<FaultConfig>(&body) {
            Ok(config) => config,
            Err(err) => return control_error(format!("invalid fault configuration: {err}")),
        }
    };
    if let Err(message) = config.validate() {
        return control_error(message);
    }
    lock(&shared.faults).set(config.clone());
    tracing::debug!(?config, "sandbox faults set");
    Json(config).into_response()
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.faults).set(FaultConfig::default());
    StatusCode::NO_CONTENT
}

fn control_error(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}
