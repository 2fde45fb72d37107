//! `gateway-client` against the real gateway simulator (`booking_sim::psp`) over real HTTP on a
//! random port. Every test asserts on the simulator's ledger (the ground truth of charges and
//! calls), not only on what the client answered.

use std::{num::NonZeroU32, time::Duration};

use booking_sim::psp::{Ledger, LedgerIntent, SimConfig, Without};
use gateway_client::{
    CreateIntent, GatewayClient, IdempotencyKey, IntentStatus, Outcome, RateLimit, Reply,
    RetryPolicy, UnknownReason,
};
use integration_tests::gateway_sim::{SimGateway, fast_retries};
use serde_json::json;

const VISA: &str = "pm_card_visa";
const DECLINED: &str = "pm_card_chargeDeclined";
const INSUFFICIENT: &str = "pm_card_chargeDeclinedInsufficientFunds";

fn order(order_id: &str, payment_method: &str, confirm: bool) -> CreateIntent {
    CreateIntent {
        amount_minor: 1999,
        currency: "EUR".to_owned(),
        payment_method: payment_method.to_owned(),
        confirm,
        order_id: order_id.to_owned(),
        attempt: 1,
        description: Some(format!("order {order_id}")),
    }
}

fn succeeded<T: std::fmt::Debug>(reply: Reply<T>) -> T {
    match reply.outcome {
        Outcome::Succeeded(value) => value,
        other => panic!("expected Succeeded, got {other:?}"),
    }
}

fn only_intent(ledger: &Ledger) -> &LedgerIntent {
    assert_eq!(ledger.intents.len(), 1, "{ledger:?}");
    &ledger.intents[0]
}

fn assert_unknown<T: std::fmt::Debug>(reply: &Reply<T>, expected: UnknownReason) {
    assert!(
        matches!(&reply.outcome, Outcome::Unknown { reason, .. } if *reason == expected),
        "expected Unknown({expected:?}), got {reply:?}"
    );
}

fn assert_rejected<T: std::fmt::Debug>(reply: &Reply<T>, status: u16, code: Option<&str>) {
    match &reply.outcome {
        Outcome::Rejected {
            status: got,
            code: got_code,
            ..
        } => {
            assert_eq!(*got, status, "{reply:?}");
            if code.is_some() {
                assert_eq!(got_code.as_deref(), code, "{reply:?}");
            }
        }
        other => panic!("expected Rejected({status}), got {other:?}"),
    }
}

