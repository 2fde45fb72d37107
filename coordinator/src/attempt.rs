//! Driving one committed attempt through the gateway, in a server-owned task.
//!
//! By the time this runs, the attempt is `IN_FLIGHT` in PostgreSQL with its fencing token
//! (CONTRACT §1.4: intent before effect). Every write from here on is fenced: a write that
//! matches no row means a newer holder took the attempt over, and this task stops without
//! overwriting anything (§1.5). The task is owned by the server's `TaskTracker`, never by the
//! caller's request, so a client that disconnects cannot cancel a gateway call half-way (§1.7).

use std::{
    cell::Cell,
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use gateway_client::{CreateIntent, Flow, IdempotencyKey, Outcome, PaymentIntent, Reply};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    domain::{
        AttemptOutcome,
        breaker::{CallHealth, ProbeRound},
    },
    journal::{Hold, Journal, Written, describe, write_outcome},
    lease::{Lease, Leases},
    recovery::{Case, Learnt},
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
    /// Admitted as a probe of the half-open circuit breaker (in this round): its charging calls
    /// decide whether the breaker closes, if the round is still the current one when it reports.
    pub probe: Option<ProbeRound>,
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
    /// The gateway client, every call timed into the metrics.
    pub gateway: crate::metrics::TimedGateway,
    pub board: OutcomeBoard,
    pub replica: String,
    pub recovery: crate::recovery::RecoveryConfig,
    /// Where outcomes PostgreSQL cannot take go (JOURNAL_DIR).
    pub journal: Journal,
    /// Cancelled when shutdown starts: tasks holding a journaled outcome let go of it, and
    /// `ProcessPayment` starts no new attempt.
    pub stopping: tokio_util::sync::CancellationToken,
    /// The end of the shutdown's grace period (SHUTDOWN_GRACE_MS), for every attempt task.
    pub drain: Drain,
    /// Whether new payments are accepted (admin pause, gateway circuit breaker); every charging
    /// call of an attempt is recorded in its window.
    pub gate: crate::control::PaymentsGate,
    pub metrics: crate::metrics::Metrics,
}

