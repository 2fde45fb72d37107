//! The store against a real PostgreSQL: each test in its own fresh database, dropped at the end.
//!
//! `DATABASE_URL_BASE` (default `postgres://root@127.0.0.1:5432`) names the server.

mod common;
use common::{TestDb, base_url};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coordinator::domain::{AttemptOutcome, OrderState};
use coordinator::store::{
    Begin, BeginRefusal, Fence, Fenced, Finish, LineItemRecord, MIGRATIONS, NewAttempt, Store,
    StoreError,
};
use gateway_client::Flow;
use tokio::sync::Barrier;
use tokio_postgres::NoTls;

fn request(order_id: &str, operator: &str, key: &str) -> NewAttempt {
    NewAttempt {
        order_id: order_id.to_owned(),
        amount_minor: 12_500,
        currency: "EUR".to_owned(),
        customer_id: "cust-1".to_owned(),
        items: vec![
            LineItemRecord {
                product_id: "room-night".to_owned(),
                quantity: 2,
                unit_amount_minor: 5_000,
            },
            LineItemRecord {
                product_id: "breakfast".to_owned(),
                quantity: 1,
                unit_amount_minor: 2_500,
            },
        ],
        payment_method: "pm_card_visa".to_owned(),
        operator_id: operator.to_owned(),
        replica_id: "replica-a".to_owned(),
        request_key: key.to_owned(),
        fingerprint: format!("fp-{key}"),
        flow: Flow::TwoPhase,
    }
}

async fn started(store: &Store, new: &NewAttempt) -> Fence {
    match store.begin_attempt(new).await.expect("begin") {
        Begin::Started { order, attempt } => Fence::of(&order, &attempt),
        other => panic!("expected Started, got {other:?}"),
    }
}

/// `(sequence, kind, state, attempt_number)` of the order's events, in order.
async fn events(db: &TestDb, order_id: &str) -> Vec<(i64, String, String, Option<i32>)> {
    db.sql()
        .await
        .query(
            "SELECT sequence, kind, state, attempt_number FROM events \
             WHERE order_id = $1 ORDER BY sequence",
            &[&order_id],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn ev(
    seq: i64,
    kind: &str,
    state: &str,
    attempt: Option<i32>,
) -> (i64, String, String, Option<i32>) {
    (seq, kind.to_owned(), state.to_owned(), attempt)
}

#[tokio::test]
async fn the_database_is_created_when_missing() {
    let db = TestDb::new("store");
    let store = db.store().await;
    assert!(store.ping().await);
    let admin = {
        let (client, connection) =
            tokio_postgres::connect(&format!("{}/postgres", base_url()), NoTls)
                .await
                .expect("admin");
        tokio::spawn(connection);
        client
    };
    let found = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db.name])
        .await
        .expect("pg_database");
    assert!(found.is_some());
}

#[tokio::test]
async fn three_replicas_migrate_a_fresh_database_at_once() {
    let db = TestDb::new("store");
    let url = db.url();
    let connects = (0..3).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::connect(&url, 2).await })
    });
    for handle in connects.collect::<Vec<_>>() {
        let store = handle.await.expect("task").expect("connect");
        assert!(store.ping().await);
    }
    let rows = db
        .sql()
        .await
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("schema_migrations");
    let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected: Vec<(i32, String)> = MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_owned()))
        .collect();
    assert_eq!(applied, expected);
    // A later start finds nothing to do.
    db.store().await;
}

#[tokio::test]
async fn a_first_attempt_creates_the_order_and_its_events() {
    let db = TestDb::new("store");
    let store = db.store().await;
    let new = request("ord-1", "alice", "k1");
    let Begin::Started { order, attempt } = store.begin_attempt(&new).await.expect("begin") else {
        panic!("expected Started");
    };
    assert_eq!(order.state, OrderState::AwaitingConfirmation);
    assert_eq!(order.fence, 1);
    assert_eq!(order.last_sequence, 2);
    assert_eq!(order.items, new.items);
    // The one statement that starts the attempt reads no other attempt back.
    assert!(order.attempts.is_empty());
    assert_eq!(attempt.number, 1);
    assert_eq!(attempt.fence, 1);
    assert_eq!(attempt.outcome, AttemptOutcome::InFlight);
    assert_eq!(attempt.gateway_create_key, "pay:ord-1:1:create");
    assert_eq!(attempt.gateway_confirm_key, "pay:ord-1:1:confirm");
    assert_eq!(attempt.flow, "two_phase");
    assert_eq!(attempt.operator_id, "alice");
    assert_eq!(attempt.replica_id, "replica-a");
    assert_eq!(attempt.request_key, "k1");
    assert_eq!(attempt.gateway_payment_id, None);
    assert!(attempt.errors.is_empty());
    assert_eq!(attempt.finished_at, None);

    assert_eq!(
        events(&db, "ord-1").await,
        vec![
            ev(1, "ORDER_CREATED", "PENDING", None),
            ev(2, "ATTEMPT_STARTED", "AWAITING_CONFIRMATION", Some(1)),
        ]
    );
    let mut read = order.clone();
    read.attempts = vec![attempt.clone()];
    assert_eq!(store.get_order("ord-1").await.expect("get"), Some(read));
    assert_eq!(store.get_order("nope").await.expect("get"), None);
    assert_eq!(
        store.find_request("alice", "k1").await.expect("find"),
        Some(("ord-1".to_owned(), 1, "fp-k1".to_owned()))
    );
    assert_eq!(store.find_request("bob", "k1").await.expect("find"), None);
}

