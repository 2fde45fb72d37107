//! The race figure: `callers` callers (spread over the replicas, several connections to each),
//! each with an idempotency key of its own, call `ProcessPayment` on one fresh order at the same
//! moment (a barrier), for `orders` orders in turn, after `warmup` orders raced the same way but
//! not measured (fresh replicas open their PostgreSQL connections and prepare their statements
//! during the first race: that cold race is printed on a row of its own). One wins; the others
//! are refused
//! (`PAYMENT_IN_PROGRESS` while the winner's attempt is in flight, `ALREADY_PAID` after). Prints
//! the refusals' latency and counts by reason, and checks in the simulator's ledger and request
//! log that each order was charged exactly once, by one intent (create and, for two_phase,
//! confirm: one call each).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use gateway_client::Flow;
use payments_client::Client;
use payments_proto::v1 as pb;
use tonic::Request;
use tonic_types::StatusExt as _;

use super::{
    extra::{ExtraReport, Stack, bearers, clients, ms},
    figures::{Percentiles, gateway_time},
};
use crate::chaos::progress::say;

const AMOUNT_MINOR: i64 = 1500;
const CALL_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct RaceConfig {
    pub callers: usize,
    /// Orders raced and measured.
    pub orders: usize,
    /// Orders raced first and not measured (their ledger is checked all the same).
    pub warmup: usize,
}

impl Default for RaceConfig {
    fn default() -> Self {
        Self {
            callers: 100,
            orders: 100,
            warmup: 5,
        }
    }
}

/// A `ProcessPayment` request for `order_id` as the load's callers make it.
pub fn payment_request(
    order_id: &str,
    idempotency_key: &str,
    wait_for_outcome: bool,
) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: AMOUNT_MINOR,
            currency: "EUR".to_owned(),
        }),
        customer_id: "load-customer".to_owned(),
        payment_method: "pm_card_visa".to_owned(),
        items: vec![pb::LineItem {
            product_id: "ticket".to_owned(),
            quantity: 1,
            unit_amount_minor: AMOUNT_MINOR,
        }],
        idempotency_key: idempotency_key.to_owned(),
        wait_for_outcome,
    }
}

/// How one raced call ended: `PAID`, another state's name, or the refusal's `code/reason`.
fn outcome_of(
    result: &Result<tonic::Response<pb::ProcessPaymentResponse>, tonic::Status>,
) -> String {
    match result {
        Ok(response) => {
            let state = response
                .get_ref()
                .order
                .as_ref()
                .map(|o| o.state())
                .unwrap_or_default();
            match state {
                pb::OrderState::Paid => "PAID".to_owned(),
                other => other.as_str_name().to_owned(),
            }
        }
        Err(status) => {
            let reason = status
                .get_details_error_info()
                .map(|info| info.reason)
                .unwrap_or_default();
            format!("{:?}/{reason}", status.code())
        }
    }
}

/// The refusals a race is expected to give.
pub fn is_race_refusal(outcome: &str) -> bool {
    matches!(
        outcome,
        "Aborted/PAYMENT_IN_PROGRESS" | "FailedPrecondition/ALREADY_PAID"
    )
}

/// Every caller pays `order_id` at once; `(outcome, latency)` per caller.
async fn race_one(clients: &[Client], order_id: &str) -> Vec<(String, Duration)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        let (mut client, barrier) = (client.clone(), barrier.clone());
        let mut request = Request::new(payment_request(
            order_id,
            &format!("{order_id}-caller-{c}"),
            true,
        ));
        request.set_timeout(CALL_DEADLINE);
        tasks.spawn(async move {
            barrier.wait().await;
            let called = Instant::now();
            let result = client.process_payment(request).await;
            (outcome_of(&result), called.elapsed())
        });
    }
    let mut outcomes = Vec::with_capacity(clients.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => outcomes.push((format!("task failed: {error}"), Duration::ZERO)),
        }
    }
    outcomes
}

