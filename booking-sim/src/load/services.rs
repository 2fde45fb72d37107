//! What a load run starts, or finds: the run's own Redis (a throwaway `redis-server`, so that
//! its command counts are this run's alone) or a given one; per flow a fresh database on the
//! given PostgreSQL server, a fresh in-process simulator answering at once, and the coordinator
//! replicas (the real binary) set to that flow. Or, with `--coordinators`, only their endpoints.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use gateway_client::Flow;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::counters::PgServer;
use crate::{
    chaos::progress::say,
    psp::{self, RunningSim, SimConfig},
    stack::{
        coordinator::{ReplicaProcess, ReplicaSpec, find_coordinator_binary},
        redis::ThrowawayRedis,
    },
};

/// How long a replica may take to stop after SIGTERM (nothing is in flight then) before it is
/// killed.
const STOP_GUARD: Duration = Duration::from_secs(30);

/// Everything the owned services are started with.
#[derive(Clone, Debug)]
pub struct OwnedConfig {
    pub replicas: usize,
    /// `postgres://user@host:port`: the server the fresh databases are made on.
    pub database_url_base: String,
    /// `None`: a throwaway `redis-server` of the run's own.
    pub redis_url: Option<String>,
    pub coordinator_bin: Option<PathBuf>,
    /// More arguments for every replica, after the run's own.
    pub coordinator_args: Vec<String>,
    /// The replicas' `RUST_LOG`.
    pub replica_log: String,
    /// Each replica's tokio worker threads (`TOKIO_WORKER_THREADS`); `None`: tokio's default,
    /// one per core the replica may use.
    pub replica_workers: Option<usize>,
    /// Operator keys to make (one per caller).
    pub operators: usize,
    /// Requests the simulator must remember for the overhead figures.
    pub remembered_requests: usize,
    pub keep_work_dir: bool,
}

/// The services shared by every flow of an owned run.
pub struct Owned {
    pub pg: PgServer,
    /// Kept alive for the run; stopped (and its files removed) when dropped.
    _redis: Option<ThrowawayRedis>,
    pub redis_url: String,
    /// Whether Redis is this run's alone.
    pub redis_is_ours: bool,
    pub binary: PathBuf,
    pub operator_keys: Vec<String>,
    keys_file: PathBuf,
    dir: PathBuf,
    run_id: String,
    config: OwnedConfig,
}

/// One flow's database, simulator and replicas.
pub struct FlowStack {
    pub flow: Flow,
    pub db_name: String,
    pub database_url: String,
    pub sim: RunningSim,
    pub replicas: Vec<ReplicaProcess>,
}

impl FlowStack {
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(ReplicaProcess::url).collect()
    }

    /// `(replica id, pid)` of each replica.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.replicas
            .iter()
            .map(|r| (r.replica_id().to_owned(), r.pid()))
            .collect()
    }

    /// SIGTERM to every replica, then waits for each to exit (killed past [`STOP_GUARD`]).
    pub async fn stop_replicas(&mut self) -> anyhow::Result<()> {
        for replica in &self.replicas {
            replica.terminate()?;
        }
        for replica in &mut self.replicas {
            if let Err(error) = replica.wait_exit(STOP_GUARD).await {
                say(&format!("  {error:#}: killing it"));
                replica.kill_9()?;
            }
        }
        Ok(())
    }
}

fn new_secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    format!("pk_load_{}", hex::encode(bytes))
}

impl Owned {
    pub async fn start(config: OwnedConfig) -> anyhow::Result<Owned> {
        let binary = find_coordinator_binary(config.coordinator_bin.as_deref())?;
        let run_id = format!("{:08x}", rand::rng().random::<u32>());
        let dir =
            std::env::temp_dir().join(format!("booking-sim-load-{}-{run_id}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the work directory {}", dir.display()))?;

        let operator_keys: Vec<String> =
            (0..config.operators.max(1)).map(|_| new_secret()).collect();
        let mut toml = String::new();
        for (i, key) in operator_keys.iter().enumerate() {
            let hash = hex::encode(Sha256::digest(key.as_bytes()));
            toml.push_str(&format!(
                "[[keys]]\nid = \"load-op-{i}\"\nrole = \"operator\"\nsha256 = \"{hash}\"\n\n"
            ));
        }
        let keys_file = dir.join("api-keys.toml");
        std::fs::write(&keys_file, toml).context("writing the API keys file")?;

        let pg = PgServer::connect(&config.database_url_base).await?;
        let (redis, redis_url) = match &config.redis_url {
            Some(url) => (None, url.clone()),
            None => {
                let redis = tokio::task::spawn_blocking(ThrowawayRedis::start)
                    .await
                    .context("the Redis start task failed")?
                    .context("starting a throwaway redis-server")?;
                let url = redis.url();
                (Some(redis), url)
            }
        };
        Ok(Owned {
            pg,
            redis_is_ours: redis.is_some(),
            _redis: redis,
            redis_url,
            binary,
            operator_keys,
            keys_file,
            dir,
            run_id,
            config,
        })
    }

