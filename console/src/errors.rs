//! A refusal of the coordinator in words: what happened and what to do, from the status' code
//! and its `google.rpc.ErrorInfo` reason and metadata (and `BadRequest` violations). The one
//! place that knows gRPC codes and reasons; pages only show what it says.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// What the sign-in page says of a refused key.
pub const KEY_REFUSED: &str = "The coordinator did not accept this key.";

/// What a POST with a missing or wrong CSRF token gets.
pub const CSRF_REFUSED: &str =
    "This form expired or did not come from this console. Reload the page and try again.";

/// The `ErrorInfo` reason of a status ("" if none).
pub fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// A refusal's `ErrorInfo` metadata.
pub fn metadata(status: &Status) -> HashMap<String, String> {
    status
        .get_details_error_info()
        .map(|info| info.metadata)
        .unwrap_or_default()
}

/// The person-readable text of a status.
pub fn describe(status: &Status) -> String {
    let meta = metadata(status);
    let m = |k: &str| meta.get(k).cloned().unwrap_or_else(|| "?".to_owned());
    match (status.code(), reason(status).as_str()) {
        (_, "PAYMENT_IN_PROGRESS") => payment_in_progress(&m("operator_id"), &m("started_at")),
        (Code::PermissionDenied, _) => "Your key's role may not do this: ask an admin.".to_owned(),
        (Code::Unauthenticated, _) => {
            "The coordinator no longer accepts your key: sign out and sign in again.".to_owned()
        }
        (_, "PAYMENTS_PAUSED") => format!(
            "Payments are paused ({} since {}): {}. Nothing was charged; try again once they \
             are resumed.",
            m("by"),
            m("since"),
            m("reason")
        ),
        (_, "ALREADY_PAID") => "This order is already paid: nothing was charged again.".to_owned(),
        (_, "IN_MANUAL_REVIEW") => {
            "This order is in manual review: a reviewer must resolve it before it can be paid."
                .to_owned()
        }
        (_, "ORDER_MISMATCH") => format!(
            "This order was recorded with a different {}: check the order page and pay it as \
             recorded.",
            m("fields").replace(',', ", ")
        ),
        (_, "IDEMPOTENCY_KEY_REUSED") => {
            "This form was already sent with other values: reload the page and try again."
                .to_owned()
        }
        (_, "INVALID_REQUEST") | (Code::InvalidArgument, _) => invalid_request(status),
        (_, "STORE_UNAVAILABLE") => {
            "The coordinator cannot reach its database: nothing was charged. Try again in a \
             moment."
                .to_owned()
        }
        (_, "RATE_LIMITED") => format!(
            "Too many requests from your key: wait {} ms and try again.",
            m("retry_after_ms")
        ),
        (_, "ORDER_NOT_FOUND") | (Code::NotFound, _) => {
            "There is no such order: check its id.".to_owned()
        }
        (_, "NOT_IN_MANUAL_REVIEW") => {
            let by = meta
                .get("resolved_by")
                .map(|by| format!(" (resolved by {by})"))
                .unwrap_or_default();
            format!("This order is no longer in manual review{by}: reload the queue.")
        }
        (_, "NOT_PAID") => format!(
            "Only a paid order can be refunded; this one is {}.",
            m("state").to_lowercase().replace('_', " ")
        ),
        (_, "REFUND_EXCEEDS_PAID") => {
            let currency = m("currency");
            let remaining = meta
                .get("remaining_minor")
                .and_then(|r| r.parse::<i64>().ok())
                .map(|r| crate::money::format(r, &currency))
                .unwrap_or_else(|| "less".to_owned());
            format!("That is more than remains refundable: at most {remaining}.")
        }
        (_, "REFUND_IN_PROGRESS") => format!(
            "{} asked for a refund of this order at {}; it is not finished yet{}. Wait for its \
             outcome below.",
            m("requested_by"),
            m("requested_at"),
            if m("in_review") == "true" {
                " (it is in manual review)"
            } else {
                ""
            }
        ),
        (_, "RESOLUTION_CONTRADICTED") => format!(
            "The gateway contradicts this decision: {} Check the gateway again.",
            status.message()
        ),
        (_, "GATEWAY_UNAVAILABLE") => {
            "The gateway cannot be reached to check this: try again in a moment.".to_owned()
        }
        (_, "REPLICA_SHUTTING_DOWN") | (Code::Unavailable, _) => {
            "The coordinator cannot be reached right now: nothing was done. Try again in a \
             moment."
                .to_owned()
        }
        (Code::DeadlineExceeded, _) => {
            "The coordinator did not answer in time: reload the page to see what happened."
                .to_owned()
        }
        _ => format!(
            "The coordinator could not do this ({}). Reload the page to see where things stand.",
            status.message()
        ),
    }
}

