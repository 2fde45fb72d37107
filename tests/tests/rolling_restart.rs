//! A rolling restart loses nothing (issue 8): three REAL coordinator processes on one PostgreSQL
//! database and one Redis prefix, the gateway simulator over HTTP with some latency on every
//! call (so attempts are really in flight), and the chaos run's racing operators
//! (`booking_sim::chaos::Operators`) paying orders across the three replicas the whole time; a
//! caller refused with UNAVAILABLE (`REPLICA_SHUTTING_DOWN`) or cut off by a transport error
//! sends the same idempotency key again on the next replica. Meanwhile r1, r2 and r3 are
//! restarted one after the other as Kubernetes does it: SIGTERM, the process exits 0, it starts
//! again with the same REPLICA_ID, address and JOURNAL_DIR, and the next one goes only once
//! its health is SERVING. Each SIGTERM comes while attempts of that replica are in flight: the
//! database holds one that started before the signal and had no outcome when it was sent, and
//! the replica's own drain line counts it. r1 and r3 have a grace period far longer than any
//! attempt (they finish theirs while draining); r2 has none (it hands them over to the other
//! replicas' recovery workers, which finish them).
//!
//! Then the payments finish, the orders settle and the invariant checker
//! (`booking_sim::checker`) compares the database and the event feed with the simulator's
//! ledger: every must-be-zero row is zero, no order is left for a reviewer, every payment ended
//! in its final state (the healthy gateway's answer: `pm_card_visa` paid, the declining methods
//! declined), and every order a caller was told was paid is PAID and charged exactly once.
//!
//! Every wait is for a state (a payment started, an attempt in flight, an exit, SERVING, settled
//! orders); no assertion is about time.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use booking_sim::{
    chaos::{External, Operators, workload::WorkloadConfig},
    checker::{self, CheckInput, names},
};
use integration_tests::checks::{GUARD, charges_by_order, wait_for};
use integration_tests::coordinator::{OPERATOR, OPERATOR_2, TestEnv, key_for};
use integration_tests::process::CoordinatorProcess;
use serde_json::json;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Orders to pay, each by three racing callers on different replicas.
const PAYMENTS: usize = 180;
/// Orders being paid at once.
const CONCURRENCY: usize = 8;
/// Replica i is restarted once the workload has started payment `RESTART_AT[i]`; meanwhile the
/// workload runs at most `LOOKAHEAD` payments further (so it is still paying while the replica
/// drains, is down and comes back, and cannot finish before the last restart).
const RESTART_AT: [usize; 3] = [20, 70, 120];
const LOOKAHEAD: usize = 40;

/// The replicas and their SHUTDOWN_GRACE_MS. r1 and r3 have a grace period far beyond any
/// attempt at this healthy gateway, so their attempts finish while they drain. r2 has none, as
/// if its grace were too short for a slow gateway: every attempt still running when it drains is
/// stopped mid gateway call and handed to the other replicas' recovery workers.
const REPLICAS: [(&str, &str); 3] = [("r1", "10000"), ("r2", "0"), ("r3", "10000")];

/// Every replica's other settings: a short recovery sweep (a handed-over attempt is claimed at
/// the next one), rate limits far above the load.
const REPLICA_FLAGS: [&str; 6] = [
    "--recovery-sweep-ms",
    "500",
    "--rate-limit-per-second",
    "5000",
    "--rate-limit-burst",
    "10000",
];

/// What one restart saw.
struct Restart {
    replica: String,
    /// Its attempts (`order#number`) in flight across the SIGTERM.
    in_flight: Vec<String>,
    /// The replica's own count of payments in flight when its drain began ("draining N
    /// attempts").
    draining: usize,
    /// Attempts it handed to the other replicas' recovery ("left N attempts to recovery").
    handed_over: usize,
}

/// The number in the last log line holding `before` … `after` (e.g. "draining ", " attempts").
fn logged_count(log: &str, before: &str, after: &str) -> Option<usize> {
    log.lines().rev().find_map(|line| {
        let rest = &line[line.find(before)? + before.len()..];
        rest[..rest.find(after)?].trim().parse().ok()
    })
}

