//! The gateway simulator on a fresh random port, a `gateway-client` pointed at it, and the
//! simulator's own controls (`/_sim/ledger`, `/_sim/faults`) for assertions.

use std::time::Duration;

use booking_sim::psp::{self, Ledger, RunningSim, SimConfig};
use gateway_client::{GatewayClient, GatewayConfig, RetryPolicy};

/// How long a test waits for the simulator to reach a state before it fails (a guard against a
/// hung test, never an assertion about speed).
const WAIT_LIMIT: Duration = Duration::from_secs(30);

pub struct SimGateway {
    sim: RunningSim,
    api_key: String,
    http: reqwest::Client,
}

impl SimGateway {
    pub async fn start() -> Self {
        Self::start_with(SimConfig::default()).await
    }

    pub async fn start_with(config: SimConfig) -> Self {
        let api_key = config.api_key.clone();
        let sim = psp::spawn(config)
            .await
            .expect("start the gateway simulator");
        Self {
            sim,
            api_key,
            http: reqwest::Client::new(),
        }
    }

    pub fn base_url(&self) -> String {
        self.sim.base_url()
    }

    /// The client configuration for this simulator: the right key, and retries fast enough for
    /// tests (a 429's `Retry-After` is still honoured).
    pub fn config(&self) -> GatewayConfig {
        GatewayConfig::new(self.base_url(), self.api_key.as_str())
            .with_timeout(Duration::from_secs(10))
            .with_retry(fast_retries(3))
    }

    pub fn client(&self) -> GatewayClient {
        self.client_with(|config| config)
    }

    pub fn client_with(
        &self,
        adjust: impl FnOnce(GatewayConfig) -> GatewayConfig,
    ) -> GatewayClient {
        GatewayClient::new(adjust(self.config())).expect("build the gateway client")
    }

    pub async fn ledger(&self) -> Ledger {
        self.http
            .get(format!("{}/_sim/ledger", self.base_url()))
            .send()
            .await
            .expect("GET /_sim/ledger")
            .error_for_status()
            .expect("ledger status")
            .json()
            .await
            .expect("ledger body")
    }

    /// Replaces the fault configuration (`POST /_sim/faults`).
    pub async fn faults(&self, config: serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/_sim/faults", self.base_url()))
            .json(&config)
            .send()
            .await
            .expect("POST /_sim/faults");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "faults refused: {status} {body}");
    }

    /// Polls the ledger until `done` holds: synchronisation on the simulator's observable state.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&Ledger) -> bool) -> Ledger {
        let poll = async {
            loop {
                let ledger = self.ledger().await;
                if done(&ledger) {
                    return ledger;
                }
                tokio::task::yield_now().await;
            }
        };
        match tokio::time::timeout(WAIT_LIMIT, poll).await {
            Ok(ledger) => ledger,
            Err(_) => panic!("the simulator never reached: {what}"),
        }
    }

    pub async fn shutdown(self) {
        self.sim.shutdown().await;
    }
}

/// Bounded retries with short backoffs.
pub fn fast_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        ..RetryPolicy::default()
    }
}
