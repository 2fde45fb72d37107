//! The scale figure: the cost of a payment with N orders already in the tables, for each N (by
//! default 10k and 1M, about 75 s to generate here; `--scale-orders` to choose). Per N, a fresh
//! database is filled with N paid orders by set-based SQL (`INSERT … SELECT generate_series`),
//! each with the rows a real payment leaves: the order PAID, one attempt SUCCEEDED, its events
//! stamped with feed positions. The values and the events come from [`ceiling`]'s statements,
//! the place booking-sim already knows exactly what a payment writes; after the measured phase
//! one generated order's shape is compared with a real payment's (a check row). Then VACUUM
//! (ANALYZE) and a CHECKPOINT, as after any bulk load, and the flow's ordinary warm-up and
//! measured phase ([`Measure`]) on top.
//!
//! [`ceiling`]: super::ceiling
//! [`Measure`]: super::Measure

use std::time::{Duration, Instant};

use anyhow::Context;
use gateway_client::IdempotencyKey;
use tokio_postgres::NoTls;

use super::{
    Measure, Target,
    ceiling::{self, Arg},
    extra::{ExtraReport, ms, ratio_text},
    report::FlowReport,
    services::{FlowStack, Owned},
};
use crate::{chaos::progress::say, sim_control::SimControl};

/// Stand-ins replaced per row in SQL.
const ORDER: &str = "ORDER";
const INTENT: &str = "INTENT";

#[derive(Clone, Debug)]
pub struct ScaleConfig {
    /// Orders already in the tables, per measurement.
    pub sizes: Vec<usize>,
    /// Measured payments at each size.
    pub payments: usize,
    pub warmup: usize,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            sizes: vec![10_000, 1_000_000],
            payments: 1000,
            warmup: 100,
        }
    }
}

/// One event row of a payment, as [`ceiling::transactions`] inserts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub sequence: i64,
    pub kind: String,
    pub state: String,
    pub attempt: Option<i32>,
    pub actor: String,
    /// With [`INTENT`] for the gateway's intent id.
    pub detail: String,
}

/// The payment whose values the generated rows take (the stand-ins replaced per row).
fn template(flow: gateway_client::Flow) -> ceiling::Payment {
    ceiling::Payment {
        order_id: ORDER.to_owned(),
        intent_id: INTENT.to_owned(),
        request_key: format!("{ORDER}-1"),
        operator_id: "load-op-0".to_owned(),
        ..ceiling::Payment::bench(flow)
    }
}

/// The events one payment of `flow` inserts, in order, with the values the ceiling's statements
/// bind (`ceiling::Payment::value`). The coordinator writes them inside its attempt statements
/// (`begin_attempt`'s ORDER_CREATED and ATTEMPT_STARTED, `finish_attempt`'s ATTEMPT_SUCCEEDED),
/// so they are listed here; `measure_size` checks that a generated order's rows have a real
/// payment's shape, events included.
pub fn event_rows(flow: gateway_client::Flow) -> anyhow::Result<Vec<EventRow>> {
    let payment = template(flow);
    let value = |arg: Arg| payment.value(arg).unwrap_or_default();
    let row =
        |sequence: i64, kind: &str, state: &str, attempt: Option<i32>, detail: String| EventRow {
            sequence,
            kind: kind.to_owned(),
            state: state.to_owned(),
            attempt,
            actor: value(Arg::OperatorId),
            detail,
        };
    Ok(vec![
        row(1, "ORDER_CREATED", "PENDING", None, String::new()),
        row(
            2,
            "ATTEMPT_STARTED",
            "AWAITING_CONFIRMATION",
            Some(1),
            value(Arg::StartedDetail),
        ),
        row(
            3,
            "ATTEMPT_SUCCEEDED",
            "PAID",
            Some(1),
            value(Arg::ChargedDetail),
        ),
    ])
}

/// Fills the fresh database at `database_url` with orders `{prefix}0` … `{prefix}{n - 1}`, each
/// paid as a real payment of `flow` leaves it, then VACUUM (ANALYZE) and CHECKPOINT.
pub async fn populate(
    database_url: &str,
    flow: gateway_client::Flow,
    prefix: &str,
    n: usize,
) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .context("connecting to the scale database")?;
    let task = tokio::spawn(connection);
    let result = populate_with(&client, flow, prefix, n).await;
    drop(client);
    let _ = task.await;
    result
}

