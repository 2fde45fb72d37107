//! One flow's figures and their table.

use std::{fmt::Write as _, time::Duration};

use gateway_client::Flow;

use super::{
    ceiling::{self, Ceiling},
    counters::CommandCalls,
    figures::{Percentiles, per_payment},
};

/// What the run checked after the flow: the database and the gateway's ledger agree with the
/// callers (every order of the flow PAID, charged exactly once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Orders in the flow's database and how many are PAID (none: not read).
    pub database: Option<(i64, i64)>,
    /// The flow's intents in the ledger that were charged, and the most times one was.
    pub charged_intents: usize,
    pub most_charges: u32,
}

/// The open-loop phase: payments started on a fixed schedule, latency from each scheduled start.
#[derive(Clone, Debug)]
pub struct OpenLoop {
    /// The schedule's payments per second.
    pub rate: f64,
    pub asked: usize,
    pub paid: usize,
    pub failures: Vec<String>,
    pub elapsed: Duration,
    pub latency: Option<Percentiles>,
    pub overhead: Option<Percentiles>,
    pub overhead_missing: usize,
}

/// One flow's figures.
#[derive(Clone, Debug)]
pub struct FlowReport {
    pub flow: Flow,
    pub replicas: usize,
    pub concurrency: usize,
    pub warmup: usize,
    pub asked: usize,
    pub paid: usize,
    pub failures: Vec<String>,
    pub elapsed: Duration,
    pub latency: Option<Percentiles>,
    pub overhead: Option<Percentiles>,
    /// Payments left out of the overhead (their calls no longer in the simulator's log).
    pub overhead_missing: usize,
    /// Mean simulator time per payment.
    pub gateway_time: Duration,
    pub gateway_calls: u64,
    pub unattributed_calls: usize,
    /// Commits in the flow's database over the measured phase (none: not measured).
    pub pg_commits: Option<u64>,
    /// Commits per second in the flow's database while the replicas were idle (before the
    /// measured phase): their background work, part of `pg_commits` too.
    pub idle_commits_per_sec: Option<f64>,
    /// Redis calls over the measured phase, per command (none: not measured).
    pub redis_calls: Option<CommandCalls>,
    /// Whether that Redis served this run alone.
    pub redis_is_ours: bool,
    /// `(replica, RSS in MB)` at the end of the measured phase.
    pub rss: Vec<(String, Option<f64>)>,
    /// The PostgreSQL ceiling of the flow (none: not measured), or why it could not be.
    pub ceiling: Option<Result<Ceiling, String>>,
    /// The same SQL with one pgbench client and nothing else running (only with an open loop): the
    /// part of any overhead figure that is PostgreSQL's own, durable commits included.
    pub floor: Option<Result<Ceiling, String>>,
    /// Warm-up and measured payments together: what the database and ledger must show.
    pub expected_orders: usize,
    pub checked: Checked,
    /// The open-loop phase after the measured one (`--rate`), if any. Its payments are in the
    /// PostgreSQL commit count, not in the Redis count (read before it).
    pub open_loop: Option<OpenLoop>,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
}

impl FlowReport {
    pub fn payments_per_sec(&self) -> f64 {
        super::figures::rate(self.paid, self.elapsed)
    }

    /// Payments and time the PostgreSQL commit count covers: the measured phase's, and the
    /// open-loop phase's if any.
    fn commit_window(&self) -> (usize, Duration) {
        match &self.open_loop {
            Some(open) => (self.paid + open.paid, self.elapsed + open.elapsed),
            None => (self.paid, self.elapsed),
        }
    }

    /// This flow's rate over its ceiling's.
    pub fn ceiling_ratio(&self) -> Option<f64> {
        match &self.ceiling {
            Some(Ok(ceiling)) if ceiling.payments_per_sec > 0.0 => {
                Some(self.payments_per_sec() / ceiling.payments_per_sec)
            }
            _ => None,
        }
    }

