//! `booking-sim load`: the load benchmark. Drives the real stack (coordinator replicas as real
//! processes, the simulator answering at once, PostgreSQL and Redis) with payments of distinct
//! fresh orders, per gateway flow: a warm-up, then the measured phase. Prints per flow:
//! payments/s, `ProcessPayment` latency (waiting for the outcome), the coordinator's own overhead
//! (latency less what the simulator spent on the order's calls), PostgreSQL commits and Redis
//! commands per payment, and each replica's RSS; then [`ceiling`]: what PostgreSQL alone takes
//! of the same SQL (pgbench, on the flow's database once its replicas stopped), and the ratio to
//! it as the last line. With `--rate` ([`Rate`]), an open-loop phase follows the measured one:
//! as many payments on a fixed schedule (e.g. half the measured rate, where the overhead budget
//! holds), latency from each scheduled start. Measured, never asserted: it fails only if the run itself went wrong (a
//! payment not PAID, the database or the ledger disagreeing).
//!
//! - [`services`]: what a run starts (per flow: a fresh database, simulator and replicas), or
//!   finds (`--coordinators`).
//! - [`callers`]: the callers, over persistent connections.
//! - [`counters`]: `pg_stat_database`, `INFO commandstats`, `/proc/PID/status`.
//! - [`figures`]: percentiles and the overhead arithmetic; [`report`]: the table.
//! - [`extra`]: the other figures ([`race`], [`scale`], [`inflight`], [`abuse`]), each on a
//!   fresh stack of the first flow, after the flows' tables and before the ratio line.
//! - [`sweep`] (`--sweep`): the measured phase at each of several concurrencies, and the ceiling
//!   at each, as a table and a chart ([`chart`]).

pub mod abuse;
pub mod callers;
pub mod ceiling;
pub mod chart;
pub mod counters;
pub mod extra;
pub mod figures;
pub mod inflight;
pub mod race;
pub mod report;
pub mod scale;
pub mod services;
pub mod sweep;

use std::time::Duration;

use anyhow::{Context, bail};
use gateway_client::Flow;
use rand::Rng;

use crate::{chaos::progress::say, sim_control::SimControl};
use callers::Callers;
use counters::{PG_STATS_FLUSH, PgServer, RedisStats, rss_mb};
use figures::{Percentiles, gateway_time, overheads};
use report::{Checked, FlowReport, OpenLoop};
use services::{External, FlowStack, Owned, OwnedConfig, split_database_url};

/// How long the replicas' connections may take to leave PostgreSQL after they exited.
const BACKENDS_GUARD: Duration = Duration::from_secs(30);
/// How long the idle replicas' own commits (feed, gate and recovery polling) are counted before
/// the measured phase, to tell them from the payments'.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// How long the one-client pgbench run (the latency floor under the open loop's overhead) lasts.
const FLOOR_SECS: u64 = 3;

/// What to drive.
#[derive(Clone)]
pub enum Target {
    /// Start everything, per flow.
    Owned(OwnedConfig),
    /// Running coordinators (one flow: theirs).
    External(External),
}

/// A load run.
#[derive(Clone)]
pub struct LoadConfig {
    pub flows: Vec<Flow>,
    pub payments: usize,
    pub warmup: usize,
    pub concurrency: usize,
    pub connections_per_replica: usize,
    pub progress_every: Duration,
    /// Measure the PostgreSQL ceiling after each flow and end with the ratio to it.
    pub ceiling: bool,
    /// How long pgbench runs per flow.
    pub ceiling_duration: Duration,
    /// After the measured phase, `payments` more at a fixed rate (open loop).
    pub rate: Option<Rate>,
    pub target: Target,
    /// The other figures ([`extra`]): race, scale, in flight, bad input.
    pub extra: extra::ExtraConfig,
}

/// The open-loop phase's rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// Payments per second.
    Fixed(f64),
    /// Half what the measured (closed-loop, as fast as the callers go) phase reached.
    HalfMax,
}

impl Rate {
    /// Payments per second, given the closed-loop phase's.
    pub fn per_sec(self, max: f64) -> f64 {
        match self {
            Rate::Fixed(rate) => rate,
            Rate::HalfMax => max / 2.0,
        }
    }
}

/// `half` or a positive number of payments per second.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    match text.trim() {
        "half" => Ok(Rate::HalfMax),
        number => match number.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Rate::Fixed(rate)),
            _ => Err(format!(
                "{number:?}: a rate is `half` or payments per second above 0"
            )),
        },
    }
}

