//! The bad-input figure: valid payments (the load's callers) without, then with, a burst of bad
//! requests mixed in on connections of their own: malformed ones (an invalid order id, a
//! negative amount, a card number as payment method) and unauthenticated ones (no key, a wrong
//! key). Prints the valid payments' rate and latency both ways and the rate bad requests were
//! refused at; checks that each was refused with its code (`INVALID_ARGUMENT`,
//! `UNAUTHENTICATED`) and that the valid payments all ended PAID.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use payments_client::{Bearer, Client};
use tonic::{Code, Request};

use super::{
    callers::{Callers, PhaseResult},
    extra::{ExtraReport, Stack, bearers, clients, ms},
    figures::{Percentiles, rate},
    race::payment_request,
};
use crate::chaos::progress::say;

#[derive(Clone, Debug)]
pub struct AbuseConfig {
    /// Valid payments in each of the two phases.
    pub payments: usize,
    /// Tasks sending bad requests during the burst, each one at a time.
    pub bad_senders: usize,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            payments: 1000,
            bad_senders: 4,
        }
    }
}

/// One kind of bad request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bad {
    InvalidOrderId,
    NegativeAmount,
    CardNumber,
    NoKey,
    WrongKey,
}

impl Bad {
    pub const ALL: [Bad; 5] = [
        Bad::InvalidOrderId,
        Bad::NegativeAmount,
        Bad::CardNumber,
        Bad::NoKey,
        Bad::WrongKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bad::InvalidOrderId => "invalid order id",
            Bad::NegativeAmount => "negative amount",
            Bad::CardNumber => "card number as payment method",
            Bad::NoKey => "no key",
            Bad::WrongKey => "wrong key",
        }
    }

    /// The code it must be refused with.
    pub fn expected(self) -> Code {
        match self {
            Bad::InvalidOrderId | Bad::NegativeAmount | Bad::CardNumber => Code::InvalidArgument,
            Bad::NoKey | Bad::WrongKey => Code::Unauthenticated,
        }
    }

    /// The `i`-th bad request of this kind (otherwise a valid payment of a fresh order).
    fn request(self, prefix: &str, i: usize) -> payments_proto::v1::ProcessPaymentRequest {
        let order_id = format!("{prefix}-bad-{i}");
        let mut request = payment_request(&order_id, &format!("{order_id}-1"), true);
        match self {
            Bad::InvalidOrderId => request.order_id = format!("{order_id} / bad!"),
            Bad::NegativeAmount => {
                if let Some(amount) = request.amount.as_mut() {
                    amount.amount_minor = -1500;
                }
            }
            // A test card number that passes the Luhn check.
            Bad::CardNumber => request.payment_method = "4242 4242 4242 4242".to_owned(),
            Bad::NoKey | Bad::WrongKey => {}
        }
        request
    }
}

/// Per kind: sent, refused with the right code, and the first wrong answer.
#[derive(Debug, Default, Clone)]
pub struct BadTally {
    pub sent: usize,
    pub refused_right: usize,
    pub first_wrong: Option<String>,
}

/// Whether `result` is the refusal `bad` must get.
pub fn refused_right<T>(bad: Bad, result: &Result<T, tonic::Status>) -> Result<(), String> {
    match result {
        Err(status) if status.code() == bad.expected() => Ok(()),
        Err(status) => Err(format!(
            "{}: {:?} instead of {:?}",
            bad.as_str(),
            status.code(),
            bad.expected()
        )),
        Ok(_) => Err(format!("{}: accepted", bad.as_str())),
    }
}

/// Sends bad requests, kinds in turn, until `stop`; its tally.
async fn send_bad(
    sender: usize,
    authed: Client,
    anonymous: Client,
    wrong: Client,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> BTreeMap<Bad, BadTally> {
    let mut tally: BTreeMap<Bad, BadTally> = BTreeMap::new();
    let mut i = sender * 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        let bad = Bad::ALL[i % Bad::ALL.len()];
        let mut client = match bad {
            Bad::NoKey => anonymous.clone(),
            Bad::WrongKey => wrong.clone(),
            _ => authed.clone(),
        };
        let mut request = Request::new(bad.request(&prefix, i));
        request.set_timeout(Duration::from_secs(30));
        let result = client.process_payment(request).await;
        let entry = tally.entry(bad).or_default();
        entry.sent += 1;
        match refused_right(bad, &result) {
            Ok(()) => entry.refused_right += 1,
            Err(wrong) => {
                entry.first_wrong.get_or_insert(wrong);
            }
        }
        i += 1;
    }
    tally
}

fn latency_text(result: &PhaseResult) -> (f64, String) {
    let mut latencies: Vec<Duration> = result.paid.iter().map(|p| p.latency).collect();
    let per_sec = rate(result.paid.len(), result.elapsed);
    let text = match Percentiles::of(&mut latencies) {
        Some(p) => format!(
            "{per_sec:.1} payments/s, latency p50 {} p99 {} ({} of {} PAID)",
            ms(p.p50),
            ms(p.p99),
            result.paid.len(),
            result.paid.len() + result.failures.len()
        ),
        None => "no payment PAID".to_owned(),
    };
    (per_sec, text)
}

