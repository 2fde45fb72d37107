//! `booking-sim load --sweep 1,2,4,…`: throughput and latency against concurrency, next to the
//! PostgreSQL ceiling at each concurrency, as a table and (`--chart`) an SVG ([`chart`]).
//!
//! Per flow, one stack (database, simulator, replicas) serves every step: a step is the load's
//! own warm-up and closed-loop measured phase ([`Measure`]) at that many callers, on fresh orders
//! of its own. The per-step PostgreSQL and Redis counters are left out (they need the replicas
//! stopped, or an idle window, per step), so a step costs only its payments. Once every step ran,
//! the orders are counted in the database (every one of every step PAID; each step also checks
//! the gateway's ledger, charged once, as the load does), then the replicas stop and pgbench
//! measures the ceiling at each concurrency with the server to itself, as the plain load does.
//! Not right after each step with the replicas idle: their pools and 64 pgbench clients went past
//! PostgreSQL's 100 connections. The price: on a shared machine a row's two figures are minutes
//! apart (the chart notes the load average at the start).
//!
//! Step sizes ([`step_payments`], [`step_warmup`]) grow with the concurrency so that each step
//! lasts a few seconds at the rates of this machine: the default sweep of both flows takes about
//! four minutes, most of it pgbench.

use std::path::PathBuf;

use anyhow::bail;
use gateway_client::Flow;
use rand::Rng;

use super::{
    BACKENDS_GUARD, LoadConfig, Measure, Target, ceiling, chart, extra, report::FlowReport,
    requests_to_remember, services::Owned,
};
use crate::{chaos::progress::say, sim_control::SimControl};

/// Fewest measured payments of a step (for a p99 of more than a handful of samples).
pub const MIN_STEP_PAYMENTS: usize = 500;
/// Measured payments per caller of a step, above [`MIN_STEP_PAYMENTS`].
pub const STEP_PAYMENTS_PER_CALLER: usize = 100;
pub const MIN_STEP_WARMUP: usize = 50;
pub const STEP_WARMUP_PER_CALLER: usize = 10;

/// What to sweep.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// Callers of each step.
    pub concurrencies: Vec<usize>,
    /// Where to write the chart (SVG); `None`: no chart.
    pub chart: Option<PathBuf>,
}

/// Measured payments of a step at `concurrency`: `min(payments, max(500, 100 × concurrency))`.
pub fn step_payments(payments: usize, concurrency: usize) -> usize {
    payments.min(
        STEP_PAYMENTS_PER_CALLER
            .saturating_mul(concurrency)
            .max(MIN_STEP_PAYMENTS),
    )
}

/// Warm-up payments of a step: `min(warmup, max(50, 10 × concurrency))`.
pub fn step_warmup(warmup: usize, concurrency: usize) -> usize {
    warmup.min(
        STEP_WARMUP_PER_CALLER
            .saturating_mul(concurrency)
            .max(MIN_STEP_WARMUP),
    )
}

/// One flow's sweep: a report per step (its `ceiling` set once pgbench ran).
pub struct FlowSweep {
    pub flow: Flow,
    pub replicas: usize,
    pub steps: Vec<FlowReport>,
    /// Orders in the flow's database and how many are PAID, before the ceiling added its own.
    pub database: (i64, i64),
    pub ceiling_secs: Option<u64>,
}

impl FlowSweep {
    /// Orders the steps made (warm-up and measured).
    pub fn expected_orders(&self) -> usize {
        self.steps.iter().map(|s| s.expected_orders).sum()
    }

    pub fn ok(&self) -> bool {
        let expected = self.expected_orders() as i64;
        self.steps.iter().all(FlowReport::ok) && self.database == (expected, expected)
    }

