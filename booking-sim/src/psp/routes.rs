//! HTTP routes: `/v1` (the gateway, authenticated, faultable, idempotent) and `/_sim` (the
//! simulator's own controls, no auth).
//!
//! Every `/v1` call goes through one pipeline, in this order:
//! count the call → authenticate → draw the fault → (429 / 500-before stop here) → validate
//! (400s stop here; never saved) → claim the idempotency key (replay / 400 / 409 stop here) →
//! latency, or hang → execute and save the answer under the key, atomically → post-processing
//! faults (slow answer, 500-after, dropped connection) → answer.

use std::future::pending;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::SimConfig;
use super::Without;
use super::clock::{Clock, unix_secs};
use super::errors::ApiError;
use super::faults::{FaultConfig, FaultKind, Faults};
use super::idempotency::{Begin, Claim, IdempotencyStore};
use super::params::Params;
use super::reply::Reply;
use super::requests::{RequestLog as Received, SimRequest};
use super::server::ConnHandle;
use super::state::{Command, Gateway, Op};

const MAX_BODY_BYTES: usize = 1 << 20;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Far enough for any test, small enough that `SystemTime + offset` stays representable.
const MAX_CLOCK_ADVANCE_SECS: u64 = 100 * 366 * 86_400;

/// The gateway's books and its idempotency store, under one lock so that applying a charge
/// and saving its answer under the key are one step.
struct Books {
    gateway: Gateway,
    keys: IdempotencyStore,
}

type SharedBooks = Arc<Mutex<Books>>;

fn lock(books: &SharedBooks) -> MutexGuard<'_, Books> {
    // Nothing panics while holding this lock; recover rather than propagate a poison.
    books
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) struct App {
    api_key: String,
    without: Without,
    clock: Clock,
    books: SharedBooks,
    faults: Faults,
    shutdown: CancellationToken,
    request_seq: AtomicU64,
    /// The last `/v1` requests, for `GET /_sim/requests`.
    received: Received,
}

impl App {
    pub(crate) fn new(config: SimConfig, clock: Clock, shutdown: CancellationToken) -> Self {
        Self {
            api_key: config.api_key,
            without: config.without,
            clock,
            books: Arc::new(Mutex::new(Books {
                gateway: Gateway::new(),
                keys: IdempotencyStore::new(config.idempotency_window),
            })),
            faults: Faults::new(config.seed),
            shutdown,
            request_seq: AtomicU64::new(0),
            received: Received::new(config.remembered_requests),
        }
    }
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/payment_intents", post(create))
        .route("/v1/payment_intents/{id}", get(retrieve))
        .route("/v1/payment_intents/{id}/confirm", post(confirm))
        .route("/v1/payment_intents/{id}/cancel", post(cancel))
        .route("/v1/refunds", post(refund))
        .route("/_sim/ledger", get(ledger))
        .route("/_sim/faults", get(get_faults).post(set_faults))
        .route("/_sim/clock", get(get_clock).post(advance_clock))
        .route("/_sim/requests", get(requests))
        .fallback(unrecognized)
        .method_not_allowed_fallback(unrecognized)
        .with_state(app)
}

// ---- /v1 handlers ----

type IdPath = Result<Path<String>, PathRejection>;

/// An id that cannot be decoded is an id that does not exist.
fn path_id(path: IdPath) -> Option<String> {
    Some(path.map(|Path(id)| id).unwrap_or_default())
}

async fn create(State(app): State<Arc<App>>, req: Request) -> Response {
    app.v1(Op::Create, None, req).await
}

async fn retrieve(State(app): State<Arc<App>>, id: IdPath, req: Request) -> Response {
    app.v1(Op::Get, path_id(id), req).await
}

async fn confirm(State(app): State<Arc<App>>, id: IdPath, req: Request) -> Response {
    app.v1(Op::Confirm, path_id(id), req).await
}

async fn cancel(State(app): State<Arc<App>>, id: IdPath, req: Request) -> Response {
    app.v1(Op::Cancel, path_id(id), req).await
}

async fn refund(State(app): State<Arc<App>>, req: Request) -> Response {
    app.v1(Op::Refund, None, req).await
}

async fn unrecognized(method: Method, uri: Uri) -> Response {
    ApiError::unrecognized_url(method.as_str(), uri.path())
        .reply()
        .into_response()
}

