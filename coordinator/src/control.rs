//! The payments gate: each replica's cached copy of the shared `payments_control` row (admin
//! pause, gateway circuit breaker), its circuit-breaker window, and the task that keeps both
//! current.
//!
//! - **Hot path.** `ProcessPayment` asks `PaymentsGate::admit`, which decides from the cached row
//!   and the local clock: no database round trip while payments flow (breaker closed). Only when
//!   the cached row says a probe may go (cool-down over, or slots left in a half-open round) does
//!   it claim a probe slot in PostgreSQL, so that all replicas together let only
//!   `BREAKER_PROBES` payments through per cool-down.
//! - **Freshness.** One dedicated connection per replica `LISTEN`s on `payments_control`; every
//!   change (a compare-and-set that bumps `version`) notifies it in the same transaction. The
//!   notification is only a wake-up: the row is re-read from the table, and also every second,
//!   so a missed notification (lost connection, reconnect) only delays.
//! - **The window.** Every charging gateway call of a new attempt (create, confirm; not the
//!   resolution calls of the recovery path, which would count one incident many times and keep
//!   the breaker open while a backlog is worked off) is recorded in this replica's sliding
//!   window. When the failure share passes the threshold, the task opens the breaker in
//!   PostgreSQL (only if it is closed: replicas tripping at once open it once). The window only
//!   counts while the breaker is closed, and is cleared whenever the breaker changes state, so
//!   failures from before an opening cannot re-open it right after it closes.
//! - **Probes.** An attempt admitted as a probe reports whether its charging calls were healthy:
//!   healthy closes the breaker, a failure opens it again for a new cool-down. Each report names
//!   the half-open round its probe was let through in (`ProbeRound`, the round's `probe_at` read
//!   back from the claim): a late report from an earlier round changes nothing. Those writes are
//!   handed to the task, so an attempt never waits on them.
//!
//! Attempts already committed are never stopped by the gate: it is asked only before a new
//! attempt takes its lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::breaker::{
    Admit, Breaker, BreakerPolicy, BreakerState, CallHealth, Change, Control, Counts, Paused,
    ProbeRound, Window,
};
use crate::error::Error;
use crate::store::{CONTROL_CHANNEL, Store, StoreError, session_config};

/// How often the row is re-read without a notification.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for one read or write of the row.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Compare-and-set retries when other replicas change the row at the same moment.
const CAS_TRIES: u32 = 8;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// `application_name` of the LISTEN connection (visible in `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "coordinator-payments-control";

/// Whether a payment the gate let through is a probe of the half-open breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Normal,
    /// Its charging calls decide whether the breaker closes (`PaymentsGate::probe_finished`), if
    /// its round is still the current one when it reports.
    Probe(ProbeRound),
}

impl Admission {
    /// The half-open round of a probe; `None` for a normal payment.
    pub fn probe_round(self) -> Option<ProbeRound> {
        match self {
            Admission::Normal => None,
            Admission::Probe(round) => Some(round),
        }
    }
}

/// Work for the gate's task (writes the attempt tasks must not wait for).
#[derive(Debug)]
enum Command {
    Trip(Counts),
    ProbeFinished {
        round: ProbeRound,
        healthy: bool,
        what: String,
    },
}

/// The gate: a cheap-to-clone handle.
#[derive(Clone)]
pub struct PaymentsGate {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    replica: String,
    policy: BreakerPolicy,
    /// The row as last read or written by this replica; version 0 until the first read.
    current: watch::Sender<Control>,
    window: Mutex<Window>,
    /// The window's monotonic clock starts here.
    origin: Instant,
    commands: mpsc::Sender<Command>,
}

