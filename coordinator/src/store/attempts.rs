//! Starting attempts and the fenced writes about them.

use gateway_client::IdempotencyKey;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;

use super::orders::{
    ATTEMPT_COLUMNS, ORDER_COLUMNS, attempt_from_row, column, history_entry, order_from_row,
};
use super::{Begin, BeginRefusal, Fence, Fenced, Finish, NewAttempt, Store, StoreError, Stranded};
use crate::domain::machine::{event_for, may_finish, may_start_attempt, order_state_after};
use crate::domain::{AttemptOutcome, EventKind, OrderState, StartRefusal};
use crate::telemetry::TRACE_ONLY;

/// The unique constraint scoping a caller's idempotency key (see the migration).
const REQUEST_KEY_CONSTRAINT: &str = "attempts_operator_request_key";

/// Longest error message kept in an attempt's history, in characters.
const MAX_ERROR_MESSAGE: usize = 2000;

pub(super) const INSERT_EVENT: &str = "INSERT INTO events \
     (order_id, sequence, kind, state, attempt_number, actor, detail, amount_minor, currency) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

impl Store {
    /// Starts an attempt, in ONE transaction: creates the order on first sight, checks it against
    /// the request, asks the state machine whether an attempt may start, bumps the order's fence and
    /// commits the attempt `IN_FLIGHT` with its events. Only after this commits may the gateway be
    /// called (CONTRACT §1.4). The order's row lock and fence make this the lock of record: however
    /// many callers get past Redis, only one commits an attempt.
    #[tracing::instrument(
        name = "pg.begin_attempt",
        target = TRACE_ONLY,
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            order_id = %new.order_id,
            attempt = tracing::field::Empty,
        )
    )]
    pub async fn begin_attempt(&self, new: &NewAttempt) -> Result<Begin, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;

        // 1. First sight: create the order and its ORDER_CREATED event (sequence 1).
        let insert_order = tx
            .prepare_cached(
                "INSERT INTO orders \
                 (order_id, amount_minor, currency, customer_id, items, state, last_sequence) \
                 VALUES ($1, $2, $3, $4, $5, $6, 1) \
                 ON CONFLICT (order_id) DO NOTHING",
            )
            .await?;
        let created = tx
            .execute(
                &insert_order,
                &[
                    &new.order_id,
                    &new.amount_minor,
                    &new.currency,
                    &new.customer_id,
                    &Json(&new.items),
                    &OrderState::Pending.as_str(),
                ],
            )
            .await?
            == 1;
        let insert_event = tx.prepare_cached(INSERT_EVENT).await?;
        if created {
            tx.execute(
                &insert_event,
                &[
                    &new.order_id,
                    &1_i64,
                    &EventKind::OrderCreated.as_str(),
                    &OrderState::Pending.as_str(),
                    &None::<i32>,
                    &new.operator_id,
                    &"",
                    &Some(new.amount_minor),
                    &Some(new.currency.as_str()),
                ],
            )
            .await?;
        }

        // 2. Lock the order: every begin and finish on this order queues here.
        let lock = tx
            .prepare_cached(
                "SELECT amount_minor, currency, customer_id, state FROM orders \
                 WHERE order_id = $1 FOR UPDATE",
            )
            .await?;
        let Some(locked) = tx.query_opt(&lock, &[&new.order_id]).await? else {
            return Err(StoreError::Other(format!(
                "order {} vanished after insert",
                new.order_id
            )));
        };

        // 3. The same caller's key on an attempt committed meanwhile (a concurrent same-key request
        // won the race): join it rather than refuse. Checked under the lock, so it sees that commit.
        let find_key = tx
            .prepare_cached(
                "SELECT order_id, number, fingerprint FROM attempts \
                 WHERE operator_id = $1 AND request_key = $2",
            )
            .await?;
        if let Some(row) = tx
            .query_opt(&find_key, &[&new.operator_id, &new.request_key])
            .await?
        {
            let taken = key_taken(&row)?;
            tx.rollback().await?;
            return Ok(taken);
        }

        // 4. The request must describe the recorded order.
        let mut fields = Vec::new();
        if column::<i64>(&locked, "amount_minor")? != new.amount_minor {
            fields.push("amount");
        }
        if column::<&str>(&locked, "currency")? != new.currency {
            fields.push("currency");
        }
        if column::<&str>(&locked, "customer_id")? != new.customer_id {
            fields.push("customer_id");
        }
        if !fields.is_empty() {
            tx.rollback().await?;
            return Ok(Begin::Refused(BeginRefusal::Mismatch { fields }));
        }

        // 5. The state machine decides.
        let state = OrderState::from_stored(column(&locked, "state")?)?;
        if let Err(refusal) = may_start_attempt(state) {
            let refusal = match refusal {
                StartRefusal::AlreadyPaid => BeginRefusal::AlreadyPaid,
                StartRefusal::InManualReview => BeginRefusal::InManualReview,
                StartRefusal::Refunded => BeginRefusal::Refunded,
                StartRefusal::InProgress => {
                    let holder = tx
                        .prepare_cached(
                            "SELECT number, operator_id, started_at FROM attempts \
                             WHERE order_id = $1 \
                             ORDER BY (outcome = 'IN_FLIGHT') DESC, number DESC LIMIT 1",
                        )
                        .await?;
                    let Some(row) = tx.query_opt(&holder, &[&new.order_id]).await? else {
                        return Err(StoreError::Corrupt(format!(
                            "order {} awaits confirmation without any attempt",
                            new.order_id
                        )));
                    };
                    BeginRefusal::InProgress {
                        attempt: column(&row, "number")?,
                        operator_id: column(&row, "operator_id")?,
                        started_at: column(&row, "started_at")?,
                    }
                }
            };
            tx.rollback().await?;
            return Ok(Begin::Refused(refusal));
        }

        // 6. Take the order: bump the fence, count the attempt, lock the state, reserve the event.
        let take = tx
            .prepare_cached(&format!(
                "UPDATE orders o SET fence = o.fence + 1, attempt_count = o.attempt_count + 1, \
                 state = $2, last_sequence = o.last_sequence + 1, updated_at = now() \
                 WHERE o.order_id = $1 RETURNING o.attempt_count, {ORDER_COLUMNS}"
            ))
            .await?;
        let taken = tx
            .query_one(
                &take,
                &[&new.order_id, &OrderState::AwaitingConfirmation.as_str()],
            )
            .await?;
        let mut order = order_from_row(&taken)?;
        let number: i32 = column(&taken, "attempt_count")?;
        let key_number = u32::try_from(number)
            .map_err(|_| StoreError::Corrupt(format!("attempt number {number}")))?;
        // Known only now (the order's count decides it).
        tracing::Span::current().record("attempt", number);

        // 7. The attempt itself, with the gateway keys every replica derives alike.
        let insert_attempt = tx
            .prepare_cached(&format!(
                "INSERT INTO attempts AS a \
                 (order_id, number, fence, operator_id, replica_id, request_key, fingerprint, \
                  payment_method, flow, outcome, gateway_create_key, gateway_confirm_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 RETURNING {ATTEMPT_COLUMNS}"
            ))
            .await?;
        let inserted = tx
            .query_one(
                &insert_attempt,
                &[
                    &new.order_id,
                    &number,
                    &order.fence,
                    &new.operator_id,
                    &new.replica_id,
                    &new.request_key,
                    &new.fingerprint,
                    &new.payment_method,
                    &new.flow.as_str(),
                    &AttemptOutcome::InFlight.as_str(),
                    &IdempotencyKey::create(&new.order_id, key_number).as_str(),
                    &IdempotencyKey::confirm(&new.order_id, key_number).as_str(),
                ],
            )
            .await;
        let attempt = match inserted {
            Ok(row) => attempt_from_row(&row)?,
            Err(error) if is_request_key_violation(&error) => {
                // The same key on another order, committed meanwhile: the caller joins that one.
                tx.rollback().await?;
                return match self
                    .find_request(&new.operator_id, &new.request_key)
                    .await?
                {
                    Some((order_id, attempt, fingerprint)) => Ok(Begin::KeyTaken {
                        order_id,
                        attempt,
                        fingerprint,
                    }),
                    None => Err(StoreError::Other(format!(
                        "request key of operator {} conflicted but is not found",
                        new.operator_id
                    ))),
                };
            }
            Err(error) => return Err(error.into()),
        };

        tx.execute(
            &insert_event,
            &[
                &new.order_id,
                &order.last_sequence,
                &event_for(AttemptOutcome::InFlight).as_str(),
                &order_state_after(AttemptOutcome::InFlight).as_str(),
                &Some(number),
                &new.operator_id,
                &format!("replica {}, flow {}", new.replica_id, new.flow.as_str()),
                &Some(new.amount_minor),
                &Some(new.currency.as_str()),
            ],
        )
        .await?;
        let all_attempts = tx
            .prepare_cached(&format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts a WHERE a.order_id = $1 ORDER BY a.number"
            ))
            .await?;
        order.attempts = tx
            .query(&all_attempts, &[&new.order_id])
            .await?
            .iter()
            .map(attempt_from_row)
            .collect::<Result<_, _>>()?;
        tx.commit().await?;

        tracing::info!(
            order_id = %new.order_id,
            attempt = number,
            fence = order.fence,
            operator_id = %new.operator_id,
            "attempt started"
        );
        Ok(Begin::Started { order, attempt })
    }

    /// Records the gateway's PaymentIntent id on the attempt, if the fence still holds.
    #[tracing::instrument(
        name = "pg.record_intent",
        target = TRACE_ONLY,
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            order_id = %fence.order_id,
            attempt = fence.attempt,
            fence = fence.token,
        )
    )]
    pub async fn record_intent(
        &self,
        fence: &Fence,
        intent_id: &str,
    ) -> Result<Fenced, StoreError> {
        let client = self.client().await?;
        // `FOR SHARE` on the order row serialises this write with any fence bump: a bump committed
        // while this statement waited is re-checked against the newest row and wins.
        let statement = client
            .prepare_cached(
                "WITH o AS (SELECT order_id FROM orders WHERE order_id = $1 AND fence = $3 FOR SHARE) \
                 UPDATE attempts a SET gateway_payment_id = $4 FROM o \
                 WHERE a.order_id = o.order_id AND a.number = $2 AND a.outcome = 'IN_FLIGHT'",
            )
            .await?;
        let updated = client
            .execute(
                &statement,
                &[&fence.order_id, &fence.attempt, &fence.token, &intent_id],
            )
            .await?;
        Ok(fenced(updated, fence, "record_intent"))
    }

    /// Appends `{at, step, message}` to the attempt's error history, if the fence still holds.
    #[tracing::instrument(
        name = "pg.append_error",
        target = TRACE_ONLY,
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            order_id = %fence.order_id,
            attempt = fence.attempt,
            fence = fence.token,
            step = step,
        )
    )]
    pub async fn append_error(
        &self,
        fence: &Fence,
        step: &str,
        message: &str,
    ) -> Result<Fenced, StoreError> {
        let message: String = message.chars().take(MAX_ERROR_MESSAGE).collect();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "WITH o AS (SELECT order_id FROM orders WHERE order_id = $1 AND fence = $3 FOR SHARE) \
                 UPDATE attempts a SET errors = a.errors || {} FROM o \
                 WHERE a.order_id = o.order_id AND a.number = $2 AND a.outcome = 'IN_FLIGHT'",
                history_entry("$4", "$5")
            ))
            .await?;
        let updated = client
            .execute(
                &statement,
                &[
                    &fence.order_id,
                    &fence.attempt,
                    &fence.token,
                    &step,
                    &message,
                ],
            )
            .await?;
        Ok(fenced(updated, fence, "append_error"))
    }

    /// Refreshes the attempt's heartbeat (its holder is alive), if the fence still holds.
    #[tracing::instrument(
        name = "pg.heartbeat",
        target = TRACE_ONLY,
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            order_id = %fence.order_id,
            attempt = fence.attempt,
            fence = fence.token,
        )
    )]
    pub async fn heartbeat(&self, fence: &Fence) -> Result<Fenced, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "WITH o AS (SELECT order_id FROM orders WHERE order_id = $1 AND fence = $3 FOR SHARE) \
                 UPDATE attempts a SET heartbeat_at = now() FROM o \
                 WHERE a.order_id = o.order_id AND a.number = $2 AND a.outcome = 'IN_FLIGHT'",
            )
            .await?;
        let updated = client
            .execute(&statement, &[&fence.order_id, &fence.attempt, &fence.token])
            .await?;
        Ok(fenced(updated, fence, "heartbeat"))
    }

    /// Not before `after` from now may a recovery worker look at this attempt again (and its
    /// heartbeat stops counting as alive from now): fenced.
    #[tracing::instrument(
        name = "pg.schedule_next_check",
        target = TRACE_ONLY,
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            order_id = %fence.order_id,
            attempt = fence.attempt,
            fence = fence.token,
        )
    )]
    pub async fn schedule_next_check(
        &self,
        fence: &Fence,
        after: std::time::Duration,
    ) -> Result<Fenced, StoreError> {
        let millis = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "WITH o AS (SELECT order_id FROM orders WHERE order_id = $1 AND fence = $3 FOR SHARE) \
                 UPDATE attempts a SET next_check_at = now() + $4::bigint * interval '1 millisecond', \
                 heartbeat_at = '-infinity' FROM o \
                 WHERE a.order_id = o.order_id AND a.number = $2 AND a.outcome = 'IN_FLIGHT'",
            )
            .await?;
        let updated = client
            .execute(
                &statement,
                &[&fence.order_id, &fence.attempt, &fence.token, &millis],
            )
            .await?;
        Ok(fenced(updated, fence, "schedule_next_check"))
    }

    /// Takes over up to `limit` stranded attempts, in ONE short transaction: in-flight attempts
    /// whose heartbeat is older than `stale_after` and whose next check is due, their orders
    /// locked `FOR UPDATE SKIP LOCKED` (another worker's batch, or a live writer, is skipped, not
    /// waited for). Each order's fence is bumped FIRST: from this commit on, the old holder's
    /// fenced writes match no row. The heartbeat is set (the new holder is alive) and the
    /// attempt's recovery runs counted.
    pub async fn claim_stranded(
        &self,
        stale_after: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<Stranded>, StoreError> {
        let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let pick = tx
            .prepare_cached(
                "SELECT a.order_id, a.number FROM attempts a \
                 JOIN orders o ON o.order_id = a.order_id \
                 WHERE a.outcome = 'IN_FLIGHT' \
                   AND a.heartbeat_at < now() - $1::bigint * interval '1 millisecond' \
                   AND (a.next_check_at IS NULL OR a.next_check_at <= now()) \
                   AND o.state = 'AWAITING_CONFIRMATION' \
                 ORDER BY a.heartbeat_at LIMIT $2 \
                 FOR UPDATE OF o, a SKIP LOCKED",
            )
            .await?;
        let picked = tx.query(&pick, &[&stale_ms, &limit]).await?;
        let mut claimed = Vec::with_capacity(picked.len());
        let bump = tx
            .prepare_cached(
                "UPDATE orders SET fence = fence + 1, updated_at = now() \
                 WHERE order_id = $1 RETURNING fence",
            )
            .await?;
        let touch = tx
            .prepare_cached(
                "UPDATE attempts SET heartbeat_at = now(), next_check_at = NULL, \
                 resolution_tries = resolution_tries + 1 \
                 WHERE order_id = $1 AND number = $2 RETURNING resolution_tries",
            )
            .await?;
        for row in &picked {
            let order_id: String = column(row, "order_id")?;
            let number: i32 = column(row, "number")?;
            let token: i64 = column(&tx.query_one(&bump, &[&order_id]).await?, "fence")?;
            let tries: i32 = column(
                &tx.query_one(&touch, &[&order_id, &number]).await?,
                "resolution_tries",
            )?;
            claimed.push((
                Fence {
                    order_id,
                    attempt: number,
                    token,
                },
                tries,
            ));
        }
        tx.commit().await?;

        let mut stranded = Vec::with_capacity(claimed.len());
        for (fence, resolution_tries) in claimed {
            let Some(mut order) = self.get_order(&fence.order_id).await? else {
                continue;
            };
            let Some(index) = order
                .attempts
                .iter()
                .position(|a| a.number == fence.attempt)
            else {
                continue;
            };
            let attempt = order.attempts.swap_remove(index);
            tracing::info!(
                order_id = %fence.order_id,
                attempt = fence.attempt,
                fence = fence.token,
                resolution_tries,
                "took over a stranded attempt (its holder's heartbeat is stale); fence bumped"
            );
            stranded.push(Stranded {
                fence,
                order,
                attempt,
                resolution_tries,
            });
        }
        Ok(stranded)
    }

    /// Appends to the attempt's error history WITHOUT a fence. Only for what a superseded
    /// holder learnt from the gateway (an outcome it may no longer write as state): history is
    /// append-only and never decides anything, and losing it would lose an outcome (§1.3).
    #[tracing::instrument(
        name = "pg.note_unfenced",
        target = TRACE_ONLY,
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            order_id = %order_id,
            attempt = attempt,
            step = step,
        )
    )]
    pub async fn note_unfenced(
        &self,
        order_id: &str,
        attempt: i32,
        step: &str,
        message: &str,
    ) -> Result<bool, StoreError> {
        let message: String = message.chars().take(MAX_ERROR_MESSAGE).collect();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "UPDATE attempts SET errors = errors || {} WHERE order_id = $1 AND number = $2",
                history_entry("$3", "$4")
            ))
            .await?;
        let updated = client
            .execute(&statement, &[&order_id, &attempt, &step, &message])
            .await?;
        Ok(updated > 0)
    }

    /// Records the attempt's outcome, in ONE transaction: the order (locked, fence checked), the
    /// attempt, the order's new state as the state machine says, and the event.
    #[tracing::instrument(
        name = "pg.finish_attempt",
        target = TRACE_ONLY,
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            order_id = %fence.order_id,
            attempt = fence.attempt,
            fence = fence.token,
            outcome = finish.outcome().as_str(),
        )
    )]
    pub async fn finish_attempt(
        &self,
        fence: &Fence,
        finish: &Finish,
        actor: &str,
    ) -> Result<Fenced, StoreError> {
        let outcome = finish.outcome();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;

        let lock = tx
            .prepare_cached(
                "SELECT amount_minor, currency FROM orders \
                 WHERE order_id = $1 AND fence = $2 AND state = $3 FOR UPDATE",
            )
            .await?;
        let Some(order) = tx
            .query_opt(
                &lock,
                &[
                    &fence.order_id,
                    &fence.token,
                    &OrderState::AwaitingConfirmation.as_str(),
                ],
            )
            .await?
        else {
            tx.rollback().await?;
            return Ok(fenced(0, fence, "finish_attempt"));
        };

        let current = tx
            .prepare_cached(
                "SELECT outcome FROM attempts WHERE order_id = $1 AND number = $2 FOR UPDATE",
            )
            .await?;
        let current = match tx
            .query_opt(&current, &[&fence.order_id, &fence.attempt])
            .await?
        {
            Some(row) => Some(AttemptOutcome::from_stored(column(&row, "outcome")?)?),
            None => None,
        };
        if !current.is_some_and(|current| may_finish(current, outcome)) {
            tx.rollback().await?;
            return Ok(fenced(0, fence, "finish_attempt"));
        }

        let (intent_id, decline_code, message) = match finish {
            Finish::Succeeded { intent_id } => (Some(intent_id.as_str()), None, None),
            Finish::Declined {
                intent_id,
                decline_code,
                message,
            } => (
                intent_id.as_deref(),
                Some(decline_code.as_str()),
                Some(message.as_str()),
            ),
            Finish::Cancelled { intent_id, reason } => {
                (intent_id.as_deref(), None, Some(reason.as_str()))
            }
            Finish::Unknown { reason, .. } => (None, None, Some(reason.as_str())),
        };
        let update_attempt = tx
            .prepare_cached(
                "UPDATE attempts SET outcome = $3, \
                 gateway_payment_id = coalesce($4, gateway_payment_id), \
                 decline_code = $5, failure_message = $6, finished_at = now() \
                 WHERE order_id = $1 AND number = $2 AND outcome = 'IN_FLIGHT'",
            )
            .await?;
        let updated = tx
            .execute(
                &update_attempt,
                &[
                    &fence.order_id,
                    &fence.attempt,
                    &outcome.as_str(),
                    &intent_id,
                    &decline_code,
                    &message,
                ],
            )
            .await?;
        if updated != 1 {
            tx.rollback().await?;
            return Ok(fenced(0, fence, "finish_attempt"));
        }

        let state = order_state_after(outcome);
        let update_order = tx
            .prepare_cached(
                "UPDATE orders SET state = $2, last_sequence = last_sequence + 1, \
                 updated_at = now() WHERE order_id = $1 RETURNING last_sequence",
            )
            .await?;
        let row = tx
            .query_one(&update_order, &[&fence.order_id, &state.as_str()])
            .await?;
        let sequence: i64 = column(&row, "last_sequence")?;

        let detail = match finish {
            Finish::Succeeded { intent_id } => format!("charged: {intent_id}"),
            Finish::Declined {
                decline_code,
                message,
                ..
            } => format!("declined ({decline_code}): {message}"),
            Finish::Cancelled { intent_id, reason } => format!(
                "cancelled, nothing charged (intent {}): {reason}",
                intent_id.as_deref().unwrap_or("none")
            ),
            Finish::Unknown { reason, .. } => format!("outcome unknown, manual review: {reason}"),
        };
        let amount: i64 = column(&order, "amount_minor")?;
        let currency: String = column(&order, "currency")?;
        let insert_event = tx.prepare_cached(INSERT_EVENT).await?;
        tx.execute(
            &insert_event,
            &[
                &fence.order_id,
                &sequence,
                &event_for(outcome).as_str(),
                &state.as_str(),
                &Some(fence.attempt),
                &actor,
                &detail,
                &Some(amount),
                &Some(currency),
            ],
        )
        .await?;
        tx.commit().await?;

        tracing::info!(
            order_id = %fence.order_id,
            attempt = fence.attempt,
            outcome = %outcome,
            state = %state,
            "attempt finished"
        );
        Ok(Fenced::Applied)
    }
}

fn key_taken(row: &tokio_postgres::Row) -> Result<Begin, StoreError> {
    Ok(Begin::KeyTaken {
        order_id: column(row, "order_id")?,
        attempt: column(row, "number")?,
        fingerprint: column(row, "fingerprint")?,
    })
}

fn is_request_key_violation(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some(REQUEST_KEY_CONSTRAINT)
    })
}

/// `Applied` if the write touched its row; otherwise `Superseded`, said at warn.
fn fenced(updated: u64, fence: &Fence, operation: &'static str) -> Fenced {
    if updated > 0 {
        Fenced::Applied
    } else {
        tracing::warn!(
            order_id = %fence.order_id,
            attempt = fence.attempt,
            token = fence.token,
            operation,
            "a newer holder exists (or the attempt is no longer in flight); not overwriting"
        );
        Fenced::Superseded
    }
}
