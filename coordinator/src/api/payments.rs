//! `ProcessPayment`: first come, first served, across replicas.
//!
//! 1. The caller's own earlier request (same idempotency key) is joined before any refusal, so a
//!    caller retrying after a lost answer never gets `PAYMENT_IN_PROGRESS` for its own attempt.
//!    On the happy path this costs nothing of its own: the attempt's commit finds a taken key
//!    (step 3). Every refusal before that commit looks the key up first.
//! 2. A Redis lease refuses concurrent callers at once, naming the holder, without a database
//!    write or the gateway: a lease taken by another request within the last second is believed;
//!    an older one, or one that may be this caller's own request, is checked against PostgreSQL.
//!    It is only an early refusal: correctness rests on step 3.
//! 3. One PostgreSQL statement creates or takes the order only if it is payable and matches the
//!    request, bumps the order's fencing token and commits the attempt `IN_FLIGHT` with its
//!    events: the lock of record. Two callers that both got past Redis still cannot both commit
//!    an attempt.
//! 4. Only then the gateway call, in a server-owned task (see `attempt.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use payments_proto::v1 as pb;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::{Request, Response};
use tracing::Instrument;

use super::{Coordinator, convert, deadline};
use crate::{
    attempt::{AttemptJob, Running},
    auth::Caller,
    control::Admission,
    domain::{AttemptOutcome, EventKind, OrderState, PaymentRequest},
    error::Error,
    lease::{Acquire, Lease, LeaseHolder},
    store::{Begin, BeginRefusal, Fence, LineItemRecord, NewAttempt},
};

/// Longest a `wait_for_outcome` call waits when the caller set no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How long after it was taken a lease is believed without asking PostgreSQL: long enough for
/// its holder to commit the attempt (normally milliseconds), short enough that a lease that
/// outlived its attempt (a holder that died, a release lost) misleads callers for at most this.
const LEASE_BELIEVED: Duration = Duration::from_secs(1);

impl Coordinator {
    pub(super) async fn process_payment_impl(
        &self,
        request: Request<pb::ProcessPaymentRequest>,
    ) -> Result<Response<pb::ProcessPaymentResponse>, Error> {
        let caller = caller(&request)?;
        let wait_until = deadline::from_metadata(request.metadata()).unwrap_or(DEFAULT_WAIT);
        let wait_until = tokio::time::Instant::now() + deadline::with_margin(wait_until);
        let req = PaymentRequest::parse(request.into_inner()).map_err(Error::InvalidRequest)?;
        self.process(caller, req, wait_until).await
    }

