//! `RefundPayment`: the "undo" of a paid order, through the gateway, idempotently.
//!
//! 1. The caller's own earlier request (same idempotency key, same request) is answered with that
//!    refund's result: one key, one gateway refund, whatever the retries.
//! 2. One PostgreSQL transaction checks the order (paid, and never more than what remains) and
//!    commits the refund `IN_FLIGHT` before the gateway is called.
//! 3. The gateway call runs in a server-owned task (a caller that goes away never cuts it short);
//!    the caller waits for its outcome until its deadline. Its success is the `REFUNDED` event
//!    downstream services consume to undo their own effects.

use std::time::{Duration, SystemTime};

use payments_proto::v1 as pb;
use tokio::sync::oneshot;
use tonic::{Request, Response};
use tracing::Instrument;

use super::{Coordinator, convert, deadline, payments::caller};
use crate::domain::machine::RefundRefusal;
use crate::domain::operations::RefundRequest;
use crate::domain::{OrderState, RefundOutcome};
use crate::error::Error;
use crate::refunding::RefundJob;
use crate::store::{BeginRefund, NewRefund};

/// Longest a refund call waits for the gateway when the caller set no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

impl Coordinator {
    pub(super) async fn refund_payment_impl(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::Order>, Error> {
        let caller = caller(&request)?;
        let wait = deadline::from_metadata(request.metadata()).unwrap_or(DEFAULT_WAIT);
        let wait_until = tokio::time::Instant::now() + deadline::with_margin(wait);
        let req = RefundRequest::parse(request.into_inner())?;
        // A replica shutting down starts no new refund (its grace period is for what is in
        // flight); a caller's retry with its own key is still answered below.
        self.refund(&caller.id, req, wait_until).await
    }

    #[tracing::instrument(
        name = "RefundPayment",
        skip_all,
        fields(order_id = %req.order_id, requested_by = %by, replica = %self.replica, refund)
    )]
    async fn refund(
        &self,
        by: &str,
        req: RefundRequest,
        wait_until: tokio::time::Instant,
    ) -> Result<Response<pb::Order>, Error> {
        let order_id = req.order_id.as_str().to_owned();
        let fingerprint = req.fingerprint();
        if let Some((theirs_order, number, theirs)) = self
            .store
            .find_refund_request(by, req.idempotency_key.as_str())
            .await?
        {
            if theirs != fingerprint || theirs_order != order_id {
                return Err(Error::IdempotencyKeyReused);
            }
            return self.refund_answer(&order_id, number).await;
        }
        // Counted in the shutdown's drain from here on (or refused if it has begun), so a
        // refund committed just before SIGTERM is waited for like one already at the gateway.
        let Some(admitted) = self.runner.drain.admit(&self.runner.stopping) else {
            return Err(Error::ShuttingDown);
        };
        let new = NewRefund {
            order_id: order_id.clone(),
            amount_minor: req.amount_minor,
            currency: req.currency.map(|c| c.as_str().to_owned()),
            reason: req.reason.clone(),
            requested_by: by.to_owned(),
            request_key: req.idempotency_key.as_str().to_owned(),
            fingerprint,
            replica_id: self.replica.clone(),
        };
        let number = match self.store.begin_refund(&new).await? {
            BeginRefund::Started {
                fence,
                amount_minor,
                currency: _,
                gateway_payment_id,
            } => {
                let number = fence.number;
                tracing::Span::current().record("refund", number);
                let job = RefundJob {
                    fence,
                    amount_minor,
                    gateway_payment_id,
                    requested_at: SystemTime::now(),
                    prior_runs: 0,
                };
                let (done, finished) = oneshot::channel();
                let runner = self.runner.clone();
                self.tracker.spawn(
                    async move {
                        let outcome = runner.run_refund(job).await;
                        // Let go only once the refund's own count (inside) has ended too.
                        drop(admitted);
                        let _ = done.send(outcome);
                    }
                    .instrument(tracing::Span::current()),
                );
                // On the deadline, answer with the refund in flight: it runs on regardless.
                let _: Result<Result<Option<RefundOutcome>, _>, _> =
                    tokio::time::timeout_at(wait_until, finished).await;
                number
            }
            BeginRefund::Existing { number, .. } => number,
            BeginRefund::KeyReused => return Err(Error::IdempotencyKeyReused),
            BeginRefund::NotFound => return Err(Error::OrderNotFound { order_id }),
            BeginRefund::CurrencyMismatch { .. } => {
                return Err(Error::OrderMismatch {
                    order_id,
                    fields: vec!["currency"],
                });
            }
            BeginRefund::Refused(RefundRefusal::NotPaid(OrderState::ManualReview)) => {
                return Err(Error::InManualReview { order_id });
            }
            BeginRefund::Refused(RefundRefusal::NotPaid(state)) => {
                return Err(Error::NotPaid { order_id, state });
            }
            BeginRefund::Refused(RefundRefusal::ExceedsPaid { remaining }) => {
                let currency = match self.store.get_order(&order_id).await? {
                    Some(order) => order.currency,
                    None => String::new(),
                };
                return Err(Error::RefundExceedsPaid {
                    order_id,
                    remaining,
                    currency,
                });
            }
            BeginRefund::InProgress {
                number,
                requested_by,
                requested_at,
                in_review,
            } => {
                return Err(Error::RefundInProgress {
                    order_id,
                    number,
                    requested_by,
                    requested_at,
                    in_review,
                });
            }
            BeginRefund::NoCharge => {
                return Err(Error::Internal(format!(
                    "order {order_id} is paid but no charge id is recorded"
                )));
            }
        };
        self.refund_answer(&order_id, number).await
    }

    /// The order with its refunds; a refund the gateway refused is a `REFUND_FAILED` refusal
    /// (same answer for every retry with the same key).
    async fn refund_answer(
        &self,
        order_id: &str,
        number: i32,
    ) -> Result<Response<pb::Order>, Error> {
        let order = self.store.get_order(order_id).await?.ok_or_else(|| {
            Error::Internal(format!("order {order_id} vanished after its refund"))
        })?;
        if let Some(refund) = order.refunds.iter().find(|r| r.number == number)
            && refund.outcome == RefundOutcome::Failed
        {
            return Err(Error::RefundFailed {
                order_id: order_id.to_owned(),
                number,
                message: refund.failure_message.clone().unwrap_or_default(),
            });
        }
        Ok(Response::new(convert::order(&order)))
    }
}
