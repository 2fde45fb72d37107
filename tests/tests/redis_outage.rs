//! Redis down: correctness never depends on it. The test's own Redis (a throwaway redis-server)
//! is stopped while payments run on two replicas and started again; a replica also starts while
//! it is down. Every money assertion is made against the simulator's ledger.

use integration_tests::checks::{charges_by_order, reason, wait_for};
use std::{collections::HashMap, time::Duration};

use integration_tests::{
    coordinator::{Client, OPERATOR, OPERATOR_2, Replica, TestEnv},
    redis::ThrowawayRedis,
};
use payments_proto::v1::{self as pb};
use serde_json::json;
use tonic_types::StatusExt;

/// A guard against a hung test, never an assertion about speed.
const GUARD: Duration = Duration::from_secs(90);

const ORDERS_PER_WAVE: usize = 10;
const CALLERS: usize = 5;

fn pay(order_id: &str, key: &str, method: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 1234,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-7".to_owned(),
        payment_method: method.to_owned(),
        items: vec![],
        idempotency_key: key.to_owned(),
        wait_for_outcome: true,
    }
}

/// Every third order is paid with a card the gateway declines: it ends PENDING, payable again.
fn method_of(order_id: &str) -> &'static str {
    let n: usize = order_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    if n % 3 == 0 {
        "pm_card_chargeDeclined"
    } else {
        "pm_card_visa"
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

type Call = tokio::task::JoinHandle<(String, Result<pb::ProcessPaymentResponse, tonic::Status>)>;

/// Callers `callers` of each order (alternating replicas and operators, each with its own key),
/// all at once. Returns one join handle per call.
async fn wave(
    replicas: &[&Replica],
    orders: &[String],
    callers: std::ops::Range<usize>,
) -> Vec<Call> {
    let mut clients = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        for operator in [OPERATOR, OPERATOR_2] {
            clients.push((i, replica.client(operator).await));
        }
    }
    let mut calls = Vec::new();
    for order_id in orders {
        for caller in callers.clone() {
            let mut client = clients[caller % clients.len()].1.clone();
            let order_id = order_id.clone();
            calls.push(tokio::spawn(async move {
                let request = pay(
                    &order_id,
                    &format!("{order_id}-k{caller}"),
                    method_of(&order_id),
                );
                let answer = client
                    .process_payment(request)
                    .await
                    .map(|r| r.into_inner());
                (order_id, answer)
            }));
        }
    }
    calls
}

/// Checks every answer: a new attempt (the order's first, or one after a decline), the caller's
/// own join, or a refusal naming why (`PAYMENT_IN_PROGRESS`, `ALREADY_PAID`).
async fn check_answers(calls: Vec<Call>) {
    for call in calls {
        let (order_id, answer) = tokio::time::timeout(GUARD, call)
            .await
            .expect("a caller hung")
            .expect("caller task");
        match answer {
            Ok(response) => {
                let attempt = response.attempt.expect("attempt");
                assert_ne!(
                    attempt.outcome(),
                    pb::AttemptOutcome::Unknown,
                    "{order_id}: {attempt:?}"
                );
            }
            Err(status) => {
                let why = reason(&status);
                assert!(
                    why == "PAYMENT_IN_PROGRESS" || why == "ALREADY_PAID",
                    "{order_id}: unexpected refusal {status:?}"
                );
                if why == "PAYMENT_IN_PROGRESS" {
                    // The holder is named (from PostgreSQL when Redis is down).
                    let info = status.get_details_error_info().expect("ErrorInfo");
                    let attempt: i32 = info.metadata["attempt"].parse().expect("attempt number");
                    assert!(attempt >= 1, "{order_id}: {info:?}");
                    assert!(
                        [OPERATOR, OPERATOR_2].contains(&info.metadata["operator_id"].as_str()),
                        "{order_id}: {info:?}"
                    );
                }
            }
        }
    }
}

