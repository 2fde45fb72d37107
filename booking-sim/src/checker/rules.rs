//! The rows: pure functions of the database snapshot and the ledger (no I/O, unit-tested here).
//!
//! Words used below. An order's **ledger intents** are the simulator's intents whose
//! `metadata[order_id]` names it (the coordinator always sets it); its **ledger charges** are the
//! sum of their `times_charged`. An order's **recorded charges** are the `gateway_payment_id`s of
//! its attempts whose outcome is `SUCCEEDED` or whose review resolution is `CHARGED`: what the
//! database says was taken. An **open review item** is an attempt `UNKNOWN` with no resolution,
//! or a refund `UNKNOWN` with no resolution (`docs/ARCHITECTURE.md`, "Manual review"). A **counted
//! refund** is a refund `SUCCEEDED`, or `UNKNOWN` resolved `REFUNDED`.
//!
//! Rows (in table order; "must be 0" rows are CONTRACT §1's invariants, the others context):
//!
//! | row | value | must be 0 |
//! | --- | --- | --- |
//! | payments requested | what the driver says it asked for (else: orders in the database) | |
//! | orders in the database | every order row; detail: per state | |
//! | orders paid | orders `PAID` or `REFUNDED` | |
//! | charges in the ledger | sum of `times_charged` over intents with an order id | |
//! | gateway faults injected | what the simulator injected, per kind | |
//! | double charges | orders whose ledger charges exceed 1 (§1.1) | yes |
//! | charges the database does not know | ledger charges of an order that is absent, or not `PAID`/`REFUNDED`/`MANUAL_REVIEW`, or on an intent that is not one of its recorded charges (§1.3); an order in `MANUAL_REVIEW` with a charge is known to be unknown, counted under manual reviews | yes |
//! | paid in the database, not charged | `PAID`/`REFUNDED` orders none of whose recorded charges is an intent of that order charged in the ledger for the order's amount and currency (or with none recorded) | yes |
//! | orders stuck AWAITING_CONFIRMATION | orders in that state after the run settled | yes |
//! | attempts still IN_FLIGHT | attempts without an outcome | yes |
//! | refunds still IN_FLIGHT | refunds without an outcome | yes |
//! | manual reviews open | open review items; detail: how many were charged at the gateway, counts per short reason (the "manual review: …" history entry or the failure message, 60 characters), decisions already taken | |
//! | review items inconsistent | a `MANUAL_REVIEW` order without exactly one open attempt item, an open attempt item whose order is not `MANUAL_REVIEW`, an open refund item whose order is not `PAID` | yes |
//! | refunds in the database | counted refunds; detail: their amount, failed ones | |
//! | refunds in the ledger | the ledger's refunds of intents with an order id; detail: amount | |
//! | refunded amounts differing from the ledger | orders whose `refunded_minor` differs from the sum of `amount_refunded` over their ledger intents, except orders with an open refund item | yes |
//! | refunds in doubt | open refund items; detail: how many orders differ from the ledger, by how much | |
//! | refund records inconsistent | orders whose `refunded_minor` differs from their counted refunds' sum or from their `REFUNDED` events' sum, `REFUNDED` orders not refunded in full, `PAID` orders refunded in full, refunds on orders neither `PAID` nor `REFUNDED` | yes |
//! | events not stamped | events whose `global_sequence` is still NULL (the sequencer stamps every committed event; after the run settled none may wait) | yes |
//! | event-feed gaps or duplicates | positions missing from 1..max(`global_sequence`), plus events sharing a position (§1.6) | yes |
//! | per-order sequence gaps | orders whose events' sequences are not exactly 1..`last_sequence` (§1.6) | yes |
//! | states differing from the last event | orders whose state is not the state their latest event says (every state change emits its event in the same transaction) | yes |
//! | paid orders without a payment event | `PAID`/`REFUNDED` orders with neither `ATTEMPT_SUCCEEDED` nor a `MANUAL_REVIEW_RESOLVED` of an attempt into `PAID` | yes |
//!
//! Two more rows come from what a driver saw rather than from the tables, and only a driver that
//! kept that record adds them (the chaos run does; see [`super::callers`]):
//!
//! | row | value | must be 0 |
//! | --- | --- | --- |
//! | live feed: gaps, duplicates, out of order | a `WatchEvents` subscriber kept through the whole run (resuming after its last position whenever its stream broke): positions of 1..max(`global_sequence`) it never received, receptions of a position it already had, first receptions below a position received before, receptions no event holds | yes |
//! | told SUCCEEDED, not paid | orders some caller got an answer with an attempt `SUCCEEDED` for, that are not `PAID`/`REFUNDED` in the database | yes |
//!
//! Amounts summed across orders are minor units of whatever currencies the orders use: they are
//! compared with the ledger's sums, not read as money.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::snapshot::{OrderRow, Snapshot, sequences_dense};
use super::{MAX_VIOLATIONS, Report, Row};
use crate::psp::{Ledger, LedgerIntent};

