//! Graceful shutdown (issue 6) of the REAL coordinator binary: SIGTERM, as Kubernetes sends it.
//!
//! - Payments in flight finish inside the grace period; health turns NOT_SERVING at once; a new
//!   payment is refused; a caller waiting for its outcome is answered; the process exits 0; the
//!   simulator's ledger and the database agree exactly.
//! - An attempt that cannot finish inside the grace period is handed over, not abandoned: its
//!   history says so, its lease is released, and another replica's recovery worker finishes it
//!   (charged once).
//! - Watch streams open at SIGTERM end cleanly (end of stream, status OK), never hang.
//!
//! Every wait is for a state (`checks::wait_for`); no assertion is about time.

use booking_sim::psp::SimConfig;
use coordinator::{journal::Journal, store::Finish};
use integration_tests::checks::{GUARD, charges, charges_by_order, reason, steps, wait_for};
use integration_tests::coordinator::{Client, OPERATOR, REVIEWER, SERVICE, TestEnv};
use integration_tests::pg::ThrowawayPg;
use integration_tests::process::CoordinatorProcess;
use payments_proto::v1 as pb;
use serde_json::json;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

const VISA: &str = "pm_card_visa";
const DECLINED: &str = "pm_card_chargeDeclined";

fn pay(order_id: &str, key: &str, method: &str, wait: bool) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 2500,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-sd".to_owned(),
        payment_method: method.to_owned(),
        items: vec![pb::LineItem {
            product_id: "sku-sd".into(),
            quantity: 1,
            unit_amount_minor: 2500,
        }],
        idempotency_key: key.to_owned(),
        wait_for_outcome: wait,
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

/// Waits until `op` ("create" or "confirm") has reached the simulator `n` times: the calls are
/// then in the middle of their (slowed) processing.
async fn gateway_reached(env: &TestEnv, op: &str, n: u64) {
    wait_for(&format!("{n} {op} calls reach the simulator"), async || {
        let calls = env.sim_control.ledger().await.expect("ledger").calls;
        let seen = match op {
            "create" => calls.create,
            "confirm" => calls.confirm,
            other => panic!("unexpected operation {other}"),
        };
        (seen >= n).then_some(())
    })
    .await
}

/// A `grpc.health.v1.Health/Watch` stream of the overall health ("") of the replica at `url`.
async fn watch_health(url: &str) -> tonic::Streaming<HealthCheckResponse> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner()
}

/// The next status a health watch reports; `None` once the stream has ended.
async fn next_health(stream: &mut tonic::Streaming<HealthCheckResponse>) -> Option<ServingStatus> {
    match tokio::time::timeout(GUARD, stream.message()).await {
        Ok(Ok(Some(reply))) => Some(reply.status()),
        Ok(Ok(None)) => None,
        Ok(Err(status)) => panic!("the health watch failed: {status:?}"),
        Err(_) => panic!("the health watch said nothing"),
    }
}

/// Reads a stream to its end; fails if it ends with an error status (a reset, a failure) or
/// never ends.
async fn assert_ends_cleanly<T>(what: &str, stream: &mut tonic::Streaming<T>) {
    let drained = tokio::time::timeout(GUARD, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    })
    .await;
    match drained {
        Ok(Ok(())) => {}
        Ok(Err(status)) => panic!("{what} ended with an error instead of cleanly: {status:?}"),
        Err(_) => panic!("{what} never ended"),
    }
}

/// Whether a failed call was answered by the replica (with an ErrorInfo), rather than refused by
/// the transport (connection closed or refused).
fn by_the_replica(status: &tonic::Status) -> bool {
    !reason(status).is_empty()
}

/// Rows of `table` for `order_id`.
async fn rows(env: &TestEnv, table: &str, order_id: &str) -> i64 {
    env.sql()
        .await
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE order_id = $1"),
            &[&order_id],
        )
        .await
        .expect("count")
        .get(0)
}

/// How long the gateway holds the confirm of `sd-held`, so that the drain stays open while the
/// test checks what a replica shutting down answers. A bound those few calls stay far within,
/// never asserted and never waited for as such: the test goes on as soon as each state is there.
const HOLD_MS: u64 = 15_000;

