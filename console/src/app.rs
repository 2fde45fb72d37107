//! The router, the state every handler shares, and start-up.

use std::net::SocketAddr;

use anyhow::Context;
use axum::{
    Router,
    extract::FromRef,
    http::header,
    middleware,
    response::{IntoResponse, Redirect},
    routing::{get, post},
};
use axum_extra::extract::cookie::Key;
use payments_client::WatchClient;
use tokio_util::sync::CancellationToken;
use tonic::{Status, transport::Channel};

use crate::{live, pages, security, session::Session, settings::Settings};

/// Shared by every handler: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// One lazily connected channel to the coordinator; each request uses it with the signed-in
    /// operator's own key.
    channel: Channel,
    key: Key,
    /// Whether the session cookie is `Secure`.
    pub secure_cookie: bool,
    /// Cancelled at shutdown: the live streams end, so that the graceful shutdown does not
    /// wait for browsers that never close them.
    pub shutdown: CancellationToken,
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Key {
        state.key.clone()
    }
}

impl AppState {
    pub fn new(settings: &Settings) -> anyhow::Result<AppState> {
        let channel =
            payments_client::endpoint(&settings.coordinator_url, &settings.tls)?.connect_lazy();
        Ok(AppState {
            channel,
            key: settings.cookie_key()?,
            secure_cookie: settings.secure_cookie,
            shutdown: CancellationToken::new(),
        })
    }

    /// A client speaking with `api_key` (a key that is not printable ASCII is refused as the
    /// coordinator would refuse it).
    pub fn client_for(&self, api_key: &str) -> Result<WatchClient, Status> {
        WatchClient::with_channel(self.channel.clone(), api_key)
            .map_err(|_| Status::unauthenticated("the API key is not printable ASCII"))
    }

    /// The signed-in operator's client.
    pub fn client(&self, session: &Session) -> Result<WatchClient, Status> {
        self.client_for(session.api_key())
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/pay") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/assets/console.js", get(script))
        .route("/assets/console.css", get(stylesheet))
        .route(
            "/signin",
            get(pages::signin::show).post(pages::signin::submit),
        )
        .route("/signout", post(pages::signin::sign_out))
        .route("/pay", get(pages::pay::show).post(pages::pay::submit))
        .route("/orders/{order_id}", get(pages::order::show))
        .route("/orders/{order_id}/live", get(live::order))
        .route(
            "/orders/{order_id}/refund",
            get(pages::refund::show).post(pages::refund::submit),
        )
        .route("/reviews", get(pages::reviews::show))
        .route("/reviews.csv", get(pages::reviews::csv))
        .route("/reviews/{order_id}/resolve", post(pages::reviews::resolve))
        .route("/feed", get(pages::feed::show))
        .route("/feed/live", get(live::feed))
        .route("/payments/pause", post(pages::control::pause))
        .route("/payments/resume", post(pages::control::resume))
        .fallback(pages::not_found)
        .layer(middleware::from_fn(security::headers))
        .with_state(state)
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../assets/console.js"),
    )
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../assets/console.css"),
    )
}

/// Binds, prints `console listening on http://ADDR` (the one line on stdout), and serves until
/// Ctrl-C or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let state = AppState::new(&settings)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding CONSOLE_LISTEN {}", settings.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("console listening on http://{addr}");
    tracing::info!(%addr, coordinator = %settings.coordinator_url, "console started");
    let shutdown = state.shutdown.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("stopping: ending the live streams");
            shutdown.cancel();
        })
        .await
        .context("serving HTTP")?;
    tracing::info!("console stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
