//! Traces (OpenTelemetry): the real coordinator binary exports OTLP/gRPC to a receiver running in
//! this test (opentelemetry-proto's `TraceService` on tonic). One payment, sent with a caller's
//! W3C `traceparent`, yields one trace: the RPC span (child of the caller's span), the Redis
//! lease, the attempt's PostgreSQL commits and the gateway's HTTP client spans, whose
//! `traceparent` the simulator received. No span, event or resource attribute holds a caller's
//! API key or idempotency key, the gateway's secret key, a card number or the payment method
//! token.
//!
//! At exit (SIGTERM) the spans still buffered are sent (gzip-compressed when asked); a collector
//! that never answers does not hold the exit; an `https://` collector is verified against
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use booking_sim::psp::SimConfig;
use integration_tests::{
    checks::{reason, wait_for},
    coordinator::{OPERATOR, TestEnv, key_for},
    process::CoordinatorProcess,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use payments_proto::v1 as pb;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{
    codec::CompressionEncoding,
    transport::{Identity, ServerTlsConfig},
};

/// The gateway's secret key, known to the simulator and the coordinator only.
const GATEWAY_SECRET: &str = "sk_test_TRACESECRET_8d41c2";
/// A card number a careless caller sends as the payment method (refused, never traced).
const CARD: &str = "4242424242424242";
const PAYMENT_METHOD: &str = "pm_card_visa";
const RPC: &str = "payments.v1.PaymentCoordinator/ProcessPayment";
const CREATE: &str = "POST /v1/payment_intents";
const CONFIRM: &str = "POST /v1/payment_intents/{id}/confirm";
/// Every span one paid payment (two-phase flow) yields.
const PAYMENT_SPANS: [&str; 12] = [
    RPC,
    "ProcessPayment",
    "lease.acquire",
    "pg.begin_attempt",
    "payment.attempt",
    "gateway.create_intent",
    CREATE,
    "pg.record_intent",
    "gateway.confirm_intent",
    CONFIRM,
    "pg.finish_attempt",
    "lease.release",
];

/// One exported span with its resource's attributes.
#[derive(Clone, Debug)]
struct Received {
    resource: Vec<KeyValue>,
    span: Span,
}

/// What the in-process OTLP/gRPC receiver was sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    /// The `grpc-encoding` of each export request (`identity` when uncompressed).
    encodings: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let encoding = request
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity")
            .to_owned();
        lock(&self.encodings).push(encoding);
        let mut kept = lock(&self.spans);
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                kept.extend(scope_spans.spans.into_iter().map(|span| Received {
                    resource: resource.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A lock that a panic elsewhere does not turn into a second one (the first is what matters).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The receiver, serving.
struct Serving {
    endpoint: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Serving {
    /// Stops serving; a failure or panic of the serving task fails the test here.
    async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("the OTLP receiver's task ended cleanly");
    }
}

impl Receiver {
    /// Serves plain-text gRPC (accepting gzip) on a free port.
    async fn start(&self) -> Serving {
        self.serve(None).await
    }

    /// Serves on a free port, over TLS with `tls`: `http://…` or `https://…`.
    async fn serve(&self, tls: Option<ServerTlsConfig>) -> Serving {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{addr}");
        let service =
            TraceServiceServer::new(self.clone()).accept_compressed(CompressionEncoding::Gzip);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).expect("the receiver's TLS");
        }
        let stop = CancellationToken::new();
        let serve = server.add_service(service).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
        let task = tokio::spawn(async move { serve.await.expect("the OTLP receiver serves") });
        Serving {
            endpoint,
            stop,
            task,
        }
    }

    fn spans(&self) -> Vec<Received> {
        lock(&self.spans).clone()
    }

    fn encodings(&self) -> Vec<String> {
        lock(&self.encodings).clone()
    }

    /// The spans of one trace received so far.
    fn trace(&self, trace_id: &[u8]) -> Vec<Span> {
        self.spans()
            .into_iter()
            .map(|r| r.span)
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// The names of `trace`'s spans that are still missing from those of a payment.
    fn missing(&self, trace_id: &[u8]) -> Vec<&'static str> {
        let trace = self.trace(trace_id);
        let names: HashSet<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        PAYMENT_SPANS
            .into_iter()
            .filter(|w| !names.contains(w))
            .collect()
    }
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(text)
}

fn named<'a>(trace: &'a [Span], name: &str) -> Vec<&'a Span> {
    trace.iter().filter(|s| s.name == name).collect()
}

