//! The gateway answer classifier under any input: `gateway_client::classify` turns any status,
//! headers and body bytes into an `Outcome`, never panics, and classifies as the table in
//! gateway-client/src/outcome.rs documents.
//!
//! One file, two users: the cargo-fuzz target `gateway_response` (fuzz/, nightly) and
//! gateway-client/tests/properties.rs (stable: property tests, and the replay of every file of
//! fuzz/corpus/gateway_response), which includes it with `#[path]`.
//!
//! A fuzz input is an HTTP answer written as text, so that the seed corpus can be read and
//! written by hand (real answers of the simulator, captured with curl):
//!
//! ```text
//! 402 intent                      <- status, then what the call expects: intent or refund
//! request-id: req_1               <- headers, one a line, until an empty line
//!
//! {"error":{"type":"card_error"}} <- the body, any bytes
//! ```
//!
//! Any bytes are an input: a status line without a number is status 200, a header line that is
//! not a valid header is left out, a missing empty line means an empty body.

use std::time::Duration;

use gateway_client::model::ErrorBody;
use gateway_client::{Outcome, PaymentIntent, Refund, Reply, UnknownReason, classify};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

/// The wait reported for a 429 without a usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(1500);
/// The longest `Retry-After` taken literally (outcome.rs: one day).
const RETRY_AFTER_CEILING: Duration = Duration::from_secs(24 * 60 * 60);

/// What the call that got the answer expects in a 2xx body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Intent,
    Refund,
}

/// One HTTP answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub expect: Expect,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// The fuzz entry point: any bytes. Panics only when a check fails.
pub fn run(data: &[u8]) {
    check(&parse(data));
}

/// Reads an input (see the module's documentation); never fails.
pub fn parse(data: &[u8]) -> Answer {
    let (head, body) = match find(data, b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next().unwrap_or_default();
    let digits: Vec<u8> = status_line
        .iter()
        .copied()
        .skip_while(|b| !b.is_ascii_digit())
        .take_while(u8::is_ascii_digit)
        .take(4)
        .collect();
    let code = std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| d.parse::<u16>().ok())
        .unwrap_or(200);
    // Every status `http` can represent (100–999); a number outside it wraps into it.
    let status = StatusCode::from_u16(100 + (code.saturating_sub(100)) % 900).expect("100..=999");
    let expect = if find(status_line, b"refund").is_some() {
        Expect::Refund
    } else {
        Expect::Intent
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    Answer {
        status,
        expect,
        headers,
        body: body.to_vec(),
    }
}

/// Writes an answer as an input `parse` reads back (the seed corpus is written with it).
pub fn input(answer: &Answer) -> Vec<u8> {
    let mut data = format!(
        "{} {}\n",
        answer.status.as_u16(),
        match answer.expect {
            Expect::Intent => "intent",
            Expect::Refund => "refund",
        }
    )
    .into_bytes();
    for (name, value) in &answer.headers {
        data.extend_from_slice(name.as_str().as_bytes());
        data.extend_from_slice(b": ");
        data.extend_from_slice(value.as_bytes());
        data.push(b'\n');
    }
    data.push(b'\n');
    data.extend_from_slice(&answer.body);
    data
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Classifies the answer for what its call expects, and checks the classification.
pub fn check(answer: &Answer) {
    match answer.expect {
        Expect::Intent => check_as::<PaymentIntent>(answer),
        Expect::Refund => check_as::<Refund>(answer),
    }
}

/// The table of gateway-client/src/outcome.rs, re-stated from the status, the headers and the
/// body alone.
pub fn check_as<T>(answer: &Answer)
where
    T: DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Answer {
        status,
        headers,
        body,
        ..
    } = answer;
    let reply: Reply<T> = classify(*status, headers, body, DEFAULT_RETRY_AFTER);
    let code = status.as_u16();
    let shown = format!(
        "HTTP {code}, body {:?}: {reply:?}",
        String::from_utf8_lossy(body)
    );

    // What the exchange says, whatever the status.
    let replayed = headers
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    assert_eq!(reply.replayed, replayed, "Idempotent-Replayed: {shown}");
    let request_id = headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(reply.request_id, request_id, "Request-Id: {shown}");
    assert_eq!(reply.tries, 1, "{shown}");
    assert!(reply.retried.is_empty(), "{shown}");

    // Only a 2xx whose body is what the call expects is a success, with exactly that body.
    let parsed: Option<T> = serde_json::from_slice(body).ok();
    let error: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let unknown = |reply: &Reply<T>, expected: UnknownReason| match &reply.outcome {
        Outcome::Unknown { reason, .. } => assert_eq!(*reason, expected, "{shown}"),
        _ => panic!("expected unknown ({expected:?}): {shown}"),
    };
    match code {
        200..=299 => match parsed {
            Some(value) => assert_eq!(reply.outcome, Outcome::Succeeded(value), "{shown}"),
            None => unknown(&reply, UnknownReason::UnreadableAnswer),
        },
        402 => match error.map(|e| e.error) {
            Some(error) if error.error_type.as_deref() == Some("card_error") => {
                let Outcome::Declined {
                    decline_code,
                    intent_id,
                    ..
                } = &reply.outcome
                else {
                    panic!("a card error is a decline: {shown}");
                };
                let expected = error
                    .decline_code
                    .clone()
                    .or(error.code.clone())
                    .unwrap_or_else(|| "card_declined".to_owned());
                assert_eq!(*decline_code, expected, "{shown}");
                assert_eq!(*intent_id, error.payment_intent_id(), "{shown}");
            }
            Some(_) => assert!(
                matches!(reply.outcome, Outcome::Rejected { status: 402, .. }),
                "a 402 of another error type is a rejection: {shown}"
            ),
            None => unknown(&reply, UnknownReason::UnreadableAnswer),
        },
        408 => unknown(&reply, UnknownReason::Timeout),
        409 => unknown(&reply, UnknownReason::Conflict),
        429 => {
            let Outcome::RetryLater { after } = reply.outcome else {
                panic!("a 429 is retry-later: {shown}");
            };
            assert_eq!(after, expected_retry_after(headers), "{shown}");
        }
        400..=499 => match &reply.outcome {
            Outcome::Rejected {
                status,
                code: error_code,
                message,
                ..
            } => {
                assert_eq!(*status, code, "{shown}");
                if let Some(error) = &error {
                    assert_eq!(*error_code, error.error.code, "{shown}");
                }
                assert!(!message.is_empty(), "{shown}");
            }
            _ => panic!("a 4xx is a rejection: {shown}"),
        },
        500..=599 => unknown(&reply, UnknownReason::ServerError(code)),
        _ => unknown(&reply, UnknownReason::UnreadableAnswer),
    }

    // A detail or message says what happened in a bounded number of words: at most the body's
    // own text and a fixed excerpt of it.
    let words = match &reply.outcome {
        Outcome::Unknown { detail, .. } => detail.len(),
        Outcome::Declined {
            message,
            decline_code,
            ..
        } => message.len() + decline_code.len(),
        Outcome::Rejected { message, .. } => message.len(),
        _ => 0,
    };
    assert!(
        words <= body.len() + 2_500,
        "{words} bytes of detail: {shown}"
    );
}

/// `Retry-After` as delay-seconds, integer or decimal, at most a day; else the default.
fn expected_retry_after(headers: &HeaderMap) -> Duration {
    let seconds = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0);
    match seconds {
        None => DEFAULT_RETRY_AFTER,
        Some(s) if s >= RETRY_AFTER_CEILING.as_secs_f64() => RETRY_AFTER_CEILING,
        Some(s) => Duration::from_secs_f64(s),
    }
}