/// How a `/v1` call ends.
enum Answer {
    Reply {
        reply: Reply,
        replayed: bool,
        retry_after_secs: Option<u64>,
    },
    /// Close the connection without answering.
    Drop,
}

impl Answer {
    fn error(error: ApiError) -> Self {
        Answer::Reply {
            reply: error.reply(),
            replayed: false,
            retry_after_secs: None,
        }
    }
}

/// A validated request, ready to run.
struct Validated {
    command: Command,
    fingerprint: String,
    idempotency_key: Option<String>,
}

/// Holds a claimed idempotency key; dropping it unfinished (the request's future was dropped
/// because its client went away, or the server is shutting down) releases the key.
struct KeyGuard {
    books: SharedBooks,
    key: String,
    claim: Option<Claim>,
}

impl KeyGuard {
    fn complete(mut self, books: &mut Books, reply: Reply) {
        if let Some(claim) = self.claim.take() {
            books.keys.complete(&self.key, claim, reply);
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            lock(&self.books).keys.release(&self.key, claim);
        }
    }
}

/// What one `/v1` request log line says. Never holds the Authorization header.
struct RequestLog {
    op: Op,
    method: Method,
    path: String,
    idempotency_key: Option<String>,
    traceparent: Option<String>,
    fault: Option<FaultKind>,
}

impl RequestLog {
    fn new(op: Op, parts: &Parts) -> Self {
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.chars()
                        .take(MAX_IDEMPOTENCY_KEY_CHARS)
                        .collect::<String>()
                })
        };
        Self {
            op,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            idempotency_key: text("idempotency-key"),
            traceparent: text("traceparent"),
            fault: None,
        }
    }

    fn received(&self, status: Option<u16>, spent: Duration) -> SimRequest {
        SimRequest {
            op: self.op.as_str().to_owned(),
            method: self.method.to_string(),
            path: self.path.clone(),
            idempotency_key: self.idempotency_key.clone(),
            traceparent: self.traceparent.clone(),
            status,
            service_us: u64::try_from(spent.as_micros()).unwrap_or(u64::MAX),
        }
    }

    fn emit(&self, outcome: &str, status: Option<u16>) {
        info!(
            op = self.op.as_str(),
            method = %self.method,
            path = %self.path,
            idempotency_key = self.idempotency_key.as_deref().unwrap_or("-"),
            traceparent = self.traceparent.as_deref().unwrap_or("-"),
            fault = self.fault.map_or("-", FaultKind::as_str),
            status = status.unwrap_or(0),
            outcome,
            "psp request"
        );
    }
}

