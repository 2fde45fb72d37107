//! Rows about what the callers saw, added by a driver that kept a record of it (the chaos run):
//! the positions a live `WatchEvents` subscriber received, and the orders callers were told were
//! paid. The database rows ([`super::rules`]) say the feed is dense in the table; these say a
//! consumer streaming it through replica kills and store restarts got it whole, once each, in
//! order, and that no caller was told "paid" about an order the books do not show paid.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::Context;
use tokio_postgres::NoTls;

use super::{Report, Row, names};

/// Violation lines one of these rows may add.
const PER_ROW: usize = 10;

/// What a live `WatchEvents` subscriber received, in arrival order, across all its streams.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveFeed {
    /// Every `global_sequence` received, duplicates and all, as they arrived.
    pub positions: Vec<i64>,
    /// Streams opened (the first included).
    pub streams: u64,
    /// Times a stream broke or could not be opened, so that the subscriber resumed.
    pub resumes: u64,
}

/// The received positions judged against `1..=max` stamped positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveVerdict {
    /// Positions of `1..=max` never received, as inclusive ranges.
    pub missing: Vec<(i64, i64)>,
    pub missing_count: u64,
    /// Receptions of a position already received.
    pub duplicates: Vec<i64>,
    /// First receptions of a position below one received before it.
    pub out_of_order: Vec<(i64, i64)>,
    /// Receptions outside `1..=max` (no event holds such a position).
    pub unknown: Vec<i64>,
}

impl LiveVerdict {
    /// The row's value: every kind of offence counted once per position or reception.
    pub fn total(&self) -> u64 {
        self.missing_count
            + self.duplicates.len() as u64
            + self.out_of_order.len() as u64
            + self.unknown.len() as u64
    }
}

/// Judges `positions` (in arrival order) against the feed's `1..=max_position`.
pub fn judge_live(positions: &[i64], max_position: i64) -> LiveVerdict {
    let mut verdict = LiveVerdict::default();
    let mut seen: HashSet<i64> = HashSet::with_capacity(positions.len());
    let mut highest = 0i64;
    for &position in positions {
        if !(1..=max_position).contains(&position) {
            verdict.unknown.push(position);
            continue;
        }
        if !seen.insert(position) {
            verdict.duplicates.push(position);
            continue;
        }
        if position < highest {
            verdict.out_of_order.push((highest, position));
        }
        highest = highest.max(position);
    }
    let mut run: Option<(i64, i64)> = None;
    for position in 1..=max_position.max(0) {
        if seen.contains(&position) {
            if let Some(range) = run.take() {
                verdict.missing.push(range);
            }
            continue;
        }
        verdict.missing_count += 1;
        run = Some(run.map_or((position, position), |(from, _)| (from, position)));
    }
    verdict.missing.extend(run);
    verdict
}

