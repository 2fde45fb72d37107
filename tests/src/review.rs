//! Opening a manual review on purpose, as `tests/tests/recovery.rs`
//! (`without_idempotency_and_lookup_a_timeout_goes_to_manual_review`) does: a replica that may
//! rely on no gateway capability (no lookup, no same-key replay, no cancel), in `one_shot` flow,
//! with a short gateway timeout; then the simulator holds the next create's answer past it.
//! Nothing can establish the outcome, so the attempt ends UNKNOWN and the order goes to
//! MANUAL_REVIEW.

use serde_json::json;

use crate::coordinator::TestEnv;

/// Extra arguments of a replica on which a lost gateway answer opens a manual review.
pub const REPLICA_ARGS: [&str; 6] = [
    "--gateway-flow",
    "one_shot",
    "--gateway-capabilities",
    "none",
    "--gateway-timeout-ms",
    "500",
];

/// The next create is charged, but its answer is held back long past the replica's timeout:
/// the order goes to review, and the ledger shows the charge the reviewer must find.
pub async fn charge_and_lose_the_next_answer(env: &TestEnv) {
    env.sim_control
        .set_faults(
            json!({ "next": ["timeout"], "operations": ["create"], "slow_answer_ms": 60000 }),
        )
        .await
        .expect("faults");
}

/// The next create is never processed nor answered: the order goes to review with nothing
/// charged.
pub async fn hang_the_next_create(env: &TestEnv) {
    env.sim_control
        .set_faults(json!({ "next": ["hang"], "operations": ["create"] }))
        .await
        .expect("faults");
}
