#![no_main]
//! `cargo +nightly fuzz run journal_record`: see fuzz/README.md and src/journal.rs.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| payments_fuzz::journal::run(data));
