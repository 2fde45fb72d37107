//! The fault runner: applies the schedule's faults in order, each when the workload reaches its
//! payment (the workload waits at that payment until the fault is applied), holds it, mends it,
//! and leaves at least the minimum gap before the next one. Also the final mending of
//! everything, and the watch for replicas that die on their own.

use std::{collections::BTreeMap, sync::Arc, sync::Mutex, time::Duration};

use anyhow::{Context, bail};
use tokio::sync::watch;

use super::{
    progress::say,
    schedule::{Baseline, Fault, FaultKind, Schedule, ScheduledFault},
    world::World,
};

/// How long a simulator fault stays armed past its window waiting for a matching call.
const ARMED_GRACE: Duration = Duration::from_secs(15);

/// What the runner did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultTally {
    /// Faults applied, per kind (a simulator fault counts once a call met it).
    pub applied: BTreeMap<FaultKind, u32>,
    /// Simulator faults that no matching call met while they were armed.
    pub not_triggered: BTreeMap<FaultKind, u32>,
    /// Entries of the schedule done (applied or not).
    pub done: usize,
    /// What is happening now, for the progress line.
    pub current: Option<String>,
    /// Replicas found dead without a fault having killed them (each was restarted).
    pub unexpected_exits: Vec<String>,
}

pub(crate) struct Runner {
    world: Arc<World>,
    baseline: Baseline,
    min_gap: Duration,
    /// How far past a fault's payment the workload may run while the fault waits for its gap.
    lookahead: usize,
    tally: Mutex<FaultTally>,
    http: reqwest::Client,
}

