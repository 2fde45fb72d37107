//! Manual review: items opened by a gateway that cannot tell (no idempotency keys, lost answers)
//! are listed with every detail, paged, and resolved by a reviewer either way; the decision is
//! checked against the gateway when it can be asked, recorded with who made it, and emitted as an
//! event. Real replicas over gRPC, real PostgreSQL and Redis, the simulator over HTTP; money
//! assertions against the simulator's ledger.

use booking_sim::psp::{SimConfig, Without};
use integration_tests::checks::{charges, reason};
use integration_tests::coordinator::{Client, OPERATOR, REVIEWER, SERVICE, TestEnv};
use integration_tests::review;
use payments_proto::v1 as pb;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

fn pay(order_id: &str, key: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 4200,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-review".to_owned(),
        payment_method: "pm_card_visa".to_owned(),
        items: vec![pb::LineItem {
            product_id: "sku-lamp".into(),
            quantity: 1,
            unit_amount_minor: 4200,
        }],
        idempotency_key: key.to_owned(),
        wait_for_outcome: true,
    }
}

fn resolve(order_id: &str, resolution: pb::Resolution, id: &str) -> pb::ResolveManualReviewRequest {
    pb::ResolveManualReviewRequest {
        order_id: order_id.to_owned(),
        resolution: resolution.into(),
        gateway_payment_id: id.to_owned(),
        note: "checked the gateway dashboard".to_owned(),
        ..Default::default()
    }
}

