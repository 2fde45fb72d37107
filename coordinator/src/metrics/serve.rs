//! `GET /metrics` on METRICS_LISTEN (any other path: 404), in the Prometheus text format 0.0.4.
//!
//! Gauges of things that already keep their own state are read here, at scrape time, rather
//! than pushed on every change: the PostgreSQL pool, the journal, the payments gate's cached row,
//! the feed's status. The feed's backlog is one indexed query, bounded by a timeout so that a
//! scrape never hangs on an unreachable database (the previous reading is kept meanwhile).

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::encoding::prometheus_text;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Metrics, StateLabels, StreamLabels};
use crate::{
    control::PaymentsGate, domain::breaker::BreakerState, feed::Feed, journal::Journal,
    store::Store,
};

/// Longest a scrape waits for the feed's backlog query.
const BACKLOG_TIMEOUT: Duration = Duration::from_millis(500);

/// What the scrape-time gauges are read from.
#[derive(Clone)]
pub struct Sources {
    pub metrics: Metrics,
    pub store: Store,
    pub journal: Journal,
    pub gate: PaymentsGate,
    pub feed: Feed,
}

/// Serves `/metrics` on `listener` until `stop`; open scrapes are answered first.
pub async fn serve(listener: TcpListener, sources: Sources, stop: CancellationToken) {
    let addr = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(sources));
    tracing::info!(%addr, "metrics listening (METRICS_LISTEN, GET /metrics)");
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(%error, "the metrics endpoint stopped");
    }
}

async fn scrape(State(sources): State<Arc<Sources>>) -> Response {
    sources.refresh().await;
    let mut body = String::new();
    match prometheus_text::encode(&mut body, &sources.metrics.registry) {
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
    /// Reads the scrape-time gauges.
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
