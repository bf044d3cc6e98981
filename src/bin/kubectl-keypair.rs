//! The `kubectl-keypair` binary: `kubectl keypair ...` once on PATH. A thin front over
//! [`keypair_operator::plugin`], which owns the commands.

fn main() -> std::process::ExitCode {
    keypair_operator::plugin::main()
}
