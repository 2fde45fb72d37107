//! The HTTP client: one method per gateway operation, each returning a classified [`Reply`].
//!
//! Every request first waits for the client-side rate limiter. Answers that prove nothing was
//! done and that may pass (429, a connection that could not be established) are retried here with
//! the same idempotency key, a jittered exponential backoff and at least the gateway's
//! `Retry-After`, a bounded number of times. Anything else is returned at once: in particular a
//! timeout, a broken connection or a 5xx is never retried here; the coordinator resolves it
//! (lookup, same-key replay inside the idempotency window, or cancel).

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use governor::DefaultDirectRateLimiter;
use http::{HeaderValue, Method, StatusCode, header};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::{
    config::{Capabilities, ConfigError, Flow, GatewayConfig},
    keys::IdempotencyKey,
    model::{PaymentIntent, Refund},
    outcome::{Outcome, Reply, UnknownReason, classify},
    trace_context,
};

/// Larger answers are not read (a PaymentIntent is a few kilobytes).
const MAX_BODY_BYTES: usize = 1024 * 1024;
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// `POST /v1/payment_intents`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateIntent {
    /// Minor units (cents): never a float.
    pub amount_minor: i64,
    /// ISO 4217; sent lower-case.
    pub currency: String,
    /// A gateway token such as `pm_card_visa`, never a card number.
    pub payment_method: String,
    /// `true`: create and charge in one call (`one_shot`); `false`: create only (`two_phase`).
    pub confirm: bool,
    /// Sent as `metadata[order_id]`: what lets an operator or the recovery worker find the intent.
    pub order_id: String,
    /// Sent as `metadata[attempt]`.
    pub attempt: u32,
    pub description: Option<String>,
}

/// A cheap-to-clone handle on the gateway.
#[derive(Clone)]
pub struct GatewayClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: reqwest::Url,
    /// `Bearer <key>`, marked sensitive so that HTTP-level debug output hides it.
    authorization: HeaderValue,
    limiter: Option<DefaultDirectRateLimiter>,
    config: GatewayConfig,
}

impl fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Why a try is retried.
#[derive(Clone, Copy, Debug)]
enum Retry {
    /// 429: wait at least this long.
    Throttled(Duration),
    /// The connection could not be established: nothing was sent.
    NotConnected,
}

/// One HTTP request's result.
struct Try<T> {
    reply: Reply<T>,
    retry: Option<Retry>,
}