impl Runner {
    pub fn new(
        world: Arc<World>,
        baseline: Baseline,
        min_gap: Duration,
        lookahead: usize,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Runner {
            world,
            baseline,
            min_gap,
            lookahead,
            tally: Mutex::new(FaultTally::default()),
            http,
        })
    }

    pub fn tally(&self) -> FaultTally {
        self.tally
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn update(&self, f: impl FnOnce(&mut FaultTally)) {
        let mut guard = self
            .tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard);
    }

    /// Runs the schedule. `started` says how many of the `payments` have started; `gate` lets
    /// the workload start payment `n` only while `n < gate`. A fault is applied once the workload
    /// has reached its payment and the gap since the last one has passed; meanwhile the workload
    /// may run up to `lookahead` payments further (so it is busy, not drained, when the fault
    /// comes), never to its last payment.
    pub async fn run(
        &self,
        schedule: &Schedule,
        payments: usize,
        mut started: watch::Receiver<usize>,
        gate: watch::Sender<usize>,
    ) -> anyhow::Result<()> {
        self.world
            .sim
            .set_faults(self.baseline.config())
            .await
            .context("setting the simulator's baseline")?;
        let limit = |at: usize| {
            at.saturating_add(self.lookahead)
                .min(payments.saturating_sub(1))
                .max(at)
        };
        let total = schedule.faults.len();
        let mut last_end = tokio::time::Instant::now();
        for (i, entry) in schedule.faults.iter().enumerate() {
            gate.send_replace(limit(entry.at_payment));
            started
                .wait_for(|n| *n >= entry.at_payment)
                .await
                .context("the workload stopped before the schedule ended")?;
            tokio::time::sleep_until(last_end + self.min_gap).await;
            let next = schedule
                .faults
                .get(i + 1)
                .map_or(usize::MAX, |f| limit(f.at_payment));
            let now = *started.borrow();
            self.apply(entry, total, now, || {
                gate.send_replace(next);
            })
            .await
            .with_context(|| format!("fault #{} ({})", entry.number, entry.fault))?;
            last_end = tokio::time::Instant::now();
        }
        gate.send_replace(usize::MAX);
        self.update(|t| t.current = None);
        Ok(())
    }

    /// Applies one fault; `opened` is called once it is in place (the workload goes on).
    async fn apply(
        &self,
        entry: &ScheduledFault,
        total: usize,
        started: usize,
        opened: impl FnOnce(),
    ) -> anyhow::Result<()> {
        let kind = entry.fault.kind();
        say(&format!(
            "fault {}/{total} at payment {} ({started} started): {}",
            entry.number, entry.at_payment, entry.fault
        ));
        self.update(|t| t.current = Some(format!("#{} {}", entry.number, kind)));
        let mut applied = true;
        match &entry.fault {
            Fault::Kill9 {
                replica,
                down,
                slow_ms,
            } => {
                // The workload goes on meanwhile: its calls are what the signal should catch.
                opened();
                self.catch_mid_call(*replica, *slow_ms).await?;
                {
                    let mut process = self.world.replica(*replica)?.lock().await;
                    self.note_unexpected_exit(&mut process)?;
                    process.kill_9()?;
                }
                self.world.sim.set_faults(self.baseline.config()).await?;
                tokio::time::sleep(*down).await;
                let mut process = self.world.replica(*replica)?.lock().await;
                process.restart().await?;
                say(&format!(
                    "  r{replica} restarted (pid {}) after {down:?}",
                    process.pid()
                ));
            }
            Fault::Sigstop {
                replica,
                frozen,
                slow_ms,
            } => {
                opened();
                self.catch_mid_call(*replica, *slow_ms).await?;
                self.world.replica(*replica)?.lock().await.pause()?;
                self.world.sim.set_faults(self.baseline.config()).await?;
                tokio::time::sleep(*frozen).await;
                self.world.replica(*replica)?.lock().await.resume()?;
                say(&format!("  r{replica} resumed (SIGCONT) after {frozen:?}"));
            }
            Fault::Postgres { down } => {
                self.world.pg_stop().await?;
                opened();
                tokio::time::sleep(*down).await;
                self.world.pg_start().await?;
                say(&format!("  PostgreSQL back after {down:?}"));
            }
            Fault::Redis { down, save } => {
                self.world.redis_stop(*save).await?;
                opened();
                tokio::time::sleep(*down).await;
                self.world.redis_start().await?;
                say(&format!("  Redis back after {down:?}"));
            }
            Fault::Latency { window, .. } => {
                self.set_sim(&entry.fault).await?;
                opened();
                tokio::time::sleep(*window).await;
                self.world.sim.set_faults(self.baseline.config()).await?;
            }
            Fault::Sim { window, sim, .. } => {
                self.set_sim(&entry.fault).await?;
                opened();
                tokio::time::sleep(*window).await;
                // Keep it armed until a call met it (bounded): the schedule promises the kind.
                let deadline = tokio::time::Instant::now() + ARMED_GRACE;
                loop {
                    let left = self.forced_left().await?;
                    if left < sim.forced as usize {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        applied = false;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                self.world.sim.set_faults(self.baseline.config()).await?;
                if !applied {
                    say(&format!(
                        "  no {} call met the fault while it was armed",
                        sim.operations.join("/")
                    ));
                }
            }
        }
        self.update(|t| {
            t.done += 1;
            if applied {
                *t.applied.entry(kind).or_default() += 1;
            } else {
                *t.not_triggered.entry(kind).or_default() += 1;
            }
        });
        Ok(())
    }

    /// Slows the gateway by `slow_ms` and waits (at most 3 s) until a call of the workload has
    /// been in flight on `replica` for a while (longer than a refusal takes: it is being paid, at
    /// the slowed gateway), so that the signal catches the replica in the middle of a payment.
    /// The caller restores the baseline right after the signal.
    async fn catch_mid_call(&self, replica: usize, slow_ms: u64) -> anyhow::Result<()> {
        self.world
            .sim
            .set_faults(self.baseline.slowed(slow_ms))
            .await?;
        let long = Duration::from_millis((slow_ms / 3).max(50));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            if self
                .world
                .oldest_call(replica)
                .is_some_and(|age| age >= long)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                say(&format!(
                    "  no call in flight on r{replica} for {long:?}: signalling it anyway"
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn set_sim(&self, fault: &Fault) -> anyhow::Result<()> {
        let config = fault
            .sim_config(&self.baseline)
            .context("not a simulator fault")?;
        self.world.sim.set_faults(config).await
    }

    /// How many forced faults the simulator still has queued (`GET /_sim/faults`).
    async fn forced_left(&self) -> anyhow::Result<usize> {
        let url = format!("{}/_sim/faults", self.world.sim_url().trim_end_matches('/'));
        let response = self
            .http
            .get(url)
            .send()
            .await
            .context("reading the simulator's faults")?;
        if !response.status().is_success() {
            bail!("GET /_sim/faults answered {}", response.status());
        }
        let config: serde_json::Value = response
            .json()
            .await
            .context("decoding the simulator's faults")?;
        Ok(config
            .get("next")
            .and_then(|next| next.as_array())
            .map_or(0, Vec::len))
    }

    /// Records (and reports) a replica that exited although no fault killed it.
    fn note_unexpected_exit(
        &self,
        process: &mut crate::stack::coordinator::ReplicaProcess,
    ) -> anyhow::Result<bool> {
        if let Some(status) = process.try_wait()? {
            let line = format!(
                "replica {} (pid {}) exited on its own ({status}) at {:.1}s",
                process.replica_id(),
                process.pid(),
                super::progress::elapsed_secs()
            );
            say(&format!("  UNEXPECTED: {line}"));
            self.update(|t| t.unexpected_exits.push(line));
            return Ok(true);
        }
        Ok(false)
    }

    /// Restarts every replica that died without a fault killing it (the runner holds a
    /// replica's lock while it kills and restarts it, so a free dead replica is such a one).
    pub async fn watch_replicas(&self) -> anyhow::Result<()> {
        let Some(owned) = &self.world.owned else {
            return Ok(());
        };
        for replica in &owned.replicas {
            let Ok(mut process) = replica.try_lock() else {
                continue;
            };
            if self.note_unexpected_exit(&mut process)? {
                process.restart().await?;
            }
        }
        Ok(())
    }

    /// Ends every fault: the simulator without faults, PostgreSQL and Redis up, every replica
    /// running and not frozen.
    pub async fn heal(&self) -> anyhow::Result<()> {
        self.update(|t| t.current = Some("mending".to_owned()));
        self.world
            .sim
            .clear_faults()
            .await
            .context("clearing the simulator's faults")?;
        if let Some(owned) = &self.world.owned {
            if !self.world.pg_running().await {
                say("  PostgreSQL was down: starting it");
                self.world.pg_start().await?;
            }
            if !self.world.redis_running().await? {
                say("  Redis was down: starting it");
                self.world.redis_start().await?;
            }
            for replica in &owned.replicas {
                let mut process = replica.lock().await;
                if process.is_paused() {
                    say(&format!("  {} was frozen: SIGCONT", process.replica_id()));
                    process.resume()?;
                }
                if !process.is_running() {
                    self.note_unexpected_exit(&mut process)?;
                    say(&format!(
                        "  {} was down: restarting it",
                        process.replica_id()
                    ));
                    process.restart().await?;
                }
            }
        }
        self.update(|t| t.current = None);
        Ok(())
    }
}
