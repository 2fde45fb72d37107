//! Prometheus metrics (`METRICS_LISTEN`, `GET /metrics`, the Prometheus text format 0.0.4).
//!
//! [`Metrics`] is a cheap-to-clone handle on one registry per `Application` (no global registry,
//! so several replicas in one test process never mix their counts) and its typed families.
//! Counters and the histogram move where things happen: attempts committed and finished
//! (`api/payments.rs`, `Runner::persist`, the journal's drainer), every gateway call
//! ([`TimedGateway`]), every gRPC error the API returns ([`CountErrorsLayer`]), recovery's actions.
//! Gauges that are cheap to read (the pool, the journal, the payments gate, the feed) are read
//! when `/metrics` is scraped (`serve.rs`), so nothing has to keep them current.
//!
//! Labels are small closed sets: never an order id, a key, a customer or an amount. The two
//! labels whose values come from outside are allowlists: a decline code is kept only if it is
//! one of [`DECLINE_CODES`] (the simulator's and Stripe's documented ones), else `other`; an
//! error's `ErrorInfo` reason only if it is one of ours ([`REASONS`], domain `payments.v1`),
//! else `OTHER`. So whatever a gateway or a layer invents never becomes a new series, and no
//! digits from outside (a card number in a decline code) ever reach a label.

mod gateway;
mod refusals;
mod serve;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::{Registry, Unit};

pub use gateway::TimedGateway;
pub use refusals::CountErrorsLayer;
pub use serve::{Scrapes, Sources, serve};

use crate::domain::{
    AttemptOutcome,
    resolution::{Action, ReviewCause},
};
use crate::store::Finish;

/// Gateway call durations, seconds: from a fast local answer to past GATEWAY_TIMEOUT_MS' default.
const GATEWAY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];

/// The metrics of one replica. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    outcome: &'static str,
    /// `declined`: the decline code ([`DECLINE_CODES`] or `other`); `unknown`: why nothing could
    /// establish it ([`ReviewCause`]); empty otherwise.
    reason: &'static str,
    /// How the outcome was learnt: `answer` (the charging call's own answer), `resolution`
    /// (lookup, same-key replay or cancel after an unknown outcome, inline or by the recovery
    /// worker), `journal` (written by the journal's drainer after PostgreSQL came back).
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayCallLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

struct Families {
    payments_started: Family<FlowLabels, Counter>,
    payments_finished: Family<FinishedLabels, Counter>,
    refusals: Family<ErrorLabels, Counter>,
    gateway_calls: Family<GatewayCallLabels, Histogram, fn() -> Histogram>,
    attempts_in_flight: Gauge,
    recovery_actions: Family<ActionLabels, Counter>,
    // Read at scrape time (`serve.rs`).
    journal_depth: Gauge,
    breaker_state: Gauge,
    payments_paused: Gauge,
    feed_watchers: Family<StreamLabels, Gauge>,
    feed_head: Gauge,
    feed_publish_lag: F64Gauge,
    feed_backlog: Gauge,
    feed_backlog_age: F64Gauge,
    feed_sequencer_leader: Gauge,
    feed_listener_connected: Gauge,
    db_pool_connections: Family<StateLabels, Gauge>,
    db_pool_max: Gauge,
    db_pool_waiting: Gauge,
}

fn gateway_histogram() -> Histogram {
    Histogram::new(GATEWAY_BUCKETS)
}

/// What recovery did, for `coordinator_recovery_actions_total{action}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryAction {
    /// The recovery worker took over an attempt whose holder's heartbeat was stale.
    TakenOver,
    /// A resolution run spent its actions and left the attempt to the worker's next sweep.
    Deferred,
    /// Shutdown's grace period ended with the attempt unresolved: left to another replica.
    HandedOverAtShutdown,
    /// One decision of `domain::resolution::decide`.
    Decided(ActionKind),
}

/// `domain::resolution::Action` without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    Lookup,
    ReplayCreate,
    ReplayConfirm,
    Cancel,
    NothingCharged,
    ManualReview,
    Wait,
}

