//! Assertions shared by the integration tests: what the simulator's ledger says was charged,
//! what a refusal's reason is, and waiting for a state (never for a time).

use std::{collections::HashMap, time::Duration};

use payments_proto::v1 as pb;
use tonic_types::StatusExt;

use crate::coordinator::TestEnv;

/// How long `wait_for` waits before it fails a hung test (never an assertion about speed).
pub const GUARD: Duration = Duration::from_secs(60);

/// Successful charges per order id, from the simulator's ledger (the ground truth).
pub async fn charges_by_order(env: &TestEnv) -> HashMap<String, u32> {
    let ledger = env.sim_control.ledger().await.expect("ledger");
    let mut charges = HashMap::new();
    for intent in ledger.intents {
        if let Some(order) = intent.metadata.get("order_id") {
            *charges.entry(order.clone()).or_insert(0) += intent.times_charged;
        }
    }
    charges
}

/// Successful charges of one order, from the simulator's ledger.
pub async fn charges(env: &TestEnv, order_id: &str) -> u32 {
    charges_by_order(env)
        .await
        .get(order_id)
        .copied()
        .unwrap_or(0)
}

/// The `ErrorInfo` reason of a refusal ("" if it has none).
pub fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// An attempt's history as `step: message` lines.
pub fn steps(attempt: &pb::Attempt) -> Vec<String> {
    attempt
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.step, e.message))
        .collect()
}

/// Waits until `probe` observes the state it looks for, checking again every 50 ms; fails the
/// test (naming `what`) only if it never happens within `GUARD`.
pub async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let poll = async {
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match tokio::time::timeout(GUARD, poll).await {
        Ok(value) => value,
        Err(_) => panic!("never happened: {what}"),
    }
}
