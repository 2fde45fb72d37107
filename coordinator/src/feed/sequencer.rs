//! The sequencer: gives committed events their dense feed positions.
//!
//! Each replica runs this task on a dedicated connection (never one of the pool's). A stamp is one
//! short transaction, one commit: it takes the transaction-level advisory lock `STAMP_LOCK` (so
//! stamps, from whichever replica, take turns), then ONE statement takes the unstamped events its
//! snapshot sees, in insertion (`id`) order, numbers them `max + 1 ...`, and, if it stamped
//! anything and some listener follows the feed (`FOLLOW_LOCK`), sends ONE `NOTIFY payments_feed`
//! (a NOTIFY takes a cluster-wide lock at commit and wakes every listening backend of the database,
//! whatever its channel: once per batch, never once per payment, never for nobody). The four requests are pipelined: one round trip. The unique
//! index on `events.global_sequence` is the safety net: should two ever stamp at once, one
//! statement fails and nothing is given twice.
//!
//! Who stamps, and when (no polling on the normal path): `Feed::nudge`, called after a commit with
//! events, wakes this replica's task, which stamps everything visible at once: the commit's own
//! events and whatever other commits made visible meanwhile. One stamp in flight per replica; the
//! nudges made while it runs are covered by the next single stamp. Stamping where the commit
//! happened costs one commit; telling a leader instead (a NOTIFY, its delivery, then its stamp)
//! would cost three.
//!
//! The leader: the replica holding the session-level advisory lock `FEED_LOCK` (the others retry
//! every `FeedConfig::leader_retry` and take over within about that long after the leader's
//! connection ends). It adds the safety poll (`FeedConfig::sequencer_idle`, 1 s) for what no nudge
//! announces: a replica that crashed between its commit and its stamp, a writer outside the
//! coordinator. Its cost: one empty index scan (`events_unstamped`, a partial index holding only
//! the unstamped rows) a second, on the leader only.
//!
//! Why this never skips a late commit: rows of transactions still open are invisible to the
//! stamp's snapshot, so they are simply not stamped yet; they get the next free positions once
//! committed, after everything stamped meanwhile. Readers read `global_sequence > cursor`, and the
//! positions are committed in their own order (one stamp at a time: the stamp's statement starts,
//! and takes its snapshot, only once the previous holder of `STAMP_LOCK` committed), so a reader
//! never sees position n + 1 before n. A transaction held open delays only its own events.
//!
//! Why per-order order is kept: an order's next event is inserted by a transaction that first took
//! the order's row lock (`SELECT ... FOR UPDATE` / `UPDATE orders ... last_sequence + 1`), which it
//! got only after the transaction of the order's previous event committed. So whenever the later
//! event is visible the earlier one is too, and it has the smaller `id`: stamping visible rows in
//! `id` order gives the earlier event the smaller position (in this batch or an earlier one).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Notify;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CHANNEL, FeedConfig, Shared, within};
use crate::store::StoreError;

/// The session-level advisory lock whose holder stamps the feed ("feedseq1" in ASCII).
pub const FEED_LOCK: i64 = 0x6665_6564_7365_7131;

/// The advisory lock that says somebody follows the feed ("feedfolw" in ASCII). A listener that
/// follows holds it shared, at session level (`pg_advisory_lock_shared`), from before its `LISTEN`
/// and its read of the head until it stops following (or its connection ends: nothing stale is
/// left behind). A stamp tries it exclusively at transaction level and notifies only when that
/// fails, i.e. when somebody follows.
///
/// Why: every NOTIFY signals every backend of the database that `LISTEN`s on any channel (each
/// replica's `payments_control` connection too), and each signalled backend runs a transaction to
/// read the queue, a commit PostgreSQL counts. Notifying nobody cost ~3 commits per stamp.
///
/// Why no follower misses a batch: if the try succeeded, the stamp held the lock exclusively
/// until its commit, so a listener's shared lock, requested at any point meanwhile, was granted
/// only once the stamp's rows were visible (PostgreSQL releases a transaction's locks after making
/// it visible); the listener then `LISTEN`s and reads the head, which covers that batch. If the
/// try failed (a follower holds the lock, or waits for it: a queued shared request makes an
/// exclusive try fail too), the stamp notifies. Only one stamp at a time tries (they hold
/// `STAMP_LOCK`), and the try is in the statement's `notified` condition: whatever order the
/// executor evaluates the two conditions in, the notification is skipped only when the try was
/// made and succeeded (or nothing was stamped, then there is nothing to announce). Holding the
/// lock for a stamp that stamped nothing (the try evaluated first) only delays a listener that
/// starts following by that stamp's commit.
pub const FOLLOW_LOCK: i64 = 0x6665_6564_666f_6c77;

/// One batch, one statement: number the first `$1` visible unstamped events densely after the
/// highest position, and, if anything was stamped and some listener follows the feed
/// (`FOLLOW_LOCK`), notify the listeners once. Answers how many were stamped, whether it notified,
/// and the highest position now.
fn stamp_sql() -> String {
    format!(
        "WITH batch AS ( \
             SELECT id FROM events WHERE global_sequence IS NULL ORDER BY id LIMIT $1 \
         ), base AS ( \
             SELECT coalesce(max(global_sequence), 0) AS head FROM events \
         ), numbered AS ( \
             SELECT batch.id, base.head + row_number() OVER (ORDER BY batch.id) AS position \
             FROM batch CROSS JOIN base \
         ), stamped AS ( \
             UPDATE events e SET global_sequence = numbered.position FROM numbered \
             WHERE e.id = numbered.id AND e.global_sequence IS NULL \
             RETURNING e.global_sequence \
         ), notified AS ( \
             SELECT pg_notify('{CHANNEL}', (SELECT max(global_sequence) FROM stamped)::text) \
             WHERE EXISTS (SELECT 1 FROM stamped) \
               AND NOT pg_try_advisory_xact_lock({FOLLOW_LOCK}) \
         ) \
         SELECT (SELECT count(*) FROM stamped) AS stamped, \
                (SELECT count(*) FROM notified) AS notified, \
                (SELECT max(global_sequence) FROM stamped) AS head"
    )
}

