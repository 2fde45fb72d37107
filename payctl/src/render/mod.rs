//! Everything payctl prints: human-readable views ([`table`]), JSON documents ([`json`]), the
//! reviews' CSV ([`csv`]) and error reports ([`error`]). Times are RFC 3339 in UTC, money is
//! minor units formatted by the currency's exponent.

pub mod csv;
pub mod error;
pub mod json;
pub mod table;

use std::io::Write;

use payments_proto::v1 as pb;
use prost_types::Timestamp;
use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description};

use crate::{exit::Failure, money};

/// Writes `text` and a newline to stdout, flushed (a follower's lines appear as they come).
pub fn out(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// Writes a JSON document on one line to stdout.
pub fn out_json(value: &serde_json::Value) -> Result<(), Failure> {
    out(&value.to_string())
}

fn datetime(at: &Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// For people: `2025-01-31T09:30:00.250Z` (milliseconds, UTC), `-` when unset.
pub fn time(at: Option<&Timestamp>) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    at.and_then(datetime)
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// For scripts: full RFC 3339 (`2025-01-31T09:30:00.250123Z`), `None` when unset.
pub fn time_rfc3339(at: Option<&Timestamp>) -> Option<String> {
    at.and_then(datetime).and_then(|t| t.format(&Rfc3339).ok())
}

/// `12.50 EUR`, `-` when unset.
pub fn amount(money: Option<&pb::Money>) -> String {
    money.map_or_else(
        || "-".to_owned(),
        |m| money::format(m.amount_minor, &m.currency),
    )
}

/// An enum value's proto name without its type prefix: `ORDER_STATE_PAID` → `PAID`.
fn short(name: &'static str, prefix: &str) -> &'static str {
    name.strip_prefix(prefix).unwrap_or(name)
}

pub fn state(s: pb::OrderState) -> &'static str {
    short(s.as_str_name(), "ORDER_STATE_")
}

pub fn outcome(o: pb::AttemptOutcome) -> &'static str {
    short(o.as_str_name(), "ATTEMPT_OUTCOME_")
}

pub fn kind(k: pb::EventKind) -> &'static str {
    short(k.as_str_name(), "EVENT_KIND_")
}

pub fn resolution(r: pb::Resolution) -> &'static str {
    short(r.as_str_name(), "RESOLUTION_")
}

pub fn refund_outcome(o: pb::RefundOutcome) -> &'static str {
    short(o.as_str_name(), "REFUND_OUTCOME_")
}

pub fn cause(c: pb::PauseCause) -> &'static str {
    short(c.as_str_name(), "PAUSE_CAUSE_")
}

pub fn breaker(b: pb::BreakerState) -> &'static str {
    short(b.as_str_name(), "BREAKER_STATE_")
}

/// The refund a review item is about (`refund_number` above 0), found in its order by number.
pub fn review_refund(item: &pb::ManualReviewItem) -> Option<&pb::Refund> {
    if item.refund_number <= 0 {
        return None;
    }
    item.order
        .as_ref()?
        .refunds
        .iter()
        .find(|r| r.number == item.refund_number)
}

/// What a review item is about: `payment` (an attempt in doubt) or `refund` (a refund in doubt).
pub fn review_kind(item: &pb::ManualReviewItem) -> &'static str {
    if item.refund_number > 0 {
        "refund"
    } else {
        "payment"
    }
}

/// The amount in doubt of a review item: the refund's for a refund, else the order's.
pub fn review_amount(item: &pb::ManualReviewItem) -> Option<&pb::Money> {
    if item.refund_number > 0 {
        review_refund(item).and_then(|r| r.amount.as_ref())
    } else {
        item.order.as_ref().and_then(|o| o.amount.as_ref())
    }
}

/// `text` cut to `max` characters (an ellipsis marks the cut), on one line.
pub fn truncate(text: &str, max: usize) -> String {
    let one_line = one_line(text);
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Newlines folded to ` | ` so that one record stays on one line.
pub fn one_line(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `product:qty:unit_minor` for each item, joined with `;` (the `--item` syntax).
pub fn items(items: &[pb::LineItem]) -> String {
    items
        .iter()
        .map(|i| format!("{}:{}:{}", i.product_id, i.quantity, i.unit_amount_minor))
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = Timestamp {
            seconds: 1_700_000_000,
            nanos: 250_000_000,
        };
        assert_eq!(time(Some(&at)), "2023-11-14T22:13:20.250Z");
        assert_eq!(
            time_rfc3339(Some(&at)).as_deref(),
            Some("2023-11-14T22:13:20.25Z")
        );
        assert_eq!(time(None), "-");
        assert_eq!(time_rfc3339(None), None);
    }

    #[test]
    fn enum_names_lose_their_prefix() {
        assert_eq!(
            state(pb::OrderState::AwaitingConfirmation),
            "AWAITING_CONFIRMATION"
        );
        assert_eq!(outcome(pb::AttemptOutcome::Succeeded), "SUCCEEDED");
        assert_eq!(
            kind(pb::EventKind::ManualReviewOpened),
            "MANUAL_REVIEW_OPENED"
        );
        assert_eq!(breaker(pb::BreakerState::HalfOpen), "HALF_OPEN");
    }

    #[test]
    fn truncation_keeps_one_line() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a\n  b\n", 10), "a | b");
        assert_eq!(truncate("abcdefghijkl", 5), "abcd…");
        assert_eq!(truncate("ééééé", 5), "ééééé");
    }

    #[test]
    fn items_use_the_flag_syntax() {
        let list = [
            pb::LineItem {
                product_id: "sku-9".into(),
                quantity: 2,
                unit_amount_minor: 625,
            },
            pb::LineItem {
                product_id: "sku-1".into(),
                quantity: 1,
                unit_amount_minor: 0,
            },
        ];
        assert_eq!(items(&list), "sku-9:2:625;sku-1:1:0");
    }
}
