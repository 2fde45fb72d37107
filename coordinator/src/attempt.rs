//! Driving one committed attempt through the gateway, in a server-owned task.
//!
//! By the time this runs, the attempt is `IN_FLIGHT` in PostgreSQL with its fencing token
//! (CONTRACT §1.4: intent before effect). Every write from here on is fenced: a write that
//! matches no row means a newer holder took the attempt over, and this task stops without
//! overwriting anything (§1.5). The task is owned by the server's `TaskTracker`, never by the
//! caller's request, so a client that disconnects cannot cancel a gateway call half-way (§1.7).

use std::{collections::HashMap, sync::Arc, time::Duration};

use gateway_client::{
    CreateIntent, Flow, GatewayClient, IdempotencyKey, IntentStatus, Outcome, PaymentIntent, Reply,
};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    domain::AttemptOutcome,
    lease::{Lease, Leases},
    store::{Fence, Fenced, Finish, Store},
};

/// Everything the task needs about its attempt.
pub struct AttemptJob {
    pub fence: Fence,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: String,
    pub operator_id: String,
    pub lease: Option<Lease>,
}

/// Where one attempt's outcome is announced to callers waiting on this replica
/// (`wait_for_outcome`). Watchers on other replicas read PostgreSQL (and, with the event-stream
/// issue, the order's stream).
#[derive(Default, Clone)]
pub struct OutcomeBoard {
    inner: Arc<std::sync::Mutex<Announcers>>,
}

/// One sender per attempt running here, keyed by (order id, attempt number).
type Announcers = HashMap<(String, i32), watch::Sender<Option<AttemptOutcome>>>;

impl OutcomeBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Announcers> {
        // A poisoned map only means another task panicked while holding it: the map itself
        // is still consistent (single inserts/removes), so keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers an attempt that is about to run here.
    pub fn open(&self, order_id: &str, attempt: i32) {
        let (tx, _rx) = watch::channel(None);
        self.lock().insert((order_id.to_owned(), attempt), tx);
    }

    /// A receiver for an attempt running on this replica, if it still runs.
    pub fn subscribe(
        &self,
        order_id: &str,
        attempt: i32,
    ) -> Option<watch::Receiver<Option<AttemptOutcome>>> {
        self.lock()
            .get(&(order_id.to_owned(), attempt))
            .map(watch::Sender::subscribe)
    }

    /// The task ended: `Some(outcome)` if it persisted one, `None` if the attempt stays in flight
    /// (unknown outcome, superseded). Waiters wake either way and read the current state.
    fn close(&self, order_id: &str, attempt: i32, outcome: Option<AttemptOutcome>) {
        if let Some(tx) = self.lock().remove(&(order_id.to_owned(), attempt)) {
            tx.send_replace(outcome);
        }
    }
}

/// Shared handles the task uses.
#[derive(Clone)]
pub struct Runner {
    pub store: Store,
    /// Nudged after each commit with events, so they are stamped and delivered promptly.
    pub feed: Option<crate::feed::Feed>,
    pub leases: Option<Leases>,
    pub gateway: GatewayClient,
    pub board: OutcomeBoard,
    pub replica: String,
}

