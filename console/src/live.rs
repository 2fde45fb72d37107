//! Server-sent events for the live pages: `/orders/{id}/live` from `WatchOrder` and
//! `/feed/live` from `WatchEvents`, each with the signed-in operator's key and a resuming
//! [`payments_client::Follower`] (a replica going away is bridged). A browser's `EventSource`
//! resumes with `Last-Event-ID` (the event's sequence); the page gives the first `after`.
//! A refusal is sent as one `failure` event in words, then the stream ends. On the order's
//! stream each event is followed by an `attempts` message: the attempts table rendered again
//! from `GetOrder` (outcomes, times, gateway ids and errors change without a new event kind of
//! their own), which the page puts in place of its table.

use std::convert::Infallible;

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::stream::{self, Stream, StreamExt};
use payments_client::Follower;
use payments_proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;

use crate::{
    app::AppState,
    errors,
    pages::order::{attempts_table, holder_text},
    session::Session,
    views,
};

#[derive(Deserialize)]
pub struct After {
    #[serde(default)]
    after: Option<i64>,
}

/// Where to resume: `Last-Event-ID` (a reconnecting `EventSource`) over `?after=`.
fn resume_point(headers: &HeaderMap, query: &After) -> i64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(query.after)
        .unwrap_or(0)
        .max(0)
}

/// The JSON an `order` (or `feed`) SSE message carries: the event and what the page shows.
/// `me` is the signed-in key's id (the holder line says "You" for its own attempts).
pub fn event_json(event: &pb::OrderEvent, me: Option<&str>) -> serde_json::Value {
    let state = event.state();
    let declined =
        (event.kind() == pb::EventKind::AttemptDeclined).then_some(event.detail.as_str());
    let holder =
        match (event.kind(), state) {
            (pb::EventKind::AttemptStarted, pb::OrderState::AwaitingConfirmation) => Some(
                holder_text(me, &event.actor, &views::time(event.occurred_at.as_ref())),
            ),
            (_, pb::OrderState::AwaitingConfirmation) => None,
            _ => Some(String::new()),
        };
    json!({
        "global_sequence": event.global_sequence,
        "order_id": event.order_id,
        "sequence": event.sequence,
        "kind": views::kind_name(event.kind()),
        "state": views::state_name(state),
        "state_text": views::state_text(state, declined),
        "attempt_number": event.attempt_number,
        "actor": event.actor,
        "occurred_at": views::time(event.occurred_at.as_ref()),
        "detail": event.detail,
        "text": views::event_text(event),
        // null: leave the holder line as it is; "": no one holds the order.
        "holder": holder,
    })
}

fn failure(status: &tonic::Status) -> Event {
    Event::default()
        .event("failure")
        .data(errors::describe(status))
}

/// The feed follower's events as `feed` messages, id'd by their global position.
fn feed_events(follower: Follower) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some(follower), move |follower| async move {
        let mut follower = follower?;
        match follower.next().await {
            Ok(Some(event)) => {
                let message = Event::default()
                    .event("feed")
                    .id(event.global_sequence.to_string())
                    .data(event_json(&event, None).to_string());
                Some((Ok(message), Some(follower)))
            }
            Ok(None) => None,
            Err(status) => {
                tracing::info!(code = ?status.code(), "live stream refused");
                Some((Ok(failure(&status)), None))
            }
        }
    })
}

fn refused(status: tonic::Status) -> Response {
    tracing::info!(code = ?status.code(), "live stream refused");
    Sse::new(stream::iter([Ok::<_, Infallible>(failure(&status))])).into_response()
}

