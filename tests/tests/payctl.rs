//! `payctl` end to end: the real binary as a child process, against real coordinator replicas
//! (real PostgreSQL, Redis and the gateway simulator). The key is passed as an operator would
//! (`PAYCTL_API_KEY`, or a key file); assertions are on exit codes, stdout and stderr, and money
//! on the simulator's ledger. Nothing waits for a time: states are waited for.

use std::os::unix::fs::PermissionsExt;

use booking_sim::psp::{SimConfig, Without};
use integration_tests::checks::{charges, wait_for};
use integration_tests::coordinator::{
    ADMIN, OPERATOR, OPERATOR_2, REVIEWER, SERVICE, TestEnv, key_for,
};
use integration_tests::payctl::{Output, Payctl, run};
use integration_tests::review;
use payments_proto::v1 as pb;
use serde_json::{Value, json};

fn pay_args<'a>(order_id: &'a str, method: &'a str) -> Vec<&'a str> {
    vec![
        "pay",
        "--order",
        order_id,
        "--amount",
        "1250",
        "--currency",
        "EUR",
        "--customer",
        "cust-7",
        "--method",
        method,
        "--item",
        "sku-9:2:625",
    ]
}

fn with<'a>(mut args: Vec<&'a str>, more: &[&'a str]) -> Vec<&'a str> {
    args.extend_from_slice(more);
    args
}

fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.code,
        Some(code),
        "{what}: exit code\nstdout:\n{}\nstderr:\n{}",
        output.stdout,
        output.stderr
    );
}

fn json_doc(output: &Output) -> Value {
    serde_json::from_str(output.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            output.stdout, output.stderr
        )
    })
}

/// The one JSON line payctl writes on stderr for an error with `--json`.
fn json_error(output: &Output) -> Value {
    let line = output
        .stderr
        .lines()
        .find(|l| l.starts_with("{\"error\""))
        .unwrap_or_else(|| panic!("no JSON error on stderr:\n{}", output.stderr));
    serde_json::from_str(line).expect("the error is JSON")
}

