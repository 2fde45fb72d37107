//! `ProcessPayment`'s request, validated once at the gRPC edge: the rest of the coordinator only
//! ever sees a [`PaymentRequest`] whose every field is valid.

use payments_proto::v1 as pb;
use sha2::{Digest, Sha256};

use super::ids::{CustomerId, OrderId, ProductId, RequestKey};
use super::money::{Currency, MAX_AMOUNT_MINOR, Money, check_amount_minor, shown_amount};
use super::payment_method::PaymentMethod;
use super::violations::Violations;

/// Most line items one request may carry.
pub const MAX_LINE_ITEMS: usize = 100;
/// Largest quantity of one line item.
pub const MAX_QUANTITY: i32 = 10_000;

/// One line of the order: what was bought, how many, at what unit price (minor units).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LineItem {
    product_id: ProductId,
    quantity: i32,
    unit_amount_minor: i64,
}

impl LineItem {
    /// Validates one item; violations are named `{prefix}.product_id` and so on.
    pub fn parse(item: pb::LineItem, prefix: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let product_id = v.check(
            format!("{prefix}.product_id"),
            ProductId::parse(item.product_id),
        );
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            v.push(
                format!("{prefix}.quantity"),
                format!(
                    "must be between 1 and {MAX_QUANTITY}; got {}",
                    item.quantity
                ),
            );
        }
        if !(0..=MAX_AMOUNT_MINOR).contains(&item.unit_amount_minor) {
            v.push(
                format!("{prefix}.unit_amount_minor"),
                format!(
                    "must be between 0 and {MAX_AMOUNT_MINOR} minor units; got {}",
                    shown_amount(item.unit_amount_minor)
                ),
            );
        }
        match product_id {
            Some(product_id) if v.is_empty() => Ok(Self {
                product_id,
                quantity: item.quantity,
                unit_amount_minor: item.unit_amount_minor,
            }),
            _ => Err(v),
        }
    }

    pub fn product_id(&self) -> &ProductId {
        &self.product_id
    }

    pub fn quantity(&self) -> i32 {
        self.quantity
    }

    pub fn unit_amount_minor(&self) -> i64 {
        self.unit_amount_minor
    }

    pub fn to_proto(&self) -> pb::LineItem {
        pb::LineItem {
            product_id: self.product_id.as_str().to_owned(),
            quantity: self.quantity,
            unit_amount_minor: self.unit_amount_minor,
        }
    }
}

/// A valid `ProcessPaymentRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRequest {
    pub order_id: OrderId,
    pub amount: Money,
    pub customer_id: CustomerId,
    pub payment_method: PaymentMethod,
    pub items: Vec<LineItem>,
    pub idempotency_key: RequestKey,
    pub wait_for_outcome: bool,
}

impl PaymentRequest {
    /// Validates every field and reports every violation at once, each under its proto path
    /// (`order_id`, `amount`, `amount.amount_minor`, `amount.currency`, `items[3].quantity`…).
    pub fn parse(request: pb::ProcessPaymentRequest) -> Result<Self, Violations> {
        let pb::ProcessPaymentRequest {
            order_id,
            amount,
            customer_id,
            payment_method,
            items,
            idempotency_key,
            wait_for_outcome,
        } = request;
        let mut v = Violations::new();

        let order_id = v.check("order_id", OrderId::parse(order_id));
        let amount = match amount {
            None => {
                v.push(
                    "amount",
                    "is required (amount_minor in minor units and an ISO 4217 currency)",
                );
                None
            }
            Some(pb::Money {
                amount_minor,
                currency,
            }) => {
                let checked = v.check("amount.amount_minor", check_amount_minor(amount_minor));
                let currency = v.check("amount.currency", Currency::parse(&currency));
                match (checked, currency) {
                    (Some(()), Some(currency)) => {
                        v.check("amount", Money::new(amount_minor, currency))
                    }
                    _ => None,
                }
            }
        };
        let customer_id = v.check("customer_id", CustomerId::parse(customer_id));
        let payment_method = v.check("payment_method", PaymentMethod::parse(payment_method));

        let items = if items.len() > MAX_LINE_ITEMS {
            v.push(
                "items",
                format!(
                    "has {} line items; at most {MAX_LINE_ITEMS} are allowed",
                    items.len()
                ),
            );
            None
        } else {
            let mut parsed = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match LineItem::parse(item, &format!("items[{i}]")) {
                    Ok(item) => parsed.push(item),
                    Err(item_violations) => v.append(item_violations),
                }
            }
            Some(parsed)
        };
        let idempotency_key = v.check("idempotency_key", RequestKey::parse(idempotency_key));

