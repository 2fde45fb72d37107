//! `WatchOrder` and `WatchEvents`: replay from PostgreSQL after the caller's cursor, then live
//! events from this replica's fan-out, with no gap and no duplicate at the seam (see `feed/`).
//! Reading never deletes; a consumer that remembers its cursor never misses or repeats an event.

use payments_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::{Coordinator, EventStream, payments::caller};
use crate::{
    domain::{OrderState, parse_order_id},
    error::Error,
    feed::FeedEvent,
};

/// The order states after which `until_terminal` ends a stream.
fn is_terminal(state: OrderState) -> bool {
    matches!(
        state,
        OrderState::Paid | OrderState::Refunded | OrderState::ManualReview
    )
}

pub(super) fn to_proto(e: FeedEvent) -> pb::OrderEvent {
    pb::OrderEvent {
        global_sequence: e.global_sequence,
        order_id: e.order_id,
        sequence: e.sequence,
        kind: pb::EventKind::from(e.kind).into(),
        state: pb::OrderState::from(e.state).into(),
        attempt_number: e.attempt_number.unwrap_or(0),
        actor: e.actor,
        occurred_at: Some(prost_types::Timestamp::from(e.occurred_at)),
        detail: e.detail,
        amount: match (e.amount_minor, e.currency) {
            (Some(amount_minor), Some(currency)) => Some(pb::Money {
                amount_minor,
                currency,
            }),
            _ => None,
        },
    }
}

impl Coordinator {
    pub(super) async fn watch_order_impl(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<EventStream>, Error> {
        let _caller = caller(&request)?;
        let req = request.into_inner();
        let order_id = parse_order_id("order_id", &req.order_id).map_err(Error::InvalidRequest)?;
        if req.after_sequence < 0 {
            return Err(Error::InvalidRequest(crate::domain::Violations::single(
                "after_sequence",
                "must be 0 or more",
            )));
        }
        let order = self
            .store
            .get_order(order_id.as_str())
            .await?
            .ok_or_else(|| Error::OrderNotFound {
                order_id: order_id.as_str().to_owned(),
            })?;
        // Already terminal and nothing left to replay: the stream is complete as it is.
        if req.until_terminal
            && is_terminal(order.state)
            && order.last_sequence <= req.after_sequence
        {
            return Ok(Response::new(Box::pin(tokio_stream::empty())));
        }
        let until_terminal = req.until_terminal;
        let events = self
            .feed
            .order_events_after(order_id.as_str().to_owned(), req.after_sequence);
        let stream = take_through(events, until_terminal);
        Ok(Response::new(Box::pin(stream)))
    }

    pub(super) async fn watch_events_impl(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Error> {
        let _caller = caller(&request)?;
        let (after, last) = (
            request.get_ref().after_global_sequence,
            request.get_ref().last,
        );
        if after < 0 {
            return Err(Error::InvalidRequest(crate::domain::Violations::single(
                "after_global_sequence",
                "must be 0 or more",
            )));
        }
        if last < 0 {
            return Err(Error::InvalidRequest(crate::domain::Violations::single(
                "last",
                "must be 0 (no limit) or more",
            )));
        }
        // The newest `last` only: start below the head PostgreSQL has stamped now (this
        // replica's own published head may lag it), never before the caller's cursor.
        let after = if last > 0 {
            let head = self.store.feed_head().await?;
            after.max(head.saturating_sub(last))
        } else {
            after
        };
        let stream = take_through(self.feed.events_after(after), false);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Maps feed items to API items and ends the stream right after a terminal event (with
/// `until_terminal`), or after the first error (the store is gone: `UNAVAILABLE`; the consumer
/// resumes from its last cursor and loses nothing). Ending does not wait for another event.
fn take_through<S>(
    events: S,
    until_terminal: bool,
) -> impl tokio_stream::Stream<Item = Result<pb::OrderEvent, Status>> + Send + 'static
where
    S: tokio_stream::Stream<Item = Result<FeedEvent, crate::store::StoreError>> + Send + 'static,
{
    let events = Box::pin(events);
    futures_util::stream::unfold((events, false), move |(mut events, done)| async move {
        if done {
            return None;
        }
        match events.next().await? {
            Ok(event) => {
                let done = until_terminal && is_terminal(event.state);
                Some((Ok(to_proto(event)), (events, done)))
            }
            Err(error) => Some((Err(Status::from(Error::from(error))), (events, true))),
        }
    })
}
