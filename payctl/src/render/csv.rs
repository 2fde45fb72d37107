//! `payctl reviews --csv`: every detail of every open review, one row per item, for offline
//! handling. The `csv` crate does the quoting (commas, quotes, newlines inside a field). Lists
//! inside a cell: identifiers joined with `;`, free text (errors, actions) with ` | `.
//!
//! The columns of an earlier version keep their places; later ones are appended: `kind`
//! (`payment`: the attempt `attempt_number` is in doubt; `refund`: refund `refund_number` of
//! the order is, for `refund_amount_minor`, its keys, payment ids, errors and actions in the
//! item's columns), so a script reading columns by position keeps working.
//!
//! Free-text cells are opened in spreadsheets, so one that starts like a formula (`=`, `+`,
//! `-`, `@`, tab, carriage return) is prefixed with `'` (OWASP "CSV injection"): error messages
//! come from the gateway and reasons from the coordinator, and must never run as formulas.

use std::io::Write;

use payments_proto::v1 as pb;

use super::{items, review_kind, review_refund, time_rfc3339};

pub const HEADER: [&str; 18] = [
    "order_id",
    "customer_id",
    "amount_minor",
    "currency",
    "state",
    "items",
    "attempt_number",
    "operator_id",
    "opened_at",
    "reason",
    "gateway_idempotency_keys",
    "gateway_payment_ids",
    "error_history",
    "actions_tried",
    "last_sequence",
    "kind",
    "refund_number",
    "refund_amount_minor",
];

/// A free-text cell that cannot be taken for a spreadsheet formula.
fn text(cell: &str) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell.to_owned(),
    }
}

fn row(item: &pb::ManualReviewItem) -> [String; 18] {
    let order = item.order.clone().unwrap_or_default();
    let (amount_minor, currency) = order
        .amount
        .as_ref()
        .map_or((String::new(), String::new()), |m| {
            (m.amount_minor.to_string(), m.currency.clone())
        });
    let errors = item
        .error_history
        .iter()
        .map(|e| match time_rfc3339(e.occurred_at.as_ref()) {
            Some(at) => format!("{at} {}: {}", e.step, e.message),
            None => format!("{}: {}", e.step, e.message),
        })
        .collect::<Vec<_>>()
        .join(" | ");
    [
        order.order_id.clone(),
        order.customer_id.clone(),
        amount_minor,
        currency,
        order.state().as_str_name().to_owned(),
        text(&items(&order.items)),
        item.attempt_number.to_string(),
        item.operator_id.clone(),
        time_rfc3339(item.opened_at.as_ref()).unwrap_or_default(),
        text(&item.reason),
        item.gateway_idempotency_keys.join(";"),
        item.gateway_payment_ids.join(";"),
        text(&errors),
        text(&item.actions_tried.join(" | ")),
        order.last_sequence.to_string(),
        review_kind(item).to_owned(),
        item.refund_number.to_string(),
        review_refund(item)
            .and_then(|r| r.amount.as_ref())
            .map(|m| m.amount_minor.to_string())
            .unwrap_or_default(),
    ]
}

/// The header, then one row per item.
pub fn reviews(out: impl Write, items: &[pb::ManualReviewItem]) -> Result<(), csv::Error> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(HEADER)?;
    for item in items {
        writer.write_record(row(item))?;
    }
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_and_formulas_defused() {
        let item = pb::ManualReviewItem {
            order: Some(pb::Order {
                order_id: "o-1".into(),
                customer_id: "cust-7".into(),
                amount: Some(pb::Money {
                    amount_minor: 1250,
                    currency: "EUR".into(),
                }),
                items: vec![pb::LineItem {
                    product_id: "sku,9".into(),
                    quantity: 2,
                    unit_amount_minor: 625,
                }],
                ..Default::default()
            }),
            attempt_number: 1,
            operator_id: "op-alice".into(),
            reason: "=HYPERLINK(\"x\")".into(),
            gateway_idempotency_keys: vec!["pay:o-1:1:create".into(), "pay:o-1:1:confirm".into()],
            error_history: vec![pb::AttemptError {
                occurred_at: None,
                step: "create".into(),
                message: "timeout,\nno answer".into(),
            }],
            actions_tried: vec!["lookup".into(), "cancel".into()],
            ..Default::default()
        };
        let mut buffer = Vec::new();
        reviews(&mut buffer, &[item]).unwrap();
        let text = String::from_utf8(buffer).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers().unwrap().clone();
        assert_eq!(headers.iter().collect::<Vec<_>>(), HEADER.to_vec());
        let records: Vec<_> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(&r[0], "o-1");
        assert_eq!(&r[2], "1250");
        assert_eq!(&r[5], "sku,9:2:625");
        assert_eq!(&r[9], "'=HYPERLINK(\"x\")");
        assert_eq!(&r[10], "pay:o-1:1:create;pay:o-1:1:confirm");
        assert_eq!(&r[12], "create: timeout,\nno answer");
        assert_eq!(&r[13], "lookup | cancel");
    }

    #[test]
    fn a_refund_item_says_which_refund_and_how_much() {
        let order = pb::Order {
            order_id: "o-1".into(),
            amount: Some(pb::Money {
                amount_minor: 1250,
                currency: "EUR".into(),
            }),
            refunds: vec![pb::Refund {
                number: 2,
                amount: Some(pb::Money {
                    amount_minor: 300,
                    currency: "EUR".into(),
                }),
                outcome: pb::RefundOutcome::Unknown.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let refund = pb::ManualReviewItem {
            order: Some(order.clone()),
            refund_number: 2,
            gateway_idempotency_keys: vec!["refund:o-1:2".into()],
            ..Default::default()
        };
        let payment = pb::ManualReviewItem {
            order: Some(order),
            attempt_number: 1,
            ..Default::default()
        };
        let mut buffer = Vec::new();
        reviews(&mut buffer, &[payment, refund]).unwrap();
        let mut reader = csv::Reader::from_reader(buffer.as_slice());
        let headers = reader.headers().unwrap().clone();
        let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let records: Vec<_> = reader.records().map(Result::unwrap).collect();
        let (kind, number, amount) = (
            column("kind"),
            column("refund_number"),
            column("refund_amount_minor"),
        );
        assert_eq!(
            (&records[0][kind], &records[0][number], &records[0][amount]),
            ("payment", "0", "")
        );
        assert_eq!(
            (&records[1][kind], &records[1][number], &records[1][amount]),
            ("refund", "2", "300")
        );
        assert_eq!(&records[1][column("amount_minor")], "1250");
        assert_eq!(
            &records[1][column("gateway_idempotency_keys")],
            "refund:o-1:2"
        );
    }
}