impl Runner {
    /// Runs the attempt to an outcome (or to a recorded unknown), keeping its lease alive
    /// meanwhile, then releases the lease and wakes waiters.
    pub async fn run(self, job: AttemptJob) {
        let span = tracing::info_span!(
            "payment.attempt",
            order_id = %job.fence.order_id,
            attempt = job.fence.attempt,
            replica = %self.replica,
            fence = job.fence.token,
        );
        async move {
            let drive = self.drive(&job);
            tokio::pin!(drive);
            let outcome = match (&self.leases, &job.lease) {
                (Some(leases), Some(lease)) => {
                    tokio::select! {
                        outcome = &mut drive => outcome,
                        () = keep_alive(leases, lease) => {
                            // Renewing became impossible; PostgreSQL's fence still guards every
                            // write, so let the same flow run to its end (never restart it).
                            drive.await
                        }
                    }
                }
                _ => drive.await,
            };
            if let (Some(leases), Some(lease)) = (&self.leases, &job.lease) {
                match leases.release(lease).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("the lease had already passed to another holder"),
                    // The lease expires on its own: a failed release only delays the next caller.
                    Err(error) => tracing::warn!(%error, "could not release the lease"),
                }
            }
            self.board
                .close(&job.fence.order_id, job.fence.attempt, outcome);
        }
        .instrument(span)
        .await
    }

    /// The gateway flow. Returns the outcome persisted, or `None` when the attempt stays in
    /// flight (unknown outcome recorded, or a newer holder exists).
    async fn drive(&self, job: &AttemptJob) -> Option<AttemptOutcome> {
        let order_id = job.fence.order_id.as_str();
        let attempt = u32::try_from(job.fence.attempt).unwrap_or(0);
        let create_key = IdempotencyKey::create(order_id, attempt);
        let flow = self.gateway.flow();
        let request = CreateIntent {
            amount_minor: job.amount_minor,
            currency: job.currency.clone(),
            payment_method: job.payment_method.clone(),
            confirm: flow == Flow::OneShot,
            order_id: order_id.to_owned(),
            attempt,
            description: Some(format!("order {order_id}, attempt {attempt}")),
        };
        let created = self.gateway.create_intent(&request, &create_key).await;
        match flow {
            Flow::OneShot => self.settle("create", job, created).await,
            Flow::TwoPhase => {
                let intent = match created.outcome {
                    Outcome::Succeeded(intent) => intent,
                    _ => return self.settle("create", job, created).await,
                };
                // Persist the intent id before confirming: an intent whose id was never
                // persisted was never confirmed, so recovery knows nothing was charged through it.
                match self.store.record_intent(&job.fence, &intent.id).await {
                    Ok(Fenced::Applied) => {}
                    Ok(Fenced::Superseded) => {
                        // Not confirmed, so nothing was charged through it; say where it is.
                        self.note(
                            job,
                            "create",
                            format!(
                                "superseded before confirming; intent {} left unconfirmed",
                                intent.id
                            ),
                        )
                        .await;
                        return None;
                    }
                    Err(error) => {
                        // Without the id recorded we must not confirm: stop here; the intent
                        // stays unconfirmed (nothing charged) for recovery to find by metadata.
                        tracing::error!(%error, intent_id = %intent.id, "could not persist the intent id; not confirming");
                        return None;
                    }
                }
                let confirm_key = IdempotencyKey::confirm(order_id, attempt);
                let confirmed = self.gateway.confirm_intent(&intent.id, &confirm_key).await;
                self.settle("confirm", job, confirmed).await
            }
        }
    }

    /// Turns a charging call's reply into the attempt's outcome, persisted with a fenced write.
    async fn settle(
        &self,
        step: &str,
        job: &AttemptJob,
        reply: Reply<PaymentIntent>,
    ) -> Option<AttemptOutcome> {
        let finish = match reply.outcome {
            Outcome::Succeeded(intent) => match intent.status {
                IntentStatus::Succeeded => Finish::Succeeded {
                    intent_id: intent.id,
                },
                other => {
                    // `processing`, `requires_action`, …: the gateway has not decided yet.
                    return self
                        .unknown(
                            job,
                            step,
                            format!("intent {} is {}", intent.id, other.as_str()),
                        )
                        .await;
                }
            },
            Outcome::Declined {
                decline_code,
                message,
                intent_id,
            } => Finish::Declined {
                intent_id,
                decline_code,
                message,
            },
            Outcome::Unknown { reason, detail } => {
                return self
                    .unknown(job, step, format!("{}: {detail}", reason.as_str()))
                    .await;
            }
            Outcome::RetryLater { after } => {
                return self
                    .unknown(
                        job,
                        step,
                        format!("gateway throttled us beyond our retries (retry after {after:?})"),
                    )
                    .await;
            }
            Outcome::NotSent { detail } => {
                return self
                    .unknown(job, step, format!("gateway unreachable: {detail}"))
                    .await;
            }
            Outcome::Rejected {
                status,
                code,
                message,
                ..
            } => {
                return self
                    .unknown(
                        job,
                        step,
                        format!(
                            "gateway refused the call ({status} {}): {message}",
                            code.as_deref().unwrap_or("-")
                        ),
                    )
                    .await;
            }
        };
        let outcome = finish.outcome();
        let what = describe(&finish);
        // The outcome and its event in one transaction, fenced: a stale holder never
        // overwrites a newer one's state. A brief store failure is retried (the write is
        // idempotent thanks to its fence); the outcome is never dropped silently.
        let mut delay = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + FINISH_RETRY_FOR;
        loop {
            match self
                .store
                .finish_attempt(&job.fence, &finish, &job.operator_id)
                .await
            {
                Ok(Fenced::Applied) => {
                    if let Some(feed) = &self.feed {
                        feed.nudge();
                    }
                    return Some(outcome);
                }
                Ok(Fenced::Superseded) => {
                    // A newer holder owns the order: its state stands. But what the gateway
                    // told us is a fact the newer holder must be able to see (§1.3): keep it in
                    // the attempt's history, append-only.
                    tracing::error!(outcome = outcome.as_str(), %what, "superseded: outcome kept in the attempt's history only");
                    self.note(job, step, format!("superseded holder learnt: {what}"))
                        .await;
                    return None;
                }
                Err(error) if error.is_unavailable() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%error, %what, "could not persist the outcome yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    // The failure-handling issue journals it locally; until then it stays in
                    // flight for recovery, and the log carries everything to find it.
                    tracing::error!(%error, outcome = outcome.as_str(), %what, "could not persist the attempt's outcome");
                    return None;
                }
            }
        }
    }

    /// An unfenced, append-only note in the attempt's history.
    async fn note(&self, job: &AttemptJob, step: &str, message: String) {
        if let Err(error) = self
            .store
            .note_unfenced(&job.fence.order_id, job.fence.attempt, step, &message)
            .await
        {
            tracing::error!(%error, %message, "could not note it in the attempt's history");
        }
    }

    /// Records why the outcome is not known (or not settled) and leaves the attempt in flight:
    /// the order stays `AWAITING_CONFIRMATION` and nobody guesses.
    async fn unknown(
        &self,
        job: &AttemptJob,
        step: &str,
        message: String,
    ) -> Option<AttemptOutcome> {
        tracing::warn!(step, %message, "attempt left in flight: outcome not established");
        match self.store.append_error(&job.fence, step, &message).await {
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "could not record the attempt's error"),
        }
        None
    }
}

