//! The simulator's memory of the last `/v1` requests (`GET /_sim/requests`): what each carried
//! besides its form, so a test can see what the gateway really received, e.g. that the
//! coordinator's `traceparent` continues the trace of the payment that made the call.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// How many requests are remembered (the oldest are forgotten first).
const REMEMBERED: usize = 10_000;

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
}

/// The remembered requests, oldest first.
#[derive(Default)]
pub(crate) struct RequestLog {
    requests: Mutex<VecDeque<SimRequest>>,
}

impl RequestLog {
    pub(crate) fn remember(&self, request: SimRequest) {
        // Nothing panics while holding this lock; recover rather than propagate a poison.
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if requests.len() == REMEMBERED {
            requests.pop_front();
        }
        requests.push_back(request);
    }

    pub(crate) fn all(&self) -> Vec<SimRequest> {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.iter().cloned().collect()
    }
}
