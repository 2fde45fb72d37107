//! The event feed (CONTRACT §1.6, `WatchEvents` and `WatchOrder`): every event exactly once, in
//! order, resumable from a dense int64 cursor, even when transactions commit out of order.
//!
//! - `sequencer`: one task across all replicas (advisory-lock leader) stamps a dense
//!   `global_sequence` on committed events, in short batches, and sends one NOTIFY per batch.
//! - `listener`: one `LISTEN` connection per replica; on a wake-up or a timer it reads the newly
//!   stamped events from the table and publishes them on one in-process broadcast channel.
//! - `watch`: each stream replays from the table, then follows the broadcast; on lag it catches up
//!   from the table. No connection and no task per watcher.
//!
//! Connections: the sequencer and the listener each hold one dedicated connection (not the pool's),
//! with the same session limits as the pool (`store::session_config`). Watchers read the table
//! through the store's pool, only when they start and when they fell behind.

mod listener;
mod sequencer;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, broadcast, watch as tokio_watch};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use sequencer::FEED_LOCK;

use crate::store::{Backlog, Store, StoreError};

/// One stamped event, as the feed delivers it.
pub use crate::store::EventRecord as FeedEvent;

/// The channel the sequencer notifies and the listeners listen on.
pub const CHANNEL: &str = "payments_feed";

/// `application_name` of the sequencer's connection (visible in `pg_stat_activity`).
pub const SEQUENCER_APPLICATION_NAME: &str = "coordinator-feed-sequencer";
/// `application_name` of the listener's connection.
pub const LISTENER_APPLICATION_NAME: &str = "coordinator-feed-listener";

/// The feed's tuning; `Default` suits production.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Events the in-process fan-out keeps for watchers that are behind; a watcher further behind
    /// catches up from the table.
    pub channel_capacity: usize,
    /// Most events stamped by one sequencer transaction.
    pub stamp_batch: i64,
    /// How often the leading sequencer looks for events committed without a nudge (on other
    /// replicas, or by a nudge lost to a crash).
    pub sequencer_idle: Duration,
    /// How often a replica that does not lead tries to take the sequencer's lock.
    pub leader_retry: Duration,
    /// How often the listener reads the table without a notification (a missed wake-up only delays).
    pub listener_tick: Duration,
    /// Page size of the listener's reads.
    pub listener_page: i64,
    /// Page size of a watcher's replay.
    pub replay_page: i64,
    /// Client-side limit on each query of the sequencer and the listener (a silently dead
    /// connection is replaced after this).
    pub query_timeout: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            channel_capacity: 4096,
            stamp_batch: 500,
            sequencer_idle: Duration::from_millis(20),
            leader_retry: Duration::from_secs(1),
            listener_tick: Duration::from_millis(250),
            listener_page: 1000,
            replay_page: 500,
            query_timeout: Duration::from_secs(15),
        }
    }
}

/// What the feed looks like on this replica now (for metrics and health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// Highest position published on this replica.
    pub head: i64,
    /// Whether this replica's sequencer holds the lock.
    pub sequencer_leader: bool,
    /// Batches this replica's sequencer stamped.
    pub stamped_batches: u64,
    /// Whether the listener's connection is up.
    pub listener_connected: bool,
    /// How many times the listener connected (1 + reconnections).
    pub listener_sessions: u64,
    /// `occurred_at` of the newest published event.
    pub newest_occurred_at: Option<SystemTime>,
    /// Publication time minus `occurred_at` of the newest published event: how late the feed was
    /// (a transaction held open shows here as the time it stayed open).
    pub publish_lag: Option<Duration>,
    /// Streams open on this replica (global and per order).
    pub watchers: usize,
    /// `WatchEvents` streams open on this replica.
    pub event_watchers: usize,
    /// `WatchOrder` streams open on this replica.
    pub order_watchers: usize,
    /// Orders with at least one `WatchOrder` stream open on this replica.
    pub watched_orders: usize,
}

