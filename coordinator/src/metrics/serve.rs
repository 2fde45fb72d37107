//! `GET /metrics` on METRICS_LISTEN (any other path: 404), in the Prometheus text format 0.0.4.
//!
//! Gauges of things that already keep their own state are read here, at scrape time, rather
//! than pushed on every change: the PostgreSQL pool, the journal, the payments gate's cached row,
//! the feed's status. The feed's backlog is one indexed query on the payments' own pool, so
//! scrapers (unauthenticated, as many as they like) must not be able to take that pool: it is
//! read by one scrape at a time and at most once per `BACKLOG_FRESH_FOR` (scrapes meanwhile show
//! the last reading), and bounded by a timeout so that a scrape never hangs on an unreachable
//! database (the previous reading is kept meanwhile).

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::encoding::prometheus_text;
use tokio::{net::TcpListener, sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Metrics, StateLabels, StreamLabels};
use crate::{
    control::PaymentsGate, domain::breaker::BreakerState, feed::Feed, journal::Journal,
    store::Store,
};

/// Longest a scrape waits for the feed's backlog query.
const BACKLOG_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one reading of the feed's backlog is shown before the next scrape reads it again.
const BACKLOG_FRESH_FOR: Duration = Duration::from_secs(1);

/// What the scrape-time gauges are read from.
#[derive(Clone)]
pub struct Sources {
    pub metrics: Metrics,
    pub store: Store,
    pub journal: Journal,
    pub gate: PaymentsGate,
    pub feed: Feed,
}

/// Which scrapes `/metrics` answered, so that a shutdown can let its final counts be read by one
/// more scrape.
#[derive(Clone, Default)]
pub struct Scrapes(Arc<watch::Sender<Epochs>>);

#[derive(Default)]
struct Epochs {
    /// Moved on by `one_more`: a scrape begun in a later epoch shows every count moved before.
    current: u64,
    /// The latest epoch in which an answered scrape had begun (`None`: never scraped).
    answered: Option<u64>,
}

impl Scrapes {
    /// Whether anyone has scraped this endpoint.
    pub fn ever_answered(&self) -> bool {
        self.0.borrow().answered.is_some()
    }

    /// Returns once a scrape begun after this call was answered (so it showed every count moved
    /// before the call). A scrape begun earlier, or abandoned by its client, does not count.
    pub async fn one_more(&self) {
        let mut epoch = 0;
        self.0.send_modify(|e| {
            e.current += 1;
            epoch = e.current;
        });
        let mut epochs = self.0.subscribe();
        // The sender lives in `self`: this cannot fail while we wait.
        let _ = epochs.wait_for(|e| e.answered >= Some(epoch)).await;
    }

    /// A scrape begins: its epoch.
    fn begin(&self) -> u64 {
        self.0.borrow().current
    }

    /// The scrape begun in `epoch` was answered.
    fn answer(&self, epoch: u64) {
        self.0.send_if_modified(|e| {
            let later = e.answered < Some(epoch);
            if later {
                e.answered = Some(epoch);
            }
            later
        });
    }
}

/// The handler's state: the sources, the backlog's throttle, the scrape count.
struct Scraper {
    sources: Sources,
    backlog: Throttle,
    scrapes: Scrapes,
}

/// Serves `/metrics` on `listener` until `stop`; open scrapes are answered first. Scrapes
/// answered are noted in `scrapes`.
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    scrapes: Scrapes,
    stop: CancellationToken,
) {
    let addr = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(Scraper {
            sources,
            backlog: Throttle::new(BACKLOG_FRESH_FOR),
            scrapes,
        }));
    tracing::info!(%addr, "metrics listening (METRICS_LISTEN, GET /metrics)");
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(%error, "the metrics endpoint stopped");
    }
}

