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
    attempt::{Drain, OutcomeBoard, Runner},
    auth::{AuthLayer, KeyStore, RateLimiters},
    config::Settings,
    control::PaymentsGate,
    feed::Feed,
    journal::{Drainer, Journal},
    lease::Leases,
    recovery::RecoveryWorker,
    store::{Store, StoreError},
};

/// Streams a client may have reset before the server accepted them, per connection, before the
/// connection is closed (h2's defence against rapid-reset floods; its default is 20).
const MAX_PENDING_RESET_STREAMS: usize = 1024;
/// PostgreSQL connections per replica.
pub const POOL_SIZE: usize = 16;
/// How often health re-checks PostgreSQL.
const HEALTH_PERIOD: Duration = Duration::from_secs(1);
/// Longest pause between connection attempts while PostgreSQL is unreachable at start-up.
const START_RETRY_MAX: Duration = Duration::from_secs(5);
/// At shutdown, how long tasks get to hand their attempts over once the grace period is over;
/// whatever still runs then is left as after a crash (taken over once its heartbeat is stale).
const HAND_OVER_BOUND: Duration = Duration::from_secs(5);
/// At shutdown, how long scrapes under way get before `/metrics` is closed.
const METRICS_STOP_BOUND: Duration = Duration::from_secs(1);

/// A bound, not yet serving coordinator; tests build it on port 0.
pub struct Application {
    listener: TcpListener,
    /// METRICS_LISTEN: `GET /metrics`.
    metrics_listener: TcpListener,
    /// TLS_CERT_FILE / TLS_KEY_FILE (and TLS_CLIENT_CA_FILE); `None`: plain text.
    tls: Option<crate::tls::ServerTls>,
    /// HEALTH_LISTEN: the plain-text, health-only port.
    health_listener: Option<TcpListener>,
    replica: String,
    keys: Arc<KeyStore>,
    /// Each API key's request budget (RATE_LIMIT_*, or the key's own in API_KEYS_FILE).
    limits: Arc<RateLimiters>,
    /// SHUTDOWN_GRACE_MS.
    grace: Duration,
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

