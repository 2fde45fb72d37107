//! `GET /metrics` (METRICS_LISTEN) end to end: a real coordinator (in process, real gRPC, real
//! PostgreSQL and Redis, the gateway simulator over HTTP) is driven through a paid payment, a
//! declined one, refusals and open watch streams; its `/metrics` is scraped over HTTP, parsed as
//! the Prometheus text format, and the values asserted exactly.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use integration_tests::checks::{reason, wait_for};
use integration_tests::coordinator::{OPERATOR, SERVICE, TestEnv, client, key_for};
use integration_tests::review;
use payments_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;

const CARD_NUMBER: &str = "4242424242424242";
const WRONG_KEY: &str = "pk_test_not-a-key_5e1d0c";

fn pay(order_id: &str, key: &str, method: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 2350,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-metrics-7".to_owned(),
        payment_method: method.to_owned(),
        items: vec![pb::LineItem {
            product_id: "sku-metrics".into(),
            quantity: 1,
            unit_amount_minor: 2350,
        }],
        idempotency_key: key.to_owned(),
        wait_for_outcome: true,
    }
}

/// One sample line: `name{label="value",…} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: the samples, each family's `# TYPE`, and the raw text.
struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
    text: String,
}

impl Scrape {
    /// The value of the series `name` with exactly `labels` (no more, no fewer).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted)
            .collect();
        assert!(found.len() <= 1, "series {name}{wanted:?} appears twice");
        found.first().map(|s| s.value)
    }

    /// Like `value`, but the series must exist.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in:\n{}", self.text))
    }

    /// Every series of `name`.
    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// Parses the Prometheus text format 0.0.4 (comments, `# TYPE`, samples with quoted and
/// escaped label values, optional timestamps). Panics on a malformed line.
fn parse(text: &str) -> Scrape {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                let name = words.next().expect("TYPE name").to_owned();
                let kind = words.next().expect("TYPE kind").to_owned();
                assert!(
                    types.insert(name.clone(), kind).is_none(),
                    "TYPE of {name} twice"
                );
            }
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let mut end = None;
            loop {
                // Skip separators.
                while let Some((_, c)) = chars.peek() {
                    if *c == ',' || c.is_whitespace() {
                        chars.next();
                    } else {
                        break;
                    }
                }
                match chars.peek() {
                    Some((i, '}')) => {
                        end = Some(*i);
                        break;
                    }
                    None => break,
                    _ => {}
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "in {line}");
                let mut value = String::new();
                loop {
                    match chars.next().map(|(_, c)| c) {
                        Some('\\') => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c @ ('\\' | '"')) => value.push(c),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        Some('"') => break,
                        Some(c) => value.push(c),
                        None => panic!("unterminated label value in {line}"),
                    }
                }
                assert!(
                    labels.insert(key.clone(), value).is_none(),
                    "label {key} twice in {line}"
                );
            }
            let end = end.unwrap_or_else(|| panic!("unterminated labels in {line}"));
            rest = &after[end + 1..];
        }
        let mut fields = rest.split_whitespace();
        let value = match fields.next().unwrap_or_else(|| panic!("no value: {line}")) {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        if let Some(timestamp) = fields.next() {
            timestamp
                .parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp in {line}"));
        }
        assert!(fields.next().is_none(), "trailing fields in {line}");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Scrape {
        samples,
        types,
        text: text.to_owned(),
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "the Prometheus text format's content type"
    );
    parse(&response.text().await.expect("metrics body"))
}

