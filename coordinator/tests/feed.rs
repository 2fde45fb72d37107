//! The event feed against a real PostgreSQL: each test in its own fresh database, dropped at the end.
//!
//! `DATABASE_URL_BASE` (default `postgres://root@127.0.0.1:5432`) names the server. Events are
//! written the way the store writes them (the order's row locked and its `last_sequence` bumped,
//! the event inserted, in one transaction), with plain connections, so that the tests can hold a
//! transaction open at will.

mod common;
use common::{TestDb, base_url};

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordinator::domain::{EventKind, OrderState};
use coordinator::feed::{
    CHANNEL, FOLLOW_LOCK, Feed, FeedConfig, FeedEvent, LISTENER_APPLICATION_NAME,
    SEQUENCER_APPLICATION_NAME, STAMP_LOCK,
};
use coordinator::store::{Begin, Fence, Fenced, Finish, LineItemRecord, NewAttempt, StoreError};
use gateway_client::Flow;
use tokio_postgres::{GenericClient, NoTls};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Only fails a hung test: every wait is for the awaited event itself.
const GUARD: Duration = Duration::from_secs(30);

/// One coordinator replica's feed; stopped when dropped.
struct Replica {
    feed: Feed,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Replica {
    async fn start(db: &TestDb) -> Replica {
        Replica::start_with(db, FeedConfig::default()).await
    }

    async fn start_with(db: &TestDb, config: FeedConfig) -> Replica {
        let store = db.store().await;
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let feed = Feed::start_with(&db.url(), store, &tracker, shutdown.clone(), config)
            .await
            .expect("feed");
        Replica {
            feed,
            tracker,
            shutdown,
        }
    }

    /// Stops the sequencer and the listener, and waits until their connections are closed.
    async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(GUARD, self.tracker.wait())
            .await
            .expect("feed tasks stop");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<FeedEvent, StoreError>> + Send>>;

fn all_after(feed: &Feed, after: i64) -> Events {
    Box::pin(feed.events_after(after))
}

fn order_after(feed: &Feed, order_id: &str, after: i64) -> Events {
    Box::pin(feed.order_events_after(order_id.to_owned(), after))
}

async fn next(stream: &mut Events) -> FeedEvent {
    tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("an event within the guard time")
        .expect("the stream goes on")
        .expect("no store error")
}

async fn take(stream: &mut Events, n: usize) -> Vec<FeedEvent> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(next(stream).await);
    }
    events
}

fn positions(events: &[FeedEvent]) -> Vec<i64> {
    events.iter().map(|e| e.global_sequence).collect()
}

fn dense(from: i64, to: i64) -> Vec<i64> {
    (from..=to).collect()
}

async fn create_orders(client: &impl GenericClient, order_ids: &[&str]) {
    for order_id in order_ids {
        client
            .execute(
                "INSERT INTO orders (order_id, amount_minor, currency, customer_id, state) \
                 VALUES ($1, 1000, 'EUR', 'cust-1', 'PENDING')",
                &[order_id],
            )
            .await
            .expect("create order");
    }
}

/// Appends one event to the order as the store does: lock the order and take its next sequence,
/// insert the event. Returns `(id, sequence)`.
async fn append(client: &impl GenericClient, order_id: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "UPDATE orders SET last_sequence = last_sequence + 1, updated_at = now() \
             WHERE order_id = $1 RETURNING last_sequence",
            &[&order_id],
        )
        .await
        .expect("bump the order's sequence");
    let sequence: i64 = row.get(0);
    let row = client
        .query_one(
            "INSERT INTO events (order_id, sequence, kind, state, attempt_number, actor, detail) \
             VALUES ($1, $2, 'ATTEMPT_STARTED', 'AWAITING_CONFIRMATION', 1, 'tester', '') \
             RETURNING id",
            &[&order_id, &sequence],
        )
        .await
        .expect("insert the event");
    (row.get(0), sequence)
}

/// Appends `count` events to the order in one statement pair (for volume).
async fn append_many(client: &impl GenericClient, order_id: &str, count: i64) {
    let row = client
        .query_one(
            "UPDATE orders SET last_sequence = last_sequence + $2 WHERE order_id = $1 \
             RETURNING last_sequence - $2",
            &[&order_id, &count],
        )
        .await
        .expect("bump");
    let first: i64 = row.get(0);
    client
        .execute(
            "INSERT INTO events (order_id, sequence, kind, state, actor) \
             SELECT $1, s, 'ATTEMPT_STARTED', 'AWAITING_CONFIRMATION', 'bulk' \
             FROM generate_series($2::bigint + 1, $2::bigint + $3) AS s ORDER BY s",
            &[&order_id, &first, &count],
        )
        .await
        .expect("insert events");
}

/// Commits one event in its own transaction.
async fn commit_one(client: &mut tokio_postgres::Client, order_id: &str) -> (i64, i64) {
    let tx = client.transaction().await.expect("begin");
    let appended = append(&tx, order_id).await;
    tx.commit().await.expect("commit");
    appended
}

