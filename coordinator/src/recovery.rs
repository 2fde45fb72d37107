//! Resolving unknown outcomes, inline and after a crash.
//!
//! `Runner::resolve` executes the pure decisions of `domain::resolution` until the attempt has an
//! outcome, or the run's budget is spent (then it hands the attempt to the recovery worker with a
//! `next_check_at`), or nothing can establish the outcome (attempt UNKNOWN, order MANUAL_REVIEW).
//! Every decision is logged and appended to the attempt's history (fenced), so an operator reads
//! what was tried and why.
//!
//! `RecoveryWorker` runs on every replica: at start-up and then every sweep it takes over, in one
//! short transaction, the in-flight attempts whose holder's heartbeat is older than LEASE_TTL
//! (`Store::claim_stranded` bumps the order's fence first, so a holder that was only paused can
//! no longer write), and resolves each in its own task through the same path.

use std::time::{Duration, SystemTime};

use gateway_client::{
    CreateIntent, Flow, IdempotencyKey, IntentStatus, Outcome, PaymentIntent, Reply, UnknownReason,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    attempt::Runner,
    domain::{
        AttemptOutcome,
        resolution::{Action, Known, Situation, decide, spacing},
    },
    store::{Fence, Fenced, Finish, OrderRecord, Stranded},
};

/// Bounds and pace of resolution (`RECOVERY_*` settings).
#[derive(Clone, Copy, Debug)]
pub struct RecoveryConfig {
    /// Gateway actions one run may take before handing the attempt over (spaced 0.5 s, 1 s, …).
    pub actions_per_run: u32,
    /// Runs (the inline one, then the recovery worker's) before the attempt goes to manual review.
    pub max_runs: u32,
    /// How often the worker sweeps (and once at start-up).
    pub sweep_every: Duration,
    /// A heartbeat older than this means the holder is gone (LEASE_TTL).
    pub stale_after: Duration,
    /// How many attempts one sweep takes over at most.
    pub batch: i64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            actions_per_run: 5,
            max_runs: 6,
            sweep_every: Duration::from_secs(5),
            stale_after: Duration::from_secs(10),
            batch: 32,
        }
    }
}

/// One attempt whose outcome is being resolved.
#[derive(Clone, Debug)]
pub struct Case {
    pub fence: Fence,
    pub flow: Flow,
    pub intent_id: Option<String>,
    pub known: Known,
    pub started_at: SystemTime,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: String,
    /// Who the events are recorded as: the operator inline, `recovery:{replica}` in the worker.
    pub actor: String,
    /// Runs before this one (0 inline).
    pub prior_runs: u32,
}

/// What a gateway answer establishes.
pub enum Learnt {
    Final(Finish),
    Known(Known, Option<String>),
}

/// Interprets a charging/lookup/cancel call's answer. `first`: the attempt's own first call
/// (a 429 or an unreachable gateway then proves the step did nothing), else a resolution call
/// (they only mean "look again later").
pub fn interpret(step: &str, reply: &Reply<PaymentIntent>, first: bool) -> (Learnt, String) {
    let replayed = if reply.replayed { " (replayed)" } else { "" };
    match &reply.outcome {
        Outcome::Succeeded(intent) => {
            let said = format!(
                "{step}{replayed}: intent {} is {}",
                intent.id, intent.status
            );
            let learnt = match &intent.status {
                IntentStatus::Succeeded => Learnt::Final(Finish::Succeeded {
                    intent_id: intent.id.clone(),
                }),
                IntentStatus::RequiresPaymentMethod => Learnt::Final(Finish::Declined {
                    intent_id: Some(intent.id.clone()),
                    decline_code: intent.decline_code().unwrap_or("declined").to_owned(),
                    message: intent
                        .last_payment_error
                        .as_ref()
                        .and_then(|e| e.message.clone())
                        .unwrap_or_else(|| "the payment method was declined".to_owned()),
                }),
                IntentStatus::Canceled => Learnt::Final(Finish::Cancelled {
                    intent_id: Some(intent.id.clone()),
                    reason: format!("{step}: the intent is canceled at the gateway"),
                }),
                IntentStatus::RequiresConfirmation => {
                    Learnt::Known(Known::AwaitsConfirmation, Some(intent.id.clone()))
                }
                _ => Learnt::Known(Known::Undecided, Some(intent.id.clone())),
            };
            (learnt, said)
        }
        Outcome::Declined {
            decline_code,
            message,
            intent_id,
        } => (
            Learnt::Final(Finish::Declined {
                intent_id: intent_id.clone(),
                decline_code: decline_code.clone(),
                message: message.clone(),
            }),
            format!("{step}{replayed}: declined ({decline_code})"),
        ),
        Outcome::Unknown { reason, detail } => {
            let said = format!("{step}: outcome unknown ({}): {detail}", reason.as_str());
            let known = if first {
                Known::InDoubt
            } else if *reason == UnknownReason::Conflict {
                // 409: the same key's first request still runs at the gateway.
                Known::Busy {
                    after: Duration::from_millis(500),
                }
            } else {
                Known::Busy {
                    after: Duration::ZERO,
                }
            };
            (Learnt::Known(known, None), said)
        }
        Outcome::RetryLater { after } => (
            Learnt::Known(
                if first {
                    Known::NotDone
                } else {
                    Known::Busy { after: *after }
                },
                None,
            ),
            format!("{step}: gateway throttled us beyond our retries (retry after {after:?})"),
        ),
        Outcome::NotSent { detail } => (
            Learnt::Known(
                if first {
                    Known::NotDone
                } else {
                    Known::Busy {
                        after: Duration::ZERO,
                    }
                },
                None,
            ),
            format!("{step}: gateway unreachable, request not sent: {detail}"),
        ),
        Outcome::Rejected {
            status,
            code,
            message,
            ..
        } => {
            let said = format!(
                "{step}: gateway refused the call ({status} {}): {message}",
                code.as_deref().unwrap_or("-")
            );
            // A refused create did nothing (its intent, if any, is unknown to us); a refused
            // confirm or cancel may be a sign of an earlier effect
            // (`payment_intent_unexpected_state`): look again.
            let known = if step.contains("create") {
                Known::NotDone
            } else {
                Known::InDoubt
            };
            (Learnt::Known(known, None), said)
        }
    }
}

