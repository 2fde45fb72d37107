//! `booking-sim chaos`: three coordinator replicas on one PostgreSQL and one Redis with the
//! gateway simulator (all started here, or some given), racing operators paying orders through
//! the public gRPC API, and a seeded fault schedule running meanwhile: `kill -9` and restart of
//! replicas, SIGSTOP past the lease then SIGCONT, PostgreSQL and Redis stopped and started, and
//! every simulator fault (latency spikes, slow answers, hangs, 500 before and after charging,
//! dropped answers, 429). Then the faults stop, recovery is given its time to settle, and the
//! invariant checker ([`crate::checker`]) judges what was recorded against the gateway's ledger.
//!
//! - [`schedule`]: the schedule, generated up front from the seed (same seed, same schedule).
//! - [`workload`]: the racing operators and reviewers; [`operators`]: the same on their own,
//!   against running replicas, for drills a test conducts itself.
//! - `faults`: applies the schedule; `world`: what the run started; `settle`: waiting for
//!   recovery; `feed`: the live `WatchEvents` subscriber kept through the run, whose positions
//!   the checker judges (gaps, duplicates, out of order), as it judges the orders callers were
//!   told were paid.
//!
//! The same seed replays the same schedule and the same per-order plans (amounts, methods,
//! callers, refunds); the interleaving of calls is the machine's.

pub mod operators;
pub mod schedule;
pub mod workload;

mod faults;
mod feed;
pub(crate) mod progress;
mod settle;
mod world;

pub use faults::FaultTally;
pub use operators::Operators;
pub use schedule::{Fault, FaultKind, Schedule, ScheduledFault, parse_kinds};
pub use settle::Settled;
pub use workload::WorkloadStats;

use std::{collections::BTreeMap, fmt, fmt::Write as _, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use tokio::{sync::watch, task::JoinSet};

use crate::checker::{self, CheckInput, LiveFeed, Report};
use faults::Runner;
use feed::Subscriber;
use progress::say;
use schedule::{Baseline, ScheduleParams};
use workload::{Workload, WorkloadConfig};
use world::World;

/// How long the checker waits for every committed event to get its feed position.
pub const STAMPING_BOUND: Duration = Duration::from_secs(30);

/// Running coordinators, simulator and database to drive instead of starting them (only the
/// simulator's faults can then be applied). No `Debug` of the keys.
#[derive(Clone)]
pub struct External {
    /// The replicas' gRPC URLs.
    pub coordinators: Vec<String>,
    /// The gateway simulator's base URL.
    pub gateway_url: String,
    /// The coordinators' PostgreSQL database, for the checker.
    pub database_url: String,
    /// Operators' API keys.
    pub operator_keys: Vec<String>,
    /// A reviewer's (or admin's) API key, for refunds; none: no refunds.
    pub reviewer_key: Option<String>,
}

impl fmt::Debug for External {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("External")
            .field("coordinators", &self.coordinators)
            .field("gateway_url", &self.gateway_url)
            .field(
                "operator_keys",
                &format!("{} key(s)", self.operator_keys.len()),
            )
            .field("reviewer_key", &self.reviewer_key.as_ref().map(|_| "****"))
            .finish_non_exhaustive()
    }
}