/// The rows' names, for code that looks a row up (`Report::value(names::DOUBLE_CHARGES)`).
pub mod names {
    pub const REQUESTED: &str = "payments requested";
    pub const ORDERS: &str = "orders in the database";
    pub const PAID: &str = "orders paid";
    pub const CHARGES: &str = "charges in the ledger";
    pub const FAULTS: &str = "gateway faults injected";
    pub const DOUBLE_CHARGES: &str = "double charges";
    pub const LOST_OUTCOMES: &str = "charges the database does not know";
    pub const PAID_NOT_CHARGED: &str = "paid in the database, not charged";
    pub const STUCK_ORDERS: &str = "orders stuck AWAITING_CONFIRMATION";
    pub const ATTEMPTS_IN_FLIGHT: &str = "attempts still IN_FLIGHT";
    pub const REFUNDS_IN_FLIGHT: &str = "refunds still IN_FLIGHT";
    pub const MANUAL_REVIEWS: &str = "manual reviews open";
    pub const REVIEWS_INCONSISTENT: &str = "review items inconsistent";
    pub const DB_REFUNDS: &str = "refunds in the database";
    pub const LEDGER_REFUNDS: &str = "refunds in the ledger";
    pub const REFUND_MISMATCHES: &str = "refunded amounts differing from the ledger";
    pub const REFUNDS_IN_DOUBT: &str = "refunds in doubt";
    pub const REFUND_RECORDS: &str = "refund records inconsistent";
    pub const UNSTAMPED: &str = "events not stamped";
    pub const FEED_GAPS: &str = "event-feed gaps or duplicates";
    pub const SEQUENCE_GAPS: &str = "per-order sequence gaps";
    pub const STATE_NOT_LAST_EVENT: &str = "states differing from the last event";
    pub const PAID_WITHOUT_EVENT: &str = "paid orders without a payment event";
    /// Added by a driver with a live subscriber ([`crate::checker::LiveFeed`]).
    pub const LIVE_FEED: &str = "live feed: gaps, duplicates, out of order";
    /// Added by a driver that kept what its callers were told.
    pub const TOLD_PAID_NOT_PAID: &str = "told SUCCEEDED, not paid";
}

/// Violation lines one row may add (so that every failing row gets a say within the cap).
const PER_ROW: usize = 10;
/// How much of a review reason the table shows.
const REASON_CHARS: usize = 60;

const PAID: &str = "PAID";
const REFUNDED: &str = "REFUNDED";
const MANUAL_REVIEW: &str = "MANUAL_REVIEW";
const AWAITING: &str = "AWAITING_CONFIRMATION";

fn is_paid(state: &str) -> bool {
    state == PAID || state == REFUNDED
}

/// The table being built.
#[derive(Default)]
struct Builder {
    rows: Vec<Row>,
    violations: Vec<String>,
    /// Violations found but not listed.
    unlisted: usize,
}

impl Builder {
    fn info(&mut self, name: &'static str, value: u64, detail: String) {
        self.rows.push(Row {
            name,
            value,
            must_be_zero: false,
            detail,
        });
    }

    /// A must-be-zero row: its value is the number of `offenders`, each one violation line.
    fn invariant(&mut self, name: &'static str, offenders: Vec<String>, detail: String) {
        self.invariant_valued(name, offenders.len() as u64, offenders, detail);
    }

    fn invariant_valued(
        &mut self,
        name: &'static str,
        value: u64,
        offenders: Vec<String>,
        detail: String,
    ) {
        let total = offenders.len();
        let room = MAX_VIOLATIONS.saturating_sub(self.violations.len());
        let listed = total.min(PER_ROW).min(room);
        self.violations.extend(
            offenders
                .into_iter()
                .take(listed)
                .map(|o| format!("{name}: {o}")),
        );
        self.unlisted += total - listed;
        self.rows.push(Row {
            name,
            value,
            must_be_zero: true,
            detail,
        });
    }

    fn finish(mut self) -> Report {
        if self.unlisted > 0 {
            self.violations
                .push(format!("… and {} more not listed", self.unlisted));
        }
        Report {
            rows: self.rows,
            violations: self.violations,
        }
    }
}

/// Indexes over both sides.
struct Context<'a> {
    s: &'a Snapshot,
    orders: BTreeMap<&'a str, &'a OrderRow>,
    /// Recorded charges per order (`None`: a succeeded attempt without an intent id).
    recorded: HashMap<&'a str, Vec<Option<&'a str>>>,
    /// Ledger intents per order id (`metadata[order_id]`).
    ledger_orders: BTreeMap<&'a str, Vec<&'a LedgerIntent>>,
    ledger_ids: HashMap<&'a str, &'a LedgerIntent>,
    /// Orders with an open refund review item.
    refunds_in_doubt: HashSet<&'a str>,
}

fn order_of(intent: &LedgerIntent) -> Option<&str> {
    intent.metadata.get("order_id").map(String::as_str)
}