    /// A fresh database, simulator and replicas running `flow`.
    pub async fn start_flow(&self, flow: Flow) -> anyhow::Result<FlowStack> {
        let db_name = format!("load_{}_{}", self.run_id, flow.as_str());
        self.pg.create_database(&db_name).await?;
        let database_url = self.pg.database_url(&db_name);
        let sim = match psp::spawn(SimConfig {
            remembered_requests: self.config.remembered_requests,
            ..SimConfig::default()
        })
        .await
        {
            Ok(sim) => sim,
            Err(error) => {
                let _ = self.pg.drop_database(&db_name).await;
                return Err(error).context("starting the gateway simulator");
            }
        };
        let mut stack = FlowStack {
            flow,
            db_name,
            database_url,
            sim,
            replicas: Vec::new(),
        };
        if let Err(error) = self.start_replicas(&mut stack).await {
            self.finish_flow(stack).await;
            return Err(error);
        }
        Ok(stack)
    }

    async fn start_replicas(&self, stack: &mut FlowStack) -> anyhow::Result<()> {
        let flow = stack.flow.as_str();
        let mut extra: Vec<String> = [
            "--gateway-flow",
            flow,
            // Far above what the callers send: the limiter still runs, it never refuses.
            "--rate-limit-per-second",
            "1000000",
            "--rate-limit-burst",
            "1000000",
            "--shutdown-grace-ms",
            "5000",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        extra.extend(self.config.coordinator_args.iter().cloned());
        let sim_url = stack.sim.base_url();
        for i in 0..self.config.replicas {
            let replica_id = format!("{flow}-r{i}");
            let spec = ReplicaSpec {
                binary: self.binary.clone(),
                replica_id: replica_id.clone(),
                database_url: stack.database_url.clone(),
                redis_url: self.redis_url.clone(),
                redis_key_prefix: format!("load:{}:{flow}:", self.run_id),
                gateway_url: sim_url.clone(),
                api_keys_file: self.keys_file.clone(),
                journal_dir: self.dir.join(format!("journal-{replica_id}")),
                extra: extra.clone(),
                log: self.dir.join(format!("{replica_id}.log")),
                listen: None,
                env: std::iter::once(("RUST_LOG".to_owned(), self.config.replica_log.clone()))
                    .chain(
                        self.config
                            .replica_workers
                            .map(|n| ("TOKIO_WORKER_THREADS".to_owned(), n.max(1).to_string())),
                    )
                    .collect(),
            };
            let process = ReplicaProcess::spawn(spec)
                .await
                .with_context(|| format!("starting replica {replica_id}"))?;
            say(&format!(
                "  replica {replica_id} on {} (pid {}, log {})",
                process.url(),
                process.pid(),
                process.log_path().display()
            ));
            stack.replicas.push(process);
        }
        Ok(())
    }

    /// Kills what is left of the flow's replicas, stops its simulator, drops its database.
    pub async fn finish_flow(&self, stack: FlowStack) {
        let FlowStack {
            db_name,
            sim,
            replicas,
            ..
        } = stack;
        drop(replicas);
        sim.shutdown().await;
        if let Err(error) = self.pg.drop_database(&db_name).await {
            say(&format!("  {error:#}"));
        }
    }

    /// Keeps the work directory (the replicas' logs) after the run.
    pub fn keep_work_dir(&mut self) -> &std::path::Path {
        self.config.keep_work_dir = true;
        &self.dir
    }

    /// Stops Redis (if ours) and removes the work directory unless it is to be kept.
    pub async fn teardown(self) {
        let Owned {
            pg,
            _redis: redis,
            dir,
            config,
            ..
        } = self;
        pg.close().await;
        if let Some(redis) = redis {
            let _ = tokio::task::spawn_blocking(move || drop(redis)).await;
        }
        if config.keep_work_dir {
            say(&format!("  work directory kept: {}", dir.display()));
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Running coordinators to drive instead (no `Debug`: it holds API keys).
#[derive(Clone)]
pub struct External {
    pub coordinators: Vec<String>,
    pub tls: payments_client::TlsFiles,
    /// Their gateway simulator (`booking-sim psp`), for its request log and ledger.
    pub gateway_url: String,
    /// Their database, for its commit count (none: not measured).
    pub database_url: Option<String>,
    /// Their Redis, for its command count (none: not measured).
    pub redis_url: Option<String>,
    /// Their process ids, for their RSS (none: not measured).
    pub pids: Vec<u32>,
    pub operator_keys: Vec<String>,
}

impl External {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.coordinators.is_empty() || self.operator_keys.is_empty() {
            bail!("--coordinators needs at least one URL and one operator key (--operator-keys)");
        }
        Ok(())
    }
}

/// `postgres://user@host:port` and the database name of a full database URL.
pub fn split_database_url(url: &str) -> anyhow::Result<(String, String)> {
    let url = url.split('?').next().unwrap_or(url);
    let (base, name) = url
        .rsplit_once('/')
        .filter(|(base, name)| base.contains("://") && !base.ends_with('/') && !name.is_empty())
        .with_context(|| format!("{url:?}: expected postgres://user@host:port/database"))?;
    Ok((base.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_split_into_server_and_name() {
        assert_eq!(
            split_database_url("postgres://root@127.0.0.1:5432/payments").unwrap(),
            (
                "postgres://root@127.0.0.1:5432".to_owned(),
                "payments".to_owned()
            )
        );
        assert_eq!(
            split_database_url("postgres://root@h:1/db?sslmode=disable")
                .unwrap()
                .1,
            "db"
        );
        assert!(split_database_url("postgres://root@h:1").is_err());
        assert!(split_database_url("postgres://root@h:1/").is_err());
    }
}