async fn scrape(State(scraper): State<Arc<Scraper>>) -> Response {
    let sources = &scraper.sources;
    let epoch = scraper.scrapes.begin();
    sources.refresh().await;
    scraper.backlog.run(|| sources.read_backlog()).await;
    let mut body = String::new();
    let encoded = prometheus_text::encode(&mut body, &sources.metrics.registry);
    scraper.scrapes.answer(epoch);
    match encoded {
        Ok(()) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "could not encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

impl Sources {
    /// Reads the scrape-time gauges, except the feed's backlog.
    async fn refresh(&self) {
        let m = &self.metrics.inner;

        let pool = self.store.pool_status();
        let idle = pool.available.min(pool.size);
        m.db_pool_connections
            .get_or_create(&StateLabels { state: "in_use" })
            .set(gauge(pool.size - idle));
        m.db_pool_connections
            .get_or_create(&StateLabels { state: "idle" })
            .set(gauge(idle));
        m.db_pool_max.set(gauge(pool.max_size));
        m.db_pool_waiting.set(gauge(pool.waiting));

        match self.journal.blocking(|j| j.len()).await {
            Ok(depth) => {
                m.journal_depth
                    .set(i64::try_from(depth).unwrap_or(i64::MAX));
            }
            Err(error) => tracing::warn!(%error, "metrics: could not read the journal's depth"),
        }

        let control = self.gate.cached();
        m.breaker_state.set(match control.breaker.state() {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        });
        m.payments_paused.set(i64::from(control.admin.is_some()));

        let feed = self.feed.status();
        m.feed_watchers
            .get_or_create(&StreamLabels { stream: "events" })
            .set(gauge(feed.event_watchers));
        m.feed_watchers
            .get_or_create(&StreamLabels { stream: "order" })
            .set(gauge(feed.order_watchers));
        m.feed_head.set(feed.head);
        m.feed_publish_lag
            .set(feed.publish_lag.map_or(0.0, |lag| lag.as_secs_f64()));
        m.feed_sequencer_leader
            .set(i64::from(feed.sequencer_leader));
        m.feed_listener_connected
            .set(i64::from(feed.listener_connected));
    }

    /// Reads the feed's backlog (a query on the payments' pool), bounded by `BACKLOG_TIMEOUT`;
    /// the gauges keep their last reading if PostgreSQL does not answer.
    async fn read_backlog(&self) {
        let m = &self.metrics.inner;
        match tokio::time::timeout(BACKLOG_TIMEOUT, self.feed.backlog()).await {
            Ok(Ok(backlog)) => {
                m.feed_backlog.set(backlog.unstamped);
                let age = backlog
                    .oldest
                    .and_then(|oldest| std::time::SystemTime::now().duration_since(oldest).ok())
                    .unwrap_or(Duration::ZERO);
                m.feed_backlog_age.set(age.as_secs_f64());
            }
            Ok(Err(error)) => tracing::debug!(%error, "metrics: could not read the feed's backlog"),
            Err(_) => tracing::debug!("metrics: the feed's backlog query timed out"),
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Runs a reading for one caller at a time, and not again until `fresh_for` after the last one
/// started (callers meanwhile go without: the gauges show the last reading).
struct Throttle {
    /// When the last reading started; held while one runs, so callers queue here.
    last: tokio::sync::Mutex<Option<Instant>>,
    fresh_for: Duration,
}

impl Throttle {
    fn new(fresh_for: Duration) -> Self {
        Self {
            last: tokio::sync::Mutex::new(None),
            fresh_for,
        }
    }

    /// Runs `read` unless a reading started less than `fresh_for` ago; `true` if it ran.
    async fn run<F: Future<Output = ()>>(&self, read: impl FnOnce() -> F) -> bool {
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.fresh_for) {
            return false;
        }
        // Counted from the start: a reading that timed out is not retried at once either.
        *last = Some(Instant::now());
        read().await;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// `n` scrapes at once through `throttle`, each reading for a while (yielding meanwhile):
    /// how many readings ran, and the most that ran at the same time.
    async fn scrapes_at_once(throttle: Throttle, n: usize) -> (usize, usize) {
        let throttle = Arc::new(throttle);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let scrapes: Vec<_> = (0..n)
            .map(|_| {
                let (throttle, running, most) = (throttle.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    throttle
                        .run(|| async {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            for _ in 0..50 {
                                tokio::task::yield_now().await;
                            }
                            running.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        let mut ran = 0;
        for scrape in scrapes {
            ran += usize::from(scrape.await.expect("scrape task"));
        }
        (ran, most.load(Ordering::SeqCst))
    }

    /// Many scrapes at once: one reading runs, the others wait for it and show it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_scrapes_make_one_reading() {
        let (ran, most) = scrapes_at_once(Throttle::new(Duration::from_secs(3600)), 32).await;
        assert_eq!((ran, most), (1, 1));
    }

    /// `one_more` waits for a scrape begun after it: not one already under way.
    #[tokio::test]
    async fn one_more_waits_for_a_scrape_begun_after_it() {
        async fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
            let mut f = Some(f);
            std::future::poll_fn(|cx| {
                std::task::Poll::Ready(f.take().expect("polled once").poll(cx))
            })
            .await
        }
        let scrapes = Scrapes::default();
        assert!(!scrapes.ever_answered());
        let early = scrapes.begin();
        let mut wait = std::pin::pin!(scrapes.one_more());
        assert!(poll_once(wait.as_mut()).await.is_pending());
        let late = scrapes.begin();
        assert!(late > early);
        scrapes.answer(early);
        assert!(scrapes.ever_answered());
        assert!(
            poll_once(wait.as_mut()).await.is_pending(),
            "a scrape begun before counted"
        );
        scrapes.answer(late);
        assert!(poll_once(wait.as_mut()).await.is_ready());
    }

    /// Even with nothing fresh enough to reuse, readings never run beside each other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn readings_never_overlap() {
        let (ran, most) = scrapes_at_once(Throttle::new(Duration::ZERO), 16).await;
        assert_eq!((ran, most), (16, 1));
    }
}