async fn get_order(replica_url: &str, order_id: &str) -> Option<pb::Order> {
    let mut client =
        integration_tests::coordinator::client(replica_url, Some(&key_for(OPERATOR))).await;
    client
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

async fn order_state(replica_url: &str, order_id: &str) -> Option<pb::OrderState> {
    get_order(replica_url, order_id).await.map(|o| o.state())
}

/// (refunds, amount refunded) of an order on the simulator's ledger (as in
/// tests/tests/refunds.rs).
async fn ledger_refunds(env: &TestEnv, order_id: &str) -> (usize, u64) {
    let ledger = env.sim_control.ledger().await.expect("ledger");
    ledger
        .intents
        .iter()
        .filter(|i| i.metadata.get("order_id").map(String::as_str) == Some(order_id))
        .fold((0, 0), |(n, amount), i| {
            (n + i.refunds.len(), amount + i.amount_refunded)
        })
}

/// The refund idempotency key payctl derived and announced on stderr.
fn announced_refund_key(output: &Output) -> String {
    output
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("refund idempotency key: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no refund key announced:\n{}", output.stderr))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_wait_then_get_in_tables_and_json() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let alice = Payctl::new(&replica.url, OPERATOR);

    let paid = alice
        .run(&with(pay_args("ctl-1", "pm_card_visa"), &["--wait"]))
        .await;
    assert_exit(&paid, 0, "pay --wait");
    assert!(
        paid.stdout
            .contains("attempt 1 SUCCEEDED: order ctl-1 is PAID"),
        "{}",
        paid.stdout
    );
    assert!(paid.stdout.contains("12.50 EUR"), "{}", paid.stdout);
    // The generated idempotency key is announced so the payment can be retried with it.
    assert!(
        paid.stderr.contains("--idempotency-key "),
        "{}",
        paid.stderr
    );
    assert_eq!(charges(&env, "ctl-1").await, 1);

    let shown = alice.run(&["get", "ctl-1"]).await;
    assert_exit(&shown, 0, "get");
    for needle in [
        "PAID",
        "cust-7",
        "sku-9",
        "6.25 EUR",
        OPERATOR,
        "SUCCEEDED",
        "pay:ctl-1:1:create",
        "pi_",
        "r0",
    ] {
        assert!(
            shown.stdout.contains(needle),
            "{needle} in\n{}",
            shown.stdout
        );
    }

    let as_json = alice.run(&["--json", "get", "ctl-1"]).await;
    assert_exit(&as_json, 0, "get --json");
    let order = json_doc(&as_json);
    assert_eq!(order["state"], "ORDER_STATE_PAID");
    assert_eq!(order["amount"]["amount_minor"], 1250);
    assert_eq!(order["attempts"][0]["operator_id"], OPERATOR);
    assert_eq!(order["attempts"][0]["outcome"], "ATTEMPT_OUTCOME_SUCCEEDED");
    assert!(
        order["attempts"][0]["started_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{order}"
    );

    // Without --wait: answered once the attempt is recorded, before the gateway call.
    let recorded = alice.run(&pay_args("ctl-4", "pm_card_visa")).await;
    assert_exit(&recorded, 0, "pay");
    assert!(
        recorded
            .stdout
            .contains("attempt 1 recorded (IN_FLIGHT); follow it with: payctl watch ctl-4"),
        "{}",
        recorded.stdout
    );
    wait_for("ctl-4 is paid", async || {
        (order_state(&replica.url, "ctl-4").await == Some(pb::OrderState::Paid)).then_some(())
    })
    .await;

    // `--key` is no alias of `--idempotency-key` (it would be taken for the API key).
    let confusable = alice
        .run(&with(
            pay_args("ctl-2", "pm_card_visa"),
            &["--key", "retry-me"],
        ))
        .await;
    assert_exit(&confusable, 2, "--key is not a flag");
    assert_eq!(order_state(&replica.url, "ctl-2").await, None);

    // Retrying with the same idempotency key joins the original: no second charge.
    let again = alice
        .run(&with(
            pay_args("ctl-2", "pm_card_visa"),
            &["--wait", "--json", "--idempotency-key", "retry-me"],
        ))
        .await;
    assert_exit(&again, 0, "pay --wait --json");
    assert_eq!(json_doc(&again)["order"]["state"], "ORDER_STATE_PAID");
    let joined = alice
        .run(&with(
            pay_args("ctl-2", "pm_card_visa"),
            &["--wait", "--json", "--idempotency-key", "retry-me"],
        ))
        .await;
    assert_exit(&joined, 0, "the same request again");
    assert_eq!(json_doc(&joined)["joined_existing"], true);
    assert_eq!(charges(&env, "ctl-2").await, 1);

    // A decline is not a failure of payctl, but it is not a payment either: exit 5.
    let declined = alice
        .run(&with(
            pay_args("ctl-3", "pm_card_chargeDeclined"),
            &["--wait"],
        ))
        .await;
    assert_exit(&declined, 5, "declined");
    assert!(declined.stdout.contains("DECLINED"), "{}", declined.stdout);
    assert!(
        declined.stdout.contains("generic_decline"),
        "{}",
        declined.stdout
    );
    assert_eq!(charges(&env, "ctl-3").await, 0);

    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_order_names_its_holder_and_can_be_followed_to_its_outcome() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    // A slow gateway keeps Alice's attempt in flight while Bob tries.
    env.sim_control
        .set_faults(json!({ "latency_ms": 5000 }))
        .await
        .expect("slow gateway");
    let alice = Payctl::new(&replica.url, OPERATOR);
    let bob = Payctl::new(&replica.url, OPERATOR_2);

    // Alice waits for the outcome with a deadline shorter than the gateway: the coordinator
    // answers before it with the attempt in flight, and payctl follows the order from there.
    let mut alice_waits = alice.command(&with(
        pay_args("busy-1", "pm_card_visa"),
        &["--wait", "--timeout", "1s"],
    ));
    let alice_waits = tokio::spawn(async move { run(&mut alice_waits).await });
    wait_for("Alice's attempt holds the order", async || {
        (order_state(&replica.url, "busy-1").await == Some(pb::OrderState::AwaitingConfirmation))
            .then_some(())
    })
    .await;

    let refused = bob.run(&pay_args("busy-1", "pm_card_visa")).await;
    assert_exit(&refused, 3, "refused while held");
    assert!(
        refused.stderr.contains("PAYMENT_IN_PROGRESS"),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains(&format!("held by {OPERATOR}: attempt 1")),
        "{}",
        refused.stderr
    );
    // Not a terminal: no question asked, the way to follow it is printed instead.
    assert!(
        refused
            .stderr
            .contains("payctl watch busy-1 --until-terminal"),
        "{}",
        refused.stderr
    );

    let followed = bob
        .run(&with(
            pay_args("busy-1", "pm_card_visa"),
            &["--watch-if-busy"],
        ))
        .await;
    assert_exit(&followed, 3, "refused, then followed");
    assert!(followed.stderr.contains(OPERATOR), "{}", followed.stderr);
    assert!(
        followed.stdout.contains(&format!(
            "attempt 1 by {OPERATOR} ended SUCCEEDED: order busy-1 is PAID"
        )),
        "{}",
        followed.stdout
    );
    assert_eq!(charges(&env, "busy-1").await, 1, "Bob never charged");

    let alice_waited = alice_waits.await.expect("Alice's payctl");
    assert_exit(&alice_waited, 0, "pay --wait past its deadline");
    assert!(
        alice_waited
            .stderr
            .contains("following order busy-1 until attempt 1 has an outcome"),
        "{}",
        alice_waited.stderr
    );
    assert!(
        alice_waited
            .stdout
            .contains("attempt 1 SUCCEEDED: order busy-1 is PAID"),
        "{}",
        alice_waited.stdout
    );

    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_number_is_refused_by_field_and_never_echoed() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let alice = Payctl::new(&replica.url, OPERATOR);
    let card = "4242424242424242";

    let refused = alice.run(&pay_args("card-1", card)).await;
    assert_exit(&refused, 3, "a card number as the method");
    assert!(
        refused.stderr.contains("INVALID_REQUEST"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("field payment_method"),
        "{}",
        refused.stderr
    );
    assert!(!refused.all().contains(card), "{}", refused.all());

    let as_json = alice
        .run(&with(pay_args("card-1", card), &["--json"]))
        .await;
    assert_exit(&as_json, 3, "--json");
    let error = json_error(&as_json);
    assert_eq!(error["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(
        error["error"]["field_violations"][0]["field"],
        "payment_method"
    );
    assert!(!as_json.all().contains(card));

    // A malformed amount never reaches the coordinator: a usage error.
    let mut bad_amount = pay_args("card-2", "pm_card_visa");
    bad_amount[4] = "12.345";
    let usage = alice.run(&bad_amount).await;
    assert_exit(&usage, 2, "an amount finer than cents");
    assert!(usage.stderr.contains("--amount"), "{}", usage.stderr);
    assert_eq!(
        order_state(&replica.url, "card-1").await,
        None,
        "nothing recorded"
    );

    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roles_and_an_unreachable_coordinator_exit_as_documented() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;

    let anonymous = Payctl::anonymous(&replica.url).run(&["get", "o-1"]).await;
    assert_exit(&anonymous, 3, "no key");
    assert!(
        anonymous.stderr.contains("UNAUTHENTICATED"),
        "{}",
        anonymous.stderr
    );
    assert!(
        anonymous.stderr.contains("PAYCTL_API_KEY"),
        "{}",
        anonymous.stderr
    );

    let wrong = "pk_test_not_a_key";
    let refused = Payctl::with_key(&replica.url, wrong)
        .run(&["get", "o-1"])
        .await;
    assert_exit(&refused, 3, "a wrong key");
    assert!(
        refused.stderr.contains("UNAUTHENTICATED"),
        "{}",
        refused.stderr
    );
    assert!(!refused.all().contains(wrong), "the key is never printed");

    // The key from a private file: authenticated (the order is unknown, not the caller).
    let dir = std::env::temp_dir().join(format!("payctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key_file = dir.join("operator.key");
    std::fs::write(&key_file, format!("{}\n", key_for(OPERATOR))).expect("key file");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let path = key_file.to_string_lossy().into_owned();
    let from_file = Payctl::anonymous(&replica.url)
        .run(&["--key-file", &path, "get", "nowhere"])
        .await;
    assert_exit(&from_file, 3, "an unknown order");
    assert!(
        from_file.stderr.contains("ORDER_NOT_FOUND"),
        "{}",
        from_file.stderr
    );
    // A key file other users can read is refused before any call, without showing the key.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open = Payctl::anonymous(&replica.url)
        .run(&["--key-file", &path, "get", "nowhere"])
        .await;
    assert_exit(&open, 2, "a world-readable key file");
    assert!(open.stderr.contains("chmod 600"), "{}", open.stderr);
    assert!(!open.all().contains(&key_for(OPERATOR)));
    std::fs::remove_dir_all(&dir).expect("clean up");

    // An operator may not follow every order's feed.
    let forbidden = Payctl::new(&replica.url, OPERATOR)
        .run(&["watch", "--all"])
        .await;
    assert_exit(&forbidden, 3, "operator on WatchEvents");
    assert!(
        forbidden.stderr.contains("FORBIDDEN"),
        "{}",
        forbidden.stderr
    );

    // Nothing listens on a port just freed: a failure, not a refusal.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let down = Payctl::new(&format!("http://127.0.0.1:{port}"), OPERATOR)
        .run(&["get", "o-1"])
        .await;
    assert_exit(&down, 4, "coordinator down");
    assert!(
        down.stderr.contains("cannot reach the coordinator"),
        "{}",
        down.stderr
    );

    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_live_events_and_resumes_from_its_cursor() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let feed = Payctl::new(&replica.url, SERVICE);
    let alice = Payctl::new(&replica.url, OPERATOR);

    let mut watcher = feed.spawn(&["--json", "watch", "--all"]);
    let paid = alice
        .run(&with(pay_args("feed-1", "pm_card_visa"), &["--wait"]))
        .await;
    assert_exit(&paid, 0, "pay --wait");
    let lines = watcher
        .until("feed-1's success on the feed", |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|e| {
                e["order_id"] == "feed-1" && e["kind"] == "EVENT_KIND_ATTEMPT_SUCCEEDED"
            })
        })
        .await;
    watcher.kill().await;
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let globals: Vec<i64> = events
        .iter()
        .map(|e| e["global_sequence"].as_i64().expect("global_sequence"))
        .collect();
    assert_eq!(
        globals,
        (1..=globals.len() as i64).collect::<Vec<_>>(),
        "dense, in order"
    );
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["order_id"] == "feed-1")
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert!(kinds.contains(&"EVENT_KIND_ATTEMPT_STARTED"), "{kinds:?}");

    // Resuming after a cursor gives the very next event.
    let mut resumed = feed.spawn(&["--json", "watch", "--all", "--after", "1"]);
    let first = resumed.until("the first event after 1", |_| true).await;
    resumed.kill().await;
    let first: Value = serde_json::from_str(&first[0]).expect("JSON");
    assert_eq!(first["global_sequence"], 2);

    // One order, until it is terminal: ends by itself and tells where to resume.
    let order = alice.run(&["watch", "feed-1", "--until-terminal"]).await;
    assert_exit(&order, 0, "watch --until-terminal");
    assert!(
        order.stdout.contains("ATTEMPT_SUCCEEDED"),
        "{}",
        order.stdout
    );
    let last = order.stdout.lines().count();
    assert!(
        order
            .stderr
            .contains(&format!("resume with: payctl watch feed-1 --after {last}")),
        "{}",
        order.stderr
    );

    replica.stop().await;
    env.cleanup().await;
}

/// Needs ListManualReviews, ResolveManualReview and RefundPayment on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_are_listed_resolved_and_refunded() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &review::REPLICA_ARGS).await;
    let alice = Payctl::new(&replica.url, OPERATOR);
    let carol = Payctl::new(&replica.url, REVIEWER);

    // Charged, answer lost: manual review (exit 5: not known to be paid).
    review::charge_and_lose_the_next_answer(&env).await;
    let lost = alice
        .run(&with(pay_args("rev-1", "pm_card_visa"), &["--wait"]))
        .await;
    assert_exit(&lost, 5, "pay --wait into review");
    assert!(lost.stdout.contains("MANUAL_REVIEW"), "{}", lost.stdout);
    // Not charged, never answered: manual review too.
    review::hang_the_next_create(&env).await;
    let hung = alice
        .run(&with(pay_args("rev-2", "pm_card_visa"), &["--wait"]))
        .await;
    assert_exit(&hung, 5, "pay --wait into review");

    let forbidden = alice.run(&["reviews"]).await;
    assert_exit(&forbidden, 3, "an operator may not list reviews");

    let table = carol.run(&["reviews", "--page-size", "1"]).await;
    assert_exit(&table, 0, "reviews");
    for needle in [
        "rev-1",
        "rev-2",
        "cust-7",
        "12.50 EUR",
        OPERATOR,
        "2 open manual reviews",
    ] {
        assert!(
            table.stdout.contains(needle),
            "{needle} in\n{}",
            table.stdout
        );
    }

    let csv = carol.run(&["reviews", "--csv"]).await;
    assert_exit(&csv, 0, "reviews --csv");
    let mut rows = csv.stdout.lines();
    let header = rows.next().expect("header");
    assert!(
        header.starts_with("order_id,customer_id,amount_minor,currency,"),
        "{header}"
    );
    for column in [
        "items",
        "attempt_number",
        "operator_id",
        "opened_at",
        "reason",
        "gateway_idempotency_keys",
        "gateway_payment_ids",
        "error_history",
        "actions_tried",
    ] {
        assert!(
            header.split(',').any(|c| c == column),
            "{column} in {header}"
        );
    }
    let rev1 = csv
        .stdout
        .lines()
        .find(|l| l.starts_with("rev-1,"))
        .unwrap_or_else(|| panic!("a row for rev-1:\n{}", csv.stdout));
    for needle in [
        "cust-7,1250,EUR",
        "sku-9:2:625",
        "pay:rev-1:1:create",
        "timeout",
    ] {
        assert!(csv.stdout.contains(needle), "{needle} in\n{}", csv.stdout);
    }
    assert!(rev1.contains(OPERATOR), "{rev1}");

    let listed = carol.run(&["--json", "reviews"]).await;
    assert_exit(&listed, 0, "reviews --json");
    let items = json_doc(&listed)["items"]
        .as_array()
        .cloned()
        .expect("items");
    assert_eq!(items.len(), 2);

    // The reviewer finds the charge on the gateway and records it.
    let ledger = env.sim_control.ledger().await.expect("ledger");
    let intent = ledger
        .intents
        .iter()
        .find(|i| i.metadata.get("order_id").map(String::as_str) == Some("rev-1"))
        .expect("rev-1's intent");
    let resolved = carol
        .run(&[
            "resolve",
            "rev-1",
            "--charged",
            "--payment-id",
            &intent.id,
            "--note",
            "charge found on the gateway dashboard",
        ])
        .await;
    assert_exit(&resolved, 0, "resolve --charged");
    assert!(resolved.stdout.contains("PAID"), "{}", resolved.stdout);
    assert!(
        resolved
            .stdout
            .contains(&format!("resolved CHARGED by {REVIEWER}")),
        "{}",
        resolved.stdout
    );

    let nothing = carol
        .run(&[
            "resolve",
            "rev-2",
            "--not-charged",
            "--note",
            "no intent on the gateway",
        ])
        .await;
    assert_exit(&nothing, 0, "resolve --not-charged");
    assert!(nothing.stdout.contains("PENDING"), "{}", nothing.stdout);
    let empty = carol.run(&["reviews"]).await;
    assert!(
        empty.stdout.contains("no open manual reviews"),
        "{}",
        empty.stdout
    );

    // Refund part, then the rest.
    let part = carol
        .run(&[
            "refund",
            "rev-1",
            "--amount",
            "2.50",
            "--currency",
            "EUR",
            "--reason",
            "one item returned",
        ])
        .await;
    assert_exit(&part, 0, "a partial refund");
    assert!(
        part.stdout.contains("refunded    2.50 EUR"),
        "{}",
        part.stdout
    );
    assert!(part.stdout.contains("one item returned"), "{}", part.stdout);
    let rest = carol
        .run(&["--json", "refund", "rev-1", "--reason", "order cancelled"])
        .await;
    assert_exit(&rest, 0, "refund the rest");
    let order = json_doc(&rest);
    assert_eq!(order["state"], "ORDER_STATE_REFUNDED");
    assert_eq!(order["refunded"]["amount_minor"], 1250);
    assert_eq!(order["refunds"].as_array().map(Vec::len), Some(2));
    assert_eq!(order["refunds"][1]["outcome"], "REFUND_OUTCOME_SUCCEEDED");
    let ledger = env.sim_control.ledger().await.expect("ledger");
    let intent = ledger
        .intents
        .iter()
        .find(|i| i.id == intent.id)
        .expect("intent");
    assert_eq!(intent.amount_refunded, 1250, "refunded on the gateway");

    replica.stop().await;
    env.cleanup().await;
}

/// Needs PausePayments, ResumePayments and GetPaymentsStatus on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_pauses_and_resumes_payments() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let admin = Payctl::new(&replica.url, ADMIN);
    let alice = Payctl::new(&replica.url, OPERATOR);

    let status = admin.run(&["status"]).await;
    assert_exit(&status, 0, "status");
    assert!(status.stdout.contains("ACCEPTED"), "{}", status.stdout);

    let forbidden = alice.run(&["pause", "--reason", "nope"]).await;
    assert_exit(&forbidden, 3, "an operator may not pause");
    assert!(
        forbidden.stderr.contains("FORBIDDEN"),
        "{}",
        forbidden.stderr
    );

    let paused = admin
        .run(&["pause", "--reason", "gateway maintenance"])
        .await;
    assert_exit(&paused, 0, "pause");
    assert!(paused.stdout.contains("PAUSED"), "{}", paused.stdout);
    assert!(paused.stdout.contains(ADMIN), "{}", paused.stdout);

    let refused = alice.run(&pay_args("paused-1", "pm_card_visa")).await;
    assert_exit(&refused, 3, "a payment while paused is refused, not failed");
    assert!(
        refused.stderr.contains("PAYMENTS_PAUSED"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("gateway maintenance"),
        "{}",
        refused.stderr
    );

    let as_json = admin.run(&["--json", "status"]).await;
    assert_exit(&as_json, 0, "status --json");
    let doc = json_doc(&as_json);
    assert_eq!(doc["paused"], true);
    assert_eq!(doc["admin_paused"], true);
    assert_eq!(doc["by"], ADMIN);
    assert_eq!(doc["cause"], "PAUSE_CAUSE_ADMIN");

    let resumed = admin.run(&["resume", "--reset-breaker"]).await;
    assert_exit(&resumed, 0, "resume");
    assert!(resumed.stdout.contains("ACCEPTED"), "{}", resumed.stdout);
    assert!(
        resumed.stdout.contains("breaker      CLOSED"),
        "{}",
        resumed.stdout
    );
    let paid = alice
        .run(&with(pay_args("paused-1", "pm_card_visa"), &["--wait"]))
        .await;
    assert_exit(&paid, 0, "pay after resume");
    assert_eq!(charges(&env, "paused-1").await, 1);

    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_the_same_refund_command_twice_refunds_once() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let alice = Payctl::new(&replica.url, OPERATOR);
    let carol = Payctl::new(&replica.url, REVIEWER);
    let paid = alice
        .run(&with(pay_args("rf-1", "pm_card_visa"), &["--wait"]))
        .await;
    assert_exit(&paid, 0, "pay --wait");

    let command = [
        "refund",
        "rf-1",
        "--amount",
        "100",
        "--currency",
        "EUR",
        "--reason",
        "r",
    ];
    let first = carol.run(&command).await;
    assert_exit(&first, 0, "refund");
    let key = announced_refund_key(&first);
    assert!(key.starts_with("payctl-refund:rf-1:100:EUR:"), "{key}");
    assert!(
        first.stdout.contains("refunded    1.00 EUR"),
        "{}",
        first.stdout
    );
    // The operator's call timed out, say: the very same command again replays the first refund.
    let second = carol.run(&command).await;
    assert_exit(&second, 0, "the same refund again");
    assert_eq!(announced_refund_key(&second), key);
    assert!(
        second.stdout.contains("refunded    1.00 EUR"),
        "{}",
        second.stdout
    );
    assert_eq!(ledger_refunds(&env, "rf-1").await, (1, 100), "one refund");
    // The same amount written in major units is the same request.
    let same = carol
        .run(&[
            "refund",
            "rf-1",
            "--amount",
            "1.00",
            "--currency",
            "eur",
            "--reason",
            "r",
        ])
        .await;
    assert_exit(&same, 0, "the same refund, amount in major units");
    assert_eq!(announced_refund_key(&same), key);
    assert_eq!(ledger_refunds(&env, "rf-1").await, (1, 100), "still one");

    // A second identical refund on purpose takes a key of its own.
    let on_purpose = carol
        .run(&with(
            command.to_vec(),
            &["--idempotency-key", "rf-1-second-lamp"],
        ))
        .await;
    assert_exit(&on_purpose, 0, "a second refund with its own key");
    assert!(
        !on_purpose.stderr.contains("refund idempotency key:"),
        "{}",
        on_purpose.stderr
    );
    assert!(
        on_purpose.stdout.contains("refunded    2.00 EUR"),
        "{}",
        on_purpose.stdout
    );
    assert_eq!(ledger_refunds(&env, "rf-1").await, (2, 200));

    // The rest, twice: one refund of the rest.
    let rest = ["--json", "refund", "rf-1", "--reason", "order cancelled"];
    let all = carol.run(&rest).await;
    assert_exit(&all, 0, "refund the rest");
    let rest_key = announced_refund_key(&all);
    assert!(
        rest_key.starts_with("payctl-refund:rf-1:rest::"),
        "{rest_key}"
    );
    assert_eq!(json_doc(&all)["state"], "ORDER_STATE_REFUNDED");
    let again = carol.run(&rest).await;
    assert_exit(&again, 0, "refund the rest again");
    assert_eq!(announced_refund_key(&again), rest_key);
    let order = json_doc(&again);
    assert_eq!(order["state"], "ORDER_STATE_REFUNDED");
    assert_eq!(order["refunds"].as_array().map(Vec::len), Some(3));
    assert_eq!(ledger_refunds(&env, "rf-1").await, (3, 1250));

    replica.stop().await;
    env.cleanup().await;
}

/// Needs refund review items on the server (ManualReviewItem.refund_number,
/// RESOLUTION_REFUNDED with ResolveManualReviewRequest.refund_number and gateway_refund_id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_in_doubt_is_reviewed_and_resolved_refunded() {
    // A gateway without idempotency: a refund whose answer is lost cannot be replayed safely
    // (a replay could refund twice), so its outcome stays unknown.
    let env = TestEnv::with_sim(SimConfig {
        without: Without {
            idempotency: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let replica = env
        .replica("r0", &["--gateway-capabilities", "lookup,cancel"])
        .await;
    let alice = Payctl::new(&replica.url, OPERATOR);
    let carol = Payctl::new(&replica.url, REVIEWER);
    let paid = alice
        .run(&with(pay_args("rfr-1", "pm_card_visa"), &["--wait"]))
        .await;
    assert_exit(&paid, 0, "pay --wait");
    assert_eq!(charges(&env, "rfr-1").await, 1);

    // The gateway refunds, and the connection drops before its answer.
    env.sim_control
        .set_faults(json!({ "next": ["drop_after_charge"], "operations": ["refund"] }))
        .await
        .expect("faults");
    let asked = carol
        .run(&["refund", "rfr-1", "--reason", "customer returned it"])
        .await;
    // Answered with the order, the refund in doubt shown; exit 5: not settled.
    assert_exit(&asked, 5, "refund whose answer is lost");
    let order = wait_for("refund 1 of rfr-1 is in doubt", async || {
        get_order(&replica.url, "rfr-1")
            .await
            .filter(|o| o.refunds.first().map(|r| r.outcome()) == Some(pb::RefundOutcome::Unknown))
    })
    .await;
    assert_eq!(order.refunds.len(), 1);
    assert_eq!(
        ledger_refunds(&env, "rfr-1").await,
        (1, 1250),
        "refunded once"
    );

    let shown = carol.run(&["get", "rfr-1"]).await;
    assert_exit(&shown, 0, "get");
    for needle in [
        "UNKNOWN",
        "refund 1 outcome UNKNOWN: in manual review",
        "payctl resolve rfr-1 --refund 1 --refunded --refund-id re_",
    ] {
        assert!(
            shown.stdout.contains(needle),
            "{needle} in\n{}",
            shown.stdout
        );
    }

    let table = carol.run(&["reviews"]).await;
    assert_exit(&table, 0, "reviews");
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains("rfr-1"))
        .unwrap_or_else(|| panic!("a row for rfr-1:\n{}", table.stdout));
    assert!(row.contains("refund 1"), "{row}");
    assert!(row.contains("12.50 EUR"), "{row}");
    assert!(
        table.stdout.contains("1 open manual review "),
        "{}",
        table.stdout
    );

    let csv = carol.run(&["reviews", "--csv"]).await;
    assert_exit(&csv, 0, "reviews --csv");
    let header = csv.stdout.lines().next().expect("header");
    assert!(
        header.starts_with("order_id,customer_id,amount_minor,currency,"),
        "{header}"
    );
    assert!(
        header.ends_with(",last_sequence,kind,refund_number,refund_amount_minor"),
        "{header}"
    );
    assert!(
        csv.stdout.contains(",refund,1,1250\n"),
        "kind, refund number and amount in\n{}",
        csv.stdout
    );
    assert!(csv.stdout.contains("refund:rfr-1:1"), "{}", csv.stdout);

    let listed = carol.run(&["--json", "reviews"]).await;
    assert_exit(&listed, 0, "reviews --json");
    let items = json_doc(&listed)["items"].clone();
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{items}");
    assert_eq!(items[0]["kind"], "refund");
    assert_eq!(items[0]["refund_number"], 1);
    assert_eq!(items[0]["amount_in_doubt"]["amount_minor"], 1250);

    // A payment decision for a refund is a usage error, before any call.
    let wrong = carol
        .run(&[
            "resolve",
            "rfr-1",
            "--refund",
            "1",
            "--charged",
            "--payment-id",
            "pi_x",
            "--note",
            "n",
        ])
        .await;
    assert_exit(&wrong, 2, "--charged with --refund");

    // The reviewer finds the refund on the gateway and records it.
    let ledger = env.sim_control.ledger().await.expect("ledger");
    let refund_id = ledger
        .intents
        .iter()
        .find(|i| i.metadata.get("order_id").map(String::as_str) == Some("rfr-1"))
        .and_then(|i| i.refunds.first())
        .map(|r| r.id.clone())
        .expect("rfr-1's refund on the gateway");
    let resolved = carol
        .run(&[
            "resolve",
            "rfr-1",
            "--refund",
            "1",
            "--refunded",
            "--refund-id",
            &refund_id,
            "--note",
            "refund seen on the gateway dashboard",
        ])
        .await;
    assert_exit(&resolved, 0, "resolve --refunded");
    for needle in [
        "state       REFUNDED",
        "refunded    12.50 EUR",
        &format!("refund 1 resolved REFUNDED by {REVIEWER}"),
        "refund seen on the gateway dashboard",
    ] {
        assert!(
            resolved.stdout.contains(needle),
            "{needle} in\n{}",
            resolved.stdout
        );
    }
    let as_json = carol.run(&["--json", "get", "rfr-1"]).await;
    let order = json_doc(&as_json);
    assert_eq!(order["refunds"][0]["resolution"], "RESOLUTION_REFUNDED");
    assert_eq!(order["refunds"][0]["resolved_by"], REVIEWER);
    let empty = carol.run(&["reviews"]).await;
    assert!(
        empty.stdout.contains("no open manual reviews"),
        "{}",
        empty.stdout
    );
    assert_eq!(ledger_refunds(&env, "rfr-1").await, (1, 1250), "still once");

    replica.stop().await;
    env.cleanup().await;
}
