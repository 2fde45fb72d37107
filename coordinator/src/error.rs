//! The API boundary's errors, and the one place that turns them into gRPC statuses.
//!
//! Handlers return `Result<_, Error>` and use `?`; `impl From<Error> for tonic::Status` below is
//! the only code that knows gRPC codes and the `reason`s of CONTRACT §3. Every status carries a
//! `google.rpc.ErrorInfo` (domain `payments.v1`); an invalid request also carries a
//! `google.rpc.BadRequest` listing every field violation.
//!
//! No variant carries a card number or an API key, so neither can reach a message, a log line or
//! `Debug` output through this type.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::{Role, Rpc};
use crate::domain::Violations;

/// The `ErrorInfo.domain` of every refusal.
pub const ERROR_DOMAIN: &str = "payments.v1";

/// "attempt N", or what a 0 means: the holder has taken the order and is recording its attempt.
fn attempt_text(attempt: i32) -> String {
    if attempt > 0 {
        format!("attempt {attempt}")
    } else {
        "its attempt being recorded now".to_owned()
    }
}

/// Why a call is refused or failed, as callers see it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "another attempt is in flight for this order: {}, started by {operator_id} at {}; nothing \
         was charged by this request, watch the order for its outcome",
        attempt_text(*attempt),
        rfc3339(*started_at)
    )]
    PaymentInProgress {
        /// 0 while the holder is still recording its attempt (the refusal came from its lease).
        attempt: i32,
        operator_id: String,
        started_at: SystemTime,
    },
    #[error("order {order_id} is already paid; it will not be charged again")]
    AlreadyPaid { order_id: String },
    #[error(
        "order {order_id} was paid and then refunded; it is closed and will not be charged again"
    )]
    Refunded { order_id: String },
    #[error(
        "order {order_id} is in manual review: an operator must resolve it before it can be paid"
    )]
    InManualReview { order_id: String },
    #[error(
        "order {order_id} is already recorded with a different {}; a payment must match the \
         recorded order",
        fields.join(", ")
    )]
    OrderMismatch {
        order_id: String,
        /// Names of the differing fields (`amount`, `currency`, `customer_id`…), never values.
        fields: Vec<&'static str>,
    },
    #[error(
        "this idempotency key was already used for a different request; use a new key for a new \
         request, or resend exactly the same request"
    )]
    IdempotencyKeyReused,
    #[error("invalid request: {0}")]
    InvalidRequest(Violations),
    #[error("new payments are paused since {} by {by}: {reason}", rfc3339(*since))]
    PaymentsPaused {
        reason: String,
        since: SystemTime,
        by: String,
    },
    /// The detail is for the log only; callers are told nothing was charged.
    #[error("the payment store is unavailable ({0}); nothing was charged")]
    StoreUnavailable(String),
    /// The caller's request budget (`RATE_LIMIT_*`, per API key) is spent for now.
    #[error(
        "too many requests from this caller; retry after {} ms",
        retry_after.as_millis().max(1)
    )]
    RateLimited {
        /// When the budget allows the next request (`google.rpc.RetryInfo`).
        retry_after: Duration,
    },
    /// Shutdown has started on this replica (SIGTERM): no new attempt starts here.
    #[error("this replica is shutting down; nothing was charged; retry on another replica")]
    ShuttingDown,
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("role {role} may not call {rpc}")]
    Forbidden { role: Role, rpc: Rpc },
    #[error("order {order_id} not found")]
    OrderNotFound { order_id: String },
    #[error(
        "order {order_id} is not in manual review (it is {state}{}); there is nothing to resolve",
        resolved_by.as_deref().map(|by| format!(", resolved by {by}")).unwrap_or_default()
    )]
    NotInManualReview {
        order_id: String,
        state: crate::domain::OrderState,
        resolved_by: Option<String>,
    },
    #[error(
        "the gateway contradicts this resolution of order {order_id}: {detail}; nothing was recorded"
    )]
    ResolutionContradicted { order_id: String, detail: String },
    /// The gateway could not be asked (a verification lookup); nothing was recorded.
    #[error(
        "the gateway could not be reached to verify this ({detail}); nothing was recorded, retry later"
    )]
    GatewayUnavailable { detail: String },
    #[error("order {order_id} is {state}: only a paid order can be refunded")]
    NotPaid {
        order_id: String,
        state: crate::domain::OrderState,
    },
    #[error(
        "refund of order {order_id} refused: at most {remaining} {currency} (minor units) remain refundable; a refund is never more than was paid"
    )]
    RefundExceedsPaid {
        order_id: String,
        remaining: i64,
        currency: String,
    },
    #[error(
        "refund {number} of order {order_id}, asked by {requested_by} at {}, {}",
        rfc3339(*requested_at),
        if *in_review {
            "is in doubt and awaits a reviewer (ListManualReviews); no other refund may start before it is resolved"
        } else {
            "is in flight; wait for its outcome (GetOrder or WatchOrder) before asking for another"
        }
    )]
    RefundInProgress {
        order_id: String,
        number: i32,
        requested_by: String,
        requested_at: SystemTime,
        /// In doubt, awaiting a reviewer (rather than in flight).
        in_review: bool,
    },
    #[error("refund {number} of order {order_id} failed: {message}")]
    RefundFailed {
        order_id: String,
        number: i32,
        message: String,
    },
    /// The detail is for the log only (the caller logs it); callers get a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Violations> for Error {
    fn from(violations: Violations) -> Self {
        Error::InvalidRequest(violations)
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(error: crate::store::StoreError) -> Self {
        if error.is_unavailable() {
            // Before an attempt is recorded this means nothing was charged: safe to retry.
            Error::StoreUnavailable(error.to_string())
        } else {
            tracing::error!(%error, "store error");
            Error::Internal(error.to_string())
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = match &error {
            Error::StoreUnavailable(_) => {
                "the payment store is unavailable: nothing was charged; safe to retry".to_owned()
            }
            Error::Internal(_) => {
                "internal error; nothing more can be said here, the failure was logged".to_owned()
            }
            Error::InvalidRequest(v) => {
                let fields = v.fields();
                format!(
                    "invalid request: {} field violation{} ({}); see the BadRequest details",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" },
                    fields.join(", ")
                )
            }
            other => other.to_string(),
        };
        let mut metadata = HashMap::new();
        let mut details = ErrorDetails::new();
        let (code, reason) = match error {
            Error::PaymentInProgress {
                attempt,
                operator_id,
                started_at,
            } => {
                metadata.insert("attempt".to_owned(), attempt.to_string());
                metadata.insert("operator_id".to_owned(), operator_id);
                metadata.insert("started_at".to_owned(), rfc3339(started_at).to_string());
                (Code::Aborted, "PAYMENT_IN_PROGRESS")
            }
            Error::AlreadyPaid { order_id } | Error::Refunded { order_id } => {
                metadata.insert("order_id".to_owned(), order_id);
                (Code::FailedPrecondition, "ALREADY_PAID")
            }
            Error::InManualReview { order_id } => {
                metadata.insert("order_id".to_owned(), order_id);
                (Code::FailedPrecondition, "IN_MANUAL_REVIEW")
            }
            Error::OrderMismatch { order_id, fields } => {
                metadata.insert("order_id".to_owned(), order_id);
                metadata.insert("fields".to_owned(), fields.join(","));
                (Code::FailedPrecondition, "ORDER_MISMATCH")
            }
            Error::IdempotencyKeyReused => (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"),
            Error::InvalidRequest(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                (Code::InvalidArgument, "INVALID_REQUEST")
            }
            Error::PaymentsPaused { reason, since, by } => {
                metadata.insert("reason".to_owned(), reason);
                metadata.insert("since".to_owned(), rfc3339(since).to_string());
                metadata.insert("by".to_owned(), by);
                (Code::Unavailable, "PAYMENTS_PAUSED")
            }
            Error::StoreUnavailable(_) => (Code::Unavailable, "STORE_UNAVAILABLE"),
            Error::RateLimited { retry_after } => {
                // At least 1 ms: a zero delay would read as "retry at once".
                let retry_after = retry_after.max(Duration::from_millis(1));
                metadata.insert(
                    "retry_after_ms".to_owned(),
                    retry_after.as_millis().to_string(),
                );
                details.set_retry_info(Some(retry_after));
                (Code::ResourceExhausted, "RATE_LIMITED")
            }
            Error::ShuttingDown => (Code::Unavailable, "REPLICA_SHUTTING_DOWN"),
            Error::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Error::Forbidden { role, rpc } => {
                metadata.insert("role".to_owned(), role.to_string());
                metadata.insert("rpc".to_owned(), rpc.to_string());
                (Code::PermissionDenied, "FORBIDDEN")
            }
            Error::OrderNotFound { order_id } => {
                metadata.insert("order_id".to_owned(), order_id);
                (Code::NotFound, "ORDER_NOT_FOUND")
            }
            Error::NotInManualReview {
                order_id,
                state,
                resolved_by,
            } => {
                metadata.insert("order_id".to_owned(), order_id);
                metadata.insert("state".to_owned(), state.to_string());
                if let Some(by) = resolved_by {
                    metadata.insert("resolved_by".to_owned(), by);
                }
                (Code::FailedPrecondition, "NOT_IN_MANUAL_REVIEW")
            }
            Error::ResolutionContradicted { order_id, .. } => {
                metadata.insert("order_id".to_owned(), order_id);
                (Code::FailedPrecondition, "RESOLUTION_CONTRADICTED")
            }
            Error::GatewayUnavailable { .. } => (Code::Unavailable, "GATEWAY_UNAVAILABLE"),
            Error::NotPaid { order_id, state } => {
                metadata.insert("order_id".to_owned(), order_id);
                metadata.insert("state".to_owned(), state.to_string());
                (Code::FailedPrecondition, "NOT_PAID")
            }
            Error::RefundExceedsPaid {
                order_id,
                remaining,
                currency,
            } => {
                metadata.insert("order_id".to_owned(), order_id);
                metadata.insert("remaining_minor".to_owned(), remaining.to_string());
                metadata.insert("currency".to_owned(), currency);
                (Code::FailedPrecondition, "REFUND_EXCEEDS_PAID")
            }
            Error::RefundInProgress {
                order_id,
                number,
                requested_by,
                requested_at,
                in_review,
            } => {
                metadata.insert("in_review".to_owned(), in_review.to_string());
                metadata.insert("order_id".to_owned(), order_id);
                metadata.insert("refund".to_owned(), number.to_string());
                metadata.insert("requested_by".to_owned(), requested_by);
                metadata.insert("requested_at".to_owned(), rfc3339(requested_at).to_string());
                (Code::Aborted, "REFUND_IN_PROGRESS")
            }
            Error::RefundFailed {
                order_id, number, ..
            } => {
                metadata.insert("order_id".to_owned(), order_id);
                metadata.insert("refund".to_owned(), number.to_string());
                (Code::FailedPrecondition, "REFUND_FAILED")
            }
            Error::Internal(_) => (Code::Internal, "INTERNAL"),
        };
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
}

/// A time as RFC 3339 in UTC (`2025-01-31T09:30:00.25Z`); out-of-range times print as such
/// rather than failing an error path.
pub fn rfc3339(at: SystemTime) -> impl fmt::Display {
    let nanos = match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).ok(),
        Err(e) => i128::try_from(e.duration().as_nanos()).ok().map(|n| -n),
    };
    nanos
        .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "(time out of range)".to_owned())
}