impl PaymentsGate {
    /// Reads the row, then keeps it current in a task owned by `tracker` until `stop`. Until the
    /// row has been read once, new payments are refused (`STORE_UNAVAILABLE`): an admin pause
    /// must not be missed because PostgreSQL blinked at start-up.
    pub async fn start(
        store: Store,
        database_url: &str,
        replica: String,
        policy: BreakerPolicy,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Self, StoreError> {
        let mut config = session_config(database_url)?;
        config.application_name(LISTENER_APPLICATION_NAME);
        let (commands, receiver) = mpsc::channel(64);
        let gate = Self {
            inner: Arc::new(Inner {
                store,
                replica,
                policy,
                current: watch::Sender::new(Control::default()),
                window: Mutex::new(Window::new(policy.window)),
                origin: Instant::now(),
                commands,
            }),
        };
        gate.refresh().await;
        tracker.spawn(gate.clone().run(config, tracker.clone(), stop, receiver));
        Ok(gate)
    }

    pub fn policy(&self) -> BreakerPolicy {
        self.inner.policy
    }

    /// The cached row.
    pub fn cached(&self) -> Control {
        self.inner.current.borrow().clone()
    }

    /// Whether a new payment may start now. No database round trip unless the breaker wants a
    /// probe (then one slot is claimed in PostgreSQL).
    pub async fn admit(&self) -> Result<Admission, Error> {
        let cached = self.cached();
        if cached.version == 0 {
            return Err(not_read_yet());
        }
        match cached.admit(SystemTime::now()) {
            Admit::Accept => Ok(Admission::Normal),
            Admit::Refuse(paused) => Err(refusal(paused)),
            Admit::Probe => {
                let policy = self.inner.policy;
                let claimed = self
                    .transition(&self.breaker_actor(), |c, now| {
                        if c.admin.is_some() {
                            return None;
                        }
                        c.claim_probe(&policy, now)
                    })
                    .await?;
                match claimed {
                    Some((control, _)) => {
                        let Breaker::HalfOpen {
                            probes_left,
                            probe_at,
                            ..
                        } = control.breaker
                        else {
                            // `claim_probe` only ever writes HALF_OPEN.
                            return Err(Error::Internal(
                                "a claimed probe slot left the breaker not half-open".to_owned(),
                            ));
                        };
                        tracing::info!(replica = %self.inner.replica, probes_left_in_round = probes_left, round = %crate::error::rfc3339(probe_at), "gateway circuit breaker half-open: this payment is a probe");
                        Ok(Admission::Probe(ProbeRound(probe_at)))
                    }
                    // Decided on a fresh read: no slot (or closed meanwhile).
                    None => match self.cached().paused() {
                        None => Ok(Admission::Normal),
                        Some(paused) => Err(refusal(paused)),
                    },
                }
            }
        }
    }

    /// Records one charging gateway call of a new attempt in this replica's window; opens the
    /// breaker (through the task) when the window passes the threshold. Never waits.
    pub fn record(&self, health: CallHealth) {
        // Only a closed breaker measures: calls finishing while it is open or half-open are
        // attempts admitted before it opened (or probes, which report on their own).
        if self.inner.current.borrow().breaker != Breaker::Closed {
            return;
        }
        let now_ms = u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let tripped = {
            let mut window = self.window();
            window.record(now_ms, health);
            let counts = window.counts(now_ms);
            if self.inner.policy.trips(counts) {
                // Counted once: if the opening fails (PostgreSQL down), the window fills again.
                window.clear();
                Some(counts)
            } else {
                None
            }
        };
        if let Some(counts) = tripped {
            tracing::warn!(replica = %self.inner.replica, failures = counts.failures, calls = counts.calls, "gateway failure share over the circuit breaker's threshold; opening it");
            self.send(Command::Trip(counts));
        }
    }

    /// A probe payment of `round` is over: `healthy` closes the breaker, a failure (`what`)
    /// opens it again, if `round` is still the current half-open round. Never waits.
    pub fn probe_finished(&self, round: ProbeRound, healthy: bool, what: String) {
        self.send(Command::ProbeFinished {
            round,
            healthy,
            what,
        });
    }

    /// What this replica enforces (for `GetPaymentsStatus`): the cached row, behind PostgreSQL
    /// by one notification (at most a re-read period if notifications are lost).
    pub fn status(&self) -> Result<Control, Error> {
        let cached = self.cached();
        if cached.version == 0 {
            return Err(not_read_yet());
        }
        Ok(cached)
    }

    /// An admin pauses new payments.
    pub async fn pause(&self, by: &str, reason: &str) -> Result<Control, StoreError> {
        let changed = self
            .transition(by, |c, now| Some(c.pause(by, reason, now)))
            .await?;
        match changed {
            Some((control, _)) => {
                tracing::warn!(replica = %self.inner.replica, by, reason, "new payments paused by an admin");
                Ok(control)
            }
            None => Ok(self.cached()),
        }
    }

    /// An admin lifts the pause (and with `reset_breaker` closes the breaker by hand).
    pub async fn resume(&self, by: &str, reset_breaker: bool) -> Result<Control, StoreError> {
        let changed = self.transition(by, |c, _| c.resume(reset_breaker)).await?;
        match changed {
            Some((control, change)) => {
                tracing::warn!(replica = %self.inner.replica, by, action = change.action, detail = %change.detail, "payments resumed by an admin");
                Ok(control)
            }
            None => {
                tracing::info!(replica = %self.inner.replica, by, reset_breaker, "resume asked with nothing to change");
                Ok(self.cached())
            }
        }
    }

    fn breaker_actor(&self) -> String {
        format!("breaker:{}", self.inner.replica)
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        // A poisoned window only lost counts of one call: keep measuring.
        self.inner
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, command: Command) {
        match self.inner.commands.try_send(command) {
            Ok(()) => {}
            // Full only if PostgreSQL has been slow for a long while; a lost trip is recounted,
            // a lost probe result is replaced by the next round of probes.
            Err(mpsc::error::TrySendError::Full(command)) => {
                tracing::warn!(replica = %self.inner.replica, ?command, "payments gate busy: dropped")
            }
            // Shutting down: the task has stopped; attempts finishing now change nothing.
            Err(mpsc::error::TrySendError::Closed(command)) => {
                tracing::debug!(replica = %self.inner.replica, ?command, "payments gate stopped: dropped")
            }
        }
    }

    /// Reads the row, decides with `decide` on it and PostgreSQL's clock, and writes the
    /// decision if the row has not changed meanwhile (else reads and decides again).
    /// `Ok(None)`: nothing to change on the current row.
    async fn transition(
        &self,
        actor: &str,
        decide: impl Fn(&Control, SystemTime) -> Option<(Control, Change)>,
    ) -> Result<Option<(Control, Change)>, StoreError> {
        for _ in 0..CAS_TRIES {
            let (current, now) = within(self.inner.store.read_control()).await?;
            self.publish(current.clone());
            let Some((mut next, change)) = decide(&current, now) else {
                return Ok(None);
            };
            let written = within(self.inner.store.write_control(
                current.version,
                &next,
                actor,
                &change,
            ))
            .await?;
            if let Some(version) = written {
                next.version = version;
                self.publish(next.clone());
                return Ok(Some((next, change)));
            }
        }
        Err(StoreError::Other(format!(
            "payments_control changed {CAS_TRIES} times while being written; giving up"
        )))
    }

    /// Takes a newer row into the cache; a breaker state change clears the window.
    fn publish(&self, next: Control) {
        let mut changed = None;
        self.inner.current.send_if_modified(|current| {
            if next.version <= current.version {
                return false;
            }
            let (from, to) = (current.breaker.state(), next.breaker.state());
            if from != to {
                changed = Some((from, to));
            }
            *current = next;
            true
        });
        if let Some((from, to)) = changed {
            self.window().clear();
            let replica = &self.inner.replica;
            match to {
                BreakerState::Open => {
                    tracing::warn!(%replica, from = from.as_str(), to = to.as_str(), "gateway circuit breaker open: new payments refused here")
                }
                BreakerState::HalfOpen => {
                    tracing::info!(%replica, from = from.as_str(), to = to.as_str(), "gateway circuit breaker half-open: probe payments")
                }
                BreakerState::Closed => {
                    tracing::info!(%replica, from = from.as_str(), to = to.as_str(), "gateway circuit breaker closed: payments flow")
                }
            }
        }
    }

    /// Re-reads the row into the cache.
    async fn refresh(&self) {
        match within(self.inner.store.read_control()).await {
            Ok((control, _)) => self.publish(control),
            Err(error) => {
                tracing::warn!(replica = %self.inner.replica, %error, "could not read payments_control; keeping the last known state")
            }
        }
    }

    async fn apply(&self, command: Command) {
        let policy = self.inner.policy;
        let actor = self.breaker_actor();
        let replica = &self.inner.replica;
        match command {
            Command::Trip(counts) => {
                match self
                    .transition(&actor, |c, now| c.trip(counts, &policy, now))
                    .await
                {
                    Ok(Some((_, change))) => {
                        tracing::warn!(%replica, failures = counts.failures, calls = counts.calls, reason = %change.detail, "gateway circuit breaker opened by this replica")
                    }
                    Ok(None) => {
                        tracing::info!(%replica, "gateway circuit breaker already open (another replica opened it)")
                    }
                    Err(error) => {
                        tracing::error!(%replica, %error, "could not open the gateway circuit breaker")
                    }
                }
            }
            Command::ProbeFinished {
                round,
                healthy: true,
                ..
            } => {
                match self
                    .transition(&actor, |c, _| c.probe_succeeded(round))
                    .await
                {
                    Ok(Some(_)) => {
                        tracing::info!(%replica, "gateway circuit breaker closed by a healthy probe payment")
                    }
                    Ok(None) => {
                        tracing::info!(%replica, round = %crate::error::rfc3339(round.0), "healthy probe of a round that is over: changes nothing")
                    }
                    Err(error) => {
                        tracing::error!(%replica, %error, "could not close the gateway circuit breaker after a healthy probe")
                    }
                }
            }
            Command::ProbeFinished {
                round,
                healthy: false,
                what,
            } => {
                match self
                    .transition(&actor, |c, now| c.probe_failed(round, &what, &policy, now))
                    .await
                {
                    Ok(Some((_, change))) => {
                        tracing::warn!(%replica, reason = %change.detail, "gateway circuit breaker opened again: a probe payment failed")
                    }
                    Ok(None) => {
                        tracing::info!(%replica, round = %crate::error::rfc3339(round.0), %what, "failed probe of a round that is over: changes nothing")
                    }
                    Err(error) => {
                        tracing::error!(%replica, %error, "could not re-open the gateway circuit breaker after a failed probe")
                    }
                }
            }
        }
    }

    /// The task: LISTEN (reconnecting with backoff), re-read on every wake-up and every second,
    /// apply the attempt tasks' commands, until `stop`.
    async fn run(
        self,
        config: tokio_postgres::Config,
        tracker: TaskTracker,
        stop: CancellationToken,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let wake = Arc::new(Notify::new());
        let mut listener: Option<Listener> = None;
        let mut retry_at = tokio::time::Instant::now();
        let mut backoff = MIN_BACKOFF;
        loop {
            if listener.is_none() && tokio::time::Instant::now() >= retry_at {
                match listen(&config, &tracker, &wake).await {
                    Ok(l) => {
                        listener = Some(l);
                        backoff = MIN_BACKOFF;
                    }
                    Err(error) => {
                        tracing::warn!(replica = %self.inner.replica, %error, retry_in_ms = backoff.as_millis() as u64, "payments gate: cannot LISTEN; re-reading every second meanwhile");
                        retry_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            // Whatever woke us (first of all a new LISTEN session: what changed while not
            // listening), the table says what there is.
            self.refresh().await;
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(command) = commands.recv() => self.apply(command).await,
                why = ended(&mut listener) => {
                    tracing::warn!(replica = %self.inner.replica, %why, "payments gate: LISTEN connection lost; reconnecting");
                    listener = None;
                }
                () = wake.notified() => {}
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
        }
    }
}

/// A `LISTEN payments_control` session: the client (dropping it ends the connection) and the
/// task driving the connection, which turns notifications into wake-ups.
struct Listener {
    _client: Client,
    driver: tokio::task::JoinHandle<Option<String>>,
}

async fn listen(
    config: &tokio_postgres::Config,
    tracker: &TaskTracker,
    wake: &Arc<Notify>,
) -> Result<Listener, StoreError> {
    let (client, mut connection) = within(config.connect(NoTls)).await?;
    let driver = {
        let wake = Arc::clone(wake);
        tracker.spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Some(error.to_string()),
                    None => return None,
                }
            }
        })
    };
    within(client.batch_execute(&format!("LISTEN {CONTROL_CHANNEL}"))).await?;
    Ok(Listener {
        _client: client,
        driver,
    })
}

/// Resolves when the listener's connection ends (never without a listener).
async fn ended(listener: &mut Option<Listener>) -> String {
    match listener {
        Some(l) => match (&mut l.driver).await {
            Ok(Some(error)) => error,
            Ok(None) => "closed".to_owned(),
            Err(join) => join.to_string(),
        },
        None => std::future::pending().await,
    }
}

async fn within<T, E: Into<StoreError>>(
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(QUERY_TIMEOUT, future).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer from PostgreSQL within {} ms",
            QUERY_TIMEOUT.as_millis()
        ))),
    }
}

fn not_read_yet() -> Error {
    Error::StoreUnavailable(
        "whether payments are paused is not known yet (payments_control not read)".to_owned(),
    )
}

/// What a refused caller is told.
fn refusal(paused: Paused) -> Error {
    Error::PaymentsPaused {
        reason: paused.reason,
        since: paused.since,
        by: paused.by,
    }
}
