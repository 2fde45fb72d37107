//! `RefundPayment`: the "undo" of a paid order, through the gateway, idempotently.

use payments_proto::v1 as pb;
use tonic::{Request, Response};

use super::Coordinator;
use crate::error::Error;

impl Coordinator {
    pub(super) async fn refund_payment_impl(
        &self,
        _request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::Order>, Error> {
        Err(super::not_yet("RefundPayment"))
    }
}
