//! Real process faults: the holder of an in-flight attempt is the REAL coordinator binary, killed
//! with `kill -9` or frozen with SIGSTOP past the lease TTL, mid gateway call; another replica's
//! recovery worker finishes the attempt. Every money assertion is made against the simulator's
//! ledger.

use integration_tests::checks::{charges, steps, wait_for};

use integration_tests::{
    coordinator::{Client, OPERATOR, TestEnv},
    process::CoordinatorProcess,
};
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

/// Polls the order until `done` holds for it.
async fn order_until(
    client: &mut Client,
    order_id: &str,
    what: &str,
    done: impl Fn(&pb::Order) -> bool,
) -> pb::Order {
    wait_for(&format!("{order_id} reaches: {what}"), async || {
        let o = order(client, order_id).await;
        done(&o).then_some(o)
    })
    .await
}

/// Waits until `op` ("create" or "confirm") has reached the simulator `n` times: the call is
/// then in the middle of its (slowed) processing.
async fn gateway_reached(env: &TestEnv, op: &str, n: u64) {
    wait_for(
        &format!("the {op} call reaches the simulator"),
        async || {
            let calls = env.sim_control.ledger().await.expect("ledger").calls;
            let seen = match op {
                "create" => calls.create,
                "confirm" => calls.confirm,
                other => panic!("unexpected operation {other}"),
            };
            (seen >= n).then_some(())
        },
    )
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

/// The replicas' flags: a short lease (so the holder is "gone" 1 s after its last heartbeat, and
/// the sweep runs every second) and a gateway timeout longer than any pause in these tests.
fn flags(flow: &str) -> Vec<&str> {
    vec![
        "--gateway-flow",
        flow,
        "--lease-ttl-ms",
        "1000",
        "--gateway-timeout-ms",
        "30000",
    ]
}

/// r0 (the real binary) holds an attempt whose `op` call is slowed at the gateway; r0 is killed
/// with SIGKILL mid-call; r1's recovery worker finishes the attempt.
async fn kill_9_mid_call(flow: &str, op: &str, expected: pb::OrderState) {
    let what = format!("{flow}, kill -9 during {op}");
    let env = TestEnv::new().await;
    let order_id = format!("kill9-{flow}-{op}");
    let mut r0 = CoordinatorProcess::spawn(&env, "r0", &flags(flow)).await;
    let r1 = env.replica("r1", &flags(flow)).await;
    let mut c0 = r0.client(OPERATOR).await;
    let mut c1 = r1.client(OPERATOR).await;
    env.sim_control
        .set_faults(json!({ "latency_ms": 3000, "operations": [op] }))
        .await
        .expect("slow the gateway");
    let started = c0
        .process_payment(pay(&order_id, "k1", false))
        .await
        .expect("the attempt is committed")
        .into_inner();
    assert_eq!(
        started.order.expect("order").state(),
        pb::OrderState::AwaitingConfirmation,
        "{what}"
    );
    gateway_reached(&env, op, 1).await;
    r0.kill_9();
    // The replays of the recovery need not wait 3 s each.
    env.sim_control.clear_faults().await.expect("clear faults");

    let o = order_until(&mut c1, &order_id, "an outcome", |o| {
        o.state() != pb::OrderState::AwaitingConfirmation
    })
    .await;
    assert_eq!(o.state(), expected, "{what}: {:?}", steps(&o.attempts[0]));
    assert_state_matches_ledger(&env, &o, &what).await;
    let history = steps(&o.attempts[0]);
    assert!(
        history
            .iter()
            .any(|s| s.contains("taken over by the recovery worker")),
        "{what}: {history:?}"
    );
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert!(ledger.totals.charges <= 1, "{what}: {:?}", ledger.totals);
    if expected == pb::OrderState::Pending {
        // Payable again: the next attempt pays once.
        let o = c1
            .process_payment(pay(&order_id, "k2", true))
            .await
            .expect("pay again")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(o.state(), pb::OrderState::Paid, "{what}");
        assert_eq!(charges(&env, &order_id).await, 1, "{what}");
    }
    r1.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_one_shot_create_is_finished_by_the_other_replica() {
    // The recovery replays the create with the same key: charged exactly once.
    kill_9_mid_call("one_shot", "create", pb::OrderState::Paid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_two_phase_create_leaves_nothing_charged() {
    // The intent id was never persisted, so it was never confirmed: cancelled, nothing charged.
    kill_9_mid_call("two_phase", "create", pb::OrderState::Pending).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_two_phase_confirm_is_finished_once() {
    // The intent id was persisted before the confirm: the recovery looks it up and confirms it
    // with the same key (or finds it succeeded): charged exactly once.
    kill_9_mid_call("two_phase", "confirm", pb::OrderState::Paid).await;
}

/// r0 (the real binary) is frozen with SIGSTOP mid-call, past the lease TTL; r1's recovery takes
/// the attempt over and settles it; then r0 is resumed and finishes its own call: its outcome can
/// only land in the attempt's history.
async fn sigstop_past_the_ttl(flow: &str, expected: pb::OrderState) {
    let what = format!("{flow}, SIGSTOP during create");
    let env = TestEnv::new().await;
    let order_id = format!("paused-{flow}");
    let r0 = CoordinatorProcess::spawn(&env, "r0", &flags(flow)).await;
    let r1 = env.replica("r1", &flags(flow)).await;
    let mut c0 = r0.client(OPERATOR).await;
    let mut c1 = r1.client(OPERATOR).await;
    env.sim_control
        .set_faults(json!({ "latency_ms": 3000, "operations": ["create"] }))
        .await
        .expect("slow the gateway");
    c0.process_payment(pay(&order_id, "k1", false))
        .await
        .expect("the attempt is committed");
    gateway_reached(&env, "create", 1).await;
    r0.pause();

    // The takeover, then the recovery's outcome, while r0 is frozen.
    let o = order_until(&mut c1, &order_id, "an outcome from the recovery", |o| {
        o.state() != pb::OrderState::AwaitingConfirmation
    })
    .await;
    let history = steps(&o.attempts[0]);
    assert!(
        history
            .iter()
            .any(|s| s.contains("taken over by the recovery worker")),
        "{what}: {history:?}"
    );
    assert_eq!(o.state(), expected, "{what}: {history:?}");
    assert_state_matches_ledger(&env, &o, &what).await;

    // r0 wakes up: its gateway call ends (the answer waited in its socket) and it tries to
    // write; the fence refuses, and what it learnt goes to the history only.
    r0.resume();
    let after = order_until(&mut c1, &order_id, "the stale holder's note", |o| {
        steps(&o.attempts[0])
            .iter()
            .any(|s| s.contains("superseded"))
    })
    .await;
    assert_eq!(after.state(), expected, "{what}: not overwritten");
    assert_eq!(
        after.attempts[0].outcome(),
        o.attempts[0].outcome(),
        "{what}: the attempt's outcome stands"
    );
    assert_eq!(after.attempts.len(), 1, "{what}");
    assert_state_matches_ledger(&env, &after, &what).await;
    // r0 stays alive and serving: it can answer for the order, with the recovery's outcome.
    let seen_by_r0 = order(&mut c0, &order_id).await;
    assert_eq!(seen_by_r0.state(), expected, "{what}");
    drop(r0);
    r1.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_shot_holder_paused_past_the_ttl_cannot_overwrite_the_recovery() {
    sigstop_past_the_ttl("one_shot", pb::OrderState::Paid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_phase_holder_paused_past_the_ttl_cannot_overwrite_the_recovery() {
    sigstop_past_the_ttl("two_phase", pb::OrderState::Pending).await;
}
