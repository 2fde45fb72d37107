//! Money: an amount in minor units of an ISO 4217 currency.

use std::fmt;

/// The largest amount one payment may carry, in minor units (CONTRACT §3).
pub const MAX_AMOUNT_MINOR: i64 = 99_999_999;

/// ISO 4217 list one, alphabetic codes of the currencies and funds in use (2025), sorted.
///
/// Left out on purpose, though ISO lists them: the codes that are not money one can be charged in
/// (`XXX` "no currency", `XTS` testing, the precious metals `XAU XAG XPD XPT`, the bond-market units
/// `XBA XBB XBC XBD`, and the accounting units `XDR XSU XUA`), and withdrawn codes (`HRK`, `ZWL`…).
/// `ANG`, `CUC` and `SLL` are kept while their replacements (`XCG`, -, `SLE`) settle in.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS",
    "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW",
    "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD",
    "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN",
    "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
    "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL",
    "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY",
    "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES",
    "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// An ISO 4217 currency code, upper-case (`USD`, `EUR`, `JPY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency(&'static str);

impl Currency {
    /// Accepts an upper-case ISO 4217 code in use; a lower-case spelling is refused with a hint.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("is required (an upper-case ISO 4217 code such as USD)".to_owned());
        }
        if let Ok(i) = ISO_4217.binary_search(&value) {
            return Ok(Self(ISO_4217[i]));
        }
        let upper = value.to_ascii_uppercase();
        if upper != value && ISO_4217.binary_search(&upper.as_str()).is_ok() {
            return Err(format!(
                "must be an upper-case ISO 4217 code: write {upper:?}, not {value:?}"
            ));
        }
        if value.chars().count() <= 8 && value.chars().all(|c| c.is_ascii_alphabetic()) {
            Err(format!(
                "{value:?} is not an ISO 4217 currency code one can pay in"
            ))
        } else {
            Err(
                "is not an ISO 4217 currency code (three upper-case letters such as USD)"
                    .to_owned(),
            )
        }
    }

    /// The upper-case code.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A positive amount of at most [`MAX_AMOUNT_MINOR`] minor units of a currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, String> {
        check_amount_minor(amount_minor)?;
        Ok(Self {
            amount_minor,
            currency,
        })
    }

    pub fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (minor units)", self.amount_minor, self.currency)
    }
}

/// `amount_minor` > 0 and ≤ [`MAX_AMOUNT_MINOR`].
pub fn check_amount_minor(amount_minor: i64) -> Result<(), String> {
    if amount_minor <= 0 {
        return Err(format!(
            "must be greater than 0 (minor units); got {}",
            shown_amount(amount_minor)
        ));
    }
    if amount_minor > MAX_AMOUNT_MINOR {
        return Err(format!(
            "must be at most {MAX_AMOUNT_MINOR} minor units; got {}",
            shown_amount(amount_minor)
        ));
    }
    Ok(())
}

/// A refused amount as a refusal may repeat it: a number of 12 digits or more could be a card
/// number typed into the wrong field, and is never repeated (found by the property tests).
pub(crate) fn shown_amount(amount: i64) -> String {
    let digits = amount.unsigned_abs().to_string().len();
    if digits < 12 {
        amount.to_string()
    } else {
        format!("a number of {digits} digits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_list_is_sorted_unique_and_upper_case() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
        assert!(
            ISO_4217
                .iter()
                .all(|c| c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()))
        );
        assert!(ISO_4217.len() > 150, "{}", ISO_4217.len());
    }

    #[test]
    fn currencies_in_use_are_accepted() {
        for code in [
            "USD", "EUR", "JPY", "GBP", "CHF", "XOF", "ZWG", "VES", "KWD",
        ] {
            assert_eq!(Currency::parse(code).unwrap().as_str(), code);
        }
        assert_eq!(Currency::parse("EUR").unwrap().to_string(), "EUR");
    }

    #[test]
    fn lower_case_is_refused_with_a_hint() {
        let err = Currency::parse("usd").unwrap_err();
        assert!(
            err.contains("upper-case") && err.contains("\"USD\""),
            "{err}"
        );
        assert!(Currency::parse("Eur").unwrap_err().contains("\"EUR\""));
    }

    #[test]
    fn non_codes_are_refused() {
        for bad in [
            "", "XXX", "XTS", "XAU", "ABC", "US", "USDD", "US D", "123", "€", "HRK", "xxx",
        ] {
            assert!(Currency::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn amounts_are_positive_and_bounded() {
        let usd = Currency::parse("USD").unwrap();
        assert!(Money::new(0, usd).is_err());
        assert!(Money::new(-1, usd).is_err());
        assert!(Money::new(i64::MIN, usd).is_err());
        assert_eq!(Money::new(1, usd).unwrap().amount_minor(), 1);
        assert!(Money::new(99_999_999, usd).is_ok());
        assert!(Money::new(100_000_000, usd).is_err());
        assert!(Money::new(i64::MAX, usd).is_err());
        assert_eq!(Money::new(5, usd).unwrap().currency(), usd);
    }

    #[test]
    fn a_refusal_never_repeats_what_could_be_a_card_number() {
        assert!(
            check_amount_minor(100_000_000)
                .unwrap_err()
                .ends_with("got 100000000")
        );
        assert!(check_amount_minor(-5).unwrap_err().ends_with("got -5"));
        for card in [
            4_242_424_242_424_242,
            -4_242_424_242_424_242,
            424_242_424_242,
        ] {
            let err = check_amount_minor(card).unwrap_err();
            assert!(!err.contains("4242"), "{err}");
        }
    }
}
