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

use super::states::{AttemptOutcome, EventKind, OrderState, Resolution};

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

/// Why a manual review may not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveRefusal {
    /// The order is not in manual review (never was, or already resolved): its current state.
    NotInReview(OrderState),
    /// A refund's resolution offered for a payment attempt.
    NotAboutAPayment,
}

/// The order's state once a review is resolved so; only an order in manual review may be.
pub fn state_after_resolution(
    current: OrderState,
    resolution: Resolution,
) -> Result<OrderState, ResolveRefusal> {
    if current != OrderState::ManualReview {
        return Err(ResolveRefusal::NotInReview(current));
    }
    match resolution {
        Resolution::Charged => Ok(OrderState::Paid),
        Resolution::NotCharged => Ok(OrderState::Pending),
        Resolution::Refunded | Resolution::NotRefunded => Err(ResolveRefusal::NotAboutAPayment),
    }
}

/// The order's state, and how much is refunded, once a refund in doubt of `amount` is resolved
/// so: it counts only if it did happen.
pub fn after_refund_resolution(
    state: OrderState,
    paid: i64,
    refunded: i64,
    amount: i64,
    resolution: Resolution,
) -> (OrderState, i64) {
    match resolution {
        Resolution::Refunded => {
            let after = refunded.saturating_add(amount);
            (state_after_refund(paid, after), after)
        }
        _ => (state, refunded),
    }
}

/// Why a refund may not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundRefusal {
    /// Only a paid order can be refunded (a REFUNDED one has nothing left).
    NotPaid(OrderState),
    /// More than what remains refundable: `remaining` minor units.
    ExceedsPaid { remaining: i64 },
}

/// How much a refund takes: `requested` (None: all that remains) out of what remains of
/// `paid - refunded`. Never more than was paid in total.
pub fn refund_amount(
    state: OrderState,
    paid: i64,
    refunded: i64,
    requested: Option<i64>,
) -> Result<i64, RefundRefusal> {
    if state != OrderState::Paid {
        return Err(RefundRefusal::NotPaid(state));
    }
    let remaining = paid.saturating_sub(refunded).max(0);
    let amount = requested.unwrap_or(remaining);
    if amount <= 0 || amount > remaining {
        return Err(RefundRefusal::ExceedsPaid { remaining });
    }
    Ok(amount)
}

/// The order's state after a successful refund: REFUNDED once everything paid is refunded.
pub fn state_after_refund(paid: i64, refunded_after: i64) -> OrderState {
    if refunded_after >= paid {
        OrderState::Refunded
    } else {
        OrderState::Paid
    }
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
    fn only_an_order_in_review_may_be_resolved() {
        for state in OrderState::ALL {
            let charged = state_after_resolution(*state, Resolution::Charged);
            if *state == OrderState::ManualReview {
                assert_eq!(charged, Ok(OrderState::Paid));
                assert_eq!(
                    state_after_resolution(*state, Resolution::NotCharged),
                    Ok(OrderState::Pending)
                );
            } else {
                assert_eq!(charged, Err(ResolveRefusal::NotInReview(*state)));
            }
        }
        assert_eq!(
            state_after_resolution(OrderState::ManualReview, Resolution::Refunded),
            Err(ResolveRefusal::NotAboutAPayment)
        );
    }

    #[test]
    fn a_refund_in_doubt_counts_only_if_it_happened() {
        assert_eq!(
            after_refund_resolution(OrderState::Paid, 1000, 400, 600, Resolution::Refunded),
            (OrderState::Refunded, 1000)
        );
        assert_eq!(
            after_refund_resolution(OrderState::Paid, 1000, 0, 600, Resolution::Refunded),
            (OrderState::Paid, 600)
        );
        assert_eq!(
            after_refund_resolution(OrderState::Paid, 1000, 400, 600, Resolution::NotRefunded),
            (OrderState::Paid, 400)
        );
    }

    #[test]
    fn refunds_never_exceed_what_was_paid() {
        assert_eq!(refund_amount(OrderState::Paid, 1000, 0, None), Ok(1000));
        assert_eq!(refund_amount(OrderState::Paid, 1000, 400, None), Ok(600));
        assert_eq!(
            refund_amount(OrderState::Paid, 1000, 400, Some(600)),
            Ok(600)
        );
        assert_eq!(
            refund_amount(OrderState::Paid, 1000, 400, Some(601)),
            Err(RefundRefusal::ExceedsPaid { remaining: 600 })
        );
        assert_eq!(
            refund_amount(OrderState::Paid, 1000, 0, Some(0)),
            Err(RefundRefusal::ExceedsPaid { remaining: 1000 })
        );
        for state in OrderState::ALL {
            if *state != OrderState::Paid {
                assert_eq!(
                    refund_amount(*state, 1000, 0, None),
                    Err(RefundRefusal::NotPaid(*state))
                );
            }
        }
        assert_eq!(state_after_refund(1000, 600), OrderState::Paid);
        assert_eq!(state_after_refund(1000, 1000), OrderState::Refunded);
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
