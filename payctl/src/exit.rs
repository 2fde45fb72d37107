//! Exit codes, so that a script can tell a refusal (the coordinator said no: fix the request
//! or wait) from a failure (nothing usable was said: retry or page someone). The mapping from a
//! gRPC status lives in [`for_status`] alone.

use std::process::ExitCode;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// What `payctl` exits with (documented in `payctl --help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Success,
    /// 2: usage or local configuration error (clap uses 2 for its own usage errors too).
    Usage,
    /// 3: the coordinator refused (CONTRACT §3).
    Refused,
    /// 4: failed: unreachable, store unavailable, internal error, deadline exceeded, unknown.
    Failed,
    /// 5: `pay --wait` saw the attempt end without a charge, or in manual review; `refund` left
    /// the refund in doubt (manual review) or still in flight.
    NotPaid,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::Failed => 4,
            Exit::NotPaid => 5,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// The `ErrorInfo` reason of a status, if it carries one.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// Refused or failed, from a status' code and its `ErrorInfo` reason. `UNAVAILABLE` is a
/// refusal only when payments are paused (a decision); otherwise the store or the server is
/// down (a failure, safe to retry).
pub fn for_status(code: Code, reason: Option<&str>) -> Exit {
    match code {
        Code::Ok => Exit::Success,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted
        | Code::AlreadyExists => Exit::Refused,
        Code::Unavailable if reason == Some("PAYMENTS_PAUSED") => Exit::Refused,
        Code::Unavailable
        | Code::Internal
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Cancelled
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::DataLoss => Exit::Failed,
    }
}

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// Bad local input or configuration, found before any call (exit 2).
    Usage(String),
    /// The coordinator answered with an error status (exit 3 or 4 by [`for_status`]).
    Status(Status),
    /// The coordinator could not be reached (exit 4).
    Unreachable(anyhow::Error),
    /// Writing the output failed (a closed pipe ends the command quietly).
    Output(std::io::Error),
}

impl Failure {
    pub fn exit(&self) -> Exit {
        match self {
            Failure::Usage(_) => Exit::Usage,
            Failure::Status(status) => for_status(status.code(), reason(status).as_deref()),
            Failure::Unreachable(_) => Exit::Failed,
            Failure::Output(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                Exit::Success
            }
            Failure::Output(_) => Exit::Failed,
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure::Status(status)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure::Output(error)
    }
}

impl From<csv::Error> for Failure {
    fn from(error: csv::Error) -> Failure {
        match error.into_kind() {
            csv::ErrorKind::Io(io) => Failure::Output(io),
            other => Failure::Output(std::io::Error::other(format!("{other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::ErrorDetails;

    #[test]
    fn contract_refusals_exit_3() {
        for (code, reason) in [
            (Code::Aborted, "PAYMENT_IN_PROGRESS"),
            (Code::FailedPrecondition, "ALREADY_PAID"),
            (Code::FailedPrecondition, "IN_MANUAL_REVIEW"),
            (Code::FailedPrecondition, "ORDER_MISMATCH"),
            (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"),
            (Code::InvalidArgument, "INVALID_REQUEST"),
            (Code::Unavailable, "PAYMENTS_PAUSED"),
            (Code::ResourceExhausted, "RATE_LIMITED"),
            (Code::Unauthenticated, "UNAUTHENTICATED"),
            (Code::PermissionDenied, "FORBIDDEN"),
            (Code::NotFound, "ORDER_NOT_FOUND"),
        ] {
            assert_eq!(for_status(code, Some(reason)), Exit::Refused, "{reason}");
        }
        assert_eq!(for_status(Code::AlreadyExists, None), Exit::Refused);
    }

    #[test]
    fn failures_exit_4() {
        assert_eq!(
            for_status(Code::Unavailable, Some("STORE_UNAVAILABLE")),
            Exit::Failed
        );
        // A replica that is down answers UNAVAILABLE without any ErrorInfo.
        assert_eq!(for_status(Code::Unavailable, None), Exit::Failed);
        for code in [
            Code::Internal,
            Code::DeadlineExceeded,
            Code::Unknown,
            Code::Cancelled,
            Code::Unimplemented,
            Code::DataLoss,
            Code::OutOfRange,
        ] {
            assert_eq!(for_status(code, None), Exit::Failed, "{code:?}");
        }
    }

    #[test]
    fn the_reason_is_read_from_the_status_details() {
        let mut details = ErrorDetails::new();
        details.set_error_info("PAYMENTS_PAUSED", "payments.v1", HashMap::new());
        let paused = Status::with_error_details(Code::Unavailable, "paused", details);
        assert_eq!(Failure::Status(paused).exit(), Exit::Refused);
        let down = Status::unavailable("connection refused");
        assert_eq!(Failure::Status(down).exit(), Exit::Failed);
    }

    #[test]
    fn local_errors() {
        assert_eq!(Failure::Usage("bad".into()).exit(), Exit::Usage);
        assert_eq!(
            Failure::Unreachable(anyhow::anyhow!("refused")).exit(),
            Exit::Failed
        );
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert_eq!(Failure::Output(pipe).exit(), Exit::Success);
        assert_eq!(
            [
                Exit::Success,
                Exit::Usage,
                Exit::Refused,
                Exit::Failed,
                Exit::NotPaid
            ]
            .map(Exit::code),
            [0, 2, 3, 4, 5]
        );
    }
}
