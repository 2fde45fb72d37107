//! Reading the event log for the feed (`crate::feed`).
//!
//! Only stamped events (`global_sequence IS NOT NULL`) are ever read here: a position is given by
//! the feed's sequencer after the event's transaction committed, and a reader resumes from
//! `global_sequence > cursor` (see `migrations/0002_event_feed.sql`).

use std::time::SystemTime;

use tokio_postgres::Row;

use super::orders::column;
use super::{Store, StoreError};
use crate::domain::{EventKind, OrderState};

/// One stamped event: what the feed delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The event's position on the feed: dense (1, 2, 3 ...) across all orders.
    pub global_sequence: i64,
    pub order_id: String,
    /// The event's position in its order: 1, 2, 3 ... with no gaps.
    pub sequence: i64,
    pub kind: EventKind,
    /// The order's state after this event.
    pub state: OrderState,
    pub attempt_number: Option<i32>,
    pub actor: String,
    pub detail: String,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    /// When the event's transaction began (PostgreSQL `now()`).
    pub occurred_at: SystemTime,
}

/// The feed's backlog: committed events the sequencer has not stamped yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub unstamped: i64,
    /// `occurred_at` of the oldest of them.
    pub oldest: Option<SystemTime>,
}

/// The event's columns.
pub(crate) const EVENT_COLUMNS: &str = "global_sequence, order_id, sequence, kind, state, \
     attempt_number, actor, detail, amount_minor, currency, occurred_at";

/// Stamped events after a position, in feed order: `$1` the position, `$2` the page size.
pub(crate) fn events_after_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE global_sequence > $1 \
         ORDER BY global_sequence LIMIT $2"
    )
}

/// One order's stamped events after a per-order sequence, in order: `$1` the order, `$2` the
/// sequence, `$3` the page size.
fn order_events_after_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE order_id = $1 AND sequence > $2 AND global_sequence IS NOT NULL \
         ORDER BY sequence LIMIT $3"
    )
}

/// The event of a row holding `EVENT_COLUMNS` (stamped: `global_sequence` not NULL).
pub(crate) fn event_from_row(row: &Row) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        global_sequence: column(row, "global_sequence")?,
        order_id: column(row, "order_id")?,
        sequence: column(row, "sequence")?,
        kind: EventKind::from_stored(column(row, "kind")?)?,
        state: OrderState::from_stored(column(row, "state")?)?,
        attempt_number: column(row, "attempt_number")?,
        actor: column(row, "actor")?,
        detail: column(row, "detail")?,
        amount_minor: column(row, "amount_minor")?,
        currency: column(row, "currency")?,
        occurred_at: column(row, "occurred_at")?,
    })
}

impl Store {
    /// At most `limit` stamped events with `global_sequence > after`, in feed order.
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&events_after_sql()).await?;
        client
            .query(&statement, &[&after, &limit])
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    /// At most `limit` stamped events of one order with `sequence > after_sequence`, in order.
    pub async fn order_events_after(
        &self,
        order_id: &str,
        after_sequence: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&order_events_after_sql()).await?;
        client
            .query(&statement, &[&order_id, &after_sequence, &limit])
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    /// The highest position stamped so far (0 when none).
    pub async fn feed_head(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT coalesce(max(global_sequence), 0) AS head FROM events",
                &[],
            )
            .await?;
        column(&row, "head")
    }

    /// Committed events not stamped yet (the partial index `events_unstamped` answers this).
    pub async fn feed_backlog(&self) -> Result<Backlog, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) AS unstamped, min(occurred_at) AS oldest FROM events \
                 WHERE global_sequence IS NULL",
                &[],
            )
            .await?;
        Ok(Backlog {
            unstamped: column(&row, "unstamped")?,
            oldest: column(&row, "oldest")?,
        })
    }
}
