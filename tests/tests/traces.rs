//! Traces (OpenTelemetry): the real coordinator binary exports OTLP/gRPC to a receiver running in
//! this test (opentelemetry-proto's `TraceService` on tonic). One payment, sent with a caller's
//! W3C `traceparent`, yields one trace: the RPC span (child of the caller's span), the Redis
//! lease, the attempt's PostgreSQL commits and the gateway's HTTP client spans, whose
//! `traceparent` the simulator received. No span, event or resource attribute holds a caller's
//! API key, the gateway's secret key, a card number or the payment method token.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
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
use tokio_util::sync::CancellationToken;

/// The gateway's secret key, known to the simulator and the coordinator only.
const GATEWAY_SECRET: &str = "sk_test_TRACESECRET_8d41c2";
/// A card number a careless caller sends as the payment method (refused, never traced).
const CARD: &str = "4242424242424242";
const PAYMENT_METHOD: &str = "pm_card_visa";
const RPC: &str = "payments.v1.PaymentCoordinator/ProcessPayment";
const CREATE: &str = "POST /v1/payment_intents";
const CONFIRM: &str = "POST /v1/payment_intents/{id}/confirm";

/// One exported span with its resource's attributes.
#[derive(Clone, Debug)]
struct Received {
    resource: Vec<KeyValue>,
    span: Span,
}

/// The in-process OTLP/gRPC receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock().unwrap();
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

impl Receiver {
    /// Serves on a free port until `stop`; returns its `http://` endpoint.
    async fn start(&self, stop: CancellationToken) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
                .expect("the OTLP receiver serves");
        });
        endpoint
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace received so far.
    fn trace(&self, trace_id: &[u8]) -> Vec<Span> {
        self.spans()
            .into_iter()
            .map(|r| r.span)
            .filter(|s| s.trace_id == trace_id)
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
        idempotency_key: format!("key-{order_id}"),
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
    let stop = CancellationToken::new();
    let endpoint = receiver.start(stop.clone()).await;
    let replica = "r-traces";
    let process = CoordinatorProcess::spawn_with_env(
        &env,
        replica,
        &[
            "--gateway-api-key",
            GATEWAY_SECRET,
            "--otel-exporter-otlp-endpoint",
            &endpoint,
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
    let wanted = [
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
    let trace = wait_for(
        "the coordinator exports every span of the payment to the OTLP receiver",
        async || {
            let trace = receiver.trace(&trace_id);
            let names: HashSet<&str> = trace.iter().map(|s| s.name.as_str()).collect();
            let card_rpc = !named(&receiver.trace(&card_trace), RPC).is_empty();
            (card_rpc && wanted.iter().all(|w| names.contains(w))).then_some(trace)
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
    stop.cancel();
    env.cleanup().await;
}