/// `both`, `two_phase` or `one_shot`.
pub fn parse_flows(text: &str) -> anyhow::Result<Vec<Flow>> {
    match text.trim() {
        "both" => Ok(vec![Flow::TwoPhase, Flow::OneShot]),
        one => Ok(vec![one.parse().map_err(anyhow::Error::msg)?]),
    }
}

/// Every flow's report; the run went right if each is ok.
pub struct LoadOutcome {
    pub reports: Vec<FlowReport>,
    pub extra: Vec<extra::ExtraReport>,
}

impl LoadOutcome {
    pub fn ok(&self) -> bool {
        self.reports.iter().all(FlowReport::ok) && self.extra.iter().all(extra::ExtraReport::ok)
    }
}

/// Requests the simulator must remember so that every measured payment's calls are still in its
/// log at the end (two_phase makes two calls per payment; a margin for anything else).
/// `payments`: of every measured phase together.
pub fn requests_to_remember(warmup: usize, payments: usize) -> usize {
    ((warmup + payments) * 3).max(crate::psp::SimConfig::default().remembered_requests)
}

/// Payments of the measured phases together: the closed-loop one, and the open-loop one as many.
pub fn measured_payments(payments: usize, rate: Option<Rate>) -> usize {
    payments * if rate.is_some() { 2 } else { 1 }
}

/// Runs every flow, printing each flow's table on stdout as it ends; progress on stderr.
pub async fn run(config: LoadConfig) -> anyhow::Result<LoadOutcome> {
    crate::chaos::progress::start_clock_as("load");
    if config.payments == 0 || config.concurrency == 0 {
        bail!("--payments and --concurrency must be at least 1");
    }
    if cfg!(debug_assertions) {
        say(
            "note: booking-sim is a debug build: the callers and the simulator are slow; figures \
             are meaningful with `cargo build --release -p coordinator -p booking-sim`",
        );
    }
    let run_id = format!("{:08x}", rand::rng().random::<u32>());
    let mut reports = Vec::new();
    let mut extra_reports = Vec::new();
    match &config.target {
        Target::Owned(owned_config) => {
            say(&format!(
                "phase: starting Redis ({}) and connecting to PostgreSQL",
                if owned_config.redis_url.is_some() {
                    "the one given"
                } else {
                    "a throwaway redis-server of this run's own"
                }
            ));
            let mut owned = Owned::start(owned_config.clone()).await?;
            say(&format!(
                "  coordinator binary {}{}",
                owned.binary.display(),
                if owned.binary.components().any(|c| c.as_os_str() == "debug") {
                    " (a debug build: figures are meaningful with a release build)"
                } else {
                    ""
                }
            ));
            let result = run_owned(&config, &owned, &run_id, &mut reports).await;
            if result.is_ok()
                && let Some(&flow) = config.flows.first()
            {
                extra_reports = extra::run(&config, &owned, flow, &run_id).await;
            }
            if result.is_err()
                || reports.iter().any(|r| !r.ok())
                || extra_reports.iter().any(|r| !r.ok())
            {
                owned.keep_work_dir();
            }
            owned.teardown().await;
            result?;
        }
        Target::External(external) => {
            external.check()?;
            let [flow] = config.flows[..] else {
                bail!(
                    "--coordinators drives one flow, the one they run: pass --flow two_phase or \
                     --flow one_shot"
                );
            };
            if !config.extra.figures.is_empty() {
                say(
                    "note: no race, scale, inflight or abuse figures with --coordinators: each \
                     needs a fresh stack of the run's own",
                );
            }
            if config.ceiling {
                say(
                    "note: no PostgreSQL ceiling with --coordinators: pgbench writes its orders \
                     into the database it runs on, which is not this run's",
                );
            }
            let report = run_external(&config, external, flow, &run_id).await?;
            print!("{}", report.table());
            reports.push(report);
        }
    }
    // The last line: the ratio of the flow furthest below its ceiling (the budget holds for each).
    let worst = reports
        .iter()
        .filter_map(|r| Some((r.ceiling_ratio()?, r)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, report)) = worst
        && let Some(Ok(ceiling)) = &report.ceiling
    {
        println!(
            "{}",
            ceiling::ratio_line(report.payments_per_sec(), ceiling)
        );
    }
    Ok(LoadOutcome {
        reports,
        extra: extra_reports,
    })
}