impl Runner {
    /// Resolves `case` to an outcome (persisted, fenced) or hands it to the recovery worker.
    /// `None`: still in flight (handed over, or a newer holder exists).
    pub async fn resolve(&self, mut case: Case) -> Option<AttemptOutcome> {
        let config = self.recovery;
        let mut actions = 0_u32;
        loop {
            let total = case.prior_runs * config.actions_per_run + actions;
            let out_of_runs = case.prior_runs + 1 >= config.max_runs;
            if actions >= config.actions_per_run && !out_of_runs {
                let after = spacing(total);
                let note = format!(
                    "outcome not established after {actions} actions; handed to the recovery \
                     worker, next check in {after:?}"
                );
                tracing::warn!(%note, "recovery");
                self.metrics
                    .recovery_action(crate::metrics::RecoveryAction::Deferred);
                if self.history(&case.fence, "recovery", &note).await {
                    let _ = self.store.schedule_next_check(&case.fence, after).await;
                }
                return None;
            }
            let situation = Situation {
                flow: case.flow,
                capabilities: *self.gateway.capabilities(),
                intent_id: case.intent_id.clone(),
                known: case.known.clone(),
                first_sent_at: case.started_at,
                now: SystemTime::now(),
                tries: total,
                run_tries: actions,
                max_tries: config.max_runs * config.actions_per_run,
            };
            let action = decide(&situation);
            tracing::info!(?action, known = ?case.known, intent_id = ?case.intent_id, tries = total, "recovery decision");
            // Its span, for the trace: held until the action is carried out (this turn of the
            // loop), so it lasts as long as the action, beside the calls the action makes.
            let _decision = tracing::info_span!(
                target: crate::telemetry::TRACE_ONLY,
                "recovery.decision",
                order_id = %case.fence.order_id,
                attempt = case.fence.attempt,
                replica = %self.replica,
                action = ?action,
                known = ?case.known,
                intent_id = ?case.intent_id,
                tries = total,
            );
            self.metrics
                .recovery_action(crate::metrics::RecoveryAction::Decided((&action).into()));
            let (step, reply) = match &action {
                Action::Wait(after) => {
                    if !self
                        .history(
                            &case.fence,
                            "recovery",
                            &format!("waiting {after:?} before looking again"),
                        )
                        .await
                    {
                        return None;
                    }
                    tokio::time::sleep(*after).await;
                    actions += 1;
                    // Nothing is known until we look again: the most careful assumption.
                    case.known = Known::InDoubt;
                    continue;
                }
                Action::NothingCharged(reason) => {
                    let finish = Finish::Cancelled {
                        intent_id: case.intent_id.clone(),
                        reason: reason.clone(),
                    };
                    if !self.history(&case.fence, "recovery", reason).await {
                        return None;
                    }
                    return self
                        .persist(&case.fence, &finish, &case.actor, "recovery")
                        .await;
                }
                Action::ManualReview(cause, reason) => {
                    if !self
                        .history(&case.fence, "recovery", &format!("manual review: {reason}"))
                        .await
                    {
                        return None;
                    }
                    let reason = self.review_detail(&case, reason).await;
                    return self
                        .persist(
                            &case.fence,
                            &Finish::Unknown {
                                cause: *cause,
                                reason,
                            },
                            &case.actor,
                            "recovery",
                        )
                        .await;
                }
                Action::Lookup(id) => {
                    if !self
                        .history(&case.fence, "lookup", &format!("looking intent {id} up"))
                        .await
                    {
                        return None;
                    }
                    ("lookup", self.gateway.get_intent(id).await)
                }
                Action::ReplayCreate => {
                    let (order_id, attempt) = key_parts(&case.fence);
                    let key = IdempotencyKey::create(order_id, attempt);
                    if !self
                        .history(
                            &case.fence,
                            "replay",
                            &format!("replaying the create with the same key {key}"),
                        )
                        .await
                    {
                        return None;
                    }
                    let request = CreateIntent {
                        amount_minor: case.amount_minor,
                        currency: case.currency.clone(),
                        payment_method: case.payment_method.clone(),
                        confirm: case.flow == Flow::OneShot,
                        order_id: order_id.to_owned(),
                        attempt,
                        description: Some(format!("order {order_id}, attempt {attempt}")),
                    };
                    (
                        "replay create",
                        self.gateway.create_intent(&request, &key).await,
                    )
                }
                Action::ReplayConfirm(id) => {
                    let (order_id, attempt) = key_parts(&case.fence);
                    let key = IdempotencyKey::confirm(order_id, attempt);
                    if !self
                        .history(
                            &case.fence,
                            "replay",
                            &format!("confirming intent {id} again with the same key {key}"),
                        )
                        .await
                    {
                        return None;
                    }
                    (
                        "replay confirm",
                        self.gateway.confirm_intent(id, &key).await,
                    )
                }
                Action::Cancel(id) => {
                    let (order_id, attempt) = key_parts(&case.fence);
                    let key = IdempotencyKey::cancel(order_id, attempt);
                    if !self
                        .history(&case.fence, "cancel", &format!("voiding intent {id}"))
                        .await
                    {
                        return None;
                    }
                    ("cancel", self.gateway.cancel_intent(id, &key).await)
                }
            };
            actions += 1;
            let (learnt, said) = interpret(step, &reply, false);
            tracing::info!(step, %said, "recovery learnt");
            let history_step = step.split(' ').next().unwrap_or(step);
            let noted = self.history(&case.fence, history_step, &said).await;
            // A final outcome the gateway just gave is a fact: persist it (journaled if
            // PostgreSQL is down, noted in the history if superseded) even when the history
            // note could not be written; anything else stops here for the recovery worker.
            if !noted && !matches!(learnt, Learnt::Final(_)) {
                return None;
            }
            match learnt {
                Learnt::Final(finish) => {
                    return self
                        .persist(&case.fence, &finish, &case.actor, "recovery")
                        .await;
                }
                Learnt::Known(known, intent_id) => {
                    if let Some(id) = intent_id
                        && case.intent_id.as_deref() != Some(id.as_str())
                    {
                        // Learnt the intent id (a replayed create): persist it before relying on it.
                        match self.store.record_intent(&case.fence, &id).await {
                            Ok(Fenced::Applied) => case.intent_id = Some(id),
                            Ok(Fenced::Superseded) => return None,
                            Err(error) => {
                                tracing::error!(%error, intent_id = %id, "could not persist the intent id; leaving it to the recovery worker");
                                return None;
                            }
                        }
                    }
                    case.known = known;
                }
            }
        }
    }

