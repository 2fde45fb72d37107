//! Error reports on stderr: a person-readable message from the status (its message, the
//! `ErrorInfo` reason and metadata, every `BadRequest` field violation), or with `--json` one
//! JSON object carrying the same.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::exit::{Exit, Failure};

/// The canonical name of a gRPC code (`ABORTED`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What a status says, decoded once.
struct Described {
    code: Code,
    message: String,
    reason: String,
    metadata: BTreeMap<String, String>,
    violations: Vec<(String, String)>,
    /// From a `google.rpc.RetryInfo` (rate limiting).
    retry_after: Option<std::time::Duration>,
}

fn describe(status: &Status) -> Described {
    let details = status.get_error_details();
    let (reason, metadata) = details.error_info().map_or_else(Default::default, |info| {
        (
            info.reason.clone(),
            info.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    });
    let violations = details
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut message = status.message().to_owned();
    // A transport error keeps its cause as the status' source: show it (it says "connection
    // refused" where the message only says "transport error").
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    Described {
        code: status.code(),
        message,
        reason,
        metadata,
        violations,
        retry_after: details.retry_info().and_then(|r| r.retry_delay),
    }
}

fn hint(d: &Described) -> Option<String> {
    let m = |k: &str| d.metadata.get(k).map(String::as_str).unwrap_or("?");
    Some(match (d.code, d.reason.as_str()) {
        (Code::Unauthenticated, _) => {
            "set PAYCTL_API_KEY, or --key-file (PAYCTL_KEY_FILE), to a valid API key".to_owned()
        }
        (Code::PermissionDenied, _) => format!(
            "your key's role ({}) may not call {}: ask for a key with the right role",
            m("role"),
            m("rpc")
        ),
        (_, "PAYMENT_IN_PROGRESS") => format!(
            "held by {}: attempt {}, started {}; nothing was charged by this request",
            m("operator_id"),
            m("attempt"),
            m("started_at")
        ),
        (_, "PAYMENTS_PAUSED") => format!(
            "paused since {} by {}: {}; see `payctl status`",
            m("since"),
            m("by"),
            m("reason")
        ),
        (_, "STORE_UNAVAILABLE") => {
            "nothing was charged; retry later with the same idempotency key".to_owned()
        }
        (_, "ORDER_MISMATCH") => format!(
            "the order is recorded with a different {}; `payctl get` shows it",
            m("fields")
        ),
        (Code::ResourceExhausted, _) => match d.retry_after {
            Some(delay) => format!("slow down: retry in {} ms", delay.as_millis()),
            None => "slow down and retry later".to_owned(),
        },
        (Code::DeadlineExceeded, _) => {
            "the outcome is unknown to payctl, not lost: the server finishes the work; \
             check with `payctl get`, or retry with the same idempotency key"
                .to_owned()
        }
        _ => return None,
    })
}

fn kind(exit: Exit) -> &'static str {
    match exit {
        Exit::Success => "ok",
        Exit::Usage => "usage",
        Exit::Refused => "refused",
        Exit::Failed => "failed",
        Exit::NotPaid => "not_paid",
    }
}

/// The report of a failure: text for people, or one JSON line.
pub fn report(failure: &Failure, as_json: bool) -> String {
    let exit = failure.exit();
    match failure {
        Failure::Status(status) => {
            let d = describe(status);
            if as_json {
                status_json(&d, exit).to_string()
            } else {
                status_text(&d, exit)
            }
        }
        Failure::Usage(message) => plain(exit, message, as_json),
        Failure::Unreachable(error) => plain(
            exit,
            &format!("cannot reach the coordinator: {error:#}"),
            as_json,
        ),
        Failure::Output(error) => {
            plain(exit, &format!("cannot write the output: {error}"), as_json)
        }
    }
}

fn plain(exit: Exit, message: &str, as_json: bool) -> String {
    if as_json {
        json!({ "error": { "outcome": kind(exit), "exit_code": exit.code(), "message": message } })
            .to_string()
    } else {
        format!("payctl: {}: {message}", kind(exit))
    }
}

fn status_text(d: &Described, exit: Exit) -> String {
    let mut text = format!(
        "payctl: {}: {} ({}{}{})",
        kind(exit),
        d.message,
        code_name(d.code),
        if d.reason.is_empty() { "" } else { ", " },
        d.reason
    );
    for (field, description) in &d.violations {
        text.push_str(&format!("\n  field {field}: {description}"));
    }
    if let Some(hint) = hint(d) {
        text.push_str(&format!("\n  {hint}"));
    }
    text
}

fn status_json(d: &Described, exit: Exit) -> Value {
    json!({
        "error": {
            "outcome": kind(exit),
            "exit_code": exit.code(),
            "code": code_name(d.code),
            "message": d.message,
            "reason": d.reason,
            "metadata": d.metadata,
            "retry_after_ms": d.retry_after.map(|r| r.as_millis() as u64),
            "field_violations": d
                .violations
                .iter()
                .map(|(field, description)| json!({ "field": field, "description": description }))
                .collect::<Vec<_>>(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::ErrorDetails;

    fn busy() -> Status {
        let mut details = ErrorDetails::new();
        let metadata = HashMap::from([
            ("attempt".to_owned(), "1".to_owned()),
            ("operator_id".to_owned(), "op-bob".to_owned()),
            ("started_at".to_owned(), "2025-01-31T09:30:00Z".to_owned()),
        ]);
        details.set_error_info("PAYMENT_IN_PROGRESS", "payments.v1", metadata);
        Status::with_error_details(Code::Aborted, "another attempt is in flight", details)
    }

    #[test]
    fn a_busy_order_names_its_holder() {
        let text = report(&Failure::Status(busy()), false);
        assert!(text.starts_with("payctl: refused: another attempt is in flight"));
        assert!(text.contains("ABORTED, PAYMENT_IN_PROGRESS"));
        assert!(text.contains("held by op-bob: attempt 1, started 2025-01-31T09:30:00Z"));
        let v: Value = serde_json::from_str(&report(&Failure::Status(busy()), true)).unwrap();
        assert_eq!(v["error"]["exit_code"], 3);
        assert_eq!(v["error"]["reason"], "PAYMENT_IN_PROGRESS");
        assert_eq!(v["error"]["metadata"]["operator_id"], "op-bob");
    }

    #[test]
    fn field_violations_are_listed() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("payment_method", "must be a gateway token");
        details.set_error_info("INVALID_REQUEST", "payments.v1", HashMap::new());
        let status = Status::with_error_details(Code::InvalidArgument, "invalid request", details);
        let text = report(&Failure::Status(status), false);
        assert!(
            text.contains("field payment_method: must be a gateway token"),
            "{text}"
        );
    }

    #[test]
    fn a_transport_error_shows_its_cause() {
        let mut status = Status::unavailable("transport error");
        status.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        let text = report(&Failure::Status(status), false);
        assert!(
            text.starts_with("payctl: failed: transport error: connection refused"),
            "{text}"
        );
    }
}