async fn run_owned(
    config: &LoadConfig,
    owned: &Owned,
    run_id: &str,
    reports: &mut Vec<FlowReport>,
) -> anyhow::Result<()> {
    let flows: &[Flow] = if config.extra.only {
        &[]
    } else {
        &config.flows
    };
    for &flow in flows {
        say(&format!(
            "phase: {flow}: a fresh database, simulator and replicas"
        ));
        let mut stack = owned.start_flow(flow).await?;
        let result = run_owned_flow(config, owned, &mut stack, run_id).await;
        owned.finish_flow(stack).await;
        let report = result?;
        print!("{}", report.table());
        reports.push(report);
    }
    Ok(())
}

async fn run_owned_flow(
    config: &LoadConfig,
    owned: &Owned,
    stack: &mut FlowStack,
    run_id: &str,
) -> anyhow::Result<FlowReport> {
    let urls = stack.urls();
    let db_name = stack.db_name.clone();
    let measure = Measure {
        flow: stack.flow,
        urls: &urls,
        tls: &payments_client::TlsFiles::default(),
        operator_keys: &owned.operator_keys,
        sim: SimControl::new(&stack.sim.base_url())?,
        pg: Some((&owned.pg, db_name.as_str())),
        redis_url: Some(owned.redis_url.as_str()),
        redis_is_ours: owned.redis_is_ours,
        pids: stack.pids(),
        prefix: format!("load-{run_id}-{}", stack.flow),
    };
    let mut report = measure.run(config, Some(stack)).await?;
    if config.ceiling {
        // The flow's database still exists, migrated, and its replicas are stopped: pgbench
        // has the server to itself, at the callers' concurrency.
        say(&format!(
            "phase: {}: the PostgreSQL ceiling (pgbench, {} clients, {:.0} s)",
            stack.flow,
            config.concurrency,
            config.ceiling_duration.as_secs_f64()
        ));
        let clients = u32::try_from(config.concurrency).unwrap_or(u32::MAX);
        let measured = ceiling::measure(
            &stack.database_url,
            stack.flow,
            clients.min(ceiling::MAX_CONCURRENCY),
            config.ceiling_duration,
        )
        .await;
        if let Err(error) = &measured {
            say(&format!("  the ceiling could not be measured: {error:#}"));
        }
        report.ceiling = Some(measured.map_err(|e| format!("{e:#}")));
        if config.rate.is_some() {
            // The open loop's overhead includes PostgreSQL's own time for the payment's
            // statements; what that time is with nothing else running is the floor under it.
            say(&format!(
                "phase: {}: the same SQL alone, one pgbench client, {FLOOR_SECS} s",
                stack.flow
            ));
            let floor = ceiling::measure(
                &stack.database_url,
                stack.flow,
                1,
                Duration::from_secs(FLOOR_SECS),
            )
            .await;
            report.floor = Some(floor.map_err(|e| format!("{e:#}")));
        }
    }
    Ok(report)
}

async fn run_external(
    config: &LoadConfig,
    external: &External,
    flow: Flow,
    run_id: &str,
) -> anyhow::Result<FlowReport> {
    let pg = match &external.database_url {
        Some(url) => {
            let (base, name) = split_database_url(url)?;
            Some((PgServer::connect(&base).await?, name))
        }
        None => None,
    };
    let pids: Vec<(String, u32)> = external
        .pids
        .iter()
        .enumerate()
        .map(|(i, pid)| (format!("replica {i} (pid {pid})"), *pid))
        .collect();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let measure = Measure {
        flow,
        urls: &external.coordinators,
        tls: &external.tls,
        operator_keys: &external.operator_keys,
        sim: SimControl::new(&external.gateway_url)?,
        pg: pg.as_ref().map(|(server, name)| (server, name.as_str())),
        redis_url: external.redis_url.as_deref(),
        redis_is_ours: false,
        pids,
        prefix: format!("load-{unix}-{run_id}-{flow}"),
    };
    let report = measure.run(config, None).await;
    if let Some((server, _)) = pg {
        server.close().await;
    }
    report
}

/// What one flow's measurement reads from.
struct Measure<'a> {
    flow: Flow,
    urls: &'a [String],
    tls: &'a payments_client::TlsFiles,
    operator_keys: &'a [String],
    sim: SimControl,
    /// The server and the flow's database name.
    pg: Option<(&'a PgServer, &'a str)>,
    redis_url: Option<&'a str>,
    redis_is_ours: bool,
    pids: Vec<(String, u32)>,
    /// Order ids: `{prefix}-w-N` (warm-up), `{prefix}-m-N` (measured).
    prefix: String,
}

