//! Secrets never leak: the real coordinator and the real gateway simulator run as processes with
//! every log line captured at the most verbose level (`RUST_LOG=trace`), and the test drives
//! payments (paid, declined), refused card numbers, a wrong API key and a refund with
//! recognisable secrets. No captured line of either process holds a plaintext API key, the
//! gateway's secret key or a refused card number in any shape; no answer to the client quotes a
//! card number either.
//!
//! The processes are spawned here rather than through `process.rs` (which fixes `RUST_LOG` at
//! info): what is under test is exactly the logging configuration an operator may turn up.
//! `scripts/test.sh` builds both binaries first.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use integration_tests::{
    checks::{reason, wait_for},
    coordinator::{ADMIN, Client, OPERATOR, REVIEWER, TestEnv, client, key_for},
    process::coordinator_binary,
};
use payments_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

/// The gateway's secret key, known to the simulator and the coordinator only.
const GATEWAY_SECRET: &str = "sk_test_SECRETMARKER_5b1f9e";
/// A caller's key that is in no keys file.
const WRONG_KEY: &str = "pk_test_WRONGKEY_c0ffee_1d2c3b";
/// Card numbers a careless caller sends as the payment method, or writes into free text.
const CARDS: &[&str] = &["4242424242424242", "4000056655665556"];

/// A card number in the shapes it is typed in: digits only, spaced and dashed in groups of 4.
fn shapes(card: &str) -> Vec<String> {
    let groups: Vec<&str> = (0..card.len())
        .step_by(4)
        .map(|i| &card[i..(i + 4).min(card.len())])
        .collect();
    vec![card.to_owned(), groups.join(" "), groups.join("-")]
}

/// `target/debug/booking-sim`, next to the coordinator binary.
fn booking_sim_binary() -> PathBuf {
    let binary = coordinator_binary().with_file_name("booking-sim");
    assert!(
        binary.exists(),
        "the booking-sim binary {} is missing: build it first with \
         `cargo build -p booking-sim --bins` (scripts/test.sh does)",
        binary.display()
    );
    binary
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A child process whose stdout and stderr both go to one log file.
struct Logged {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Logged {
    /// Starts `binary` and waits until it accepts connections on `addr`.
    async fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[String],
        env: &[(&str, &str)],
        addr: SocketAddr,
    ) -> Self {
        let log = std::env::temp_dir().join(format!(
            "secrets-{name}-{}-{}.log",
            addr.port(),
            std::process::id()
        ));
        let out = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(binary);
        command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn");
        let mut process = Logged { name, child, log };
        wait_for(&format!("{name} listens on {addr}"), async || {
            if let Some(status) = process.child.try_wait().expect("child status") {
                panic!("{name} exited ({status}):\n{}", process.log_text());
            }
            TcpStream::connect(addr).is_ok().then_some(())
        })
        .await;
        process
    }

    /// The log, without colour codes (an operator reads through them).
    fn log_text(&self) -> String {
        let raw = std::fs::read(&self.log).unwrap_or_default();
        let raw = String::from_utf8_lossy(&raw);
        let mut text = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters final-byte.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                text.push(c);
            }
        }
        text
    }

    /// SIGTERM, then waits for the exit: every line is written when it returns.
    async fn stop(&mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {}", self.name);
        let name = self.name;
        let child = &mut self.child;
        wait_for(&format!("{name} exits"), async || {
            child.try_wait().expect("child status")
        })
        .await;
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn pay(order_id: &str, payment_method: &str) -> pb::ProcessPaymentRequest {
    pb::ProcessPaymentRequest {
        order_id: order_id.to_owned(),
        amount: Some(pb::Money {
            amount_minor: 4200,
            currency: "EUR".to_owned(),
        }),
        customer_id: "cus-secret".to_owned(),
        payment_method: payment_method.to_owned(),
        items: vec![pb::LineItem {
            product_id: "room-night".to_owned(),
            quantity: 1,
            unit_amount_minor: 4200,
        }],
        idempotency_key: format!("req-{order_id}"),
        wait_for_outcome: true,
    }
}

async fn order(client: &mut Client, order_id: &str) -> pb::Order {
    client
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .expect("get order")
        .into_inner()
}

/// Everything a refusal tells the client: message, ErrorInfo, BadRequest, metadata.
fn everything_in(status: &tonic::Status) -> String {
    let details = status.get_error_details();
    format!(
        "{} {:?} {:?} {:?} {:?}",
        status.message(),
        details.error_info(),
        details.bad_request(),
        status.metadata(),
        status.details()
    )
}

/// The refusal is INVALID_REQUEST for `field`, and quotes no card number in any shape.
fn assert_refused_without_echo(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason(status), "INVALID_REQUEST");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    assert_eq!(fields, [field], "{status:?}");
    let told = everything_in(status);
    assert_no_card(&told, "the answer to the client");
}

/// No card number in `text`, in any shape: also once every space and dash is taken out.
fn assert_no_card(text: &str, what: &str) {
    let squeezed: String = text
        .chars()
        .filter(|c| !(c.is_whitespace() || *c == '-'))
        .collect();
    for card in CARDS {
        for shape in shapes(card) {
            assert!(!text.contains(&shape), "{what} holds the card {shape}");
        }
        assert!(!squeezed.contains(card), "{what} holds the card {card}");
    }
}

