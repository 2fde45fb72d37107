//! The simulator's memory of the last `/v1` requests (`GET /_sim/requests`): what each carried
//! besides its form, so a test can see what the gateway really received, e.g. that the
//! coordinator's `traceparent` continues the trace of the payment that made the call, or how
//! long the simulator itself spent on each call (`booking-sim load` subtracts it from a payment's
//! latency to get the coordinator's own overhead).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// How many requests are remembered by default (the oldest are forgotten first).
pub const REMEMBERED: usize = 10_000;

/// One `/v1` request as received. Never holds the Authorization header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimRequest {
    /// `create`, `confirm`, `get`, `cancel` or `refund`.
    pub op: String,
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The W3C trace context header, as received.
    pub traceparent: Option<String>,
    /// The HTTP status answered; `None` when the connection was dropped without an answer.
    pub status: Option<u16>,
    /// Microseconds the simulator spent on the request, from its handler's start to the answer
    /// (or the dropped connection), injected latency included.
    #[serde(default)]
    pub service_us: u64,
}

/// The remembered requests, oldest first.
pub(crate) struct RequestLog {
    capacity: usize,
    requests: Mutex<VecDeque<SimRequest>>,
}

impl RequestLog {
    /// Remembers the last `capacity` requests (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            requests: Mutex::default(),
        }
    }

    pub(crate) fn remember(&self, request: SimRequest) {
        // Nothing panics while holding this lock; recover rather than propagate a poison.
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if requests.len() >= self.capacity {
            requests.pop_front();
        }
        requests.push_back(request);
    }

    pub(crate) fn all(&self) -> Vec<SimRequest> {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(n: u64) -> SimRequest {
        SimRequest {
            op: "create".to_owned(),
            method: "POST".to_owned(),
            path: "/v1/payment_intents".to_owned(),
            idempotency_key: Some(format!("pay:o-{n}:1:create")),
            traceparent: None,
            status: Some(200),
            service_us: n,
        }
    }

    #[test]
    fn forgets_the_oldest_past_its_capacity() {
        let log = RequestLog::new(3);
        for n in 1..=5 {
            log.remember(request(n));
        }
        let kept: Vec<u64> = log.all().iter().map(|r| r.service_us).collect();
        assert_eq!(kept, [3, 4, 5]);
    }

    #[test]
    fn a_request_without_service_time_reads_as_zero() {
        let json = r#"{"op":"get","method":"GET","path":"/v1/payment_intents/pi_1",
            "idempotency_key":null,"traceparent":null,"status":200}"#;
        let request: SimRequest = serde_json::from_str(json).expect("decodes");
        assert_eq!(request.service_us, 0);
    }
}
