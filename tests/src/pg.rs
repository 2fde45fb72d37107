//! A throwaway PostgreSQL server of a test's own, for tests that stop and start the database:
//! `booking_sim::stack::pg` (shared with `booking-sim chaos`), failing the test on any error.

use booking_sim::stack::pg as stack;

pub struct ThrowawayPg(stack::ThrowawayPg);

impl ThrowawayPg {
    /// initdb and start; blocks until the server accepts connections.
    pub fn start() -> Self {
        Self(stack::ThrowawayPg::start().unwrap_or_else(|e| panic!("throwaway PostgreSQL: {e:#}")))
    }

    /// `postgres://root@127.0.0.1:PORT`.
    pub fn url_base(&self) -> String {
        self.0.url_base()
    }

    /// Starts the (stopped) server again on the same port and data; waits until it is ready.
    pub fn start_again(&self) {
        self.0
            .start_again()
            .unwrap_or_else(|e| panic!("restarting PostgreSQL: {e:#}"));
    }

    /// Stops the server at once (connections are cut, as in a crash of the database host).
    pub fn stop(&self) {
        self.0
            .stop()
            .unwrap_or_else(|e| panic!("stopping PostgreSQL: {e:#}"));
    }
}
