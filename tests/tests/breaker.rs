//! The payments gate: the gateway circuit breaker and the admin pause, shared by every replica.
//! Real coordinator replicas over gRPC, real PostgreSQL and Redis, the gateway simulator over
//! HTTP with injected faults. Gateway activity is asserted on the simulator's ledger; every wait
//! is for a state (`checks::wait_for`), never for a time.

use std::time::SystemTime;

use integration_tests::checks::{charges, reason, wait_for};
use integration_tests::coordinator::{
    ADMIN, Client, OPERATOR, OPERATOR_2, REVIEWER, SERVICE, TestEnv,
};
use payments_proto::v1::{self as pb};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

/// Small breaker settings, so that a storm of four calls opens it and the cool-down is short.
const BREAKER: &[&str] = &[
    "--breaker-min-calls",
    "4",
    "--breaker-window-ms",
    "60000",
    "--breaker-failure-percent",
    "50",
    "--breaker-cooldown-ms",
    "1500",
    "--breaker-probes",
    "1",
];

fn pay(order_id: &str, key: &str, wait: bool) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 2500,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-9".to_owned(),
        payment_method: "pm_card_visa".to_owned(),
        items: vec![pb::LineItem {
            product_id: "sku-3".into(),
            quantity: 1,
            unit_amount_minor: 2500,
        }],
        idempotency_key: key.to_owned(),
        wait_for_outcome: wait,
    }
}

async fn status(client: &mut Client) -> pb::PaymentsStatus {
    client
        .get_payments_status(pb::GetPaymentsStatusRequest {})
        .await
        .expect("every role may read the payments status")
        .into_inner()
}

async fn order(client: &mut Client, order_id: &str) -> Result<pb::Order, tonic::Status> {
    client
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn creates(env: &TestEnv) -> u64 {
    env.sim_control.ledger().await.expect("ledger").calls.create
}

/// A refusal with `PAYMENTS_PAUSED`: its ErrorInfo metadata (reason, since, by).
fn paused_metadata(status: &tonic::Status) -> std::collections::HashMap<String, String> {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(status), "PAYMENTS_PAUSED", "{status:?}");
    status
        .get_details_error_info()
        .expect("an ErrorInfo")
        .metadata
}

fn rfc3339(t: &prost_types::Timestamp) -> String {
    coordinator::error::rfc3339(SystemTime::try_from(*t).expect("a valid time")).to_string()
}