impl GatewayClient {
    pub fn new(config: GatewayConfig) -> Result<Self, ConfigError> {
        let base = reqwest::Url::parse(&config.base_url).map_err(|err| ConfigError::BaseUrl {
            url: config.base_url.clone(),
            reason: err.to_string(),
        })?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(ConfigError::BaseUrl {
                url: config.base_url.clone(),
                reason: "expected an http:// or https:// URL".to_owned(),
            });
        }
        if config.api_key.expose().is_empty() {
            return Err(ConfigError::ApiKey);
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose()))
                .map_err(|_| ConfigError::ApiKey)?;
        authorization.set_sensitive(true);
        if config.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        let limiter = match config.rate_limit {
            None => None,
            Some(limit) => Some(governor::RateLimiter::direct(
                limit.quota().ok_or(ConfigError::RateLimit)?,
            )),
        };
        let connect_timeout = if config.connect_timeout.is_zero() {
            config.timeout
        } else {
            config.connect_timeout.min(config.timeout)
        };
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(connect_timeout)
            // The gateway does not redirect; following one with a POST would be a guess.
            .redirect(reqwest::redirect::Policy::none())
            // Every retry is decided here, with the classification above, never by reqwest.
            .retry(reqwest::retry::never())
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!(
                "payment-coordinator-gateway-client/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(ConfigError::Http)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                authorization,
                limiter,
                config,
            }),
        })
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    pub fn flow(&self) -> Flow {
        self.inner.config.flow
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.config.capabilities
    }

    /// `POST /v1/payment_intents`: create an intent (and with `confirm`, charge it).
    pub async fn create_intent(
        &self,
        req: &CreateIntent,
        key: &IdempotencyKey,
    ) -> Reply<PaymentIntent> {
        let span = tracing::info_span!(
            "gateway.create_intent",
            idempotency_key = %key,
            order_id = %req.order_id,
            attempt = req.attempt,
            amount_minor = req.amount_minor,
            confirm = req.confirm,
            intent_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let mut form = vec![
            ("amount".to_owned(), req.amount_minor.to_string()),
            ("currency".to_owned(), req.currency.to_ascii_lowercase()),
            ("payment_method".to_owned(), req.payment_method.clone()),
            ("confirm".to_owned(), req.confirm.to_string()),
            ("metadata[order_id]".to_owned(), req.order_id.clone()),
            ("metadata[attempt]".to_owned(), req.attempt.to_string()),
        ];
        if let Some(description) = &req.description {
            form.push(("description".to_owned(), description.clone()));
        }
        for kind in &self.inner.config.payment_method_types {
            form.push(("payment_method_types[]".to_owned(), kind.clone()));
        }
        self.call(
            Method::POST,
            "/v1/payment_intents",
            &["v1", "payment_intents"],
            Some(form),
            Some(key),
        )
        .instrument(span.clone())
        .await
        .traced(&span)
    }

    /// `POST /v1/payment_intents/{id}/confirm`: charge a `requires_confirmation` intent.
    pub async fn confirm_intent(
        &self,
        intent_id: &str,
        key: &IdempotencyKey,
    ) -> Reply<PaymentIntent> {
        let span = tracing::info_span!(
            "gateway.confirm_intent",
            idempotency_key = %key,
            attempt = key.attempt(),
            intent_id = %intent_id,
            outcome = tracing::field::Empty,
        );
        self.call(
            Method::POST,
            "/v1/payment_intents/{id}/confirm",
            &["v1", "payment_intents", intent_id, "confirm"],
            Some(Vec::new()),
            Some(key),
        )
        .instrument(span.clone())
        .await
        .traced(&span)
    }

    /// `GET /v1/payment_intents/{id}`: the intent's current state.
    pub async fn get_intent(&self, intent_id: &str) -> Reply<PaymentIntent> {
        let span = tracing::info_span!(
            "gateway.get_intent",
            intent_id = %intent_id,
            outcome = tracing::field::Empty,
        );
        self.call(
            Method::GET,
            "/v1/payment_intents/{id}",
            &["v1", "payment_intents", intent_id],
            None,
            None,
        )
        .instrument(span.clone())
        .await
        .traced(&span)
    }

    /// `POST /v1/payment_intents/{id}/cancel`: void an intent that has not succeeded.
    pub async fn cancel_intent(
        &self,
        intent_id: &str,
        key: &IdempotencyKey,
    ) -> Reply<PaymentIntent> {
        let span = tracing::info_span!(
            "gateway.cancel_intent",
            idempotency_key = %key,
            attempt = key.attempt(),
            intent_id = %intent_id,
            outcome = tracing::field::Empty,
        );
        self.call(
            Method::POST,
            "/v1/payment_intents/{id}/cancel",
            &["v1", "payment_intents", intent_id, "cancel"],
            Some(Vec::new()),
            Some(key),
        )
        .instrument(span.clone())
        .await
        .traced(&span)
    }

    /// `POST /v1/refunds`: refund `amount_minor` (or, with `None`, all not yet refunded) of a
    /// succeeded intent.
    pub async fn create_refund(
        &self,
        intent_id: &str,
        amount_minor: Option<i64>,
        key: &IdempotencyKey,
    ) -> Reply<Refund> {
        let span = tracing::info_span!(
            "gateway.create_refund",
            idempotency_key = %key,
            intent_id = %intent_id,
            amount_minor = amount_minor,
            refund_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let mut form = vec![("payment_intent".to_owned(), intent_id.to_owned())];
        if let Some(amount) = amount_minor {
            form.push(("amount".to_owned(), amount.to_string()));
        }
        self.call(
            Method::POST,
            "/v1/refunds",
            &["v1", "refunds"],
            Some(form),
            Some(key),
        )
        .instrument(span.clone())
        .await
        .traced(&span)
    }

    /// One operation: tries, bounded retries of what proves nothing was done, classification.
    /// `route` names the path with its ids left out (the HTTP spans' name).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        route: &'static str,
        path: &[&str],
        form: Option<Vec<(String, String)>>,
        key: Option<&IdempotencyKey>,
    ) -> Reply<T> {
        let mut url = self.inner.base.clone();
        match url.path_segments_mut() {
            // Each segment is percent-encoded: an id can never reach another path.
            Ok(mut segments) => {
                segments.pop_if_empty().extend(path);
            }
            Err(()) => {
                return Reply::single(Outcome::NotSent {
                    detail: "the gateway base URL cannot take a path".to_owned(),
                });
            }
        }

        let policy = self.inner.config.retry;
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(policy.min_backoff)
            .with_max_delay(policy.max_backoff)
            .with_max_times(usize::try_from(policy.max_retries).unwrap_or(usize::MAX));
        if policy.jitter {
            backoff = backoff.with_jitter();
        }

        let tries = AtomicU32::new(0);
        let retried = Mutex::new(Vec::new());
        let result = (|| async {
            let n = tries.fetch_add(1, Ordering::Relaxed) + 1;
            let attempt = self
                .send_once::<T>(method.clone(), route, &url, form.as_deref(), key, n)
                .await;
            match attempt.retry {
                Some(_) => {
                    tracing::debug!(
                        try_number = n,
                        outcome = attempt.reply.outcome.kind(),
                        "gateway try may be retried"
                    );
                    Err(attempt)
                }
                None => Ok(attempt.reply),
            }
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .adjust(|attempt: &Try<T>, next: Option<Duration>| {
            let next = next?;
            match attempt.retry {
                Some(Retry::Throttled(after)) if after > policy.max_retry_after => None,
                Some(Retry::Throttled(after)) => Some(next.max(jittered(after, policy.jitter))),
                _ => Some(next),
            }
        })
        .notify(|attempt: &Try<T>, wait: Duration| {
            let line = format!(
                "{}: {}; retried after {} ms",
                attempt.reply.outcome.kind(),
                describe_retry(&attempt.reply.outcome),
                wait.as_millis()
            );
            tracing::warn!(wait_ms = wait.as_millis() as u64, "gateway {line}");
            retried
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(line);
        })
        .await;

        let mut reply = match result {
            Ok(reply) => reply,
            Err(attempt) => attempt.reply,
        };
        reply.tries = tries.load(Ordering::Relaxed);
        reply.retried = retried
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reply
    }

    /// One HTTP request (try number `try_number` of its operation), after the rate limiter
    /// allows it, in its own client span whose trace context the request carries.
    async fn send_once<T: DeserializeOwned>(
        &self,
        method: Method,
        route: &'static str,
        url: &reqwest::Url,
        form: Option<&[(String, String)]>,
        key: Option<&IdempotencyKey>,
        try_number: u32,
    ) -> Try<T> {
        if let Some(limiter) = &self.inner.limiter {
            limiter.until_ready().await;
        }
        let span = http_span(
            &method,
            route,
            url,
            try_number,
            key.and_then(IdempotencyKey::attempt),
        );
        self.exchange(method, url, form, key, &span)
            .instrument(span.clone())
            .await
    }

    /// The request and its answer, recorded on `span` (status, or why none came).
    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &reqwest::Url,
        form: Option<&[(String, String)]>,
        key: Option<&IdempotencyKey>,
        span: &tracing::Span,
    ) -> Try<T> {
        let mut request = self
            .inner
            .http
            .request(method, url.clone())
            .headers(trace_context::headers(span))
            .header(header::AUTHORIZATION, self.inner.authorization.clone())
            .header(header::ACCEPT, "application/json");
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_KEY, key.as_str());
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                let failed = transport_failure(&err);
                span.record("error.type", failed.reply.outcome.kind());
                span.record("otel.status_code", "ERROR");
                return failed;
            }
        };
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        let headers = response.headers().clone();
        let default_retry_after = self.inner.config.retry.default_retry_after;
        let reply = match read_body(response).await {
            Ok(body) => classify::<T>(status, &headers, &body, default_retry_after),
            Err(failure) => {
                // The status arrived, the body did not. Where the body decides (2xx, 402), the
                // outcome is unknown; elsewhere the status alone decides.
                if status.is_success() || status == StatusCode::PAYMENT_REQUIRED {
                    let mut reply = classify::<T>(status, &headers, b"", default_retry_after);
                    reply.outcome = Outcome::Unknown {
                        reason: failure.reason,
                        detail: format!("HTTP {status}, then {}", failure.detail),
                    };
                    reply
                } else {
                    classify::<T>(status, &headers, b"", default_retry_after)
                }
            }
        };
        let retry = match reply.outcome {
            Outcome::RetryLater { after } => Some(Retry::Throttled(after)),
            _ => None,
        };
        Try { reply, retry }
    }
}