impl<'a> Context<'a> {
    fn new(s: &'a Snapshot, ledger: &'a Ledger) -> Self {
        let orders = s.orders.iter().map(|o| (o.order_id.as_str(), o)).collect();
        let mut recorded: HashMap<&str, Vec<Option<&str>>> = HashMap::new();
        for a in &s.attempts {
            if a.outcome == "SUCCEEDED" || a.resolution.as_deref() == Some("CHARGED") {
                recorded
                    .entry(a.order_id.as_str())
                    .or_default()
                    .push(a.gateway_payment_id.as_deref());
            }
        }
        let mut ledger_orders: BTreeMap<&str, Vec<&LedgerIntent>> = BTreeMap::new();
        for intent in &ledger.intents {
            if let Some(order) = order_of(intent) {
                ledger_orders.entry(order).or_default().push(intent);
            }
        }
        let ledger_ids = ledger.intents.iter().map(|i| (i.id.as_str(), i)).collect();
        let refunds_in_doubt = s
            .refunds
            .iter()
            .filter(|r| r.outcome == "UNKNOWN" && r.resolution.is_none())
            .map(|r| r.order_id.as_str())
            .collect();
        Self {
            s,
            orders,
            recorded,
            ledger_orders,
            ledger_ids,
            refunds_in_doubt,
        }
    }

    fn state(&self, order: &str) -> Option<&'a str> {
        self.orders.get(order).map(|o| o.state.as_str())
    }

    fn ledger_charges(&self, order: &str) -> u64 {
        self.ledger_orders.get(order).map_or(0, |intents| {
            intents.iter().map(|i| u64::from(i.times_charged)).sum()
        })
    }

    fn ledger_refunded(&self, order: &str) -> i128 {
        self.ledger_orders.get(order).map_or(0, |intents| {
            intents.iter().map(|i| i128::from(i.amount_refunded)).sum()
        })
    }

    fn recorded_ids(&self, order: &str) -> Vec<&'a str> {
        self.recorded
            .get(order)
            .map(|ids| ids.iter().flatten().copied().collect())
            .unwrap_or_default()
    }
}

/// Judges the snapshot against the ledger.
pub(super) fn evaluate(s: &Snapshot, ledger: &Ledger, requested: Option<u64>) -> Report {
    let cx = Context::new(s, ledger);
    let mut b = Builder::default();
    counts(&cx, ledger, requested, &mut b);
    charges(&cx, &mut b);
    stuck(&cx, &mut b);
    reviews(&cx, &mut b);
    refunds(&cx, ledger, &mut b);
    events(&cx, &mut b);
    b.finish()
}

fn counts(cx: &Context, ledger: &Ledger, requested: Option<u64>, b: &mut Builder) {
    let s = cx.s;
    let orders = s.orders.len() as u64;
    let attempts = s.attempts.len();
    match requested {
        Some(n) => b.info(
            names::REQUESTED,
            n,
            format!("as the driver asked; {attempts} attempts in the database"),
        ),
        None => b.info(
            names::REQUESTED,
            orders,
            format!("not given: the orders in the database; {attempts} attempts"),
        ),
    }
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for o in &s.orders {
        *by_state.entry(o.state.as_str()).or_default() += 1;
    }
    let per_state = by_state
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    b.info(names::ORDERS, orders, per_state);
    let paid = by_state.get(PAID).copied().unwrap_or(0);
    let refunded = by_state.get(REFUNDED).copied().unwrap_or(0);
    b.info(
        names::PAID,
        paid + refunded,
        format!("PAID {paid}, REFUNDED {refunded}"),
    );

    let mut charges = 0u64;
    let mut intents = 0u64;
    let mut declines = 0u64;
    let mut stray = 0u64;
    for intent in &ledger.intents {
        if order_of(intent).is_some() {
            intents += 1;
            charges += u64::from(intent.times_charged);
            declines += u64::from(intent.declines);
        } else {
            stray += u64::from(intent.times_charged);
        }
    }
    let mut detail = format!(
        "{intents} intents of {} orders, {declines} declines",
        cx.ledger_orders.len()
    );
    if stray > 0 {
        detail.push_str(&format!(
            "; {stray} charges on intents without metadata[order_id] not counted"
        ));
    }
    b.info(names::CHARGES, charges, detail);
    let faults: u64 = ledger.faults_injected.values().sum();
    let detail = ledger
        .faults_injected
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    b.info(names::FAULTS, faults, detail);
}

fn intent_summary(intent: &LedgerIntent) -> String {
    format!(
        "{} ×{} ({}, {} {})",
        intent.id,
        intent.times_charged,
        intent.status.as_str(),
        intent.amount,
        intent.currency
    )
}

