//! Log lines of the real coordinator binary: JSON objects with `LOG_FORMAT=json` (for a log
//! pipeline), plain text without terminal colour codes otherwise (its stderr is a file here).

use integration_tests::checks::wait_for;
use integration_tests::coordinator::{OPERATOR, TestEnv};
use integration_tests::process::CoordinatorProcess;
use payments_proto::v1 as pb;

async fn one_lookup(process: &CoordinatorProcess) {
    let mut client = process.client(OPERATOR).await;
    let missing = client
        .get_order(pb::GetOrderRequest {
            order_id: "log-none".into(),
        })
        .await
        .expect_err("unknown order");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_format_json_writes_one_json_object_per_line() {
    let env = TestEnv::new().await;
    let process = CoordinatorProcess::spawn(&env, "r-json", &["--log-format", "json"]).await;
    one_lookup(&process).await;
    let text = wait_for("the replica logged that it listens", async || {
        let text = process.log_text();
        text.contains("coordinator listening").then_some(text)
    })
    .await;
    let mut lines = 0;
    // The harness writes its own `==== …` marker lines into the file between runs.
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("===="))
    {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
        assert!(value.get("timestamp").is_some(), "{line}");
        lines += 1;
    }
    assert!(lines > 0);
    drop(process);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_logs_to_a_file_carry_no_colour_codes() {
    let env = TestEnv::new().await;
    let process = CoordinatorProcess::spawn(&env, "r-text", &[]).await;
    one_lookup(&process).await;
    let text = wait_for("the replica logged that it listens", async || {
        let text = process.log_text();
        text.contains("coordinator listening").then_some(text)
    })
    .await;
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape in the log file:\n{text}"
    );
    let listening = text
        .lines()
        .find(|l| l.contains("coordinator listening"))
        .unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(listening).is_err(),
        "{listening}"
    );
    drop(process);
    env.cleanup().await;
}
