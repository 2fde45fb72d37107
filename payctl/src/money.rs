//! Amounts as integer minor units of an ISO 4217 currency, parsed and formatted with exact
//! integer arithmetic (never floats): `1250` or `12.50` EUR is 1250 minor units, shown as
//! `12.50 EUR`.

/// Digits after the decimal point of a currency (ISO 4217 "minor unit"); 2 unless listed.
pub fn exponent(currency: &str) -> u32 {
    match currency.to_ascii_uppercase().as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// `1250` (minor units) or `12.50` (major units with a point, at most the currency's exponent
/// of decimals) into minor units. The coordinator checks the range; this only refuses what is
/// not an exact amount.
pub fn parse_amount(text: &str, currency: &str) -> Result<i64, String> {
    let text = text.trim();
    let bad = || format!("`{text}` is not an amount: use minor units (1250) or a decimal (12.50)");
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((whole, fraction)) = text.split_once('.') else {
        if !all_digits(text) {
            return Err(bad());
        }
        return text.parse().map_err(|_| format!("`{text}` is too large"));
    };
    let exp = exponent(currency);
    if !all_digits(whole) || !all_digits(fraction) {
        return Err(bad());
    }
    let digits = u32::try_from(fraction.len()).unwrap_or(u32::MAX);
    if digits > exp {
        return Err(format!(
            "{} has {exp} decimal{}: `{text}` is more precise than that",
            currency.to_ascii_uppercase(),
            if exp == 1 { "" } else { "s" }
        ));
    }
    let too_large = || format!("`{text}` is too large");
    let whole: i64 = whole.parse().map_err(|_| too_large())?;
    let fraction: i64 = fraction.parse().map_err(|_| too_large())?;
    whole
        .checked_mul(10_i64.pow(exp))
        .and_then(|w| w.checked_add(fraction * 10_i64.pow(exp - digits)))
        .ok_or_else(too_large)
}

/// `1250, "EUR"` → `12.50 EUR`; `1250, "JPY"` → `1250 JPY`.
pub fn format(amount_minor: i64, currency: &str) -> String {
    let exp = exponent(currency);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    if exp == 0 {
        return format!("{sign}{abs} {currency}");
    }
    let scale = 10_u64.pow(exp);
    let width = exp as usize;
    format!(
        "{sign}{}.{:0width$} {currency}",
        abs / scale,
        abs % scale,
        width = width
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_pass_through() {
        assert_eq!(parse_amount("1250", "EUR"), Ok(1250));
        assert_eq!(parse_amount(" 7 ", "JPY"), Ok(7));
    }

    #[test]
    fn decimals_follow_the_currency_exponent() {
        assert_eq!(parse_amount("12.50", "EUR"), Ok(1250));
        assert_eq!(parse_amount("12.5", "eur"), Ok(1250));
        assert_eq!(parse_amount("0.01", "USD"), Ok(1));
        assert_eq!(parse_amount("1.234", "KWD"), Ok(1234));
        assert_eq!(parse_amount("1.2", "BHD"), Ok(1200));
        assert!(parse_amount("12.", "EUR").is_err());
        assert!(parse_amount("12.345", "EUR").is_err());
        assert!(parse_amount("12.0", "JPY").is_err());
    }

    #[test]
    fn garbage_is_refused() {
        for text in [
            "", "-5", "1e3", "12,50", "1.2.3", ".5", "12.-5", "+3", "0x10",
        ] {
            assert!(parse_amount(text, "EUR").is_err(), "{text}");
        }
        assert!(parse_amount("99999999999999999999", "EUR").is_err());
        assert!(parse_amount("92233720368547758.08", "EUR").is_err());
        assert_eq!(parse_amount("92233720368547758.07", "EUR"), Ok(i64::MAX));
    }

    #[test]
    fn formatting_is_exact() {
        assert_eq!(format(1250, "EUR"), "12.50 EUR");
        assert_eq!(format(5, "EUR"), "0.05 EUR");
        assert_eq!(format(0, "EUR"), "0.00 EUR");
        assert_eq!(format(1250, "JPY"), "1250 JPY");
        assert_eq!(format(1234, "KWD"), "1.234 KWD");
        assert_eq!(format(-250, "USD"), "-2.50 USD");
        assert_eq!(format(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
        assert_eq!(format(99_999_999, "EUR"), "999999.99 EUR");
    }
}