impl Report {
    /// Adds a must-be-zero row (value `value`, one violation line per offender, at most
    /// [`PER_ROW`] listed) before the verdict is read.
    pub fn add_invariant(
        &mut self,
        name: &'static str,
        value: u64,
        offenders: Vec<String>,
        detail: String,
    ) {
        let total = offenders.len();
        // The "… and N more" line stays last.
        let more = self
            .violations
            .last()
            .filter(|l| l.starts_with("… and "))
            .cloned();
        if more.is_some() {
            self.violations.pop();
        }
        let listed = total.min(PER_ROW);
        self.violations.extend(
            offenders
                .into_iter()
                .take(listed)
                .map(|o| format!("{name}: {o}")),
        );
        let unlisted = more
            .as_deref()
            .and_then(|l| l.trim_start_matches("… and ").split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
            + (total - listed);
        if unlisted > 0 {
            self.violations
                .push(format!("… and {unlisted} more not listed"));
        }
        self.rows.push(Row {
            name,
            value,
            must_be_zero: true,
            detail,
        });
    }

    /// The live subscriber's row ([`names::LIVE_FEED`]).
    pub fn add_live_feed(&mut self, feed: &LiveFeed, max_position: i64) {
        let v = judge_live(&feed.positions, max_position);
        let mut lines: Vec<String> = v
            .missing
            .iter()
            .map(|(from, to)| {
                if from == to {
                    format!("position {from} never received")
                } else {
                    format!("positions {from}-{to} never received")
                }
            })
            .collect();
        lines.extend(
            v.duplicates
                .iter()
                .map(|p| format!("position {p} received again")),
        );
        lines.extend(
            v.out_of_order
                .iter()
                .map(|(after, p)| format!("position {p} received after {after}")),
        );
        lines.extend(
            v.unknown
                .iter()
                .map(|p| format!("position {p} received, no event holds it")),
        );
        let detail = format!(
            "{} received over {} stream(s), {} resume(s), against 1..{max_position}: \
             {} missing, {} duplicated, {} out of order, {} unknown",
            feed.positions.len(),
            feed.streams,
            feed.resumes,
            v.missing_count,
            v.duplicates.len(),
            v.out_of_order.len(),
            v.unknown.len()
        );
        self.add_invariant(names::LIVE_FEED, v.total(), lines, detail);
    }

    /// The row of orders callers were told were paid ([`names::TOLD_PAID_NOT_PAID`]):
    /// `states` are the orders' states in the database (absent: no such order).
    pub fn add_told_paid(&mut self, told: &BTreeSet<String>, states: &BTreeMap<String, String>) {
        let offenders: Vec<String> = told
            .iter()
            .filter_map(|order| match states.get(order).map(String::as_str) {
                Some("PAID" | "REFUNDED") => None,
                Some(state) => Some(format!("order {order} is {state}")),
                None => Some(format!("order {order} is not in the database")),
            })
            .collect();
        let detail = format!(
            "of {} orders some caller was told SUCCEEDED, not PAID/REFUNDED in the database",
            told.len()
        );
        self.add_invariant(
            names::TOLD_PAID_NOT_PAID,
            offenders.len() as u64,
            offenders,
            detail,
        );
    }
}

/// The highest stamped feed position (0: none).
pub async fn feed_max_position(database_url: &str) -> anyhow::Result<i64> {
    let client = connect(database_url).await?;
    let row = client
        .query_one(
            "SELECT coalesce(max(global_sequence), 0)::bigint FROM events",
            &[],
        )
        .await
        .context("reading the feed's highest position")?;
    Ok(row.try_get(0)?)
}

/// The states of `orders` (absent ones left out).
pub async fn order_states(
    database_url: &str,
    orders: &BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let client = connect(database_url).await?;
    let ids: Vec<&str> = orders.iter().map(String::as_str).collect();
    let rows = client
        .query(
            "SELECT order_id, state FROM orders WHERE order_id = ANY($1)",
            &[&ids],
        )
        .await
        .context("reading the orders' states")?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

async fn connect(database_url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    // The connection ends when the client is dropped.
    tokio::spawn(connection);
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_feed_in_order_is_clean() {
        let v = judge_live(&[1, 2, 3, 4, 5], 5);
        assert_eq!(v, LiveVerdict::default());
        assert_eq!(v.total(), 0);
        assert_eq!(judge_live(&[], 0).total(), 0);
    }

    #[test]
    fn gaps_duplicates_out_of_order_and_unknown_are_counted() {
        // 3 arrives late, 2 twice, 6-7 and 9 never, 11 and 0 are no event's.
        let v = judge_live(&[1, 2, 4, 3, 2, 5, 8, 11, 0, 10], 10);
        assert_eq!(v.missing, vec![(6, 7), (9, 9)]);
        assert_eq!(v.missing_count, 3);
        assert_eq!(v.duplicates, vec![2]);
        assert_eq!(v.out_of_order, vec![(4, 3)]);
        assert_eq!(v.unknown, vec![11, 0]);
        assert_eq!(v.total(), 7);
    }

    #[test]
    fn a_stalled_subscriber_misses_the_tail() {
        let v = judge_live(&[1, 2, 3], 6);
        assert_eq!(v.missing, vec![(4, 6)]);
        assert_eq!(v.total(), 3);
    }

    #[test]
    fn the_rows_fail_the_report_and_say_why() {
        let mut report = Report {
            rows: Vec::new(),
            violations: Vec::new(),
        };
        let feed = LiveFeed {
            positions: vec![1, 2, 3],
            streams: 2,
            resumes: 1,
        };
        report.add_live_feed(&feed, 3);
        assert!(report.ok(), "{}", report.table());
        let told: BTreeSet<String> = ["o-1", "o-2", "o-3"].map(str::to_owned).into();
        let states = BTreeMap::from([
            ("o-1".to_owned(), "PAID".to_owned()),
            ("o-2".to_owned(), "PENDING".to_owned()),
        ]);
        report.add_told_paid(&told, &states);
        report.add_live_feed(
            &LiveFeed {
                positions: vec![1, 1],
                ..feed
            },
            3,
        );
        assert_eq!(report.value(names::TOLD_PAID_NOT_PAID), 2);
        let table = report.table();
        assert!(!report.ok(), "{table}");
        assert!(table.contains("order o-2 is PENDING"), "{table}");
        assert!(
            table.contains("order o-3 is not in the database"),
            "{table}"
        );
        assert!(table.contains("positions 2-3 never received"), "{table}");
        assert!(table.contains("position 1 received again"), "{table}");
    }

    #[test]
    fn the_more_line_stays_last_and_adds_up() {
        let mut report = Report {
            rows: Vec::new(),
            violations: vec!["x: a".to_owned(), "… and 5 more not listed".to_owned()],
        };
        let offenders = (0..12).map(|n| format!("o-{n}")).collect();
        report.add_invariant(names::TOLD_PAID_NOT_PAID, 12, offenders, String::new());
        assert_eq!(report.violations.len(), 1 + PER_ROW + 1);
        assert_eq!(
            report.violations.last().map(String::as_str),
            Some("… and 7 more not listed")
        );
    }
}