/// The transaction-level advisory lock every stamp holds ("feedstmp" in ASCII): the leader is not
/// the only one to stamp (a replica stamps after its own commits), so stamps take turns on it. A
/// stamp's statement runs after the lock is granted, so its snapshot sees every earlier stamp.
pub const STAMP_LOCK: i64 = 0x6665_6564_7374_6d70;

pub(super) async fn run(
    config: tokio_postgres::Config,
    settings: FeedConfig,
    shared: Arc<Shared>,
    nudge: Arc<Notify>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let result = session(&config, &settings, &shared, &nudge, &tracker, &shutdown).await;
        if shared.leader.swap(false, Ordering::SeqCst) {
            tracing::info!("this replica no longer stamps the event feed");
        }
        match result {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, "event feed sequencer: connection lost; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(settings.leader_retry) => {}
        }
    }
}

/// One connection's life: contend for the lock, then stamp until the connection or the process
/// ends. `Ok` only on shutdown.
async fn session(
    config: &tokio_postgres::Config,
    settings: &FeedConfig,
    shared: &Shared,
    nudge: &Notify,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    let (client, connection) = within(settings.query_timeout, config.connect(NoTls)).await?;
    // Ends when `client` is dropped (end of this function) or the connection is lost.
    let mut driver = tracker.spawn(connection);
    let lost = || StoreError::Unavailable("the sequencer's connection was lost".to_owned());

    let statements = Statements {
        begin: within(settings.query_timeout, client.prepare("BEGIN")).await?,
        commit: within(settings.query_timeout, client.prepare("COMMIT")).await?,
        lock: within(
            settings.query_timeout,
            client.prepare("SELECT pg_advisory_xact_lock($1)"),
        )
        .await?,
        stamp: within(settings.query_timeout, client.prepare(&stamp_sql())).await?,
    };
    // When this replica last stamped: nudges within `stamp_spacing` of it wait for the rest.
    let now = tokio::time::Instant::now();
    let mut last_stamp = now.checked_sub(settings.stamp_spacing).unwrap_or(now);
    loop {
        let row = within(
            settings.query_timeout,
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&FEED_LOCK]),
        )
        .await?;
        let locked: bool = row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(format!("pg_try_advisory_lock: {e}")))?;
        if locked {
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut driver => return Err(lost()),
            // Events committed here: stamp them now rather than wait for the leader's poll.
            _ = nudge.notified() => {
                tokio::time::sleep_until(last_stamp + settings.stamp_spacing).await;
                stamp_visible(&client, &statements, settings, shared).await?;
                last_stamp = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep(settings.leader_retry) => {}
        }
    }
    shared.leader.store(true, Ordering::SeqCst);
    tracing::info!("this replica now leads the event feed's sequencers");

    loop {
        stamp_visible(&client, &statements, settings, shared).await?;
        last_stamp = tokio::time::Instant::now();
        if shutdown.is_cancelled() {
            return Ok(());
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut driver => return Err(lost()),
            _ = nudge.notified() => {
                tokio::time::sleep_until(last_stamp + settings.stamp_spacing).await;
            }
            _ = tokio::time::sleep(settings.sequencer_idle) => {}
        }
    }
}

struct Statements {
    begin: Statement,
    commit: Statement,
    lock: Statement,
    stamp: Statement,
}

/// Stamps every visible unstamped event, batch after batch until a short one.
async fn stamp_visible(
    client: &Client,
    statements: &Statements,
    settings: &FeedConfig,
    shared: &Shared,
) -> Result<(), StoreError> {
    loop {
        let stamped = within(
            settings.query_timeout,
            stamp_once(client, statements, settings),
        )
        .await?;
        if stamped > 0 {
            shared.batches.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(stamped, "stamped a batch of feed events");
        }
        if stamped < settings.stamp_batch {
            return Ok(());
        }
    }
}

/// One batch in one transaction (one commit, one round trip: the four requests are pipelined).
/// Any error leaves the session to be replaced (the transaction may be open): the caller returns
/// it, and the session ends.
async fn stamp_once(
    client: &Client,
    statements: &Statements,
    settings: &FeedConfig,
) -> Result<i64, tokio_postgres::Error> {
    // Prepared statements only: a request with SQL text would wait for its own prepare first,
    // and the others would overtake it.
    let lock: [&(dyn ToSql + Sync); 1] = [&STAMP_LOCK];
    let batch: [&(dyn ToSql + Sync); 1] = [&settings.stamp_batch];
    let (begin, locked, stamped, commit) = tokio::join!(
        client.execute(&statements.begin, &[]),
        client.execute(&statements.lock, &lock),
        client.query_one(&statements.stamp, &batch),
        client.execute(&statements.commit, &[]),
    );
    begin?;
    locked?;
    let row = stamped?;
    commit?;
    row.try_get("stamped")
}
