//! `GET/POST /orders/{order_id}/refund`: what remains refundable (paid minus refunded), and a
//! partial (amount in major units) or full (empty) refund with a reason. The hidden
//! `idempotency_key` is new per rendering, so a double submit is one refund.

use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use payments_proto::v1 as pb;
use serde::Deserialize;

use crate::{
    app::AppState,
    errors, money,
    pages::{check_csrf, chrome, error_page, http_status, pay::path_segment},
    session::Session,
    views::{self, Chrome},
};

#[derive(Deserialize, Default)]
pub struct RefundForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    idempotency_key: String,
}

/// Paid minus refunded, in minor units, and the currency.
pub fn refundable(order: &pb::Order) -> (i64, String) {
    let (amount, currency) = order
        .amount
        .as_ref()
        .map_or((0, String::new()), |m| (m.amount_minor, m.currency.clone()));
    let refunded = order.refunded.as_ref().map_or(0, |m| m.amount_minor);
    let paid = matches!(
        order.state(),
        pb::OrderState::Paid | pb::OrderState::Refunded
    );
    (if paid { (amount - refunded).max(0) } else { 0 }, currency)
}

fn form(
    chrome: &Chrome<'_>,
    order: &pb::Order,
    values: &RefundForm,
    error: Option<&str>,
) -> Markup {
    let (left, currency) = refundable(order);
    let path = format!("/orders/{}", path_segment(&order.order_id));
    views::page(
        &format!("Refund order {}", order.order_id),
        Some(chrome),
        error,
        None,
        html! {
            p id="refundable" { "Refundable: " (money::format(left, &currency)) }
            form id="refund-form" method="post" action=(format!("{path}/refund")) {
                (views::csrf(chrome.session))
                input type="hidden" name="idempotency_key" value=(uuid::Uuid::new_v4().to_string());
                div class="field" {
                    label for="amount" { "Amount in " (currency) " (empty: all that remains)" }
                    input id="amount" name="amount" type="text" inputmode="decimal" value=(values.amount);
                }
                div class="field" {
                    label for="reason" { "Reason" }
                    input id="reason" name="reason" type="text" required value=(values.reason);
                }
                button type="submit" { "Refund" }
            }
            p { a href=(path) { "Back to the order" } }
        },
    )
}

async fn get_order(
    state: &AppState,
    session: &Session,
    order_id: &str,
) -> Result<pb::Order, tonic::Status> {
    Ok(state
        .client(session)?
        .client()
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await?
        .into_inner())
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(order_id): Path<String>,
) -> Response {
    let path = format!("/orders/{}/refund", path_segment(&order_id));
    let chrome = chrome(&state, &session, path).await;
    match get_order(&state, &session, &order_id).await {
        Ok(order) => form(&chrome, &order, &RefundForm::default(), None).into_response(),
        Err(status) => error_page(
            http_status(&status),
            &format!("Refund order {order_id}"),
            &chrome,
            &errors::describe(&status),
            views::nothing(),
        ),
    }
}

pub async fn submit(
    State(state): State<AppState>,
    session: Session,
    Path(order_id): Path<String>,
    Form(input): Form<RefundForm>,
) -> Response {
    if let Some(refused) = check_csrf(&state, &session, &input.csrf_token).await {
        return refused;
    }
    let path = format!("/orders/{}/refund", path_segment(&order_id));
    let order = match get_order(&state, &session, &order_id).await {
        Ok(order) => order,
        Err(status) => {
            let chrome = chrome(&state, &session, path).await;
            return error_page(
                http_status(&status),
                &format!("Refund order {order_id}"),
                &chrome,
                &errors::describe(&status),
                views::nothing(),
            );
        }
    };
    let currency = order
        .amount
        .as_ref()
        .map_or(String::new(), |m| m.currency.clone());
    let amount = match input.amount.trim() {
        "" => Ok(None),
        text => money::parse_major(text, &currency)
            .map(|amount_minor| {
                Some(pb::Money {
                    amount_minor,
                    currency: currency.clone(),
                })
            })
            .map_err(|e| format!("Amount: {e}.")),
    };
    let result = match amount {
        Err(words) => Err(words),
        Ok(amount) => {
            let request = pb::RefundPaymentRequest {
                order_id: order_id.clone(),
                amount,
                reason: input.reason.trim().to_owned(),
                idempotency_key: input.idempotency_key.clone(),
            };
            let answer = match state.client(&session) {
                Ok(client) => client.client().refund_payment(request).await,
                Err(status) => Err(status),
            };
            answer.map(|_| ()).map_err(|status| {
                tracing::info!(order_id = %order_id, code = ?status.code(), reason = %errors::reason(&status), "refund refused");
                errors::describe(&status)
            })
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(order_id = %order_id, "refund asked");
            Redirect::to(&format!("/orders/{}", path_segment(&order_id))).into_response()
        }
        Err(words) => {
            let chrome = chrome(&state, &session, path).await;
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                form(&chrome, &order, &input, Some(&words)),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refundable_is_paid_minus_refunded() {
        let order = pb::Order {
            state: pb::OrderState::Paid.into(),
            amount: Some(pb::Money {
                amount_minor: 4200,
                currency: "EUR".into(),
            }),
            refunded: Some(pb::Money {
                amount_minor: 1000,
                currency: "EUR".into(),
            }),
            ..Default::default()
        };
        assert_eq!(refundable(&order), (3200, "EUR".to_owned()));
        let pending = pb::Order {
            state: pb::OrderState::Pending.into(),
            ..order
        };
        assert_eq!(refundable(&pending).0, 0);
    }
}
