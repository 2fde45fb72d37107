//! The local outcome journal (CONTRACT §1.3): an outcome that arrives while PostgreSQL is down is
//! journaled under JOURNAL_DIR, the attempt stays held (order AWAITING_CONFIRMATION), and the
//! outcome reaches PostgreSQL as soon as it answers again, also after a restart of the
//! coordinator during the outage. A real fault: the test's own PostgreSQL server is stopped and
//! started; money is checked against the simulator's ledger.

use integration_tests::checks::{charges, wait_for};
use std::time::Duration;

use booking_sim::psp::SimConfig;
use coordinator::{journal::Journal, server::Application, store::Finish};
use integration_tests::{
    coordinator::{Client, OPERATOR, TestEnv, client, key_for},
    pg::ThrowawayPg,
};
use payments_proto::v1 as pb;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_types::StatusExt;

/// A guard against a hung test, never an assertion about speed.
const GUARD: Duration = Duration::from_secs(90);

fn pay(order_id: &str, key: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.into(),
        amount: Some(pb::Money {
            amount_minor: 4200,
            currency: "EUR".into(),
        }),
        customer_id: "c-j".into(),
        payment_method: "pm_card_visa".into(),
        items: vec![],
        idempotency_key: key.into(),
        wait_for_outcome: false,
    }
}

/// A replica built here rather than through `TestEnv::replica`, to keep a handle on its journal.
struct Running {
    url: String,
    journal: Journal,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn serve(app: Application) -> Self {
        let url = format!("http://{}", app.local_addr().expect("addr"));
        let journal = app.journal();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until(shutdown.clone()));
        Self {
            url,
            journal,
            shutdown,
            task,
        }
    }

    async fn client(&self) -> Client {
        client(&self.url, Some(&key_for(OPERATOR))).await
    }

    async fn journal_len(&self) -> u64 {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.len().expect("journal len"))
            .await
            .expect("join")
    }

    async fn stop(self) {
        let Running {
            journal,
            shutdown,
            task,
            ..
        } = self;
        drop(journal);
        shutdown.cancel();
        match tokio::time::timeout(GUARD, task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("replica did not stop cleanly: {other:?}"),
        }
    }
}

