//! Refunds: committed `IN_FLIGHT` before the gateway call (intent before effect, as for
//! payments), then finished with a write fenced by the refund's token. At most one refund is in
//! flight per order (a unique index), and the order's row lock serialises their starts, so what
//! remains refundable is never promised twice.

use std::time::{Duration, SystemTime};

use gateway_client::IdempotencyKey;
use tokio_postgres::error::SqlState;

use super::attempts::INSERT_EVENT;
use super::orders::{REFUND_COLUMNS, column, history_entry, refund_from_row};
use super::{Fenced, RefundRecord, Store, StoreError};
use crate::domain::machine::{
    RefundRefusal, after_refund_resolution, refund_amount, state_after_refund,
};
use crate::domain::{EventKind, OrderState, RefundOutcome};
use crate::telemetry::TRACE_ONLY;

/// The unique constraint scoping a caller's idempotency key for refunds.
const REQUEST_KEY_CONSTRAINT: &str = "refunds_requester_key";

/// Longest error message kept in a refund's history, in characters.
const MAX_ERROR_MESSAGE: usize = 2000;

/// A refund request, validated.
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub order_id: String,
    /// `None`: all that remains refundable.
    pub amount_minor: Option<i64>,
    /// Checked against the order's currency when given.
    pub currency: Option<String>,
    pub reason: String,
    pub requested_by: String,
    pub request_key: String,
    pub fingerprint: String,
    pub replica_id: String,
}

/// Who may write about one refund: its order, number and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundFence {
    pub order_id: String,
    pub number: i32,
    pub token: i64,
}

/// What `begin_refund` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginRefund {
    /// Committed `IN_FLIGHT`: now (and only now) the gateway may be called.
    Started {
        fence: RefundFence,
        amount_minor: i64,
        currency: String,
        gateway_payment_id: String,
    },
    /// The caller's earlier request with this key (same request): its refund number.
    Existing {
        order_id: String,
        number: i32,
    },
    /// The caller used this key for a different request.
    KeyReused,
    NotFound,
    /// The request's currency is not the order's.
    CurrencyMismatch {
        currency: String,
    },
    Refused(RefundRefusal),
    /// Another refund of the order is in flight, or in doubt awaiting a reviewer.
    InProgress {
        number: i32,
        requested_by: String,
        requested_at: SystemTime,
        in_review: bool,
    },
    /// The order is paid but no charge id is recorded (cannot happen through the API).
    NoCharge,
}

/// How a refund ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundFinish {
    Succeeded {
        refund_id: String,
    },
    /// The gateway refused it, or it provably never reached the gateway: nothing refunded.
    Failed {
        refund_id: Option<String>,
        message: String,
    },
    /// Nothing can establish the outcome: a manual review item; `reason` says why and what to
    /// check.
    Unknown {
        reason: String,
    },
}

/// An in-flight refund the recovery worker took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrandedRefund {
    pub fence: RefundFence,
    pub refund: RefundRecord,
}

