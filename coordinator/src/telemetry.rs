//! Logging set-up. Traces and metrics arrive with the operations issue.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Human-readable logs on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr))
        .init();
}