/// The PAYMENT_IN_PROGRESS sentence (also on an order page opened with `?busy=1`).
pub fn payment_in_progress(operator: &str, since: &str) -> String {
    format!(
        "Operator {operator} is already paying this order (since {since}). Its outcome appears below."
    )
}

/// The API's own message for each field it refused (a card number's message among them).
fn invalid_request(status: &Status) -> String {
    let violations: Vec<String> = status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| format!("{}: {}", field_name(&v.field), v.description))
                .collect()
        })
        .unwrap_or_default();
    if violations.is_empty() {
        format!("The coordinator refused this: {}", status.message())
    } else {
        format!(
            "The coordinator refused this. {}. Correct it and try again.",
            violations.join("; ")
        )
    }
}

fn field_name(field: &str) -> String {
    match field {
        "payment_method" => "Payment method".to_owned(),
        "order_id" => "Order id".to_owned(),
        "customer_id" => "Customer".to_owned(),
        "amount.amount_minor" | "amount" => "Amount".to_owned(),
        "amount.currency" => "Currency".to_owned(),
        other => other.replace('_', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    fn refused(code: Code, reason: &str, meta: &[(&str, &str)]) -> Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            reason,
            "payments.v1",
            meta.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
        );
        Status::with_error_details(code, "raw message", details)
    }

    #[test]
    fn refusals_read_as_sentences() {
        let busy = refused(
            Code::Aborted,
            "PAYMENT_IN_PROGRESS",
            &[
                ("operator_id", "op-bob"),
                ("started_at", "2026-01-01T10:00:00Z"),
            ],
        );
        assert_eq!(
            describe(&busy),
            "Operator op-bob is already paying this order (since 2026-01-01T10:00:00Z). Its \
             outcome appears below."
        );
        let denied = refused(Code::PermissionDenied, "FORBIDDEN", &[("role", "operator")]);
        assert_eq!(
            describe(&denied),
            "Your key's role may not do this: ask an admin."
        );
        let paused = refused(
            Code::Unavailable,
            "PAYMENTS_PAUSED",
            &[
                ("reason", "gateway maintenance"),
                ("by", "admin-dave"),
                ("since", "T"),
            ],
        );
        assert!(describe(&paused).contains("gateway maintenance"));
        assert!(!describe(&paused).contains("UNAVAILABLE"));
    }

    #[test]
    fn bad_requests_carry_the_apis_own_words() {
        let mut details = ErrorDetails::new();
        details.set_error_info("INVALID_REQUEST", "payments.v1", HashMap::new());
        details.add_bad_request_violation("payment_method", "looks like a card number");
        let status = Status::with_error_details(Code::InvalidArgument, "invalid", details);
        let text = describe(&status);
        assert!(
            text.contains("Payment method: looks like a card number"),
            "{text}"
        );
    }

    #[test]
    fn a_bare_transport_failure_is_still_words() {
        let text = describe(&Status::unavailable("tcp connect error"));
        assert!(text.contains("cannot be reached"), "{text}");
    }
}