/// SIGTERM while payments are in flight at a slowed gateway: they all finish, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_payments_in_flight_finish_and_loses_nothing() {
    let env = TestEnv::new().await;
    // The gateway timeout and the grace period far exceed the slowest gateway call below (the
    // held confirm): every attempt reaches its outcome on its own, inside the grace.
    let mut r1 = CoordinatorProcess::spawn(
        &env,
        "r1",
        &[
            "--gateway-timeout-ms",
            "60000",
            "--shutdown-grace-ms",
            "60000",
        ],
    )
    .await;
    let mut c1 = r1.client(OPERATOR).await;
    let mut health = watch_health(&r1.url).await;
    assert_eq!(next_health(&mut health).await, Some(ServingStatus::Serving));

    // One attempt is held at the gateway: its create goes through (the intent id is persisted),
    // its confirm is answered only HOLD_MS later. Until then the drain cannot end.
    env.sim_control
        .set_faults(json!({ "latency_ms": HOLD_MS, "operations": ["confirm"] }))
        .await
        .expect("hold the next confirm");
    c1.process_payment(pay("sd-held", "k-held", VISA, false))
        .await
        .expect("the held attempt is committed");
    wait_for("sd-held's confirm is held at the gateway", async || {
        let ledger = env.sim_control.ledger().await.expect("ledger");
        // Its key is claimed: the call drew its latency and waits.
        (ledger.calls.confirm == 1 && ledger.idempotency.in_flight == 1).then_some(())
    })
    .await;
    let mut orders = vec!["sd-held".to_owned()];

    // The others' creates are slowed (their confirms are not).
    env.sim_control
        .set_faults(json!({ "latency_ms": 3000, "operations": ["create"] }))
        .await
        .expect("slow the gateway");
    for (i, method) in [VISA, VISA, VISA, DECLINED, VISA].into_iter().enumerate() {
        let order_id = format!("sd-{i}");
        let started = c1
            .process_payment(pay(&order_id, &format!("k-{i}"), method, false))
            .await
            .expect("the attempt is committed")
            .into_inner();
        assert_eq!(
            started.order.expect("order").state(),
            pb::OrderState::AwaitingConfirmation
        );
        orders.push(order_id);
    }
    // One caller waits for its outcome across the SIGTERM: it must be answered, not reset.
    let mut waiter = r1.client(OPERATOR).await;
    let waiting = tokio::spawn(async move {
        waiter
            .process_payment(pay("sd-waiting", "k-waiting", VISA, true))
            .await
    });
    orders.push("sd-waiting".to_owned());
    gateway_reached(&env, "create", orders.len() as u64).await;

    r1.terminate();

    // The drain has begun: health says NOT_SERVING (then the watch ends).
    assert_eq!(
        next_health(&mut health).await,
        Some(ServingStatus::NotServing)
    );
    // The drain is open (sd-held's confirm is still held at the gateway), and the open
    // connection is still served: a new payment is refused by the replica itself (UNAVAILABLE /
    // REPLICA_SHUTTING_DOWN), a read is answered.
    let refused = c1
        .process_payment(pay("sd-late", "k-late", VISA, false))
        .await
        .expect_err("a replica shutting down starts no new payment");
    assert!(
        by_the_replica(&refused),
        "refused by the replica, not the transport: {refused:?}"
    );
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unavailable, "REPLICA_SHUTTING_DOWN"),
        "{refused:?}"
    );
    assert_eq!(
        refused.message(),
        "this replica is shutting down; nothing was charged; retry on another replica"
    );
    let held = get_order(&mut c1, "sd-held")
        .await
        .expect("reads are served while draining");
    assert_eq!(
        held.state(),
        pb::OrderState::AwaitingConfirmation,
        "the check ran inside the drain: sd-held is still at the gateway"
    );
    // sd-held's confirm is answered once its HOLD_MS are over; the drain then ends.
    // New connections are refused (the listening socket is closed at once).
    wait_for("new connections are refused", async || {
        tokio::net::TcpStream::connect(r1.addr).await.err()
    })
    .await;

    let exit = r1.wait_exit().await;
    let log = r1.log_text();
    assert!(exit.success(), "exit status {exit}:\n{log}");

    // The caller that waited got its outcome before the replica went away.
    let answered = waiting
        .await
        .expect("waiter task")
        .expect("the waiting caller is answered")
        .into_inner();
    assert_eq!(
        answered.order.expect("order").state(),
        pb::OrderState::Paid,
        "{log}"
    );

    // Every attempt reached its outcome on r1; ledger and database agree exactly.
    let r2 = env.replica("r2", &[]).await;
    let mut c2 = r2.client(OPERATOR).await;
    let charged = charges_by_order(&env).await;
    for order_id in &orders {
        let o = get_order(&mut c2, order_id).await.expect("order");
        let attempt = &o.attempts[0];
        assert_ne!(
            attempt.outcome(),
            pb::AttemptOutcome::InFlight,
            "{order_id}: {:?}",
            steps(attempt)
        );
        let expected = if order_id == "sd-3" {
            pb::OrderState::Pending
        } else {
            pb::OrderState::Paid
        };
        assert_eq!(o.state(), expected, "{order_id}: {:?}", steps(attempt));
        let times = charged.get(order_id).copied().unwrap_or(0);
        assert_eq!(
            times,
            u32::from(expected == pb::OrderState::Paid),
            "{order_id}: one charge per PAID order, none otherwise"
        );
        assert!(
            !steps(attempt).iter().any(|s| s.starts_with("shutdown")),
            "{order_id} finished inside the grace period: {:?}",
            steps(attempt)
        );
    }
    // The refused payment left nothing behind.
    assert_eq!(
        get_order(&mut c2, "sd-late")
            .await
            .expect_err("never recorded")
            .code(),
        Code::NotFound
    );
    for table in ["orders", "attempts", "events"] {
        assert_eq!(rows(&env, table, "sd-late").await, 0, "{table}");
    }
    assert_eq!(charges(&env, "sd-late").await, 0);
    assert_eq!(
        charged.values().sum::<u32>() as usize,
        orders.len() - 1,
        "no charge outside these orders: {charged:?}"
    );

    // The phases, in the log.
    for phase in [
        "shutdown: signal received",
        "shutdown: health NOT_SERVING",
        "shutdown: no longer accepting connections",
        "draining",
        "left 0 attempts to recovery",
        "journal closed (0 pending)",
        "exit",
    ] {
        assert!(log.contains(phase), "{phase:?} not logged:\n{log}");
    }

    r2.stop().await;
    env.cleanup().await;
}

