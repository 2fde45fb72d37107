//! Unknown outcomes resolved, never guessed; stranded attempts taken over by the recovery worker.
//! Real coordinator replicas over gRPC, real PostgreSQL and Redis, the gateway simulator over
//! HTTP with forced faults. Every money assertion is made against the simulator's ledger.

use integration_tests::checks::{charges, steps, wait_for};
use std::time::Duration;

use booking_sim::psp::{SimConfig, Without};
use integration_tests::coordinator::{Client, OPERATOR, TestEnv};
use payments_proto::v1::{self as pb};
use serde_json::json;

fn pay(order_id: &str, key: &str, wait: bool) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 1234,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-7".to_owned(),
        payment_method: "pm_card_visa".to_owned(),
        items: vec![pb::LineItem {
            product_id: "sku-9".into(),
            quantity: 2,
            unit_amount_minor: 617,
        }],
        idempotency_key: key.to_owned(),
        wait_for_outcome: wait,
    }
}

async fn order(client: &mut Client, order_id: &str) -> pb::Order {
    client
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .expect("get order")
        .into_inner()
}

/// Polls the order (over gRPC) until it leaves AWAITING_CONFIRMATION.
async fn settled(client: &mut Client, order_id: &str) -> pb::Order {
    wait_for("the order leaves AWAITING_CONFIRMATION", async || {
        let o = order(client, order_id).await;
        (o.state() != pb::OrderState::AwaitingConfirmation).then_some(o)
    })
    .await
}