/// Every order has left AWAITING_CONFIRMATION and agrees with the ledger: PAID ⇔ charged once,
/// PENDING ⇔ nothing charged.
async fn assert_settled_and_consistent(env: &TestEnv, client: &mut Client, orders: &[String]) {
    let mut states = HashMap::new();
    for order_id in orders {
        let o = wait_for(&format!("{order_id} settles"), async || {
            let o = order(client, order_id).await;
            (o.state() != pb::OrderState::AwaitingConfirmation).then_some(o)
        })
        .await;
        states.insert(order_id.clone(), o);
    }
    let charges = charges_by_order(env).await;
    for order_id in orders {
        let o = &states[order_id];
        let charged = charges.get(order_id).copied().unwrap_or(0);
        let expected = if method_of(order_id) == "pm_card_visa" {
            pb::OrderState::Paid
        } else {
            pb::OrderState::Pending
        };
        assert_eq!(o.state(), expected, "{order_id}: {o:?}");
        match o.state() {
            pb::OrderState::Paid => assert_eq!(charged, 1, "{order_id}: charged once"),
            pb::OrderState::Pending => assert_eq!(charged, 0, "{order_id}: nothing charged"),
            other => panic!("{order_id}: unexpected state {other:?}"),
        }
        // At most one attempt was ever in flight: every attempt has an outcome.
        assert!(
            o.attempts
                .iter()
                .all(|a| a.outcome() != pb::AttemptOutcome::InFlight),
            "{order_id}: {o:?}"
        );
    }
}

