//! Property tests of `classify`: any status, headers and body bytes give an outcome, never a
//! panic, classified as the table of src/outcome.rs documents. Bounded (a few hundred cases);
//! proptest shrinks a failure to a small input and prints it.
//!
//! The checks are those of the cargo-fuzz target `gateway_response` (fuzz/src/gateway.rs,
//! included here file for file), and the last test replays every committed corpus file of
//! fuzz/corpus/gateway_response through the same entry point.

#[allow(dead_code)] // shared with fuzz/: not every helper is used on this side
#[path = "../../fuzz/src/gateway.rs"]
mod gateway;

use std::path::Path;

use gateway::{Answer, Expect};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

fn status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        4 => select(vec![200u16, 201, 202, 204, 400, 401, 402, 403, 404, 408, 409, 429, 500, 502, 503, 504]),
        2 => 100u16..=599,
        1 => 600u16..=999,
    ]
    .prop_map(|code| StatusCode::from_u16(code).expect("100..=999"))
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        select(vec![
            "true",
            "TRUE",
            " true ",
            "false",
            "1",
            "0",
            "0.5",
            "7",
            "-1",
            "-0",
            "NaN",
            "inf",
            "1e30",
            "1e400",
            "86401",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "",
            "req_123",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "[ -~]{0,24}".prop_map(String::into_bytes),
        "[0-9]{1,25}(\\.[0-9]{0,6})?".prop_map(String::into_bytes),
        vec(any::<u8>(), 0..24),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        4 => select(vec![
            "retry-after", "idempotent-replayed", "request-id", "content-type", "content-length",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z][a-z0-9-]{0,12}",
    ];
    vec((name, header_value()), 0..5).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) {
                map.append(name, value);
            }
        }
        map
    })
}

fn json_text() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
        select(vec![
            "card_error",
            "invalid_request_error",
            "idempotency_error",
            "api_error",
            "succeeded",
            "requires_payment_method",
            "pending",
            "pi_1",
            "re_1",
        ])
        .prop_map(serde_json::Value::from),
    ]
}

/// Bodies shaped like the gateway's: intents, refunds and errors with fields of any type and
/// value, some of them cut short.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let intent_keys = vec![
        "id",
        "status",
        "amount",
        "currency",
        "metadata",
        "payment_method",
        "amount_received",
        "last_payment_error",
        "latest_charge",
        "created",
        "payment_intent",
        "object",
    ];
    let error_keys = vec![
        "type",
        "code",
        "decline_code",
        "message",
        "param",
        "payment_intent",
    ];
    let object = |keys: Vec<&'static str>| {
        vec((select(keys), json_text()), 0..8).prop_map(|fields| {
            serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        })
    };
    let good_intent = (
        "pi_[A-Za-z0-9]{1,12}",
        select(vec![
            "succeeded",
            "requires_confirmation",
            "processing",
            "canceled",
            "odd",
        ]),
        any::<i64>(),
    )
        .prop_map(|(id, status, amount)| {
            serde_json::json!({"id": id, "status": status, "amount": amount, "currency": "eur",
                "metadata": {"order_id": "o-1", "attempt": 1}})
        });
    let good_refund = ("re_[A-Za-z0-9]{1,12}", any::<i64>()).prop_map(|(id, amount)| {
        serde_json::json!({"id": id, "amount": amount, "currency": "eur", "status": "succeeded",
            "payment_intent": "pi_1"})
    });
    let error = object(error_keys).prop_map(|e| serde_json::json!({ "error": e }));
    let value = prop_oneof![good_intent, good_refund, error, object(intent_keys),];
    (value, any::<bool>(), any::<usize>()).prop_map(|(value, cut, at)| {
        let bytes = serde_json::to_vec(&value).expect("json");
        if cut {
            let at = at % (bytes.len() + 1);
            bytes[..at].to_vec()
        } else {
            bytes
        }
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => json_body(),
        1 => vec(any::<u8>(), 0..300),
        1 => "\\PC{0,100}".prop_map(String::into_bytes),
        1 => Just(Vec::new()),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    (
        status(),
        prop_oneof![Just(Expect::Intent), Just(Expect::Refund)],
        headers(),
        body(),
    )
        .prop_map(|(status, expect, headers, body)| Answer {
            status,
            expect,
            headers,
            body,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any answer: an outcome that agrees with the status class and the table.
    #[test]
    fn any_answer_is_classified_as_documented(answer in answer()) {
        gateway::check(&answer);
    }

    /// Written as a fuzz input and read back, an answer is the same answer (the corpus format
    /// loses nothing the classification reads).
    #[test]
    fn the_input_format_round_trips(answer in answer()) {
        let read = gateway::parse(&gateway::input(&answer));
        prop_assert_eq!(read.status, answer.status);
        prop_assert_eq!(read.expect, answer.expect);
        prop_assert_eq!(&read.body, &answer.body);
        for name in ["retry-after", "idempotent-replayed", "request-id"] {
            let first = |h: &HeaderMap| h.get(name).map(|v| v.as_bytes().trim_ascii().to_vec());
            prop_assert_eq!(first(&read.headers), first(&answer.headers), "{}", name);
        }
    }

    /// Any bytes as a fuzz input.
    #[test]
    fn any_bytes_are_an_answer(bytes in vec(any::<u8>(), 0..400)) {
        gateway::run(&bytes);
    }
}

/// Every committed corpus file, through the fuzz target's own entry point.
#[test]
fn the_gateway_response_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/gateway_response");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: only {} files",
        dir.display(),
        files.len()
    );
    for path in files {
        let bytes = std::fs::read(&path).expect("corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| gateway::run(&bytes)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{} fails: {message}", path.display());
        }
    }
}
