//! `payctl`, the operator CLI of the payment coordinator. It speaks only the public gRPC API
//! (CONTRACT §2), with the caller's API key from the environment or a file, never a flag.
//!
//! - [`cli`]: the command line (clap).
//! - [`client`]: the key, the connection, deadlines.
//! - [`commands`]: one module per command, each `run(&Conn, args, json) -> Result<Exit, Failure>`.
//! - [`render`]: tables, JSON, CSV and error reports.
//! - [`exit`]: exit codes (refused 3, failed 4…) from gRPC statuses, in one function.
//! - [`money`]: minor units ⇄ `12.50 EUR`, exact.

pub mod cli;
pub mod client;
pub mod commands;
pub mod exit;
pub mod money;
pub mod render;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::exit::Exit;

/// Runs the command, reports a failure on stderr, and says how to exit.
pub async fn run(cli: cli::Cli) -> Exit {
    match commands::run(&cli).await {
        Ok(exit) => exit,
        Err(failure) => {
            let exit = failure.exit();
            // A closed pipe (`payctl watch … | head`) is the reader's choice, not an error.
            if exit != Exit::Success {
                eprintln!("{}", render::error::report(&failure, cli.json));
            }
            exit
        }
    }
}

/// Logs on stderr: warnings, and the watch follower's reconnections (so an operator sees a
/// stream being resumed). `RUST_LOG` overrides.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,payments_client=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
