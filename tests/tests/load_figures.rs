//! `booking-sim load`'s other figures (issue 9, item 3, and bad input under load) as a user runs
//! them: the real binary, `--figures-only`, tiny sizes. Checks that each figure's rows are there
//! and its checks held (exactly one charge per raced order; generated rows shaped like a real
//! payment's; every payment held in flight, then PAID; every bad request refused with its code),
//! and that the run exits 0. Never a speed threshold.

use integration_tests::process::run_load;

/// The section of `stdout` starting with `title` (up to the next unindented line).
fn section<'a>(stdout: &'a str, title: &str) -> &'a str {
    let start = stdout
        .find(title)
        .unwrap_or_else(|| panic!("no section {title:?} in:\n{stdout}"));
    let rest = &stdout[start..];
    let end = rest
        .char_indices()
        .skip(1)
        .find(|(i, c)| *c != ' ' && rest[..*i].ends_with('\n'))
        .map_or(rest.len(), |(i, _)| i);
    &rest[..end]
}

/// The value of row `name` in `section`.
fn row<'a>(section: &'a str, name: &str) -> &'a str {
    section
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{section}"))
}

fn checks(section: &str) -> Vec<&str> {
    section
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("check"))
        .map(str::trim)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_run_of_each_figure_prints_its_rows_and_its_checks_hold() {
    let (stdout, _stderr) = run_load(&[
        "--figures-only",
        "--figures",
        "race,scale,inflight,abuse",
        "--flow",
        "two_phase",
        "--replicas",
        "2",
        "--concurrency",
        "4",
        "--race-callers",
        "10",
        "--race-orders",
        "2",
        "--race-warmup",
        "1",
        "--scale-orders",
        "200,2000",
        "--scale-payments",
        "20",
        "--inflight",
        "20",
        "--abuse-payments",
        "20",
        "--progress-secs",
        "1",
    ])
    .await;
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    assert!(
        !stdout.contains("flow two_phase:"),
        "--figures-only runs no flow benchmark:\n{stdout}"
    );

    let race = section(
        &stdout,
        "race (two_phase): 10 callers on one fresh order at once, 2 orders after 1 warm-up",
    );
    assert!(
        row(race, "refusal latency").contains("(18 refusals)"),
        "{race}"
    );
    assert!(row(race, "refusal latency").starts_with("p50 "), "{race}");
    // The warm-up race is measured apart, and its order's ledger checked with the others'.
    assert!(
        row(race, "first race, cold replicas").contains("(9 refusals)"),
        "{race}"
    );
    assert!(row(race, "answers").contains("PAID 2"), "{race}");
    assert_eq!(
        checks(race),
        [
            "every call answered PAID or refused as a race: 20 of 20 (18 refused)",
            "exactly one gateway charge per order (one intent, charged once, 2 call(s)): 3 of 3",
            "at most one caller answered PAID per order: most 1",
        ],
        "{race}"
    );

    let scale = section(&stdout, "scale (two_phase): cost per payment");
    for size in ["200 orders", "2000 orders"] {
        let figures = row(scale, size);
        for part in [
            "payments/s, latency p50 ",
            " p99 ",
            " commits and ",
            " buffer pages read per payment",
        ] {
            assert!(figures.contains(part), "{part:?} missing from {figures}");
        }
    }
    let ratio = row(scale, "ratio 2000/200");
    assert!(ratio.starts_with("payments/s "), "{scale}");
    assert!(ratio.contains(", pages read per payment "), "{scale}");
    let scale_checks = checks(scale);
    assert_eq!(scale_checks.len(), 4, "{scale}");
    assert!(
        scale_checks[0].starts_with("at 200 orders: a generated order's rows have a real payment's shape (PAID | 1 | 1 | 3 |"),
        "{scale}"
    );
    assert!(
        scale_checks[3].ends_with("every measured payment PAID and charged once (20 of 20)"),
        "{scale}"
    );

    let inflight = section(
        &stdout,
        "inflight (two_phase): 20 attempts in flight over 2 replica(s)",
    );
    assert!(
        row(inflight, "in flight reached").starts_with("20 calls held by the simulator"),
        "{inflight}"
    );
    let rss = row(inflight, "replica RSS in flight");
    assert!(
        rss.contains("two_phase-r0 ") && rss.contains("two_phase-r1 ") && rss.ends_with(" MB"),
        "{rss}"
    );
    assert_eq!(
        checks(inflight),
        [
            "every payment accepted: 20 of 20",
            "the simulator held every payment at once: 20 of 20",
            "every payment ended PAID after the release: 20 of 20",
        ],
        "{inflight}"
    );

    let abuse = section(
        &stdout,
        "abuse (two_phase): valid payments with and without bad requests",
    );
    for name in ["valid, without bad requests", "valid, with bad requests"] {
        assert!(
            row(abuse, name).contains("payments/s, latency p50 "),
            "{abuse}"
        );
        assert!(row(abuse, name).ends_with("(20 of 20 PAID)"), "{abuse}");
    }
    let refused = row(abuse, "bad requests refused");
    for kind in [
        "invalid order id",
        "negative amount",
        "card number as payment method",
        "no key",
        "wrong key",
    ] {
        assert!(refused.contains(kind), "{kind:?} missing from {refused}");
    }
    let abuse_checks = checks(abuse);
    assert!(
        abuse_checks[0].starts_with(
            "every bad request refused with its code (INVALID_ARGUMENT / UNAUTHENTICATED):"
        ),
        "{abuse}"
    );
    assert_eq!(
        abuse_checks[1], "every valid payment PAID: 40 of 40",
        "{abuse}"
    );
    assert_eq!(
        abuse_checks[2], "the database holds only the valid orders: 40 orders, 40 PAID",
        "{abuse}"
    );
}
