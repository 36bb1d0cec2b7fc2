//! `tether`: the operator's command, built from the same crate and core as the module.
//!
//! `check-config` runs a plugin configuration through the module's own start, `check-envoy`
//! reads an Envoy bootstrap for the set-up tether needs (docs/envoy-setup.md), `keygen` makes a
//! key for `keys`, and `open` tells where a token pins its session.

// The module's target would name this program `tether.wasm`, the module's own file: the
// command exists only natively (`make build` builds the module with `--lib`).
#[cfg(target_arch = "wasm32")]
compile_error!("the tether command is native only; build the Wasm module with `cargo build --lib`");

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod check_config;
#[cfg(not(target_arch = "wasm32"))]
mod check_envoy;
#[cfg(not(target_arch = "wasm32"))]
mod input;
#[cfg(not(target_arch = "wasm32"))]
mod open;
#[cfg(not(target_arch = "wasm32"))]
mod utc;

#[cfg(not(target_arch = "wasm32"))]
use clap::{Parser, Subcommand};
#[cfg(not(target_arch = "wasm32"))]
use std::path::PathBuf;
#[cfg(not(target_arch = "wasm32"))]
use std::process::ExitCode;

#[cfg(not(target_arch = "wasm32"))]
#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Checks tether's configuration and Envoy set-up, makes keys, opens tokens",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[cfg(not(target_arch = "wasm32"))]
#[derive(Subcommand)]
enum Command {
    /// Validates a plugin configuration with the module's parser; exit status 0 or 1.
    ///
    /// FILE is the plugin JSON, or YAML: an Istio WasmPlugin (its spec.pluginConfig), an Envoy
    /// Gateway EnvoyExtensionPolicy (each spec.wasm[].config), or the fields themselves.
    /// A refused configuration prints the line the module logs in Envoy.
    CheckConfig {
        /// The configuration file ("-" reads standard input).
        file: PathBuf,
    },
    /// Reports what an Envoy bootstrap lacks of the set-up tether needs.
    ///
    /// One line per finding, with its path in the bootstrap and what to add (see
    /// docs/envoy-setup.md); exit status 1 when there is any.
    CheckEnvoy {
        /// The Envoy bootstrap, YAML or JSON ("-" reads standard input).
        file: PathBuf,
    },
    /// Prints a fresh random key, in the form the `keys` field takes.
    Keygen,
    /// Opens a token and prints where it pins its session, or why it does not open.
    ///
    /// TOKEN is a cookie or header token, or an envelope (learn_from: response_header), as it
    /// is or with its name: `tether=...`, a Set-Cookie value, or `mcp-session-id: ...`.
    /// Exit status 0 when it opens and has not expired, 1 otherwise.
    Open(open::Args),
}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let ok = match cli.command {
        Command::CheckConfig { file } => check_config::run(&file),
        Command::CheckEnvoy { file } => check_envoy::run(&file),
        Command::Keygen => open::keygen(),
        Command::Open(args) => open::run(&args),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