/// The OpenTelemetry client span of one HTTP request (semantic conventions for HTTP clients),
/// e.g. `POST /v1/payment_intents/{id}/confirm`, with the payment attempt its idempotency key
/// belongs to. The URL is shown without credentials, and no header is recorded (the
/// Authorization header holds the gateway's secret key).
fn http_span(
    method: &Method,
    route: &str,
    url: &reqwest::Url,
    try_number: u32,
    attempt: Option<u32>,
) -> tracing::Span {
    let span = tracing::info_span!(
        // Exported only: the coordinator keeps this target out of its log lines.
        target: "gateway_client::otel",
        "gateway.http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        http.request.resend_count = try_number.saturating_sub(1),
        http.response.status_code = tracing::field::Empty,
        url.full = tracing::field::Empty,
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default(),
        error.type = tracing::field::Empty,
        attempt = attempt,
    );
    // The URL is copied (to strip credentials) only for a span that is exported: without traces
    // this span is disabled, and a request costs no copy.
    if !span.is_disabled() {
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        span.record("url.full", tracing::field::display(&shown));
    }
    span
}

/// Waiting a little more than `Retry-After` keeps clients that were throttled together apart.
fn jittered(after: Duration, jitter: bool) -> Duration {
    if !jitter {
        return after;
    }
    let fraction: f64 = rand::random::<f64>() * 0.1;
    after.saturating_add(after.mul_f64(fraction))
}

