//! The caller's deadline, from the `grpc-timeout` header, so `wait_for_outcome` answers with
//! the current state shortly before the caller would give up rather than after.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// `grpc-timeout`: an integer of at most 8 digits and a unit (H, M, S, m, u, n).
pub fn from_metadata(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse(value)
}

fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Answer a little before the deadline: a tenth of it, at least 50 ms and at most 1 s, so the
/// answer still reaches the caller in time.
pub fn with_margin(timeout: Duration) -> Duration {
    let margin = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    timeout.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse("5X"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("123456789S"), None);
    }

    #[test]
    fn margin_leaves_time_to_answer() {
        assert_eq!(
            with_margin(Duration::from_secs(5)),
            Duration::from_millis(4500)
        );
        assert_eq!(
            with_margin(Duration::from_secs(60)),
            Duration::from_secs(59)
        );
        assert_eq!(
            with_margin(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        assert_eq!(with_margin(Duration::from_millis(10)), Duration::ZERO);
    }
}