    #[tracing::instrument(
        name = "ProcessPayment",
        skip_all,
        fields(order_id = %req.order_id, operator = %caller.id, replica = %self.replica, attempt)
    )]
    async fn process(
        &self,
        caller: Caller,
        req: PaymentRequest,
        wait_until: tokio::time::Instant,
    ) -> Result<Response<pb::ProcessPaymentResponse>, Error> {
        let fingerprint = req.fingerprint();

        // A replica shutting down starts no new attempt (its grace period is for the attempts
        // already in flight), but the caller's own attempt is still joined. Admitted, the attempt
        // counts in the shutdown's drain from here on.
        let Some(admitted) = self.runner.drain.admit(&self.runner.stopping) else {
            return self
                .join_or_refuse(caller, req, &fingerprint, wait_until, Error::ShuttingDown)
                .await;
        };

        // Paused (by an admin, or the gateway circuit breaker is open)? Refused before the
        // lease: nothing written, no gateway call. Decided from this replica's cached copy of
        // the shared state, without a database round trip unless the breaker wants a probe.
        // Attempts already in flight are not affected.
        let admission = match self.runner.gate.admit().await {
            Ok(admission) => admission,
            Err(refusal) => {
                drop(admitted);
                return self
                    .join_or_refuse(caller, req, &fingerprint, wait_until, refusal)
                    .await;
            }
        };

        // 2.–4. Lease, attempt commit and gateway flow run in a task the server owns, so a
        //    caller whose deadline passes or who disconnects can never leave a committed attempt
        //    without anyone to drive it (§1.7): the handler only waits for the task's answer.
        let new = NewAttempt {
            order_id: req.order_id.as_str().to_owned(),
            amount_minor: req.amount.amount_minor(),
            currency: req.amount.currency().as_str().to_owned(),
            customer_id: req.customer_id.as_str().to_owned(),
            items: req
                .items
                .iter()
                .map(|i| LineItemRecord {
                    product_id: i.product_id().as_str().to_owned(),
                    quantity: i.quantity(),
                    unit_amount_minor: i.unit_amount_minor(),
                })
                .collect(),
            payment_method: req.payment_method.as_str().to_owned(),
            operator_id: caller.id.clone(),
            replica_id: self.replica.clone(),
            request_key: req.idempotency_key.as_str().to_owned(),
            fingerprint,
            flow: self.runner.gateway.flow(),
        };
        let (answer, answered) = oneshot::channel();
        let this = self.clone();
        self.tracker.spawn(
            this.start_attempt(new, admission, answer, admitted)
                .instrument(tracing::Span::current()),
        );
        match answered.await {
            Ok(Ok(Started::New(at))) => {
                self.respond(at, req.wait_for_outcome, wait_until, false)
                    .await
            }
            Ok(Ok(Started::Joined(at))) => {
                self.respond(at, req.wait_for_outcome, wait_until, true)
                    .await
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Internal(
                "the attempt task ended without an answer".into(),
            )),
        }
    }

    /// Lease, attempt commit, then the gateway flow, all in one server-owned task. `answer`
    /// receives the caller's answer as soon as it is known (refused, joined, or committed); the
    /// task goes on to drive a committed attempt whether anyone still listens or not.
    async fn start_attempt(
        self,
        new: NewAttempt,
        admission: Admission,
        answer: oneshot::Sender<Result<Started, Error>>,
        admitted: Running,
    ) {
        let lease = match self.take_lease(&new).await {
            Ok(lease) => lease,
            Err(decided) => {
                let _ = answer.send(decided);
                return;
            }
        };
        let release = async |lease: &Option<Lease>| {
            if let (Some(leases), Some(lease)) = (&self.leases, lease)
                && let Err(error) = leases.release(lease).await
            {
                tracing::warn!(%error, "could not release the lease after a refusal");
            }
        };

        // Admitted before SIGTERM but still here after the grace period (a slow lease): commit
        // nothing, the caller retries on another replica.
        if self.runner.drain.is_given_up() {
            release(&lease).await;
            let _ = answer.send(Err(Error::ShuttingDown));
            return;
        }
        // The attempt, committed before any gateway call: PostgreSQL is the lock of record.
        let (order, attempt) = match self.store.begin_attempt(&new).await {
            Ok(Begin::Started { order, attempt }) => (order, attempt),
            Ok(Begin::Refused(refusal)) => {
                // Another attempt committed first (its caller got past a lease that was not yet
                // ours, e.g. after it expired) or the order is not payable: let go at once. Kept,
                // this lease would be believed by later callers, naming this refused caller as
                // the holder.
                release(&lease).await;
                let _ = answer.send(Err(refused(&new.order_id, refusal)));
                return;
            }
            Ok(Begin::KeyTaken {
                order_id,
                attempt,
                fingerprint,
            }) => {
                // A concurrent request with the same key committed first: join it.
                release(&lease).await;
                let joined = if fingerprint == new.fingerprint && order_id == new.order_id {
                    Ok(Started::Joined((order_id, attempt)))
                } else {
                    Err(Error::IdempotencyKeyReused)
                };
                let _ = answer.send(joined);
                return;
            }
            Err(error) => {
                // If the commit itself lost its connection, the attempt may exist: the caller's
                // retry with the same key joins it, and recovery drives it (failure-handling issue).
                release(&lease).await;
                let _ = answer.send(Err(error.into()));
                return;
            }
        };
        self.runner.metrics.payment_started(new.flow);
        if let Some(feed) = &self.runner.feed {
            feed.nudge();
        }
        tracing::Span::current().record("attempt", attempt.number);
        // The store logged "attempt started" at info as it committed.
        tracing::debug!(
            attempt = attempt.number,
            fence = attempt.fence,
            "attempt committed"
        );

        let mut lease = lease;
        if let (Some(leases), Some(l)) = (&self.leases, lease.as_mut())
            // So that refused callers learn which attempt holds the order.
            && let Err(error) = leases.set_attempt(l, attempt.number).await
        {
            tracing::warn!(%error, "could not note the attempt on the lease");
        }
        let job = AttemptJob {
            fence: Fence {
                order_id: order.order_id.clone(),
                attempt: attempt.number,
                token: attempt.fence,
            },
            amount_minor: order.amount_minor,
            currency: order.currency.clone(),
            payment_method: attempt.payment_method.clone(),
            operator_id: new.operator_id.clone(),
            lease,
            // A probe refused before its commit (lease busy, order paid…) never reports: the
            // breaker lets a new round of probes through after the next cool-down.
            probe: admission.probe_round(),
        };
        // Open before answering, so a waiting caller always finds the board entry.
        self.runner.board.open(&order.order_id, attempt.number);
        let _ = answer.send(Ok(Started::New((order.order_id.clone(), attempt.number))));
        self.runner.clone().run(job, admitted).await;
    }

    /// The Redis lease: an early, cheap refusal. `Ok(None)`: go on without one (Redis is
    /// unreachable, or the lease is held but PostgreSQL says the order is payable: its holder is
    /// still committing or its lease outlived its attempt; either way PostgreSQL decides).
    /// `Err(answer)`: the caller's answer is already known.
    async fn take_lease(&self, new: &NewAttempt) -> Result<Option<Lease>, Result<Started, Error>> {
        let Some(leases) = &self.leases else {
            return Ok(None);
        };
        let holder = LeaseHolder {
            replica: self.replica.clone(),
            operator_id: new.operator_id.clone(),
            started_at_ms: unix_ms(SystemTime::now()),
            attempt: None,
            request_key: Some(new.request_key.clone()),
        };
        let busy = match leases.acquire(&new.order_id, holder).await {
            Ok(Acquire::Held(lease)) => return Ok(Some(lease)),
            Ok(Acquire::Busy(holder)) => holder,
            Err(error) => {
                // Redis being down is no reason to refuse a payment: PostgreSQL's fence is what
                // guarantees one attempt at a time.
                tracing::warn!(%error, "Redis unavailable for the lease; relying on PostgreSQL alone");
                return Ok(None);
            }
        };
        // The caller's own request with this key (in flight, or finished earlier) is joined
        // before any refusal.
        match self
            .store
            .find_request(&new.operator_id, &new.request_key)
            .await
        {
            Ok(Some((order_id, attempt, fingerprint))) => {
                return Err(
                    if fingerprint == new.fingerprint && order_id == new.order_id {
                        Ok(Started::Joined((order_id, attempt)))
                    } else {
                        Err(Error::IdempotencyKeyReused)
                    },
                );
            }
            Ok(None) => {}
            Err(error) => return Err(Err(error.into())),
        }
        // A lease taken a moment ago by somebody else's request is believed: its holder is
        // committing (or has just committed) its attempt, and the refusal costs no further read,
        // which keeps a crowd racing for one order cheap. An older lease may have outlived its
        // attempt (a holder that died, a release lost), and one that may be this caller's own
        // concurrent request must be joined, not refused: PostgreSQL decides those.
        let age = Duration::from_millis(
            u64::try_from(unix_ms(SystemTime::now()).saturating_sub(busy.started_at_ms))
                .unwrap_or(0),
        );
        let maybe_own = busy.operator_id == new.operator_id
            && busy
                .request_key
                .as_deref()
                .is_none_or(|key| key == new.request_key);
        if !maybe_own && age < LEASE_BELIEVED {
            return Err(Err(Error::PaymentInProgress {
                attempt: busy.attempt.unwrap_or(0),
                operator_id: busy.operator_id,
                started_at: UNIX_EPOCH
                    + Duration::from_millis(u64::try_from(busy.started_at_ms).unwrap_or(0)),
            }));
        }
        // Refuse with what PostgreSQL, the lock of record, says about the order.
        let order = match self.store.get_order(&new.order_id).await {
            Ok(order) => order,
            Err(error) => return Err(Err(error.into())),
        };
        let Some(order) = order else { return Ok(None) };
        // This caller's own request may have committed (or even finished) since it was looked
        // up: joining it comes before any refusal.
        if let Some(own) = order
            .attempts
            .iter()
            .find(|a| a.operator_id == new.operator_id && a.request_key == new.request_key)
        {
            return Err(if own.fingerprint == new.fingerprint {
                Ok(Started::Joined((order.order_id.clone(), own.number)))
            } else {
                Err(Error::IdempotencyKeyReused)
            });
        }
        let order_id = order.order_id.clone();
        match order.state {
            OrderState::AwaitingConfirmation => {
                let in_flight = order
                    .attempts
                    .iter()
                    .rev()
                    .find(|a| a.outcome == AttemptOutcome::InFlight);
                Err(Err(match in_flight {
                    Some(a) => Error::PaymentInProgress {
                        attempt: a.number,
                        operator_id: a.operator_id.clone(),
                        started_at: a.started_at,
                    },
                    None => Error::PaymentInProgress {
                        attempt: busy.attempt.unwrap_or(0),
                        operator_id: busy.operator_id,
                        started_at: UNIX_EPOCH
                            + Duration::from_millis(u64::try_from(busy.started_at_ms).unwrap_or(0)),
                    },
                }))
            }
            OrderState::Paid => Err(Err(Error::AlreadyPaid { order_id })),
            OrderState::Refunded => Err(Err(Error::Refunded { order_id })),
            OrderState::ManualReview => Err(Err(Error::InManualReview { order_id })),
            OrderState::Pending => Ok(None),
        }
    }

    /// Refuses with `refusal`, unless the caller's own earlier request with this key exists: then
    /// it is joined (or `IDEMPOTENCY_KEY_REUSED`), as if nothing stood in the way.
    async fn join_or_refuse(
        &self,
        caller: Caller,
        req: PaymentRequest,
        fingerprint: &str,
        wait_until: tokio::time::Instant,
        refusal: Error,
    ) -> Result<Response<pb::ProcessPaymentResponse>, Error> {
        match self.join_existing(&caller, &req, fingerprint).await? {
            Some(joined) => {
                self.respond(joined, req.wait_for_outcome, wait_until, true)
                    .await
            }
            None => Err(refusal),
        }
    }

    /// The caller's earlier request with this key, if any: `Some((order_id, attempt))` to join,
    /// or `IDEMPOTENCY_KEY_REUSED` when the key came with another request.
    async fn join_existing(
        &self,
        caller: &Caller,
        req: &PaymentRequest,
        fingerprint: &str,
    ) -> Result<Option<(String, i32)>, Error> {
        let found = self
            .store
            .find_request(&caller.id, req.idempotency_key.as_str())
            .await?;
        match found {
            None => Ok(None),
            Some((order_id, attempt, theirs)) => {
                if theirs == fingerprint && order_id == req.order_id.as_str() {
                    Ok(Some((order_id, attempt)))
                } else {
                    Err(Error::IdempotencyKeyReused)
                }
            }
        }
    }

    /// Waits until the attempt is no longer in flight, or the deadline: follows the order's
    /// events on the feed (replayed from the table, then live), so no polling.
    async fn wait_in_store(&self, order_id: &str, attempt: i32, wait_until: tokio::time::Instant) {
        let events = self.feed.order_events_after(order_id.to_owned(), 0);
        let finished = async {
            tokio::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(e)
                        if e.attempt_number == Some(attempt)
                            && e.kind != EventKind::AttemptStarted =>
                    {
                        return;
                    }
                    Ok(_) => {}
                    // The answer below reports what the store says (or its error).
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout_at(wait_until, finished).await;
    }

    /// Answers with the order and the attempt, after waiting for its outcome if asked.
    async fn respond(
        &self,
        (order_id, attempt): (String, i32),
        wait: bool,
        wait_until: tokio::time::Instant,
        joined_existing: bool,
    ) -> Result<Response<pb::ProcessPaymentResponse>, Error> {
        if wait {
            match self.runner.board.subscribe(&order_id, attempt) {
                Some(mut outcome) => {
                    // Woken by the task itself: no polling. On the deadline, answer with what is.
                    let _ = tokio::time::timeout_at(wait_until, outcome.wait_for(Option::is_some))
                        .await;
                }
                // The attempt runs on another replica (a join, or after a restart): follow
                // PostgreSQL until it has an outcome. Joins are rare; the first caller never
                // takes this path.
                None => self.wait_in_store(&order_id, attempt, wait_until).await,
            }
        }
        let order = self.store.get_order(&order_id).await?.ok_or_else(|| {
            Error::Internal(format!("order {order_id} vanished after its attempt"))
        })?;
        let attempt = order
            .attempts
            .iter()
            .find(|a| a.number == attempt)
            .map(convert::attempt)
            .ok_or_else(|| Error::Internal(format!("attempt {attempt} of {order_id} vanished")))?;
        Ok(Response::new(pb::ProcessPaymentResponse {
            order: Some(convert::order(&order)),
            attempt: Some(attempt),
            joined_existing,
        }))
    }
}

/// What the attempt task tells the waiting handler.
enum Started {
    /// A new attempt was committed: (order id, attempt number).
    New((String, i32)),
    /// The caller's own earlier request with this key.
    Joined((String, i32)),
}

fn refused(order_id: &str, refusal: BeginRefusal) -> Error {
    let order_id = order_id.to_owned();
    match refusal {
        BeginRefusal::Mismatch { fields } => Error::OrderMismatch { order_id, fields },
        BeginRefusal::AlreadyPaid => Error::AlreadyPaid { order_id },
        BeginRefusal::InManualReview => Error::InManualReview { order_id },
        BeginRefusal::Refunded => Error::Refunded { order_id },
        BeginRefusal::InProgress {
            attempt,
            operator_id,
            started_at,
        } => Error::PaymentInProgress {
            attempt,
            operator_id,
            started_at,
        },
    }
}

pub(super) fn caller<T>(request: &Request<T>) -> Result<Caller, Error> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(Error::Unauthenticated("no authenticated caller"))
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