fn describe_retry<T>(outcome: &Outcome<T>) -> String {
    match outcome {
        Outcome::RetryLater { after } => format!("HTTP 429, Retry-After {} ms", after.as_millis()),
        Outcome::NotSent { detail } => detail.clone(),
        other => other.kind().to_owned(),
    }
}

/// A request that produced no HTTP answer.
fn transport_failure<T>(err: &reqwest::Error) -> Try<T> {
    let detail = error_chain(err);
    if err.is_builder() {
        // Refused locally (e.g. a header value that is not allowed): nothing left this process,
        // and trying again would fail the same way.
        return Try {
            reply: Reply::single(Outcome::NotSent { detail }),
            retry: None,
        };
    }
    if err.is_connect() {
        // The TCP (and TLS) connection was never established, so no byte of the request reached
        // the gateway — even when this was a connect timeout. Safe to try again with the same key.
        return Try {
            reply: Reply::single(Outcome::NotSent { detail }),
            retry: Some(Retry::NotConnected),
        };
    }
    let reason = if err.is_timeout() {
        UnknownReason::Timeout
    } else {
        UnknownReason::Connection
    };
    Try {
        reply: Reply::single(Outcome::Unknown { reason, detail }),
        retry: None,
    }
}

struct BodyFailure {
    reason: UnknownReason,
    detail: String,
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, BodyFailure> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(BodyFailure {
                        reason: UnknownReason::UnreadableAnswer,
                        detail: format!("an answer larger than {MAX_BODY_BYTES} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(err) => {
                let reason = if err.is_timeout() {
                    UnknownReason::Timeout
                } else {
                    UnknownReason::Connection
                };
                return Err(BodyFailure {
                    reason,
                    detail: format!("the body failed: {}", error_chain(&err)),
                });
            }
        }
    }
}

