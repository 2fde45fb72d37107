//! Start-up and tonic wiring: settings → keys, PostgreSQL (migrated), Redis, gateway client →
//! the coordinator service, health and reflection on one port, behind the auth layer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use gateway_client::{GatewayClient, GatewayConfig};
use payments_proto::v1::{
    FILE_DESCRIPTOR_SET, payment_coordinator_server::PaymentCoordinatorServer,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    api::Coordinator,
    attempt::{OutcomeBoard, Runner},
    auth::{AuthLayer, KeyStore},
    config::Settings,
    feed::Feed,
    journal::{Drainer, Journal},
    lease::Leases,
    recovery::RecoveryWorker,
    store::{Store, StoreError},
};

/// PostgreSQL connections per replica.
const POOL_SIZE: usize = 16;
/// How often health re-checks PostgreSQL.
const HEALTH_PERIOD: Duration = Duration::from_secs(1);
/// Longest pause between connection attempts while PostgreSQL is unreachable at start-up.
const START_RETRY_MAX: Duration = Duration::from_secs(5);

/// A bound, not yet serving coordinator; tests build it on port 0.
pub struct Application {
    listener: TcpListener,
    replica: String,
    keys: Arc<KeyStore>,
    runner: Runner,
    feed: Feed,
    /// Owns the feed's tasks and every attempt task, so shutdown waits for them.
    tracker: TaskTracker,
    /// Stops the feed (and so ends every watch stream) when shutdown starts.
    feed_stop: CancellationToken,
    /// `--dev` keys to show once: (id, role, key).
    pub dev_keys: Vec<(String, String, String)>,
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let replica = settings.replica();
        let (keys, dev_keys) = match (&settings.api_keys_file, settings.dev) {
            (Some(path), _) => (
                KeyStore::load(path)
                    .with_context(|| format!("loading API_KEYS_FILE {}", path.display()))?,
                Vec::new(),
            ),
            (None, true) => {
                let (keys, shown) = KeyStore::generate_dev();
                (
                    keys,
                    shown
                        .into_iter()
                        .map(|k| (k.id, k.role.to_string(), k.key))
                        .collect(),
                )
            }
            (None, false) => anyhow::bail!(
                "API_KEYS_FILE is not set: callers' keys are required (a TOML file of [[keys]] with id, role, sha256). \
                 For a developer machine, start with --dev to generate a key per role."
            ),
        };

        // The journal first: a replica that cannot keep outcomes PostgreSQL cannot take must not
        // start payments (CONTRACT §1.3).
        let journal = Journal::open_as(&settings.journal_dir, &replica).with_context(|| {
            format!(
                "opening the outcome journal in JOURNAL_DIR {}",
                settings.journal_dir.display()
            )
        })?;
        let store = connect_store(&settings.database_url, &journal)
            .await
            .context("connecting to PostgreSQL (DATABASE_URL) and migrating the schema")?;
        let leases = Leases::connect(
            &settings.redis_url,
            &settings.redis_key_prefix,
            settings.lease_ttl(),
        )
        .await
        .context("connecting to Redis (REDIS_URL)")?;
        let gateway = GatewayClient::new(
            GatewayConfig::new(
                settings.gateway_url.clone(),
                settings.gateway_api_key.expose(),
            )
            .with_timeout(settings.gateway_timeout())
            .with_flow(settings.gateway_flow)
            .with_capabilities(settings.gateway_capabilities),
        )
        .context("configuring the gateway client (GATEWAY_*)")?;