impl From<&Action> for ActionKind {
    fn from(action: &Action) -> Self {
        match action {
            Action::Lookup(_) => ActionKind::Lookup,
            Action::ReplayCreate => ActionKind::ReplayCreate,
            Action::ReplayConfirm(_) => ActionKind::ReplayConfirm,
            Action::Cancel(_) => ActionKind::Cancel,
            Action::NothingCharged(_) => ActionKind::NothingCharged,
            Action::ManualReview(..) => ActionKind::ManualReview,
            Action::Wait(_) => ActionKind::Wait,
        }
    }
}

impl RecoveryAction {
    const ALL: [RecoveryAction; 10] = [
        RecoveryAction::TakenOver,
        RecoveryAction::Deferred,
        RecoveryAction::HandedOverAtShutdown,
        RecoveryAction::Decided(ActionKind::Lookup),
        RecoveryAction::Decided(ActionKind::ReplayCreate),
        RecoveryAction::Decided(ActionKind::ReplayConfirm),
        RecoveryAction::Decided(ActionKind::Cancel),
        RecoveryAction::Decided(ActionKind::NothingCharged),
        RecoveryAction::Decided(ActionKind::ManualReview),
        RecoveryAction::Decided(ActionKind::Wait),
    ];

    fn as_str(self) -> &'static str {
        match self {
            RecoveryAction::TakenOver => "taken_over",
            RecoveryAction::Deferred => "deferred",
            RecoveryAction::HandedOverAtShutdown => "handed_over_at_shutdown",
            RecoveryAction::Decided(kind) => match kind {
                ActionKind::Lookup => "lookup",
                ActionKind::ReplayCreate => "replay_create",
                ActionKind::ReplayConfirm => "replay_confirm",
                ActionKind::Cancel => "cancel",
                ActionKind::NothingCharged => "nothing_charged",
                ActionKind::ManualReview => "manual_review",
                ActionKind::Wait => "wait",
            },
        }
    }
}