/// The order once it left AWAITING_CONFIRMATION (UNAVAILABLE answers are retried: the replica
/// may still be reconnecting).
async fn settled(client: &mut Client, order_id: &str) -> pb::Order {
    wait_for(
        "the order leaves AWAITING_CONFIRMATION",
        async || match client
            .get_order(pb::GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
        {
            Ok(order) => {
                let order = order.into_inner();
                (order.state() != pb::OrderState::AwaitingConfirmation).then_some(order)
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                None
            }
        },
    )
    .await
}

async fn stop_pg(pg: ThrowawayPg) -> ThrowawayPg {
    tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .expect("stop PostgreSQL")
}

async fn start_pg(pg: ThrowawayPg) -> ThrowawayPg {
    tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .expect("start PostgreSQL again")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_that_arrives_while_postgres_is_down_is_journaled_then_drained() {
    let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
        .await
        .expect("start PostgreSQL");
    let env = TestEnv::with(SimConfig::default(), pg.url_base()).await;
    let app = Application::build(&env.settings("r0", &["--gateway-flow", "one_shot"]))
        .await
        .expect("builds");
    let replica = Running::serve(app);
    let mut op = replica.client().await;
    // The charging call is slow: PostgreSQL goes down while it runs.
    env.sim_control
        .set_faults(json!({ "latency_ms": 2000, "operations": ["create"] }))
        .await
        .expect("faults");

    let started = op
        .process_payment(pay("j-1", "k1"))
        .await
        .expect("attempt committed")
        .into_inner();
    assert_eq!(
        started.order.expect("order").state(),
        pb::OrderState::AwaitingConfirmation
    );
    let pg = stop_pg(pg).await;

    // The gateway charges meanwhile; the outcome cannot reach PostgreSQL: it is journaled.
    wait_for("the gateway charges j-1", async || {
        (charges(&env, "j-1").await == 1).then_some(())
    })
    .await;
    wait_for("the outcome is journaled", async || {
        (replica.journal_len().await == 1).then_some(())
    })
    .await;
    let journal = replica.journal.clone();
    let entry = tokio::task::spawn_blocking(move || journal.pending().expect("pending"))
        .await
        .expect("join")
        .remove(0)
        .expect("the journaled record decodes");
    assert_eq!(entry.fence.order_id, "j-1");
    assert!(
        matches!(entry.finish, Finish::Succeeded { .. }),
        "{entry:?}"
    );

    // A new payment while PostgreSQL is down is refused, and never attempted.
    let refused = op
        .process_payment(pay("j-2", "k2"))
        .await
        .expect_err("no store, no payment");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "STORE_UNAVAILABLE"
    );
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.calls.create, 1, "j-2 never reached the gateway");

    // PostgreSQL returns: the journaled outcome is written, fenced, once.
    let pg = start_pg(pg).await;
    let order = settled(&mut op, "j-1").await;
    assert_eq!(order.state(), pb::OrderState::Paid, "{order:?}");
    assert_eq!(
        order.attempts[0].outcome(),
        pb::AttemptOutcome::Succeeded,
        "{order:?}"
    );
    assert_eq!(charges(&env, "j-1").await, 1, "charged once");
    wait_for("the journal is empty", async || {
        (replica.journal_len().await == 0).then_some(())
    })
    .await;

    replica.stop().await;
    env.cleanup().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restarted_while_postgres_is_down_drains_its_journal_when_it_returns() {
    let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
        .await
        .expect("start PostgreSQL");
    let env = TestEnv::with(SimConfig::default(), pg.url_base()).await;
    // two_phase: the intent id is persisted, then the (slow) confirm charges.
    let settings = env.settings("r0", &["--gateway-flow", "two_phase"]);
    let replica = Running::serve(Application::build(&settings).await.expect("builds"));
    let mut op = replica.client().await;
    env.sim_control
        .set_faults(json!({ "latency_ms": 2000, "operations": ["confirm"] }))
        .await
        .expect("faults");
    op.process_payment(pay("j-3", "k3"))
        .await
        .expect("attempt committed");
    let sql = env.sql().await;
    wait_for("the intent id is persisted", async || {
        let row = sql
            .query_one(
                "SELECT gateway_payment_id FROM attempts WHERE order_id = 'j-3'",
                &[],
            )
            .await
            .expect("query");
        row.get::<_, Option<String>>(0).map(|_| ())
    })
    .await;
    drop(sql);
    let pg = stop_pg(pg).await;
    wait_for("the gateway charges j-3", async || {
        (charges(&env, "j-3").await == 1).then_some(())
    })
    .await;
    wait_for("the outcome is journaled", async || {
        (replica.journal_len().await == 1).then_some(())
    })
    .await;

    // The replica stops while PostgreSQL is down (a graceful stop: in-process tests cannot
    // kill -9; the journal's commit was already fsync'd), leaving the entry in its journal.
    replica.stop().await;

    // A new process with the same JOURNAL_DIR starts during the outage. PostgreSQL is still down
    // when it begins (it is only started below, and `pg_ctl start -w` takes far longer than the
    // first connection attempt), so a start-up that gave up on an unreachable database would
    // fail the `builds` expectation below; it must wait for PostgreSQL instead.
    let building = tokio::spawn(async move { Application::build(&settings).await });
    let pg = start_pg(pg).await;
    let app = tokio::time::timeout(GUARD, building)
        .await
        .expect("comes up once PostgreSQL answers")
        .expect("join")
        .expect("builds");
    let replica = Running::serve(app);
    let mut op = replica.client().await;
    let order = settled(&mut op, "j-3").await;
    assert_eq!(order.state(), pb::OrderState::Paid, "{order:?}");
    let attempt = &order.attempts[0];
    assert_eq!(attempt.outcome(), pb::AttemptOutcome::Succeeded);
    assert_eq!(
        attempt.number, 1,
        "written by the drainer, not a new attempt"
    );
    assert_eq!(charges(&env, "j-3").await, 1, "charged once");
    assert!(
        !attempt.errors.iter().any(|e| e.step == "recovery"),
        "drained before any recovery worker took it over: {:?}",
        attempt.errors
    );
    wait_for("the journal is empty", async || {
        (replica.journal_len().await == 0).then_some(())
    })
    .await;

    replica.stop().await;
    env.cleanup().await;
    drop(pg);
}
