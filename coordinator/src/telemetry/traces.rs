//! The trace export: an OpenTelemetry tracer provider with a batch OTLP/gRPC exporter, fed by
//! `tracing` spans through `tracing-opentelemetry`.
//!
//! Configured the standard way, mostly by the SDK itself: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on; `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`,
//! `…_COMPRESSION`, `OTEL_TRACES_SAMPLER` (+ `_ARG`), `OTEL_BSP_*` and `OTEL_SPAN_*_LIMIT` are read
//! by the SDK; `OTEL_SERVICE_NAME` (default `coordinator`) and `OTEL_RESOURCE_ATTRIBUTES` name
//! the resource, which also carries `service.instance.id` = the replica. Only the gRPC protocol
//! is built in (it reuses tonic): `OTEL_EXPORTER_OTLP_PROTOCOL` other than `grpc` is refused.

use anyhow::{Context, bail};
use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    resource::{EnvResourceDetector, TelemetryResourceDetector},
    trace::SdkTracerProvider,
};
use tracing_subscriber::{
    Layer,
    filter::{LevelFilter, Targets},
    registry::LookupSpan,
};

/// The instrumentation scope of every span.
const TRACER: &str = "coordinator";
const DEFAULT_SERVICE_NAME: &str = "coordinator";
/// The crates whose spans are exported; never the transport crates below them (tonic, h2,
/// hyper: the exporter's own calls would trace themselves).
const TRACED: [&str; 2] = ["coordinator", "gateway_client"];

/// A running export.
pub(super) struct Traces {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl Traces {
    /// `None` when no endpoint is configured: nothing is built.
    pub(super) fn from_env(endpoint: Option<&str>, replica: &str) -> anyhow::Result<Option<Self>> {
        let traces_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let endpoint = endpoint.filter(|e| !e.trim().is_empty());
        let Some(shown) = traces_endpoint.clone().or(endpoint.map(str::to_owned)) else {
            return Ok(None);
        };
        for protocol in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = env(protocol)
                && value != "grpc"
            {
                bail!("{protocol}={value}: only `grpc` (OTLP over gRPC) is supported");
            }
        }
        let mut exporter = SpanExporter::builder().with_tonic();
        // The signal-specific variable wins over the general one (the SDK reads it itself).
        if traces_endpoint.is_none()
            && let Some(endpoint) = endpoint
        {
            exporter = exporter.with_endpoint(endpoint);
        }
        let exporter = exporter
            .build()
            .with_context(|| format!("configuring the OTLP trace exporter for {shown}"))?;
        // Batched on the SDK's own thread: a span ending never waits for the collector, and a
        // collector that is down only drops spans (the queue is bounded, OTEL_BSP_MAX_QUEUE_SIZE).
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(replica))
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Some(Self {
            provider,
            endpoint: shown,
        }))
    }

    pub(super) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub(super) fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let traced = TRACED
            .into_iter()
            .fold(Targets::new(), |targets, crate_name| {
                targets.with_target(crate_name, LevelFilter::INFO)
            });
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer(TRACER))
            // Thread ids and names say nothing about a payment on a work-stealing runtime.
            .with_threads(false)
            .with_filter(traced)
    }

    /// Exports what is still buffered (bounded by the SDK's shutdown timeout) and stops.
    pub(super) fn shutdown(self) {
        let provider = self.provider;
        let shutdown = move || {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "trace export: spans may be lost at exit");
            }
        };
        // The exporter's connection is served by the Tokio runtime: block a worker thread only
        // the way Tokio allows, so that the runtime goes on driving that connection meanwhile.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(shutdown),
            _ => shutdown(),
        }
    }
}

/// `service.name` = `coordinator` unless `OTEL_RESOURCE_ATTRIBUTES` or `OTEL_SERVICE_NAME` (in
/// that order of precedence, lowest first) say otherwise; `service.instance.id` = the replica.
fn resource(replica: &str) -> Resource {
    let mut resource = Resource::builder_empty()
        .with_service_name(DEFAULT_SERVICE_NAME)
        .with_attribute(KeyValue::new("service.instance.id", replica.to_owned()))
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Some(name) = env("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(name);
    }
    resource.build()
}

/// A set, non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
