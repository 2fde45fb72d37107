//! Validated requests of the back-office RPCs: `RefundPayment`, `ResolveManualReview`,
//! `ListManualReviews`. As for payments, every violation is reported at once under its proto path.

use payments_proto::v1 as pb;
use sha2::{Digest, Sha256};

use super::money::{Currency, check_amount_minor};
use super::payment_method::contains_card_number;
use super::{OrderId, RequestKey, Resolution, Violations};

/// Longest free text (a refund's reason, a reviewer's note), in characters.
pub const MAX_TEXT: usize = 500;
/// Longest gateway id (`pi_…`) accepted from a reviewer.
const MAX_GATEWAY_ID: usize = 255;
/// Default and largest page of `ListManualReviews`.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 100;

/// A `RefundPayment` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub order_id: OrderId,
    /// `None`: all that remains refundable.
    pub amount_minor: Option<i64>,
    pub currency: Option<Currency>,
    pub reason: String,
    pub idempotency_key: RequestKey,
}

impl RefundRequest {
    pub fn parse(request: pb::RefundPaymentRequest) -> Result<Self, Violations> {
        let pb::RefundPaymentRequest {
            order_id,
            amount,
            reason,
            idempotency_key,
        } = request;
        let mut v = Violations::new();
        let order_id = v.check("order_id", OrderId::parse(order_id));
        let (amount_minor, currency) = match amount {
            None => (None, None),
            Some(pb::Money {
                amount_minor,
                currency,
            }) => (
                v.check("amount.amount_minor", check_amount_minor(amount_minor))
                    .map(|()| amount_minor),
                v.check("amount.currency", Currency::parse(&currency)),
            ),
        };
        let reason = v.check("reason", free_text(&reason, true));
        let idempotency_key = v.check("idempotency_key", RequestKey::parse(idempotency_key));
        match (order_id, reason, idempotency_key) {
            (Some(order_id), Some(reason), Some(idempotency_key)) if v.is_empty() => Ok(Self {
                order_id,
                amount_minor,
                currency,
                reason,
                idempotency_key,
            }),
            _ => Err(v),
        }
    }

    /// Hex SHA-256 of what the request asks for (order, amount or "all", currency, reason): one
    /// key with another fingerprint is `IDEMPOTENCY_KEY_REUSED`.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        put_str(&mut h, "payments.v1/RefundPayment#1");
        put_str(&mut h, self.order_id.as_str());
        match self.amount_minor {
            Some(amount) => {
                h.update([1]);
                h.update(amount.to_be_bytes());
            }
            None => h.update([0]),
        }
        put_str(&mut h, self.currency.map(|c| c.as_str()).unwrap_or(""));
        put_str(&mut h, &self.reason);
        hex::encode(h.finalize())
    }
}

/// A `ResolveManualReview` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRequest {
    pub order_id: OrderId,
    pub resolution: Resolution,
    /// Present exactly with `Charged`.
    pub gateway_payment_id: Option<String>,
    /// The refund in doubt this decides (`Refunded` / `NotRefunded`); `None`: the payment.
    pub refund: Option<i32>,
    /// Present exactly with `Refunded`.
    pub gateway_refund_id: Option<String>,
    pub note: String,
}