/// The state and the ledger agree: PAID ⇔ one charge; PENDING (cancelled) ⇔ none.
async fn assert_state_matches_ledger(env: &TestEnv, o: &pb::Order, what: &str) {
    let charged = charges(env, &o.order_id).await;
    match o.state() {
        pb::OrderState::Paid => assert_eq!(charged, 1, "{what}: paid once"),
        pb::OrderState::Pending => assert_eq!(charged, 0, "{what}: nothing charged"),
        other => panic!("{what}: unexpected state {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answers_after_the_charge_are_resolved_to_one_charge() {
    // (flow, faulted operation, fault, the step that must appear in the history)
    let cases = [
        ("one_shot", "create", "drop_after_charge", "replay"),
        ("two_phase", "confirm", "drop_after_charge", "lookup"),
        ("two_phase", "confirm", "error_500_after", "lookup"),
        ("one_shot", "create", "error_500_after", "replay"),
    ];
    for (flow, op, fault, step) in cases {
        let what = format!("{flow} {fault} on {op}");
        let env = TestEnv::new().await;
        let replica = env.replica("r0", &["--gateway-flow", flow]).await;
        let mut client = replica.client(OPERATOR).await;
        env.sim_control
            .set_faults(json!({ "next": [fault], "operations": [op] }))
            .await
            .expect("faults");
        let response = client
            .process_payment(pay("lost-1", "k1", true))
            .await
            .expect("answered")
            .into_inner();
        let o = response.order.expect("order");
        assert_eq!(o.state(), pb::OrderState::Paid, "{what}");
        let attempt = &o.attempts[0];
        assert_eq!(attempt.outcome(), pb::AttemptOutcome::Succeeded, "{what}");
        assert_eq!(charges(&env, "lost-1").await, 1, "{what}: charged once");
        let history = steps(attempt);
        assert!(
            history.iter().any(|s| s.starts_with(op)),
            "{what}: the reason is recorded: {history:?}"
        );
        assert!(
            history.iter().any(|s| s.starts_with(step)),
            "{what}: the resolution step is recorded: {history:?}"
        );
        let ledger = env.sim_control.ledger().await.expect("ledger");
        assert_eq!(ledger.totals.charges, 1, "{what}");
        replica.stop().await;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_500_before_the_confirm_is_resolved_without_a_double_charge() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let mut client = replica.client(OPERATOR).await;
    env.sim_control
        .set_faults(json!({ "next": ["error_500_before"], "operations": ["confirm"] }))
        .await
        .expect("faults");
    let o = client
        .process_payment(pay("before-1", "k1", true))
        .await
        .expect("answered")
        .into_inner()
        .order
        .expect("order");
    // With every capability the lookup finds the intent unconfirmed and the same-key replay of
    // the confirm charges it once.
    assert_eq!(o.state(), pb::OrderState::Paid);
    assert_state_matches_ledger(&env, &o, "error_500_before").await;
    let history = steps(&o.attempts[0]);
    assert!(
        history.iter().any(|s| s.starts_with("lookup"))
            && history.iter().any(|s| s.starts_with("replay")),
        "{history:?}"
    );
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_confirm_is_voided_and_the_order_is_payable_again() {
    let env = TestEnv::new().await;
    // Without idempotency keys, an intent whose confirm did not land is voided rather than
    // confirmed again.
    let replica = env
        .replica(
            "r0",
            &[
                "--gateway-timeout-ms",
                "500",
                "--gateway-capabilities",
                "lookup,cancel",
            ],
        )
        .await;
    let mut client = replica.client(OPERATOR).await;
    env.sim_control
        .set_faults(json!({ "next": ["hang"], "operations": ["confirm"] }))
        .await
        .expect("faults");
    let o = client
        .process_payment(pay("hang-1", "k1", true))
        .await
        .expect("answered")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(o.state(), pb::OrderState::Pending, "payable again");
    let attempt = &o.attempts[0];
    assert_eq!(attempt.outcome(), pb::AttemptOutcome::Cancelled);
    let history = steps(attempt);
    assert!(
        history
            .iter()
            .any(|s| s.starts_with("confirm") && s.contains("timeout"))
            && history.iter().any(|s| s.starts_with("cancel")),
        "{history:?}"
    );
    assert_eq!(charges(&env, "hang-1").await, 0, "nothing charged");
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.intents.len(), 1);
    assert_eq!(
        ledger.intents[0].status,
        booking_sim::psp::IntentStatus::Canceled
    );

    // The next attempt (new gateway keys) pays once.
    let o = client
        .process_payment(pay("hang-1", "k2", true))
        .await
        .expect("second attempt")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(o.state(), pb::OrderState::Paid);
    assert_eq!(o.attempts.len(), 2);
    assert_eq!(o.attempts[1].gateway_idempotency_key, "pay:hang-1:2:create");
    assert_eq!(charges(&env, "hang-1").await, 1, "paid once");
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_idempotency_and_lookup_a_lost_one_shot_answer_goes_to_manual_review() {
    let env = TestEnv::with_sim(SimConfig {
        without: Without {
            idempotency: true,
            lookup: true,
            ..Without::default()
        },
        ..SimConfig::default()
    })
    .await;
    let replica = env
        .replica(
            "r0",
            &[
                "--gateway-flow",
                "one_shot",
                "--gateway-capabilities",
                "cancel",
            ],
        )
        .await;
    let mut client = replica.client(OPERATOR).await;
    env.sim_control
        .set_faults(json!({ "next": ["drop_after_charge"], "operations": ["create"] }))
        .await
        .expect("faults");
    let o = client
        .process_payment(pay("review-1", "k1", true))
        .await
        .expect("answered")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(o.state(), pb::OrderState::ManualReview);
    let attempt = &o.attempts[0];
    assert_eq!(attempt.outcome(), pb::AttemptOutcome::Unknown);
    assert_eq!(attempt.gateway_idempotency_key, "pay:review-1:1:create");
    let history = steps(attempt);
    assert!(
        history.iter().any(|s| s.starts_with("create"))
            && history.iter().any(|s| s.contains("manual review")),
        "{history:?}"
    );
    // Nothing was replayed: one create reached the gateway (and it did charge: that is what the
    // reviewer must find out).
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.calls.create, 1);
    assert_eq!(charges(&env, "review-1").await, 1);
    // The MANUAL_REVIEW_OPENED event carries every detail an operator needs.
    let sql = env.sql().await;
    let detail: String = sql
        .query_one(
            "SELECT detail FROM events WHERE order_id = 'review-1' AND kind = 'MANUAL_REVIEW_OPENED'",
            &[],
        )
        .await
        .expect("review event")
        .get(0);
    for needle in [
        "review-1",
        "cust-7",
        "1234 EUR",
        "sku-9",
        "pay:review-1:1:create",
        "connection",
        "started 20",
    ] {
        assert!(detail.contains(needle), "{needle} missing in {detail}");
    }
    replica.stop().await;
    env.cleanup().await;
}

/// Starts a payment on a slowed r0 and makes its attempt look stranded (its holder's heartbeat
/// far in the past) while r0's gateway call is still running; `prepare` may change the attempt
/// further. Then starts r1, whose start-up sweep takes the attempt over.
async fn strand_and_take_over(
    env: &TestEnv,
    flow: &str,
    order_id: &str,
    prepare: &str,
) -> (
    integration_tests::coordinator::Replica,
    integration_tests::coordinator::Replica,
) {
    let r0 = env
        .replica(
            "r0",
            &["--gateway-flow", flow, "--recovery-sweep-ms", "600000"],
        )
        .await;
    let mut c0 = r0.client(OPERATOR).await;
    env.sim_control
        .set_faults(json!({ "latency_ms": 2000, "operations": ["create"] }))
        .await
        .expect("slow creates");
    let started = c0
        .process_payment(pay(order_id, "k1", false))
        .await
        .expect("started")
        .into_inner();
    assert_eq!(
        started.order.expect("order").state(),
        pb::OrderState::AwaitingConfirmation
    );
    let sql = env.sql().await;
    sql.batch_execute(&format!(
        "UPDATE attempts SET heartbeat_at = '-infinity' {prepare} WHERE order_id = '{order_id}'"
    ))
    .await
    .expect("strand the attempt");
    let r1 = env
        .replica("r1", &["--gateway-flow", flow, "--lease-ttl-ms", "1000"])
        .await;
    (r0, r1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranded_attempt_is_taken_over_and_the_stale_holder_cannot_overwrite() {
    for flow in ["one_shot", "two_phase"] {
        let env = TestEnv::new().await;
        let order_id = format!("stranded-{flow}");
        let (r0, r1) = strand_and_take_over(&env, flow, &order_id, "").await;
        let mut c1 = r1.client(OPERATOR).await;
        let o = settled(&mut c1, &order_id).await;
        assert_state_matches_ledger(&env, &o, flow).await;
        let expected = match flow {
            // The worker replays the create with the same key: the gateway answers the original.
            "one_shot" => pb::OrderState::Paid,
            // The intent id was never persisted (the stale holder could not record it), so it
            // was never confirmed: nothing charged, the order payable again.
            _ => pb::OrderState::Pending,
        };
        assert_eq!(o.state(), expected, "{flow}");
        // The fence was bumped by the takeover.
        let sql = env.sql().await;
        let fence: i64 = sql
            .query_one("SELECT fence FROM orders WHERE order_id = $1", &[&order_id])
            .await
            .expect("fence")
            .get(0);
        assert!(fence >= 2, "{flow}: the takeover bumped the fence");
        // Wait until the stale holder (r0) has finished its call and tried to write: its
        // outcome lands in the history only.
        let history = wait_for(
            "the stale holder's outcome reaches the history",
            async || {
                let o = order(&mut c1, &order_id).await;
                let history = steps(&o.attempts[0]);
                history
                    .iter()
                    .any(|s| {
                        s.contains("superseded holder learnt") || s.contains("left unconfirmed")
                    })
                    .then_some((o, history))
            },
        )
        .await;
        let (after, history) = history;
        assert!(
            history
                .iter()
                .any(|s| s.contains("taken over by the recovery worker")),
            "{flow}: {history:?}"
        );
        assert_eq!(after.state(), expected, "{flow}: not overwritten");
        assert_eq!(
            after.attempts[0].outcome(),
            o.attempts[0].outcome(),
            "{flow}"
        );
        assert_state_matches_ledger(&env, &after, flow).await;
        if flow == "two_phase" {
            // Payable again: the next attempt pays once.
            let o = c1
                .process_payment(pay(&order_id, "k2", true))
                .await
                .expect("pay again")
                .into_inner()
                .order
                .expect("order");
            assert_eq!(o.state(), pb::OrderState::Paid);
            assert_eq!(charges(&env, &order_id).await, 1);
        }
        r0.stop().await;
        r1.stop().await;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_idempotency_window_a_create_is_never_replayed() {
    let env = TestEnv::new().await;
    // The coordinator measures the window from the attempt's start: the test moves it 25 hours
    // into the past in SQL, and moves the simulator's clock on as well.
    env.sim_control
        .advance_clock(Duration::from_secs(25 * 3600))
        .await
        .expect("advance the simulator's clock");
    let (r0, r1) = strand_and_take_over(
        &env,
        "one_shot",
        "window-1",
        ", started_at = now() - interval '25 hours'",
    )
    .await;
    let mut c1 = r1.client(OPERATOR).await;
    let o = settled(&mut c1, "window-1").await;
    assert_eq!(o.state(), pb::OrderState::ManualReview);
    assert_eq!(o.attempts[0].outcome(), pb::AttemptOutcome::Unknown);
    let history = steps(&o.attempts[0]);
    assert!(history.iter().any(|s| s.contains("window")), "{history:?}");
    // Only the stale holder's own create reached the gateway: no replay.
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert!(ledger.calls.create <= 1, "no replay: {:?}", ledger.calls);
    r0.stop().await;
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.calls.create, 1, "no replay");
    r1.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn without_idempotency_and_lookup_a_timeout_goes_to_manual_review() {
    let env = TestEnv::with_sim(SimConfig {
        without: Without {
            idempotency: true,
            lookup: true,
            ..Without::default()
        },
        ..SimConfig::default()
    })
    .await;
    let replica = env
        .replica(
            "r0",
            &[
                "--gateway-flow",
                "one_shot",
                "--gateway-capabilities",
                "cancel",
                "--gateway-timeout-ms",
                "500",
            ],
        )
        .await;
    let mut client = replica.client(OPERATOR).await;
    // The gateway charges and holds its answer past the coordinator's timeout.
    integration_tests::review::charge_and_lose_the_next_answer(&env).await;
    let o = client
        .process_payment(pay("review-t", "k1", true))
        .await
        .expect("answered")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(
        o.state(),
        pb::OrderState::ManualReview,
        "nothing can establish the outcome"
    );
    let attempt = &o.attempts[0];
    assert_eq!(attempt.outcome(), pb::AttemptOutcome::Unknown);
    let history = steps(attempt);
    assert!(history.iter().any(|s| s.contains("timeout")), "{history:?}");
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.calls.create, 1, "never a blind retry");
    assert_eq!(
        charges(&env, "review-t").await,
        1,
        "the charge the reviewer must find"
    );
    replica.stop().await;
    env.cleanup().await;
}