/// How long a store failure at the end of an attempt is retried before giving up on it.
const FINISH_RETRY_FOR: Duration = Duration::from_secs(20);

/// The outcome in words, with the intent id, for logs and history.
fn describe(finish: &Finish) -> String {
    match finish {
        Finish::Succeeded { intent_id } => format!("succeeded: {intent_id} charged"),
        Finish::Declined {
            intent_id,
            decline_code,
            message,
        } => format!(
            "declined ({decline_code}): {message}; intent {}",
            intent_id.as_deref().unwrap_or("unknown")
        ),
    }
}

/// Renews the lease every third of its TTL, for as long as it is ours. Returns only when it can
/// no longer be renewed (lost to expiry, or Redis unreachable for a whole TTL).
async fn keep_alive(leases: &Leases, lease: &Lease) {
    let period = leases.ttl() / 3;
    let mut failures_since_success = Duration::ZERO;
    loop {
        tokio::time::sleep(period).await;
        match leases.renew(lease).await {
            Ok(true) => failures_since_success = Duration::ZERO,
            Ok(false) => {
                tracing::warn!(
                    "lease lost before the attempt finished; PostgreSQL's fence still guards its writes"
                );
                return;
            }
            Err(error) => {
                failures_since_success += period;
                tracing::warn!(%error, "could not renew the lease");
                if failures_since_success >= leases.ttl() {
                    return;
                }
            }
        }
    }
}
