//! `booking-sim load` (issue 9, item 1) as a user runs it: the real binary starts its own Redis,
//! fresh databases on the test PostgreSQL, the simulator and real coordinator replicas, per flow,
//! and prints a table per flow. A tiny run checks that every figure is there and that the counts
//! add up (what was asked was paid, once, as the database and the gateway's ledger say). Never a
//! speed threshold: the figures' values are the benchmark's business.

use booking_sim::load::ceiling::commits_per_payment;
use gateway_client::Flow;
use integration_tests::process::run_load;

const PAYMENTS: usize = 30;
const WARMUP: usize = 5;
const REPLICAS: usize = 2;

/// The first number in `text` (digits and a decimal point).
fn number(text: &str) -> f64 {
    let start = text
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or_else(|| panic!("no number in {text:?}"));
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|e| panic!("{digits:?} in {text:?}: {e}"))
}

/// The value of the table row `name` (after the name), in the flow's section.
fn row<'a>(section: &'a str, name: &str) -> &'a str {
    section
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{section}"))
}

/// The `ms` figure after `label` (e.g. `p99 `) in `text`.
fn ms_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text:?}"));
    let rest = &text[at + label.len()..];
    assert!(
        rest.split_whitespace().nth(1) == Some("ms"),
        "{label:?} is not in ms in {text:?}"
    );
    number(rest)
}