    /// The chart's series of this flow.
    pub fn series(&self) -> chart::Series {
        chart::Series {
            name: self.flow.to_string(),
            stack: format!("{} replicas", self.replicas),
            points: self
                .steps
                .iter()
                .map(|s| chart::Point {
                    concurrency: s.concurrency,
                    payments_per_sec: s.payments_per_sec(),
                    p99_ms: s.latency.map(|p| p.p99.as_secs_f64() * 1000.0),
                    ceiling_per_sec: match &s.ceiling {
                        Some(Ok(c)) => Some(c.payments_per_sec),
                        _ => None,
                    },
                })
                .collect(),
        }
    }

    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "sweep {}: {} replica(s), closed loop, fresh orders per step; ceiling: {}",
            self.flow,
            self.replicas,
            match self.ceiling_secs {
                Some(secs) => format!("pgbench {secs} s per step, same SQL, same clients"),
                None => "not measured".to_owned(),
            }
        );
        let _ = writeln!(
            t,
            "  {:>11} {:>8} {:>10} {:>9} {:>9} {:>10} {:>6}",
            "concurrency", "payments", "payments/s", "p50 ms", "p99 ms", "ceiling/s", "ratio"
        );
        let ms = |d: std::time::Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
        for s in &self.steps {
            let (p50, p99) = match &s.latency {
                Some(p) => (ms(p.p50), ms(p.p99)),
                None => ("n/a".to_owned(), "n/a".to_owned()),
            };
            let ceiling = match &s.ceiling {
                Some(Ok(c)) => format!("{:.1}", c.payments_per_sec),
                Some(Err(_)) => "failed".to_owned(),
                None => "n/a".to_owned(),
            };
            let ratio = s
                .ceiling_ratio()
                .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
            let _ = writeln!(
                t,
                "  {:>11} {:>8} {:>10.1} {:>9} {:>9} {:>10} {:>6}{}",
                s.concurrency,
                s.asked,
                s.payments_per_sec(),
                p50,
                p99,
                ceiling,
                ratio,
                step_problem(s)
            );
        }
        let expected = self.expected_orders();
        let _ = writeln!(
            t,
            "  checked: database: {} orders, {} PAID of {expected} made by the steps; ledger: \
             every step's orders charged once{}",
            self.database.0,
            self.database.1,
            if self.ok() { "" } else { "  << MISMATCH" }
        );
        t
    }
}

/// What went wrong in a step, for its row (empty if nothing).
fn step_problem(step: &FlowReport) -> String {
    if step.ok() {
        return String::new();
    }
    let mut problems = Vec::new();
    if let Some(first) = step.failures.first() {
        problems.push(format!("{} failed (first: {first})", step.failures.len()));
    }
    if step.paid != step.asked {
        problems.push(format!("{} of {} PAID", step.paid, step.asked));
    }
    if step.checked.charged_intents != step.expected_orders || step.checked.most_charges > 1 {
        problems.push(format!(
            "ledger: {} of {} charged, at most {} time(s)",
            step.checked.charged_intents, step.expected_orders, step.checked.most_charges
        ));
    }
    if let Some(Err(error)) = &step.ceiling {
        problems.push(format!("ceiling: {error}"));
    }
    format!("  << MISMATCH: {}", problems.join("; "))
}

/// Every flow's sweep and the other figures; the run went right if each is ok.
pub struct SweepOutcome {
    pub flows: Vec<FlowSweep>,
    pub extra: Vec<extra::ExtraReport>,
}

impl SweepOutcome {
    pub fn ok(&self) -> bool {
        self.flows.iter().all(FlowSweep::ok) && self.extra.iter().all(extra::ExtraReport::ok)
    }
}

