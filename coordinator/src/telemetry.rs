//! Logs and traces.
//!
//! Logs: human-readable lines by default, JSON lines with `LOG_FORMAT=json` (for a log pipeline),
//! both on stderr and filtered by `RUST_LOG` (default `info`). Colours only when stderr is a
//! terminal, so files and pipelines get plain text.
//!
//! Traces: only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, the coordinator's and the gateway client's spans are exported over OTLP/gRPC (module
//! `traces`), one span per RPC continuing the caller's W3C `traceparent` (module `rpc`). Without
//! an endpoint nothing is built: no exporter, no background thread, and the RPC span is disabled.

mod rpc;
mod traces;

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

pub use rpc::RpcSpanLayer;

/// The target of the spans that exist for traces alone: exported, never shown in log lines
/// (whose events already name their operation's span). The RPC span, the PostgreSQL
/// transactions (`pg.*`), the Redis lease calls (`lease.*`) and the recovery decisions.
pub const TRACE_ONLY: &str = "coordinator::otel";
/// The gateway client's HTTP client spans (`gateway.http`), likewise.
const GATEWAY_TRACE_ONLY: &str = "gateway_client::otel";

use crate::config::Settings;

/// How log lines are written (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields and the current spans.
    Json,
}

/// Held by `main` until exit: dropping it exports the spans still buffered and stops the
/// exporter's thread.
#[must_use = "dropping it at once stops the trace export"]
pub struct Telemetry {
    traces: Option<traces::Traces>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(traces) = self.traces.take() {
            traces.shutdown();
        }
    }
}

/// Installs the logging subscriber and, when an OTLP endpoint is configured, the trace export.
/// Must run inside the Tokio runtime (the OTLP/gRPC exporter's connection lives there).
pub fn init(settings: &Settings) -> anyhow::Result<Telemetry> {
    let traces = traces::Traces::from_env(
        settings.otel_exporter_otlp_endpoint.as_deref(),
        &settings.replica(),
    )?;
    // Per-layer filters: RUST_LOG decides what is logged, never what is traced (and the reverse),
    // so `RUST_LOG=warn` keeps traces whole.
    let logged = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(format!("{TRACE_ONLY}=off").parse()?)
        .add_directive(format!("{GATEWAY_TRACE_ONLY}=off").parse()?);
    let fmt = match settings.log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(logged))
        .with(traces.as_ref().map(traces::Traces::layer))
        .init();
    if let Some(traces) = &traces {
        tracing::info!(endpoint = %traces.endpoint(), "exporting traces (OTLP/gRPC)");
    }
    Ok(Telemetry { traces })
}
