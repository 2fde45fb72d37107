//! `booking-sim load --sweep` (issue 9, item 5) as a user runs it: the real binary, one stack per
//! flow reused by every step, the PostgreSQL ceiling at each concurrency, one table row per
//! concurrency and an SVG chart. A tiny sweep checks that the rows are there, the counts add up
//! (every step's payments PAID, in the database and the gateway's ledger) and that the chart has
//! every series and its legend. Never a speed threshold: the figures' values are the
//! benchmark's business.

use booking_sim::load::chart::{CEILING_LABEL, colours, hex};
use gateway_client::Flow;
use integration_tests::process::run_load;

const CONCURRENCIES: [usize; 2] = [1, 2];
const PAYMENTS: usize = 20;
const WARMUP: usize = 5;
const REPLICAS: usize = 2;

/// The table rows of flow `flow`'s section: the lines after its header that start with a number.
fn rows(stdout: &str, flow: Flow) -> Vec<Vec<String>> {
    let header = format!("sweep {flow}: {REPLICAS} replica(s), closed loop");
    let start = stdout
        .find(&header)
        .unwrap_or_else(|| panic!("no section {header:?} in:\n{stdout}"));
    stdout[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn number(text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a number: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_sweep_prints_a_row_per_concurrency_and_draws_the_chart() {
    let dir = std::env::temp_dir().join(format!("load-sweep-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let chart = dir.join("sweep.svg");
    let sweep = CONCURRENCIES.map(|c| c.to_string()).join(",");
    let (stdout, stderr) = run_load(&[
        "--flow",
        "both",
        "--replicas",
        &REPLICAS.to_string(),
        "--sweep",
        &sweep,
        "--payments",
        &PAYMENTS.to_string(),
        "--warmup",
        &WARMUP.to_string(),
        "--ceiling-secs",
        "1",
        "--progress-secs",
        "1",
        "--figures",
        "none",
        "--chart",
        chart.to_str().expect("utf-8 path"),
    ])
    .await;

    let flows = [Flow::TwoPhase, Flow::OneShot];
    for flow in flows {
        let rows = rows(&stdout, flow);
        assert_eq!(rows.len(), CONCURRENCIES.len(), "{flow}:\n{stdout}");
        for (row, concurrency) in rows.iter().zip(CONCURRENCIES) {
            // concurrency, payments, payments/s, p50 ms, p99 ms, ceiling/s, ratio
            assert_eq!(row.len(), 7, "{row:?} in:\n{stdout}");
            assert_eq!(row[0], concurrency.to_string(), "{row:?}");
            assert_eq!(row[1], PAYMENTS.to_string(), "{row:?}");
            let [rate, p50, p99, ceiling, ratio] = [2, 3, 4, 5, 6].map(|i| number(&row[i]));
            assert!(rate > 0.0 && ceiling > 0.0, "{row:?}");
            assert!(p50 <= p99, "{row:?}");
            assert!(
                (ratio - rate / ceiling).abs() < 0.01,
                "the ratio is the two rates': {row:?}"
            );
        }
        let expected = CONCURRENCIES.len() * (PAYMENTS + WARMUP);
        assert!(
            stdout.contains(&format!(
                "checked: database: {expected} orders, {expected} PAID of {expected} made by the \
                 steps; ledger: every step's orders charged once\n"
            )),
            "{flow}:\n{stdout}"
        );
        for (i, concurrency) in CONCURRENCIES.iter().enumerate() {
            let line = format!(
                "phase: {flow}: step {} of {}, {concurrency} callers",
                i + 1,
                CONCURRENCIES.len()
            );
            assert!(
                stderr.contains(&line),
                "no progress line {line:?}:\n{stderr}"
            );
        }
    }
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ratio to PostgreSQL ceiling: "),
        "the last line is the ratio: {stdout}"
    );

    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(300)]);
    assert!(svg.trim_end().ends_with("</svg>"));
    for (i, flow) in flows.iter().enumerate() {
        for label in [
            format!("{flow}: the stack ({REPLICAS} replicas)"),
            format!("{flow}: {CEILING_LABEL}"),
            format!("{flow}: p99 ProcessPayment latency"),
        ] {
            assert!(
                svg.lines().any(|l| l.trim() == label),
                "no legend {label:?}"
            );
        }
        // A flow's stack and p99 lines are its dark colour, its ceiling the light one: each
        // line, and each legend sample, is a polyline of its colour.
        let (dark, light) = colours(i);
        for (colour, lines) in [(dark, 2 * 2), (light, 1 + 1)] {
            let stroke = format!("stroke=\"{}\"", hex(colour));
            let drawn = svg
                .lines()
                .filter(|l| l.contains("<polyline") && l.contains(&stroke))
                .count();
            assert!(drawn >= lines, "{drawn} polylines of {stroke} ({flow})");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
