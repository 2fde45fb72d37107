//! TLS and mTLS on the gRPC port (issue 8): `TLS_CERT_FILE` / `TLS_KEY_FILE` make the port serve
//! TLS only, `TLS_CLIENT_CA_FILE` makes every client present a certificate signed by that CA,
//! and `HEALTH_LISTEN` serves `grpc.health.v1` alone in plain text for probes. Clients connect
//! through `payments_client::endpoint` (`COORDINATOR_TLS_*`), as payctl and booking-sim do.
//!
//! A throwaway CA (rcgen) signs the server's certificate (127.0.0.1, localhost) and a client's;
//! an unrelated CA signs a second client's, which must be refused.

use std::path::PathBuf;

use booking_sim::watch::{TlsFiles, WatchClient, endpoint};
use clap::Parser;
use coordinator::{config::Settings, server::Application};
use integration_tests::checks::{GUARD, charges, wait_for};
use integration_tests::coordinator::{OPERATOR, TestEnv, key_for};
use integration_tests::payctl::Payctl;
use integration_tests::process::{CoordinatorProcess, coordinator_binary};
use payments_proto::v1 as pb;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

/// The certificates and keys of one test, as PEM files in a directory of its own.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA with a server certificate (127.0.0.1, localhost) and a client certificate, and an
    /// unrelated CA with a client certificate of its own.
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tls-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Pki { dir };
        let ca = pki.ca("ca", "payments test CA");
        pki.leaf(&ca, "server", ExtendedKeyUsagePurpose::ServerAuth);
        pki.leaf(&ca, "client", ExtendedKeyUsagePurpose::ClientAuth);
        let rogue = pki.ca("rogue-ca", "unrelated CA");
        pki.leaf(&rogue, "rogue", ExtendedKeyUsagePurpose::ClientAuth);
        pki
    }

    fn ca(&self, file: &str, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
        std::fs::write(self.path(&format!("{file}.pem")), issuer.pem()).expect("write ca");
        issuer
    }

    fn leaf(
        &self,
        ca: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages.push(usage);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, ca).expect("sign leaf");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `path(file)` as a command-line argument.
    fn arg(&self, file: &str) -> String {
        self.path(file).to_string_lossy().into_owned()
    }

    /// The coordinator's TLS flags; with `mtls`, clients must present a certificate of `ca`.
    fn server_args(&self, mtls: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-cert-file".to_owned(),
            self.arg("server.pem"),
            "--tls-key-file".to_owned(),
            self.arg("server.key"),
        ];
        if mtls {
            args.extend(["--tls-client-ca-file".to_owned(), self.arg("ca.pem")]);
        }
        args
    }

    /// A client trusting the test CA, presenting the certificate `client` (`client`, `rogue`) or
    /// none.
    fn client(&self, client: Option<&str>) -> TlsFiles {
        TlsFiles {
            ca_file: Some(self.path("ca.pem")),
            cert_file: client.map(|name| self.path(&format!("{name}.pem"))),
            key_file: client.map(|name| self.path(&format!("{name}.key"))),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn str_args(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Why a client did not get its answer (its fields are read through `Debug`, in failures).
#[derive(Debug)]
#[allow(dead_code)]
enum Failure {
    /// The client's own configuration (unreadable files).
    Setup(String),
    /// The connection (TCP, TLS handshake, HTTP/2) failed before any call.
    Connect(tonic::transport::Error),
    /// The call failed: a status the server sent, or one the client made of a broken connection.
    Call(tonic::Status),
}

impl Failure {
    /// Refused by the transport (the TLS handshake, or a connection the server closed because of
    /// it), not by the coordinator's own layers: either no connection at all, or a call whose
    /// status the client made of a broken connection (its source is the transport error; one
    /// the server sent, such as `UNAUTHENTICATED` from the auth layer, has no source and carries
    /// an `ErrorInfo`).
    fn is_transport_refusal(&self) -> bool {
        match self {
            Failure::Setup(_) => false,
            Failure::Connect(_) => true,
            Failure::Call(status) => {
                let made_by_the_client = std::error::Error::source(status)
                    .is_some_and(|source| source.is::<tonic::transport::Error>());
                made_by_the_client
                    && matches!(
                        status.code(),
                        tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
                    )
                    && tonic_types::StatusExt::get_details_error_info(status).is_none()
            }
        }
    }
}

/// Asserts that `result` is a refusal by the transport (see `Failure::is_transport_refusal`).
#[track_caller]
fn assert_transport_refusal<T: std::fmt::Debug>(result: &Result<T, Failure>, what: &str) {
    match result {
        Err(failure) if failure.is_transport_refusal() => {}
        other => panic!("{what}: not refused by the transport: {other:?}"),
    }
}

/// `grpc.health.v1.Health/Check` of the whole server at `url`.
async fn health(url: &str, tls: &TlsFiles) -> Result<ServingStatus, Failure> {
    let channel = endpoint(url, tls)
        .map_err(|e| Failure::Setup(format!("{e:#}")))?
        .connect()
        .await
        .map_err(Failure::Connect)?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(Failure::Call)?;
    Ok(reply.into_inner().status())
}

/// A paid order (waiting for the outcome) through `url` as the operator.
async fn pay(url: &str, tls: &TlsFiles, order_id: &str) -> Result<pb::Order, Failure> {
    let channel = endpoint(url, tls)
        .map_err(|e| Failure::Setup(format!("{e:#}")))?
        .connect()
        .await
        .map_err(Failure::Connect)?;
    let client = WatchClient::with_channel(channel, &key_for(OPERATOR))
        .map_err(|e| Failure::Setup(e.to_string()))?;
    let request = pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 1250,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cust-tls".to_owned(),
        payment_method: "pm_card_visa".to_owned(),
        items: vec![],
        idempotency_key: format!("key-{order_id}"),
        wait_for_outcome: true,
    };
    let reply = client
        .client()
        .process_payment(request)
        .await
        .map_err(Failure::Call)?;
    reply
        .into_inner()
        .order
        .ok_or_else(|| Failure::Setup("no order in the answer".to_owned()))
}

/// A `Health/Watch` stream of the overall health in plain text at `url`.
async fn watch_health(url: &str) -> tonic::Streaming<HealthCheckResponse> {
    let channel = endpoint(url, &TlsFiles::default())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the health port");
    HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner()
}

/// The next status a health watch reports; `None` once the stream has ended.
async fn next_health(stream: &mut tonic::Streaming<HealthCheckResponse>) -> Option<ServingStatus> {
    match tokio::time::timeout(GUARD, stream.message()).await {
        Ok(Ok(Some(reply))) => Some(reply.status()),
        Ok(Ok(None)) => None,
        Ok(Err(status)) => panic!("the health watch failed: {status:?}"),
        Err(_) => panic!("the health watch said nothing"),
    }
}

/// The health port's address, from the line the coordinator logs when it listens.
async fn logged_health_addr(process: &CoordinatorProcess) -> String {
    wait_for("the health port's address is logged", async || {
        process
            .log_text()
            .lines()
            .find(|line| line.contains("health port"))
            .and_then(|line| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix("addr="))
            })
            .map(str::to_owned)
    })
    .await
}