async fn populate_with(
    client: &tokio_postgres::Client,
    flow: gateway_client::Flow,
    prefix: &str,
    n: usize,
) -> anyhow::Result<()> {
    let p = template(flow);
    let last = i64::try_from(n).context("too many orders")? - 1;
    let events = event_rows(flow)?;
    let value = |arg| p.value(arg).unwrap_or_default();
    client.batch_execute("SET synchronous_commit = off").await?;
    client
        .execute(
            "INSERT INTO orders (order_id, amount_minor, currency, customer_id, items, state, \
             fence, attempt_count, last_sequence) \
             SELECT $1::text || n, $2, $3, $4, $5::text::jsonb, 'PAID', 1, 1, $7 \
             FROM generate_series(0, $6::bigint) n",
            &[
                &prefix,
                &p.amount_minor,
                &p.currency,
                &p.customer_id,
                &p.items,
                &last,
                &(events.len() as i64),
            ],
        )
        .await
        .context("generating the orders")?;
    client
        .execute(
            "INSERT INTO attempts (order_id, number, fence, operator_id, replica_id, request_key, \
             fingerprint, payment_method, flow, outcome, gateway_create_key, \
             gateway_confirm_key, gateway_payment_id, finished_at) \
             SELECT o, 1, 1, $2, $3, replace($4, $13, o), $5, $6, $7, 'SUCCEEDED', \
             replace($8, $13, o), replace($9, $13, o), replace($10, $14, 'pi_pre_' || n), now() \
             FROM (SELECT $1::text || n AS o, n FROM generate_series(0, $11::bigint) n) s \
             WHERE $12",
            &[
                &prefix,
                &p.operator_id,
                &p.replica_id,
                &p.request_key,
                &p.fingerprint,
                &p.payment_method,
                &value(Arg::Flow),
                &IdempotencyKey::create(&p.order_id, 1).as_str(),
                &IdempotencyKey::confirm(&p.order_id, 1).as_str(),
                &p.intent_id,
                &last,
                &true,
                &ORDER,
                &INTENT,
            ],
        )
        .await
        .context("generating the attempts")?;
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let states: Vec<&str> = events.iter().map(|e| e.state.as_str()).collect();
    let attempts: Vec<Option<i32>> = events.iter().map(|e| e.attempt).collect();
    let actors: Vec<&str> = events.iter().map(|e| e.actor.as_str()).collect();
    let details: Vec<&str> = events.iter().map(|e| e.detail.as_str()).collect();
    // Stamped as the feed's sequencer would have: dense positions in insertion order, after
    // whatever the database already holds.
    client
        .execute(
            "INSERT INTO events (order_id, sequence, kind, state, attempt_number, actor, detail, \
             amount_minor, currency, global_sequence) \
             SELECT $1::text || s.n, k.seq, k.kind, k.state, k.attempt, k.actor, \
             replace(k.detail, $11, 'pi_pre_' || s.n), $9, $10, \
             b.base + row_number() OVER (ORDER BY s.n, k.seq) \
             FROM generate_series(0, $2::bigint) s(n) \
             CROSS JOIN unnest($3::bigint[], $4::text[], $5::text[], $6::int[], $7::text[], \
                               $8::text[]) AS k(seq, kind, state, attempt, actor, detail) \
             CROSS JOIN (SELECT coalesce(max(global_sequence), 0) AS base FROM events) b \
             ORDER BY s.n, k.seq",
            &[
                &prefix,
                &last,
                &sequences,
                &kinds,
                &states,
                &attempts,
                &actors,
                &details,
                &p.amount_minor,
                &p.currency,
                &INTENT,
            ],
        )
        .await
        .context("generating the events")?;
    // What a DBA does after a bulk load, so the measurement sees a table in its steady state and
    // not the load's aftermath (hint bits set by the first reads, autovacuum's insert-triggered
    // pass over millions of new rows, a checkpoint flushing them) competing with the payments.
    client
        .batch_execute("VACUUM (ANALYZE) orders, attempts, events")
        .await
        .context("VACUUM (ANALYZE)")?;
    if let Err(error) = client.batch_execute("CHECKPOINT").await {
        // Only a superuser (or pg_checkpoint) may; without it the figure is still right, noisier.
        say(&format!(
            "  no CHECKPOINT after generating ({error}): measuring anyway"
        ));
    }
    Ok(())
}

/// What an order's rows look like, without the values that differ between payments.
const SHAPE: &str = "SELECT concat_ws(' | ', o.state, o.fence, o.attempt_count, o.last_sequence, \
     o.refunded_minor, o.refund_count, \
     (SELECT string_agg(concat_ws('/', a.number, a.fence, a.outcome, a.flow, \
        a.gateway_payment_id IS NOT NULL, a.finished_at IS NOT NULL, a.decline_code IS NULL, \
        a.errors = '[]'::jsonb), ',' ORDER BY a.number) FROM attempts a \
        WHERE a.order_id = o.order_id), \
     (SELECT string_agg(concat_ws('/', e.sequence, e.kind, e.state, \
        coalesce(e.attempt_number::text, '-'), e.detail = '', e.amount_minor IS NOT NULL, \
        e.global_sequence IS NOT NULL), ',' ORDER BY e.sequence) FROM events e \
        WHERE e.order_id = o.order_id)) \
     FROM orders o WHERE o.order_id = $1";