#[tokio::test]
async fn metrics_count_payments_refusals_gateway_calls_and_watchers() {
    let env = TestEnv::new().await;
    let replica = env.replica("m0", &[]).await;
    let addr = replica.metrics_addr;

    // Before anything: served, the known series at 0, the pool visible.
    let fresh = scrape(addr).await;
    for flow in ["two_phase", "one_shot"] {
        assert_eq!(
            fresh.get("coordinator_payments_started_total", &[("flow", flow)]),
            0.0
        );
    }
    for cause in [
        "runs_exhausted",
        "idempotency_window_passed",
        "no_capability",
    ] {
        assert_eq!(
            fresh.get(
                "coordinator_payments_finished_total",
                &[
                    ("outcome", "unknown"),
                    ("reason", cause),
                    ("via", "resolution")
                ]
            ),
            0.0
        );
    }
    assert!(fresh.series("coordinator_refusals_total").is_empty());
    assert_eq!(
        fresh.get("coordinator_db_pool_max_connections", &[]),
        coordinator::server::POOL_SIZE as f64
    );

    // Unknown paths are 404.
    let other = reqwest::get(format!("http://{addr}/other"))
        .await
        .expect("GET /other");
    assert_eq!(other.status(), 404);

    // Watchers: one on the whole feed, one on an order.
    let mut service = replica.client(SERVICE).await;
    let mut events = service
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: 0,
            last: 0,
        })
        .await
        .expect("WatchEvents")
        .into_inner();
    let mut operator = replica.client(OPERATOR).await;

    // A paid payment and a declined one.
    let paid = operator
        .process_payment(pay("met-paid", "k-paid", "pm_card_visa"))
        .await
        .expect("paid")
        .into_inner();
    assert_eq!(paid.order.expect("order").state(), pb::OrderState::Paid);
    let declined = operator
        .process_payment(pay("met-declined", "k-declined", "pm_card_chargeDeclined"))
        .await
        .expect("declined")
        .into_inner();
    assert_eq!(
        declined.attempt.expect("attempt").decline_code,
        "generic_decline"
    );
    let order_watch = operator
        .watch_order(pb::WatchOrderRequest {
            order_id: "met-paid".to_owned(),
            after_sequence: 0,
            until_terminal: false,
        })
        .await
        .expect("WatchOrder")
        .into_inner();
    // The feed delivers (so its sequencer and listener run here).
    let first = events
        .next()
        .await
        .expect("an event")
        .expect("event, not an error");
    assert_eq!(first.global_sequence, 1);

    // Refusals: each counted once with its code and reason.
    let again = operator
        .process_payment(pay("met-paid", "k-paid-again", "pm_card_visa"))
        .await
        .expect_err("already paid");
    assert_eq!(
        (again.code(), reason(&again).as_str()),
        (Code::FailedPrecondition, "ALREADY_PAID")
    );
    let card = operator
        .process_payment(pay("met-card", "k-card", CARD_NUMBER))
        .await
        .expect_err("a card number is no payment method");
    assert_eq!(
        (card.code(), reason(&card).as_str()),
        (Code::InvalidArgument, "INVALID_REQUEST")
    );
    let mut stranger = client(&replica.url, Some(WRONG_KEY)).await;
    let unknown = stranger
        .get_order(pb::GetOrderRequest {
            order_id: "met-paid".to_owned(),
        })
        .await
        .expect_err("unknown key");
    assert_eq!(
        (unknown.code(), reason(&unknown).as_str()),
        (Code::Unauthenticated, "UNAUTHENTICATED")
    );
    let forbidden = operator
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: 0,
            last: 0,
        })
        .await
        .expect_err("operators may not watch the whole feed");
    assert_eq!(
        (forbidden.code(), reason(&forbidden).as_str()),
        (Code::PermissionDenied, "FORBIDDEN")
    );

    // Attempt tasks end just after announcing their outcome: wait for the gauge, not a time.
    let m = wait_for("no attempt in flight", async || {
        let m = scrape(addr).await;
        (m.value("coordinator_attempts_in_flight", &[]) == Some(0.0)).then_some(m)
    })
    .await;

    assert_eq!(
        m.types
            .get("coordinator_payments_started_total")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        m.types
            .get("coordinator_gateway_call_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        m.types.get("coordinator_feed_watchers").map(String::as_str),
        Some("gauge")
    );

    // Payments: two started (two_phase, the default), one succeeded, one declined with its code.
    assert_eq!(
        m.get(
            "coordinator_payments_started_total",
            &[("flow", "two_phase")]
        ),
        2.0
    );
    assert_eq!(
        m.get(
            "coordinator_payments_started_total",
            &[("flow", "one_shot")]
        ),
        0.0
    );
    assert_eq!(
        m.get(
            "coordinator_payments_finished_total",
            &[("outcome", "succeeded"), ("reason", ""), ("via", "answer")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "coordinator_payments_finished_total",
            &[
                ("outcome", "declined"),
                ("reason", "generic_decline"),
                ("via", "answer")
            ]
        ),
        1.0
    );
    // Every other outcome series is still 0.
    let finished: f64 = m
        .series("coordinator_payments_finished_total")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(finished, 2.0);

    // Refusals: exactly the four above.
    let refusals: BTreeMap<(String, String), f64> = m
        .series("coordinator_refusals_total")
        .into_iter()
        .map(|s| {
            assert_eq!(s.labels.len(), 2, "{s:?}");
            (
                (s.labels["code"].clone(), s.labels["reason"].clone()),
                s.value,
            )
        })
        .collect();
    let expected: BTreeMap<(String, String), f64> = [
        ("FAILED_PRECONDITION", "ALREADY_PAID"),
        ("INVALID_ARGUMENT", "INVALID_REQUEST"),
        ("UNAUTHENTICATED", "UNAUTHENTICATED"),
        ("PERMISSION_DENIED", "FORBIDDEN"),
    ]
    .into_iter()
    .map(|(c, r)| ((c.to_owned(), r.to_owned()), 1.0))
    .collect();
    assert_eq!(refusals, expected);

    // Gateway calls (two_phase: create, then confirm; the decline comes on the confirm).
    let calls: BTreeMap<(String, String), f64> = m
        .series("coordinator_gateway_call_duration_seconds_count")
        .into_iter()
        .map(|s| {
            (
                (s.labels["operation"].clone(), s.labels["outcome"].clone()),
                s.value,
            )
        })
        .collect();
    let expected: BTreeMap<(String, String), f64> = [
        (("create_intent", "succeeded"), 2.0),
        (("confirm_intent", "succeeded"), 1.0),
        (("confirm_intent", "declined"), 1.0),
    ]
    .into_iter()
    .map(|((o, r), n)| ((o.to_owned(), r.to_owned()), n))
    .collect();
    assert_eq!(calls, expected);
    for ((operation, outcome), count) in &calls {
        let labels = [
            ("operation", operation.as_str()),
            ("outcome", outcome.as_str()),
        ];
        let inf = m.get(
            "coordinator_gateway_call_duration_seconds_bucket",
            &[labels[0], labels[1], ("le", "+Inf")],
        );
        assert_eq!(inf, *count, "the +Inf bucket holds every call");
        let sum = m.get("coordinator_gateway_call_duration_seconds_sum", &labels);
        assert!(sum > 0.0, "{operation}/{outcome} took some time");
        // Buckets are cumulative.
        let mut buckets: Vec<(f64, f64)> = m
            .series("coordinator_gateway_call_duration_seconds_bucket")
            .into_iter()
            .filter(|s| s.labels["operation"] == *operation && s.labels["outcome"] == *outcome)
            .map(|s| {
                let le = match s.labels["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().expect("le"),
                };
                (le, s.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    }

    // Watchers, the gate, the journal, the pool, the feed.
    assert_eq!(
        m.get("coordinator_feed_watchers", &[("stream", "events")]),
        1.0
    );
    assert_eq!(
        m.get("coordinator_feed_watchers", &[("stream", "order")]),
        1.0
    );
    assert_eq!(m.get("coordinator_breaker_state", &[]), 0.0);
    assert_eq!(m.get("coordinator_payments_paused", &[]), 0.0);
    assert_eq!(m.get("coordinator_journal_depth", &[]), 0.0);
    let max = m.get("coordinator_db_pool_max_connections", &[]);
    assert_eq!(max, coordinator::server::POOL_SIZE as f64);
    let in_use = m.get("coordinator_db_pool_connections", &[("state", "in_use")]);
    let idle = m.get("coordinator_db_pool_connections", &[("state", "idle")]);
    assert!(in_use >= 0.0 && idle >= 0.0 && in_use + idle <= max);
    assert!(in_use + idle >= 1.0, "the pool has connected");
    assert_eq!(m.get("coordinator_db_pool_waiting", &[]), 0.0);
    assert_eq!(m.get("coordinator_feed_sequencer_leader", &[]), 1.0);
    assert_eq!(m.get("coordinator_feed_listener_connected", &[]), 1.0);
    assert!(m.get("coordinator_feed_head", &[]) >= 1.0);
    assert!(m.get("coordinator_feed_publish_lag_seconds", &[]) >= 0.0);
    assert!(m.get("coordinator_feed_backlog_events", &[]) >= 0.0);
    let recovery = m.series("coordinator_recovery_actions_total");
    assert_eq!(recovery.len(), 10, "every action, at 0");
    assert!(recovery.iter().all(|s| s.value == 0.0), "{recovery:?}");

    // Nothing identifying: no order id, customer, API key, key id or card number.
    for secret in [
        "met-paid",
        "met-declined",
        "met-card",
        "cust-metrics-7",
        &key_for(OPERATOR),
        &key_for(SERVICE),
        OPERATOR,
        SERVICE,
        WRONG_KEY,
        CARD_NUMBER,
    ] {
        assert!(!m.text.contains(secret), "/metrics shows {secret}");
    }

    // Closed streams leave the gauges.
    drop(events);
    drop(order_watch);
    wait_for("the watchers are gone", async || {
        let m = scrape(addr).await;
        (m.value("coordinator_feed_watchers", &[("stream", "events")]) == Some(0.0)
            && m.value("coordinator_feed_watchers", &[("stream", "order")]) == Some(0.0))
        .then_some(())
    })
    .await;

    // The endpoint stops with the replica.
    replica.stop().await;
    assert!(
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .is_err(),
        "/metrics still answers after shutdown"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_taken_metrics_port_fails_start_up_naming_metrics_listen() {
    let env = TestEnv::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let settings = env.settings("m1", &["--metrics-listen", &addr]);
    let error = match coordinator::server::Application::build(&settings).await {
        Ok(_) => panic!("started although {addr} is taken"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("METRICS_LISTEN") && error.contains(&addr),
        "{error}"
    );
    drop(taken);
    env.cleanup().await;
}

#[tokio::test]
async fn a_lost_confirm_answer_counts_the_lookup_that_resolved_it() {
    let env = TestEnv::new().await;
    let replica = env.replica("m2", &[]).await;
    let mut operator = replica.client(OPERATOR).await;
    // The gateway charges on the confirm, then answers 500: the outcome is unknown until the
    // intent is looked up.
    env.sim_control
        .set_faults(serde_json::json!({ "next": ["error_500_after"], "operations": ["confirm"] }))
        .await
        .expect("faults");
    let paid = operator
        .process_payment(pay("met-lost", "k-lost", "pm_card_visa"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(paid.order.expect("order").state(), pb::OrderState::Paid);

    let m = wait_for("no attempt in flight", async || {
        let m = scrape(replica.metrics_addr).await;
        (m.value("coordinator_attempts_in_flight", &[]) == Some(0.0)).then_some(m)
    })
    .await;
    assert_eq!(
        m.get(
            "coordinator_payments_finished_total",
            &[
                ("outcome", "succeeded"),
                ("reason", ""),
                ("via", "resolution")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "coordinator_payments_finished_total",
            &[("outcome", "succeeded"), ("reason", ""), ("via", "answer")]
        ),
        0.0
    );
    let actions: BTreeMap<String, f64> = m
        .series("coordinator_recovery_actions_total")
        .into_iter()
        .filter(|s| s.value != 0.0)
        .map(|s| (s.labels["action"].clone(), s.value))
        .collect();
    assert_eq!(actions, BTreeMap::from([("lookup".to_owned(), 1.0)]));
    for (operation, outcome) in [
        ("create_intent", "succeeded"),
        ("confirm_intent", "unknown"),
        ("get_intent", "succeeded"),
    ] {
        assert_eq!(
            m.get(
                "coordinator_gateway_call_duration_seconds_count",
                &[("operation", operation), ("outcome", outcome)]
            ),
            1.0,
            "{operation} {outcome}"
        );
    }
    replica.stop().await;
    env.cleanup().await;
}

/// How long the simulator holds a confirm in the tests below: the attempt stays in flight at
/// least that long. A bound the test's own steps stay far within, never waited for as such.
const HOLD_MS: u64 = 4_000;

/// Holds the next confirms at the gateway for `ms`, then waits until `order_id`'s confirm is
/// there (its key claimed: the call drew its latency and waits).
async fn hold_confirms(env: &TestEnv, ms: u64) {
    env.sim_control
        .set_faults(serde_json::json!({ "latency_ms": ms, "operations": ["confirm"] }))
        .await
        .expect("hold the confirms");
}

async fn until_a_confirm_is_held(env: &TestEnv) {
    wait_for("the confirm is held at the gateway", async || {
        let ledger = env.sim_control.ledger().await.expect("ledger");
        (ledger.calls.confirm == 1 && ledger.idempotency.in_flight == 1).then_some(())
    })
    .await;
}

/// `coordinator_attempts_in_flight` is wired to the attempt: 1 while its confirm is held at a
/// slow gateway, 0 once it has succeeded.
#[tokio::test]
async fn the_in_flight_gauge_follows_an_attempt_at_a_slow_gateway() {
    let env = TestEnv::new().await;
    let replica = env.replica("m3", &[]).await;
    let addr = replica.metrics_addr;
    let mut operator = replica.client(OPERATOR).await;
    hold_confirms(&env, HOLD_MS).await;
    let mut request = pay("met-slow", "k-slow", "pm_card_visa");
    request.wait_for_outcome = false;
    let started = operator
        .process_payment(request)
        .await
        .expect("committed")
        .into_inner();
    assert_eq!(
        started.order.expect("order").state(),
        pb::OrderState::AwaitingConfirmation
    );
    until_a_confirm_is_held(&env).await;
    wait_for("one attempt in flight", async || {
        let m = scrape(addr).await;
        (m.value("coordinator_attempts_in_flight", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let m = wait_for("the attempt has ended", async || {
        let m = scrape(addr).await;
        (m.value("coordinator_attempts_in_flight", &[]) == Some(0.0)).then_some(m)
    })
    .await;
    assert_eq!(
        m.get(
            "coordinator_payments_finished_total",
            &[("outcome", "succeeded"), ("reason", ""), ("via", "answer")]
        ),
        1.0
    );
    replica.stop().await;
    env.cleanup().await;
}

/// `/metrics` is served through the whole shutdown: an attempt held at the gateway past a short
/// SHUTDOWN_GRACE_MS is handed over, and a scrape sees `handed_over_at_shutdown` (and nothing
/// left in flight) before the endpoint stops with the replica.
#[tokio::test]
async fn the_hand_over_at_shutdown_can_be_scraped() {
    let env = TestEnv::new().await;
    let settings = env.settings("m4", &["--shutdown-grace-ms", "100"]);
    let app = coordinator::server::Application::build(&settings)
        .await
        .expect("coordinator builds");
    let url = format!("http://{}", app.local_addr().expect("addr"));
    let addr = app.metrics_addr().expect("metrics addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(app.run_until(shutdown.clone()));
    let mut operator = client(&url, Some(&key_for(OPERATOR))).await;
    // Held far past the grace period: the attempt cannot end on its own during the shutdown.
    hold_confirms(&env, 120_000).await;
    let mut request = pay("met-handed", "k-handed", "pm_card_visa");
    request.wait_for_outcome = false;
    operator.process_payment(request).await.expect("committed");
    until_a_confirm_is_held(&env).await;
    wait_for("one attempt in flight", async || {
        let m = scrape(addr).await;
        (m.value("coordinator_attempts_in_flight", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let handed_over = &[("action", "handed_over_at_shutdown")];
    assert_eq!(
        scrape(addr)
            .await
            .get("coordinator_recovery_actions_total", handed_over),
        0.0
    );

    shutdown.cancel();
    // Scraped through the drain and the hand-over: the endpoint stays up until a scrape has
    // shown the hand-over.
    let m = wait_for("the hand-over is scraped", async || {
        let m = scrape(addr).await;
        (m.value("coordinator_recovery_actions_total", handed_over) == Some(1.0)
            && m.value("coordinator_attempts_in_flight", &[]) == Some(0.0))
        .then_some(m)
    })
    .await;
    assert_eq!(m.get("coordinator_journal_depth", &[]), 0.0);
    // Then the replica exits, and /metrics with it.
    match tokio::time::timeout(integration_tests::checks::GUARD, server).await {
        Ok(Ok(Ok(()))) => {}
        other => panic!("the replica did not stop cleanly: {other:?}"),
    }
    assert!(
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .is_err(),
        "/metrics still answers after shutdown"
    );
    env.cleanup().await;
}

/// An attempt nothing can settle (no gateway capability, the create's answer lost) is counted
/// `unknown` with why: `no_capability`.
#[tokio::test]
async fn a_manual_review_is_counted_by_its_cause() {
    let env = TestEnv::new().await;
    let replica = env.replica("m5", &review::REPLICA_ARGS).await;
    let mut operator = replica.client(OPERATOR).await;
    review::charge_and_lose_the_next_answer(&env).await;
    let answered = operator
        .process_payment(pay("met-review", "k-review", "pm_card_visa"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(
        answered.order.expect("order").state(),
        pb::OrderState::ManualReview
    );
    let m = wait_for("no attempt in flight", async || {
        let m = scrape(replica.metrics_addr).await;
        (m.value("coordinator_attempts_in_flight", &[]) == Some(0.0)).then_some(m)
    })
    .await;
    let unknown: BTreeMap<(String, String), f64> = m
        .series("coordinator_payments_finished_total")
        .into_iter()
        .filter(|s| s.labels["outcome"] == "unknown" && s.value != 0.0)
        .map(|s| {
            (
                (s.labels["reason"].clone(), s.labels["via"].clone()),
                s.value,
            )
        })
        .collect();
    assert_eq!(
        unknown,
        BTreeMap::from([(("no_capability".to_owned(), "resolution".to_owned()), 1.0)])
    );
    replica.stop().await;
    env.cleanup().await;
}
