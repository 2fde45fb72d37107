//! Progress on stderr: a line per phase and per fault, and a periodic status line.

use std::{sync::OnceLock, time::Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Starts the clock of the run's lines (the first call wins).
pub(crate) fn start_clock() {
    let _ = START.set(Instant::now());
}

/// Seconds since the run started.
pub(crate) fn elapsed_secs() -> f64 {
    START.get().map_or(0.0, |s| s.elapsed().as_secs_f64())
}

/// One progress line on stderr, stamped with the run's elapsed time.
pub(crate) fn say(line: &str) {
    eprintln!("[chaos {:>7.1}s] {line}", elapsed_secs());
}
