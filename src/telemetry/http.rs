//! The operator's one HTTP port: `/metrics` (Prometheus text), `/healthz` (the controllers
//! are alive: it fails once they stopped without being asked to, so the kubelet restarts
//! the pod), `/readyz` (this replica can serve: caches synced while leading, or standing by
//! for the leader lease; a standby is ready without leading).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Metrics;

/// Liveness and readiness, shared between the controllers and the HTTP endpoint.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    stopped: AtomicBool,
    leading: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            leading: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Marks the process ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records that the controllers (or the wait for the leader lease) stopped although no
    /// shutdown was asked for: from now on `/healthz` fails.
    pub fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether the controllers, or the wait for the lease, are still running.
    pub fn is_alive(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
    }

    /// Records whether this replica leads (reconciles) or stands by.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
    }

    /// Whether this replica leads.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the HTTP port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

async fn healthz(State(shared): State<Shared>) -> impl IntoResponse {
    probe(&shared.health).0
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    probe(&shared.health).1
}

type Answer = (StatusCode, &'static str);

/// The answers of `/healthz` and `/readyz` for `health`.
fn probe(health: &Health) -> (Answer, Answer) {
    let alive = if health.is_alive() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "controllers stopped")
    };
    let ready = match (health.is_alive(), health.is_ready(), health.is_leading()) {
        (false, _, _) => (StatusCode::SERVICE_UNAVAILABLE, "controllers stopped"),
        (true, true, true) => (StatusCode::OK, "ready: leading"),
        (true, true, false) => (StatusCode::OK, "ready: standing by for the leader lease"),
        (true, false, _) => (StatusCode::SERVICE_UNAVAILABLE, "caches not synced"),
    };
    (alive, ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_follow_liveness_leadership_and_caches() {
        let health = Health::default();
        let (alive, ready) = probe(&health);
        assert_eq!(alive.0, StatusCode::OK);
        assert_eq!(
            ready.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "caches not synced yet"
        );
        // A standby: ready without leading.
        health.set_ready(true);
        assert_eq!(
            probe(&health).1,
            (StatusCode::OK, "ready: standing by for the leader lease")
        );
        // The leader, caches syncing, then synced.
        health.set_leading(true);
        health.set_ready(false);
        assert_eq!(probe(&health).1.0, StatusCode::SERVICE_UNAVAILABLE);
        health.set_ready(true);
        assert_eq!(probe(&health).1, (StatusCode::OK, "ready: leading"));
        // Controllers that stopped on their own fail both probes.
        health.set_stopped();
        let (alive, ready) = probe(&health);
        assert_eq!(alive.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ready.0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
