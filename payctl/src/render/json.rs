//! JSON documents for scripts: the proto's field names, enum values by their full proto names
//! (`ORDER_STATE_PAID`), times as RFC 3339 strings, money as `{amount_minor, currency}` plus a
//! formatted `display` string.

use payments_proto::v1 as pb;
use serde_json::{Value, json};

use super::{amount as display, review_amount, review_kind, time_rfc3339};

pub fn money(m: Option<&pb::Money>) -> Value {
    match m {
        Some(m) => json!({
            "amount_minor": m.amount_minor,
            "currency": m.currency,
            "display": display(Some(m)),
        }),
        None => Value::Null,
    }
}

pub fn item(i: &pb::LineItem) -> Value {
    json!({
        "product_id": i.product_id,
        "quantity": i.quantity,
        "unit_amount_minor": i.unit_amount_minor,
    })
}

pub fn error(e: &pb::AttemptError) -> Value {
    json!({
        "occurred_at": time_rfc3339(e.occurred_at.as_ref()),
        "step": e.step,
        "message": e.message,
    })
}

pub fn attempt(a: &pb::Attempt) -> Value {
    json!({
        "number": a.number,
        "operator_id": a.operator_id,
        "outcome": a.outcome().as_str_name(),
        "gateway_idempotency_key": a.gateway_idempotency_key,
        "gateway_payment_id": a.gateway_payment_id,
        "decline_code": a.decline_code,
        "failure_message": a.failure_message,
        "started_at": time_rfc3339(a.started_at.as_ref()),
        "finished_at": time_rfc3339(a.finished_at.as_ref()),
        "errors": a.errors.iter().map(error).collect::<Vec<_>>(),
        "replica_id": a.replica_id,
        "resolution": a.resolution().as_str_name(),
        "resolved_by": a.resolved_by,
        "resolved_at": time_rfc3339(a.resolved_at.as_ref()),
        "resolution_note": a.resolution_note,
    })
}

pub fn refund(r: &pb::Refund) -> Value {
    json!({
        "number": r.number,
        "amount": money(r.amount.as_ref()),
        "reason": r.reason,
        "outcome": r.outcome().as_str_name(),
        "requested_by": r.requested_by,
        "gateway_refund_id": r.gateway_refund_id,
        "failure_message": r.failure_message,
        "requested_at": time_rfc3339(r.requested_at.as_ref()),
        "finished_at": time_rfc3339(r.finished_at.as_ref()),
        "gateway_idempotency_key": r.gateway_idempotency_key,
        "errors": r.errors.iter().map(error).collect::<Vec<_>>(),
        "resolution": r.resolution().as_str_name(),
        "resolved_by": r.resolved_by,
        "resolved_at": time_rfc3339(r.resolved_at.as_ref()),
        "resolution_note": r.resolution_note,
    })
}

pub fn order(o: &pb::Order) -> Value {
    json!({
        "order_id": o.order_id,
        "amount": money(o.amount.as_ref()),
        "customer_id": o.customer_id,
        "state": o.state().as_str_name(),
        "attempts": o.attempts.iter().map(attempt).collect::<Vec<_>>(),
        "last_sequence": o.last_sequence,
        "refunded": money(o.refunded.as_ref()),
        "items": o.items.iter().map(item).collect::<Vec<_>>(),
        "created_at": time_rfc3339(o.created_at.as_ref()),
        "updated_at": time_rfc3339(o.updated_at.as_ref()),
        "refunds": o.refunds.iter().map(refund).collect::<Vec<_>>(),
    })
}

pub fn event(e: &pb::OrderEvent) -> Value {
    json!({
        "global_sequence": e.global_sequence,
        "order_id": e.order_id,
        "sequence": e.sequence,
        "kind": e.kind().as_str_name(),
        "state": e.state().as_str_name(),
        "attempt_number": e.attempt_number,
        "actor": e.actor,
        "occurred_at": time_rfc3339(e.occurred_at.as_ref()),
        "detail": e.detail,
        "amount": money(e.amount.as_ref()),
    })
}

pub fn payments_status(s: &pb::PaymentsStatus) -> Value {
    json!({
        "paused": s.paused,
        "reason": s.reason,
        "since": time_rfc3339(s.since.as_ref()),
        "by": s.by,
        "cause": s.cause().as_str_name(),
        "breaker": s.breaker().as_str_name(),
        "breaker_probe_at": time_rfc3339(s.breaker_probe_at.as_ref()),
        "admin_paused": s.admin_paused,
    })
}

/// A review item as the proto has it, plus `kind` (`payment` or `refund`) and, for a refund,
/// `amount_in_doubt` (the refund's amount; for a payment the order's).
pub fn review(r: &pb::ManualReviewItem) -> Value {
    json!({
        "kind": review_kind(r),
        "refund_number": r.refund_number,
        "amount_in_doubt": money(review_amount(r)),
        "order": r.order.as_ref().map(order),
        "attempt_number": r.attempt_number,
        "operator_id": r.operator_id,
        "opened_at": time_rfc3339(r.opened_at.as_ref()),
        "reason": r.reason,
        "gateway_idempotency_keys": r.gateway_idempotency_keys,
        "gateway_payment_ids": r.gateway_payment_ids,
        "error_history": r.error_history.iter().map(error).collect::<Vec<_>>(),
        "actions_tried": r.actions_tried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_keeps_the_proto_names() {
        let o = pb::Order {
            order_id: "o-1".into(),
            amount: Some(pb::Money {
                amount_minor: 1250,
                currency: "EUR".into(),
            }),
            state: pb::OrderState::Paid.into(),
            ..Default::default()
        };
        let v = order(&o);
        assert_eq!(v["state"], "ORDER_STATE_PAID");
        assert_eq!(v["amount"]["amount_minor"], 1250);
        assert_eq!(v["amount"]["display"], "12.50 EUR");
        assert_eq!(v["refunded"], Value::Null);
        assert_eq!(v["created_at"], Value::Null);
    }
}
