//! The database side: everything the rules need, read in one `REPEATABLE READ`, read-only
//! transaction (one snapshot). Plain `tokio-postgres` on the coordinator's schema
//! (`coordinator/migrations/*.sql`); the `coordinator` crate is not a dependency.

use std::collections::HashMap;

use anyhow::Context;
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::MAX_VIOLATIONS;

/// One order (table `orders`).
#[derive(Clone, Debug, Default)]
pub(super) struct OrderRow {
    pub order_id: String,
    pub state: String,
    pub amount_minor: i64,
    pub currency: String,
    pub refunded_minor: i64,
    pub last_sequence: i64,
}

/// One payment attempt (table `attempts`).
#[derive(Clone, Debug, Default)]
pub(super) struct AttemptRow {
    pub order_id: String,
    pub number: i32,
    pub outcome: String,
    pub resolution: Option<String>,
    pub gateway_payment_id: Option<String>,
    pub failure_message: Option<String>,
    /// Only for open review items (`UNKNOWN`, unresolved): the error history's messages, oldest
    /// first.
    pub review_history: Vec<String>,
    /// Only for attempts `IN_FLIGHT`: replica and start time.
    pub in_flight_note: Option<String>,
}

/// One refund (table `refunds`).
#[derive(Clone, Debug, Default)]
pub(super) struct RefundRow {
    pub order_id: String,
    pub number: i32,
    pub amount_minor: i64,
    pub outcome: String,
    pub resolution: Option<String>,
    pub failure_message: Option<String>,
}

/// One order's events (table `events`), aggregated.
#[derive(Clone, Debug, Default)]
pub(super) struct OrderEvents {
    pub count: i64,
    pub min_sequence: i64,
    pub max_sequence: i64,
    /// The state of the event with the highest sequence (the order's state after it).
    pub last_state: String,
    /// An `ATTEMPT_SUCCEEDED`, or a `MANUAL_REVIEW_RESOLVED` of an attempt into `PAID`.
    pub payment_event: bool,
    /// Sum of the `REFUNDED` events' amounts.
    pub refunded_by_events: i64,
}

/// The global feed (`events.global_sequence`).
#[derive(Clone, Debug, Default)]
pub(super) struct Feed {
    pub events: i64,
    pub stamped: i64,
    pub distinct_positions: i64,
    pub max_position: i64,
    /// Missing positions as inclusive ranges, lowest first (at most `MAX_VIOLATIONS`).
    pub gaps: Vec<(i64, i64)>,
    /// Positions held by more than one event, with how many (at most `MAX_VIOLATIONS`).
    pub duplicates: Vec<(i64, i64)>,
    /// Unstamped events as `order sequence kind (time)` (at most `MAX_VIOLATIONS`).
    pub unstamped: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Snapshot {
    pub orders: Vec<OrderRow>,
    pub attempts: Vec<AttemptRow>,
    pub refunds: Vec<RefundRow>,
    pub events: HashMap<String, OrderEvents>,
    /// The sequences present, for orders whose sequences are not exactly 1..last_sequence (at
    /// most `MAX_VIOLATIONS` orders).
    pub gapped_sequences: HashMap<String, Vec<i64>>,
    pub feed: Feed,
}

const ORDERS: &str = "SELECT order_id, state, amount_minor, currency, refunded_minor, last_sequence \
     FROM orders ORDER BY order_id";

const ATTEMPTS: &str = "SELECT order_id, number, outcome, resolution, gateway_payment_id, \
     failure_message, \
     CASE WHEN outcome = 'UNKNOWN' AND resolution IS NULL THEN errors END AS review_errors, \
     CASE WHEN outcome = 'IN_FLIGHT' \
          THEN 'replica ' || replica_id || ', started ' || started_at::text END AS in_flight_note \
     FROM attempts ORDER BY order_id, number";

const REFUNDS: &str = "SELECT order_id, number, amount_minor, outcome, resolution, failure_message \
     FROM refunds ORDER BY order_id, number";

const ORDER_EVENTS: &str = "SELECT order_id, count(*) AS events, \
     min(sequence) AS min_sequence, max(sequence) AS max_sequence, \
     (array_agg(state ORDER BY sequence DESC))[1] AS last_state, \
     bool_or(kind = 'ATTEMPT_SUCCEEDED' OR (kind = 'MANUAL_REVIEW_RESOLVED' \
             AND attempt_number IS NOT NULL AND state = 'PAID')) AS payment_event, \
     coalesce(sum(amount_minor) FILTER (WHERE kind = 'REFUNDED'), 0)::bigint AS refunded_by_events \
     FROM events GROUP BY order_id";

const FEED: &str = "SELECT count(*) AS events, count(global_sequence) AS stamped, \
     count(DISTINCT global_sequence) AS distinct_positions, \
     coalesce(max(global_sequence), 0)::bigint AS max_position FROM events";

const FEED_GAPS: &str = "SELECT prev + 1 AS first_missing, position - 1 AS last_missing FROM ( \
       SELECT global_sequence AS position, \
              lag(global_sequence, 1, 0::bigint) OVER (ORDER BY global_sequence) AS prev \
       FROM events WHERE global_sequence IS NOT NULL) s \
     WHERE position - prev > 1 ORDER BY position LIMIT $1";

const FEED_DUPLICATES: &str = "SELECT global_sequence, count(*) AS events FROM events \
     WHERE global_sequence IS NOT NULL GROUP BY global_sequence HAVING count(*) > 1 \
     ORDER BY global_sequence LIMIT $1";

const UNSTAMPED: &str = "SELECT order_id || ' #' || sequence || ' ' || kind || ' (' || \
     occurred_at::text || ')' AS event FROM events WHERE global_sequence IS NULL \
     ORDER BY id LIMIT $1";

const SEQUENCES: &str = "SELECT order_id, array_agg(sequence ORDER BY sequence) AS sequences \
     FROM events WHERE order_id = ANY($1) GROUP BY order_id";

/// Reads the snapshot.
pub(super) async fn read(database_url: &str) -> anyhow::Result<Snapshot> {
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let connection = tokio::spawn(connection);
    let snapshot = read_in_transaction(&mut client).await;
    drop(client);
    let _ = connection.await;
    snapshot
}

async fn read_in_transaction(client: &mut tokio_postgres::Client) -> anyhow::Result<Snapshot> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .context("starting the read-only snapshot")?;
    let limit = i64::try_from(MAX_VIOLATIONS).unwrap_or(i64::MAX);