        let tls = crate::tls::ServerTls::from_settings(settings)?;

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
        let metrics = crate::metrics::Metrics::new();
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
        let metrics_addr = settings.metrics_listen;
        let metrics_listener = TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("cannot listen on METRICS_LISTEN {metrics_addr}"))?;
        let health_listener = match settings.health_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on HEALTH_LISTEN {addr}"))?,
            ),
            None => None,
        };
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
        // Whether new payments are accepted: the row shared by every replica, cached here and
        // kept current by a task that stops with the feed.
        let gate = PaymentsGate::start(
            store.clone(),
            &settings.database_url,
            replica.clone(),
            settings.breaker(),
            &tracker,
            feed_stop.child_token(),
        )
        .await
        .context("starting the payments gate")?;
        let runner = Runner {
            feed: Some(feed.clone()),
            store,
            leases: Some(leases),
            gateway: crate::metrics::TimedGateway::new(gateway, metrics.clone()),
            board: OutcomeBoard::default(),
            replica: replica.clone(),
            recovery: settings.recovery(),
            journal,
            stopping: CancellationToken::new(),
            drain: Drain::default(),
            gate,
            metrics,
        };
        Ok(Self {
            listener,
            metrics_listener,
            tls,
            health_listener,
            replica,
            limits: Arc::new(RateLimiters::new(&keys, settings.rate_limit())),
            grace: settings.shutdown_grace(),
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

    /// Where `GET /metrics` is served (METRICS_LISTEN).
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.metrics_listener.local_addr()
    }

    /// The health-only port's address (HEALTH_LISTEN), if any.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener.as_ref()?.local_addr().ok()
    }

    /// This replica's outcome journal (JOURNAL_DIR), e.g. for tests to see what it holds.
    pub fn journal(&self) -> Journal {
        self.runner.journal.clone()
    }

    /// Serves until `shutdown` is cancelled (SIGTERM), then shuts down gracefully, in order:
    ///
    /// 1. health turns NOT_SERVING, so load balancers stop sending calls here;
    /// 2. `ProcessPayment` starts no new attempt (`REPLICA_SHUTTING_DOWN`; a caller may still
    ///    join its own), the recovery worker and the journal's drainer take no new work, watch
    ///    streams end (the feed stops), and no new connection or call is accepted;
    /// 3. attempts in flight get SHUTDOWN_GRACE_MS to reach an outcome; the ones still running
    ///    then hand their attempts to the other replicas' recovery workers (`attempt::Drain`);
    /// 4. `/metrics`, served until now, stops (after one more scrape if attempts were handed
    ///    over and someone scrapes it);
    /// 5. the journal is closed (what it still holds is drained at the next start).
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = self.tracker;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter);
        let store = self.runner.store.clone();
        // Registered before the port serves, so a probe never sees "service not registered".
        health.set(store.ping().await).await;
        health.alive().await;
        let health_stop = shutdown.child_token();
        tracker.spawn(watch_health(store, health.clone(), health_stop.clone()));
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
            metrics: self.runner.metrics.clone(),
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
        let drain = self.runner.drain.clone();
        let journal = self.runner.journal.clone();
        let metrics = self.runner.metrics.clone();
        // Served through the whole shutdown (the drain, the hand-over) and stopped just before the
        // journal closes, so that the final counts can be scraped: its own token and task, not
        // the tracker's (whose wait ends the hand-over). The guard stops it on any early return.
        let sources = crate::metrics::Sources {
            metrics: metrics.clone(),
            store: self.runner.store.clone(),
            journal: journal.clone(),
            gate: self.runner.gate.clone(),
            feed: self.feed.clone(),
        };
        let metrics_stop = CancellationToken::new();
        let metrics_guard = metrics_stop.clone().drop_guard();
        let scrapes = crate::metrics::Scrapes::default();
        let mut metrics_task = tokio::spawn(crate::metrics::serve(
            self.metrics_listener,
            sources,
            scrapes.clone(),
            metrics_stop,
        ));
        let coordinator = Coordinator::new(self.runner, self.feed, tracker.clone());
        let feed_stop = self.feed_stop;
        // Shutdown first closes the listening socket (`stop_accepting`), and only after the
        // drain tells open connections to go away (`stop_serving`, tonic's graceful shutdown).
        let stop_accepting = CancellationToken::new();
        let stop_serving = CancellationToken::new();
        if let Some(listener) = self.health_listener {
            // Stops with the main port: NOT_SERVING through the drain, then closed.
            let (reporter, stop) = (health.reporter.clone(), stop_serving.clone());
            tracker.spawn(crate::health_port::serve(listener, reporter, stop));
        }

        let tls = self.tls.as_ref();
        let mtls = tls.is_some_and(|t| t.mutual());
        tracing::info!(addr = %self.listener.local_addr()?, replica = %self.replica, tls = tls.is_some(), mtls, "coordinator listening");
        let mut server = Box::pin(
            crate::tls::server_builder(tls)?
                // Callers cancel calls whose deadline passed (RST_STREAM); h2's default (20 such
                // resets pending at once) then closes the whole connection, failing every other
                // call on it. Rapid-reset floods stay bounded by this limit and the per-caller
                // rate limits.
                .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESET_STREAMS))
                // Outermost: a span per RPC (continuing the caller's traceparent), refusals included.
                .layer(crate::telemetry::RpcSpanLayer::new(&self.replica))
                .layer(crate::metrics::CountErrorsLayer::new(metrics))
                .layer(AuthLayer::new(self.keys).with_rate_limits(self.limits))
                .add_service(health_service)
                .add_service(reflection)
                .add_service(PaymentCoordinatorServer::new(coordinator))
                .serve_with_incoming_shutdown(
                    tokio_stream::StreamExt::map(
                        Incoming {
                            listener: Some(tokio_stream::wrappers::TcpListenerStream::new(
                                self.listener,
                            )),
                            stop: Box::pin(stop_accepting.clone().cancelled_owned()),
                        },
                        // tonic's tcp_nodelay does not apply to an incoming stream: without it small
                        // answers and stream frames wait for Nagle's algorithm (up to ~40 ms).
                        |accepted| {
                            accepted.and_then(|socket| {
                                socket.set_nodelay(true)?;
                                Ok(socket)
                            })
                        },
                    ),
                    stop_serving.clone().cancelled_owned(),
                ),
        );
        // `Some`: the server stopped on its own (an error); the shutdown below runs all the same.
        let mut ended = tokio::select! {
            served = &mut server => Some(served),
            () = shutdown.cancelled() => None,
        };

        // 1. Before anything else, so that load balancers stop sending calls here. The flag
        // that refuses new payments flips first (no I/O): whoever sees NOT_SERVING can no longer
        // start a payment here. It also makes attempts holding a journaled outcome (PostgreSQL
        // unreachable) let go of it (it stays in the journal for the next start).
        stopping.cancel();
        health.drain().await;
        tracing::info!("shutdown: health NOT_SERVING");
        // The recovery worker and the journal's drainer take no new work; health stops polling.
        health_stop.cancel();
        // New connections are refused; open ones go on being served during the drain: reads,
        // joins and watches work, a new payment is refused with REPLICA_SHUTTING_DOWN.
        stop_accepting.cancel();
        tracker.close();

        // 2. Attempts in flight get the grace period to reach an outcome (watchers see it).
        let grace_ends = tokio::time::Instant::now() + self.grace;
        tracing::info!(
            attempts = drain.running(),
            grace_ms = self.grace.as_millis() as u64,
            "draining {} attempts (grace {}s)",
            drain.running(),
            self.grace.as_secs_f64()
        );
        let drained = {
            let idle = tokio::time::timeout_at(grace_ends, drain.idle());
            tokio::pin!(idle);
            loop {
                tokio::select! {
                    idle = &mut idle => break idle.is_ok(),
                    // Polled meanwhile, so that its accept loop sees `stop_accepting` and closes
                    // the listening socket (open connections are served by their own tasks).
                    served = &mut server, if ended.is_none() => ended = Some(served),
                }
            }
        };

        // 3. The calls end. Watch streams never end on their own: stopping the feed ends them
        // (cleanly, status OK; consumers resume from their cursor elsewhere). Open connections
        // are told to go away once their calls are answered, and health watchers (they saw
        // NOT_SERVING) end, so that those connections can close.
        feed_stop.cancel();
        stop_serving.cancel();
        health.end_watches().await;
        let served = match ended {
            Some(served) => Some(served),
            None if drained => tokio::time::timeout_at(grace_ends, &mut server).await.ok(),
            None => None,
        };
        let in_time = served.is_some()
            && tokio::time::timeout_at(grace_ends, tracker.wait())
                .await
                .is_ok();
        if !in_time {
            // Those still running stop where they are and hand their attempts over.
            tracing::info!(
                attempts = drain.running(),
                "shutdown: grace period over; handing attempts in flight to the recovery workers"
            );
            drain.give_up();
        }
        let hand_over_ends = tokio::time::Instant::now() + HAND_OVER_BOUND;
        let served = match served {
            Some(served) => served,
            None => match tokio::time::timeout_at(hand_over_ends, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!("calls still open after the hand-over; closing them");
                    Ok(())
                }
            },
        };
        drop(server);
        if tokio::time::timeout_at(hand_over_ends, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = tracker.len(),
                "tasks still running after the hand-over; exiting anyway (their attempts are \
                 taken over once their heartbeats are stale, as after a crash)"
            );
        }
        tracing::info!(
            handed_over = drain.handed_over(),
            "left {} attempts to recovery",
            drain.handed_over()
        );

        // 4. /metrics stops. If attempts were handed over and someone scrapes here, one more
        // scrape first (within the hand-over's bound), so that the hand-over is seen.
        if drain.handed_over() > 0 && scrapes.ever_answered() {
            let _ = tokio::time::timeout_at(hand_over_ends, scrapes.one_more()).await;
        }
        drop(metrics_guard);
        if tokio::time::timeout(METRICS_STOP_BOUND, &mut metrics_task)
            .await
            .is_err()
        {
            metrics_task.abort();
        }

        // 5. redb commits are durable when they return; closing releases the file.
        match journal.close() {
            Ok((pending, true)) => {
                tracing::info!(pending, "journal closed ({pending} pending)");
            }
            Ok((pending, false)) => {
                tracing::warn!(
                    pending,
                    "journal closed ({pending} pending); a task still holds it until exit"
                );
            }
            Err(error) => tracing::error!(%error, "could not read the journal at shutdown"),
        }
        served?;
        Ok(())
    }
}

