//! The `kubectl keypair` plugin: the command line (clap), the Kubernetes client set-up from
//! any kubeconfig (`--kubeconfig`, `--context`, `-n` as kubectl has them), and the commands
//! `status`, `verify`, `new-code`, `rotate`, `inspect` and `orphans`.
//!
//! This module owns what the plugin prints and how it exits; it never prints a secret value
//! (API secrets, verification codes, provider credentials). The `kubectl-keypair` binary in
//! `src/bin/` only calls [`main`].
//!
//! Exit status: 0 on success, 1 on any failure (including a rejected verification code),
//! 2 on a usage error, 3 when `verify` times out.

pub mod inspect;
pub mod orphans;
pub mod status;
pub mod table;
pub mod verify;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::controller::{REQUEST_NEW_CODE_ANNOTATION, ROTATE_ANNOTATION};
use crate::crd::ApiKeyPair;

/// Field manager of every write the plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-keypair";

/// `kubectl keypair`: inspect and operate the `ApiKeyPair`s of keypair-operator.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-keypair",
    bin_name = "kubectl keypair",
    version,
    about,
    after_help = "Exit status: 0 success, 1 failure (a rejected code included), 2 usage error, 3 verify timed out."
)]
pub struct Cli {
    /// Where and as whom to connect.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection flags, named as kubectl names them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path of the kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`, then the
    /// in-cluster service account).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the namespace of the kubeconfig context, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// Output formats of `status` and `orphans`.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// A table, like `kubectl get`.
    #[default]
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// The plugin's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// A table of key pairs: provider, state, verified, expiry, renewal, failing condition.
    Status(status::StatusArgs),
    /// Submit an emailed verification code and wait until the provider accepts or rejects it.
    Verify(verify::VerifyArgs),
    /// Ask the provider to email a new verification code (sets keypairs.dev/request-new-code).
    NewCode(NameArg),
    /// Rotate the key pair once (sets keypairs.dev/rotate).
    Rotate(NameArg),
    /// Conditions, events, status fields and the provider's last answer of one key pair.
    Inspect(NameArg),
    /// Remote keys no ApiKeyPair owns, at one provider; `--delete` removes the ones the
    /// operator provably created.
    Orphans(orphans::OrphansArgs),
}

/// A single `ApiKeyPair` name.
#[derive(clap::Args, Debug)]
pub struct NameArg {
    /// Name of the ApiKeyPair.
    pub name: String,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The provider rejected the verification code.
    #[error("{0}")]
    Rejected(String),
    /// `verify` did not settle in time.
    #[error("{0}")]
    Timeout(String),
    /// The command cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// Writing the output failed, or reading the confirmation.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The provider could not be used (its client or a call).
    #[error("provider: {0}")]
    Provider(String),
}

impl PluginError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            PluginError::Timeout(_) => 3,
            _ => 1,
        }
    }
}

/// A connected client and the namespace commands work in.
#[derive(Clone)]
pub struct Target {
    /// Kubernetes client.
    pub client: Client,
    /// The `-n` namespace, or the kubeconfig context's.
    pub namespace: String,
}

impl Target {
    /// Connects as the flags (and kubeconfig) say.
    pub async fn connect(args: &KubeArgs) -> Result<Target, PluginError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| PluginError::Kubeconfig(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| PluginError::Kubeconfig(e.to_string()))?
            }
            None if args.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| PluginError::Kubeconfig(e.to_string()))?,
            None => Config::infer()
                .await
                .map_err(|e| PluginError::Kubeconfig(e.to_string()))?,
        };
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config)?;
        Ok(Target { client, namespace })
    }

    /// The `ApiKeyPair`s of the target namespace.
    pub fn key_pairs(&self) -> Api<ApiKeyPair> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One `ApiKeyPair` of the target namespace.
    pub async fn key_pair(&self, name: &str) -> Result<ApiKeyPair, PluginError> {
        self.key_pairs()
            .get_opt(name)
            .await?
            .ok_or_else(|| PluginError::NotFound(format!("ApiKeyPair {}/{name}", self.namespace)))
    }
}

