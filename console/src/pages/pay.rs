//! `GET/POST /pay`: the payment form. The amount and item prices are typed in major units and
//! turned into minor units exactly ([`crate::money`]); `ProcessPayment` is called without
//! waiting for the outcome and the browser goes to the order's page, which follows it live.
//! The hidden `idempotency_key` is new on every rendering of the form, so a double submit joins
//! the same attempt instead of starting another. The payment method is never written back into
//! a page nor logged: a card number typed there must go nowhere.

use axum::{
    Form,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use payments_proto::v1 as pb;
use serde::Deserialize;

use crate::{
    app::AppState,
    errors, money,
    pages::{check_csrf, chrome},
    session::Session,
    views::{self, Chrome},
};

/// The form's fields (no `Debug`: it holds the payment method).
#[derive(Deserialize, Default)]
pub struct PayForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    order_id: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    items: String,
    #[serde(default)]
    payment_method: String,
    #[serde(default)]
    idempotency_key: String,
}

fn form(chrome: &Chrome<'_>, values: &PayForm, error: Option<&str>) -> Markup {
    let currency = if values.currency.trim().is_empty() {
        "EUR"
    } else {
        values.currency.trim()
    };
    // A fresh key per rendering: a re-rendered form after a refusal is a new request.
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    views::page(
        "Pay an order",
        Some(chrome),
        error,
        None,
        html! {
            form id="pay-form" method="post" action="/pay" {
                (views::csrf(chrome.session))
                input type="hidden" name="idempotency_key" value=(idempotency_key);
                div class="field" {
                    label for="order_id" { "Order id" }
                    input id="order_id" name="order_id" type="text" required value=(values.order_id);
                }
                div class="field" {
                    label for="amount" { "Amount (e.g. 12.50)" }
                    input id="amount" name="amount" type="text" inputmode="decimal" required
                        value=(values.amount);
                }
                div class="field" {
                    label for="currency" { "Currency" }
                    input id="currency" name="currency" type="text" required value=(currency);
                }
                div class="field" {
                    label for="customer_id" { "Customer" }
                    input id="customer_id" name="customer_id" type="text" required
                        value=(values.customer_id);
                }
                div class="field" {
                    label for="items" { "Items: one per line, \u{201c}product quantity unit-price\u{201d} (empty: one line for the whole amount)" }
                    textarea id="items" name="items" rows="4" { (values.items) }
                }
                div class="field" {
                    label for="payment_method" { "Payment method token (e.g. pm_card_visa; never a card number)" }
                    input id="payment_method" name="payment_method" type="text" required
                        autocomplete="off";
                }
                button type="submit" { "Pay" }
            }
        },
    )
}

pub async fn show(State(state): State<AppState>, session: Session) -> Markup {
    let chrome = chrome(&state, &session, "/pay".to_owned()).await;
    form(&chrome, &PayForm::default(), None)
}

/// The line items typed in the form (`product quantity unit-price` per line), or one line for
/// the whole amount named after the order when empty.
pub fn parse_items(
    text: &str,
    order_id: &str,
    amount_minor: i64,
    currency: &str,
) -> Result<Vec<pb::LineItem>, String> {
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [product_id, quantity, unit] = parts.as_slice() else {
            return Err(format!(
                "Item line {} should be \u{201c}product quantity unit-price\u{201d}, like \
                 \u{201c}sku-lamp 2 12.50\u{201d}.",
                n + 1
            ));
        };
        let quantity: i32 = quantity.parse().ok().filter(|q| *q > 0).ok_or_else(|| {
            format!(
                "Item line {}: the quantity must be a whole number above 0.",
                n + 1
            )
        })?;
        let unit_amount_minor =
            money::parse_major(unit, currency).map_err(|e| format!("Item line {}: {e}.", n + 1))?;
        items.push(pb::LineItem {
            product_id: (*product_id).to_owned(),
            quantity,
            unit_amount_minor,
        });
    }
    if items.is_empty() {
        items.push(pb::LineItem {
            product_id: order_id.to_owned(),
            quantity: 1,
            unit_amount_minor: amount_minor,
        });
    }
    Ok(items)
}

