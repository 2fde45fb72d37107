//! The main job's race driver (`booking-sim race`) against three real replicas: it passes when
//! every order is charged once, and it reads the truth from the simulator's ledger.

use booking_sim::race::{self, RaceArgs};
use integration_tests::coordinator::{OPERATOR, OPERATOR_2, TestEnv, key_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_driver_charges_every_order_once() {
    let env = TestEnv::new().await;
    let replicas = [
        env.replica("r0", &[]).await,
        env.replica("r1", &[]).await,
        env.replica("r2", &[]).await,
    ];
    race::run(RaceArgs {
        coordinators: replicas.iter().map(|r| r.url.clone()).collect(),
        operator_keys: vec![key_for(OPERATOR), key_for(OPERATOR_2)],
        gateway_url: env.sim.base_url(),
        orders: 5,
        callers_per_order: 4,
        gateway_latency_ms: 200,
        order_prefix: "driver".into(),
        tls: Default::default(),
    })
    .await
    .expect("every order charged exactly once");
    let ledger = env.sim_control.ledger().await.expect("ledger");
    assert_eq!(ledger.totals.charges, 5);
    for r in replicas {
        r.stop().await;
    }
    env.cleanup().await;
}