/// Accepted connections until `stop`; then the listening socket is closed (new connections are
/// refused at once) while the stream stays open, so that tonic goes on serving the connections
/// it has until its own shutdown signal (an ended stream would make it close them at once).
struct Incoming {
    listener: Option<tokio_stream::wrappers::TcpListenerStream>,
    stop: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<tokio::net::TcpStream>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.listener.is_some() && self.stop.as_mut().poll(cx).is_ready() {
            self.listener = None;
            tracing::info!("shutdown: no longer accepting connections");
        }
        match self.listener.as_mut() {
            Some(listener) => std::pin::Pin::new(listener).poll_next(cx),
            // Woken no more: the server's shutdown signal ends its accept loop.
            None => std::task::Poll::Pending,
        }
    }
}

/// The health service name that says only "this process answers" (see `Health::alive`).
pub const LIVENESS: &str = "liveness";

/// `grpc.health.v1` for this replica: follows PostgreSQL until shutdown starts, then stays
/// NOT_SERVING (the mutex orders a health check in progress before the shutdown's answer).
#[derive(Clone)]
struct Health {
    reporter: tonic_health::server::HealthReporter,
    draining: Arc<tokio::sync::Mutex<bool>>,
}

impl Health {
    fn new(reporter: tonic_health::server::HealthReporter) -> Self {
        Self {
            reporter,
            draining: Arc::new(tokio::sync::Mutex::new(false)),
        }
    }

