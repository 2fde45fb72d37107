//! The callers: `concurrency` tasks paying distinct fresh orders (`pm_card_visa`, waiting for
//! the outcome), caller `c` on replica `c % replicas`. Each replica has a few persistent HTTP/2
//! connections opened once for the whole run and shared by its callers: a call never opens a
//! connection of its own.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use payments_client::{Bearer, Client, TlsFiles};
use payments_proto::v1::{self as pb, payment_coordinator_client::PaymentCoordinatorClient};
use tokio_util::sync::CancellationToken;
use tonic::Request;

use crate::chaos::progress::say;

/// A payment's deadline; with `wait_for_outcome` the coordinator answers before it.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
const AMOUNT_MINOR: i64 = 1500;

/// One payment that ended PAID.
#[derive(Clone, Debug)]
pub struct Paid {
    pub order_id: String,
    /// From the call to its answer, as the caller saw it.
    pub latency: Duration,
}

/// What a phase did.
#[derive(Debug, Default)]
pub struct PhaseResult {
    pub paid: Vec<Paid>,
    /// Payments that did not end PAID: `order: why`.
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

/// One client per caller, over the run's shared connections.
pub struct Callers {
    clients: Vec<Client>,
}

impl Callers {
    /// Opens `connections_per_replica` connections to each of `urls` now, and gives caller `c`
    /// replica `c % urls.len()`, the key `keys[c % keys.len()]`.
    pub async fn connect(
        urls: &[String],
        tls: &TlsFiles,
        keys: &[String],
        concurrency: usize,
        connections_per_replica: usize,
    ) -> anyhow::Result<Callers> {
        anyhow::ensure!(!urls.is_empty(), "no coordinator to call");
        anyhow::ensure!(!keys.is_empty(), "no operator key");
        let per_replica = connections_per_replica.max(1);
        let mut channels = Vec::with_capacity(urls.len());
        for url in urls {
            let mut connections = Vec::with_capacity(per_replica);
            for _ in 0..per_replica {
                connections.push(payments_client::connect_channel(url, tls).await?);
            }
            channels.push(connections);
        }
        let bearers = keys
            .iter()
            .map(|key| Bearer::new(key))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let replicas = urls.len();
        let clients = (0..concurrency.max(1))
            .map(|c| {
                let channel = channels[c % replicas][(c / replicas) % per_replica].clone();
                PaymentCoordinatorClient::with_interceptor(
                    channel,
                    bearers[c % bearers.len()].clone(),
                )
            })
            .collect();
        Ok(Callers { clients })
    }

    /// Pays orders `{prefix}-0` … `{prefix}-{total - 1}`, every caller at once, a progress line
    /// every `progress_every`.
    pub async fn pay(
        &self,
        phase: &str,
        prefix: &str,
        total: usize,
        progress_every: Duration,
    ) -> PhaseResult {
        let next = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let result = Arc::new(Mutex::new(PhaseResult::default()));
        let started = Instant::now();
        let stop_progress = CancellationToken::new();
        let progress = tokio::spawn(report_progress(
            phase.to_owned(),
            total,
            done.clone(),
            progress_every,
            stop_progress.clone(),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for client in self.clients.iter().take(total.max(1)) {
            let (client, next, done, result) =
                (client.clone(), next.clone(), done.clone(), result.clone());
            let prefix = prefix.to_owned();
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let order_id = format!("{prefix}-{i}");
                    let outcome = pay_one(client.clone(), &order_id, Instant::now()).await;
                    {
                        let mut result = lock(&result);
                        match outcome {
                            Ok(latency) => result.paid.push(Paid { order_id, latency }),
                            Err(why) => result.failures.push(format!("{order_id}: {why}")),
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = started.elapsed();
        stop_progress.cancel();
        let _ = progress.await;
        let mut result = std::mem::take(&mut *lock(&result));
        result.elapsed = elapsed;
        result
    }

    /// Open loop: starts payment `i` of `{prefix}-0` … `{prefix}-{total - 1}` at `i / rate`
    /// seconds from now, whether or not earlier ones have answered (none waits for a free
    /// caller), on the callers' clients in turn. Each latency runs from the payment's scheduled
    /// start, not from when it was sent: a stall that delays sending counts against it (no
    /// coordinated omission).
    pub async fn pay_at_rate(
        &self,
        phase: &str,
        prefix: &str,
        total: usize,
        rate: f64,
        progress_every: Duration,
    ) -> PhaseResult {
        let done = Arc::new(AtomicUsize::new(0));
        let result = Arc::new(Mutex::new(PhaseResult::default()));
        let stop_progress = CancellationToken::new();
        let progress = tokio::spawn(report_progress(
            phase.to_owned(),
            total,
            done.clone(),
            progress_every,
            stop_progress.clone(),
        ));
        let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let scheduled = started + interval.mul_f64(i as f64);
            tokio::time::sleep_until(scheduled.into()).await;
            let client = self.clients[i % self.clients.len()].clone();
            let (done, result) = (done.clone(), result.clone());
            let order_id = format!("{prefix}-{i}");
            tasks.spawn(async move {
                let outcome = pay_one(client, &order_id, scheduled).await;
                {
                    let mut result = lock(&result);
                    match outcome {
                        Ok(latency) => result.paid.push(Paid { order_id, latency }),
                        Err(why) => result.failures.push(format!("{order_id}: {why}")),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = started.elapsed();
        stop_progress.cancel();
        let _ = progress.await;
        let mut result = std::mem::take(&mut *lock(&result));
        result.elapsed = elapsed;
        result
    }
}

/// One payment, waiting for its outcome: its latency from `from` if it ended PAID.
async fn pay_one(mut client: Client, order_id: &str, from: Instant) -> Result<Duration, String> {
    let mut request = Request::new(pb::ProcessPaymentRequest {
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
        idempotency_key: format!("{order_id}-1"),
        wait_for_outcome: true,
    });
    request.set_timeout(CALL_DEADLINE);
    let response = client.process_payment(request).await;
    let latency = from.elapsed();
    let response = response
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    let state = response.order.map(|o| o.state()).unwrap_or_default();
    if state == pb::OrderState::Paid {
        Ok(latency)
    } else {
        Err(format!("ended {}", state.as_str_name()))
    }
}

/// Prints `phase: done/total (R/s now, A/s average)` every `every` until stopped.
async fn report_progress(
    phase: String,
    total: usize,
    done: Arc<AtomicUsize>,
    every: Duration,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let (mut last_done, mut last_at) = (0, started);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now_done = done.load(Ordering::Relaxed);
        let now = Instant::now();
        let recent = (now_done - last_done) as f64 / (now - last_at).as_secs_f64().max(1e-9);
        let average = now_done as f64 / (now - started).as_secs_f64().max(1e-9);
        say(&format!(
            "  {phase}: {now_done}/{total} ({recent:.0}/s now, {average:.0}/s average)"
        ));
        (last_done, last_at) = (now_done, now);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