pub async fn run(config: &super::LoadConfig, on: &mut Stack<'_>) -> anyhow::Result<ExtraReport> {
    let flow = on.stack.flow;
    let abuse = &config.extra.abuse;
    let payments = abuse.payments.max(1);
    let callers = Callers::connect(
        &on.urls,
        &payments_client::TlsFiles::default(),
        &on.owned.operator_keys,
        config.concurrency,
        config.connections_per_replica,
    )
    .await?;
    say(&format!(
        "phase: abuse: {payments} valid payments, {} callers, no bad requests",
        config.concurrency
    ));
    let without = callers
        .pay(
            "without bad requests",
            &format!("{}-plain", on.prefix),
            payments,
            config.progress_every,
        )
        .await;

    let senders = abuse.bad_senders.max(1);
    let keys = bearers(&on.owned.operator_keys)?;
    let authed = clients(&on.urls, &keys, senders, 1).await?;
    let anonymous = clients(&on.urls, &[], senders, 1).await?;
    let wrong = clients(
        &on.urls,
        &[Bearer::new("pk_load_not_a_key_of_this_run")?],
        senders,
        1,
    )
    .await?;
    say(&format!(
        "phase: abuse: {payments} valid payments with {senders} senders of bad requests mixed in"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut bad_tasks = tokio::task::JoinSet::new();
    for s in 0..senders {
        bad_tasks.spawn(send_bad(
            s,
            authed[s].clone(),
            anonymous[s].clone(),
            wrong[s].clone(),
            on.prefix.clone(),
            stop.clone(),
        ));
    }
    let burst_started = Instant::now();
    let with = callers
        .pay(
            "with bad requests",
            &format!("{}-mixed", on.prefix),
            payments,
            config.progress_every,
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut tally: BTreeMap<Bad, BadTally> = BTreeMap::new();
    while let Some(joined) = bad_tasks.join_next().await {
        for (bad, t) in joined.unwrap_or_default() {
            let entry = tally.entry(bad).or_default();
            entry.sent += t.sent;
            entry.refused_right += t.refused_right;
            if entry.first_wrong.is_none() {
                entry.first_wrong = t.first_wrong;
            }
        }
    }
    let burst = burst_started.elapsed();

    let (plain_rate, plain) = latency_text(&without);
    let (mixed_rate, mixed) = latency_text(&with);
    let sent: usize = tally.values().map(|t| t.sent).sum();
    let right: usize = tally.values().map(|t| t.refused_right).sum();
    let mut report = ExtraReport::new(format!(
        "abuse ({flow}): valid payments with and without bad requests mixed in, {} callers, {} \
         bad senders",
        config.concurrency, senders
    ));
    report.row("valid, without bad requests", plain);
    report.row("valid, with bad requests", mixed);
    report.row(
        "valid rate with/without",
        super::extra::ratio_text(mixed_rate, plain_rate),
    );
    report.row(
        "bad requests refused",
        format!(
            "{:.1}/s ({right} of {sent} in {:.2} s: {})",
            rate(right, burst),
            burst.as_secs_f64(),
            tally
                .iter()
                .map(|(bad, t)| format!("{} {}", bad.as_str(), t.sent))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let wrong_first = tally.values().find_map(|t| t.first_wrong.clone());
    report.check(
        format!(
            "every bad request refused with its code (INVALID_ARGUMENT / UNAUTHENTICATED): {right} \
             of {sent}{}",
            wrong_first
                .map(|w| format!(" (first wrong: {w})"))
                .unwrap_or_default()
        ),
        sent > 0 && right == sent && tally.len() == Bad::ALL.len(),
    );
    let failures: Vec<&String> = without.failures.iter().chain(&with.failures).collect();
    report.check(
        format!(
            "every valid payment PAID: {} of {}{}",
            without.paid.len() + with.paid.len(),
            2 * payments,
            failures
                .first()
                .map(|f| format!(" (first failed: {f})"))
                .unwrap_or_default()
        ),
        failures.is_empty() && without.paid.len() + with.paid.len() == 2 * payments,
    );
    // A refused request leaves nothing behind: only the valid orders are in the database.
    let (orders, paid) = on.owned.pg.orders(&on.stack.db_name).await?;
    report.check(
        format!("the database holds only the valid orders: {orders} orders, {paid} PAID"),
        orders == paid && orders as usize == 2 * payments,
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_request_has_its_code() {
        let refused = |code| Err::<(), _>(tonic::Status::new(code, "no"));
        assert!(refused_right(Bad::CardNumber, &refused(Code::InvalidArgument)).is_ok());
        assert!(refused_right(Bad::WrongKey, &refused(Code::Unauthenticated)).is_ok());
        assert_eq!(
            refused_right(Bad::NoKey, &refused(Code::InvalidArgument)).unwrap_err(),
            "no key: InvalidArgument instead of Unauthenticated"
        );
        assert_eq!(
            refused_right(Bad::NegativeAmount, &Ok(())).unwrap_err(),
            "negative amount: accepted"
        );
        let card = Bad::CardNumber.request("p", 3);
        assert_eq!(card.payment_method, "4242 4242 4242 4242");
        assert_eq!(card.order_id, "p-bad-3");
        assert_eq!(
            Bad::NegativeAmount
                .request("p", 1)
                .amount
                .unwrap()
                .amount_minor,
            -1500
        );
        assert!(Bad::InvalidOrderId.request("p", 1).order_id.contains(' '));
    }
}