/// Each order's sequences appear in increasing order, each once.
fn assert_per_order_order(events: &[FeedEvent]) {
    let mut last: HashMap<&str, i64> = HashMap::new();
    for event in events {
        let previous = last.insert(&event.order_id, event.sequence).unwrap_or(0);
        assert_eq!(
            event.sequence,
            previous + 1,
            "order {} out of order at position {}",
            event.order_id,
            event.global_sequence
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum Interleaving {
    /// A inserts its event, B inserts and commits, A commits.
    EventFirst,
    /// A writes another row, then its event; B inserts and commits; A commits.
    OtherRowFirst,
    /// A writes another row; B inserts and commits; A inserts its event (a larger id than B's); A
    /// commits.
    OtherRowThenEventAfterB,
}

async fn late_commit(interleaving: Interleaving) {
    let db = TestDb::new("feed");
    let replica = Replica::start(&db).await;
    let feed = &replica.feed;
    let mut a = db.sql().await;
    let mut b = db.sql().await;
    let mut c = db.sql().await;
    create_orders(&c, &["ord-a", "ord-b", "ord-c", "ord-x"]).await;

    // Position 1, so that the resumed stream has a real cursor.
    let mut live = all_after(feed, 0);
    let (_, _) = commit_one(&mut c, "ord-c").await;
    feed.nudge();
    let first = next(&mut live).await;
    assert_eq!(
        (first.global_sequence, first.order_id.as_str()),
        (1, "ord-c")
    );

    // A: open, holding its writes.
    let tx_a = a.transaction().await.expect("begin A");
    let mut a_event = None;
    match interleaving {
        Interleaving::EventFirst => a_event = Some(append(&tx_a, "ord-a").await),
        Interleaving::OtherRowFirst => {
            tx_a.execute(
                "UPDATE orders SET updated_at = now() WHERE order_id = 'ord-x'",
                &[],
            )
            .await
            .expect("A's other row");
            a_event = Some(append(&tx_a, "ord-a").await);
        }
        Interleaving::OtherRowThenEventAfterB => {
            tx_a.execute(
                "UPDATE orders SET updated_at = now() WHERE order_id = 'ord-x'",
                &[],
            )
            .await
            .expect("A's other row");
        }
    }

    // B commits first.
    let (b_id, _) = commit_one(&mut b, "ord-b").await;
    feed.nudge();
    let (a_id, _) = match a_event {
        Some(appended) => appended,
        None => append(&tx_a, "ord-a").await,
    };
    match interleaving {
        Interleaving::OtherRowThenEventAfterB => assert!(a_id > b_id),
        _ => assert!(a_id < b_id, "A took its insertion id first"),
    }

    // B is stamped and delivered while A is open: a live watcher and a watcher resumed from 1.
    let got_b = next(&mut live).await;
    assert_eq!(
        (got_b.global_sequence, got_b.order_id.as_str()),
        (2, "ord-b")
    );
    let mut resumed = all_after(feed, 1);
    let resumed_b = next(&mut resumed).await;
    assert_eq!(resumed_b, got_b);
    // The sequencer passed over A's event: from inside A it is still unstamped; nothing committed
    // is waiting (A's row is invisible to everyone else).
    let own: Option<i64> = tx_a
        .query_one("SELECT global_sequence FROM events WHERE id = $1", &[&a_id])
        .await
        .expect("A reads its event")
        .get(0);
    assert_eq!(own, None);
    let backlog = feed.backlog().await.expect("backlog");
    assert_eq!(backlog.unstamped, 0);

    // A commits late: its event takes the next position, and both watchers get it.
    tx_a.commit().await.expect("commit A");
    feed.nudge();
    let got_a = next(&mut live).await;
    assert_eq!(
        (got_a.global_sequence, got_a.order_id.as_str()),
        (3, "ord-a")
    );
    assert_eq!(next(&mut resumed).await, got_a);

    // Nothing in between, nothing twice: the next thing both see is a sentinel committed now.
    commit_one(&mut c, "ord-c").await;
    feed.nudge();
    let sentinel = next(&mut live).await;
    assert_eq!(
        (sentinel.global_sequence, sentinel.order_id.as_str()),
        (4, "ord-c")
    );
    assert_eq!(next(&mut resumed).await, sentinel);

    // A watcher from 0 now replays the same history: dense, once each.
    let mut replay = all_after(feed, 0);
    let history = take(&mut replay, 4).await;
    assert_eq!(positions(&history), dense(1, 4));
    assert_eq!(
        history
            .iter()
            .map(|e| e.order_id.as_str())
            .collect::<Vec<_>>(),
        ["ord-c", "ord-b", "ord-a", "ord-c"]
    );
    assert_eq!(history[1], got_b);
    assert_eq!(history[2], got_a);
}

#[tokio::test]
async fn a_late_commit_is_never_skipped() {
    late_commit(Interleaving::EventFirst).await;
}

#[tokio::test]
async fn a_late_commit_that_wrote_another_row_first_is_never_skipped() {
    late_commit(Interleaving::OtherRowFirst).await;
}

#[tokio::test]
async fn a_late_commit_whose_event_came_after_the_other_is_never_skipped() {
    late_commit(Interleaving::OtherRowThenEventAfterB).await;
}

#[tokio::test]
async fn many_concurrent_writers_give_dense_positions_in_per_order_order() {
    const WRITERS: usize = 16;
    const TRANSACTIONS: usize = 25;
    const PER_TRANSACTION: usize = 2;
    const ORDERS: usize = 8;
    const TOTAL: usize = WRITERS * TRANSACTIONS * PER_TRANSACTION;

    let db = TestDb::new("feed");
    let replica = Replica::start(&db).await;
    let feed = replica.feed.clone();
    let orders: Vec<String> = (0..ORDERS).map(|i| format!("ord-{i}")).collect();
    create_orders(
        &db.sql().await,
        &orders.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let mut live = all_after(&feed, 0);
    // Commit instants by (order, sequence), to measure commit-to-delivery latency.
    let committed: Arc<Mutex<HashMap<(String, i64), Instant>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let order_id = orders[w % ORDERS].clone();
        let mut client = db.sql().await;
        let feed = feed.clone();
        let committed = Arc::clone(&committed);
        writers.push(tokio::spawn(async move {
            for _ in 0..TRANSACTIONS {
                let tx = client.transaction().await.expect("begin");
                let mut sequences = Vec::new();
                for _ in 0..PER_TRANSACTION {
                    sequences.push(append(&tx, &order_id).await.1);
                }
                tx.commit().await.expect("commit");
                let now = Instant::now();
                feed.nudge();
                let mut committed = committed.lock().expect("lock");
                for sequence in sequences {
                    committed.insert((order_id.clone(), sequence), now);
                }
            }
        }));
    }

    let mut delivered = Vec::with_capacity(TOTAL);
    let mut latencies = Vec::with_capacity(TOTAL);
    for _ in 0..TOTAL {
        let event = next(&mut live).await;
        let at = Instant::now();
        if let Some(commit) = committed
            .lock()
            .expect("lock")
            .get(&(event.order_id.clone(), event.sequence))
        {
            latencies.push(at.duration_since(*commit));
        }
        delivered.push(event);
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(positions(&delivered), dense(1, TOTAL as i64));
    assert_per_order_order(&delivered);
    let per_order = delivered.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.order_id.clone()).or_insert(0) += 1;
        m
    });
    assert!(per_order.values().all(|n| *n == TOTAL / ORDERS));

    // A watcher started afterwards replays the same, and one resumed from the middle gets exactly
    // the tail.
    let mut replay = all_after(&feed, 0);
    assert_eq!(take(&mut replay, TOTAL).await, delivered);
    let middle = TOTAL as i64 / 2;
    let mut tail = all_after(&feed, middle);
    let tail_events = take(&mut tail, TOTAL - middle as usize).await;
    assert_eq!(tail_events, delivered[middle as usize..]);
    // ... and nothing more: the next thing is a new event.
    commit_one(&mut db.sql().await, "ord-0").await;
    feed.nudge();
    assert_eq!(next(&mut tail).await.global_sequence, TOTAL as i64 + 1);
    assert_eq!(next(&mut replay).await.global_sequence, TOTAL as i64 + 1);

    latencies.sort();
    if !latencies.is_empty() {
        println!(
            "commit-to-delivery under {WRITERS} concurrent writers ({} events): median {:?}, p99 {:?}, max {:?}",
            latencies.len(),
            latencies[latencies.len() / 2],
            latencies[latencies.len() * 99 / 100],
            latencies[latencies.len() - 1]
        );
    }
}

#[tokio::test]
async fn delivery_latency_with_and_without_a_nudge() {
    let db = TestDb::new("feed");
    // Un-nudged commits wait for the safety poll (1 s by default): a short one keeps this quick.
    let replica = Replica::start_with(
        &db,
        FeedConfig {
            sequencer_idle: Duration::from_millis(20),
            ..FeedConfig::default()
        },
    )
    .await;
    let feed = &replica.feed;
    let mut client = db.sql().await;
    create_orders(&client, &["ord-l"]).await;
    let mut live = all_after(feed, 0);
    let mut position = 0;
    for nudged in [true, false] {
        let mut latencies = Vec::new();
        for _ in 0..50 {
            commit_one(&mut client, "ord-l").await;
            let committed = Instant::now();
            if nudged {
                feed.nudge();
            }
            let event = next(&mut live).await;
            latencies.push(committed.elapsed());
            position += 1;
            assert_eq!(event.global_sequence, position);
        }
        latencies.sort();
        println!(
            "commit-to-delivery, one writer, {}: min {:?}, median {:?}, max {:?}",
            if nudged {
                "nudged (a commit on this replica)"
            } else {
                "not nudged (a writer that does not nudge: the leader's safety poll)"
            },
            latencies[0],
            latencies[latencies.len() / 2],
            latencies[latencies.len() - 1]
        );
    }
    let status = feed.status();
    println!("feed status: {status:?}");
    assert_eq!(status.head, 100);
    assert!(status.publish_lag.is_some());
}

#[tokio::test]
async fn a_long_open_transaction_delays_only_its_own_event() {
    let db = TestDb::new("feed");
    let replica = Replica::start(&db).await;
    let feed = &replica.feed;
    let mut holder = db.sql().await;
    let mut writer = db.sql().await;
    create_orders(&writer, &["ord-held", "ord-busy"]).await;
    let mut live = all_after(feed, 0);

    let held_since = Instant::now();
    let tx = holder.transaction().await.expect("begin");
    append(&tx, "ord-held").await;
    for _ in 0..100 {
        commit_one(&mut writer, "ord-busy").await;
        feed.nudge();
    }
    // The hundred later commits flow past the open transaction.
    let flowed = take(&mut live, 100).await;
    assert_eq!(positions(&flowed), dense(1, 100));
    assert!(flowed.iter().all(|e| e.order_id == "ord-busy"));
    assert_per_order_order(&flowed);

    tx.commit().await.expect("commit the held transaction");
    let held_for = held_since.elapsed();
    feed.nudge();
    let late = next(&mut live).await;
    assert_eq!(
        (late.global_sequence, late.order_id.as_str()),
        (101, "ord-held")
    );
    let status = feed.status();
    println!(
        "held a transaction open {held_for:?}; its event's publish lag: {:?}",
        status.publish_lag
    );
}

#[tokio::test]
async fn a_consumer_that_lags_behind_the_fan_out_catches_up_from_the_table() {
    const BURST: i64 = 5_000;
    let db = TestDb::new("feed");
    let replica = Replica::start(&db).await;
    let feed = &replica.feed;
    assert!(BURST as usize > FeedConfig::default().channel_capacity);
    let mut client = db.sql().await;
    create_orders(&client, &["ord-slow"]).await;

    let mut slow = all_after(feed, 0);
    commit_one(&mut client, "ord-slow").await;
    feed.nudge();
    assert_eq!(next(&mut slow).await.global_sequence, 1);
    assert_eq!(feed.status().watchers, 1);

    // Far more than the channel holds is published while the slow consumer reads nothing.
    for _ in 0..(BURST / 500) {
        let tx = client.transaction().await.expect("begin");
        append_many(&tx, "ord-slow", 500).await;
        tx.commit().await.expect("commit");
        feed.nudge();
    }
    tokio::time::timeout(GUARD, feed.wait_for_head(BURST + 1))
        .await
        .expect("everything published");

    let caught_up = take(&mut slow, BURST as usize).await;
    assert_eq!(positions(&caught_up), dense(2, BURST + 1));
    // One order: its sequences are the positions.
    assert!(caught_up.iter().all(|e| e.sequence == e.global_sequence));
    // And then live again.
    commit_one(&mut client, "ord-slow").await;
    feed.nudge();
    assert_eq!(next(&mut slow).await.global_sequence, BURST + 2);

    // A client going away leaves nothing behind.
    drop(slow);
    assert_eq!(feed.status().watchers, 0);
}

#[tokio::test]
async fn a_lost_listen_connection_is_reestablished_and_nothing_is_lost() {
    let db = TestDb::new("feed");
    let replica = Replica::start(&db).await;
    let feed = &replica.feed;
    let mut client = db.sql().await;
    create_orders(&client, &["ord-k"]).await;
    let mut live = all_after(feed, 0);
    commit_one(&mut client, "ord-k").await;
    feed.nudge();
    assert_eq!(next(&mut live).await.global_sequence, 1);
    assert_eq!(feed.status().listener_sessions, 1);

    let killed: bool = client
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&LISTENER_APPLICATION_NAME],
        )
        .await
        .expect("terminate the listener")
        .get(0);
    assert!(killed);
    // Committed while the listener is down or reconnecting.
    for _ in 0..20 {
        commit_one(&mut client, "ord-k").await;
        feed.nudge();
    }
    let after_kill = take(&mut live, 20).await;
    assert_eq!(positions(&after_kill), dense(2, 21));
    assert_eq!(feed.status().listener_sessions, 2);

    // The sequencer's connection too: it takes the lock again and stamping resumes.
    let killed: bool = client
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&SEQUENCER_APPLICATION_NAME],
        )
        .await
        .expect("terminate the sequencer")
        .get(0);
    assert!(killed);
    for _ in 0..20 {
        commit_one(&mut client, "ord-k").await;
        feed.nudge();
    }
    let after_second_kill = take(&mut live, 20).await;
    assert_eq!(positions(&after_second_kill), dense(22, 41));
    assert!(
        after_kill
            .iter()
            .chain(&after_second_kill)
            .all(|e| e.sequence == e.global_sequence)
    );
    assert!(feed.status().sequencer_leader);
}

