//! The order/attempt state machine: every transition the coordinator makes is decided here, and
//! nowhere else. Pure: the store applies what these functions decide, inside its transactions.
//!
//! ```text
//!              ProcessPayment (attempt n committed, fence bumped)
//!   PENDING ─────────────────────────────────────────────▶ AWAITING_CONFIRMATION
//!      ▲   ◀── declined / cancelled (attempt DECLINED/CANCELLED) ──┘   │      │
//!      │                                                               │      │ unknown outcome
//!      │                                             succeeded         │      ▼ (attempt UNKNOWN)
//!      │                                                 ▼             │  MANUAL_REVIEW
//!      │                                               PAID ◀──────────┼── resolved: charged
//!      └──────────────────────── resolved: not charged ────────────────┘
//!                                                 PAID ── full refund ──▶ REFUNDED
//! ```

use super::states::{AttemptOutcome, EventKind, OrderState};

/// Why a new attempt may not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartRefusal {
    /// An attempt is in flight (or its outcome is not yet persisted).
    InProgress,
    AlreadyPaid,
    InManualReview,
    /// Paid, then refunded in full: the order is closed.
    Refunded,
}

/// May a new attempt start on an order in `state`?
pub fn may_start_attempt(state: OrderState) -> Result<(), StartRefusal> {
    match state {
        OrderState::Pending => Ok(()),
        OrderState::AwaitingConfirmation => Err(StartRefusal::InProgress),
        OrderState::Paid => Err(StartRefusal::AlreadyPaid),
        OrderState::ManualReview => Err(StartRefusal::InManualReview),
        OrderState::Refunded => Err(StartRefusal::Refunded),
    }
}

/// The order's state once an attempt has this outcome.
pub fn order_state_after(outcome: AttemptOutcome) -> OrderState {
    match outcome {
        AttemptOutcome::InFlight => OrderState::AwaitingConfirmation,
        AttemptOutcome::Succeeded => OrderState::Paid,
        AttemptOutcome::Declined | AttemptOutcome::Cancelled => OrderState::Pending,
        AttemptOutcome::Unknown => OrderState::ManualReview,
    }
}

/// The event an attempt's outcome emits.
pub fn event_for(outcome: AttemptOutcome) -> EventKind {
    match outcome {
        AttemptOutcome::InFlight => EventKind::AttemptStarted,
        AttemptOutcome::Succeeded => EventKind::AttemptSucceeded,
        AttemptOutcome::Declined => EventKind::AttemptDeclined,
        AttemptOutcome::Cancelled => EventKind::AttemptCancelled,
        AttemptOutcome::Unknown => EventKind::ManualReviewOpened,
    }
}

/// Only an attempt in flight may receive an outcome; a finished one is final.
pub fn may_finish(current: AttemptOutcome, next: AttemptOutcome) -> bool {
    current == AttemptOutcome::InFlight && next != AttemptOutcome::InFlight
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pending_order_may_start_an_attempt() {
        for state in OrderState::ALL {
            assert_eq!(
                may_start_attempt(*state).is_ok(),
                *state == OrderState::Pending,
                "{state}"
            );
        }
    }

    #[test]
    fn outcomes_lead_where_the_contract_says() {
        assert_eq!(
            order_state_after(AttemptOutcome::Succeeded),
            OrderState::Paid
        );
        assert_eq!(
            order_state_after(AttemptOutcome::Declined),
            OrderState::Pending
        );
        assert_eq!(
            order_state_after(AttemptOutcome::Cancelled),
            OrderState::Pending
        );
        assert_eq!(
            order_state_after(AttemptOutcome::Unknown),
            OrderState::ManualReview
        );
        assert_eq!(
            event_for(AttemptOutcome::Unknown),
            EventKind::ManualReviewOpened
        );
    }

    #[test]
    fn finished_attempts_are_final() {
        for current in AttemptOutcome::ALL {
            for next in AttemptOutcome::ALL {
                let allowed = may_finish(*current, *next);
                assert_eq!(
                    allowed,
                    *current == AttemptOutcome::InFlight && *next != AttemptOutcome::InFlight
                );
            }
        }
    }
}
