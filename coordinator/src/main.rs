use clap::Parser;
use coordinator::{config::Settings, server::Application, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    // Held to the end: dropping it exports the spans still buffered.
    let _telemetry = telemetry::init(&settings)?;
    let app = Application::build(&settings).await?;
    if !app.dev_keys.is_empty() {
        // --dev only: shown once on stdout so a developer can call the API; never logged.
        println!("--dev: generated API keys (valid until this process exits):");
        for (id, role, key) in &app.dev_keys {
            println!("  {role:<9} {id:<14} {key}");
        }
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(shutdown.clone()));
    // A graceful shutdown returns Ok: the process exits 0.
    let result = app.run_until(shutdown).await;
    match &result {
        Ok(()) => tracing::info!("exit"),
        Err(error) => tracing::error!("exit after an error: {error:#}"),
    }
    result
}

/// Ctrl-C (SIGINT) or SIGTERM (Kubernetes) starts a graceful shutdown (`Application::run_until`).
async fn shutdown_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let signal = {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    tracing::info!(signal = "SIGINT", "shutdown: signal received");
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    };
    #[cfg(not(unix))]
    let signal = {
        let _ = ctrl_c.await;
        "ctrl-c"
    };
    tracing::info!(signal, "shutdown: signal received");
    shutdown.cancel();
}
