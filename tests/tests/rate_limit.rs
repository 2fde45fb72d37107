//! Per-caller rate limits (issue 6): each API key has its own request budget; past it the caller
//! is refused with RESOURCE_EXHAUSTED / RATE_LIMITED and a `google.rpc.RetryInfo` delay, while
//! other callers are served at once, and a refused payment leaves nothing behind.
//!
//! The replica runs with a tiny budget (1 request a second, burst 3) and the tests call until the
//! budget is spent: no assertion depends on how fast the calls are.

use integration_tests::checks::{charges_by_order, reason};
use integration_tests::coordinator::{Client, OPERATOR, OPERATOR_2, TestEnv};
use payments_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

/// A budget small enough to spend in a few calls.
const TINY_BUDGET: [&str; 4] = ["--rate-limit-per-second", "1", "--rate-limit-burst", "3"];

/// Calls far beyond any budget a test could refill while it runs: a guard, not an assertion.
const GUARD_CALLS: usize = 1000;

fn pay(order_id: &str, key: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 1500,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-rl".to_owned(),
        payment_method: "pm_card_visa".to_owned(),
        items: vec![pb::LineItem {
            product_id: "sku-1".into(),
            quantity: 1,
            unit_amount_minor: 1500,
        }],
        idempotency_key: key.to_owned(),
        wait_for_outcome: false,
    }
}

async fn get_order(client: &mut Client, order_id: &str) -> Result<pb::Order, tonic::Status> {
    client
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A refusal for an exhausted budget: RESOURCE_EXHAUSTED, reason RATE_LIMITED, a positive
/// RetryInfo delay and the same delay in the ErrorInfo metadata.
fn assert_rate_limited(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "RATE_LIMITED", "{status:?}");
    let details = status.get_error_details();
    let delay = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo with a retry delay");
    assert!(!delay.is_zero(), "{delay:?}");
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("retry_after_ms"),
        Some(&delay.as_millis().to_string()),
        "{info:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_budget_is_refused_while_another_is_served() {
    let env = TestEnv::new().await;
    let replica = env.replica("r1", &TINY_BUDGET).await;
    let mut noisy = replica.client(OPERATOR).await;
    let mut other = replica.client(OPERATOR_2).await;

    // An unknown order answers NOT_FOUND: the call was served. Call until the budget is spent.
    let mut served = 0;
    let refused = loop {
        assert!(
            served < GUARD_CALLS,
            "never rate limited after {served} calls"
        );
        match get_order(&mut noisy, "no-such-order").await {
            Err(status) if status.code() == Code::NotFound => served += 1,
            Err(status) => break status,
            Ok(order) => panic!("an unknown order was found: {order:?}"),
        }
    };
    assert!(served >= 1, "the burst lets the first calls through");
    assert_rate_limited(&refused);
    assert!(
        !refused.message().contains("pk_test"),
        "a key is never echoed: {}",
        refused.message()
    );

    // Another key has its own budget: served at once, although the first one is spent.
    let status = get_order(&mut other, "no-such-order")
        .await
        .expect_err("unknown order");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "ORDER_NOT_FOUND"),
        "{status:?}"
    );

    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_payment_leaves_no_row_no_event_and_no_gateway_call() {
    let env = TestEnv::new().await;
    let replica = env.replica("r1", &TINY_BUDGET).await;
    let mut noisy = replica.client(OPERATOR).await;
    let mut other = replica.client(OPERATOR_2).await;

    // Payments for new orders until one is refused; the ones served before are real payments.
    let mut served = Vec::new();
    let (refused_order, status) = loop {
        assert!(
            served.len() < GUARD_CALLS,
            "never rate limited after {} payments",
            served.len()
        );
        let order_id = format!("rl-{}", served.len());
        match noisy
            .process_payment(pay(&order_id, &format!("k-{order_id}")))
            .await
        {
            Ok(_) => served.push(order_id),
            Err(status) => break (order_id, status),
        }
    };
    assert_rate_limited(&status);

    // Nothing of the refused payment exists: no order, no attempt, no event …
    let status = get_order(&mut other, &refused_order)
        .await
        .expect_err("the refused order was never recorded");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let sql = env.sql().await;
    for table in ["orders", "attempts", "events"] {
        let row = sql
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE order_id = $1"),
                &[&refused_order],
            )
            .await
            .expect("count");
        assert_eq!(row.get::<_, i64>(0), 0, "{table} of {refused_order}");
    }
    // … and no gateway call for it (wait until the served ones are done, so that nothing is
    // still on its way to the gateway).
    replica.stop().await;
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert!(
        ledger
            .intents
            .iter()
            .all(|i| i.metadata.get("order_id") != Some(&refused_order)),
        "no intent for {refused_order}: {:?}",
        ledger.intents
    );
    let charges = charges_by_order(&env).await;
    assert_eq!(charges.get(&refused_order), None);
    for order_id in &served {
        assert_eq!(charges.get(order_id), Some(&1), "{order_id} paid once");
    }
    env.cleanup().await;
}
