//! The connection settings every client of the coordinator shares: its URL and, for an
//! `https://` URL, TLS (a CA bundle, and a client certificate when the coordinator requires
//! mTLS). [`endpoint`] is the one place a tonic `Endpoint` is built from them.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How long connecting (TCP and the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS towards the coordinator (`COORDINATOR_TLS_*`, or the `--tls-*` flags); all optional.
/// Used only with an `https://` URL. (Argument ids are prefixed: payctl has a `--key-file` of its
/// own, for the API key.)
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsFiles {
    /// PEM CA bundle the coordinator's certificate must chain to (https:// only; default: the
    /// system's trusted roots).
    #[arg(
        id = "tls_ca_file",
        long = "tls-ca-file",
        env = "COORDINATOR_TLS_CA_FILE",
        value_name = "PATH",
        global = true
    )]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate chain, for a coordinator that requires client certificates
    /// (mTLS); with --tls-key-file.
    #[arg(
        id = "tls_cert_file",
        long = "tls-cert-file",
        env = "COORDINATOR_TLS_CERT_FILE",
        value_name = "PATH",
        global = true
    )]
    pub cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(
        id = "tls_key_file",
        long = "tls-key-file",
        env = "COORDINATOR_TLS_KEY_FILE",
        value_name = "PATH",
        global = true
    )]
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

const CA: &str = "COORDINATOR_TLS_CA_FILE (--tls-ca-file)";
const CERT: &str = "COORDINATOR_TLS_CERT_FILE (--tls-cert-file)";
const KEY: &str = "COORDINATOR_TLS_KEY_FILE (--tls-key-file)";

/// The endpoint of the coordinator at `url` (`http://host:port`, or `https://host:port` for
/// TLS): TLS with `tls`'s CA bundle (else the system's roots) and client certificate, if any.
/// Not connected yet: `.connect()` or `.connect_lazy()` it. TLS files with an `http://` URL are
/// refused rather than ignored.
pub fn endpoint(url: &str, tls: &TlsFiles) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad coordinator URL {url}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if !url.starts_with("https://") {
        ensure!(
            !tls.any(),
            "TLS files are given but the coordinator URL {url} is not https://"
        );
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new().timeout(CONNECT_TIMEOUT);
    config = match &tls.ca_file {
        Some(path) => config.ca_certificate(Certificate::from_pem(read_certificates(CA, path)?)),
        None => config.with_native_roots(),
    };
    config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => config.identity(Identity::from_pem(
            read_certificates(CERT, cert)?,
            read_private_key(key)?,
        )),
        (None, None) => config,
        (Some(_), None) => bail!("{CERT} is set but {KEY} is not: a client certificate needs both"),
        (None, Some(_)) => bail!("{KEY} is set but {CERT} is not: a client certificate needs both"),
    };
    endpoint
        .tls_config(config)
        .with_context(|| format!("configuring TLS towards {url}"))
}

/// The file's PEM bytes, once it is known to hold at least one certificate.
fn read_certificates(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let shown = path.display();
    let pem = std::fs::read(path).with_context(|| format!("{setting} {shown}: cannot read it"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{setting} {shown}: not a valid PEM certificate file"))?;
    ensure!(
        !certificates.is_empty(),
        "{setting} {shown}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    );
    Ok(pem)
}

/// The key file's PEM bytes, once it is known to hold a private key (the parser's error is left
/// out: it could quote part of the file).
fn read_private_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let shown = path.display();
    let pem = std::fs::read(path).with_context(|| format!("{KEY} {shown}: cannot read it"))?;
    ensure!(
        PrivateKeyDer::from_pem_slice(&pem).is_ok(),
        "{KEY} {shown}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"
    );
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_needs_no_tls_files_and_refuses_them() {
        assert!(endpoint("http://127.0.0.1:50051", &TlsFiles::default()).is_ok());
        let tls = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let error = endpoint("http://127.0.0.1:50051", &tls).unwrap_err();
        assert!(format!("{error:#}").contains("not https://"), "{error:#}");
    }

    #[test]
    fn tls_files_are_named_when_unusable() {
        let tls = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let error = format!(
            "{:#}",
            endpoint("https://127.0.0.1:50051", &tls).unwrap_err()
        );
        assert!(
            error.contains("COORDINATOR_TLS_CA_FILE") && error.contains("/nonexistent/ca.pem"),
            "{error}"
        );
        let tls = TlsFiles {
            cert_file: Some("/nonexistent/client.pem".into()),
            ..TlsFiles::default()
        };
        let error = format!(
            "{:#}",
            endpoint("https://127.0.0.1:50051", &tls).unwrap_err()
        );
        assert!(error.contains("COORDINATOR_TLS_KEY_FILE"), "{error}");
    }
}
