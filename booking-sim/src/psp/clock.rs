//! The simulator's clock: system time plus an offset that tests can push forward, so the
//! 24-hour idempotency window can be crossed without waiting a day.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A cheap, cloneable handle; every clone sees the same offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_nanos: Arc<AtomicU64>,
}

impl Clock {
    /// The system clock with no offset.
    pub fn system() -> Self {
        Self::default()
    }

    /// Moves this clock (and every clone of it) forward by `by`. Saturates rather than wraps.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = self
            .offset_nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                Some(old.saturating_add(by))
            });
    }

    /// How far this clock is ahead of the system clock.
    pub fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }

    /// System time plus the offset (the system time alone if the sum would overflow).
    pub fn now(&self) -> SystemTime {
        let system = SystemTime::now();
        system.checked_add(self.offset()).unwrap_or(system)
    }

    /// [`Clock::now`] in whole seconds since the Unix epoch, as Stripe's `created` fields are.
    pub fn unix_secs(&self) -> u64 {
        unix_secs(self.now())
    }
}

/// Whole seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_every_clone() {
        let clock = Clock::system();
        let other = clock.clone();
        let before = other.now();
        clock.advance(Duration::from_secs(86_400));
        let after = other.now();
        let moved = after.duration_since(before).unwrap_or_default();
        assert!(moved >= Duration::from_secs(86_400), "moved only {moved:?}");
        assert_eq!(other.offset(), Duration::from_secs(86_400));
    }

    #[test]
    fn advance_saturates_instead_of_panicking() {
        let clock = Clock::system();
        clock.advance(Duration::MAX);
        clock.advance(Duration::MAX);
        // now() must not panic even when the offset cannot be added.
        let _ = clock.now();
        let _ = clock.unix_secs();
    }
}
