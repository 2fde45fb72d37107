//! The domain: validated request types and the order/attempt state machine. Pure: no I/O.

pub mod breaker;
pub mod ids;
pub mod machine;
pub mod money;
pub mod operations;
pub mod payment_method;
pub mod request;
pub mod resolution;
pub mod states;
pub mod violations;

pub use ids::{CustomerId, OrderId, ProductId, RequestKey};
pub use machine::StartRefusal;
pub use money::{Currency, Money};
pub use payment_method::PaymentMethod;
pub use request::{LineItem, PaymentRequest, parse_order_id};
pub use states::{
    AttemptOutcome, EventKind, OrderState, RefundOutcome, Resolution, UnknownStoredValue,
};
pub use violations::{FieldViolation, Violations};
