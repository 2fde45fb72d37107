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
//! Wake-ups: `Feed::nudge` (a commit on this replica), and an idle timer so that commits made on
//! other replicas are stamped promptly too. The timer's cost: one empty index scan
//! (`events_unstamped`, a partial index holding only the unstamped rows) per tick, on the leader
//! only (`FeedConfig::sequencer_idle`, 20 ms by default: 50 trivial statements a second).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Notify;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CHANNEL, FeedConfig, Shared, within};
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
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut driver => return Err(lost()),
            _ = tokio::time::sleep(settings.leader_retry) => {}
        }
    }
    shared.leader.store(true, Ordering::SeqCst);
    tracing::info!("this replica now stamps the event feed");

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
            _ = tokio::time::sleep(settings.sequencer_idle) => {}
        }
    }
}