    /// Serving iff PostgreSQL answers, until shutdown starts.
    async fn set(&self, up: bool) {
        let draining = self.draining.lock().await;
        set_health(&self.reporter, up && !*draining).await;
    }

    /// Shutdown: NOT_SERVING from now on.
    async fn drain(&self) {
        let mut draining = self.draining.lock().await;
        *draining = true;
        set_health(&self.reporter, false).await;
    }

    /// `liveness` (k8s/: the kubelet's liveness and startup probes) is SERVING for as long as
    /// this process answers, whatever PostgreSQL does: an outage must not restart replicas that
    /// only wait for it (docs/OPERATIONS.md, "Probes").
    async fn alive(&self) {
        self.reporter
            .set_service_status(LIVENESS, tonic_health::ServingStatus::Serving)
            .await;
    }

    /// Ends every `Health/Watch` stream (after they saw NOT_SERVING): they would otherwise hold
    /// the server's graceful shutdown open forever.
    async fn end_watches(&self) {
        let mut reporter = self.reporter.clone();
        reporter.clear_service_status("").await;
        reporter.clear_service_status(LIVENESS).await;
        reporter
            .clear_service_status(
                <PaymentCoordinatorServer<Coordinator> as tonic::server::NamedService>::NAME,
            )
            .await;
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
async fn watch_health(store: Store, health: Health, stop: CancellationToken) {
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
            health.set(up).await;
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