/// Writes an error and its whole `source()` chain, for `Debug` impls that logs read (zero2prod).
pub fn error_chain_fmt(e: &impl std::error::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{e}")?;
    let mut current = e.source();
    while let Some(cause) = current {
        writeln!(f, "Caused by:\n\t{cause}")?;
        current = cause.source();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn decode(error: Error) -> (Status, tonic_types::ErrorInfo) {
        let status = Status::from(error);
        let info = status
            .get_error_details()
            .error_info()
            .cloned()
            .expect("every status carries an ErrorInfo");
        assert_eq!(info.domain, ERROR_DOMAIN);
        (status, info)
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn payment_in_progress_names_the_holder() {
        let (status, info) = decode(Error::PaymentInProgress {
            attempt: 2,
            operator_id: "op-7".to_owned(),
            started_at: at(1_700_000_000),
        });
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(info.reason, "PAYMENT_IN_PROGRESS");
        assert_eq!(info.metadata["attempt"], "2");
        assert_eq!(info.metadata["operator_id"], "op-7");
        assert_eq!(info.metadata["started_at"], "2023-11-14T22:13:20Z");
        assert!(status.message().contains("op-7"));
        assert!(status.message().contains("2023-11-14T22:13:20Z"));
        assert!(status.message().contains("attempt 2"));

        // Refused by a lease whose holder is still recording its attempt.
        let (status, info) = decode(Error::PaymentInProgress {
            attempt: 0,
            operator_id: "op-7".to_owned(),
            started_at: at(1_700_000_000),
        });
        assert_eq!(info.metadata["attempt"], "0");
        assert!(
            status.message().contains("its attempt being recorded now"),
            "{}",
            status.message()
        );
        assert!(!status.message().contains("attempt 0"));
    }

    #[test]
    fn preconditions() {
        for (error, reason, word) in [
            (
                Error::AlreadyPaid {
                    order_id: "o-1".into(),
                },
                "ALREADY_PAID",
                "already paid",
            ),
            (
                Error::Refunded {
                    order_id: "o-1".into(),
                },
                "ALREADY_PAID",
                "refunded",
            ),
            (
                Error::InManualReview {
                    order_id: "o-1".into(),
                },
                "IN_MANUAL_REVIEW",
                "manual review",
            ),
        ] {
            let (status, info) = decode(error);
            assert_eq!(status.code(), Code::FailedPrecondition);
            assert_eq!(info.reason, reason);
            assert_eq!(info.metadata["order_id"], "o-1");
            assert!(status.message().contains(word), "{}", status.message());
        }
    }

    #[test]
    fn order_mismatch_names_the_fields() {
        let (status, info) = decode(Error::OrderMismatch {
            order_id: "o-1".into(),
            fields: vec!["amount", "customer_id"],
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(info.reason, "ORDER_MISMATCH");
        assert_eq!(info.metadata["fields"], "amount,customer_id");
        assert!(status.message().contains("amount, customer_id"));
    }

    #[test]
    fn invalid_requests_list_every_violation() {
        let (status, info) = decode(Error::IdempotencyKeyReused);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
        assert!(status.get_error_details().bad_request().is_none());

        let mut v = Violations::new();
        v.push("order_id", "is required");
        v.push("items[3].quantity", "must be between 1 and 10000; got 0");
        let (status, info) = decode(Error::from(v));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(info.reason, "INVALID_REQUEST");
        assert!(status.message().contains("order_id, items[3].quantity"));
        let details = status.get_error_details();
        let bad = details.bad_request().expect("a BadRequest detail");
        let got: Vec<_> = bad
            .field_violations
            .iter()
            .map(|f| (f.field.as_str(), f.description.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("order_id", "is required"),
                ("items[3].quantity", "must be between 1 and 10000; got 0")
            ]
        );
    }

    #[test]
    fn a_refused_card_number_never_reaches_the_status() {
        let request = payments_proto::v1::ProcessPaymentRequest {
            payment_method: "4242 4242 4242 4242".into(),
            ..Default::default()
        };
        let Err(v) = crate::domain::PaymentRequest::parse(request) else {
            panic!("an empty request parsed");
        };
        let error = Error::from(v);
        let shown = format!("{error} {error:?}");
        let status = Status::from(error);
        let all = format!("{shown} {status:?} {:?}", status.get_error_details());
        assert!(!all.contains("4242"), "{all}");
    }

    #[test]
    fn unavailable() {
        let (status, info) = decode(Error::PaymentsPaused {
            reason: "gateway incident".into(),
            since: at(1_700_000_000),
            by: "admin-1".into(),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(info.reason, "PAYMENTS_PAUSED");
        assert_eq!(info.metadata["reason"], "gateway incident");
        assert_eq!(info.metadata["since"], "2023-11-14T22:13:20Z");
        assert_eq!(info.metadata["by"], "admin-1");
        assert!(status.message().contains("gateway incident"));
        assert!(status.message().contains("admin-1"));

        let (status, info) = decode(Error::StoreUnavailable(
            "connection refused to db:5432".into(),
        ));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(info.reason, "STORE_UNAVAILABLE");
        assert!(
            status
                .message()
                .contains("nothing was charged; safe to retry")
        );
        assert!(!status.message().contains("5432"));
    }

    #[test]
    fn the_rest() {
        for (error, code, reason) in [
            (
                Error::RateLimited {
                    retry_after: Duration::from_millis(250),
                },
                Code::ResourceExhausted,
                "RATE_LIMITED",
            ),
            (
                Error::ShuttingDown,
                Code::Unavailable,
                "REPLICA_SHUTTING_DOWN",
            ),
            (
                Error::Unauthenticated("unknown API key"),
                Code::Unauthenticated,
                "UNAUTHENTICATED",
            ),
            (
                Error::Forbidden {
                    role: Role::Operator,
                    rpc: Rpc::PausePayments,
                },
                Code::PermissionDenied,
                "FORBIDDEN",
            ),
            (
                Error::OrderNotFound {
                    order_id: "o-9".into(),
                },
                Code::NotFound,
                "ORDER_NOT_FOUND",
            ),
            (
                Error::Internal("secret detail".into()),
                Code::Internal,
                "INTERNAL",
            ),
        ] {
            let (status, info) = decode(error);
            assert_eq!(status.code(), code);
            assert_eq!(info.reason, reason);
        }
        let (status, info) = decode(Error::Forbidden {
            role: Role::Operator,
            rpc: Rpc::PausePayments,
        });
        assert_eq!(status.message(), "role operator may not call PausePayments");
        assert_eq!(info.metadata["role"], "operator");
        assert_eq!(info.metadata["rpc"], "PausePayments");
        let status = Status::from(Error::Internal("secret detail".into()));
        assert!(!status.message().contains("secret detail"));
    }

    #[test]
    fn rate_limited_says_when_to_retry() {
        let (status, info) = decode(Error::RateLimited {
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(info.reason, "RATE_LIMITED");
        assert_eq!(info.metadata["retry_after_ms"], "1500");
        let retry = status
            .get_error_details()
            .retry_info()
            .cloned()
            .expect("a RetryInfo detail");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
        assert!(status.message().contains("1500 ms"), "{}", status.message());

        // Never "retry at once".
        let (status, info) = decode(Error::RateLimited {
            retry_after: Duration::ZERO,
        });
        assert_eq!(info.metadata["retry_after_ms"], "1");
        let retry = status.get_error_details().retry_info().cloned().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1)));
    }

    #[test]
    fn shutting_down_says_nothing_was_charged() {
        let (status, info) = decode(Error::ShuttingDown);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(info.reason, "REPLICA_SHUTTING_DOWN");
        assert_eq!(
            status.message(),
            "this replica is shutting down; nothing was charged; retry on another replica"
        );
    }

    #[test]
    fn rfc3339_formats_utc_and_survives_extremes() {
        assert_eq!(rfc3339(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(at(1) + Duration::from_millis(250)).to_string(),
            "1970-01-01T00:00:01.25Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(86_400)).to_string(),
            "1969-12-31T00:00:00Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert_eq!(rfc3339(far).to_string(), "(time out of range)");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    struct Chain(Outer);
    impl fmt::Debug for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            error_chain_fmt(&self.0, f)
        }
    }

    #[test]
    fn error_chain_shows_every_cause() {
        let e = Chain(Outer(std::io::Error::other("inner")));
        assert_eq!(format!("{e:?}"), "outer\nCaused by:\n\tinner\n");
    }
}
