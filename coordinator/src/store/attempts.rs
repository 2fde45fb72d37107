//! Starting attempts and the fenced writes about them.

use gateway_client::{IdempotencyKey, PaymentStep};
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

/// How many times `begin_attempt` takes an order that a refusal read found payable again.
const BEGIN_TRIES: usize = 3;

/// `begin_attempt`'s one statement. On a new order it inserts the order already taken (fence 1,
/// attempt 1, `AWAITING_CONFIRMATION`); on a known one, `ON CONFLICT DO UPDATE ... WHERE` takes
/// the row lock, and only a payable order matching the request is taken (otherwise no row comes
/// back and nothing is written). The attempt and its events come from the taken row, so they are
/// written exactly when it is: `ORDER_CREATED` only for an order this statement created (its first
/// attempt: an order row is only ever created with one). The gateway keys are joined around the
/// attempt number, known only here (`IdempotencyKey::payment_around_attempt`). A caller's key
/// already used makes the attempt's insert fail on its unique constraint: the whole statement
/// writes nothing.
pub(crate) fn begin_sql() -> String {
    format!(
        "WITH taken AS ( \
           INSERT INTO orders AS o \
             (order_id, amount_minor, currency, customer_id, items, state, fence, attempt_count, \
              last_sequence) \
           VALUES ($1, $2, $3, $4, $5, $6, 1, 1, 2) \
           ON CONFLICT (order_id) DO UPDATE SET fence = o.fence + 1, \
             attempt_count = o.attempt_count + 1, state = EXCLUDED.state, \
             last_sequence = o.last_sequence + 1, updated_at = now() \
           WHERE o.state = $7 AND o.amount_minor = EXCLUDED.amount_minor \
             AND o.currency = EXCLUDED.currency AND o.customer_id = EXCLUDED.customer_id \
           RETURNING o.attempt_count, {ORDER_COLUMNS}), \
         started AS ( \
           INSERT INTO attempts AS a \
             (order_id, number, fence, operator_id, replica_id, request_key, fingerprint, \
              payment_method, flow, outcome, gateway_create_key, gateway_confirm_key) \
           SELECT order_id, attempt_count, fence, $8, $9, $10, $11, $12, $13, $14, \
             $15::text || attempt_count::text || $16::text, \
             $15::text || attempt_count::text || $17::text \
           FROM taken \
           RETURNING {ATTEMPT_COLUMNS}), \
         logged AS ( \
           INSERT INTO events \
             (order_id, sequence, kind, state, attempt_number, actor, detail, amount_minor, \
              currency) \
           SELECT order_id, 1, $18::text, $7::text, NULL::integer, $8::text, ''::text, \
             amount_minor, currency FROM taken WHERE attempt_count = 1 \
           UNION ALL \
           SELECT order_id, last_sequence, $19::text, $6::text, attempt_count, $8::text, \
             $20::text, amount_minor, currency FROM taken) \
         SELECT taken.*, started.* FROM taken, started"
    )
}

