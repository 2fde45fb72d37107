//! `PausePayments`, `ResumePayments`, `GetPaymentsStatus`: whether new payments are accepted.
//!
//! Roles are enforced by the auth layer (pause and resume: admin only; the status: every role).
//! The state lives in PostgreSQL and is shared by every replica (`control.rs`): pause and resume
//! change it and answer with the row they wrote; `GetPaymentsStatus` answers with what the
//! replica it reached enforces (its cached copy, one notification behind PostgreSQL).
//! `ResumePayments` lifts the admin pause only: an open circuit breaker closes on its own once a
//! probe payment succeeds, or by hand with `reset_breaker`.

use payments_proto::v1 as pb;
use tonic::{Request, Response};

use super::{Coordinator, payments::caller};
use crate::domain::Violations;
use crate::domain::breaker::{BreakerState, Cause, Control};
use crate::domain::operations::free_text;
use crate::error::Error;

impl Coordinator {
    #[tracing::instrument(name = "PausePayments", skip_all, fields(by, replica = %self.replica))]
    pub(super) async fn pause_payments_impl(
        &self,
        request: Request<pb::PausePaymentsRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Error> {
        let caller = caller(&request)?;
        tracing::Span::current().record("by", caller.id.as_str());
        let reason = parse_reason(&request.get_ref().reason)?;
        let control = self.runner.gate.pause(&caller.id, &reason).await?;
        Ok(Response::new(status(&control)))
    }

    #[tracing::instrument(name = "ResumePayments", skip_all, fields(by, replica = %self.replica))]
    pub(super) async fn resume_payments_impl(
        &self,
        request: Request<pb::ResumePaymentsRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Error> {
        let caller = caller(&request)?;
        tracing::Span::current().record("by", caller.id.as_str());
        let reset_breaker = request.get_ref().reset_breaker;
        let control = self.runner.gate.resume(&caller.id, reset_breaker).await?;
        Ok(Response::new(status(&control)))
    }

    pub(super) async fn get_payments_status_impl(
        &self,
        _request: Request<pb::GetPaymentsStatusRequest>,
    ) -> Result<Response<pb::PaymentsStatus>, Error> {
        let control = self.runner.gate.status()?;
        Ok(Response::new(status(&control)))
    }
}

/// A pause reason: screened like every operator's free text (`operations::free_text`: trimmed,
/// 1–500 characters, never something that looks like a card number), and on one line: it goes
/// into logs and into every refusal.
fn parse_reason(reason: &str) -> Result<String, Violations> {
    let trimmed = reason.trim();
    let problem = if trimmed.is_empty() {
        Some("is required: say why payments are paused".to_owned())
    } else if trimmed.chars().any(char::is_control) {
        Some("must not contain control characters (line breaks, tabs…)".to_owned())
    } else {
        free_text(trimmed, true).err()
    };
    match problem {
        Some(description) => Err(Violations::single("reason", description)),
        None => Ok(trimmed.to_owned()),
    }
}

/// The shared state as callers see it.
fn status(control: &Control) -> pb::PaymentsStatus {
    let paused = control.paused();
    pb::PaymentsStatus {
        paused: paused.is_some(),
        reason: paused
            .as_ref()
            .map(|p| p.reason.clone())
            .unwrap_or_default(),
        since: paused
            .as_ref()
            .map(|p| prost_types::Timestamp::from(p.since)),
        by: paused.as_ref().map(|p| p.by.clone()).unwrap_or_default(),
        cause: match paused.as_ref().map(|p| p.cause) {
            None => pb::PauseCause::Unspecified,
            Some(Cause::Admin) => pb::PauseCause::Admin,
            Some(Cause::CircuitBreaker) => pb::PauseCause::CircuitBreaker,
        }
        .into(),
        breaker: match control.breaker.state() {
            BreakerState::Closed => pb::BreakerState::Closed,
            BreakerState::Open => pb::BreakerState::Open,
            BreakerState::HalfOpen => pb::BreakerState::HalfOpen,
        }
        .into(),
        breaker_probe_at: control.breaker.probe_at().map(prost_types::Timestamp::from),
        admin_paused: control.admin.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::domain::breaker::{AdminPause, Breaker};

    #[test]
    fn reasons_are_validated() {
        assert_eq!(
            parse_reason("  gateway incident  ").as_deref(),
            Ok("gateway incident")
        );
        for bad in ["", "   ", "two\nlines"] {
            let v = parse_reason(bad).expect_err(bad);
            assert_eq!(v.fields(), ["reason"]);
        }
        assert!(parse_reason(&"é".repeat(500)).is_ok());
        assert!(parse_reason(&"é".repeat(501)).is_err());
    }

    #[test]
    fn a_reason_with_a_card_number_is_refused_and_not_echoed() {
        for bad in [
            "card 4242 4242 4242 4242 keeps failing",
            "4242-4242-4242-4242",
            "4242424242424242",
        ] {
            let v = parse_reason(bad).expect_err(bad);
            assert_eq!(v.fields(), ["reason"]);
            let status = tonic::Status::from(Error::from(v));
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(
                !format!("{status:?}").contains("4242"),
                "the card number is not echoed: {status:?}"
            );
        }
        // Digits that are not a card number (Luhn) are fine. (Not "4242 4242 4242 4241": its
        // first three groups, 424242424242, are a 12-digit number passing Luhn, and free text is
        // screened for a card number in any consecutive groups, `ref 12 4242 4242 4242 4242`.)
        assert!(parse_reason("incident 1234 5678 9012 3457 at the gateway").is_ok());
        assert!(parse_reason("ticket INC-2024-000123").is_ok());
    }

    #[test]
    fn the_status_says_why() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let closed = status(&Control::default());
        assert!(!closed.paused);
        assert_eq!(closed.cause(), pb::PauseCause::Unspecified);
        assert_eq!(closed.breaker(), pb::BreakerState::Closed);
        assert_eq!(closed.since, None);

        let open = Control {
            admin: None,
            breaker: Breaker::Open {
                reason: "gateway circuit breaker open: …".into(),
                since: at,
                probe_at: at + Duration::from_secs(30),
            },
            version: 3,
        };
        let s = status(&open);
        assert!(s.paused && !s.admin_paused);
        assert_eq!(s.cause(), pb::PauseCause::CircuitBreaker);
        assert_eq!(s.by, "circuit-breaker");
        assert_eq!(s.breaker(), pb::BreakerState::Open);
        assert_eq!(
            s.breaker_probe_at,
            Some(prost_types::Timestamp::from(at + Duration::from_secs(30)))
        );

        let both = Control {
            admin: Some(AdminPause {
                reason: "maintenance".into(),
                by: "admin-1".into(),
                since: at,
            }),
            ..open
        };
        let s = status(&both);
        assert!(s.paused && s.admin_paused);
        assert_eq!(s.cause(), pb::PauseCause::Admin);
        assert_eq!(
            (s.reason.as_str(), s.by.as_str()),
            ("maintenance", "admin-1")
        );
        assert_eq!(s.breaker(), pb::BreakerState::Open);
    }
}
