//! The arithmetic of the figures, pure so that it is tested on its own.
//!
//! Percentiles are taken by nearest rank over every sample, sorted: a run has a few thousand
//! payments, which sort in well under a millisecond, and the figures are then exact (no
//! histogram bucket error to explain next to a 2 ms budget).

use std::{collections::HashMap, time::Duration};

use crate::psp::SimRequest;
use crate::watch_bench::quantile;

/// p50/p90/p99/max of a set of durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// Sorts `samples` in place; `None` without samples.
    pub fn of(samples: &mut [Duration]) -> Option<Percentiles> {
        samples.sort_unstable();
        Some(Percentiles {
            n: samples.len(),
            p50: quantile(samples, 0.50)?,
            p90: quantile(samples, 0.90)?,
            p99: quantile(samples, 0.99)?,
            max: *samples.last()?,
        })
    }
}

/// The order a payment step's gateway idempotency key belongs to:
/// `pay:{order_id}:{attempt}:{step}` (the order id may itself hold colons).
pub fn order_of_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("pay:")?;
    let (rest, step) = rest.rsplit_once(':')?;
    let (order, attempt) = rest.rsplit_once(':')?;
    attempt.parse::<u32>().ok()?;
    (!order.is_empty() && !step.is_empty()).then_some(order)
}

/// What the simulator spent per order, from its request log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GatewayTime {
    /// Total service time of the order's calls.
    pub by_order: HashMap<String, Duration>,
    /// How many calls the order's payment made.
    pub calls_by_order: HashMap<String, u32>,
    /// Calls that name no order (a lookup by intent id carries no idempotency key).
    pub unattributed: usize,
}

/// Sums the simulator's service time of each order's calls.
pub fn gateway_time(requests: &[SimRequest]) -> GatewayTime {
    let mut time = GatewayTime::default();
    for request in requests {
        match request.idempotency_key.as_deref().and_then(order_of_key) {
            Some(order) => {
                *time.by_order.entry(order.to_owned()).or_default() +=
                    Duration::from_micros(request.service_us);
                *time.calls_by_order.entry(order.to_owned()).or_default() += 1;
            }
            None => time.unattributed += 1,
        }
    }
    time
}

/// The coordinator's own time per payment: its end-to-end latency less the simulator's time on
/// that order's calls. Returns the overheads and how many payments were left out because the
/// simulator made no call for them that it still remembers.
pub fn overheads(
    latencies: &[(String, Duration)],
    gateway: &HashMap<String, Duration>,
) -> (Vec<Duration>, usize) {
    let mut overheads = Vec::with_capacity(latencies.len());
    let mut missing = 0;
    for (order, latency) in latencies {
        match gateway.get(order) {
            Some(spent) => overheads.push(latency.saturating_sub(*spent)),
            None => missing += 1,
        }
    }
    (overheads, missing)
}

/// `total / payments`, `None` for no payments.
pub fn per_payment(total: u64, payments: usize) -> Option<f64> {
    (payments > 0).then(|| total as f64 / payments as f64)
}

/// Payments per second.
pub fn rate(payments: usize, elapsed: Duration) -> f64 {
    payments as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn request(key: Option<&str>, service_us: u64) -> SimRequest {
        SimRequest {
            op: "create".to_owned(),
            method: "POST".to_owned(),
            path: "/v1/payment_intents".to_owned(),
            idempotency_key: key.map(str::to_owned),
            traceparent: None,
            status: Some(200),
            service_us,
        }
    }

    #[test]
    fn percentiles_by_nearest_rank_over_every_sample() {
        let mut samples: Vec<Duration> = (1..=200).rev().map(ms).collect();
        let p = Percentiles::of(&mut samples).unwrap();
        assert_eq!(p.n, 200);
        assert_eq!(p.p50, ms(100));
        assert_eq!(p.p90, ms(180));
        assert_eq!(p.p99, ms(198));
        assert_eq!(p.max, ms(200));
        let mut one = vec![ms(7)];
        let p = Percentiles::of(&mut one).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (ms(7), ms(7), ms(7)));
        assert!(Percentiles::of(&mut []).is_none());
    }

    #[test]
    fn keys_name_their_order() {
        assert_eq!(order_of_key("pay:o-1:1:create"), Some("o-1"));
        assert_eq!(order_of_key("pay:load:ab:7:2:confirm"), Some("load:ab:7"));
        assert_eq!(order_of_key("refund:o-1:1"), None);
        assert_eq!(order_of_key("pay:o-1:x:create"), None);
        assert_eq!(order_of_key("pay::1:create"), None);
        assert_eq!(order_of_key("pay:o-1"), None);
    }

    #[test]
    fn gateway_time_sums_each_orders_calls() {
        let requests = [
            request(Some("pay:a:1:create"), 300),
            request(Some("pay:b:1:create"), 50),
            request(Some("pay:a:1:confirm"), 700),
            request(None, 999),
        ];
        let time = gateway_time(&requests);
        assert_eq!(time.by_order["a"], Duration::from_micros(1000));
        assert_eq!(time.by_order["b"], Duration::from_micros(50));
        assert_eq!(time.calls_by_order["a"], 2);
        assert_eq!(time.calls_by_order["b"], 1);
        assert_eq!(time.unattributed, 1);
    }

    #[test]
    fn overhead_is_latency_less_the_simulators_time() {
        let gateway: HashMap<String, Duration> = [
            ("a".to_owned(), Duration::from_micros(1500)),
            ("b".to_owned(), ms(20)),
        ]
        .into();
        let latencies = [
            ("a".to_owned(), ms(10)),
            ("b".to_owned(), ms(5)),
            ("c".to_owned(), ms(3)),
        ];
        let (overheads, missing) = overheads(&latencies, &gateway);
        // Never negative, even if the two clocks disagree.
        assert_eq!(overheads, [Duration::from_micros(8500), Duration::ZERO]);
        assert_eq!(missing, 1);
    }

    #[test]
    fn per_payment_and_rate() {
        assert_eq!(per_payment(21, 3), Some(7.0));
        assert_eq!(per_payment(5, 0), None);
        assert_eq!(rate(300, Duration::from_millis(1500)), 200.0);
    }
}
