//! `GET/POST /signin` and `POST /signout`. The key is checked by calling `GetPaymentsStatus`
//! with it (every role may); a refused key gets no cookie. The sign-in POST needs no CSRF token
//! (there is no session yet; `SameSite=Strict` keeps other sites' forms from riding on one).

use axum::{
    Form,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::cookie::PrivateCookieJar;
use maud::{Markup, html};
use payments_proto::v1 as pb;
use serde::Deserialize;

use crate::{
    app::AppState,
    errors,
    pages::check_csrf,
    session::{self, Session},
    views,
};

fn form(error: Option<&str>) -> Markup {
    views::page(
        "Sign in",
        None,
        error,
        None,
        html! {
            form id="signin-form" method="post" action="/signin" {
                label for="api_key" { "API key" }
                input id="api_key" name="api_key" type="password" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
            p class="note" {
                "Your key stays in an encrypted cookie of this browser and is sent only to the \
                 coordinator. Sessions end when you sign out or when the console restarts."
            }
        },
    )
}

pub async fn show() -> Markup {
    form(None)
}

#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    api_key: String,
}

pub async fn submit(
    State(state): State<AppState>,
    jar: PrivateCookieJar,
    Form(input): Form<SignIn>,
) -> Response {
    let api_key = input.api_key.trim().to_owned();
    // `GetCaller` checks the key and says who it is; a coordinator without it (an older
    // release) still checks the key with `GetPaymentsStatus`, and the session's role stays
    // unknown (every form offered, the API refusing what the role may not do).
    let accepted = match state.client_for(&api_key) {
        Ok(client) if !api_key.is_empty() => {
            match client.client().get_caller(pb::GetCallerRequest {}).await {
                Ok(caller) => Ok(Some(caller.into_inner())),
                Err(status) if status.code() == tonic::Code::Unimplemented => client
                    .client()
                    .get_payments_status(pb::GetPaymentsStatusRequest {})
                    .await
                    .map(|_| None),
                Err(status) => Err(status),
            }
        }
        Ok(_) => Err(tonic::Status::unauthenticated("no key")),
        Err(status) => Err(status),
    };
    match accepted {
        Ok(caller) => {
            tracing::info!(
                caller = caller.as_ref().map_or("?", |c| c.id.as_str()),
                "signed in"
            );
            let session = Session::new(api_key, caller);
            let jar = jar.add(session.cookie(state.secure_cookie));
            (jar, Redirect::to("/pay")).into_response()
        }
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) =>
        {
            tracing::info!("sign-in refused: the coordinator did not accept the key");
            (StatusCode::UNAUTHORIZED, form(Some(errors::KEY_REFUSED))).into_response()
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), "sign-in: the coordinator could not check the key");
            let text = format!(
                "The key could not be checked: {}",
                errors::describe(&status)
            );
            (StatusCode::SERVICE_UNAVAILABLE, form(Some(&text))).into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct SignOut {
    #[serde(default)]
    csrf_token: String,
}

pub async fn sign_out(
    State(state): State<AppState>,
    session: Session,
    jar: PrivateCookieJar,
    Form(input): Form<SignOut>,
) -> Response {
    if let Some(refused) = check_csrf(&state, &session, &input.csrf_token).await {
        return refused;
    }
    tracing::info!("signed out");
    (session::signed_out(jar), Redirect::to("/signin")).into_response()
}
