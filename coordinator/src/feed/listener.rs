//! The listener: one dedicated connection per replica that turns stamped events into the
//! in-process fan-out.
//!
//! `LISTEN payments_feed` is only the wake-up; the table is the truth (a NOTIFY's payload is never
//! trusted). On a notification, or on a timer (`FeedConfig::listener_tick`) so that a missed
//! wake-up only delays, it reads `global_sequence > head` from the table, in pages until a short
//! one, and publishes each event, in order, on the broadcast channel every watcher of this replica
//! subscribes to. A lost connection is re-established (with backoff) and, LISTEN being in place
//! again before the first read, the gap is read from the table: nothing published is skipped.
//!
//! Only while somebody on this replica needs it (streams, `wait_for_head`), and for
//! `FeedConfig::listener_linger` after: each delivered NOTIFY and each read is a commit that
//! PostgreSQL counts, on every replica, for every stamped batch. While following it holds
//! `FOLLOW_LOCK` shared, and stamps notify only while somebody holds it: a NOTIFY wakes every
//! listening backend of the database (the replicas' `payments_control` connections too), so with
//! nobody following there is none. Without watchers the listener `UNLISTEN`s, releases the lock
//! and sits still (no notification, no read, no timer). The first watcher to arrive wakes it and
//! waits (`Shared::try_admit`): the listener takes the lock, `LISTEN`s, reads the highest position
//! and, if no admitted watcher depends on the old head, moves its head there without publishing
//! what lies before (nobody was there to receive it; every watcher admitted from now on reads the
//! table after this, so it replays at least that far). Then it follows as above.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sequencer::FOLLOW_LOCK;
use super::{CHANNEL, FeedConfig, FeedEvent, Listening, Shared, within};
use crate::store::StoreError;
use crate::store::events::{event_from_row, events_after_sql};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) async fn run(
    config: tokio_postgres::Config,
    settings: FeedConfig,
    shared: Arc<Shared>,
    sender: broadcast::Sender<Arc<FeedEvent>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let result = session(
            &config,
            &settings,
            &shared,
            &sender,
            &tracker,
            &shutdown,
            &mut backoff,
        )
        .await;
        shared.set_listening(Listening::default());
        match result {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64,
                    "event feed listener: connection lost; reconnecting");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life. `Ok` only on shutdown.
async fn session(
    config: &tokio_postgres::Config,
    settings: &FeedConfig,
    shared: &Shared,
    sender: &broadcast::Sender<Arc<FeedEvent>>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), StoreError> {
    let (client, mut connection) = within(settings.query_timeout, config.connect(NoTls)).await?;
    let wake = Arc::new(Notify::new());
    // Drives the connection (requests and answers) and turns notifications into wake-ups. Ends when
    // `client` is dropped (end of this function) or the connection is lost.
    let mut driver = {
        let wake = Arc::clone(&wake);
        tracker.spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Some(error.to_string()),
                    None => return None,
                }
            }
        })
    };
    let page = within(settings.query_timeout, client.prepare(&events_after_sql())).await?;
    let highest = within(settings.query_timeout, client.prepare(HIGHEST_SQL)).await?;
    shared.set_listening(Listening {
        connected: true,
        following: false,
    });
    shared.listener_sessions.fetch_add(1, Ordering::SeqCst);
    *backoff = MIN_BACKOFF;

    let mut following = false;
    // Since when nobody on this replica needs the feed (while following).
    let mut unwanted_since: Option<Instant> = None;
    loop {
        let wanted = {
            let gate = shared.gate();
            shared.wanted(&gate, sender)
        };
        if following {
            // Whatever woke us, the table says what there is.
            drain(&client, &page, settings, shared, sender).await?;
            if wanted {
                unwanted_since = None;
            } else {
                let since = *unwanted_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= settings.listener_linger && stop_following(shared, sender) {
                    // Stamps stop notifying once nobody holds `FOLLOW_LOCK` (one round trip).
                    within(
                        settings.query_timeout,
                        client.batch_execute(&format!(
                            "UNLISTEN {CHANNEL}; SELECT pg_advisory_unlock_shared({FOLLOW_LOCK})"
                        )),
                    )
                    .await?;
                    following = false;
                    unwanted_since = None;
                    tracing::debug!("event feed listener: no watcher here; stopped listening");
                    continue;
                }
            }
        } else if wanted {
            // The follow lock first, then LISTEN, then the read below: every stamp either saw
            // the lock and notifies, or held it exclusively and committed before the lock was
            // granted, so the read covers it (`FOLLOW_LOCK` says why). One round trip; the lock is
            // session-level, so it outlives this implicit transaction and goes with the
            // connection.
            within(
                settings.query_timeout,
                client.batch_execute(&format!(
                    "SELECT pg_advisory_lock_shared({FOLLOW_LOCK}); LISTEN {CHANNEL}"
                )),
            )
            .await?;
            let row = within(settings.query_timeout, client.query_one(&highest, &[])).await?;
            let highest: i64 = row
                .try_get(0)
                .map_err(|e| StoreError::Corrupt(format!("highest position: {e}")))?;
            start_following(shared, highest);
            following = true;
            unwanted_since = None;
            tracing::debug!(
                head = shared.head.load(Ordering::SeqCst),
                "event feed listener: a watcher is here; following the feed"
            );
            // Read at once: an admitted watcher may depend on events stamped since the head.
            continue;
        }
        let linger_left = unwanted_since.map(|since| {
            settings
                .listener_linger
                .saturating_sub(since.elapsed())
                .max(Duration::from_millis(1))
        });
        let tick = match linger_left {
            Some(left) => settings.listener_tick.min(left),
            None => settings.listener_tick,
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            ended = &mut driver => {
                let why = match ended {
                    Ok(Some(error)) => error,
                    Ok(None) => "closed".to_owned(),
                    Err(join) => join.to_string(),
                };
                return Err(StoreError::Unavailable(format!("the listener's connection ended: {why}")));
            }
            _ = shared.demand.notified() => {}
            _ = wake.notified(), if following => {}
            _ = tokio::time::sleep(tick), if following => {}
        }
    }
}