        let listener = TcpListener::bind(settings.coordinator_listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.coordinator_listen))?;
        let tracker = TaskTracker::new();
        let feed_stop = CancellationToken::new();
        let feed = Feed::start(
            &settings.database_url,
            store.clone(),
            &tracker,
            feed_stop.clone(),
        )
        .await
        .context("starting the event feed")?;
        let runner = Runner {
            feed: Some(feed.clone()),
            store,
            leases: Some(leases),
            gateway,
            board: OutcomeBoard::default(),
            replica: replica.clone(),
            recovery: settings.recovery(),
            journal,
            stopping: CancellationToken::new(),
        };
        Ok(Self {
            listener,
            replica,
            keys: Arc::new(keys),
            runner,
            feed,
            tracker,
            feed_stop,
            dev_keys,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// This replica's outcome journal (JOURNAL_DIR), e.g. for tests to see what it holds.
    pub fn journal(&self) -> Journal {
        self.runner.journal.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting calls and waits for every
    /// attempt already committed to reach the end of its gateway flow.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = self.tracker;
        let (health, health_service) = tonic_health::server::health_reporter();
        let store = self.runner.store.clone();
        // Registered before the port serves, so a probe never sees "service not registered".
        set_health(&health, store.ping().await).await;
        let health_stop = shutdown.child_token();
        tracker.spawn(watch_health(store, health, health_stop.clone()));
        tracker.spawn(watch_feed_lag(self.feed.clone(), health_stop.clone()));
        // The journal's drainer, then the recovery worker. Outcomes this replica journaled
        // (PostgreSQL was down, possibly before a restart) are written first, as soon as
        // PostgreSQL answers, so that the worker never takes over an attempt whose outcome is
        // sitting here. Then the worker: a first sweep (start-up), then every sweep period; it
        // stops taking attempts over when shutdown starts (the ones it took run to their end).
        // The drainer then passes every second until shutdown.
        let drainer = Drainer {
            journal: self.runner.journal.clone(),
            store: self.runner.store.clone(),
            feed: Some(self.feed.clone()),
        };
        let worker = RecoveryWorker {
            runner: self.runner.clone(),
        };
        let (worker_tracker, drain_stop) = (tracker.clone(), health_stop.clone());
        tracker.spawn(async move {
            drainer.drain_until_answered(&drain_stop).await;
            if drain_stop.is_cancelled() {
                return;
            }
            worker_tracker.spawn(worker.run(worker_tracker.clone(), drain_stop.clone()));
            drainer.run(drain_stop).await;
        });

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let stopping = self.runner.stopping.clone();
        let coordinator = Coordinator::new(self.runner, self.feed, tracker.clone());
        // Watch streams never end on their own: stopping the feed ends them, so the server's
        // graceful shutdown does not wait for watchers forever.
        let feed_stop = self.feed_stop;
        let stop_signal = async move {
            shutdown.cancelled().await;
            feed_stop.cancel();
            // Attempts holding a journaled outcome (PostgreSQL unreachable) let go of it: it
            // stays in the journal for the next start.
            stopping.cancel();
        };

        tracing::info!(addr = %self.listener.local_addr()?, replica = %self.replica, "coordinator listening");
        let served = tonic::transport::Server::builder()
            .layer(AuthLayer::new(self.keys))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(PaymentCoordinatorServer::new(coordinator))
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(self.listener),
                    // tonic's tcp_nodelay does not apply to an incoming stream: without it small
                    // answers and stream frames wait for Nagle's algorithm (up to ~40 ms).
                    |accepted| {
                        accepted.and_then(|socket| {
                            socket.set_nodelay(true)?;
                            Ok(socket)
                        })
                    },
                ),
                stop_signal,
            )
            .await;
        health_stop.cancel();
        tracker.close();
        tracing::info!(
            in_flight = tracker.len(),
            "waiting for attempts in flight to finish"
        );
        tracker.wait().await;
        served?;
        Ok(())
    }
}

/// Connects to PostgreSQL and migrates. While PostgreSQL is unreachable, waits for it (retrying
/// with backoff, saying so) rather than failing: a replica restarted during an outage must come
/// up and drain its journal as soon as the database answers. It does not serve meanwhile (no
/// payment can start without PostgreSQL anyway). Any other error (bad URL, credentials) fails.
async fn connect_store(database_url: &str, journal: &Journal) -> Result<Store, StoreError> {
    let mut delay = Duration::from_millis(250);
    loop {
        match Store::connect(database_url, POOL_SIZE).await {
            Ok(store) => return Ok(store),
            Err(error) if error.is_unavailable() => {
                let pending = journal.len().unwrap_or(0);
                tracing::warn!(%error, journaled_outcomes = pending, retry_in_ms = delay.as_millis() as u64, "PostgreSQL unreachable at start-up; waiting for it");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(START_RETRY_MAX);
            }
            Err(error) => return Err(error),
        }
    }
}

/// `grpc.health.v1`: NOT_SERVING while PostgreSQL is unreachable (no attempt can be recorded,
/// so no payment can start).
async fn watch_health(
    store: Store,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    let mut serving = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_PERIOD) => {}
        }
        let up = store.ping().await;
        if serving != Some(up) {
            if !up {
                tracing::warn!("PostgreSQL unreachable: health NOT_SERVING");
            }
            set_health(&health, up).await;
            serving = Some(up);
        }
    }
}

/// Makes the feed's lag visible: a warning while committed events wait more than a second for
/// their position (a stuck sequencer, an overloaded database).
async fn watch_feed_lag(feed: Feed, stop: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(5);
    const TOLERATED: Duration = Duration::from_secs(1);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        if let Ok(backlog) = feed.backlog().await
            && let Some(oldest) = backlog.oldest
            && let Ok(age) = std::time::SystemTime::now().duration_since(oldest)
            && age > TOLERATED
        {
            let status = feed.status();
            tracing::warn!(
                unstamped = backlog.unstamped,
                oldest_age_ms = age.as_millis() as u64,
                head = status.head,
                "event feed lagging: committed events wait for their position"
            );
        }
    }
}

async fn set_health(health: &tonic_health::server::HealthReporter, up: bool) {
    let status = if up {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    if up {
        health
            .set_serving::<PaymentCoordinatorServer<Coordinator>>()
            .await;
    } else {
        health
            .set_not_serving::<PaymentCoordinatorServer<Coordinator>>()
            .await;
    }
}
