//! The gateway simulator over real HTTP: each test spawns its own simulator on 127.0.0.1:0
//! and talks to it with reqwest, asserting on answers and on the ledger.
//!
//! No sleeps: a test that must know a request has reached the simulator waits for the ledger
//! to show it (`Sim::wait_for`).

use std::time::Duration;

use booking_sim::psp::{self, RunningSim, SimConfig, Without};
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const API_KEY: &str = "sk_test_local";
/// Upper bound on waiting for the simulator to reach a state; only ever hit when a test fails.
const WAIT_LIMIT: Duration = Duration::from_secs(20);
/// A client timeout for calls the simulator is told not to answer.
const GIVE_UP: Duration = Duration::from_millis(500);

const VISA: &[(&str, &str)] = &[
    ("amount", "1500"),
    ("currency", "eur"),
    ("payment_method", "pm_card_visa"),
    ("confirm", "true"),
    ("metadata[order_id]", "order-1"),
    ("metadata[attempt]", "1"),
];

struct Sim {
    sim: RunningSim,
    http: Client,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    raw: bytes::Bytes,
    body: Value,
}

impl Answer {
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    fn error(&self) -> &Value {
        &self.body["error"]
    }

    #[track_caller]
    fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        &self.body
    }

    #[track_caller]
    fn assert_error(&self, status: u16, kind: &str, code: Option<&str>, param: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        let error = self.error();
        assert_eq!(error["type"], kind, "{}", self.body);
        assert_eq!(error["code"].as_str(), code, "{}", self.body);
        assert_eq!(error["param"].as_str(), param, "{}", self.body);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
    }

    fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_default().to_owned()
    }
}

impl Sim {
    async fn start() -> Self {
        Self::with(SimConfig::default()).await
    }