/// A list that answers 404 means the CRDs are not installed: say so instead of "404 page not
/// found".
pub fn list_error(error: kube::Error) -> PluginError {
    match error {
        kube::Error::Api(status) if status.code == 404 => PluginError::Invalid(
            "the keypairs.dev CRDs are not installed in this cluster (kubectl apply -f crds/, or install the chart)".to_owned(),
        ),
        other => PluginError::Kube(other),
    }
}

/// A fresh annotation value: the time, to the nanosecond, so each request differs.
pub fn fresh_value() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Sets `annotation` on an `ApiKeyPair` to a fresh value; returns the value.
pub async fn annotate(
    target: &Target,
    name: &str,
    annotation: &str,
) -> Result<String, PluginError> {
    target.key_pair(name).await?;
    let value = fresh_value();
    let patch = serde_json::json!({"metadata": {"annotations": {annotation: value}}});
    target
        .key_pairs()
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(value)
}

/// Runs one parsed command line; output goes to stdout, progress and errors to stderr.
pub async fn run(cli: Cli) -> Result<(), PluginError> {
    let target = Target::connect(&cli.kube).await?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Status(args) => status::run(&target, &args, &mut out).await,
        Command::Verify(args) => verify::run(&target, &args, &mut out).await,
        Command::NewCode(NameArg { name }) => {
            let value = annotate(&target, &name, REQUEST_NEW_CODE_ANNOTATION).await?;
            writeln!(
                out,
                "apikeypair {}/{name}: new verification code requested ({REQUEST_NEW_CODE_ANNOTATION}={value})",
                target.namespace
            )?;
            Ok(())
        }
        Command::Rotate(NameArg { name }) => {
            let value = annotate(&target, &name, ROTATE_ANNOTATION).await?;
            writeln!(
                out,
                "apikeypair {}/{name}: rotation requested ({ROTATE_ANNOTATION}={value})",
                target.namespace
            )?;
            Ok(())
        }
        Command::Inspect(NameArg { name }) => inspect::run(&target, &name, &mut out).await,
        Command::Orphans(args) => orphans::run(&target, &args, &mut out).await,
    }
}

/// The whole plugin process: parses the command line, runs it, reports a failure on stderr
/// and maps it to the exit status.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PluginError::Io)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::from(error.exit_code())
        }
    }
}

/// How long ago (`5m ago`) or how far ahead (`in 89d`) an RFC 3339 time is, kubectl style;
/// the text itself when it does not parse.
pub fn relative(time: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let Ok(at) = chrono::DateTime::parse_from_rfc3339(time) else {
        return time.to_owned();
    };
    let delta = at.with_timezone(&chrono::Utc) - now;
    let (ahead, span) = match delta.to_std() {
        Ok(d) => (true, d),
        Err(_) => (false, (-delta).to_std().unwrap_or_default()),
    };
    let text = short_duration(span);
    if ahead {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// `45s`, `12m`, `5h`, `89d`: the largest whole unit, as kubectl prints ages.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_like_kubectl() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        assert_eq!(relative("2026-03-01T00:00:00Z", now), "in 59d");
        assert_eq!(relative("2025-12-31T23:59:00Z", now), "60s ago");
        assert_eq!(relative("2026-01-01T03:00:00Z", now), "in 3h");
        assert_eq!(relative("2026-01-01T00:30:00Z", now), "in 30m");
        assert_eq!(relative("not a time", now), "not a time");
    }

    #[test]
    fn the_command_line_reads_like_kubectl() {
        let cli = Cli::try_parse_from([
            "kubectl-keypair",
            "status",
            "-A",
            "-o",
            "json",
            "--context",
            "c",
        ]);
        assert!(cli.is_ok(), "{cli:?}");
        let cli = Cli::try_parse_from([
            "kubectl-keypair",
            "-n",
            "ns",
            "verify",
            "web",
            "--code",
            "1",
        ]);
        assert!(cli.is_ok_and(|c| c.kube.namespace.as_deref() == Some("ns")));
        assert!(Cli::try_parse_from(["kubectl-keypair", "verify", "web"]).is_err());
    }
}
