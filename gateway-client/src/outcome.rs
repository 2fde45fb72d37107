//! What one gateway call came to, and the pure classification of an HTTP answer into it.
//!
//! The classes are chosen by one question: *what does this answer prove about the gateway's
//! state?* The coordinator acts on that alone.
//!
//! | answer | outcome | why |
//! | --- | --- | --- |
//! | 2xx, body parses | `Succeeded` | the gateway did it and says what it did |
//! | 2xx, body unreadable | `Unknown(UnreadableAnswer)` | it did *something*; we cannot tell what |
//! | 402 `card_error` | `Declined` | the card was refused: nothing charged |
//! | 402 unreadable body | `Unknown(UnreadableAnswer)` | may be a decline, may be a proxy: unknown |
//! | 402 other type, 400, 401, 403, 404, other 4xx | `Rejected` | refused before acting: this request did nothing |
//! | 408 | `Unknown(Timeout)` | a proxy gave up waiting; what reached the gateway is unknown |
//! | 409 (`idempotency_key_in_use`) | `Unknown(Conflict)` | the same key's first request is still running: its outcome is not known yet |
//! | 429 | `RetryLater` (after the client's own bounded retries) | throttled before acting |
//! | 5xx | `Unknown(ServerError)` | a 500 may come after the charge (Stripe: "answer 500 after charging") |
//! | 1xx/3xx | `Unknown(UnreadableAnswer)` | not an answer this protocol gives |
//! | timeout (request sent) | `Unknown(Timeout)` | the gateway may have acted and not answered yet |
//! | connection reset/closed after sending | `Unknown(Connection)` | same: the request may have arrived |
//! | connection never established | `NotSent` (after bounded retries) | no byte reached the gateway |
//!
//! The client retries only `RetryLater` and `NotSent`, with the same key; an `Unknown` is never
//! retried here: the coordinator resolves it by lookup, a same-key replay inside the idempotency
//! window, or cancel.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::model::ErrorBody;

/// Why an outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnknownReason {
    /// No (complete) answer within the per-call timeout, after the request may have been sent.
    Timeout,
    /// The connection broke after the request may have been sent.
    Connection,
    /// The gateway answered 5xx: it may have acted before failing.
    ServerError(u16),
    /// 409: a request with the same key is still running at the gateway.
    Conflict,
    /// An answer whose status proves something happened but whose body cannot be read.
    UnreadableAnswer,
}

impl UnknownReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            UnknownReason::Timeout => "timeout",
            UnknownReason::Connection => "connection",
            UnknownReason::ServerError(_) => "server_error",
            UnknownReason::Conflict => "conflict",
            UnknownReason::UnreadableAnswer => "unreadable_answer",
        }
    }
}

/// What one gateway operation came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<T> {
    /// 2xx with a parsed body.
    Succeeded(T),
    /// 402 `card_error`: the card was refused, nothing was charged.
    Declined {
        /// `error.decline_code`, else `error.code`, else `card_declined`.
        decline_code: String,
        message: String,
        /// The intent the decline is about, when the gateway says (`error.payment_intent.id`).
        intent_id: Option<String>,
    },
    /// The request may have reached the gateway and its effect is unknown. Never retried by the
    /// client.
    Unknown {
        reason: UnknownReason,
        detail: String,
    },
    /// 429, after the client's own bounded retries (or when the gateway asks for a longer wait
    /// than the retry policy allows). Nothing was done.
    RetryLater { after: Duration },
    /// A 4xx that proves this request did nothing (which says nothing about earlier requests:
    /// `payment_intent_unexpected_state` on a confirm means the intent is already past it).
    Rejected {
        status: u16,
        error_type: Option<String>,
        code: Option<String>,
        param: Option<String>,
        message: String,
    },
    /// No connection could be established (after the bounded retries), or the request could not
    /// even be built: provably never reached the gateway.
    NotSent { detail: String },
}

impl<T> Outcome<T> {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Declined { .. } => "declined",
            Outcome::Unknown { .. } => "unknown",
            Outcome::RetryLater { .. } => "retry_later",
            Outcome::Rejected { .. } => "rejected",
            Outcome::NotSent { .. } => "not_sent",
        }
    }

    pub fn is_succeeded(&self) -> bool {
        matches!(self, Outcome::Succeeded(_))
    }

    pub fn succeeded(self) -> Option<T> {
        match self {
            Outcome::Succeeded(value) => Some(value),
            _ => None,
        }
    }

    /// The error code of a `Rejected` outcome (e.g. `payment_intent_unexpected_state`).
    pub fn rejected_code(&self) -> Option<&str> {
        match self {
            Outcome::Rejected { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Succeeded(value) => Outcome::Succeeded(f(value)),
            Outcome::Declined {
                decline_code,
                message,
                intent_id,
            } => Outcome::Declined {
                decline_code,
                message,
                intent_id,
            },
            Outcome::Unknown { reason, detail } => Outcome::Unknown { reason, detail },
            Outcome::RetryLater { after } => Outcome::RetryLater { after },
            Outcome::Rejected {
                status,
                error_type,
                code,
                param,
                message,
            } => Outcome::Rejected {
                status,
                error_type,
                code,
                param,
                message,
            },
            Outcome::NotSent { detail } => Outcome::NotSent { detail },
        }
    }
}

