//! Reading orders and their attempts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Json};

use super::{
    AttemptRecord, ErrorEntry, LineItemRecord, OrderRecord, RefundRecord, ReviewDecision, Store,
    StoreError,
};
use crate::domain::{AttemptOutcome, OrderState, RefundOutcome, Resolution};
use crate::telemetry::TRACE_ONLY;

/// The order's columns, for `orders o`.
pub(super) const ORDER_COLUMNS: &str = "o.order_id, o.amount_minor, o.currency, o.customer_id, \
     o.items, o.state, o.fence, o.last_sequence, o.refunded_minor, o.refund_count, o.created_at, \
     o.updated_at";

/// The attempt's columns, for `attempts a` (`fence` renamed `attempt_fence`: a join with
/// `ORDER_COLUMNS` would otherwise hold two columns of that name). `errors_view` turns each stored `at` (RFC 3339 text in
/// jsonb) into microseconds since the epoch, so that reading needs no date parser.
pub(super) const ATTEMPT_COLUMNS: &str = "a.number, a.fence AS attempt_fence, a.operator_id, a.replica_id, \
     a.request_key, a.fingerprint, a.payment_method, a.flow, a.outcome, a.gateway_create_key, \
     a.gateway_confirm_key, a.gateway_payment_id, a.decline_code, a.failure_message, \
     (SELECT coalesce(jsonb_agg(jsonb_build_object( \
          'at_us', (extract(epoch FROM (e.entry->>'at')::timestamptz) * 1000000)::bigint, \
          'step', e.entry->>'step', 'message', e.entry->>'message') ORDER BY e.ord), '[]'::jsonb) \
      FROM jsonb_array_elements(a.errors) WITH ORDINALITY AS e(entry, ord)) AS errors_view, \
     a.started_at, a.finished_at, a.resolution, a.resolved_by, a.resolved_at, a.resolution_note";

/// A refund's columns, for `refunds r` (errors as in `ATTEMPT_COLUMNS`).
pub(super) const REFUND_COLUMNS: &str = "r.number, r.requested_by, r.request_key, r.fingerprint, \
     r.amount_minor, r.currency, r.reason, r.gateway_payment_id, r.gateway_refund_key, \
     r.gateway_refund_id, r.outcome, r.failure_message, \
     (SELECT coalesce(jsonb_agg(jsonb_build_object( \
          'at_us', (extract(epoch FROM (e.entry->>'at')::timestamptz) * 1000000)::bigint, \
          'step', e.entry->>'step', 'message', e.entry->>'message') ORDER BY e.ord), '[]'::jsonb) \
      FROM jsonb_array_elements(r.errors) WITH ORDINALITY AS e(entry, ord)) AS errors_view, \
     r.token, r.resolution_tries, r.requested_at, r.finished_at, r.resolution, r.resolved_by, \
     r.resolved_at, r.resolution_note";

/// The SQL of one error-history entry (`{"at", "step", "message"}`, `at` in RFC 3339 UTC from the
/// database's clock) as a one-element jsonb array, to append with `errors || …`; `step` and
/// `message` are the statement's parameters that hold them (e.g. `$4`).
pub(super) fn history_entry(step: &str, message: &str) -> String {
    format!(
        "jsonb_build_array(jsonb_build_object( \
             'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             'step', {step}::text, 'message', {message}::text))"
    )
}

#[derive(Deserialize)]
struct ErrorView {
    at_us: i64,
    step: String,
    message: String,
}

impl Store {
    /// The caller's earlier request with this key, if any: `(order_id, attempt, fingerprint)`.
    #[tracing::instrument(
        name = "pg.find_request",
        target = TRACE_ONLY,
        skip_all,
        fields(otel.kind = "client", db.system.name = "postgresql", operator_id = %operator_id)
    )]
    pub async fn find_request(
        &self,
        operator_id: &str,
        request_key: &str,
    ) -> Result<Option<(String, i32, String)>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT order_id, number, fingerprint FROM attempts \
                 WHERE operator_id = $1 AND request_key = $2",
            )
            .await?;
        let row = client
            .query_opt(&statement, &[&operator_id, &request_key])
            .await?;
        row.map(|row| {
            Ok((
                column(&row, "order_id")?,
                column(&row, "number")?,
                column(&row, "fingerprint")?,
            ))
        })
        .transpose()
    }

    /// The order with every attempt (and refund), oldest first; `None` if unknown. Everything is
    /// read from one snapshot: an order without refunds in one statement; an order with refunds
    /// again in a read-only repeatable-read transaction, so that the refunds and the order's
    /// refunded total (written by one transaction) can never be seen half-way.
    #[tracing::instrument(
        name = "pg.get_order",
        target = TRACE_ONLY,
        skip_all,
        fields(otel.kind = "client", db.system.name = "postgresql", order_id = %order_id)
    )]
    pub async fn get_order(&self, order_id: &str) -> Result<Option<OrderRecord>, StoreError> {
        let mut client = self.client().await?;
        let order_sql = format!(
            "SELECT {ORDER_COLUMNS}, {ATTEMPT_COLUMNS} \
             FROM orders o LEFT JOIN attempts a ON a.order_id = o.order_id \
             WHERE o.order_id = $1 ORDER BY a.number"
        );
        let statement = client.prepare_cached(&order_sql).await?;
        let rows = client.query(&statement, &[&order_id]).await?;
        let Some(order) = order_from_rows(&rows)? else {
            return Ok(None);
        };
        // Most orders never see a refund: they cost one statement. Refunds are few and only on
        // paid orders, so reading such an order twice is cheap.
        if order.refund_count == 0 {
            return Ok(Some(order));
        }
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let statement = tx.prepare_cached(&order_sql).await?;
        let rows = tx.query(&statement, &[&order_id]).await?;
        let Some(mut order) = order_from_rows(&rows)? else {
            return Ok(None);
        };
        let statement = tx
            .prepare_cached(&format!(
                "SELECT {REFUND_COLUMNS} FROM refunds r WHERE r.order_id = $1 ORDER BY r.number"
            ))
            .await?;
        for row in tx.query(&statement, &[&order_id]).await? {
            order.refunds.push(refund_from_row(&row)?);
        }
        tx.commit().await?;
        Ok(Some(order))
    }
}

