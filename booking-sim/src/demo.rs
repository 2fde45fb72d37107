//! `booking-sim demo`: a short scripted session against a gateway through `gateway-client`,
//! printing what the client saw next to what the simulator's ledger says really happened.
//!
//! It is the main job until the coordinator takes over: a payment, a decline, and the failure the
//! whole product exists for, an answer lost after the charge, recovered by replaying the same
//! idempotency key (the gateway answers with the original intent, and charges once). The demo
//! checks its own story against the ledger and fails if the ledger disagrees.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use gateway_client::{
    CreateIntent, GatewayClient, GatewayConfig, IdempotencyKey, Outcome, PaymentIntent, Reply,
};

use crate::sim_control::SimControl;

/// What `booking-sim demo` needs (no `Debug`: it holds the gateway's secret key).
#[derive(Clone)]
pub struct DemoArgs {
    pub gateway_url: String,
    pub api_key: String,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let config = GatewayConfig::new(args.gateway_url.clone(), args.api_key.as_str())
        .with_timeout(Duration::from_secs(5));
    let gateway = GatewayClient::new(config).context("building the gateway client")?;
    let sim = SimControl::new(&args.gateway_url)?;
    // Order ids unique to this run, so a long-lived simulator never replays an earlier run's keys.
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let order = |n: u32| format!("demo-{run}-{n}");

    println!(
        "Scripted session against {} (ledger: {}/_sim/ledger)",
        args.gateway_url, args.gateway_url
    );

    // 1. A payment, two-phase: create, (the coordinator would persist the id here), confirm.
    let paid = order(1);
    step(
        1,
        &format!("pay order {paid}: 25.00 EUR with pm_card_visa, two-phase"),
    );
    let created = expect_succeeded(
        "create",
        &IdempotencyKey::create(&paid, 1),
        gateway
            .create_intent(
                &intent(&paid, 2500, "pm_card_visa", false),
                &IdempotencyKey::create(&paid, 1),
            )
            .await,
    )?;
    let confirmed = expect_succeeded(
        "confirm",
        &IdempotencyKey::confirm(&paid, 1),
        gateway
            .confirm_intent(&created.id, &IdempotencyKey::confirm(&paid, 1))
            .await,
    )?;
    let charged = sim.ledger_intent(&confirmed.id).await?;
    ledger_line(&charged);
    ensure!(
        charged.times_charged == 1,
        "the ledger should show one charge for {}",
        charged.id
    );

    // 2. A decline: nothing is charged, the order stays payable.
    let declined = order(2);
    step(
        2,
        &format!("pay order {declined}: 12.00 EUR with pm_card_chargeDeclinedInsufficientFunds"),
    );
    let key = IdempotencyKey::create(&declined, 1);
    let created = expect_succeeded(
        "create",
        &key,
        gateway
            .create_intent(
                &intent(
                    &declined,
                    1200,
                    "pm_card_chargeDeclinedInsufficientFunds",
                    false,
                ),
                &key,
            )
            .await,
    )?;
    let key = IdempotencyKey::confirm(&declined, 1);
    let reply = gateway.confirm_intent(&created.id, &key).await;
    saw("confirm", &key, &reply);
    let Outcome::Declined { decline_code, .. } = &reply.outcome else {
        bail!("expected a decline, got {}", reply.outcome.kind());
    };
    ensure!(
        decline_code == "insufficient_funds",
        "unexpected decline code {decline_code}"
    );
    let refused = sim.ledger_intent(&created.id).await?;
    ledger_line(&refused);
    ensure!(
        refused.times_charged == 0,
        "a declined intent must not be charged"
    );