/// The order's events as `order` messages, each followed by an `attempts` message with the
/// attempts table as it is after that event (none when the order cannot be read just then: the
/// next event brings it).
fn order_events(
    follower: Follower,
    client: payments_client::WatchClient,
    order_id: String,
    me: Option<String>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some(follower), move |follower| {
        let (client, order_id, me) = (client.clone(), order_id.clone(), me.clone());
        async move {
            let mut follower = follower?;
            match follower.next().await {
                Ok(Some(event)) => {
                    let mut messages = vec![Ok(Event::default()
                        .event("order")
                        .id(event.sequence.to_string())
                        .data(event_json(&event, me.as_deref()).to_string()))];
                    match client
                        .client()
                        .get_order(pb::GetOrderRequest { order_id })
                        .await
                    {
                        Ok(order) => messages.push(Ok(Event::default()
                            .event("attempts")
                            .data(attempts_table(&order.into_inner()).into_string()))),
                        Err(status) => {
                            tracing::info!(code = ?status.code(), "attempts table not refreshed");
                        }
                    }
                    Some((stream::iter(messages), Some(follower)))
                }
                Ok(None) => None,
                Err(status) => {
                    tracing::info!(code = ?status.code(), "live stream refused");
                    Some((stream::iter(vec![Ok(failure(&status))]), None))
                }
            }
        }
    })
    .flatten()
}

/// `GET /orders/{order_id}/live?after=N`.
pub async fn order(
    State(state): State<AppState>,
    session: Session,
    Path(order_id): Path<String>,
    Query(query): Query<After>,
    headers: HeaderMap,
) -> Response {
    let after = resume_point(&headers, &query);
    let client = match state.client(&session) {
        Ok(client) => client,
        Err(status) => return refused(status),
    };
    let mut follower = client.follow_order(&order_id, after, false);
    // Opened before answering, so a refusal (role, unknown order) is told at once.
    if let Err(status) = follower.open().await {
        return refused(status);
    }
    let stop = state.shutdown.clone().cancelled_owned();
    let me = session.caller_id().map(str::to_owned);
    Sse::new(order_events(follower, client, order_id, me).take_until(stop))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /feed/live?after=N` (global sequence).
pub async fn feed(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<After>,
    headers: HeaderMap,
) -> Response {
    let after = resume_point(&headers, &query);
    let client = match state.client(&session) {
        Ok(client) => client,
        Err(status) => return refused(status),
    };
    let mut follower = client.follow_events(after);
    if let Err(status) = follower.open().await {
        return refused(status);
    }
    let stop = state.shutdown.clone().cancelled_owned();
    Sse::new(feed_events(follower).take_until(stop))
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_sets_the_holder_and_outcomes_clear_it() {
        let started = pb::OrderEvent {
            kind: pb::EventKind::AttemptStarted.into(),
            state: pb::OrderState::AwaitingConfirmation.into(),
            actor: "op-bob".into(),
            sequence: 2,
            ..Default::default()
        };
        let json = event_json(&started, None);
        assert_eq!(json["state"], "AWAITING_CONFIRMATION");
        assert_eq!(json["state_text"], "Awaiting confirmation");
        assert!(
            json["holder"]
                .as_str()
                .is_some_and(|h| h.starts_with("op-bob is paying"))
        );
        let mine = event_json(&started, Some("op-bob"));
        assert!(
            mine["holder"]
                .as_str()
                .is_some_and(|h| h.starts_with("You are paying this order since")),
            "{mine}"
        );
        let declined = pb::OrderEvent {
            kind: pb::EventKind::AttemptDeclined.into(),
            state: pb::OrderState::Pending.into(),
            detail: "generic_decline".into(),
            ..Default::default()
        };
        let json = event_json(&declined, None);
        assert_eq!(json["state_text"], "Declined: generic_decline");
        assert_eq!(json["holder"], "");
        assert_eq!(json["kind"], "ATTEMPT_DECLINED");
    }

    #[test]
    fn last_event_id_wins_over_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_point(&headers, &After { after: Some(4) }), 4);
        headers.insert("last-event-id", "9".parse().expect("header"));
        assert_eq!(resume_point(&headers, &After { after: Some(4) }), 9);
        assert_eq!(resume_point(&HeaderMap::new(), &After { after: None }), 0);
    }
}
