//! The payment coordinator: the single source of truth for whether an order may be charged.
//!
//! This crate knows everything the others do not: PostgreSQL, Redis, the gRPC API, and how to use
//! the gateway client safely. See `docs/ARCHITECTURE.md`.

pub mod api;
pub mod attempt;
pub mod auth;
pub mod config;
pub mod control;
pub mod domain;
pub mod error;
pub mod feed;
pub mod health_port;
pub mod journal;
pub mod lease;
pub mod metrics;
pub mod recovery;
pub mod refunding;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
