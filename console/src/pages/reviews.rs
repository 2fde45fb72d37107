//! `GET /reviews` (the manual review queue, every detail of every open item), `POST
//! /reviews/{order_id}/resolve` and `GET /reviews.csv` (the whole queue, with the columns and
//! cell escaping of `payctl reviews --csv`, which it reuses).

use axum::{
    Form,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use payments_client::WatchClient;
use payments_proto::v1 as pb;
use serde::Deserialize;

use crate::{
    app::AppState,
    errors, money,
    pages::{check_csrf, chrome, error_page, http_status, pay::path_segment},
    session::Session,
    views::{self, Chrome},
};

/// Every open item, following `next_page_token` to the end.
async fn all_items(client: &WatchClient) -> Result<Vec<pb::ManualReviewItem>, tonic::Status> {
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .client()
            .list_manual_reviews(pb::ListManualReviewsRequest {
                page_size: 100,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        items.extend(page.items);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            return Ok(items);
        }
        page_token = page.next_page_token;
    }
}

async fn read(
    state: &AppState,
    session: &Session,
) -> Result<Vec<pb::ManualReviewItem>, tonic::Status> {
    all_items(&state.client(session)?).await
}

pub async fn show(State(state): State<AppState>, session: Session) -> Response {
    let chrome = chrome(&state, &session, "/reviews".to_owned()).await;
    match read(&state, &session).await {
        Ok(items) => render(&chrome, &items, None, StatusCode::OK),
        Err(status) => error_page(
            http_status(&status),
            "Manual reviews",
            &chrome,
            &errors::describe(&status),
            views::nothing(),
        ),
    }
}

fn render(
    chrome: &Chrome<'_>,
    items: &[pb::ManualReviewItem],
    error: Option<&str>,
    code: StatusCode,
) -> Response {
    let body = views::page(
        "Manual reviews",
        Some(chrome),
        error,
        None,
        table(chrome, items),
    );
    (code, body).into_response()
}

fn table(chrome: &Chrome<'_>, items: &[pb::ManualReviewItem]) -> Markup {
    html! {
        p {
            (items.len()) " open item" @if items.len() != 1 { "s" } ". "
            a id="reviews-csv" href="/reviews.csv" download="manual-reviews.csv" { "Download the whole queue as CSV" }
        }
        div class="table-wrap" {
            table id="reviews" {
                caption class="visually-hidden" { "Open manual review items" }
                thead { tr {
                    th scope="col" { "Opened" } th scope="col" { "Order" } th scope="col" { "Customer" }
                    th scope="col" { "Amount" } th scope="col" { "Items" } th scope="col" { "Operator" }
                    th scope="col" { "Attempt" } th scope="col" { "Why" }
                    th scope="col" { "Gateway keys" } th scope="col" { "Gateway payment ids" }
                    th scope="col" { "Error history" } th scope="col" { "What was tried" }
                    th scope="col" { "Resolve" }
                } }
                tbody {
                    @for item in items { (row(chrome, item)) }
                }
            }
        }
    }
}

fn row(chrome: &Chrome<'_>, item: &pb::ManualReviewItem) -> Markup {
    let order = item.order.clone().unwrap_or_default();
    let currency = order
        .amount
        .as_ref()
        .map_or("", |m| m.currency.as_str())
        .to_owned();
    let amount = order
        .amount
        .as_ref()
        .map(|m| money::format(m.amount_minor, &m.currency))
        .unwrap_or_default();
    let segment = path_segment(&order.order_id);
    let refund = item.refund_number > 0;
    let id = |field: &str| format!("{field}-{segment}");
    html! {
        tr class="review" data-order-id=(order.order_id) {
            td { (views::time(item.opened_at.as_ref())) }
            td { a href=(format!("/orders/{segment}")) { (order.order_id) } }
            td { (order.customer_id) }
            td { (amount) @if refund { " (refund " (item.refund_number) " in doubt)" } }
            td { ul { @for i in &order.items {
                li { (i.product_id) " \u{d7} " (i.quantity) " at " (money::major(i.unit_amount_minor, &currency)) }
            } } }
            td { (item.operator_id) }
            td { (item.attempt_number) }
            td { (item.reason) }
            td { ul { @for k in &item.gateway_idempotency_keys { li { (k) } } } }
            td { ul { @for p in &item.gateway_payment_ids { li { (p) } } } }
            td { ul { @for e in &item.error_history {
                li { (views::time(e.occurred_at.as_ref())) " " (e.step) ": " (e.message) }
            } } }
            td { ul { @for a in &item.actions_tried { li { (a) } } } }
            td {
                form class="resolve-form" method="post" action=(format!("/reviews/{segment}/resolve")) {
                    (views::csrf(chrome.session))
                    input type="hidden" name="refund_number" value=(item.refund_number);
                    label for=(id("resolution")) { "Decision" }
                    select id=(id("resolution")) name="resolution" {
                        @if refund {
                            option value="refunded" { "Refunded" }
                            option value="not_refunded" { "Not refunded" }
                        } @else {
                            option value="charged" { "Charged" }
                            option value="not_charged" { "Not charged" }
                        }
                    }
                    label for=(id("gateway_payment_id")) {
                        @if refund { "Gateway refund id (if refunded)" } @else { "Gateway payment id (if charged)" }
                    }
                    input id=(id("gateway_payment_id")) name="gateway_payment_id" type="text";
                    label for=(id("note")) { "Note" }
                    input id=(id("note")) name="note" type="text";
                    button type="submit" { "Resolve" }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct Resolve {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    resolution: String,
    #[serde(default)]
    gateway_payment_id: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    refund_number: i32,
}

fn request(order_id: &str, input: &Resolve) -> Result<pb::ResolveManualReviewRequest, String> {
    let resolution = match input.resolution.as_str() {
        "charged" => pb::Resolution::Charged,
        "not_charged" => pb::Resolution::NotCharged,
        "refunded" => pb::Resolution::Refunded,
        "not_refunded" => pb::Resolution::NotRefunded,
        _ => return Err("Choose a decision: charged or not charged.".to_owned()),
    };
    let id = input.gateway_payment_id.trim().to_owned();
    let refunded = resolution == pb::Resolution::Refunded;
    Ok(pb::ResolveManualReviewRequest {
        order_id: order_id.to_owned(),
        resolution: resolution.into(),
        gateway_payment_id: if refunded { String::new() } else { id.clone() },
        note: input.note.trim().to_owned(),
        refund_number: input.refund_number,
        gateway_refund_id: if refunded { id } else { String::new() },
    })
}

pub async fn resolve(
    State(state): State<AppState>,
    session: Session,
    Path(order_id): Path<String>,
    Form(input): Form<Resolve>,
) -> Response {
    if let Some(refused) = check_csrf(&state, &session, &input.csrf_token).await {
        return refused;
    }
    let result = match request(&order_id, &input) {
        Err(words) => Err(words),
        Ok(request) => {
            let answer = match state.client(&session) {
                Ok(client) => client.client().resolve_manual_review(request).await,
                Err(status) => Err(status),
            };
            answer.map(|_| ()).map_err(|status| {
                tracing::info!(order_id = %order_id, code = ?status.code(), reason = %errors::reason(&status), "resolve refused");
                errors::describe(&status)
            })
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(order_id = %order_id, resolution = %input.resolution, "review resolved");
            Redirect::to(&format!("/orders/{}", path_segment(&order_id))).into_response()
        }
        Err(words) => {
            let chrome = chrome(&state, &session, "/reviews".to_owned()).await;
            let items = read(&state, &session).await.unwrap_or_default();
            render(
                &chrome,
                &items,
                Some(&words),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
        }
    }
}

pub async fn csv(State(state): State<AppState>, session: Session) -> Response {
    let items = match read(&state, &session).await {
        Ok(items) => items,
        Err(status) => {
            let chrome = chrome(&state, &session, "/reviews".to_owned()).await;
            return error_page(
                http_status(&status),
                "Manual reviews",
                &chrome,
                &errors::describe(&status),
                views::nothing(),
            );
        }
    };
    let mut out = Vec::new();
    if let Err(error) = payctl::render::csv::reviews(&mut out, &items) {
        tracing::warn!(%error, "writing the reviews CSV");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"manual-reviews.csv\"",
            ),
        ],
        out,
    )
        .into_response()
}