    // 3. The answer is lost after the charge (one-shot: create with confirm=true).
    let lost = order(3);
    step(
        3,
        &format!(
            "pay order {lost}: 40.00 EUR one-shot; the gateway charges, then drops the connection"
        ),
    );
    sim.force_next_faults(&["drop_after_charge"], &["create"])
        .await?;
    let key = IdempotencyKey::create(&lost, 1);
    let request = intent(&lost, 4000, "pm_card_visa", true);
    let reply = gateway.create_intent(&request, &key).await;
    saw("create", &key, &reply);
    ensure!(
        matches!(reply.outcome, Outcome::Unknown { .. }),
        "a dropped answer must be an unknown outcome, got {}",
        reply.outcome.kind()
    );
    let in_ledger = sim
        .ledger()
        .await?
        .intents
        .into_iter()
        .find(|i| i.metadata.get("order_id") == Some(&lost))
        .context("the gateway should hold the intent whose answer was lost")?;
    println!("         the client cannot know, but the ledger does:");
    ledger_line(&in_ledger);
    println!("         → replay with the SAME key (never a new one: that would charge again)");
    let replay = gateway.create_intent(&request, &key).await;
    saw("replay", &key, &replay);
    let replayed = match replay.outcome {
        Outcome::Succeeded(intent) => intent,
        other => bail!(
            "the same-key replay should return the original intent, got {}",
            other.kind()
        ),
    };
    ensure!(
        replay.replayed,
        "the gateway should mark the answer Idempotent-Replayed"
    );
    ensure!(
        replayed.id == in_ledger.id,
        "the replay returned another intent: {} vs {}",
        replayed.id,
        in_ledger.id
    );
    let after = sim.ledger_intent(&replayed.id).await?;
    ledger_line(&after);
    ensure!(after.times_charged == 1, "the replay must not charge again");
    sim.clear_faults().await?;

    let ledger = sim.ledger().await?;
    let ours: Vec<_> = ledger
        .intents
        .iter()
        .filter(|i| {
            i.metadata
                .get("order_id")
                .is_some_and(|o| o.starts_with(&format!("demo-{run}-")))
        })
        .collect();
    let double = ours.iter().filter(|i| i.times_charged > 1).count();
    println!();
    println!(
        "Ledger for this session: {} intents, {} charged, {} double charges.",
        ours.len(),
        ours.iter().filter(|i| i.times_charged > 0).count(),
        double
    );
    ensure!(double == 0, "double charges in the ledger");
    Ok(())
}

fn intent(order_id: &str, amount_minor: i64, payment_method: &str, confirm: bool) -> CreateIntent {
    CreateIntent {
        amount_minor,
        currency: "EUR".to_owned(),
        payment_method: payment_method.to_owned(),
        confirm,
        order_id: order_id.to_owned(),
        attempt: 1,
        description: Some(format!("demo order {order_id}")),
    }
}

fn step(n: u32, what: &str) {
    println!();
    println!("{n}. {what}");
}

fn saw<T: std::fmt::Debug>(call: &str, key: &IdempotencyKey, reply: &Reply<T>) {
    let what = match &reply.outcome {
        Outcome::Succeeded(_) => "succeeded".to_owned(),
        Outcome::Declined { decline_code, .. } => format!("declined ({decline_code})"),
        Outcome::Unknown { reason, detail } => {
            format!("UNKNOWN outcome ({}): {detail}", reason.as_str())
        }
        Outcome::RetryLater { after } => format!("retry later (after {after:?})"),
        Outcome::Rejected {
            status,
            code,
            message,
            ..
        } => {
            format!(
                "rejected {status} {}: {message}",
                code.as_deref().unwrap_or("-")
            )
        }
        Outcome::NotSent { detail } => format!("not sent: {detail}"),
    };
    let replayed = if reply.replayed {
        " [Idempotent-Replayed]"
    } else {
        ""
    };
    println!("   client  {call:<8} {key:<34} → {what}{replayed}");
}

fn expect_succeeded(
    call: &str,
    key: &IdempotencyKey,
    reply: Reply<PaymentIntent>,
) -> anyhow::Result<PaymentIntent> {
    saw(call, key, &reply);
    match reply.outcome {
        Outcome::Succeeded(intent) => {
            println!(
                "                  {} is {}",
                intent.id,
                intent.status.as_str()
            );
            Ok(intent)
        }
        other => bail!("{call} failed: {}", other.kind()),
    }
}

fn ledger_line(intent: &crate::psp::LedgerIntent) {
    println!(
        "   ledger  {} {} {} {}: charged {}×, refunded {}",
        intent.id,
        intent.status.as_str(),
        intent.amount,
        intent.currency,
        intent.times_charged,
        intent.amount_refunded
    );
}
