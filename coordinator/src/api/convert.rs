//! Stored records → API messages.

use std::time::SystemTime;

use payments_proto::v1 as pb;

use crate::store::{AttemptRecord, ErrorEntry, LineItemRecord, OrderRecord, RefundRecord};

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

pub fn money(amount_minor: i64, currency: &str) -> pb::Money {
    pb::Money {
        amount_minor,
        currency: currency.to_owned(),
    }
}

fn line_item(item: &LineItemRecord) -> pb::LineItem {
    pb::LineItem {
        product_id: item.product_id.clone(),
        quantity: item.quantity,
        unit_amount_minor: item.unit_amount_minor,
    }
}

pub fn attempt(a: &AttemptRecord) -> pb::Attempt {
    pb::Attempt {
        number: a.number,
        operator_id: a.operator_id.clone(),
        outcome: pb::AttemptOutcome::from(a.outcome).into(),
        gateway_idempotency_key: a.gateway_create_key.clone(),
        gateway_payment_id: a.gateway_payment_id.clone().unwrap_or_default(),
        decline_code: a.decline_code.clone().unwrap_or_default(),
        failure_message: a.failure_message.clone().unwrap_or_default(),
        started_at: Some(timestamp(a.started_at)),
        finished_at: a.finished_at.map(timestamp),
        errors: a.errors.iter().map(error).collect(),
        replica_id: a.replica_id.clone(),
        resolution: a
            .resolution
            .as_ref()
            .map_or(pb::Resolution::Unspecified, |d| d.resolution.into())
            .into(),
        resolved_by: a
            .resolution
            .as_ref()
            .map(|d| d.by.clone())
            .unwrap_or_default(),
        resolved_at: a.resolution.as_ref().map(|d| timestamp(d.at)),
        resolution_note: a
            .resolution
            .as_ref()
            .map(|d| d.note.clone())
            .unwrap_or_default(),
    }
}

pub fn error(e: &ErrorEntry) -> pb::AttemptError {
    pb::AttemptError {
        occurred_at: Some(timestamp(e.at)),
        step: e.step.clone(),
        message: e.message.clone(),
    }
}

pub fn refund(r: &RefundRecord) -> pb::Refund {
    pb::Refund {
        number: r.number,
        amount: Some(money(r.amount_minor, &r.currency)),
        reason: r.reason.clone(),
        outcome: pb::RefundOutcome::from(r.outcome).into(),
        requested_by: r.requested_by.clone(),
        gateway_refund_id: r.gateway_refund_id.clone().unwrap_or_default(),
        failure_message: r.failure_message.clone().unwrap_or_default(),
        requested_at: Some(timestamp(r.requested_at)),
        finished_at: r.finished_at.map(timestamp),
        gateway_idempotency_key: r.gateway_refund_key.clone(),
        errors: r.errors.iter().map(error).collect(),
        resolution: r
            .resolution
            .as_ref()
            .map_or(pb::Resolution::Unspecified, |d| d.resolution.into())
            .into(),
        resolved_by: r
            .resolution
            .as_ref()
            .map(|d| d.by.clone())
            .unwrap_or_default(),
        resolved_at: r.resolution.as_ref().map(|d| timestamp(d.at)),
        resolution_note: r
            .resolution
            .as_ref()
            .map(|d| d.note.clone())
            .unwrap_or_default(),
    }
}

pub fn order(o: &OrderRecord) -> pb::Order {
    pb::Order {
        order_id: o.order_id.clone(),
        amount: Some(money(o.amount_minor, &o.currency)),
        customer_id: o.customer_id.clone(),
        state: pb::OrderState::from(o.state).into(),
        attempts: o.attempts.iter().map(attempt).collect(),
        last_sequence: o.last_sequence,
        refunded: Some(money(o.refunded_minor, &o.currency)),
        items: o.items.iter().map(line_item).collect(),
        created_at: Some(timestamp(o.created_at)),
        updated_at: Some(timestamp(o.updated_at)),
        refunds: o.refunds.iter().map(refund).collect(),
    }
}

/// Who an API key identifies, as `GetCaller` answers it.
pub fn caller(c: &crate::auth::Caller) -> pb::Caller {
    use crate::auth::Role;
    let role = match c.role {
        Role::Operator => pb::CallerRole::Operator,
        Role::Reviewer => pb::CallerRole::Reviewer,
        Role::Service => pb::CallerRole::Service,
        Role::Admin => pb::CallerRole::Admin,
    };
    pb::Caller {
        id: c.id.clone(),
        role: role.into(),
    }
}
