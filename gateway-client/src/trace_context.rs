//! The W3C trace context (`traceparent`, `tracestate`) of every gateway request: the OpenTelemetry
//! context of the request's span, written by the globally installed propagator. The coordinator
//! installs one only when it exports traces; otherwise nothing is added.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::Injector;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The propagation headers for a request made inside `span` (empty without a propagator).
pub(crate) fn headers(span: &tracing::Span) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if span.is_disabled() {
        return headers;
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Carrier(&mut headers));
    });
    headers
}

struct Carrier<'a>(&'a mut HeaderMap);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A propagator only writes valid names and values; anything else is left out.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
