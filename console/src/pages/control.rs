//! `POST /payments/pause` and `POST /payments/resume` from the status banner: the API decides
//! who may (admins); a refusal is shown on the page the form came from.

use axum::{
    Form,
    extract::State,
    response::{IntoResponse, Redirect, Response},
};
use maud::html;
use payments_proto::v1 as pb;
use serde::Deserialize;

use crate::{
    app::AppState,
    errors,
    pages::{check_csrf, chrome},
    session::Session,
    views,
};

#[derive(Deserialize)]
pub struct Control {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    back: String,
}

pub async fn pause(
    State(state): State<AppState>,
    session: Session,
    Form(input): Form<Control>,
) -> Response {
    if let Some(refused) = check_csrf(&state, &session, &input.csrf_token).await {
        return refused;
    }
    let result = match state.client(&session) {
        Ok(client) => client
            .client()
            .pause_payments(pb::PausePaymentsRequest {
                reason: input.reason.trim().to_owned(),
            })
            .await
            .map(|_| ()),
        Err(status) => Err(status),
    };
    done(&state, &session, &input.back, "Pause payments", result).await
}

pub async fn resume(
    State(state): State<AppState>,
    session: Session,
    Form(input): Form<Control>,
) -> Response {
    if let Some(refused) = check_csrf(&state, &session, &input.csrf_token).await {
        return refused;
    }
    let result = match state.client(&session) {
        Ok(client) => client
            .client()
            .resume_payments(pb::ResumePaymentsRequest::default())
            .await
            .map(|_| ()),
        Err(status) => Err(status),
    };
    done(&state, &session, &input.back, "Resume payments", result).await
}

async fn done(
    state: &AppState,
    session: &Session,
    back: &str,
    title: &str,
    result: Result<(), tonic::Status>,
) -> Response {
    let back = views::safe_back(back);
    match result {
        Ok(()) => Redirect::to(&back).into_response(),
        Err(status) => {
            tracing::info!(code = ?status.code(), reason = %errors::reason(&status), "{title} refused");
            let chrome = chrome(state, session, back.clone()).await;
            let body = views::page(
                title,
                Some(&chrome),
                Some(&errors::describe(&status)),
                None,
                html! { p { a href=(back) { "Back" } } },
            );
            (super::http_status(&status), body).into_response()
        }
    }
}
