//! `ProcessPayment`: first come, first served, across replicas.
//!
//! 1. The caller's own earlier request (same idempotency key) is joined before any refusal, so a
//!    caller retrying after a lost answer never gets `PAYMENT_IN_PROGRESS` for its own attempt.
//! 2. A Redis lease refuses concurrent callers at once, naming the holder, without touching
//!    PostgreSQL or the gateway. It is only an early refusal: correctness rests on step 3.
//! 3. One PostgreSQL transaction creates or checks the order, refuses unless it is payable, bumps
//!    the order's fencing token and commits the attempt `IN_FLIGHT` with its event: the lock of
//!    record. Two callers that both got past Redis still cannot both commit an attempt.
//! 4. Only then the gateway call, in a server-owned task (see `attempt.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use payments_proto::v1 as pb;
use tonic::{Request, Response};

use super::{Coordinator, convert, deadline};
use crate::{
    attempt::AttemptJob,
    auth::Caller,
    domain::{AttemptOutcome, PaymentRequest},
    error::Error,
    lease::{Acquire, LeaseHolder},
    store::{Begin, BeginRefusal, Fence, LineItemRecord, NewAttempt},
};

/// Longest a `wait_for_outcome` call waits when the caller set no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

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

        // 1. The caller's own request, in flight or finished: join it.
        if let Some(joined) = self.join_existing(&caller, &req, &fingerprint).await? {
            return self
                .respond(joined, req.wait_for_outcome, wait_until, true)
                .await;
        }

        // 2. The lease: an early, cheap refusal. Redis being down is not a reason to refuse a
        //    payment: PostgreSQL's fence is what guarantees one attempt at a time.
        let holder = LeaseHolder {
            replica: self.replica.clone(),
            operator_id: caller.id.clone(),
            started_at_ms: unix_ms(SystemTime::now()),
            attempt: None,
        };
        let lease = match &self.leases {
            None => None,
            Some(leases) => match leases.acquire(req.order_id.as_str(), holder).await {
                Ok(Acquire::Held(lease)) => Some(lease),
                Ok(Acquire::Busy(holder)) => {
                    return Err(self
                        .in_progress_from_lease(req.order_id.as_str(), holder)
                        .await);
                }
                Err(error) => {
                    tracing::warn!(%error, "Redis unavailable for the lease; relying on PostgreSQL alone");
                    None
                }
            },
        };

        // 3. The attempt, committed before any gateway call.
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
            fingerprint: fingerprint.clone(),
            flow: self.runner.gateway.flow(),
        };
        let begun = self.store.begin_attempt(&new).await;
        let (order, attempt) = match begun {
            Ok(Begin::Started { order, attempt }) => (order, attempt),
            other => {
                if let (Some(leases), Some(lease)) = (&self.leases, &lease) {
                    if let Err(error) = leases.release(lease).await {
                        tracing::warn!(%error, "could not release the lease after a refusal");
                    }
                }
                return match other {
                    Ok(Begin::Started { .. }) => Err(Error::Internal("unreachable".into())),
                    Ok(Begin::Refused(refusal)) => Err(refused(req.order_id.as_str(), refusal)),
                    Ok(Begin::KeyTaken {
                        order_id,
                        attempt,
                        fingerprint: theirs,
                    }) => {
                        // A concurrent request with the same key committed first: join it.
                        if theirs != fingerprint || order_id != req.order_id.as_str() {
                            return Err(Error::IdempotencyKeyReused);
                        }
                        self.respond((order_id, attempt), req.wait_for_outcome, wait_until, true)
                            .await
                    }
                    Err(error) => Err(error.into()),
                };
            }
        };
        tracing::Span::current().record("attempt", attempt.number);
        tracing::info!(
            attempt = attempt.number,
            fence = attempt.fence,
            "attempt committed"
        );

        // 4. The gateway, in a task the server owns: a client that goes away cannot cancel it.
        let mut lease = lease;
        if let (Some(leases), Some(l)) = (&self.leases, lease.as_mut()) {
            // So that refused callers learn which attempt holds the order.
            if let Err(error) = leases.set_attempt(l, attempt.number).await {
                tracing::warn!(%error, "could not note the attempt on the lease");
            }
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
            operator_id: caller.id.clone(),
            lease,
        };
        self.runner.board.open(&order.order_id, attempt.number);
        let runner = self.runner.clone();
        self.tracker.spawn(runner.run(job));

        self.respond(
            (order.order_id, attempt.number),
            req.wait_for_outcome,
            wait_until,
            false,
        )
        .await
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

    /// Answers with the order and the attempt, after waiting for its outcome if asked.
    async fn respond(
        &self,
        (order_id, attempt): (String, i32),
        wait: bool,
        wait_until: tokio::time::Instant,
        joined_existing: bool,
    ) -> Result<Response<pb::ProcessPaymentResponse>, Error> {
        if wait {
            if let Some(mut outcome) = self.runner.board.subscribe(&order_id, attempt) {
                // Woken by the task itself: no polling. On the deadline, answer with what is.
                let _ =
                    tokio::time::timeout_at(wait_until, outcome.wait_for(Option::is_some)).await;
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

    /// `PAYMENT_IN_PROGRESS` naming the lease's holder. A holder still committing has no
    /// attempt number on its lease yet: then PostgreSQL's in-flight attempt names it, if any.
    async fn in_progress_from_lease(&self, order_id: &str, holder: LeaseHolder) -> Error {
        let started_at =
            UNIX_EPOCH + Duration::from_millis(u64::try_from(holder.started_at_ms).unwrap_or(0));
        let mut attempt = holder.attempt;
        if attempt.is_none() {
            if let Ok(Some(order)) = self.store.get_order(order_id).await {
                attempt = order
                    .attempts
                    .iter()
                    .rev()
                    .find(|a| a.outcome == AttemptOutcome::InFlight)
                    .map(|a| a.number);
            }
        }
        Error::PaymentInProgress {
            attempt: attempt.unwrap_or(0),
            operator_id: holder.operator_id,
            started_at,
        }
    }
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
