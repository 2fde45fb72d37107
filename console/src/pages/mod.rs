//! One module per page, its GET and POST handlers side by side.

pub mod control;
pub mod feed;
pub mod order;
pub mod pay;
pub mod refund;
pub mod reviews;
pub mod signin;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use payments_proto::v1 as pb;

use crate::{
    app::AppState,
    errors,
    session::Session,
    views::{self, Chrome},
};

/// The layout's parts for a signed-in page at `back`: the payments status read with the
/// operator's own key.
pub async fn chrome<'a>(state: &AppState, session: &'a Session, back: String) -> Chrome<'a> {
    let status = match state.client(session) {
        Ok(client) => client
            .client()
            .get_payments_status(pb::GetPaymentsStatusRequest {})
            .await
            .map(tonic::Response::into_inner),
        Err(status) => Err(status),
    };
    Chrome {
        status,
        session,
        back,
    }
}

/// A POST whose CSRF token is missing or not the session's gets this (403): the handler
/// returns it before doing anything. The page keeps the layout (status banner, nav): the session
/// itself is valid, only this form is not.
pub async fn check_csrf(state: &AppState, session: &Session, token: &str) -> Option<Response> {
    if session.csrf_matches(token) {
        return None;
    }
    tracing::warn!("form refused: missing or wrong CSRF token");
    let chrome = chrome(state, session, "/pay".to_owned()).await;
    let body = views::page(
        "Form refused",
        Some(&chrome),
        Some(errors::CSRF_REFUSED),
        None,
        html! { p { a href="/pay" { "Back to the console" } } },
    );
    Some((StatusCode::FORBIDDEN, body).into_response())
}

/// A page with only an error under its title (an order that cannot be read…).
pub fn error_page(
    code: StatusCode,
    title: &str,
    chrome: &Chrome<'_>,
    error: &str,
    content: Markup,
) -> Response {
    (
        code,
        views::page(title, Some(chrome), Some(error), None, content),
    )
        .into_response()
}

/// The HTTP status of a page showing a coordinator refusal.
pub fn http_status(status: &tonic::Status) -> StatusCode {
    match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::Aborted => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

pub async fn not_found() -> Response {
    let body = views::page(
        "Not found",
        None,
        Some("There is no such page in this console."),
        None,
        html! { p { a href="/pay" { "Back to the console" } } },
    );
    (StatusCode::NOT_FOUND, body).into_response()
}