/// State shared by the sequencer, the listener and the handles.
pub(crate) struct Shared {
    head: AtomicI64,
    /// Microseconds since the epoch, `i64::MIN` before the first publication.
    newest_occurred_us: AtomicI64,
    /// Microseconds, negative before the first publication.
    publish_lag_us: AtomicI64,
    leader: AtomicBool,
    batches: AtomicU64,
    listener_connected: AtomicBool,
    listener_sessions: AtomicU64,
    /// `head` for waiters, updated once per page published.
    published: tokio_watch::Sender<i64>,
    /// One small channel per order somebody watches on this replica: an event wakes only its
    /// order's watchers, not every `WatchOrder` stream (10,000 idle streams would otherwise all
    /// wake, and filter, for every event). Entries go when their last watcher does.
    order_routes: std::sync::Mutex<HashMap<String, broadcast::Sender<Arc<FeedEvent>>>>,
}

impl Shared {
    fn routes(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Arc<FeedEvent>>>> {
        // Only single inserts/removes happen under this lock: a poisoned map is still consistent.
        self.order_routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes one event to its order's watchers, if any.
    pub(crate) fn route(&self, event: &Arc<FeedEvent>) {
        if let Some(sender) = self.routes().get(&event.order_id) {
            let _ = sender.send(Arc::clone(event));
        }
    }

    /// A receiver for one order's events (the channel is created on first use).
    pub(crate) fn subscribe_order(&self, order_id: &str) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.routes()
            .entry(order_id.to_owned())
            .or_insert_with(|| broadcast::channel(ORDER_CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Receivers of every order channel.
    fn order_watchers(&self) -> usize {
        self.routes()
            .values()
            .map(broadcast::Sender::receiver_count)
            .sum()
    }

    /// Forgets an order's channel once nobody receives from it any more.
    pub(crate) fn release_order(&self, order_id: &str) {
        let mut routes = self.routes();
        if routes
            .get(order_id)
            .is_some_and(|s| s.receiver_count() == 0)
        {
            routes.remove(order_id);
        }
    }
}

/// Events an order's watcher may fall behind by before it catches up from the table.
const ORDER_CHANNEL_CAPACITY: usize = 64;

pub(crate) struct Inner {
    store: Store,
    config: FeedConfig,
    sender: broadcast::Sender<Arc<FeedEvent>>,
    nudge: Arc<Notify>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

/// The event feed of this replica. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("status", &self.status())
            .finish()
    }
}

impl Feed {
    /// Spawns the sequencer and the listener on `tracker`; both stop when `shutdown` is cancelled,
    /// and every stream then ends.
    pub async fn start(
        database_url: &str,
        store: Store,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Feed, StoreError> {
        Feed::start_with(
            database_url,
            store,
            tracker,
            shutdown,
            FeedConfig::default(),
        )
        .await
    }

    /// `start` with explicit tuning.
    pub async fn start_with(
        database_url: &str,
        store: Store,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
        config: FeedConfig,
    ) -> Result<Feed, StoreError> {
        let mut sequencer_config = crate::store::session_config(database_url)?;
        sequencer_config
            .application_name(SEQUENCER_APPLICATION_NAME)
            .keepalives_idle(Duration::from_secs(30));
        let mut listener_config = sequencer_config.clone();
        listener_config.application_name(LISTENER_APPLICATION_NAME);

        // Publication starts at the current head: older events are served from the table.
        let head = store.feed_head().await?;
        let shared = Arc::new(Shared {
            head: AtomicI64::new(head),
            newest_occurred_us: AtomicI64::new(i64::MIN),
            publish_lag_us: AtomicI64::new(-1),
            leader: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            listener_connected: AtomicBool::new(false),
            listener_sessions: AtomicU64::new(0),
            published: tokio_watch::Sender::new(head),
            order_routes: std::sync::Mutex::new(HashMap::new()),
        });
        let (sender, _) = broadcast::channel(config.channel_capacity.max(1));
        let nudge = Arc::new(Notify::new());

        tracker.spawn(sequencer::run(
            sequencer_config,
            config.clone(),
            Arc::clone(&shared),
            Arc::clone(&nudge),
            tracker.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(listener::run(
            listener_config,
            config.clone(),
            Arc::clone(&shared),
            sender.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));
        Ok(Feed {
            inner: Arc::new(Inner {
                store,
                config,
                sender,
                nudge,
                shared,
                shutdown,
            }),
        })
    }

    /// A commit with events happened on this replica: stamp soon. Cheap; coalesces.
    pub fn nudge(&self) {
        self.inner.nudge.notify_one();
    }

    /// Every event with `global_sequence > after`, in order, then live ones, until the stream is
    /// dropped or the feed shut down. Replays from the table in pages, then follows the fan-out,
    /// with no gap and no duplicate at the seam; a watcher that falls behind catches up from the
    /// table. An `Err` item (the store is unavailable, or its data unreadable) ends the stream.
    pub fn events_after(
        &self,
        after: i64,
    ) -> impl Stream<Item = Result<FeedEvent, StoreError>> + Send + 'static {
        watch::WatchStream::new(watch::Watch::new(
            Arc::clone(&self.inner),
            watch::Scope::All,
            after.max(0),
        ))
    }

    /// One order's events with `sequence > after_sequence`, in order, then live ones, as
    /// `events_after`. Only stamped events are delivered, so the replay and the live part (from the
    /// same fan-out) meet without a gap.
    pub fn order_events_after(
        &self,
        order_id: String,
        after_sequence: i64,
    ) -> impl Stream<Item = Result<FeedEvent, StoreError>> + Send + 'static {
        watch::WatchStream::new(watch::Watch::new(
            Arc::clone(&self.inner),
            watch::Scope::Order(order_id),
            after_sequence.max(0),
        ))
    }

    /// The highest position published on this replica.
    pub fn head(&self) -> i64 {
        self.inner.shared.head.load(Ordering::SeqCst)
    }

    /// Waits until this replica has published `position` (or the feed shut down).
    pub async fn wait_for_head(&self, position: i64) {
        let mut published = self.inner.shared.published.subscribe();
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => {}
            _ = published.wait_for(|head| *head >= position) => {}
        }
    }

    /// Now minus `occurred_at` of the newest published event (`None` before the first): the feed's
    /// lag while events flow; it also grows in a quiet period, so read it with `publish_lag`.
    pub fn lag(&self) -> Option<Duration> {
        let newest = self.status().newest_occurred_at?;
        Some(
            SystemTime::now()
                .duration_since(newest)
                .unwrap_or(Duration::ZERO),
        )
    }

    /// This replica's view of the feed.
    pub fn status(&self) -> FeedStatus {
        let shared = &self.inner.shared;
        let newest = shared.newest_occurred_us.load(Ordering::SeqCst);
        let lag = shared.publish_lag_us.load(Ordering::SeqCst);
        let (event_watchers, order_watchers) =
            (self.inner.sender.receiver_count(), shared.order_watchers());
        FeedStatus {
            head: shared.head.load(Ordering::SeqCst),
            sequencer_leader: shared.leader.load(Ordering::SeqCst),
            stamped_batches: shared.batches.load(Ordering::Relaxed),
            listener_connected: shared.listener_connected.load(Ordering::SeqCst),
            listener_sessions: shared.listener_sessions.load(Ordering::SeqCst),
            newest_occurred_at: (newest != i64::MIN)
                .then(|| UNIX_EPOCH + Duration::from_micros(newest.unsigned_abs())),
            publish_lag: u64::try_from(lag).ok().map(Duration::from_micros),
            watchers: event_watchers + order_watchers,
            event_watchers,
            order_watchers,
            watched_orders: shared.routes().len(),
        }
    }

    /// Committed events not stamped yet, and the age of the oldest (one indexed query).
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        self.inner.store.feed_backlog().await
    }
}

/// `future`, or `Unavailable` once `limit` has passed.
async fn within<T>(
    limit: Duration,
    future: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer from PostgreSQL within {} ms",
            limit.as_millis()
        ))),
    }
}
