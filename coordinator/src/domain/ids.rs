//! Identifiers: order, customer and product ids, and the caller's idempotency key.
//!
//! Each type can only be built by `parse`, so the rest of the coordinator never re-checks strings.

use std::fmt;

/// Longest order, customer or product id, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// Longest idempotency key, in characters.
pub const MAX_REQUEST_KEY_CHARS: usize = 255;
/// Longest idempotency key, in bytes (UTF-8), whatever its characters.
pub const MAX_REQUEST_KEY_BYTES: usize = 1024;

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// 1–64 characters of `[A-Za-z0-9._:-]`. The error names the first bad position, never quotes it.
fn check_identifier(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is required (1–64 characters of [A-Za-z0-9._:-])".to_owned());
    }
    if let Some(pos) = value.chars().position(|c| !is_id_char(c)) {
        return Err(format!(
            "may only contain the characters [A-Za-z0-9._:-]; character {} is not one of them",
            pos + 1
        ));
    }
    // Every accepted character is ASCII, so bytes are characters here.
    if value.len() > MAX_ID_CHARS {
        return Err(format!(
            "is {} characters long; at most {MAX_ID_CHARS} are allowed",
            value.len()
        ));
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1–64 characters of `[A-Za-z0-9._:-]`; the error is a description for a
            /// field violation.
            pub fn parse(value: impl Into<String>) -> Result<Self, String> {
                let value = value.into();
                check_identifier(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

identifier!(
    /// The caller's order id (`order_id`): one order is charged at most once.
    OrderId
);
identifier!(
    /// The caller's customer id (`customer_id`).
    CustomerId
);
identifier!(
    /// A line item's product id (`items[i].product_id`).
    ProductId
);

/// The caller's `idempotency_key`: 1–255 printable characters (Unicode welcome, no control
/// characters), at most 1024 bytes. Not secret, but opaque: it is compared, never interpreted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey(String);

impl RequestKey {
    pub fn parse(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        if value.is_empty() {
            return Err("is required (1–255 printable characters)".to_owned());
        }
        if value.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        let chars = value.chars().count();
        if chars > MAX_REQUEST_KEY_CHARS {
            return Err(format!(
                "is {chars} characters long; at most {MAX_REQUEST_KEY_CHARS} are allowed"
            ));
        }
        if value.len() > MAX_REQUEST_KEY_BYTES {
            return Err(format!(
                "is {} bytes long in UTF-8; at most {MAX_REQUEST_KEY_BYTES} are allowed",
                value.len()
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RequestKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_accept_1_to_64_allowed_characters() {
        assert!(OrderId::parse("a").is_ok());
        assert!(OrderId::parse("ORD-2024.01_x:7").is_ok());
        assert!(OrderId::parse("x".repeat(64)).is_ok());
        let id = CustomerId::parse("cus_42").unwrap();
        assert_eq!(id.as_str(), "cus_42");
        assert_eq!(id.to_string(), "cus_42");
        assert!(ProductId::parse("sku-1").is_ok());
    }

    #[test]
    fn identifiers_refuse_empty_long_and_bad_characters() {
        assert!(OrderId::parse("").unwrap_err().contains("required"));
        assert!(OrderId::parse("x".repeat(65)).unwrap_err().contains("65"));
        for bad in [
            "a b",
            "a/b",
            "é",
            "a\n",
            "a\0",
            "a#",
            "ü".repeat(10).as_str(),
        ] {
            assert!(OrderId::parse(bad).is_err(), "{bad:?} accepted");
            assert!(CustomerId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(OrderId::parse("ab c").unwrap_err().contains("character 3"));
    }

    #[test]
    fn request_keys_are_printable_and_bounded() {
        assert!(RequestKey::parse("k").is_ok());
        assert!(RequestKey::parse("clé de requête 🔑 with spaces").is_ok());
        assert!(RequestKey::parse("k".repeat(255)).is_ok());
        assert!(RequestKey::parse("é".repeat(255)).is_ok());
        assert!(RequestKey::parse("🔑".repeat(255)).is_ok()); // 1020 bytes
        assert!(RequestKey::parse("").is_err());
        assert!(RequestKey::parse("k".repeat(256)).is_err());
        assert!(RequestKey::parse("é".repeat(256)).is_err());
        assert!(RequestKey::parse("a\tb").is_err());
        assert!(RequestKey::parse("a\u{7f}").is_err());
        assert!(RequestKey::parse("a\u{85}").is_err());
        assert_eq!(RequestKey::parse("k-1").unwrap().as_str(), "k-1");
    }
}
