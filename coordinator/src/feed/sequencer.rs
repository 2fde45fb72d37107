//! The sequencer: gives committed events their dense feed positions.
//!
//! One sequencer at a time across all replicas: each replica runs this task on a dedicated
//! connection (never one of the pool's), and the one holding the session-level advisory lock
//! `FEED_LOCK` leads; the others retry every `FeedConfig::leader_retry`, and take over within about
//! that long after the leader's connection ends (the server releases a session lock with its
//! session). The unique index on `events.global_sequence` is the safety net: should two ever stamp
//! at once, one statement fails and nothing is given twice.
//!
//! The leader stamps in batches, each ONE statement (so one short transaction): it takes the
//! unstamped events its snapshot sees, in insertion (`id`) order, numbers them `max + 1 ...`, and,
//! if it stamped anything, sends ONE `NOTIFY payments_feed` (a NOTIFY takes a cluster-wide lock at
//! commit: once per batch, never once per payment).
//!
//! Why this never skips a late commit: rows of transactions still open are invisible to the
//! sequencer's snapshot, so they are simply not stamped yet; they get the next free positions once
//! committed, after everything stamped meanwhile. Readers read `global_sequence > cursor`, and the
//! positions are committed in their own order (one stamping statement at a time), so a reader never
//! sees position n + 1 before n. A transaction held open delays only its own events.
//!
//! Why per-order order is kept: an order's next event is inserted by a transaction that first took
//! the order's row lock (`SELECT ... FOR UPDATE` / `UPDATE orders ... last_sequence + 1`), which it
//! got only after the transaction of the order's previous event committed. So whenever the later
//! event is visible the earlier one is too, and it has the smaller `id`: stamping visible rows in
//! `id` order gives the earlier event the smaller position (in this batch or an earlier one).
//!
//! Wake-ups, no polling: `Feed::nudge`, called after a commit with events. On the leading replica
//! it wakes the stamping loop in process. On the others it wakes this task's idle connection, which
//! sends `NOTIFY payments_feed_nudge` (the leader alone `LISTEN`s on it, from before its first
//! stamp) in the statement that also tries the lock: one commit, at most one in flight, and every
//! nudge made while it is in flight is covered by the next one. The NOTIFY commits after the
//! nudging transaction did, and is delivered after that, so the stamp it triggers sees the events.
//! Each wake-up stamps everything visible (up to `FeedConfig::stamp_batch`): the nudges of many
//! payments made while a stamp runs are covered by the next single one.
//!
//! A safety poll (`FeedConfig::sequencer_idle`, 1 s) covers what no nudge announces: a replica
//! that crashed between its commit and its NOTIFY, a NOTIFY sent while no leader listened (the
//! new leader stamps at once on taking the lock anyway), a writer outside the coordinator. Its
//! cost: one empty index scan (`events_unstamped`, a partial index holding only the unstamped rows)
//! a second, on the leader only.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CHANNEL, FeedConfig, NUDGE_CHANNEL, Shared, within};
use crate::store::StoreError;

/// The session-level advisory lock whose holder stamps the feed ("feedseq1" in ASCII).
pub const FEED_LOCK: i64 = 0x6665_6564_7365_7131;

/// One batch, one statement: number the first `$1` visible unstamped events densely after the
/// highest position, and notify the listeners once if anything was stamped. Answers how many were
/// stamped and the highest position now.
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
         ) \
         SELECT (SELECT count(*) FROM stamped) AS stamped, \
                (SELECT count(*) FROM notified) AS notified, \
                (SELECT max(global_sequence) FROM stamped) AS head"
    )
}

/// Tries to take the lock and, if another session holds it and `$2`, nudges the leader: one
/// statement, one commit. The lock is taken in its own (materialised) step so that it is tried
/// exactly once.
fn try_lock_sql() -> String {
    format!(
        "WITH attempt AS MATERIALIZED (SELECT pg_try_advisory_lock($1) AS locked) \
         SELECT locked, \
                (CASE WHEN locked OR NOT $2::boolean THEN NULL \
                      ELSE pg_notify('{NUDGE_CHANNEL}', '') END)::text AS nudged \
         FROM attempt"
    )
}

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
    let (client, mut connection) = within(settings.query_timeout, config.connect(NoTls)).await?;
    let remote = Arc::new(Notify::new());
    // Drives the connection and turns nudges from other replicas (delivered only once this session
    // leads and listens) into wake-ups. Ends when `client` is dropped (end of this function) or the
    // connection is lost.
    let mut driver = {
        let remote = Arc::clone(&remote);
        tracker.spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => remote.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        })
    };
    let lost = || StoreError::Unavailable("the sequencer's connection was lost".to_owned());

    let try_lock = within(settings.query_timeout, client.prepare(&try_lock_sql())).await?;
    // Whether events were committed here since the last attempt: then the leader must hear of it.
    let mut forward = false;
    loop {
        let row = within(
            settings.query_timeout,
            client.query_one(&try_lock, &[&FEED_LOCK, &forward]),
        )
        .await?;
        let locked: bool = row
            .try_get("locked")
            .map_err(|e| StoreError::Corrupt(format!("pg_try_advisory_lock: {e}")))?;
        if locked {
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut driver => return Err(lost()),
            _ = nudge.notified() => forward = true,
            _ = tokio::time::sleep(settings.leader_retry) => forward = false,
        }
    }
    shared.leader.store(true, Ordering::SeqCst);
    tracing::info!("this replica now stamps the event feed");

    // Before the first stamp: a nudge sent from now on wakes a stamp that follows its commit, and
    // the first stamp below covers everything committed before.
    within(
        settings.query_timeout,
        client.batch_execute(&format!("LISTEN {NUDGE_CHANNEL}")),
    )
    .await?;
    let stamp = within(settings.query_timeout, client.prepare(&stamp_sql())).await?;
    loop {
        let row = within(
            settings.query_timeout,
            client.query_one(&stamp, &[&settings.stamp_batch]),
        )
        .await?;
        let stamped: i64 = row
            .try_get("stamped")
            .map_err(|e| StoreError::Corrupt(format!("stamped: {e}")))?;
        if stamped > 0 {
            shared.batches.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(stamped, "stamped a batch of feed events");
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if stamped >= settings.stamp_batch {
            // A full batch: more may be waiting.
            continue;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut driver => return Err(lost()),
            _ = nudge.notified() => {}
            _ = remote.notified() => {}
            _ = tokio::time::sleep(settings.sequencer_idle) => {}
        }
    }
}