fn charges(cx: &Context, b: &mut Builder) {
    // Double charges.
    let mut doubles = Vec::new();
    let mut extra = 0;
    for (order, intents) in &cx.ledger_orders {
        let total = cx.ledger_charges(order);
        if total > 1 {
            extra += total - 1;
            let charged = intents
                .iter()
                .filter(|i| i.times_charged > 0)
                .map(|i| intent_summary(i))
                .collect::<Vec<_>>()
                .join(", ");
            doubles.push(format!("order {order} charged {total} times: {charged}"));
        }
    }
    b.invariant(
        names::DOUBLE_CHARGES,
        doubles,
        format!("{extra} extra charges (beyond one per order)"),
    );

    // Charges the database does not know.
    let mut lost = Vec::new();
    let mut lost_charges = 0u64;
    let mut in_review = 0u64;
    for (order, intents) in &cx.ledger_orders {
        for intent in intents.iter().filter(|i| i.times_charged > 0) {
            let why = match cx.state(order) {
                None => Some("an order the database does not have".to_owned()),
                Some(MANUAL_REVIEW) => {
                    in_review += u64::from(intent.times_charged);
                    None
                }
                Some(state) if is_paid(state) => {
                    let recorded = cx.recorded_ids(order);
                    (!recorded.contains(&intent.id.as_str())).then(|| {
                        format!(
                            "order {order} ({state}), whose recorded charge is {}",
                            if recorded.is_empty() {
                                "none".to_owned()
                            } else {
                                recorded.join(", ")
                            }
                        )
                    })
                }
                Some(state) => Some(format!("order {order}, which is {state}")),
            };
            if let Some(why) = why {
                lost_charges += u64::from(intent.times_charged);
                lost.push(format!("{} charged for {why}", intent_summary(intent)));
            }
        }
    }
    b.invariant_valued(
        names::LOST_OUTCOMES,
        lost_charges,
        lost,
        format!("not counted: {in_review} charges of orders in MANUAL_REVIEW (manual reviews)"),
    );

    // Paid in the database, not charged.
    let mut unpaid = Vec::new();
    for o in cx.s.orders.iter().filter(|o| is_paid(&o.state)) {
        let recorded = cx.recorded_ids(&o.order_id);
        let this_order = |i: &LedgerIntent| order_of(i) == Some(o.order_id.as_str());
        let right_amount = |i: &LedgerIntent| {
            i128::from(i.amount) == i128::from(o.amount_minor)
                && i.currency.eq_ignore_ascii_case(&o.currency)
        };
        let charged = |id: &str| {
            cx.ledger_ids
                .get(id)
                .is_some_and(|i| i.times_charged > 0 && this_order(i) && right_amount(i))
        };
        if recorded.iter().any(|id| charged(id)) {
            continue;
        }
        let why = match recorded.first() {
            None => "no recorded charge".to_owned(),
            Some(id) => match cx.ledger_ids.get(id) {
                None => format!("its recorded charge {id} is not in the ledger"),
                Some(i) if !this_order(i) => format!(
                    "its recorded charge {id} is an intent of order {}",
                    order_of(i).unwrap_or("(none)")
                ),
                Some(i) if i.times_charged == 0 => {
                    format!(
                        "its recorded charge {} was never charged",
                        intent_summary(i)
                    )
                }
                Some(i) => format!(
                    "its recorded charge {} is not of the order's {} {}",
                    intent_summary(i),
                    o.amount_minor,
                    o.currency
                ),
            },
        };
        unpaid.push(format!("order {} is {}: {why}", o.order_id, o.state));
    }
    b.invariant(
        names::PAID_NOT_CHARGED,
        unpaid,
        "PAID/REFUNDED orders without a charge of their amount in the ledger".to_owned(),
    );
}

fn stuck(cx: &Context, b: &mut Builder) {
    let s = cx.s;
    let orders = s
        .orders
        .iter()
        .filter(|o| o.state == AWAITING)
        .map(|o| format!("order {}", o.order_id))
        .collect();
    b.invariant(
        names::STUCK_ORDERS,
        orders,
        "locked orders after the run settled".to_owned(),
    );
    let attempts = s
        .attempts
        .iter()
        .filter(|a| a.outcome == "IN_FLIGHT")
        .map(|a| {
            format!(
                "attempt {}#{} ({})",
                a.order_id,
                a.number,
                a.in_flight_note.as_deref().unwrap_or("")
            )
        })
        .collect();
    b.invariant(
        names::ATTEMPTS_IN_FLIGHT,
        attempts,
        "attempts without an outcome".to_owned(),
    );
    let refunds = s
        .refunds
        .iter()
        .filter(|r| r.outcome == "IN_FLIGHT")
        .map(|r| format!("refund {}#{} of {}", r.order_id, r.number, r.amount_minor))
        .collect();
    b.invariant(
        names::REFUNDS_IN_FLIGHT,
        refunds,
        "refunds without an outcome".to_owned(),
    );
}