/// How a graceful shutdown bounds the attempt tasks of this replica.
///
/// Until `give_up` is cancelled (SHUTDOWN_GRACE_MS after SIGTERM) attempts run on, so that most
/// reach their outcome here. Then every task still inside [`Runner::with_heartbeat`] stops where
/// it is, without guessing an outcome, and hands its attempt over: a `shutdown` line in its
/// history, its heartbeat set in the past (fenced) so that another replica's recovery worker
/// claims it at its next sweep rather than a LEASE_TTL later, and (attempt tasks) its Redis lease
/// released. Stopping mid gateway call is safe for the same reason a crash is: the recovery
/// worker resolves the call with the same idempotency keys (look-up, same-key replay, cancel).
/// The one place never interrupted is [`Runner::persist`]: an outcome already learnt is written,
/// or journaled, before the task lets go.
#[derive(Clone)]
pub struct Drain {
    give_up: tokio_util::sync::CancellationToken,
    /// How many tasks are inside `with_heartbeat` now, plus attempts admitted on their way there.
    running: Arc<watch::Sender<usize>>,
    handed_over: Arc<AtomicUsize>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            give_up: tokio_util::sync::CancellationToken::new(),
            running: Arc::new(watch::Sender::new(0)),
            handed_over: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Drain {
    /// The grace period is over: tasks still running hand their attempts over.
    pub fn give_up(&self) {
        self.give_up.cancel();
    }

    /// Whether the grace period is over.
    pub(crate) fn is_given_up(&self) -> bool {
        self.give_up.is_cancelled()
    }

    /// Returns once the grace period is over.
    pub(crate) async fn given_up(&self) {
        self.give_up.cancelled().await;
    }

    /// Counts a new attempt from the moment its request is admitted, before its lease and
    /// commit, unless the shutdown has begun (`stopping`: `None`, refuse it). Checked under the
    /// count's own lock, so a shutdown that reads the count after cancelling `stopping` either
    /// counts this attempt or it was refused. (Counting it only once its task drives the gateway
    /// missed attempts committed just before SIGTERM: the drain could end, closing watch
    /// streams, before their outcomes.)
    pub(crate) fn admit(&self, stopping: &tokio_util::sync::CancellationToken) -> Option<Running> {
        let open = self.running.send_if_modified(|n| {
            let open = !stopping.is_cancelled();
            if open {
                *n += 1;
            }
            open
        });
        open.then(|| Running(Arc::clone(&self.running)))
    }

    /// Attempt tasks (new or recovered) running now.
    pub fn running(&self) -> usize {
        *self.running.borrow()
    }

    /// Returns once no attempt task is running (at once if none is).
    pub async fn idle(&self) {
        let mut running = self.running.subscribe();
        // The sender lives in `self`: this cannot fail while we wait.
        let _ = running.wait_for(|n| *n == 0).await;
    }

    /// Attempts handed over to the recovery workers by this shutdown.
    pub fn handed_over(&self) -> usize {
        self.handed_over.load(Ordering::Relaxed)
    }
}

/// Counts one running task in [`Drain::running`] while it lives.
pub(crate) struct Running(Arc<watch::Sender<usize>>);

impl Running {
    pub(crate) fn enter(drain: &Drain) -> Self {
        drain.running.send_modify(|n| *n += 1);
        Self(Arc::clone(&drain.running))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

tokio::task_local! {
    /// Whether the task is inside [`Runner::persist`] (set only within `with_heartbeat`): the
    /// shutdown's give-up waits for it instead of dropping an outcome already learnt.
    static PERSISTING: Cell<bool>;
}

/// Marks the current task as persisting an outcome while it lives.
struct Persisting(bool);

impl Persisting {
    fn enter() -> Self {
        // Outside `with_heartbeat` there is nothing to mark (no give-up can interrupt the task).
        Self(PERSISTING.try_with(|p| p.replace(true)).unwrap_or(false))
    }
}

impl Drop for Persisting {
    fn drop(&mut self) {
        let _ = PERSISTING.try_with(|p| p.set(self.0));
    }
}

impl Runner {
    /// Runs the attempt to an outcome (or to a recorded unknown), keeping its lease alive
    /// meanwhile, then releases the lease and wakes waiters. `admitted` ([`Drain::admit`]) counts
    /// it in the drain until `with_heartbeat` counts it (never zero in between).
    pub(crate) async fn run(self, job: AttemptJob, admitted: Running) {
        let span = tracing::info_span!(
            "payment.attempt",
            order_id = %job.fence.order_id,
            attempt = job.fence.attempt,
            replica = %self.replica,
            fence = job.fence.token,
        );
        async move {
            let _in_flight = self.metrics.attempt_in_flight();
            let drive = self.with_heartbeat(&job.fence, async {
                drop(admitted);
                self.drive(&job).await
            });
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
        // The idempotency window runs from the first charging call.
        let sent = std::time::SystemTime::now();
        let created = self.gateway.create_intent(&request, &create_key).await;
        let last = flow == Flow::OneShot || !matches!(created.outcome, Outcome::Succeeded(_));
        self.observe(job, "create", &created.outcome, last);
        match flow {
            Flow::OneShot => self.settle("create", job, created, None, sent).await,
            Flow::TwoPhase => {
                let intent = match created.outcome {
                    Outcome::Succeeded(intent) => intent,
                    _ => return self.settle("create", job, created, None, sent).await,
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
                self.observe(job, "confirm", &confirmed.outcome, true);
                self.settle("confirm", job, confirmed, Some(intent.id.clone()), sent)
                    .await
            }
        }
    }

    /// Counts a charging call towards the gateway circuit breaker (`control.rs`); a probe
    /// reports its first failed call, or its `last` call when every call was healthy. Only the
    /// attempt's own create and confirm count, not the resolution calls that follow an unknown
    /// outcome (one incident would count many times). Never waits.
    fn observe<T>(&self, job: &AttemptJob, step: &str, outcome: &Outcome<T>, last: bool) {
        let health = crate::domain::breaker::classify(outcome);
        self.gate.record(health);
        if let Some(round) = job.probe {
            match health {
                CallHealth::Failed => {
                    self.gate
                        .probe_finished(round, false, format!("{step}: {}", outcome.kind()))
                }
                CallHealth::Healthy if last => {
                    self.gate
                        .probe_finished(round, true, format!("{step}: {}", outcome.kind()))
                }
                CallHealth::Healthy => {}
            }
        }
    }

    /// Turns a charging call's reply into the attempt's outcome, persisted with a fenced write;
    /// an outcome it does not establish is recorded, then resolved (`recovery.rs`), never guessed.
    async fn settle(
        &self,
        step: &str,
        job: &AttemptJob,
        reply: Reply<PaymentIntent>,
        persisted_intent: Option<String>,
        first_sent_at: std::time::SystemTime,
    ) -> Option<AttemptOutcome> {
        let (learnt, said) = crate::recovery::interpret(step, &reply, true);
        let (known, intent_id) = match learnt {
            Learnt::Final(finish) => {
                return self
                    .persist(&job.fence, &finish, &job.operator_id, step)
                    .await;
            }
            Learnt::Known(known, intent_id) => (known, intent_id),
        };
        // Not established: the reason goes into the attempt's history first (fenced: a newer
        // holder's attempt is not ours to resolve).
        tracing::warn!(step, %said, "outcome not established; resolving");
        match self.store.append_error(&job.fence, step, &said).await {
            Ok(Fenced::Applied) => {}
            Ok(Fenced::Superseded) => return None,
            Err(error) => {
                // The attempt stays in flight; the recovery worker takes it over once our
                // heartbeat is stale.
                tracing::error!(%error, %said, "could not record the attempt's error");
                return None;
            }
        }
        let mut intent = intent_id;
        if let Some(id) = &intent {
            // An intent the gateway named (e.g. `processing` after a one_shot create): persist its
            // id so that any later resolution can look it up.
            match self.store.record_intent(&job.fence, id).await {
                Ok(Fenced::Applied) => {}
                Ok(Fenced::Superseded) => return None,
                Err(error) => {
                    tracing::error!(%error, intent_id = %id, "could not persist the intent id");
                    return None;
                }
            }
        } else {
            intent = persisted_intent;
        }
        let case = Case {
            fence: job.fence.clone(),
            flow: self.gateway.flow(),
            intent_id: intent,
            known,
            started_at: first_sent_at,
            amount_minor: job.amount_minor,
            currency: job.currency.clone(),
            payment_method: job.payment_method.clone(),
            actor: job.operator_id.clone(),
            prior_runs: 0,
        };
        self.resolve(case).await
    }

    /// Persists an outcome with its event in one fenced transaction, retrying a brief store
    /// failure (the write is idempotent thanks to its fence); the outcome is never dropped
    /// silently (§1.3). If PostgreSQL still cannot take it after `FINISH_RETRY_FOR`, the outcome
    /// is journaled locally (fsync'd, `journal.rs`) and this task keeps holding the attempt:
    /// it goes on retrying while the caller's task keeps the heartbeat and the Redis lease
    /// alive, so no recovery worker takes the attempt over when the database returns and the
    /// order stays AWAITING_CONFIRMATION meanwhile. At shutdown (or if PostgreSQL answers with an
    /// error rather than being unreachable) it lets go: the drainer writes the entry later, at
    /// the latest at the next start. `None` if a newer holder owns the order (what we learnt goes
    /// to the history), or the outcome is left to the journal.
    pub(crate) async fn persist(
        &self,
        fence: &Fence,
        finish: &Finish,
        actor: &str,
        step: &str,
    ) -> Option<AttemptOutcome> {
        // Set before the first await: a shutdown's give-up never drops an outcome learnt.
        let _persisting = Persisting::enter();
        let outcome = finish.outcome();
        let what = describe(finish);
        let mut delay = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + FINISH_RETRY_FOR;
        // Set once the outcome is in the journal: this task then owns the entry.
        let mut journaled: Option<Hold> = None;
        loop {
            match write_outcome(&self.store, fence, finish, actor, step).await {
                Ok(written) => {
                    if written == Written::Applied {
                        self.metrics.payment_finished(finish, step);
                        if let Some(feed) = &self.feed {
                            feed.nudge();
                        }
                    }
                    if let Some(hold) = journaled.take() {
                        self.unjournal(fence).await;
                        drop(hold);
                        tracing::info!(
                            outcome = outcome.as_str(),
                            ?written,
                            "journaled outcome written to PostgreSQL by its attempt's task"
                        );
                    }
                    return match written {
                        Written::Applied | Written::AlreadyRecorded => Some(outcome),
                        Written::Superseded => None,
                    };
                }
                Err(error) if journaled.is_none() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%error, %what, "could not persist the outcome yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(error) => {
                    if journaled.is_none() {
                        match self.journal_outcome(fence, finish, actor).await {
                            Some(hold) => {
                                tracing::warn!(%error, outcome = outcome.as_str(), %what, journal = %self.journal.path().display(), "PostgreSQL cannot take the outcome: journaled locally; holding the attempt until it is written");
                                journaled = Some(hold);
                            }
                            None => {
                                // Not journaled either: the attempt stays in flight for the
                                // recovery worker, which asks the gateway again; the log
                                // carries everything to find it.
                                tracing::error!(%error, outcome = outcome.as_str(), %what, "could not persist nor journal the attempt's outcome");
                                return None;
                            }
                        }
                    }
                    if !error.is_unavailable() {
                        // PostgreSQL answers but refuses the write: let the drainer retry it
                        // every second (and the recovery worker take the attempt over once
                        // its heartbeat is stale; the drainer then finds it superseded).
                        tracing::error!(%error, outcome = outcome.as_str(), %what, "PostgreSQL refused the outcome; left to the journal's drainer");
                        return None;
                    }
                    tokio::select! {
                        () = self.stopping.cancelled() => {
                            tracing::warn!(outcome = outcome.as_str(), %what, "shutting down with PostgreSQL unreachable: the outcome stays in the journal, drained at the next start");
                            return None;
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Journals an outcome (fsync'd before this returns) and holds its entry.
    async fn journal_outcome(&self, fence: &Fence, finish: &Finish, actor: &str) -> Option<Hold> {
        // Only the drainer can hold it meanwhile (writing an older fence's entry for the same
        // attempt, left by a previous process): it lets go within one write.
        let mut waited = Duration::ZERO;
        let hold = loop {
            if let Some(hold) = self.journal.try_hold(&fence.order_id, fence.attempt) {
                break hold;
            }
            if waited >= Duration::from_secs(10) {
                tracing::error!("the journal entry stays held by another writer");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        };
        let (fence, finish, actor) = (fence.clone(), finish.clone(), actor.to_owned());
        match self
            .journal
            .blocking(move |j| j.record(&fence, &finish, &actor))
            .await
        {
            Ok(()) => Some(hold),
            Err(error) => {
                tracing::error!(%error, "could not journal the outcome");
                None
            }
        }
    }

    /// Removes a written entry from the journal (if that fails, the drainer finds the outcome
    /// already recorded and removes it).
    async fn unjournal(&self, fence: &Fence) {
        let (order_id, attempt) = (fence.order_id.clone(), fence.attempt);
        if let Err(error) = self
            .journal
            .blocking(move |j| j.remove(&order_id, attempt))
            .await
        {
            tracing::error!(%error, "could not remove a written outcome from the journal");
        }
    }

    /// Runs `work` while refreshing the attempt's heartbeat every LEASE_TTL/3 (fenced), so the
    /// recovery workers know its holder is alive. A heartbeat that finds a newer holder stops
    /// beating; the work's own fenced writes then fail and it stops.
    ///
    /// If the shutdown's grace period ends first ([`Drain`]), `work` is dropped where it stands
    /// (unless it is persisting an outcome: then it finishes that) and the attempt is handed to
    /// the recovery workers; the answer is then `T::default()` (for an attempt: `None`, still in
    /// flight).
    pub(crate) async fn with_heartbeat<T: Default>(
        &self,
        fence: &Fence,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let _running = Running::enter(&self.drain);
        let period = (self.recovery.stale_after / 3).max(Duration::from_millis(50));
        let worked = PERSISTING
            .scope(Cell::new(false), async {
                let beat = async {
                    loop {
                        tokio::time::sleep(period).await;
                        match self.store.heartbeat(fence).await {
                            Ok(Fenced::Applied) => {}
                            Ok(Fenced::Superseded) => return,
                            Err(error) => tracing::warn!(%error, "could not refresh the heartbeat"),
                        }
                    }
                };
                tokio::pin!(work);
                let beating = async {
                    tokio::select! {
                        out = &mut work => out,
                        () = beat => (&mut work).await,
                    }
                };
                tokio::pin!(beating);
                tokio::select! {
                    // Give-up first: an attempt that reaches here after the grace period (it was
                    // admitted before SIGTERM and its commit was slow) is handed over before it
                    // calls the gateway, not abandoned in the middle of a call.
                    biased;
                    () = self.drain.give_up.cancelled() => {
                        if PERSISTING.with(Cell::get) {
                            // An outcome is being written (or journaled): bounded, and never dropped.
                            Some(beating.await)
                        } else {
                            None
                        }
                    }
                    out = &mut beating => Some(out),
                }
            })
            .await;
        // `work` is dropped by now: a gateway request in progress was abandoned (its connection
        // closed) before the attempt is handed over.
        match worked {
            Some(out) => out,
            None => {
                self.hand_over(fence).await;
                T::default()
            }
        }
    }

    /// Shutdown, grace period over, outcome not known: leaves the attempt to the recovery
    /// workers of the other replicas, saying so in its history. Fenced: an attempt a newer holder
    /// took over (or that has an outcome) is not ours to hand over.
    async fn hand_over(&self, fence: &Fence) {
        let message = format!(
            "replica {} shut down before the outcome was known; left to the recovery worker",
            self.replica
        );
        match self.store.append_error(fence, "shutdown", &message).await {
            Ok(Fenced::Applied) => {}
            Ok(Fenced::Superseded) => return,
            Err(error) => {
                // The heartbeat stops with this task: another replica takes the attempt over
                // once it is LEASE_TTL old, as after a crash.
                tracing::error!(%error, "could not note the hand-over; the attempt is taken over once its heartbeat is stale");
                return;
            }
        }
        // Heartbeat '-infinity' and next check now: `claim_stranded` on any other replica takes
        // the attempt at its next sweep instead of waiting for LEASE_TTL. Fenced like every write.
        match self.store.schedule_next_check(fence, Duration::ZERO).await {
            Ok(Fenced::Applied) => {
                self.drain.handed_over.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .recovery_action(crate::metrics::RecoveryAction::HandedOverAtShutdown);
                tracing::info!("shutdown: attempt left to the recovery worker");
            }
            Ok(Fenced::Superseded) => {}
            Err(error) => {
                tracing::error!(%error, "could not hand the attempt over; it is taken over once its heartbeat is stale");
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
}

/// How long a store failure at the end of an attempt is retried before the outcome is journaled.
const FINISH_RETRY_FOR: Duration = Duration::from_secs(2);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_drain_counts_running_tasks_and_wakes_when_idle() {
        let drain = Drain::default();
        // Idle at once when nothing runs.
        drain.idle().await;
        let first = Running::enter(&drain);
        let second = Running::enter(&drain);
        assert_eq!(drain.running(), 2);
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.idle().await })
        };
        drop(first);
        assert_eq!(drain.running(), 1);
        assert!(!waiter.is_finished());
        drop(second);
        waiter.await.unwrap();
        assert_eq!(drain.running(), 0);
    }

    #[tokio::test]
    async fn an_admitted_payment_counts_until_it_ends_and_none_is_admitted_once_stopping() {
        let drain = Drain::default();
        let stopping = tokio_util::sync::CancellationToken::new();
        let admitted = drain
            .admit(&stopping)
            .expect("admitted before the shutdown");
        assert_eq!(drain.running(), 1);
        stopping.cancel();
        assert!(drain.admit(&stopping).is_none(), "refused once stopping");
        // Still counted after the shutdown began: the drain waits for it.
        assert_eq!(drain.running(), 1);
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.idle().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(admitted);
        waiter.await.unwrap();
        assert_eq!(drain.running(), 0);
    }

    #[tokio::test]
    async fn persisting_is_marked_only_inside_the_heartbeat_scope() {
        // Outside `with_heartbeat`'s scope there is nothing to mark, and nothing fails.
        drop(Persisting::enter());
        PERSISTING
            .scope(Cell::new(false), async {
                assert!(!PERSISTING.with(Cell::get));
                {
                    let _persisting = Persisting::enter();
                    assert!(PERSISTING.with(Cell::get));
                    tokio::task::yield_now().await;
                    assert!(PERSISTING.with(Cell::get));
                }
                assert!(!PERSISTING.with(Cell::get));
            })
            .await;
    }
}