/// Counts one attempt in `coordinator_attempts_in_flight` while it lives.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("coordinator");
        let families = Families {
            payments_started: Family::default(),
            payments_finished: Family::default(),
            refusals: Family::default(),
            gateway_calls: Family::new_with_constructor(gateway_histogram),
            attempts_in_flight: Gauge::default(),
            recovery_actions: Family::default(),
            journal_depth: Gauge::default(),
            breaker_state: Gauge::default(),
            payments_paused: Gauge::default(),
            feed_watchers: Family::default(),
            feed_head: Gauge::default(),
            feed_publish_lag: F64Gauge::default(),
            feed_backlog: Gauge::default(),
            feed_backlog_age: F64Gauge::default(),
            feed_sequencer_leader: Gauge::default(),
            feed_listener_connected: Gauge::default(),
            db_pool_connections: Family::default(),
            db_pool_max: Gauge::default(),
            db_pool_waiting: Gauge::default(),
        };
        let f = &families;
        // Counters get `_total` from the encoder.
        registry.register(
            "payments_started",
            "Payment attempts committed on this replica (IN_FLIGHT, before any gateway call), by gateway flow",
            f.payments_started.clone(),
        );
        registry.register(
            "payments_finished",
            "Attempt outcomes this replica wrote to PostgreSQL: outcome succeeded|declined|cancelled|unknown (unknown = manual review); reason = the decline code (a known one, else other) or why it is unknown (runs_exhausted, idempotency_window_passed, no_capability); via answer|resolution|journal",
            f.payments_finished.clone(),
        );
        registry.register(
            "refusals",
            "gRPC errors the API returned (unary, stream start or stream end), by code and ErrorInfo reason (empty when the error carries none, OTHER when it is not one of ours); errors tonic makes outside the API's layers (a client's deadline, a failed TLS handshake) are not counted",
            f.refusals.clone(),
        );
        registry.register_with_unit(
            "gateway_call_duration",
            "Gateway calls as the coordinator waits for them (rate limiter and 429 backoff included), by operation and outcome class",
            Unit::Seconds,
            f.gateway_calls.clone(),
        );
        registry.register(
            "attempts_in_flight",
            "Payment attempts this replica is driving now (new, or taken over by its recovery worker)",
            f.attempts_in_flight.clone(),
        );
        registry.register(
            "recovery_actions",
            "What recovery did: taken_over, deferred, handed_over_at_shutdown, or a resolution decision (lookup, replay_create, replay_confirm, cancel, nothing_charged, manual_review, wait)",
            f.recovery_actions.clone(),
        );
        registry.register(
            "journal_depth",
            "Outcomes in this replica's local journal not yet written to PostgreSQL",
            f.journal_depth.clone(),
        );
        registry.register(
            "breaker_state",
            "The gateway circuit breaker as this replica enforces it: 0 closed, 1 half-open, 2 open",
            f.breaker_state.clone(),
        );
        registry.register(
            "payments_paused",
            "1 while an admin has paused new payments (PausePayments), else 0",
            f.payments_paused.clone(),
        );
        registry.register(
            "feed_watchers",
            "Watch streams open on this replica: stream=events (WatchEvents) or order (WatchOrder)",
            f.feed_watchers.clone(),
        );
        registry.register(
            "feed_head",
            "Highest event-feed position (global_sequence) this replica has published",
            f.feed_head.clone(),
        );
        registry.register_with_unit(
            "feed_publish_lag",
            "For the newest event this replica published: publication time minus the event's time",
            Unit::Seconds,
            f.feed_publish_lag.clone(),
        );
        registry.register(
            "feed_backlog_events",
            "Committed events still waiting for their feed position (read at scrape time; kept while PostgreSQL does not answer)",
            f.feed_backlog.clone(),
        );
        registry.register_with_unit(
            "feed_backlog_oldest_age",
            "Age of the oldest committed event still waiting for its feed position, 0 when none",
            Unit::Seconds,
            f.feed_backlog_age.clone(),
        );
        registry.register(
            "feed_sequencer_leader",
            "1 if this replica runs the feed's sequencer (exactly one replica should)",
            f.feed_sequencer_leader.clone(),
        );
        registry.register(
            "feed_listener_connected",
            "1 while this replica's LISTEN connection for the feed is up",
            f.feed_listener_connected.clone(),
        );
        registry.register(
            "db_pool_connections",
            "PostgreSQL pool connections by state: in_use or idle",
            f.db_pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "The PostgreSQL pool's size limit",
            f.db_pool_max.clone(),
        );
        registry.register(
            "db_pool_waiting",
            "Tasks waiting for a PostgreSQL pool connection",
            f.db_pool_waiting.clone(),
        );
        // Known label values start at 0, so that a series exists before its first event
        // (`increase()` cannot see a series' first increment, and an alert on it would miss it).
        for flow in [
            gateway_client::Flow::TwoPhase,
            gateway_client::Flow::OneShot,
        ] {
            drop(families.payments_started.get_or_create(&FlowLabels {
                flow: flow.as_str(),
            }));
        }
        let unknown = ReviewCause::ALL.map(|cause| ("unknown", cause.as_str()));
        for (outcome, reason) in [("succeeded", ""), ("cancelled", "")]
            .into_iter()
            .chain(unknown)
        {
            for via in ["answer", "resolution", "journal"] {
                drop(families.payments_finished.get_or_create(&FinishedLabels {
                    outcome,
                    reason,
                    via,
                }));
            }
        }
        for action in RecoveryAction::ALL {
            drop(families.recovery_actions.get_or_create(&ActionLabels {
                action: action.as_str(),
            }));
        }
        Self {
            inner: Arc::new(families),
            registry: Arc::new(registry),
        }
    }

    /// An attempt was committed (IN_FLIGHT) under `flow`.
    pub fn payment_started(&self, flow: gateway_client::Flow) {
        self.inner
            .payments_started
            .get_or_create(&FlowLabels {
                flow: flow.as_str(),
            })
            .inc();
    }

    /// An outcome was written to PostgreSQL by this replica (`step`: the persisting step,
    /// `create`/`confirm` for a charging call's own answer, `recovery`, `journal`).
    pub fn payment_finished(&self, finish: &Finish, step: &str) {
        let outcome = match finish.outcome() {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Declined => "declined",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Unknown => "unknown",
            AttemptOutcome::InFlight => "in_flight",
        };
        let reason = match finish {
            Finish::Declined { decline_code, .. } => decline_label(decline_code),
            Finish::Unknown { cause, .. } => cause.as_str(),
            _ => "",
        };
        let via = match step {
            "journal" => "journal",
            "create" | "confirm" => "answer",
            _ => "resolution",
        };
        self.inner
            .payments_finished
            .get_or_create(&FinishedLabels {
                outcome,
                reason,
                via,
            })
            .inc();
    }

    /// Counts the attempt in `coordinator_attempts_in_flight` until the guard is dropped.
    pub fn attempt_in_flight(&self) -> InFlight {
        self.inner.attempts_in_flight.inc();
        InFlight(self.inner.attempts_in_flight.clone())
    }

    pub fn recovery_action(&self, action: RecoveryAction) {
        self.inner
            .recovery_actions
            .get_or_create(&ActionLabels {
                action: action.as_str(),
            })
            .inc();
    }

    /// One gateway call of `operation` ended with `outcome` (`Outcome::kind`) after `took`.
    pub fn gateway_call(&self, operation: &'static str, outcome: &'static str, took: Duration) {
        self.inner
            .gateway_calls
            .get_or_create(&GatewayCallLabels { operation, outcome })
            .observe(took.as_secs_f64());
    }

    /// The API returned an error with `code` and, if it carries an `ErrorInfo` of domain
    /// `payments.v1`, its `reason` (`Some("")`: an `ErrorInfo` of another domain).
    fn error_returned(&self, code: tonic::Code, reason: Option<&str>) {
        let reason = match reason {
            None => "",
            Some(reason) => REASONS
                .iter()
                .copied()
                .find(|ours| *ours == reason)
                .unwrap_or("OTHER"),
        };
        self.inner
            .refusals
            .get_or_create(&ErrorLabels {
                code: code_name(code),
                reason,
            })
            .inc();
    }
}

