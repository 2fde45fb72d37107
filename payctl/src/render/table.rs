//! Human-readable views: key/value blocks and tables (comfy-table).

use std::fmt::Write;

use comfy_table::{CellAlignment, Table, presets};
use payments_proto::v1 as pb;

use super::{amount, breaker, cause, kind, one_line, outcome, refund_outcome, resolution, state};
use super::{items as item_list, review_amount, time, truncate};
use crate::money;

/// Characters of a review's reason shown in the table (`--csv` has all of it).
const REASON_WIDTH: usize = 60;

/// Characters of an attempt's decline or failure shown in its table (all of it follows).
const FAILURE_WIDTH: usize = 48;

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    table.set_header(header.iter().copied());
    table
}

fn align_right(table: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(column) = table.column_mut(i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// A reviewer's note after a colon, on one line (nothing without a note).
fn note(text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", one_line(text))
    }
}

/// An attempt's decline code and failure message, on one line.
fn why(a: &pb::Attempt) -> String {
    let parts: Vec<&str> = [a.decline_code.as_str(), a.failure_message.as_str()]
        .into_iter()
        .filter(|x| !x.is_empty())
        .collect();
    one_line(&parts.join(": "))
}

/// An order: its state, money, customer, items, every attempt with its error history and
/// resolution, and every refund.
pub fn order(order: &pb::Order) -> String {
    let mut s = String::new();
    let currency = order.amount.as_ref().map_or("", |m| m.currency.as_str());
    let _ = writeln!(s, "order       {}", order.order_id);
    let _ = writeln!(s, "state       {}", state(order.state()));
    let _ = writeln!(s, "amount      {}", amount(order.amount.as_ref()));
    let _ = writeln!(s, "refunded    {}", amount(order.refunded.as_ref()));
    let _ = writeln!(s, "customer    {}", order.customer_id);
    let _ = writeln!(s, "created     {}", time(order.created_at.as_ref()));
    let _ = writeln!(s, "updated     {}", time(order.updated_at.as_ref()));
    let _ = writeln!(
        s,
        "last event  {} (follow with: payctl watch {} --after {})",
        order.last_sequence, order.order_id, order.last_sequence
    );

    if !order.items.is_empty() {
        let mut t = table(&["product", "qty", "unit", "total"]);
        for item in &order.items {
            let total = i64::from(item.quantity).saturating_mul(item.unit_amount_minor);
            t.add_row([
                item.product_id.clone(),
                item.quantity.to_string(),
                money::format(item.unit_amount_minor, currency),
                money::format(total, currency),
            ]);
        }
        align_right(&mut t, &[1, 2, 3]);
        let _ = write!(s, "\nitems\n{t}\n");
    }

    if !order.attempts.is_empty() {
        let mut t = table(&[
            "#",
            "operator",
            "outcome",
            "started",
            "finished",
            "replica",
            "gateway key",
            "payment id",
            "decline / failure",
        ]);
        for a in &order.attempts {
            let why = why(a);
            t.add_row([
                a.number.to_string(),
                a.operator_id.clone(),
                outcome(a.outcome()).to_owned(),
                time(a.started_at.as_ref()),
                time(a.finished_at.as_ref()),
                or_dash(&a.replica_id).to_owned(),
                or_dash(&a.gateway_idempotency_key).to_owned(),
                or_dash(&a.gateway_payment_id).to_owned(),
                or_dash(&truncate(&why, FAILURE_WIDTH)).to_owned(),
            ]);
        }
        align_right(&mut t, &[0]);
        let _ = write!(s, "\nattempts\n{t}\n");
        for a in &order.attempts {
            let why = why(a);
            if why.chars().count() > FAILURE_WIDTH {
                let _ = writeln!(s, "\nattempt {} decline / failure\n  {why}", a.number);
            }
            if !a.errors.is_empty() {
                let _ = writeln!(s, "\nattempt {} error history", a.number);
                for e in &a.errors {
                    let _ = writeln!(
                        s,
                        "  {}  {}: {}",
                        time(e.occurred_at.as_ref()),
                        e.step,
                        one_line(&e.message)
                    );
                }
            }
            if a.resolution() != pb::Resolution::Unspecified {
                let _ = writeln!(
                    s,
                    "\nattempt {} resolved {} by {} at {}{}",
                    a.number,
                    resolution(a.resolution()),
                    or_dash(&a.resolved_by),
                    time(a.resolved_at.as_ref()),
                    note(&a.resolution_note)
                );
            }
        }
    }

    if !order.refunds.is_empty() {
        let mut t = table(&[
            "#",
            "amount",
            "outcome",
            "reason",
            "requested by",
            "requested",
            "finished",
            "gateway refund id",
            "failure",
        ]);
        for r in &order.refunds {
            let ended = match r.resolution() {
                pb::Resolution::Unspecified => refund_outcome(r.outcome()).to_owned(),
                decided => format!(
                    "{} (resolved {})",
                    refund_outcome(r.outcome()),
                    resolution(decided)
                ),
            };
            t.add_row([
                r.number.to_string(),
                amount(r.amount.as_ref()),
                ended,
                one_line(&r.reason),
                r.requested_by.clone(),
                time(r.requested_at.as_ref()),
                time(r.finished_at.as_ref()),
                or_dash(&r.gateway_refund_id).to_owned(),
                or_dash(&one_line(&r.failure_message)).to_owned(),
            ]);
        }
        align_right(&mut t, &[0, 1]);
        let _ = write!(s, "\nrefunds\n{t}\n");
        for r in &order.refunds {
            if !r.errors.is_empty() {
                let _ = writeln!(s, "\nrefund {} error history", r.number);
                for e in &r.errors {
                    let _ = writeln!(
                        s,
                        "  {}  {}: {}",
                        time(e.occurred_at.as_ref()),
                        e.step,
                        one_line(&e.message)
                    );
                }
            }
            if r.resolution() != pb::Resolution::Unspecified {
                let _ = writeln!(
                    s,
                    "\nrefund {} resolved {} by {} at {}{}",
                    r.number,
                    resolution(r.resolution()),
                    or_dash(&r.resolved_by),
                    time(r.resolved_at.as_ref()),
                    note(&r.resolution_note)
                );
            } else if r.outcome() == pb::RefundOutcome::Unknown {
                let _ = writeln!(
                    s,
                    "\nrefund {n} outcome UNKNOWN: in manual review; once checked on the gateway:\n  \
                     payctl resolve {o} --refund {n} --refunded --refund-id re_… --note …\n  \
                     payctl resolve {o} --refund {n} --not-refunded --note …",
                    n = r.number,
                    o = order.order_id,
                );
            }
        }
    }
    s.trim_end().to_owned()
}

/// One event on one line; the cursor to resume from is its `#global` (with `--all`) or its
/// `/sequence` (one order).
pub fn event(e: &pb::OrderEvent) -> String {
    let mut line = format!(
        "{}  #{:<6} {}/{:<3} {:<22} {:<22} attempt {}",
        time(e.occurred_at.as_ref()),
        e.global_sequence,
        e.order_id,
        e.sequence,
        kind(e.kind()),
        state(e.state()),
        e.attempt_number,
    );
    if !e.actor.is_empty() {
        let _ = write!(line, "  by {}", e.actor);
    }
    if e.amount.is_some() {
        let _ = write!(line, "  {}", amount(e.amount.as_ref()));
    }
    if !e.detail.is_empty() {
        let _ = write!(line, "  {}", one_line(&e.detail));
    }
    line
}

/// Whether payments are accepted, and if not why.
pub fn payments_status(st: &pb::PaymentsStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "payments     {}",
        if st.paused { "PAUSED" } else { "ACCEPTED" }
    );
    if st.paused {
        let _ = writeln!(s, "cause        {}", cause(st.cause()));
        let _ = writeln!(s, "reason       {}", one_line(&st.reason));
        let _ = writeln!(s, "since        {}", time(st.since.as_ref()));
        let _ = writeln!(s, "by           {}", or_dash(&st.by));
    }
    let _ = writeln!(
        s,
        "admin pause  {}",
        if st.admin_paused { "yes" } else { "no" }
    );
    let _ = write!(s, "breaker      {}", breaker(st.breaker()));
    if st.breaker_probe_at.is_some() {
        let _ = write!(s, " (probes from {})", time(st.breaker_probe_at.as_ref()));
    }
    s
}

