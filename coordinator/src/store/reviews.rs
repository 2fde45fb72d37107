//! The manual review queue and the operators' decisions on it.
//!
//! An open review item is an attempt whose outcome is `UNKNOWN` and that nobody resolved yet (its
//! order is `MANUAL_REVIEW`). The queue is read oldest first and paged by `(opened_at, order_id)`,
//! so a page never shifts when items are resolved meanwhile.

use std::time::SystemTime;

use super::attempts::INSERT_EVENT;
use super::orders::{ORDER_COLUMNS, column, order_from_row};
use super::{OrderRecord, Store, StoreError};
use crate::domain::machine::{ResolveRefusal, state_after_resolution};
use crate::domain::{EventKind, OrderState, Resolution};

/// One open review item: the order (with every attempt and refund) and what is in doubt: a
/// payment attempt, or a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRecord {
    pub order: OrderRecord,
    /// The payment attempt in doubt (0 for a refund item).
    pub attempt: i32,
    /// The refund in doubt (0 for a payment item).
    pub refund: i32,
    /// When the outcome was recorded unknown.
    pub opened_at: SystemTime,
}

/// Where a page of the queue ends: the next page starts after it. Items are ordered by
/// `(opened_at, order_id, refund)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewCursor {
    pub opened_at: SystemTime,
    pub order_id: String,
    pub refund: i32,
}

/// What resolving did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolve {
    /// Recorded: the order's new state, the attempt resolved.
    Resolved {
        state: OrderState,
        attempt: i32,
    },
    /// The order is not in manual review: its current state (and, if an earlier decision closed
    /// the review, that decision's author).
    NotInReview {
        state: OrderState,
        resolved_by: Option<String>,
    },
    NotFound,
    /// The item in review is another one than the caller checked (it changed meanwhile).
    Changed,
    /// The charge named is already recorded as another attempt's charge.
    ChargeTaken,
}

/// An operator's decision, as the store records it.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub resolution: Resolution,
    /// Required with `Charged`: the charge the operator found.
    pub gateway_payment_id: Option<&'a str>,
    pub note: &'a str,
    pub by: &'a str,
    /// The event's detail (what was verified, by whom, the note).
    pub detail: &'a str,
    /// When the caller verified the decision against a particular attempt: refuse if the open
    /// item is another one by now.
    pub attempt: Option<i32>,
}

