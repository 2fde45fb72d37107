//! Waiting for recovery to settle once the faults have stopped: every order the workload
//! touched is read through the public API (GetOrder) until none is AWAITING_CONFIRMATION and
//! none has a refund IN_FLIGHT, within a generous bound.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::bail;
use payments_proto::v1 as pb;
use tokio::task::JoinSet;
use tonic::{Code, Request};

use super::{progress::say, workload::reason_of, world::World};

/// Orders read at once.
const READERS: usize = 16;

/// The orders' final states, read through the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Orders per state (`PAID`, `PENDING`, `REFUNDED`, `MANUAL_REVIEW`, …); orders no call
    /// ever created are `NOT_CREATED`.
    pub states: BTreeMap<String, u64>,
    /// Paid orders with part of their amount refunded.
    pub partly_refunded: u64,
    /// Refunds per outcome.
    pub refunds: BTreeMap<String, u64>,
    /// How long it took to settle.
    pub took: Duration,
}

enum Read {
    Settled(Option<pb::Order>),
    Busy(String, String),
}

fn state_name(state: pb::OrderState) -> String {
    state
        .as_str_name()
        .trim_start_matches("ORDER_STATE_")
        .to_owned()
}

async fn read(world: &World, order_id: String, turn: usize) -> Read {
    let clients = world
        .reviewer_clients
        .first()
        .or_else(|| world.operator_clients.first());
    let Some(clients) = clients.filter(|c| !c.is_empty()) else {
        return Read::Busy(order_id, "no client".to_owned());
    };
    let mut client = clients[turn % clients.len()].clone();
    let mut request = Request::new(pb::GetOrderRequest {
        order_id: order_id.clone(),
    });
    request.set_timeout(Duration::from_secs(5));
    match tokio::time::timeout(Duration::from_secs(6), client.get_order(request)).await {
        Ok(Ok(order)) => {
            let order = order.into_inner();
            if order.state() == pb::OrderState::AwaitingConfirmation {
                return Read::Busy(order_id, "AWAITING_CONFIRMATION".to_owned());
            }
            if order
                .refunds
                .iter()
                .any(|r| r.outcome() == pb::RefundOutcome::InFlight)
            {
                return Read::Busy(order_id, "a refund IN_FLIGHT".to_owned());
            }
            Read::Settled(Some(order))
        }
        Ok(Err(status)) if status.code() == Code::NotFound => Read::Settled(None),
        Ok(Err(status)) => {
            let reason = reason_of(&status);
            Read::Busy(order_id, format!("GetOrder failed: {reason}"))
        }
        Err(_) => Read::Busy(order_id, "GetOrder: no answer".to_owned()),
    }
}

/// Polls until every order has settled, or fails after `bound` naming the ones that did not.
pub(crate) async fn settle(
    world: Arc<World>,
    order_ids: Vec<String>,
    bound: Duration,
) -> anyhow::Result<Settled> {
    let start = tokio::time::Instant::now();
    let mut settled = Settled::default();
    let mut pending = order_ids;
    let mut turn = 0usize;
    let mut last_report = start;
    loop {
        let mut busy: Vec<(String, String)> = Vec::new();
        let mut tasks = JoinSet::new();
        let mut queue = std::mem::take(&mut pending).into_iter();
        loop {
            while tasks.len() < READERS {
                let Some(order_id) = queue.next() else { break };
                turn += 1;
                let world = world.clone();
                tasks.spawn(async move { read(&world, order_id, turn).await });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            match done {
                Ok(Read::Settled(Some(order))) => {
                    *settled.states.entry(state_name(order.state())).or_default() += 1;
                    let refunded = order.refunded.as_ref().map_or(0, |m| m.amount_minor);
                    if order.state() == pb::OrderState::Paid && refunded > 0 {
                        settled.partly_refunded += 1;
                    }
                    for refund in &order.refunds {
                        let name = refund
                            .outcome()
                            .as_str_name()
                            .trim_start_matches("REFUND_OUTCOME_")
                            .to_owned();
                        *settled.refunds.entry(name).or_default() += 1;
                    }
                }
                Ok(Read::Settled(None)) => {
                    *settled.states.entry("NOT_CREATED".to_owned()).or_default() += 1;
                }
                Ok(Read::Busy(order_id, why)) => busy.push((order_id, why)),
                Err(error) => bail!("a GetOrder task failed: {error}"),
            }
        }
        if busy.is_empty() {
            settled.took = start.elapsed();
            return Ok(settled);
        }
        if start.elapsed() > bound {
            let sample: Vec<String> = busy
                .iter()
                .take(10)
                .map(|(id, why)| format!("{id}: {why}"))
                .collect();
            bail!(
                "recovery did not settle within {bound:?}: {} order(s) still busy, e.g. {}",
                busy.len(),
                sample.join("; ")
            );
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = tokio::time::Instant::now();
            say(&format!(
                "  still settling: {} order(s) busy (e.g. {}: {})",
                busy.len(),
                busy[0].0,
                busy[0].1
            ));
        }
        pending = busy.into_iter().map(|(id, _)| id).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