/// Runs the sweep of every flow, printing each flow's table as it ends, then the other figures
/// (on the first flow), the chart, and the ratio line of the step furthest below its ceiling.
pub async fn run(mut config: LoadConfig, sweep: SweepConfig) -> anyhow::Result<SweepOutcome> {
    crate::chaos::progress::start_clock_as("load");
    let mut concurrencies = sweep.concurrencies.clone();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    if concurrencies.is_empty() || concurrencies[0] == 0 || config.payments == 0 {
        bail!("--sweep needs concurrencies of at least 1, and --payments at least 1");
    }
    if config.extra.only {
        bail!("--sweep measures the flows: it does not go with --figures-only");
    }
    let Target::Owned(owned_config) = &mut config.target else {
        bail!(
            "--sweep starts a stack of its own per flow (the ceiling needs its database): not \
             with --coordinators"
        );
    };
    if config.rate.is_some() {
        say("note: --rate is not used by --sweep (every step is closed loop)");
    }
    if cfg!(debug_assertions) {
        say(
            "note: booking-sim is a debug build: the callers and the simulator are slow; figures \
             are meaningful with `cargo build --release -p coordinator -p booking-sim`",
        );
    }
    let max_callers = concurrencies.iter().copied().max().unwrap_or(1);
    owned_config.operators = max_callers;
    // One simulator serves every step of a flow: it must remember all of their calls.
    owned_config.remembered_requests = requests_to_remember(
        concurrencies
            .iter()
            .map(|&c| step_warmup(config.warmup, c))
            .sum(),
        concurrencies
            .iter()
            .map(|&c| step_payments(config.payments, c))
            .sum(),
    );
    let owned_config = owned_config.clone();
    say(&format!(
        "phase: sweep of {} at {} callers; per step min({}, max({MIN_STEP_PAYMENTS}, \
         {STEP_PAYMENTS_PER_CALLER} × callers)) payments after min({}, max({MIN_STEP_WARMUP}, \
         {STEP_WARMUP_PER_CALLER} × callers)) warm-up",
        config
            .flows
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(" and "),
        concurrencies
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        config.payments,
        config.warmup
    ));
    let load = load_average();
    let run_id = format!("{:08x}", rand::rng().random::<u32>());
    let mut owned = Owned::start(owned_config.clone()).await?;
    let mut flows = Vec::new();
    let mut result = Ok(());
    let mut pg_version = None;
    for &flow in &config.flows {
        match sweep_flow(&config, &concurrencies, &owned, &run_id, flow).await {
            Ok((sweep, version)) => {
                print!("{}", sweep.table());
                flows.push(sweep);
                pg_version = pg_version.or(version);
            }
            Err(error) => {
                result = Err(error);
                break;
            }
        }
    }
    let mut extra_reports = Vec::new();
    if result.is_ok()
        && let Some(&flow) = config.flows.first()
    {
        extra_reports = extra::run(&config, &owned, flow, &run_id).await;
    }
    let note = machine_note(pg_version.as_deref(), load, owned_config.replicas);
    if let Some(machine) = note.lines().next() {
        println!("machine: {machine}");
    }
    if result.is_ok()
        && let Some(path) = &sweep.chart
    {
        let series: Vec<chart::Series> = flows.iter().map(FlowSweep::series).collect();
        result = chart::write(path, &title(&config.flows), &note, &series);
        if result.is_ok() {
            say(&format!("  chart written to {}", path.display()));
        }
    }
    let ok = flows.iter().all(FlowSweep::ok) && extra_reports.iter().all(extra::ExtraReport::ok);
    if result.is_err() || !ok {
        owned.keep_work_dir();
    }
    owned.teardown().await;
    result?;
    let worst = flows
        .iter()
        .flat_map(|f| &f.steps)
        .filter_map(|s| Some((s.ceiling_ratio()?, s)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, step)) = worst
        && let Some(Ok(ceiling)) = &step.ceiling
    {
        println!("{}", ceiling::ratio_line(step.payments_per_sec(), ceiling));
    }
    Ok(SweepOutcome {
        flows,
        extra: extra_reports,
    })
}

/// One flow's stack, its steps, then the ceilings; also PostgreSQL's version for the chart.
async fn sweep_flow(
    config: &LoadConfig,
    concurrencies: &[usize],
    owned: &Owned,
    run_id: &str,
    flow: Flow,
) -> anyhow::Result<(FlowSweep, Option<String>)> {
    say(&format!(
        "phase: {flow}: a fresh database, simulator and replicas for the whole sweep"
    ));
    let mut stack = owned.start_flow(flow).await?;
    let urls = stack.urls();
    let tls = payments_client::TlsFiles::default();
    let result = async {
        let mut steps = Vec::with_capacity(concurrencies.len());
        for (i, &concurrency) in concurrencies.iter().enumerate() {
            let step_config = LoadConfig {
                concurrency,
                payments: step_payments(config.payments, concurrency),
                warmup: step_warmup(config.warmup, concurrency),
                rate: None,
                ceiling: false,
                ..config.clone()
            };
            say(&format!(
                "phase: {flow}: step {} of {}, {concurrency} callers",
                i + 1,
                concurrencies.len()
            ));
            let measure = Measure {
                flow,
                urls: &urls,
                tls: &tls,
                operator_keys: &owned.operator_keys,
                sim: SimControl::new(&stack.sim.base_url())?,
                // No counters per step: see the module's doc.
                pg: None,
                redis_url: None,
                redis_is_ours: owned.redis_is_ours,
                pids: stack.pids(),
                prefix: format!("load-{run_id}-{flow}-c{concurrency}"),
            };
            let report = measure.run(&step_config, None).await?;
            say(&format!(
                "  {concurrency} callers: {:.1} payments/s, p99 {}",
                report.payments_per_sec(),
                report
                    .latency
                    .map_or_else(|| "n/a".to_owned(), |p| extra::ms(p.p99))
            ));
            steps.push(report);
        }
        let database = owned.pg.orders(&stack.db_name).await?;
        let version = pg_version(&stack.database_url).await;
        let ceiling_secs = config.ceiling.then_some(config.ceiling_duration.as_secs());
        if config.ceiling {
            say(&format!(
                "phase: {flow}: stopping the replicas; the PostgreSQL ceiling at each concurrency \
                 (pgbench, {:.0} s each)",
                config.ceiling_duration.as_secs_f64()
            ));
            stack.stop_replicas().await?;
            owned
                .pg
                .wait_no_backends(&stack.db_name, BACKENDS_GUARD)
                .await?;
            for step in &mut steps {
                let clients = u32::try_from(step.concurrency)
                    .unwrap_or(u32::MAX)
                    .min(ceiling::MAX_CONCURRENCY);
                let measured =
                    ceiling::measure(&stack.database_url, flow, clients, config.ceiling_duration)
                        .await;
                match &measured {
                    Ok(c) => say(&format!(
                        "  ceiling at {clients} clients: {:.1} payments/s",
                        c.payments_per_sec
                    )),
                    Err(error) => say(&format!(
                        "  the ceiling at {clients} clients could not be measured: {error:#}"
                    )),
                }
                step.ceiling = Some(measured.map_err(|e| format!("{e:#}")));
            }
        }
        anyhow::Ok((
            FlowSweep {
                flow,
                replicas: urls.len(),
                steps,
                database,
                ceiling_secs,
            },
            version,
        ))
    }
    .await;
    owned.finish_flow(stack).await;
    result
}