fn check_flow(stdout: &str, flow: Flow) {
    let header = format!(
        "flow {flow}: {REPLICAS} replica(s), 4 callers, {PAYMENTS} payments after {WARMUP} warm-up"
    );
    let start = stdout
        .find(&header)
        .unwrap_or_else(|| panic!("no section {header:?} in:\n{stdout}"));
    let rest = &stdout[start + header.len()..];
    let section = &stdout[start..start + header.len() + rest.find("\nflow ").unwrap_or(rest.len())];

    assert!(
        row(section, "payments ").starts_with(&format!("{PAYMENTS} of {PAYMENTS} PAID in ")),
        "{section}"
    );
    assert!(number(row(section, "payments/s")) > 0.0, "{section}");

    let latency = row(section, "ProcessPayment latency");
    let [p50, p90, p99, max] = ["p50 ", "p90 ", "p99 ", "max "].map(|l| ms_after(latency, l));
    assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{latency}");

    // The overhead is each payment's latency less the simulator's time on its calls.
    let overhead = row(section, "coordinator overhead");
    let (o50, o99) = (ms_after(overhead, "p50 "), ms_after(overhead, "p99 "));
    assert!(
        o50 <= p50 && o99 <= p99 && o50 <= o99,
        "{overhead} vs {latency}"
    );
    assert!(
        !overhead.contains("not in its log"),
        "every payment's calls are in the simulator's log: {overhead}"
    );

    // two_phase creates then confirms; one_shot creates with confirm=true.
    let calls = match flow {
        Flow::TwoPhase => "2.00",
        Flow::OneShot => "1.00",
    };
    assert_eq!(
        row(section, "gateway calls per payment"),
        calls,
        "{section}"
    );

    // Every payment commits at least the transactions of its own request (the ceiling's script
    // is checked against the coordinator's real statements); on top come the feed's and the
    // replicas' background work, which vary with timing, so this is a floor, not an equality.
    let commits_row = row(section, "PostgreSQL commits per payment");
    let per_payment = number(commits_row);
    let total = number(&commits_row[commits_row.find('(').expect("total")..]);
    assert_eq!(
        (total / PAYMENTS as f64 * 100.0).round() / 100.0,
        per_payment,
        "{commits_row}"
    );
    assert!(
        total >= (PAYMENTS * commits_per_payment(flow)) as f64,
        "{commits_row}: fewer than {} commits per payment",
        commits_per_payment(flow)
    );
    assert!(
        commits_row.contains("without the idle replicas' own"),
        "{commits_row}"
    );

    // Each payment takes and releases a lease at least.
    let redis_row = row(section, "Redis commands per payment");
    let redis_total = number(&redis_row[redis_row.find('(').expect("total")..]);
    assert!(redis_total >= PAYMENTS as f64, "{redis_row}");
    assert_eq!(
        (redis_total / PAYMENTS as f64 * 100.0).round() / 100.0,
        number(redis_row),
        "{redis_row}"
    );
    assert!(!redis_row.contains("shared Redis"), "{redis_row}");

    let rss = row(section, "replica RSS");
    for i in 0..REPLICAS {
        let id = format!("{flow}-r{i} ");
        let at = rss
            .find(&id)
            .unwrap_or_else(|| panic!("no {id:?} in {rss}"));
        assert!(number(&rss[at + id.len()..]) > 0.0, "{rss}");
        assert!(
            rss[at..]
                .split(',')
                .next()
                .is_some_and(|r| r.ends_with(" MB")),
            "{rss}"
        );
    }

    let expected = PAYMENTS + WARMUP;
    assert_eq!(
        row(section, "checked"),
        format!(
            "database: {expected} orders, {expected} PAID; ledger: {expected} of {expected} \
             orders charged, at most 1 time(s) each"
        ),
        "{section}"
    );
    assert!(
        !section.contains("PostgreSQL ceiling"),
        "--no-ceiling: {section}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_run_prints_every_figure_and_the_counts_add_up() {
    let (stdout, stderr) = run_load(&[
        "--flow",
        "both",
        "--replicas",
        &REPLICAS.to_string(),
        "--payments",
        &PAYMENTS.to_string(),
        "--warmup",
        &WARMUP.to_string(),
        "--concurrency",
        "4",
        "--progress-secs",
        "1",
        "--no-ceiling",
        "--figures",
        "none",
    ])
    .await;
    for flow in [Flow::TwoPhase, Flow::OneShot] {
        check_flow(&stdout, flow);
        for phase in ["warm-up", "measured"] {
            let line = format!("phase: {flow}: {phase}");
            assert!(
                stderr.contains(&line),
                "no progress line {line:?}:\n{stderr}"
            );
        }
    }
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    assert!(
        !stdout.contains("ratio to PostgreSQL ceiling"),
        "--no-ceiling prints no ratio: {stdout}"
    );
}

/// `--rate half`: after the measured (closed-loop) phase, as many payments again on a fixed
/// schedule at half its rate; their rows are printed and every payment of both phases is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_run_at_half_the_rate_prints_its_rows() {
    let (stdout, stderr) = run_load(&[
        "--flow",
        "one_shot",
        "--replicas",
        "1",
        "--payments",
        "12",
        "--warmup",
        "2",
        "--concurrency",
        "2",
        "--rate",
        "half",
        "--no-ceiling",
        "--figures",
        "none",
    ])
    .await;
    let closed = number(row(&stdout, "payments/s"));
    let open = row(&stdout, "open loop");
    assert!(open.starts_with("12 of 12 PAID at "), "{open}");
    // The schedule's rate is half the measured one, as printed (one decimal each).
    let scheduled = number(&open["12 of 12 PAID at ".len()..]);
    assert!(
        (scheduled - closed / 2.0).abs() <= 0.051,
        "{open} vs {closed}/s"
    );
    let latency = row(&stdout, "open-loop latency");
    let [p50, p99] = ["p50 ", "p99 "].map(|l| ms_after(latency, l));
    assert!(p50 <= p99, "{latency}");
    let overhead = row(&stdout, "open-loop overhead");
    let (o50, o99) = (ms_after(overhead, "p50 "), ms_after(overhead, "p99 "));
    assert!(o50 <= p50 && o99 <= p99, "{overhead} vs {latency}");
    assert!(!overhead.contains("not in its log"), "{overhead}");
    assert!(
        row(&stdout, "PostgreSQL commits per payment").contains("over both phases' 24 payments"),
        "{stdout}"
    );
    assert_eq!(
        row(&stdout, "checked"),
        "database: 26 orders, 26 PAID; ledger: 26 of 26 orders charged, at most 1 time(s) each",
        "{stdout}"
    );
    assert!(
        stderr.contains("phase: one_shot: open loop, 12 payments at "),
        "{stderr}"
    );
}