impl Measure<'_> {
    /// Warm-up, measured phase, counters. `stack`: replicas of ours, stopped at the end (their
    /// PostgreSQL counters are then final at once).
    async fn run(
        &self,
        config: &LoadConfig,
        stack: Option<&mut FlowStack>,
    ) -> anyhow::Result<FlowReport> {
        let flow = self.flow;
        let callers = Callers::connect(
            self.urls,
            self.tls,
            self.operator_keys,
            config.concurrency,
            config.connections_per_replica,
        )
        .await?;
        let mut redis = match self.redis_url {
            Some(url) => Some(RedisStats::connect(url).await?),
            None => None,
        };

        let warm_prefix = format!("{}-w", self.prefix);
        if config.warmup > 0 {
            say(&format!(
                "phase: {flow}: warm-up, {} payments, {} callers over {} replica(s)",
                config.warmup,
                config.concurrency,
                self.urls.len()
            ));
            let warm = callers
                .pay(
                    "warm-up",
                    &warm_prefix,
                    config.warmup,
                    config.progress_every,
                )
                .await;
            if let Some(first) = warm.failures.first() {
                bail!(
                    "{} of {} warm-up payments failed (first: {first})",
                    warm.failures.len(),
                    config.warmup
                );
            }
        }
        let (pg_before, idle_commits_per_sec) = match self.pg {
            Some((server, db)) => {
                say(&format!(
                    "  waiting {:.1} s for PostgreSQL to publish the warm-up's commits, then {:.0} s \
                     to count the idle replicas' own",
                    PG_STATS_FLUSH.as_secs_f64(),
                    IDLE_WINDOW.as_secs_f64()
                ));
                tokio::time::sleep(PG_STATS_FLUSH).await;
                let idle_from = server.commits(db).await?;
                tokio::time::sleep(IDLE_WINDOW).await;
                let before = server.commits(db).await?;
                let idle = before.saturating_sub(idle_from) as f64 / IDLE_WINDOW.as_secs_f64();
                (Some(before), Some(idle))
            }
            None => (None, None),
        };
        let redis_before = match redis.as_mut() {
            Some(redis) => Some(redis.calls().await?),
            None => None,
        };

        say(&format!(
            "phase: {flow}: measured, {} payments, {} callers over {} replica(s)",
            config.payments,
            config.concurrency,
            self.urls.len()
        ));
        let measured_prefix = format!("{}-m", self.prefix);
        let mut measured = callers
            .pay(
                "measured",
                &measured_prefix,
                config.payments,
                config.progress_every,
            )
            .await;
        let redis_calls = match (redis.as_mut(), redis_before) {
            (Some(redis), Some(before)) => Some(redis.calls().await?.since(&before)),
            _ => None,
        };
        let rss: Vec<(String, Option<f64>)> = self
            .pids
            .iter()
            .map(|(id, pid)| (id.clone(), rss_mb(*pid)))
            .collect();
        let rate_prefix = format!("{}-r", self.prefix);
        let open_loop = match config.rate {
            Some(rate) => {
                let max = figures::rate(measured.paid.len(), measured.elapsed);
                let per_sec = rate.per_sec(max);
                say(&format!(
                    "phase: {flow}: open loop, {} payments at {per_sec:.1}/s (scheduled, not \
                     waiting for answers){}",
                    config.payments,
                    if rate == Rate::HalfMax {
                        format!(": half the measured {max:.1}/s")
                    } else {
                        String::new()
                    }
                ));
                let phase = callers
                    .pay_at_rate(
                        "open loop",
                        &rate_prefix,
                        config.payments,
                        per_sec,
                        config.progress_every,
                    )
                    .await;
                Some((per_sec, phase))
            }
            None => None,
        };
        let requests = self
            .sim
            .requests()
            .await
            .context("reading the simulator's request log")?;
        let ledger = self.sim.ledger().await?;
        say(&format!(
            "  {} of {} PAID in {:.2} s",
            measured.paid.len(),
            config.payments,
            measured.elapsed.as_secs_f64()
        ));

        let pg_commits = match (self.pg, pg_before) {
            (Some((server, db)), Some(before)) => {
                match stack {
                    Some(stack) => {
                        say(
                            "  stopping the replicas (their PostgreSQL counters flush as they exit)",
                        );
                        stack.stop_replicas().await?;
                        server.wait_no_backends(db, BACKENDS_GUARD).await?;
                    }
                    None => {
                        say(&format!(
                            "  waiting {:.1} s for PostgreSQL to publish the commits",
                            PG_STATS_FLUSH.as_secs_f64()
                        ));
                        tokio::time::sleep(PG_STATS_FLUSH).await;
                    }
                }
                Some(server.commits(db).await?.saturating_sub(before))
            }
            _ => None,
        };
        // Read after the commit count: these queries commit in the flow's database too.
        let database = match (self.pg, &config.target) {
            (Some((server, db)), Target::Owned(_)) => Some(server.orders(db).await?),
            _ => None,
        };

        let ours = |order: &str| order.starts_with(&format!("{}-", self.prefix));
        let flow_intents: Vec<_> = ledger
            .intents
            .iter()
            .filter(|i| i.metadata.get("order_id").is_some_and(|o| ours(o)))
            .collect();
        let checked = Checked {
            database,
            charged_intents: flow_intents.iter().filter(|i| i.times_charged > 0).count(),
            most_charges: flow_intents
                .iter()
                .map(|i| i.times_charged)
                .max()
                .unwrap_or(0),
        };

        let gateway = gateway_time(&requests);
        let measured_orders = |order: &&String| order.starts_with(&format!("{measured_prefix}-"));
        let gateway_calls: u64 = gateway
            .calls_by_order
            .iter()
            .filter(|(order, _)| measured_orders(order))
            .map(|(_, calls)| u64::from(*calls))
            .sum();
        let measured_gateway_time: Duration = gateway
            .by_order
            .iter()
            .filter(|(order, _)| measured_orders(order))
            .map(|(_, spent)| *spent)
            .sum();
        let latencies: Vec<(String, Duration)> = measured
            .paid
            .iter()
            .map(|p| (p.order_id.clone(), p.latency))
            .collect();
        let (mut overhead, overhead_missing) = overheads(&latencies, &gateway.by_order);
        let mut latency: Vec<Duration> = latencies.iter().map(|(_, l)| *l).collect();
        let paid = measured.paid.len();
        let open_loop = open_loop.map(|(rate, mut phase)| {
            let latencies: Vec<(String, Duration)> = phase
                .paid
                .iter()
                .map(|p| (p.order_id.clone(), p.latency))
                .collect();
            let (mut overhead, overhead_missing) = overheads(&latencies, &gateway.by_order);
            let mut latency: Vec<Duration> = latencies.iter().map(|(_, l)| *l).collect();
            OpenLoop {
                rate,
                asked: config.payments,
                paid: phase.paid.len(),
                failures: std::mem::take(&mut phase.failures),
                elapsed: phase.elapsed,
                latency: Percentiles::of(&mut latency),
                overhead: Percentiles::of(&mut overhead),
                overhead_missing,
            }
        });
        Ok(FlowReport {
            flow,
            replicas: self.urls.len(),
            concurrency: config.concurrency,
            warmup: config.warmup,
            asked: config.payments,
            paid,
            failures: std::mem::take(&mut measured.failures),
            elapsed: measured.elapsed,
            latency: Percentiles::of(&mut latency),
            overhead: Percentiles::of(&mut overhead),
            overhead_missing,
            gateway_time: measured_gateway_time / u32::try_from(paid.max(1)).unwrap_or(u32::MAX),
            gateway_calls,
            unattributed_calls: gateway.unattributed,
            pg_commits,
            idle_commits_per_sec,
            ceiling: None,
            floor: None,
            redis_calls,
            redis_is_ours: self.redis_is_ours,
            rss,
            expected_orders: config.warmup + measured_payments(config.payments, config.rate),
            open_loop,
            checked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_parse() {
        assert_eq!(
            parse_flows("both").unwrap(),
            [Flow::TwoPhase, Flow::OneShot]
        );
        assert_eq!(parse_flows("one_shot").unwrap(), [Flow::OneShot]);
        assert!(parse_flows("three_phase").is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("half"), Ok(Rate::HalfMax));
        assert_eq!(parse_rate("250"), Ok(Rate::Fixed(250.0)));
        assert_eq!(parse_rate("0.5"), Ok(Rate::Fixed(0.5)));
        for bad in ["0", "-3", "fast", "inf", "NaN"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(Rate::HalfMax.per_sec(538.0), 269.0);
        assert_eq!(Rate::Fixed(100.0).per_sec(538.0), 100.0);
        assert_eq!(measured_payments(3000, Some(Rate::HalfMax)), 6000);
        assert_eq!(measured_payments(3000, None), 3000);
    }

    #[test]
    fn the_simulator_remembers_every_measured_call() {
        assert_eq!(requests_to_remember(300, 3000), 10_000);
        assert_eq!(requests_to_remember(0, 10), 10_000);
        assert_eq!(requests_to_remember(1000, 9000), 30_000);
    }
}