/// The `ErrorInfo` reasons the API gives (`error.rs`, CONTRACT §3 and docs/ARCHITECTURE.md's
/// refusals): the values `coordinator_refusals_total{reason}` may take, besides `""` and `OTHER`.
pub const REASONS: [&str; 21] = [
    "PAYMENT_IN_PROGRESS",
    "ALREADY_PAID",
    "IN_MANUAL_REVIEW",
    "ORDER_MISMATCH",
    "IDEMPOTENCY_KEY_REUSED",
    "INVALID_REQUEST",
    "PAYMENTS_PAUSED",
    "STORE_UNAVAILABLE",
    "RATE_LIMITED",
    "REPLICA_SHUTTING_DOWN",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "ORDER_NOT_FOUND",
    "NOT_IN_MANUAL_REVIEW",
    "RESOLUTION_CONTRADICTED",
    "GATEWAY_UNAVAILABLE",
    "NOT_PAID",
    "REFUND_EXCEEDS_PAID",
    "REFUND_IN_PROGRESS",
    "REFUND_FAILED",
    "INTERNAL",
];

/// The decline codes `coordinator_payments_finished_total{outcome="declined"}` keeps as its
/// `reason`: every one the simulator sends, Stripe's documented decline codes, the card-error
/// codes a decline falls back to when it carries no decline code (`card_declined`,
/// `expired_card`, …), and `declined` (recovery's word for a declined intent without one).
/// Anything else is `other`: a gateway's invention never becomes a new series, and nothing from
/// outside (digits of a card number) becomes a label value.
pub const DECLINE_CODES: [&str; 49] = [
    "approve_with_id",
    "authentication_required",
    "call_issuer",
    "card_declined",
    "card_not_supported",
    "card_velocity_exceeded",
    "currency_not_supported",
    "declined",
    "do_not_honor",
    "do_not_try_again",
    "duplicate_transaction",
    "expired_card",
    "fraudulent",
    "generic_decline",
    "incorrect_cvc",
    "incorrect_number",
    "incorrect_pin",
    "incorrect_zip",
    "insufficient_funds",
    "invalid_account",
    "invalid_amount",
    "invalid_cvc",
    "invalid_expiry_month",
    "invalid_expiry_year",
    "invalid_number",
    "invalid_pin",
    "issuer_not_available",
    "lost_card",
    "merchant_blacklist",
    "new_account_information_available",
    "no_action_taken",
    "not_permitted",
    "offline_pin_required",
    "online_or_offline_pin_required",
    "pickup_card",
    "pin_try_exceeded",
    "processing_error",
    "reenter_transaction",
    "restricted_card",
    "revocation_of_all_authorizations",
    "revocation_of_authorization",
    "security_violation",
    "service_not_allowed",
    "stolen_card",
    "stop_payment_order",
    "testmode_decline",
    "transaction_not_allowed",
    "try_again_later",
    "withdrawal_count_limit_exceeded",
];

