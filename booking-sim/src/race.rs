//! `booking-sim race`: simulated operators racing to pay a batch of orders across coordinator
//! replicas, through the public gRPC API only, then a table per order of what happened, next to
//! the simulator's ledger (the ground truth for charges).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use payments_proto::v1::{self as pb, payment_coordinator_client::PaymentCoordinatorClient};
use serde_json::json;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_types::StatusExt;

use crate::sim_control::SimControl;

/// What `booking-sim race` needs (no `Debug`: it holds API keys).
#[derive(Clone)]
pub struct RaceArgs {
    /// gRPC URLs of the coordinator replicas.
    pub coordinators: Vec<String>,
    /// Operators' API keys; callers take them in turn.
    pub operator_keys: Vec<String>,
    /// The gateway simulator, for its ledger and to slow it down.
    pub gateway_url: String,
    pub orders: usize,
    pub callers_per_order: usize,
    /// Latency the simulator adds to every call, so that the callers overlap.
    pub gateway_latency_ms: u64,
    /// Order ids are `{prefix}-{n}`.
    pub order_prefix: String,
    /// TLS towards https:// coordinators.
    pub tls: payments_client::TlsFiles,
}

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Client = PaymentCoordinatorClient<InterceptedService<Channel, Bearer>>;

/// What one order's callers got.
#[derive(Default, Debug)]
struct Tally {
    started: u32,
    in_progress: u32,
    already_paid: u32,
    other: BTreeMap<String, u32>,
    final_state: Option<pb::OrderState>,
    attempts: usize,
}

/// One wave of callers (numbered `callers`) on every order, all at once; what each order's
/// callers got, and how many calls were made.
async fn race_wave(
    clients: &[Client],
    args: &RaceArgs,
    callers: std::ops::Range<usize>,
) -> anyhow::Result<(BTreeMap<usize, Tally>, usize)> {
    let mut calls = Vec::new();
    for n in 0..args.orders {
        let order_id = format!("{}-{n}", args.order_prefix);
        for caller in callers.clone() {
            // Spread each order's callers over every replica and every operator key.
            let mut client = clients[(n + caller) % clients.len()].clone();
            let request = pb::ProcessPaymentRequest {
                order_id: order_id.clone(),
                amount: Some(pb::Money {
                    amount_minor: 1000 + n as i64,
                    currency: "EUR".to_owned(),
                }),
                customer_id: format!("customer-{n}"),
                payment_method: "pm_card_visa".to_owned(),
                items: vec![pb::LineItem {
                    product_id: "ticket".to_owned(),
                    quantity: 1,
                    unit_amount_minor: 1000 + n as i64,
                }],
                idempotency_key: format!("{order_id}-caller-{caller}"),
                wait_for_outcome: true,
            };
            calls.push(tokio::spawn(async move {
                let mut request = Request::new(request);
                request.set_timeout(Duration::from_secs(30));
                (n, client.process_payment(request).await)
            }));
        }
    }
    let mut tallies: BTreeMap<usize, Tally> = BTreeMap::new();
    let total = calls.len();
    for (done, call) in calls.into_iter().enumerate() {
        let (n, result) = call.await.context("a caller task failed")?;
        let tally = tallies.entry(n).or_default();
        match result {
            Ok(_) => tally.started += 1,
            Err(status) => {
                let reason = status
                    .get_details_error_info()
                    .map(|i| i.reason)
                    .unwrap_or_else(|| format!("{:?}: {}", status.code(), status.message()));
                match reason.as_str() {
                    "PAYMENT_IN_PROGRESS" => tally.in_progress += 1,
                    "ALREADY_PAID" => tally.already_paid += 1,
                    _ => *tally.other.entry(reason).or_default() += 1,
                }
            }
        }
        if (done + 1) % (total / 4).max(1) == 0 || done + 1 == total {
            println!("  {}/{total} calls answered", done + 1);
        }
    }
    Ok((tallies, total))
}

