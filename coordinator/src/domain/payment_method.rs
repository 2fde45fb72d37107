//! The gateway payment method token (`pm_card_visa`), never a card number.

use std::fmt;

/// Longest payment method token, in characters.
pub const MAX_PAYMENT_METHOD_CHARS: usize = 255;

/// A gateway payment method token such as `pm_card_visa`.
///
/// Tokens are not secret, so `Debug` and `Display` print them; a card number can never become a
/// `PaymentMethod` (see [`PaymentMethod::parse`]), so it can never be printed through one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PaymentMethod(String);

impl PaymentMethod {
    /// Accepts 1–255 characters without control characters that are not a card number: a string
    /// that, once spaces and dashes are removed, is 12–19 ASCII digits passing the Luhn check.
    ///
    /// The error never quotes the value: it may be a card number, which must not reach logs or
    /// error messages.
    pub fn parse(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        if value.is_empty() {
            return Err(
                "is required (a gateway payment method token such as pm_card_visa)".to_owned(),
            );
        }
        if looks_like_card_number(&value) {
            return Err(
                "looks like a card number; send the gateway's payment method token (such as \
                 pm_card_visa) instead, never card details"
                    .to_owned(),
            );
        }
        if value.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        let chars = value.chars().count();
        if chars > MAX_PAYMENT_METHOD_CHARS {
            return Err(format!(
                "is {chars} characters long; at most {MAX_PAYMENT_METHOD_CHARS} are allowed"
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PaymentMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PaymentMethod {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// 12–19 ASCII digits, once spaces and dashes are removed, that pass the Luhn check.
///
/// Any Unicode white space (a tab, a no-break space) and any dash (`-`, `‐`, `–`, `—`, `−`) counts
/// as a separator: stricter than the contract's "spaces or dashes", never looser.
pub(crate) fn looks_like_card_number(value: &str) -> bool {
    let mut digits = Vec::with_capacity(19);
    for c in value.chars() {
        match c {
            c if c.is_whitespace() || is_dash(c) => {}
            '0'..='9' => {
                if digits.len() == 19 {
                    return false;
                }
                digits.push(c as u8 - b'0');
            }
            _ => return false,
        }
    }
    digits.len() >= 12 && luhn_valid(&digits)
}

fn is_dash(c: char) -> bool {
    matches!(
        c,
        '-' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{fe63}' | '\u{ff0d}'
    )
}

/// The Luhn (mod 10) check over decimal digits, rightmost being the check digit.
fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_accepted() {
        for token in [
            "pm_card_visa",
            "pm_card_chargeDeclined",
            "pm_card_chargeDeclinedInsufficientFunds",
            "x",
        ] {
            assert_eq!(PaymentMethod::parse(token).unwrap().as_str(), token);
        }
        assert!(PaymentMethod::parse("p".repeat(255)).is_ok());
        assert!(PaymentMethod::parse("é".repeat(255)).is_ok());
    }

    #[test]
    fn card_numbers_are_refused_without_being_quoted() {
        for card in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            " 4242424242424242 ",
            "5555555555554444",
            "378282246310005", // 15 digits (Amex test number)
            "6011111111111117",
            "4222222222222",       // 13 digits
            "000000000000",        // 12 digits, Luhn-valid
            "4000 0566 5566 5556", // Visa debit
        ] {
            let err = PaymentMethod::parse(card).unwrap_err();
            assert!(err.contains("card number"), "{card:?}: {err}");
            let digits: String = card.chars().filter(char::is_ascii_digit).collect();
            assert!(!err.contains(&digits), "{err}");
            assert!(!err.contains("4242"), "{err}");
            assert!(!err.contains(card.trim()), "{err}");
        }
    }

    #[test]
    fn digit_strings_that_are_not_card_numbers_are_accepted() {
        for ok in [
            "4242424242424241",     // fails Luhn
            "4242 4242 4242 4241",  // fails Luhn
            "42424242424",          // 11 digits
            "00000000000",          // 11 digits, Luhn-valid
            "00000000000000000000", // 20 digits, Luhn-valid
            "4242424242424242a",    // not only digits
            "pm_4242424242424242",
            "4242.4242.4242.4242", // dots are not spaces or dashes
        ] {
            assert!(PaymentMethod::parse(ok).is_ok(), "{ok:?} refused");
        }
    }

    #[test]
    fn empty_long_and_control_characters_are_refused() {
        assert!(PaymentMethod::parse("").is_err());
        assert!(PaymentMethod::parse("p".repeat(256)).is_err());
        assert!(PaymentMethod::parse("pm_card\nvisa").is_err());
        assert!(PaymentMethod::parse("pm\0").is_err());
        // A card number with a control character is still reported as a card number.
        for card in [
            "4242424242424242\t",
            "4242\u{a0}4242\u{a0}4242\u{a0}4242",
            "4242–4242–4242–4242",
        ] {
            assert!(
                PaymentMethod::parse(card)
                    .unwrap_err()
                    .contains("card number")
            );
        }
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid(&[0]));
        assert!(luhn_valid(&[1, 8]));
        assert!(!luhn_valid(&[1, 9]));
        assert!(luhn_valid(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
    }
}
