//! The `payments.v1.PaymentCoordinator` service. One file per RPC group will live here; until
//! the coordinator issue lands, every RPC answers `UNIMPLEMENTED` with a clear message, so
//! generated clients can already connect, and reflection lists the whole API.

use std::pin::Pin;

use payments_proto::v1::{self as pb, payment_coordinator_server::PaymentCoordinator};
use tonic::{Request, Response, Status};

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::OrderEvent, Status>> + Send>>;

/// The service; it will own the store, leases and gateway client handles.
#[derive(Debug, Default, Clone)]
pub struct Coordinator;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented by this coordinator version yet"
    ))
}

#[tonic::async_trait]
impl PaymentCoordinator for Coordinator {
    async fn process_payment(
        &self,
        _request: Request<pb::ProcessPaymentRequest>,
    ) -> Result<Response<pb::ProcessPaymentResponse>, Status> {
        Err(not_yet("ProcessPayment"))
    }

    async fn get_order(
        &self,
        _request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Err(not_yet("GetOrder"))
    }

    type WatchOrderStream = EventStream;

    async fn watch_order(
        &self,
        _request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        Err(not_yet("WatchOrder"))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(not_yet("WatchEvents"))
    }

    async fn refund_payment(
        &self,
        _request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Err(not_yet("RefundPayment"))
    }

    async fn list_manual_reviews(
        &self,
        _request: Request<pb::ListManualReviewsRequest>,
    ) -> Result<Response<pb::ListManualReviewsResponse>, Status> {
        Err(not_yet("ListManualReviews"))
    }

    async fn resolve_manual_review(
        &self,
        _request: Request<pb::ResolveManualReviewRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Err(not_yet("ResolveManualReview"))
    }

    async fn pause_payments(
        &self,
        _request: Request<pb::PausePaymentsRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Status> {
        Err(not_yet("PausePayments"))
    }

    async fn resume_payments(
        &self,
        _request: Request<pb::ResumePaymentsRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Status> {
        Err(not_yet("ResumePayments"))
    }

    async fn get_payments_status(
        &self,
        _request: Request<pb::GetPaymentsStatusRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Status> {
        Err(not_yet("GetPaymentsStatus"))
    }
}
