//! The store's row types and the answers of its operations.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::domain::{AttemptOutcome, OrderState, RefundOutcome, Resolution};

/// One line of an order, stored in `orders.items` (jsonb).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItemRecord {
    pub product_id: String,
    pub quantity: i32,
    pub unit_amount_minor: i64,
}

/// What `begin_attempt` needs: the order as the caller describes it and the attempt to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttempt {
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub customer_id: String,
    pub items: Vec<LineItemRecord>,
    /// A gateway token such as `pm_card_visa`; never a card number (validated by the caller).
    pub payment_method: String,
    pub operator_id: String,
    pub replica_id: String,
    /// The caller's `idempotency_key`, scoped per `operator_id`.
    pub request_key: String,
    /// A digest of the request, to tell a retry from a reused key.
    pub fingerprint: String,
    pub flow: gateway_client::Flow,
}

/// What `begin_attempt` did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and matched at once; boxing would only add noise"
)]
pub enum Begin {
    /// The attempt is committed (`IN_FLIGHT`, order `AWAITING_CONFIRMATION`, fence bumped): the
    /// caller may now call the gateway, with `Fence::of(&order, &attempt)`. `order` is the row
    /// as the commit left it, without its attempts (`attempts` is empty: no other attempt is read
    /// on this path; `get_order` has them all).
    Started {
        order: OrderRecord,
        attempt: AttemptRecord,
    },
    /// Nothing was written.
    Refused(BeginRefusal),
    /// The `(operator_id, request_key)` is already taken by an attempt (a concurrent request with
    /// the same key won the race). Nothing was written; the caller re-reads and joins it (or answers
    /// `IDEMPOTENCY_KEY_REUSED` if the fingerprint differs).
    KeyTaken {
        order_id: String,
        attempt: i32,
        fingerprint: String,
    },
}

/// Why `begin_attempt` wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginRefusal {
    /// The recorded order differs in these fields: `"amount"`, `"currency"`, `"customer_id"`.
    Mismatch {
        fields: Vec<&'static str>,
    },
    AlreadyPaid,
    InManualReview,
    Refunded,
    /// Another attempt is in flight: who holds the order, and since when.
    InProgress {
        attempt: i32,
        operator_id: String,
        started_at: SystemTime,
    },
}

/// The token every write about an attempt must present: the order's fence when the writer took the
/// attempt. A newer holder bumps `orders.fence`, after which the old token writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    pub order_id: String,
    pub attempt: i32,
    pub token: i64,
}

impl Fence {
    /// The fence of a freshly started attempt.
    pub fn of(order: &OrderRecord, attempt: &AttemptRecord) -> Fence {
        Fence {
            order_id: order.order_id.clone(),
            attempt: attempt.number,
            token: attempt.fence,
        }
    }
}

/// The answer of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Fenced {
    Applied,
    /// A newer holder bumped the fence, or the attempt is no longer in flight: NOTHING was written.
    Superseded,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Succeeded {
        intent_id: String,
    },
    Declined {
        intent_id: Option<String>,
        decline_code: String,
        message: String,
    },
    /// Voided, or provably never charged: nothing was taken, the order is payable again.
    Cancelled {
        intent_id: Option<String>,
        reason: String,
    },
    /// Nothing can establish the outcome: the order goes to MANUAL_REVIEW, `reason` says why
    /// (`cause`: the same, as a closed set).
    Unknown {
        cause: crate::domain::resolution::ReviewCause,
        reason: String,
    },
}

impl Finish {
    /// The attempt's outcome this finish records.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            Finish::Succeeded { .. } => AttemptOutcome::Succeeded,
            Finish::Declined { .. } => AttemptOutcome::Declined,
            Finish::Cancelled { .. } => AttemptOutcome::Cancelled,
            Finish::Unknown { .. } => AttemptOutcome::Unknown,
        }
    }
}

/// One order and every attempt, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub customer_id: String,
    pub items: Vec<LineItemRecord>,
    pub state: OrderState,
    pub fence: i64,
    pub last_sequence: i64,
    pub refunded_minor: i64,
    pub refund_count: i32,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub attempts: Vec<AttemptRecord>,
    /// Every refund, oldest first.
    pub refunds: Vec<RefundRecord>,
}

/// One attempt to charge an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub number: i32,
    /// The order's fence when this attempt started.
    pub fence: i64,
    pub operator_id: String,
    pub replica_id: String,
    pub request_key: String,
    pub fingerprint: String,
    pub payment_method: String,
    /// `gateway_client::Flow::as_str()`: `two_phase` or `one_shot`.
    pub flow: String,
    pub outcome: AttemptOutcome,
    pub gateway_create_key: String,
    pub gateway_confirm_key: String,
    pub gateway_payment_id: Option<String>,
    pub decline_code: Option<String>,
    pub failure_message: Option<String>,
    pub errors: Vec<ErrorEntry>,
    pub started_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    /// For an UNKNOWN attempt an operator resolved: the decision, who, when and why.
    pub resolution: Option<ReviewDecision>,
}

/// An operator's decision on a manual review item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewDecision {
    pub resolution: Resolution,
    pub by: String,
    pub at: SystemTime,
    pub note: String,
}

/// One refund of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub number: i32,
    pub requested_by: String,
    pub request_key: String,
    pub fingerprint: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    /// The charge refunded.
    pub gateway_payment_id: String,
    pub gateway_refund_key: String,
    pub gateway_refund_id: Option<String>,
    pub outcome: RefundOutcome,
    pub failure_message: Option<String>,
    pub errors: Vec<ErrorEntry>,
    /// The fencing token of whoever drives it (bumped by a recovery takeover).
    pub token: i64,
    pub resolution_tries: i32,
    pub requested_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    /// For a refund in doubt a reviewer resolved: the decision.
    pub resolution: Option<ReviewDecision>,
}

/// One error met during an attempt (the history an operator reads in manual review).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEntry {
    pub at: SystemTime,
    pub step: String,
    pub message: String,
}

/// An in-flight attempt the recovery worker took over: its new fence (the order's fence, bumped
/// by the takeover), the order and the attempt as they were when claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranded {
    pub fence: Fence,
    pub order: OrderRecord,
    pub attempt: AttemptRecord,
    /// Recovery runs so far, this one included.
    pub resolution_tries: i32,
}