async fn history(env: &TestEnv) -> Vec<(String, String)> {
    env.sql()
        .await
        .query(
            "SELECT actor, action FROM payments_control_history ORDER BY version",
            &[],
        )
        .await
        .expect("history")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_storm_opens_the_breaker_on_every_replica_and_a_healthy_probe_closes_it() {
    let env = TestEnv::new().await;
    let replicas = [
        env.replica("r1", BREAKER).await,
        env.replica("r2", BREAKER).await,
        env.replica("r3", BREAKER).await,
    ];
    let mut ops = Vec::new();
    for r in &replicas {
        ops.push(r.client(OPERATOR).await);
    }
    for op in &mut ops {
        let s = status(op).await;
        assert!(!s.paused);
        assert_eq!(s.breaker(), pb::BreakerState::Closed);
    }

    // A payment in flight when the storm starts: its confirm is held 10 s at the gateway.
    env.sim_control
        .set_faults(json!({ "latency_ms": 10_000, "operations": ["confirm"] }))
        .await
        .expect("slow confirms");
    let in_flight = ops[1]
        .process_payment(pay("in-flight-1", "k-in-flight", false))
        .await
        .expect("committed before the storm")
        .into_inner();
    assert_eq!(
        in_flight.order.expect("order").state(),
        pb::OrderState::AwaitingConfirmation
    );
    wait_for(
        "the in-flight payment's confirm reaches the gateway",
        async || {
            let ledger = env.sim_control.ledger().await.expect("ledger");
            (ledger.calls.confirm >= 1).then_some(())
        },
    )
    .await;

    // The storm: every create answers 500 (nothing charged). Four failed calls through r1.
    env.sim_control
        .set_faults(json!({ "error_500_before_rate": 1.0, "operations": ["create"] }))
        .await
        .expect("error storm");
    for i in 0..4 {
        let response = ops[0]
            .process_payment(pay(&format!("storm-{i}"), &format!("k-storm-{i}"), true))
            .await
            .expect("committed: the breaker was closed")
            .into_inner();
        assert_eq!(
            response.attempt.expect("attempt").outcome(),
            pb::AttemptOutcome::Cancelled,
            "storm-{i}: the create failed before charging"
        );
    }

    // Open on every replica: each one's own view says so, and it refuses new payments.
    let before_refusals = creates(&env).await;
    for (i, op) in ops.iter_mut().enumerate() {
        let s = wait_for("the replica sees the breaker open", async || {
            let s = status(op).await;
            (s.breaker() == pb::BreakerState::Open).then_some(s)
        })
        .await;
        assert!(s.paused, "r{}", i + 1);
        assert!(!s.admin_paused);
        assert_eq!(s.cause(), pb::PauseCause::CircuitBreaker);
        assert_eq!(s.by, "circuit-breaker");
        assert!(
            s.reason
                .starts_with("gateway circuit breaker open: 4 of 4 gateway calls failed or ended unknown in the last 60 s; probing again at"),
            "{}",
            s.reason
        );
        let since = s.since.expect("since");
        let probe_at = SystemTime::try_from(s.breaker_probe_at.expect("probe time")).expect("time");
        assert!(probe_at > SystemTime::try_from(since).expect("time"));

        let order_id = format!("refused-r{}", i + 1);
        let refused = op
            .process_payment(pay(&order_id, &format!("k-{order_id}"), true))
            .await
            .expect_err("payments are paused");
        let metadata = paused_metadata(&refused);
        assert_eq!(metadata["by"], "circuit-breaker");
        assert_eq!(metadata["reason"], s.reason);
        assert_eq!(metadata["since"], rfc3339(&since));
        assert!(
            refused.message().contains("circuit breaker open"),
            "{}",
            refused.message()
        );
        // Nothing written.
        let missing = order(op, &order_id).await.expect_err("no order row");
        assert_eq!(missing.code(), Code::NotFound);
    }
    // A caller re-sending its own in-flight request still joins it.
    let joined = ops[1]
        .process_payment(pay("in-flight-1", "k-in-flight", false))
        .await
        .expect("joins its own attempt")
        .into_inner();
    assert!(joined.joined_existing);
    assert_eq!(
        creates(&env).await,
        before_refusals,
        "no refused payment reached the gateway"
    );

    // After the cool-down, one probe goes through; the gateway still fails, so it opens again.
    let failed_probe = wait_for("a probe payment is let through", async || {
        ops[1]
            .process_payment(pay("probe-fails", "k-probe-fails", true))
            .await
            .ok()
    })
    .await
    .into_inner();
    assert_eq!(
        failed_probe.attempt.expect("attempt").outcome(),
        pb::AttemptOutcome::Cancelled
    );
    let reopened = wait_for("a failed probe opens the breaker again", async || {
        let s = status(&mut ops[0]).await;
        (s.breaker() == pb::BreakerState::Open && s.reason.contains("a probe payment failed"))
            .then_some(s)
    })
    .await;
    assert!(reopened.paused);

    // The gateway is healthy again: after the next cool-down a probe succeeds and closes it.
    env.sim_control
        .clear_faults()
        .await
        .expect("healthy gateway");
    let probe = wait_for("a probe payment is let through and paid", async || {
        ops[2]
            .process_payment(pay("probe-ok", "k-probe-ok", true))
            .await
            .ok()
    })
    .await
    .into_inner();
    assert_eq!(probe.order.expect("order").state(), pb::OrderState::Paid);
    assert_eq!(charges(&env, "probe-ok").await, 1);
    for (i, op) in ops.iter_mut().enumerate() {
        let s = wait_for("the replica sees the breaker closed", async || {
            let s = status(op).await;
            (s.breaker() == pb::BreakerState::Closed).then_some(s)
        })
        .await;
        assert!(!s.paused);
        assert_eq!(s.cause(), pb::PauseCause::Unspecified);
        let order_id = format!("after-r{}", i + 1);
        let paid = op
            .process_payment(pay(&order_id, &format!("k-{order_id}"), true))
            .await
            .expect("payments flow again")
            .into_inner();
        assert_eq!(paid.order.expect("order").state(), pb::OrderState::Paid);
        assert_eq!(charges(&env, &order_id).await, 1);
    }

    // The payment in flight when the breaker opened was not cut: it reached its outcome.
    let settled = wait_for("the in-flight payment settles", async || {
        let o = order(&mut ops[0], "in-flight-1").await.expect("order");
        (o.state() != pb::OrderState::AwaitingConfirmation).then_some(o)
    })
    .await;
    assert_eq!(settled.state(), pb::OrderState::Paid);
    assert_eq!(settled.attempts.len(), 1);
    assert_eq!(settled.attempts[0].outcome(), pb::AttemptOutcome::Succeeded);
    assert_eq!(charges(&env, "in-flight-1").await, 1);

    // Every change is in the history, the breaker's with the replica that made it.
    let actions: Vec<String> = history(&env).await.into_iter().map(|(_, a)| a).collect();
    assert_eq!(actions, ["open", "probe", "reopen", "probe", "close"]);
    let opened_by = &history(&env).await[0].0;
    assert_eq!(opened_by, "breaker:r1");

    for r in replicas {
        r.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_pauses_and_resumes_payments_on_every_replica() {
    let env = TestEnv::new().await;
    let (r1, r2) = (env.replica("r1", &[]).await, env.replica("r2", &[]).await);
    let mut admin = r1.client(ADMIN).await;

    // Only an admin may pause or resume.
    for who in [OPERATOR, REVIEWER, SERVICE] {
        let mut client = r1.client(who).await;
        let denied = client
            .pause_payments(pb::PausePaymentsRequest {
                reason: "not mine to pause".into(),
            })
            .await
            .expect_err("only an admin pauses");
        assert_eq!(
            (denied.code(), reason(&denied).as_str()),
            (Code::PermissionDenied, "FORBIDDEN"),
            "{who}"
        );
        let denied = client
            .resume_payments(pb::ResumePaymentsRequest::default())
            .await
            .expect_err("only an admin resumes");
        assert_eq!(
            (denied.code(), reason(&denied).as_str()),
            (Code::PermissionDenied, "FORBIDDEN"),
            "{who}"
        );
    }
    // A reason is required, and it is never a card number (it is logged and sent with every
    // refusal): refused, and not echoed back.
    for bad_reason in ["", "   ", "customer card 4242 4242 4242 4242 keeps failing"] {
        let invalid = admin
            .pause_payments(pb::PausePaymentsRequest {
                reason: bad_reason.into(),
            })
            .await
            .expect_err("a bad reason is refused");
        assert_eq!(
            (invalid.code(), reason(&invalid).as_str()),
            (Code::InvalidArgument, "INVALID_REQUEST"),
            "{bad_reason:?}"
        );
        let details = invalid.get_error_details();
        let bad = details.bad_request().expect("a BadRequest");
        assert_eq!(bad.field_violations[0].field, "reason");
        assert!(
            !invalid.message().contains("4242")
                && !bad.field_violations[0].description.contains("4242"),
            "{invalid:?}"
        );
    }
    assert!(!status(&mut admin).await.paused, "refusals changed nothing");

    let paused = admin
        .pause_payments(pb::PausePaymentsRequest {
            reason: "gateway maintenance window".into(),
        })
        .await
        .expect("an admin pauses")
        .into_inner();
    assert!(paused.paused && paused.admin_paused);
    assert_eq!(paused.cause(), pb::PauseCause::Admin);
    assert_eq!(paused.by, ADMIN);
    assert_eq!(paused.reason, "gateway maintenance window");
    assert_eq!(paused.breaker(), pb::BreakerState::Closed);
    let since = paused.since.expect("since");

    // Every role, on every replica, reads the same status.
    for replica in [&r1, &r2] {
        for who in [OPERATOR, REVIEWER, SERVICE, ADMIN] {
            let mut client = replica.client(who).await;
            let s = wait_for("the replica sees the pause", async || {
                let s = status(&mut client).await;
                s.paused.then_some(s)
            })
            .await;
            assert_eq!(s, paused, "{who}");
        }
    }
    // New payments are refused on every replica, saying why, since when and by whom; nothing is
    // written and nothing reaches the gateway.
    for (i, replica) in [&r1, &r2].into_iter().enumerate() {
        let mut op = replica.client(OPERATOR_2).await;
        let order_id = format!("paused-{i}");
        let refused = op
            .process_payment(pay(&order_id, "k-paused", true))
            .await
            .expect_err("paused");
        let metadata = paused_metadata(&refused);
        assert_eq!(metadata["reason"], "gateway maintenance window");
        assert_eq!(metadata["by"], ADMIN);
        assert_eq!(metadata["since"], rfc3339(&since));
        assert!(refused.message().contains("gateway maintenance window"));
        let missing = order(&mut op, &order_id).await.expect_err("no row");
        assert_eq!(missing.code(), Code::NotFound);
    }
    assert_eq!(creates(&env).await, 0, "nothing reached the gateway");

    // Resumed (through the other replica): payments are accepted everywhere.
    let mut admin_2 = r2.client(ADMIN).await;
    let resumed = admin_2
        .resume_payments(pb::ResumePaymentsRequest::default())
        .await
        .expect("an admin resumes")
        .into_inner();
    assert!(!resumed.paused && !resumed.admin_paused);
    assert_eq!(resumed.cause(), pb::PauseCause::Unspecified);
    for (i, replica) in [&r1, &r2].into_iter().enumerate() {
        let mut op = replica.client(OPERATOR).await;
        wait_for("the replica sees the resume", async || {
            (!status(&mut op).await.paused).then_some(())
        })
        .await;
        let order_id = format!("resumed-{i}");
        let paid = op
            .process_payment(pay(&order_id, &format!("k-{order_id}"), true))
            .await
            .expect("accepted again")
            .into_inner();
        assert_eq!(paid.order.expect("order").state(), pb::OrderState::Paid);
        assert_eq!(charges(&env, &order_id).await, 1);
    }
    assert_eq!(
        history(&env).await,
        [
            (ADMIN.to_owned(), "pause".to_owned()),
            (ADMIN.to_owned(), "resume".to_owned())
        ]
    );
    r1.stop().await;
    r2.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_leaves_an_open_breaker_open_unless_an_admin_resets_it() {
    let env = TestEnv::new().await;
    // A cool-down far longer than the test: only the admin can close it.
    let replica = env
        .replica(
            "r1",
            &[
                "--breaker-min-calls",
                "2",
                "--breaker-failure-percent",
                "100",
                "--breaker-cooldown-ms",
                "3600000",
            ],
        )
        .await;
    let mut op = replica.client(OPERATOR).await;
    let mut admin = replica.client(ADMIN).await;
    env.sim_control
        .set_faults(json!({ "error_500_before_rate": 1.0, "operations": ["create"] }))
        .await
        .expect("error storm");
    for i in 0..2 {
        op.process_payment(pay(&format!("storm-{i}"), &format!("k-{i}"), true))
            .await
            .expect("committed");
    }
    wait_for("the breaker opens", async || {
        (status(&mut op).await.breaker() == pb::BreakerState::Open).then_some(())
    })
    .await;
    env.sim_control
        .clear_faults()
        .await
        .expect("healthy gateway");

    // A plain resume lifts only an admin pause: the breaker stays open.
    let s = admin
        .resume_payments(pb::ResumePaymentsRequest::default())
        .await
        .expect("resume")
        .into_inner();
    assert!(s.paused);
    assert_eq!(s.cause(), pb::PauseCause::CircuitBreaker);
    let refused = op
        .process_payment(pay("o-1", "k-o-1", true))
        .await
        .expect_err("still open");
    paused_metadata(&refused);

    // An admin pause on top of the open breaker: the admin's reason is what callers read.
    let s = admin
        .pause_payments(pb::PausePaymentsRequest {
            reason: "investigating the gateway".into(),
        })
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(s.cause(), pb::PauseCause::Admin);
    assert_eq!(s.breaker(), pb::BreakerState::Open);
    assert!(s.breaker_probe_at.is_some());

    // Reset by hand: both lifted, payments flow.
    let s = admin
        .resume_payments(pb::ResumePaymentsRequest {
            reset_breaker: true,
        })
        .await
        .expect("reset")
        .into_inner();
    assert!(!s.paused && !s.admin_paused);
    assert_eq!(s.breaker(), pb::BreakerState::Closed);
    assert_eq!(s.breaker_probe_at, None);
    let paid = op
        .process_payment(pay("o-1", "k-o-1", true))
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(paid.order.expect("order").state(), pb::OrderState::Paid);
    assert_eq!(charges(&env, "o-1").await, 1);
    let actions: Vec<String> = history(&env).await.into_iter().map(|(_, a)| a).collect();
    assert_eq!(actions, ["open", "pause", "reset_breaker"]);
    replica.stop().await;
    env.cleanup().await;
}
