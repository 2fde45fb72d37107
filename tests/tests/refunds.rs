//! Refunds as "undo" events: partial and full, never more than was paid, idempotent by the
//! caller's key (one gateway refund per key), an unknown outcome resolved by a same-key replay,
//! each success a REFUNDED event on the feed. Real replicas over gRPC, real PostgreSQL and Redis,
//! the simulator over HTTP; every money assertion against the simulator's ledger.

use integration_tests::checks::{reason, wait_for};
use integration_tests::coordinator::{Client, OPERATOR, REVIEWER, SERVICE, TestEnv};
use integration_tests::pg::ThrowawayPg;
use integration_tests::process::CoordinatorProcess;
use payments_proto::v1 as pb;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

const PAID: i64 = 1234;

fn pay(order_id: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: PAID,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-refund".to_owned(),
        payment_method: "pm_card_visa".to_owned(),
        items: vec![],
        idempotency_key: format!("pay-{order_id}"),
        wait_for_outcome: true,
    }
}

fn refund(order_id: &str, amount: Option<i64>, key: &str) -> pb::RefundPaymentRequest {
    pb::RefundPaymentRequest {
        order_id: order_id.to_owned(),
        amount: amount.map(|amount_minor| pb::Money {
            amount_minor,
            currency: "EUR".to_owned(),
        }),
        reason: "customer returned the lamp".to_owned(),
        idempotency_key: key.to_owned(),
    }
}

async fn paid(client: &mut Client, order_id: &str) {
    let order = client
        .process_payment(pay(order_id))
        .await
        .expect("pay")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(order.state(), pb::OrderState::Paid);
}