/// Runs the race and prints the table. Fails if any order was charged other than once.
pub async fn run(args: RaceArgs) -> anyhow::Result<()> {
    if args.coordinators.is_empty() || args.operator_keys.is_empty() {
        bail!("need at least one coordinator URL and one operator key");
    }
    let sim = SimControl::new(&args.gateway_url)?;
    sim.set_faults(json!({ "latency_ms": args.gateway_latency_ms }))
        .await
        .context("slowing the gateway simulator")?;

    let mut channels = Vec::new();
    for url in &args.coordinators {
        let channel = payments_client::endpoint(url, &args.tls)?
            .connect()
            .await
            .with_context(|| format!("connecting to the coordinator at {url}"))?;
        channels.push(channel);
    }
    let mut clients: Vec<Client> = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        let key = &args.operator_keys[i % args.operator_keys.len()];
        let bearer: MetadataValue<Ascii> = format!("Bearer {key}")
            .parse()
            .context("operator key is not ASCII")?;
        clients.push(PaymentCoordinatorClient::with_interceptor(
            channel.clone(),
            Bearer(bearer),
        ));
    }

    println!(
        "{} orders × {} operators racing over {} replicas (gateway latency {} ms)…",
        args.orders,
        args.callers_per_order,
        clients.len(),
        args.gateway_latency_ms
    );
    // First wave: every caller of every order at once. Second wave: one late operator per
    // order, after the first wave has its outcomes (refused: the order is already paid).
    let first = race_wave(&clients, &args, 0..args.callers_per_order).await?;
    let late = race_wave(
        &clients,
        &args,
        args.callers_per_order..args.callers_per_order + 1,
    )
    .await?;
    let total = first.1 + late.1;
    let mut tallies = first.0;
    for (n, t) in late.0 {
        let tally = tallies.entry(n).or_default();
        tally.started += t.started;
        tally.in_progress += t.in_progress;
        tally.already_paid += t.already_paid;
        for (reason, count) in t.other {
            *tally.other.entry(reason).or_default() += count;
        }
    }

    // Final states, read through the API like any client.
    let mut reader = clients[0].clone();
    for (n, tally) in tallies.iter_mut() {
        let order_id = format!("{}-{n}", args.order_prefix);
        if let Ok(order) = reader.get_order(pb::GetOrderRequest { order_id }).await {
            let order = order.into_inner();
            tally.final_state = Some(order.state());
            tally.attempts = order.attempts.len();
        }
    }
    let ledger = sim.ledger().await?;
    let mut charges: BTreeMap<String, u32> = BTreeMap::new();
    for intent in &ledger.intents {
        if let Some(order) = intent.metadata.get("order_id") {
            *charges.entry(order.clone()).or_default() += intent.times_charged;
        }
    }

    println!();
    println!(
        "{:<28} {:<22} {:>8} {:>12} {:>12} {:>6} {:>8}",
        "order", "final state", "attempts", "in progress", "already paid", "other", "charges"
    );
    let mut wrong = 0;
    for (n, tally) in &tallies {
        let order_id = format!("{}-{n}", args.order_prefix);
        let charged = charges.get(&order_id).copied().unwrap_or(0);
        if charged != 1 {
            wrong += 1;
        }
        let state = tally.final_state.map(|s| {
            s.as_str_name()
                .trim_start_matches("ORDER_STATE_")
                .to_owned()
        });
        let other: u32 = tally.other.values().sum();
        println!(
            "{:<28} {:<22} {:>8} {:>12} {:>12} {:>6} {:>8}",
            order_id,
            state.unwrap_or_else(|| "?".to_owned()),
            tally.attempts,
            tally.in_progress,
            tally.already_paid,
            other,
            charged
        );
        for (reason, count) in &tally.other {
            println!("{:<28}   other refusal: {reason} × {count}", "");
        }
    }
    println!();
    println!(
        "{} orders, {} calls: {} attempts started, {} refused in progress, {} refused already paid; gateway charges: {}",
        tallies.len(),
        total,
        tallies.values().map(|t| t.started).sum::<u32>(),
        tallies.values().map(|t| t.in_progress).sum::<u32>(),
        tallies.values().map(|t| t.already_paid).sum::<u32>(),
        charges
            .iter()
            .filter(|(o, _)| o.starts_with(&args.order_prefix))
            .map(|(_, c)| c)
            .sum::<u32>(),
    );
    sim.clear_faults().await?;
    if wrong > 0 {
        bail!("{wrong} orders were not charged exactly once");
    }
    println!("Every order was charged exactly once.");
    Ok(())
}
