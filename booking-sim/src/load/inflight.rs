//! The in-flight figure: each replica's RSS with many attempts in flight. The simulator is
//! slowed (a latency on `create`, the first gateway call of either flow, held while it runs and
//! shorter than the coordinator's gateway timeout), `attempts` payments are sent without waiting
//! for their outcome across the replicas, and the run waits until the simulator holds them all
//! (its own count of requests in flight). RSS is read then; the latency is lifted and every
//! payment must end PAID.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tonic::Request;

use super::{
    counters::rss_mb,
    extra::{ExtraReport, Stack, bearers, clients},
    race::payment_request,
};
use crate::chaos::progress::say;

/// How long the simulator holds each `create`: under the coordinator's default gateway timeout
/// (10 s), long enough to send every payment before the first is answered.
const HOLD: Duration = Duration::from_secs(8);
/// How long the payments may take to end PAID once released.
const FINISH_GUARD: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub struct InflightConfig {
    pub attempts: usize,
}

impl Default for InflightConfig {
    fn default() -> Self {
        Self { attempts: 1000 }
    }
}

pub async fn run(config: &InflightConfig, on: &mut Stack<'_>) -> anyhow::Result<ExtraReport> {
    let flow = on.stack.flow;
    let n = config.attempts.max(1);
    let pids = on.stack.pids();
    let idle: Vec<Option<f64>> = pids.iter().map(|(_, pid)| rss_mb(*pid)).collect();
    let keys = bearers(&on.owned.operator_keys)?;
    let senders = n.min(64);
    let clients = clients(&on.urls, &keys, senders, 2).await?;
    on.sim
        .set_faults(json!({ "latency_ms": HOLD.as_millis() as u64, "operations": ["create"] }))
        .await?;
    say(&format!(
        "phase: inflight: {n} payments without waiting for the outcome, the simulator holding \
         each create {:.0} s",
        HOLD.as_secs_f64()
    ));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (s, client) in clients.into_iter().enumerate() {
        let prefix = on.prefix.clone();
        tasks.spawn(async move {
            let mut client = client;
            let mut refused = Vec::new();
            for i in (s..n).step_by(senders) {
                let order_id = format!("{prefix}-{i}");
                let mut request =
                    Request::new(payment_request(&order_id, &format!("{order_id}-1"), false));
                request.set_timeout(Duration::from_secs(30));
                if let Err(status) = client.process_payment(request).await {
                    refused.push(format!(
                        "{order_id}: {:?}: {}",
                        status.code(),
                        status.message()
                    ));
                }
            }
            refused
        });
    }
    let mut refused = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        refused.extend(joined.context("a sender failed")?);
    }
    let sent_in = started.elapsed();
    // Wait for the count itself; past the hold the first ones are answered and it only falls.
    let mut reached = 0;
    let mut rss_at_peak: Vec<Option<f64>> = Vec::new();
    while started.elapsed() < HOLD {
        let held = on.sim.ledger().await?.idempotency.in_flight;
        if held > reached {
            reached = held;
            rss_at_peak = pids.iter().map(|(_, pid)| rss_mb(*pid)).collect();
        }
        if held >= n - refused.len() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    say(&format!(
        "  sent in {:.2} s; the simulator held {reached} calls at most",
        sent_in.as_secs_f64()
    ));
    on.sim.clear_faults().await?;

    // Every payment must still end PAID.
    let db = on.stack.db_name.clone();
    let finish = Instant::now();
    let (orders, paid) = loop {
        let (orders, paid) = on.owned.pg.orders(&db).await?;
        if paid >= orders && orders as usize >= n - refused.len() {
            break (orders, paid);
        }
        if finish.elapsed() > FINISH_GUARD {
            bail!("{paid} of {orders} orders PAID {FINISH_GUARD:?} after the release");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let show = |rss: &[Option<f64>]| {
        pids.iter()
            .zip(rss)
            .map(|((id, _), mb)| match mb {
                Some(mb) => format!("{id} {mb:.1} MB"),
                None => format!("{id} unreadable"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut report = ExtraReport::new(format!(
        "inflight ({flow}): {n} attempts in flight over {} replica(s), the simulator holding \
         each create {:.0} s",
        pids.len(),
        HOLD.as_secs_f64()
    ));
    report.row(
        "in flight reached",
        format!(
            "{reached} calls held by the simulator (sent in {:.2} s)",
            sent_in.as_secs_f64()
        ),
    );
    report.row("replica RSS in flight", show(&rss_at_peak));
    report.row("replica RSS idle before", show(&idle));
    report.check(
        format!(
            "every payment accepted: {} of {n}{}",
            n - refused.len(),
            refused
                .first()
                .map(|r| format!(" (first refused: {r})"))
                .unwrap_or_default()
        ),
        refused.is_empty(),
    );
    report.check(
        format!("the simulator held every payment at once: {reached} of {n}"),
        reached >= n,
    );
    report.check(
        format!("every payment ended PAID after the release: {paid} of {orders}"),
        paid == orders && orders as usize == n,
    );
    Ok(report)
}
