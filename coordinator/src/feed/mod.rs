//! The event feed (CONTRACT §1.6, `WatchEvents` and `WatchOrder`): every event exactly once, in
//! order, resumable from a dense int64 cursor, even when transactions commit out of order.
//!
//! - `sequencer`: one task per replica stamps a dense `global_sequence` on committed events, in
//!   batches of everything visible, one stamp at a time across all replicas (a transaction-level
//!   advisory lock), and sends one NOTIFY per batch, only if some listener follows the feed
//!   (`FOLLOW_LOCK`: a NOTIFY wakes every listening backend, whatever its channel). It is woken by
//!   this replica's commits (`Feed::nudge`), and stamps them itself; the leader (a session-level
//!   advisory lock) adds a 1 s safety poll for events nobody nudged about (a replica that crashed
//!   after its commit).
//! - `listener`: one connection per replica; while this replica has watchers it `LISTEN`s, and on
//!   each wake-up reads the newly stamped events from the table and publishes them on one
//!   in-process broadcast channel. With no watcher it stops listening and reads nothing (a replica
//!   nobody watches costs the feed no commit); the first watcher to arrive wakes it again.
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

pub use sequencer::{FEED_LOCK, FOLLOW_LOCK, STAMP_LOCK};

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
    /// The leading sequencer's safety poll: how often it looks for events committed without a
    /// stamp following (a replica that crashed between its commit and its stamp, a writer that does
    /// not nudge). Not on the normal path: every replica stamps after its own commits.
    pub sequencer_idle: Duration,
    /// Least time between two stamps of one replica started by nudges. Every commit with events
    /// nudges; stamping each at once made the stamps (a commit each, taking turns on one lock
    /// across the replicas) outnumber the payments under load. Spaced, a stamp takes what several
    /// commits made visible. A nudge after a quiet moment is stamped at once: this delays
    /// delivery only while the feed is busy, by at most this long. Payments never wait for it.
    /// 25 ms rather than 10: at 700 payments/s the stamps fell from 0.73 to 0.35 commits per
    /// payment, 4-8 % more payments/s (docs/PERFORMANCE.md); a screen does not see 25 ms.
    pub stamp_spacing: Duration,
    /// How often a replica that does not lead tries to take the sequencer's lock.
    pub leader_retry: Duration,
    /// How often a listener with watchers reads the table without a notification (a missed wake-up
    /// only delays).
    pub listener_tick: Duration,
    /// How long a listener keeps listening after this replica's last watcher went (so that watchers
    /// coming and going do not make it `LISTEN` and `UNLISTEN` each time).
    pub listener_linger: Duration,
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
            sequencer_idle: Duration::from_secs(1),
            stamp_spacing: Duration::from_millis(25),
            leader_retry: Duration::from_secs(1),
            listener_tick: Duration::from_secs(1),
            listener_linger: Duration::from_secs(10),
            listener_page: 1000,
            replay_page: 500,
            query_timeout: Duration::from_secs(15),
        }
    }
}

/// What the feed looks like on this replica now (for metrics and health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// Highest position published on this replica (while it has no watcher, the position when it
    /// last had one: nothing is read for nobody).
    pub head: i64,
    /// Whether this replica's sequencer holds the lock.
    pub sequencer_leader: bool,
    /// Batches this replica's sequencer stamped.
    pub stamped_batches: u64,
    /// Whether the listener's connection is up.
    pub listener_connected: bool,
    /// How many times the listener connected (1 + reconnections).
    pub listener_sessions: u64,
    /// Whether the listener follows the feed (`LISTEN`s and publishes): while this replica has
    /// watchers, and for `FeedConfig::listener_linger` after the last one went.
    pub listener_following: bool,
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
    /// What the listener does, for watchers deciding whether they may read the table yet. Changed
    /// only under `gate`.
    listening: tokio_watch::Sender<Listening>,
    /// Pinged by a watcher (or a `wait_for_head`) that needs the listener to follow the feed.
    demand: Notify,
    gate: std::sync::Mutex<Gate>,
}

/// The listener's state as watchers see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Listening {
    /// The listener's connection is up.
    pub(crate) connected: bool,
    /// It `LISTEN`s and publishes every stamped event after `head`.
    pub(crate) following: bool,
}

