//! Request validation under any input: `PaymentRequest::parse`, `RefundRequest::parse`,
//! `ResolveRequest::parse` and `free_text` (refund reasons, review notes, pause reasons) never
//! panic, never accept what CONTRACT §3 refuses, never refuse what it accepts, and never quote a
//! refused card number back.
//!
//! One file, two users: the cargo-fuzz target `request_validation` (fuzz/, nightly) and
//! coordinator/tests/properties.rs (stable: property tests, and the replay of every file of
//! fuzz/corpus/request_validation), which includes it with `#[path]`. So the fuzzer and the test
//! suite run the same entry point and the same checks.
//!
//! The checks re-state the rules here, written independently of the coordinator's code, so that
//! a bug there is not copied into its own oracle: identifiers, amounts, currencies, items, keys,
//! free text, and what a card number looks like ([`is_card_number`], [`contains_card_number`]).

use coordinator::domain::operations::{RefundRequest, ResolveRequest, free_text};
use coordinator::domain::{PaymentRequest, Violations};
use payments_proto::v1 as pb;
use prost::Message;

/// What the first byte of a fuzz input selects; the rest is the message, protobuf-encoded (as it
/// arrives over gRPC), or UTF-8 text for [`Kind::Text`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Payment = 0,
    Refund = 1,
    Resolve = 2,
    /// Operators' free text (`free_text`: refund reasons, review notes, pause reasons).
    Text = 3,
}

/// The fuzz entry point: any bytes. Panics only when a check fails.
pub fn run(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(request) = pb::ProcessPaymentRequest::decode(rest) {
                check_payment(&request);
            }
        }
        1 => {
            if let Ok(request) = pb::RefundPaymentRequest::decode(rest) {
                check_refund(&request);
            }
        }
        2 => {
            if let Ok(request) = pb::ResolveManualReviewRequest::decode(rest) {
                check_resolve(&request);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check_text(text);
            }
        }
    }
}

/// A fuzz input for `run` (the seed corpus is written with it).
pub fn input(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(body.len() + 1);
    data.push(kind as u8);
    data.extend_from_slice(body);
    data
}

/// What the rules say of one field: valid, invalid, or (rarely) that they cannot tell alone
/// (a well-formed currency code that may or may not be in ISO 4217's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    Either,
}

use Verdict::{Either, Invalid, Valid};

fn verdict(ok: bool) -> Verdict {
    if ok { Valid } else { Invalid }
}

fn all(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    verdicts.into_iter().fold(Valid, |acc, v| match (acc, v) {
        (Invalid, _) | (_, Invalid) => Invalid,
        (Either, _) | (_, Either) => Either,
        _ => Valid,
    })
}

// ---------------------------------------------------------------------------------------------
// CONTRACT §3, re-stated.

/// `order_id`, `customer_id` (and the coordinator's product ids): 1–64 of `[A-Za-z0-9._:-]`.
pub fn identifier_ok(s: &str) -> bool {
    (1..=64).contains(&s.chars().count())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
}

/// `amount_minor` > 0 and ≤ 99,999,999.
pub fn amount_ok(minor: i64) -> bool {
    (1..=99_999_999).contains(&minor)
}

/// Codes certainly in ISO 4217's list of money one can pay in.
const SURELY_CURRENCIES: &[&str] = &[
    "AUD", "BHD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "INR", "JPY",
    "KWD", "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "USD", "XAF", "XOF", "ZAR",
];
/// ISO 4217 codes that are not money (no currency, testing, metals, bond and accounting units).
const NOT_MONEY: &[&str] = &[
    "XXX", "XTS", "XAU", "XAG", "XPD", "XPT", "XBA", "XBB", "XBC", "XBD", "XDR", "XSU", "XUA",
];

/// A real ISO 4217 code, upper-case. Three upper-case letters outside both short lists above:
/// the rules alone cannot tell (`ABC` is not a code, `GEL` is).
pub fn currency_verdict(code: &str) -> Verdict {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        Invalid
    } else if SURELY_CURRENCIES.contains(&code) {
        Valid
    } else if NOT_MONEY.contains(&code) {
        Invalid
    } else {
        Either
    }
}

/// `idempotency_key`: 1–255 printable characters (no control characters), at most 1 KiB.
pub fn key_ok(s: &str) -> bool {
    (1..=255).contains(&s.chars().count()) && !s.chars().any(char::is_control) && s.len() <= 1024
}

/// `payment_method`: 1–255 characters, no control characters, never a card number; with other
/// characters than digits and separators, no card number inside either.
pub fn payment_method_ok(s: &str) -> bool {
    let mixed = s
        .chars()
        .any(|c| card_digit(c).is_none() && !is_card_separator(c));
    let hides_a_card = mixed && contains_card_number(s);
    (1..=255).contains(&s.chars().count())
        && !s.chars().any(char::is_control)
        && !is_card_number(s)
        && !hides_a_card
}

