//! The `keypair-operator run` command: flags and environment, client set-up, and the
//! controllers' lifetime (until SIGINT/SIGTERM).

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use std::sync::Arc;

use tracing::{info, warn};

use crate::controller::{self, RunOptions, Scope, Settings};
use crate::telemetry::{self, Health, LogFormat, Metrics};

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
    /// How often each key pair is checked at its provider (each at its own fixed point of
    /// the interval, drawn from its UID).
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
    /// Largest back-off between retries of a failing resource.
    #[arg(long, env = "KPO_MAX_BACKOFF", default_value = "5m", value_parser = parse_duration)]
    pub max_backoff: Duration,
    /// Reconciles running at once per controller.
    #[arg(long, env = "KPO_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, env = "KPO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or `EnvFilter` directives (e.g. `info,keypair_operator=debug`).
    #[arg(long, env = "KPO_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Name of this instance in events and in the leader lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "KPO_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: std::net::SocketAddr,
    /// Reconcile only while holding the leader lease (for more than one replica).
    #[arg(long, env = "KPO_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the leader lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader lease.
    #[arg(long, env = "KPO_LEASE_NAME", default_value = "keypair-operator")]
    pub lease_name: String,
    /// This replica's shard: only the `ApiKeyPair`s matching this label selector (e.g.
    /// `team=a`, `shard notin (a,b)`); all when unset. Give each shard its own
    /// `--lease-name`, and selectors that split the resources between the shards.
    #[arg(long, env = "KPO_SHARD_SELECTOR")]
    pub shard_selector: Option<String>,
    /// Run the provider controllers here (provider status and session extension); with
    /// shards, exactly one shard should.
    #[arg(long, env = "KPO_MANAGE_PROVIDERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub manage_providers: bool,
    /// How long a lease lasts without renewal; a standby takes over after it lapses.
    #[arg(long, env = "KPO_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
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
    /// The HTTP port could not be bound or served.
    #[error("HTTP endpoint {0}: {1}")]
    Http(std::net::SocketAddr, std::io::Error),
    /// The shard selector is not a valid label selector.
    #[error("--shard-selector {0:?}: {1}")]
    ShardSelector(String, String),
    /// Leader election could not start.
    #[error("leader election: {0}")]
    LeaderElection(String),
}

async fn client(args: &RunArgs, metrics: Arc<Metrics>) -> Result<Client, RunError> {
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
    Ok(telemetry::kube_requests::counting_client(config, metrics)?)
}

