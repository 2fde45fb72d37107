//! Counts every gRPC error the API returns, by code and `ErrorInfo` reason
//! (`coordinator_refusals_total`), as the caller sees it: a tower layer outside the auth layer, so
//! refusals decided there (`UNAUTHENTICATED`, `RATE_LIMITED`, `FORBIDDEN`), by handlers
//! (everything `error.rs` maps) and by tonic itself (`UNIMPLEMENTED`) are all counted, in one
//! place. A reason that is not one of ours (`REASONS`, domain `payments.v1`) is counted as
//! `OTHER`. Errors tonic makes outside these layers are not seen here: a call whose client
//! deadline (`grpc-timeout`) passed is answered `CANCELLED` by tonic's own timeout, outside them,
//! and a connection whose TLS handshake fails never becomes a call. An error is read from the
//! response headers (a trailers-only answer: a refused unary call or stream) or from the
//! trailers at a stream's end (a watch stream ended `UNAVAILABLE`).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::HeaderMap;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic_types::StatusExt;

use super::Metrics;

/// `Server::builder().layer(CountErrorsLayer::new(metrics)).layer(AuthLayer…)`.
#[derive(Clone, Debug)]
pub struct CountErrorsLayer {
    metrics: Metrics,
}

impl CountErrorsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for CountErrorsLayer {
    type Service = CountErrors<S>;

    fn layer(&self, inner: S) -> CountErrors<S> {
        CountErrors {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`CountErrorsLayer`] wraps around the auth layer and the routes.
#[derive(Clone, Debug)]
pub struct CountErrors<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for CountErrors<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let metrics = self.metrics.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            count(&metrics, response.headers());
            let (parts, body) = response.into_parts();
            let body = body.inspect_frame(move |frame| {
                if let Some(trailers) = frame.trailers_ref() {
                    count(&metrics, trailers);
                }
            });
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// Counts the error `headers` (or trailers) carry, if any; `OK` and no status count nothing.
fn count(metrics: &Metrics, headers: &HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.code() == tonic::Code::Ok {
        return;
    }
    let details = status.get_error_details();
    // A reason of another domain is not one of ours, whatever it says.
    metrics.error_returned(
        status.code(),
        details.error_info().map(|info| {
            if info.domain == crate::error::ERROR_DOMAIN {
                info.reason.as_str()
            } else {
                ""
            }
        }),
    );
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, ServiceExt};

    use super::*;

    async fn answered(response: http::Response<Body>) -> String {
        let metrics = Metrics::new();
        let mut response = Some(response);
        let service = CountErrorsLayer::new(metrics.clone()).layer(tower::service_fn(
            move |_: http::Request<()>| {
                let response = response.take().unwrap_or_default();
                async move { Ok::<_, Infallible>(response) }
            },
        ));
        let answer = service.oneshot(http::Request::new(())).await.unwrap();
        // The body is read to its end, trailers included, as the server sends it.
        answer.into_body().collect().await.unwrap();
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &metrics.registry).unwrap();
        out
    }

    fn status(code: tonic::Code, reason: &str) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, "payments.v1", std::collections::HashMap::new());
        tonic::Status::with_error_details(code, "refused", details)
    }

    #[tokio::test]
    async fn a_refusal_in_the_headers_is_counted_with_its_reason() {
        let out = answered(status(tonic::Code::Aborted, "PAYMENT_IN_PROGRESS").into_http()).await;
        assert!(
            out.contains(
                "coordinator_refusals_total{code=\"ABORTED\",reason=\"PAYMENT_IN_PROGRESS\"} 1\n"
            ),
            "{out}"
        );
    }

    #[tokio::test]
    async fn an_error_ending_a_stream_is_counted_from_its_trailers() {
        let mut trailers = HeaderMap::new();
        status(tonic::Code::Unavailable, "STORE_UNAVAILABLE")
            .add_header(&mut trailers)
            .unwrap();
        let body = Body::new(Body::empty().with_trailers(async move { Some(Ok(trailers)) }));
        let out = answered(http::Response::new(body)).await;
        assert!(
            out.contains(
                "coordinator_refusals_total{code=\"UNAVAILABLE\",reason=\"STORE_UNAVAILABLE\"} 1\n"
            ),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_reason_of_another_domain_is_other() {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::new();
        details.set_error_info(
            "STORE_UNAVAILABLE",
            "elsewhere.example",
            std::collections::HashMap::new(),
        );
        let status = tonic::Status::with_error_details(tonic::Code::Unavailable, "no", details);
        let out = answered(status.into_http()).await;
        assert!(
            out.contains("coordinator_refusals_total{code=\"UNAVAILABLE\",reason=\"OTHER\"} 1\n"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_successful_answer_counts_nothing() {
        let mut trailers = HeaderMap::new();
        tonic::Status::ok("").add_header(&mut trailers).unwrap();
        let body = Body::new(Body::empty().with_trailers(async move { Some(Ok(trailers)) }));
        let out = answered(http::Response::new(body)).await;
        assert!(!out.contains("coordinator_refusals_total{"), "{out}");
    }
}