/// `15.4` of the server the sweep ran on; `None` if it could not be read (the chart says less).
async fn pg_version(database_url: &str) -> Option<String> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .ok()?;
    let task = tokio::spawn(connection);
    let version = client
        .query_one("SHOW server_version", &[])
        .await
        .ok()
        .map(|row| row.get::<_, String>(0));
    drop(client);
    let _ = task.await;
    version.map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
}

fn title(flows: &[Flow]) -> String {
    format!(
        "booking-sim load --sweep: {}",
        flows
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    )
}

/// The machine, the date and the load it had when the sweep started (a shared machine's figures
/// move with it); then what was measured.
fn machine_note(pg_version: Option<&str>, load: Option<f64>, replicas: usize) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total_gib(&m))
        .map_or_else(String::new, |gib| format!(", {gib:.0} GiB"));
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{}: {cores} cores{memory}, PostgreSQL{} and Redis local{}\n{replicas} coordinator \
         replicas, simulator answering at once, closed loop, fresh orders; ceiling: pgbench, \
         same SQL, replicas stopped",
        date(unix),
        pg_version.map_or_else(String::new, |v| format!(" {v}")),
        load.map_or_else(String::new, |l| format!(
            "; load average {l:.1} at the start (other work)"
        ))
    )
}

/// The 1-minute load average (`/proc/loadavg`).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `MemTotal` of `/proc/meminfo`, in GiB.
fn mem_total_gib(meminfo: &str) -> Option<f64> {
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// `YYYY-MM-DD` (UTC) of a Unix time: the civil-from-days arithmetic (proleptic Gregorian), to
/// date the chart without a date crate.
fn date(unix: u64) -> String {
    let days = (unix / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_grow_with_the_callers_within_the_options() {
        let payments: Vec<usize> = [1, 2, 4, 8, 16, 32, 64]
            .iter()
            .map(|&c| step_payments(3000, c))
            .collect();
        assert_eq!(payments, [500, 500, 500, 800, 1600, 3000, 3000]);
        assert_eq!(step_payments(20, 64), 20);
        assert_eq!(step_warmup(300, 1), 50);
        assert_eq!(step_warmup(300, 16), 160);
        assert_eq!(step_warmup(300, 64), 300);
        assert_eq!(step_warmup(5, 2), 5);
        assert_eq!(step_payments(usize::MAX, usize::MAX), usize::MAX);
    }

    #[test]
    fn dates_and_memory_read() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_795_564_800), "2026-11-25");
        assert_eq!(
            mem_total_gib("MemTotal:       25165824 kB\nMemFree: 1 kB\n"),
            Some(24.0)
        );
        assert_eq!(mem_total_gib("nothing"), None);
    }
}
