//! PostgreSQL unreachable: health says NOT_SERVING, new payments are refused with
//! STORE_UNAVAILABLE before anything reaches the gateway (CONTRACT §1.4), and both recover when
//! the database is back. A real fault: the test's own PostgreSQL server is stopped and started.

use booking_sim::psp::SimConfig;
use integration_tests::{
    coordinator::{OPERATOR, TestEnv},
    pg::ThrowawayPg,
};
use payments_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

fn pay(order_id: &str, key: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.into(),
        amount: Some(pb::Money {
            amount_minor: 500,
            currency: "EUR".into(),
        }),
        customer_id: "c-1".into(),
        payment_method: "pm_card_visa".into(),
        items: vec![],
        idempotency_key: key.into(),
        wait_for_outcome: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_turns_health_off_and_refuses_payments() {
    let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
        .await
        .expect("start PostgreSQL");
    let env = TestEnv::with(SimConfig::default(), pg.url_base()).await;
    let replica = env.replica("r0", &[]).await;
    let channel = tonic::transport::Endpoint::from_shared(replica.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "payments.v1.PaymentCoordinator".into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let mut next_status = async || {
        health
            .next()
            .await
            .expect("health stream open")
            .expect("health item")
            .status()
    };
    assert_eq!(next_status().await, ServingStatus::Serving);

    let mut op = replica.client(OPERATOR).await;
    op.process_payment(pay("before", "k0"))
        .await
        .expect("pays while PostgreSQL is up");

    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .expect("stop PostgreSQL");
    assert_eq!(next_status().await, ServingStatus::NotServing);

    let refused = op
        .process_payment(pay("during", "k1"))
        .await
        .expect_err("no store, no payment");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "STORE_UNAVAILABLE"
    );
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(
        ledger.calls.create, 1,
        "nothing reached the gateway while PostgreSQL was down"
    );

    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .expect("start PostgreSQL again");
    assert_eq!(next_status().await, ServingStatus::Serving);
    let paid = op
        .process_payment(pay("during", "k1"))
        .await
        .expect("pays again")
        .into_inner();
    assert_eq!(paid.order.expect("order").state(), pb::OrderState::Paid);

    // An open health watch keeps its connection (and so a graceful shutdown) waiting: close it.
    drop(health);
    replica.stop().await;
    env.cleanup().await;
    drop(pg);
}
