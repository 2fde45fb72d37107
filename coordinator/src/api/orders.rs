//! `GetOrder`: the order's current state and every attempt.

use payments_proto::v1 as pb;
use tonic::{Request, Response};

use super::{Coordinator, convert, payments::caller};
use crate::{domain::parse_order_id, error::Error};

impl Coordinator {
    pub(super) async fn get_order_impl(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Error> {
        let _caller = caller(&request)?;
        let order_id = parse_order_id("order_id", &request.get_ref().order_id)
            .map_err(Error::InvalidRequest)?;
        let order = self
            .store
            .get_order(order_id.as_str())
            .await?
            .ok_or_else(|| Error::OrderNotFound {
                order_id: order_id.as_str().to_owned(),
            })?;
        Ok(Response::new(convert::order(&order)))
    }
}
