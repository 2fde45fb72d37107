//! A throwaway Redis server of a test's own, for tests that stop and start Redis:
//! `booking_sim::stack::redis` (shared with `booking-sim chaos`), failing the test on any error.

use booking_sim::stack::redis as stack;

pub struct ThrowawayRedis(stack::ThrowawayRedis);

impl ThrowawayRedis {
    /// Starts `redis-server` on a free port; blocks until it answers PING.
    pub fn start() -> Self {
        Self(stack::ThrowawayRedis::start().unwrap_or_else(|e| panic!("throwaway Redis: {e:#}")))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.0.url()
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// Starts the (stopped) server again on the same port and directory (a `dump.rdb` left by
    /// `stop_saving` is loaded); waits until it answers PING.
    pub fn start_again(&mut self) {
        self.0
            .start_again()
            .unwrap_or_else(|e| panic!("restarting Redis: {e:#}"));
    }

    /// Whether the server answers PING now.
    pub fn answers(&self) -> bool {
        self.0.answers()
    }

    /// Stops the server at once, forgetting every key (`SHUTDOWN NOSAVE`).
    pub fn stop(&mut self) {
        self.0
            .stop()
            .unwrap_or_else(|e| panic!("stopping Redis: {e:#}"));
    }

    /// Stops the server after writing its keys to disk (`SHUTDOWN SAVE`): when it starts again
    /// every key comes back with its expiry.
    pub fn stop_saving(&mut self) {
        self.0
            .stop_saving()
            .unwrap_or_else(|e| panic!("stopping Redis: {e:#}"));
    }
}