pub async fn run(config: &RaceConfig, on: &mut Stack<'_>) -> anyhow::Result<ExtraReport> {
    let flow = on.stack.flow;
    let callers = config.callers.max(2);
    let replicas = on.urls.len();
    let per_replica = callers.div_ceil(replicas).clamp(1, 4);
    let keys = bearers(&on.owned.operator_keys)?;
    let clients = clients(&on.urls, &keys, callers, per_replica).await?;
    say(&format!(
        "phase: race: {callers} callers over {replicas} replica(s) ({per_replica} connection(s) \
         each) on one fresh order at once, {} warm-up orders then {} measured",
        config.warmup, config.orders
    ));
    let mut refusals = Vec::new();
    let mut cold = Vec::new();
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    let mut winners_per_order = Vec::new();
    let warmup = config.warmup;
    let orders: Vec<String> = (0..warmup + config.orders.max(1))
        .map(|r| format!("{}-{r}", on.prefix))
        .collect();
    for (r, order) in orders.iter().enumerate() {
        let outcomes = race_one(&clients, order).await;
        winners_per_order.push(outcomes.iter().filter(|(o, _)| o == "PAID").count());
        for (outcome, latency) in outcomes {
            if is_race_refusal(&outcome) {
                match r {
                    0 => cold.push(latency),
                    r if r < warmup => {}
                    _ => refusals.push(latency),
                }
            }
            if r >= warmup {
                *by_outcome.entry(outcome).or_default() += 1;
            } else if !(outcome == "PAID" || is_race_refusal(&outcome)) {
                // A warm-up race answered outside the race's two refusals still fails the
                // figure's check below.
                *by_outcome
                    .entry(format!("{outcome} (warm-up)"))
                    .or_default() += 1;
            }
        }
    }

    let ledger = on.sim.ledger().await?;
    let requests = on.sim.requests().await?;
    let calls = gateway_time(&requests).calls_by_order;
    let expected_calls = match flow {
        Flow::TwoPhase => 2,
        Flow::OneShot => 1,
    };
    let mut once = 0;
    let mut wrong = Vec::new();
    for order in &orders {
        let intents: Vec<_> = ledger
            .intents
            .iter()
            .filter(|i| i.metadata.get("order_id") == Some(order))
            .collect();
        let charges: u32 = intents.iter().map(|i| i.times_charged).sum();
        let order_calls = calls.get(order).copied().unwrap_or(0);
        if intents.len() == 1 && charges == 1 && order_calls == expected_calls {
            once += 1;
        } else if wrong.len() < 3 {
            wrong.push(format!(
                "{order}: {} intent(s), {charges} charge(s), {order_calls} gateway call(s)",
                intents.len()
            ));
        }
    }

    let mut report = ExtraReport::new(format!(
        "race ({flow}): {callers} callers on one fresh order at once, {} orders after {warmup} \
         warm-up, {replicas} replica(s)",
        orders.len() - warmup
    ));
    let refused = refusals.len();
    let latency = |p: Option<Percentiles>| match p {
        Some(p) => format!(
            "p50 {}  p99 {}  max {}  ({} refusals)",
            ms(p.p50),
            ms(p.p99),
            ms(p.max),
            p.n
        ),
        None => "n/a (no refusal)".to_owned(),
    };
    report.row("refusal latency", latency(Percentiles::of(&mut refusals)));
    if warmup > 0 {
        report.row(
            "first race, cold replicas",
            latency(Percentiles::of(&mut cold)),
        );
    }
    report.row(
        "answers",
        by_outcome
            .iter()
            .map(|(outcome, n)| format!("{outcome} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let all = (orders.len() - warmup) * callers;
    report.check(
        format!(
            "every call answered PAID or refused as a race: {} of {all} ({} refused)",
            by_outcome
                .iter()
                .filter(|(o, _)| *o == "PAID" || is_race_refusal(o))
                .map(|(_, n)| n)
                .sum::<usize>(),
            refused
        ),
        by_outcome
            .iter()
            .all(|(o, _)| o == "PAID" || is_race_refusal(o)),
    );
    report.check(
        format!(
            "exactly one gateway charge per order (one intent, charged once, {expected_calls} \
             call(s)): {once} of {}{}",
            orders.len(),
            if wrong.is_empty() {
                String::new()
            } else {
                format!("; {}", wrong.join("; "))
            }
        ),
        once == orders.len(),
    );
    report.check(
        format!(
            "at most one caller answered PAID per order: most {}",
            winners_per_order.iter().max().copied().unwrap_or(0)
        ),
        winners_per_order.iter().all(|w| *w <= 1),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn race_refusals_are_the_two_reasons() {
        assert!(is_race_refusal("Aborted/PAYMENT_IN_PROGRESS"));
        assert!(is_race_refusal("FailedPrecondition/ALREADY_PAID"));
        assert!(!is_race_refusal("FailedPrecondition/ORDER_MISMATCH"));
        assert!(!is_race_refusal("PAID"));
    }
}