impl Store {
    /// The caller's earlier refund request with this key: `(order_id, number, fingerprint)`.
    pub async fn find_refund_request(
        &self,
        requested_by: &str,
        request_key: &str,
    ) -> Result<Option<(String, i32, String)>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT order_id, number, fingerprint FROM refunds \
                 WHERE requested_by = $1 AND request_key = $2",
            )
            .await?;
        let row = client
            .query_opt(&statement, &[&requested_by, &request_key])
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

    /// Starts a refund in ONE transaction: the order locked, the state machine asked how much
    /// may be refunded, the refund committed `IN_FLIGHT`. No event yet: the refund changes the
    /// order only once the gateway did it.
    #[tracing::instrument(
        name = "pg.begin_refund",
        target = TRACE_ONLY,
        skip_all,
        fields(otel.kind = "client", db.system.name = "postgresql", order_id = %new.order_id)
    )]
    pub async fn begin_refund(&self, new: &NewRefund) -> Result<BeginRefund, StoreError> {
        match self.try_begin_refund(new).await {
            Err(Begin::KeyTaken) => {
                // A concurrent request with the same key committed first: it is the same
                // request or a reuse, as for any earlier one.
                match self
                    .find_refund_request(&new.requested_by, &new.request_key)
                    .await?
                {
                    Some((order_id, number, fingerprint))
                        if fingerprint == new.fingerprint && order_id == new.order_id =>
                    {
                        Ok(BeginRefund::Existing { order_id, number })
                    }
                    _ => Ok(BeginRefund::KeyReused),
                }
            }
            Err(Begin::Store(error)) => Err(error),
            Ok(begun) => Ok(begun),
        }
    }

    async fn try_begin_refund(&self, new: &NewRefund) -> Result<BeginRefund, Begin> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let lock = tx
            .prepare_cached(
                "SELECT state, amount_minor, currency, refunded_minor, refund_count \
                 FROM orders WHERE order_id = $1 FOR UPDATE",
            )
            .await
            .map_err(StoreError::from)?;
        let Some(order) = tx
            .query_opt(&lock, &[&new.order_id])
            .await
            .map_err(StoreError::from)?
        else {
            return Ok(BeginRefund::NotFound);
        };
        let state = OrderState::from_stored(column(&order, "state")?).map_err(StoreError::from)?;
        let paid: i64 = column(&order, "amount_minor")?;
        let currency: String = column(&order, "currency")?;
        let refunded: i64 = column(&order, "refunded_minor")?;
        let count: i32 = column(&order, "refund_count")?;
        if let Some(asked) = &new.currency
            && *asked != currency
        {
            return Ok(BeginRefund::CurrencyMismatch { currency });
        }

        let in_flight = tx
            .prepare_cached(
                "SELECT number, requested_by, requested_at, outcome FROM refunds \
                 WHERE order_id = $1 \
                   AND (outcome = 'IN_FLIGHT' OR (outcome = 'UNKNOWN' AND resolution IS NULL))",
            )
            .await
            .map_err(StoreError::from)?;
        if let Some(row) = tx
            .query_opt(&in_flight, &[&new.order_id])
            .await
            .map_err(StoreError::from)?
        {
            return Ok(BeginRefund::InProgress {
                number: column(&row, "number")?,
                requested_by: column(&row, "requested_by")?,
                requested_at: column(&row, "requested_at")?,
                in_review: column::<&str>(&row, "outcome")? == RefundOutcome::Unknown.as_str(),
            });
        }
        let amount = match refund_amount(state, paid, refunded, new.amount_minor) {
            Ok(amount) => amount,
            Err(refusal) => return Ok(BeginRefund::Refused(refusal)),
        };
        // The charge: the attempt that succeeded, or the one a reviewer resolved as charged.
        let charge = tx
            .prepare_cached(
                "SELECT gateway_payment_id FROM attempts WHERE order_id = $1 \
                   AND gateway_payment_id IS NOT NULL \
                   AND (outcome = 'SUCCEEDED' OR resolution = 'CHARGED') \
                 ORDER BY number DESC LIMIT 1",
            )
            .await
            .map_err(StoreError::from)?;
        let Some(charge) = tx
            .query_opt(&charge, &[&new.order_id])
            .await
            .map_err(StoreError::from)?
        else {
            return Ok(BeginRefund::NoCharge);
        };
        let gateway_payment_id: String = column(&charge, "gateway_payment_id")?;

        let number = count + 1;
        let key = IdempotencyKey::refund(&new.order_id, u32::try_from(number).unwrap_or(0));
        let insert = tx
            .prepare_cached(
                "INSERT INTO refunds (order_id, number, requested_by, request_key, fingerprint, \
                 amount_minor, currency, reason, gateway_payment_id, gateway_refund_key, outcome, \
                 replica_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'IN_FLIGHT', $11)",
            )
            .await
            .map_err(StoreError::from)?;
        if let Err(error) = tx
            .execute(
                &insert,
                &[
                    &new.order_id,
                    &number,
                    &new.requested_by,
                    &new.request_key,
                    &new.fingerprint,
                    &amount,
                    &currency,
                    &new.reason,
                    &gateway_payment_id,
                    &key.as_str(),
                    &new.replica_id,
                ],
            )
            .await
        {
            if is_request_key_violation(&error) {
                return Err(Begin::KeyTaken);
            }
            return Err(StoreError::from(error).into());
        }
        let count_it = tx
            .prepare_cached(
                "UPDATE orders SET refund_count = $2, updated_at = now() WHERE order_id = $1",
            )
            .await
            .map_err(StoreError::from)?;
        tx.execute(&count_it, &[&new.order_id, &number])
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::info!(
            order_id = %new.order_id,
            refund = number,
            amount_minor = amount,
            requested_by = %new.requested_by,
            "refund committed; calling the gateway"
        );
        Ok(BeginRefund::Started {
            fence: RefundFence {
                order_id: new.order_id.clone(),
                number,
                token: 1,
            },
            amount_minor: amount,
            currency,
            gateway_payment_id,
        })
    }

    /// Records how the refund ended, in ONE transaction, fenced by its token. A success adds to
    /// the order's refunded amount, moves it to REFUNDED once everything is refunded, and emits
    /// the `REFUNDED` event (the "undo" downstream services act on), actor: who asked for it.
    #[tracing::instrument(
        name = "pg.finish_refund",
        target = TRACE_ONLY,
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            order_id = %fence.order_id,
            refund = fence.number,
            fence = fence.token,
        )
    )]
    pub async fn finish_refund(
        &self,
        fence: &RefundFence,
        finish: &RefundFinish,
    ) -> Result<Fenced, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let lock = tx
            .prepare_cached(
                "SELECT amount_minor, currency, refunded_minor, state FROM orders \
                 WHERE order_id = $1 FOR UPDATE",
            )
            .await?;
        let Some(order) = tx.query_opt(&lock, &[&fence.order_id]).await? else {
            tx.rollback().await?;
            return Ok(Fenced::Superseded);
        };
        let (outcome, refund_id, message) = match finish {
            RefundFinish::Succeeded { refund_id } => {
                (RefundOutcome::Succeeded, Some(refund_id.as_str()), None)
            }
            RefundFinish::Failed { refund_id, message } => (
                RefundOutcome::Failed,
                refund_id.as_deref(),
                Some(message.as_str()),
            ),
            RefundFinish::Unknown { reason } => {
                (RefundOutcome::Unknown, None, Some(reason.as_str()))
            }
        };
        let update = tx
            .prepare_cached(
                "UPDATE refunds SET outcome = $4, gateway_refund_id = coalesce($5, gateway_refund_id), \
                 failure_message = $6, finished_at = now() \
                 WHERE order_id = $1 AND number = $2 AND token = $3 AND outcome = 'IN_FLIGHT' \
                 RETURNING amount_minor, reason, requested_by, gateway_payment_id, gateway_refund_key",
            )
            .await?;
        let Some(refund) = tx
            .query_opt(
                &update,
                &[
                    &fence.order_id,
                    &fence.number,
                    &fence.token,
                    &outcome.as_str(),
                    &refund_id,
                    &message,
                ],
            )
            .await?
        else {
            tx.rollback().await?;
            tracing::warn!(order_id = %fence.order_id, refund = fence.number, token = fence.token,
                "a newer holder exists (or the refund is finished); not overwriting");
            return Ok(Fenced::Superseded);
        };
        if outcome == RefundOutcome::Succeeded {
            let paid: i64 = column(&order, "amount_minor")?;
            let currency: String = column(&order, "currency")?;
            let before: i64 = column(&order, "refunded_minor")?;
            let amount: i64 = column(&refund, "amount_minor")?;
            let reason: String = column(&refund, "reason")?;
            let requested_by: String = column(&refund, "requested_by")?;
            let after = before.saturating_add(amount);
            let state = state_after_refund(paid, after);
            let update_order = tx
                .prepare_cached(
                    "UPDATE orders SET refunded_minor = $2, state = $3, \
                     last_sequence = last_sequence + 1, updated_at = now() \
                     WHERE order_id = $1 RETURNING last_sequence",
                )
                .await?;
            let row = tx
                .query_one(&update_order, &[&fence.order_id, &after, &state.as_str()])
                .await?;
            let sequence: i64 = column(&row, "last_sequence")?;
            let detail = format!(
                "refund {} of {amount} {currency} ({}; {after} of {paid} refunded): {reason}",
                fence.number,
                refund_id.unwrap_or("?"),
            );
            let insert_event = tx.prepare_cached(INSERT_EVENT).await?;
            tx.execute(
                &insert_event,
                &[
                    &fence.order_id,
                    &sequence,
                    &EventKind::Refunded.as_str(),
                    &state.as_str(),
                    &None::<i32>,
                    &requested_by,
                    &detail,
                    &Some(amount),
                    &Some(currency.as_str()),
                ],
            )
            .await?;
        } else if outcome == RefundOutcome::Unknown {
            // A review item opens: an event, so that operators following the feed see it.
            let state = OrderState::from_stored(column(&order, "state")?)?;
            let currency: String = column(&order, "currency")?;
            let amount: i64 = column(&refund, "amount_minor")?;
            let requested_by: String = column(&refund, "requested_by")?;
            let charge: String = column(&refund, "gateway_payment_id")?;
            let key: String = column(&refund, "gateway_refund_key")?;
            let bump = tx
                .prepare_cached(
                    "UPDATE orders SET last_sequence = last_sequence + 1, updated_at = now() \
                     WHERE order_id = $1 RETURNING last_sequence",
                )
                .await?;
            let row = tx.query_one(&bump, &[&fence.order_id]).await?;
            let sequence: i64 = column(&row, "last_sequence")?;
            let detail = format!(
                "refund {} of {amount} {currency} in doubt, manual review: {}; charge {charge}, \
                 refund key {key}, asked by {requested_by}",
                fence.number,
                message.unwrap_or(""),
            );
            let insert_event = tx.prepare_cached(INSERT_EVENT).await?;
            tx.execute(
                &insert_event,
                &[
                    &fence.order_id,
                    &sequence,
                    &EventKind::ManualReviewOpened.as_str(),
                    &state.as_str(),
                    &None::<i32>,
                    &requested_by,
                    &detail,
                    &Some(amount),
                    &Some(currency.as_str()),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        tracing::info!(order_id = %fence.order_id, refund = fence.number, outcome = %outcome, "refund finished");
        Ok(Fenced::Applied)
    }

    /// Appends to the refund's history, fenced.
    pub async fn refund_note(
        &self,
        fence: &RefundFence,
        step: &str,
        message: &str,
    ) -> Result<Fenced, StoreError> {
        let message: String = message.chars().take(MAX_ERROR_MESSAGE).collect();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "UPDATE refunds SET errors = errors || {}, heartbeat_at = now() \
                 WHERE order_id = $1 AND number = $2 AND token = $3 AND outcome = 'IN_FLIGHT'",
                history_entry("$4", "$5")
            ))
            .await?;
        let updated = client
            .execute(
                &statement,
                &[
                    &fence.order_id,
                    &fence.number,
                    &fence.token,
                    &step,
                    &message,
                ],
            )
            .await?;
        Ok(applied(updated))
    }

    /// The refund's holder is alive.
    pub async fn refund_heartbeat(&self, fence: &RefundFence) -> Result<Fenced, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE refunds SET heartbeat_at = now() \
                 WHERE order_id = $1 AND number = $2 AND token = $3 AND outcome = 'IN_FLIGHT'",
            )
            .await?;
        let updated = client
            .execute(&statement, &[&fence.order_id, &fence.number, &fence.token])
            .await?;
        Ok(applied(updated))
    }

    /// Hands the refund to the recovery worker: not before `after`, and its heartbeat no longer
    /// counts as alive.
    pub async fn refund_schedule_next_check(
        &self,
        fence: &RefundFence,
        after: Duration,
    ) -> Result<Fenced, StoreError> {
        let millis = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE refunds SET next_check_at = now() + $4::bigint * interval '1 millisecond', \
                 heartbeat_at = '-infinity' \
                 WHERE order_id = $1 AND number = $2 AND token = $3 AND outcome = 'IN_FLIGHT'",
            )
            .await?;
        let updated = client
            .execute(
                &statement,
                &[&fence.order_id, &fence.number, &fence.token, &millis],
            )
            .await?;
        Ok(applied(updated))
    }

    /// Takes over up to `limit` in-flight refunds whose holder's heartbeat is older than
    /// `stale_after` and whose next check is due: the token is bumped first, so the old holder's
    /// writes match nothing from this commit on.
    pub async fn claim_stranded_refunds(
        &self,
        stale_after: Duration,
        limit: i64,
        replica_id: &str,
    ) -> Result<Vec<StrandedRefund>, StoreError> {
        let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "UPDATE refunds r SET token = r.token + 1, heartbeat_at = now(), \
                 next_check_at = NULL, resolution_tries = r.resolution_tries + 1, replica_id = $3 \
                 FROM (SELECT order_id, number FROM refunds \
                       WHERE outcome = 'IN_FLIGHT' \
                         AND heartbeat_at < now() - $1::bigint * interval '1 millisecond' \
                         AND (next_check_at IS NULL OR next_check_at <= now()) \
                       ORDER BY heartbeat_at LIMIT $2 FOR UPDATE SKIP LOCKED) picked \
                 WHERE r.order_id = picked.order_id AND r.number = picked.number \
                 RETURNING r.order_id, {REFUND_COLUMNS}"
            ))
            .await?;
        let rows = client
            .query(&statement, &[&stale_ms, &limit, &replica_id])
            .await?;
        rows.iter()
            .map(|row| {
                let refund = refund_from_row(row)?;
                Ok(StrandedRefund {
                    fence: RefundFence {
                        order_id: column(row, "order_id")?,
                        number: refund.number,
                        token: refund.token,
                    },
                    refund,
                })
            })
            .collect()
    }
}

