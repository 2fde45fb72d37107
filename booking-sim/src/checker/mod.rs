//! The invariant checker (issue 7): after a run has settled (faults stopped, recovery given its
//! time), it compares what the gateway really did (the simulator's ledger, `GET /_sim/ledger`)
//! with what the coordinator recorded (its PostgreSQL tables and event feed) and says, row by row,
//! whether CONTRACT §1 held. The chaos driver, the tests and `booking-sim check` all use it.
//!
//! The database is read in ONE `REPEATABLE READ`, read-only transaction (one snapshot: every
//! figure of the database side is of the same instant), and the ledger AFTER it. That order
//! matters: the coordinator records a charge only after the gateway made it (CONTRACT §1.4), so
//! every charge the snapshot knows is already in a ledger read later, and "paid in the database
//! but not charged" cannot be a false alarm of the reading order. A charge made between the two
//! reads would show as a lost outcome, which is why the checker runs only once the run settled.
//!
//! This is the one place where `booking-sim` reads the coordinator's tables (read-only, never
//! through the `coordinator` crate): the invariants are about what was recorded, and the public
//! API shows only part of it (no in-flight refunds, no unstamped events).
//!
//! Every row and its definition: see [`rules`] (`docs/ARCHITECTURE.md`, "Invariant checker");
//! the rows about what callers saw (a live feed subscriber, answers saying "paid") are added by
//! the driver that kept that record ([`Report::add_live_feed`], [`Report::add_told_paid`]).

mod callers;
mod rules;
mod snapshot;

pub use callers::{LiveFeed, LiveVerdict, feed_max_position, judge_live, order_states};
pub use rules::names;

use std::{fmt::Write as _, time::Duration};

use anyhow::Context;

use crate::sim_control::SimControl;

/// How many offending orders/events [`Report::violations`] lists before it only counts them.
pub const MAX_VIOLATIONS: usize = 50;

/// What to compare.
pub struct CheckInput {
    /// The coordinator's PostgreSQL database (`postgres://…`).
    pub database_url: String,
    /// The gateway simulator whose ledger is the ground truth.
    pub sim: SimControl,
    /// How many payments the driver asked for, shown in the table (not checked).
    pub requested: Option<u64>,
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub name: &'static str,
    pub value: u64,
    /// An invariant: any value but 0 fails the check.
    pub must_be_zero: bool,
    pub detail: String,
}

/// The checker's verdict: the table's rows and, one line each, the offending orders and events
/// (at most [`MAX_VIOLATIONS`], then one line counting the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub rows: Vec<Row>,
    pub violations: Vec<String>,
}

/// Reads the database snapshot, then the ledger, and judges them (see the module's doc).
pub async fn check(input: &CheckInput) -> anyhow::Result<Report> {
    let snapshot = snapshot::read(&input.database_url)
        .await
        .context("reading the coordinator's database")?;
    let ledger = input.sim.ledger().await?;
    Ok(rules::evaluate(&snapshot, &ledger, input.requested))
}

/// [`check`] once every committed event has its feed position. Positions are given by the
/// sequencer's leader, which a killed or restarted replica may just have handed to another
/// (about a second): judge once no event is unstamped, or after `bound` judge anyway (an event
/// still unstamped then is a finding).
pub async fn check_once_stamped(input: &CheckInput, bound: Duration) -> anyhow::Result<Report> {
    let give_up = tokio::time::Instant::now() + bound;
    loop {
        let report = check(input).await?;
        if report.value(names::UNSTAMPED) == 0 || tokio::time::Instant::now() >= give_up {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Report {
    /// Every must-be-zero row is zero.
    pub fn ok(&self) -> bool {
        self.failed().next().is_none()
    }

    /// The row called `name`, if there is one.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// The value of the row called `name` (0 if there is none).
    pub fn value(&self, name: &str) -> u64 {
        self.row(name).map_or(0, |r| r.value)
    }

    fn failed(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.must_be_zero && r.value != 0)
    }

    /// An aligned text table (name, value, `ok`/`FAIL` for must-be-zero rows, detail), then the
    /// violations, then the verdict.
    pub fn table(&self) -> String {
        let name_width = self
            .rows
            .iter()
            .map(|r| r.name.chars().count())
            .chain(["check".len()])
            .max()
            .unwrap_or(0);
        let values: Vec<String> = self.rows.iter().map(|r| r.value.to_string()).collect();
        let value_width = values
            .iter()
            .map(String::len)
            .chain(["value".len()])
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<name_width$}  {:>value_width$}  {:<9}  detail",
            "check", "value", "must be 0"
        );
        let _ = writeln!(
            out,
            "{}  {}  {}  {}",
            "-".repeat(name_width),
            "-".repeat(value_width),
            "-".repeat(9),
            "-".repeat(6)
        );
        for (row, value) in self.rows.iter().zip(&values) {
            let verdict = match (row.must_be_zero, row.value) {
                (false, _) => "",
                (true, 0) => "ok",
                (true, _) => "FAIL",
            };
            let line = format!(
                "{:<name_width$}  {value:>value_width$}  {verdict:<9}  {}",
                row.name, row.detail
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        if !self.violations.is_empty() {
            let _ = writeln!(out, "\nviolations:");
            for violation in &self.violations {
                let _ = writeln!(out, "  - {violation}");
            }
        }
        let failed: Vec<&str> = self.failed().map(|r| r.name).collect();
        if failed.is_empty() {
            let _ = writeln!(out, "\nresult: OK, every invariant held");
        } else {
            let _ = writeln!(
                out,
                "\nresult: FAILED, {} must-be-zero row(s) not zero: {}",
                failed.len(),
                failed.join("; ")
            );
        }
        out
    }
}