/// What subscribing, admitting a watcher and moving the listener's head without publishing must
/// see consistently: one lock (short, never held across an await).
pub(crate) struct Gate {
    /// One small channel per order somebody watches on this replica: an event wakes only its
    /// order's watchers, not every `WatchOrder` stream (10,000 idle streams would otherwise all
    /// wake, and filter, for every event). Entries go when their last watcher does.
    routes: HashMap<String, broadcast::Sender<Arc<FeedEvent>>>,
    /// Watchers reading the table (replay or catch-up) that may rely on the listener publishing
    /// every event after the head it had when they were admitted: while there is one, the head
    /// only moves by publishing.
    admitted: usize,
}

impl Shared {
    pub(crate) fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        // Only single updates happen under this lock: a poisoned gate is still consistent.
        self.gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes one event to its order's watchers, if any.
    pub(crate) fn route(&self, event: &Arc<FeedEvent>) {
        if let Some(sender) = self.gate().routes.get(&event.order_id) {
            let _ = sender.send(Arc::clone(event));
        }
    }

    /// A receiver for one order's events (the channel is created on first use).
    pub(crate) fn subscribe_order(&self, order_id: &str) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.gate()
            .routes
            .entry(order_id.to_owned())
            .or_insert_with(|| broadcast::channel(ORDER_CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Receivers of every order channel.
    fn order_watchers(&self) -> usize {
        self.gate()
            .routes
            .values()
            .map(broadcast::Sender::receiver_count)
            .sum()
    }

    /// Forgets an order's channel once nobody receives from it any more, and the watcher's
    /// admission.
    pub(crate) fn release(&self, order_id: Option<&str>, admitted: bool) {
        let mut gate = self.gate();
        if admitted {
            gate.admitted = gate.admitted.saturating_sub(1);
        }
        if let Some(order_id) = order_id
            && gate
                .routes
                .get(order_id)
                .is_some_and(|s| s.receiver_count() == 0)
        {
            gate.routes.remove(order_id);
        }
    }

    /// Lets a watcher read the table if that is safe now: the listener follows (it publishes
    /// everything after a head that the watcher's reads, all later, will reach), or it is not
    /// connected (then it will, once back, publish everything after its current head, never
    /// jumping: `admitted` forbids it). Otherwise the watcher waits for the listener to follow.
    pub(crate) fn try_admit(&self) -> bool {
        let mut gate = self.gate();
        let state = *self.listening.borrow();
        if state.following || !state.connected {
            gate.admitted += 1;
            true
        } else {
            false
        }
    }

    /// Somebody on this replica needs the feed published: streams (admitted or waiting) or
    /// `wait_for_head` callers.
    fn wanted(&self, gate: &Gate, sender: &broadcast::Sender<Arc<FeedEvent>>) -> bool {
        sender.receiver_count() > 0
            || gate.routes.values().any(|s| s.receiver_count() > 0)
            || self.published.receiver_count() > 0
    }

    fn set_listening(&self, state: Listening) {
        let _gate = self.gate();
        self.listening.send_replace(state);
        self.listener_connected
            .store(state.connected, Ordering::SeqCst);
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
            listening: tokio_watch::Sender::new(Listening::default()),
            demand: Notify::new(),
            gate: std::sync::Mutex::new(Gate {
                routes: HashMap::new(),
                admitted: 0,
            }),
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

    /// A commit with events happened on this replica: stamp now. Call it after the commit (the
    /// stamp's snapshot must see the events). Cheap; coalesces: one stamp in flight per replica,
    /// and the next one covers every nudge made meanwhile.
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
        // A waiter is a reason for the listener to follow the feed.
        self.inner.shared.demand.notify_one();
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
        // One lock at a time (the listener takes the gate, then `listening`).
        let watched_orders = shared.gate().routes.len();
        let listener_following = shared.listening.borrow().following;
        FeedStatus {
            head: shared.head.load(Ordering::SeqCst),
            sequencer_leader: shared.leader.load(Ordering::SeqCst),
            stamped_batches: shared.batches.load(Ordering::Relaxed),
            listener_connected: shared.listener_connected.load(Ordering::SeqCst),
            listener_sessions: shared.listener_sessions.load(Ordering::SeqCst),
            listener_following,
            newest_occurred_at: (newest != i64::MIN)
                .then(|| UNIX_EPOCH + Duration::from_micros(newest.unsigned_abs())),
            publish_lag: u64::try_from(lag).ok().map(Duration::from_micros),
            watchers: event_watchers + order_watchers,
            event_watchers,
            order_watchers,
            watched_orders,
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