impl Store {
    /// Records a reviewer's decision on a refund in doubt, in ONE transaction: the refund's
    /// resolution (who, when, what, why), the order's refunded amount and state as the state
    /// machine says, `MANUAL_REVIEW_RESOLVED`, and, if it did happen, the `REFUNDED` event
    /// downstream services act on. The order's refund slot is free again afterwards.
    pub async fn resolve_refund(
        &self,
        order_id: &str,
        number: i32,
        d: &super::Decision<'_>,
        gateway_refund_id: Option<&str>,
    ) -> Result<super::Resolve, StoreError> {
        use super::Resolve;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let lock = tx
            .prepare_cached(
                "SELECT state, amount_minor, currency, refunded_minor FROM orders \
                 WHERE order_id = $1 FOR UPDATE",
            )
            .await?;
        let Some(order) = tx.query_opt(&lock, &[&order_id]).await? else {
            tx.rollback().await?;
            return Ok(Resolve::NotFound);
        };
        let state = OrderState::from_stored(column(&order, "state")?)?;
        let resolve = tx
            .prepare_cached(
                "UPDATE refunds SET resolution = $3, resolved_by = $4, resolved_at = now(), \
                 resolution_note = $5, gateway_refund_id = coalesce($6, gateway_refund_id) \
                 WHERE order_id = $1 AND number = $2 AND outcome = 'UNKNOWN' AND resolution IS NULL \
                 RETURNING amount_minor",
            )
            .await?;
        let Some(refund) = tx
            .query_opt(
                &resolve,
                &[
                    &order_id,
                    &number,
                    &d.resolution.as_str(),
                    &d.by,
                    &d.note,
                    &gateway_refund_id,
                ],
            )
            .await?
        else {
            let who = tx
                .prepare_cached(
                    "SELECT resolved_by FROM refunds WHERE order_id = $1 AND number = $2",
                )
                .await?;
            let resolved_by = match tx.query_opt(&who, &[&order_id, &number]).await? {
                Some(row) => column(&row, "resolved_by")?,
                None => None,
            };
            tx.rollback().await?;
            return Ok(Resolve::NotInReview { state, resolved_by });
        };
        let amount: i64 = column(&refund, "amount_minor")?;
        let paid: i64 = column(&order, "amount_minor")?;
        let currency: String = column(&order, "currency")?;
        let refunded: i64 = column(&order, "refunded_minor")?;
        let (after, refunded_after) =
            after_refund_resolution(state, paid, refunded, amount, d.resolution);
        let events: i64 = if refunded_after != refunded { 2 } else { 1 };
        let update_order = tx
            .prepare_cached(
                "UPDATE orders SET state = $2, refunded_minor = $3, \
                 last_sequence = last_sequence + $4, updated_at = now() \
                 WHERE order_id = $1 RETURNING last_sequence",
            )
            .await?;
        let row = tx
            .query_one(
                &update_order,
                &[&order_id, &after.as_str(), &refunded_after, &events],
            )
            .await?;
        let last: i64 = column(&row, "last_sequence")?;
        let insert_event = tx.prepare_cached(INSERT_EVENT).await?;
        tx.execute(
            &insert_event,
            &[
                &order_id,
                &(last - events + 1),
                &EventKind::ManualReviewResolved.as_str(),
                &after.as_str(),
                &None::<i32>,
                &d.by,
                &d.detail,
                &Some(amount),
                &Some(currency.as_str()),
            ],
        )
        .await?;
        if events == 2 {
            let detail = format!(
                "refund {number} of {amount} {currency} ({}; {refunded_after} of {paid} refunded), \
                 confirmed by {} in manual review",
                gateway_refund_id.unwrap_or("?"),
                d.by
            );
            tx.execute(
                &insert_event,
                &[
                    &order_id,
                    &last,
                    &EventKind::Refunded.as_str(),
                    &after.as_str(),
                    &None::<i32>,
                    &d.by,
                    &detail,
                    &Some(amount),
                    &Some(currency.as_str()),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        tracing::info!(order_id, refund = number, resolution = %d.resolution, by = d.by, state = %after, "refund review resolved");
        Ok(Resolve::Resolved {
            state: after,
            attempt: 0,
        })
    }
}

/// Why `try_begin_refund` did not answer.
enum Begin {
    KeyTaken,
    Store(StoreError),
}

impl From<StoreError> for Begin {
    fn from(error: StoreError) -> Self {
        Begin::Store(error)
    }
}

fn is_request_key_violation(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some(REQUEST_KEY_CONSTRAINT)
    })
}

fn applied(updated: u64) -> Fenced {
    if updated > 0 {
        Fenced::Applied
    } else {
        Fenced::Superseded
    }
}
