//! The session: one encrypted (`PrivateCookieJar`: AES-GCM with the console's key) cookie
//! `console_session`, `HttpOnly; SameSite=Strict; Path=/` (and `Secure` behind https), holding
//! the operator's API key, a random CSRF token, and who the key is (`GetCaller` at sign-in: its
//! id and role, so pages can say "you" and offer only what the role may do; the API still
//! decides). The key never appears in a URL, a page or a log; `Session` has no `Debug`.
//!
//! "Must be signed in" is one rule, in the [`Session`] extractor: a handler that takes a
//! `Session` is only reached signed in; otherwise the browser is sent (303) to `/signin`.

use axum::{
    extract::{FromRef, FromRequestParts},
    http::request::Parts,
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::cookie::{Cookie, Key, PrivateCookieJar, SameSite};
use payments_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::app::AppState;

pub const COOKIE: &str = "console_session";

/// The signed-in operator.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "k")]
    api_key: String,
    #[serde(rename = "t")]
    csrf_token: String,
    /// The key's id ("" when the coordinator could not say).
    #[serde(rename = "i", default)]
    caller_id: String,
    /// `pb::CallerRole` as a number (0: unknown).
    #[serde(rename = "r", default)]
    role: i32,
}

impl Session {
    /// A new session for `api_key`, who `caller` says it is, with a fresh CSRF token.
    pub fn new(api_key: String, caller: Option<pb::Caller>) -> Session {
        let token: [u8; 32] = rand::random();
        let caller = caller.unwrap_or_default();
        Session {
            api_key,
            csrf_token: hex::encode(token),
            caller_id: caller.id,
            role: caller.role,
        }
    }

    /// The key's id, if the coordinator said it.
    pub fn caller_id(&self) -> Option<&str> {
        (!self.caller_id.is_empty()).then_some(self.caller_id.as_str())
    }

    /// The key's role (`Unspecified` when unknown).
    pub fn role(&self) -> pb::CallerRole {
        pb::CallerRole::try_from(self.role).unwrap_or(pb::CallerRole::Unspecified)
    }

    /// Whether to offer what only `roles` may do: yes for them, and when the role is unknown (the
    /// API refuses in words what the key may not do).
    pub fn may(&self, roles: &[pb::CallerRole]) -> bool {
        let role = self.role();
        role == pb::CallerRole::Unspecified || roles.contains(&role)
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    pub fn csrf_token(&self) -> &str {
        &self.csrf_token
    }

    /// Whether a form's `csrf_token` is this session's (compared in constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        !token.is_empty() && bool::from(token.as_bytes().ct_eq(self.csrf_token.as_bytes()))
    }

    /// The cookie carrying this session (encrypted when added to a `PrivateCookieJar`).
    pub fn cookie(&self, secure: bool) -> Cookie<'static> {
        // Serializing four strings and a number cannot fail; an empty value reads as signed out.
        let value = serde_json::to_string(self).unwrap_or_default();
        Cookie::build((COOKIE, value))
            .http_only(true)
            .same_site(SameSite::Strict)
            .path("/")
            .secure(secure)
            .build()
    }

    fn from_cookie_value(value: &str) -> Option<Session> {
        let session: Session = serde_json::from_str(value).ok()?;
        if session.csrf_token.is_empty() || session.api_key.is_empty() {
            return None;
        }
        Some(session)
    }

    /// The session in `jar`, if it holds a valid one.
    pub fn from_jar(jar: &PrivateCookieJar) -> Option<Session> {
        jar.get(COOKIE)
            .and_then(|cookie| Session::from_cookie_value(cookie.value()))
    }
}

/// A jar with the session cookie removed (sign-out).
pub fn signed_out(jar: PrivateCookieJar) -> PrivateCookieJar {
    jar.remove(Cookie::build(COOKIE).path("/"))
}

/// Not signed in: 303 to the sign-in page.
pub struct SignInFirst;

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        Redirect::to("/signin").into_response()
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = SignInFirst;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Session, SignInFirst> {
        let jar = PrivateCookieJar::<Key>::from_headers(&parts.headers, Key::from_ref(state));
        Session::from_jar(&jar).ok_or(SignInFirst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_strict_http_only_and_round_trips() {
        let caller = pb::Caller {
            id: "op:alice".to_owned(),
            role: pb::CallerRole::Reviewer.into(),
        };
        let session = Session::new("pk_test_secret".to_owned(), Some(caller));
        let cookie = session.cookie(false);
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(SameSite::Strict));
        assert_eq!(cookie.path(), Some("/"));
        assert_eq!(cookie.secure(), Some(false));
        assert_eq!(session.cookie(true).secure(), Some(true));
        let back = Session::from_cookie_value(cookie.value()).expect("parses");
        assert_eq!(back.api_key(), "pk_test_secret");
        assert_eq!(back.csrf_token(), session.csrf_token());
        assert_eq!(back.caller_id(), Some("op:alice"));
        assert_eq!(back.role(), pb::CallerRole::Reviewer);
        assert!(back.may(&[pb::CallerRole::Reviewer, pb::CallerRole::Admin]));
        assert!(!back.may(&[pb::CallerRole::Admin]));
        // Who the key is unknown: everything is offered, the API decides.
        let unknown = Session::new("k".to_owned(), None);
        assert_eq!(unknown.caller_id(), None);
        assert!(unknown.may(&[pb::CallerRole::Admin]));
    }

    #[test]
    fn the_cookie_is_encrypted_in_the_jar() {
        let key = Key::generate();
        let session = Session::new("pk_test_secret".to_owned(), None);
        let jar = PrivateCookieJar::new(key.clone()).add(session.cookie(false));
        let back = Session::from_jar(&jar).expect("decrypts");
        assert_eq!(back.api_key(), "pk_test_secret");
        // Another console's key cannot read it.
        let other = PrivateCookieJar::new(Key::generate());
        assert!(Session::from_jar(&other).is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let session = Session::new("k".to_owned(), None);
        assert_eq!(session.csrf_token().len(), 64);
        assert!(session.csrf_matches(session.csrf_token()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches("00"));
        assert!(!session.csrf_matches(&"0".repeat(64)));
        assert!(Session::from_cookie_value("nokey").is_none());
        assert!(Session::from_cookie_value(r#"{"k":"","t":"t"}"#).is_none());
        assert!(Session::from_cookie_value(r#"{"k":"k","t":""}"#).is_none());
        assert!(Session::from_cookie_value(r#"{"k":"k","t":"t"}"#).is_some());
    }
}
