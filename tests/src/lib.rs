//! Helpers shared by the integration tests.

pub mod gateway_sim;
