//! The event feed over gRPC, across three replicas on one PostgreSQL: gap-free, resumable, in
//! order, live. Reading never deletes.

use std::{collections::HashMap, time::Duration};

use integration_tests::coordinator::{OPERATOR, SERVICE, TestEnv};
use payments_proto::v1 as pb;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

/// Guard against a hung test only; never an assertion about speed.
const GUARD: Duration = Duration::from_secs(60);

fn pay(order_id: &str, key: &str, wait: bool) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 1200,
            currency: "EUR".into(),
        }),
        customer_id: "cust-1".into(),
        payment_method: "pm_card_visa".into(),
        items: vec![],
        idempotency_key: key.to_owned(),
        wait_for_outcome: wait,
    }
}

async fn take(stream: &mut Streaming<pb::OrderEvent>, n: usize) -> Vec<pb::OrderEvent> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        let next = tokio::time::timeout(GUARD, stream.next())
            .await
            .expect("an event within the guard");
        events.push(next.expect("stream open").expect("event"));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_orders_over_three_replicas_reach_a_watcher_gap_free_and_resumable() {
    let env = TestEnv::new().await;
    let replicas = [
        env.replica("r0", &[]).await,
        env.replica("r1", &[]).await,
        env.replica("r2", &[]).await,
    ];
    let mut watcher = replicas[0].client(SERVICE).await;
    let mut live = watcher
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: 0,
            last: 0,
        })
        .await
        .expect("watch")
        .into_inner();

    let mut payers = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        payers.push((i, r.client(OPERATOR).await));
    }
    let mut calls = Vec::new();
    for n in 0..60 {
        let (_, client) = &payers[n % 3];
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            client
                .process_payment(pay(&format!("feed-{n}"), &format!("k{n}"), true))
                .await
        }));
    }
    for call in calls {
        let paid = call.await.expect("task").expect("paid").into_inner();
        assert_eq!(paid.order.expect("order").state(), pb::OrderState::Paid);
    }

    // ORDER_CREATED, ATTEMPT_STARTED, ATTEMPT_SUCCEEDED per order.
    let events = take(&mut live, 180).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.global_sequence,
            i as i64 + 1,
            "dense, strictly increasing positions"
        );
    }
    let mut per_order: HashMap<&str, Vec<&pb::OrderEvent>> = HashMap::new();
    for e in &events {
        per_order.entry(e.order_id.as_str()).or_default().push(e);
    }
    assert_eq!(per_order.len(), 60);
    for (order, evs) in &per_order {
        let seqs: Vec<i64> = evs.iter().map(|e| e.sequence).collect();
        assert_eq!(
            seqs,
            [1, 2, 3],
            "{order}: per-order sequence gap-free and in order"
        );
        let kinds: Vec<pb::EventKind> = evs.iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            [
                pb::EventKind::OrderCreated,
                pb::EventKind::AttemptStarted,
                pb::EventKind::AttemptSucceeded
            ]
        );
        assert_eq!(evs[2].state(), pb::OrderState::Paid);
    }

    // A consumer resuming from a cursor in the middle gets exactly the tail, through another
    // replica.
    let cursor = events[89].global_sequence;
    let mut other = replicas[2].client(SERVICE).await;
    let mut resumed = other
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: cursor,
            last: 0,
        })
        .await
        .expect("resume")
        .into_inner();
    let tail = take(&mut resumed, 90).await;
    assert_eq!(
        tail,
        events[90..].to_vec(),
        "the resumed tail is exactly what the first watcher saw"
    );

    // Reading never deletes: a new watcher from 0 sees everything again.
    let mut again = replicas[1]
        .client(SERVICE)
        .await
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: 0,
            last: 0,
        })
        .await
        .expect("again")
        .into_inner();
    assert_eq!(take(&mut again, 180).await, events);

    // `last`: only the newest events, then live ones; a cursor beyond them wins; a negative
    // `last` is refused.
    let mut latest = replicas[1]
        .client(SERVICE)
        .await
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: 0,
            last: 5,
        })
        .await
        .expect("latest")
        .into_inner();
    assert_eq!(take(&mut latest, 5).await, events[175..].to_vec());
    let mut beyond = replicas[2]
        .client(SERVICE)
        .await
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: 178,
            last: 50,
        })
        .await
        .expect("beyond")
        .into_inner();
    assert_eq!(take(&mut beyond, 2).await, events[178..].to_vec());
    let refused = replicas[0]
        .client(SERVICE)
        .await
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: 0,
            last: -1,
        })
        .await
        .expect_err("a negative last is refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // Both follow live after what they replayed: the next order's first event reaches them.
    payers[0]
        .1
        .clone()
        .process_payment(pay("feed-after-latest", "k-latest", true))
        .await
        .expect("paid");
    for stream in [&mut latest, &mut beyond] {
        let next = take(stream, 1).await;
        assert_eq!(next[0].global_sequence, 181, "{next:?}");
        assert_eq!(next[0].order_id, "feed-after-latest");
    }

    drop((live, resumed, again, latest, beyond));
    for r in replicas {
        r.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_order_follows_a_payment_running_on_another_replica_to_its_end() {
    let env = TestEnv::new().await;
    let (r0, r1) = (env.replica("r0", &[]).await, env.replica("r1", &[]).await);
    env.sim_control
        .set_faults(json!({ "latency_ms": 500 }))
        .await
        .expect("slow gateway");
    let mut payer = r1.client(OPERATOR).await;
    let started = payer
        .process_payment(pay("followed", "k1", false))
        .await
        .expect("started")
        .into_inner();
    assert_eq!(
        started.order.expect("order").state(),
        pb::OrderState::AwaitingConfirmation
    );

    let mut follower = r0.client(OPERATOR).await;
    let stream = follower
        .watch_order(pb::WatchOrderRequest {
            order_id: "followed".into(),
            after_sequence: 0,
            until_terminal: true,
        })
        .await
        .expect("watch order")
        .into_inner();
    let events: Vec<pb::OrderEvent> = tokio::time::timeout(GUARD, stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends after the terminal event")
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("events");
    let kinds: Vec<pb::EventKind> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            pb::EventKind::OrderCreated,
            pb::EventKind::AttemptStarted,
            pb::EventKind::AttemptSucceeded
        ]
    );
    assert_eq!(
        events.last().expect("terminal").state(),
        pb::OrderState::Paid
    );

    // Resuming after the terminal event of a finished order ends at once.
    let ended = follower
        .watch_order(pb::WatchOrderRequest {
            order_id: "followed".into(),
            after_sequence: 3,
            until_terminal: true,
        })
        .await
        .expect("watch order")
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    assert!(ended.is_empty());

    // Unknown order, and a role that may not read the global feed.
    let missing = follower
        .watch_order(pb::WatchOrderRequest {
            order_id: "nope".into(),
            after_sequence: 0,
            until_terminal: true,
        })
        .await
        .expect_err("unknown order");
    assert_eq!(missing.code(), Code::NotFound);
    let forbidden = follower
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect_err("operator");
    assert_eq!(forbidden.code(), Code::PermissionDenied);

    r0.stop().await;
    r1.stop().await;
    env.cleanup().await;
}