    async fn with(config: SimConfig) -> Self {
        let sim = psp::spawn(config)
            .await
            .unwrap_or_else(|e| panic!("simulator did not start: {e}"));
        let http = Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("reqwest client: {e}"));
        Self { sim, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn read(response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let raw = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("reading the body: {e}"));
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            raw,
            body,
        }
    }

    fn post_request(
        &self,
        path: &str,
        form: &[(&str, &str)],
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .form(form);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request
    }

    async fn post(&self, path: &str, form: &[(&str, &str)], key: Option<&str>) -> Answer {
        let response = self
            .post_request(path, form, key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Self::read(response).await
    }

    async fn create(&self, form: &[(&str, &str)], key: Option<&str>) -> Answer {
        self.post("/v1/payment_intents", form, key).await
    }

    async fn get(&self, path: &str) -> Answer {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Self::read(response).await
    }

    async fn ledger(&self) -> Value {
        let response = self
            .http
            .get(self.url("/_sim/ledger"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("ledger: {e}"));
        Self::read(response).await.body
    }

    async fn set_faults(&self, config: Value) -> Answer {
        let response = self
            .http
            .post(self.url("/_sim/faults"))
            .json(&config)
            .send()
            .await
            .unwrap_or_else(|e| panic!("faults: {e}"));
        Self::read(response).await
    }

    async fn faults(&self, config: Value) {
        let answer = self.set_faults(config).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }

    /// Polls the ledger until `ready` holds. Waits for the state itself, never for time.
    async fn wait_for(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let poll = async {
            loop {
                let ledger = self.ledger().await;
                if ready(&ledger) {
                    return ledger;
                }
                tokio::task::yield_now().await;
            }
        };
        match tokio::time::timeout(WAIT_LIMIT, poll).await {
            Ok(ledger) => ledger,
            Err(_) => panic!("the ledger never showed {what}: {}", self.ledger().await),
        }
    }
}

fn totals(ledger: &Value) -> (u64, u64) {
    (
        ledger["totals"]["intents"].as_u64().unwrap_or(u64::MAX),
        ledger["totals"]["charges"].as_u64().unwrap_or(u64::MAX),
    )
}

fn in_flight(ledger: &Value) -> u64 {
    ledger["idempotency"]["in_flight"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

// ---- authentication ----

#[tokio::test]
async fn requests_need_the_api_key_and_the_key_is_never_echoed() {
    let sim = Sim::start().await;
    let url = sim.url("/v1/payment_intents");

    let none = Sim::read(
        sim.http
            .post(&url)
            .form(VISA)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    none.assert_error(401, "invalid_request_error", None, None);

    let wrong = "sk_test_wrong_and_secret";
    let bad = sim
        .http
        .post(&url)
        .bearer_auth(wrong)
        .form(VISA)
        .send()
        .await;
    let bad = Sim::read(bad.unwrap_or_else(|e| panic!("{e}"))).await;
    bad.assert_error(401, "invalid_request_error", None, None);
    assert!(!String::from_utf8_lossy(&bad.raw).contains("wrong_and_secret"));

    let basic = sim
        .http
        .post(&url)
        .basic_auth(API_KEY, Some(""))
        .form(VISA)
        .send()
        .await;
    let basic = Sim::read(basic.unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);

    let get = Sim::read(
        sim.http
            .get(sim.url("/v1/payment_intents/pi_x"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(get.status, StatusCode::UNAUTHORIZED);

    sim.create(VISA, None).await.assert_ok();
    let ledger = sim.ledger().await;
    assert_eq!(
        totals(&ledger),
        (1, 1),
        "only the authenticated call did anything"
    );
    assert_eq!(ledger["calls"]["create"], 4, "every call is counted");
    assert_eq!(ledger["calls"]["get"], 1);
}

// ---- PaymentIntents ----

#[tokio::test]
async fn create_without_confirm_then_confirm_and_get() {
    let sim = Sim::start().await;
    let form = [
        ("amount", "2500"),
        ("currency", "usd"),
        ("payment_method", "pm_card_mastercard"),
    ];
    let created = sim.create(&form, None).await;
    let pi = created.assert_ok();
    assert_eq!(pi["object"], "payment_intent");
    assert_eq!(pi["status"], "requires_confirmation");
    assert_eq!(pi["amount"], 2500);
    assert_eq!(pi["amount_received"], 0);
    assert_eq!(pi["currency"], "usd");
    assert_eq!(pi["latest_charge"], Value::Null);
    let id = created.id();
    assert!(id.starts_with("pi_") && id.len() > 10, "{id}");
    assert_eq!(totals(&sim.ledger().await), (1, 0));

    let without_pm = sim
        .create(&[("amount", "100"), ("currency", "usd")], None)
        .await;
    assert_eq!(without_pm.assert_ok()["status"], "requires_payment_method");

    let confirmed = sim
        .post(&format!("/v1/payment_intents/{id}/confirm"), &[], None)
        .await;
    let pi = confirmed.assert_ok();
    assert_eq!(pi["id"], id.as_str());
    assert_eq!(pi["status"], "succeeded");
    assert_eq!(pi["amount_received"], 2500);
    assert!(
        pi["latest_charge"]
            .as_str()
            .is_some_and(|c| c.starts_with("ch_"))
    );

    let fetched = sim.get(&format!("/v1/payment_intents/{id}")).await;
    assert_eq!(fetched.assert_ok()["status"], "succeeded");
    assert_eq!(fetched.body, confirmed.body);

    // Confirming again charges nothing.
    let again = sim
        .post(&format!("/v1/payment_intents/{id}/confirm"), &[], None)
        .await;
    again.assert_error(
        400,
        "invalid_request_error",
        Some("payment_intent_unexpected_state"),
        None,
    );
    assert_eq!(again.error()["payment_intent"]["status"], "succeeded");
    let ledger = sim.ledger().await;
    assert_eq!(ledger["intents"][0]["times_charged"], 1);
    assert_eq!(totals(&ledger), (2, 1));

    let unknown = sim
        .post("/v1/payment_intents/pi_nope/confirm", &[], None)
        .await;
    unknown.assert_error(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        Some("intent"),
    );
    let unknown = sim.get("/v1/payment_intents/pi_nope").await;
    unknown.assert_error(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        Some("intent"),
    );
}

#[tokio::test]
async fn create_with_confirm_charges_and_the_ledger_shows_it() {
    let sim = Sim::start().await;
    let mut form = VISA.to_vec();
    form.push(("description", "Two seats"));
    let created = sim.create(&form, Some("pay:order-1:1:create")).await;
    let pi = created.assert_ok();
    assert_eq!(pi["status"], "succeeded");
    assert_eq!(pi["amount_received"], 1500);
    assert_eq!(
        pi["metadata"],
        json!({"order_id": "order-1", "attempt": "1"})
    );
    assert_eq!(pi["description"], "Two seats");
    assert_eq!(pi["payment_method"], "pm_card_visa");
    assert!(created.headers.get("idempotent-replayed").is_none());

    let ledger = sim.ledger().await;
    let entry = &ledger["intents"][0];
    assert_eq!(entry["id"], created.id().as_str());
    assert_eq!(entry["status"], "succeeded");
    assert_eq!(entry["amount"], 1500);
    assert_eq!(entry["currency"], "eur");
    assert_eq!(entry["payment_method"], "pm_card_visa");
    assert_eq!(entry["metadata"]["order_id"], "order-1");
    assert_eq!(entry["description"], "Two seats");
    assert_eq!(entry["times_charged"], 1);
    assert_eq!(entry["amount_refunded"], 0);
    assert_eq!(entry["refunds"], json!([]));
    assert_eq!(entry["idempotency_keys"], json!(["pay:order-1:1:create"]));
    assert!(entry["created"].as_u64().is_some_and(|t| t > 1_600_000_000));
    assert_eq!(
        ledger["totals"],
        json!({"intents": 1, "charges": 1, "amount_charged": 1500, "declines": 0, "refunds": 0, "amount_refunded": 0})
    );
    assert_eq!(
        ledger["calls"],
        json!({"create": 1, "confirm": 0, "get": 0, "cancel": 0, "refund": 0})
    );

    // Clients of the simulator read the same JSON back into the public types.
    let typed: psp::Ledger = serde_json::from_value(ledger.clone())
        .unwrap_or_else(|e| panic!("the ledger must decode into psp::Ledger: {e}"));
    assert_eq!(typed.intents[0].status, psp::IntentStatus::Succeeded);
    assert_eq!(typed.intents[0].times_charged, 1);
    assert_eq!(typed.totals.charges, 1);
    assert_eq!(
        typed.idempotency,
        psp::KeyStats {
            in_flight: 0,
            saved: 1
        }
    );
}

#[tokio::test]
async fn declines_answer_402_and_leave_the_intent_payable() {
    let sim = Sim::start().await;
    for (pm, decline_code) in [
        ("pm_card_chargeDeclined", "generic_decline"),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "insufficient_funds",
        ),
    ] {
        let form = [
            ("amount", "900"),
            ("currency", "gbp"),
            ("payment_method", pm),
            ("confirm", "true"),
        ];
        let declined = sim.create(&form, None).await;
        declined.assert_error(402, "card_error", Some("card_declined"), None);
        let error = declined.error();
        assert_eq!(error["decline_code"], decline_code);
        let pi = &error["payment_intent"];
        assert_eq!(pi["status"], "requires_payment_method");
        assert_eq!(pi["last_payment_error"]["type"], "card_error");
        assert_eq!(pi["last_payment_error"]["code"], "card_declined");
        assert_eq!(pi["last_payment_error"]["decline_code"], decline_code);
        assert!(pi["last_payment_error"]["message"].is_string());

        // The intent exists, uncharged, and can be paid with another card.
        let id = pi["id"].as_str().unwrap_or_default();
        let fetched = sim.get(&format!("/v1/payment_intents/{id}")).await;
        assert_eq!(fetched.assert_ok()["status"], "requires_payment_method");
        let retry = sim
            .post(
                &format!("/v1/payment_intents/{id}/confirm"),
                &[("payment_method", "pm_card_visa")],
                None,
            )
            .await;
        assert_eq!(retry.assert_ok()["status"], "succeeded");
    }
    let ledger = sim.ledger().await;
    assert_eq!(totals(&ledger), (2, 2));
    assert_eq!(ledger["totals"]["declines"], 2);
}

#[tokio::test]
async fn unknown_payment_method_is_refused_before_anything_happens() {
    let sim = Sim::start().await;
    let form = [
        ("amount", "900"),
        ("currency", "eur"),
        ("payment_method", "pm_card_unheard_of"),
        ("confirm", "true"),
    ];
    sim.create(&form, None).await.assert_error(
        400,
        "invalid_request_error",
        Some("resource_missing"),
        Some("payment_method"),
    );
    assert_eq!(totals(&sim.ledger().await), (0, 0));
}

#[tokio::test]
async fn cancel_voids_only_unfinished_intents() {
    let sim = Sim::start().await;
    let open = sim
        .create(
            &[
                ("amount", "700"),
                ("currency", "eur"),
                ("payment_method", "pm_card_visa"),
            ],
            None,
        )
        .await;
    let id = open.id();
    let canceled = sim
        .post(
            &format!("/v1/payment_intents/{id}/cancel"),
            &[("cancellation_reason", "abandoned")],
            None,
        )
        .await;
    let pi = canceled.assert_ok();
    assert_eq!(pi["status"], "canceled");
    assert_eq!(pi["cancellation_reason"], "abandoned");
    assert!(pi["canceled_at"].as_u64().is_some());

    let twice = sim
        .post(&format!("/v1/payment_intents/{id}/cancel"), &[], None)
        .await;
    twice.assert_error(
        400,
        "invalid_request_error",
        Some("payment_intent_unexpected_state"),
        None,
    );
    let confirm = sim
        .post(&format!("/v1/payment_intents/{id}/confirm"), &[], None)
        .await;
    confirm.assert_error(
        400,
        "invalid_request_error",
        Some("payment_intent_unexpected_state"),
        None,
    );

    let paid = sim.create(VISA, None).await.id();
    let too_late = sim
        .post(&format!("/v1/payment_intents/{paid}/cancel"), &[], None)
        .await;
    too_late.assert_error(
        400,
        "invalid_request_error",
        Some("payment_intent_unexpected_state"),
        None,
    );
    assert_eq!(
        sim.get(&format!("/v1/payment_intents/{paid}")).await.body["status"],
        "succeeded"
    );

    let bad_reason = sim
        .post(
            &format!("/v1/payment_intents/{paid}/cancel"),
            &[("cancellation_reason", "bored")],
            None,
        )
        .await;
    bad_reason.assert_error(
        400,
        "invalid_request_error",
        None,
        Some("cancellation_reason"),
    );

    let ledger = sim.ledger().await;
    assert_eq!(ledger["intents"][0]["status"], "canceled");
    assert_eq!(ledger["intents"][0]["times_charged"], 0);
    assert_eq!(totals(&ledger), (2, 1));
    assert_eq!(ledger["calls"]["cancel"], 4);
}

#[tokio::test]
async fn refunds_partial_then_full_never_more_than_charged() {
    let sim = Sim::start().await;
    let id = sim.create(VISA, None).await.id();

    let part = sim
        .post(
            "/v1/refunds",
            &[
                ("payment_intent", &id),
                ("amount", "500"),
                ("reason", "requested_by_customer"),
                ("metadata[ticket]", "T-9"),
            ],
            None,
        )
        .await;
    let refund = part.assert_ok();
    assert!(refund["id"].as_str().is_some_and(|r| r.starts_with("re_")));
    assert_eq!(refund["object"], "refund");
    assert_eq!(refund["amount"], 500);
    assert_eq!(refund["currency"], "eur");
    assert_eq!(refund["payment_intent"], id.as_str());
    assert_eq!(refund["status"], "succeeded");
    assert_eq!(refund["reason"], "requested_by_customer");
    assert_eq!(refund["metadata"], json!({"ticket": "T-9"}));
    assert!(refund["created"].as_u64().is_some());

    let over = sim
        .post(
            "/v1/refunds",
            &[("payment_intent", &id), ("amount", "1001")],
            None,
        )
        .await;
    over.assert_error(
        400,
        "invalid_request_error",
        Some("amount_too_large"),
        Some("amount"),
    );

    let rest = sim
        .post("/v1/refunds", &[("payment_intent", &id)], None)
        .await;
    assert_eq!(rest.assert_ok()["amount"], 1000);

    let done = sim
        .post(
            "/v1/refunds",
            &[("payment_intent", &id), ("amount", "1")],
            None,
        )
        .await;
    done.assert_error(
        400,
        "invalid_request_error",
        Some("charge_already_refunded"),
        None,
    );

    let unpaid = sim
        .create(
            &[
                ("amount", "300"),
                ("currency", "eur"),
                ("payment_method", "pm_card_visa"),
            ],
            None,
        )
        .await
        .id();
    let refused = sim
        .post("/v1/refunds", &[("payment_intent", &unpaid)], None)
        .await;
    refused.assert_error(
        400,
        "invalid_request_error",
        Some("payment_intent_unexpected_state"),
        Some("payment_intent"),
    );
    let missing = sim
        .post("/v1/refunds", &[("payment_intent", "pi_missing")], None)
        .await;
    missing.assert_error(
        400,
        "invalid_request_error",
        Some("resource_missing"),
        Some("payment_intent"),
    );

    let ledger = sim.ledger().await;
    let entry = &ledger["intents"][0];
    assert_eq!(entry["amount_refunded"], 1500);
    assert_eq!(entry["refunds"].as_array().map(Vec::len), Some(2));
    assert_eq!(entry["refunds"][0]["amount"], 500);
    assert_eq!(entry["status"], "succeeded");
    assert_eq!(ledger["totals"]["refunds"], 2);
    assert_eq!(ledger["totals"]["amount_refunded"], 1500);
    assert_eq!(ledger["intents"][1]["amount_refunded"], 0);
}

// ---- idempotency ----

#[tokio::test]
async fn same_key_same_params_replays_and_charges_once() {
    let sim = Sim::start().await;
    let first = sim.create(VISA, Some("k-create")).await;
    first.assert_ok();
    assert!(!first.replayed());

    // Same parameters in another order: the same request.
    let mut reordered = VISA.to_vec();
    reordered.reverse();
    let second = sim.create(&reordered, Some("k-create")).await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(second.replayed());
    assert_eq!(second.raw, first.raw, "the saved body, byte for byte");

    let id = first.id();
    let confirm_path = format!("/v1/payment_intents/{id}/confirm");
    let c1 = sim.post(&confirm_path, &[], Some("k-confirm")).await;
    let c2 = sim.post(&confirm_path, &[], Some("k-confirm")).await;
    assert_eq!(c1.status, StatusCode::BAD_REQUEST, "already succeeded");
    assert!(c2.replayed());
    assert_eq!(
        (c2.status, &c2.raw),
        (c1.status, &c1.raw),
        "saved errors replay too"
    );

    let r1 = sim
        .post(
            "/v1/refunds",
            &[("payment_intent", &id), ("amount", "100")],
            Some("k-refund"),
        )
        .await;
    let r2 = sim
        .post(
            "/v1/refunds",
            &[("payment_intent", &id), ("amount", "100")],
            Some("k-refund"),
        )
        .await;
    r1.assert_ok();
    assert!(r2.replayed());
    assert_eq!(r2.raw, r1.raw);

    let ledger = sim.ledger().await;
    assert_eq!(totals(&ledger), (1, 1));
    assert_eq!(ledger["intents"][0]["amount_refunded"], 100);
    assert_eq!(
        ledger["intents"][0]["idempotency_keys"],
        json!(["k-create", "k-confirm", "k-refund"])
    );
    assert_eq!(ledger["calls"]["create"], 2);
    assert_eq!(ledger["calls"]["refund"], 2);
}

#[tokio::test]
async fn a_declined_answer_is_saved_and_replayed() {
    let sim = Sim::start().await;
    let form = [
        ("amount", "900"),
        ("currency", "eur"),
        ("payment_method", "pm_card_chargeDeclined"),
        ("confirm", "true"),
    ];
    let first = sim.create(&form, Some("k")).await;
    let second = sim.create(&form, Some("k")).await;
    assert_eq!(first.status, StatusCode::PAYMENT_REQUIRED);
    assert!(second.replayed());
    assert_eq!((second.status, &second.raw), (first.status, &first.raw));
    let ledger = sim.ledger().await;
    assert_eq!(totals(&ledger), (1, 0));
    assert_eq!(ledger["totals"]["declines"], 1);
}

#[tokio::test]
async fn same_key_other_params_or_path_is_an_idempotency_error() {
    let sim = Sim::start().await;
    sim.create(VISA, Some("k")).await.assert_ok();
    let mut other = VISA.to_vec();
    other[0] = ("amount", "1501");
    let changed = sim.create(&other, Some("k")).await;
    changed.assert_error(400, "idempotency_error", None, None);
    assert!(
        changed.error()["message"]
            .as_str()
            .is_some_and(|m| m.contains("same parameters"))
    );

    let elsewhere = sim
        .post("/v1/refunds", &[("payment_intent", "pi_x")], Some("k"))
        .await;
    elsewhere.assert_error(400, "idempotency_error", None, None);
    assert_eq!(totals(&sim.ledger().await), (1, 1));
}

#[tokio::test]
async fn refused_requests_are_not_saved_under_their_key() {
    let sim = Sim::start().await;
    let invalid = sim
        .create(&[("amount", "abc"), ("currency", "eur")], Some("k"))
        .await;
    invalid.assert_error(
        400,
        "invalid_request_error",
        Some("parameter_invalid_integer"),
        Some("amount"),
    );
    let valid = sim.create(VISA, Some("k")).await;
    valid.assert_ok();
    assert!(
        !valid.replayed(),
        "the invalid request must not have claimed the key"
    );
    assert_eq!(totals(&sim.ledger().await), (1, 1));
}

#[tokio::test]
async fn a_repeat_while_the_first_is_running_gets_409_and_a_dropped_first_frees_the_key() {
    let sim = Sim::start().await;
    sim.faults(json!({"latency_ms": 600_000, "operations": ["create"]}))
        .await;

    let slow = sim
        .post_request("/v1/payment_intents", VISA, Some("k"))
        .send();
    let slow = tokio::spawn(slow);
    sim.wait_for("the first request holding its key", |l| {
        l["calls"]["create"] == 1 && in_flight(l) == 1
    })
    .await;

    let repeat = sim.create(VISA, Some("k")).await;
    repeat.assert_error(
        409,
        "idempotency_error",
        Some("idempotency_key_in_use"),
        None,
    );
    assert_eq!(
        totals(&sim.ledger().await),
        (0, 0),
        "nothing processed during the latency"
    );

    // The first client gives up: its request is dropped and the key released, unprocessed.
    slow.abort();
    sim.wait_for("the key released", |l| in_flight(l) == 0)
        .await;
    sim.faults(json!({})).await;
    let retry = sim.create(VISA, Some("k")).await;
    retry.assert_ok();
    assert!(!retry.replayed());
    assert_eq!(totals(&sim.ledger().await), (1, 1));
}

#[tokio::test]
async fn keys_expire_after_24_hours_and_then_the_same_request_charges_again() {
    let sim = Sim::start().await;
    let first = sim.create(VISA, Some("k")).await;
    first.assert_ok();

    sim.sim.clock.advance(Duration::from_secs(24 * 3600 - 60));
    let replay = sim.create(VISA, Some("k")).await;
    assert!(replay.replayed(), "still within the window");
    assert_eq!(replay.raw, first.raw);

    sim.sim.clock.advance(Duration::from_secs(60));
    let fresh = sim.create(VISA, Some("k")).await;
    fresh.assert_ok();
    assert!(!fresh.replayed());
    assert_ne!(fresh.id(), first.id());
    let ledger = sim.ledger().await;
    assert_eq!(
        totals(&ledger),
        (2, 2),
        "past the window a replay is a second charge"
    );
    assert_eq!(ledger["intents"][1]["idempotency_keys"], json!(["k"]));

    // The same through the HTTP clock control.
    let now = sim
        .http
        .get(sim.url("/_sim/clock"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before = Sim::read(now).await.body["now"]
        .as_u64()
        .unwrap_or_default();
    let advanced = sim
        .http
        .post(sim.url("/_sim/clock"))
        .json(&json!({"advance_secs": 86_400}))
        .send()
        .await;
    let advanced = Sim::read(advanced.unwrap_or_else(|e| panic!("{e}"))).await;
    assert!(advanced.assert_ok()["now"].as_u64().unwrap_or_default() >= before + 86_400);
    let third = sim.create(VISA, Some("k")).await;
    assert!(!third.replayed());
    assert_eq!(totals(&sim.ledger().await), (3, 3));

    let bad = sim
        .http
        .post(sim.url("/_sim/clock"))
        .json(&json!({"advance_secs": -5}))
        .send()
        .await;
    assert_eq!(bad.map(|r| r.status()).ok(), Some(StatusCode::BAD_REQUEST));
}

// ---- a poorer gateway ----

#[tokio::test]
async fn without_idempotency_every_repeat_is_new() {
    let sim = Sim::with(SimConfig {
        without: Without {
            idempotency: true,
            ..Without::default()
        },
        ..SimConfig::default()
    })
    .await;
    let first = sim.create(VISA, Some("k")).await;
    let second = sim.create(VISA, Some("k")).await;
    first.assert_ok();
    second.assert_ok();
    assert!(!second.replayed());
    assert_ne!(first.id(), second.id());
    assert_eq!(totals(&sim.ledger().await), (2, 2));
}

#[tokio::test]
async fn without_lookup_get_answers_404() {
    let sim = Sim::with(SimConfig {
        without: "lookup".parse().unwrap_or_default(),
        ..SimConfig::default()
    })
    .await;
    let id = sim
        .create(
            &[
                ("amount", "100"),
                ("currency", "eur"),
                ("payment_method", "pm_card_visa"),
            ],
            None,
        )
        .await
        .id();
    sim.get(&format!("/v1/payment_intents/{id}"))
        .await
        .assert_error(
            404,
            "invalid_request_error",
            Some("resource_missing"),
            Some("intent"),
        );
    // Everything else still works.
    let confirmed = sim
        .post(&format!("/v1/payment_intents/{id}/confirm"), &[], None)
        .await;
    assert_eq!(confirmed.assert_ok()["status"], "succeeded");
    let replay = sim.create(VISA, Some("k")).await;
    assert!(!replay.replayed());
    assert!(sim.create(VISA, Some("k")).await.replayed());
}

#[tokio::test]
async fn without_cancel_cancel_is_refused_and_changes_nothing() {
    let sim = Sim::with(SimConfig {
        without: "cancel".parse().unwrap_or_default(),
        ..SimConfig::default()
    })
    .await;
    let id = sim
        .create(
            &[
                ("amount", "100"),
                ("currency", "eur"),
                ("payment_method", "pm_card_visa"),
            ],
            None,
        )
        .await
        .id();
    sim.post(&format!("/v1/payment_intents/{id}/cancel"), &[], Some("k"))
        .await
        .assert_error(
            400,
            "invalid_request_error",
            Some("cancel_unsupported"),
            None,
        );
    assert_eq!(
        sim.get(&format!("/v1/payment_intents/{id}")).await.body["status"],
        "requires_confirmation"
    );
    let ledger = sim.ledger().await;
    assert_eq!(ledger["intents"][0]["status"], "requires_confirmation");
    assert_eq!(ledger["calls"]["cancel"], 1);
}

// ---- faults ----

#[tokio::test]
async fn drop_after_charge_closes_the_connection_but_the_charge_and_the_key_stand() {
    let sim = Sim::start().await;
    sim.faults(json!({"next": ["drop_after_charge"]})).await;
    let dropped = sim
        .post_request("/v1/payment_intents", VISA, Some("k"))
        .send()
        .await;
    let error = dropped
        .err()
        .unwrap_or_else(|| panic!("the connection should have been closed"));
    assert!(!error.is_timeout(), "{error}");
    assert!(error.status().is_none(), "no HTTP answer at all: {error}");

    let ledger = sim.ledger().await;
    assert_eq!(totals(&ledger), (1, 1), "charged once before the drop");
    assert_eq!(ledger["faults_injected"]["drop_after_charge"], 1);
    let replay = sim.create(VISA, Some("k")).await;
    assert!(replay.replayed());
    let pi = replay.assert_ok();
    assert_eq!(pi["id"], ledger["intents"][0]["id"]);
    assert_eq!(pi["status"], "succeeded");
    assert_eq!(totals(&sim.ledger().await), (1, 1));
}

#[tokio::test]
async fn hang_never_answers_processes_nothing_and_frees_the_key_when_the_client_leaves() {
    let sim = Sim::start().await;
    sim.faults(json!({"next": ["hang"]})).await;
    let hung = sim
        .post_request("/v1/payment_intents", VISA, Some("k"))
        .timeout(GIVE_UP)
        .send()
        .await;
    assert!(hung.err().is_some_and(|e| e.is_timeout()));
    let ledger = sim
        .wait_for("the hung request gone", |l| in_flight(l) == 0)
        .await;
    assert_eq!(totals(&ledger), (0, 0));
    assert_eq!(ledger["calls"]["create"], 1);

    let retry = sim.create(VISA, Some("k")).await;
    retry.assert_ok();
    assert!(!retry.replayed(), "the hung request was never processed");
    assert_eq!(totals(&sim.ledger().await), (1, 1));
}

#[tokio::test]
async fn timeout_processes_then_holds_the_answer_back() {
    let sim = Sim::start().await;
    sim.faults(json!({"next": ["timeout"]})).await;
    let late = sim
        .post_request("/v1/payment_intents", VISA, Some("k"))
        .timeout(GIVE_UP)
        .send()
        .await;
    assert!(late.err().is_some_and(|e| e.is_timeout()));
    let ledger = sim.wait_for("the charge", |l| totals(l) == (1, 1)).await;
    assert_eq!(ledger["faults_injected"]["timeout"], 1);
    let replay = sim.create(VISA, Some("k")).await;
    assert!(replay.replayed());
    assert_eq!(replay.body["id"], ledger["intents"][0]["id"]);

    // With a short hold, the real answer does arrive.
    sim.faults(json!({"next": ["timeout"], "slow_answer_ms": 10}))
        .await;
    let slow = sim.create(VISA, Some("k2")).await;
    assert_eq!(slow.assert_ok()["status"], "succeeded");
    assert_eq!(totals(&sim.ledger().await), (2, 2));
}

#[tokio::test]
async fn error_500_before_processes_nothing() {
    let sim = Sim::start().await;
    sim.faults(json!({"next": ["error_500_before"]})).await;
    let failed = sim.create(VISA, Some("k")).await;
    failed.assert_error(500, "api_error", None, None);
    assert_eq!(totals(&sim.ledger().await), (0, 0));
    let retry = sim.create(VISA, Some("k")).await;
    retry.assert_ok();
    assert!(!retry.replayed(), "nothing was saved under the key");
    assert_eq!(totals(&sim.ledger().await), (1, 1));
}

#[tokio::test]
async fn error_500_after_charges_and_the_key_keeps_the_truth() {
    let sim = Sim::start().await;
    sim.faults(json!({"next": ["error_500_after"]})).await;
    let failed = sim.create(VISA, Some("k")).await;
    failed.assert_error(500, "api_error", None, None);
    let ledger = sim.ledger().await;
    assert_eq!(totals(&ledger), (1, 1));
    let replay = sim.create(VISA, Some("k")).await;
    assert!(replay.replayed());
    assert_eq!(replay.assert_ok()["id"], ledger["intents"][0]["id"]);
    assert_eq!(totals(&sim.ledger().await), (1, 1));
}

#[tokio::test]
async fn rate_limited_answers_429_with_retry_after() {
    let sim = Sim::start().await;
    sim.faults(json!({"next": ["rate_limited"], "retry_after_secs": 7}))
        .await;
    let limited = sim.create(VISA, Some("k")).await;
    limited.assert_error(429, "rate_limit_error", Some("rate_limit"), None);
    assert_eq!(
        limited
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );
    assert_eq!(totals(&sim.ledger().await), (0, 0));
    let retry = sim.create(VISA, Some("k")).await;
    assert!(!retry.replayed());
    assert_eq!(totals(&sim.ledger().await), (1, 1));
}

#[tokio::test]
async fn faults_apply_only_to_the_listed_operations_in_queue_order() {
    let sim = Sim::start().await;
    sim.faults(json!({"operations": ["confirm"], "next": ["none", "error_500_before"]}))
        .await;
    let form = [
        ("amount", "100"),
        ("currency", "eur"),
        ("payment_method", "pm_card_visa"),
    ];
    let a = sim.create(&form, None).await.id();
    let b = sim.create(&form, None).await.id();
    assert!(
        sim.get(&format!("/v1/payment_intents/{a}"))
            .await
            .status
            .is_success()
    );
    let first = sim
        .post(&format!("/v1/payment_intents/{a}/confirm"), &[], None)
        .await;
    assert_eq!(
        first.assert_ok()["status"],
        "succeeded",
        "'none' lets one call through"
    );
    let second = sim
        .post(&format!("/v1/payment_intents/{b}/confirm"), &[], None)
        .await;
    second.assert_error(500, "api_error", None, None);
    let third = sim
        .post(&format!("/v1/payment_intents/{b}/confirm"), &[], None)
        .await;
    assert_eq!(
        third.assert_ok()["status"],
        "succeeded",
        "the queue is used up"
    );

    let config = sim.get("/_sim/faults").await.body;
    assert_eq!(config["operations"], json!(["confirm"]));
    assert_eq!(config["next"], json!([]));
}

#[tokio::test]
async fn shutdown_closes_hung_and_slow_requests() {
    let sim = Sim::start().await;
    sim.faults(json!({"next": ["hang", "timeout"], "operations": ["create"]}))
        .await;
    let hung = tokio::spawn(
        sim.post_request("/v1/payment_intents", VISA, Some("a"))
            .send(),
    );
    sim.wait_for("the hung request", |l| in_flight(l) == 1)
        .await;
    let slow = tokio::spawn(
        sim.post_request("/v1/payment_intents", VISA, Some("b"))
            .send(),
    );
    sim.wait_for("the slow answer processed", |l| totals(l) == (1, 1))
        .await;

    let Sim { sim, http: _ } = sim;
    tokio::time::timeout(WAIT_LIMIT, sim.shutdown())
        .await
        .unwrap_or_else(|_| panic!("shutdown waited on a hung request"));
    for call in [hung, slow] {
        let result = call.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(result.is_err(), "closed without an answer: {result:?}");
    }
}

/// The status codes of `n` lookups under `config`.
async fn fault_sequence(seed: u64, config: Value, n: usize) -> Vec<u16> {
    let sim = Sim::with(SimConfig {
        seed,
        ..SimConfig::default()
    })
    .await;
    let id = sim.create(VISA, None).await.id();
    sim.faults(config).await;
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(
            sim.get(&format!("/v1/payment_intents/{id}"))
                .await
                .status
                .as_u16(),
        );
    }
    statuses
}

#[tokio::test]
async fn faults_are_deterministic_under_the_seed() {
    let rates = |seed: Option<u64>| {
        let mut config = json!({"rate_429": 0.3, "error_500_before_rate": 0.2, "error_500_after_rate": 0.2, "operations": ["get"]});
        if let Some(seed) = seed {
            config["seed"] = json!(seed);
        }
        config
    };
    let a = fault_sequence(0, rates(Some(7)), 50).await;
    let b = fault_sequence(1, rates(Some(7)), 50).await;
    assert_eq!(a, b, "same seed, same faults");
    for status in [200, 429, 500] {
        assert!(a.contains(&status), "{status} never seen in {a:?}");
    }
    let c = fault_sequence(0, rates(Some(8)), 50).await;
    assert_ne!(a, c, "another seed, other faults");
    // Without a seed in the configuration, the simulator's own seed decides.
    let d = fault_sequence(7, rates(None), 50).await;
    assert_eq!(a, d);
}

#[tokio::test]
async fn bad_fault_configurations_are_refused() {
    let sim = Sim::start().await;
    for bad in [
        json!({"hang_rate": 1.5}),
        json!({"rate_429": -0.1}),
        json!({"timeout_rate": 0.7, "hang_rate": 0.7}),
        json!({"hang_rates": 0.1}),
        json!({"next": ["explode"]}),
        json!({"operations": ["charge"]}),
        json!({"latency_ms": "slow"}),
    ] {
        let answer = sim.set_faults(bad.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(answer.error()["type"], "invalid_request_error", "{bad}");
    }
    let not_json = sim
        .http
        .post(sim.url("/_sim/faults"))
        .body("{latency_ms:")
        .send()
        .await;
    assert_eq!(
        not_json.map(|r| r.status()).ok(),
        Some(StatusCode::BAD_REQUEST)
    );

    // Nothing was replaced: the defaults stand.
    let config = sim.get("/_sim/faults").await.body;
    assert_eq!(config["hang_rate"], 0.0);
    assert_eq!(config["slow_answer_ms"], 120_000);
    assert_eq!(config["retry_after_secs"], 1);
    assert_eq!(
        config["operations"],
        json!(["create", "confirm", "get", "cancel", "refund"])
    );

    sim.faults(json!({"seed": 3, "hang_rate": 0.25, "next": ["timeout"]}))
        .await;
    let config = sim.get("/_sim/faults").await.body;
    assert_eq!(
        (config["seed"].clone(), config["hang_rate"].clone()),
        (json!(3), json!(0.25))
    );
    assert_eq!(config["next"], json!(["timeout"]));
}

// ---- malformed requests ----

#[tokio::test]
async fn malformed_requests_are_refused_naming_the_parameter() {
    let sim = Sim::start().await;
    type Form = &'static [(&'static str, &'static str)];
    let cases: &[(Form, Option<&str>, &str)] = &[
        (&[("currency", "eur")], Some("parameter_missing"), "amount"),
        (
            &[("amount", "12.50"), ("currency", "eur")],
            Some("parameter_invalid_integer"),
            "amount",
        ),
        (
            &[("amount", "ten"), ("currency", "eur")],
            Some("parameter_invalid_integer"),
            "amount",
        ),
        (
            &[("amount", "0"), ("currency", "eur")],
            Some("amount_too_small"),
            "amount",
        ),
        (
            &[("amount", "100000000"), ("currency", "eur")],
            Some("amount_too_large"),
            "amount",
        ),
        (&[("amount", "100")], Some("parameter_missing"), "currency"),
        (&[("amount", "100"), ("currency", "xyz")], None, "currency"),
        (
            &[("amount", "100"), ("currency", "eur"), ("confirm", "maybe")],
            None,
            "confirm",
        ),
        (
            &[("amount", "100"), ("currency", "eur"), ("confirm", "true")],
            Some("parameter_missing"),
            "payment_method",
        ),
        (
            &[("amount", "100"), ("currency", "eur"), ("shipping", "fast")],
            Some("parameter_unknown"),
            "shipping",
        ),
        (
            &[
                ("amount", "100"),
                ("currency", "eur"),
                ("metadata[a][b]", "c"),
            ],
            None,
            "metadata[a][b]",
        ),
    ];
    for (form, code, param) in cases {
        sim.create(form, Some("k")).await.assert_error(
            400,
            "invalid_request_error",
            *code,
            Some(param),
        );
    }
    let refund = sim.post("/v1/refunds", &[("amount", "5")], None).await;
    refund.assert_error(
        400,
        "invalid_request_error",
        Some("parameter_missing"),
        Some("payment_intent"),
    );

    let json_body = sim
        .http
        .post(sim.url("/v1/payment_intents"))
        .bearer_auth(API_KEY)
        .json(&json!({"amount": 100, "currency": "eur"}))
        .send()
        .await;
    let json_body = Sim::read(json_body.unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(json_body.status, StatusCode::BAD_REQUEST);
    assert_eq!(json_body.error()["type"], "invalid_request_error");

    let empty_key = sim
        .post_request("/v1/payment_intents", VISA, Some(""))
        .send()
        .await;
    assert_eq!(
        empty_key.map(|r| r.status()).ok(),
        Some(StatusCode::BAD_REQUEST)
    );

    let unknown_url = sim.get("/v1/charges").await;
    unknown_url.assert_error(404, "invalid_request_error", None, None);

    let ledger = sim.ledger().await;
    assert_eq!(totals(&ledger), (0, 0));
    assert_eq!(
        ledger["idempotency"]["saved"], 0,
        "refused requests save nothing"
    );
}
