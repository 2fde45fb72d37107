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
    /// Chaos run: three coordinator replicas on a throwaway PostgreSQL and Redis with the
    /// simulator (or running ones: --coordinators), racing operators paying orders while a
    /// seeded fault schedule kills, freezes and restarts replicas, stops PostgreSQL and Redis and
    /// injects every gateway fault; then recovery settles and the invariant checker judges.
    /// Progress on stderr; the summary and the checker's table on stdout; exit 1 if it failed.
    Chaos(Box<ChaosArgs>),
    /// Load benchmark: payments/s, ProcessPayment latency, the coordinator's own overhead,
    /// PostgreSQL commits and Redis commands per payment and each replica's RSS, per gateway
    /// flow, on the real stack (three release-built replicas, the simulator answering at once, a
    /// fresh database, a throwaway Redis), then the ratio to the PostgreSQL ceiling. The figures
    /// are meaningful with `cargo build --release -p coordinator -p booking-sim` and
    /// `target/release/booking-sim load`. Progress on stderr, a table per flow on stdout; exit 1
    /// if a payment did not end PAID or the database or ledger disagree (never on speed).
    Load(Box<LoadArgs>),
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
pub struct ChaosArgs {
    /// Orders to pay, each by several racing operators.
    #[arg(long, default_value_t = 3000)]
    pub payments: usize,
    /// Seeds the fault schedule and the orders' plans: the same seed replays the same schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Orders being paid at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Operators pressing "pay" on each order at once (spread over the replicas).
    #[arg(long, default_value_t = 3)]
    pub callers_per_order: usize,
    /// Share (percent) of paid orders a reviewer refunds (full, partial, partial then the rest).
    #[arg(long, default_value_t = 15)]
    pub refund_percent: u32,
    /// Share (percent) of orders whose first caller submits twice at once with the same key.
    #[arg(long, default_value_t = 10)]
    pub duplicate_percent: u32,
    /// Fault kinds: all, none, or a comma-separated list of kill-9, sigstop, postgres, redis,
    /// latency, timeout, hang, 500-before, 500-after, drop-after-charge, 429.
    #[arg(long, default_value = "all")]
    pub faults: String,
    /// One fault per this many payments (at least one of each kind when the run is long enough).
    #[arg(long, default_value_t = 25)]
    pub payments_per_fault: usize,
    /// Calm time between the end of a fault and the start of the next, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub min_gap_ms: u64,
    /// Coordinator replicas to start.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// The replicas' LEASE_TTL_MS (a frozen replica is stopped longer than this).
    #[arg(long, default_value_t = 1000)]
    pub lease_ttl_ms: u64,
    /// The replicas' RECOVERY_SWEEP_MS.
    #[arg(long, default_value_t = 500)]
    pub recovery_sweep_ms: u64,
    /// The replicas' GATEWAY_TIMEOUT_MS (short, so that hangs resolve quickly).
    #[arg(long, default_value_t = 1500)]
    pub gateway_timeout_ms: u64,
    /// The replicas' GATEWAY_FLOW: two_phase or one_shot (with --coordinators: the flow they
    /// run, so that the gateway faults aim at calls they make).
    #[arg(long, default_value = "two_phase")]
    pub gateway_flow: String,
    /// Latency the simulator adds to every call outside faults (so that callers overlap).
    #[arg(long, default_value_t = 20)]
    pub gateway_latency_ms: u64,
    /// How long recovery may take to settle after the faults, in seconds, before the run fails.
    #[arg(long, default_value_t = 180)]
    pub settle_timeout_secs: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    pub progress_secs: u64,
    /// The coordinator binary (default: next to this executable, then target/debug, then PATH).
    #[arg(long, env = "COORDINATOR_BIN")]
    pub coordinator_bin: Option<std::path::PathBuf>,
    /// One more argument for every replica, after the run's own (repeat it: e.g.
    /// --coordinator-arg=--breaker-min-calls --coordinator-arg=10).
    #[arg(long, allow_hyphen_values = true)]
    pub coordinator_arg: Vec<String>,
    /// Order ids are PREFIX-N (default: chaos-SEED, plus the time with --coordinators).
    #[arg(long)]
    pub order_prefix: Option<String>,
    /// Keep the work directory (replica logs, journals) even when the run passed; it is always
    /// kept when it failed.
    #[arg(long)]
    pub keep_work_dir: bool,
    /// Drive running coordinators (comma-separated gRPC URLs) instead of starting them; only the
    /// simulator's faults apply then. Needs --gateway-url, --database-url, --operator-keys.
    #[arg(long, value_delimiter = ',')]
    pub coordinators: Vec<String>,
    /// With --coordinators: the gateway simulator's base URL.
    #[arg(long, env = "GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// With --coordinators: their PostgreSQL database, for the checker.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// With --coordinators: operators' API keys, comma-separated (env CHAOS_OPERATOR_KEYS).
    #[arg(
        long,
        env = "CHAOS_OPERATOR_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub operator_keys: Vec<String>,
    /// With --coordinators: a reviewer's API key for refunds (env CHAOS_REVIEWER_KEY); none: no
    /// refunds.
    #[arg(long, env = "CHAOS_REVIEWER_KEY", hide_env_values = true)]
    pub reviewer_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Gateway flows to measure: both, two_phase or one_shot (replicas are restarted per flow).
    #[arg(long, default_value = "both")]
    pub flow: String,
    /// Measured payments per flow (distinct fresh orders, pm_card_visa, waiting for the outcome).
    #[arg(long, default_value_t = 3000)]
    pub payments: usize,
    /// Payments per flow before the measured phase (not counted).
    #[arg(long, default_value_t = 300)]
    pub warmup: usize,
    /// Callers paying at once, spread round-robin over the replicas.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Coordinator replicas to start.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Persistent HTTP/2 connections per replica, shared by its callers.
    #[arg(long, default_value_t = 1)]
    pub connections_per_replica: usize,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    pub progress_secs: u64,
    /// Skip the PostgreSQL ceiling (pgbench) and the ratio line.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Seconds pgbench runs per flow for the ceiling.
    #[arg(long, default_value_t = 10)]
    pub ceiling_secs: u64,
    /// The other figures, each on a fresh stack of the first flow: all, none, or some of
    /// race,scale,inflight,abuse.
    #[arg(long, default_value = "all")]
    pub figures: String,
    /// Only the --figures: no flow benchmark, no ceiling.
    #[arg(long)]
    pub figures_only: bool,
    /// race: callers on one fresh order at once.
    #[arg(long, default_value_t = 100)]
    pub race_callers: usize,
    /// race: orders raced in turn and measured (for stable percentiles).
    #[arg(long, default_value_t = 100)]
    pub race_orders: usize,
    /// race: orders raced first and not measured (the replicas open their PostgreSQL
    /// connections during the first; it is printed on a row of its own).
    #[arg(long, default_value_t = 5)]
    pub race_warmup: usize,
    /// scale: orders already in the tables, per measurement (1M takes about 75 s to generate).
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    pub scale_orders: Vec<usize>,
    /// scale: measured payments (after a tenth as many warm-up) at each size.
    #[arg(long, default_value_t = 1000)]
    pub scale_payments: usize,
    /// inflight: payments held in flight at once.
    #[arg(long, default_value_t = 1000)]
    pub inflight: usize,
    /// abuse: valid payments without, then with, bad requests mixed in.
    #[arg(long, default_value_t = 1000)]
    pub abuse_payments: usize,
    /// After the measured phase, as many payments again on a fixed schedule (open loop), this
    /// many per second, or `half`: half the measured phase's rate. Prints their latency and
    /// overhead from each scheduled start.
    #[arg(long, value_parser = booking_sim::load::parse_rate)]
    pub rate: Option<booking_sim::load::Rate>,
    /// Instead of one run per flow: the measured phase at each of these concurrencies
    /// (comma-separated, e.g. 1,2,4,8,16,32,64) on one stack per flow, then the PostgreSQL ceiling
    /// at each (pgbench, --ceiling-secs per step, the replicas stopped); one table row per
    /// concurrency. Each step pays min(--payments, max(500, 100 x callers)) fresh orders after
    /// min(--warmup, max(50, 10 x callers)): a few seconds per step here, about 4 minutes for
    /// both flows with the defaults. --rate is not used.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// With --sweep: write an SVG chart of payments/s (the stack's and the ceiling's) and p99
    /// latency against concurrency to this file (e.g. docs/performance.svg).
    #[arg(long, requires = "sweep")]
    pub chart: Option<std::path::PathBuf>,
    /// The PostgreSQL server the fresh databases are made on (the main job's).
    #[arg(
        long,
        env = "DATABASE_URL_BASE",
        default_value = "postgres://root@127.0.0.1:5432",
        hide_env_values = true
    )]
    pub database_url_base: String,
    /// A Redis to use instead of a throwaway redis-server of the run's own (its command counts
    /// then include every other client's).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The coordinator binary (default: next to this executable, so target/release/booking-sim
    /// runs target/release/coordinator; then target/debug, then PATH).
    #[arg(long, env = "COORDINATOR_BIN")]
    pub coordinator_bin: Option<std::path::PathBuf>,
    /// One more argument for every replica, after the run's own (repeat it).
    #[arg(long, allow_hyphen_values = true)]
    pub coordinator_arg: Vec<String>,
    /// The replicas' RUST_LOG.
    #[arg(long, default_value = "info")]
    pub replica_log: String,
    /// Each replica's tokio worker threads (0: tokio's default, one per core). Three replicas
    /// share this machine's cores; one thread each is what a pod limited to one CPU gets (tokio
    /// sizes its pool from the CPU quota), and spares the cores the threads' hand-offs.
    #[arg(long, default_value_t = 1)]
    pub replica_workers: usize,
    /// Keep the work directory (replica logs) even when the run went right.
    #[arg(long)]
    pub keep_work_dir: bool,
    /// Drive running coordinators (comma-separated gRPC URLs) instead: one --flow, theirs.
    /// Needs --gateway-url and --operator-keys; --database-url, --redis-url and --replica-pids
    /// add the counters they feed.
    #[arg(long, value_delimiter = ',')]
    pub coordinators: Vec<String>,
    /// TLS towards https:// coordinators: CA bundle and client certificate (mTLS).
    #[command(flatten, next_help_heading = "TLS (https:// --coordinators)")]
    pub tls: payments_client::TlsFiles,
    /// With --coordinators: their gateway simulator (booking-sim psp), for its request log.
    #[arg(long, env = "GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// With --coordinators: their database, for its commit count.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// With --coordinators: operators' API keys, comma-separated (env LOAD_OPERATOR_KEYS).
    #[arg(
        long,
        env = "LOAD_OPERATOR_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub operator_keys: Vec<String>,
    /// With --coordinators: their process ids, comma-separated, for their RSS.
    #[arg(long, value_delimiter = ',')]
    pub replica_pids: Vec<u32>,
}

