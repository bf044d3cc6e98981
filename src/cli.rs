//! The `keypair-operator run` command: flags and environment, client set-up, and the
//! controllers' lifetime (until SIGINT/SIGTERM).

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::controller::{self, RunOptions, Scope, Settings};
use crate::telemetry::{self, LogFormat};

/// Flags of `keypair-operator run`; each also reads an environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Kubeconfig file; without it, `KUBECONFIG`, `~/.kube/config` or the in-cluster
    /// service account are used, in that order.
    #[arg(long, env = "KPO_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch (repeat, or comma-separate); all namespaces when empty.
    #[arg(long = "namespace", env = "KPO_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// How often each key pair is checked at its provider (jittered ±10%).
    #[arg(long, env = "KPO_CHECK_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub check_interval: Duration,
    /// How often a key pair waiting for its verification code looks for it.
    #[arg(long, env = "KPO_VERIFICATION_POLL_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub verification_poll_interval: Duration,
    /// Extend a ThreatWinds session when it expires sooner than this.
    #[arg(long, env = "KPO_SESSION_REFRESH_MARGIN", default_value = "1h", value_parser = parse_duration)]
    pub session_refresh_margin: Duration,
    /// Timeout of each provider request.
    #[arg(long, env = "KPO_PROVIDER_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub provider_timeout: Duration,
    /// Reconciles running at once per controller.
    #[arg(long, env = "KPO_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, env = "KPO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or `EnvFilter` directives (e.g. `info,keypair_operator=debug`).
    #[arg(long, env = "KPO_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Name of this instance in events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
}

/// Parses durations such as `90s`, `5m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Errors that stop `run` before the controllers start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// The Kubernetes client could not be built.
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

async fn client(args: &RunArgs) -> Result<Client, RunError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| RunError::Kubeconfig(e.to_string()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| RunError::Kubeconfig(e.to_string()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| RunError::Kubeconfig(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the operator until SIGINT/SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    telemetry::init_logging(args.log_format, &args.log_level);
    let client = client(&args).await?;
    let scope = if args.namespaces.is_empty() {
        Scope::All
    } else {
        Scope::Namespaces(args.namespaces.clone())
    };
    let options = RunOptions {
        settings: Settings {
            check_interval: args.check_interval,
            verification_poll_interval: args.verification_poll_interval,
            session_refresh_margin: args.session_refresh_margin,
            concurrency: args.concurrency,
            provider_timeout: args.provider_timeout,
            ..Settings::default()
        },
        scope: Some(scope),
        instance: args.instance.clone(),
    };
    controller::run(client, options, shutdown_signal()).await;
    Ok(())
}