    /// Appends to the attempt's history, fenced. `false`: a newer holder exists (or the store is
    /// unreachable): stop resolving, someone else will.
    async fn history(&self, fence: &Fence, step: &str, message: &str) -> bool {
        match self.store.append_error(fence, step, message).await {
            Ok(Fenced::Applied) => true,
            Ok(Fenced::Superseded) => {
                tracing::warn!(step, %message, "superseded while resolving: stopping");
                false
            }
            Err(error) => {
                tracing::error!(%error, step, %message, "could not record a resolution step; stopping (the recovery worker takes it over)");
                false
            }
        }
    }

    /// Everything an operator needs, in the MANUAL_REVIEW event's detail (the order and attempt
    /// rows carry the same facts, and the whole error history).
    async fn review_detail(&self, case: &Case, reason: &str) -> String {
        let order = self
            .store
            .get_order(&case.fence.order_id)
            .await
            .ok()
            .flatten();
        review_summary(case, order.as_ref(), reason)
    }
}

/// The manual-review summary: date/time, order, customer, amount, items, gateway keys and ids,
/// the error history.
pub fn review_summary(case: &Case, order: Option<&OrderRecord>, reason: &str) -> String {
    let (order_id, attempt) = key_parts(&case.fence);
    let mut out = format!(
        "{reason}. order {order_id}, attempt {attempt}, started {}, flow {}, amount {} {}, \
         payment method {}, gateway keys {} / {}, intent {}",
        humantime_utc(case.started_at),
        case.flow.as_str(),
        case.amount_minor,
        case.currency,
        case.payment_method,
        IdempotencyKey::create(order_id, attempt),
        IdempotencyKey::confirm(order_id, attempt),
        case.intent_id.as_deref().unwrap_or("unknown"),
    );
    if let Some(order) = order {
        out.push_str(&format!(", customer {}", order.customer_id));
        let items: Vec<String> = order
            .items
            .iter()
            .map(|i| format!("{}×{}@{}", i.quantity, i.product_id, i.unit_amount_minor))
            .collect();
        out.push_str(&format!(", items [{}]", items.join(", ")));
        if let Some(a) = order
            .attempts
            .iter()
            .find(|a| a.number == case.fence.attempt)
        {
            out.push_str("; history:");
            for e in &a.errors {
                out.push_str(&format!(
                    " [{} {}: {}]",
                    humantime_utc(e.at),
                    e.step,
                    e.message
                ));
            }
        }
    }
    out
}

