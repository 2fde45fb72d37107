//! Following one attempt to its outcome over `WatchOrder` (for `pay --wait` when the server
//! answered before the outcome, and for a busy order's holder), resuming after a dropped
//! stream. Progress goes to stderr; the caller prints the final order.

use std::time::Duration;

use payments_client::is_terminal;
use payments_proto::v1 as pb;
use tonic::Code;

use super::get::get_order;
use crate::{client::Conn, exit::Failure, render::table};

/// How often to look again for an order that a holder has leased but not yet committed.
const NOT_YET_RECORDED: Duration = Duration::from_millis(100);

/// Whether attempt `number` (or a later one) has an outcome, or the order is terminal.
fn settled(order: &pb::Order, number: i32) -> bool {
    is_terminal(order.state())
        || order.attempts.iter().any(|a| {
            a.number >= number
                && !matches!(
                    a.outcome(),
                    pb::AttemptOutcome::InFlight | pb::AttemptOutcome::Unspecified
                )
        })
}

/// Whether `event` ends the wait for attempt `number`.
fn ends(event: &pb::OrderEvent, number: i32) -> bool {
    let outcome = matches!(
        event.kind(),
        pb::EventKind::AttemptSucceeded
            | pb::EventKind::AttemptDeclined
            | pb::EventKind::AttemptCancelled
            | pb::EventKind::ManualReviewOpened
    );
    (outcome && event.attempt_number >= number) || is_terminal(event.state())
}

/// Follows `order_id` until attempt `number` has an outcome; returns the order then.
pub async fn until_outcome(
    conn: &Conn,
    order_id: &str,
    number: i32,
    as_json: bool,
) -> Result<pb::Order, Failure> {
    let order = recorded_order(conn, order_id).await?;
    if settled(&order, number) {
        return Ok(order);
    }
    if !as_json {
        eprintln!(
            "following order {order_id} until attempt {number} has an outcome (Ctrl-C stops \
             watching; the attempt goes on on the server)…"
        );
    }
    // From the order's last event: what happens after the read above is replayed, never lost.
    let mut follower = conn
        .watch()
        .follow_order(order_id, order.last_sequence, false);
    while let Some(event) = follower.next().await? {
        if !as_json {
            eprintln!("  {}", table::event(&event));
        }
        if ends(&event, number) {
            break;
        }
    }
    Ok(get_order(conn, order_id).await?)
}

/// The order; a holder may hold the lease a moment before its attempt is committed, so a new
/// order may not be found yet: look again until the unary deadline.
async fn recorded_order(conn: &Conn, order_id: &str) -> Result<pb::Order, Failure> {
    let give_up = tokio::time::Instant::now() + conn.timeout();
    loop {
        match get_order(conn, order_id).await {
            Err(status)
                if status.code() == Code::NotFound && tokio::time::Instant::now() < give_up =>
            {
                tokio::time::sleep(NOT_YET_RECORDED).await;
            }
            other => return Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: pb::EventKind, state: pb::OrderState, attempt: i32) -> pb::OrderEvent {
        pb::OrderEvent {
            kind: kind.into(),
            state: state.into(),
            attempt_number: attempt,
            ..Default::default()
        }
    }

    #[test]
    fn an_attempts_outcome_ends_the_wait() {
        use pb::{EventKind as K, OrderState as S};
        assert!(!ends(
            &event(K::AttemptStarted, S::AwaitingConfirmation, 2),
            2
        ));
        assert!(ends(&event(K::AttemptDeclined, S::Pending, 2), 2));
        assert!(ends(&event(K::AttemptCancelled, S::Pending, 2), 2));
        assert!(ends(&event(K::AttemptSucceeded, S::Paid, 2), 2));
        assert!(ends(&event(K::ManualReviewOpened, S::ManualReview, 2), 2));
        // An earlier attempt's outcome does not end the wait for a later one…
        assert!(!ends(&event(K::AttemptDeclined, S::Pending, 1), 2));
        // …but a terminal order does.
        assert!(ends(&event(K::AttemptSucceeded, S::Paid, 1), 2));
    }

    #[test]
    fn a_finished_attempt_is_settled() {
        let mut order = pb::Order {
            state: pb::OrderState::AwaitingConfirmation.into(),
            attempts: vec![pb::Attempt {
                number: 1,
                outcome: pb::AttemptOutcome::InFlight.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!settled(&order, 1));
        assert!(!settled(&order, 2));
        order.attempts[0].outcome = pb::AttemptOutcome::Declined.into();
        order.state = pb::OrderState::Pending.into();
        assert!(settled(&order, 1));
        assert!(!settled(&order, 2));
        order.state = pb::OrderState::Paid.into();
        assert!(settled(&order, 2));
    }
}
