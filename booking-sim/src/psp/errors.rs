//! Stripe's error bodies: `{"error":{"type", "code", "decline_code", "param", "message",
//! "payment_intent"}}`, absent fields omitted. This is the only place that knows their shapes.

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use super::reply::Reply;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ErrorType {
    #[serde(rename = "invalid_request_error")]
    InvalidRequest,
    #[serde(rename = "card_error")]
    Card,
    #[serde(rename = "idempotency_error")]
    Idempotency,
    #[serde(rename = "api_error")]
    Api,
    #[serde(rename = "rate_limit_error")]
    RateLimit,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorObject {
    #[serde(rename = "type")]
    pub kind: ErrorType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_intent: Option<Value>,
}

/// An error answer: HTTP status plus Stripe's error object (boxed: errors travel in `Result`s
/// on every path, and should keep them small).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: Box<ErrorObject>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ErrorObject,
}

impl ApiError {
    fn new(status: StatusCode, kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            status,
            error: Box::new(ErrorObject {
                kind,
                code: None,
                decline_code: None,
                param: None,
                message: message.into(),
                payment_intent: None,
            }),
        }
    }

    fn invalid(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorType::InvalidRequest, message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.error.code = Some(code);
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(param.into());
        self
    }

    pub fn with_payment_intent(mut self, intent: &impl Serialize) -> Self {
        self.error.payment_intent = serde_json::to_value(intent).ok();
        self
    }

    pub fn reply(&self) -> Reply {
        Reply::json(self.status, &Envelope { error: &self.error })
    }

    #[cfg(test)]
    pub fn code(&self) -> Option<&'static str> {
        self.error.code
    }

    // ---- authentication ----

    pub fn missing_api_key() -> Self {
        Self::invalid(
            StatusCode::UNAUTHORIZED,
            "You did not provide an API key. Provide it in the Authorization header, \
             using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        )
    }

    /// Never echoes the key that was offered.
    pub fn invalid_api_key() -> Self {
        Self::invalid(StatusCode::UNAUTHORIZED, "Invalid API Key provided.")
    }

    // ---- parameter validation (400; never saved under an idempotency key) ----

    pub fn parameter_missing(param: &str) -> Self {
        Self::invalid(
            StatusCode::BAD_REQUEST,
            format!("Missing required param: {param}."),
        )
        .with_code("parameter_missing")
        .with_param(param)
    }

    pub fn parameter_unknown(param: &str) -> Self {
        Self::invalid(
            StatusCode::BAD_REQUEST,
            format!("Received unknown parameter: {param}"),
        )
        .with_code("parameter_unknown")
        .with_param(param)
    }

    pub fn parameter_invalid_integer(param: &str) -> Self {
        Self::invalid(
            StatusCode::BAD_REQUEST,
            format!("Invalid integer for {param}: it must be a whole number of minor units."),
        )
        .with_code("parameter_invalid_integer")
        .with_param(param)
    }

    pub fn parameter_invalid_empty(param: &str) -> Self {
        Self::invalid(
            StatusCode::BAD_REQUEST,
            format!("You passed an empty string for '{param}'. We assume empty values are an attempt to unset a parameter; however '{param}' cannot be unset."),
        )
        .with_code("parameter_invalid_empty")
        .with_param(param)
    }

    /// A value of the wrong shape for which Stripe has no specific code (bad currency, enum value,
    /// boolean, duplicate parameter): `param` names it, `code` is absent as in Stripe's answers.
    pub fn parameter_invalid(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(StatusCode::BAD_REQUEST, message).with_param(param)
    }

    pub fn amount_too_small(param: &str) -> Self {
        Self::invalid(
            StatusCode::BAD_REQUEST,
            "This value must be greater than or equal to 1.",
        )
        .with_code("amount_too_small")
        .with_param(param)
    }

    pub fn amount_too_large(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(StatusCode::BAD_REQUEST, message)
            .with_code("amount_too_large")
            .with_param(param)
    }

    /// A malformed request that is not about one parameter (body encoding, headers).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::invalid(StatusCode::BAD_REQUEST, message)
    }

    /// An unknown object named by a parameter (400, as for an unknown `payment_method`).
    pub fn no_such_param_object(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(StatusCode::BAD_REQUEST, message)
            .with_code("resource_missing")
            .with_param(param)
    }

    /// An unknown object named by the URL path (404).
    pub fn no_such_payment_intent(id: &str) -> Self {
        Self::invalid(
            StatusCode::NOT_FOUND,
            format!("No such payment_intent: '{}'", printable(id)),
        )
        .with_code("resource_missing")
        .with_param("intent")
    }

    pub fn unrecognized_url(method: &str, path: &str) -> Self {
        Self::invalid(
            StatusCode::NOT_FOUND,
            format!("Unrecognized request URL ({method}: {}).", printable(path)),
        )
    }

    // ---- state errors (400; saved under an idempotency key, as they executed) ----

    pub fn unexpected_state(message: impl Into<String>, intent: &impl Serialize) -> Self {
        Self::invalid(StatusCode::BAD_REQUEST, message)
            .with_code("payment_intent_unexpected_state")
            .with_payment_intent(intent)
    }

    pub fn charge_already_refunded(message: impl Into<String>) -> Self {
        Self::invalid(StatusCode::BAD_REQUEST, message).with_code("charge_already_refunded")
    }

    pub fn cancel_unsupported() -> Self {
        Self::invalid(
            StatusCode::BAD_REQUEST,
            "This gateway does not support canceling PaymentIntents.",
        )
        .with_code("cancel_unsupported")
    }

    // ---- declines (402) ----

    pub fn card_declined(
        decline_code: &'static str,
        message: &str,
        intent: &impl Serialize,
    ) -> Self {
        let mut error = Self::new(StatusCode::PAYMENT_REQUIRED, ErrorType::Card, message)
            .with_code("card_declined")
            .with_payment_intent(intent);
        error.error.decline_code = Some(decline_code);
        error
    }

    // ---- idempotency ----

    pub fn idempotency_mismatch(key: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorType::Idempotency,
            format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. \
                 Try using a key other than '{}' if you meant to execute a different request.",
                printable(key)
            ),
        )
    }

    pub fn idempotency_key_in_use() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            ErrorType::Idempotency,
            "There is currently another in-progress request using this Idempotent Key \
             (that probably means you submitted twice, and the other request is still going through). \
             Please try again later.",
        )
        .with_code("idempotency_key_in_use")
    }

    // ---- injected faults ----

    pub fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::Api,
            "An unknown error occurred while processing your request.",
        )
    }

    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorType::RateLimit,
            "Too many requests hit the API too quickly. Retry after the time given in Retry-After.",
        )
        .with_code("rate_limit")
    }
}

/// Echoes client-supplied text in messages only in a bounded, printable form.
fn printable(text: &str) -> String {
    text.chars()
        .take(120)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(error: &ApiError) -> Value {
        serde_json::from_slice(&error.reply().body).unwrap_or(Value::Null)
    }

    #[test]
    fn absent_fields_are_omitted() {
        let v = body(&ApiError::parameter_missing("amount"));
        let error = &v["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], "parameter_missing");
        assert_eq!(error["param"], "amount");
        let object = error.as_object().map(|o| o.len());
        assert_eq!(object, Some(4), "{v}");
    }

    #[test]
    fn declines_carry_decline_code_and_intent() {
        let intent = serde_json::json!({"id": "pi_1", "status": "requires_payment_method"});
        let error = ApiError::card_declined(
            "insufficient_funds",
            "Your card has insufficient funds.",
            &intent,
        );
        assert_eq!(error.status, StatusCode::PAYMENT_REQUIRED);
        let v = body(&error);
        assert_eq!(v["error"]["type"], "card_error");
        assert_eq!(v["error"]["code"], "card_declined");
        assert_eq!(v["error"]["decline_code"], "insufficient_funds");
        assert_eq!(v["error"]["payment_intent"]["id"], "pi_1");
    }
}
