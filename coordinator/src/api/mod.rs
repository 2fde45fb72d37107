//! The `payments.v1.PaymentCoordinator` service: one file per RPC group. Handlers return
//! `Result<_, Error>`; the conversion to `tonic::Status` happens once, in `error.rs`.

mod control;
mod convert;
mod deadline;
mod orders;
mod payments;
mod refunds;
mod reviews;
mod watch;

use std::pin::Pin;

use payments_proto::v1::{self as pb, payment_coordinator_server::PaymentCoordinator};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::{attempt::Runner, feed::Feed, lease::Leases, store::Store};

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::OrderEvent, Status>> + Send>>;

/// The service: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Coordinator {
    store: Store,
    leases: Option<Leases>,
    feed: Feed,
    runner: Runner,
    /// Owns every attempt task, so shutdown waits for in-flight gateway calls.
    tracker: TaskTracker,
    replica: String,
}

impl Coordinator {
    pub fn new(runner: Runner, feed: Feed, tracker: TaskTracker) -> Self {
        Self {
            feed,
            store: runner.store.clone(),
            leases: runner.leases.clone(),
            replica: runner.replica.clone(),
            runner,
            tracker,
        }
    }
}

#[tonic::async_trait]
impl PaymentCoordinator for Coordinator {
    async fn process_payment(
        &self,
        request: Request<pb::ProcessPaymentRequest>,
    ) -> Result<Response<pb::ProcessPaymentResponse>, Status> {
        Ok(self.process_payment_impl(request).await?)
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Ok(self.get_order_impl(request).await?)
    }

    type WatchOrderStream = EventStream;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        Ok(self.watch_order_impl(request).await?)
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Ok(self.watch_events_impl(request).await?)
    }

    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Ok(self.refund_payment_impl(request).await?)
    }

    async fn list_manual_reviews(
        &self,
        request: Request<pb::ListManualReviewsRequest>,
    ) -> Result<Response<pb::ListManualReviewsResponse>, Status> {
        Ok(self.list_manual_reviews_impl(request).await?)
    }

    async fn resolve_manual_review(
        &self,
        request: Request<pb::ResolveManualReviewRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Ok(self.resolve_manual_review_impl(request).await?)
    }

    async fn pause_payments(
        &self,
        request: Request<pb::PausePaymentsRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Status> {
        Ok(self.pause_payments_impl(request).await?)
    }

    async fn resume_payments(
        &self,
        request: Request<pb::ResumePaymentsRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Status> {
        Ok(self.resume_payments_impl(request).await?)
    }

    async fn get_payments_status(
        &self,
        request: Request<pb::GetPaymentsStatusRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Status> {
        Ok(self.get_payments_status_impl(request).await?)
    }

    async fn get_caller(
        &self,
        request: Request<pb::GetCallerRequest>,
    ) -> Result<Response<pb::Caller>, Status> {
        let caller = payments::caller(&request)?;
        Ok(Response::new(convert::caller(&caller)))
    }
}