/// A decline code as a label value: one of [`DECLINE_CODES`], else `other`.
fn decline_label(code: &str) -> &'static str {
    DECLINE_CODES
        .iter()
        .copied()
        .find(|known| *known == code)
        .unwrap_or("other")
}

/// The canonical name of a gRPC code, as `grpc_status` names it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(metrics: &Metrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &metrics.registry).unwrap();
        out
    }

    #[test]
    fn names_carry_the_prefix_and_units_and_labels_stay_closed() {
        let metrics = Metrics::new();
        metrics.payment_started(gateway_client::Flow::TwoPhase);
        metrics.payment_finished(
            &Finish::Declined {
                intent_id: Some("pi_1".into()),
                decline_code: "insufficient_funds".into(),
                message: "no".into(),
            },
            "confirm",
        );
        metrics.payment_finished(
            &Finish::Declined {
                intent_id: None,
                decline_code: "Card 4242 4242 4242 4242".into(),
                message: "no".into(),
            },
            "recovery",
        );
        metrics.gateway_call("create_intent", "succeeded", Duration::from_millis(30));
        metrics.error_returned(tonic::Code::Aborted, Some("PAYMENT_IN_PROGRESS"));
        metrics.error_returned(tonic::Code::Unimplemented, None);
        metrics.error_returned(tonic::Code::Internal, Some("order o-1 failed"));
        let guard = metrics.attempt_in_flight();
        let out = text(&metrics);
        assert!(out.contains("coordinator_payments_started_total{flow=\"two_phase\"} 1\n"));
        assert!(out.contains(
            "coordinator_payments_finished_total{outcome=\"declined\",reason=\"insufficient_funds\",via=\"answer\"} 1\n"
        ));
        assert!(out.contains(
            "coordinator_payments_finished_total{outcome=\"declined\",reason=\"other\",via=\"resolution\"} 1\n"
        ));
        assert!(out.contains(
            "coordinator_gateway_call_duration_seconds_count{operation=\"create_intent\",outcome=\"succeeded\"} 1\n"
        ));
        assert!(out.contains(
            "coordinator_refusals_total{code=\"ABORTED\",reason=\"PAYMENT_IN_PROGRESS\"} 1\n"
        ));
        assert!(out.contains("coordinator_refusals_total{code=\"UNIMPLEMENTED\",reason=\"\"} 1\n"));
        assert!(out.contains("coordinator_refusals_total{code=\"INTERNAL\",reason=\"OTHER\"} 1\n"));
        assert!(out.contains("coordinator_attempts_in_flight 1\n"));
        assert!(!out.contains("4242"), "{out}");
        drop(guard);
        assert!(text(&metrics).contains("coordinator_attempts_in_flight 0\n"));
    }

    fn declined(code: &str) -> Finish {
        Finish::Declined {
            intent_id: Some("pi_1".into()),
            decline_code: code.into(),
            message: "no".into(),
        }
    }

    #[test]
    fn decline_codes_outside_the_allowlist_are_other() {
        let metrics = Metrics::new();
        // Card-like digits, and a well-formed code nobody documents: both `other`, one series.
        metrics.payment_finished(&declined("4242424242424242"), "confirm");
        metrics.payment_finished(&declined("made_up_by_the_gateway_7"), "confirm");
        metrics.payment_finished(&declined("card_velocity_exceeded"), "confirm");
        let out = text(&metrics);
        assert!(!out.contains("4242"), "{out}");
        assert!(!out.contains("made_up"), "{out}");
        assert!(out.contains(
            "coordinator_payments_finished_total{outcome=\"declined\",reason=\"other\",via=\"answer\"} 2\n"
        ));
        assert!(out.contains(
            "coordinator_payments_finished_total{outcome=\"declined\",reason=\"card_velocity_exceeded\",via=\"answer\"} 1\n"
        ));
        // Every code the simulator sends is kept as it is.
        for code in [
            "generic_decline",
            "insufficient_funds",
            "fraudulent",
            "lost_card",
            "stolen_card",
        ] {
            assert_eq!(decline_label(code), code);
        }
        assert!(
            DECLINE_CODES
                .iter()
                .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }

    #[test]
    fn an_unknown_outcome_is_counted_by_why_it_is_unknown() {
        let metrics = Metrics::new();
        let out = text(&metrics);
        // Every cause starts at 0.
        for cause in ReviewCause::ALL {
            for via in ["answer", "resolution", "journal"] {
                let series = format!(
                    "coordinator_payments_finished_total{{outcome=\"unknown\",reason=\"{}\",via=\"{via}\"}} 0\n",
                    cause.as_str()
                );
                assert!(out.contains(&series), "{series} in\n{out}");
            }
        }
        assert!(!out.contains("outcome=\"unknown\",reason=\"\""), "{out}");
        metrics.payment_finished(
            &Finish::Unknown {
                cause: ReviewCause::IdempotencyWindowPassed,
                reason: "one_shot create in doubt and the window has passed".into(),
            },
            "recovery",
        );
        assert!(text(&metrics).contains(
            "coordinator_payments_finished_total{outcome=\"unknown\",reason=\"idempotency_window_passed\",via=\"resolution\"} 1\n"
        ));
    }

    #[test]
    fn error_reasons_not_ours_are_other() {
        let metrics = Metrics::new();
        metrics.error_returned(tonic::Code::Unavailable, Some("SOMEONE_ELSES_REASON"));
        metrics.error_returned(tonic::Code::Unavailable, Some(""));
        metrics.error_returned(tonic::Code::Unavailable, Some("STORE_UNAVAILABLE"));
        let out = text(&metrics);
        assert!(
            out.contains("coordinator_refusals_total{code=\"UNAVAILABLE\",reason=\"OTHER\"} 2\n")
        );
        assert!(out.contains(
            "coordinator_refusals_total{code=\"UNAVAILABLE\",reason=\"STORE_UNAVAILABLE\"} 1\n"
        ));
        assert!(!out.contains("SOMEONE_ELSE"), "{out}");
    }

    /// `REASONS` holds every reason `error.rs` gives (read from its source: a reason added
    /// there and forgotten here would be counted as `OTHER`).
    #[test]
    fn every_reason_error_rs_gives_is_allowed() {
        let source = include_str!("../error.rs");
        let mut found = 0;
        for (at, _) in source.match_indices("(Code::") {
            let rest = &source[at..];
            let Some(pair) = rest.get(..rest.find(')').unwrap_or(0)) else {
                continue;
            };
            let Some((_, reason)) = pair.split_once(", \"") else {
                continue;
            };
            let reason = reason.trim_end_matches('"');
            assert!(
                REASONS.contains(&reason),
                "{reason} is missing from REASONS"
            );
            found += 1;
        }
        assert!(found >= 20, "found only {found} reasons in error.rs");
    }
}