    let orders = tx
        .query(ORDERS, &[])
        .await
        .context("reading orders")?
        .iter()
        .map(order)
        .collect::<Result<Vec<_>, _>>()?;
    let attempts = tx
        .query(ATTEMPTS, &[])
        .await
        .context("reading attempts")?
        .iter()
        .map(attempt)
        .collect::<Result<Vec<_>, _>>()?;
    let refunds = tx
        .query(REFUNDS, &[])
        .await
        .context("reading refunds")?
        .iter()
        .map(refund)
        .collect::<Result<Vec<_>, _>>()?;
    let mut events = HashMap::new();
    for row in tx
        .query(ORDER_EVENTS, &[])
        .await
        .context("reading events per order")?
    {
        events.insert(
            row.try_get("order_id")?,
            OrderEvents {
                count: row.try_get("events")?,
                min_sequence: row.try_get("min_sequence")?,
                max_sequence: row.try_get("max_sequence")?,
                last_state: row.try_get("last_state")?,
                payment_event: row.try_get("payment_event")?,
                refunded_by_events: row.try_get("refunded_by_events")?,
            },
        );
    }
    let gapped: Vec<String> = orders
        .iter()
        .filter(|o| !sequences_dense(o, events.get(&o.order_id)))
        .take(MAX_VIOLATIONS)
        .map(|o| o.order_id.clone())
        .collect();
    let mut gapped_sequences = HashMap::new();
    if !gapped.is_empty() {
        for row in tx
            .query(SEQUENCES, &[&gapped])
            .await
            .context("reading gapped orders' sequences")?
        {
            gapped_sequences.insert(row.try_get("order_id")?, row.try_get("sequences")?);
        }
    }

    let totals = tx.query_one(FEED, &[]).await.context("reading the feed")?;
    let gaps = tx
        .query(FEED_GAPS, &[&limit])
        .await
        .context("reading the feed's gaps")?
        .iter()
        .map(|r| Ok((r.try_get("first_missing")?, r.try_get("last_missing")?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let duplicates = tx
        .query(FEED_DUPLICATES, &[&limit])
        .await
        .context("reading the feed's duplicates")?
        .iter()
        .map(|r| Ok((r.try_get("global_sequence")?, r.try_get("events")?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let unstamped = tx
        .query(UNSTAMPED, &[&limit])
        .await
        .context("reading unstamped events")?
        .iter()
        .map(|r| r.try_get("event"))
        .collect::<Result<Vec<String>, _>>()?;
    let feed = Feed {
        events: totals.try_get("events")?,
        stamped: totals.try_get("stamped")?,
        distinct_positions: totals.try_get("distinct_positions")?,
        max_position: totals.try_get("max_position")?,
        gaps,
        duplicates,
        unstamped,
    };
    tx.commit().await.context("ending the snapshot")?;
    Ok(Snapshot {
        orders,
        attempts,
        refunds,
        events,
        gapped_sequences,
        feed,
    })
}

/// The order's events are exactly sequences 1..=last_sequence (given the unique index on
/// (order_id, sequence), count, min and max say it); an order always has at least its
/// `ORDER_CREATED`.
pub(super) fn sequences_dense(order: &OrderRow, events: Option<&OrderEvents>) -> bool {
    events.is_some_and(|e| {
        e.count >= 1
            && e.count == order.last_sequence
            && e.min_sequence == 1
            && e.max_sequence == order.last_sequence
    })
}

fn order(row: &Row) -> Result<OrderRow, tokio_postgres::Error> {
    Ok(OrderRow {
        order_id: row.try_get("order_id")?,
        state: row.try_get("state")?,
        amount_minor: row.try_get("amount_minor")?,
        currency: row.try_get("currency")?,
        refunded_minor: row.try_get("refunded_minor")?,
        last_sequence: row.try_get("last_sequence")?,
    })
}

fn attempt(row: &Row) -> Result<AttemptRow, tokio_postgres::Error> {
    let errors: Option<serde_json::Value> = row.try_get("review_errors")?;
    let review_history = errors
        .as_ref()
        .and_then(serde_json::Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("message").and_then(serde_json::Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(AttemptRow {
        order_id: row.try_get("order_id")?,
        number: row.try_get("number")?,
        outcome: row.try_get("outcome")?,
        resolution: row.try_get("resolution")?,
        gateway_payment_id: row.try_get("gateway_payment_id")?,
        failure_message: row.try_get("failure_message")?,
        review_history,
        in_flight_note: row.try_get("in_flight_note")?,
    })
}

fn refund(row: &Row) -> Result<RefundRow, tokio_postgres::Error> {
    Ok(RefundRow {
        order_id: row.try_get("order_id")?,
        number: row.try_get("number")?,
        amount_minor: row.try_get("amount_minor")?,
        outcome: row.try_get("outcome")?,
        resolution: row.try_get("resolution")?,
        failure_message: row.try_get("failure_message")?,
    })
}
