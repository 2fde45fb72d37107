//! The order's and the attempt's states, as stored (`text` columns) and as the API shows them.

use std::fmt;

use payments_proto::v1 as pb;

/// Where an order stands (CONTRACT §2 `OrderState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderState {
    /// Payable.
    Pending,
    /// An attempt is in flight or its outcome is not yet persisted: the order is locked.
    AwaitingConfirmation,
    Paid,
    /// Locked until an operator resolves it.
    ManualReview,
    /// Fully refunded.
    Refunded,
}

/// How one attempt ended, or that it has not yet (CONTRACT §2 `AttemptOutcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    InFlight,
    Succeeded,
    Declined,
    Cancelled,
    Unknown,
}

/// A state change on the event feed (CONTRACT §2 `EventKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    OrderCreated,
    AttemptStarted,
    AttemptSucceeded,
    AttemptDeclined,
    AttemptCancelled,
    ManualReviewOpened,
    ManualReviewResolved,
    Refunded,
}

/// An operator's decision on an attempt whose outcome was unknown (CONTRACT §2 `Resolution`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// The money was taken: the order becomes PAID.
    Charged,
    /// Nothing was taken: the order becomes PENDING again.
    NotCharged,
    /// A refund in doubt did happen: it counts as refunded.
    Refunded,
    /// A refund in doubt did not happen: nothing was refunded.
    NotRefunded,
}

impl Resolution {
    /// Whether this decides a refund in doubt (rather than a payment attempt).
    pub fn is_about_a_refund(self) -> bool {
        matches!(self, Resolution::Refunded | Resolution::NotRefunded)
    }
}

/// How one refund ended, or that it has not yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefundOutcome {
    InFlight,
    Succeeded,
    /// The gateway refused it: nothing was refunded.
    Failed,
    /// Nothing could establish the outcome: a manual review item until a reviewer resolves it.
    Unknown,
}

/// A stored value that is not one of the known names: the schema and the code disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} in the database")]
pub struct UnknownStoredValue {
    pub what: &'static str,
    pub value: String,
}