#[tokio::test]
async fn two_phase_creates_then_confirms_and_charges_once() {
    let sim = SimGateway::start().await;
    let client = sim.client();
    let create_key = IdempotencyKey::create("ord-2p", 1);
    let reply = client
        .create_intent(&order("ord-2p", VISA, false), &create_key)
        .await;
    assert!(!reply.replayed);
    assert!(reply.request_id.is_some());
    let created = succeeded(reply);
    assert_eq!(created.status, IntentStatus::RequiresConfirmation);
    assert_eq!(created.amount, 1999);
    assert_eq!(created.currency, "eur");
    assert_eq!(created.order_id(), Some("ord-2p"));
    assert_eq!(created.attempt(), Some(1));
    assert_eq!(sim.ledger().await.totals.charges, 0);

    let confirm_key = IdempotencyKey::confirm("ord-2p", 1);
    let confirmed = succeeded(client.confirm_intent(&created.id, &confirm_key).await);
    assert_eq!(confirmed.id, created.id);
    assert_eq!(confirmed.status, IntentStatus::Succeeded);

    let ledger = sim.ledger().await;
    let intent = only_intent(&ledger);
    assert_eq!(intent.id, created.id);
    assert_eq!(intent.times_charged, 1);
    assert_eq!(intent.amount, 1999);
    assert_eq!(intent.currency, "eur");
    assert_eq!(
        intent.metadata.get("order_id").map(String::as_str),
        Some("ord-2p")
    );
    assert_eq!(
        intent.metadata.get("attempt").map(String::as_str),
        Some("1")
    );
    assert!(intent.idempotency_keys.contains(&create_key.to_string()));
    assert!(intent.idempotency_keys.contains(&confirm_key.to_string()));
    assert_eq!(
        (ledger.totals.charges, ledger.totals.amount_charged),
        (1, 1999)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn one_shot_creates_and_charges_in_one_call() {
    let sim = SimGateway::start().await;
    let intent = succeeded(
        sim.client()
            .create_intent(
                &order("ord-1s", VISA, true),
                &IdempotencyKey::create("ord-1s", 1),
            )
            .await,
    );
    assert_eq!(intent.status, IntentStatus::Succeeded);
    let ledger = sim.ledger().await;
    assert_eq!(only_intent(&ledger).times_charged, 1);
    assert_eq!(ledger.calls.create, 1);
    assert_eq!(ledger.calls.confirm, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn declines_in_both_flows_charge_nothing() {
    let sim = SimGateway::start().await;
    let client = sim.client();

    // one_shot: the create itself is declined.
    let reply = client
        .create_intent(
            &order("ord-d1", DECLINED, true),
            &IdempotencyKey::create("ord-d1", 1),
        )
        .await;
    let Outcome::Declined {
        decline_code,
        intent_id,
        message,
    } = reply.outcome
    else {
        panic!("expected Declined, got {reply:?}");
    };
    assert_eq!(decline_code, "generic_decline");
    assert!(!message.is_empty());
    let declined_id = intent_id.expect("the decline names its intent");

    // two_phase: create succeeds, the confirm is declined.
    let created = succeeded(
        client
            .create_intent(
                &order("ord-d2", INSUFFICIENT, false),
                &IdempotencyKey::create("ord-d2", 1),
            )
            .await,
    );
    let reply = client
        .confirm_intent(&created.id, &IdempotencyKey::confirm("ord-d2", 1))
        .await;
    assert!(
        matches!(
            &reply.outcome,
            Outcome::Declined { decline_code, intent_id: Some(id), .. }
                if decline_code == "insufficient_funds" && *id == created.id
        ),
        "{reply:?}"
    );
    let looked_up = succeeded(client.get_intent(&created.id).await);
    assert_eq!(looked_up.status, IntentStatus::RequiresPaymentMethod);
    assert_eq!(looked_up.decline_code(), Some("insufficient_funds"));

    let ledger = sim.ledger().await;
    assert!(ledger.intents.iter().any(|i| i.id == declined_id));
    assert_eq!(ledger.totals.charges, 0);
    assert_eq!(ledger.totals.declines, 2);
    assert!(ledger.intents.iter().all(|i| i.times_charged == 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dropped_answer_is_unknown_and_a_same_key_replay_recovers_it() {
    let sim = SimGateway::start().await;
    let client = sim.client();
    sim.faults(json!({ "next": ["drop_after_charge"] })).await;
    let req = order("ord-drop", VISA, true);
    let key = IdempotencyKey::create("ord-drop", 1);

    let first = client.create_intent(&req, &key).await;
    assert_unknown(&first, UnknownReason::Connection);
    assert_eq!(
        first.tries, 1,
        "an unknown outcome is never retried by the client"
    );
    let charged_id = {
        let ledger = sim.ledger().await;
        let intent = only_intent(&ledger);
        assert_eq!(intent.times_charged, 1);
        intent.id.clone()
    };

    let replay = client.create_intent(&req, &key).await;
    assert!(replay.replayed, "{replay:?}");
    let intent = succeeded(replay);
    assert_eq!(intent.id, charged_id);
    assert_eq!(intent.status, IntentStatus::Succeeded);

    let ledger = sim.ledger().await;
    assert_eq!(only_intent(&ledger).times_charged, 1);
    assert_eq!(ledger.totals.charges, 1);
    assert_eq!(ledger.calls.create, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn throttling_is_waited_out_with_the_same_key() {
    let sim = SimGateway::start().await;
    sim.faults(json!({ "retry_after_secs": 1, "next": ["rate_limited"] }))
        .await;
    let reply = sim
        .client()
        .create_intent(
            &order("ord-429", VISA, true),
            &IdempotencyKey::create("ord-429", 1),
        )
        .await;
    assert_eq!(reply.tries, 2, "{reply:?}");
    assert_eq!(reply.retried.len(), 1, "{reply:?}");
    assert_eq!(succeeded(reply).status, IntentStatus::Succeeded);

    let ledger = sim.ledger().await;
    assert_eq!(ledger.calls.create, 2);
    assert_eq!(ledger.totals.charges, 1);
    assert!(
        only_intent(&ledger)
            .idempotency_keys
            .contains(&"pay:ord-429:1:create".to_owned())
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn throttling_without_retries_left_is_retry_later() {
    let sim = SimGateway::start().await;
    sim.faults(json!({ "retry_after_secs": 1, "next": ["rate_limited"] }))
        .await;
    let client = sim.client_with(|config| config.with_retry(RetryPolicy::none()));
    let req = order("ord-429b", VISA, true);
    let key = IdempotencyKey::create("ord-429b", 1);
    let reply = client.create_intent(&req, &key).await;
    assert_eq!(
        reply.outcome,
        Outcome::RetryLater {
            after: Duration::from_secs(1)
        }
    );
    assert_eq!(reply.tries, 1);
    let ledger = sim.ledger().await;
    assert_eq!(ledger.calls.create, 1);
    assert!(ledger.intents.is_empty());

    // Nothing was done: the caller's later call with the same key is the first real one.
    let again = client.create_intent(&req, &key).await;
    assert!(!again.replayed);
    assert_eq!(succeeded(again).status, IntentStatus::Succeeded);
    assert_eq!(sim.ledger().await.totals.charges, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_hanging_gateway_is_an_unknown_timeout() {
    let sim = SimGateway::start().await;
    sim.faults(json!({ "next": ["hang"] })).await;
    let client = sim.client_with(|config| config.with_timeout(Duration::from_millis(300)));
    let reply = client
        .create_intent(
            &order("ord-hang", VISA, true),
            &IdempotencyKey::create("ord-hang", 1),
        )
        .await;
    assert_unknown(&reply, UnknownReason::Timeout);
    assert_eq!(reply.tries, 1);
    let ledger = sim.ledger().await;
    assert_eq!(ledger.calls.create, 1);
    assert!(ledger.intents.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_late_answer_after_the_charge_is_still_unknown() {
    let sim = SimGateway::start().await;
    sim.faults(json!({ "next": ["timeout"] })).await;
    let client = sim.client_with(|config| config.with_timeout(Duration::from_millis(300)));
    let req = order("ord-slow", VISA, true);
    let key = IdempotencyKey::create("ord-slow", 1);
    let reply = client.create_intent(&req, &key).await;
    assert_unknown(&reply, UnknownReason::Timeout);
    assert_eq!(reply.tries, 1);
    let charged_id = {
        let ledger = sim.ledger().await;
        assert_eq!(only_intent(&ledger).times_charged, 1);
        only_intent(&ledger).id.clone()
    };

    // The answer was saved under the key: a same-key replay tells the truth.
    let replay = client.create_intent(&req, &key).await;
    assert!(replay.replayed, "{replay:?}");
    assert_eq!(succeeded(replay).id, charged_id);
    assert_eq!(sim.ledger().await.totals.charges, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn server_errors_before_and_after_the_charge_are_unknown() {
    let sim = SimGateway::start().await;
    let client = sim.client();

    sim.faults(json!({ "next": ["error_500_before"] })).await;
    let before = client
        .create_intent(
            &order("ord-500a", VISA, true),
            &IdempotencyKey::create("ord-500a", 1),
        )
        .await;
    assert_unknown(&before, UnknownReason::ServerError(500));
    assert_eq!(before.tries, 1, "a 5xx is never retried by the client");
    assert!(sim.ledger().await.intents.is_empty());

    sim.faults(json!({ "next": ["error_500_after"] })).await;
    let req = order("ord-500b", VISA, true);
    let key = IdempotencyKey::create("ord-500b", 1);
    let after = client.create_intent(&req, &key).await;
    assert_unknown(&after, UnknownReason::ServerError(500));
    assert_eq!(after.tries, 1);
    let ledger = sim.ledger().await;
    assert_eq!(only_intent(&ledger).times_charged, 1);
    let charged_id = only_intent(&ledger).id.clone();

    let replay = client.create_intent(&req, &key).await;
    assert!(replay.replayed);
    assert_eq!(succeeded(replay).id, charged_id);
    let ledger = sim.ledger().await;
    assert_eq!(ledger.totals.charges, 1);
    assert_eq!(ledger.calls.create, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_concurrent_same_key_call_is_a_conflict() {
    let sim = SimGateway::start().await;
    sim.faults(json!({ "next": ["hang"] })).await;
    let req = order("ord-409", VISA, true);
    let key = IdempotencyKey::create("ord-409", 1);

    // The first call holds the key at the gateway and never gets an answer.
    let first = {
        let client = sim.client();
        let (req, key) = (req.clone(), key.clone());
        tokio::spawn(async move { client.create_intent(&req, &key).await })
    };
    sim.wait_until("the first call holds the key", |l| {
        l.idempotency.in_flight == 1
    })
    .await;

    let second = sim.client().create_intent(&req, &key).await;
    assert_unknown(&second, UnknownReason::Conflict);
    assert_eq!(second.tries, 1);

    first.abort();
    let ledger = sim.ledger().await;
    assert_eq!(ledger.calls.create, 2);
    assert!(ledger.intents.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn lookup_returns_the_current_state_or_not_found() {
    let sim = SimGateway::start().await;
    let client = sim.client();
    let created = succeeded(
        client
            .create_intent(
                &order("ord-get", VISA, true),
                &IdempotencyKey::create("ord-get", 1),
            )
            .await,
    );
    let found = succeeded(client.get_intent(&created.id).await);
    assert_eq!(found, created);
    assert_rejected(
        &client.get_intent("pi_does_not_exist").await,
        404,
        Some("resource_missing"),
    );
    assert_eq!(sim.ledger().await.calls.get, 2);
    sim.shutdown().await;

    // A gateway without lookup: 404 for every id.
    let poor = SimGateway::start_with(SimConfig {
        without: Without {
            lookup: true,
            ..Without::default()
        },
        ..SimConfig::default()
    })
    .await;
    let client = poor.client();
    let created = succeeded(
        client
            .create_intent(
                &order("ord-get", VISA, true),
                &IdempotencyKey::create("ord-get", 1),
            )
            .await,
    );
    assert_rejected(&client.get_intent(&created.id).await, 404, None);
    poor.shutdown().await;
}

#[tokio::test]
async fn cancel_voids_an_unconfirmed_intent_only() {
    let sim = SimGateway::start().await;
    let client = sim.client();
    let created = succeeded(
        client
            .create_intent(
                &order("ord-c", VISA, false),
                &IdempotencyKey::create("ord-c", 1),
            )
            .await,
    );
    let canceled = succeeded(
        client
            .cancel_intent(&created.id, &IdempotencyKey::cancel("ord-c", 1))
            .await,
    );
    assert_eq!(canceled.status, IntentStatus::Canceled);

    let paid = succeeded(
        client
            .create_intent(
                &order("ord-c2", VISA, true),
                &IdempotencyKey::create("ord-c2", 1),
            )
            .await,
    );
    assert_rejected(
        &client
            .cancel_intent(&paid.id, &IdempotencyKey::cancel("ord-c2", 1))
            .await,
        400,
        Some("payment_intent_unexpected_state"),
    );

    let ledger = sim.ledger().await;
    let voided = ledger.intents.iter().find(|i| i.id == created.id);
    assert_eq!(
        voided.map(|i| (i.status.as_str(), i.times_charged)),
        Some(("canceled", 0))
    );
    assert_eq!(ledger.totals.charges, 1);
    sim.shutdown().await;

    // A gateway without cancel refuses it: nothing changes.
    let poor = SimGateway::start_with(SimConfig {
        without: Without {
            cancel: true,
            ..Without::default()
        },
        ..SimConfig::default()
    })
    .await;
    let client = poor.client();
    let created = succeeded(
        client
            .create_intent(
                &order("ord-c", VISA, false),
                &IdempotencyKey::create("ord-c", 1),
            )
            .await,
    );
    assert_rejected(
        &client
            .cancel_intent(&created.id, &IdempotencyKey::cancel("ord-c", 1))
            .await,
        400,
        Some("cancel_unsupported"),
    );
    poor.shutdown().await;
}

#[tokio::test]
async fn refunds_partial_then_over_then_full() {
    let sim = SimGateway::start().await;
    let client = sim.client();
    let paid = succeeded(
        client
            .create_intent(
                &order("ord-r", VISA, true),
                &IdempotencyKey::create("ord-r", 1),
            )
            .await,
    );

    let first_key = IdempotencyKey::refund("ord-r", 1);
    let partial = succeeded(client.create_refund(&paid.id, Some(500), &first_key).await);
    assert_eq!(partial.amount, 500);
    assert_eq!(partial.payment_intent.as_deref(), Some(paid.id.as_str()));
    assert_eq!(partial.status.as_str(), "succeeded");

    // The same key again: the same refund, not a second one.
    let replay = client.create_refund(&paid.id, Some(500), &first_key).await;
    assert!(replay.replayed);
    assert_eq!(succeeded(replay).id, partial.id);

    assert_rejected(
        &client
            .create_refund(&paid.id, Some(1500), &IdempotencyKey::refund("ord-r", 2))
            .await,
        400,
        Some("amount_too_large"),
    );
    let rest = succeeded(
        client
            .create_refund(&paid.id, None, &IdempotencyKey::refund("ord-r", 3))
            .await,
    );
    assert_eq!(rest.amount, 1499);
    assert_rejected(
        &client
            .create_refund(&paid.id, Some(1), &IdempotencyKey::refund("ord-r", 4))
            .await,
        400,
        Some("charge_already_refunded"),
    );

    let ledger = sim.ledger().await;
    let intent = only_intent(&ledger);
    assert_eq!(intent.amount_refunded, 1999);
    assert_eq!(intent.refunds.len(), 2);
    assert_eq!(intent.times_charged, 1);
    assert_eq!(
        (ledger.totals.refunds, ledger.totals.amount_refunded),
        (2, 1999)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn confirming_a_succeeded_intent_is_rejected_and_charges_nothing() {
    let sim = SimGateway::start().await;
    let client = sim.client();
    let paid = succeeded(
        client
            .create_intent(
                &order("ord-cc", VISA, true),
                &IdempotencyKey::create("ord-cc", 1),
            )
            .await,
    );
    let reply = client
        .confirm_intent(&paid.id, &IdempotencyKey::confirm("ord-cc", 1))
        .await;
    assert_rejected(&reply, 400, Some("payment_intent_unexpected_state"));
    assert_eq!(
        reply.outcome.rejected_code(),
        Some("payment_intent_unexpected_state")
    );
    let ledger = sim.ledger().await;
    assert_eq!(only_intent(&ledger).times_charged, 1);
    assert_eq!(ledger.calls.confirm, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_api_key_is_rejected() {
    let sim = SimGateway::start().await;
    let client = sim.client_with(|mut config| {
        config.api_key = "sk_test_wrong".into();
        config
    });
    let reply = client
        .create_intent(
            &order("ord-401", VISA, true),
            &IdempotencyKey::create("ord-401", 1),
        )
        .await;
    assert_rejected(&reply, 401, None);
    let ledger = sim.ledger().await;
    assert_eq!(ledger.calls.create, 1);
    assert!(ledger.intents.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn stripe_only_parameters_are_refused_by_the_strict_simulator() {
    // Why `payment_method_types` is only sent to api.stripe.com by default: the simulator, like
    // Stripe, refuses parameters it does not know.
    let sim = SimGateway::start().await;
    let client =
        sim.client_with(|config| config.with_payment_method_types(vec!["card".to_owned()]));
    let reply = client
        .create_intent(
            &order("ord-pmt", VISA, true),
            &IdempotencyKey::create("ord-pmt", 1),
        )
        .await;
    assert_rejected(&reply, 400, Some("parameter_unknown"));
    assert!(sim.ledger().await.intents.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_gateway_without_idempotency_charges_a_replay_again() {
    // What `Capabilities::may_replay` guards against: without idempotency a "replay" is a new
    // charge, and nothing in the answer says it was a replay.
    let sim = SimGateway::start_with(SimConfig {
        without: Without {
            idempotency: true,
            ..Without::default()
        },
        ..SimConfig::default()
    })
    .await;
    let client = sim.client();
    let req = order("ord-noidem", VISA, true);
    let key = IdempotencyKey::create("ord-noidem", 1);
    let first = succeeded(client.create_intent(&req, &key).await);
    let again = client.create_intent(&req, &key).await;
    assert!(!again.replayed);
    assert_ne!(succeeded(again).id, first.id);
    assert_eq!(sim.ledger().await.totals.charges, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_refused_connection_is_not_sent_after_bounded_retries() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let config = gateway_client::GatewayConfig::new(format!("http://{addr}"), "sk_test_local")
        .with_retry(fast_retries(2));
    let client = GatewayClient::new(config).expect("client");
    let reply = client
        .create_intent(
            &order("ord-ns", VISA, true),
            &IdempotencyKey::create("ord-ns", 1),
        )
        .await;
    assert!(
        matches!(reply.outcome, Outcome::NotSent { .. }),
        "{reply:?}"
    );
    assert_eq!(reply.tries, 3);
    assert_eq!(reply.retried.len(), 2);
}

#[tokio::test]
async fn the_rate_limiter_holds_back_calls_beyond_its_burst() {
    let sim = SimGateway::start().await;
    // One request per hour, burst 1: the second request cannot be permitted during this test.
    let client = sim.client_with(|config| {
        config.with_rate_limit(Some(RateLimit::one_per(Duration::from_secs(3600))))
    });
    let first = client
        .create_intent(
            &order("ord-rl", VISA, false),
            &IdempotencyKey::create("ord-rl", 1),
        )
        .await;
    let intent = succeeded(first);

    // The limiter holds the second call; giving up on it after a while proves nothing about
    // speed (the next permit is an hour away), only that it never reached the gateway.
    let second = tokio::time::timeout(
        Duration::from_millis(500),
        client.confirm_intent(&intent.id, &IdempotencyKey::confirm("ord-rl", 1)),
    )
    .await;
    assert!(
        second.is_err(),
        "the limiter let a second call through: {second:?}"
    );
    let ledger = sim.ledger().await;
    assert_eq!((ledger.calls.create, ledger.calls.confirm), (1, 0));
    assert_eq!(ledger.totals.charges, 0);
    sim.shutdown().await;

    // And a limiter that does replenish lets every call through, in order.
    let sim = SimGateway::start().await;
    let Some(two) = NonZeroU32::new(2) else {
        unreachable!()
    };
    let client = sim.client_with(|config| config.with_rate_limit(Some(RateLimit::per_second(two))));
    for attempt in 1..=3 {
        let reply = client
            .create_intent(
                &CreateIntent {
                    attempt,
                    ..order("ord-rl2", VISA, true)
                },
                &IdempotencyKey::create("ord-rl2", attempt),
            )
            .await;
        assert!(reply.outcome.is_succeeded(), "{reply:?}");
    }
    assert_eq!(sim.ledger().await.calls.create, 3);
    sim.shutdown().await;
}
