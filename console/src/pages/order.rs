//! `GET /orders/{order_id}`: the order's state, amounts, every attempt and every event, then
//! live: the page names its stream (`/orders/{id}/live?after={last_sequence}`) and
//! `/assets/console.js` appends what arrives. The events shown are read with `WatchOrder` up to
//! the `last_sequence` `GetOrder` gave, so the page and its stream join without a gap or overlap.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use payments_client::WatchClient;
use payments_proto::v1 as pb;
use serde::Deserialize;

use crate::{
    app::AppState,
    errors, money,
    pages::{chrome, error_page, http_status, pay::path_segment},
    session::Session,
    views,
};

#[derive(Deserialize)]
pub struct OrderQuery {
    #[serde(default)]
    busy: Option<String>,
}

/// The attempt in flight, if the order is locked by one.
pub fn in_flight(order: &pb::Order) -> Option<&pb::Attempt> {
    if order.state() != pb::OrderState::AwaitingConfirmation {
        return None;
    }
    order
        .attempts
        .iter()
        .rev()
        .find(|a| a.outcome() == pb::AttemptOutcome::InFlight)
}

/// Why the last attempt of a payable order failed, if it was declined.
fn declined(order: &pb::Order) -> Option<String> {
    if order.state() != pb::OrderState::Pending {
        return None;
    }
    let last = order.attempts.last()?;
    (last.outcome() == pb::AttemptOutcome::Declined).then(|| {
        match (last.decline_code.as_str(), last.failure_message.as_str()) {
            ("", message) => message.to_owned(),
            (code, "") => code.to_owned(),
            (code, message) => format!("{message} ({code})"),
        }
    })
}

/// Who holds the order, in words; "You" when it is the signed-in key (`me`).
pub fn holder_text(me: Option<&str>, operator: &str, since: &str) -> String {
    if me == Some(operator) {
        format!("You are paying this order since {since} (as {operator})")
    } else {
        format!("{operator} is paying this order since {since}")
    }
}

/// Every event of the order up to `last_sequence` (the stream stays open past it: stop there).
async fn events(
    client: &WatchClient,
    order_id: &str,
    last_sequence: i64,
) -> Result<Vec<pb::OrderEvent>, tonic::Status> {
    let mut events = Vec::new();
    if last_sequence <= 0 {
        return Ok(events);
    }
    let mut stream = client.watch_order(order_id, 0, false).await?;
    while let Some(event) = stream.message().await? {
        let sequence = event.sequence;
        events.push(event);
        if sequence >= last_sequence {
            break;
        }
    }
    Ok(events)
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(order_id): Path<String>,
    Query(query): Query<OrderQuery>,
) -> Response {
    let path = format!("/orders/{}", path_segment(&order_id));
    let chrome = chrome(&state, &session, path.clone()).await;
    let title = format!("Order {order_id}");
    let read = async {
        let client = state.client(&session)?;
        let order = client
            .client()
            .get_order(pb::GetOrderRequest {
                order_id: order_id.clone(),
            })
            .await?
            .into_inner();
        let events = events(&client, &order_id, order.last_sequence).await?;
        Ok::<_, tonic::Status>((order, events))
    };
    let (order, events) = match read.await {
        Ok(read) => read,
        Err(status) => {
            return error_page(
                http_status(&status),
                &title,
                &chrome,
                &errors::describe(&status),
                html! { p { a href="/pay" { "Pay an order" } } },
            );
        }
    };
    let busy = query.busy.is_some().then(|| {
        let attempt = in_flight(&order).or(order.attempts.last());
        let (operator, since) = attempt
            .map_or(("another operator".to_owned(), String::new()), |a| {
                (a.operator_id.clone(), views::time(a.started_at.as_ref()))
            });
        errors::payment_in_progress(&operator, &since)
    });
    let live_url = format!("{path}/live?after={}", order.last_sequence);
    let body = views::page(
        &title,
        Some(&chrome),
        busy.as_deref(),
        Some(&live_url),
        content(
            &order,
            &events,
            &path,
            session.caller_id(),
            session.may(&[pb::CallerRole::Reviewer, pb::CallerRole::Admin]),
        ),
    );
    (StatusCode::OK, body).into_response()
}