        match (
            order_id,
            amount,
            customer_id,
            payment_method,
            items,
            idempotency_key,
        ) {
            (
                Some(order_id),
                Some(amount),
                Some(customer_id),
                Some(payment_method),
                Some(items),
                Some(idempotency_key),
            ) if v.is_empty() => Ok(Self {
                order_id,
                amount,
                customer_id,
                payment_method,
                items,
                idempotency_key,
                wait_for_outcome,
            }),
            _ => Err(v),
        }
    }

    /// Hex SHA-256 of what the request asks for: order, amount, currency, customer, payment
    /// method and items. Not `idempotency_key` (it is the lookup key) nor `wait_for_outcome` (how
    /// long to wait, not what to do). Two requests with one key and equal fingerprints are the
    /// same request; unequal fingerprints mean `IDEMPOTENCY_KEY_REUSED`.
    ///
    /// The encoding is unambiguous: a version tag, then every string length-prefixed and every
    /// number fixed-width big-endian, the items preceded by their count. Changing it changes every
    /// stored fingerprint: bump the tag.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        put_str(&mut h, "payments.v1/ProcessPayment#1");
        put_str(&mut h, self.order_id.as_str());
        h.update(self.amount.amount_minor().to_be_bytes());
        put_str(&mut h, self.amount.currency().as_str());
        put_str(&mut h, self.customer_id.as_str());
        put_str(&mut h, self.payment_method.as_str());
        h.update((self.items.len() as u64).to_be_bytes());
        for item in &self.items {
            put_str(&mut h, item.product_id().as_str());
            h.update(item.quantity().to_be_bytes());
            h.update(item.unit_amount_minor().to_be_bytes());
        }
        hex::encode(h.finalize())
    }
}

fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