/// Open reviews, oldest first as the server lists them; the reason is cut (see `--csv`). The
/// kind says what is in doubt: the payment (its attempt) or refund N (its amount is shown).
pub fn reviews(items: &[pb::ManualReviewItem]) -> String {
    if items.is_empty() {
        return "no open manual reviews".to_owned();
    }
    let mut t = table(&[
        "opened", "order", "kind", "customer", "amount", "items", "attempt", "operator", "reason",
    ]);
    for item in items {
        let order = item.order.clone().unwrap_or_default();
        let (kind, attempt) = if item.refund_number > 0 {
            (format!("refund {}", item.refund_number), "-".to_owned())
        } else {
            ("payment".to_owned(), item.attempt_number.to_string())
        };
        t.add_row([
            time(item.opened_at.as_ref()),
            order.order_id.clone(),
            kind,
            order.customer_id.clone(),
            amount(review_amount(item)),
            truncate(&item_list(&order.items), 30),
            attempt,
            item.operator_id.clone(),
            truncate(&item.reason, REASON_WIDTH),
        ]);
    }
    align_right(&mut t, &[4, 6]);
    format!(
        "{t}\n{} open manual review{} (payctl reviews --csv for every detail)",
        items.len(),
        if items.len() == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    fn sample_order() -> pb::Order {
        pb::Order {
            order_id: "o-1".into(),
            amount: Some(pb::Money {
                amount_minor: 1250,
                currency: "EUR".into(),
            }),
            customer_id: "cust-7".into(),
            state: pb::OrderState::Paid.into(),
            attempts: vec![pb::Attempt {
                number: 1,
                operator_id: "op-alice".into(),
                outcome: pb::AttemptOutcome::Succeeded.into(),
                gateway_idempotency_key: "pay:o-1:1:create".into(),
                gateway_payment_id: "pi_123".into(),
                started_at: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                errors: vec![pb::AttemptError {
                    occurred_at: None,
                    step: "confirm".into(),
                    message: "timeout".into(),
                }],
                ..Default::default()
            }],
            last_sequence: 3,
            items: vec![pb::LineItem {
                product_id: "sku-9".into(),
                quantity: 2,
                unit_amount_minor: 625,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_order_shows_every_detail() {
        let text = order(&sample_order());
        for needle in [
            "o-1",
            "PAID",
            "12.50 EUR",
            "cust-7",
            "sku-9",
            "6.25 EUR",
            "op-alice",
            "SUCCEEDED",
            "pay:o-1:1:create",
            "pi_123",
            "2023-11-14T22:13:20.000Z",
            "confirm: timeout",
            "--after 3",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }

    #[test]
    fn an_event_is_one_line() {
        let e = pb::OrderEvent {
            global_sequence: 42,
            order_id: "o-1".into(),
            sequence: 3,
            kind: pb::EventKind::AttemptSucceeded.into(),
            state: pb::OrderState::Paid.into(),
            attempt_number: 1,
            actor: "op-alice".into(),
            detail: "line one\nline two".into(),
            ..Default::default()
        };
        let line = event(&e);
        assert!(!line.contains('\n'));
        for needle in [
            "#42",
            "o-1/3",
            "ATTEMPT_SUCCEEDED",
            "PAID",
            "by op-alice",
            "line one | line two",
        ] {
            assert!(line.contains(needle), "{needle} missing in {line}");
        }
    }

    #[test]
    fn a_review_reason_is_cut_in_the_table() {
        let item = pb::ManualReviewItem {
            order: Some(sample_order()),
            attempt_number: 1,
            operator_id: "op-alice".into(),
            reason: "x".repeat(200),
            ..Default::default()
        };
        let text = reviews(&[item]);
        assert!(text.contains('…'));
        assert!(!text.contains(&"x".repeat(REASON_WIDTH)));
        assert!(text.contains("1 open manual review "));
    }

    fn sample_refund(number: i32, outcome: pb::RefundOutcome) -> pb::Refund {
        pb::Refund {
            number,
            amount: Some(pb::Money {
                amount_minor: 250,
                currency: "EUR".into(),
            }),
            reason: "one item returned".into(),
            outcome: outcome.into(),
            requested_by: "rev-carol".into(),
            gateway_idempotency_key: format!("refund:o-1:{number}"),
            ..Default::default()
        }
    }

    #[test]
    fn a_refund_review_shows_its_kind_and_the_refund_amount() {
        let mut order = sample_order();
        order.refunds = vec![sample_refund(1, pb::RefundOutcome::Unknown)];
        let refund = pb::ManualReviewItem {
            order: Some(order),
            attempt_number: 1,
            operator_id: "rev-carol".into(),
            reason: "refund answer lost".into(),
            refund_number: 1,
            ..Default::default()
        };
        let payment = pb::ManualReviewItem {
            order: Some(sample_order()),
            attempt_number: 1,
            operator_id: "op-alice".into(),
            reason: "create answer lost".into(),
            ..Default::default()
        };
        let text = reviews(&[payment, refund]);
        let lines: Vec<&str> = text.lines().collect();
        let refund_line = lines.iter().find(|l| l.contains("refund 1")).expect(&text);
        assert!(refund_line.contains("2.50 EUR"), "{text}");
        assert!(!refund_line.contains("12.50 EUR"), "{text}");
        let payment_line = lines.iter().find(|l| l.contains("payment")).expect(&text);
        assert!(payment_line.contains("12.50 EUR"), "{text}");
        assert!(text.contains("2 open manual reviews"), "{text}");
    }

    #[test]
    fn refunds_in_doubt_and_their_resolutions_are_shown() {
        let mut order = sample_order();
        let mut resolved = sample_refund(1, pb::RefundOutcome::Succeeded);
        resolved.resolution = pb::Resolution::Refunded.into();
        resolved.resolved_by = "rev-carol".into();
        resolved.resolution_note = "re_1 on the dashboard".into();
        resolved.gateway_refund_id = "re_1".into();
        order.refunds = vec![resolved, sample_refund(2, pb::RefundOutcome::Unknown)];
        let text = super::order(&order);
        for needle in [
            "SUCCEEDED (resolved REFUNDED)",
            "refund 1 resolved REFUNDED by rev-carol at -: re_1 on the dashboard",
            "refund 2 outcome UNKNOWN: in manual review",
            "payctl resolve o-1 --refund 2 --refunded --refund-id re_…",
            "payctl resolve o-1 --refund 2 --not-refunded",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
