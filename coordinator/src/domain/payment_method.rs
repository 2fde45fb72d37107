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
    /// Accepts 1–255 characters without control characters that are not a card number (12–19
    /// digits passing the Luhn check, groups joined by any white space, dash or invisible
    /// separator) and, when other characters are present, do not carry one inside.
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
        // Digits and separators alone are judged whole (CONTRACT §3: 12–19 digits passing Luhn);
        // other text must not carry one inside (`card 4242 4242 4242 4242 12/27`).
        let mixed = value
            .chars()
            .any(|c| card_digit(c).is_none() && !is_separator(c));
        if looks_like_card_number(&value) || (mixed && contains_card_number(&value)) {
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

/// 12–19 digits, once separators are removed, that pass the Luhn check.
///
/// A card number pasted or typed in any shape is still one: digits are ASCII or full-width
/// (`０`–`９`, from East Asian keyboards), and separators are any Unicode white space (a tab, a
/// no-break space), any dash (`-`, `‐`, `–`, `—`, `−`, `﹘`, `－`…) and the invisible format
/// characters (soft hyphen, zero-width space and joiners, direction marks, word joiner, byte
/// order mark). Stricter than the contract's "spaces or dashes", never looser.
pub(crate) fn looks_like_card_number(value: &str) -> bool {
    let mut digits = Vec::with_capacity(19);
    for c in value.chars() {
        if let Some(d) = card_digit(c) {
            if digits.len() == 19 {
                return false;
            }
            digits.push(d);
        } else if !is_separator(c) {
            return false;
        }
    }
    digits.len() >= 12 && luhn_valid(&digits)
}

/// Somewhere in `text` (free text: a refund's reason, a reviewer's note), a card number: groups
/// of digits split only by separators (see [`looks_like_card_number`]) of which consecutive ones
/// make 12–19 digits passing Luhn. `ref 12 4242 4242 4242 4242` holds one after `12`; digits
/// glued to other digits make another number.
pub(crate) fn contains_card_number(text: &str) -> bool {
    // The current run of digits and separators: its digits, and where each group begins.
    let mut digits: Vec<u8> = Vec::new();
    let mut groups: Vec<usize> = Vec::new();
    let mut in_group = false;
    for c in text.chars().chain(std::iter::once('x')) {
        if let Some(d) = card_digit(c) {
            if !in_group {
                groups.push(digits.len());
                in_group = true;
            }
            digits.push(d);
        } else if is_separator(c) {
            in_group = false;
        } else {
            if run_holds_card_number(&digits, &groups) {
                return true;
            }
            digits.clear();
            groups.clear();
            in_group = false;
        }
    }
    false
}

/// Whether consecutive groups of one run (`groups`: where each begins in `digits`) make 12–19
/// digits passing Luhn.
fn run_holds_card_number(digits: &[u8], groups: &[usize]) -> bool {
    groups.iter().enumerate().any(|(i, &from)| {
        groups[i + 1..]
            .iter()
            .copied()
            .chain(std::iter::once(digits.len()))
            .take_while(|&to| to - from <= 19)
            .any(|to| to - from >= 12 && luhn_valid(&digits[from..to]))
    })
}

/// A decimal digit's value: ASCII, or full-width.
fn card_digit(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '\u{ff10}'..='\u{ff19}' => Some((u32::from(c) - 0xff10) as u8),
        _ => None,
    }
}

/// What may stand between a card number's digits.
fn is_separator(c: char) -> bool {
    c.is_whitespace() || is_dash(c) || is_invisible(c)
}

/// Unicode's dash punctuation (Pd), and the minus sign.
fn is_dash(c: char) -> bool {
    const DASHES: &[char] = &[
        '-',
        '\u{058a}',
        '\u{05be}',
        '\u{1400}',
        '\u{1806}',
        '\u{2e17}',
        '\u{2e1a}',
        '\u{2e3a}',
        '\u{2e3b}',
        '\u{2e40}',
        '\u{2e5d}',
        '\u{301c}',
        '\u{3030}',
        '\u{30a0}',
        '\u{fe31}',
        '\u{fe32}',
        '\u{fe58}',
        '\u{fe63}',
        '\u{ff0d}',
        '\u{10ead}',
        '\u{2212}',
    ];
    ('\u{2010}'..='\u{2015}').contains(&c) || DASHES.contains(&c)
}

/// Format characters that show nothing: soft hyphen, Mongolian vowel separator, zero-width space,
/// non-joiner and joiner, direction marks, embeddings and isolates, word joiner and invisible
/// operators, byte order mark.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{ad}' | '\u{180e}' | '\u{feff}')
        || ('\u{200b}'..='\u{200f}').contains(&c)
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2060}'..='\u{2064}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
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
            "4242.4242.4242.4242",  // dots are not spaces or dashes
            "pm_1234567890",
        ] {
            assert!(PaymentMethod::parse(ok).is_ok(), "{ok:?} refused");
        }
        // A card number inside other text is refused, and not quoted.
        for hidden in [
            "4242424242424242a",
            "pm_4242424242424242",
            "card 4242 4242 4242 4242 12/27",
        ] {
            let refused = PaymentMethod::parse(hidden).expect_err(hidden);
            assert!(!refused.contains("4242"), "{refused}");
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
            "4242\u{fe58}4242\u{fe58}4242\u{fe58}4242", // small em dash
            "4242\u{200b}4242\u{200b}4242\u{200b}4242", // zero-width space
            "4242\u{ad}4242\u{ad}4242\u{ad}4242",       // soft hyphen
            "４２４２ ４２４２ ４２４２ ４２４２",      // full-width digits
        ] {
            assert!(
                PaymentMethod::parse(card)
                    .unwrap_err()
                    .contains("card number")
            );
        }
    }

    #[test]
    fn card_numbers_inside_text() {
        for text in [
            "card 4242 4242 4242 4242",
            "ref 12 4242 4242 4242 4242",
            "4242-4242-4242-4242 12",
            "paid with 4242‐4242‐4242‐4242 (hyphens)",
            "ticket 7, card ４２４２４２４２４２４２４２４２.",
            "12 4242424242424242 7",
            "pm_4242424242424242a",
        ] {
            assert!(contains_card_number(text), "{text:?}");
        }
        for text in [
            "order 42, 4242424242424241", // fails Luhn
            "12424242424242424242",       // 20 digits: another number
            "no digits at all",
            "2024-05-17 14:30",
        ] {
            assert!(!contains_card_number(text), "{text:?}");
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