/// Operators' free text, once trimmed: 1–500 characters, no control characters but line breaks,
/// and no card number anywhere in it.
pub fn free_text_ok(s: &str) -> bool {
    let s = s.trim();
    (1..=500).contains(&s.chars().count())
        && !s.chars().any(|c| c.is_control() && c != '\n')
        && !contains_card_number(s)
}

/// A gateway id given by a reviewer (`pi_…`, `re_…`): 1–255 of `[A-Za-z0-9_]`.
pub fn gateway_id_ok(s: &str) -> bool {
    (1..=255).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---------------------------------------------------------------------------------------------
// Card numbers, in any shape a person could type or paste one.

/// What may stand between a card number's digits: any white space, any dash (Unicode's dash
/// punctuation, and the minus sign), and the invisible format characters (soft hyphen, zero-width
/// space and joiners, direction marks, word joiner, byte order mark).
pub fn is_card_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            // Dash punctuation (Pd), and U+2212 MINUS SIGN.
            '-' | '\u{058a}' | '\u{05be}' | '\u{1400}' | '\u{1806}' | '\u{2010}'..='\u{2015}'
                | '\u{2e17}' | '\u{2e1a}' | '\u{2e3a}' | '\u{2e3b}' | '\u{2e40}' | '\u{2e5d}'
                | '\u{301c}' | '\u{3030}' | '\u{30a0}' | '\u{fe31}' | '\u{fe32}' | '\u{fe58}'
                | '\u{fe63}' | '\u{ff0d}' | '\u{10ead}' | '\u{2212}'
                // Invisible: soft hyphen, Mongolian vowel separator, zero-width space, ZWNJ,
                // ZWJ, LRM, RLM, bidi embeddings and isolates, word joiner and invisible
                // operators, byte order mark.
                | '\u{ad}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// A digit as a person types it: ASCII, or full-width (`０`–`９`, from East Asian keyboards).
pub fn card_digit(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '\u{ff10}'..='\u{ff19}' => Some((c as u32 - 0xff10) as u8),
        _ => None,
    }
}

/// The Luhn check, written out: from the right, double every second digit, add the digits.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0;
    for (i, &d) in digits.iter().rev().enumerate() {
        let d = u32::from(d);
        sum += if i % 2 == 1 {
            (d * 2) / 10 + (d * 2) % 10
        } else {
            d
        };
    }
    sum % 10 == 0
}

/// The whole value is a card number: 12–19 digits passing Luhn, with separators anywhere.
pub fn is_card_number(s: &str) -> bool {
    let mut digits = Vec::new();
    for c in s.chars() {
        match card_digit(c) {
            Some(d) => digits.push(d),
            None if is_card_separator(c) => {}
            None => return false,
        }
    }
    (12..=19).contains(&digits.len()) && luhn(&digits)
}

/// Somewhere in the text: consecutive groups of digits, split only by separators, that together
/// make a card number (`ref 12 4242 4242 4242 4242` holds one after `12`).
pub fn contains_card_number(s: &str) -> bool {
    // Groups of one run (digits split by separators only), each a list of digits.
    let mut groups: Vec<Vec<u8>> = Vec::new();
    let mut in_group = false;
    for c in s.chars().chain(std::iter::once('x')) {
        if let Some(d) = card_digit(c) {
            if !in_group {
                groups.push(Vec::new());
                in_group = true;
            }
            groups.last_mut().expect("a group").push(d);
        } else if is_card_separator(c) {
            in_group = false;
        } else {
            if run_holds_card(&groups) {
                return true;
            }
            groups.clear();
            in_group = false;
        }
    }
    false
}

fn run_holds_card(groups: &[Vec<u8>]) -> bool {
    (0..groups.len()).any(|start| {
        let mut digits = Vec::new();
        groups[start..].iter().any(|group| {
            digits.extend_from_slice(group);
            (12..=19).contains(&digits.len()) && luhn(&digits)
        })
    })
}

/// Every ASCII digit string a description must never show, for a value holding a card number:
/// its digits in ASCII (however it was written), and the value itself.
fn card_shapes(value: &str) -> Vec<String> {
    let digits: String = value
        .chars()
        .filter_map(card_digit)
        .map(|d| char::from(b'0' + d))
        .collect();
    let mut shapes = vec![digits, value.trim().to_owned()];
    shapes.retain(|s| s.chars().filter_map(card_digit).count() >= 12);
    shapes
}