/// A one_shot gateway without idempotency keys: a create whose answer is lost (or a 500) cannot
/// be replayed safely, and without the intent id nothing can be looked up, so it goes to review.
async fn env_and_replica() -> (TestEnv, integration_tests::coordinator::Replica) {
    let env = TestEnv::with_sim(SimConfig {
        without: Without {
            idempotency: true,
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
                "lookup,cancel",
            ],
        )
        .await;
    (env, replica)
}

/// Pays `order_id` with `fault` forced on the create; the order must end in manual review.
async fn into_review(env: &TestEnv, client: &mut Client, order_id: &str, fault: &str) -> pb::Order {
    env.sim_control
        .set_faults(json!({ "next": [fault], "operations": ["create"] }))
        .await
        .expect("faults");
    let order = client
        .process_payment(pay(order_id, &format!("k-{order_id}")))
        .await
        .expect("answered")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(order.state(), pb::OrderState::ManualReview, "{order:?}");
    order
}

/// two_phase, on a replica allowed one lookup per order (one run of one action): `fault` on the
/// confirm, then the lookup answers 500, so the order goes to review with its intent id known.
async fn confirm_into_review(
    env: &TestEnv,
    client: &mut Client,
    order_id: &str,
    fault: &str,
) -> pb::Order {
    env.sim_control
        .set_faults(json!({
            "next": [fault, "error_500_before"],
            "operations": ["confirm", "get"]
        }))
        .await
        .expect("faults");
    let order = client
        .process_payment(pay(order_id, "k1"))
        .await
        .expect("answered")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(order.state(), pb::OrderState::ManualReview, "{order:?}");
    order
}

async fn list_all(client: &mut Client, page_size: i32) -> (Vec<pb::ManualReviewItem>, usize) {
    let mut items = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_manual_reviews(pb::ListManualReviewsRequest {
                page_size,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return (items, pages);
        }
        token = page.next_page_token;
    }
}

/// The pi_ id the simulator charged for an order (what a reviewer finds in the dashboard).
async fn charged_intent(env: &TestEnv, order_id: &str) -> String {
    let ledger = env.sim_control.ledger().await.expect("ledger");
    ledger
        .intents
        .iter()
        .find(|i| {
            i.metadata.get("order_id").map(String::as_str) == Some(order_id) && i.times_charged > 0
        })
        .map(|i| i.id.clone())
        .expect("a charged intent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reviews_are_listed_with_every_detail_and_resolved_either_way() {
    let (env, replica) = env_and_replica().await;
    let mut operator = replica.client(OPERATOR).await;
    let mut reviewer = replica.client(REVIEWER).await;

    // Charged, answer lost; and a 500 before anything was charged.
    into_review(&env, &mut operator, "rev-charged", "drop_after_charge").await;
    into_review(&env, &mut operator, "rev-nothing", "error_500_before").await;
    assert_eq!(charges(&env, "rev-charged").await, 1);
    assert_eq!(charges(&env, "rev-nothing").await, 0);

    // Operators may not see the queue.
    let denied = operator
        .list_manual_reviews(pb::ListManualReviewsRequest::default())
        .await
        .expect_err("operator");
    assert_eq!(
        (denied.code(), reason(&denied).as_str()),
        (Code::PermissionDenied, "FORBIDDEN")
    );
    // A page size the server does not serve is refused, not clamped silently.
    let too_big = reviewer
        .list_manual_reviews(pb::ListManualReviewsRequest {
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect_err("page size");
    assert_eq!(reason(&too_big), "INVALID_REQUEST");
    let forged = reviewer
        .list_manual_reviews(pb::ListManualReviewsRequest {
            page_size: 1,
            page_token: "not-a-token".into(),
        })
        .await
        .expect_err("token");
    assert_eq!(reason(&forged), "INVALID_REQUEST");

    // An order in review cannot be refunded (nothing is known to refund).
    let in_review = reviewer
        .refund_payment(pb::RefundPaymentRequest {
            order_id: "rev-charged".into(),
            amount: None,
            reason: "customer asked".into(),
            idempotency_key: "refund-in-review".into(),
        })
        .await
        .expect_err("in review");
    assert_eq!(
        (in_review.code(), reason(&in_review).as_str()),
        (Code::FailedPrecondition, "IN_MANUAL_REVIEW")
    );

    // Paged one by one, oldest first, every item once.
    let (items, pages) = list_all(&mut reviewer, 1).await;
    assert_eq!(pages, 2);
    let ids: Vec<_> = items
        .iter()
        .map(|i| i.order.as_ref().expect("order").order_id.clone())
        .collect();
    assert_eq!(ids, ["rev-charged", "rev-nothing"]);

    // Every detail an operator needs.
    let item = &items[0];
    let order = item.order.as_ref().expect("order");
    assert_eq!(order.customer_id, "cust-review");
    assert_eq!(
        order
            .amount
            .as_ref()
            .map(|m| (m.amount_minor, m.currency.as_str())),
        Some((4200, "EUR"))
    );
    assert_eq!(order.items[0].product_id, "sku-lamp");
    assert_eq!(item.attempt_number, 1);
    assert_eq!(item.operator_id, OPERATOR);
    assert!(item.opened_at.is_some());
    assert!(!item.reason.is_empty(), "{item:?}");
    assert!(
        item.gateway_idempotency_keys
            .contains(&"pay:rev-charged:1:create".to_owned())
    );
    assert!(
        item.error_history.iter().any(|e| e.step == "create"),
        "{item:?}"
    );
    assert!(
        item.actions_tried
            .iter()
            .any(|a| a.contains("manual review")),
        "{item:?}"
    );

    // Charged, with an id the gateway does not know: contradicted, nothing recorded.
    let wrong = reviewer
        .resolve_manual_review(resolve(
            "rev-charged",
            pb::Resolution::Charged,
            "pi_doesnotexist",
        ))
        .await
        .expect_err("contradicted");
    assert_eq!(
        (wrong.code(), reason(&wrong).as_str()),
        (Code::FailedPrecondition, "RESOLUTION_CONTRADICTED")
    );
    // Charged without an id: invalid.
    let missing = reviewer
        .resolve_manual_review(resolve("rev-charged", pb::Resolution::Charged, ""))
        .await
        .expect_err("id required");
    assert_eq!(reason(&missing), "INVALID_REQUEST");
    // Not charged, on an order that was charged: the lookup cannot tell (the intent id was never
    // learnt), so that one the gateway cannot contradict; the right decision follows.
    let pi = charged_intent(&env, "rev-charged").await;
    let paid = reviewer
        .resolve_manual_review(resolve("rev-charged", pb::Resolution::Charged, &pi))
        .await
        .expect("resolved charged")
        .into_inner();
    assert_eq!(paid.state(), pb::OrderState::Paid);
    let attempt = &paid.attempts[0];
    assert_eq!(attempt.resolution(), pb::Resolution::Charged);
    assert_eq!(attempt.resolved_by, REVIEWER);
    assert_eq!(attempt.gateway_payment_id, pi);
    assert_eq!(attempt.resolution_note, "checked the gateway dashboard");
    assert!(attempt.resolved_at.is_some());

    // Resolving twice is refused, saying who resolved it.
    let twice = reviewer
        .resolve_manual_review(resolve("rev-charged", pb::Resolution::NotCharged, ""))
        .await
        .expect_err("twice");
    assert_eq!(
        (twice.code(), reason(&twice).as_str()),
        (Code::FailedPrecondition, "NOT_IN_MANUAL_REVIEW")
    );
    assert!(twice.message().contains(REVIEWER), "{}", twice.message());
    // The order is paid: a new payment is refused without a gateway call.
    let creates = env.sim_control.ledger().await.expect("ledger").calls.create;
    let again = operator
        .process_payment(pay("rev-charged", "k-again"))
        .await
        .expect_err("already paid");
    assert_eq!(reason(&again), "ALREADY_PAID");
    assert_eq!(
        env.sim_control.ledger().await.expect("ledger").calls.create,
        creates
    );

    // Not charged: the order is payable again, and paying it charges once.
    let pending = reviewer
        .resolve_manual_review(resolve("rev-nothing", pb::Resolution::NotCharged, ""))
        .await
        .expect("resolved not charged")
        .into_inner();
    assert_eq!(pending.state(), pb::OrderState::Pending);
    let repaid = operator
        .process_payment(pay("rev-nothing", "k-retry"))
        .await
        .expect("paid again")
        .into_inner();
    assert_eq!(repaid.order.expect("order").state(), pb::OrderState::Paid);
    assert_eq!(charges(&env, "rev-nothing").await, 1);

    // The queue is empty now; an order that never was in review is refused clearly.
    let (left, _) = list_all(&mut reviewer, 10).await;
    assert!(left.is_empty(), "{left:?}");
    let never = reviewer
        .resolve_manual_review(resolve("rev-nothing", pb::Resolution::NotCharged, ""))
        .await
        .expect_err("not in review");
    assert_eq!(reason(&never), "NOT_IN_MANUAL_REVIEW");
    let unknown = reviewer
        .resolve_manual_review(resolve("rev-unknown", pb::Resolution::NotCharged, ""))
        .await
        .expect_err("unknown order");
    assert_eq!(unknown.code(), Code::NotFound);

    // Both decisions are events on the feed, with who made them.
    let mut service = replica.client(SERVICE).await;
    for (order_id, state) in [
        ("rev-charged", pb::OrderState::Paid),
        ("rev-nothing", pb::OrderState::Pending),
    ] {
        let mut events = service
            .watch_order(pb::WatchOrderRequest {
                order_id: order_id.to_owned(),
                after_sequence: 0,
                until_terminal: false,
            })
            .await
            .expect("watch")
            .into_inner();
        let resolved = loop {
            let event = events.next().await.expect("an event").expect("ok");
            if event.kind() == pb::EventKind::ManualReviewResolved {
                break event;
            }
        };
        assert_eq!(resolved.actor, REVIEWER);
        assert_eq!(resolved.state(), state);
        assert_eq!(resolved.attempt_number, 1);
        assert!(
            resolved.detail.contains("checked the gateway dashboard"),
            "{resolved:?}"
        );
    }
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_charged_is_refused_when_the_gateway_shows_the_charge() {
    // two_phase: the intent id is persisted before the confirm, so the lookup can contradict.
    let env = TestEnv::with_sim(SimConfig {
        without: Without {
            idempotency: true,
            ..Without::default()
        },
        ..SimConfig::default()
    })
    .await;
    // Lookup only: after a lost confirm answer the coordinator may look once (one run of one
    // action), and that look fails; nothing else is safe, so the order goes to review.
    let replica = env
        .replica(
            "r0",
            &[
                "--gateway-capabilities",
                "lookup",
                "--recovery-max-runs",
                "1",
                "--recovery-actions-per-run",
                "1",
            ],
        )
        .await;
    let mut operator = replica.client(OPERATOR).await;
    let mut reviewer = replica.client(REVIEWER).await;
    // The confirm charges and its answer is lost; the one lookup answers 500.
    let order = confirm_into_review(&env, &mut operator, "rev-contra", "drop_after_charge").await;
    assert!(
        !order.attempts[0].gateway_payment_id.is_empty(),
        "the intent id is known"
    );
    env.sim_control.clear_faults().await.expect("clear");
    assert_eq!(charges(&env, "rev-contra").await, 1);
    let contra = reviewer
        .resolve_manual_review(resolve("rev-contra", pb::Resolution::NotCharged, ""))
        .await
        .expect_err("the gateway shows the charge");
    assert_eq!(reason(&contra), "RESOLUTION_CONTRADICTED");
    let still = operator
        .get_order(pb::GetOrderRequest {
            order_id: "rev-contra".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(still.state(), pb::OrderState::ManualReview);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timeout_on_a_gateway_without_capabilities_is_resolved_on_the_reviewers_word() {
    let env = TestEnv::with_sim(SimConfig {
        without: Without {
            idempotency: true,
            lookup: true,
            cancel: true,
        },
        ..SimConfig::default()
    })
    .await;
    let replica = env.replica("r0", &review::REPLICA_ARGS).await;
    let mut operator = replica.client(OPERATOR).await;
    let mut reviewer = replica.client(REVIEWER).await;
    // The gateway charges and holds its answer past the coordinator's timeout.
    review::charge_and_lose_the_next_answer(&env).await;
    let order = operator
        .process_payment(pay("rev-timeout", "k1"))
        .await
        .expect("answered")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(order.state(), pb::OrderState::ManualReview);
    let (items, _) = list_all(&mut reviewer, 0).await;
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert!(
        item.error_history
            .iter()
            .any(|e| e.message.contains("timeout")),
        "{item:?}"
    );
    assert!(!item.reason.is_empty());
    // The gateway cannot be asked: the reviewer's word is recorded, and says so.
    let pi = charged_intent(&env, "rev-timeout").await;
    let paid = reviewer
        .resolve_manual_review(resolve("rev-timeout", pb::Resolution::Charged, &pi))
        .await
        .expect("resolved")
        .into_inner();
    assert_eq!(paid.state(), pb::OrderState::Paid);
    let sql = env.sql().await;
    let detail: String = sql
        .query_one(
            "SELECT detail FROM events WHERE order_id = 'rev-timeout' AND kind = 'MANUAL_REVIEW_RESOLVED'",
            &[],
        )
        .await
        .expect("resolved event")
        .get(0);
    assert!(detail.contains("not verified"), "{detail}");
    assert!(
        detail.contains(REVIEWER) && detail.contains(&pi),
        "{detail}"
    );
    assert_eq!(charges(&env, "rev-timeout").await, 1);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_charged_voids_an_intent_that_could_still_charge_or_is_refused() {
    // two_phase on a gateway without idempotency keys: a confirm that answers 500 before acting
    // leaves an intent `requires_confirmation`; the one lookup allowed fails too, so the order
    // goes to review with an intent that a late confirm could still charge.
    let env = TestEnv::with_sim(SimConfig {
        without: Without {
            idempotency: true,
            ..Without::default()
        },
        ..SimConfig::default()
    })
    .await;
    let limited = [
        "--gateway-capabilities",
        "lookup",
        "--recovery-max-runs",
        "1",
        "--recovery-actions-per-run",
        "1",
    ];
    let replica = env.replica("r0", &limited).await;
    let mut operator = replica.client(OPERATOR).await;
    let order = confirm_into_review(&env, &mut operator, "rev-open", "error_500_before").await;
    let intent = order.attempts[0].gateway_payment_id.clone();
    assert!(!intent.is_empty());
    // Without cancel, "not charged" is refused: the intent could still be confirmed.
    let mut reviewer = replica.client(REVIEWER).await;
    let refused = reviewer
        .resolve_manual_review(resolve("rev-open", pb::Resolution::NotCharged, ""))
        .await
        .expect_err("could still charge");
    assert_eq!(reason(&refused), "RESOLUTION_CONTRADICTED");
    assert!(
        refused.message().contains("could still charge"),
        "{}",
        refused.message()
    );
    replica.stop().await;

    // A replica that may cancel voids it first, then records the decision.
    let replica = env
        .replica("r1", &["--gateway-capabilities", "lookup,cancel"])
        .await;
    let mut reviewer = replica.client(REVIEWER).await;
    let pending = reviewer
        .resolve_manual_review(resolve("rev-open", pb::Resolution::NotCharged, ""))
        .await
        .expect("voided, then not charged")
        .into_inner();
    assert_eq!(pending.state(), pb::OrderState::Pending);
    let ledger = env.sim_control.ledger().await.expect("ledger");
    let status = ledger
        .intents
        .iter()
        .find(|i| i.id == intent)
        .map(|i| i.status.as_str().to_owned());
    assert_eq!(status.as_deref(), Some("canceled"));
    assert_eq!(charges(&env, "rev-open").await, 0);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_reviewers_resolving_at_once_record_one_decision() {
    let (env, replica) = env_and_replica().await;
    let mut operator = replica.client(OPERATOR).await;
    into_review(&env, &mut operator, "rev-race", "error_500_before").await;
    let mut first = replica.client(REVIEWER).await;
    let mut second = replica.client(integration_tests::coordinator::ADMIN).await;
    let (a, b) = tokio::join!(
        first.resolve_manual_review(resolve("rev-race", pb::Resolution::NotCharged, "")),
        second.resolve_manual_review(resolve("rev-race", pb::Resolution::NotCharged, "")),
    );
    let won = [a.is_ok(), b.is_ok()];
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let lost = a.err().or(b.err()).expect("one refused");
    assert_eq!(reason(&lost), "NOT_IN_MANUAL_REVIEW", "{lost:?}");
    let sql = env.sql().await;
    let decisions: i64 = sql
        .query_one(
            "SELECT count(*) FROM events WHERE order_id = 'rev-race' AND kind = 'MANUAL_REVIEW_RESOLVED'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(decisions, 1);
    replica.stop().await;
    env.cleanup().await;
}

/// The order as it stands.
async fn order_of(client: &mut Client, order_id: &str) -> pb::Order {
    client
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .expect("get")
        .into_inner()
}

/// How many MANUAL_REVIEW_RESOLVED events the order has.
async fn resolutions(env: &TestEnv, order_id: &str) -> i64 {
    env.sql()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE order_id = $1 AND kind = 'MANUAL_REVIEW_RESOLVED'",
            &[&order_id],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charged_with_another_orders_payment_or_the_wrong_amount_is_contradicted() {
    let (env, replica) = env_and_replica().await;
    let mut operator = replica.client(OPERATOR).await;
    let mut reviewer = replica.client(REVIEWER).await;
    into_review(&env, &mut operator, "rev-mine", "drop_after_charge").await;
    // Two real, succeeded payments a careless reviewer could pick up from the dashboard: one of
    // another order for the same amount, one for another amount.
    operator
        .process_payment(pay("rev-theirs", "k-theirs"))
        .await
        .expect("paid");
    operator
        .process_payment(pb::ProcessPaymentRequest {
            amount: Some(pb::Money {
                amount_minor: 999,
                currency: "EUR".to_owned(),
            }),
            items: vec![],
            ..pay("rev-cheap", "k-cheap")
        })
        .await
        .expect("paid");
    let theirs = charged_intent(&env, "rev-theirs").await;
    let cheap = charged_intent(&env, "rev-cheap").await;

    let other_order = reviewer
        .resolve_manual_review(resolve("rev-mine", pb::Resolution::Charged, &theirs))
        .await
        .expect_err("another order's payment");
    assert_eq!(
        (other_order.code(), reason(&other_order).as_str()),
        (Code::FailedPrecondition, "RESOLUTION_CONTRADICTED")
    );
    assert!(
        other_order
            .message()
            .contains("belongs to order rev-theirs"),
        "{}",
        other_order.message()
    );
    let wrong_amount = reviewer
        .resolve_manual_review(resolve("rev-mine", pb::Resolution::Charged, &cheap))
        .await
        .expect_err("the wrong amount");
    assert_eq!(
        (wrong_amount.code(), reason(&wrong_amount).as_str()),
        (Code::FailedPrecondition, "RESOLUTION_CONTRADICTED")
    );
    assert!(
        wrong_amount.message().contains("999") && wrong_amount.message().contains("4200"),
        "{}",
        wrong_amount.message()
    );

    // Nothing was recorded: the order is still in review and still listed, the other orders
    // keep their own charges.
    assert_eq!(
        order_of(&mut operator, "rev-mine").await.state(),
        pb::OrderState::ManualReview
    );
    assert_eq!(resolutions(&env, "rev-mine").await, 0);
    let (items, _) = list_all(&mut reviewer, 10).await;
    let listed: Vec<_> = items
        .iter()
        .map(|i| i.order.as_ref().expect("order").order_id.as_str())
        .collect();
    assert_eq!(listed, ["rev-mine"]);
    for (order_id, pi) in [("rev-theirs", &theirs), ("rev-cheap", &cheap)] {
        let order = order_of(&mut operator, order_id).await;
        assert_eq!(order.state(), pb::OrderState::Paid);
        assert_eq!(&order.attempts[0].gateway_payment_id, pi);
    }

    // Its own payment is accepted: the refusals above were about the ids, nothing else.
    let mine = charged_intent(&env, "rev-mine").await;
    let paid = reviewer
        .resolve_manual_review(resolve("rev-mine", pb::Resolution::Charged, &mine))
        .await
        .expect("resolved")
        .into_inner();
    assert_eq!(paid.state(), pb::OrderState::Paid);
    assert_eq!(paid.attempts[0].gateway_payment_id, mine);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_review_item_carries_the_intent_id_it_knows_and_the_gateway_keys() {
    // two_phase: the intent id is recorded before the confirm whose answer is lost.
    let env = TestEnv::with_sim(SimConfig {
        without: Without {
            idempotency: true,
            ..Without::default()
        },
        ..SimConfig::default()
    })
    .await;
    let replica = env
        .replica(
            "r0",
            &[
                "--gateway-capabilities",
                "lookup",
                "--recovery-max-runs",
                "1",
                "--recovery-actions-per-run",
                "1",
            ],
        )
        .await;
    let mut operator = replica.client(OPERATOR).await;
    let mut reviewer = replica.client(REVIEWER).await;
    let order = confirm_into_review(&env, &mut operator, "rev-ids", "drop_after_charge").await;
    let intent = order.attempts[0].gateway_payment_id.clone();
    assert!(intent.starts_with("pi_"), "{order:?}");
    // The id is the gateway's charge of this order (what the reviewer will look up).
    assert_eq!(charged_intent(&env, "rev-ids").await, intent);

    let (items, _) = list_all(&mut reviewer, 10).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(item.gateway_payment_ids, [intent.as_str()]);
    for key in ["pay:rev-ids:1:create", "pay:rev-ids:1:confirm"] {
        assert!(
            item.gateway_idempotency_keys.contains(&key.to_owned()),
            "{key} missing: {:?}",
            item.gateway_idempotency_keys
        );
    }
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_reviewers_and_admins_handle_reviews_and_refunds() {
    let (env, replica) = env_and_replica().await;
    let mut operator = replica.client(OPERATOR).await;
    let mut service = replica.client(SERVICE).await;
    into_review(&env, &mut operator, "rev-roles", "error_500_before").await;
    operator
        .process_payment(pay("rev-paid", "k-paid"))
        .await
        .expect("paid");
    let forbidden = |status: tonic::Status| (status.code(), reason(&status));
    let denied = (Code::PermissionDenied, "FORBIDDEN".to_owned());

    // CONTRACT §4: ResolveManualReview is for reviewers (and admins), not operators or services.
    for (who, client) in [(OPERATOR, &mut operator), (SERVICE, &mut service)] {
        let refused = client
            .resolve_manual_review(resolve("rev-roles", pb::Resolution::NotCharged, ""))
            .await
            .expect_err("may not resolve");
        assert_eq!(forbidden(refused), denied, "{who} resolving");
    }
    // Services are read-only consumers of orders and events: no review queue.
    let listed = service
        .list_manual_reviews(pb::ListManualReviewsRequest::default())
        .await
        .expect_err("may not list");
    assert_eq!(forbidden(listed), denied, "service listing");
    // Operators pay; refunds are for reviewers.
    let refunded = operator
        .refund_payment(pb::RefundPaymentRequest {
            order_id: "rev-paid".into(),
            amount: None,
            reason: "customer asked".into(),
            idempotency_key: "op-refund".into(),
        })
        .await
        .expect_err("may not refund");
    assert_eq!(forbidden(refunded), denied, "operator refunding");

    // None of that left a trace: still in review, unresolved; still paid, nothing refunded.
    assert_eq!(
        order_of(&mut service, "rev-roles").await.state(),
        pb::OrderState::ManualReview
    );
    assert_eq!(resolutions(&env, "rev-roles").await, 0);
    let paid = order_of(&mut service, "rev-paid").await;
    assert_eq!(
        (paid.state(), paid.refunds.len()),
        (pb::OrderState::Paid, 0)
    );
    assert_eq!(
        env.sim_control.ledger().await.expect("ledger").calls.refund,
        0
    );

    // The roles that may: a reviewer lists, an admin resolves.
    let mut reviewer = replica.client(REVIEWER).await;
    let (items, _) = list_all(&mut reviewer, 10).await;
    assert_eq!(items.len(), 1);
    let mut admin = replica.client(integration_tests::coordinator::ADMIN).await;
    let (items, _) = list_all(&mut admin, 10).await;
    assert_eq!(items.len(), 1);
    let resolved = admin
        .resolve_manual_review(resolve("rev-roles", pb::Resolution::NotCharged, ""))
        .await
        .expect("an admin may resolve")
        .into_inner();
    assert_eq!(resolved.state(), pb::OrderState::Pending);
    replica.stop().await;
    env.cleanup().await;
}
