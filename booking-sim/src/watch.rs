//! The client side of the coordinator's event streams now lives in the `payments-client` crate
//! (shared with `payctl`); re-exported here so `booking_sim::watch::…` keeps its meaning.

pub use payments_client::*;