/// At most `REASON_CHARS` characters of `text` on one line.
fn short(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= REASON_CHARS {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(REASON_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn reviews(cx: &Context, b: &mut Builder) {
    let s = cx.s;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut payments = 0u64;
    let mut charged = 0u64;
    let mut open_per_order: HashMap<&str, u64> = HashMap::new();
    let mut inconsistent = Vec::new();
    let (mut resolved_charged, mut resolved_not_charged) = (0u64, 0u64);
    for a in &s.attempts {
        match a.resolution.as_deref() {
            Some("CHARGED") => resolved_charged += 1,
            Some(_) => resolved_not_charged += 1,
            None => {}
        }
        if a.outcome != "UNKNOWN" || a.resolution.is_some() {
            continue;
        }
        payments += 1;
        if cx.ledger_charges(&a.order_id) > 0 {
            charged += 1;
        }
        *open_per_order.entry(a.order_id.as_str()).or_default() += 1;
        let reason = a
            .review_history
            .iter()
            .rev()
            .find_map(|m| m.strip_prefix("manual review: "))
            .or(a.failure_message.as_deref())
            .unwrap_or("(no reason recorded)");
        *reasons.entry(short(reason)).or_default() += 1;
        match cx.state(&a.order_id) {
            Some(MANUAL_REVIEW) => {}
            state => inconsistent.push(format!(
                "attempt {}#{} is an open item but the order is {}",
                a.order_id,
                a.number,
                state.unwrap_or("missing")
            )),
        }
    }
    let mut refunds = 0u64;
    let (mut resolved_refunded, mut resolved_not_refunded) = (0u64, 0u64);
    for r in &s.refunds {
        match r.resolution.as_deref() {
            Some("REFUNDED") => resolved_refunded += 1,
            Some(_) => resolved_not_refunded += 1,
            None => {}
        }
        if r.outcome != "UNKNOWN" || r.resolution.is_some() {
            continue;
        }
        refunds += 1;
        let reason = r
            .failure_message
            .as_deref()
            .unwrap_or("(no reason recorded)");
        *reasons
            .entry(short(&format!("refund: {reason}")))
            .or_default() += 1;
        match cx.state(&r.order_id) {
            Some(PAID) => {}
            state => inconsistent.push(format!(
                "refund {}#{} is an open item but the order is {}",
                r.order_id,
                r.number,
                state.unwrap_or("missing")
            )),
        }
    }
    for o in s.orders.iter().filter(|o| o.state == MANUAL_REVIEW) {
        let open = open_per_order
            .get(o.order_id.as_str())
            .copied()
            .unwrap_or(0);
        if open != 1 {
            inconsistent.push(format!(
                "order {} is MANUAL_REVIEW with {open} open attempt items",
                o.order_id
            ));
        }
    }

    let mut by_count: Vec<(&String, &u64)> = reasons.iter().collect();
    by_count.sort_by(|x, y| y.1.cmp(x.1).then_with(|| x.0.cmp(y.0)));
    let mut detail =
        format!("payments {payments} ({charged} charged at the gateway), refunds {refunds}");
    if !by_count.is_empty() {
        let why = by_count
            .iter()
            .map(|(reason, n)| format!("{n}× {reason}"))
            .collect::<Vec<_>>()
            .join("; ");
        detail.push_str(&format!(": {why}"));
    }
    if resolved_charged + resolved_not_charged + resolved_refunded + resolved_not_refunded > 0 {
        detail.push_str(&format!(
            " (resolved already: {resolved_charged} charged, {resolved_not_charged} not charged, \
             {resolved_refunded} refunded, {resolved_not_refunded} not refunded)"
        ));
    }
    b.info(names::MANUAL_REVIEWS, payments + refunds, detail);
    b.invariant(
        names::REVIEWS_INCONSISTENT,
        inconsistent,
        "every MANUAL_REVIEW order has one open item, and every open item its order's state"
            .to_owned(),
    );
}

fn refunds(cx: &Context, ledger: &Ledger, b: &mut Builder) {
    let s = cx.s;
    // The database's refunds.
    let mut counted: HashMap<&str, i128> = HashMap::new();
    let (mut n, mut amount, mut failed) = (0u64, 0i128, 0u64);
    for r in &s.refunds {
        if r.outcome == "SUCCEEDED" || r.resolution.as_deref() == Some("REFUNDED") {
            n += 1;
            amount += i128::from(r.amount_minor);
            *counted.entry(r.order_id.as_str()).or_default() += i128::from(r.amount_minor);
        } else if r.outcome == "FAILED" {
            failed += 1;
        }
    }
    b.info(
        names::DB_REFUNDS,
        n,
        format!("{amount} refunded (minor units); {failed} failed at the gateway"),
    );
    let (mut ledger_n, mut ledger_amount) = (0u64, 0i128);
    for intent in ledger.intents.iter().filter(|i| order_of(i).is_some()) {
        ledger_n += intent.refunds.len() as u64;
        ledger_amount += i128::from(intent.amount_refunded);
    }
    b.info(
        names::LEDGER_REFUNDS,
        ledger_n,
        format!("{ledger_amount} refunded (minor units)"),
    );

    // Per order, the database against the ledger.
    let order_ids: BTreeSet<&str> = cx
        .orders
        .keys()
        .copied()
        .chain(cx.ledger_orders.keys().copied())
        .collect();
    let mut mismatches = Vec::new();
    let (mut doubt_orders, mut doubt_amount) = (0u64, 0i128);
    for order in order_ids {
        let db = cx
            .orders
            .get(order)
            .map_or(0, |o| i128::from(o.refunded_minor));
        let at_gateway = cx.ledger_refunded(order);
        if db == at_gateway {
            continue;
        }
        if cx.refunds_in_doubt.contains(order) {
            doubt_orders += 1;
            doubt_amount += (at_gateway - db).abs();
        } else {
            mismatches.push(format!(
                "order {order}: {db} refunded in the database, {at_gateway} in the ledger"
            ));
        }
    }
    b.invariant(
        names::REFUND_MISMATCHES,
        mismatches,
        format!(
            "per order, refunded_minor against the ledger (totals: database {n} refunds / \
             {amount}, ledger {ledger_n} / {ledger_amount})"
        ),
    );
    let doubt = cx.refunds_in_doubt.len() as u64;
    b.info(
        names::REFUNDS_IN_DOUBT,
        doubt,
        format!(
            "{doubt_orders} of these orders differ from the ledger (by {doubt_amount}): \
             a reviewer decides"
        ),
    );

    // The database against itself.
    let mut records = Vec::new();
    for o in &s.orders {
        let refunded = i128::from(o.refunded_minor);
        let mut issues = Vec::new();
        let rows = counted.get(o.order_id.as_str()).copied().unwrap_or(0);
        if rows != refunded {
            issues.push(format!("its counted refunds sum to {rows}"));
        }
        let by_events =
            cx.s.events
                .get(&o.order_id)
                .map_or(0, |e| i128::from(e.refunded_by_events));
        if by_events != refunded {
            issues.push(format!("its REFUNDED events sum to {by_events}"));
        }
        let full = refunded >= i128::from(o.amount_minor);
        match o.state.as_str() {
            REFUNDED if !full => issues.push(format!("REFUNDED but {} was paid", o.amount_minor)),
            PAID if full => issues.push("PAID but refunded in full".to_owned()),
            PAID | REFUNDED => {}
            state if refunded > 0 => issues.push(format!("refunds on an order {state}")),
            _ => {}
        }
        if !issues.is_empty() {
            records.push(format!(
                "order {} ({}, refunded_minor {refunded}): {}",
                o.order_id,
                o.state,
                issues.join(", ")
            ));
        }
    }
    b.invariant(
        names::REFUND_RECORDS,
        records,
        "refunded_minor = counted refunds = REFUNDED events; REFUNDED iff refunded in full"
            .to_owned(),
    );
}

/// `1-3, 5, 7-9`.
fn ranges(sequences: &[i64]) -> String {
    let mut parts = Vec::new();
    let mut iter = sequences.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(", ")
}

fn events(cx: &Context, b: &mut Builder) {
    let s = cx.s;
    let feed = &s.feed;
    let unstamped = u64::try_from(feed.events - feed.stamped).unwrap_or(0);
    let lines: Vec<String> = feed
        .unstamped
        .iter()
        .map(|e| format!("event {e}"))
        .collect();
    b.invariant_valued(
        names::UNSTAMPED,
        unstamped,
        lines,
        format!("{} events in all", feed.events),
    );

    let missing = u64::try_from(feed.max_position - feed.distinct_positions).unwrap_or(0);
    let duplicated = u64::try_from(feed.stamped - feed.distinct_positions).unwrap_or(0);
    let mut lines: Vec<String> = feed
        .gaps
        .iter()
        .map(|(from, to)| {
            if from == to {
                format!("position {from} missing")
            } else {
                format!("positions {from}-{to} missing")
            }
        })
        .collect();
    lines.extend(
        feed.duplicates
            .iter()
            .map(|(position, n)| format!("position {position} held by {n} events")),
    );
    b.invariant_valued(
        names::FEED_GAPS,
        missing + duplicated,
        lines,
        format!(
            "{} stamped events at positions 1..{}: {missing} missing, {duplicated} duplicated",
            feed.stamped, feed.max_position
        ),
    );

    let mut gaps = Vec::new();
    let mut states = Vec::new();
    let mut unannounced = Vec::new();
    for o in &s.orders {
        let events = s.events.get(&o.order_id);
        if !sequences_dense(o, events) {
            let present = s
                .gapped_sequences
                .get(&o.order_id)
                .map_or_else(|| "(not read)".to_owned(), |seq| ranges(seq));
            let present = if events.is_none() {
                "none".to_owned()
            } else {
                present
            };
            gaps.push(format!(
                "order {}: last_sequence {}, events {present}",
                o.order_id, o.last_sequence
            ));
        }
        if let Some(e) = events
            && e.last_state != o.state
        {
            states.push(format!(
                "order {} is {} but its last event (#{}) says {}",
                o.order_id, o.state, e.max_sequence, e.last_state
            ));
        }
        if is_paid(&o.state) && !events.is_some_and(|e| e.payment_event) {
            unannounced.push(format!(
                "order {} is {} without ATTEMPT_SUCCEEDED or a resolution into PAID",
                o.order_id, o.state
            ));
        }
    }
    b.invariant(
        names::SEQUENCE_GAPS,
        gaps,
        "each order's events are exactly 1..last_sequence".to_owned(),
    );
    b.invariant(
        names::STATE_NOT_LAST_EVENT,
        states,
        "each order's state is what its latest event says".to_owned(),
    );
    b.invariant(
        names::PAID_WITHOUT_EVENT,
        unannounced,
        "each paid order's payment was announced on the feed".to_owned(),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::snapshot::{AttemptRow, Feed, OrderEvents, RefundRow};
    use super::*;
    use crate::psp::{Calls, IntentStatus, KeyStats, LedgerRefund, Totals};

    fn intent(id: &str, order: &str, charged: u32, refunded: &[u64]) -> LedgerIntent {
        LedgerIntent {
            id: id.to_owned(),
            status: if charged > 0 {
                IntentStatus::Succeeded
            } else {
                IntentStatus::RequiresPaymentMethod
            },
            amount: 1000,
            currency: "eur".to_owned(),
            payment_method: None,
            metadata: BTreeMap::from([("order_id".to_owned(), order.to_owned())]),
            description: None,
            times_charged: charged,
            declines: u32::from(charged == 0),
            latest_charge: None,
            amount_refunded: refunded.iter().sum(),
            refunds: refunded
                .iter()
                .enumerate()
                .map(|(n, amount)| LedgerRefund {
                    id: format!("re_{id}_{n}"),
                    amount: *amount,
                })
                .collect(),
            created: 0,
            canceled_at: None,
            idempotency_keys: Vec::new(),
        }
    }

    fn ledger(intents: Vec<LedgerIntent>) -> Ledger {
        Ledger {
            intents,
            totals: Totals::default(),
            calls: Calls::default(),
            idempotency: KeyStats::default(),
            faults_injected: BTreeMap::new(),
        }
    }

    fn order(id: &str, state: &str, refunded: i64, last: i64) -> OrderRow {
        OrderRow {
            order_id: id.to_owned(),
            state: state.to_owned(),
            amount_minor: 1000,
            currency: "EUR".to_owned(),
            refunded_minor: refunded,
            last_sequence: last,
        }
    }

    fn attempt(order: &str, outcome: &str, pi: Option<&str>) -> AttemptRow {
        AttemptRow {
            order_id: order.to_owned(),
            number: 1,
            outcome: outcome.to_owned(),
            gateway_payment_id: pi.map(str::to_owned),
            ..AttemptRow::default()
        }
    }

    fn events(last_state: &str, count: i64, payment: bool, refunded: i64) -> OrderEvents {
        OrderEvents {
            count,
            min_sequence: 1,
            max_sequence: count,
            last_state: last_state.to_owned(),
            payment_event: payment,
            refunded_by_events: refunded,
        }
    }

    /// paid (refunded 300), declined, refunded in full, in review with a charge.
    fn clean() -> (Snapshot, Ledger) {
        let snapshot = Snapshot {
            orders: vec![
                order("o-paid", PAID, 300, 4),
                order("o-declined", "PENDING", 0, 3),
                order("o-refunded", REFUNDED, 1000, 4),
                order("o-review", MANUAL_REVIEW, 0, 3),
            ],
            attempts: vec![
                attempt("o-paid", "SUCCEEDED", Some("pi_paid")),
                attempt("o-declined", "DECLINED", Some("pi_declined")),
                attempt("o-refunded", "SUCCEEDED", Some("pi_refunded")),
                AttemptRow {
                    failure_message: Some("gateway timed out".to_owned()),
                    review_history: vec![
                        "create: timeout".to_owned(),
                        "manual review: no lookup, no replay".to_owned(),
                    ],
                    ..attempt("o-review", "UNKNOWN", None)
                },
            ],
            refunds: vec![
                RefundRow {
                    order_id: "o-paid".to_owned(),
                    number: 1,
                    amount_minor: 300,
                    outcome: "SUCCEEDED".to_owned(),
                    ..RefundRow::default()
                },
                RefundRow {
                    order_id: "o-refunded".to_owned(),
                    number: 1,
                    amount_minor: 1000,
                    outcome: "SUCCEEDED".to_owned(),
                    ..RefundRow::default()
                },
            ],
            events: HashMap::from([
                ("o-paid".to_owned(), events(PAID, 4, true, 300)),
                ("o-declined".to_owned(), events("PENDING", 3, false, 0)),
                ("o-refunded".to_owned(), events(REFUNDED, 4, true, 1000)),
                ("o-review".to_owned(), events(MANUAL_REVIEW, 3, false, 0)),
            ]),
            gapped_sequences: HashMap::new(),
            feed: Feed {
                events: 14,
                stamped: 14,
                distinct_positions: 14,
                max_position: 14,
                ..Feed::default()
            },
        };
        let ledger = ledger(vec![
            intent("pi_paid", "o-paid", 1, &[300]),
            intent("pi_declined", "o-declined", 0, &[]),
            intent("pi_refunded", "o-refunded", 1, &[1000]),
            intent("pi_review", "o-review", 1, &[]),
        ]);
        (snapshot, ledger)
    }

    fn failing(report: &Report) -> Vec<(&'static str, u64)> {
        report
            .rows
            .iter()
            .filter(|r| r.must_be_zero && r.value != 0)
            .map(|r| (r.name, r.value))
            .collect()
    }

    #[test]
    fn a_clean_run_passes_with_its_counts() {
        let (s, l) = clean();
        let report = evaluate(&s, &l, Some(5));
        assert!(report.ok(), "{}", report.table());
        assert!(report.violations.is_empty());
        assert_eq!(report.value(names::REQUESTED), 5);
        assert_eq!(report.value(names::ORDERS), 4);
        assert_eq!(report.value(names::PAID), 2);
        assert_eq!(report.value(names::CHARGES), 3);
        assert_eq!(report.value(names::MANUAL_REVIEWS), 1);
        assert_eq!(report.value(names::DB_REFUNDS), 2);
        assert_eq!(report.value(names::LEDGER_REFUNDS), 2);
        let reviews = report.row(names::MANUAL_REVIEWS).map(|r| r.detail.clone());
        assert!(
            reviews
                .is_some_and(|d| d.contains("1 charged at the gateway")
                    && d.contains("1× no lookup, no replay")),
            "{}",
            report.table()
        );
        let table = report.table();
        assert!(table.contains("result: OK"), "{table}");
    }

    #[test]
    fn a_second_charge_is_a_double_charge_and_a_lost_outcome() {
        let (s, mut l) = clean();
        l.intents.push(intent("pi_again", "o-paid", 1, &[]));
        let report = evaluate(&s, &l, None);
        assert_eq!(
            failing(&report),
            vec![(names::DOUBLE_CHARGES, 1), (names::LOST_OUTCOMES, 1)]
        );
        assert!(report.violations.iter().any(|v| v.contains("pi_again")));
        assert!(report.table().contains("FAIL"));
    }

    #[test]
    fn a_charge_of_an_unpaid_or_unknown_order_is_lost() {
        let (mut s, mut l) = clean();
        s.orders[0].state = "PENDING".to_owned();
        s.orders[0].refunded_minor = 0;
        s.refunds.remove(0);
        s.events
            .insert("o-paid".to_owned(), events("PENDING", 4, true, 0));
        l.intents[0].amount_refunded = 0;
        l.intents[0].refunds.clear();
        l.intents.push(intent("pi_ghost", "o-ghost", 1, &[]));
        let report = evaluate(&s, &l, None);
        assert_eq!(failing(&report), vec![(names::LOST_OUTCOMES, 2)]);
    }

    #[test]
    fn paid_without_a_charge_and_without_its_event() {
        let (mut s, l) = clean();
        s.orders[1].state = PAID.to_owned();
        s.events
            .insert("o-declined".to_owned(), events(PAID, 3, false, 0));
        let report = evaluate(&s, &l, None);
        assert_eq!(
            failing(&report),
            vec![(names::PAID_NOT_CHARGED, 1), (names::PAID_WITHOUT_EVENT, 1)]
        );
    }

    #[test]
    fn stuck_work_and_inconsistent_reviews_are_reported() {
        let (mut s, l) = clean();
        s.orders[1].state = AWAITING.to_owned();
        s.attempts[1].outcome = "IN_FLIGHT".to_owned();
        s.refunds[0].outcome = "IN_FLIGHT".to_owned();
        s.orders[3].state = "PENDING".to_owned();
        let report = evaluate(&s, &l, None);
        let failed = failing(&report);
        for name in [
            names::STUCK_ORDERS,
            names::ATTEMPTS_IN_FLIGHT,
            names::REFUNDS_IN_FLIGHT,
            names::REVIEWS_INCONSISTENT,
            names::STATE_NOT_LAST_EVENT,
            names::REFUND_RECORDS,
            // o-review is PENDING now, with its charge.
            names::LOST_OUTCOMES,
        ] {
            assert!(failed.iter().any(|(n, _)| *n == name), "{name}: {failed:?}");
        }
    }

    #[test]
    fn refunds_against_the_ledger_and_in_doubt() {
        let (mut s, mut l) = clean();
        // A refund the database does not know.
        l.intents[0].amount_refunded += 100;
        let report = evaluate(&s, &l, None);
        assert_eq!(failing(&report), vec![(names::REFUND_MISMATCHES, 1)]);
        // The same difference while a refund of the order is in doubt: not a violation.
        s.refunds.push(RefundRow {
            order_id: "o-paid".to_owned(),
            number: 2,
            amount_minor: 100,
            outcome: "UNKNOWN".to_owned(),
            failure_message: Some("no idempotency".to_owned()),
            ..RefundRow::default()
        });
        let report = evaluate(&s, &l, None);
        assert!(report.ok(), "{}", report.table());
        assert_eq!(report.value(names::REFUNDS_IN_DOUBT), 1);
        assert_eq!(report.value(names::MANUAL_REVIEWS), 2);
    }

    #[test]
    fn feed_and_sequence_gaps() {
        let (mut s, l) = clean();
        s.feed = Feed {
            events: 14,
            stamped: 13,
            distinct_positions: 13,
            max_position: 14,
            gaps: vec![(3, 3)],
            duplicates: vec![],
            unstamped: vec!["o-paid #4 REFUNDED".to_owned()],
        };
        s.events.insert(
            "o-declined".to_owned(),
            OrderEvents {
                count: 2,
                ..events("PENDING", 3, false, 0)
            },
        );
        s.gapped_sequences
            .insert("o-declined".to_owned(), vec![1, 3]);
        let report = evaluate(&s, &l, None);
        assert_eq!(
            failing(&report),
            vec![
                (names::UNSTAMPED, 1),
                (names::FEED_GAPS, 1),
                (names::SEQUENCE_GAPS, 1)
            ]
        );
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.contains("o-declined") && v.contains("events 1, 3")),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn violations_are_capped() {
        let (mut s, l) = clean();
        for n in 0..200 {
            s.orders
                .push(order(&format!("o-stuck-{n}"), AWAITING, 0, 0));
        }
        let report = evaluate(&s, &l, None);
        assert_eq!(report.value(names::STUCK_ORDERS), 200);
        assert!(report.violations.len() <= MAX_VIOLATIONS + 1);
        assert!(
            report
                .violations
                .last()
                .is_some_and(|v| v.contains("more not listed"))
        );
    }

    #[test]
    fn ranges_compress() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn reasons_are_short() {
        let long = "x".repeat(100);
        assert_eq!(short(&long).chars().count(), REASON_CHARS);
        assert_eq!(short("a\n  b"), "a b");
    }
}
