//! `ListManualReviews` and `ResolveManualReview`: what the coordinator could not decide.

use payments_proto::v1 as pb;
use tonic::{Request, Response};

use super::Coordinator;
use crate::error::Error;

impl Coordinator {
    pub(super) async fn list_manual_reviews_impl(
        &self,
        _request: Request<pb::ListManualReviewsRequest>,
    ) -> Result<Response<pb::ListManualReviewsResponse>, Error> {
        Err(super::not_yet("ListManualReviews"))
    }

    pub(super) async fn resolve_manual_review_impl(
        &self,
        _request: Request<pb::ResolveManualReviewRequest>,
    ) -> Result<Response<pb::Order>, Error> {
        Err(super::not_yet("ResolveManualReview"))
    }
}
