//! One span per RPC (OpenTelemetry kind `server`), the parent of everything the call does.
//!
//! Its parent is the caller's span when the call's metadata carries a W3C `traceparent` (and
//! `tracestate`), so a caller's trace continues through this replica, its PostgreSQL
//! transactions and its gateway calls. Health checks and reflection get no span: probes every
//! few seconds would bury the payments under one-span traces.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use opentelemetry::propagation::Extractor;
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Calls under these prefixes are not traced.
const UNTRACED: [&str; 2] = ["/grpc.health.", "/grpc.reflection."];

/// Wraps the routes (outside authentication, so that refusals are traced too).
#[derive(Clone, Debug)]
pub struct RpcSpanLayer {
    replica: String,
}

impl RpcSpanLayer {
    pub fn new(replica: &str) -> Self {
        Self {
            replica: replica.to_owned(),
        }
    }
}

impl<S> tower::Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> RpcSpan<S> {
        RpcSpan {
            inner,
            replica: self.replica.clone(),
        }
    }
}

/// The service [`RpcSpanLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub struct RpcSpan<S> {
    inner: S,
    replica: String,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcSpan<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if UNTRACED.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(self.inner.call(request));
        }
        let span = rpc_span(path, &self.replica);
        if !span.is_disabled() {
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&Metadata(request.headers()))
            });
            // No `traceparent`: an empty context, and the RPC starts a new trace.
            let _ = span.set_parent(parent);
        }
        let answer = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let answer = answer.await;
                record_status(&tracing::Span::current(), answer.as_ref().ok());
                answer
            }
            .instrument(span),
        )
    }
}

/// `/payments.v1.PaymentCoordinator/ProcessPayment` → a span named
/// `payments.v1.PaymentCoordinator/ProcessPayment` with `rpc.service` and `rpc.method`.
fn rpc_span(path: &str, replica: &str) -> tracing::Span {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    tracing::info_span!(
        target: super::TRACE_ONLY,
        "rpc",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        replica = replica,
    )
}

/// The gRPC status of an answer that carries it in its headers (every refusal and error answered
/// before a message: tonic sends those trailers-only); otherwise the call went on normally (`OK`;
/// a stream that fails later says so in its trailers, which this layer does not see).
fn record_status<B>(span: &tracing::Span, answer: Option<&http::Response<B>>) {
    let code = match answer {
        Some(response) => response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0),
        // The service itself failed (no gRPC answer at all).
        None => tonic::Code::Unknown as i32,
    };
    span.record("rpc.grpc.status_code", code);
    // The server-side errors of OpenTelemetry's gRPC conventions: the caller's mistakes
    // (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION…) are answers, not failures.
    let failed = matches!(
        tonic::Code::from_i32(code),
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    );
    if failed {
        span.record("otel.status_code", "ERROR");
    }
}

/// gRPC metadata (HTTP/2 headers) as a propagation carrier.
struct Metadata<'a>(&'a http::HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
