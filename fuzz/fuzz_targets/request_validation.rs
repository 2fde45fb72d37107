#![no_main]
//! `cargo +nightly fuzz run request_validation`: see fuzz/README.md and src/requests.rs.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| payments_fuzz::requests::run(data));
