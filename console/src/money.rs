//! Amounts typed in major units (`12.50` EUR) into integer minor units (1250) and back, with
//! exact integer arithmetic and the currency's ISO 4217 exponent: never floats. A form's amount
//! is always major units (`12` is 12.00), where payctl reads a bare integer as minor units.

// One table of currency exponents and one display format, payctl's: the console and the CLI
// never disagree on what 1250 JPY or 1.234 KWD is.
pub use payctl::money::{exponent, format};

/// `12.50`, `12.5` or `12` (major units) into minor units of `currency`; the message says what
/// is wrong in words. The coordinator checks the range; this refuses what is not an amount.
pub fn parse_major(text: &str, currency: &str) -> Result<i64, String> {
    let text = text.trim();
    let bad = || format!("\u{201c}{text}\u{201d} is not an amount: write it like 12.50");
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !digits_only(whole) || (text.contains('.') && !digits_only(fraction)) {
        return Err(bad());
    }
    let exp = exponent(currency);
    let places = u32::try_from(fraction.len()).unwrap_or(u32::MAX);
    if places > exp {
        return Err(format!(
            "{} has {exp} decimal place{}: \u{201c}{text}\u{201d} is more precise than that",
            currency.to_ascii_uppercase(),
            if exp == 1 { "" } else { "s" }
        ));
    }
    let too_large = || format!("\u{201c}{text}\u{201d} is too large");
    let whole: i64 = whole.parse().map_err(|_| too_large())?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| too_large())?
    };
    whole
        .checked_mul(10_i64.pow(exp))
        .and_then(|w| w.checked_add(fraction * 10_i64.pow(exp - places)))
        .ok_or_else(too_large)
}

/// Minor units as major units without the currency: `1250, "EUR"` → `12.50`.
pub fn major(amount_minor: i64, currency: &str) -> String {
    let exp = exponent(currency);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    if exp == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10_u64.pow(exp);
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = exp as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_units_follow_the_exponent() {
        assert_eq!(parse_major("12.50", "EUR"), Ok(1250));
        assert_eq!(parse_major("12.5", "eur"), Ok(1250));
        assert_eq!(parse_major(" 12 ", "EUR"), Ok(1200));
        assert_eq!(parse_major("0.01", "USD"), Ok(1));
        assert_eq!(parse_major("1250", "JPY"), Ok(1250));
        assert_eq!(parse_major("1.234", "KWD"), Ok(1234));
        assert!(parse_major("12.345", "EUR").is_err());
        assert!(parse_major("12.0", "JPY").is_err());
    }

    #[test]
    fn garbage_is_refused_in_words() {
        for text in [
            "", "-5", "1e3", "12,50", "1.2.3", ".5", "12.", "+3", "0x10", "12.-5", "€12",
        ] {
            let error = parse_major(text, "EUR").expect_err(text);
            assert!(error.contains("not an amount"), "{text}: {error}");
        }
        assert!(parse_major("99999999999999999999", "EUR").is_err());
        assert!(parse_major("92233720368547758.08", "EUR").is_err());
        assert_eq!(parse_major("92233720368547758.07", "EUR"), Ok(i64::MAX));
    }

    #[test]
    fn formatting_is_exact_and_round_trips() {
        assert_eq!(format(1250, "EUR"), "12.50 EUR");
        assert_eq!(format(5, "EUR"), "0.05 EUR");
        assert_eq!(format(1250, "JPY"), "1250 JPY");
        assert_eq!(format(1234, "KWD"), "1.234 KWD");
        assert_eq!(major(-250, "USD"), "-2.50");
        for minor in [1, 99, 100, 4200, 99_999_999] {
            assert_eq!(parse_major(&major(minor, "EUR"), "EUR"), Ok(minor));
        }
    }
}
