//! `booking-sim watch-bench`: what idle watch streams cost one coordinator replica, and how soon
//! a committed event reaches its watchers while payments run. Measured, not tested: it prints
//! figures and a verdict against the budget, and fails only if the bench itself cannot run.
//!
//! 1. Creates the orders the idle streams watch: each is paid once with a card the gateway
//!    declines (`pm_card_chargeDeclined`), which leaves it payable and quiet forever; nobody pays
//!    it again, so its streams never get an event.
//! 2. Opens the idle `WatchOrder` streams (after each order's last event, so nothing is
//!    replayed), spread over many HTTP/2 connections, and reads the replica's RSS before and
//!    after (`/proc/PID/status`, `VmRSS`).
//! 3. Runs payments (`pm_card_visa`, distinct orders, a few at a time). Each payment is started
//!    without waiting for its outcome, then followed with `WatchOrder` until terminal, as
//!    `payctl` would; one resuming `WatchEvents` follower sees every event as well. Each event's
//!    delay is the local receive time less its `occurred_at` (same machine clock).
//!
//! Through the public gRPC API and the simulator's HTTP API only.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use payments_proto::v1 as pb;
use serde_json::json;
use tonic::Request;

use crate::{
    sim_control::SimControl,
    watch::{self, Client, WatchClient},
};

/// Budget (issue): the replica's RSS with 10,000 idle streams.
pub const RSS_BUDGET_MB: f64 = 200.0;
/// Budget (issue): delivery p99 on a 2-core machine.
pub const DELIVERY_P99_BUDGET: Duration = Duration::from_millis(50);

/// What `booking-sim watch-bench` needs (no `Debug`: it holds an API key).
#[derive(Clone)]
pub struct WatchBenchArgs {
    /// gRPC URL of the one replica under test.
    pub coordinator: String,
    /// TLS towards an https:// coordinator.
    pub tls: watch::TlsFiles,
    /// A key with role operator (pays and watches orders).
    pub api_key: String,
    /// A key with role service or admin, for the `WatchEvents` follower (operators may not
    /// call it); without it the follower tries `api_key` and is skipped if refused.
    pub events_api_key: Option<String>,
    pub gateway_url: String,
    /// Idle `WatchOrder` streams to open.
    pub streams: usize,
    /// Distinct orders they watch (stream `i` watches order `i % idle_orders`).
    pub idle_orders: usize,
    /// HTTP/2 connections the idle streams are spread over.
    pub connections: usize,
    /// Idle streams being opened at once.
    pub open_concurrency: usize,
    /// Payments run while measuring delivery.
    pub payments: usize,
    /// Payments in flight at once (also the calls in flight while creating the idle orders).
    pub concurrency: usize,
    /// The replica's process id, for its RSS.
    pub replica_pid: Option<u32>,
    /// Latency the simulator adds to each gateway call during the payments.
    pub gateway_latency_ms: u64,
    /// Order ids are `{prefix}-idle-N`, `{prefix}-pay-N`, `{prefix}-marker`.
    pub order_prefix: String,
}

/// Prints progress at every tenth of `total` (and at the end).
struct Progress {
    label: &'static str,
    total: usize,
    done: AtomicUsize,
    started: Instant,
}

impl Progress {
    fn new(label: &'static str, total: usize) -> Arc<Progress> {
        Arc::new(Progress {
            label,
            total,
            done: AtomicUsize::new(0),
            started: Instant::now(),
        })
    }

    fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let step = (self.total / 10).max(1);
        if done % step == 0 || done == self.total {
            println!(
                "  {}: {done}/{} ({:.1} s)",
                self.label,
                self.total,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Runs `work(i)` for `i` in `0..total`, `workers` at a time.
async fn for_each_concurrently<F, Fut>(total: usize, workers: usize, work: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.clamp(1, total.max(1)) {
        let next = next.clone();
        let work = work.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                work(i).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn money(amount_minor: i64) -> pb::Money {
    pb::Money {
        amount_minor,
        currency: "EUR".to_owned(),
    }
}

fn payment_request(
    order_id: &str,
    card: &str,
    wait_for_outcome: bool,
) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(money(1500)),
        customer_id: "watch-bench".to_owned(),
        payment_method: card.to_owned(),
        items: vec![pb::LineItem {
            product_id: "ticket".to_owned(),
            quantity: 1,
            unit_amount_minor: 1500,
        }],
        idempotency_key: format!("{order_id}-1"),
        wait_for_outcome,
    }
}

/// Pays `order_id` with a declined card and waits for the outcome: an order that exists and
/// will stay quiet. Returns its last event's sequence.
async fn create_quiet_order(client: &mut Client, order_id: &str) -> Result<i64, tonic::Status> {
    let mut request = Request::new(payment_request(order_id, "pm_card_chargeDeclined", true));
    request.set_timeout(Duration::from_secs(30));
    let response = client.process_payment(request).await?.into_inner();
    Ok(response.order.map(|o| o.last_sequence).unwrap_or_default())
}

/// `VmRSS` (or any `Vm*` field) of a `/proc/PID/status` text, in kB.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// User + system CPU time of a `/proc/PID/stat` text, in clock ticks.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time the process used so far (clock ticks of 10 ms, Linux' `USER_HZ`).
fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let ticks = parse_stat_ticks(&std::fs::read_to_string(path).ok()?)?;
    Some(Duration::from_millis(ticks * 10))
}

/// Prints how busy the replica and the bench were since `since` (CPU times then).
fn print_cpu(
    phase: &str,
    replica_pid: Option<u32>,
    since: (Option<Duration>, Option<Duration>, Instant),
) {
    let wall = since.2.elapsed().as_secs_f64().max(1e-9);
    let busy = |before: Option<Duration>, pid: Option<u32>| match (before, cpu_time(pid)) {
        (Some(before), Some(now)) => {
            let used = now.saturating_sub(before).as_secs_f64();
            format!("{used:.1} s CPU ({:.2} cores)", used / wall)
        }
        _ => "?".to_owned(),
    };
    let replica = match replica_pid {
        Some(pid) => busy(since.0, Some(pid)),
        None => "?".to_owned(),
    };
    println!(
        "  CPU during {phase} ({wall:.1} s): replica {replica}; booking-sim {}",
        busy(since.1, None)
    );
}

fn cpu_mark(replica_pid: Option<u32>) -> (Option<Duration>, Option<Duration>, Instant) {
    (
        replica_pid.and_then(|pid| cpu_time(Some(pid))),
        cpu_time(None),
        Instant::now(),
    )
}

/// The process' RSS and peak RSS in MB, if it can be read.
fn memory_mb(pid: Option<u32>) -> Option<(f64, f64)> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let rss = parse_status_kb(&status, "VmRSS")?;
    let peak = parse_status_kb(&status, "VmHWM").unwrap_or(rss);
    Some((rss as f64 / 1024.0, peak as f64 / 1024.0))
}

fn print_memory(when: &str, replica_pid: Option<u32>) -> Option<f64> {
    let own = memory_mb(None)
        .map(|(rss, _)| format!("; booking-sim itself {rss:.1} MB"))
        .unwrap_or_default();
    match replica_pid {
        Some(pid) => match memory_mb(Some(pid)) {
            Some((rss, peak)) => {
                println!("  replica RSS {when}: {rss:.1} MB (peak {peak:.1} MB){own}");
                Some(rss)
            }
            None => {
                println!("  replica RSS {when}: cannot read /proc/{pid}/status{own}");
                None
            }
        },
        None => {
            println!("  replica RSS {when}: not measured (no --replica-pid){own}");
            None
        }
    }
}

/// The `q` quantile (0.0..=1.0) of sorted samples, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50/p90/p99/max of the samples, sorted in place; `None` without samples.
fn summary(samples: &mut [Duration]) -> Option<[Duration; 4]> {
    samples.sort_unstable();
    Some([
        quantile(samples, 0.50)?,
        quantile(samples, 0.90)?,
        quantile(samples, 0.99)?,
        *samples.last()?,
    ])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn print_summary(label: &str, samples: &mut [Duration]) -> Option<Duration> {
    let n = samples.len();
    match summary(samples) {
        Some([p50, p90, p99, max]) => {
            println!(
                "  {label} (n={n}): p50 {}  p90 {}  p99 {}  max {}",
                ms(p50),
                ms(p90),
                ms(p99),
                ms(max)
            );
            Some(p99)
        }
        None => {
            println!("  {label}: no samples");
            None
        }
    }
}

/// The delay from the event's `occurred_at` to `received` (zero if the clocks disagree).
fn delay(event: &pb::OrderEvent, received: SystemTime) -> Option<Duration> {
    let at = watch::occurred_at(event)?;
    Some(received.duration_since(at).unwrap_or_default())
}

/// What the idle streams did after they opened (they should do nothing).
#[derive(Default)]
struct IdleHealth {
    events: AtomicU64,
    ended: AtomicU64,
    errors: AtomicU64,
}

pub async fn run(args: WatchBenchArgs) -> anyhow::Result<()> {
    if args.idle_orders == 0 && args.streams > 0 {
        bail!("--idle-orders must be at least 1");
    }
    let sim = SimControl::new(&args.gateway_url)?;
    sim.clear_faults()
        .await
        .context("resetting the gateway simulator")?;

    println!(
        "watch-bench on {}: {} idle WatchOrder streams on {} orders over {} connections, then {} payments {} at a time",
        args.coordinator,
        args.streams,
        args.idle_orders.min(args.streams),
        args.connections,
        args.payments,
        args.concurrency
    );

    // Phase 1: connections.
    let main = WatchClient::connect(&args.coordinator, &args.tls, &args.api_key).await?;
    let mut idle_clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel = watch::connect_channel(&args.coordinator, &args.tls).await?;
        idle_clients.push(WatchClient::with_channel(channel, &args.api_key)?);
    }
    println!(
        "[1/5] connected: {} connections for the idle streams, 1 for payments and live watchers",
        idle_clients.len()
    );
    let rss_start = print_memory("at start", args.replica_pid);

    // Phase 2: the quiet orders the idle streams watch.
    let idle_orders = args.idle_orders.min(args.streams);
    println!("[2/5] creating {idle_orders} quiet orders (one declined payment each)…");
    let started = Instant::now();
    let last_sequences = Arc::new(Mutex::new(vec![None::<i64>; idle_orders]));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let progress = Progress::new("quiet orders", idle_orders);
        let prefix = args.order_prefix.clone();
        let client = main.client();
        let last_sequences = last_sequences.clone();
        let failures = failures.clone();
        for_each_concurrently(idle_orders, args.concurrency, move |i| {
            let mut client = client.clone();
            let order_id = format!("{prefix}-idle-{i}");
            let last_sequences = last_sequences.clone();
            let failures = failures.clone();
            let progress = progress.clone();
            async move {
                match create_quiet_order(&mut client, &order_id).await {
                    Ok(last) => lock(&last_sequences)[i] = Some(last),
                    Err(status) => lock(&failures).push(format!("{order_id}: {status}")),
                }
                progress.tick();
            }
        })
        .await;
    }
    let failed = lock(&failures).len();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "  {} quiet orders in {elapsed:.1} s ({:.0}/s), {failed} failed{}",
        idle_orders - failed,
        (idle_orders - failed) as f64 / elapsed.max(1e-9),
        lock(&failures)
            .first()
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default()
    );
    if failed == idle_orders && idle_orders > 0 {
        bail!("no quiet order could be created");
    }

    // Phase 3: the idle streams.
    let cpu_open = cpu_mark(args.replica_pid);
    println!(
        "[3/5] opening {} idle WatchOrder streams ({} at a time)…",
        args.streams, args.open_concurrency
    );
    let health = Arc::new(IdleHealth::default());
    let open_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let opened = Arc::new(AtomicUsize::new(0));
    let holders = Arc::new(Mutex::new(Vec::with_capacity(args.streams)));
    let started = Instant::now();
    {
        let progress = Progress::new("idle streams open", args.streams);
        let prefix = args.order_prefix.clone();
        let last_sequences = Arc::new(lock(&last_sequences).clone());
        let idle_clients = Arc::new(idle_clients);
        let (health, open_errors, opened, holders) = (
            health.clone(),
            open_errors.clone(),
            opened.clone(),
            holders.clone(),
        );
        for_each_concurrently(args.streams, args.open_concurrency, move |i| {
            let client = idle_clients[i % idle_clients.len()].clone();
            let n = i % idle_orders.max(1);
            let order_id = format!("{prefix}-idle-{n}");
            let after = last_sequences.get(n).copied().flatten();
            let (health, open_errors, opened, holders, progress) = (
                health.clone(),
                open_errors.clone(),
                opened.clone(),
                holders.clone(),
                progress.clone(),
            );
            async move {
                let Some(after) = after else {
                    lock(&open_errors).push(format!("{order_id}: the order was not created"));
                    progress.tick();
                    return;
                };
                let open = client.watch_order(&order_id, after, false);
                match tokio::time::timeout(Duration::from_secs(60), open).await {
                    Ok(Ok(mut stream)) => {
                        opened.fetch_add(1, Ordering::Relaxed);
                        let holder = tokio::spawn(async move {
                            loop {
                                match stream.message().await {
                                    Ok(Some(_)) => health.events.fetch_add(1, Ordering::Relaxed),
                                    Ok(None) => {
                                        health.ended.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                    Err(_) => {
                                        health.errors.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                };
                            }
                        });
                        lock(&holders).push(holder);
                    }
                    Ok(Err(status)) => lock(&open_errors).push(format!(
                        "{order_id}: {:?}: {}",
                        status.code(),
                        status.message()
                    )),
                    Err(_) => lock(&open_errors).push(format!("{order_id}: no answer in 60 s")),
                }
                progress.tick();
            }
        })
        .await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    print_cpu("the opening", args.replica_pid, cpu_open);
    let opened = opened.load(Ordering::Relaxed);
    {
        let errors = lock(&open_errors);
        println!(
            "  {opened} idle streams open in {elapsed:.1} s ({:.0}/s), {} refused{}",
            opened as f64 / elapsed.max(1e-9),
            errors.len(),
            errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
    // Let the replica settle (allocator, connection buffers) before reading its RSS.
    let cpu_idle = cpu_mark(args.replica_pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    print_cpu("2 s with the idle streams open", args.replica_pid, cpu_idle);
    let rss_idle = print_memory("with the idle streams open", args.replica_pid);
    if let (Some(before), Some(after)) = (rss_start, rss_idle) {
        println!(
            "  the idle streams cost the replica {:.1} MB ({:.1} kB per stream)",
            after - before,
            (after - before) * 1024.0 / opened.max(1) as f64
        );
    }

    // Phase 4: payments, watched.
    println!(
        "[4/5] {} payments (pm_card_visa, {} at a time, gateway latency {} ms), each followed by WatchOrder until terminal, all by one WatchEvents follower…",
        args.payments, args.concurrency, args.gateway_latency_ms
    );
    if args.gateway_latency_ms > 0 {
        sim.set_faults(json!({ "latency_ms": args.gateway_latency_ms }))
            .await
            .context("slowing the gateway simulator")?;
    }
    // Where the follower starts: the last event of a marker order created now. Everything of
    // the payments comes after it; anything else it sees is not the bench's and is skipped.
    let marker = format!("{}-marker", args.order_prefix);
    let start_cursor = {
        let mut client = main.client();
        create_quiet_order(&mut client, &marker)
            .await
            .context("creating the marker order")?;
        let mut stream = main.watch_order(&marker, 0, false).await?;
        let mut last = 0;
        while let Ok(Ok(Some(event))) =
            tokio::time::timeout(Duration::from_secs(5), stream.message()).await
        {
            last = last.max(event.global_sequence);
            if event.kind() == pb::EventKind::AttemptDeclined {
                break;
            }
        }
        last
    };
    let pay_prefix = format!("{}-pay-", args.order_prefix);
    let feed_delays = Arc::new(Mutex::new(Vec::<(pb::EventKind, Duration)>::with_capacity(
        args.payments * 3,
    )));
    let feed_terminal = Arc::new(AtomicUsize::new(0));
    let events_key = args.events_api_key.as_deref().unwrap_or(&args.api_key);
    let mut follower = WatchClient::connect(&args.coordinator, &args.tls, events_key)
        .await?
        .follow_events(start_cursor);
    let follower = match follower.open().await {
        Ok(()) => Some(follower),
        Err(status) if status.code() == tonic::Code::PermissionDenied => {
            println!(
                "  no WatchEvents follower: {} (pass --events-api-key with role service or admin)",
                status.message()
            );
            None
        }
        Err(status) => return Err(status).context("opening the WatchEvents follower"),
    };
    let follower_task = follower.map(|mut follower| {
        let (feed_delays, feed_terminal, pay_prefix) = (
            feed_delays.clone(),
            feed_terminal.clone(),
            pay_prefix.clone(),
        );
        tokio::spawn(async move {
            loop {
                match follower.next().await {
                    Ok(Some(event)) => {
                        let received = SystemTime::now();
                        if !event.order_id.starts_with(&pay_prefix) {
                            continue;
                        }
                        if let Some(d) = delay(&event, received) {
                            lock(&feed_delays).push((event.kind(), d));
                        }
                        if watch::is_terminal(event.state()) {
                            feed_terminal.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        println!("  the WatchEvents follower stopped: {status}");
                        break;
                    }
                }
            }
            follower.stats()
        })
    });

    let payments = Arc::new(Mutex::new(Payments::default()));
    let cpu_payments = cpu_mark(args.replica_pid);
    let started = Instant::now();
    {
        let progress = Progress::new("payments", args.payments);
        let (main, pay_prefix, payments) = (main.clone(), pay_prefix.clone(), payments.clone());
        for_each_concurrently(args.payments, args.concurrency, move |i| {
            let (main, payments, progress) = (main.clone(), payments.clone(), progress.clone());
            let order_id = format!("{pay_prefix}{i}");
            async move {
                let outcome = pay_and_watch(&main, &order_id).await;
                lock(&payments).record(&order_id, outcome);
                progress.tick();
            }
        })
        .await;
    }
    let pay_elapsed = started.elapsed();
    print_cpu("the payments", args.replica_pid, cpu_payments);
    let mut payments = std::mem::take(&mut *lock(&payments));
    let paid = payments.paid;
    let mut follower_stats = None;
    if let Some(follower_task) = follower_task {
        // The follower sees the last terminal events a moment after the WatchOrder streams did.
        let waited = Instant::now();
        while feed_terminal.load(Ordering::Relaxed) < paid
            && waited.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        follower_task.abort();
        follower_stats = follower_task.await.ok();
    }
    sim.clear_faults().await?;

    // Phase 5: figures.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("[5/5] results");
    print_memory("after the payments", args.replica_pid);
    let idle_alive = opened as u64
        - health.ended.load(Ordering::Relaxed)
        - health.errors.load(Ordering::Relaxed);
    println!(
        "  idle streams: {idle_alive}/{opened} still open, {} events received on them (expected 0), {} ended, {} failed",
        health.events.load(Ordering::Relaxed),
        health.ended.load(Ordering::Relaxed),
        health.errors.load(Ordering::Relaxed)
    );
    println!(
        "  payments: {paid}/{} paid in {:.1} s: {:.1} payments/s{}",
        args.payments,
        pay_elapsed.as_secs_f64(),
        paid as f64 / pay_elapsed.as_secs_f64().max(1e-9),
        payments
            .failures
            .first()
            .map(|f| format!("; {} failed (first: {f})", payments.failures.len()))
            .unwrap_or_default()
    );
    print_summary(
        "ProcessPayment call (wait_for_outcome false)",
        &mut payments.call,
    );
    print_summary(
        "ProcessPayment call to PAID seen on WatchOrder",
        &mut payments.pay_to_paid,
    );
    println!(
        "  delivery delay = local receive time - event occurred_at; occurred_at is the coordinator's transaction START, so these are upper bounds of commit-to-delivery"
    );
    let feed_delays = std::mem::take(&mut *lock(&feed_delays));
    let feed_p99 = print_summary(
        "delivery, WatchEvents follower",
        &mut feed_delays.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
    );
    let mut by_kind: std::collections::BTreeMap<i32, Vec<Duration>> = Default::default();
    for (kind, d) in &feed_delays {
        by_kind.entry(*kind as i32).or_default().push(*d);
    }
    for (kind, mut delays) in by_kind {
        let name = pb::EventKind::try_from(kind)
            .map(|k| k.as_str_name().trim_start_matches("EVENT_KIND_"))
            .unwrap_or("?");
        print_summary(&format!("  of which {name}"), &mut delays);
    }
    let order_p99 = print_summary(
        "delivery, WatchOrder, events that occurred after the stream opened",
        &mut payments.live,
    );
    print_summary(
        "delivery, WatchOrder, events that occurred before it opened (include the open)",
        &mut payments.before_open,
    );
    if let Some(stats) = follower_stats {
        println!(
            "  WatchEvents follower: {} streams opened, {} reconnects, {} delivered, {} repeats dropped, {} gaps",
            stats.streams_opened,
            stats.reconnects,
            stats.delivered,
            stats.repeats_dropped,
            stats.gaps
        );
    }

    let rss_verdict = match rss_idle {
        Some(rss) => {
            let per_10k = match (rss_start, opened) {
                (Some(before), n) if n > 0 => format!(
                    ", idle streams +{:.1} MB, i.e. {:.1} MB per 10,000",
                    rss - before,
                    (rss - before) * 10_000.0 / n as f64
                ),
                _ => String::new(),
            };
            format!(
                "RSS with {opened} idle streams {rss:.1} MB{per_10k} ({} budget {RSS_BUDGET_MB:.0} MB)",
                if rss <= RSS_BUDGET_MB {
                    "within"
                } else {
                    "OVER"
                }
            )
        }
        None => "RSS not measured".to_owned(),
    };
    let worst_p99 = feed_p99.into_iter().chain(order_p99).max();
    let delivery_verdict = match worst_p99 {
        Some(p99) => format!(
            "delivery p99 {} ({} budget {})",
            ms(p99),
            if p99 <= DELIVERY_P99_BUDGET {
                "within"
            } else {
                "OVER"
            },
            ms(DELIVERY_P99_BUDGET)
        ),
        None => "delivery not measured".to_owned(),
    };
    println!("verdict: {rss_verdict}; {delivery_verdict}");

    for holder in lock(&holders).drain(..) {
        holder.abort();
    }
    Ok(())
}

/// What one payment's `WatchOrder` saw.
struct Watched {
    /// How long `ProcessPayment` took to answer.
    call: Duration,
    /// Delays of the events that occurred after the stream was open.
    live: Vec<Duration>,
    /// Delays of the events that occurred before (replayed, or committed while it opened).
    before_open: Vec<Duration>,
    final_state: pb::OrderState,
    /// From the `ProcessPayment` call to the terminal event's arrival.
    pay_to_terminal: Duration,
}

/// What the payments saw, together.
#[derive(Default)]
struct Payments {
    paid: usize,
    failures: Vec<String>,
    call: Vec<Duration>,
    pay_to_paid: Vec<Duration>,
    live: Vec<Duration>,
    before_open: Vec<Duration>,
}

impl Payments {
    fn record(&mut self, order_id: &str, outcome: anyhow::Result<Watched>) {
        match outcome {
            Ok(watched) => {
                self.call.push(watched.call);
                self.live.extend(watched.live);
                self.before_open.extend(watched.before_open);
                if watched.final_state == pb::OrderState::Paid {
                    self.paid += 1;
                    self.pay_to_paid.push(watched.pay_to_terminal);
                } else {
                    self.failures.push(format!(
                        "{order_id}: ended {}",
                        watched.final_state.as_str_name()
                    ));
                }
            }
            Err(error) => self.failures.push(format!("{order_id}: {error:#}")),
        }
    }
}

/// Starts a payment without waiting for its outcome, then follows the order until terminal.
async fn pay_and_watch(main: &WatchClient, order_id: &str) -> anyhow::Result<Watched> {
    let called = Instant::now();
    let mut request = Request::new(payment_request(order_id, "pm_card_visa", false));
    request.set_timeout(Duration::from_secs(30));
    let response = main
        .client()
        .process_payment(request)
        .await
        .context("ProcessPayment")?
        .into_inner();
    let call = called.elapsed();
    // The answer may already carry the outcome: the follower then ends at once, without events.
    let (after, state) = response
        .order
        .map(|o| (o.last_sequence, o.state()))
        .unwrap_or_default();
    let mut follower = main.follow_order(order_id, after, true);
    follower.open().await.context("WatchOrder")?;
    let opened = SystemTime::now();
    let mut watched = Watched {
        call,
        live: Vec::new(),
        before_open: Vec::new(),
        final_state: state,
        pay_to_terminal: Duration::ZERO,
    };
    let deadline = Duration::from_secs(60);
    while let Some(event) = tokio::time::timeout(deadline, follower.next())
        .await
        .context("no terminal event within 60 s")?
        .context("WatchOrder")?
    {
        let received = SystemTime::now();
        if let Some(at) = watch::occurred_at(&event) {
            let delay = received.duration_since(at).unwrap_or_default();
            if at >= opened {
                watched.live.push(delay);
            } else {
                watched.before_open.push(delay);
            }
        }
        watched.final_state = event.state();
    }
    watched.pay_to_terminal = called.elapsed();
    Ok(watched)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_fields_in_kb() {
        let status = "Name:\tcoordinator\nVmPeak:\t  900000 kB\nVmHWM:\t   61234 kB\nVmRSS:\t   51200 kB\nThreads:\t4\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(51_200));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(61_234));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
        assert_eq!(parse_status_kb(status, "Threads"), None);
    }

    #[test]
    fn reads_cpu_ticks_past_a_name_with_spaces() {
        let stat = "4242 (tokio runtime) S 1 4242 4242 0 -1 4194560 1234 0 0 0 350 125 0 0 20 0 6 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(475));
        assert_eq!(parse_stat_ticks("4242 (x) S 1"), None);
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&samples, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&samples, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&samples, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(quantile(&[], 0.5), None);
        let one = [Duration::from_millis(7)];
        assert_eq!(quantile(&one, 0.99), Some(Duration::from_millis(7)));
    }

    #[test]
    fn summary_sorts_first() {
        let mut samples: Vec<Duration> = [5, 1, 3, 2, 4].map(Duration::from_millis).to_vec();
        let [p50, _, p99, max] = summary(&mut samples).unwrap();
        assert_eq!(p50, Duration::from_millis(3));
        assert_eq!(p99, Duration::from_millis(5));
        assert_eq!(max, Duration::from_millis(5));
        assert!(summary(&mut []).is_none());
    }
}
