//! TLS on the gRPC port (`TLS_CERT_FILE`, `TLS_KEY_FILE`) and client certificates (mTLS,
//! `TLS_CLIENT_CA_FILE`). The files are read and checked once, at start-up, so that a bad
//! setting stops the replica before it listens, with the setting and the file named; plain text
//! stays the default for a developer's machine.
//!
//! tonic does the handshake itself (rustls with aws-lc-rs, the workspace's only provider) on
//! every connection the accept stream yields, the custom `Incoming` of `server.rs` included.
//! The private key is never logged nor put in an error message: only its path is.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::Settings;

/// How long a client may take over its handshake: a connection that never finishes it would
/// otherwise hold a task of the accept loop forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const CERT: &str = "TLS_CERT_FILE (--tls-cert-file)";
const KEY: &str = "TLS_KEY_FILE (--tls-key-file)";
const CLIENT_CA: &str = "TLS_CLIENT_CA_FILE (--tls-client-ca-file)";

/// Why the TLS settings cannot be used; each names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{present} is set but {missing} is not: serving TLS needs both the certificate chain and \
         its private key (set neither for plain text)"
    )]
    Incomplete {
        present: &'static str,
        missing: &'static str,
    },
    #[error(
        "{CLIENT_CA} is set but {CERT} is not: requiring client certificates (mTLS) needs TLS on \
         the port (set TLS_CERT_FILE and TLS_KEY_FILE too)"
    )]
    ClientCaWithoutTls,
    #[error("{setting} {}: cannot read it: {source}", path.display())]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{setting} {}: {problem}", path.display())]
    Invalid {
        setting: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "{CERT} {} with {KEY} {}: rustls refuses them (does the key match the certificate?)",
        cert.display(),
        key.display()
    )]
    Refused {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The gRPC port's TLS, checked: the server's identity and, with mTLS, the client CA.
#[derive(Clone)]
pub struct ServerTls {
    config: ServerTlsConfig,
    mutual: bool,
}

impl ServerTls {
    /// `None`: plain text (neither TLS_CERT_FILE nor TLS_KEY_FILE set).
    pub fn from_settings(settings: &Settings) -> Result<Option<ServerTls>, TlsError> {
        let (cert, key) = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (None, None) if settings.tls_client_ca_file.is_some() => {
                return Err(TlsError::ClientCaWithoutTls);
            }
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(TlsError::Incomplete {
                    present: CERT,
                    missing: KEY,
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete {
                    present: KEY,
                    missing: CERT,
                });
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        let cert_pem = read_certificates(CERT, cert)?;
        let key_pem = read_private_key(key)?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &settings.tls_client_ca_file {
            // Without `client_auth_optional`, a client without a certificate signed by this CA
            // is refused during the handshake.
            config =
                config.client_ca_root(Certificate::from_pem(read_certificates(CLIENT_CA, ca)?));
        }
        // Build the acceptor once now, so that a key that does not match its certificate (or a
        // CA rustls cannot use) stops the start rather than the first connection.
        Server::builder()
            .tls_config(config.clone())
            .map_err(|source| TlsError::Refused {
                cert: cert.clone(),
                key: key.clone(),
                source,
            })?;
        Ok(Some(ServerTls {
            config,
            mutual: settings.tls_client_ca_file.is_some(),
        }))
    }

    /// Whether every client must present a certificate signed by TLS_CLIENT_CA_FILE.
    pub fn mutual(&self) -> bool {
        self.mutual
    }
}

/// The gRPC server builder: TLS only when configured, plain text otherwise.
pub fn server_builder(tls: Option<&ServerTls>) -> Result<Server, tonic::transport::Error> {
    match tls {
        Some(tls) => Server::builder().tls_config(tls.config.clone()),
        None => Ok(Server::builder()),
    }
}

/// The file's PEM bytes, once it is known to hold at least one certificate and nothing
/// malformed.
fn read_certificates(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(setting, path)?;
    let invalid = |problem: String| TlsError::Invalid {
        setting,
        path: path.to_owned(),
        problem,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a valid PEM certificate file: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(pem)
}

/// The key file's PEM bytes, once it is known to hold a private key. The parser's own error is
/// left out: it could quote part of the file.
fn read_private_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(KEY, path)?;
    if PrivateKeyDer::from_pem_slice(&pem).is_err() {
        return Err(TlsError::Invalid {
            setting: KEY,
            path: path.to_owned(),
            problem: "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
        });
    }
    Ok(pem)
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        setting,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec!["coordinator"];
        argv.extend_from_slice(args);
        Settings::try_parse_from(argv).expect("settings parse")
    }

    fn refusal(args: &[&str]) -> String {
        match ServerTls::from_settings(&settings(args)) {
            Ok(_) => panic!("{args:?} accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn plain_text_is_the_default() {
        assert!(ServerTls::from_settings(&settings(&[])).unwrap().is_none());
    }

    #[test]
    fn half_a_setup_is_refused_naming_the_missing_setting() {
        let message = refusal(&["--tls-cert-file", "/nonexistent/cert.pem"]);
        assert!(
            message.starts_with("TLS_CERT_FILE")
                && message.contains("TLS_KEY_FILE (--tls-key-file) is not"),
            "{message}"
        );
        let message = refusal(&["--tls-key-file", "/nonexistent/key.pem"]);
        assert!(
            message.contains("TLS_CERT_FILE (--tls-cert-file) is not"),
            "{message}"
        );
        let message = refusal(&["--tls-client-ca-file", "/nonexistent/ca.pem"]);
        assert!(message.starts_with("TLS_CLIENT_CA_FILE"), "{message}");
    }

    #[test]
    fn unreadable_and_empty_files_are_named() {
        let message = refusal(&[
            "--tls-cert-file",
            "/nonexistent/cert.pem",
            "--tls-key-file",
            "/nonexistent/key.pem",
        ]);
        assert!(
            message.contains("TLS_CERT_FILE") && message.contains("/nonexistent/cert.pem"),
            "{message}"
        );
        let dir = std::env::temp_dir().join(format!("coordinator-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let empty = empty.to_string_lossy().into_owned();
        let message = refusal(&["--tls-cert-file", &empty, "--tls-key-file", &empty]);
        assert!(
            message.contains("TLS_CERT_FILE") && message.contains("no PEM certificate"),
            "{message}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
