mod cli;

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    // The demo narrates on stdout; its gateway calls' logs would only repeat it.
    let default_level = match cli.command {
        cli::Command::Demo(_) | cli::Command::Check(_) => "warn",
        // The chaos driver's progress is its own lines; the in-process simulator stays quiet.
        cli::Command::Chaos(_) | cli::Command::Load(_) => "warn",
        _ => "info",
    };
    // Logs go to stderr; stdout carries only the "listening on" line, for scripts.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    cli::run(cli).await
}