fn money_text(m: Option<&pb::Money>) -> String {
    m.map(|m| money::format(m.amount_minor, &m.currency))
        .unwrap_or_default()
}

fn content(
    order: &pb::Order,
    events: &[pb::OrderEvent],
    path: &str,
    me: Option<&str>,
    may_refund: bool,
) -> Markup {
    let state = order.state();
    let holder = in_flight(order)
        .map(|a| holder_text(me, &a.operator_id, &views::time(a.started_at.as_ref())));
    let declined = declined(order);
    html! {
        p id="order-state" data-state=(views::state_name(state)) aria-live="polite" {
            (views::state_text(state, declined.as_deref()))
        }
        p id="holder" aria-live="polite" hidden[holder.is_none()] { (holder.clone().unwrap_or_default()) }
        p id="order-amount" {
            "Amount: " (money_text(order.amount.as_ref()))
            " \u{b7} customer " (order.customer_id)
            @if order.refunded.as_ref().is_some_and(|r| r.amount_minor > 0) {
                " \u{b7} refunded " (money_text(order.refunded.as_ref()))
            }
        }
        // Refunds are a reviewer's or an admin's: no link (nor a slot for the live page to add
        // one) for other roles.
        @if may_refund {
            p id="refund-slot" data-refund-url=(format!("{path}/refund")) {
                @if state == pb::OrderState::Paid {
                    a id="refund-link" href=(format!("{path}/refund")) { "Refund this order" }
                }
            }
        }
        @if !order.items.is_empty() {
            h2 { "Items" }
            ul id="items" {
                @for item in &order.items {
                    li {
                        (item.product_id) " \u{d7} " (item.quantity) " at "
                        (money::major(item.unit_amount_minor, order.amount.as_ref().map_or("EUR", |m| m.currency.as_str())))
                    }
                }
            }
        }
        h2 { "Attempts" }
        div class="table-wrap" { (attempts_table(order)) }
        @if !order.refunds.is_empty() {
            h2 { "Refunds" }
            ul id="refunds" {
                @for r in &order.refunds {
                    li class="refund" data-number=(r.number) {
                        (money_text(r.amount.as_ref())) " by " (r.requested_by) " at "
                        (views::time(r.requested_at.as_ref())) ": "
                        (r.outcome().as_str_name().trim_start_matches("REFUND_OUTCOME_").to_lowercase().replace('_', " "))
                        @if !r.reason.is_empty() { " (" (r.reason) ")" }
                    }
                }
            }
        }
        h2 { "Events" }
        ol id="events" aria-live="polite" {
            @for e in events {
                li class="event" data-sequence=(e.sequence) { (views::event_text(e)) }
            }
        }
    }
}

/// The attempts table: rendered with the page, and again after each live event (the `attempts`
/// SSE message of `/orders/{id}/live` replaces it), so outcomes, times, gateway ids and errors
/// appear without a reload.
pub fn attempts_table(order: &pb::Order) -> Markup {
    html! {
        table id="attempts" {
            caption class="visually-hidden" { "Payment attempts" }
            thead { tr {
                th scope="col" { "#" } th scope="col" { "Operator" } th scope="col" { "Started" }
                th scope="col" { "Finished" } th scope="col" { "Outcome" }
                th scope="col" { "Gateway payment id" } th scope="col" { "Decline" }
                th scope="col" { "Errors" }
            } }
            tbody {
                @for a in &order.attempts {
                    tr class="attempt" data-number=(a.number) {
                        td { (a.number) }
                        td { (a.operator_id) }
                        td { (views::time(a.started_at.as_ref())) }
                        td { (views::time(a.finished_at.as_ref())) }
                        td { (views::outcome_name(a.outcome())) }
                        td { (a.gateway_payment_id) }
                        td { (a.decline_code) @if !a.failure_message.is_empty() { " " (a.failure_message) } }
                        td {
                            @if !a.errors.is_empty() {
                                ul { @for e in &a.errors {
                                    li { (views::time(e.occurred_at.as_ref())) " " (e.step) ": " (e.message) }
                                } }
                            }
                        }
                    }
                }
            }
        }
    }
}