impl Store {
    /// Up to `limit` open review items after `after`, oldest first: payment attempts and refunds
    /// whose outcome is unknown and that nobody resolved (each half read by its partial index).
    pub async fn open_reviews(
        &self,
        after: Option<&ReviewCursor>,
        limit: i64,
    ) -> Result<Vec<ReviewRecord>, StoreError> {
        const ITEMS: &str = "SELECT a.order_id, a.number AS attempt, 0 AS refund, \
                 a.finished_at AS opened_at FROM attempts a \
                 WHERE a.outcome = 'UNKNOWN' AND a.resolution IS NULL \
             UNION ALL \
             SELECT r.order_id, 0 AS attempt, r.number AS refund, r.finished_at AS opened_at \
                 FROM refunds r WHERE r.outcome = 'UNKNOWN' AND r.resolution IS NULL";
        let client = self.client().await?;
        // Two statements rather than `$1 IS NULL OR ...`, so that each can use the index range.
        let rows = match after {
            None => {
                let statement = client
                    .prepare_cached(&format!(
                        "SELECT order_id, attempt, refund, opened_at FROM ({ITEMS}) q \
                         ORDER BY opened_at, order_id, refund LIMIT $1"
                    ))
                    .await?;
                client.query(&statement, &[&limit]).await?
            }
            Some(c) => {
                let statement = client
                    .prepare_cached(&format!(
                        "SELECT order_id, attempt, refund, opened_at FROM ({ITEMS}) q \
                         WHERE (opened_at, order_id, refund) > ($1, $2, $3) \
                         ORDER BY opened_at, order_id, refund LIMIT $4"
                    ))
                    .await?;
                client
                    .query(&statement, &[&c.opened_at, &c.order_id, &c.refund, &limit])
                    .await?
            }
        };
        drop(client);
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let order_id: String = column(&row, "order_id")?;
            // The order with every attempt and refund: an operator needs the whole history. A page
            // is small (at most 100), and this is the back office, not the payment path.
            let Some(order) = self.get_order(&order_id).await? else {
                continue;
            };
            items.push(ReviewRecord {
                order,
                attempt: column(&row, "attempt")?,
                refund: column(&row, "refund")?,
                opened_at: column(&row, "opened_at")?,
            });
        }
        Ok(items)
    }

    /// The open review item of an order, if any: `(attempt, gateway_payment_id)`.
    pub async fn open_review_of(
        &self,
        order_id: &str,
    ) -> Result<Option<(i32, Option<String>)>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT number, gateway_payment_id FROM attempts \
                 WHERE order_id = $1 AND outcome = 'UNKNOWN' AND resolution IS NULL \
                 ORDER BY number DESC LIMIT 1",
            )
            .await?;
        let row = client.query_opt(&statement, &[&order_id]).await?;
        row.map(|row| Ok((column(&row, "number")?, column(&row, "gateway_payment_id")?)))
            .transpose()
    }

    /// Records a decision in ONE transaction: the attempt's resolution (who, when, what, why),
    /// the order's new state as the state machine says (fence bumped: whatever held the order
    /// before is stale now), and the `MANUAL_REVIEW_RESOLVED` event. Resolving twice, or an order
    /// not in review, changes nothing.
    pub async fn resolve_review(
        &self,
        order_id: &str,
        d: &Decision<'_>,
    ) -> Result<Resolve, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let lock = tx
            .prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS} FROM orders o WHERE o.order_id = $1 FOR UPDATE"
            ))
            .await?;
        let Some(row) = tx.query_opt(&lock, &[&order_id]).await? else {
            tx.rollback().await?;
            return Ok(Resolve::NotFound);
        };
        let order = order_from_row(&row)?;
        let state = match state_after_resolution(order.state, d.resolution) {
            Ok(state) => state,
            Err(ResolveRefusal::NotAboutAPayment) => {
                tx.rollback().await?;
                return Ok(Resolve::Changed);
            }
            Err(ResolveRefusal::NotInReview(current)) => {
                let last = tx
                    .prepare_cached(
                        "SELECT resolved_by FROM attempts WHERE order_id = $1 \
                         AND resolution IS NOT NULL ORDER BY number DESC LIMIT 1",
                    )
                    .await?;
                let resolved_by = match tx.query_opt(&last, &[&order_id]).await? {
                    Some(row) => column(&row, "resolved_by")?,
                    None => None,
                };
                tx.rollback().await?;
                return Ok(Resolve::NotInReview {
                    state: current,
                    resolved_by,
                });
            }
        };
        let resolve = tx
            .prepare_cached(
                "UPDATE attempts SET resolution = $2, resolved_by = $3, resolved_at = now(), \
                 resolution_note = $4, gateway_payment_id = coalesce($5, gateway_payment_id) \
                 WHERE order_id = $1 AND outcome = 'UNKNOWN' AND resolution IS NULL \
                   AND ($6::integer IS NULL OR number = $6) \
                 RETURNING number",
            )
            .await?;
        let rows = match tx
            .query(
                &resolve,
                &[
                    &order_id,
                    &d.resolution.as_str(),
                    &d.by,
                    &d.note,
                    &d.gateway_payment_id,
                    &d.attempt,
                ],
            )
            .await
        {
            Ok(rows) => rows,
            Err(error) if is_charge_taken(&error) => {
                tx.rollback().await?;
                return Ok(Resolve::ChargeTaken);
            }
            Err(error) => return Err(error.into()),
        };
        let Some(attempt) = rows
            .iter()
            .map(|r| column::<i32>(r, "number"))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .max()
        else {
            // In review, but not through the attempt the caller checked: decide again.
            tx.rollback().await?;
            return Ok(Resolve::Changed);
        };
        let update_order = tx
            .prepare_cached(
                "UPDATE orders SET state = $2, fence = fence + 1, \
                 last_sequence = last_sequence + 1, updated_at = now() \
                 WHERE order_id = $1 RETURNING last_sequence",
            )
            .await?;
        let row = tx
            .query_one(&update_order, &[&order_id, &state.as_str()])
            .await?;
        let sequence: i64 = column(&row, "last_sequence")?;
        let insert_event = tx.prepare_cached(INSERT_EVENT).await?;
        tx.execute(
            &insert_event,
            &[
                &order_id,
                &sequence,
                &EventKind::ManualReviewResolved.as_str(),
                &state.as_str(),
                &Some(attempt),
                &d.by,
                &d.detail,
                &Some(order.amount_minor),
                &Some(order.currency.as_str()),
            ],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            order_id,
            attempt,
            resolution = %d.resolution,
            by = d.by,
            state = %state,
            "manual review resolved"
        );
        Ok(Resolve::Resolved { state, attempt })
    }
}

/// The unique index that keeps one gateway charge the charge of one attempt (migration 0006).
fn is_charge_taken(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("attempts_one_attempt_per_charge")
    })
}
