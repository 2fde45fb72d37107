//! Deterministic idempotency keys.
//!
//! A gateway key is derived from the order and the attempt number (or the refund number) alone, so
//! every replica and every restart computes the same key for the same step (CONTRACT §6). There is
//! deliberately no constructor taking an arbitrary or random string: a retry with a fresh key is a
//! second, independent request to the gateway — exactly the double charge this crate exists to
//! prevent.

use std::fmt;

/// One step of a payment attempt that is sent as a POST.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaymentStep {
    /// `POST /v1/payment_intents`.
    Create,
    /// `POST /v1/payment_intents/{id}/confirm`.
    Confirm,
    /// `POST /v1/payment_intents/{id}/cancel`.
    Cancel,
}

impl PaymentStep {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStep::Create => "create",
            PaymentStep::Confirm => "confirm",
            PaymentStep::Cancel => "cancel",
        }
    }
}

impl fmt::Display for PaymentStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `Idempotency-Key` of one POST. Only built by the constructors below.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey {
    key: String,
    /// The payment attempt the key belongs to (none for a refund), kept beside the key so that
    /// the request's span can name it without parsing the key.
    attempt: Option<u32>,
}

impl IdempotencyKey {
    /// `pay:{order_id}:{attempt}:{step}`.
    pub fn payment(order_id: &str, attempt: u32, step: PaymentStep) -> Self {
        Self {
            key: format!("pay:{order_id}:{attempt}:{step}"),
            attempt: Some(attempt),
        }
    }

    /// `pay:{order_id}:{attempt}:create`.
    pub fn create(order_id: &str, attempt: u32) -> Self {
        Self::payment(order_id, attempt, PaymentStep::Create)
    }

    /// `pay:{order_id}:{attempt}:confirm`.
    pub fn confirm(order_id: &str, attempt: u32) -> Self {
        Self::payment(order_id, attempt, PaymentStep::Confirm)
    }

    /// `pay:{order_id}:{attempt}:cancel`.
    pub fn cancel(order_id: &str, attempt: u32) -> Self {
        Self::payment(order_id, attempt, PaymentStep::Cancel)
    }

    /// The key of `step` split around the attempt number: `(before, after)`, so that
    /// `before + number + after` is `payment(order_id, number, step)`. For a store that learns the
    /// attempt number only inside the statement that records the attempt (it joins the three in
    /// SQL), without writing the key's format a second time.
    pub fn payment_around_attempt(order_id: &str, step: PaymentStep) -> (String, String) {
        (format!("pay:{order_id}:"), format!(":{step}"))
    }

    /// `refund:{order_id}:{refund_number}`.
    pub fn refund(order_id: &str, refund_number: u32) -> Self {
        Self {
            key: format!("refund:{order_id}:{refund_number}"),
            attempt: None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The payment attempt of a `pay:` key; `None` for a refund's.
    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_split_around_its_attempt_joins_back_to_the_key() {
        for step in [
            PaymentStep::Create,
            PaymentStep::Confirm,
            PaymentStep::Cancel,
        ] {
            let (before, after) = IdempotencyKey::payment_around_attempt("ord:7.x", step);
            for attempt in [1, 2, 10, 4_000_000_000] {
                assert_eq!(
                    format!("{before}{attempt}{after}"),
                    IdempotencyKey::payment("ord:7.x", attempt, step).as_str()
                );
            }
        }
    }

    #[test]
    fn payment_keys_depend_on_order_attempt_and_step_only() {
        assert_eq!(
            IdempotencyKey::create("ord-1", 1).as_str(),
            "pay:ord-1:1:create"
        );
        assert_eq!(
            IdempotencyKey::confirm("ord-1", 2).as_str(),
            "pay:ord-1:2:confirm"
        );
        assert_eq!(
            IdempotencyKey::cancel("ord-1", 3).to_string(),
            "pay:ord-1:3:cancel"
        );
        assert_eq!(
            IdempotencyKey::payment("ord-1", 1, PaymentStep::Create),
            IdempotencyKey::create("ord-1", 1)
        );
        // Same inputs, same key: every replica derives it alike.
        assert_eq!(
            IdempotencyKey::create("o:x.1", 7),
            IdempotencyKey::create("o:x.1", 7)
        );
    }

    #[test]
    fn keys_differ_between_steps_attempts_and_orders() {
        let keys = [
            IdempotencyKey::create("a", 1),
            IdempotencyKey::confirm("a", 1),
            IdempotencyKey::cancel("a", 1),
            IdempotencyKey::create("a", 2),
            IdempotencyKey::create("b", 1),
            IdempotencyKey::refund("a", 1),
            IdempotencyKey::refund("a", 2),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn refund_keys() {
        assert_eq!(
            IdempotencyKey::refund("ord-9", 2).as_str(),
            "refund:ord-9:2"
        );
    }

    #[test]
    fn a_payment_key_knows_its_attempt_and_a_refund_key_has_none() {
        assert_eq!(IdempotencyKey::confirm("o:1:2", 3).attempt(), Some(3));
        assert_eq!(IdempotencyKey::create("o", 1).attempt(), Some(1));
        assert_eq!(IdempotencyKey::refund("o", 2).attempt(), None);
    }
}
