//! The web operator console (issue 10): server-rendered pages to pay, watch, review, refund and
//! pause, talking to the coordinator only through its public gRPC API with the signed-in
//! operator's own API key, so every action is recorded under that operator and refused by role
//! exactly as the API refuses it.
//!
//! - [`settings`]: flags and environment variables, parsed once.
//! - [`app`]: the router, the shared state, start-up (`console listening on http://ADDR`).
//! - [`session`]: the encrypted session cookie (key + CSRF token) and the signed-in extractor.
//! - [`security`]: the security headers on every response.
//! - [`errors`]: a gRPC refusal in words, in one place.
//! - [`money`]: major units ⇄ minor units, exact.
//! - [`views`]: the page layout (status banner, nav, `#error`) and shared fragments.
//! - [`pages`]: one module per page, its GET and POST side by side.
//! - [`live`]: the server-sent event streams fed by `WatchOrder` and `WatchEvents`.

pub mod app;
pub mod errors;
pub mod live;
pub mod money;
pub mod pages;
pub mod security;
pub mod session;
pub mod settings;
pub mod views;

use tracing_subscriber::EnvFilter;

/// Logs on stderr (`RUST_LOG` overrides `info`). Nothing logged carries a key, a cookie or a
/// payment method: handlers never put them in fields, and requests are not logged with headers.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}