/// The real binary with mTLS and a plain-text health port: only clients with a certificate of
/// the configured CA get through (health, a payment, payctl); the health port answers probes in
/// plain text and follows the graceful shutdown (NOT_SERVING first, then closed).
#[tokio::test]
async fn mtls_on_the_real_binary() {
    let pki = Pki::new("mtls");
    let env = TestEnv::new().await;
    // Port 0: the coordinator binds it and logs the address (no free port to race for).
    let mut args = pki.server_args(true);
    args.extend(["--health-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let mut process = CoordinatorProcess::spawn(&env, "tls-1", &str_args(&args)).await;
    let url = format!("https://{}", process.addr);
    let health_listen = logged_health_addr(&process).await;

    // A client with a certificate signed by TLS_CLIENT_CA_FILE: health and a payment over TLS.
    let valid = pki.client(Some("client"));
    assert_eq!(
        health(&url, &valid).await.map_err(|f| format!("{f:?}")),
        Ok(ServingStatus::Serving),
        "log:\n{}",
        process.log_text()
    );
    let order = pay(&url, &valid, "tls-paid").await.expect("paid over mTLS");
    assert_eq!(order.state(), pb::OrderState::Paid);
    assert_eq!(charges(&env, "tls-paid").await, 1);

    // Without a client certificate, with one of an unrelated CA, or in plain text: refused
    // before any call reaches the coordinator.
    let anonymous = pki.client(None);
    let rogue = pki.client(Some("rogue"));
    assert_transport_refusal(&health(&url, &anonymous).await, "no client certificate");
    assert_transport_refusal(
        &pay(&url, &anonymous, "tls-anonymous").await,
        "no client certificate",
    );
    assert_transport_refusal(&health(&url, &rogue).await, "unrelated CA");
    assert_transport_refusal(&pay(&url, &rogue, "tls-rogue").await, "unrelated CA");
    let plain_url = format!("http://{}", process.addr);
    assert_transport_refusal(
        &health(&plain_url, &TlsFiles::default()).await,
        "plain text to the TLS port",
    );
    assert_eq!(charges(&env, "tls-anonymous").await, 0);
    assert_eq!(charges(&env, "tls-rogue").await, 0);

    // payctl over mTLS with the flags; without a client certificate it cannot get through.
    let payctl = Payctl::new(&url, OPERATOR);
    let tls_flags = [
        "--tls-ca-file",
        &pki.arg("ca.pem"),
        "--tls-cert-file",
        &pki.arg("client.pem"),
        "--tls-key-file",
        &pki.arg("client.key"),
    ]
    .map(str::to_owned);
    let mut get = str_args(&tls_flags);
    get.extend(["get", "tls-paid"]);
    let out = payctl.run(&get).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("tls-paid") && out.stdout.contains("PAID"),
        "{}",
        out.all()
    );
    let out = payctl
        .run(&["--tls-ca-file", &pki.arg("ca.pem"), "get", "tls-paid"])
        .await;
    assert_eq!(
        out.code,
        Some(4),
        "without a client certificate: {}",
        out.all()
    );

    // The health port: plain text, health only, the same state as the main port.
    let health_url = format!("http://{health_listen}");
    assert_eq!(
        health(&health_url, &TlsFiles::default())
            .await
            .map_err(|f| format!("{f:?}")),
        Ok(ServingStatus::Serving)
    );
    let mut watch = watch_health(&health_url).await;
    assert_eq!(next_health(&mut watch).await, Some(ServingStatus::Serving));

    // SIGTERM: the health port says NOT_SERVING first, its watch ends, the process exits 0.
    process.terminate();
    assert_eq!(
        next_health(&mut watch).await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(next_health(&mut watch).await, None);
    let status = process.wait_exit().await;
    assert!(status.success(), "{status:?}\n{}", process.log_text());
    assert!(health(&health_url, &TlsFiles::default()).await.is_err());
    env.cleanup().await;
}

/// TLS without TLS_CLIENT_CA_FILE: any client trusting the server's CA gets through without a
/// certificate; plain text is still refused (the port serves TLS only).
#[tokio::test]
async fn tls_without_client_certificates() {
    let pki = Pki::new("server-only");
    let env = TestEnv::new().await;
    let replica = env
        .replica("tls-2", &str_args(&pki.server_args(false)))
        .await;
    let url = replica.url.replacen("http://", "https://", 1);

    assert_eq!(
        health(&url, &pki.client(None))
            .await
            .map_err(|f| format!("{f:?}")),
        Ok(ServingStatus::Serving)
    );
    let order = pay(&url, &pki.client(None), "tls-open")
        .await
        .expect("paid over TLS without a client certificate");
    assert_eq!(order.state(), pb::OrderState::Paid);
    // A client that does not trust the server's CA (the system's roots only) is refused.
    let untrusted = TlsFiles {
        ca_file: Some(pki.path("rogue-ca.pem")),
        ..TlsFiles::default()
    };
    assert_transport_refusal(&health(&url, &untrusted).await, "untrusted server");
    assert_transport_refusal(
        &health(&replica.url, &TlsFiles::default()).await,
        "plain text to the TLS port",
    );
    replica.stop().await;
    env.cleanup().await;
}

/// Start-up refuses a half TLS setup or unusable files, naming the setting and the file:
/// the real binary with TLS_CERT_FILE alone, and the in-process build for the other cases.
#[tokio::test]
async fn start_up_refuses_a_bad_tls_setup() {
    let pki = Pki::new("refusals");
    let env = TestEnv::new().await;

    // The binary, configured through the environment as in a pod.
    let args = env.args("tls-half", &[], true);
    let output = tokio::time::timeout(
        GUARD,
        tokio::process::Command::new(coordinator_binary())
            .args(&args[1..])
            .env("TLS_CERT_FILE", pki.path("server.pem"))
            .env_remove("TLS_KEY_FILE")
            .env_remove("TLS_CLIENT_CA_FILE")
            .env_remove("HEALTH_LISTEN")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the coordinator exits")
    .expect("run the coordinator");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started with half a TLS setup");
    assert!(
        stderr.contains(
            "TLS_CERT_FILE (--tls-cert-file) is set but TLS_KEY_FILE (--tls-key-file) is not"
        ),
        "{stderr}"
    );

    let refusal = async |extra: &[&str]| -> String {
        let settings =
            Settings::try_parse_from(env.args("tls-bad", extra, true)).expect("settings parse");
        match Application::build(&settings).await {
            Ok(_) => panic!("started with {extra:?}"),
            Err(error) => format!("{error:#}"),
        }
    };
    let message = refusal(&["--tls-client-ca-file", &pki.arg("ca.pem")]).await;
    assert!(
        message.starts_with("TLS_CLIENT_CA_FILE") && message.contains("TLS_CERT_FILE"),
        "{message}"
    );
    let missing = pki.arg("missing.pem");
    let message = refusal(&[
        "--tls-cert-file",
        &pki.arg("server.pem"),
        "--tls-key-file",
        &missing,
    ])
    .await;
    assert!(
        message.contains("TLS_KEY_FILE") && message.contains(&missing),
        "{message}"
    );
    // A key that is not the certificate's: refused at start, not at the first handshake; the
    // key's contents never appear.
    let message = refusal(&[
        "--tls-cert-file",
        &pki.arg("server.pem"),
        "--tls-key-file",
        &pki.arg("rogue.key"),
    ])
    .await;
    assert!(
        message.contains("TLS_CERT_FILE") && message.contains("rogue.key"),
        "{message}"
    );
    let key = std::fs::read_to_string(pki.path("rogue.key")).expect("key");
    let body = key.lines().nth(1).expect("a PEM body line");
    assert!(!message.contains(body), "{message}");
    // The CA is not a usable certificate chain for the server: it is not a key file either.
    let message = refusal(&[
        "--tls-cert-file",
        &pki.arg("server.pem"),
        "--tls-key-file",
        &pki.arg("ca.pem"),
    ])
    .await;
    assert!(
        message.contains("TLS_KEY_FILE") && message.contains("no PEM private key"),
        "{message}"
    );
    env.cleanup().await;
}
