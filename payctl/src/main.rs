use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = payctl::cli::Cli::parse();
    payctl::init_logging();
    payctl::run(cli).await.into()
}