fn request(input: &PayForm) -> Result<pb::ProcessPaymentRequest, String> {
    let order_id = input.order_id.trim();
    let currency = input.currency.trim().to_ascii_uppercase();
    let amount_minor =
        money::parse_major(&input.amount, &currency).map_err(|e| format!("Amount: {e}."))?;
    let items = parse_items(&input.items, order_id, amount_minor, &currency)?;
    Ok(pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor,
            currency,
        }),
        customer_id: input.customer_id.trim().to_owned(),
        payment_method: input.payment_method.trim().to_owned(),
        items,
        idempotency_key: input.idempotency_key.clone(),
        wait_for_outcome: false,
    })
}

/// The path of an order's page.
pub fn order_path(order_id: &str) -> String {
    format!("/orders/{}", path_segment(order_id))
}

/// An order id as one URL path segment (ids are `[A-Za-z0-9._:-]`, anything else is escaped).
pub fn path_segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn submit(
    State(state): State<AppState>,
    session: Session,
    Form(input): Form<PayForm>,
) -> Response {
    if let Some(refused) = check_csrf(&state, &session, &input.csrf_token).await {
        return refused;
    }
    let words: String = match request(&input) {
        Err(words) => words,
        Ok(request) => {
            let order_id = request.order_id.clone();
            let answer = match state.client(&session) {
                Ok(client) => client.client().process_payment(request).await,
                Err(status) => Err(status),
            };
            match answer {
                Ok(response) => {
                    let response = response.into_inner();
                    tracing::info!(
                        order_id = %order_id,
                        attempt = response.attempt.as_ref().map_or(0, |a| a.number),
                        joined = response.joined_existing,
                        "payment started"
                    );
                    return Redirect::to(&order_path(&order_id)).into_response();
                }
                Err(status) if errors::reason(&status) == "PAYMENT_IN_PROGRESS" => {
                    tracing::info!(order_id = %order_id, "payment refused: another attempt is in flight");
                    return Redirect::to(&format!("{}?busy=1", order_path(&order_id)))
                        .into_response();
                }
                Err(status) => {
                    tracing::info!(
                        order_id = %order_id,
                        code = ?status.code(),
                        reason = %errors::reason(&status),
                        "payment refused"
                    );
                    errors::describe(&status)
                }
            }
        }
    };
    let chrome = chrome(&state, &session, "/pay".to_owned()).await;
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        form(&chrome, &input, Some(&words)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_parsed_in_minor_units() {
        let items = parse_items("sku-lamp 2 12.50\n\n  sku-bulb 1 3  ", "o-1", 2800, "EUR")
            .expect("parses");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].product_id, "sku-lamp");
        assert_eq!(items[0].quantity, 2);
        assert_eq!(items[0].unit_amount_minor, 1250);
        assert_eq!(items[1].unit_amount_minor, 300);
    }

    #[test]
    fn no_items_is_one_line_for_the_whole_amount() {
        let items = parse_items("  \n", "o-7", 4200, "EUR").expect("parses");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].product_id, "o-7");
        assert_eq!(items[0].quantity, 1);
        assert_eq!(items[0].unit_amount_minor, 4200);
    }

    #[test]
    fn bad_items_are_refused_in_words() {
        assert!(
            parse_items("sku 2", "o", 1, "EUR")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(
            parse_items("sku 0 1.00", "o", 1, "EUR")
                .unwrap_err()
                .contains("quantity")
        );
        assert!(
            parse_items("sku 1 1.001", "o", 1, "EUR")
                .unwrap_err()
                .contains("decimal")
        );
    }

    #[test]
    fn order_paths_escape_what_is_not_an_id() {
        assert_eq!(order_path("ord-1.a:b_c"), "/orders/ord-1.a:b_c");
        assert_eq!(order_path("a/b?c"), "/orders/a%2Fb%3Fc");
    }
}