/// (refunds, amount refunded) of an order, from the simulator's ledger.
async fn ledger_refunds(env: &TestEnv, order_id: &str) -> (usize, u64) {
    let ledger = env.sim_control.ledger().await.expect("ledger");
    ledger
        .intents
        .iter()
        .filter(|i| i.metadata.get("order_id").map(String::as_str) == Some(order_id))
        .fold((0, 0), |(n, amount), i| {
            (n + i.refunds.len(), amount + i.amount_refunded)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_then_full_refunds_are_undo_events_and_never_exceed_what_was_paid() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let mut operator = replica.client(OPERATOR).await;
    let mut reviewer = replica.client(REVIEWER).await;
    paid(&mut operator, "ref-1").await;

    // Operators may not refund; a service may not either.
    for key in [OPERATOR, SERVICE] {
        let mut client = replica.client(key).await;
        let denied = client
            .refund_payment(refund("ref-1", Some(100), "x"))
            .await
            .expect_err("role");
        assert_eq!(denied.code(), Code::PermissionDenied, "{key}");
    }

    // Partial.
    let order = reviewer
        .refund_payment(refund("ref-1", Some(400), "r-1"))
        .await
        .expect("partial refund")
        .into_inner();
    assert_eq!(order.state(), pb::OrderState::Paid);
    assert_eq!(order.refunded.as_ref().map(|m| m.amount_minor), Some(400));
    assert_eq!(order.refunds.len(), 1);
    let first = &order.refunds[0];
    assert_eq!(first.outcome(), pb::RefundOutcome::Succeeded);
    assert_eq!(first.requested_by, REVIEWER);
    assert_eq!(first.gateway_idempotency_key, "refund:ref-1:1");
    assert!(first.gateway_refund_id.starts_with("re_"), "{first:?}");
    assert_eq!(ledger_refunds(&env, "ref-1").await, (1, 400));

    // The same key again: the same answer, no second gateway refund.
    let replayed = reviewer
        .refund_payment(refund("ref-1", Some(400), "r-1"))
        .await
        .expect("same key")
        .into_inner();
    assert_eq!(replayed.refunds, order.refunds);
    assert_eq!(ledger_refunds(&env, "ref-1").await, (1, 400));
    // The same key for another request is refused.
    let reused = reviewer
        .refund_payment(refund("ref-1", Some(401), "r-1"))
        .await
        .expect_err("key reused");
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");

    // More than what remains: refused, saying how much remains; nothing reaches the gateway.
    let refunds_called = env.sim_control.ledger().await.expect("ledger").calls.refund;
    let too_much = reviewer
        .refund_payment(refund("ref-1", Some(PAID - 400 + 1), "r-2"))
        .await
        .expect_err("too much");
    assert_eq!(
        (too_much.code(), reason(&too_much).as_str()),
        (Code::FailedPrecondition, "REFUND_EXCEEDS_PAID")
    );
    let info = too_much.get_details_error_info().expect("error info");
    assert_eq!(
        info.metadata.get("remaining_minor").map(String::as_str),
        Some("834")
    );
    assert_eq!(
        env.sim_control.ledger().await.expect("ledger").calls.refund,
        refunds_called
    );

    // The rest (amount unset): REFUNDED.
    let full = reviewer
        .refund_payment(refund("ref-1", None, "r-3"))
        .await
        .expect("full refund")
        .into_inner();
    assert_eq!(full.state(), pb::OrderState::Refunded);
    assert_eq!(full.refunded.as_ref().map(|m| m.amount_minor), Some(PAID));
    assert_eq!(full.refunds.len(), 2);
    assert_eq!(
        full.refunds[1].amount.as_ref().map(|m| m.amount_minor),
        Some(PAID - 400)
    );
    assert_eq!(ledger_refunds(&env, "ref-1").await, (2, PAID as u64));

    // Nothing is left: refused, and a refunded order cannot be paid again.
    let nothing_left = reviewer
        .refund_payment(refund("ref-1", None, "r-4"))
        .await
        .expect_err("refunded");
    assert_eq!(reason(&nothing_left), "NOT_PAID");
    let repay = operator
        .process_payment(pb::ProcessPaymentRequest {
            idempotency_key: "pay-again".into(),
            ..pay("ref-1")
        })
        .await
        .expect_err("closed");
    assert_eq!(reason(&repay), "ALREADY_PAID");

    // An order not paid, and an unknown one.
    let unpaid = operator
        .process_payment(pb::ProcessPaymentRequest {
            payment_method: "pm_card_chargeDeclined".into(),
            ..pay("ref-declined")
        })
        .await
        .expect("declined answer")
        .into_inner();
    assert_eq!(
        unpaid.order.expect("order").state(),
        pb::OrderState::Pending
    );
    let not_paid = reviewer
        .refund_payment(refund("ref-declined", None, "r-5"))
        .await
        .expect_err("not paid");
    assert_eq!(reason(&not_paid), "NOT_PAID");
    let unknown = reviewer
        .refund_payment(refund("ref-nobody", None, "r-6"))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    let invalid = reviewer
        .refund_payment(pb::RefundPaymentRequest {
            reason: String::new(),
            ..refund("ref-1", Some(-5), "r-7")
        })
        .await
        .expect_err("invalid");
    assert_eq!(reason(&invalid), "INVALID_REQUEST");

    // Each refund is a REFUNDED event on the feed downstream services consume, with its amount.
    let mut service = replica.client(SERVICE).await;
    let mut feed = service
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: 0,
            last: 0,
        })
        .await
        .expect("feed")
        .into_inner();
    let mut undone = Vec::new();
    while undone.len() < 2 {
        let event = feed.next().await.expect("an event").expect("ok");
        if event.kind() == pb::EventKind::Refunded {
            assert_eq!(event.order_id, "ref-1");
            assert_eq!(event.actor, REVIEWER);
            undone.push((event.amount.as_ref().map(|m| m.amount_minor), event.state()));
        }
    }
    assert_eq!(
        undone,
        [
            (Some(400), pb::OrderState::Paid),
            (Some(PAID - 400), pb::OrderState::Refunded)
        ]
    );
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_whose_answer_is_lost_is_replayed_with_its_key_and_refunds_once() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let mut operator = replica.client(OPERATOR).await;
    let mut reviewer = replica.client(REVIEWER).await;
    paid(&mut operator, "ref-lost").await;
    // The gateway refunds and the connection drops before the answer.
    env.sim_control
        .set_faults(json!({ "next": ["drop_after_charge"], "operations": ["refund"] }))
        .await
        .expect("faults");
    let order = reviewer
        .refund_payment(refund("ref-lost", None, "r-lost"))
        .await
        .expect("refund answered")
        .into_inner();
    let order = if order.state() == pb::OrderState::Refunded {
        order
    } else {
        // Answered before the replay settled it: follow the order to its outcome.
        wait_for("the refund settles", async || {
            let o = reviewer
                .get_order(pb::GetOrderRequest {
                    order_id: "ref-lost".into(),
                })
                .await
                .expect("get")
                .into_inner();
            (o.state() == pb::OrderState::Refunded).then_some(o)
        })
        .await
    };
    let refund = &order.refunds[0];
    assert_eq!(refund.outcome(), pb::RefundOutcome::Succeeded);
    let history: Vec<_> = refund.errors.iter().map(|e| e.step.as_str()).collect();
    assert!(
        history.contains(&"refund") && history.contains(&"replay"),
        "{history:?}"
    );
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(
        ledger.calls.refund, 2,
        "the first call and one same-key replay"
    );
    assert_eq!(ledger_refunds(&env, "ref-lost").await, (1, PAID as u64));
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranded_refund_is_taken_over_by_the_recovery_worker() {
    let env = TestEnv::new().await;
    let fast = ["--lease-ttl-ms", "600", "--recovery-sweep-ms", "100"];
    let replica = env.replica("r0", &fast).await;
    let mut operator = replica.client(OPERATOR).await;
    paid(&mut operator, "ref-strand").await;
    // A refund committed IN_FLIGHT by a holder that died before calling the gateway (what a
    // kill -9 between the commit and the call leaves behind): written as begin_refund does.
    let sql = env.sql().await;
    let pi: String = sql
        .query_one(
            "SELECT gateway_payment_id FROM attempts WHERE order_id = 'ref-strand' AND outcome = 'SUCCEEDED'",
            &[],
        )
        .await
        .expect("charge")
        .get(0);
    sql.batch_execute(&format!(
        "UPDATE orders SET refund_count = 1 WHERE order_id = 'ref-strand';
         INSERT INTO refunds (order_id, number, requested_by, request_key, fingerprint, amount_minor,
             currency, reason, gateway_payment_id, gateway_refund_key, outcome, replica_id, heartbeat_at)
         VALUES ('ref-strand', 1, '{REVIEWER}', 'k', 'f', 500, 'EUR', 'died', '{pi}',
             'refund:ref-strand:1', 'IN_FLIGHT', 'gone', now() - interval '1 hour');"
    ))
    .await
    .expect("strand a refund");
    let order = wait_for("the recovery worker settles the refund", async || {
        let o = operator
            .get_order(pb::GetOrderRequest {
                order_id: "ref-strand".into(),
            })
            .await
            .expect("get")
            .into_inner();
        (o.refunds.first().map(|r| r.outcome()) == Some(pb::RefundOutcome::Succeeded)).then_some(o)
    })
    .await;
    assert_eq!(order.refunded.as_ref().map(|m| m.amount_minor), Some(500));
    assert_eq!(order.state(), pb::OrderState::Paid);
    let steps: Vec<_> = order.refunds[0]
        .errors
        .iter()
        .map(|e| e.message.clone())
        .collect();
    assert!(
        steps.iter().any(|s| s.contains("recovery worker of r0")),
        "{steps:?}"
    );
    assert_eq!(ledger_refunds(&env, "ref-strand").await, (1, 500));
    replica.stop().await;
    env.cleanup().await;
}

/// A gateway without idempotency keys: a refund whose outcome is unknown cannot be asked again.
async fn poorer_gateway() -> (TestEnv, integration_tests::coordinator::Replica) {
    let env = TestEnv::with_sim(booking_sim::psp::SimConfig {
        without: booking_sim::psp::Without {
            idempotency: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let replica = env
        .replica("r0", &["--gateway-capabilities", "lookup,cancel"])
        .await;
    (env, replica)
}

fn resolve_refund(
    order_id: &str,
    number: i32,
    resolution: pb::Resolution,
    refund_id: &str,
) -> pb::ResolveManualReviewRequest {
    pb::ResolveManualReviewRequest {
        order_id: order_id.to_owned(),
        resolution: resolution.into(),
        refund_number: number,
        gateway_refund_id: refund_id.to_owned(),
        note: "checked the gateway's refunds".to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_in_doubt_goes_to_manual_review_and_holds_the_order_until_resolved() {
    let (env, replica) = poorer_gateway().await;
    let mut operator = replica.client(OPERATOR).await;
    let mut reviewer = replica.client(REVIEWER).await;
    paid(&mut operator, "ref-doubt").await;
    paid(&mut operator, "ref-undone").await;

    // The gateway refunds, then the answer is lost; and a 500 before anything is refunded.
    env.sim_control
        .set_faults(json!({ "next": ["drop_after_charge"], "operations": ["refund"] }))
        .await
        .expect("faults");
    let doubt = reviewer
        .refund_payment(refund("ref-doubt", None, "d-1"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(doubt.refunds[0].outcome(), pb::RefundOutcome::Unknown);
    assert_eq!(doubt.state(), pb::OrderState::Paid, "nothing counted yet");
    env.sim_control
        .set_faults(json!({ "next": ["error_500_before"], "operations": ["refund"] }))
        .await
        .expect("faults");
    let undone = reviewer
        .refund_payment(refund("ref-undone", Some(500), "u-1"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(undone.refunds[0].outcome(), pb::RefundOutcome::Unknown);
    // Never asked twice: one refund call each.
    assert_eq!(
        env.sim_control.ledger().await.expect("ledger").calls.refund,
        2
    );
    assert_eq!(ledger_refunds(&env, "ref-doubt").await, (1, PAID as u64));
    assert_eq!(ledger_refunds(&env, "ref-undone").await, (0, 0));

    // Both are review items with what to check; the order's refund slot stays taken.
    let items = reviewer
        .list_manual_reviews(pb::ListManualReviewsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .items;
    let kinds: Vec<_> = items
        .iter()
        .map(|i| {
            (
                i.order.as_ref().map(|o| o.order_id.clone()),
                i.refund_number,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (Some("ref-doubt".to_owned()), 1),
            (Some("ref-undone".to_owned()), 1)
        ]
    );
    assert_eq!(items[0].gateway_idempotency_keys, ["refund:ref-doubt:1"]);
    assert_eq!(items[0].operator_id, REVIEWER);
    assert!(items[0].reason.contains("idempotency"), "{:?}", items[0]);
    let held = reviewer
        .refund_payment(refund("ref-undone", Some(100), "u-2"))
        .await
        .expect_err("slot held");
    assert_eq!(reason(&held), "REFUND_IN_PROGRESS");
    assert!(
        held.message().contains("awaits a reviewer"),
        "{}",
        held.message()
    );

    // Resolved as refunded (the reviewer found the refund): it counts, and it is the undo event.
    let ledger = env.sim_control.ledger().await.expect("ledger");
    let re = ledger
        .intents
        .iter()
        .find(|i| i.metadata.get("order_id").map(String::as_str) == Some("ref-doubt"))
        .and_then(|i| i.refunds.first())
        .map(|r| r.id.clone())
        .expect("the refund at the gateway");
    let done = reviewer
        .resolve_manual_review(resolve_refund(
            "ref-doubt",
            1,
            pb::Resolution::Refunded,
            &re,
        ))
        .await
        .expect("resolved")
        .into_inner();
    assert_eq!(done.state(), pb::OrderState::Refunded);
    assert_eq!(done.refunded.as_ref().map(|m| m.amount_minor), Some(PAID));
    let r = &done.refunds[0];
    assert_eq!(r.resolution(), pb::Resolution::Refunded);
    assert_eq!(
        (r.resolved_by.as_str(), r.gateway_refund_id.as_str()),
        (REVIEWER, re.as_str())
    );
    // Twice: refused.
    let twice = reviewer
        .resolve_manual_review(resolve_refund(
            "ref-doubt",
            1,
            pb::Resolution::NotRefunded,
            "",
        ))
        .await
        .expect_err("twice");
    assert_eq!(reason(&twice), "NOT_IN_MANUAL_REVIEW");

    // Resolved as not refunded: nothing counts, and the order may be refunded again (once).
    let open = reviewer
        .resolve_manual_review(resolve_refund(
            "ref-undone",
            1,
            pb::Resolution::NotRefunded,
            "",
        ))
        .await
        .expect("resolved")
        .into_inner();
    assert_eq!(open.state(), pb::OrderState::Paid);
    assert_eq!(open.refunded.as_ref().map(|m| m.amount_minor), Some(0));
    let again = reviewer
        .refund_payment(refund("ref-undone", Some(500), "u-3"))
        .await
        .expect("refunded now")
        .into_inner();
    assert_eq!(again.refunded.as_ref().map(|m| m.amount_minor), Some(500));
    assert_eq!(ledger_refunds(&env, "ref-undone").await, (1, 500));

    // The feed tells the story: review opened, resolved, then the undo.
    let sql = env.sql().await;
    let kinds: Vec<String> = sql
        .query(
            "SELECT kind FROM events WHERE order_id = 'ref-doubt' ORDER BY sequence",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        kinds[kinds.len() - 3..],
        ["MANUAL_REVIEW_OPENED", "MANUAL_REVIEW_RESOLVED", "REFUNDED"]
    );
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refunds_never_refund_more_than_was_paid() {
    let env = TestEnv::new().await;
    let r0 = env.replica("r0", &[]).await;
    let r1 = env.replica("r1", &[]).await;
    let mut operator = r0.client(OPERATOR).await;
    paid(&mut operator, "ref-race").await;
    // Four full refunds with four keys at once, over two replicas.
    let mut calls = Vec::new();
    for (i, replica) in [&r0, &r1, &r0, &r1].into_iter().enumerate() {
        let mut client = replica.client(REVIEWER).await;
        calls.push(tokio::spawn(async move {
            client
                .refund_payment(refund("ref-race", None, &format!("race-{i}")))
                .await
        }));
    }
    let mut refunded = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => refunded += 1,
            Err(status) => assert!(
                ["REFUND_IN_PROGRESS", "NOT_PAID"].contains(&reason(&status).as_str()),
                "{status:?}"
            ),
        }
    }
    assert_eq!(refunded, 1);
    assert_eq!(ledger_refunds(&env, "ref-race").await, (1, PAID as u64));
    r0.stop().await;
    r1.stop().await;
    env.cleanup().await;
}

/// The `refunds` row of an order's refund `number`: (outcome, gateway key, replica).
async fn refund_row(
    env: &TestEnv,
    order_id: &str,
    number: i32,
) -> Option<(String, String, String)> {
    env.sql()
        .await
        .query_opt(
            "SELECT outcome, gateway_refund_key, replica_id FROM refunds \
             WHERE order_id = $1 AND number = $2",
            &[&order_id, &number],
        )
        .await
        .expect("refunds row")
        .map(|row| (row.get(0), row.get(1), row.get(2)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_is_committed_in_flight_before_the_gateway_call_and_survives_a_kill_9() {
    let env = TestEnv::new().await;
    // Both replicas agree on the lease (a refund is stale once its heartbeat is older than it);
    // r1, the real binary, would wait for the gateway far longer than the test runs, so its
    // refund call is held until r1 dies.
    let fast = ["--lease-ttl-ms", "600", "--recovery-sweep-ms", "100"];
    let mut r1 = CoordinatorProcess::spawn(
        &env,
        "r1",
        &[fast.as_slice(), &["--gateway-timeout-ms", "600000"]].concat(),
    )
    .await;
    let mut operator = r1.client(OPERATOR).await;
    paid(&mut operator, "ref-intent").await;

    // The gateway takes the refund call and never answers it (nothing is refunded).
    env.sim_control
        .set_faults(json!({ "next": ["hang"], "operations": ["refund"] }))
        .await
        .expect("faults");
    let mut reviewer = r1.client(REVIEWER).await;
    let refunding = tokio::spawn(async move {
        reviewer
            .refund_payment(refund("ref-intent", None, "i-1"))
            .await
    });
    wait_for("the refund call is held at the gateway", async || {
        let ledger = env.sim_control.ledger().await.expect("ledger");
        (ledger.calls.refund == 1 && ledger.idempotency.in_flight == 1).then_some(())
    })
    .await;
    // While the gateway holds the call, the intent is already committed: IN_FLIGHT, with the
    // deterministic key the call carries. (A refund written only after the gateway answered
    // would have no row here.)
    assert_eq!(
        refund_row(&env, "ref-intent", 1).await,
        Some((
            "IN_FLIGHT".to_owned(),
            "refund:ref-intent:1".to_owned(),
            "r1".to_owned()
        ))
    );
    assert_eq!(ledger_refunds(&env, "ref-intent").await, (0, 0));

    // r1 dies mid-call; the simulator sees its client go and frees the key (still nothing
    // refunded).
    r1.kill_9();
    // Its caller learnt no outcome: r1 died mid-call (or, had the caller's wait run out first,
    // answered with the refund still in flight).
    if let Ok(answer) = refunding.await.expect("task") {
        let answer = answer.into_inner();
        assert_eq!(
            answer.refunds[0].outcome(),
            pb::RefundOutcome::InFlight,
            "{answer:?}"
        );
    }
    wait_for("the simulator lets go of the held key", async || {
        let ledger = env.sim_control.ledger().await.expect("ledger");
        (ledger.idempotency.in_flight == 0).then_some(())
    })
    .await;
    assert_eq!(ledger_refunds(&env, "ref-intent").await, (0, 0));

    // Another replica's recovery worker finds the committed intent and settles it with the
    // same key: exactly one refund at the gateway.
    let r0 = env.replica("r0", &fast).await;
    let mut reviewer = r0.client(REVIEWER).await;
    let order = wait_for("r0's recovery worker settles the refund", async || {
        let o = reviewer
            .get_order(pb::GetOrderRequest {
                order_id: "ref-intent".into(),
            })
            .await
            .expect("get")
            .into_inner();
        (o.state() == pb::OrderState::Refunded).then_some(o)
    })
    .await;
    let settled = &order.refunds[0];
    assert_eq!(settled.outcome(), pb::RefundOutcome::Succeeded);
    assert_eq!(settled.gateway_idempotency_key, "refund:ref-intent:1");
    assert!(
        settled
            .errors
            .iter()
            .any(|e| e.message.contains("recovery worker of r0")),
        "{:?}",
        settled.errors
    );
    assert_eq!(ledger_refunds(&env, "ref-intent").await, (1, PAID as u64));
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.calls.refund, 2, "the held call and r0's one replay");
    let keys: Vec<_> = env
        .sim_control
        .requests()
        .await
        .expect("requests")
        .into_iter()
        .filter(|r| r.op == "refund")
        .map(|r| r.idempotency_key)
        .collect();
    assert!(
        keys.iter()
            .all(|k| k.as_deref() == Some("refund:ref-intent:1")),
        "{keys:?}"
    );
    r0.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_while_postgres_is_down_is_refused_before_the_gateway() {
    let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
        .await
        .expect("start PostgreSQL");
    let env = TestEnv::with(booking_sim::psp::SimConfig::default(), pg.url_base()).await;
    let replica = env.replica("r0", &[]).await;
    let mut operator = replica.client(OPERATOR).await;
    let mut reviewer = replica.client(REVIEWER).await;
    paid(&mut operator, "ref-nodb").await;

    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .expect("stop PostgreSQL");
    // Without the store the intent cannot be committed, so the gateway must not be called.
    let refused = reviewer
        .refund_payment(refund("ref-nodb", None, "nodb-1"))
        .await
        .expect_err("no store, no refund");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unavailable, "STORE_UNAVAILABLE")
    );
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.calls.refund, 0, "nothing reached the gateway");

    // Safe to retry: once PostgreSQL is back the same request refunds, once.
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .expect("start PostgreSQL again");
    let order = wait_for("the retried refund is served", async || {
        match reviewer
            .refund_payment(refund("ref-nodb", None, "nodb-1"))
            .await
        {
            Ok(order) => Some(order.into_inner()),
            Err(status) => {
                assert_eq!(reason(&status), "STORE_UNAVAILABLE", "{status:?}");
                None
            }
        }
    })
    .await;
    assert_eq!(order.state(), pb::OrderState::Refunded);
    assert_eq!(ledger_refunds(&env, "ref-nodb").await, (1, PAID as u64));
    assert_eq!(
        env.sim_control.ledger().await.expect("ledger").calls.refund,
        1
    );
    replica.stop().await;
    env.cleanup().await;
    drop(pg);
}
