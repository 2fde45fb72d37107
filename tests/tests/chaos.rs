//! A short chaos run (issue 7): `booking_sim::chaos` starts its own PostgreSQL, Redis, gateway
//! simulator and three real coordinator processes (`target/debug/coordinator`, built by
//! `scripts/test.sh`), races operators over 150 orders while a seeded schedule applies every
//! fault kind once — kill -9 and restart, SIGSTOP past the lease and SIGCONT, PostgreSQL and
//! Redis stopped and started, a latency spike, slow answers, hangs, 500 before and after
//! charging, dropped answers, 429 — then lets recovery settle and runs the invariant checker,
//! which must pass. It needs no PostgreSQL or Redis of the environment's: everything is its own.
//! A second, tiny run goes through the real `booking-sim chaos` command (`target/debug/booking-sim`,
//! also built by `scripts/test.sh`).
//!
//! A live `WatchEvents` subscriber is kept through the run (resuming after its last position
//! whenever its stream breaks): its row, positions received against 1..max, must show no gap,
//! duplicate or reordering; and every order a caller was told was paid must be paid.

use std::time::Duration;

use booking_sim::{
    chaos::{self, ChaosConfig, FaultKind},
    checker::names,
};
use integration_tests::process::{booking_sim_binary, coordinator_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_with_every_fault_kind_passes_the_checker() {
    let config = ChaosConfig {
        payments: 150,
        seed: 7,
        concurrency: 6,
        // One fault of each kind, no more: short enough for CI.
        payments_per_fault: 10_000,
        min_gap: Duration::from_millis(500),
        settle_timeout: Duration::from_secs(90),
        progress_every: Duration::from_secs(5),
        ..ChaosConfig::default()
    };
    let outcome = chaos::run(config)
        .await
        .unwrap_or_else(|e| panic!("the chaos run failed: {e:#}"));
    let summary = outcome.summary();
    println!("{summary}");

    assert!(outcome.schedule.left_out.is_empty(), "{summary}");
    for kind in FaultKind::ALL {
        assert!(
            outcome.applied(kind) >= 1,
            "fault kind {kind} was never applied:\n{summary}"
        );
    }
    assert!(
        outcome.faults.unexpected_exits.is_empty(),
        "a replica died on its own:\n{summary}"
    );
    assert!(
        outcome.report.ok(),
        "the invariant checker failed:\n{summary}"
    );
    // The live subscriber was there, saw its streams broken (replicas killed, PostgreSQL
    // restarted) and still received every position once, in order.
    let live = outcome
        .report
        .row(names::LIVE_FEED)
        .unwrap_or_else(|| panic!("no live feed row:\n{summary}"));
    assert_eq!(live.value, 0, "{summary}");
    let feed = outcome
        .live_feed
        .as_ref()
        .unwrap_or_else(|| panic!("no live feed subscriber:\n{summary}"));
    assert!(!feed.positions.is_empty(), "{summary}");
    assert!(feed.resumes >= 1, "the stream never broke:\n{summary}");
    // Callers told SUCCEEDED: their orders are paid (the checker's row, and the set is real).
    assert!(!outcome.workload.succeeded_orders.is_empty(), "{summary}");
    assert_eq!(
        outcome
            .report
            .row(names::TOLD_PAID_NOT_PAID)
            .map(|r| r.value),
        Some(0),
        "{summary}"
    );
    // The simulator has every capability (idempotency, lookup, cancel): every doubt must be
    // resolved from the gateway, none left to a reviewer.
    assert_eq!(outcome.report.value(names::MANUAL_REVIEWS), 0, "{summary}");
    // The run did pay orders, and the racing callers were refused rather than let through.
    assert!(
        outcome.settled.states.get("PAID").copied().unwrap_or(0) > 0,
        "{summary}"
    );
    assert!(
        outcome
            .workload
            .refusals
            .get("PAYMENT_IN_PROGRESS")
            .copied()
            .unwrap_or(0)
            > 0,
        "{summary}"
    );
}

/// The real `booking-sim chaos` command, tiny: a few payments on two replicas of the real
/// coordinator binary, one cheap fault (the simulator answering 500 before charging). It must
/// exit 0 with progress lines on stderr and the summary, the checker's table and its verdict on
/// stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chaos_command_runs_end_to_end() {
    let output = tokio::process::Command::new(booking_sim_binary())
        .args([
            "chaos",
            "--payments",
            "24",
            "--seed",
            "11",
            "--replicas",
            "2",
            "--concurrency",
            "4",
            "--faults",
            "500-before",
            "--payments-per-fault",
            "10000",
            "--min-gap-ms",
            "200",
            "--settle-timeout-secs",
            "90",
            "--progress-secs",
            "1",
        ])
        .arg("--coordinator-bin")
        .arg(coordinator_binary())
        // Nothing of the caller's environment may point it at running services.
        .env_remove("DATABASE_URL")
        .env_remove("GATEWAY_URL")
        .env_remove("COORDINATOR_BIN")
        .env_remove("CHAOS_OPERATOR_KEYS")
        .env_remove("CHAOS_REVIEWER_KEY")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run booking-sim chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let both = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(output.status.code(), Some(0), "{both}");

    for line in [
        "seed 11: 24 payments",
        "live feed subscriber: WatchEvents open",
        "phase: racing operators and the fault schedule",
        "payments 24/24 done",
        "phase: waiting for recovery to settle",
        "phase: invariant checker",
        "phase: tearing down",
    ] {
        assert!(stderr.contains(line), "no progress line {line:?}:\n{both}");
    }
    assert!(stdout.contains("chaos run: seed 11, 24 payments"), "{both}");
    assert!(stdout.contains("500-before"), "{both}");
    for row in [
        names::REQUESTED,
        names::DOUBLE_CHARGES,
        names::LOST_OUTCOMES,
        names::FEED_GAPS,
        names::LIVE_FEED,
        names::TOLD_PAID_NOT_PAID,
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?}:\n{both}"));
        if row != names::REQUESTED {
            assert!(line.contains(" ok "), "{line}\n{both}");
        }
    }
    assert!(
        stdout.contains("result: OK, every invariant held"),
        "{both}"
    );
}