/// SIGTERM while a refund is at the gateway: the refund is in the drain like a payment, so it
/// finishes inside the grace period, its caller is answered, and the ledger holds one refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_a_refund_in_flight_finish() {
    let env = TestEnv::new().await;
    let mut r1 = CoordinatorProcess::spawn(
        &env,
        "r1",
        &[
            "--gateway-timeout-ms",
            "60000",
            "--shutdown-grace-ms",
            "60000",
        ],
    )
    .await;
    let mut c1 = r1.client(OPERATOR).await;
    let paid = c1
        .process_payment(pay("sd-refund", "k-refund", VISA, true))
        .await
        .expect("paid")
        .into_inner();
    assert_eq!(paid.order.expect("order").state(), pb::OrderState::Paid);

    // The refund's gateway call is answered only HOLD_MS later: SIGTERM finds it in flight.
    env.sim_control
        .set_faults(json!({ "latency_ms": HOLD_MS, "operations": ["refund"] }))
        .await
        .expect("hold the refund");
    let mut reviewer = r1.client(REVIEWER).await;
    let refunding = tokio::spawn(async move {
        reviewer
            .refund_payment(pb::RefundPaymentRequest {
                order_id: "sd-refund".to_owned(),
                amount: Some(pb::Money {
                    amount_minor: 1000,
                    currency: "EUR".to_owned(),
                }),
                reason: "returned".to_owned(),
                idempotency_key: "k-undo".to_owned(),
            })
            .await
    });
    wait_for("the refund is held at the gateway", async || {
        let ledger = env.sim_control.ledger().await.expect("ledger");
        (ledger.calls.refund == 1 && ledger.idempotency.in_flight == 1).then_some(())
    })
    .await;

    r1.terminate();
    let exit = r1.wait_exit().await;
    let log = r1.log_text();
    assert!(exit.success(), "exit status {exit}:\n{log}");

    // Its caller was answered before the replica went away, with the refund done.
    let answered = refunding
        .await
        .expect("refund task")
        .expect("the refunding caller is answered")
        .into_inner();
    let refund = answered.refunds.first().expect("the refund");
    assert_eq!(refund.outcome(), pb::RefundOutcome::Succeeded, "{log}");
    assert!(
        !refund.errors.iter().any(|e| e.step.starts_with("shutdown")),
        "finished inside the grace period, not handed over: {:?}",
        refund.errors
    );
    let ledger = env.sim_control.ledger().await.expect("ledger");
    let refunds: Vec<_> = ledger
        .intents
        .iter()
        .filter(|i| i.metadata.get("order_id").map(String::as_str) == Some("sd-refund"))
        .flat_map(|i| i.refunds.iter())
        .collect();
    assert_eq!(refunds.len(), 1, "one refund in the ledger");
    assert_eq!(ledger.calls.refund, 1, "no second refund call");
    assert!(log.contains("journal closed (0 pending)"), "{log}");
    env.cleanup().await;
}