impl ResolveRequest {
    pub fn parse(request: pb::ResolveManualReviewRequest) -> Result<Self, Violations> {
        let pb::ResolveManualReviewRequest {
            order_id,
            resolution,
            gateway_payment_id,
            note,
            refund_number,
            gateway_refund_id,
        } = request;
        let mut v = Violations::new();
        let order_id = v.check("order_id", OrderId::parse(order_id));
        let refund = match refund_number {
            0 => None,
            n if n > 0 => Some(n),
            n => {
                v.push(
                    "refund_number",
                    format!("is {n}: 0 (the payment) or the number of a refund in doubt"),
                );
                None
            }
        };
        let resolution = match (pb::Resolution::try_from(resolution), refund_number) {
            (Ok(pb::Resolution::Charged), 0) => Some(Resolution::Charged),
            (Ok(pb::Resolution::NotCharged), 0) => Some(Resolution::NotCharged),
            (Ok(pb::Resolution::Refunded), n) if n != 0 => Some(Resolution::Refunded),
            (Ok(pb::Resolution::NotRefunded), n) if n != 0 => Some(Resolution::NotRefunded),
            (Ok(pb::Resolution::Refunded | pb::Resolution::NotRefunded), _) => {
                v.push(
                    "resolution",
                    "RESOLUTION_REFUNDED / RESOLUTION_NOT_REFUNDED decide a refund in doubt: \
                     give its refund_number",
                );
                None
            }
            (Ok(pb::Resolution::Charged | pb::Resolution::NotCharged), _) => {
                v.push(
                    "resolution",
                    "RESOLUTION_CHARGED / RESOLUTION_NOT_CHARGED decide a payment: leave \
                     refund_number 0 (a refund in doubt takes RESOLUTION_REFUNDED or \
                     RESOLUTION_NOT_REFUNDED)",
                );
                None
            }
            _ => {
                v.push(
                    "resolution",
                    "is required: RESOLUTION_CHARGED (the money was taken) or \
                     RESOLUTION_NOT_CHARGED (nothing was taken); for a refund in doubt \
                     RESOLUTION_REFUNDED or RESOLUTION_NOT_REFUNDED",
                );
                None
            }
        };
        let gateway_payment_id = v
            .check(
                "gateway_payment_id",
                required_with(
                    resolution,
                    Resolution::Charged,
                    gateway_payment_id.trim(),
                    "the gateway's id of the charge (pi_...)",
                ),
            )
            .flatten();
        let gateway_refund_id = v
            .check(
                "gateway_refund_id",
                required_with(
                    resolution,
                    Resolution::Refunded,
                    gateway_refund_id.trim(),
                    "the gateway's id of the refund (re_...)",
                ),
            )
            .flatten();
        let note = v.check("note", free_text(&note, true));
        match (order_id, resolution, note) {
            (Some(order_id), Some(resolution), Some(note)) if v.is_empty() => Ok(Self {
                order_id,
                resolution,
                gateway_payment_id,
                refund,
                gateway_refund_id,
                note,
            }),
            _ => Err(v),
        }
    }
}

/// A gateway id required with exactly one resolution (`with`) and refused with the others.
fn required_with(
    resolution: Option<Resolution>,
    with: Resolution,
    id: &str,
    what: &str,
) -> Result<Option<String>, String> {
    match (resolution, id) {
        (Some(r), "") if r == with => Err(format!("is required with RESOLUTION_{with}: {what}")),
        (Some(r), id) if r == with => gateway_id(id).map(Some),
        (_, "") => Ok(None),
        (Some(r), _) => Err(format!("must be empty with RESOLUTION_{r}")),
        (None, _) => Ok(None),
    }
}

/// A `ListManualReviews` page size: 0 means the default; more than the maximum is refused.
pub fn page_size(requested: i32) -> Result<i64, Violations> {
    match i64::from(requested) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        n => Err(Violations::single(
            "page_size",
            format!("is {n}; it must be between 1 and {MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})"),
        )),
    }
}

/// Free text from an operator: trimmed, 1..=MAX_TEXT characters, printable, and never something
/// that looks like a card number (it would be stored and shown).
pub fn free_text(value: &str, required: bool) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return if required {
            Err("is required: say why, for whoever reads this later".to_owned())
        } else {
            Ok(String::new())
        };
    }
    if value.chars().count() > MAX_TEXT {
        return Err(format!("is longer than {MAX_TEXT} characters"));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err("contains control characters".to_owned());
    }
    if contains_card_number(value) {
        return Err(
            "looks like it contains a card number; never write card numbers here".to_owned(),
        );
    }
    Ok(value.to_owned())
}

/// A gateway object id: `[A-Za-z0-9_]`, 1..=255.
fn gateway_id(id: &str) -> Result<String, String> {
    if id.len() > MAX_GATEWAY_ID {
        return Err(format!("is longer than {MAX_GATEWAY_ID} characters"));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("must be a gateway id such as pi_3Nx…: letters, digits and _ only".to_owned());
    }
    Ok(id.to_owned())
}

fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refund(amount: Option<(i64, &str)>, reason: &str) -> pb::RefundPaymentRequest {
        pb::RefundPaymentRequest {
            order_id: "ord-1".into(),
            amount: amount.map(|(amount_minor, currency)| pb::Money {
                amount_minor,
                currency: currency.into(),
            }),
            reason: reason.into(),
            idempotency_key: "k-1".into(),
        }
    }

    #[test]
    fn a_refund_needs_a_reason_and_a_sane_amount() {
        assert!(RefundRequest::parse(refund(None, "customer returned it")).is_ok());
        assert!(RefundRequest::parse(refund(Some((500, "EUR")), "partial")).is_ok());
        let bad = RefundRequest::parse(refund(Some((0, "XXQ")), " ")).unwrap_err();
        assert_eq!(
            bad.fields(),
            vec!["amount.amount_minor", "amount.currency", "reason"]
        );
        let card = RefundRequest::parse(refund(None, "card 4242 4242 4242 4242")).unwrap_err();
        assert_eq!(card.fields(), vec!["reason"]);
        // Found by the property tests (coordinator/tests/properties.rs): after another number,
        // and with Unicode hyphens, it is still a card number.
        for reason in ["ref 12 4242 4242 4242 4242", "card 4242‐4242‐4242‐4242"] {
            let card = RefundRequest::parse(refund(None, reason)).unwrap_err();
            assert_eq!(card.fields(), vec!["reason"], "{reason}");
        }
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let full = RefundRequest::parse(refund(None, "r")).unwrap();
        let part = RefundRequest::parse(refund(Some((500, "EUR")), "r")).unwrap();
        assert_ne!(full.fingerprint(), part.fingerprint());
        assert_eq!(
            full.fingerprint(),
            RefundRequest::parse(refund(None, "r"))
                .unwrap()
                .fingerprint()
        );
    }

    fn resolve(resolution: pb::Resolution, id: &str, note: &str) -> pb::ResolveManualReviewRequest {
        pb::ResolveManualReviewRequest {
            order_id: "ord-1".into(),
            resolution: resolution.into(),
            gateway_payment_id: id.into(),
            note: note.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_refund_in_doubt_takes_its_own_resolutions() {
        let refund = |resolution: pb::Resolution, number: i32, re: &str| {
            ResolveRequest::parse(pb::ResolveManualReviewRequest {
                order_id: "ord-1".into(),
                resolution: resolution.into(),
                refund_number: number,
                gateway_refund_id: re.into(),
                note: "n".into(),
                ..Default::default()
            })
        };
        let ok = refund(pb::Resolution::Refunded, 2, "re_9").unwrap();
        assert_eq!(
            (ok.refund, ok.gateway_refund_id.as_deref()),
            (Some(2), Some("re_9"))
        );
        assert!(refund(pb::Resolution::NotRefunded, 2, "").is_ok());
        assert_eq!(
            refund(pb::Resolution::Refunded, 2, "")
                .unwrap_err()
                .fields(),
            vec!["gateway_refund_id"]
        );
        assert_eq!(
            refund(pb::Resolution::NotRefunded, 2, "re_1")
                .unwrap_err()
                .fields(),
            vec!["gateway_refund_id"]
        );
        assert_eq!(
            refund(pb::Resolution::Refunded, 0, "re_1")
                .unwrap_err()
                .fields(),
            vec!["resolution"]
        );
        assert_eq!(
            refund(pb::Resolution::Charged, 1, "").unwrap_err().fields(),
            vec!["resolution"]
        );
        assert_eq!(
            refund(pb::Resolution::NotRefunded, -1, "")
                .unwrap_err()
                .fields(),
            vec!["refund_number"]
        );
    }

    #[test]
    fn a_resolution_is_complete_or_refused() {
        let ok = ResolveRequest::parse(resolve(
            pb::Resolution::Charged,
            "pi_123",
            "seen in dashboard",
        ));
        assert_eq!(ok.unwrap().gateway_payment_id.as_deref(), Some("pi_123"));
        let missing = ResolveRequest::parse(resolve(pb::Resolution::Charged, "", "x")).unwrap_err();
        assert_eq!(missing.fields(), vec!["gateway_payment_id"]);
        let extra =
            ResolveRequest::parse(resolve(pb::Resolution::NotCharged, "pi_1", "x")).unwrap_err();
        assert_eq!(extra.fields(), vec!["gateway_payment_id"]);
        let unset =
            ResolveRequest::parse(resolve(pb::Resolution::Unspecified, "", "")).unwrap_err();
        assert_eq!(unset.fields(), vec!["resolution", "note"]);
        let odd =
            ResolveRequest::parse(resolve(pb::Resolution::Charged, "pi_1; drop", "x")).unwrap_err();
        assert_eq!(odd.fields(), vec!["gateway_payment_id"]);
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7), Ok(7));
        assert!(page_size(101).is_err());
        assert!(page_size(-1).is_err());
    }
}