/// Everything a chaos run is made of.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Orders to pay (each by `callers_per_order` racing operators).
    pub payments: usize,
    pub seed: u64,
    /// Coordinator replicas to start.
    pub replicas: usize,
    /// Orders being paid at once.
    pub concurrency: usize,
    pub callers_per_order: usize,
    /// Share (percent) of paid orders a reviewer refunds.
    pub refund_percent: u32,
    /// Share (percent) of orders whose first caller submits twice at once with the same key.
    pub duplicate_percent: u32,
    /// Fault kinds in the schedule.
    pub faults: Vec<FaultKind>,
    /// One fault per this many payments (and at least one of each kind when it fits).
    pub payments_per_fault: usize,
    /// Calm time between the end of a fault and the start of the next.
    pub min_gap: Duration,
    /// The replicas' LEASE_TTL_MS.
    pub lease_ttl: Duration,
    /// The replicas' RECOVERY_SWEEP_MS.
    pub recovery_sweep: Duration,
    /// The replicas' GATEWAY_TIMEOUT_MS: short, so that hangs resolve quickly.
    pub gateway_timeout: Duration,
    /// The replicas' GATEWAY_FLOW (with `external`: the flow they run, so that the simulator's
    /// faults aim at calls they make).
    pub gateway_flow: String,
    /// Latency the simulator adds to every call outside faults, so that callers overlap.
    pub gateway_latency_ms: u64,
    pub gateway_jitter_ms: u64,
    /// One API call's deadline.
    pub call_timeout: Duration,
    /// Sends of one idempotency key before a caller gives up on it.
    pub max_tries: u32,
    /// How long recovery may take to settle after the faults before the run fails.
    pub settle_timeout: Duration,
    /// How often the progress line is printed.
    pub progress_every: Duration,
    /// The coordinator binary (default: found next to this executable, see
    /// [`crate::stack::coordinator::find_coordinator_binary`]).
    pub coordinator_bin: Option<PathBuf>,
    /// More flags for every replica (after the run's own, so they win).
    pub coordinator_args: Vec<String>,
    /// Order ids are `{prefix}-{n}` (default: `chaos-{seed}`, plus the time when external).
    pub order_prefix: Option<String>,
    /// Keep the work directory (replica logs, journals, keys file) even when the run passed.
    pub keep_work_dir: bool,
    pub external: Option<External>,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            payments: 3000,
            seed: 1,
            replicas: 3,
            concurrency: 8,
            callers_per_order: 3,
            refund_percent: 15,
            duplicate_percent: 10,
            faults: FaultKind::ALL.to_vec(),
            payments_per_fault: 25,
            min_gap: Duration::from_secs(1),
            lease_ttl: Duration::from_millis(1000),
            recovery_sweep: Duration::from_millis(500),
            gateway_timeout: Duration::from_millis(1500),
            gateway_flow: "two_phase".to_owned(),
            gateway_latency_ms: 20,
            gateway_jitter_ms: 40,
            call_timeout: Duration::from_secs(8),
            max_tries: 12,
            settle_timeout: Duration::from_secs(180),
            progress_every: Duration::from_secs(5),
            coordinator_bin: None,
            coordinator_args: Vec::new(),
            order_prefix: None,
            keep_work_dir: false,
            external: None,
        }
    }
}

impl ChaosConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.payments == 0 {
            bail!("--payments must be at least 1");
        }
        if self.external.is_none() && self.replicas == 0 {
            bail!("--replicas must be at least 1");
        }
        if self.concurrency == 0 || self.callers_per_order == 0 {
            bail!("--concurrency and --callers-per-order must be at least 1");
        }
        if self.refund_percent > 100 || self.duplicate_percent > 100 {
            bail!("percentages must be between 0 and 100");
        }
        if !matches!(self.gateway_flow.as_str(), "two_phase" | "one_shot") {
            bail!(
                "--gateway-flow must be two_phase or one_shot, not {:?}",
                self.gateway_flow
            );
        }
        if self.max_tries == 0 {
            bail!("max_tries must be at least 1");
        }
        Ok(())
    }
}

/// What a run did and what the checker said.
#[derive(Clone, Debug)]
pub struct ChaosOutcome {
    pub seed: u64,
    pub payments: usize,
    pub schedule: Schedule,
    pub faults: FaultTally,
    /// Faults the simulator injected, per its own kind names (from its ledger).
    pub sim_injected: BTreeMap<String, u64>,
    pub workload: WorkloadStats,
    pub settled: Settled,
    /// What the live `WatchEvents` subscriber received (none when pointed at running services:
    /// no `service` key).
    pub live_feed: Option<LiveFeed>,
    pub report: Report,
    pub elapsed: Duration,
    /// The work directory (replica logs, journals, keys file), kept when the run failed.
    pub work_dir: Option<PathBuf>,
}

impl ChaosOutcome {
    /// How many faults of `kind` were applied.
    pub fn applied(&self, kind: FaultKind) -> u32 {
        self.faults.applied.get(&kind).copied().unwrap_or(0)
    }

