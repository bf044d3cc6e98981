//! The `keypair-operator` binary: a thin command-line front over the library.

use clap::{Parser, Subcommand};

/// Manage remote API key pairs (ThreatWinds, Datonis) as Kubernetes resources.
#[derive(Parser, Debug)]
#[command(name = "keypair-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every CRD as multi-document YAML (generated from the Rust types).
    Crds {
        /// Write one `<name>.yaml` file per CRD into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<std::path::PathBuf>,
        /// Leave out the CEL rules (`x-kubernetes-validations`): for API servers before
        /// 1.25, which do not enforce them; 1.20 to 1.22 refuse them in a server-side apply.
        #[arg(long)]
        no_cel: bool,
    },
    /// Run the operator: the ApiKeyPair and provider controllers.
    Run(Box<keypair_operator::cli::RunArgs>),
    /// Run a sandbox provider server that behaves as the provider's documentation says.
    #[cfg(feature = "sandbox")]
    Sandbox(keypair_operator::sandbox::SandboxArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds {
            output_dir: None,
            no_cel,
        } => keypair_operator::crd::all_crds_yaml(!no_cel)
            .map(|yaml| print!("{yaml}"))
            .map_err(|e| format!("cannot render CRDs: {e}")),
        Command::Crds {
            output_dir: Some(dir),
            no_cel,
        } => keypair_operator::crd::write_crd_files(&dir, !no_cel)
            .map_err(|e| format!("cannot write CRDs to {}: {e}", dir.display())),
        Command::Run(args) => tokio::runtime::Runtime::new()
            .map_err(|e| format!("cannot start the async runtime: {e}"))
            .and_then(|rt| {
                rt.block_on(keypair_operator::cli::run(*args))
                    .map_err(|e| e.to_string())
            }),
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => {
            keypair_operator::telemetry::init_logging(
                keypair_operator::telemetry::LogFormat::Text,
                "info",
            );
            tokio::runtime::Runtime::new()
                .map_err(|e| format!("cannot start the async runtime: {e}"))
                .and_then(|rt| {
                    rt.block_on(keypair_operator::sandbox::run(args))
                        .map_err(|e| format!("sandbox: {e}"))
                })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("keypair-operator: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