async fn lease_keys(redis_url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}lease:order:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_during_concurrent_payments_never_double_charges() {
    let mut redis = ThrowawayRedis::start();
    let mut env = TestEnv::new().await;
    env.redis_url = redis.url();
    // A long lease, so the leases Redis saves at shutdown are still alive when it comes back.
    let flags = ["--gateway-flow", "one_shot", "--lease-ttl-ms", "60000"];
    let r0 = env.replica("r0", &flags).await;
    let r1 = env.replica("r1", &flags).await;
    let mut c1 = r1.client(OPERATOR).await;
    env.sim_control
        .set_faults(json!({ "latency_ms": 1500, "operations": ["create"] }))
        .await
        .expect("slow creates");

    // Wave 1: with Redis up, each order's first caller takes the lease and commits its attempt;
    // Redis stops once every one of those attempts is at the gateway.
    let first: Vec<String> = (0..ORDERS_PER_WAVE).map(|i| format!("up-{i}")).collect();
    let leaders = wave(&[&r0, &r1], &first, 0..1).await;
    wait_for("wave 1 reaches the gateway", async || {
        let ledger = env.sim_control.ledger().await.expect("ledger");
        (ledger.calls.create >= ORDERS_PER_WAVE as u64).then_some(())
    })
    .await;
    let held = lease_keys(&redis.url(), &env.redis_prefix).await;
    let expected: Vec<String> = {
        let mut keys: Vec<String> = first
            .iter()
            .map(|o| format!("{}lease:order:{o}", env.redis_prefix))
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(held, expected, "one lease per order in flight");
    // Saved on the way down: when Redis comes back, these leases come back with it, although
    // their attempts will have finished (their release fails while Redis is down).
    redis.stop_saving();

    // With Redis down: wave 1's other callers (their orders in flight), and five callers per
    // order of wave 2, all at once, over both replicas. PostgreSQL alone
    // admits one attempt per order and names the holder in each refusal.
    let second: Vec<String> = (0..ORDERS_PER_WAVE).map(|i| format!("down-{i}")).collect();
    let followers = wave(&[&r0, &r1], &first, 1..CALLERS).await;
    let calls_down = wave(&[&r0, &r1], &second, 0..CALLERS).await;
    check_answers(leaders).await;
    check_answers(followers).await;
    check_answers(calls_down).await;
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_settled_and_consistent(&env, &mut c1, &all).await;

    // Redis comes back with the stale leases of wave 1.
    redis.start_again();
    let stale = lease_keys(&redis.url(), &env.redis_prefix).await;
    assert_eq!(stale, held, "the saved leases are back");
    env.sim_control.clear_faults().await.expect("clear faults");

    // No stale lease blocks an order: each is checked against PostgreSQL. A paid order answers
    // ALREADY_PAID (not PAYMENT_IN_PROGRESS); a PENDING (declined) one is paid, once.
    for order_id in &first {
        let answer = c1
            .process_payment(pay(order_id, &format!("{order_id}-after"), "pm_card_visa"))
            .await;
        if method_of(order_id) == "pm_card_visa" {
            let status = answer.expect_err("already paid");
            assert_eq!(reason(&status), "ALREADY_PAID", "{order_id}: {status:?}");
        } else {
            let o = answer
                .unwrap_or_else(|s| panic!("{order_id}: a stale lease blocked the order: {s:?}"))
                .into_inner()
                .order
                .expect("order");
            assert_eq!(o.state(), pb::OrderState::Paid, "{order_id}");
        }
    }
    let charges = charges_by_order(&env).await;
    for order_id in &first {
        assert_eq!(charges.get(order_id), Some(&1), "{order_id}: charged once");
    }

    // Leases work again after the outage: a new order takes one (and releases it).
    let o = c1
        .process_payment(pay("back-1", "back-1-k", "pm_card_visa"))
        .await
        .expect("pay with Redis back")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(o.state(), pb::OrderState::Paid);
    assert_eq!(charges_by_order(&env).await.get("back-1"), Some(&1));
    let ledger = env.sim_control.ledger().await.expect("ledger");
    let paid = all.len()
        - all
            .iter()
            .filter(|o| method_of(o) != "pm_card_visa")
            .count();
    // Wave 1's and 2's paid orders, wave 1's declined orders paid after, and back-1.
    let declined_first = first
        .iter()
        .filter(|o| method_of(o) != "pm_card_visa")
        .count();
    assert_eq!(
        ledger.totals.charges as usize,
        paid + declined_first + 1,
        "{:?}",
        ledger.totals
    );

    r0.stop().await;
    r1.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_starts_while_redis_is_down_and_pays() {
    let mut redis = ThrowawayRedis::start();
    redis.stop();
    let mut env = TestEnv::new().await;
    env.redis_url = redis.url();
    // Redis is unreachable at start-up: the replica still starts (leases are only an early
    // refusal) and pays through PostgreSQL alone.
    let r0 = env.replica("r0", &["--gateway-flow", "one_shot"]).await;
    let mut c0 = r0.client(OPERATOR).await;
    let o = c0
        .process_payment(pay("cold-1", "k1", "pm_card_visa"))
        .await
        .expect("pays without Redis")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(o.state(), pb::OrderState::Paid);
    let second = c0
        .process_payment(pay("cold-1", "k2", "pm_card_visa"))
        .await
        .expect_err("already paid");
    assert_eq!(reason(&second), "ALREADY_PAID");

    // Redis comes back: the same replica takes leases in it again.
    redis.start_again();
    env.sim_control
        .set_faults(json!({ "latency_ms": 1500, "operations": ["create"] }))
        .await
        .expect("slow creates");
    let mut c0b = c0.clone();
    let paying = tokio::spawn(async move {
        c0b.process_payment(pay("cold-2", "cold-2-k1", "pm_card_visa"))
            .await
            .map(|r| r.into_inner())
    });
    wait_for("a lease is taken in Redis once it is back", async || {
        (!lease_keys(&redis.url(), &env.redis_prefix).await.is_empty()).then_some(())
    })
    .await;
    let o = paying
        .await
        .expect("task")
        .expect("paid")
        .order
        .expect("order");
    assert_eq!(o.state(), pb::OrderState::Paid);
    assert_eq!(charges_by_order(&env).await.get("cold-2"), Some(&1));
    r0.stop().await;
    env.cleanup().await;
}