macro_rules! stored_names {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name stored in PostgreSQL.
            pub const fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            /// Every value, for exhaustive tests and schema checks.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn from_stored(value: &str) -> Result<Self, UnknownStoredValue> {
                match value {
                    $($name => Ok($ty::$variant),)+
                    other => Err(UnknownStoredValue { what: $what, value: other.to_owned() }),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_names!(OrderState, "order state", {
    Pending => "PENDING",
    AwaitingConfirmation => "AWAITING_CONFIRMATION",
    Paid => "PAID",
    ManualReview => "MANUAL_REVIEW",
    Refunded => "REFUNDED",
});

stored_names!(AttemptOutcome, "attempt outcome", {
    InFlight => "IN_FLIGHT",
    Succeeded => "SUCCEEDED",
    Declined => "DECLINED",
    Cancelled => "CANCELLED",
    Unknown => "UNKNOWN",
});

stored_names!(EventKind, "event kind", {
    OrderCreated => "ORDER_CREATED",
    AttemptStarted => "ATTEMPT_STARTED",
    AttemptSucceeded => "ATTEMPT_SUCCEEDED",
    AttemptDeclined => "ATTEMPT_DECLINED",
    AttemptCancelled => "ATTEMPT_CANCELLED",
    ManualReviewOpened => "MANUAL_REVIEW_OPENED",
    ManualReviewResolved => "MANUAL_REVIEW_RESOLVED",
    Refunded => "REFUNDED",
});

stored_names!(Resolution, "resolution", {
    Charged => "CHARGED",
    NotCharged => "NOT_CHARGED",
    Refunded => "REFUNDED",
    NotRefunded => "NOT_REFUNDED",
});

stored_names!(RefundOutcome, "refund outcome", {
    InFlight => "IN_FLIGHT",
    Succeeded => "SUCCEEDED",
    Failed => "FAILED",
    Unknown => "UNKNOWN",
});

impl From<Resolution> for pb::Resolution {
    fn from(value: Resolution) -> Self {
        match value {
            Resolution::Charged => pb::Resolution::Charged,
            Resolution::NotCharged => pb::Resolution::NotCharged,
            Resolution::Refunded => pb::Resolution::Refunded,
            Resolution::NotRefunded => pb::Resolution::NotRefunded,
        }
    }
}

impl From<RefundOutcome> for pb::RefundOutcome {
    fn from(value: RefundOutcome) -> Self {
        match value {
            RefundOutcome::InFlight => pb::RefundOutcome::InFlight,
            RefundOutcome::Succeeded => pb::RefundOutcome::Succeeded,
            RefundOutcome::Failed => pb::RefundOutcome::Failed,
            RefundOutcome::Unknown => pb::RefundOutcome::Unknown,
        }
    }
}

impl From<OrderState> for pb::OrderState {
    fn from(value: OrderState) -> Self {
        match value {
            OrderState::Pending => pb::OrderState::Pending,
            OrderState::AwaitingConfirmation => pb::OrderState::AwaitingConfirmation,
            OrderState::Paid => pb::OrderState::Paid,
            OrderState::ManualReview => pb::OrderState::ManualReview,
            OrderState::Refunded => pb::OrderState::Refunded,
        }
    }
}

impl From<AttemptOutcome> for pb::AttemptOutcome {
    fn from(value: AttemptOutcome) -> Self {
        match value {
            AttemptOutcome::InFlight => pb::AttemptOutcome::InFlight,
            AttemptOutcome::Succeeded => pb::AttemptOutcome::Succeeded,
            AttemptOutcome::Declined => pb::AttemptOutcome::Declined,
            AttemptOutcome::Cancelled => pb::AttemptOutcome::Cancelled,
            AttemptOutcome::Unknown => pb::AttemptOutcome::Unknown,
        }
    }
}

impl From<EventKind> for pb::EventKind {
    fn from(value: EventKind) -> Self {
        match value {
            EventKind::OrderCreated => pb::EventKind::OrderCreated,
            EventKind::AttemptStarted => pb::EventKind::AttemptStarted,
            EventKind::AttemptSucceeded => pb::EventKind::AttemptSucceeded,
            EventKind::AttemptDeclined => pb::EventKind::AttemptDeclined,
            EventKind::AttemptCancelled => pb::EventKind::AttemptCancelled,
            EventKind::ManualReviewOpened => pb::EventKind::ManualReviewOpened,
            EventKind::ManualReviewResolved => pb::EventKind::ManualReviewResolved,
            EventKind::Refunded => pb::EventKind::Refunded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip() {
        for s in OrderState::ALL {
            assert_eq!(OrderState::from_stored(s.as_str()), Ok(*s));
        }
        for s in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::from_stored(s.as_str()), Ok(*s));
        }
        for s in EventKind::ALL {
            assert_eq!(EventKind::from_stored(s.as_str()), Ok(*s));
        }
        assert!(OrderState::from_stored("LOST").is_err());
    }

    #[test]
    fn api_names_match_stored_names() {
        // The proto's names are the stored names with a prefix: keep them in step.
        for s in OrderState::ALL {
            let api = pb::OrderState::from(*s).as_str_name();
            assert_eq!(api, format!("ORDER_STATE_{}", s.as_str()));
        }
        for s in AttemptOutcome::ALL {
            let api = pb::AttemptOutcome::from(*s).as_str_name();
            assert_eq!(api, format!("ATTEMPT_OUTCOME_{}", s.as_str()));
        }
        for s in EventKind::ALL {
            let api = pb::EventKind::from(*s).as_str_name();
            assert_eq!(api, format!("EVENT_KIND_{}", s.as_str()));
        }
        for s in Resolution::ALL {
            let api = pb::Resolution::from(*s).as_str_name();
            assert_eq!(api, format!("RESOLUTION_{}", s.as_str()));
            assert_eq!(Resolution::from_stored(s.as_str()), Ok(*s));
        }
        for s in RefundOutcome::ALL {
            let api = pb::RefundOutcome::from(*s).as_str_name();
            assert_eq!(api, format!("REFUND_OUTCOME_{}", s.as_str()));
            assert_eq!(RefundOutcome::from_stored(s.as_str()), Ok(*s));
        }
    }
}
