//! A finished JSON answer: what the idempotency store saves and replays byte for byte.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        // Our own types always serialize; the fallback only keeps this path free of panics.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| {
            br#"{"error":{"type":"api_error","message":"The simulator could not encode its answer."}}"#.to_vec()
        });
        Self {
            status,
            body: Bytes::from(body),
        }
    }

    pub fn ok(value: &impl Serialize) -> Self {
        Self::json(StatusCode::OK, value)
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}
