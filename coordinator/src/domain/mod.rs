//! The domain: validated request types and the order/attempt state machine. Pure: no I/O.

pub mod machine;
pub mod states;

pub use machine::StartRefusal;
pub use states::{AttemptOutcome, EventKind, OrderState, UnknownStoredValue};
