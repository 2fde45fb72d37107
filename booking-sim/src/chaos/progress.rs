//! Progress on stderr: a line per phase and per fault, and a periodic status line.

use std::{sync::OnceLock, time::Instant};

static START: OnceLock<Instant> = OnceLock::new();
/// The tool's name at the start of every line (`chaos` unless [`start_clock_as`] said otherwise).
static NAME: OnceLock<&'static str> = OnceLock::new();

/// Starts the clock of the run's lines (the first call wins).
pub(crate) fn start_clock() {
    let _ = START.set(Instant::now());
}

/// Starts the clock, lines named `name` (e.g. `load`); the first call wins.
pub(crate) fn start_clock_as(name: &'static str) {
    let _ = NAME.set(name);
    start_clock();
}

/// Seconds since the run started.
pub(crate) fn elapsed_secs() -> f64 {
    START.get().map_or(0.0, |s| s.elapsed().as_secs_f64())
}

/// One progress line on stderr, stamped with the run's elapsed time.
pub(crate) fn say(line: &str) {
    let name = NAME.get().copied().unwrap_or("chaos");
    eprintln!("[{name} {:>7.1}s] {line}", elapsed_secs());
}