    /// The checker found nothing and no replica died on its own.
    pub fn ok(&self) -> bool {
        self.report.ok() && self.faults.unexpected_exits.is_empty()
    }

    /// The final report: the schedule's summary, the workload's figures, the checker's table.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chaos run: seed {}, {} payments, {:.1} s",
            self.seed,
            self.payments,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "\nfaults (scheduled / applied / armed but never met):");
        let scheduled = self.schedule.counts();
        for kind in FaultKind::ALL {
            let planned = scheduled.get(&kind).copied().unwrap_or(0);
            let missed = self.faults.not_triggered.get(&kind).copied().unwrap_or(0);
            if planned == 0 && self.applied(kind) == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "  {:<18} {:>4} {:>4} {:>4}",
                kind.name(),
                planned,
                self.applied(kind),
                missed
            );
        }
        if !self.schedule.left_out.is_empty() {
            let names: Vec<&str> = self.schedule.left_out.iter().map(|k| k.name()).collect();
            let _ = writeln!(
                out,
                "  left out (the run is too short): {}",
                names.join(", ")
            );
        }
        if !self.sim_injected.is_empty() {
            let _ = writeln!(
                out,
                "  simulator faults injected: {}",
                join_counts(&self.sim_injected)
            );
        }
        for line in &self.faults.unexpected_exits {
            let _ = writeln!(out, "  UNEXPECTED: {line}");
        }
        let w = &self.workload;
        let _ = writeln!(out, "\nworkload:");
        let _ = writeln!(
            out,
            "  orders {} ({}), final states: {}",
            w.orders_started,
            join_counts(&w.methods),
            join_counts(&self.settled.states)
        );
        let _ = writeln!(
            out,
            "  ProcessPayment: {} calls, {} keys, {} same-key retries, {} double submits ({} answers joined an attempt), {} keys given up",
            w.pay_calls,
            w.presses,
            w.same_key_retries,
            w.duplicate_submits,
            w.joined_existing,
            w.gave_up
        );
        let _ = writeln!(
            out,
            "  attempt outcomes the callers saw: {}",
            join_counts(&w.outcomes_seen)
        );
        let _ = writeln!(
            out,
            "  refusals and errors by reason ({}): {}",
            w.refusal_total(),
            join_counts(&w.refusals)
        );
        let _ = writeln!(
            out,
            "  RefundPayment: {} calls, {} keys ({} replays), {} answered, {} given up; refusals: {}",
            w.refund_calls,
            w.refunds_requested,
            w.refund_replays,
            w.refunds_answered,
            w.refund_gave_up,
            join_counts(&w.refund_refusals)
        );
        let _ = writeln!(
            out,
            "  refunds recorded: {}; paid orders partly refunded: {}",
            join_counts(&self.settled.refunds),
            self.settled.partly_refunded
        );
        let _ = writeln!(
            out,
            "  recovery settled {:.1} s after the faults ended",
            self.settled.took.as_secs_f64()
        );
        let _ = writeln!(out, "\ninvariant checker:");
        out.push_str(&self.report.table());
        if let Some(dir) = &self.work_dir {
            let _ = writeln!(out, "\nreplica logs and journals kept in {}", dir.display());
        }
        out
    }
}