#[tokio::test]
async fn a_request_that_differs_from_the_order_is_refused() {
    let db = TestDb::new("store");
    let store = db.store().await;
    started(&store, &request("ord-m", "alice", "k0")).await;

    let mut amount = request("ord-m", "alice", "k1");
    amount.amount_minor += 1;
    let mut currency = request("ord-m", "alice", "k2");
    currency.currency = "USD".to_owned();
    let mut customer = request("ord-m", "alice", "k3");
    customer.customer_id = "cust-2".to_owned();
    let mut all = request("ord-m", "alice", "k4");
    all.amount_minor = 1;
    all.currency = "GBP".to_owned();
    all.customer_id = "cust-3".to_owned();
    for (new, fields) in [
        (amount, vec!["amount"]),
        (currency, vec!["currency"]),
        (customer, vec!["customer_id"]),
        (all, vec!["amount", "currency", "customer_id"]),
    ] {
        assert_eq!(
            store.begin_attempt(&new).await.expect("begin"),
            Begin::Refused(BeginRefusal::Mismatch { fields })
        );
        assert_eq!(
            store
                .find_request("alice", &new.request_key)
                .await
                .expect("find"),
            None
        );
    }
    assert_eq!(events(&db, "ord-m").await.len(), 2);
}

#[tokio::test]
async fn a_second_caller_is_told_who_holds_the_order() {
    let db = TestDb::new("store");
    let store = db.store().await;
    let Begin::Started { attempt, .. } = store
        .begin_attempt(&request("ord-h", "alice", "k1"))
        .await
        .expect("begin")
    else {
        panic!("expected Started");
    };
    assert_eq!(
        store
            .begin_attempt(&request("ord-h", "bob", "k2"))
            .await
            .expect("begin"),
        Begin::Refused(BeginRefusal::InProgress {
            attempt: 1,
            operator_id: "alice".to_owned(),
            started_at: attempt.started_at,
        })
    );
    assert_eq!(events(&db, "ord-h").await.len(), 2);
}

#[tokio::test]
async fn twenty_concurrent_callers_start_exactly_one_attempt() {
    let db = TestDb::new("store");
    let store = Store::connect(&db.url(), 20).await.expect("connect");
    let barrier = Arc::new(Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .begin_attempt(&request("ord-c", &format!("op-{i}"), "k"))
                    .await
            })
        })
        .collect();
    let mut started = Vec::new();
    let mut in_progress = 0;
    for task in tasks {
        match task.await.expect("task").expect("begin") {
            Begin::Started { attempt, .. } => started.push(attempt),
            Begin::Refused(BeginRefusal::InProgress { attempt, .. }) => {
                assert_eq!(attempt, 1);
                in_progress += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started.len(), 1);
    assert_eq!(in_progress, 19);
    let order = store.get_order("ord-c").await.expect("get").expect("order");
    assert_eq!(order.attempts.len(), 1);
    assert_eq!(order.fence, 1);
    assert_eq!(events(&db, "ord-c").await.len(), 2);
}

#[tokio::test]
async fn the_same_key_twice_at_once_starts_one_attempt_and_the_other_joins() {
    let db = TestDb::new("store");
    let store = db.store().await;
    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .begin_attempt(&request("ord-k", "alice", "same"))
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task").expect("begin"));
    }
    let started = answers
        .iter()
        .filter(|a| matches!(a, Begin::Started { .. }))
        .count();
    assert_eq!(started, 1, "{answers:?}");
    assert!(answers.contains(&Begin::KeyTaken {
        order_id: "ord-k".to_owned(),
        attempt: 1,
        fingerprint: "fp-same".to_owned(),
    }));

    // The key is the caller's across orders: on another order it points at the first one, and the
    // other order is not created.
    assert_eq!(
        store
            .begin_attempt(&request("ord-other", "alice", "same"))
            .await
            .expect("begin"),
        Begin::KeyTaken {
            order_id: "ord-k".to_owned(),
            attempt: 1,
            fingerprint: "fp-same".to_owned(),
        }
    );
    assert_eq!(store.get_order("ord-other").await.expect("get"), None);
}

