//! The coordinator's adapter to a Stripe-like PaymentIntents gateway (CONTRACT §5): HTTP and the
//! gateway, nothing of PostgreSQL or gRPC.
//!
//! - [`GatewayConfig`] / [`GatewayClient::new`]: where, how, and what the gateway can do.
//! - [`IdempotencyKey`]: deterministic keys, derived from order, attempt and step only.
//! - One method per operation ([`GatewayClient::create_intent`], `confirm_intent`, `get_intent`,
//!   `cancel_intent`, `create_refund`), each returning a [`Reply`] whose [`Outcome`] says what the
//!   answer proves (see [`outcome`] for the classification table).

pub mod client;
pub mod config;
pub mod keys;
pub mod model;
pub mod outcome;
mod trace_context;

pub use client::{CreateIntent, GatewayClient};
pub use config::{
    ApiKey, Capabilities, ConfigError, Flow, GatewayConfig, ParseCapabilitiesError, ParseFlowError,
    RateLimit, RetryPolicy,
};
pub use keys::{IdempotencyKey, PaymentStep};
pub use model::{
    ApiError, ErrorBody, IntentStatus, LastPaymentError, PaymentIntent, Refund, RefundStatus,
};
pub use outcome::{Outcome, Reply, UnknownReason, classify};