/// The error and its causes on one line (reqwest's own message omits the cause).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

trait Traced {
    fn traced(self, span: &tracing::Span) -> Self;
}

impl Traced for Reply<PaymentIntent> {
    fn traced(self, span: &tracing::Span) -> Self {
        // Only a create learns the intent id; the other calls' spans carry it from the start
        // (recording it again would print it twice).
        if let Outcome::Succeeded(intent) = &self.outcome
            && span
                .metadata()
                .is_some_and(|m| m.name() == "gateway.create_intent")
        {
            span.record("intent_id", intent.id.as_str());
        }
        log_reply(span, &self);
        self
    }
}

impl Traced for Reply<Refund> {
    fn traced(self, span: &tracing::Span) -> Self {
        if let Outcome::Succeeded(refund) = &self.outcome {
            span.record("refund_id", refund.id.as_str());
        }
        log_reply(span, &self);
        self
    }
}

fn log_reply<T>(span: &tracing::Span, reply: &Reply<T>) {
    span.record("outcome", reply.outcome.kind());
    let _entered = span.enter();
    match &reply.outcome {
        // A success is the common case and the attempt's own lines say what came of it: logged
        // at debug so that each payment costs two info lines, not four.
        Outcome::Succeeded(_) => tracing::debug!(
            replayed = reply.replayed,
            tries = reply.tries,
            request_id = reply.request_id.as_deref(),
            "gateway call succeeded"
        ),
        Outcome::Declined {
            decline_code,
            intent_id,
            ..
        } => tracing::info!(
            decline_code = %decline_code,
            declined_intent = intent_id.as_deref(),
            replayed = reply.replayed,
            "gateway declined the card"
        ),
        Outcome::Unknown { reason, detail } => tracing::warn!(
            reason = reason.as_str(),
            detail = %detail,
            request_id = reply.request_id.as_deref(),
            "gateway outcome unknown"
        ),
        Outcome::RetryLater { after } => tracing::warn!(
            after_ms = after.as_millis() as u64,
            tries = reply.tries,
            "gateway still throttling"
        ),
        Outcome::Rejected {
            status,
            error_type,
            code,
            message,
            ..
        } => tracing::warn!(
            status = *status,
            error_type = error_type.as_deref(),
            code = code.as_deref(),
            message = %message,
            "gateway rejected the request"
        ),
        Outcome::NotSent { detail } => tracing::warn!(
            detail = %detail,
            tries = reply.tries,
            "gateway request could not be sent"
        ),
    }
}

#[cfg(test)]
mod tests {
    //! The client against a canned HTTP/1.1 server: what goes on the wire, and which answers are
    //! retried. The real simulator is exercised by `tests/tests/gateway_client.rs`.