impl Store {
    /// Starts an attempt in ONE statement (one round trip, its own transaction): creates the
    /// order on first sight or takes it if it is payable and matches the request, bumps its fence,
    /// and commits the attempt `IN_FLIGHT` with its events. Only after this commits may the gateway
    /// be called (CONTRACT §1.4). The order's row lock and fence make this the lock of record:
    /// however many callers get past Redis, only one commits an attempt. When nothing was written,
    /// a second read says why ([`Store::why_not_started`]); a caller's own key, already taken,
    /// is found there too.
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
        let client = self.client().await?;
        let statement = client.prepare_cached(&begin_sql()).await?;
        let (key_before, create_after) =
            IdempotencyKey::payment_around_attempt(&new.order_id, PaymentStep::Create);
        let (_, confirm_after) =
            IdempotencyKey::payment_around_attempt(&new.order_id, PaymentStep::Confirm);
        let detail = format!("replica {}, flow {}", new.replica_id, new.flow.as_str());
        // A refusal read a moment after a failed take can find the order payable again (its
        // attempt finished in between): take it again, a bounded number of times.
        for _ in 0..BEGIN_TRIES {
            let taken = client
                .query_opt(
                    &statement,
                    &[
                        &new.order_id,
                        &new.amount_minor,
                        &new.currency,
                        &new.customer_id,
                        &Json(&new.items),
                        &OrderState::AwaitingConfirmation.as_str(),
                        &OrderState::Pending.as_str(),
                        &new.operator_id,
                        &new.replica_id,
                        &new.request_key,
                        &new.fingerprint,
                        &new.payment_method,
                        &new.flow.as_str(),
                        &AttemptOutcome::InFlight.as_str(),
                        &key_before,
                        &create_after,
                        &confirm_after,
                        &EventKind::OrderCreated.as_str(),
                        &event_for(AttemptOutcome::InFlight).as_str(),
                        &detail,
                    ],
                )
                .await;
            let why_not = match taken {
                Ok(Some(row)) => {
                    let order = order_from_row(&row)?;
                    let attempt = attempt_from_row(&row)?;
                    // On this statement's own span (traced). Without traces that span is
                    // disabled and `current()` is the caller's, which records the attempt itself.
                    let span = tracing::Span::current();
                    if span.metadata().map(|m| m.name()) == Some("pg.begin_attempt") {
                        span.record("attempt", attempt.number);
                    }
                    tracing::info!(
                        order_id = %new.order_id,
                        attempt = attempt.number,
                        fence = order.fence,
                        operator_id = %new.operator_id,
                        "attempt started"
                    );
                    return Ok(Begin::Started { order, attempt });
                }
                // Not payable, or not this request's order: nothing written.
                Ok(None) => self.why_not_started(&client, new).await?,
                // The caller's key is taken (a concurrent same-key request won, or the key was
                // used on another order): nothing written; joined or refused below.
                Err(error) if is_request_key_violation(&error) => {
                    self.why_not_started(&client, new).await?
                }
                Err(error) => return Err(error.into()),
            };
            if let Some(answer) = why_not {
                return Ok(answer);
            }
        }
        Err(StoreError::Other(format!(
            "order {} changed under {BEGIN_TRIES} attempts to start a payment",
            new.order_id
        )))
    }

    /// Why `begin_attempt` wrote nothing, in one read: the caller's key already taken (join or
    /// reuse), the order not matching the request, or the state machine's refusal. `None` if the
    /// order is payable now after all (try again).
    async fn why_not_started(
        &self,
        client: &deadpool_postgres::Object,
        new: &NewAttempt,
    ) -> Result<Option<Begin>, StoreError> {
        let statement = client
            .prepare_cached(
                "SELECT k.order_id AS key_order_id, k.number AS key_number, \
                        k.fingerprint AS key_fingerprint, \
                        o.amount_minor, o.currency, o.customer_id, o.state, \
                        h.number AS holder_number, h.operator_id AS holder_operator_id, \
                        h.started_at AS holder_started_at \
                 FROM (VALUES (1)) AS one (x) \
                 LEFT JOIN attempts k ON k.operator_id = $2 AND k.request_key = $3 \
                 LEFT JOIN orders o ON o.order_id = $1 \
                 LEFT JOIN LATERAL (SELECT number, operator_id, started_at FROM attempts \
                     WHERE order_id = $1 \
                     ORDER BY (outcome = 'IN_FLIGHT') DESC, number DESC LIMIT 1) h ON true",
            )
            .await?;
        let row = client
            .query_one(
                &statement,
                &[&new.order_id, &new.operator_id, &new.request_key],
            )
            .await?;
        if let Some(order_id) = column::<Option<String>>(&row, "key_order_id")? {
            return Ok(Some(Begin::KeyTaken {
                order_id,
                attempt: column(&row, "key_number")?,
                fingerprint: column(&row, "key_fingerprint")?,
            }));
        }
        let Some(state) = column::<Option<&str>>(&row, "state")? else {
            // No order and no key: a concurrent request with this key rolled back. Try again.
            return Ok(None);
        };
        // The request must describe the recorded order.
        let mut fields = Vec::new();
        if column::<Option<i64>>(&row, "amount_minor")? != Some(new.amount_minor) {
            fields.push("amount");
        }
        if column::<Option<&str>>(&row, "currency")? != Some(new.currency.as_str()) {
            fields.push("currency");
        }
        if column::<Option<&str>>(&row, "customer_id")? != Some(new.customer_id.as_str()) {
            fields.push("customer_id");
        }
        if !fields.is_empty() {
            return Ok(Some(Begin::Refused(BeginRefusal::Mismatch { fields })));
        }
        let refusal = match may_start_attempt(OrderState::from_stored(state)?) {
            Ok(()) => return Ok(None),
            Err(StartRefusal::AlreadyPaid) => BeginRefusal::AlreadyPaid,
            Err(StartRefusal::InManualReview) => BeginRefusal::InManualReview,
            Err(StartRefusal::Refunded) => BeginRefusal::Refunded,
            Err(StartRefusal::InProgress) => {
                let Some(attempt) = column::<Option<i32>>(&row, "holder_number")? else {
                    return Err(StoreError::Corrupt(format!(
                        "order {} awaits confirmation without any attempt",
                        new.order_id
                    )));
                };
                BeginRefusal::InProgress {
                    attempt,
                    operator_id: column(&row, "holder_operator_id")?,
                    started_at: column(&row, "holder_started_at")?,
                }
            }
        };
        Ok(Some(Begin::Refused(refusal)))
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
        if !may_finish(AttemptOutcome::InFlight, outcome) {
            return Err(StoreError::Other(format!(
                "{outcome} is not an outcome an attempt in flight may finish with"
            )));
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
        let state = order_state_after(outcome);

        // One statement, one round trip, its own transaction. `locked` takes the order's row lock
        // only if the fence still holds and the order still awaits this attempt (rechecked on the
        // newest row version once a concurrent writer commits); the attempt is updated only if it
        // is still in flight, and the order and its event only if the attempt was: all or nothing.
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "WITH locked AS ( \
                   SELECT order_id FROM orders \
                   WHERE order_id = $1 AND fence = $2 AND state = $3 FOR UPDATE), \
                 finished AS ( \
                   UPDATE attempts a SET outcome = $5, \
                     gateway_payment_id = coalesce($6, a.gateway_payment_id), \
                     decline_code = $7, failure_message = $8, finished_at = now() \
                   FROM locked \
                   WHERE a.order_id = locked.order_id AND a.number = $4 \
                     AND a.outcome = 'IN_FLIGHT' \
                   RETURNING a.order_id), \
                 moved AS ( \
                   UPDATE orders o SET state = $9, last_sequence = o.last_sequence + 1, \
                     updated_at = now() \
                   FROM finished WHERE o.order_id = finished.order_id \
                   RETURNING o.order_id, o.last_sequence, o.amount_minor, o.currency) \
                 INSERT INTO events \
                   (order_id, sequence, kind, state, attempt_number, actor, detail, amount_minor, \
                    currency) \
                 SELECT order_id, last_sequence, $10, $9, $4, $11, $12, amount_minor, currency \
                 FROM moved",
            )
            .await?;
        let written = client
            .execute(
                &statement,
                &[
                    &fence.order_id,
                    &fence.token,
                    &OrderState::AwaitingConfirmation.as_str(),
                    &fence.attempt,
                    &outcome.as_str(),
                    &intent_id,
                    &decline_code,
                    &message,
                    &state.as_str(),
                    &event_for(outcome).as_str(),
                    &actor,
                    &detail,
                ],
            )
            .await?;
        if written != 1 {
            return Ok(fenced(0, fence, "finish_attempt"));
        }

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
