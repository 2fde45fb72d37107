//! The trace export: an OpenTelemetry tracer provider with a batch OTLP/gRPC exporter, fed by
//! `tracing` spans through `tracing-opentelemetry`.
//!
//! Configured with the standard OpenTelemetry variables, checked once at start-up
//! ([`ExportConfig::parse`]); what asks for something not built in is refused there, naming the
//! variable, rather than ignored:
//! - on: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, which wins);
//!   off whatever the endpoint: `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//!   (`OTEL_TRACES_EXPORTER` other than `otlp`/`none` is refused);
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` must be `grpc` (the exporter reuses tonic);
//! - the endpoint is `http://` (plain text) or `https://` (TLS, the collector verified against
//!   `OTEL_EXPORTER_OTLP_CERTIFICATE`, a PEM CA file, or else the system's roots); without a
//!   scheme it is `https://` unless `OTEL_EXPORTER_OTLP_INSECURE=true`. Credentials in the URL
//!   (`user:password@`: gRPC would not send them; `OTEL_EXPORTER_OTLP_HEADERS` does) and client
//!   certificates (`OTEL_EXPORTER_OTLP_CLIENT_KEY`/`_CLIENT_CERTIFICATE`) are refused;
//! - `OTEL_EXPORTER_OTLP_COMPRESSION`: `gzip` or `none`;
//! - each `OTEL_EXPORTER_OTLP_X` above may be given as `OTEL_EXPORTER_OTLP_TRACES_X`, which wins.
//!
//! Read by the SDK itself: `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `OTEL_TRACES_SAMPLER`
//! (+ `_ARG`), `OTEL_BSP_*` and `OTEL_SPAN_*_LIMIT`. `OTEL_SERVICE_NAME` (default `coordinator`)
//! and `OTEL_RESOURCE_ATTRIBUTES` name the resource, which also carries `service.instance.id` =
//! the replica.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{Compression, SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    resource::{EnvResourceDetector, TelemetryResourceDetector},
    trace::SdkTracerProvider,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tonic::transport::{Certificate, ClientTlsConfig};
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
/// At exit, how long the spans still buffered get to leave. Bounded well under a pod's
/// termination grace period: a collector that does not answer must not hold the exit (the SDK's
/// own default is 5 s, and each export may wait `OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s).
const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

/// What the environment asks of the export, checked.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ExportConfig {
    /// With its scheme, otherwise as given; never with credentials (refused).
    endpoint: String,
    /// `https://` only.
    tls: Option<Tls>,
    gzip: bool,
}

/// How the collector's certificate is verified.
#[derive(Debug, PartialEq, Eq)]
enum Tls {
    SystemRoots,
    /// A PEM CA file, and the variable that named it.
    CaFile {
        variable: String,
        path: PathBuf,
    },
}

impl ExportConfig {
    /// `None`: no export (no endpoint, or turned off). `endpoint` is the setting
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`); `var` reads an environment variable.
    pub(super) fn parse(
        endpoint: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<Self>> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        // The signal's own variable, else the general one: (its name, its value).
        let otlp = |x: &str| {
            [
                format!("OTEL_EXPORTER_OTLP_TRACES_{x}"),
                format!("OTEL_EXPORTER_OTLP_{x}"),
            ]
            .into_iter()
            .find_map(|name| var(&name).map(|value| (name, value.trim().to_owned())))
        };

        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let exporters = var("OTEL_TRACES_EXPORTER").unwrap_or_default();
        let exporters: Vec<String> = exporters
            .split(',')
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        if exporters.iter().any(|e| e == "none") {
            return Ok(None);
        }
        let Some(endpoint) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| endpoint.filter(|e| !e.trim().is_empty()).map(str::to_owned))
        else {
            return Ok(None);
        };
        let endpoint = endpoint.trim();
        // gRPC sends no credentials from the URL, and the SDK quotes its endpoint in its own
        // errors and debug lines: refused, naming the way that works, and never shown.
        if without_userinfo(endpoint) != endpoint {
            bail!(
                "OTLP endpoint {}: credentials in the URL (user:password@) are not sent over \
                 gRPC; put them in OTEL_EXPORTER_OTLP_HEADERS (e.g. authorization=Basic …)",
                without_userinfo(endpoint)
            );
        }
        if let Some(other) = exporters.iter().find(|e| *e != "otlp") {
            bail!("OTEL_TRACES_EXPORTER={other}: only `otlp` (or `none`) is supported");
        }
        for protocol in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = var(protocol)
                && value.trim() != "grpc"
            {
                bail!("{protocol}={value}: only `grpc` (OTLP over gRPC) is supported");
            }
        }

        // The OTLP rule: an endpoint without a scheme is TLS unless said insecure.
        let scheme = endpoint
            .split_once("://")
            .map(|(scheme, _)| scheme)
            .filter(|scheme| !scheme.contains(['/', '?', '#', '@']));
        let (endpoint, https) = match scheme {
            Some(scheme) if scheme.eq_ignore_ascii_case("http") => (endpoint.to_owned(), false),
            Some(scheme) if scheme.eq_ignore_ascii_case("https") => (endpoint.to_owned(), true),
            Some(scheme) => bail!(
                "OTLP endpoint {}: the scheme {scheme}:// is not supported (http:// or https://)",
                without_userinfo(endpoint)
            ),
            None => match otlp("INSECURE") {
                Some((_, insecure)) if insecure.eq_ignore_ascii_case("true") => {
                    (format!("http://{endpoint}"), false)
                }
                _ => (format!("https://{endpoint}"), true),
            },
        };

        for x in ["CLIENT_KEY", "CLIENT_CERTIFICATE"] {
            if let Some((name, _)) = otlp(x) {
                bail!("{name}: client certificates to the OTLP collector are not supported");
            }
        }
        let tls = match (https, otlp("CERTIFICATE")) {
            (true, Some((variable, path))) => Some(Tls::CaFile {
                variable,
                path: PathBuf::from(path),
            }),
            (true, None) => Some(Tls::SystemRoots),
            (false, Some((name, _))) => bail!(
                "{name} is set but the OTLP endpoint {} is plain text: use https:// (or unset it)",
                without_userinfo(&endpoint)
            ),
            (false, None) => None,
        };

        let gzip = match otlp("COMPRESSION") {
            None => false,
            Some((_, value)) if value.eq_ignore_ascii_case("none") => false,
            Some((_, value)) if value.eq_ignore_ascii_case("gzip") => true,
            Some((name, value)) => {
                bail!("{name}={value}: only `gzip` or `none` is supported")
            }
        };
        Ok(Some(Self {
            endpoint,
            tls,
            gzip,
        }))
    }
}

/// `scheme://user:password@host:port/path` → `scheme://host:port/path` (with or without the
/// scheme): what may be logged of a URL that may carry credentials.
pub fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if !scheme.contains(['/', '?', '#', '@']) => (Some(scheme), rest),
        _ => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}{tail}"),
        None => format!("{host}{tail}"),
    }
}

