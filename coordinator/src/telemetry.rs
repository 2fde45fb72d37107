//! Logs and traces.
//!
//! Logs: human-readable lines by default, JSON lines with `LOG_FORMAT=json` (for a log pipeline),
//! both on stderr and filtered by `RUST_LOG` (default `info`). Colours only when stderr is a
//! terminal, so files and pipelines get plain text.
//!
//! Traces: only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`), the coordinator's
//! and the gateway client's spans are exported over OTLP/gRPC (module `traces`), one span per RPC
//! continuing the caller's W3C `traceparent` (module `rpc`). Otherwise nothing is built: no
//! exporter, no background thread, no tracing layer, and the spans that exist for traces alone
//! are disabled where they are written (their callsites' interest is `never`).

mod rpc;
mod traces;

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

pub use rpc::RpcSpanLayer;
pub use traces::without_userinfo;

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

/// Held by `main` until exit: dropping it exports the spans still buffered (for at most 2 s)
/// and stops the exporter's thread.
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
    let export =
        traces::ExportConfig::parse(settings.otel_exporter_otlp_endpoint.as_deref(), |name| {
            std::env::var(name).ok()
        })?;
    let traces = export
        .as_ref()
        .map(|export| traces::Traces::start(export, &settings.replica()))
        .transpose()?;
    let logged = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    subscriber(settings.log_format, logged, traces.as_ref())?.init();
    if let Some(traces) = &traces {
        tracing::info!(endpoint = %traces.endpoint(), "exporting traces (OTLP/gRPC)");
    }
    Ok(Telemetry { traces })
}

/// The subscriber: log lines filtered by `logged` (`RUST_LOG`), plus the trace layer only when
/// traces are exported. Two shapes rather than an optional layer: an absent (`None`) layer
/// outermost would make every callsite's interest `sometimes`, evaluating the log filter on each
/// span, where without it the trace-only spans are `never` enabled.
fn subscriber(
    format: LogFormat,
    logged: EnvFilter,
    traces: Option<&traces::Traces>,
) -> anyhow::Result<Box<dyn tracing::Subscriber + Send + Sync>> {
    // Per-layer filters: RUST_LOG decides what is logged, never what is traced (and the reverse),
    // so `RUST_LOG=warn` keeps traces whole.
    let logged = logged
        .add_directive(format!("{TRACE_ONLY}=off").parse()?)
        .add_directive(format!("{GATEWAY_TRACE_ONLY}=off").parse()?);
    let fmt = match format {
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
    let logs = tracing_subscriber::registry().with(fmt.with_filter(logged));
    Ok(match traces {
        Some(traces) => Box::new(logs.with(traces.layer())),
        None => Box::new(logs),
    })
}

#[cfg(test)]
mod tests {
    use tracing::{Level, Subscriber};

    use super::*;

    /// Without traces, a trace-only span is off at its callsite (`never`: not even looked at per
    /// span), while the logged spans stay on.
    #[test]
    fn without_traces_the_trace_only_spans_are_never_enabled() {
        let subscriber =
            subscriber(LogFormat::Text, EnvFilter::new("info"), None).expect("subscriber");
        // The callsites' metadata, from spans made under a subscriber that enables everything.
        let (trace_only, gateway, logged) =
            tracing::subscriber::with_default(tracing_subscriber::registry(), || {
                (
                    tracing::info_span!(target: TRACE_ONLY, "pg.test").metadata(),
                    tracing::info_span!(target: GATEWAY_TRACE_ONLY, "gateway.test").metadata(),
                    tracing::info_span!("ProcessPayment").metadata(),
                )
            });
        for metadata in [trace_only, gateway] {
            let metadata = metadata.expect("a span's metadata");
            assert!(
                subscriber.register_callsite(metadata).is_never(),
                "{} must be never enabled",
                metadata.target()
            );
        }
        let logged = logged.expect("a span's metadata");
        assert_eq!(*logged.level(), Level::INFO);
        assert!(subscriber.register_callsite(logged).is_always());
    }
}
