//! Stored records → API messages.

use std::time::SystemTime;

use payments_proto::v1 as pb;

use crate::store::{AttemptRecord, LineItemRecord, OrderRecord};

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn money(amount_minor: i64, currency: &str) -> pb::Money {
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
        errors: a
            .errors
            .iter()
            .map(|e| pb::AttemptError {
                occurred_at: Some(timestamp(e.at)),
                step: e.step.clone(),
                message: e.message.clone(),
            })
            .collect(),
        replica_id: a.replica_id.clone(),
        ..Default::default()
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
        ..Default::default()
    }
}