/// The answer to one operation: its outcome and what the HTTP exchange said about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply<T> {
    pub outcome: Outcome<T>,
    /// The gateway answered `Idempotent-Replayed: true`: this is the stored answer of an earlier
    /// request with the same key (nothing was done again).
    pub replayed: bool,
    /// The gateway's `Request-Id`, for an operator talking to the gateway's support.
    pub request_id: Option<String>,
    /// How many HTTP requests were tried (1 + retries of 429 / connection not established).
    pub tries: u32,
    /// One line per try that was retried, for the attempt's error history.
    pub retried: Vec<String>,
}

impl<T> Reply<T> {
    pub fn into_outcome(self) -> Outcome<T> {
        self.outcome
    }

    pub(crate) fn single(outcome: Outcome<T>) -> Self {
        Self {
            outcome,
            replayed: false,
            request_id: None,
            tries: 1,
            retried: Vec::new(),
        }
    }
}

/// Header names the classification reads.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
pub const REQUEST_ID: &str = "request-id";
pub const RETRY_AFTER: &str = "retry-after";

/// The longest `Retry-After` taken literally (a larger one is clamped to this).
const RETRY_AFTER_CEILING: Duration = Duration::from_secs(24 * 60 * 60);

/// Classify a complete HTTP answer. Pure: the status, the headers and the body decide.
///
/// `default_retry_after` is the wait reported for a 429 without a usable `Retry-After`.
pub fn classify<T: DeserializeOwned>(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    default_retry_after: Duration,
) -> Reply<T> {
    let replayed = headers
        .get(IDEMPOTENT_REPLAYED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let outcome = classify_outcome(status, headers, body, default_retry_after);
    Reply {
        outcome,
        replayed,
        request_id,
        tries: 1,
        retried: Vec::new(),
    }
}

fn classify_outcome<T: DeserializeOwned>(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    default_retry_after: Duration,
) -> Outcome<T> {
    let code = status.as_u16();
    if status.is_success() {
        return match serde_json::from_slice::<T>(body) {
            Ok(value) => Outcome::Succeeded(value),
            Err(err) => Outcome::Unknown {
                reason: UnknownReason::UnreadableAnswer,
                detail: format!(
                    "HTTP {code} with an unreadable body: {err}; {}",
                    excerpt(body)
                ),
            },
        };
    }
    let error = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    match code {
        402 => match error {
            Some(error) if error.error_type.as_deref() == Some("card_error") => {
                let intent_id = error.payment_intent_id();
                Outcome::Declined {
                    decline_code: error
                        .decline_code
                        .or(error.code)
                        .unwrap_or_else(|| "card_declined".to_owned()),
                    message: error
                        .message
                        .filter(|m| !m.trim().is_empty())
                        .unwrap_or_else(|| "the card was declined".to_owned()),
                    intent_id,
                }
            }
            Some(error) => rejected(code, Some(error)),
            None => Outcome::Unknown {
                reason: UnknownReason::UnreadableAnswer,
                detail: format!("HTTP 402 with an unreadable body: {}", excerpt(body)),
            },
        },
        408 => Outcome::Unknown {
            reason: UnknownReason::Timeout,
            detail: format!(
                "HTTP 408 (request timeout): {}",
                describe(error.as_ref(), body)
            ),
        },
        409 => Outcome::Unknown {
            reason: UnknownReason::Conflict,
            detail: format!("HTTP 409: {}", describe(error.as_ref(), body)),
        },
        429 => Outcome::RetryLater {
            after: retry_after(headers).unwrap_or(default_retry_after),
        },
        400..=499 => rejected(code, error),
        500..=599 => Outcome::Unknown {
            reason: UnknownReason::ServerError(code),
            detail: format!("HTTP {code}: {}", describe(error.as_ref(), body)),
        },
        _ => Outcome::Unknown {
            reason: UnknownReason::UnreadableAnswer,
            detail: format!("unexpected HTTP {code}: {}", excerpt(body)),
        },
    }
}

fn rejected<T>(status: u16, error: Option<crate::model::ApiError>) -> Outcome<T> {
    let error = error.unwrap_or_default();
    Outcome::Rejected {
        status,
        // An empty message says nothing: an operator reading the review needs a sentence.
        message: error
            .message
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| format!("HTTP {status} without an error message")),
        error_type: error.error_type,
        code: error.code,
        param: error.param,
    }
}