/// The order and its attempts from the rows of `ORDER_COLUMNS` joined with `ATTEMPT_COLUMNS`.
fn order_from_rows(rows: &[Row]) -> Result<Option<OrderRecord>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut order = order_from_row(first)?;
    for row in rows {
        if column::<Option<i32>>(row, "number")?.is_some() {
            order.attempts.push(attempt_from_row(row)?);
        }
    }
    Ok(Some(order))
}

/// A column, or `Corrupt` if it does not convert: a conversion failure is the schema and the code
/// disagreeing, not PostgreSQL being unavailable.
pub(super) fn column<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T, StoreError> {
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

/// The order of a row holding `ORDER_COLUMNS`, without its attempts.
pub(super) fn order_from_row(row: &Row) -> Result<OrderRecord, StoreError> {
    let Json(items): Json<Vec<LineItemRecord>> = column(row, "items")?;
    Ok(OrderRecord {
        order_id: column(row, "order_id")?,
        amount_minor: column(row, "amount_minor")?,
        currency: column(row, "currency")?,
        customer_id: column(row, "customer_id")?,
        items,
        state: OrderState::from_stored(column(row, "state")?)?,
        fence: column(row, "fence")?,
        last_sequence: column(row, "last_sequence")?,
        refunded_minor: column(row, "refunded_minor")?,
        refund_count: column(row, "refund_count")?,
        created_at: column(row, "created_at")?,
        updated_at: column(row, "updated_at")?,
        attempts: Vec::new(),
        refunds: Vec::new(),
    })
}

/// The attempt of a row holding `ATTEMPT_COLUMNS`.
pub(super) fn attempt_from_row(row: &Row) -> Result<AttemptRecord, StoreError> {
    let errors = errors_from_row(row)?;
    let resolution = decision_from_row(row)?;
    Ok(AttemptRecord {
        resolution,
        number: column(row, "number")?,
        fence: column(row, "attempt_fence")?,
        operator_id: column(row, "operator_id")?,
        replica_id: column(row, "replica_id")?,
        request_key: column(row, "request_key")?,
        fingerprint: column(row, "fingerprint")?,
        payment_method: column(row, "payment_method")?,
        flow: column(row, "flow")?,
        outcome: AttemptOutcome::from_stored(column(row, "outcome")?)?,
        gateway_create_key: column(row, "gateway_create_key")?,
        gateway_confirm_key: column(row, "gateway_confirm_key")?,
        gateway_payment_id: column(row, "gateway_payment_id")?,
        decline_code: column(row, "decline_code")?,
        failure_message: column(row, "failure_message")?,
        errors,
        started_at: column(row, "started_at")?,
        finished_at: column(row, "finished_at")?,
    })
}

/// A reviewer's decision of a row holding `resolution`, `resolved_by`, `resolved_at`,
/// `resolution_note`.
fn decision_from_row(row: &Row) -> Result<Option<ReviewDecision>, StoreError> {
    Ok(match column::<Option<&str>>(row, "resolution")? {
        None => None,
        Some(resolution) => Some(ReviewDecision {
            resolution: Resolution::from_stored(resolution)?,
            by: column::<Option<String>>(row, "resolved_by")?.unwrap_or_default(),
            at: column::<Option<SystemTime>>(row, "resolved_at")?.unwrap_or(UNIX_EPOCH),
            note: column::<Option<String>>(row, "resolution_note")?.unwrap_or_default(),
        }),
    })
}

/// The error history of a row holding an `errors_view` column.
fn errors_from_row(row: &Row) -> Result<Vec<ErrorEntry>, StoreError> {
    let Json(errors): Json<Vec<ErrorView>> = column(row, "errors_view")?;
    Ok(errors
        .into_iter()
        .map(|e| ErrorEntry {
            at: from_micros(e.at_us),
            step: e.step,
            message: e.message,
        })
        .collect())
}

/// The refund of a row holding `REFUND_COLUMNS`.
pub(super) fn refund_from_row(row: &Row) -> Result<RefundRecord, StoreError> {
    Ok(RefundRecord {
        number: column(row, "number")?,
        requested_by: column(row, "requested_by")?,
        request_key: column(row, "request_key")?,
        fingerprint: column(row, "fingerprint")?,
        amount_minor: column(row, "amount_minor")?,
        currency: column(row, "currency")?,
        reason: column(row, "reason")?,
        gateway_payment_id: column(row, "gateway_payment_id")?,
        gateway_refund_key: column(row, "gateway_refund_key")?,
        gateway_refund_id: column(row, "gateway_refund_id")?,
        outcome: RefundOutcome::from_stored(column(row, "outcome")?)?,
        failure_message: column(row, "failure_message")?,
        errors: errors_from_row(row)?,
        token: column(row, "token")?,
        resolution_tries: column(row, "resolution_tries")?,
        requested_at: column(row, "requested_at")?,
        finished_at: column(row, "finished_at")?,
        resolution: decision_from_row(row)?,
    })
}

fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}
