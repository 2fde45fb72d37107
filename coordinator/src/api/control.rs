//! `PausePayments`, `ResumePayments`, `GetPaymentsStatus`: whether new payments are accepted.

use payments_proto::v1 as pb;
use tonic::{Request, Response};

use super::Coordinator;
use crate::error::Error;

impl Coordinator {
    pub(super) async fn pause_payments_impl(
        &self,
        _request: Request<pb::PausePaymentsRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Error> {
        Err(super::not_yet("PausePayments"))
    }

    pub(super) async fn resume_payments_impl(
        &self,
        _request: Request<pb::ResumePaymentsRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Error> {
        Err(super::not_yet("ResumePayments"))
    }

    pub(super) async fn get_payments_status_impl(
        &self,
        _request: Request<pb::GetPaymentsStatusRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Error> {
        Err(super::not_yet("GetPaymentsStatus"))
    }
}