/// Waits until the replica at `url` reports SERVING on `grpc.health.v1.Health/Watch`.
async fn wait_serving(url: &str) {
    let serving = async {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the restarted replica");
        let mut health = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        loop {
            match health.message().await {
                Ok(Some(reply)) if reply.status() == ServingStatus::Serving => return,
                Ok(Some(_)) => continue,
                other => panic!("the health watch of {url} ended before SERVING: {other:?}"),
            }
        }
    };
    tokio::time::timeout(GUARD, serving)
        .await
        .unwrap_or_else(|_| panic!("never happened: {url} reports SERVING"));
}

/// Orders of this replica whose attempt is in flight and has not recorded its intent id yet
/// (its create is at the gateway, its confirm still to come: it cannot end in an instant).
async fn young_attempts(sql: &tokio_postgres::Client, replica: &str) -> Vec<String> {
    sql.query(
        "SELECT order_id FROM attempts \
         WHERE replica_id = $1 AND outcome = 'IN_FLIGHT' AND gateway_payment_id IS NULL",
        &[&replica],
    )
    .await
    .expect("attempts in flight")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// Attempts whose history has a shutdown hand-over, with the replica that took each over
/// afterwards (`None`: nobody did).
async fn handed_over_attempts(sql: &tokio_postgres::Client) -> Vec<(String, Option<String>)> {
    sql.query(
        "SELECT a.order_id, ( \
           SELECT substring(e->>'message' from 'taken over by the recovery worker of ([^ ]+)') \
           FROM jsonb_array_elements(a.errors) WITH ORDINALITY AS t(e, i) \
           WHERE i > (SELECT min(j) FROM jsonb_array_elements(a.errors) WITH ORDINALITY AS u(f, j) \
                      WHERE f->>'step' = 'shutdown') \
             AND e->>'message' LIKE 'taken over by the recovery worker of %' \
           ORDER BY i LIMIT 1) \
         FROM attempts a WHERE a.errors @> '[{\"step\": \"shutdown\"}]' ORDER BY 1",
        &[],
    )
    .await
    .expect("handed-over attempts")
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// Seconds since the epoch, to compare with PostgreSQL's timestamps (the same host's clock).
fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Attempts of `replica` (`order#number`) that started before `before` and had no outcome yet
/// at `after`: in flight across the SIGTERM sent between the two.
async fn spanning(
    sql: &tokio_postgres::Client,
    replica: &str,
    before: f64,
    after: f64,
) -> Vec<String> {
    sql.query(
        "SELECT order_id || '#' || number FROM attempts \
         WHERE replica_id = $1 AND started_at < to_timestamp($2) \
           AND (finished_at IS NULL OR finished_at > to_timestamp($3)) ORDER BY 1",
        &[&replica, &before, &after],
    )
    .await
    .expect("attempts across the SIGTERM")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// An order as it ended: its state, and its last attempt's outcome, payment method and failure
/// message.
struct Ended {
    state: String,
    outcome: Option<String>,
    method: Option<String>,
    failure: Option<String>,
}

async fn ended_orders(sql: &tokio_postgres::Client) -> BTreeMap<String, Ended> {
    sql.query(
        "SELECT o.order_id, o.state, a.outcome, a.payment_method, a.failure_message \
         FROM orders o LEFT JOIN LATERAL \
           (SELECT * FROM attempts WHERE order_id = o.order_id ORDER BY number DESC LIMIT 1) a \
           ON true",
        &[],
    )
    .await
    .expect("orders")
    .iter()
    .map(|row| {
        (
            row.get(0),
            Ended {
                state: row.get(1),
                outcome: row.get(2),
                method: row.get(3),
                failure: row.get(4),
            },
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_racing_payments_loses_nothing() {
    let env = TestEnv::new().await;
    // Every gateway call takes 150–250 ms: a two-phase attempt (create, then confirm) is in
    // flight for several hundred milliseconds, across whichever SIGTERM comes.
    env.sim_control
        .set_faults(json!({ "seed": 8, "latency_ms": 150, "latency_jitter_ms": 100 }))
        .await
        .expect("gateway latency");
    let mut replicas = Vec::new();
    for (name, grace_ms) in REPLICAS {
        let mut flags = REPLICA_FLAGS.to_vec();
        flags.extend(["--shutdown-grace-ms", grace_ms]);
        replicas.push(CoordinatorProcess::spawn(&env, name, &flags).await);
    }
    let sql = env.sql().await;

    let external = External {
        coordinators: replicas.iter().map(|r| r.url.clone()).collect(),
        gateway_url: env.sim.base_url(),
        database_url: env.database_url.clone(),
        operator_keys: vec![key_for(OPERATOR), key_for(OPERATOR_2)],
        reviewer_key: None,
    };
    let config = WorkloadConfig {
        seed: 8,
        payments: PAYMENTS,
        concurrency: CONCURRENCY,
        callers_per_order: 3,
        refund_percent: 0,
        duplicate_percent: 10,
        call_timeout: Duration::from_secs(8),
        max_tries: 12,
        max_presses: 3,
        order_prefix: "rr".to_owned(),
    };
    let mut operators = Operators::start(&external, config, RESTART_AT[0] + LOOKAHEAD)
        .unwrap_or_else(|e| panic!("starting the operators: {e:#}"));

    let mut restarts = Vec::new();
    for (i, replica) in replicas.iter_mut().enumerate() {
        let (name, grace_ms) = REPLICAS[i];
        tokio::time::timeout(GUARD, operators.wait_started(RESTART_AT[i]))
            .await
            .unwrap_or_else(|_| panic!("never happened: payment {} starts", RESTART_AT[i]))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let in_flight = wait_for(&format!("an attempt of {name} in flight"), async || {
            let orders = young_attempts(&sql, name).await;
            (!orders.is_empty()).then_some(orders)
        })
        .await;

        let before = epoch_secs();
        replica.terminate();
        let after = epoch_secs();
        let exit = replica.wait_exit().await;
        let log = replica.log_text();
        assert!(exit.success(), "{name}: exit status {exit}:\n{log}");
        let draining = logged_count(&log, "draining ", " attempts")
            .unwrap_or_else(|| panic!("{name}: no drain line in its log:\n{log}"));
        let handed_over = logged_count(&log, "left ", " attempts to recovery")
            .unwrap_or_else(|| panic!("{name}: no hand-over line in its log:\n{log}"));
        // The proof that the SIGTERM came mid-payment: the replica itself counted the payments
        // it had in flight when its drain began, and the database holds an attempt of it that
        // started before the signal and had no outcome when it was sent.
        assert!(
            draining >= 1,
            "{name}: nothing in flight at SIGTERM (saw {in_flight:?} just before):\n{log}"
        );
        let across = spanning(&sql, name, before, after).await;
        assert!(
            !across.is_empty(),
            "{name}: no attempt in flight across the SIGTERM (saw {in_flight:?} just before)"
        );
        if grace_ms == "0" {
            // No grace: what was in flight was handed over, not finished here.
            assert!(handed_over >= 1, "{name}: nothing handed over:\n{log}");
        } else {
            // A grace far longer than any gateway call here: everything finished on this replica.
            assert_eq!(
                handed_over, 0,
                "{name}: handed over inside its grace:\n{log}"
            );
        }

        replica.restart().await;
        wait_serving(&replica.url).await;
        restarts.push(Restart {
            replica: name.to_owned(),
            in_flight: across,
            draining,
            handed_over,
        });
        let next = RESTART_AT.get(i + 1).map_or(PAYMENTS, |at| at + LOOKAHEAD);
        operators.open_gate(next);
    }

    let stats = operators
        .finish()
        .await
        .unwrap_or_else(|e| panic!("the operators failed: {e:#}"));
    let settled = operators
        .settle(GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let report = checker::check_once_stamped(
        &CheckInput {
            database_url: env.database_url.clone(),
            sim: env.sim_control.clone(),
            requested: Some(PAYMENTS as u64),
        },
        booking_sim::chaos::STAMPING_BOUND,
    )
    .await
    .unwrap_or_else(|e| panic!("the invariant checker could not run: {e:#}"));

    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "rolling restart of r1, r2, r3 under {PAYMENTS} payments:"
    );
    for r in &restarts {
        let _ = writeln!(
            summary,
            "  {}: {} attempt(s) in flight across the SIGTERM ({}), {} draining; exit 0; {} handed over; SERVING again",
            r.replica,
            r.in_flight.len(),
            r.in_flight.join(", "),
            r.draining,
            r.handed_over
        );
    }
    let _ = writeln!(
        summary,
        "  ProcessPayment: {} calls, {} keys, {} same-key retries, {} given up; outcomes seen: {:?}",
        stats.pay_calls, stats.presses, stats.same_key_retries, stats.gave_up, stats.outcomes_seen
    );
    let _ = writeln!(summary, "  refusals and errors: {:?}", stats.refusals);
    let _ = writeln!(summary, "  final states: {:?}", settled.states);
    let _ = writeln!(summary, "\ninvariant checker:\n{}", report.table());
    println!("{summary}");

    assert!(report.ok(), "the invariant checker failed:\n{summary}");
    // The gateway was healthy and every attempt had its grace period: nothing needs a reviewer.
    assert_eq!(report.value(names::MANUAL_REVIEWS), 0, "{summary}");
    assert_eq!(report.value(names::ORDERS), PAYMENTS as u64, "{summary}");
    assert_eq!(stats.gave_up, 0, "no caller gave up:\n{summary}");

    // Every hand-over was noted in its attempt's history, and another replica's recovery
    // worker took the attempt over from there.
    let handed = handed_over_attempts(&sql).await;
    let _ = writeln!(
        summary,
        "handed-over attempts and who took them over: {handed:?}"
    );
    assert_eq!(
        handed.len(),
        restarts.iter().map(|r| r.handed_over).sum::<usize>(),
        "{summary}"
    );
    for (order_id, taker) in &handed {
        assert!(
            taker.is_some(),
            "{order_id}: handed over, never taken over:\n{summary}"
        );
    }

    // Every requested payment ended in its final state: the healthy gateway pays pm_card_visa
    // and declines the declining methods; nothing is left in flight or to a reviewer.
    let ended = ended_orders(&sql).await;
    let charges = charges_by_order(&env).await;
    for n in 0..PAYMENTS {
        let order_id = format!("rr-{n}");
        let order = ended
            .get(&order_id)
            .unwrap_or_else(|| panic!("{order_id} was never recorded:\n{summary}"));
        let expected = match order.method.as_deref() {
            Some("pm_card_visa") => ("PAID", "SUCCEEDED"),
            _ => ("PENDING", "DECLINED"),
        };
        assert_eq!(
            (
                order.state.as_str(),
                order.outcome.as_deref().unwrap_or("none")
            ),
            expected,
            "{order_id} ({:?}, {:?}):\n{summary}",
            order.method,
            order.failure
        );
        let times = charges.get(&order_id).copied().unwrap_or(0);
        assert_eq!(
            times,
            u32::from(order.state == "PAID"),
            "{order_id}: one charge per PAID order, none otherwise:\n{summary}"
        );
    }
    // Every order a caller was told was paid is PAID and charged exactly once.
    assert!(!stats.succeeded_orders.is_empty(), "{summary}");
    for order_id in &stats.succeeded_orders {
        let state = ended.get(order_id).map(|o| o.state.as_str());
        assert_eq!(state, Some("PAID"), "{order_id}:\n{summary}");
        assert_eq!(
            charges.get(order_id).copied(),
            Some(1),
            "{order_id}:\n{summary}"
        );
    }

    drop(operators);
    drop(replicas);
    drop(sql);
    env.cleanup().await;
}
