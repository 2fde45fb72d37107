//! A client for the simulator's own endpoints (`/_sim/…`): the ledger, the fault switchboard and
//! the clock. Used by the demo, the tests and (later) the chaos driver and invariant checker,
//! which must judge the coordinator by what the gateway really did.

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::json;

use crate::psp::{Ledger, LedgerIntent, SimRequest};

/// A handle on one running simulator.
#[derive(Clone, Debug)]
pub struct SimControl {
    http: reqwest::Client,
    base: String,
}

impl SimControl {
    pub fn new(base_url: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// `GET /_sim/ledger`: every intent with how many times it was charged and refunded.
    pub async fn ledger(&self) -> anyhow::Result<Ledger> {
        let response = self
            .http
            .get(format!("{}/_sim/ledger", self.base))
            .send()
            .await
            .context("reading the simulator's ledger")?;
        ensure!(
            response.status().is_success(),
            "ledger answered {}",
            response.status()
        );
        response
            .json()
            .await
            .context("decoding the simulator's ledger")
    }

    /// One intent of the ledger.
    pub async fn ledger_intent(&self, intent_id: &str) -> anyhow::Result<LedgerIntent> {
        self.ledger()
            .await?
            .intents
            .into_iter()
            .find(|i| i.id == intent_id)
            .with_context(|| format!("{intent_id} is not in the ledger"))
    }

    /// `GET /_sim/requests`: the last `/v1` requests received (up to 10,000), oldest first.
    pub async fn requests(&self) -> anyhow::Result<Vec<SimRequest>> {
        let response = self
            .http
            .get(format!("{}/_sim/requests", self.base))
            .send()
            .await
            .context("reading the simulator's requests")?;
        ensure!(
            response.status().is_success(),
            "requests answered {}",
            response.status()
        );
        response
            .json()
            .await
            .context("decoding the simulator's requests")
    }

    /// `POST /_sim/faults`: replaces the fault configuration.
    pub async fn set_faults(&self, faults: serde_json::Value) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/_sim/faults", self.base))
            .json(&faults)
            .send()
            .await
            .context("setting the simulator's faults")?;
        let status = response.status();
        ensure!(
            status.is_success(),
            "faults answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// Forces `faults` on the next calls of the given operations, in order.
    pub async fn force_next_faults(
        &self,
        faults: &[&str],
        operations: &[&str],
    ) -> anyhow::Result<()> {
        self.set_faults(json!({ "next": faults, "operations": operations }))
            .await
    }

    /// No faults at all.
    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        self.set_faults(json!({})).await
    }

    /// `POST /_sim/clock`: moves the simulator's clock forward (idempotency keys expire after 24 h).
    pub async fn advance_clock(&self, by: Duration) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/_sim/clock", self.base))
            .json(&json!({ "advance_secs": by.as_secs() }))
            .send()
            .await
            .context("advancing the simulator's clock")?;
        ensure!(
            response.status().is_success(),
            "clock answered {}",
            response.status()
        );
        Ok(())
    }
}
