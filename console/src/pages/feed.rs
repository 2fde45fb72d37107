//! `GET /feed`: the latest events of all orders, newest first, then live from `/feed/live`
//! (`WatchEvents`: service and admin roles; others see the API's refusal).
//!
//! The page asks `WatchEvents` for the [`LATEST`] newest events only (`last`), so a long history
//! is never replayed. With that many, the replay is complete as soon as they arrived; a younger
//! feed with fewer is complete once the stream has been quiet for [`QUIET`] after an event (or
//! after [`AT_MOST`]). Nothing can be missed either way: the live stream resumes after the last
//! event shown.

use std::{collections::VecDeque, time::Duration};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use maud::html;
use payments_proto::v1 as pb;

use crate::{
    app::AppState,
    errors,
    pages::{chrome, error_page, http_status},
    session::Session,
    views,
};

pub const LATEST: usize = 50;
const QUIET: Duration = Duration::from_millis(250);
const AT_MOST: Duration = Duration::from_secs(3);

async fn latest(state: &AppState, session: &Session) -> Result<Vec<pb::OrderEvent>, tonic::Status> {
    let client = state.client(session)?;
    let mut stream = client.watch_latest_events(LATEST as i64).await?;
    let mut latest = VecDeque::with_capacity(LATEST);
    let deadline = tokio::time::Instant::now() + AT_MOST;
    loop {
        // The first event may take a moment (a busy replica); after it, the replay comes
        // back to back, and a pause means it is done.
        let quiet = if latest.is_empty() { AT_MOST } else { QUIET };
        let next = tokio::time::timeout(quiet, stream.message());
        match tokio::time::timeout_at(deadline, next).await {
            Ok(Ok(Ok(Some(event)))) => {
                latest.push_back(event);
                if latest.len() == LATEST {
                    break;
                }
            }
            Ok(Ok(Ok(None))) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(Err(status))) => return Err(status),
        }
    }
    Ok(latest.into_iter().rev().collect())
}

pub async fn show(State(state): State<AppState>, session: Session) -> Response {
    let chrome = chrome(&state, &session, "/feed".to_owned()).await;
    let events = match latest(&state, &session).await {
        Ok(events) => events,
        Err(status) => {
            return error_page(
                http_status(&status),
                "Live feed",
                &chrome,
                &errors::describe(&status),
                views::nothing(),
            );
        }
    };
    let after = events.first().map_or(0, |e| e.global_sequence);
    let live_url = format!("/feed/live?after={after}");
    views::page(
        "Live feed",
        Some(&chrome),
        None,
        Some(&live_url),
        html! {
            p { "The latest events of all orders, newest first." }
            ol id="feed" aria-live="polite" data-keep=(LATEST) {
                @for e in &events {
                    li class="event" data-global-sequence=(e.global_sequence) {
                        a href=(format!("/orders/{}", super::pay::path_segment(&e.order_id))) { (e.order_id) }
                        " " (views::event_text(e))
                    }
                }
            }
        },
    )
    .into_response()
}