/// A random W3C trace context of a caller: (trace id, span id, `traceparent`).
fn caller_context() -> (Vec<u8>, Vec<u8>, String) {
    let mut rng = rand::rng();
    let trace: [u8; 16] = rng.random();
    let span: [u8; 8] = rng.random();
    let header = format!("00-{}-{}-01", hex::encode(trace), hex::encode(span));
    (trace.to_vec(), span.to_vec(), header)
}

/// The caller's own idempotency key for `order_id`: the caller's, never traced.
fn caller_key(order_id: &str) -> String {
    format!("callerkey-{order_id}-7f3a")
}

fn pay(
    order_id: &str,
    method: &str,
    traceparent: &str,
) -> tonic::Request<pb::ProcessPaymentRequest> {
    let mut request = tonic::Request::new(pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 1250,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-trace".to_owned(),
        payment_method: method.to_owned(),
        items: vec![pb::LineItem {
            product_id: "sku-1".into(),
            quantity: 1,
            unit_amount_minor: 1250,
        }],
        idempotency_key: caller_key(order_id),
        wait_for_outcome: true,
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_payment_is_one_trace_from_the_caller_to_the_gateway() {
    let env = TestEnv::with_sim(SimConfig {
        api_key: GATEWAY_SECRET.to_owned(),
        ..SimConfig::default()
    })
    .await;
    let receiver = Receiver::default();
    let serving = receiver.start().await;
    let replica = "r-traces";
    let process = CoordinatorProcess::spawn_with_env(
        &env,
        replica,
        &[
            "--gateway-api-key",
            GATEWAY_SECRET,
            "--otel-exporter-otlp-endpoint",
            &serving.endpoint,
        ],
        // Batches leave every 100 ms instead of every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    let mut client = process.client(OPERATOR).await;

    // The payment, continuing the caller's trace.
    let order_id = "trace-1";
    let (trace_id, caller_span, traceparent) = caller_context();
    let paid = client
        .process_payment(pay(order_id, PAYMENT_METHOD, &traceparent))
        .await
        .expect("the payment is answered")
        .into_inner();
    assert_eq!(
        paid.order.expect("order").state,
        pb::OrderState::Paid as i32
    );

    // A card number as the payment method, in a trace of its own: refused, and traced as such.
    let (card_trace, _, card_traceparent) = caller_context();
    let refused = client
        .process_payment(pay("trace-card", CARD, &card_traceparent))
        .await
        .expect_err("a card number is refused");
    assert_eq!(reason(&refused), "INVALID_REQUEST");

    // Spans leave in batches: wait until the whole payment has arrived.
    let trace = wait_for(
        "the coordinator exports every span of the payment to the OTLP receiver",
        async || {
            let card_rpc = !named(&receiver.trace(&card_trace), RPC).is_empty();
            (card_rpc && receiver.missing(&trace_id).is_empty()).then(|| receiver.trace(&trace_id))
        },
    )
    .await;
    let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();

    // The RPC span continues the caller's span, and names the call.
    let rpc = named(&trace, RPC);
    assert_eq!(rpc.len(), 1, "one RPC span: {names:?}");
    let rpc = rpc[0];
    assert_eq!(
        rpc.parent_span_id, caller_span,
        "the RPC's parent is the caller's span"
    );
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(attr(&rpc.attributes, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attr(&rpc.attributes, "rpc.method").as_deref(),
        Some("ProcessPayment")
    );
    assert_eq!(
        attr(&rpc.attributes, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );

    // Every span of the payment is in the caller's trace, and hangs from the RPC span.
    let by_id = |id: &[u8]| trace.iter().find(|s| s.span_id == id);
    for span in &trace {
        let mut at = span;
        while at.span_id != rpc.span_id {
            at = by_id(&at.parent_span_id).unwrap_or_else(|| {
                panic!(
                    "{} does not descend from the RPC span: {names:?}",
                    span.name
                )
            });
        }
    }
    let elsewhere: Vec<String> = receiver
        .spans()
        .into_iter()
        .filter(|r| {
            r.span.trace_id != trace_id
                && attr(&r.span.attributes, "order_id").as_deref() == Some(order_id)
        })
        .map(|r| r.span.name)
        .collect();
    assert!(
        elsewhere.is_empty(),
        "spans of the payment in another trace: {elsewhere:?}"
    );

    // The attempt commit, the lease, and the attempt itself carry the order, attempt, replica.
    let begin = named(&trace, "pg.begin_attempt")[0];
    assert_eq!(begin.kind, SpanKind::Client as i32);
    assert_eq!(
        attr(&begin.attributes, "db.system.name").as_deref(),
        Some("postgresql")
    );
    assert_eq!(
        attr(&begin.attributes, "order_id").as_deref(),
        Some(order_id)
    );
    assert_eq!(attr(&begin.attributes, "attempt").as_deref(), Some("1"));
    let lease = named(&trace, "lease.acquire")[0];
    assert_eq!(
        attr(&lease.attributes, "order_id").as_deref(),
        Some(order_id)
    );
    let attempt = named(&trace, "payment.attempt")[0];
    assert_eq!(
        attr(&attempt.attributes, "order_id").as_deref(),
        Some(order_id)
    );
    assert_eq!(attr(&attempt.attributes, "attempt").as_deref(), Some("1"));
    assert_eq!(
        attr(&attempt.attributes, "replica").as_deref(),
        Some(replica)
    );
    let finish = named(&trace, "pg.finish_attempt")[0];
    assert_eq!(attr(&finish.attributes, "attempt").as_deref(), Some("1"));
    assert_eq!(
        attr(&finish.attributes, "outcome").as_deref(),
        Some("SUCCEEDED")
    );

    // The gateway's HTTP client spans, and the traceparent the simulator received from each.
    let sent = env
        .sim_control
        .requests()
        .await
        .expect("the simulator's requests");
    for route in [CREATE, CONFIRM] {
        let http = named(&trace, route);
        assert_eq!(http.len(), 1, "one {route} span: {names:?}");
        let http = http[0];
        assert_eq!(http.kind, SpanKind::Client as i32);
        assert_eq!(
            attr(&http.attributes, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(attr(&http.attributes, "attempt").as_deref(), Some("1"));
        let url = attr(&http.attributes, "url.full").unwrap_or_default();
        assert!(
            url.starts_with(&env.sim.base_url()),
            "{route}: url.full {url:?}"
        );
        let step = if route == CREATE { "create" } else { "confirm" };
        let request = sent
            .iter()
            .find(|r| r.idempotency_key.as_deref() == Some(&format!("pay:{order_id}:1:{step}")))
            .unwrap_or_else(|| panic!("the simulator received no {step} of {order_id}: {sent:?}"));
        let received = request
            .traceparent
            .as_deref()
            .unwrap_or_else(|| panic!("the {step} request carried no traceparent"));
        assert_eq!(
            received,
            format!(
                "00-{}-{}-01",
                hex::encode(&trace_id),
                hex::encode(&http.span_id)
            ),
            "the {step} request continues the payment's trace from its HTTP span"
        );
    }

    // The refused card: its RPC span says INVALID_ARGUMENT, and nothing anywhere quotes it.
    let card_rpc = named(&receiver.trace(&card_trace), RPC)[0].clone();
    assert_eq!(
        attr(&card_rpc.attributes, "rpc.grpc.status_code").as_deref(),
        Some((tonic::Code::InvalidArgument as i32).to_string().as_str())
    );
    let secrets = [
        key_for(OPERATOR),
        GATEWAY_SECRET.to_owned(),
        CARD.to_owned(),
        PAYMENT_METHOD.to_owned(),
        caller_key(order_id),
        caller_key("trace-card"),
    ];
    let received = receiver.spans();
    for r in &received {
        assert_eq!(
            attr(&r.resource, "service.name").as_deref(),
            Some("coordinator")
        );
        assert_eq!(
            attr(&r.resource, "service.instance.id").as_deref(),
            Some(replica)
        );
        let span = &r.span;
        let mut texts = vec![span.name.clone()];
        let attributes = span
            .attributes
            .iter()
            .chain(span.events.iter().flat_map(|e| e.attributes.iter()))
            .chain(r.resource.iter());
        texts.extend(attributes.map(|kv| kv.value.as_ref().map(text).unwrap_or_default()));
        texts.extend(span.events.iter().map(|e| e.name.clone()));
        if let Some(status) = &span.status {
            texts.push(status.message.clone());
        }
        for value in texts {
            for secret in &secrets {
                assert!(
                    !value.contains(secret.as_str()),
                    "span {} holds a secret: {value}",
                    span.name
                );
            }
        }
    }

    drop(process);
    serving.stop().await;
    env.cleanup().await;
}

/// Pays `order_id` in a trace of its own through `process`; returns the trace id.
async fn pay_traced(process: &CoordinatorProcess, order_id: &str) -> Vec<u8> {
    let mut client = process.client(OPERATOR).await;
    let (trace_id, _, traceparent) = caller_context();
    let paid = client
        .process_payment(pay(order_id, PAYMENT_METHOD, &traceparent))
        .await
        .expect("the payment is answered")
        .into_inner();
    assert_eq!(
        paid.order.expect("order").state,
        pb::OrderState::Paid as i32
    );
    trace_id
}

/// The spans a replica still holds when it is told to stop (SIGTERM) are sent before it exits:
/// with batches due only every hour, the payment's spans can only leave with the flush at exit.
/// Asked for gzip, the export is compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_sends_the_spans_still_buffered_before_the_exit() {
    let env = TestEnv::new().await;
    let receiver = Receiver::default();
    let serving = receiver.start().await;
    let mut process = CoordinatorProcess::spawn_with_env(
        &env,
        "r-traces-exit",
        &["--otel-exporter-otlp-endpoint", &serving.endpoint],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    )
    .await;
    let trace_id = pay_traced(&process, "trace-exit").await;
    assert!(
        receiver.trace(&trace_id).is_empty(),
        "no batch is due before an hour: the spans must still be buffered"
    );

    process.terminate();
    let status = process.wait_exit().await;
    assert!(status.success(), "a graceful shutdown exits 0: {status:?}");
    // The exit waited for the collector's answer: everything is here, no waiting.
    assert_eq!(
        receiver.missing(&trace_id),
        Vec::<&str>::new(),
        "spans of the payment never sent"
    );
    let encodings = receiver.encodings();
    assert!(
        !encodings.is_empty() && encodings.iter().all(|e| e == "gzip"),
        "every export is gzip-compressed: {encodings:?}"
    );

    drop(process);
    serving.stop().await;
    env.cleanup().await;
}

/// A collector that accepts the connection and never answers (a port bound and never served):
/// the payment is not held up, and SIGTERM still ends the process, exit code 0, the flush given
/// up after its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_collector_does_not_hold_the_exit() {
    let env = TestEnv::new().await;
    // The kernel completes the TCP handshake (backlog); nothing ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the silent port");
    let endpoint = format!("http://{}", silent.local_addr().expect("its address"));
    let mut process = CoordinatorProcess::spawn_with_env(
        &env,
        "r-traces-silent",
        &["--otel-exporter-otlp-endpoint", &endpoint],
        &[],
    )
    .await;
    pay_traced(&process, "trace-silent").await;

    process.terminate();
    let status = process.wait_exit().await;
    assert!(status.success(), "a graceful shutdown exits 0: {status:?}");
    let log = process.log_text();
    assert!(
        log.contains("trace export: spans may be lost at exit"),
        "the flush at exit gives up on a silent collector, saying so:\n{log}"
    );

    drop(silent);
    drop(process);
    env.cleanup().await;
}

/// An `https://` collector: the coordinator verifies it against the CA of
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` and exports over TLS (the receiver speaks nothing else).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_https_collector_is_verified_against_the_configured_ca() {
    let env = TestEnv::new().await;
    let pki = Pki::new("traces");
    let receiver = Receiver::default();
    let identity = Identity::from_pem(
        std::fs::read(pki.path("server.pem")).expect("server.pem"),
        std::fs::read(pki.path("server.key")).expect("server.key"),
    );
    let serving = receiver
        .serve(Some(ServerTlsConfig::new().identity(identity)))
        .await;
    assert!(serving.endpoint.starts_with("https://"));
    let ca = pki.path("ca.pem").to_string_lossy().into_owned();
    let process = CoordinatorProcess::spawn_with_env(
        &env,
        "r-traces-tls",
        &["--otel-exporter-otlp-endpoint", &serving.endpoint],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        ],
    )
    .await;
    let trace_id = pay_traced(&process, "trace-tls").await;
    wait_for(
        "the coordinator exports the payment's spans over TLS",
        async || receiver.missing(&trace_id).is_empty().then_some(()),
    )
    .await;

    drop(process);
    serving.stop().await;
    env.cleanup().await;
}

/// A throwaway CA and a server certificate for 127.0.0.1, as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("otlp-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Pki { dir };
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "OTLP test CA");
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
        std::fs::write(pki.path("ca.pem"), ca.pem()).expect("write ca");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params.distinguished_name.push(DnType::CommonName, "otlp");
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("sign server");
        std::fs::write(pki.path("server.pem"), cert.pem()).expect("write cert");
        std::fs::write(pki.path("server.key"), key.serialize_pem()).expect("write key");
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