/// Validates the `order_id` of a request other than `ProcessPayment` (`GetOrder`, `WatchOrder`…),
/// reporting the violation under `field`.
pub fn parse_order_id(field: &str, value: &str) -> Result<OrderId, Violations> {
    OrderId::parse(value).map_err(|description| Violations::single(field, description))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(product_id: &str, quantity: i32, unit_amount_minor: i64) -> pb::LineItem {
        pb::LineItem {
            product_id: product_id.to_owned(),
            quantity,
            unit_amount_minor,
        }
    }

    fn valid() -> pb::ProcessPaymentRequest {
        pb::ProcessPaymentRequest {
            order_id: "ord-1".to_owned(),
            amount: Some(pb::Money {
                amount_minor: 1250,
                currency: "EUR".to_owned(),
            }),
            customer_id: "cus-1".to_owned(),
            payment_method: "pm_card_visa".to_owned(),
            items: vec![item("sku-1", 2, 500), item("sku-2", 1, 250)],
            idempotency_key: "req-1".to_owned(),
            wait_for_outcome: true,
        }
    }

    fn fields_of(request: pb::ProcessPaymentRequest) -> Vec<String> {
        PaymentRequest::parse(request)
            .unwrap_err()
            .iter()
            .map(|v| v.field.clone())
            .collect()
    }

    #[test]
    fn a_valid_request_parses() {
        let r = PaymentRequest::parse(valid()).unwrap();
        assert_eq!(r.order_id.as_str(), "ord-1");
        assert_eq!(r.amount.amount_minor(), 1250);
        assert_eq!(r.amount.currency().as_str(), "EUR");
        assert_eq!(r.customer_id.as_str(), "cus-1");
        assert_eq!(r.payment_method.as_str(), "pm_card_visa");
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.items[0].to_proto(), item("sku-1", 2, 500));
        assert_eq!(r.idempotency_key.as_str(), "req-1");
        assert!(r.wait_for_outcome);
    }

    #[test]
    fn amount_bounds() {
        for (amount, ok) in [
            (0, false),
            (-5, false),
            (1, true),
            (99_999_999, true),
            (100_000_000, false),
        ] {
            let mut r = valid();
            r.amount = Some(pb::Money {
                amount_minor: amount,
                currency: "USD".to_owned(),
            });
            match PaymentRequest::parse(r) {
                Ok(p) => assert!(ok, "{amount} accepted: {p:?}"),
                Err(v) => {
                    assert!(!ok, "{amount} refused: {v}");
                    assert_eq!(v.fields(), ["amount.amount_minor"]);
                }
            }
        }
    }

    #[test]
    fn missing_amount_and_bad_currency() {
        let mut r = valid();
        r.amount = None;
        assert_eq!(fields_of(r), ["amount"]);

        let mut r = valid();
        r.amount = Some(pb::Money {
            amount_minor: 100,
            currency: "usd".to_owned(),
        });
        let v = PaymentRequest::parse(r).unwrap_err();
        assert_eq!(v.fields(), ["amount.currency"]);
        assert!(v.0[0].description.contains("USD"));

        let mut r = valid();
        r.amount = Some(pb::Money {
            amount_minor: 0,
            currency: "XXX".to_owned(),
        });
        assert_eq!(fields_of(r), ["amount.amount_minor", "amount.currency"]);
    }

    #[test]
    fn id_lengths_and_characters() {
        let mut r = valid();
        r.order_id = "o".repeat(64);
        r.customer_id = "c".repeat(64);
        assert!(PaymentRequest::parse(r).is_ok());

        let mut r = valid();
        r.order_id = "o".repeat(65);
        r.customer_id = "c".repeat(65);
        assert_eq!(fields_of(r), ["order_id", "customer_id"]);

        let mut r = valid();
        r.order_id = "order 1".to_owned();
        r.customer_id = String::new();
        assert_eq!(fields_of(r), ["order_id", "customer_id"]);
    }

    #[test]
    fn card_numbers_are_refused_and_never_quoted() {
        for card in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
        ] {
            let mut r = valid();
            r.payment_method = card.to_owned();
            let v = PaymentRequest::parse(r).unwrap_err();
            assert_eq!(v.fields(), ["payment_method"]);
            let shown = format!("{v} {v:?}");
            assert!(!shown.contains("4242"), "{shown}");
        }
        for not_a_card in ["4242424242424241", "42424242424", "42424242424242424242"] {
            let mut r = valid();
            r.payment_method = not_a_card.to_owned();
            assert!(PaymentRequest::parse(r).is_ok(), "{not_a_card} refused");
        }
    }

    #[test]
    fn item_count_bounds() {
        let mut r = valid();
        r.items = vec![item("sku", 1, 1); 100];
        assert!(PaymentRequest::parse(r).is_ok());
        let mut r = valid();
        r.items = vec![item("sku", 1, 1); 101];
        assert_eq!(fields_of(r), ["items"]);
        let mut r = valid();
        r.items = vec![];
        assert!(PaymentRequest::parse(r).is_ok());
    }

    #[test]
    fn item_fields_are_named_by_index() {
        let mut r = valid();
        r.items = vec![
            item("ok", 1, 0),
            item("ok", 10_000, 99_999_999),
            item("ok", 0, 1),
            item("bad id", 10_001, -1),
            item("", 1, 100_000_000),
        ];
        assert_eq!(
            fields_of(r),
            [
                "items[2].quantity",
                "items[3].product_id",
                "items[3].quantity",
                "items[3].unit_amount_minor",
                "items[4].product_id",
                "items[4].unit_amount_minor",
            ]
        );
    }

    #[test]
    fn idempotency_key_rules() {
        let mut r = valid();
        r.idempotency_key = String::new();
        assert_eq!(fields_of(r), ["idempotency_key"]);
        let mut r = valid();
        r.idempotency_key = "k\n".to_owned();
        assert_eq!(fields_of(r), ["idempotency_key"]);
        let mut r = valid();
        r.idempotency_key = "k".repeat(256);
        assert_eq!(fields_of(r), ["idempotency_key"]);
    }

    #[test]
    fn every_violation_is_reported_together() {
        let r = pb::ProcessPaymentRequest {
            order_id: String::new(),
            amount: Some(pb::Money {
                amount_minor: 100_000_000,
                currency: "eur".to_owned(),
            }),
            customer_id: "a/b".to_owned(),
            payment_method: "4242424242424242".to_owned(),
            items: vec![item("sku", 1, 1), item("sku", 0, 1)],
            idempotency_key: String::new(),
            wait_for_outcome: false,
        };
        assert_eq!(
            fields_of(r),
            [
                "order_id",
                "amount.amount_minor",
                "amount.currency",
                "customer_id",
                "payment_method",
                "items[1].quantity",
                "idempotency_key",
            ]
        );
    }

    #[test]
    fn fingerprint_covers_what_is_asked_not_how_long_to_wait() {
        let base = PaymentRequest::parse(valid()).unwrap();
        let fp = base.fingerprint();
        assert_eq!(fp.len(), 64);
        assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(fp, PaymentRequest::parse(valid()).unwrap().fingerprint());

        let mut other = base.clone();
        other.wait_for_outcome = false;
        other.idempotency_key = RequestKey::parse("another").unwrap();
        assert_eq!(other.fingerprint(), fp);

        let changes: Vec<fn(&mut pb::ProcessPaymentRequest)> = vec![
            |r| r.order_id = "ord-2".to_owned(),
            |r| r.customer_id = "cus-2".to_owned(),
            |r| r.payment_method = "pm_card_chargeDeclined".to_owned(),
            |r| r.amount.as_mut().unwrap().amount_minor += 1,
            |r| r.amount.as_mut().unwrap().currency = "USD".to_owned(),
            |r| r.items[0].quantity += 1,
            |r| r.items[0].unit_amount_minor += 1,
            |r| r.items[0].product_id = "sku-9".to_owned(),
            |r| r.items.reverse(),
            |r| {
                r.items.pop();
            },
        ];
        for change in changes {
            let mut r = valid();
            change(&mut r);
            assert_ne!(PaymentRequest::parse(r).unwrap().fingerprint(), fp);
        }
    }

    #[test]
    fn fingerprint_is_unambiguous_across_field_boundaries() {
        let mut a = valid();
        a.order_id = "ab".to_owned();
        a.customer_id = "c".to_owned();
        let mut b = valid();
        b.order_id = "a".to_owned();
        b.customer_id = "bc".to_owned();
        assert_ne!(
            PaymentRequest::parse(a).unwrap().fingerprint(),
            PaymentRequest::parse(b).unwrap().fingerprint()
        );
    }

    #[test]
    fn parse_order_id_names_the_field() {
        assert_eq!(parse_order_id("order_id", "o-1").unwrap().as_str(), "o-1");
        let v = parse_order_id("order_id", "").unwrap_err();
        assert_eq!(v.fields(), ["order_id"]);
    }
}
