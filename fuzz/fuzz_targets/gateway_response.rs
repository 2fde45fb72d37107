#![no_main]
//! `cargo +nightly fuzz run gateway_response`: see fuzz/README.md and src/gateway.rs.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| payments_fuzz::gateway::run(data));