impl App {
    fn books(&self) -> MutexGuard<'_, Books> {
        lock(&self.books)
    }

    async fn v1(&self, op: Op, id: Option<String>, req: Request) -> Response {
        let arrived = Instant::now();
        // Counted on arrival, whatever becomes of the call: tests prove "exactly one gateway
        // call" with this, and wait on it to know a request has reached the gateway.
        self.books().gateway.record_call(op);
        let (parts, body) = req.into_parts();
        let conn = parts
            .extensions
            .get::<ConnHandle>()
            .cloned()
            .unwrap_or_default();
        let mut log = RequestLog::new(op, &parts);
        match self.run(op, id, &parts, body, &mut log).await {
            Answer::Reply {
                reply,
                replayed,
                retry_after_secs,
            } => {
                let outcome = if replayed { "replayed" } else { "answered" };
                log.emit(outcome, Some(reply.status.as_u16()));
                self.received
                    .remember(log.received(Some(reply.status.as_u16()), arrived.elapsed()));
                self.respond(reply, replayed, retry_after_secs)
            }
            Answer::Drop => {
                log.emit("connection dropped", None);
                self.received
                    .remember(log.received(None, arrived.elapsed()));
                conn.close();
                // The connection task drops this future together with the connection.
                pending().await
            }
        }
    }

    async fn run(
        &self,
        op: Op,
        id: Option<String>,
        parts: &Parts,
        body: Body,
        log: &mut RequestLog,
    ) -> Answer {
        if let Err(error) = self.authorize(&parts.headers) {
            return Answer::error(error);
        }

        let plan = self.faults.draw(op);
        log.fault = plan.fault;
        match plan.fault {
            Some(FaultKind::RateLimited) => {
                return Answer::Reply {
                    reply: ApiError::rate_limited().reply(),
                    replayed: false,
                    retry_after_secs: Some(plan.retry_after_secs),
                };
            }
            Some(FaultKind::Error500Before) => return Answer::error(ApiError::server_error()),
            _ => {}
        }

        let request = match self.validate(op, id, parts, body).await {
            Ok(request) => request,
            Err(error) => return Answer::error(error),
        };

        let mut guard = None;
        let mut replay = None;
        if let Some(key) = request.idempotency_key.as_deref()
            && !self.without.idempotency
        {
            let begin = self
                .books()
                .keys
                .begin(key, &request.fingerprint, self.clock.now());
            match begin {
                Begin::Claimed(claim) => {
                    guard = Some(KeyGuard {
                        books: Arc::clone(&self.books),
                        key: key.to_owned(),
                        claim: Some(claim),
                    });
                }
                Begin::Replay(reply) => replay = Some(reply),
                Begin::InUse => return Answer::error(ApiError::idempotency_key_in_use()),
                Begin::Mismatch => return Answer::error(ApiError::idempotency_mismatch(key)),
            }
        }

        // Latency and hangs happen while the key is held, before anything is processed.
        if !self.pause(plan.latency).await {
            return Answer::Drop;
        }
        if plan.fault == Some(FaultKind::Hang) {
            log.emit("hanging", None);
            self.shutdown.cancelled().await;
            return Answer::Drop;
        }

        let (reply, replayed) = match replay {
            Some(reply) => (reply, true),
            None => (self.execute(request, guard), false),
        };

        match plan.fault {
            Some(FaultKind::Timeout) => {
                log.emit(
                    "processed; holding the answer back",
                    Some(reply.status.as_u16()),
                );
                if !self.pause(plan.slow_answer).await {
                    return Answer::Drop;
                }
            }
            Some(FaultKind::Error500After) => return Answer::error(ApiError::server_error()),
            Some(FaultKind::DropAfterCharge) => return Answer::Drop,
            _ => {}
        }
        Answer::Reply {
            reply,
            replayed,
            retry_after_secs: None,
        }
    }

    /// Applies the command and saves its answer under the key in one critical section.
    fn execute(&self, request: Validated, guard: Option<KeyGuard>) -> Reply {
        let now = unix_secs(self.clock.now());
        let mut books = self.books();
        let reply = books
            .gateway
            .execute(request.command, now, request.idempotency_key.as_deref());
        if let Some(guard) = guard {
            guard.complete(&mut books, reply.clone());
        }
        reply
    }

    /// Waits `duration`; false if the server began shutting down meanwhile (then the
    /// connection is closed instead of answered).
    async fn pause(&self, duration: Duration) -> bool {
        if duration.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION).filter(|v| !v.is_empty()) else {
            return Err(ApiError::missing_api_key());
        };
        let offered = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
        match offered {
            Some(key) if constant_time_eq(key.as_bytes(), self.api_key.as_bytes()) => Ok(()),
            _ => Err(ApiError::invalid_api_key()),
        }
    }

    async fn validate(
        &self,
        op: Op,
        id: Option<String>,
        parts: &Parts,
        body: Body,
    ) -> Result<Validated, ApiError> {
        // Stripe ignores Idempotency-Key on GET.
        let idempotency_key = match op {
            Op::Get => None,
            _ => idempotency_key(&parts.headers)?,
        };
        let body = read_body(&parts.headers, body).await?;
        let params = Params::parse(parts.uri.query(), &body)?;
        let fingerprint = params.fingerprint(parts.method.as_str(), parts.uri.path());
        let command = params.command(op, id)?;
        match &command {
            Command::Get { id } if self.without.lookup => {
                return Err(ApiError::no_such_payment_intent(id));
            }
            Command::Cancel(_) if self.without.cancel => {
                return Err(ApiError::cancel_unsupported());
            }
            _ => {}
        }
        Ok(Validated {
            command,
            fingerprint,
            idempotency_key,
        })
    }

    fn respond(&self, reply: Reply, replayed: bool, retry_after_secs: Option<u64>) -> Response {
        let mut response = reply.into_response();
        let headers = response.headers_mut();
        let seq = self.request_seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(id) = HeaderValue::from_str(&format!("req_sim{seq:016}")) {
            headers.insert("request-id", id);
        }
        if replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        if let Some(secs) = retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.chars().count() <= MAX_IDEMPOTENCY_KEY_CHARS)
        .filter(|k| k.chars().all(|c| !c.is_control()))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid Idempotency-Key: it must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters."
            ))
        })?;
    Ok(Some(key.to_owned()))
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::bad_request("Invalid request: the body could not be read (at most 1 MiB).")
        })?;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !body.is_empty() && !form {
        return Err(ApiError::bad_request(
            "Invalid request: the Content-Type must be application/x-www-form-urlencoded.",
        ));
    }
    Ok(body)
}

