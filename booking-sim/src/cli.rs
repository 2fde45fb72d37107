//! The command line: one subcommand per tool. `psp` runs the gateway simulator.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use booking_sim::psp::{self, SimConfig, Without};

#[derive(Debug, Parser)]
#[command(name = "booking-sim", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway simulator (a subset of Stripe's PaymentIntents API).
    Psp(PspArgs),
    /// Run a short scripted session against a gateway through gateway-client (a payment, a
    /// decline, a lost answer recovered by a same-key replay), next to the simulator's ledger.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The gateway simulator's base URL.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:12111")]
    pub gateway_url: String,
    /// The gateway's secret key.
    #[arg(
        long,
        env = "GATEWAY_API_KEY",
        default_value = "sk_test_local",
        hide_env_values = true
    )]
    pub api_key: String,
}

#[derive(Debug, Args)]
pub struct PspArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:12111")]
    pub listen: SocketAddr,
    /// The secret key callers must present as `Authorization: Bearer <key>`.
    #[arg(
        long,
        env = "GATEWAY_API_KEY",
        default_value = "sk_test_local",
        hide_env_values = true
    )]
    pub api_key: String,
    /// Capabilities to leave out, comma-separated: idempotency, lookup, cancel.
    #[arg(long, default_value = "none")]
    pub without: Without,
    /// Seed for the fault RNG (same seed, same requests: same faults).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Psp(args) => run_psp(args).await,
        Command::Demo(args) => {
            booking_sim::demo::run(booking_sim::demo::DemoArgs {
                gateway_url: args.gateway_url,
                api_key: args.api_key,
            })
            .await
        }
    }
}

async fn run_psp(args: PspArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let config = SimConfig {
        api_key: args.api_key,
        without: args.without,
        seed: args.seed,
        ..SimConfig::default()
    };
    tracing::info!(without = %config.without, seed = config.seed, "starting the gateway simulator");
    let sim = psp::spawn_on(config, listener).await?;
    println!("booking-sim psp listening on http://{}", sim.addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
