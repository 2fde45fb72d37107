//! The journal's record decoder under any input: `coordinator::journal::decode_record` (what
//! `Journal::get` and `Journal::pending` apply to every stored value) turns any bytes into an
//! entry or a reported corruption (which `pending` quarantines), never panics, and never takes a
//! damaged record for a good one.
//!
//! One file, two users: the cargo-fuzz target `journal_record` (fuzz/, nightly) and
//! coordinator/tests/properties.rs (stable: property tests, and the replay of every file of
//! fuzz/corpus/journal_record), which includes it with `#[path]`.
//!
//! A fuzz input is the raw value stored under the key ([`ORDER_ID`], [`ATTEMPT`]).

use coordinator::journal::{CorruptEntry, Entry, decode_record, encode_record};

/// The key every fuzz input is read under.
pub const ORDER_ID: &str = "ord-fuzz-1";
pub const ATTEMPT: i32 = 1;

/// The fuzz entry point: any bytes. Panics only when a check fails.
pub fn run(data: &[u8]) {
    let _ = check(ORDER_ID, ATTEMPT, data);
}

/// Decodes `bytes` stored under `(order_id, attempt)` and checks the answer; returns it.
pub fn check(order_id: &str, attempt: i32, bytes: &[u8]) -> Result<Entry, CorruptEntry> {
    let decoded = decode_record(order_id, attempt, bytes);
    match &decoded {
        Ok(entry) => {
            // Only a record of this very key is taken, and it survives being written again.
            assert_eq!(entry.fence.order_id, order_id);
            assert_eq!(entry.fence.attempt, attempt);
            let again = encode_record(&entry.fence, &entry.finish, &entry.actor, &entry.replica)
                .expect("a decoded entry encodes");
            assert_same(entry, &check_canonical(order_id, attempt, &again));
        }
        Err(corrupt) => {
            // Reported with its key and size, and why: what an operator reads in the log.
            assert_eq!(corrupt.order_id, order_id);
            assert_eq!(corrupt.attempt, attempt);
            assert_eq!(corrupt.len, bytes.len());
            assert!(!corrupt.reason.trim().is_empty());
        }
    }
    decoded
}

/// A record as the journal writes it decodes, and a flipped bit or a cut is detected: up to 256
/// bits spread over the record, and up to 64 cut lengths (every one of each for a short record;
/// the property tests pick single bits at random besides). Returns the decoded entry.
pub fn check_canonical(order_id: &str, attempt: i32, record: &[u8]) -> Entry {
    let entry = decode_record(order_id, attempt, record)
        .unwrap_or_else(|c| panic!("a record as written does not decode: {c:?}"));
    let bits = record.len() * 8;
    for bit in (0..bits).step_by(bits.div_ceil(256).max(1)) {
        assert_flip_detected(order_id, attempt, record, bit);
    }
    for len in (0..record.len()).step_by(record.len().div_ceil(64).max(1)) {
        assert!(
            decode_record(order_id, attempt, &record[..len]).is_err(),
            "cut to {len} bytes and not detected"
        );
    }
    entry
}

/// The record with bit `bit` flipped is reported corrupt.
pub fn assert_flip_detected(order_id: &str, attempt: i32, record: &[u8], bit: usize) {
    let mut damaged = record.to_vec();
    damaged[bit / 8] ^= 1 << (bit % 8);
    if let Ok(wrong) = decode_record(order_id, attempt, &damaged) {
        panic!(
            "bit {bit} flipped and not detected: {:?} read as {wrong:?}",
            String::from_utf8_lossy(&damaged)
        );
    }
}

/// The same entry, but for the time it was journaled (an encoding takes the current time).
pub fn assert_same(a: &Entry, b: &Entry) {
    assert_eq!(a.fence, b.fence);
    assert_eq!(a.finish, b.finish);
    assert_eq!(a.actor, b.actor);
    assert_eq!(a.replica, b.replica);
}
