//! Start-up rules: callers' keys are required (or generated with `--dev`), the database is
//! created when missing.

use clap::Parser;
use coordinator::{config::Settings, server::Application};
use integration_tests::coordinator::{Replica, TestEnv, client};
use payments_proto::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn refuses_to_start_without_api_keys_unless_dev() {
    let env = TestEnv::new().await;
    let settings = Settings::try_parse_from(env.args("nokeys", &[], false)).expect("parse");
    let error = Application::build(&settings)
        .await
        .err()
        .expect("must refuse to start");
    let message = format!("{error:#}");
    assert!(
        message.contains("API_KEYS_FILE") && message.contains("--dev"),
        "{message}"
    );

    let settings = Settings::try_parse_from(env.args("dev", &["--dev"], false)).expect("parse");
    let app = Application::build(&settings).await.expect("--dev starts");
    let roles: Vec<&str> = app
        .dev_keys
        .iter()
        .map(|(_, role, _)| role.as_str())
        .collect();
    for role in ["operator", "reviewer", "service", "admin"] {
        assert!(roles.contains(&role), "{roles:?}");
    }
    let operator_key = app
        .dev_keys
        .iter()
        .find(|(_, role, _)| role == "operator")
        .map(|(_, _, k)| k.clone());
    let url = format!("http://{}", app.local_addr().expect("addr"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(app.run_until(shutdown.clone()));
    // The generated key authenticates (the order simply does not exist).
    let mut op = client(&url, operator_key.as_deref()).await;
    let status = op
        .get_order(pb::GetOrderRequest {
            order_id: "none".into(),
        })
        .await
        .expect_err("unknown order");
    assert_eq!(status.code(), Code::NotFound);
    shutdown.cancel();
    task.await.expect("join").expect("clean stop");

    // The database of DATABASE_URL did not exist before this test: it was created.
    let replica: Replica = env.replica("after", &[]).await;
    let rows = env
        .sql()
        .await
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .expect("migrated");
    assert!(!rows.is_empty());
    replica.stop().await;
    env.cleanup().await;
}
