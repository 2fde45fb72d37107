//! The console's settings: each a flag and an environment variable, parsed once at start.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use axum_extra::extract::cookie::Key;
use payments_client::TlsFiles;

/// `console --help` lists these.
#[derive(Clone, clap::Parser)]
#[command(
    name = "console",
    about = "The web operator console of the payment coordinator"
)]
pub struct Settings {
    /// Address the console serves HTTP on (port 0: any free port; the bound address is printed).
    #[arg(long, env = "CONSOLE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The coordinator's gRPC URL (`https://` for TLS, with the --tls-* files).
    #[arg(
        long,
        env = "COORDINATOR_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator_url: String,

    #[command(flatten)]
    pub tls: TlsFiles,

    /// Key encrypting the session cookies: 64 bytes or more, as hex or base64. Default: a random
    /// key per start (every session ends when the console restarts). Prefer the environment
    /// variable: a flag shows in the process list.
    #[arg(long, env = "CONSOLE_SESSION_KEY", hide_env_values = true)]
    pub session_key: Option<String>,

    /// Mark the session cookie `Secure` (when the console is served behind https).
    #[arg(long, env = "CONSOLE_SECURE_COOKIE")]
    pub secure_cookie: bool,
}

impl Settings {
    /// The cookie key: the configured one, or a fresh random one.
    pub fn cookie_key(&self) -> anyhow::Result<Key> {
        let Some(text) = self.session_key.as_deref() else {
            return Ok(Key::generate());
        };
        let bytes = decode_key(text.trim()).context(
            "CONSOLE_SESSION_KEY (--session-key) is neither hex nor base64 of 64 bytes or more",
        )?;
        Key::try_from(bytes.as_slice()).map_err(|_| {
            anyhow::anyhow!(
                "CONSOLE_SESSION_KEY (--session-key) has {} bytes: it needs 64 or more",
                bytes.len()
            )
        })
    }
}

fn decode_key(text: &str) -> anyhow::Result<Vec<u8>> {
    // Hex first (a long hex string is also valid base64, of other bytes).
    if let Ok(bytes) = hex::decode(text)
        && bytes.len() >= 64
    {
        return Ok(bytes);
    }
    match base64_decode(text) {
        Some(bytes) => Ok(bytes),
        None => bail!("not hex or base64"),
    }
}

/// Standard or URL-safe base64, padded or not.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::{
        Engine as _,
        engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD},
    };
    let text = text.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults() {
        let s = Settings::try_parse_from(["console"]).expect("parse");
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.coordinator_url, "http://127.0.0.1:50051");
        assert!(s.session_key.is_none());
        assert!(!s.secure_cookie);
        assert!(s.cookie_key().is_ok());
    }

    #[test]
    fn session_keys_in_hex_and_base64() {
        let hex_key = "ab".repeat(64);
        let s = Settings::try_parse_from(["console", "--session-key", &hex_key]).expect("parse");
        assert!(s.cookie_key().is_ok());
        // 66 bytes of base64 ("QUJD" = "ABC").
        let b64 = "QUJD".repeat(22);
        assert_eq!(base64_decode(&b64).map(|b| b.len()), Some(66));
        let s = Settings::try_parse_from(["console", "--session-key", &b64]).expect("parse");
        assert!(s.cookie_key().is_ok());
        let short = Settings::try_parse_from(["console", "--session-key", "abcd"]).expect("parse");
        assert!(short.cookie_key().is_err());
        assert_eq!(base64_decode("TWFu"), Some(b"Man".to_vec()));
        assert_eq!(base64_decode("TWE="), Some(b"Ma".to_vec()));
        assert_eq!(base64_decode("T!"), None);
    }
}
