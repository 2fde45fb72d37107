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
    /// Simulated operators race to pay a batch of orders across coordinator replicas (public
    /// gRPC API only), then a table per order next to the simulator's charges.
    Race(RaceArgs),
    /// Benchmark of the watch streams on one coordinator replica: opens many idle WatchOrder
    /// streams, reports the replica's RSS, then the delay from commit to delivery while
    /// payments run (public gRPC API only; prints figures, never fails on time).
    WatchBench(WatchBenchArgs),
    /// The invariant checker: after a run has settled, compares the simulator's ledger with the
    /// coordinator's database and event feed and prints a table (double charges, lost outcomes,
    /// stuck orders, feed gaps, ...). Exit code 1 if a must-be-zero row is not zero, 2 if the
    /// check could not run.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The coordinator's PostgreSQL database (read in one read-only snapshot).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://root@127.0.0.1:5432/payments",
        hide_env_values = true
    )]
    pub database_url: String,
    /// The gateway simulator's base URL (for its ledger).
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:12111")]
    pub gateway_url: String,
    /// How many payments the driver asked for (shown in the table).
    #[arg(long)]
    pub requested: Option<u64>,
}

#[derive(Debug, Args)]
pub struct WatchBenchArgs {
    /// The coordinator replica's gRPC URL (one replica).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// An API key with role operator (it pays and watches).
    #[arg(long, env = "BENCH_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// An API key with role service or admin, for the WatchEvents follower (operators may not
    /// call WatchEvents); without it the follower is skipped.
    #[arg(long, env = "BENCH_EVENTS_API_KEY", hide_env_values = true)]
    pub events_api_key: Option<String>,
    /// The gateway simulator's base URL.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:12111")]
    pub gateway_url: String,
    /// Idle WatchOrder streams to open.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Distinct orders the idle streams watch (default: one per stream); each is created with
    /// one declined payment.
    #[arg(long)]
    pub idle_orders: Option<usize>,
    /// HTTP/2 connections the idle streams are spread over.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Idle streams being opened at once.
    #[arg(long, default_value_t = 100)]
    pub open_concurrency: usize,
    /// Payments to run while measuring delivery.
    #[arg(long, default_value_t = 500)]
    pub payments: usize,
    /// Payments in flight at once (and calls in flight while creating the idle orders).
    #[arg(long, default_value_t = 20)]
    pub concurrency: usize,
    /// The replica's process id, to read its RSS from /proc/PID/status.
    #[arg(long)]
    pub replica_pid: Option<u32>,
    /// Latency the simulator adds to each gateway call during the payments (a real gateway
    /// takes longer; with none, an outcome often commits before its WatchOrder stream opens).
    #[arg(long, default_value_t = 20)]
    pub gateway_latency_ms: u64,
    /// Order ids are PREFIX-idle-N, PREFIX-pay-N (default: watch-<unix time>).
    #[arg(long)]
    pub order_prefix: Option<String>,
}

#[derive(Debug, Args)]
pub struct RaceArgs {
    /// Coordinator replicas' gRPC URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:50051")]
    pub coordinators: Vec<String>,
    /// Operators' API keys, comma-separated (env RACE_OPERATOR_KEYS).
    #[arg(
        long,
        env = "RACE_OPERATOR_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub operator_keys: Vec<String>,
    /// The gateway simulator's base URL (for its ledger).
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:12111")]
    pub gateway_url: String,
    /// How many orders.
    #[arg(long, default_value_t = 10)]
    pub orders: usize,
    /// How many operators press "pay" on each order at once.
    #[arg(long, default_value_t = 5)]
    pub callers: usize,
    /// Latency the simulator adds to each call, so that the callers overlap.
    #[arg(long, default_value_t = 300)]
    pub gateway_latency_ms: u64,
    /// Order ids are PREFIX-N (default: race-<unix time>).
    #[arg(long)]
    pub order_prefix: Option<String>,
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
        Command::Race(args) => {
            let prefix = args.order_prefix.unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                format!("race-{now}")
            });
            booking_sim::race::run(booking_sim::race::RaceArgs {
                coordinators: args.coordinators,
                operator_keys: args.operator_keys,
                gateway_url: args.gateway_url,
                orders: args.orders,
                callers_per_order: args.callers,
                gateway_latency_ms: args.gateway_latency_ms,
                order_prefix: prefix,
            })
            .await
        }
        Command::WatchBench(args) => {
            let order_prefix = args
                .order_prefix
                .unwrap_or_else(|| format!("watch-{}", unix_seconds()));
            booking_sim::watch_bench::run(booking_sim::watch_bench::WatchBenchArgs {
                coordinator: args.coordinator,
                api_key: args.api_key,
                events_api_key: args.events_api_key,
                gateway_url: args.gateway_url,
                idle_orders: args.idle_orders.unwrap_or(args.streams),
                streams: args.streams,
                connections: args.connections,
                open_concurrency: args.open_concurrency,
                payments: args.payments,
                concurrency: args.concurrency,
                replica_pid: args.replica_pid,
                gateway_latency_ms: args.gateway_latency_ms,
                order_prefix,
            })
            .await
        }
        Command::Check(args) => run_check(args).await,
        Command::Demo(args) => {
            booking_sim::demo::run(booking_sim::demo::DemoArgs {
                gateway_url: args.gateway_url,
                api_key: args.api_key,
            })
            .await
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Prints the checker's table; exits 1 if an invariant failed, 2 if the check could not run.
async fn run_check(args: CheckArgs) -> anyhow::Result<()> {
    use booking_sim::checker::{CheckInput, check};
    use std::io::Write as _;

    let input = CheckInput {
        database_url: args.database_url,
        sim: booking_sim::sim_control::SimControl::new(&args.gateway_url)?,
        requested: args.requested,
    };
    let report = match check(&input).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("booking-sim check: could not check: {error:#}");
            std::process::exit(2);
        }
    };
    print!("{}", report.table());
    let _ = std::io::stdout().flush();
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
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
