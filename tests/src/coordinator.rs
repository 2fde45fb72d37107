//! A test environment for the coordinator: a fresh PostgreSQL database and Redis key prefix of
//! its own (so tests run in parallel), the gateway simulator on a random port, an API keys file
//! with one key per role, and any number of coordinator replicas served on port 0 and reached
//! over real gRPC.

use std::{path::PathBuf, time::Duration};

use booking_sim::{
    psp::{self, RunningSim, SimConfig},
    sim_control::SimControl,
};
use clap::Parser;
use coordinator::{config::Settings, server::Application};
use payments_proto::v1::payment_coordinator_client::PaymentCoordinatorClient;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// The four roles of CONTRACT §4 with their key ids; the plaintext key is `key_for(id)`.
pub const OPERATOR: &str = "op-alice";
pub const OPERATOR_2: &str = "op-bob";
pub const REVIEWER: &str = "rev-carol";
pub const SERVICE: &str = "svc-fulfilment";
pub const ADMIN: &str = "admin-dave";

/// The plaintext API key of a key id (only the hash goes into the keys file).
pub fn key_for(id: &str) -> String {
    format!("pk_test_{id}_{}", "7f3a9c")
}

fn base_database_url() -> String {
    std::env::var("DATABASE_URL_BASE")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".to_owned())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn random_suffix() -> String {
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// One test's world.
pub struct TestEnv {
    pub db_name: String,
    database_base: String,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub sim: RunningSim,
    pub sim_control: SimControl,
    dir: PathBuf,
    keys_file: PathBuf,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with_sim(SimConfig::default()).await
    }

    pub async fn with_sim(config: SimConfig) -> Self {
        Self::with(config, base_database_url()).await
    }

    /// With the simulator configured as given and PostgreSQL at `database_base`
    /// (`postgres://user@host:port`).
    pub async fn with(config: SimConfig, database_base: String) -> Self {
        let suffix = random_suffix();
        let db_name = format!("coord_test_{suffix}");
        let dir = std::env::temp_dir().join(format!("coordinator-test-{suffix}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let keys_file = dir.join("api-keys.toml");
        let mut toml = String::new();
        for (id, role) in [
            (OPERATOR, "operator"),
            (OPERATOR_2, "operator"),
            (REVIEWER, "reviewer"),
            (SERVICE, "service"),
            (ADMIN, "admin"),
        ] {
            let hash = hex::encode(Sha256::digest(key_for(id).as_bytes()));
            toml.push_str(&format!(
                "[[keys]]\nid = \"{id}\"\nrole = \"{role}\"\nsha256 = \"{hash}\"\n\n"
            ));
        }
        std::fs::write(&keys_file, toml).expect("write keys file");
        let sim = psp::spawn(config).await.expect("simulator");
        let sim_control = SimControl::new(&sim.base_url()).expect("sim control");
        Self {
            database_url: format!("{database_base}/{db_name}"),
            database_base,
            db_name,
            redis_url: redis_url(),
            redis_prefix: format!("test:{suffix}:"),
            sim,
            sim_control,
            dir,
            keys_file,
        }
    }

    /// The settings of one replica of this environment, plus `extra` flags.
    pub fn settings(&self, replica: &str, extra: &[&str]) -> Settings {
        Settings::try_parse_from(self.args(replica, extra, true)).expect("test settings parse")
    }

    /// Command-line arguments of one replica; `with_keys: false` leaves out `--api-keys-file`.
    pub fn args(&self, replica: &str, extra: &[&str], with_keys: bool) -> Vec<String> {
        let sim_url = self.sim.base_url();
        let journal = self.journal_dir(replica);
        let journal = journal.to_string_lossy().into_owned();
        let keys = self.keys_file.to_string_lossy().into_owned();
        let mut args = vec![
            "coordinator",
            "--coordinator-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--database-url",
            &self.database_url,
            "--redis-url",
            &self.redis_url,
            "--redis-key-prefix",
            &self.redis_prefix,
            "--gateway-url",
            &sim_url,
            "--journal-dir",
            &journal,
            "--replica-id",
            replica,
        ];
        if with_keys {
            args.extend_from_slice(&["--api-keys-file", &keys]);
        }
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect()
    }

    /// The API keys file (hashes only) every replica of this environment reads.
    pub fn keys_file(&self) -> &std::path::Path {
        &self.keys_file
    }

    /// Replica `replica`'s local journal directory.
    pub fn journal_dir(&self, replica: &str) -> PathBuf {
        self.dir.join(format!("journal-{replica}"))
    }

    /// Starts a replica (its server on port 0) and waits until it listens.
    pub async fn replica(&self, name: &str, extra: &[&str]) -> Replica {
        Replica::start(self.settings(name, extra)).await
    }

    /// Drops the database and the Redis keys. Call at the end of a passing test.
    pub async fn cleanup(self) {
        self.sim.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok((client, connection)) = tokio_postgres::connect(
            &format!("{}/postgres", self.database_base),
            tokio_postgres::NoTls,
        )
        .await
        {
            let task = tokio::spawn(connection);
            let _ = client
                .execute(
                    &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db_name),
                    &[],
                )
                .await;
            drop(client);
            let _ = task.await;
        }
        if let Ok(client) = redis::Client::open(self.redis_url.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.redis_prefix))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
            }
        }
    }

    /// A PostgreSQL client on this test's database, for assertions and for the fencing test.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }
}

/// One coordinator replica serving on a random port.
pub struct Replica {
    pub url: String,
    /// Where its `GET /metrics` is served (METRICS_LISTEN, port 0).
    pub metrics_addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    pub async fn start(settings: Settings) -> Self {
        let app = Application::build(&settings)
            .await
            .expect("coordinator builds");
        let url = format!("http://{}", app.local_addr().expect("addr"));
        let metrics_addr = app.metrics_addr().expect("metrics addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until(shutdown.clone()));
        Self {
            url,
            metrics_addr,
            shutdown,
            task,
        }
    }

    /// A client authenticated as `key_id`.
    pub async fn client(&self, key_id: &str) -> Client {
        client(&self.url, Some(&key_for(key_id))).await
    }

    /// Graceful stop: waits for attempts in flight.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("replica did not stop cleanly: {other:?}"),
        }
    }
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = PaymentCoordinatorClient<InterceptedService<Channel, Bearer>>;

/// A client for `url` with `key` (or none).
pub async fn client(url: &str, key: Option<&str>) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the coordinator");
    let bearer = Bearer(key.map(|k| format!("Bearer {k}").parse().expect("ascii key")));
    PaymentCoordinatorClient::with_interceptor(channel, bearer)
}