/// RFC 3339, UTC.
fn humantime_utc(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".to_owned())
}

fn key_parts(fence: &Fence) -> (&str, u32) {
    (
        fence.order_id.as_str(),
        u32::try_from(fence.attempt).unwrap_or(0),
    )
}

/// The recovery worker of one replica.
pub struct RecoveryWorker {
    pub runner: Runner,
}

impl RecoveryWorker {
    /// Sweeps at once, then every `sweep_every`, until `stop`; each stranded attempt it takes
    /// over is resolved in its own task on `tracker` (so shutdown waits for it).
    pub async fn run(self, tracker: TaskTracker, stop: CancellationToken) {
        let config = self.runner.recovery;
        tracing::info!(
            every_ms = config.sweep_every.as_millis() as u64,
            stale_after_ms = config.stale_after.as_millis() as u64,
            "recovery worker started"
        );
        loop {
            if stop.is_cancelled() {
                return;
            }
            match self
                .runner
                .store
                .claim_stranded(config.stale_after, config.batch)
                .await
            {
                Ok(claimed) => {
                    for stranded in claimed {
                        let runner = self.runner.clone();
                        tracker.spawn(async move { runner.recover(stranded).await });
                    }
                }
                Err(error) => tracing::warn!(%error, "recovery sweep failed; next sweep retries"),
            }
            // Refunds whose holder is gone: the same sweep, their own table and token.
            match self
                .runner
                .store
                .claim_stranded_refunds(config.stale_after, config.batch, &self.runner.replica)
                .await
            {
                Ok(claimed) => {
                    for stranded in claimed {
                        let runner = self.runner.clone();
                        tracker.spawn(async move { runner.recover_refund(stranded).await });
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "refund recovery sweep failed; next sweep retries")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(config.sweep_every) => {}
            }
        }
    }
}

impl Runner {
    /// Resolves an attempt the worker took over, heartbeating meanwhile.
    async fn recover(self, stranded: Stranded) {
        let Stranded {
            fence,
            order,
            attempt,
            resolution_tries,
        } = stranded;
        let flow = match attempt.flow.parse::<Flow>() {
            Ok(flow) => flow,
            Err(error) => {
                tracing::error!(%error, flow = %attempt.flow, "stranded attempt with an unknown flow");
                return;
            }
        };
        let case = Case {
            fence: fence.clone(),
            flow,
            intent_id: attempt.gateway_payment_id.clone(),
            known: Known::InDoubt,
            started_at: attempt.started_at,
            amount_minor: order.amount_minor,
            currency: order.currency.clone(),
            payment_method: attempt.payment_method.clone(),
            actor: format!("recovery:{}", self.replica),
            prior_runs: u32::try_from(resolution_tries).unwrap_or(1),
        };
        let span = tracing::info_span!(
            "payment.recovery",
            order_id = %fence.order_id,
            attempt = fence.attempt,
            fence = fence.token,
            replica = %self.replica,
        );
        let note = format!(
            "taken over by the recovery worker of {} (holder's heartbeat stale; fence now {}), run {}",
            self.replica, fence.token, resolution_tries
        );
        let runner = self.clone();
        tracing::Instrument::instrument(
            async move {
                tracing::info!(%note, "recovery");
                runner
                    .metrics
                    .recovery_action(crate::metrics::RecoveryAction::TakenOver);
                let _in_flight = runner.metrics.attempt_in_flight();
                if !runner.history(&fence, "recovery", &note).await {
                    return;
                }
                let resolve = runner.resolve(case);
                let outcome = runner.with_heartbeat(&fence, resolve).await;
                tracing::info!(outcome = ?outcome, "recovery run ended");
            },
            span,
        )
        .await
    }
}