// ---- /_sim handlers ----

async fn ledger(State(app): State<Arc<App>>) -> Response {
    let mut ledger = {
        let books = app.books();
        let mut ledger = books.gateway.ledger();
        ledger.idempotency = books.keys.stats();
        ledger
    };
    ledger.faults_injected = app.faults.injected();
    Reply::ok(&ledger).into_response()
}

async fn requests(State(app): State<Arc<App>>) -> Response {
    Reply::ok(&app.received.all()).into_response()
}

async fn get_faults(State(app): State<Arc<App>>) -> Response {
    Reply::ok(&app.faults.config()).into_response()
}

async fn set_faults(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let config: FaultConfig = match serde_json::from_slice(&body) {
        Ok(config) => config,
        Err(e) => {
            return ApiError::bad_request(format!("Invalid fault configuration: {e}"))
                .reply()
                .into_response();
        }
    };
    match app.faults.set(config) {
        Ok(config) => {
            info!(?config, "fault configuration replaced");
            Reply::ok(&config).into_response()
        }
        Err(e) => ApiError::bad_request(format!("Invalid fault configuration: {e}"))
            .reply()
            .into_response(),
    }
}

#[derive(Serialize)]
struct ClockView {
    now: u64,
    offset_secs: u64,
}

impl ClockView {
    fn of(clock: &Clock) -> Self {
        Self {
            now: clock.unix_secs(),
            offset_secs: clock.offset().as_secs(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceClock {
    advance_secs: u64,
}

async fn get_clock(State(app): State<Arc<App>>) -> Response {
    Reply::ok(&ClockView::of(&app.clock)).into_response()
}

async fn advance_clock(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let advance: AdvanceClock = match serde_json::from_slice(&body) {
        Ok(advance) => advance,
        Err(e) => {
            return ApiError::bad_request(format!("Invalid clock request: {e}"))
                .reply()
                .into_response();
        }
    };
    if advance.advance_secs > MAX_CLOCK_ADVANCE_SECS {
        return ApiError::bad_request(format!(
            "advance_secs must be at most {MAX_CLOCK_ADVANCE_SECS}"
        ))
        .reply()
        .into_response();
    }
    app.clock.advance(Duration::from_secs(advance.advance_secs));
    info!(advance_secs = advance.advance_secs, "clock advanced");
    Reply::ok(&ClockView::of(&app.clock)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(api_key: &str) -> App {
        let config = SimConfig {
            api_key: api_key.to_owned(),
            ..SimConfig::default()
        };
        App::new(config, Clock::system(), CancellationToken::new())
    }

    fn headers(auth: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(auth) {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn authorization() {
        let app = app("sk_test_x");
        assert!(app.authorize(&headers(b"Bearer sk_test_x")).is_ok());
        assert_eq!(
            app.authorize(&HeaderMap::new()),
            Err(ApiError::missing_api_key())
        );
        for bad in [
            &b"Bearer sk_test_y"[..],
            b"Bearer sk_test_xx",
            b"sk_test_x",
            b"Basic c2s=",
            b"Bearer ",
            b"\xff",
        ] {
            assert_eq!(
                app.authorize(&headers(bad)),
                Err(ApiError::invalid_api_key()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn idempotency_key_header_is_validated() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h), Ok(None));
        h.insert(
            "idempotency-key",
            HeaderValue::from_static("pay:o-1:1:create"),
        );
        assert_eq!(idempotency_key(&h), Ok(Some("pay:o-1:1:create".to_owned())));
        h.insert("idempotency-key", HeaderValue::from_static(""));
        assert!(idempotency_key(&h).is_err());
        let long = "k".repeat(256);
        if let Ok(v) = HeaderValue::from_str(&long) {
            h.insert("idempotency-key", v);
        }
        assert!(idempotency_key(&h).is_err());
    }
}
