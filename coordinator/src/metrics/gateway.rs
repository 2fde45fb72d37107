//! The gateway client as the coordinator uses it: the same calls, each timed into
//! `coordinator_gateway_call_duration_seconds{operation, outcome}`. Timing here rather than in
//! `gateway-client` keeps that crate free of the coordinator's metrics, and catches every call
//! site (attempts, recovery, refunds, reviews' verifications) without touching them.

use std::{future::Future, time::Instant};

use gateway_client::{
    Capabilities, CreateIntent, Flow, GatewayClient, GatewayConfig, IdempotencyKey, PaymentIntent,
    Refund, Reply,
};

use super::Metrics;

/// A [`GatewayClient`] whose calls are timed. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TimedGateway {
    client: GatewayClient,
    metrics: Metrics,
}

impl TimedGateway {
    pub fn new(client: GatewayClient, metrics: Metrics) -> Self {
        Self { client, metrics }
    }

    pub fn config(&self) -> &GatewayConfig {
        self.client.config()
    }

    pub fn flow(&self) -> Flow {
        self.client.flow()
    }

    pub fn capabilities(&self) -> &Capabilities {
        self.client.capabilities()
    }

    pub async fn create_intent(
        &self,
        req: &CreateIntent,
        key: &IdempotencyKey,
    ) -> Reply<PaymentIntent> {
        self.timed("create_intent", self.client.create_intent(req, key))
            .await
    }

    pub async fn confirm_intent(
        &self,
        intent_id: &str,
        key: &IdempotencyKey,
    ) -> Reply<PaymentIntent> {
        self.timed("confirm_intent", self.client.confirm_intent(intent_id, key))
            .await
    }

    pub async fn get_intent(&self, intent_id: &str) -> Reply<PaymentIntent> {
        self.timed("get_intent", self.client.get_intent(intent_id))
            .await
    }

    pub async fn cancel_intent(
        &self,
        intent_id: &str,
        key: &IdempotencyKey,
    ) -> Reply<PaymentIntent> {
        self.timed("cancel_intent", self.client.cancel_intent(intent_id, key))
            .await
    }

    pub async fn create_refund(
        &self,
        intent_id: &str,
        amount_minor: Option<i64>,
        key: &IdempotencyKey,
    ) -> Reply<Refund> {
        self.timed(
            "create_refund",
            self.client.create_refund(intent_id, amount_minor, key),
        )
        .await
    }

    /// A call dropped half-way (shutdown's hand-over) is not observed: it has no outcome.
    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Reply<T>>,
    ) -> Reply<T> {
        let started = Instant::now();
        let reply = call.await;
        self.metrics
            .gateway_call(operation, reply.outcome.kind(), started.elapsed());
        reply
    }
}