/// A refusal never quotes a card number: not the refused value, not its digits, and no Luhn-valid
/// 12–19 digit number of any origin (a description may echo a number it was given).
pub fn assert_quotes_no_card(violations: &Violations, values: &[&str]) {
    let shown = format!("{violations} {violations:?}");
    for value in values {
        if contains_card_number(value) {
            for shape in card_shapes(value) {
                assert!(
                    !shown.contains(&shape),
                    "a refusal quotes a card number: {shown}"
                );
            }
        }
    }
    for v in violations {
        assert!(
            !contains_card_number(&v.description),
            "a description holds a card number: {v:?}"
        );
    }
}

/// The field a violation path belongs to: `amount.currency` → `amount`, `items[3].quantity` →
/// `items`.
fn top_field(path: &str) -> &str {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    &path[..end]
}

/// Refused exactly for the fields the rules find invalid (and perhaps those they cannot tell);
/// accepted exactly when none is invalid.
fn assert_verdicts(what: &str, verdicts: &[(&str, Verdict)], result: Result<(), &Violations>) {
    match result {
        Ok(()) => {
            for (field, v) in verdicts {
                assert_ne!(*v, Invalid, "{what}: accepted with an invalid {field}");
            }
        }
        Err(violations) => {
            assert!(!violations.is_empty(), "{what}: refused without a reason");
            let named: Vec<&str> = violations.iter().map(|v| top_field(&v.field)).collect();
            for (field, v) in verdicts {
                if *v == Invalid {
                    assert!(
                        named.contains(field),
                        "{what}: invalid {field} not reported: {violations}"
                    );
                }
            }
            for field in &named {
                let v = verdicts
                    .iter()
                    .find(|(f, _)| f == field)
                    .map(|(_, v)| *v)
                    .unwrap_or_else(|| panic!("{what}: unknown field {field}: {violations}"));
                assert_ne!(v, Valid, "{what}: valid {field} refused: {violations}");
            }
            for v in violations {
                assert!(
                    !v.description.trim().is_empty(),
                    "{what}: an empty description for {}",
                    v.field
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks, one per request type.

/// `ProcessPaymentRequest`: accepted exactly when every §3 rule holds, and then unchanged.
pub fn check_payment(request: &pb::ProcessPaymentRequest) {
    let amount = match &request.amount {
        None => Invalid,
        Some(m) => all([
            verdict(amount_ok(m.amount_minor)),
            currency_verdict(&m.currency),
        ]),
    };
    let items = if request.items.len() > 100 {
        Invalid
    } else {
        // The coordinator's own bounds for line items, beyond CONTRACT §3.
        all(request.items.iter().map(|item| {
            verdict(
                identifier_ok(&item.product_id)
                    && (1..=10_000).contains(&item.quantity)
                    && (0..=99_999_999).contains(&item.unit_amount_minor),
            )
        }))
    };
    let verdicts = [
        ("order_id", verdict(identifier_ok(&request.order_id))),
        ("amount", amount),
        ("customer_id", verdict(identifier_ok(&request.customer_id))),
        (
            "payment_method",
            verdict(payment_method_ok(&request.payment_method)),
        ),
        ("items", items),
        ("idempotency_key", verdict(key_ok(&request.idempotency_key))),
    ];
    match PaymentRequest::parse(request.clone()) {
        Ok(parsed) => {
            assert_verdicts("payment", &verdicts, Ok(()));
            let amount = request.amount.as_ref().expect("accepted with an amount");
            assert_eq!(parsed.order_id.as_str(), request.order_id);
            assert_eq!(parsed.amount.amount_minor(), amount.amount_minor);
            assert_eq!(parsed.amount.currency().as_str(), amount.currency);
            assert_eq!(parsed.customer_id.as_str(), request.customer_id);
            assert_eq!(parsed.payment_method.as_str(), request.payment_method);
            let items: Vec<pb::LineItem> = parsed.items.iter().map(|i| i.to_proto()).collect();
            assert_eq!(items, request.items);
            assert_eq!(parsed.idempotency_key.as_str(), request.idempotency_key);
            assert_eq!(parsed.wait_for_outcome, request.wait_for_outcome);
            assert_eq!(parsed.fingerprint().len(), 64);
        }
        Err(violations) => {
            assert_verdicts("payment", &verdicts, Err(&violations));
            assert_quotes_no_card(
                &violations,
                &[
                    &request.payment_method,
                    &request.order_id,
                    &request.customer_id,
                    &request.idempotency_key,
                ],
            );
        }
    }
}

/// `RefundPaymentRequest`: the reason is free text; the amount is optional.
pub fn check_refund(request: &pb::RefundPaymentRequest) {
    let amount = match &request.amount {
        None => Valid,
        Some(m) => all([
            verdict(amount_ok(m.amount_minor)),
            currency_verdict(&m.currency),
        ]),
    };
    let verdicts = [
        ("order_id", verdict(identifier_ok(&request.order_id))),
        ("amount", amount),
        ("reason", verdict(free_text_ok(&request.reason))),
        ("idempotency_key", verdict(key_ok(&request.idempotency_key))),
    ];
    match RefundRequest::parse(request.clone()) {
        Ok(parsed) => {
            assert_verdicts("refund", &verdicts, Ok(()));
            assert_eq!(parsed.order_id.as_str(), request.order_id);
            assert_eq!(
                parsed.amount_minor,
                request.amount.as_ref().map(|m| m.amount_minor)
            );
            assert_eq!(
                parsed.currency.map(|c| c.as_str()),
                request.amount.as_ref().map(|m| m.currency.as_str())
            );
            assert_eq!(parsed.reason, request.reason.trim());
            assert_eq!(parsed.idempotency_key.as_str(), request.idempotency_key);
        }
        Err(violations) => {
            assert_verdicts("refund", &verdicts, Err(&violations));
            assert_quotes_no_card(&violations, &[&request.reason, &request.order_id]);
        }
    }
}

/// `ResolveManualReviewRequest`: a payment takes CHARGED (with the intent id) or NOT_CHARGED; a
/// refund in doubt (its number) REFUNDED (with the refund id) or NOT_REFUNDED; a note always.
pub fn check_resolve(request: &pb::ResolveManualReviewRequest) {
    let resolution = pb::Resolution::try_from(request.resolution).ok();
    let for_payment = request.refund_number == 0;
    let decided = match resolution {
        Some(pb::Resolution::Charged | pb::Resolution::NotCharged) if for_payment => resolution,
        Some(pb::Resolution::Refunded | pb::Resolution::NotRefunded) if !for_payment => resolution,
        _ => None,
    };
    // An id is required with its resolution, refused with the others, and unchecked when the
    // resolution itself is refused.
    let id_verdict = |id: &str, with: pb::Resolution| {
        let id = id.trim();
        match decided {
            None => Either,
            Some(r) if r == with => verdict(gateway_id_ok(id)),
            Some(_) => verdict(id.is_empty()),
        }
    };
    let verdicts = [
        ("order_id", verdict(identifier_ok(&request.order_id))),
        ("refund_number", verdict(request.refund_number >= 0)),
        ("resolution", verdict(decided.is_some())),
        (
            "gateway_payment_id",
            id_verdict(&request.gateway_payment_id, pb::Resolution::Charged),
        ),
        (
            "gateway_refund_id",
            id_verdict(&request.gateway_refund_id, pb::Resolution::Refunded),
        ),
        ("note", verdict(free_text_ok(&request.note))),
    ];
    match ResolveRequest::parse(request.clone()) {
        Ok(parsed) => {
            assert_verdicts("resolve", &verdicts, Ok(()));
            assert_eq!(parsed.order_id.as_str(), request.order_id);
            assert_eq!(parsed.note, request.note.trim());
            assert_eq!(
                parsed.refund,
                (request.refund_number > 0).then_some(request.refund_number)
            );
            let charged = decided == Some(pb::Resolution::Charged);
            assert_eq!(
                parsed.gateway_payment_id.as_deref(),
                charged.then(|| request.gateway_payment_id.trim())
            );
            let refunded = decided == Some(pb::Resolution::Refunded);
            assert_eq!(
                parsed.gateway_refund_id.as_deref(),
                refunded.then(|| request.gateway_refund_id.trim())
            );
        }
        Err(violations) => {
            assert_verdicts("resolve", &verdicts, Err(&violations));
            assert_quotes_no_card(&violations, &[&request.note]);
        }
    }
}

/// Operators' free text (`free_text`, required or not): accepted exactly when the rules hold,
/// and then trimmed, nothing else changed. A payment method is checked on the same text too.
pub fn check_text(text: &str) {
    for required in [true, false] {
        let expected = free_text_ok(text) || (!required && text.trim().is_empty());
        match free_text(text, required) {
            Ok(kept) => {
                assert!(expected, "free text accepted: {text:?}");
                assert_eq!(kept, text.trim());
            }
            Err(description) => {
                assert!(!expected, "free text refused ({description}): {text:?}");
                let violations = Violations::single("text", description);
                assert_quotes_no_card(&violations, &[text]);
            }
        }
    }
    let payment_method = coordinator::domain::PaymentMethod::parse(text);
    assert_eq!(
        payment_method.is_ok(),
        payment_method_ok(text),
        "payment method {text:?}: {payment_method:?}"
    );
    if let Err(description) = payment_method {
        assert_quotes_no_card(&Violations::single("payment_method", description), &[text]);
    }
}
