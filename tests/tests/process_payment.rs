//! ProcessPayment end to end: real coordinator servers over gRPC, real PostgreSQL and Redis, the
//! gateway simulator over HTTP. Every money assertion is made against the simulator's ledger.

use integration_tests::checks::{charges_by_order, reason};
use std::collections::HashMap;

use integration_tests::coordinator::{
    ADMIN, Client, OPERATOR, OPERATOR_2, REVIEWER, SERVICE, TestEnv, client, key_for,
};
use payments_proto::v1::{self as pb};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

fn pay(order_id: &str, amount: i64, key: &str, method: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: amount,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-42".to_owned(),
        payment_method: method.to_owned(),
        items: vec![pb::LineItem {
            product_id: "sku-1".into(),
            quantity: 1,
            unit_amount_minor: amount,
        }],
        idempotency_key: key.to_owned(),
        wait_for_outcome: true,
    }
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    env.sql()
        .await
        .query_one(sql, &[])
        .await
        .expect("count query")
        .get(0)
}

/// 20 orders × 10 concurrent callers over 3 replicas, with the gateway slowed so that the calls
/// overlap: one charge per order, every other caller refused.
async fn race(env: &TestEnv, replicas: &[Client]) {
    env.sim_control
        .set_faults(json!({ "latency_ms": 300 }))
        .await
        .expect("slow the gateway");
    let mut calls = Vec::new();
    for order in 0..20 {
        for caller in 0..10 {
            let mut client = replicas[caller % replicas.len()].clone();
            let _ = (OPERATOR, OPERATOR_2);
            let request = pay(
                &format!("race-{order}"),
                1000 + order as i64,
                &format!("k-{order}-{caller}"),
                "pm_card_visa",
            );
            calls.push(tokio::spawn(async move {
                (order, client.process_payment(request).await)
            }));
        }
    }
    let mut started: HashMap<usize, u32> = HashMap::new();
    for call in calls {
        let (order, result) = call.await.expect("caller task");
        match result {
            Ok(response) => {
                let response = response.into_inner();
                assert!(!response.joined_existing);
                let state = response.order.expect("order").state();
                assert_eq!(
                    state,
                    pb::OrderState::Paid,
                    "the winner waited for its outcome"
                );
                *started.entry(order).or_default() += 1;
            }
            Err(status) => {
                let why = reason(&status);
                assert!(
                    matches!(
                        (status.code(), why.as_str()),
                        (Code::Aborted, "PAYMENT_IN_PROGRESS")
                            | (Code::FailedPrecondition, "ALREADY_PAID")
                    ),
                    "unexpected refusal {status:?}"
                );
            }
        }
    }
    for order in 0..20 {
        assert_eq!(
            started.get(&order),
            Some(&1),
            "exactly one attempt started for race-{order}"
        );
    }
    let charges = charges_by_order(env).await;
    for order in 0..20 {
        assert_eq!(
            charges.get(&format!("race-{order}")),
            Some(&1),
            "one charge for race-{order} in the ledger"
        );
    }
    assert_eq!(count(env, "SELECT count(*) FROM attempts").await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_race_one_charge_per_order() {
    let env = TestEnv::new().await;
    let replicas = [
        env.replica("r0", &[]).await,
        env.replica("r1", &[]).await,
        env.replica("r2", &[]).await,
    ];
    let mut clients = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        clients.push(
            r.client(if i % 2 == 0 { OPERATOR } else { OPERATOR_2 })
                .await,
        );
    }
    race(&env, &clients).await;
    for r in replicas {
        r.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_alone_admits_one_attempt_per_order() {
    // Each replica with its own Redis prefix: their leases never see each other, so only
    // PostgreSQL's fence stands between the callers.
    let env = TestEnv::new().await;
    let mut replicas = Vec::new();
    let prefixes: Vec<String> = (0..3)
        .map(|i| format!("{}isolated{i}:", env.redis_prefix))
        .collect();
    for (i, prefix) in prefixes.iter().enumerate() {
        replicas.push(
            env.replica(&format!("r{i}"), &["--redis-key-prefix", prefix])
                .await,
        );
    }
    let mut clients = Vec::new();
    for r in &replicas {
        clients.push(r.client(OPERATOR).await);
    }
    race(&env, &clients).await;
    for r in replicas {
        r.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn both_flows_pay_once() {
    for flow in ["two_phase", "one_shot"] {
        let env = TestEnv::new().await;
        let replica = env.replica("r0", &["--gateway-flow", flow]).await;
        let mut op = replica.client(OPERATOR).await;
        let response = op
            .process_payment(pay("flow-1", 2500, "k1", "pm_card_visa"))
            .await
            .expect("pay")
            .into_inner();
        let order = response.order.expect("order");
        assert_eq!(order.state(), pb::OrderState::Paid, "{flow}");
        let attempt = response.attempt.expect("attempt");
        assert_eq!(attempt.outcome(), pb::AttemptOutcome::Succeeded, "{flow}");
        assert!(
            attempt.gateway_payment_id.starts_with("pi_"),
            "{flow}: {attempt:?}"
        );
        assert_eq!(attempt.gateway_idempotency_key, "pay:flow-1:1:create");
        let ledger = env.sim_control.ledger().await.expect("ledger");
        assert_eq!(ledger.intents.len(), 1, "{flow}");
        assert_eq!(ledger.intents[0].times_charged, 1, "{flow}");
        assert_eq!(ledger.intents[0].id, attempt.gateway_payment_id);
        let (creates, confirms) = (ledger.calls.create, ledger.calls.confirm);
        match flow {
            "two_phase" => assert_eq!((creates, confirms), (1, 1)),
            _ => assert_eq!((creates, confirms), (1, 0)),
        }
        // The lease was released (compare-and-delete) before the outcome was announced.
        assert!(
            redis_keys(&env).await.is_empty(),
            "{flow}: lease left behind"
        );
        // Events: ORDER_CREATED, ATTEMPT_STARTED, ATTEMPT_SUCCEEDED, sequences 1..3.
        let kinds: Vec<String> = env
            .sql()
            .await
            .query(
                "SELECT kind FROM events WHERE order_id = 'flow-1' ORDER BY sequence",
                &[],
            )
            .await
            .expect("events")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            kinds,
            ["ORDER_CREATED", "ATTEMPT_STARTED", "ATTEMPT_SUCCEEDED"]
        );
        // Paid: a second request with another key is refused without a gateway call.
        let refused = op
            .process_payment(pay("flow-1", 2500, "k2", "pm_card_visa"))
            .await
            .expect_err("paid");
        assert_eq!(
            (refused.code(), reason(&refused).as_str()),
            (Code::FailedPrecondition, "ALREADY_PAID")
        );
        assert_eq!(
            env.sim_control.ledger().await.expect("ledger").calls.create,
            1
        );
        replica.stop().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn decline_then_pay_same_key_joins_and_reuse_is_refused() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let mut op = replica.client(OPERATOR).await;

    let declined = op
        .process_payment(pay("o-1", 1500, "try-1", "pm_card_chargeDeclined"))
        .await
        .expect("declined")
        .into_inner();
    assert_eq!(
        declined.order.as_ref().expect("order").state(),
        pb::OrderState::Pending
    );
    let attempt = declined.attempt.expect("attempt");
    assert_eq!(attempt.outcome(), pb::AttemptOutcome::Declined);
    assert_eq!(attempt.decline_code, "generic_decline");

    // The same key again: the caller's own finished attempt, no second gateway call.
    let calls_before = env.sim_control.ledger().await.expect("ledger").calls;
    let joined = op
        .process_payment(pay("o-1", 1500, "try-1", "pm_card_chargeDeclined"))
        .await
        .expect("join")
        .into_inner();
    assert!(joined.joined_existing);
    assert_eq!(joined.attempt.expect("attempt").number, 1);
    assert_eq!(
        env.sim_control.ledger().await.expect("ledger").calls,
        calls_before
    );

    // The same key with another amount: refused.
    let reused = op
        .process_payment(pay("o-1", 9999, "try-1", "pm_card_visa"))
        .await
        .expect_err("reused");
    assert_eq!(
        (reused.code(), reason(&reused).as_str()),
        (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED")
    );

    // Another amount for the recorded order under a new key: ORDER_MISMATCH.
    let mismatch = op
        .process_payment(pay("o-1", 9999, "try-x", "pm_card_visa"))
        .await
        .expect_err("mismatch");
    assert_eq!(
        (mismatch.code(), reason(&mismatch).as_str()),
        (Code::FailedPrecondition, "ORDER_MISMATCH")
    );

    // A second attempt with a good card pays.
    let paid = op
        .process_payment(pay("o-1", 1500, "try-2", "pm_card_visa"))
        .await
        .expect("paid")
        .into_inner();
    let order = paid.order.expect("order");
    assert_eq!(order.state(), pb::OrderState::Paid);
    assert_eq!(order.attempts.len(), 2);
    assert_eq!(order.attempts[0].outcome(), pb::AttemptOutcome::Declined);
    assert_eq!(order.attempts[1].outcome(), pb::AttemptOutcome::Succeeded);
    assert_eq!(charges_by_order(&env).await.get("o-1"), Some(&1));

    // GetOrder shows the same.
    let got = op
        .get_order(pb::GetOrderRequest {
            order_id: "o-1".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.attempts.len(), 2);
    assert_eq!(got.state(), pb::OrderState::Paid);
    assert_eq!(got.items.len(), 1);
    let missing = op
        .get_order(pb::GetOrderRequest {
            order_id: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::NotFound, "ORDER_NOT_FOUND")
    );
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_stale_holder_cannot_write_its_outcome() {
    for flow in ["one_shot", "two_phase"] {
        let env = TestEnv::new().await;
        let replica = env.replica("r0", &["--gateway-flow", flow]).await;
        let mut op = replica.client(OPERATOR).await;
        env.sim_control
            .set_faults(json!({ "latency_ms": 1500 }))
            .await
            .expect("slow gateway");
        // Returns as soon as the attempt is committed.
        let mut request = pay("fenced", 700, "k1", "pm_card_visa");
        request.wait_for_outcome = false;
        let started = op
            .process_payment(request.clone())
            .await
            .expect("started")
            .into_inner();
        assert_eq!(
            started.order.expect("order").state(),
            pb::OrderState::AwaitingConfirmation
        );
        // A newer holder takes the attempt over (the recovery worker will do this for real).
        let sql = env.sql().await;
        sql.execute(
            "UPDATE orders SET fence = fence + 1 WHERE order_id = 'fenced'",
            &[],
        )
        .await
        .expect("bump");
        // Join our own attempt and wait until its task has finished.
        request.wait_for_outcome = true;
        let joined = op
            .process_payment(request)
            .await
            .expect("join")
            .into_inner();
        assert!(joined.joined_existing);
        let order = joined.order.expect("order");
        assert_eq!(
            order.state(),
            pb::OrderState::AwaitingConfirmation,
            "{flow}: the stale outcome was not written"
        );
        assert_eq!(
            order.attempts[0].outcome(),
            pb::AttemptOutcome::InFlight,
            "{flow}"
        );
        let row = sql
            .query_one(
                "SELECT fence, state, last_sequence FROM orders WHERE order_id = 'fenced'",
                &[],
            )
            .await
            .expect("order row");
        assert_eq!(row.get::<_, i64>(0), 2, "{flow}: the newer token stands");
        assert_eq!(row.get::<_, String>(1), "AWAITING_CONFIRMATION");
        assert_eq!(
            row.get::<_, i64>(2),
            2,
            "{flow}: no outcome event was added"
        );
        let ledger = env.sim_control.ledger().await.expect("ledger");
        let history: String = sql
            .query_one(
                "SELECT errors::text FROM attempts WHERE order_id = 'fenced'",
                &[],
            )
            .await
            .expect("attempt row")
            .get(0);
        let stored_intent: Option<String> = sql
            .query_one(
                "SELECT gateway_payment_id FROM attempts WHERE order_id = 'fenced'",
                &[],
            )
            .await
            .expect("attempt row")
            .get(0);
        match flow {
            "two_phase" => {
                // The stale holder could not record the intent, so it must not confirm it.
                assert_eq!(
                    ledger.calls.confirm, 0,
                    "a superseded holder never confirms"
                );
                assert_eq!(ledger.totals.charges, 0);
                assert_eq!(stored_intent, None);
                assert!(history.contains("left unconfirmed"), "{history}");
            }
            _ => {
                // The charge happened before the takeover could stop it: the outcome is not
                // written as state, but it is not lost either.
                assert_eq!(ledger.totals.charges, 1);
                let intent = &ledger.intents[0].id;
                assert!(
                    history.contains("superseded holder learnt")
                        && history.contains(intent.as_str()),
                    "{history}"
                );
            }
        }
        replica.stop().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn invalid_requests_leave_nothing_behind() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let mut op = replica.client(OPERATOR).await;
    let good = pay("v-1", 100, "k", "pm_card_visa");
    let card = "4242 4242 4242 4242";
    let cases: Vec<(&str, pb::ProcessPaymentRequest)> = vec![
        (
            "order_id",
            pb::ProcessPaymentRequest {
                order_id: String::new(),
                ..good.clone()
            },
        ),
        (
            "order_id",
            pb::ProcessPaymentRequest {
                order_id: "x".repeat(65),
                ..good.clone()
            },
        ),
        (
            "order_id",
            pb::ProcessPaymentRequest {
                order_id: "bad id!".into(),
                ..good.clone()
            },
        ),
        (
            "customer_id",
            pb::ProcessPaymentRequest {
                customer_id: String::new(),
                ..good.clone()
            },
        ),
        (
            "amount",
            pb::ProcessPaymentRequest {
                amount: None,
                ..good.clone()
            },
        ),
        (
            "amount.amount_minor",
            pb::ProcessPaymentRequest {
                amount: Some(pb::Money {
                    amount_minor: 0,
                    currency: "EUR".into(),
                }),
                ..good.clone()
            },
        ),
        (
            "amount.amount_minor",
            pb::ProcessPaymentRequest {
                amount: Some(pb::Money {
                    amount_minor: 100_000_000,
                    currency: "EUR".into(),
                }),
                ..good.clone()
            },
        ),
        (
            "amount.currency",
            pb::ProcessPaymentRequest {
                amount: Some(pb::Money {
                    amount_minor: 100,
                    currency: "EURO".into(),
                }),
                ..good.clone()
            },
        ),
        (
            "amount.currency",
            pb::ProcessPaymentRequest {
                amount: Some(pb::Money {
                    amount_minor: 100,
                    currency: "QQQ".into(),
                }),
                ..good.clone()
            },
        ),
        (
            "payment_method",
            pb::ProcessPaymentRequest {
                payment_method: String::new(),
                ..good.clone()
            },
        ),
        (
            "payment_method",
            pb::ProcessPaymentRequest {
                payment_method: card.into(),
                ..good.clone()
            },
        ),
        (
            "payment_method",
            pb::ProcessPaymentRequest {
                payment_method: "4242424242424242".into(),
                ..good.clone()
            },
        ),
        (
            "items",
            pb::ProcessPaymentRequest {
                items: vec![good.items[0].clone(); 101],
                ..good.clone()
            },
        ),
        (
            "idempotency_key",
            pb::ProcessPaymentRequest {
                idempotency_key: String::new(),
                ..good.clone()
            },
        ),
        (
            "idempotency_key",
            pb::ProcessPaymentRequest {
                idempotency_key: "k".repeat(256),
                ..good.clone()
            },
        ),
    ];
    for (field, request) in cases {
        let status = op.process_payment(request).await.expect_err("invalid");
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::InvalidArgument, "INVALID_REQUEST"),
            "{field}"
        );
        let bad = status.get_details_bad_request().expect("BadRequest detail");
        assert!(
            bad.field_violations.iter().any(|v| v.field == field),
            "{field} not named in {:?}",
            bad.field_violations
        );
        assert!(
            !status.message().contains("4242"),
            "a card number must never be echoed: {}",
            status.message()
        );
        for v in &bad.field_violations {
            assert!(
                !v.description.contains("4242"),
                "a card number must never be echoed: {}",
                v.description
            );
        }
    }
    // Several violations at once are all reported.
    let status = op
        .process_payment(pb::ProcessPaymentRequest {
            order_id: String::new(),
            customer_id: String::new(),
            ..good.clone()
        })
        .await
        .expect_err("invalid");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(
        fields.contains(&"order_id".to_owned()) && fields.contains(&"customer_id".to_owned()),
        "{fields:?}"
    );

    assert_nothing_written(&env).await;
    replica.stop().await;
    env.cleanup().await;
}

async fn assert_nothing_written(env: &TestEnv) {
    assert_eq!(
        count(env, "SELECT count(*) FROM orders").await,
        0,
        "no order row"
    );
    assert_eq!(
        count(env, "SELECT count(*) FROM attempts").await,
        0,
        "no attempt row"
    );
    assert_eq!(
        count(env, "SELECT count(*) FROM events").await,
        0,
        "no event"
    );
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.intents.len(), 0, "no gateway call");
    let calls = &ledger.calls;
    assert_eq!(
        calls.create + calls.confirm + calls.get + calls.cancel + calls.refund,
        0,
        "no gateway call"
    );
    let keys = redis_keys(env).await;
    assert!(keys.is_empty(), "no Redis key: {keys:?}");
}

async fn redis_keys(env: &TestEnv) -> Vec<String> {
    let client = redis::Client::open(env.redis_url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("KEYS")
        .arg(format!("{}*", env.redis_prefix))
        .query_async(&mut conn)
        .await
        .expect("keys")
}

#[tokio::test]
async fn roles_and_credentials_are_enforced() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let good = pay("role-1", 100, "k", "pm_card_visa");

    let mut anonymous = client(&replica.url, None).await;
    let status = anonymous
        .process_payment(good.clone())
        .await
        .expect_err("no key");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unauthenticated, "UNAUTHENTICATED")
    );
    let mut stranger = client(&replica.url, Some("pk_test_not_a_key")).await;
    let status = stranger
        .process_payment(good.clone())
        .await
        .expect_err("unknown key");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unauthenticated, "UNAUTHENTICATED")
    );

    // A service is a read-only consumer: no payments.
    let mut service = replica.client(SERVICE).await;
    let status = service
        .process_payment(good.clone())
        .await
        .expect_err("service may not pay");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "FORBIDDEN")
    );
    // An operator may not list reviews, refund, or pause.
    let mut op = replica.client(OPERATOR).await;
    let status = op
        .list_manual_reviews(pb::ListManualReviewsRequest::default())
        .await
        .expect_err("operator");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "FORBIDDEN")
    );
    let status = op
        .pause_payments(pb::PausePaymentsRequest { reason: "x".into() })
        .await
        .expect_err("operator");
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut reviewer = replica.client(REVIEWER).await;
    let status = reviewer
        .pause_payments(pb::PausePaymentsRequest { reason: "x".into() })
        .await
        .expect_err("reviewer");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = reviewer
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect_err("reviewer");
    assert_eq!(status.code(), Code::PermissionDenied);
    // An admin passes the role check and pauses; resumed, so that the payment below goes
    // through (tests/tests/breaker.rs covers the pause itself).
    let mut admin = replica.client(ADMIN).await;
    let paused = admin
        .pause_payments(pb::PausePaymentsRequest { reason: "x".into() })
        .await
        .expect("an admin may pause")
        .into_inner();
    assert!(paused.paused);
    let resumed = admin
        .resume_payments(pb::ResumePaymentsRequest::default())
        .await
        .expect("an admin may resume")
        .into_inner();
    assert!(!resumed.paused);
    assert_nothing_written(&env).await;

    // The caller's key id is the attempt's operator.
    let paid = op
        .process_payment(good)
        .await
        .expect("operator pays")
        .into_inner();
    assert_eq!(paid.attempt.expect("attempt").operator_id, OPERATOR);
    let _ = key_for(OPERATOR);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_start_together_on_an_empty_database() {
    let env = TestEnv::new().await;
    let (a, b, c) = tokio::join!(
        env.replica("s0", &[]),
        env.replica("s1", &[]),
        env.replica("s2", &[])
    );
    for r in [&a, &b, &c] {
        let mut op = r.client(OPERATOR).await;
        let missing = op
            .get_order(pb::GetOrderRequest {
                order_id: "none".into(),
            })
            .await
            .expect_err("empty");
        assert_eq!(missing.code(), Code::NotFound);
    }
    for r in [a, b, c] {
        r.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn refusals_name_the_holder_and_the_server_outlives_the_callers_deadline() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    env.sim_control
        .set_faults(json!({ "latency_ms": 6000 }))
        .await
        .expect("slow gateway");
    let mut alice = replica.client(OPERATOR).await;
    let mut bob = replica.client(OPERATOR_2).await;

    // Alice waits for the outcome, but only 3 s (the gateway takes 6 s): she gets the current
    // state in time. (The server answers a tenth of her deadline early: 300 ms leave room for
    // a loaded machine; with 500 ms, 50 ms did not always.)
    let mut request = tonic::Request::new(pay("held", 900, "alice-1", "pm_card_visa"));
    request.set_timeout(std::time::Duration::from_millis(3000));
    let early = alice
        .process_payment(request)
        .await
        .expect("answered before the deadline")
        .into_inner();
    assert_eq!(
        early.order.expect("order").state(),
        pb::OrderState::AwaitingConfirmation
    );

    // Bob is refused at once and told who holds the order, without a gateway call of his own.
    let refused = bob
        .process_payment(pay("held", 900, "bob-1", "pm_card_visa"))
        .await
        .expect_err("held");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Aborted, "PAYMENT_IN_PROGRESS")
    );
    let info = refused.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.domain, "payments.v1");
    assert_eq!(info.metadata.get("attempt").map(String::as_str), Some("1"));
    assert_eq!(
        info.metadata.get("operator_id").map(String::as_str),
        Some(OPERATOR)
    );
    assert!(
        info.metadata
            .get("started_at")
            .is_some_and(|t| t.starts_with("20")),
        "{:?}",
        info.metadata
    );

    // Alice's deadline passed, yet the server finished her attempt: joining it shows it paid.
    let joined = alice
        .process_payment(pay("held", 900, "alice-1", "pm_card_visa"))
        .await
        .expect("join")
        .into_inner();
    assert!(joined.joined_existing);
    assert_eq!(joined.order.expect("order").state(), pb::OrderState::Paid);
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(
        ledger.calls.create, 1,
        "only Alice's attempt reached the gateway"
    );
    assert_eq!(charges_by_order(&env).await.get("held"), Some(&1));
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn callers_that_give_up_early_never_strand_an_attempt() {
    // Deadlines so short that many calls are abandoned between the attempt's commit and the
    // gateway call: every attempt that was committed must still be driven to its outcome.
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let op = replica.client(OPERATOR).await;
    let mut calls = Vec::new();
    for i in 0..120u64 {
        let mut op = op.clone();
        calls.push(tokio::spawn(async move {
            let mut request = tonic::Request::new(pay(
                &format!("hasty-{i}"),
                300,
                &format!("h-{i}"),
                "pm_card_visa",
            ));
            request.set_timeout(std::time::Duration::from_millis(1 + i % 25));
            let _ = op.process_payment(request).await;
        }));
    }
    for call in calls {
        call.await.expect("caller");
    }
    let mut op = op.clone();
    let mut committed = 0;
    for i in 0..120u64 {
        let order_id = format!("hasty-{i}");
        match op
            .get_order(pb::GetOrderRequest {
                order_id: order_id.clone(),
            })
            .await
        {
            Err(status) => assert_eq!(status.code(), Code::NotFound),
            Ok(_) => {
                committed += 1;
                // Join with the same key and wait: the attempt must reach its outcome.
                let joined = op
                    .process_payment(pay(&order_id, 300, &format!("h-{i}"), "pm_card_visa"))
                    .await;
                let joined = joined.expect("join").into_inner();
                assert_eq!(
                    joined.attempt.expect("attempt").outcome(),
                    pb::AttemptOutcome::Succeeded,
                    "{order_id} was committed but never driven"
                );
            }
        }
    }
    let charges = charges_by_order(&env).await;
    assert_eq!(charges.len(), committed, "one charge per committed attempt");
    assert!(charges.values().all(|c| *c == 1));
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_unknown_outcome_is_recorded_not_guessed() {
    // Without any capability to resolve it (no lookup, no replay, no cancel), an unknown outcome
    // is never guessed: the reason is recorded and the order goes to manual review. (With
    // capabilities it is resolved: tests/tests/recovery.rs.)
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &["--gateway-capabilities", "none"]).await;
    let mut op = replica.client(OPERATOR).await;
    // The gateway charges, then answers 500: the coordinator cannot know.
    env.sim_control
        .set_faults(json!({ "next": ["error_500_after"], "operations": ["confirm"] }))
        .await
        .expect("faults");
    let response = op
        .process_payment(pay("unknown-1", 800, "k1", "pm_card_visa"))
        .await
        .expect("answered")
        .into_inner();
    let order = response.order.expect("order");
    assert_eq!(
        order.state(),
        pb::OrderState::ManualReview,
        "not guessed: an operator decides"
    );
    let attempt = response.attempt.expect("attempt");
    assert_eq!(attempt.outcome(), pb::AttemptOutcome::Unknown);
    assert!(
        attempt.gateway_payment_id.starts_with("pi_"),
        "the intent id was persisted before confirming"
    );
    assert!(
        attempt
            .errors
            .iter()
            .any(|e| e.step == "confirm" && e.message.contains("500")),
        "the reason is in the error history: {:?}",
        attempt.errors
    );
    // Nobody else may pay it meanwhile, and the gateway saw exactly one create and one confirm.
    let refused = op
        .process_payment(pay("unknown-1", 800, "k2", "pm_card_visa"))
        .await
        .expect_err("locked");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "IN_MANUAL_REVIEW")
    );
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!((ledger.calls.create, ledger.calls.confirm), (1, 1));
    assert!(redis_keys(&env).await.is_empty(), "the lease was released");
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_request_twice_at_once_joins_and_a_join_elsewhere_waits() {
    let env = TestEnv::new().await;
    let r0 = env.replica("r0", &[]).await;
    let r1 = env.replica("r1", &[]).await;
    env.sim_control
        .set_faults(json!({ "latency_ms": 400 }))
        .await
        .expect("slow gateway");
    let (mut a, mut b) = (r0.client(OPERATOR).await, r1.client(OPERATOR).await);
    // The same caller sends the same request twice at once, through two replicas.
    let (first, second) = tokio::join!(
        a.process_payment(pay("twice", 600, "same", "pm_card_visa")),
        b.process_payment(pay("twice", 600, "same", "pm_card_visa")),
    );
    let (first, second) = (
        first.expect("first").into_inner(),
        second.expect("second").into_inner(),
    );
    assert_ne!(
        first.joined_existing, second.joined_existing,
        "one started, the other joined it"
    );
    for response in [&first, &second] {
        // The joiner waited for the outcome even when the attempt ran on the other replica.
        assert_eq!(
            response.order.as_ref().expect("order").state(),
            pb::OrderState::Paid
        );
    }
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.calls.create, 1);
    assert_eq!(charges_by_order(&env).await.get("twice"), Some(&1));
    r0.stop().await;
    r1.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_lease_that_outlived_its_attempt_does_not_block_the_order() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let mut op = replica.client(OPERATOR).await;
    op.process_payment(pay("paid-1", 100, "k1", "pm_card_visa"))
        .await
        .expect("paid");
    // Leases left behind by a holder that died without releasing them.
    let client = redis::Client::open(env.redis_url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for order in ["paid-1", "fresh-1"] {
        let _: () = redis::cmd("SET")
            .arg(format!("{}lease:order:{order}", env.redis_prefix))
            .arg(r#"{"replica":"gone","operator_id":"op-ghost","started_at_ms":1,"attempt":7,"nonce":"x"}"#)
            .arg("PX")
            .arg(600_000)
            .query_async(&mut conn)
            .await
            .expect("plant a stale lease");
    }
    // A paid order says so, not PAYMENT_IN_PROGRESS for a ghost.
    let refused = op
        .process_payment(pay("paid-1", 100, "k2", "pm_card_visa"))
        .await
        .expect_err("paid");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "ALREADY_PAID")
    );
    // A payable order is paid: PostgreSQL, not the stale lease, decides.
    let paid = op
        .process_payment(pay("fresh-1", 100, "k3", "pm_card_visa"))
        .await
        .expect("pays")
        .into_inner();
    assert_eq!(paid.order.expect("order").state(), pb::OrderState::Paid);
    assert_eq!(charges_by_order(&env).await.get("fresh-1"), Some(&1));
    replica.stop().await;
    env.cleanup().await;
}
