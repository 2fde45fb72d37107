//! The gateway's JSON objects, as far as the coordinator needs them: PaymentIntent, Refund and the
//! error body. Parsing is lenient where Stripe's shape may vary (expandable ids, metadata values)
//! and strict only on what a decision depends on (id, status, amount, currency).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PaymentIntent's `status`. Unknown values are kept, never rejected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    Processing,
    RequiresCapture,
    Canceled,
    Succeeded,
    Other(String),
}

impl IntentStatus {
    pub fn as_str(&self) -> &str {
        match self {
            IntentStatus::RequiresPaymentMethod => "requires_payment_method",
            IntentStatus::RequiresConfirmation => "requires_confirmation",
            IntentStatus::RequiresAction => "requires_action",
            IntentStatus::Processing => "processing",
            IntentStatus::RequiresCapture => "requires_capture",
            IntentStatus::Canceled => "canceled",
            IntentStatus::Succeeded => "succeeded",
            IntentStatus::Other(other) => other,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "requires_payment_method" => IntentStatus::RequiresPaymentMethod,
            "requires_confirmation" => IntentStatus::RequiresConfirmation,
            "requires_action" => IntentStatus::RequiresAction,
            "processing" => IntentStatus::Processing,
            "requires_capture" => IntentStatus::RequiresCapture,
            "canceled" => IntentStatus::Canceled,
            "succeeded" => IntentStatus::Succeeded,
            other => IntentStatus::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for IntentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for IntentStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for IntentStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(IntentStatus::parse(&s))
    }
}

/// A Refund's `status`. Unknown values are kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    Pending,
    RequiresAction,
    Succeeded,
    Failed,
    Canceled,
    Other(String),
}

impl RefundStatus {
    pub fn as_str(&self) -> &str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::RequiresAction => "requires_action",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
            RefundStatus::Canceled => "canceled",
            RefundStatus::Other(other) => other,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => RefundStatus::Pending,
            "requires_action" => RefundStatus::RequiresAction,
            "succeeded" => RefundStatus::Succeeded,
            "failed" => RefundStatus::Failed,
            "canceled" => RefundStatus::Canceled,
            other => RefundStatus::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RefundStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RefundStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(RefundStatus::parse(&s))
    }
}

/// A PaymentIntent's `last_payment_error` (set after a decline).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPaymentError {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A PaymentIntent (`pi_…`). Amounts are integer minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub status: IntentStatus,
    pub amount: i64,
    /// Lower-case ISO 4217, as the gateway writes it.
    pub currency: String,
    #[serde(default, deserialize_with = "lenient_metadata")]
    pub metadata: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "id_or_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub payment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_received: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_payment_error: Option<LastPaymentError>,
    #[serde(
        default,
        deserialize_with = "id_or_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub latest_charge: Option<String>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

impl PaymentIntent {
    /// `last_payment_error.decline_code`, falling back to its `code`.
    pub fn decline_code(&self) -> Option<&str> {
        let error = self.last_payment_error.as_ref()?;
        error.decline_code.as_deref().or(error.code.as_deref())
    }

    /// `metadata[order_id]`.
    pub fn order_id(&self) -> Option<&str> {
        self.metadata.get("order_id").map(String::as_str)
    }

    /// `metadata[attempt]`, if a number.
    pub fn attempt(&self) -> Option<u32> {
        self.metadata.get("attempt").and_then(|a| a.parse().ok())
    }
}

/// A Refund (`re_…`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub status: RefundStatus,
    #[serde(
        default,
        deserialize_with = "id_or_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub payment_intent: Option<String>,
    #[serde(default, deserialize_with = "lenient_metadata")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// Stripe's error object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// `card_error`, `invalid_request_error`, `idempotency_error`, `api_error`, …
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The intent a card error is about (Stripe embeds the whole object); kept raw so that an
    /// unexpected shape never makes the error itself unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_intent: Option<serde_json::Value>,
}

impl ApiError {
    /// `payment_intent.id` (or `payment_intent` when given as a bare id).
    pub fn payment_intent_id(&self) -> Option<String> {
        match self.payment_intent.as_ref()? {
            serde_json::Value::String(id) => Some(id.clone()),
            serde_json::Value::Object(object) => object
                .get("id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            _ => None,
        }
    }
}

/// A field that Stripe gives as an id, or as the object itself when expanded.
fn id_or_object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(match value {
        Some(serde_json::Value::String(id)) => Some(id),
        Some(serde_json::Value::Object(object)) => object
            .get("id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        _ => None,
    })
}

/// Metadata values are strings at Stripe; a gateway writing numbers or booleans is tolerated.
fn lenient_metadata<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let value = Option::<BTreeMap<String, serde_json::Value>>::deserialize(deserializer)?;
    Ok(value
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, value)| match value {
            serde_json::Value::String(s) => Some((key, s)),
            serde_json::Value::Null => None,
            other => Some((key, other.to_string())),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stripe_payment_intent() {
        let body = r#"{
            "id": "pi_3Nabc", "object": "payment_intent", "amount": 1999, "currency": "eur",
            "status": "requires_payment_method", "amount_received": 0,
            "metadata": {"order_id": "ord-1", "attempt": "2"},
            "payment_method": {"id": "pm_123", "object": "payment_method"},
            "latest_charge": "ch_1",
            "last_payment_error": {"type": "card_error", "code": "card_declined",
                                   "decline_code": "insufficient_funds", "message": "no"},
            "created": 1700000000, "livemode": false, "next_action": null
        }"#;
        let pi: PaymentIntent = serde_json::from_str(body).expect("parse");
        assert_eq!(pi.id, "pi_3Nabc");
        assert_eq!(pi.status, IntentStatus::RequiresPaymentMethod);
        assert_eq!(pi.amount, 1999);
        assert_eq!(pi.payment_method.as_deref(), Some("pm_123"));
        assert_eq!(pi.decline_code(), Some("insufficient_funds"));
        assert_eq!(pi.order_id(), Some("ord-1"));
        assert_eq!(pi.attempt(), Some(2));
    }

    #[test]
    fn unknown_status_is_kept_and_minimal_body_parses() {
        let body = r#"{"id":"pi_1","status":"teleported","amount":5,"currency":"usd",
                       "metadata":{"attempt":3,"x":null}}"#;
        let pi: PaymentIntent = serde_json::from_str(body).expect("parse");
        assert_eq!(pi.status, IntentStatus::Other("teleported".into()));
        assert_eq!(pi.attempt(), Some(3));
        assert_eq!(pi.metadata.get("x"), None);
        // Serialising and parsing again gives the same intent.
        let again: PaymentIntent =
            serde_json::from_str(&serde_json::to_string(&pi).expect("ser")).expect("parse");
        assert_eq!(again, pi);
    }

    #[test]
    fn floats_in_amount_are_refused() {
        let body = r#"{"id":"pi_1","status":"succeeded","amount":10.5,"currency":"usd"}"#;
        assert!(serde_json::from_str::<PaymentIntent>(body).is_err());
    }

    #[test]
    fn error_body_with_embedded_intent() {
        let body = r#"{"error":{"type":"card_error","code":"card_declined",
            "decline_code":"generic_decline","message":"Your card was declined.",
            "payment_intent":{"id":"pi_9","status":"requires_payment_method"}}}"#;
        let err: ErrorBody = serde_json::from_str(body).expect("parse");
        assert_eq!(err.error.payment_intent_id().as_deref(), Some("pi_9"));
        assert_eq!(err.error.decline_code.as_deref(), Some("generic_decline"));
    }
}