fn join_counts<K: fmt::Display>(counts: &BTreeMap<K, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the whole thing: start (or connect), schedule and workload, mend, settle, check, tear
/// down. `Err` when the run itself could not be carried out (a service would not start or
/// restart, recovery never settled); a run the checker fails is an `Ok` outcome whose
/// [`ChaosOutcome::ok`] is false.
pub async fn run(config: ChaosConfig) -> anyhow::Result<ChaosOutcome> {
    progress::start_clock();
    config.validate()?;
    let started = tokio::time::Instant::now();
    let mut kinds = config.faults.clone();
    if config.external.is_some() {
        let dropped: Vec<&str> = kinds
            .iter()
            .filter(|k| k.needs_owned_stack())
            .map(|k| k.name())
            .collect();
        if !dropped.is_empty() {
            say(&format!(
                "pointed at running services: only the simulator's faults apply (left out: {})",
                dropped.join(", ")
            ));
        }
        kinds.retain(|k| !k.needs_owned_stack());
    }
    let replicas = match &config.external {
        Some(external) => external.coordinators.len(),
        None => config.replicas,
    };
    let schedule = Schedule::generate(&ScheduleParams {
        seed: config.seed,
        payments: config.payments,
        kinds,
        payments_per_fault: config.payments_per_fault,
        replicas,
        lease_ttl: config.lease_ttl,
        recovery_sweep: config.recovery_sweep,
        gateway_timeout: config.gateway_timeout,
        one_shot: config.gateway_flow == "one_shot",
    });
    say(&format!(
        "seed {}: {} payments, {} callers per order, {} at once; {} faults scheduled:",
        config.seed,
        config.payments,
        config.callers_per_order,
        config.concurrency,
        schedule.faults.len()
    ));
    eprint!("{}", schedule.listing());
    if !schedule.left_out.is_empty() {
        let names: Vec<&str> = schedule.left_out.iter().map(|k| k.name()).collect();
        say(&format!(
            "the run is too short for every kind: left out {}",
            names.join(", ")
        ));
    }

    let world = Arc::new(World::start(&config).await?);
    let result = drive(world.clone(), &config, schedule).await;
    let result = match result {
        Ok(mut outcome) => {
            outcome.elapsed = started.elapsed();
            if !outcome.ok() || config.keep_work_dir {
                outcome.work_dir = world.keep_dir();
            }
            Ok(outcome)
        }
        Err(error) => {
            let _ = world.sim.clear_faults().await;
            match world.keep_dir() {
                Some(dir) => Err(error.context(format!(
                    "the chaos run failed (replica logs and journals kept in {})",
                    dir.display()
                ))),
                None => Err(error.context("the chaos run failed")),
            }
        }
    };
    say("phase: tearing down");
    world.teardown().await;
    result
}

async fn drive(
    world: Arc<World>,
    config: &ChaosConfig,
    schedule: Schedule,
) -> anyhow::Result<ChaosOutcome> {
    let baseline = Baseline {
        seed: config.seed,
        latency_ms: config.gateway_latency_ms,
        jitter_ms: config.gateway_jitter_ms,
    };
    let runner = Arc::new(Runner::new(
        world.clone(),
        baseline,
        config.min_gap,
        config.concurrency * 2,
    )?);
    let order_prefix = config.order_prefix.clone().unwrap_or_else(|| {
        if config.external.is_some() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            format!("chaos-{}-{now}", config.seed)
        } else {
            format!("chaos-{}", config.seed)
        }
    });
    let workload = Arc::new(Workload::new(
        WorkloadConfig {
            seed: config.seed,
            payments: config.payments,
            concurrency: config.concurrency,
            callers_per_order: config.callers_per_order,
            refund_percent: if world.reviewers.is_empty() {
                0
            } else {
                config.refund_percent
            },
            duplicate_percent: config.duplicate_percent,
            call_timeout: config.call_timeout,
            max_tries: config.max_tries,
            max_presses: 3,
            order_prefix,
        },
        world.clone(),
    ));

    // The runner opens the gate as far as the first fault allows before anything starts.
    let (gate_tx, gate_rx) = watch::channel(0usize);
    let (started_tx, started_rx) = watch::channel(0usize);
    let total_faults = schedule.faults.len();
    let planned = schedule.clone();
    // Opened before the first payment, so that the feed is watched live rather than replayed.
    let first_victim = planned
        .faults
        .iter()
        .find_map(|f| match f.fault {
            Fault::Kill9 { replica, .. } => Some(replica),
            _ => None,
        })
        .unwrap_or(0);
    let subscriber = Subscriber::start(
        world.watch_clients.clone(),
        first_victim,
        Duration::from_secs(10),
    )
    .await;
    match &subscriber {
        Some(_) => say("live feed subscriber: WatchEvents open (resumes after its last position)"),
        None => say("no live feed subscriber (no service key for running services)"),
    }
    say("phase: racing operators and the fault schedule");
    let mut tasks: JoinSet<anyhow::Result<&'static str>> = JoinSet::new();
    {
        let workload = workload.clone();
        tasks.spawn(async move {
            workload.run(gate_rx, started_tx).await?;
            Ok("the workload")
        });
    }
    {
        let runner = runner.clone();
        let payments = config.payments;
        tasks.spawn(async move {
            runner.run(&schedule, payments, started_rx, gate_tx).await?;
            Ok("the fault schedule")
        });
    }
    let mut ticker = tokio::time::interval(config.progress_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut running = 2;
    while running > 0 {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok(Ok(what))) => {
                    running -= 1;
                    say(&format!("{what} is done"));
                    progress_line(&workload, &runner, config.payments, total_faults, subscriber.as_ref());
                }
                Some(Ok(Err(error))) => return Err(error),
                Some(Err(error)) => bail!("a chaos task failed: {error}"),
                None => break,
            },
            _ = ticker.tick() => {
                runner.watch_replicas().await?;
                progress_line(&workload, &runner, config.payments, total_faults, subscriber.as_ref());
            }
        }
    }

    say("phase: faults over; mending everything (simulator, PostgreSQL, Redis, replicas)");
    runner.heal().await?;
    say(&format!(
        "phase: waiting for recovery to settle (at most {:?})",
        config.settle_timeout
    ));
    let order_ids = (0..config.payments)
        .map(|n| workload.config.order_id(n))
        .collect();
    let settled = settle::settle(world.clone(), order_ids, config.settle_timeout).await?;
    say(&format!(
        "  settled after {:.1} s: {}",
        settled.took.as_secs_f64(),
        join_counts(&settled.states)
    ));
    // A replica that died while settling is a finding too.
    runner.watch_replicas().await?;

    say("phase: invariant checker");
    let input = CheckInput {
        database_url: world.database_url.clone(),
        sim: world.sim.clone(),
        requested: Some(config.payments as u64),
    };
    // A fault may just have moved the sequencer's leader.
    let mut report = checker::check_once_stamped(&input, STAMPING_BOUND)
        .await
        .context("running the invariant checker")?;
    let live_feed = match subscriber {
        Some(subscriber) => {
            let (feed, max) = subscriber
                .finish(&world.database_url, STAMPING_BOUND)
                .await
                .context("stopping the live feed subscriber")?;
            say(&format!(
                "  live feed subscriber: {} events received over {} streams, judged against 1..{max}",
                feed.positions.len(),
                feed.streams
            ));
            report.add_live_feed(&feed, max);
            Some(feed)
        }
        None => None,
    };
    let stats = workload.stats();
    let states = checker::order_states(&world.database_url, &stats.succeeded_orders)
        .await
        .context("reading the states of the orders callers were told were paid")?;
    report.add_told_paid(&stats.succeeded_orders, &states);
    let sim_injected = world
        .sim
        .ledger()
        .await
        .map(|l| l.faults_injected)
        .unwrap_or_default();
    Ok(ChaosOutcome {
        seed: config.seed,
        payments: config.payments,
        schedule: planned,
        faults: runner.tally(),
        sim_injected,
        workload: stats,
        settled,
        live_feed,
        report,
        elapsed: Duration::ZERO,
        work_dir: None,
    })
}

fn progress_line(
    workload: &Workload,
    runner: &Runner,
    payments: usize,
    total_faults: usize,
    subscriber: Option<&Subscriber>,
) {
    let w = workload.stats();
    let f = runner.tally();
    let mut top: Vec<(&String, &u64)> = w.refusals.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    let top: Vec<String> = top
        .iter()
        .take(4)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    let now = f
        .current
        .as_ref()
        .map(|c| format!(" (now {c})"))
        .unwrap_or_default();
    let feed = subscriber
        .map(|s| format!("; feed at {}", s.highest()))
        .unwrap_or_default();
    say(&format!(
        "payments {}/{payments} done ({} started); faults {}/{total_faults}{now}; {} calls, {} same-key retries, {} given up; refusals {}{}{feed}",
        w.orders_done,
        w.orders_started,
        f.done,
        w.pay_calls,
        w.same_key_retries,
        w.gave_up,
        w.refusal_total(),
        if top.is_empty() {
            String::new()
        } else {
            format!(" ({})", top.join(", "))
        }
    ));
}
