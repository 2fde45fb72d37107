//! The chaos run's racing operators on their own: the [`workload`](super::workload) driven
//! against running replicas without a fault schedule, the caller holding the gate, for drills a
//! test conducts itself while payments run (`tests/tests/rolling_restart.rs` restarts the
//! replicas one by one). The callers are the chaos run's: several per order racing over the
//! replicas, and the same idempotency key sent again on the next replica after UNAVAILABLE
//! (`REPLICA_SHUTTING_DOWN`, …) or a transport error, as a real client would.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, ensure};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    External,
    settle::{self, Settled},
    workload::{Workload, WorkloadConfig, WorkloadStats},
    world::World,
};

/// Racing operators paying `config.payments` orders; the workload's task is aborted if this is
/// dropped before [`Operators::finish`].
pub struct Operators {
    world: Arc<World>,
    workload: Arc<Workload>,
    /// Payment `n` starts only once `n < gate`.
    gate: watch::Sender<usize>,
    /// How many payments have started.
    started: watch::Receiver<usize>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Operators {
    /// Starts paying on `external`'s replicas (its reviewer key, if any, refunds
    /// `config.refund_percent` of the paid orders): payments `n < gate` at once, at most
    /// `config.concurrency` orders at a time.
    pub fn start(external: &External, config: WorkloadConfig, gate: usize) -> anyhow::Result<Self> {
        let world = Arc::new(World::external(external)?);
        let workload = Arc::new(Workload::new(config, world.clone()));
        let (gate_tx, gate_rx) = watch::channel(gate);
        let (started_tx, started_rx) = watch::channel(0);
        let task = tokio::spawn(workload.clone().run(gate_rx, started_tx));
        Ok(Operators {
            world,
            workload,
            gate: gate_tx,
            started: started_rx,
            task: Some(task),
        })
    }

    /// Lets payments `n < allowed` start (the gate never closes again).
    pub fn open_gate(&self, allowed: usize) {
        self.gate.send_modify(|gate| *gate = (*gate).max(allowed));
    }

    /// How many payments have started.
    pub fn started(&self) -> usize {
        *self.started.borrow()
    }

    /// Waits until `n` payments have started (the gate must allow them).
    pub async fn wait_started(&self, n: usize) -> anyhow::Result<()> {
        let mut started = self.started.clone();
        // Also returns once the workload has ended: it then started all it ever will.
        let _ = started.wait_for(|started| *started >= n).await;
        let reached = *started.borrow();
        ensure!(
            reached >= n,
            "the workload ended after {reached} payments, before payment {n}"
        );
        Ok(())
    }

    /// What the callers did and were told so far.
    pub fn stats(&self) -> WorkloadStats {
        self.workload.stats()
    }

    /// Every order the workload pays, started or not.
    pub fn order_ids(&self) -> Vec<String> {
        (0..self.workload.config.payments)
            .map(|n| self.workload.config.order_id(n))
            .collect()
    }

    /// Opens the gate to every payment and waits until every caller is done.
    pub async fn finish(&mut self) -> anyhow::Result<WorkloadStats> {
        self.open_gate(usize::MAX);
        if let Some(task) = self.task.take() {
            task.await.context("the workload's task failed")??;
        }
        Ok(self.stats())
    }

    /// Reads every order (GetOrder) until none is AWAITING_CONFIRMATION and no refund is
    /// IN_FLIGHT; fails after `bound`, naming the orders still busy.
    pub async fn settle(&self, bound: Duration) -> anyhow::Result<Settled> {
        settle::settle(self.world.clone(), self.order_ids(), bound).await
    }
}

impl Drop for Operators {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
