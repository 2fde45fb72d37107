//! The main job's scripted session (`booking-sim demo`) tells the truth: it passes against a
//! gateway that honours idempotency keys, and fails, loudly, against one that does not (where
//! the "replay" of a lost answer would charge the customer a second time).

use booking_sim::{
    demo::{self, DemoArgs},
    psp::{self, SimConfig, Without},
    sim_control::SimControl,
};

#[tokio::test]
async fn demo_session_matches_the_ledger() {
    let sim = psp::spawn(SimConfig::default()).await.expect("simulator");
    demo::run(DemoArgs {
        gateway_url: sim.base_url(),
        api_key: "sk_test_local".into(),
    })
    .await
    .expect("the demo's story matches the ledger");
    let ledger = SimControl::new(&sim.base_url())
        .expect("control")
        .ledger()
        .await
        .expect("ledger");
    assert_eq!(ledger.intents.len(), 3);
    assert_eq!(
        ledger.totals.charges, 2,
        "one payment and one lost-then-replayed payment"
    );
    assert!(ledger.intents.iter().all(|i| i.times_charged <= 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn demo_fails_when_a_replay_charges_again() {
    let config = SimConfig {
        without: Without {
            idempotency: true,
            ..Without::default()
        },
        ..SimConfig::default()
    };
    let sim = psp::spawn(config).await.expect("simulator");
    let error = demo::run(DemoArgs {
        gateway_url: sim.base_url(),
        api_key: "sk_test_local".into(),
    })
    .await
    .expect_err("without idempotency the replay is a second charge, and the demo must say so");
    assert!(
        format!("{error:#}").contains("Idempotent-Replayed"),
        "{error:#}"
    );
    sim.shutdown().await;
}