    /// Whether every payment was PAID, the database and ledger say the same, and the ceiling
    /// (if asked for) was measured.
    pub fn ok(&self) -> bool {
        let expected = self.expected_orders as i64;
        !matches!(self.ceiling, Some(Err(_)))
            && self.failures.is_empty()
            && self.paid == self.asked
            && self
                .checked
                .database
                .is_none_or(|(orders, paid)| orders == expected && paid == expected)
            && self
                .open_loop
                .as_ref()
                .is_none_or(|open| open.failures.is_empty() && open.paid == open.asked)
            && self.checked.charged_intents == self.expected_orders
            && self.checked.most_charges <= 1
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let row = |t: &mut String, name: &str, value: String| {
            let _ = writeln!(t, "  {name:<32} {value}");
        };
        let _ = writeln!(
            t,
            "flow {}: {} replica(s), {} callers, {} payments after {} warm-up",
            self.flow, self.replicas, self.concurrency, self.asked, self.warmup
        );
        row(
            &mut t,
            "payments",
            format!(
                "{} of {} PAID in {:.2} s{}",
                self.paid,
                self.asked,
                self.elapsed.as_secs_f64(),
                match self.failures.first() {
                    Some(first) => format!("; {} failed (first: {first})", self.failures.len()),
                    None => String::new(),
                }
            ),
        );
        row(
            &mut t,
            "payments/s",
            format!("{:.1}", self.payments_per_sec()),
        );
        row(
            &mut t,
            "ProcessPayment latency",
            match &self.latency {
                Some(p) => format!(
                    "p50 {}  p90 {}  p99 {}  max {}",
                    ms(p.p50),
                    ms(p.p90),
                    ms(p.p99),
                    ms(p.max)
                ),
                None => "n/a".to_owned(),
            },
        );
        row(
            &mut t,
            "coordinator overhead",
            match &self.overhead {
                Some(p) => format!(
                    "p50 {}  p99 {}  (latency less the simulator's {} per payment{})",
                    ms(p.p50),
                    ms(p.p99),
                    ms(self.gateway_time),
                    if self.overhead_missing > 0 {
                        format!("; {} payments not in its log", self.overhead_missing)
                    } else {
                        String::new()
                    }
                ),
                None => "n/a (the simulator's log has none of the payments)".to_owned(),
            },
        );
        if let Some(open) = &self.open_loop {
            row(
                &mut t,
                "open loop",
                format!(
                    "{} of {} PAID at {:.1}/s scheduled ({:.1}/s reached){}",
                    open.paid,
                    open.asked,
                    open.rate,
                    super::figures::rate(open.paid, open.elapsed),
                    match open.failures.first() {
                        Some(first) => {
                            format!("; {} failed (first: {first})", open.failures.len())
                        }
                        None => String::new(),
                    }
                ),
            );
            row(
                &mut t,
                "open-loop latency",
                match &open.latency {
                    Some(p) => format!(
                        "p50 {}  p90 {}  p99 {}  max {}  (from each scheduled start)",
                        ms(p.p50),
                        ms(p.p90),
                        ms(p.p99),
                        ms(p.max)
                    ),
                    None => "n/a".to_owned(),
                },
            );
            row(
                &mut t,
                "open-loop overhead",
                match &open.overhead {
                    Some(p) => format!(
                        "p50 {}  p99 {}  (latency less the simulator's time{})",
                        ms(p.p50),
                        ms(p.p99),
                        if open.overhead_missing > 0 {
                            format!("; {} payments not in its log", open.overhead_missing)
                        } else {
                            String::new()
                        }
                    ),
                    None => "n/a (the simulator's log has none of the payments)".to_owned(),
                },
            );
        }
        row(
            &mut t,
            "gateway calls per payment",
            format!(
                "{}{}",
                ratio(per_payment(self.gateway_calls, self.paid)),
                if self.unattributed_calls > 0 {
                    format!(" (+{} calls naming no order)", self.unattributed_calls)
                } else {
                    String::new()
                }
            ),
        );
        row(
            &mut t,
            "PostgreSQL commits per payment",
            match self.pg_commits {
                Some(commits) => {
                    let (payments, elapsed) = self.commit_window();
                    format!(
                        "{} ({commits} commits in the flow's database by \
                         pg_stat_database.xact_commit{}{})",
                        ratio(per_payment(commits, payments)),
                        if self.open_loop.is_some() {
                            format!(" over both phases' {payments} payments")
                        } else {
                            String::new()
                        },
                        match self.idle_commits_per_sec {
                            Some(idle) => {
                                let background = idle * elapsed.as_secs_f64();
                                format!(
                                    "; {:.2} without the idle replicas' own {idle:.0}/s",
                                    (commits as f64 - background).max(0.0) / payments.max(1) as f64
                                )
                            }
                            None => String::new(),
                        }
                    )
                }
                None => "n/a (no database given)".to_owned(),
            },
        );
        row(
            &mut t,
            "Redis commands per payment",
            match &self.redis_calls {
                Some(calls) => {
                    let total = calls.total();
                    let mut by_command: Vec<(&String, &u64)> = calls.0.iter().collect();
                    by_command.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                    let listed: Vec<String> = by_command
                        .iter()
                        .map(|(name, calls)| format!("{name} {calls}"))
                        .collect();
                    format!(
                        "{} ({total} calls by INFO commandstats{}{})",
                        ratio(per_payment(total, self.paid)),
                        if listed.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", listed.join(", "))
                        },
                        if self.redis_is_ours {
                            ""
                        } else {
                            "; a shared Redis: other clients' calls count too"
                        }
                    )
                }
                None => "n/a (no Redis given)".to_owned(),
            },
        );
        row(
            &mut t,
            "replica RSS",
            if self.rss.is_empty() {
                "n/a (no replica pids)".to_owned()
            } else {
                self.rss
                    .iter()
                    .map(|(id, mb)| match mb {
                        Some(mb) => format!("{id} {mb:.1} MB"),
                        None => format!("{id} unreadable"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        if let Some(measured) = &self.ceiling {
            row(
                &mut t,
                "PostgreSQL ceiling",
                match measured {
                    Ok(c) => format!(
                        "{:.1} payments/s (pgbench, {} clients, {} payments, {} failed, {:.2} ms \
                         each; {} commits per payment)",
                        c.payments_per_sec,
                        c.concurrency,
                        c.transactions,
                        c.failed,
                        c.latency_ms_avg,
                        ceiling::commits_per_payment(self.flow)
                    ),
                    Err(error) => format!("not measured: {error}"),
                },
            );
            if let Some(floor) = &self.floor {
                row(
                    &mut t,
                    "PostgreSQL alone, 1 client",
                    match floor {
                        Ok(f) => format!(
                            "{:.2} ms per payment's SQL (pgbench, {} payments, {} commits each): \
                             the floor under the open-loop overhead",
                            f.latency_ms_avg,
                            f.transactions,
                            ceiling::commits_per_payment(self.flow)
                        ),
                        Err(error) => format!("not measured: {error}"),
                    },
                );
            }
            if let Ok(c) = measured {
                row(
                    &mut t,
                    "ratio to the ceiling",
                    ceiling::ratio_line(self.payments_per_sec(), c)
                        .trim_start_matches("ratio to PostgreSQL ceiling: ")
                        .to_owned(),
                );
            }
        }
        row(
            &mut t,
            "checked",
            format!(
                "{}; ledger: {} of {} orders charged, at most {} time(s) each{}",
                match self.checked.database {
                    Some((orders, paid)) => format!("database: {orders} orders, {paid} PAID"),
                    None => "database: not read".to_owned(),
                },
                self.checked.charged_intents,
                self.expected_orders,
                self.checked.most_charges,
                if self.ok() { "" } else { "  << MISMATCH" }
            ),
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn report() -> FlowReport {
        let ms = Duration::from_millis;
        FlowReport {
            flow: Flow::OneShot,
            replicas: 3,
            concurrency: 4,
            warmup: 2,
            asked: 10,
            paid: 10,
            failures: vec![],
            elapsed: ms(500),
            latency: Some(Percentiles {
                n: 10,
                p50: ms(3),
                p90: ms(5),
                p99: ms(9),
                max: ms(9),
            }),
            overhead: Some(Percentiles {
                n: 10,
                p50: ms(2),
                p90: ms(4),
                p99: ms(8),
                max: ms(8),
            }),
            overhead_missing: 0,
            gateway_time: Duration::from_micros(40),
            gateway_calls: 10,
            unattributed_calls: 0,
            pg_commits: Some(35),
            idle_commits_per_sec: Some(10.0),
            redis_calls: Some(CommandCalls(BTreeMap::from([
                ("evalsha".to_owned(), 20),
                ("set".to_owned(), 10),
            ]))),
            redis_is_ours: true,
            rss: vec![("r0".to_owned(), Some(20.0)), ("r1".to_owned(), None)],
            ceiling: None,
            floor: None,
            expected_orders: 12,
            checked: Checked {
                database: Some((12, 12)),
                charged_intents: 12,
                most_charges: 1,
            },
            open_loop: None,
        }
    }

    #[test]
    fn the_table_has_every_figure() {
        let report = report();
        assert!(report.ok());
        let table = report.table();
        for expected in [
            "flow one_shot: 3 replica(s), 4 callers, 10 payments after 2 warm-up",
            "10 of 10 PAID in 0.50 s",
            "payments/s                       20.0",
            "p50 3.00 ms  p90 5.00 ms  p99 9.00 ms  max 9.00 ms",
            "p50 2.00 ms  p99 8.00 ms  (latency less the simulator's 0.04 ms per payment)",
            "gateway calls per payment        1.00",
            "PostgreSQL commits per payment   3.50 (35 commits in the flow's database by \
             pg_stat_database.xact_commit; 3.00 without the idle replicas' own 10/s)",
            "Redis commands per payment       3.00 (30 calls by INFO commandstats: evalsha 20, set 10)",
            "r0 20.0 MB, r1 unreadable",
            "database: 12 orders, 12 PAID; ledger: 12 of 12 orders charged, at most 1 time(s) each",
        ] {
            assert!(
                table.contains(expected),
                "{expected:?} missing from:\n{table}"
            );
        }
        assert!(!table.contains("MISMATCH"));
    }

    #[test]
    fn the_one_client_floor_is_printed_with_the_ceiling() {
        let measured = |concurrency, payments_per_sec, latency_ms_avg| Ceiling {
            flow: Flow::OneShot,
            concurrency,
            payments_per_sec,
            transactions: 900,
            failed: 0,
            latency_ms_avg,
            run_id: 1,
            script: String::new(),
        };
        let mut report = report();
        report.ceiling = Some(Ok(measured(4, 1000.0, 4.0)));
        report.floor = Some(Ok(measured(1, 400.0, 2.5)));
        let table = report.table();
        assert!(
            table.contains(
                "PostgreSQL alone, 1 client       2.50 ms per payment's SQL (pgbench, 900 \
                 payments, 3 commits each): the floor under the open-loop overhead"
            ),
            "{table}"
        );
        report.floor = Some(Err("pgbench failed".to_owned()));
        assert!(
            report
                .table()
                .contains("PostgreSQL alone, 1 client       not measured: pgbench failed")
        );
    }

    #[test]
    fn the_open_loop_phase_has_its_rows_and_shares_the_commit_count() {
        let ms = Duration::from_millis;
        let mut report = report();
        report.open_loop = Some(OpenLoop {
            rate: 10.0,
            asked: 10,
            paid: 10,
            failures: vec![],
            elapsed: ms(1000),
            latency: Some(Percentiles {
                n: 10,
                p50: ms(4),
                p90: ms(6),
                p99: ms(7),
                max: ms(7),
            }),
            overhead: Some(Percentiles {
                n: 10,
                p50: ms(1),
                p90: ms(2),
                p99: ms(3),
                max: ms(3),
            }),
            overhead_missing: 0,
        });
        report.expected_orders = 22;
        report.checked.database = Some((22, 22));
        report.checked.charged_intents = 22;
        assert!(report.ok());
        let table = report.table();
        for expected in [
            "open loop                        10 of 10 PAID at 10.0/s scheduled (10.0/s reached)",
            "p50 4.00 ms  p90 6.00 ms  p99 7.00 ms  max 7.00 ms  (from each scheduled start)",
            "open-loop overhead               p50 1.00 ms  p99 3.00 ms",
            // 35 commits over 20 payments in 1.5 s, 15 of them the idle replicas'.
            "1.75 (35 commits in the flow's database by pg_stat_database.xact_commit over both \
             phases' 20 payments; 1.00 without the idle replicas' own 10/s)",
        ] {
            assert!(
                table.contains(expected),
                "{expected:?} missing from:\n{table}"
            );
        }
        let mut short = report.clone();
        if let Some(open) = short.open_loop.as_mut() {
            open.paid = 9;
            open.failures = vec!["o-r-3: ended FAILED".to_owned()];
        }
        assert!(!short.ok());
    }

    #[test]
    fn a_double_charge_or_a_missing_order_is_not_ok() {
        let mut twice = report();
        twice.checked.most_charges = 2;
        assert!(!twice.ok());
        assert!(twice.table().contains("MISMATCH"));
        let mut short = report();
        short.checked.database = Some((12, 11));
        assert!(!short.ok());
        let mut failed = report();
        failed.paid = 9;
        failed.failures = vec!["o-3: ended PENDING".to_owned()];
        assert!(!failed.ok());
        assert!(
            failed
                .table()
                .contains("1 failed (first: o-3: ended PENDING)")
        );
    }
}
