//! PostgreSQL unreachable: health says NOT_SERVING, new payments are refused with
//! STORE_UNAVAILABLE before anything reaches the gateway (CONTRACT §1.4), and both recover when
//! the database is back, while the "liveness" health service (the kubelet's liveness probe)
//! stays SERVING. A real fault: the test's own PostgreSQL server is stopped and started.

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
    let mut health = HealthClient::new(channel.clone())
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
    // The kubelet's liveness probe (k8s/) asks for "liveness": still SERVING, so an outage
    // restarts no replica (it only waits for PostgreSQL).
    let liveness = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: coordinator::server::LIVENESS.into(),
        })
        .await
        .expect("liveness check")
        .into_inner();
    assert_eq!(liveness.status(), ServingStatus::Serving);

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

/// Reads `n` more events from `stream`, resuming from the last cursor through `client` when the
/// stream ends (with UNAVAILABLE or otherwise): what a consumer that remembers its cursor does.
async fn follow(
    client: &mut integration_tests::coordinator::Client,
    stream: &mut tonic::Streaming<pb::OrderEvent>,
    seen: &mut Vec<pb::OrderEvent>,
    n: usize,
) -> usize {
    let mut resumed = 0;
    let target = seen.len() + n;
    while seen.len() < target {
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), stream.next())
            .await
            .expect("an event or the end of the stream within the guard");
        match next {
            Some(Ok(event)) => seen.push(event),
            Some(Err(status)) => {
                assert_eq!(
                    status.code(),
                    Code::Unavailable,
                    "a broken feed ends with UNAVAILABLE: {status:?}"
                );
            }
            None => {
                let cursor = seen.last().map_or(0, |e| e.global_sequence);
                // The replica may still be reconnecting to PostgreSQL: retry the resume.
                *stream = loop {
                    match client
                        .watch_events(pb::WatchEventsRequest {
                            after_global_sequence: cursor,
                            last: 0,
                        })
                        .await
                    {
                        Ok(s) => break s.into_inner(),
                        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
                    }
                };
                resumed += 1;
            }
        }
    }
    resumed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_loses_nothing_across_a_postgres_restart() {
    let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
        .await
        .expect("start PostgreSQL");
    let env = TestEnv::with(SimConfig::default(), pg.url_base()).await;
    let replica = env.replica("r0", &[]).await;
    let mut op = replica.client(OPERATOR).await;
    let mut service = replica
        .client(integration_tests::coordinator::SERVICE)
        .await;
    let mut stream = service
        .watch_events(pb::WatchEventsRequest {
            after_global_sequence: 0,
            last: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    for n in 0..5 {
        op.process_payment(pay(&format!("before-{n}"), &format!("b{n}")))
            .await
            .expect("paid");
    }
    follow(&mut service, &mut stream, &mut seen, 15).await;

    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg.start_again();
        pg
    })
    .await
    .expect("restart PostgreSQL");

    // Pay again once the coordinator has its database back (STORE_UNAVAILABLE until then:
    // nothing is charged, and retrying with the same key is safe).
    for n in 0..5 {
        loop {
            match op
                .process_payment(pay(&format!("after-{n}"), &format!("a{n}")))
                .await
            {
                Ok(_) => break,
                Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            }
        }
    }
    let resumed = follow(&mut service, &mut stream, &mut seen, 15).await;
    println!("the watcher resumed {resumed} time(s) across the restart");
    let positions: Vec<i64> = seen.iter().map(|e| e.global_sequence).collect();
    assert_eq!(
        positions,
        (1..=30).collect::<Vec<i64>>(),
        "every event exactly once, in order"
    );

    drop(stream);
    replica.stop().await;
    env.cleanup().await;
    drop(pg);
}
