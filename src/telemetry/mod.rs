//! Telemetry: logging set-up (text or JSON lines on stderr, filtered by a level or an
//! `EnvFilter` directive; `RUST_LOG` wins when set), Prometheus [`metrics`], the
//! [`http`] endpoint that serves them with the health probes, and the Kubernetes
//! [`events`] recorder.

pub mod events;
pub mod http;
pub mod kube_requests;
pub mod metrics;

pub use http::Health;
pub use metrics::{KeyPairFigures, KeyPairLabels, Metrics, ProviderLabels};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber once; later calls are no-ops (tests start many
/// components in one process).
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
}