#[tokio::test]
async fn two_replicas_one_sequencer_both_deliver_everything() {
    let db = TestDb::new("feed");
    let first = Replica::start(&db).await;
    let second = Replica::start(&db).await;
    let orders = ["ord-1", "ord-2", "ord-3", "ord-4"];
    let mut client = db.sql().await;
    create_orders(&client, &orders).await;
    let mut on_first = all_after(&first.feed, 0);
    let mut on_second = all_after(&second.feed, 0);

    for i in 0..200 {
        commit_one(&mut client, orders[i % orders.len()]).await;
        // Commits "land" on either replica.
        if i % 2 == 0 {
            first.feed.nudge();
        } else {
            second.feed.nudge();
        }
    }
    let seen_first = take(&mut on_first, 200).await;
    let seen_second = take(&mut on_second, 200).await;
    assert_eq!(positions(&seen_first), dense(1, 200));
    assert_eq!(seen_first, seen_second);
    assert_per_order_order(&seen_first);
    let leaders = [&first, &second]
        .iter()
        .filter(|r| r.feed.status().sequencer_leader)
        .count();
    assert_eq!(leaders, 1, "exactly one sequencer leads");

    // The leader goes away: the other takes over, and its watcher misses nothing.
    let (leader, survivor, mut survivor_stream) = if first.feed.status().sequencer_leader {
        (first, second, on_second)
    } else {
        (second, first, on_first)
    };
    leader.stop().await;
    drop(leader);
    for i in 0..50 {
        commit_one(&mut client, orders[i % orders.len()]).await;
        survivor.feed.nudge();
    }
    let after_failover = take(&mut survivor_stream, 50).await;
    assert_eq!(positions(&after_failover), dense(201, 250));
    assert!(survivor.feed.status().sequencer_leader);
}