/// The highest stamped position (the unique index's last entry).
const HIGHEST_SQL: &str = "SELECT coalesce(max(global_sequence), 0)::bigint FROM events";

/// Starts following at `highest`, read after `LISTEN` took effect: the head moves there unless an
/// admitted watcher relies on the listener publishing from the current head.
fn start_following(shared: &Shared, highest: i64) {
    let gate = shared.gate();
    if gate.admitted == 0 && highest > shared.head.load(Ordering::SeqCst) {
        shared.head.store(highest, Ordering::SeqCst);
        shared.published.send_replace(highest);
    }
    shared.listening.send_replace(Listening {
        connected: true,
        following: true,
    });
}

/// Stops following if still nobody needs the feed (checked under the gate, so a watcher arriving
/// now waits for the next `start_following`).
fn stop_following(shared: &Shared, sender: &broadcast::Sender<Arc<FeedEvent>>) -> bool {
    let gate = shared.gate();
    if shared.wanted(&gate, sender) {
        return false;
    }
    shared.listening.send_replace(Listening {
        connected: true,
        following: false,
    });
    true
}

/// Publishes every stamped event after `head`, in order, page by page until a short page.
async fn drain(
    client: &Client,
    page: &Statement,
    settings: &FeedConfig,
    shared: &Shared,
    sender: &broadcast::Sender<Arc<FeedEvent>>,
) -> Result<(), StoreError> {
    loop {
        let head = shared.head.load(Ordering::SeqCst);
        let rows = within(
            settings.query_timeout,
            client.query(page, &[&head, &settings.listener_page]),
        )
        .await?;
        let count = rows.len();
        for row in &rows {
            let event = event_from_row(row)?;
            let position = event.global_sequence;
            if position != shared.head.load(Ordering::SeqCst) + 1 {
                // Positions are dense; a hole would be a bug elsewhere. Watchers re-read the table
                // on any hole they see, so deliver what there is.
                tracing::warn!(
                    position,
                    head = shared.head.load(Ordering::SeqCst),
                    "event feed: positions are not dense"
                );
            }
            let occurred_at = event.occurred_at;
            // No receiver (no watcher on this replica) is fine.
            let event = Arc::new(event);
            shared.route(&event);
            let _ = sender.send(event);
            shared.head.store(position, Ordering::SeqCst);
            shared
                .newest_occurred_us
                .store(micros(occurred_at), Ordering::SeqCst);
            let lag = SystemTime::now()
                .duration_since(occurred_at)
                .unwrap_or(Duration::ZERO);
            shared.publish_lag_us.store(
                i64::try_from(lag.as_micros()).unwrap_or(i64::MAX),
                Ordering::SeqCst,
            );
        }
        if count > 0 {
            shared
                .published
                .send_replace(shared.head.load(Ordering::SeqCst));
        }
        if (count as i64) < settings.listener_page {
            return Ok(());
        }
    }
}

/// Microseconds since the epoch (0 before it).
pub(super) fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