    use std::{collections::VecDeque, net::SocketAddr, sync::Arc};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::Mutex as AsyncMutex,
    };

    use super::*;
    use crate::{RetryPolicy, config::ApiKey};

    const INTENT: &str = r#"{"id":"pi_1","status":"requires_confirmation","amount":1999,"currency":"eur","metadata":{"order_id":"ord-1","attempt":"1"}}"#;

    #[derive(Clone)]
    struct Canned {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: &'static str,
    }

    fn canned(status: u16, headers: &[(&'static str, &'static str)], body: &'static str) -> Canned {
        Canned {
            status,
            headers: headers.to_vec(),
            body,
        }
    }

    /// Answers each request with the next canned answer (the last one repeats) and keeps the raw
    /// requests.
    struct Server {
        addr: SocketAddr,
        seen: Arc<AsyncMutex<Vec<String>>>,
    }

    async fn serve(answers: Vec<Canned>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(AsyncMutex::new(Vec::new()));
        let queue = Arc::new(AsyncMutex::new(VecDeque::from(answers)));
        let seen_by_server = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen_by_server.clone();
                let queue = queue.clone();
                tokio::spawn(async move {
                    let request = read_request(&mut stream).await;
                    seen.lock().await.push(request);
                    let answer = {
                        let mut queue = queue.lock().await;
                        if queue.len() > 1 {
                            queue.pop_front()
                        } else {
                            queue.front().cloned()
                        }
                    };
                    let Some(answer) = answer else { return };
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                        answer.status,
                        answer.body.len()
                    );
                    for (name, value) in &answer.headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str("\r\n");
                    head.push_str(answer.body);
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Server { addr, seen }
    }

    async fn read_request(stream: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())
                            .flatten()
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&buf).to_string()
    }

    fn fast_retries(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            jitter: true,
            default_retry_after: Duration::ZERO,
            max_retry_after: Duration::from_secs(10),
        }
    }

    fn client(addr: SocketAddr, retries: u32) -> GatewayClient {
        let config = GatewayConfig::new(format!("http://{addr}"), "sk_test_supersecret")
            .with_timeout(Duration::from_secs(5))
            .with_retry(fast_retries(retries));
        GatewayClient::new(config).expect("client")
    }

    fn create() -> CreateIntent {
        CreateIntent {
            amount_minor: 1999,
            currency: "EUR".to_owned(),
            payment_method: "pm_card_visa".to_owned(),
            confirm: false,
            order_id: "ord-1".to_owned(),
            attempt: 1,
            description: Some("two items".to_owned()),
        }
    }

    #[tokio::test]
    async fn create_sends_the_form_key_and_credentials() {
        let server = serve(vec![canned(200, &[("request-id", "req_9")], INTENT)]).await;
        let client = client(server.addr, 0);
        let key = IdempotencyKey::create("ord-1", 1);
        let reply = client.create_intent(&create(), &key).await;
        assert_eq!(reply.tries, 1);
        assert_eq!(reply.request_id.as_deref(), Some("req_9"));
        let intent = reply.outcome.succeeded().expect("succeeded");
        assert_eq!(intent.id, "pi_1");

        let seen = server.seen.lock().await;
        assert_eq!(seen.len(), 1);
        let request = &seen[0];
        assert!(
            request.starts_with("POST /v1/payment_intents HTTP/1.1"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        assert!(
            lower.contains("authorization: bearer sk_test_supersecret"),
            "{request}"
        );
        assert!(
            lower.contains("idempotency-key: pay:ord-1:1:create"),
            "{request}"
        );
        assert!(
            lower.contains("content-type: application/x-www-form-urlencoded"),
            "{request}"
        );
        let body = request.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(
            body,
            "amount=1999&currency=eur&payment_method=pm_card_visa&confirm=false\
             &metadata%5Border_id%5D=ord-1&metadata%5Battempt%5D=1&description=two+items"
        );

        assert!(!format!("{client:?}").contains("supersecret"));
    }

    #[tokio::test]
    async fn ids_are_path_segments_and_get_has_no_key() {
        let server = serve(vec![canned(404, &[], r#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such payment_intent"}}"#)]).await;
        let client = client(server.addr, 0);
        let reply = client.get_intent("pi_1/confirm?x=1").await;
        assert_eq!(reply.outcome.rejected_code(), Some("resource_missing"));
        let seen = server.seen.lock().await;
        assert!(
            seen[0].starts_with("GET /v1/payment_intents/pi_1%2Fconfirm%3Fx=1 HTTP/1.1"),
            "{}",
            seen[0]
        );
        assert!(!seen[0].to_ascii_lowercase().contains("idempotency-key"));
    }

    #[tokio::test]
    async fn throttling_is_retried_with_the_same_key() {
        let server = serve(vec![
            canned(
                429,
                &[("retry-after", "0")],
                r#"{"error":{"type":"rate_limit_error"}}"#,
            ),
            canned(200, &[], INTENT),
        ])
        .await;
        let client = client(server.addr, 3);
        let key = IdempotencyKey::confirm("ord-1", 1);
        let reply = client.confirm_intent("pi_1", &key).await;
        assert!(reply.outcome.is_succeeded(), "{reply:?}");
        assert_eq!(reply.tries, 2);
        assert_eq!(reply.retried.len(), 1, "{:?}", reply.retried);
        let seen = server.seen.lock().await;
        assert_eq!(seen.len(), 2);
        for request in seen.iter() {
            assert!(request.starts_with("POST /v1/payment_intents/pi_1/confirm "));
            assert!(
                request
                    .to_ascii_lowercase()
                    .contains("idempotency-key: pay:ord-1:1:confirm")
            );
        }
    }

    #[tokio::test]
    async fn throttling_ends_in_retry_later_when_retries_run_out() {
        let server = serve(vec![canned(429, &[("retry-after", "0")], "")]).await;
        let reply = client(server.addr, 2)
            .cancel_intent("pi_1", &IdempotencyKey::cancel("ord-1", 1))
            .await;
        assert_eq!(
            reply.outcome,
            Outcome::RetryLater {
                after: Duration::ZERO
            }
        );
        assert_eq!(reply.tries, 3);
        assert_eq!(server.seen.lock().await.len(), 3);
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_policy_is_returned_at_once() {
        let server = serve(vec![canned(429, &[("retry-after", "3600")], "")]).await;
        let reply = client(server.addr, 5)
            .create_refund("pi_1", Some(5), &IdempotencyKey::refund("ord-1", 1))
            .await;
        assert_eq!(
            reply.outcome,
            Outcome::RetryLater {
                after: Duration::from_secs(3600)
            }
        );
        assert_eq!(reply.tries, 1);
    }

    #[tokio::test]
    async fn server_errors_and_conflicts_are_never_retried() {
        for (status, reason) in [
            (500, UnknownReason::ServerError(500)),
            (503, UnknownReason::ServerError(503)),
            (409, UnknownReason::Conflict),
        ] {
            let server = serve(vec![canned(
                status,
                &[],
                r#"{"error":{"type":"api_error"}}"#,
            )])
            .await;
            let reply = client(server.addr, 5)
                .create_intent(&create(), &IdempotencyKey::create("ord-1", 1))
                .await;
            assert!(
                matches!(reply.outcome, Outcome::Unknown { reason: r, .. } if r == reason),
                "{status}: {reply:?}"
            );
            assert_eq!(reply.tries, 1);
            assert_eq!(server.seen.lock().await.len(), 1);
        }
    }

    #[tokio::test]
    async fn refused_connections_are_not_sent_after_bounded_retries() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let reply = client(addr, 2)
            .create_intent(&create(), &IdempotencyKey::create("ord-1", 1))
            .await;
        assert!(
            matches!(reply.outcome, Outcome::NotSent { .. }),
            "{reply:?}"
        );
        assert_eq!(reply.tries, 3);
        assert_eq!(reply.retried.len(), 2);
    }

    #[tokio::test]
    async fn a_hanging_gateway_is_an_unknown_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accept and read, never answer.
        let holder = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let config = GatewayConfig::new(format!("http://{addr}"), "sk_test_x")
            .with_timeout(Duration::from_millis(200))
            .with_retry(fast_retries(3));
        let client = GatewayClient::new(config).expect("client");
        let reply = client
            .create_intent(&create(), &IdempotencyKey::create("ord-1", 1))
            .await;
        assert!(
            matches!(
                reply.outcome,
                Outcome::Unknown {
                    reason: UnknownReason::Timeout,
                    ..
                }
            ),
            "{reply:?}"
        );
        assert_eq!(reply.tries, 1);
        holder.abort();
    }

    /// Every span and event, at every level, with the key in a header and the config in Debug.
    #[tokio::test(flavor = "current_thread")]
    async fn traces_carry_the_key_and_intent_but_never_the_secret() {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_writer(move || writer.clone())
            .finish();

        let server = serve(vec![
            canned(200, &[], INTENT),
            canned(429, &[("retry-after", "0")], ""),
            canned(200, &[], INTENT),
        ])
        .await;
        let client = client(server.addr, 2);
        // Tests run in parallel threads of one process, and a callsite registered on another
        // thread while no subscriber of ours existed caches "never interested". So every
        // callsite of the call is registered first (a call made before our subscriber, logged
        // nowhere), then the interest of all of them is recomputed with ours in place: a
        // registration racing with our rebuild can no longer hide a span.
        let _ = client
            .create_intent(&create(), &IdempotencyKey::create("ord-0", 1))
            .await;
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();
        tracing::info!(?client, "built");
        let reply = client
            .create_intent(&create(), &IdempotencyKey::create("ord-1", 1))
            .await;
        assert!(reply.outcome.is_succeeded());

        let logged = String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(|p| p.into_inner()))
            .to_string();
        assert!(logged.contains("gateway.create_intent"), "{logged}");
        assert!(logged.contains("pay:ord-1:1:create"), "{logged}");
        assert!(logged.contains("pi_1"), "{logged}");
        assert!(!logged.contains("supersecret"), "{logged}");
    }

    #[test]
    fn bad_configurations_are_refused() {
        let bad_url = GatewayClient::new(GatewayConfig::new("not a url", "sk"));
        assert!(matches!(bad_url, Err(ConfigError::BaseUrl { .. })));
        let ftp = GatewayClient::new(GatewayConfig::new("ftp://host", "sk"));
        assert!(matches!(ftp, Err(ConfigError::BaseUrl { .. })));
        let empty = GatewayClient::new(GatewayConfig::new("http://h", ""));
        assert!(matches!(empty, Err(ConfigError::ApiKey)));
        let newline = GatewayClient::new(GatewayConfig::new("http://h", ApiKey::new("sk\nx")));
        assert!(matches!(newline, Err(ConfigError::ApiKey)));
        let zero =
            GatewayClient::new(GatewayConfig::new("http://h", "sk").with_timeout(Duration::ZERO));
        assert!(matches!(zero, Err(ConfigError::Timeout)));
        let rate = GatewayClient::new(
            GatewayConfig::new("http://h", "sk")
                .with_rate_limit(Some(crate::RateLimit::one_per(Duration::ZERO))),
        );
        assert!(matches!(rate, Err(ConfigError::RateLimit)));
    }

    #[test]
    fn operations_are_send_and_the_client_is_shareable() {
        fn send<T: Send>(_: &T) {}
        fn share<T: Send + Sync + Clone + 'static>() {}
        share::<GatewayClient>();
        let Ok(client) = GatewayClient::new(GatewayConfig::new("http://127.0.0.1:9", "sk")) else {
            panic!("client");
        };
        let req = create();
        let key = IdempotencyKey::create("o", 1);
        send(&client.create_intent(&req, &key));
        send(&client.confirm_intent("pi", &key));
        send(&client.get_intent("pi"));
        send(&client.cancel_intent("pi", &key));
        send(&client.create_refund("pi", None, &key));
    }
}