/// A running export.
pub(super) struct Traces {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl Traces {
    /// Builds the exporter `config` describes (nothing connects yet: the first batch does).
    pub(super) fn start(config: &ExportConfig, replica: &str) -> anyhow::Result<Self> {
        let shown = config.endpoint.clone();
        let mut exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone());
        if config.gzip {
            exporter = exporter.with_compression(Compression::Gzip);
        }
        if let Some(tls) = &config.tls {
            exporter = exporter.with_tls_config(tls_config(tls)?);
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
        Ok(Self {
            provider,
            endpoint: shown,
        })
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

    /// Exports what is still buffered, for at most [`FLUSH_AT_EXIT`], and stops.
    pub(super) fn shutdown(self) {
        let provider = self.provider;
        let shutdown = move || {
            if let Err(error) = provider.shutdown_with_timeout(FLUSH_AT_EXIT) {
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

/// The TLS of an `https://` endpoint. A CA file is read and checked now, so that a wrong path or
/// file stops the start rather than every export.
fn tls_config(tls: &Tls) -> anyhow::Result<ClientTlsConfig> {
    Ok(match tls {
        Tls::SystemRoots => ClientTlsConfig::new().with_native_roots(),
        Tls::CaFile { variable, path } => {
            let shown = path.display();
            let pem = std::fs::read(path)
                .with_context(|| format!("{variable} {shown}: cannot read it"))?;
            let certificates = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    anyhow::anyhow!("{variable} {shown}: not a PEM certificate file: {e}")
                })?;
            if certificates.is_empty() {
                bail!("{variable} {shown}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
            }
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
        }
    })
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(
        endpoint: Option<&str>,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Option<ExportConfig>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ExportConfig::parse(endpoint, |name| vars.get(name).cloned())
    }

    fn config(endpoint: Option<&str>, vars: &[(&str, &str)]) -> ExportConfig {
        parse(endpoint, vars).expect("accepted").expect("an export")
    }

    fn refusal(endpoint: Option<&str>, vars: &[(&str, &str)]) -> String {
        format!("{:#}", parse(endpoint, vars).expect_err("refused"))
    }

    #[test]
    fn no_endpoint_no_export() {
        assert_eq!(parse(None, &[]).unwrap(), None);
        assert_eq!(parse(Some("  "), &[]).unwrap(), None);
        // Nothing else is read without an endpoint.
        assert_eq!(
            parse(None, &[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]).unwrap(),
            None
        );
    }

    #[test]
    fn the_traces_endpoint_wins_over_the_general_one() {
        let c = config(
            Some("http://general:4317"),
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")],
        );
        assert_eq!(c.endpoint, "http://traces:4317");
        let c = config(
            None,
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")],
        );
        assert_eq!(c.endpoint, "http://traces:4317");
    }

    #[test]
    fn sdk_disabled_or_exporter_none_turn_it_off() {
        let on = Some("http://collector:4317");
        assert_eq!(parse(on, &[("OTEL_SDK_DISABLED", "true")]).unwrap(), None);
        assert_eq!(parse(on, &[("OTEL_SDK_DISABLED", "TRUE")]).unwrap(), None);
        assert!(
            parse(on, &[("OTEL_SDK_DISABLED", "false")])
                .unwrap()
                .is_some()
        );
        assert_eq!(
            parse(on, &[("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
        assert_eq!(
            parse(on, &[("OTEL_TRACES_EXPORTER", "otlp, none")]).unwrap(),
            None
        );
        assert!(
            parse(on, &[("OTEL_TRACES_EXPORTER", "otlp")])
                .unwrap()
                .is_some()
        );
        let refused = refusal(on, &[("OTEL_TRACES_EXPORTER", "otlp,zipkin")]);
        assert!(refused.contains("OTEL_TRACES_EXPORTER=zipkin"), "{refused}");
    }

    #[test]
    fn only_grpc_is_spoken() {
        let on = Some("http://collector:4317");
        assert!(parse(on, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).is_ok());
        let refused = refusal(
            on,
            &[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")],
        );
        assert!(
            refused.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf"),
            "{refused}"
        );
    }

    #[test]
    fn the_scheme_decides_tls_and_a_bare_endpoint_is_tls_unless_insecure() {
        let c = config(Some("http://collector:4317"), &[]);
        assert_eq!(c.tls, None);
        let c = config(Some("https://collector:4317"), &[]);
        assert_eq!(c.tls, Some(Tls::SystemRoots));
        let c = config(Some("collector:4317"), &[]);
        assert_eq!(c.endpoint, "https://collector:4317");
        assert_eq!(c.tls, Some(Tls::SystemRoots));
        let c = config(
            Some("collector:4317"),
            &[("OTEL_EXPORTER_OTLP_INSECURE", "true")],
        );
        assert_eq!(c.endpoint, "http://collector:4317");
        assert_eq!(c.tls, None);
        let refused = refusal(Some("unix:///run/otel.sock"), &[]);
        assert!(refused.contains("unix://"), "{refused}");
    }

    #[test]
    fn a_ca_file_is_for_https_and_client_certificates_are_refused() {
        let vars = [("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/etc/otel/ca.pem")];
        let c = config(Some("https://collector:4317"), &vars);
        assert_eq!(
            c.tls,
            Some(Tls::CaFile {
                variable: "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE".to_owned(),
                path: "/etc/otel/ca.pem".into()
            })
        );
        let refused = refusal(Some("http://collector:4317"), &vars);
        assert!(
            refused.contains("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE is set")
                && refused.contains("plain text"),
            "{refused}"
        );
        let refused = refusal(
            Some("https://collector:4317"),
            &[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/otel/client.key")],
        );
        assert!(
            refused.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
            "{refused}"
        );
    }

    #[test]
    fn compression_is_gzip_or_none() {
        let on = Some("http://collector:4317");
        assert!(!config(on, &[]).gzip);
        assert!(config(on, &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]).gzip);
        assert!(!config(on, &[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")]).gzip);
        // The signal's own variable wins.
        assert!(
            !config(
                on,
                &[
                    ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
                ]
            )
            .gzip
        );
        let refused = refusal(on, &[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]);
        assert!(
            refused.contains("OTEL_EXPORTER_OTLP_COMPRESSION=zstd"),
            "{refused}"
        );
    }

    #[test]
    fn credentials_in_the_endpoint_are_refused_and_never_shown() {
        for endpoint in [
            "https://user:s3cret@collector:4317/otlp",
            "http://s3cret@collector:4317",
            "user:s3cret@collector:4317",
        ] {
            let refused = refusal(Some(endpoint), &[]);
            assert!(
                !refused.contains("s3cret") && refused.contains("OTEL_EXPORTER_OTLP_HEADERS"),
                "{refused}"
            );
        }
        let refused = refusal(
            None,
            &[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://user:s3cret@collector:4317",
            )],
        );
        assert!(refused.contains("https://collector:4317"), "{refused}");
        assert!(!refused.contains("s3cret"), "{refused}");
        assert_eq!(
            without_userinfo("user:s3cret@collector:4317"),
            "collector:4317"
        );
        assert_eq!(
            without_userinfo("http://token@collector"),
            "http://collector"
        );
        assert_eq!(
            without_userinfo("http://collector:4317/a@b"),
            "http://collector:4317/a@b"
        );
        assert_eq!(
            without_userinfo("http://collector:4317"),
            "http://collector:4317"
        );
        let refused = refusal(Some("ftp://user:s3cret@collector"), &[]);
        assert!(!refused.contains("s3cret"), "{refused}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("otlp-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let ca = |path| Tls::CaFile {
            variable: "OTEL_EXPORTER_OTLP_CERTIFICATE".to_owned(),
            path,
        };
        let refused = format!("{:#}", tls_config(&ca(empty)).unwrap_err());
        assert!(
            refused.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && refused.contains("empty.pem"),
            "{refused}"
        );
        let missing = dir.join("missing.pem");
        let refused = format!("{:#}", tls_config(&ca(missing)).unwrap_err());
        assert!(refused.contains("cannot read"), "{refused}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