/// The shutdown signal, shareable between the controllers and the HTTP endpoint.
type ShutdownSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>;

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
    crate::memory::map_large_buffers_apart();
    crate::memory::spawn_trimmer();
    let metrics = Arc::new(Metrics::new());
    let client = client(&args, metrics.clone()).await?;
    let health = Arc::new(Health::default());
    let listener = telemetry::http::bind(args.http_listen)
        .await
        .map_err(|e| RunError::Http(args.http_listen, e))?;
    check_shard_selector(&client, &args).await?;
    let signal: ShutdownSignal = Box::pin(shutdown_signal());
    let shutdown = futures::FutureExt::shared(signal);
    let server = tokio::spawn(telemetry::http::serve(
        listener,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let scope = if args.namespaces.is_empty() {
        Scope::All
    } else {
        Scope::Namespaces(args.namespaces.clone())
    };
    let mut options = RunOptions {
        settings: Settings {
            check_interval: args.check_interval,
            verification_poll_interval: args.verification_poll_interval,
            session_refresh_margin: args.session_refresh_margin,
            concurrency: args.concurrency,
            provider_timeout: args.provider_timeout,
            ..Settings::default()
        },
        scope: Some(scope),
        shard_selector: args.shard_selector.clone(),
        without_providers: !args.manage_providers,
        instance: args.instance.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    options.settings.max_backoff = args.max_backoff;
    if args.leader_elect {
        lead_then_run(client, options, &args, shutdown.clone()).await?;
    } else {
        metrics.set_leader(true);
        health.set_leading(true);
        controller::run(client, options, shutdown.clone()).await;
    }
    if futures::FutureExt::now_or_never(shutdown).is_none() {
        health.set_stopped();
        warn!("the controllers stopped without a shutdown signal; /healthz now fails");
    }
    match server.await {
        Ok(result) => result.map_err(|e| RunError::Http(args.http_listen, e)),
        Err(_) => Ok(()),
    }
}

/// Refuses a shard selector the API server does not accept, before anything starts (the
/// watches would otherwise retry it forever).
async fn check_shard_selector(client: &Client, args: &RunArgs) -> Result<(), RunError> {
    let Some(selector) = &args.shard_selector else {
        return Ok(());
    };
    let api: kube::Api<crate::crd::ApiKeyPair> = match args.namespaces.first() {
        Some(namespace) => kube::Api::namespaced(client.clone(), namespace),
        None => kube::Api::all(client.clone()),
    };
    let probe = kube::api::ListParams::default().labels(selector).limit(1);
    match api.list_metadata(&probe).await {
        Err(kube::Error::Api(e)) if e.code == 400 => {
            Err(RunError::ShardSelector(selector.clone(), e.message))
        }
        _ => Ok(()),
    }
}

/// First and longest wait between attempts to read the leader lease at start.
const LEASE_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(500);
const LEASE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits for the leader lease, runs the controllers while holding it, and stops them the
/// moment it is lost (aborting the controllers' task cancels in-flight reconciles, which
/// every step of the lifecycle is built to survive); then waits for the lease again. On
/// shutdown, in-flight reconciles finish and the lease is released.
async fn lead_then_run(
    client: Client,
    options: RunOptions,
    args: &RunArgs,
    shutdown: futures::future::Shared<ShutdownSignal>,
) -> Result<(), RunError> {
    let namespace = args.leader_election_namespace.clone().ok_or_else(|| {
        RunError::LeaderElection(
            "--leader-election-namespace (or POD_NAMESPACE) is required with --leader-elect"
                .to_owned(),
        )
    })?;
    let identity = args
        .instance
        .clone()
        .unwrap_or_else(|| format!("keypair-operator-{}", uuid::Uuid::new_v4()));
    let duration = args.lease_duration.as_secs().max(2);
    let build = || {
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace((duration / 3).max(1))
            .with_field_manager(controller::MANAGER)
            .build()
    };
    // The lease is read (or created) first; one failed request must not end the process,
    // as the lease manager's own loop does not for its later requests.
    let mut retry = LEASE_RETRY_MIN;
    let manager = loop {
        match build().await {
            Ok(manager) => break manager,
            Err(e) => warn!(error = %e, retry_in = ?retry, "cannot read the leader lease yet"),
        }
        tokio::select! {
            _ = shutdown.clone() => return Ok(()),
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(LEASE_RETRY_MAX);
    };
    let (mut leading, lease_task) = manager.watch().await;
    loop {
        // A standby is ready: it serves its probes and waits.
        options.health.set_ready(true);
        info!(%identity, lease = %args.lease_name, "waiting for the leader lease");
        // No `watch::Ref` may outlive the wait: it holds a lock the lease task needs.
        let acquired = async { leading.wait_for(|leader| *leader).await.is_ok() };
        tokio::select! {
            _ = shutdown.clone() => break,
            ok = acquired => if !ok { break },
        }
        info!(%identity, "acquired the leader lease; reconciling");
        options.metrics.set_leader(true);
        options.health.set_leading(true);
        options.health.set_ready(false);
        let mut controllers = tokio::spawn(controller::run(
            client.clone(),
            options.clone(),
            shutdown.clone(),
        ));
        tokio::select! {
            _ = &mut controllers => break,
            _ = leading.changed() => {
                controllers.abort();
                // Wait until the aborted reconciles are gone, so none of them exports a
                // per-key series after they are cleared.
                let _ = (&mut controllers).await;
                warn!(%identity, "lost the leader lease; stopped reconciling");
                options.metrics.set_leader(false);
                options.health.set_leading(false);
            }
        }
    }
    options.metrics.set_leader(false);
    options.health.set_leading(false);
    drop(leading);
    // Dropping the receiver makes the lease manager release the lease and stop.
    if let Ok(Err(e)) = lease_task.await {
        warn!(error = %e, "could not release the leader lease");
    }
    Ok(())
}