#[tokio::test]
async fn a_success_pays_the_order() {
    let db = TestDb::new("store");
    let store = db.store().await;
    let fence = started(&store, &request("ord-p", "alice", "k1")).await;
    assert_eq!(
        store.record_intent(&fence, "pi_123").await.expect("intent"),
        Fenced::Applied
    );
    assert_eq!(
        store
            .get_order("ord-p")
            .await
            .expect("get")
            .expect("order")
            .attempts[0]
            .gateway_payment_id
            .as_deref(),
        Some("pi_123")
    );
    let finish = Finish::Succeeded {
        intent_id: "pi_123".to_owned(),
    };
    assert_eq!(
        store
            .finish_attempt(&fence, &finish, "replica-a")
            .await
            .expect("finish"),
        Fenced::Applied
    );
    let order = store.get_order("ord-p").await.expect("get").expect("order");
    assert_eq!(order.state, OrderState::Paid);
    assert_eq!(order.last_sequence, 3);
    let attempt = &order.attempts[0];
    assert_eq!(attempt.outcome, AttemptOutcome::Succeeded);
    assert_eq!(attempt.gateway_payment_id.as_deref(), Some("pi_123"));
    assert!(attempt.finished_at.is_some());
    assert_eq!(
        events(&db, "ord-p").await[2],
        ev(3, "ATTEMPT_SUCCEEDED", "PAID", Some(1))
    );

    // Final: a second finish writes nothing; a new attempt is refused.
    assert_eq!(
        store
            .finish_attempt(&fence, &finish, "replica-a")
            .await
            .expect("finish"),
        Fenced::Superseded
    );
    assert_eq!(
        store
            .begin_attempt(&request("ord-p", "bob", "k2"))
            .await
            .expect("begin"),
        Begin::Refused(BeginRefusal::AlreadyPaid)
    );
    assert_eq!(events(&db, "ord-p").await.len(), 3);
}

#[tokio::test]
async fn a_decline_reopens_the_order_for_a_second_attempt() {
    let db = TestDb::new("store");
    let store = db.store().await;
    let first = started(&store, &request("ord-d", "alice", "k1")).await;
    let declined = Finish::Declined {
        intent_id: Some("pi_1".to_owned()),
        decline_code: "insufficient_funds".to_owned(),
        message: "Your card has insufficient funds.".to_owned(),
    };
    assert_eq!(
        store
            .finish_attempt(&first, &declined, "replica-a")
            .await
            .expect("finish"),
        Fenced::Applied
    );
    let order = store.get_order("ord-d").await.expect("get").expect("order");
    assert_eq!(order.state, OrderState::Pending);
    let attempt = &order.attempts[0];
    assert_eq!(attempt.outcome, AttemptOutcome::Declined);
    assert_eq!(attempt.decline_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(
        attempt.failure_message.as_deref(),
        Some("Your card has insufficient funds.")
    );
    assert_eq!(attempt.gateway_payment_id.as_deref(), Some("pi_1"));

    let Begin::Started { order, attempt } = store
        .begin_attempt(&request("ord-d", "alice", "k2"))
        .await
        .expect("begin")
    else {
        panic!("expected Started");
    };
    assert_eq!(attempt.number, 2);
    assert_eq!(attempt.fence, 2);
    assert_eq!(attempt.gateway_create_key, "pay:ord-d:2:create");
    assert_eq!(attempt.gateway_confirm_key, "pay:ord-d:2:confirm");
    let attempts = store
        .get_order("ord-d")
        .await
        .expect("get")
        .expect("order")
        .attempts;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].number, 1);
    assert_eq!(attempts[1], attempt);
    let second = Fence::of(&order, &attempt);
    // The first attempt's fence no longer holds.
    assert_eq!(
        store
            .record_intent(&first, "pi_stale")
            .await
            .expect("intent"),
        Fenced::Superseded
    );
    assert_eq!(
        store
            .finish_attempt(
                &second,
                &Finish::Succeeded {
                    intent_id: "pi_2".to_owned()
                },
                "replica-b"
            )
            .await
            .expect("finish"),
        Fenced::Applied
    );
    assert_eq!(
        store
            .get_order("ord-d")
            .await
            .expect("get")
            .expect("order")
            .state,
        OrderState::Paid
    );
    assert_eq!(
        events(&db, "ord-d").await,
        vec![
            ev(1, "ORDER_CREATED", "PENDING", None),
            ev(2, "ATTEMPT_STARTED", "AWAITING_CONFIRMATION", Some(1)),
            ev(3, "ATTEMPT_DECLINED", "PENDING", Some(1)),
            ev(4, "ATTEMPT_STARTED", "AWAITING_CONFIRMATION", Some(2)),
            ev(5, "ATTEMPT_SUCCEEDED", "PAID", Some(2)),
        ]
    );
}

