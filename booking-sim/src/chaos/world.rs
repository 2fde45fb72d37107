//! The world a chaos run drives: its own PostgreSQL, Redis, gateway simulator and coordinator
//! replicas (so it may stop and kill them), or, pointed at running ones, only their endpoints
//! (then only the simulator's faults apply). The API keys, the clients per key and replica, and
//! what the fault runner needs to break and mend each piece.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use payments_client::{Bearer, Client, WatchClient};
use payments_proto::v1::payment_coordinator_client::PaymentCoordinatorClient;
use rand::Rng;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};

use super::{ChaosConfig, External, progress::say};
use crate::{
    psp::{self, RunningSim, SimConfig},
    sim_control::SimControl,
    stack::{
        coordinator::{ReplicaProcess, ReplicaSpec, find_coordinator_binary},
        pg::ThrowawayPg,
        redis::ThrowawayRedis,
    },
};

/// An API key: its id (recorded as operator/actor) and the plaintext (never printed).
#[derive(Clone)]
pub(crate) struct Key {
    pub id: String,
    pub secret: String,
}

/// What this run started, in the order it is torn down (fields drop in declaration order).
pub(crate) struct Owned {
    pub replicas: Vec<tokio::sync::Mutex<ReplicaProcess>>,
    pub pg: Arc<ThrowawayPg>,
    pub redis: Arc<std::sync::Mutex<ThrowawayRedis>>,
    sim: std::sync::Mutex<Option<RunningSim>>,
    pub dir: PathBuf,
    keep_dir: AtomicBool,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.keep_dir.load(Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes a directory when dropped, unless emptied first.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub(crate) struct World {
    /// The replicas' gRPC URLs (a restarted replica keeps its URL).
    pub urls: Vec<String>,
    pub database_url: String,
    pub sim: SimControl,
    gateway_url: String,
    pub operators: Vec<Key>,
    pub reviewers: Vec<Key>,
    /// `[key][replica]`: one connection per replica, shared by every key.
    pub operator_clients: Vec<Vec<Client>>,
    pub reviewer_clients: Vec<Vec<Client>>,
    /// A `service` key's `WatchEvents` clients, one per replica, on connections of their own
    /// (the live feed check); empty when pointed at running services (no such key given).
    pub watch_clients: Vec<WatchClient>,
    /// Calls the workload has in flight on each replica, with when each started (the fault
    /// runner waits for a long one before it kills or freezes a replica, to catch it
    /// mid-payment).
    pub in_flight: Vec<std::sync::Mutex<HashMap<u64, Instant>>>,
    next_call: AtomicU64,
    pub owned: Option<Owned>,
}

/// Records one call in flight on a replica for as long as it lives.
pub(crate) struct InFlight<'a> {
    calls: &'a std::sync::Mutex<HashMap<u64, Instant>>,
    id: u64,
}

impl<'a> InFlight<'a> {
    pub fn enter(world: &'a World, replica: usize) -> Option<InFlight<'a>> {
        let calls = world.in_flight.get(replica)?;
        let id = world.next_call.fetch_add(1, Ordering::Relaxed);
        calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id, Instant::now());
        Some(InFlight { calls, id })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}

/// Coordinator settings of the owned replicas, before the caller's own `--coordinator-arg`s.
fn replica_flags(config: &ChaosConfig) -> Vec<String> {
    let lease = config.lease_ttl.as_millis().to_string();
    let sweep = config.recovery_sweep.as_millis().to_string();
    let timeout = config.gateway_timeout.as_millis().to_string();
    let mut flags: Vec<String> = [
        "--lease-ttl-ms",
        &lease,
        "--recovery-sweep-ms",
        &sweep,
        "--gateway-timeout-ms",
        &timeout,
        "--gateway-flow",
        &config.gateway_flow,
        // The breaker stays on, sensitive to real storms only, and closes again quickly: the
        // run keeps making progress and any PAYMENTS_PAUSED shows among the refusals.
        "--breaker-window-ms",
        "10000",
        "--breaker-min-calls",
        "30",
        "--breaker-failure-percent",
        "60",
        "--breaker-cooldown-ms",
        "1000",
        // Rate limits far above what the workload sends.
        "--rate-limit-per-second",
        "5000",
        "--rate-limit-burst",
        "10000",
        "--shutdown-grace-ms",
        "2000",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    flags.extend(config.coordinator_args.iter().cloned());
    flags
}

fn new_key(id: String) -> Key {
    let bytes: [u8; 24] = rand::rng().random();
    let secret = format!("pk_chaos_{}", hex::encode(bytes));
    Key { id, secret }
}

fn lazy_channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad coordinator URL {url}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

fn clients_for(keys: &[Key], channels: &[Channel]) -> anyhow::Result<Vec<Vec<Client>>> {
    keys.iter()
        .map(|key| {
            let bearer = Bearer::new(&key.secret)
                .with_context(|| format!("the API key of {} is not usable", key.id))?;
            Ok(channels
                .iter()
                .map(|channel| {
                    PaymentCoordinatorClient::with_interceptor(channel.clone(), bearer.clone())
                })
                .collect())
        })
        .collect()
}

impl World {
    /// Starts everything (or connects to the given endpoints).
    pub async fn start(config: &ChaosConfig) -> anyhow::Result<World> {
        match &config.external {
            Some(external) => World::external(external),
            None => World::owned(config).await,
        }
    }

    pub(crate) fn external(external: &External) -> anyhow::Result<World> {
        if external.coordinators.is_empty() || external.operator_keys.is_empty() {
            bail!("need at least one coordinator URL and one operator key");
        }
        let operators: Vec<Key> = external
            .operator_keys
            .iter()
            .enumerate()
            .map(|(i, secret)| Key {
                id: format!("operator key #{}", i + 1),
                secret: secret.clone(),
            })
            .collect();
        let reviewers: Vec<Key> = external
            .reviewer_key
            .iter()
            .map(|secret| Key {
                id: "reviewer key".to_owned(),
                secret: secret.clone(),
            })
            .collect();
        let channels = external
            .coordinators
            .iter()
            .map(|url| lazy_channel(url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(World {
            urls: external.coordinators.clone(),
            database_url: external.database_url.clone(),
            sim: SimControl::new(&external.gateway_url)?,
            gateway_url: external.gateway_url.clone(),
            operator_clients: clients_for(&operators, &channels)?,
            reviewer_clients: clients_for(&reviewers, &channels)?,
            watch_clients: Vec::new(),
            in_flight: external
                .coordinators
                .iter()
                .map(|_| Default::default())
                .collect(),
            next_call: AtomicU64::new(0),
            operators,
            reviewers,
            owned: None,
        })
    }

    async fn owned(config: &ChaosConfig) -> anyhow::Result<World> {
        let binary = find_coordinator_binary(config.coordinator_bin.as_deref())?;
        let suffix: u32 = rand::rng().random();
        let dir = std::env::temp_dir().join(format!(
            "booking-sim-chaos-{}-{}-{suffix:08x}",
            config.seed,
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the work directory {}", dir.display()))?;
        // Until `Owned` takes it over, a failed start removes the directory.
        let mut dir_guard = DirGuard(Some(dir.clone()));

        say(&format!(
            "phase: starting a throwaway PostgreSQL, Redis and the gateway simulator (work dir {})",
            dir.display()
        ));
        let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
            .await
            .context("the PostgreSQL start task failed")?
            .context("starting a throwaway PostgreSQL")?;
        let redis = tokio::task::spawn_blocking(ThrowawayRedis::start)
            .await
            .context("the Redis start task failed")?
            .context("starting a throwaway Redis")?;
        let sim = psp::spawn(SimConfig {
            seed: config.seed,
            ..SimConfig::default()
        })
        .await
        .context("starting the gateway simulator")?;
        let sim_url = sim.base_url();
        say(&format!(
            "  PostgreSQL {}, Redis {}, simulator {sim_url}",
            pg.url_base(),
            redis.url()
        ));

        // Operators (one per caller of an order, at least three), two reviewers, an admin, and a
        // feed consumer.
        let operator_count = config.callers_per_order.max(3);
        let operators: Vec<Key> = (1..=operator_count)
            .map(|i| new_key(format!("op-{i}")))
            .collect();
        let reviewers: Vec<Key> = (1..=2).map(|i| new_key(format!("rev-{i}"))).collect();
        let admin = new_key("admin-1".to_owned());
        let feed = new_key("feed-1".to_owned());
        let mut toml = String::new();
        for (key, role) in operators
            .iter()
            .map(|k| (k, "operator"))
            .chain(reviewers.iter().map(|k| (k, "reviewer")))
            .chain([(&admin, "admin"), (&feed, "service")])
        {
            let hash = hex::encode(Sha256::digest(key.secret.as_bytes()));
            toml.push_str(&format!(
                "[[keys]]\nid = \"{}\"\nrole = \"{role}\"\nsha256 = \"{hash}\"\n\n",
                key.id
            ));
        }
        let keys_file = dir.join("api-keys.toml");
        std::fs::write(&keys_file, toml).context("writing the API keys file")?;

        let database_url = format!("{}/payments", pg.url_base());
        let flags = replica_flags(config);
        say(&format!(
            "phase: starting {} coordinator replicas ({}; {})",
            config.replicas,
            binary.display(),
            flags.join(" ")
        ));
        dir_guard.0 = None;
        let mut owned = Owned {
            replicas: Vec::new(),
            pg: Arc::new(pg),
            redis: Arc::new(std::sync::Mutex::new(redis)),
            sim: std::sync::Mutex::new(None),
            dir: dir.clone(),
            keep_dir: AtomicBool::new(false),
        };
        let redis_url = owned
            .redis
            .lock()
            .map(|r| r.url())
            .map_err(|_| anyhow::anyhow!("the Redis handle is poisoned"))?;
        let mut urls = Vec::new();
        for i in 0..config.replicas {
            let replica_id = format!("r{i}");
            let spec = ReplicaSpec {
                binary: binary.clone(),
                replica_id: replica_id.clone(),
                database_url: database_url.clone(),
                redis_url: redis_url.clone(),
                redis_key_prefix: "chaos:".to_owned(),
                gateway_url: sim_url.clone(),
                api_keys_file: keys_file.clone(),
                journal_dir: dir.join(format!("journal-{replica_id}")),
                extra: flags.clone(),
                log: dir.join(format!("{replica_id}.log")),
                listen: None,
                env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
            };
            let process = match ReplicaProcess::spawn(spec).await {
                Ok(process) => process,
                Err(error) => {
                    owned.keep_dir.store(true, Ordering::SeqCst);
                    return Err(error.context(format!("starting replica {replica_id}")));
                }
            };
            say(&format!(
                "  replica {replica_id} on {} (pid {}, log {})",
                process.url(),
                process.pid(),
                process.log_path().display()
            ));
            urls.push(process.url());
            owned.replicas.push(tokio::sync::Mutex::new(process));
        }
        if let Ok(mut slot) = owned.sim.lock() {
            *slot = Some(sim);
        }
        let channels = urls
            .iter()
            .map(|url| lazy_channel(url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let feed_bearer = Bearer::new(&feed.secret).context("the feed key is not usable")?;
        let watch_clients = urls
            .iter()
            .map(|url| {
                Ok(WatchClient::with_bearer(
                    lazy_channel(url)?,
                    feed_bearer.clone(),
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(World {
            database_url,
            sim: SimControl::new(&sim_url)?,
            gateway_url: sim_url,
            operator_clients: clients_for(&operators, &channels)?,
            reviewer_clients: clients_for(&reviewers, &channels)?,
            watch_clients,
            in_flight: urls.iter().map(|_| Default::default()).collect(),
            next_call: AtomicU64::new(0),
            operators,
            reviewers,
            urls,
            owned: Some(owned),
        })
    }

    /// How long the oldest call the workload has in flight on `replica` has been waiting.
    pub fn oldest_call(&self, replica: usize) -> Option<Duration> {
        let calls = self
            .in_flight
            .get(replica)?
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        calls.values().min().map(Instant::elapsed)
    }

    /// The gateway simulator's base URL.
    pub fn sim_url(&self) -> &str {
        &self.gateway_url
    }

    pub fn replicas(&self) -> usize {
        self.urls.len()
    }

    /// Keeps the work directory (logs, journals) after the run, e.g. because it failed.
    pub fn keep_dir(&self) -> Option<PathBuf> {
        let owned = self.owned.as_ref()?;
        owned.keep_dir.store(true, Ordering::SeqCst);
        Some(owned.dir.clone())
    }

    /// Whether PostgreSQL runs (always true for an external world: not ours to know).
    pub async fn pg_running(&self) -> bool {
        let Some(owned) = &self.owned else {
            return true;
        };
        let pg = owned.pg.clone();
        tokio::task::spawn_blocking(move || pg.is_running())
            .await
            .unwrap_or(false)
    }

    pub async fn pg_stop(&self) -> anyhow::Result<()> {
        let owned = self.owned.as_ref().context("PostgreSQL is not ours")?;
        let pg = owned.pg.clone();
        tokio::task::spawn_blocking(move || pg.stop())
            .await
            .context("the PostgreSQL stop task failed")?
    }

    pub async fn pg_start(&self) -> anyhow::Result<()> {
        let owned = self.owned.as_ref().context("PostgreSQL is not ours")?;
        let pg = owned.pg.clone();
        tokio::task::spawn_blocking(move || pg.start_again())
            .await
            .context("the PostgreSQL start task failed")?
    }

    async fn with_redis<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ThrowawayRedis) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let owned = self.owned.as_ref().context("Redis is not ours")?;
        let redis = owned.redis.clone();
        tokio::task::spawn_blocking(move || {
            let mut redis = redis
                .lock()
                .map_err(|_| anyhow::anyhow!("the Redis handle is poisoned"))?;
            f(&mut redis)
        })
        .await
        .context("the Redis task failed")?
    }

    pub async fn redis_running(&self) -> anyhow::Result<bool> {
        if self.owned.is_none() {
            return Ok(true);
        }
        self.with_redis(|r| Ok(r.is_running())).await
    }

    pub async fn redis_stop(&self, save: bool) -> anyhow::Result<()> {
        self.with_redis(move |r| if save { r.stop_saving() } else { r.stop() })
            .await
    }

    pub async fn redis_start(&self) -> anyhow::Result<()> {
        self.with_redis(|r| r.start_again()).await
    }

    /// Replica `i` (owned worlds only).
    pub fn replica(&self, i: usize) -> anyhow::Result<&tokio::sync::Mutex<ReplicaProcess>> {
        self.owned
            .as_ref()
            .context("the replicas are not ours")?
            .replicas
            .get(i)
            .with_context(|| format!("no replica r{i}"))
    }

    /// Stops what this run started: replicas (SIGKILL), PostgreSQL, Redis, the simulator. The
    /// work directory goes too, unless [`Self::keep_dir`] was called.
    pub async fn teardown(&self) {
        let Some(owned) = &self.owned else {
            return;
        };
        for replica in &owned.replicas {
            let _ = replica.lock().await.kill_9();
        }
        let _ = self.pg_stop().await;
        let _ = self
            .with_redis(|r| if r.is_running() { r.stop() } else { Ok(()) })
            .await;
        let sim = owned.sim.lock().ok().and_then(|mut slot| slot.take());
        if let Some(sim) = sim {
            sim.shutdown().await;
        }
    }
}
