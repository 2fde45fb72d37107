//! Helpers shared by the integration tests.

pub mod browser;
pub mod checks;
pub mod console;
pub mod coordinator;
pub mod gateway_sim;
pub mod payctl;
pub mod pg;
pub mod process;
pub mod redis;
pub mod review;
