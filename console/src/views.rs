//! The page layout every signed-in page shares (skip link, status banner with pause/resume,
//! nav, one `<h1>`, `#error`) and small fragments: times, states, event lines.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use payments_proto::v1 as pb;
use prost_types::Timestamp;
use time::OffsetDateTime;

use crate::{errors, session::Session};

/// What the layout needs besides the page's own content.
pub struct Chrome<'a> {
    /// The payments status as the signed-in key read it (or why it could not).
    pub status: Result<pb::PaymentsStatus, tonic::Status>,
    pub session: &'a Session,
    /// The page's own path, where pause/resume come back to.
    pub back: String,
}

/// A whole page. `body_attrs` lets live pages name their stream (`data-live-url`).
pub fn page(
    title: &str,
    chrome: Option<&Chrome<'_>>,
    error: Option<&str>,
    live_url: Option<&str>,
    content: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " \u{b7} Payments console" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body data-live-url=[live_url] {
                a class="skip-link" href="#main" { "Skip to content" }
                @if let Some(chrome) = chrome {
                    header {
                        (banner(chrome))
                        nav aria-label="Main" {
                            ul {
                                li { a href="/pay" { "Pay" } }
                                li { a href="/reviews" { "Reviews" } }
                                li { a href="/feed" { "Feed" } }
                            }
                            @if let Some(id) = chrome.session.caller_id() {
                                p id="signed-in-as" {
                                    "Signed in as " strong { (id) } " (" (role_name(chrome.session.role())) ")"
                                }
                            }
                            form id="signout-form" method="post" action="/signout" {
                                (csrf(chrome.session))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    @if let Some(error) = error {
                        div id="error" role="alert" { (error) }
                    }
                    (content)
                }
            }
        }
    }
}

/// The hidden CSRF field every POST form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf_token" value=(session.csrf_token()); }
}

fn banner(chrome: &Chrome<'_>) -> Markup {
    let (accepting, text) = match &chrome.status {
        Ok(status) => (!status.paused, status_text(status)),
        Err(status) => (
            true,
            format!(
                "Whether payments are accepted is unknown: {}",
                errors::describe(status)
            ),
        ),
    };
    html! {
        section id="payments-status" data-accepting=(accepting) aria-label="Payments status"
            class=(if accepting { "accepting" } else { "paused" }) {
            p { (text) }
            // Pausing and resuming are an admin's: other roles see the status only.
            @if chrome.session.may(&[pb::CallerRole::Admin]) {
                @if accepting {
                    form id="pause-form" method="post" action="/payments/pause" {
                        (csrf(chrome.session))
                        input type="hidden" name="back" value=(chrome.back);
                        label for="pause-reason" { "Reason" }
                        input id="pause-reason" name="reason" type="text" required;
                        button type="submit" { "Pause payments" }
                    }
                } @else {
                    form id="resume-form" method="post" action="/payments/resume" {
                        (csrf(chrome.session))
                        input type="hidden" name="back" value=(chrome.back);
                        button type="submit" { "Resume payments" }
                    }
                }
            }
        }
    }
}

/// A role in words: `operator`, `reviewer`, `service`, `admin` (the keys file's names).
pub fn role_name(role: pb::CallerRole) -> &'static str {
    match role {
        pb::CallerRole::Operator => "operator",
        pb::CallerRole::Reviewer => "reviewer",
        pb::CallerRole::Service => "service",
        pb::CallerRole::Admin => "admin",
        pb::CallerRole::Unspecified => "role unknown",
    }
}

/// The banner's sentence.
pub fn status_text(status: &pb::PaymentsStatus) -> String {
    if !status.paused {
        return "Payments are accepted.".to_owned();
    }
    let since = time(status.since.as_ref());
    if status.cause() == pb::PauseCause::CircuitBreaker {
        format!(
            "Payments are paused: the gateway circuit breaker is open since {since}: {}",
            status.reason
        )
    } else {
        format!(
            "Payments are paused by {} since {since}: {}",
            status.by, status.reason
        )
    }
}