/// `Retry-After` as delay-seconds (integer or decimal). An HTTP-date or garbage is ignored.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let seconds: f64 = value.parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(seconds)
            .map_or(RETRY_AFTER_CEILING, |d| d.min(RETRY_AFTER_CEILING)),
    )
}

fn describe(error: Option<&crate::model::ApiError>, body: &[u8]) -> String {
    match error {
        Some(error) => format!(
            "{} {}: {}",
            error.error_type.as_deref().unwrap_or("-"),
            error.code.as_deref().unwrap_or("-"),
            error.message.as_deref().unwrap_or("-")
        ),
        None => excerpt(body),
    }
}

/// The beginning of a body, for a detail message.
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    if body.len() > MAX {
        format!("{text:?}…")
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::model::{IntentStatus, PaymentIntent};

    const DEFAULT: Duration = Duration::from_secs(1);

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn pi(status: u16, hs: &[(&'static str, &'static str)], body: &str) -> Reply<PaymentIntent> {
        let status = StatusCode::from_u16(status).expect("status");
        classify(status, &headers(hs), body.as_bytes(), DEFAULT)
    }

    const INTENT: &str =
        r#"{"id":"pi_1","status":"succeeded","amount":1000,"currency":"eur","metadata":{}}"#;

    #[test]
    fn success_parses_and_notes_replay() {
        let reply = pi(200, &[], INTENT);
        let Outcome::Succeeded(intent) = &reply.outcome else {
            panic!("{reply:?}");
        };
        assert_eq!(intent.id, "pi_1");
        assert_eq!(intent.status, IntentStatus::Succeeded);
        assert!(!reply.replayed);

        let replay = pi(
            200,
            &[("idempotent-replayed", "true"), ("request-id", "req_1")],
            INTENT,
        );
        assert!(replay.replayed);
        assert_eq!(replay.request_id.as_deref(), Some("req_1"));
        assert!(replay.outcome.is_succeeded());
        assert!(!pi(200, &[("idempotent-replayed", "false")], INTENT).replayed);
    }

    #[test]
    fn unreadable_success_is_unknown() {
        for body in [
            "",
            "<html>",
            r#"{"id":"pi_1"}"#,
            r#"{"id":"pi_1","status":"succeeded","amount":1.5,"currency":"eur"}"#,
        ] {
            let reply = pi(200, &[], body);
            assert!(
                matches!(
                    reply.outcome,
                    Outcome::Unknown {
                        reason: UnknownReason::UnreadableAnswer,
                        ..
                    }
                ),
                "{body}: {reply:?}"
            );
        }
    }

    #[test]
    fn card_errors_are_declines() {
        let body = r#"{"error":{"type":"card_error","code":"card_declined",
            "decline_code":"insufficient_funds","message":"Your card has insufficient funds.",
            "payment_intent":{"id":"pi_7","status":"requires_payment_method"}}}"#;
        assert_eq!(
            pi(402, &[], body).outcome,
            Outcome::Declined {
                decline_code: "insufficient_funds".into(),
                message: "Your card has insufficient funds.".into(),
                intent_id: Some("pi_7".into()),
            }
        );
        // Without decline_code: the code; without either: a generic one.
        let expired = r#"{"error":{"type":"card_error","code":"expired_card","message":"m"}}"#;
        assert!(matches!(
            pi(402, &[], expired).outcome,
            Outcome::Declined { ref decline_code, intent_id: None, .. } if decline_code == "expired_card"
        ));
        let bare = r#"{"error":{"type":"card_error"}}"#;
        assert!(matches!(
            pi(402, &[], bare).outcome,
            Outcome::Declined { ref decline_code, .. } if decline_code == "card_declined"
        ));
    }

    #[test]
    fn other_402_is_rejected_and_unreadable_402_unknown() {
        let body = r#"{"error":{"type":"invalid_request_error","code":"x","message":"no"}}"#;
        assert!(matches!(
            pi(402, &[], body).outcome,
            Outcome::Rejected { status: 402, .. }
        ));
        assert!(matches!(
            pi(402, &[], "Payment Required").outcome,
            Outcome::Unknown {
                reason: UnknownReason::UnreadableAnswer,
                ..
            }
        ));
    }

    /// Found by the property test in CI: `{"error":{"message":""}}` gave an empty message.
    #[test]
    fn an_empty_error_message_is_replaced_by_a_sentence() {
        let empty = r#"{"error":{"message":""}}"#;
        assert!(matches!(
            pi(400, &[], empty).outcome,
            Outcome::Rejected { ref message, .. } if message == "HTTP 400 without an error message"
        ));
        let declined = r#"{"error":{"type":"card_error","message":"  "}}"#;
        assert!(matches!(
            pi(402, &[], declined).outcome,
            Outcome::Declined { ref message, .. } if message == "the card was declined"
        ));
    }

    #[test]
    fn client_errors_are_rejected_with_their_details() {
        let body = r#"{"error":{"type":"invalid_request_error","code":"payment_intent_unexpected_state",
            "param":"intent","message":"already succeeded"}}"#;
        assert_eq!(
            pi(400, &[], body).outcome,
            Outcome::Rejected {
                status: 400,
                error_type: Some("invalid_request_error".into()),
                code: Some("payment_intent_unexpected_state".into()),
                param: Some("intent".into()),
                message: "already succeeded".into(),
            }
        );
        let idem = r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters"}}"#;
        assert!(matches!(
            pi(400, &[], idem).outcome,
            Outcome::Rejected { status: 400, error_type: Some(ref t), .. } if t == "idempotency_error"
        ));
        let unauthorized = pi(
            401,
            &[],
            r#"{"error":{"type":"invalid_request_error","message":"Invalid API Key provided: sk_test_****"}}"#,
        );
        assert!(matches!(
            unauthorized.outcome,
            Outcome::Rejected { status: 401, .. }
        ));
        // A status alone proves it, even without a readable body.
        assert!(matches!(
            pi(404, &[], "not found").outcome,
            Outcome::Rejected {
                status: 404,
                code: None,
                ..
            }
        ));
        assert_eq!(pi(404, &[], "").outcome.rejected_code(), None);
    }

    #[test]
    fn conflict_server_errors_and_odd_statuses_are_unknown() {
        let conflict = r#"{"error":{"type":"idempotency_error","code":"idempotency_key_in_use"}}"#;
        let reply = pi(409, &[], conflict);
        assert!(matches!(
            &reply.outcome,
            Outcome::Unknown { reason: UnknownReason::Conflict, detail } if detail.contains("idempotency_key_in_use")
        ));
        for status in [500, 502, 503, 504] {
            assert_eq!(pi(status, &[], "").outcome.kind(), "unknown", "{status}");
            assert!(matches!(
                pi(status, &[], r#"{"error":{"type":"api_error"}}"#).outcome,
                Outcome::Unknown { reason: UnknownReason::ServerError(s), .. } if s == status
            ));
        }
        assert!(matches!(
            pi(408, &[], "").outcome,
            Outcome::Unknown {
                reason: UnknownReason::Timeout,
                ..
            }
        ));
        for status in [301, 302, 304, 101] {
            assert!(matches!(
                pi(status, &[], "").outcome,
                Outcome::Unknown {
                    reason: UnknownReason::UnreadableAnswer,
                    ..
                }
            ));
        }
    }

    #[test]
    fn throttling_honours_retry_after() {
        assert_eq!(
            pi(429, &[("retry-after", "7")], "").outcome,
            Outcome::RetryLater {
                after: Duration::from_secs(7)
            }
        );
        assert_eq!(
            pi(429, &[("retry-after", "0.5")], "").outcome,
            Outcome::RetryLater {
                after: Duration::from_millis(500)
            }
        );
        for odd in ["Wed, 21 Oct 2015 07:28:00 GMT", "-1", "NaN", "soon"] {
            let mut map = HeaderMap::new();
            map.insert("retry-after", HeaderValue::from_static(odd));
            let reply: Reply<PaymentIntent> =
                classify(StatusCode::TOO_MANY_REQUESTS, &map, b"", DEFAULT);
            assert_eq!(
                reply.outcome,
                Outcome::RetryLater { after: DEFAULT },
                "{odd}"
            );
        }
        assert_eq!(
            pi(429, &[], "").outcome,
            Outcome::RetryLater { after: DEFAULT }
        );
        assert_eq!(
            pi(429, &[("retry-after", "1e30")], "").outcome,
            Outcome::RetryLater {
                after: RETRY_AFTER_CEILING
            }
        );
    }

    #[test]
    fn long_bodies_are_cut_in_details() {
        let body = "x".repeat(10_000);
        let Outcome::Unknown { detail, .. } = pi(500, &[], &body).outcome else {
            panic!("not unknown");
        };
        assert!(detail.len() < 400, "{}", detail.len());
    }
}