#[tokio::test]
async fn a_stale_holder_writes_nothing_once_the_fence_moved() {
    let db = TestDb::new("store");
    let store = db.store().await;
    let fence = started(&store, &request("ord-f", "alice", "k1")).await;
    let before_error = SystemTime::now() - Duration::from_secs(5);
    assert_eq!(
        store
            .append_error(&fence, "create", "gateway answered 503")
            .await
            .expect("error"),
        Fenced::Applied
    );
    let before = store.get_order("ord-f").await.expect("get").expect("order");
    let errors = &before.attempts[0].errors;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].step, "create");
    assert_eq!(errors[0].message, "gateway answered 503");
    assert!(
        errors[0].at > before_error && errors[0].at < SystemTime::now() + Duration::from_secs(5)
    );

    // A newer holder (the recovery worker, say) takes the attempt over.
    let bumped = db
        .sql()
        .await
        .execute(
            "UPDATE orders SET fence = fence + 1 WHERE order_id = $1",
            &[&"ord-f"],
        )
        .await
        .expect("bump");
    assert_eq!(bumped, 1);

    assert_eq!(
        store
            .record_intent(&fence, "pi_stale")
            .await
            .expect("intent"),
        Fenced::Superseded
    );
    assert_eq!(
        store
            .append_error(&fence, "confirm", "stale")
            .await
            .expect("error"),
        Fenced::Superseded
    );
    assert_eq!(
        store
            .finish_attempt(
                &fence,
                &Finish::Succeeded {
                    intent_id: "pi_stale".to_owned()
                },
                "replica-a"
            )
            .await
            .expect("finish"),
        Fenced::Superseded
    );
    let after = store.get_order("ord-f").await.expect("get").expect("order");
    assert_eq!(after.fence, before.fence + 1);
    assert_eq!(after.state, OrderState::AwaitingConfirmation);
    assert_eq!(after.last_sequence, before.last_sequence);
    assert_eq!(after.updated_at, before.updated_at);
    assert_eq!(after.attempts, before.attempts);
    assert_eq!(events(&db, "ord-f").await.len(), 2);

    // The holder of the new token may write.
    let current = Fence {
        token: fence.token + 1,
        ..fence
    };
    assert_eq!(
        store
            .record_intent(&current, "pi_new")
            .await
            .expect("intent"),
        Fenced::Applied
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port nobody listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let error = Store::connect(&format!("postgres://root@127.0.0.1:{port}/payments"), 2)
        .await
        .expect_err("nothing listens");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(error.is_unavailable());
}

#[tokio::test]
async fn every_attempt_number_is_used_once() {
    // Declines and retries in a row: numbers, fences and keys advance together.
    let db = TestDb::new("store");
    let store = db.store().await;
    let mut numbers = HashSet::new();
    for i in 0..5 {
        let fence = started(&store, &request("ord-n", "alice", &format!("k{i}"))).await;
        assert!(numbers.insert(fence.attempt));
        assert_eq!(i64::from(fence.attempt), fence.token);
        let declined = Finish::Declined {
            intent_id: None,
            decline_code: "generic_decline".to_owned(),
            message: "declined".to_owned(),
        };
        assert_eq!(
            store
                .finish_attempt(&fence, &declined, "replica-a")
                .await
                .expect("finish"),
            Fenced::Applied
        );
    }
    let order = store.get_order("ord-n").await.expect("get").expect("order");
    assert_eq!(
        order.attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(order.last_sequence, 11);
}

#[tokio::test]
async fn the_same_key_on_two_new_orders_at_once_starts_one() {
    // Different orders do not queue on one row lock: the unique (operator_id, request_key) decides.
    let db = TestDb::new("store");
    let store = db.store().await;
    for round in 0..5 {
        let key = format!("shared-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|side| {
                let store = store.clone();
                let barrier = barrier.clone();
                let new = request(&format!("ord-{round}-{side}"), "alice", &key);
                tokio::spawn(async move {
                    barrier.wait().await;
                    (new.order_id.clone(), store.begin_attempt(&new).await)
                })
            })
            .collect();
        let mut winner = None;
        let mut joined = Vec::new();
        for task in tasks {
            match task.await.expect("task") {
                (order_id, Ok(Begin::Started { .. })) => winner = Some(order_id),
                (
                    order_id,
                    Ok(Begin::KeyTaken {
                        order_id: taken,
                        attempt,
                        ..
                    }),
                ) => {
                    assert_eq!(attempt, 1);
                    joined.push((order_id, taken));
                }
                (_, other) => panic!("unexpected {other:?}"),
            }
        }
        let winner = winner.expect("one started");
        assert_eq!(joined.len(), 1);
        let (loser, taken) = &joined[0];
        assert_eq!(taken, &winner);
        assert_eq!(store.get_order(loser).await.expect("get"), None);
    }
}
