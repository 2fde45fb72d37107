//! The listener: one dedicated connection per replica that turns stamped events into the
//! in-process fan-out.
//!
//! `LISTEN payments_feed` is only the wake-up; the table is the truth (a NOTIFY's payload is never
//! trusted). On a notification, or on a timer (`FeedConfig::listener_tick`) so that a missed
//! wake-up only delays, it reads `global_sequence > head` from the table, in pages until a short
//! one, and publishes each event, in order, on the broadcast channel every watcher of this replica
//! subscribes to. A lost connection is re-established (with backoff) and, LISTEN being in place
//! again before the first read, the gap is read from the table: nothing published is skipped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, broadcast};
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CHANNEL, FeedConfig, FeedEvent, Shared, within};
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
        shared.listener_connected.store(false, Ordering::SeqCst);
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
    within(
        settings.query_timeout,
        client.batch_execute(&format!("LISTEN {CHANNEL}")),
    )
    .await?;
    let page = within(settings.query_timeout, client.prepare(&events_after_sql())).await?;
    shared.listener_connected.store(true, Ordering::SeqCst);
    shared.listener_sessions.fetch_add(1, Ordering::SeqCst);
    *backoff = MIN_BACKOFF;

    loop {
        // Whatever woke us (first of all a new connection: the gap since the old one), the table says
        // what there is.
        drain(&client, &page, settings, shared, sender).await?;
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
            _ = wake.notified() => {}
            _ = tokio::time::sleep(settings.listener_tick) => {}
        }
    }
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