/// Waits until `ready` holds (a state the feed's tasks reach on their own), within the guard.
async fn until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !ready().await {
        assert!(Instant::now() < deadline, "not within the guard: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether every committed event has its position.
async fn stamped(feed: &Feed) -> bool {
    feed.backlog().await.expect("backlog").unstamped == 0
}

/// No poll in the path: with a safety poll of an hour, events committed on either replica (the
/// leader or not) reach watchers on both, woken by the nudge of the replica that committed.
#[tokio::test]
async fn a_commit_on_a_replica_that_does_not_lead_reaches_every_replica_without_polling() {
    let db = TestDb::new("feed");
    let config = FeedConfig {
        sequencer_idle: Duration::from_secs(3600),
        listener_tick: Duration::from_secs(3600),
        ..FeedConfig::default()
    };
    let first = Replica::start_with(&db, config.clone()).await;
    let second = Replica::start_with(&db, config).await;
    let mut client = db.sql().await;
    create_orders(&client, &["ord-a", "ord-b"]).await;
    let mut on_first = all_after(&first.feed, 0);
    let mut on_second = all_after(&second.feed, 0);
    let mut order_on_first = order_after(&first.feed, "ord-b", 0);

    for round in 0..20 {
        // Committed "on" one replica, which alone is nudged.
        let (committer, order) = if round % 2 == 0 {
            (&first, "ord-a")
        } else {
            (&second, "ord-b")
        };
        commit_one(&mut client, order).await;
        committer.feed.nudge();
        let expected = round + 1;
        assert_eq!(next(&mut on_first).await.global_sequence, expected);
        assert_eq!(next(&mut on_second).await.global_sequence, expected);
        if order == "ord-b" {
            let event = next(&mut order_on_first).await;
            assert_eq!(
                (event.global_sequence, event.sequence),
                (expected, expected / 2)
            );
        }
    }
    let (leader, other) = if first.feed.status().sequencer_leader {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert!(leader.feed.status().sequencer_leader);
    assert!(!other.feed.status().sequencer_leader, "exactly one leads");
    // The replica that does not lead stamped its own commits (no poll would have).
    assert!(other.feed.status().stamped_batches >= 1);
    assert!(leader.feed.status().stamped_batches >= 1);
}

/// A replica with no watcher neither listens nor reads; the first watcher wakes its listener, and
/// watchers starting at any cursor then get everything after it, once, in order, then live events.
#[tokio::test]
async fn a_replica_with_no_watcher_reads_nothing_and_its_first_watcher_misses_nothing() {
    let db = TestDb::new("feed");
    let replica = Replica::start_with(
        &db,
        FeedConfig {
            listener_linger: Duration::ZERO,
            listener_tick: Duration::from_millis(50),
            ..FeedConfig::default()
        },
    )
    .await;
    let feed = &replica.feed;
    let mut client = db.sql().await;
    create_orders(&client, &["ord-q"]).await;
    until("the listener connected", async || {
        feed.status().listener_connected
    })
    .await;

    for _ in 0..10 {
        commit_one(&mut client, "ord-q").await;
        feed.nudge();
    }
    until("stamped", async || stamped(feed).await).await;
    let status = feed.status();
    assert!(!status.listener_following, "nobody watches: {status:?}");
    assert_eq!(status.head, 0, "nothing was read for nobody");

    let mut replay = all_after(feed, 0);
    assert_eq!(positions(&take(&mut replay, 10).await), dense(1, 10));
    assert!(feed.status().listener_following);
    commit_one(&mut client, "ord-q").await;
    feed.nudge();
    assert_eq!(next(&mut replay).await.global_sequence, 11);

    // The last watcher goes: the listener stops following (no linger here).
    drop(replay);
    until("the listener stopped following", async || {
        !feed.status().listener_following
    })
    .await;
    for _ in 0..5 {
        commit_one(&mut client, "ord-q").await;
        feed.nudge();
    }
    until("stamped", async || stamped(feed).await).await;
    assert_eq!(feed.status().head, 11, "nothing read while nobody watches");

    // Watchers arrive at once, at the old head, at the current one, and on the order.
    let mut from_old_head = all_after(feed, 11);
    let mut from_head = all_after(feed, 16);
    let mut order = order_after(feed, "ord-q", 14);
    assert_eq!(positions(&take(&mut from_old_head, 5).await), dense(12, 16));
    let replayed: Vec<i64> = take(&mut order, 2)
        .await
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(replayed, vec![15, 16]);
    commit_one(&mut client, "ord-q").await;
    feed.nudge();
    assert_eq!(next(&mut from_old_head).await.global_sequence, 17);
    assert_eq!(next(&mut from_head).await.global_sequence, 17);
    assert_eq!(next(&mut order).await.sequence, 17);
    tokio::time::timeout(GUARD, feed.wait_for_head(17))
        .await
        .expect("published");
}

fn request(order_id: &str, key: &str, method: &str) -> NewAttempt {
    NewAttempt {
        order_id: order_id.to_owned(),
        amount_minor: 12_500,
        currency: "EUR".to_owned(),
        customer_id: "cust-1".to_owned(),
        items: vec![LineItemRecord {
            product_id: "room-night".to_owned(),
            quantity: 1,
            unit_amount_minor: 12_500,
        }],
        payment_method: method.to_owned(),
        operator_id: "alice".to_owned(),
        replica_id: "replica-a".to_owned(),
        request_key: key.to_owned(),
        fingerprint: format!("fp-{key}"),
        flow: Flow::TwoPhase,
    }
}

#[tokio::test]
async fn the_stores_own_events_reach_order_and_global_watchers() {
    let db = TestDb::new("feed");
    let replica = Replica::start(&db).await;
    let feed = &replica.feed;
    let store = db.store().await;
    let mut everything = all_after(feed, 0);
    let mut order_live = order_after(feed, "ord-s", 0);

    // Another order's events interleave; the order's watcher never sees them.
    for (order_id, key) in [("ord-s", "k1"), ("ord-other", "k2")] {
        let Begin::Started { order, attempt } = store
            .begin_attempt(&request(order_id, key, "pm_card_visa"))
            .await
            .expect("begin")
        else {
            panic!("expected Started");
        };
        feed.nudge();
        let fence = Fence::of(&order, &attempt);
        let finished = store
            .finish_attempt(
                &fence,
                &Finish::Declined {
                    intent_id: None,
                    decline_code: "generic_decline".to_owned(),
                    message: "declined".to_owned(),
                },
                "alice",
            )
            .await
            .expect("finish");
        assert_eq!(finished, Fenced::Applied);
        feed.nudge();
    }

    let all = take(&mut everything, 6).await;
    assert_eq!(positions(&all), dense(1, 6));
    assert_per_order_order(&all);
    let mine = take(&mut order_live, 3).await;
    assert_eq!(
        mine.iter()
            .map(|e| (e.sequence, e.kind, e.state))
            .collect::<Vec<_>>(),
        [
            (1, EventKind::OrderCreated, OrderState::Pending),
            (
                2,
                EventKind::AttemptStarted,
                OrderState::AwaitingConfirmation
            ),
            (3, EventKind::AttemptDeclined, OrderState::Pending),
        ]
    );
    assert!(mine.iter().all(|e| e.order_id == "ord-s"));
    assert_eq!(mine[0].amount_minor, Some(12_500));

    // Resumed from the order's sequence 1: the replay, then a live event, then nothing of others.
    let mut resumed = order_after(feed, "ord-s", 1);
    assert_eq!(
        take(&mut resumed, 2)
            .await
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    let Begin::Started { .. } = store
        .begin_attempt(&request("ord-other", "k3", "pm_card_visa"))
        .await
        .expect("begin other")
    else {
        panic!("expected Started");
    };
    let Begin::Started { .. } = store
        .begin_attempt(&request("ord-s", "k4", "pm_card_visa"))
        .await
        .expect("begin again")
    else {
        panic!("expected Started");
    };
    feed.nudge();
    let live = next(&mut resumed).await;
    assert_eq!(
        (live.order_id.as_str(), live.sequence, live.kind),
        ("ord-s", 4, EventKind::AttemptStarted)
    );
    assert_eq!(next(&mut order_live).await, live);
    assert_eq!(live.global_sequence, 8);

    // Order watchers have a channel per order, gone with its last watcher.
    assert_eq!(feed.status().watched_orders, 1);
    assert_eq!(feed.status().watchers, 3);
    drop(order_live);
    assert_eq!(
        feed.status().watched_orders,
        1,
        "one watcher of ord-s remains"
    );
    drop(resumed);
    assert_eq!(feed.status().watched_orders, 0);
    drop(everything);
    assert_eq!(feed.status().watchers, 0);
}

#[tokio::test]
async fn the_pool_connections_carry_the_session_limits() {
    let db = TestDb::new("feed");
    let replica = Replica::start(&db).await;
    let client = db.sql().await;
    // The feed's own connections are up once it delivered something.
    create_orders(&client, &["ord-t"]).await;
    let mut live = all_after(&replica.feed, 0);
    append(&client, "ord-t").await;
    replica.feed.nudge();
    next(&mut live).await;
    let rows = client
        .query(
            "SELECT application_name FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'coordinator%' \
             ORDER BY 1",
            &[],
        )
        .await
        .expect("pg_stat_activity");
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        names.contains(&LISTENER_APPLICATION_NAME.to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&SEQUENCER_APPLICATION_NAME.to_owned()),
        "{names:?}"
    );
    // The settings as a pool connection sees them.
    let config = coordinator::store::session_config(&db.url()).expect("config");
    let (probe, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(connection);
    let statement: String = probe
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show")
        .get(0);
    let idle: String = probe
        .query_one("SHOW idle_in_transaction_session_timeout", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!((statement.as_str(), idle.as_str()), ("10s", "15s"));
}

#[tokio::test]
async fn events_written_before_the_feed_migration_get_dense_positions_in_insertion_order() {
    let db = TestDb::new("feed");
    // A database at schema version 1, as an older coordinator left it.
    {
        let (admin, connection) =
            tokio_postgres::connect(&format!("{}/postgres", base_url()), NoTls)
                .await
                .expect("admin");
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE DATABASE \"{}\"", db.name))
            .await
            .expect("create database");
    }
    let mut client = db.sql().await;
    client
        .batch_execute(coordinator::store::MIGRATIONS[0].sql)
        .await
        .expect("migration 1");
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO schema_migrations (version, name) VALUES (1, 'orders_attempts_events')",
        )
        .await
        .expect("schema_migrations");
    create_orders(&client, &["ord-1", "ord-2"]).await;
    // The old schema: the position is taken at insert (and a rolled-back insert leaves a hole).
    let old_insert = "WITH o AS (UPDATE orders SET last_sequence = last_sequence + 1 \
                      WHERE order_id = $1 RETURNING last_sequence) \
                      INSERT INTO events (order_id, sequence, kind, state, actor) \
                      SELECT $1, o.last_sequence, 'ATTEMPT_STARTED', 'AWAITING_CONFIRMATION', 'old' \
                      FROM o";
    client
        .execute(old_insert, &[&"ord-1"])
        .await
        .expect("old insert");
    {
        let tx = client.transaction().await.expect("begin");
        tx.execute(old_insert, &[&"ord-2"])
            .await
            .expect("old insert");
        tx.rollback().await.expect("rollback");
    }
    client
        .execute(old_insert, &[&"ord-2"])
        .await
        .expect("old insert");
    client
        .execute(old_insert, &[&"ord-1"])
        .await
        .expect("old insert");
    let old_numbers: Vec<i64> = client
        .query("SELECT global_sequence FROM events ORDER BY 1", &[])
        .await
        .expect("old numbers")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(old_numbers, [1, 3, 4]);

    let replica = Replica::start(&db).await;
    let mut replay = all_after(&replica.feed, 0);
    let history = take(&mut replay, 3).await;
    assert_eq!(positions(&history), dense(1, 3));
    assert_eq!(
        history
            .iter()
            .map(|e| (e.order_id.as_str(), e.sequence))
            .collect::<Vec<_>>(),
        [("ord-1", 1), ("ord-2", 1), ("ord-1", 2)]
    );
    // New events continue the numbering.
    commit_one(&mut client, "ord-2").await;
    replica.feed.nudge();
    assert_eq!(next(&mut replay).await.global_sequence, 4);
}

/// A plain session that `LISTEN`s on the feed's channel without taking `FOLLOW_LOCK`: it sees the
/// NOTIFYs the stamps send, as every listening backend of the database is woken by them.
struct RawListener {
    client: tokio_postgres::Client,
    payloads: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl RawListener {
    async fn start(db: &TestDb) -> RawListener {
        let (client, mut connection) = tokio_postgres::connect(&db.url(), NoTls)
            .await
            .expect("connect the raw listener");
        let (sender, payloads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    let _ = sender.send(n.payload().to_owned());
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .expect("listen");
        RawListener { client, payloads }
    }

    async fn next(&mut self) -> String {
        tokio::time::timeout(GUARD, self.payloads.recv())
            .await
            .expect("a notification within the guard time")
            .expect("the raw listener's connection is up")
    }

    /// The payloads of every NOTIFY committed before now: notifications arrive in commit order, so
    /// a marker sent now comes after all of them (no waiting for "nothing more").
    async fn received_so_far(&mut self) -> Vec<String> {
        self.client
            .execute("SELECT pg_notify($1, 'marker')", &[&CHANNEL])
            .await
            .expect("notify the marker");
        let mut payloads = Vec::new();
        loop {
            match self.next().await.as_str() {
                "marker" => return payloads,
                other => payloads.push(other.to_owned()),
            }
        }
    }
}

/// A watcher polled by its own task, so that it asks the listener to follow while the test does
/// something else; dropped with the handle.
struct Driven {
    events: tokio::sync::mpsc::UnboundedReceiver<FeedEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Driven {
    fn new(mut stream: Events) -> Driven {
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if sender.send(event.expect("no store error")).is_err() {
                    return;
                }
            }
        });
        Driven { events, task }
    }

    async fn next(&mut self) -> FeedEvent {
        tokio::time::timeout(GUARD, self.events.recv())
            .await
            .expect("an event within the guard time")
            .expect("the stream goes on")
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Commits one event and waits until it is stamped: one batch each.
async fn commit_and_stamp(client: &mut tokio_postgres::Client, feed: &Feed, order_id: &str) {
    commit_one(client, order_id).await;
    feed.nudge();
    until("stamped", async || stamped(feed).await).await;
}

/// Every NOTIFY wakes every listening backend of the database (the replicas' control connections
/// too), and each wake-up is a commit: stamps notify only while some listener follows the feed.
#[tokio::test]
async fn stamps_notify_only_while_some_listener_follows_the_feed() {
    let db = TestDb::new("feed");
    let config = FeedConfig {
        listener_linger: Duration::ZERO,
        // Live delivery below comes from the NOTIFY, not from a timer.
        listener_tick: Duration::from_secs(3600),
        sequencer_idle: Duration::from_secs(3600),
        ..FeedConfig::default()
    };
    let first = Replica::start_with(&db, config.clone()).await;
    let second = Replica::start_with(&db, config).await;
    let mut client = db.sql().await;
    create_orders(&client, &["ord-n"]).await;
    let mut raw = RawListener::start(&db).await;

    for i in 0..6 {
        let committer = if i % 2 == 0 { &first } else { &second };
        commit_and_stamp(&mut client, &committer.feed, "ord-n").await;
    }
    assert!(!first.feed.status().listener_following);
    assert!(!second.feed.status().listener_following);
    assert_eq!(raw.received_so_far().await, Vec::<String>::new());

    // Positive control: a watcher on the second replica makes its listener follow; batches
    // stamped by either replica are now notified, and reach the watcher live.
    let mut watcher = Driven::new(all_after(&second.feed, 6));
    until("the second replica's listener follows", async || {
        second.feed.status().listener_following
    })
    .await;
    for (i, position) in (7..=10).enumerate() {
        let committer = if i % 2 == 0 { &first } else { &second };
        commit_one(&mut client, "ord-n").await;
        committer.feed.nudge();
        assert_eq!(watcher.next().await.global_sequence, position);
        assert_eq!(raw.next().await, position.to_string());
    }
    assert!(!first.feed.status().listener_following);

    // The last watcher goes: at its next wake-up (no timer here: the next NOTIFY) the listener
    // stops following and lets the lock go, and stamps stop notifying.
    drop(watcher);
    until("the watcher is gone", async || {
        second.feed.status().watchers == 0
    })
    .await;
    commit_and_stamp(&mut client, &first.feed, "ord-n").await;
    assert_eq!(raw.next().await, "11");
    until(
        "the second replica's listener stopped following",
        async || !second.feed.status().listener_following,
    )
    .await;
    for _ in 0..3 {
        commit_and_stamp(&mut client, &first.feed, "ord-n").await;
    }
    assert_eq!(raw.received_so_far().await, Vec::<String>::new());
}

/// The seam the lock guards: a stamp that found nobody following (so it will not notify) holds
/// `FOLLOW_LOCK` until it commits; a listener starting to follow meanwhile waits for that commit
/// before it reads the head, so its first watcher gets the batch though no NOTIFY announced it.
#[tokio::test]
async fn a_listener_that_starts_following_during_a_silent_stamp_misses_nothing() {
    let db = TestDb::new("feed");
    let replica = Replica::start_with(
        &db,
        FeedConfig {
            listener_tick: Duration::from_secs(3600),
            sequencer_idle: Duration::from_secs(3600),
            ..FeedConfig::default()
        },
    )
    .await;
    let feed = &replica.feed;
    let mut client = db.sql().await;
    create_orders(&client, &["ord-s"]).await;
    until("the listener connected", async || {
        feed.status().listener_connected
    })
    .await;

    // A stamp, by hand, as the sequencer's: STAMP_LOCK, the follow lock tried (nobody follows),
    // positions given, not committed yet. Its events are written in the same transaction, so that
    // no other stamp can take them first; they become visible at its commit all the same.
    let stamp = client.transaction().await.expect("begin the stamp");
    for _ in 0..3 {
        append(&stamp, "ord-s").await;
    }
    stamp
        .execute("SELECT pg_advisory_xact_lock($1)", &[&STAMP_LOCK])
        .await
        .expect("stamp lock");
    let alone: bool = stamp
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&FOLLOW_LOCK])
        .await
        .expect("try the follow lock")
        .get(0);
    assert!(alone, "nobody follows yet");
    let given = stamp
        .execute(
            "UPDATE events e SET global_sequence = n.position \
             FROM (SELECT id, row_number() OVER (ORDER BY id) AS position \
                   FROM events WHERE global_sequence IS NULL) n \
             WHERE e.id = n.id",
            &[],
        )
        .await
        .expect("stamp");
    assert_eq!(given, 3);

    // A watcher arrives: the listener must wait for the stamp to commit before it follows.
    let mut watcher = Driven::new(all_after(feed, 0));
    let mut checks = db.sql().await;
    until("the listener waits for the follow lock", async || {
        checks
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = $1 AND wait_event_type = 'Lock' \
                 AND wait_event = 'advisory'",
                &[&LISTENER_APPLICATION_NAME],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
            == 1
    })
    .await;
    assert!(!feed.status().listener_following);
    stamp.commit().await.expect("commit the stamp");
    for position in 1..=3 {
        assert_eq!(watcher.next().await.global_sequence, position);
    }
    assert!(feed.status().listener_following);

    // And from now on stamps notify: live, with no timer to fall back on.
    commit_one(&mut checks, "ord-s").await;
    feed.nudge();
    assert_eq!(watcher.next().await.global_sequence, 4);
}