#[tokio::test]
async fn no_process_logs_a_secret() {
    let env = TestEnv::new().await;

    // The gateway simulator, as its own process, knowing the secret from its environment.
    let sim_addr = free_addr();
    let mut sim = Logged::spawn(
        "booking-sim-psp",
        &booking_sim_binary(),
        &[
            "psp".to_owned(),
            "--listen".to_owned(),
            sim_addr.to_string(),
        ],
        &[("GATEWAY_API_KEY", GATEWAY_SECRET), ("RUST_LOG", "trace")],
        sim_addr,
    )
    .await;

    // The coordinator, pointed at it (a later flag wins), with the secret in its environment.
    let addr = free_addr();
    let mut args = env.args("secrets", &[], true);
    args.remove(0); // the program name
    args.extend([
        "--coordinator-listen".to_owned(),
        addr.to_string(),
        "--gateway-url".to_owned(),
        format!("http://{sim_addr}"),
    ]);
    let mut coordinator = Logged::spawn(
        "coordinator",
        &coordinator_binary(),
        &args,
        &[("GATEWAY_API_KEY", GATEWAY_SECRET), ("RUST_LOG", "trace")],
        addr,
    )
    .await;
    let url = format!("http://{addr}");
    let mut operator = client(&url, Some(&key_for(OPERATOR))).await;
    let mut reviewer = client(&url, Some(&key_for(REVIEWER))).await;
    let mut admin = client(&url, Some(&key_for(ADMIN))).await;

    // Paid, then refunded by a reviewer.
    operator
        .process_payment(pay("sec-paid", "pm_card_visa"))
        .await
        .expect("pay");
    let paid = wait_for("sec-paid is paid", async || {
        let o = order(&mut operator, "sec-paid").await;
        (o.state() == pb::OrderState::Paid).then_some(o)
    })
    .await;
    assert_eq!(paid.attempts.len(), 1);
    reviewer
        .refund_payment(pb::RefundPaymentRequest {
            order_id: "sec-paid".to_owned(),
            amount: None,
            reason: "customer cancelled the stay".to_owned(),
            idempotency_key: "refund-sec-paid".to_owned(),
        })
        .await
        .expect("refund");
    wait_for("sec-paid is refunded", async || {
        let o = order(&mut reviewer, "sec-paid").await;
        (o.state() == pb::OrderState::Refunded).then_some(())
    })
    .await;

    // Declined.
    operator
        .process_payment(pay("sec-declined", "pm_card_chargeDeclined"))
        .await
        .expect("pay");
    wait_for("sec-declined is declined", async || {
        let o = order(&mut operator, "sec-declined").await;
        o.attempts
            .iter()
            .any(|a| a.outcome() == pb::AttemptOutcome::Declined)
            .then_some(())
    })
    .await;

    // Card numbers as the payment method, in every shape: refused, never echoed.
    for card in CARDS {
        for (n, shape) in shapes(card).iter().enumerate() {
            let order_id = format!("sec-card-{}-{n}", &card[..4]);
            let refused = operator
                .process_payment(pay(&order_id, shape))
                .await
                .expect_err("a card number is refused");
            assert_refused_without_echo(&refused, "payment_method");
            // Nothing was recorded for it.
            let missing = operator
                .get_order(pb::GetOrderRequest { order_id })
                .await
                .expect_err("no order for a refused request");
            assert_eq!(missing.code(), Code::NotFound);
        }
    }
    // A card number in free text: a refund's reason, a pause's reason.
    let refused = reviewer
        .refund_payment(pb::RefundPaymentRequest {
            order_id: "sec-paid".to_owned(),
            amount: None,
            reason: "customer paid with 4000 0566 5566 5556".to_owned(),
            idempotency_key: "refund-card".to_owned(),
        })
        .await
        .expect_err("a card number in a reason is refused");
    assert_refused_without_echo(&refused, "reason");
    let refused = admin
        .pause_payments(pb::PausePaymentsRequest {
            reason: "card 4242-4242-4242-4242 reported stolen".to_owned(),
        })
        .await
        .expect_err("a card number in a pause reason is refused");
    assert_refused_without_echo(&refused, "reason");

    // A key that is in no keys file.
    let mut stranger = client(&url, Some(WRONG_KEY)).await;
    let refused = stranger
        .process_payment(pay("sec-stranger", "pm_card_visa"))
        .await
        .expect_err("an unknown key is refused");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(!everything_in(&refused).contains(WRONG_KEY), "{refused:?}");

    // Every line is written once both processes have exited.
    coordinator.stop().await;
    sim.stop().await;
    let logs = [
        (coordinator.name, coordinator.log_text()),
        (sim.name, sim.log_text()),
    ];

    // The capture is real: verbose, and about these very payments.
    for (name, log) in &logs {
        assert!(
            log.lines()
                .any(|l| l.contains(" DEBUG ") || l.contains(" TRACE ")),
            "{name} did not log at debug level:\n{log}"
        );
        for order_id in ["sec-paid", "sec-declined"] {
            assert!(log.contains(order_id), "{name} never logged {order_id}");
        }
    }

    let mut secrets = vec![GATEWAY_SECRET.to_owned(), WRONG_KEY.to_owned()];
    secrets.extend([OPERATOR, REVIEWER, ADMIN].map(key_for));
    for (name, log) in &logs {
        for (n, line) in log.lines().enumerate() {
            for secret in &secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "{name} line {} holds the secret {secret}: {line}",
                    n + 1
                );
            }
            assert_no_card(line, &format!("{name} line {}: {line}", n + 1));
        }
    }
    env.cleanup().await;
}

#[test]
fn shapes_of_a_card_number() {
    assert_eq!(
        shapes("4000056655665556"),
        [
            "4000056655665556",
            "4000 0566 5566 5556",
            "4000-0566-5566-5556"
        ]
    );
}
