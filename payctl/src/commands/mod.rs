//! One module per command. Each checks its local input first (a usage error never needs the
//! network), then calls the coordinator through [`Conn`] and prints through [`crate::render`].

mod control;
mod follow;
mod get;
mod pay;
mod refund;
mod resolve;
mod reviews;
mod watch;

use crate::{
    cli::{Cli, Command},
    client::Conn,
    exit::{Exit, Failure},
};

pub async fn run(cli: &Cli) -> Result<Exit, Failure> {
    let json = cli.json;
    match &cli.command {
        Command::Pay(args) => {
            let prepared = pay::prepare(args)?;
            pay::run(&connect(cli).await?, args, prepared, json).await
        }
        Command::Get { order_id } => get::run(&connect(cli).await?, order_id, json).await,
        Command::Watch(args) => watch::run(&connect(cli).await?, args, json).await,
        Command::Reviews(args) => reviews::run(&connect(cli).await?, args, json).await,
        Command::Resolve(args) => resolve::run(&connect(cli).await?, args, json).await,
        Command::Refund(args) => {
            let request = refund::prepare(args)?;
            refund::run(&connect(cli).await?, request, json).await
        }
        Command::Pause { reason } => control::pause(&connect(cli).await?, reason, json).await,
        Command::Resume { reset_breaker } => {
            control::resume(&connect(cli).await?, *reset_breaker, json).await
        }
        Command::Status => control::status(&connect(cli).await?, json).await,
    }
}

async fn connect(cli: &Cli) -> Result<Conn, Failure> {
    Conn::connect(&cli.server, &cli.tls, cli.key_file.as_deref(), cli.timeout).await
}