/// A timestamp as `2026-11-25 16:30:05 UTC` ("" when unset).
pub fn time(at: Option<&Timestamp>) -> String {
    let Some(at) = at else {
        return String::new();
    };
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    OffsetDateTime::from_unix_timestamp(at.seconds)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// `ORDER_STATE_PAID` → `PAID`.
pub fn state_name(state: pb::OrderState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("ORDER_STATE_").unwrap_or(name)
}

/// `EVENT_KIND_ATTEMPT_SUCCEEDED` → `ATTEMPT_SUCCEEDED`.
pub fn kind_name(kind: pb::EventKind) -> &'static str {
    let name = kind.as_str_name();
    name.strip_prefix("EVENT_KIND_").unwrap_or(name)
}

/// `ATTEMPT_OUTCOME_DECLINED` → `declined`.
pub fn outcome_name(outcome: pb::AttemptOutcome) -> String {
    let name = outcome.as_str_name();
    name.strip_prefix("ATTEMPT_OUTCOME_")
        .unwrap_or(name)
        .to_lowercase()
        .replace('_', " ")
}

/// The order state in words; `declined` is why the last attempt failed, for a payable order.
pub fn state_text(state: pb::OrderState, declined: Option<&str>) -> String {
    match state {
        pb::OrderState::AwaitingConfirmation => "Awaiting confirmation".to_owned(),
        pb::OrderState::Paid => "Paid".to_owned(),
        pb::OrderState::Pending => match declined {
            Some(reason) => format!("Declined: {reason}"),
            None => "Not paid".to_owned(),
        },
        pb::OrderState::ManualReview => "In manual review".to_owned(),
        pb::OrderState::Refunded => "Refunded".to_owned(),
        pb::OrderState::Unspecified => "Unknown".to_owned(),
    }
}

/// One event as a line: `{time} {KIND} {state} {actor} {detail}`.
pub fn event_text(event: &pb::OrderEvent) -> String {
    let mut text = format!(
        "{} {} {} {}",
        time(event.occurred_at.as_ref()),
        kind_name(event.kind()),
        state_name(event.state()),
        event.actor
    );
    if !event.detail.is_empty() {
        text.push(' ');
        text.push_str(&event.detail);
    }
    text
}

/// A relative path to come back to (never another site): else `/pay`.
pub fn safe_back(back: &str) -> String {
    let ok = back.starts_with('/')
        && !back.starts_with("//")
        && !back.contains('\\')
        && !back.chars().any(char::is_control);
    if ok {
        back.to_owned()
    } else {
        "/pay".to_owned()
    }
}

/// An empty raw fragment (for optional parts).
pub fn nothing() -> Markup {
    PreEscaped(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_is_relative_only() {
        assert_eq!(safe_back("/orders/o-1"), "/orders/o-1");
        assert_eq!(safe_back("//evil.example"), "/pay");
        assert_eq!(safe_back("https://evil.example"), "/pay");
        assert_eq!(safe_back("/\\evil"), "/pay");
        assert_eq!(safe_back(""), "/pay");
    }

    #[test]
    fn banner_sentences() {
        let accepted = pb::PaymentsStatus::default();
        assert_eq!(status_text(&accepted), "Payments are accepted.");
        let paused = pb::PaymentsStatus {
            paused: true,
            reason: "maintenance".into(),
            by: "admin-dave".into(),
            since: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            cause: pb::PauseCause::Admin.into(),
            ..Default::default()
        };
        assert_eq!(
            status_text(&paused),
            "Payments are paused by admin-dave since 1970-01-01 00:00:00 UTC: maintenance"
        );
        let breaker = pb::PaymentsStatus {
            cause: pb::PauseCause::CircuitBreaker.into(),
            ..paused
        };
        assert!(status_text(&breaker).contains("circuit breaker is open since"));
    }
}