/// The shapes of orders `real` and `generated` in the database.
async fn shapes(database_url: &str, real: &str, generated: &str) -> anyhow::Result<[String; 2]> {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls).await?;
    let task = tokio::spawn(connection);
    let mut out = [String::new(), String::new()];
    for (slot, order) in out.iter_mut().zip([real, generated]) {
        let row = client
            .query_opt(SHAPE, &[&order])
            .await
            .context("reading an order's shape")?;
        *slot = row
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_else(|| format!("no order {order}"));
    }
    drop(client);
    let _ = task.await;
    Ok(out)
}

/// One size's figures.
struct Sized {
    orders: usize,
    populate: Duration,
    report: FlowReport,
    /// Buffer pages PostgreSQL read per payment (warm-up included, the replicas' background
    /// work too): the machine-independent cost, flat when every statement uses an index.
    pages_per_payment: f64,
}

impl Sized {
    fn commits_per_payment(&self) -> Option<f64> {
        let r = &self.report;
        Some(payments_commits(
            r.pg_commits?,
            r.idle_commits_per_sec.unwrap_or(0.0),
            r.elapsed,
            r.paid,
        ))
    }
}

/// Commits per payment less the idle replicas' own (`idle_per_sec` over `elapsed`), as the flow
/// table computes it.
pub fn payments_commits(commits: u64, idle_per_sec: f64, elapsed: Duration, paid: usize) -> f64 {
    let background = idle_per_sec * elapsed.as_secs_f64();
    (commits as f64 - background).max(0.0) / paid.max(1) as f64
}

/// Populates and measures one size on `stack` (its replicas stopped at the end).
async fn measure_size(
    config: &super::LoadConfig,
    owned: &Owned,
    prefix: &str,
    stack: &mut FlowStack,
    orders: usize,
    report: &mut ExtraReport,
) -> anyhow::Result<Sized> {
    let flow = stack.flow;
    let prefix = format!("{prefix}-{orders}");
    say(&format!(
        "phase: scale: generating {orders} paid orders (orders, attempts, stamped events), then \
         ANALYZE"
    ));
    let started = Instant::now();
    populate(&stack.database_url, flow, &format!("{prefix}-pre-"), orders).await?;
    let populate_time = started.elapsed();
    say(&format!(
        "  {orders} orders generated in {:.1} s",
        populate_time.as_secs_f64()
    ));
    let Target::Owned(_) = &config.target else {
        anyhow::bail!("the scale figure needs a stack of its own");
    };
    let mut measure_config = config.clone();
    measure_config.payments = config.extra.scale.payments.max(1);
    measure_config.warmup = config.extra.scale.warmup;
    measure_config.ceiling = false;
    // The figure is the closed-loop cost; no open-loop phase on top.
    measure_config.rate = None;
    let urls = stack.urls();
    let db_name = stack.db_name.clone();
    let measure = Measure {
        flow,
        urls: &urls,
        tls: &payments_client::TlsFiles::default(),
        operator_keys: &owned.operator_keys,
        sim: SimControl::new(&stack.sim.base_url())?,
        pg: Some((&owned.pg, db_name.as_str())),
        redis_url: Some(owned.redis_url.as_str()),
        redis_is_ours: owned.redis_is_ours,
        pids: stack.pids(),
        prefix: prefix.clone(),
    };
    // The statistics of the generation's own (closed) connection are in by now.
    let pages_before = owned.pg.pages_read(&db_name).await?;
    let mut flow_report = measure.run(&measure_config, Some(stack)).await?;
    // `run` waited for the statistics of the measured phase before reading its commits.
    let pages = owned
        .pg
        .pages_read(&db_name)
        .await?
        .saturating_sub(pages_before);
    let pages_per_payment =
        pages as f64 / (measure_config.payments + measure_config.warmup).max(1) as f64;
    // The generated orders are in the database too; the check is about the measured ones.
    let generated = orders as i64;
    flow_report.checked.database = flow_report
        .checked
        .database
        .map(|(all, paid)| (all - generated, paid - generated));
    let [real, made] = shapes(
        &stack.database_url,
        &format!("{prefix}-m-0"),
        &format!("{prefix}-pre-0"),
    )
    .await?;
    report.check(
        format!(
            "at {orders} orders: a generated order's rows have a real payment's shape ({real})"
        ),
        real == made && !real.starts_with("no order"),
    );
    if real != made {
        report.row(&format!("generated shape at {orders}"), made);
    }
    report.check(
        format!(
            "at {orders} orders: every measured payment PAID and charged once ({} of {})",
            flow_report.paid, flow_report.asked
        ),
        flow_report.ok(),
    );
    Ok(Sized {
        orders,
        populate: populate_time,
        report: flow_report,
        pages_per_payment,
    })
}