/// r1 (the real binary, SHUTDOWN_GRACE_MS 500) gets SIGTERM while its `op` call is slowed at the
/// gateway well past the grace period: it exits 0 at once, handing the attempt over; r2's
/// recovery worker takes it over and finishes it, charged exactly once.
async fn an_attempt_past_the_grace_is_handed_over(flow: &str, op: &str) {
    let what = format!("{flow}, SIGTERM during a slow {op}");
    let env = TestEnv::new().await;
    let order_id = format!("sd-grace-{flow}");
    let flags = [
        "--gateway-flow",
        flow,
        "--lease-ttl-ms",
        "1000",
        "--recovery-sweep-ms",
        "200",
        "--gateway-timeout-ms",
        "30000",
    ];
    let mut r1_flags = flags.to_vec();
    r1_flags.extend_from_slice(&["--shutdown-grace-ms", "500"]);
    let mut r1 = CoordinatorProcess::spawn(&env, "r1", &r1_flags).await;
    let r2 = env.replica("r2", &flags).await;
    let mut c1 = r1.client(OPERATOR).await;
    let mut c2 = r2.client(OPERATOR).await;

    env.sim_control
        .set_faults(json!({ "latency_ms": 5000, "operations": [op] }))
        .await
        .expect("slow the gateway");
    c1.process_payment(pay(&order_id, "k1", VISA, false))
        .await
        .expect("the attempt is committed");
    gateway_reached(&env, op, 1).await;

    r1.terminate();
    let exit = r1.wait_exit().await;
    let log = r1.log_text();
    assert!(exit.success(), "{what}: exit status {exit}:\n{log}");
    assert!(
        log.contains("left 1 attempts to recovery"),
        "{what}: the attempt was handed over:\n{log}"
    );
    // Its Redis lease was released on the way out (not left to expire).
    let redis = redis::Client::open(env.redis_url.as_str()).expect("redis url");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let lease_key = format!("{}lease:order:{order_id}", env.redis_prefix);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&lease_key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!exists, "{what}: the lease {lease_key} is released");
    // The recovery's own calls need not be slow.
    env.sim_control.clear_faults().await.expect("clear faults");

    let o = wait_for(&format!("{what}: r2 settles the order"), async || {
        let o = get_order(&mut c2, &order_id).await.expect("order");
        (o.state() != pb::OrderState::AwaitingConfirmation).then_some(o)
    })
    .await;
    let history = steps(&o.attempts[0]);
    assert_eq!(o.state(), pb::OrderState::Paid, "{what}: {history:?}");
    assert_eq!(charges(&env, &order_id).await, 1, "{what}: charged once");
    let handed = history
        .iter()
        .position(|s| {
            s == "shutdown: replica r1 shut down before the outcome was known; left to the \
                  recovery worker"
        })
        .unwrap_or_else(|| panic!("{what}: no hand-over in the history: {history:?}"));
    let taken = history
        .iter()
        .position(|s| s.contains("taken over by the recovery worker of r2"))
        .unwrap_or_else(|| panic!("{what}: r2 never took it over: {history:?}"));
    assert!(handed < taken, "{what}: {history:?}");
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.totals.charges, 1, "{what}: {:?}", ledger.totals);

    r2.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_past_the_grace_hands_a_one_shot_create_to_another_replica() {
    // The recovery replays the create with the same key: charged exactly once.
    an_attempt_past_the_grace_is_handed_over("one_shot", "create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_past_the_grace_hands_a_two_phase_confirm_to_another_replica() {
    // The intent id was persisted: the recovery looks it up and confirms it with the same key.
    an_attempt_past_the_grace_is_handed_over("two_phase", "confirm").await;
}

/// Watch streams open at SIGTERM end with status OK (not a reset, not a hang), so consumers
/// resume from their cursor on another replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_open_at_sigterm_end_cleanly() {
    let env = TestEnv::new().await;
    let mut r1 = CoordinatorProcess::spawn(&env, "r1", &[]).await;
    let mut op = r1.client(OPERATOR).await;
    let mut service = r1.client(SERVICE).await;
    op.process_payment(pay("sd-watched", "k1", VISA, true))
        .await
        .expect("paid");
    let mut order = op
        .watch_order(pb::WatchOrderRequest {
            order_id: "sd-watched".into(),
            after_sequence: 0,
            until_terminal: false,
        })
        .await
        .expect("watch order")
        .into_inner();
    let mut events = service
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("watch events")
        .into_inner();
    // Both streams are live: the first event arrived.
    for stream in [&mut order, &mut events] {
        let first = tokio::time::timeout(GUARD, stream.message())
            .await
            .expect("an event")
            .expect("stream ok")
            .expect("an event");
        assert_eq!(first.order_id, "sd-watched");
    }

    r1.terminate();
    assert_ends_cleanly("WatchOrder", &mut order).await;
    assert_ends_cleanly("WatchEvents", &mut events).await;
    let exit = r1.wait_exit().await;
    assert!(exit.success(), "exit status {exit}:\n{}", r1.log_text());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_keeps_a_journaled_outcome_and_the_restart_drains_it() {
    let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
        .await
        .expect("start PostgreSQL");
    let env = TestEnv::with(SimConfig::default(), pg.url_base()).await;
    // The gateway's slowness must not turn into an unknown outcome: r1 waits for the answer.
    let mut r1 = CoordinatorProcess::spawn(
        &env,
        "r1",
        &[
            "--gateway-flow",
            "one_shot",
            "--gateway-timeout-ms",
            "600000",
        ],
    )
    .await;
    let mut c1 = r1.client(OPERATOR).await;
    env.sim_control
        .set_faults(json!({ "latency_ms": 5000, "operations": ["create"] }))
        .await
        .expect("slow the gateway");
    c1.process_payment(pay("sd-journal", "k-j", VISA, false))
        .await
        .expect("the attempt is committed");
    gateway_reached(&env, "create", 1).await;
    // r1 is frozen while PostgreSQL goes away, so the answer it reads next finds no database
    // however long stopping PostgreSQL takes.
    r1.pause();
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .expect("stop PostgreSQL");
    r1.resume();
    wait_for("the gateway charges sd-journal", async || {
        (charges(&env, "sd-journal").await == 1).then_some(())
    })
    .await;
    wait_for("r1 journals the outcome", async || {
        r1.log_text()
            .contains("PostgreSQL cannot take the outcome: journaled locally")
            .then_some(())
    })
    .await;

    r1.terminate();
    let exit = r1.wait_exit().await;
    let log = r1.log_text();
    assert!(exit.success(), "exit status {exit}:\n{log}");
    assert!(log.contains("journal closed (1 pending)"), "{log}");
    // r1 is gone, so its journal file is free: the outcome is on disk, waiting.
    let dir = env.journal_dir("r1");
    let pending = tokio::task::spawn_blocking(move || {
        let journal = Journal::open(&dir).expect("open r1's journal");
        let pending = journal.pending().expect("pending");
        journal.close().expect("close");
        pending
    })
    .await
    .expect("join");
    assert_eq!(pending.len(), 1, "{pending:?}");
    let entry = pending[0].as_ref().expect("the journaled record decodes");
    assert_eq!(
        (entry.fence.order_id.as_str(), entry.fence.attempt),
        ("sd-journal", 1)
    );
    assert!(
        matches!(entry.finish, Finish::Succeeded { .. }),
        "{entry:?}"
    );

    // PostgreSQL is back and r1 starts again with the same JOURNAL_DIR: the drainer writes the
    // outcome (no recovery worker had to find it), once.
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .expect("start PostgreSQL again");
    env.sim_control.clear_faults().await.expect("clear faults");
    r1.restart().await;
    let mut c1 = r1.client(OPERATOR).await;
    let order = wait_for("the journaled outcome is written", async || {
        let o = get_order(&mut c1, "sd-journal").await.expect("order");
        (o.state() != pb::OrderState::AwaitingConfirmation).then_some(o)
    })
    .await;
    let history = steps(&order.attempts[0]);
    assert_eq!(order.state(), pb::OrderState::Paid, "{history:?}");
    assert_eq!(order.attempts.len(), 1, "{order:?}");
    assert_eq!(order.attempts[0].outcome(), pb::AttemptOutcome::Succeeded);
    assert!(
        !history.iter().any(|s| s.starts_with("recovery")),
        "drained, not recovered: {history:?}"
    );
    assert_eq!(charges(&env, "sd-journal").await, 1, "charged once");
    assert_eq!(
        env.sim_control.ledger().await.expect("ledger").calls.create,
        1
    );

    r1.terminate();
    let exit = r1.wait_exit().await;
    let log = r1.log_text();
    assert!(exit.success(), "exit status {exit}:\n{log}");
    assert!(
        log.contains("journal closed (0 pending)"),
        "the restart drained it:\n{log}"
    );
    env.cleanup().await;
    drop(pg);
}