#[derive(Debug, Args)]
pub struct WatchBenchArgs {
    /// The coordinator replica's gRPC URL (one replica).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// TLS towards an https:// coordinator: CA bundle and client certificate (mTLS).
    #[command(flatten, next_help_heading = "TLS (an https:// --coordinator)")]
    pub tls: payments_client::TlsFiles,
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
    /// TLS towards https:// coordinators: CA bundle and client certificate (mTLS).
    #[command(flatten, next_help_heading = "TLS (https:// --coordinators)")]
    pub tls: payments_client::TlsFiles,
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
    /// How many requests `GET /_sim/requests` remembers (`booking-sim load --coordinators`
    /// needs every measured payment's calls).
    #[arg(long, default_value_t = booking_sim::psp::SimConfig::default().remembered_requests)]
    pub remember_requests: usize,
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
                tls: args.tls,
            })
            .await
        }
        Command::WatchBench(args) => {
            let order_prefix = args
                .order_prefix
                .unwrap_or_else(|| format!("watch-{}", unix_seconds()));
            booking_sim::watch_bench::run(booking_sim::watch_bench::WatchBenchArgs {
                coordinator: args.coordinator,
                tls: args.tls,
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
        Command::Chaos(args) => run_chaos(*args).await,
        Command::Load(args) => run_load(*args).await,
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

/// Runs the chaos driver; prints the summary and the checker's table; exits 1 if the checker
/// failed, and stops (tearing everything down) on Ctrl-C or SIGTERM.
async fn run_chaos(args: ChaosArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::time::Duration;

    use anyhow::Context as _;
    use booking_sim::chaos::{self, ChaosConfig, External};

    let faults = chaos::parse_kinds(&args.faults).map_err(anyhow::Error::msg)?;
    let external = if args.coordinators.is_empty() {
        None
    } else {
        Some(External {
            coordinators: args.coordinators,
            gateway_url: args
                .gateway_url
                .context("--coordinators needs --gateway-url (the simulator)")?,
            database_url: args
                .database_url
                .context("--coordinators needs --database-url (for the checker)")?,
            operator_keys: args.operator_keys,
            reviewer_key: args.reviewer_key,
        })
    };
    let config = ChaosConfig {
        payments: args.payments,
        seed: args.seed,
        replicas: args.replicas,
        concurrency: args.concurrency,
        callers_per_order: args.callers_per_order,
        refund_percent: args.refund_percent,
        duplicate_percent: args.duplicate_percent,
        faults,
        payments_per_fault: args.payments_per_fault,
        min_gap: Duration::from_millis(args.min_gap_ms),
        lease_ttl: Duration::from_millis(args.lease_ttl_ms),
        recovery_sweep: Duration::from_millis(args.recovery_sweep_ms),
        gateway_timeout: Duration::from_millis(args.gateway_timeout_ms),
        gateway_flow: args.gateway_flow,
        gateway_latency_ms: args.gateway_latency_ms,
        settle_timeout: Duration::from_secs(args.settle_timeout_secs),
        progress_every: Duration::from_secs(args.progress_secs.max(1)),
        coordinator_bin: args.coordinator_bin,
        coordinator_args: args.coordinator_arg,
        order_prefix: args.order_prefix,
        keep_work_dir: args.keep_work_dir,
        external,
        ..ChaosConfig::default()
    };
    let outcome = tokio::select! {
        outcome = chaos::run(config) => outcome?,
        () = shutdown_signal() => {
            // Dropping the run kills the replicas and stops PostgreSQL and Redis it started.
            anyhow::bail!("interrupted: the chaos run was stopped and everything it started torn down");
        }
    };
    print!("{}", outcome.summary());
    let _ = std::io::stdout().flush();
    if !outcome.ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs the load benchmark; exits 1 if the run went wrong (never on speed), and tears down
/// what it started on Ctrl-C or SIGTERM.
async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::time::Duration;

    use anyhow::Context as _;
    use booking_sim::load::{self, LoadConfig, Target, services};

    let target = if args.coordinators.is_empty() {
        Target::Owned(services::OwnedConfig {
            replicas: args.replicas.max(1),
            database_url_base: args.database_url_base,
            redis_url: args.redis_url,
            coordinator_bin: args.coordinator_bin,
            coordinator_args: args.coordinator_arg,
            replica_log: args.replica_log,
            replica_workers: (args.replica_workers > 0).then_some(args.replica_workers),
            operators: args.concurrency,
            remembered_requests: load::requests_to_remember(
                args.warmup,
                load::measured_payments(args.payments, args.rate),
            ),
            keep_work_dir: args.keep_work_dir,
        })
    } else {
        Target::External(services::External {
            coordinators: args.coordinators,
            tls: args.tls,
            gateway_url: args
                .gateway_url
                .context("--coordinators needs --gateway-url (their simulator)")?,
            database_url: args.database_url,
            redis_url: args.redis_url,
            pids: args.replica_pids,
            operator_keys: args.operator_keys,
        })
    };
    let extra = load::extra::ExtraConfig {
        figures: load::extra::parse_figures(&args.figures)?,
        only: args.figures_only,
        race: load::race::RaceConfig {
            callers: args.race_callers,
            orders: args.race_orders,
            warmup: args.race_warmup,
        },
        scale: load::scale::ScaleConfig {
            sizes: args.scale_orders,
            payments: args.scale_payments,
            warmup: args.scale_payments / 10,
        },
        inflight: load::inflight::InflightConfig {
            attempts: args.inflight,
        },
        abuse: load::abuse::AbuseConfig {
            payments: args.abuse_payments,
            ..Default::default()
        },
    };
    let sweep = (!args.sweep.is_empty()).then_some(load::sweep::SweepConfig {
        concurrencies: args.sweep,
        chart: args.chart,
    });
    let config = LoadConfig {
        flows: load::parse_flows(&args.flow)?,
        payments: args.payments,
        warmup: args.warmup,
        concurrency: args.concurrency,
        connections_per_replica: args.connections_per_replica,
        progress_every: Duration::from_secs(args.progress_secs.max(1)),
        ceiling: !args.no_ceiling,
        ceiling_duration: Duration::from_secs(args.ceiling_secs.max(1)),
        rate: args.rate,
        target,
        extra,
    };
    let ok = async {
        match sweep {
            Some(sweep) => load::sweep::run(config, sweep).await.map(|o| o.ok()),
            None => load::run(config).await.map(|o| o.ok()),
        }
    };
    let ok = tokio::select! {
        ok = ok => ok?,
        () = shutdown_signal() => {
            // Dropping the run kills the replicas and the Redis it started.
            anyhow::bail!("interrupted: the load run was stopped and what it started torn down");
        }
    };
    let _ = std::io::stdout().flush();
    if !ok {
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
        remembered_requests: args.remember_requests,
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