pub async fn run(
    config: &super::LoadConfig,
    owned: &Owned,
    flow: gateway_client::Flow,
    prefix: &str,
) -> anyhow::Result<ExtraReport> {
    let scale = &config.extra.scale;
    let mut report = ExtraReport::new(format!(
        "scale ({flow}): cost per payment with orders already in the tables, {} payments after \
         {} warm-up at each size, {} callers",
        scale.payments, scale.warmup, config.concurrency
    ));
    let mut measured = Vec::new();
    for &orders in &scale.sizes {
        say(&format!(
            "phase: scale: a fresh database, simulator and replicas for {orders} orders"
        ));
        let mut stack = owned.start_flow(flow).await?;
        let sized = measure_size(config, owned, prefix, &mut stack, orders, &mut report).await;
        owned.finish_flow(stack).await;
        let sized = sized?;
        let r = &sized.report;
        report.row(
            &format!("{} orders", sized.orders),
            format!(
                "{:.1} payments/s, latency p50 {} p99 {}, {} commits and {:.0} buffer pages read \
                 per payment (generated in {:.1} s)",
                r.payments_per_sec(),
                r.latency.map_or_else(|| "n/a".to_owned(), |p| ms(p.p50)),
                r.latency.map_or_else(|| "n/a".to_owned(), |p| ms(p.p99)),
                sized
                    .commits_per_payment()
                    .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}")),
                sized.pages_per_payment,
                sized.populate.as_secs_f64()
            ),
        );
        measured.push(sized);
    }
    if let [first, .., last] = &measured[..] {
        let (a, b) = (&first.report, &last.report);
        let p = |r: &FlowReport, f: fn(&super::figures::Percentiles) -> Duration| {
            r.latency.map_or(0.0, |l| f(&l).as_secs_f64())
        };
        report.row(
            &format!("ratio {}/{}", last.orders, first.orders),
            format!(
                "payments/s {}, latency p50 {} p99 {}, commits per payment {}, pages read per \
                 payment {}",
                ratio_text(b.payments_per_sec(), a.payments_per_sec()),
                ratio_text(p(b, |l| l.p50), p(a, |l| l.p50)),
                ratio_text(p(b, |l| l.p99), p(a, |l| l.p99)),
                ratio_text(
                    last.commits_per_payment().unwrap_or(0.0),
                    first.commits_per_payment().unwrap_or(0.0)
                ),
                ratio_text(last.pages_per_payment, first.pages_per_payment),
            ),
        );
    }
    if !scale.sizes.contains(&1_000_000) {
        report.row(
            "note",
            "the issue's figure is at 1M orders: `--scale-orders 10000,1000000`",
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_client::Flow;

    #[test]
    fn commits_per_payment_leave_the_idle_replicas_out() {
        assert_eq!(
            payments_commits(600, 20.0, Duration::from_secs(5), 100),
            5.0
        );
        assert_eq!(payments_commits(50, 20.0, Duration::from_secs(5), 100), 0.0);
        assert_eq!(payments_commits(7, 0.0, Duration::ZERO, 0), 7.0);
    }

    #[test]
    fn a_payment_writes_three_events_with_the_ceilings_values() {
        for flow in [Flow::TwoPhase, Flow::OneShot] {
            let rows = event_rows(flow).unwrap();
            let kinds: Vec<(i64, &str, &str, Option<i32>)> = rows
                .iter()
                .map(|r| (r.sequence, r.kind.as_str(), r.state.as_str(), r.attempt))
                .collect();
            assert_eq!(
                kinds,
                [
                    (1, "ORDER_CREATED", "PENDING", None),
                    (2, "ATTEMPT_STARTED", "AWAITING_CONFIRMATION", Some(1)),
                    (3, "ATTEMPT_SUCCEEDED", "PAID", Some(1)),
                ]
            );
            assert_eq!(rows[2].detail, format!("charged: {INTENT}"));
            assert_eq!(rows[0].detail, "");
            assert!(rows.iter().all(|r| r.actor == "load-op-0"));
        }
    }
}
