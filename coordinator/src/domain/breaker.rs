//! Whether new payments are accepted: the admin pause and the gateway circuit breaker. Pure: the
//! decisions and the transitions, given the shared state and a clock; `store::control` applies
//! them (compare-and-set on the row's version), `control.rs` caches the row on each replica.
//!
//! ```text
//!            failure share ≥ BREAKER_FAILURE_PERCENT of ≥ BREAKER_MIN_CALLS calls in the window
//!   CLOSED ─────────────────────────────────────────────────────────────────────▶ OPEN
//!     ▲                                                                          │ │ ▲
//!     │ a probe payment's gateway calls were healthy        probe_at passed, the │ │ │ a probe's call failed
//!     │ (or an admin resets the breaker)                    next payment claims  │ │ │ (new cool-down)
//!     │                                                     a probe slot         ▼ │ │
//!     └──────────────────────────────────────────────────────────────────── HALF_OPEN
//! ```
//!
//! HALF_OPEN lets at most BREAKER_PROBES payments through per cool-down, across all replicas (a
//! slot is claimed in PostgreSQL). A probe that never reports (its replica crashed, its request
//! was refused after the claim, its gateway call hangs) cannot wedge the breaker: once the
//! cool-down passes again a new round of probes is allowed. Each probe carries the round it was
//! let through in ([`ProbeRound`]); a report from any other round than the current one (a probe
//! whose call hung past its round, reporting after a new round began) changes nothing.
//!
//! The admin pause is independent of the breaker: either one refuses new payments. Attempts
//! already committed are never affected.

use std::time::{Duration, SystemTime};

use gateway_client::Outcome;

use crate::error::rfc3339;

/// `by` of a refusal caused by the breaker.
pub const BREAKER_ACTOR: &str = "circuit-breaker";

/// The breaker's settings (`BREAKER_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// How far back the failure share is measured.
    pub window: Duration,
    /// Fewer calls than this in the window never open the breaker.
    pub min_calls: u32,
    /// The breaker opens when at least this share (percent) of the window's calls failed.
    pub failure_percent: u32,
    /// How long the breaker stays open before probe payments are let through.
    pub cooldown: Duration,
    /// Probe payments let through per cool-down while half-open, across all replicas.
    pub probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            min_calls: 20,
            failure_percent: 50,
            cooldown: Duration::from_secs(30),
            probes: 3,
        }
    }
}

impl BreakerPolicy {
    /// Whether these counts open the breaker.
    pub fn trips(&self, counts: Counts) -> bool {
        counts.calls >= self.min_calls.max(1)
            && u64::from(counts.failures) * 100
                >= u64::from(self.failure_percent) * u64::from(counts.calls)
    }
}

/// What one charging gateway call says about the gateway's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallHealth {
    /// The gateway answered conclusively (a decline is a correct answer).
    Healthy,
    /// The gateway failed, could not be reached, throttled us, or left the outcome unknown.
    Failed,
}

/// Classifies a charging call's outcome (see `docs/ARCHITECTURE.md`, gateway outcome classes).
///
/// `Rejected` (a 4xx other than a card decline) proves the gateway is up and answering: a bad
/// payment method token or a confirm on an intent already past it says nothing about the
/// gateway's health, and counting it would let a caller's bad requests pause payments for
/// everyone. Except 401/403: the gateway refuses this coordinator itself, so every payment will
/// fail until someone fixes the key.
pub fn classify<T>(outcome: &Outcome<T>) -> CallHealth {
    match outcome {
        Outcome::Succeeded(_) | Outcome::Declined { .. } => CallHealth::Healthy,
        Outcome::Rejected {
            status: 401 | 403, ..
        } => CallHealth::Failed,
        Outcome::Rejected { .. } => CallHealth::Healthy,
        Outcome::Unknown { .. } | Outcome::RetryLater { .. } | Outcome::NotSent { .. } => {
            CallHealth::Failed
        }
    }
}

/// Calls and failures in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u32,
    pub failures: u32,
}

/// A sliding window of call results in time buckets (one replica's view): `BUCKETS` buckets
/// each `window / BUCKETS` wide, so the oldest bucket ages out in steps of a tenth of the window.
/// Times are milliseconds on the caller's monotonic clock.
#[derive(Clone, Debug)]
pub struct Window {
    width_ms: u64,
    slots: Vec<Slot>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Which bucket (`at_ms / width_ms`) the counts belong to.
    index: u64,
    calls: u32,
    failures: u32,
}

impl Window {
    pub const BUCKETS: usize = 10;

    pub fn new(length: Duration) -> Self {
        let length_ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
        Self {
            width_ms: (length_ms / Self::BUCKETS as u64).max(1),
            slots: vec![Slot::default(); Self::BUCKETS],
        }
    }

    fn slot_of(&self, index: u64) -> usize {
        (index % Self::BUCKETS as u64) as usize
    }

    pub fn record(&mut self, at_ms: u64, health: CallHealth) {
        let index = at_ms / self.width_ms;
        let at = self.slot_of(index);
        let slot = &mut self.slots[at];
        if slot.index != index {
            *slot = Slot {
                index,
                ..Slot::default()
            };
        }
        slot.calls = slot.calls.saturating_add(1);
        if health == CallHealth::Failed {
            slot.failures = slot.failures.saturating_add(1);
        }
    }

    /// The counts of the buckets still inside the window at `at_ms`.
    pub fn counts(&self, at_ms: u64) -> Counts {
        let current = at_ms / self.width_ms;
        let oldest = current.saturating_sub(Self::BUCKETS as u64 - 1);
        self.slots
            .iter()
            .filter(|s| s.calls > 0 && s.index >= oldest && s.index <= current)
            .fold(Counts::default(), |acc, s| Counts {
                calls: acc.calls.saturating_add(s.calls),
                failures: acc.failures.saturating_add(s.failures),
            })
    }

    pub fn clear(&mut self) {
        self.slots.fill(Slot::default());
    }
}

/// An admin's pause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminPause {
    pub reason: String,
    /// The admin's key id.
    pub by: String,
    pub since: SystemTime,
}

/// The breaker's state, shared by every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Breaker {
    Closed,
    /// New payments are refused until `probe_at`.
    Open {
        reason: String,
        /// When it opened (a probe that fails keeps the first opening's time: payments have
        /// been refused since then).
        since: SystemTime,
        probe_at: SystemTime,
    },
    /// Probe payments are let through: `probes_left` more in this round; a new round at
    /// `probe_at` if no probe reported by then.
    HalfOpen {
        reason: String,
        since: SystemTime,
        probe_at: SystemTime,
        probes_left: u32,
    },
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        match self {
            Breaker::Closed => BreakerState::Closed,
            Breaker::Open { .. } => BreakerState::Open,
            Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    pub fn probe_at(&self) -> Option<SystemTime> {
        match self {
            Breaker::Closed => None,
            Breaker::Open { probe_at, .. } | Breaker::HalfOpen { probe_at, .. } => Some(*probe_at),
        }
    }

    /// The current probe round: only while half-open.
    pub fn probe_round(&self) -> Option<ProbeRound> {
        match self {
            Breaker::HalfOpen { probe_at, .. } => Some(ProbeRound(*probe_at)),
            Breaker::Closed | Breaker::Open { .. } => None,
        }
    }
}

/// The half-open round a probe was let through in: that round's `probe_at`. It is fixed for the
/// whole round, and every later round's is later (a round starts at or after the previous one's
/// `probe_at` and lasts a cool-down, never zero), so it names the round without a column of its
/// own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRound(pub SystemTime);

/// The breaker's state as stored (`payments_control.breaker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }

    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "CLOSED" => Some(BreakerState::Closed),
            "OPEN" => Some(BreakerState::Open),
            "HALF_OPEN" => Some(BreakerState::HalfOpen),
            _ => None,
        }
    }
}

/// The shared row: whether new payments are accepted. `version` grows with every change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub admin: Option<AdminPause>,
    pub breaker: Breaker,
    pub version: i64,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            admin: None,
            breaker: Breaker::Closed,
            version: 0,
        }
    }
}

/// Why new payments are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Admin,
    CircuitBreaker,
}

/// A refusal: what callers are told (`PAYMENTS_PAUSED`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paused {
    pub cause: Cause,
    pub reason: String,
    pub since: SystemTime,
    pub by: String,
}

/// What the gate says about one new payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    Accept,
    /// The breaker wants a probe: let the payment through only if a probe slot can be claimed
    /// in the shared row (`Control::claim_probe`).
    Probe,
    Refuse(Paused),
}

/// One change of the row, for the log and the history table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `pause`, `resume`, `reset_breaker`, `open`, `probe`, `close`, `reopen`.
    pub action: &'static str,
    pub detail: String,
}

impl Control {
    /// Why new payments are refused now, if they are (the admin's pause first: it needs a
    /// person to lift it, the breaker closes on its own).
    pub fn paused(&self) -> Option<Paused> {
        if let Some(admin) = &self.admin {
            return Some(Paused {
                cause: Cause::Admin,
                reason: admin.reason.clone(),
                since: admin.since,
                by: admin.by.clone(),
            });
        }
        match &self.breaker {
            Breaker::Closed => None,
            Breaker::Open { reason, since, .. } | Breaker::HalfOpen { reason, since, .. } => {
                Some(Paused {
                    cause: Cause::CircuitBreaker,
                    reason: reason.clone(),
                    since: *since,
                    by: BREAKER_ACTOR.to_owned(),
                })
            }
        }
    }

    /// The gate's decision for a new payment at `now`, from this (possibly cached) state.
    pub fn admit(&self, now: SystemTime) -> Admit {
        if self.admin.is_some() {
            return self.paused().map_or(Admit::Accept, Admit::Refuse);
        }
        match &self.breaker {
            Breaker::Closed => Admit::Accept,
            Breaker::Open { probe_at, .. } if now >= *probe_at => Admit::Probe,
            Breaker::HalfOpen {
                probe_at,
                probes_left,
                ..
            } if *probes_left > 0 || now >= *probe_at => Admit::Probe,
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => {
                self.paused().map_or(Admit::Accept, Admit::Refuse)
            }
        }
    }

    /// An admin pauses new payments. Pausing again updates the reason and who, keeping the
    /// time payments have been paused since.
    pub fn pause(&self, by: &str, reason: &str, now: SystemTime) -> (Control, Change) {
        let since = self.admin.as_ref().map_or(now, |a| a.since);
        let next = Control {
            admin: Some(AdminPause {
                reason: reason.to_owned(),
                by: by.to_owned(),
                since,
            }),
            ..self.clone()
        };
        (
            next,
            Change {
                action: "pause",
                detail: reason.to_owned(),
            },
        )
    }

    /// An admin lifts the pause; with `reset_breaker` also closes the breaker by hand. `None`
    /// when there is nothing to change.
    pub fn resume(&self, reset_breaker: bool) -> Option<(Control, Change)> {
        let reset = reset_breaker && self.breaker != Breaker::Closed;
        if self.admin.is_none() && !reset {
            return None;
        }
        let mut what = Vec::new();
        if let Some(admin) = &self.admin {
            what.push(format!(
                "admin pause by {} lifted (it said: {})",
                admin.by, admin.reason
            ));
        }
        if reset {
            what.push(format!(
                "circuit breaker closed by hand (it was {})",
                self.breaker.state().as_str()
            ));
        }
        let next = Control {
            admin: None,
            breaker: if reset {
                Breaker::Closed
            } else {
                self.breaker.clone()
            },
            version: self.version,
        };
        Some((
            next,
            Change {
                action: if reset { "reset_breaker" } else { "resume" },
                detail: what.join("; "),
            },
        ))
    }

    /// The window says the gateway is failing: open the breaker, unless it is already open or
    /// half-open (several replicas may trip at once; the first wins, the rest find it open).
    pub fn trip(
        &self,
        counts: Counts,
        policy: &BreakerPolicy,
        now: SystemTime,
    ) -> Option<(Control, Change)> {
        if self.breaker != Breaker::Closed {
            return None;
        }
        let probe_at = now + policy.cooldown;
        let reason = format!(
            "gateway circuit breaker open: {} of {} gateway calls failed or ended unknown in the \
             last {}; probing again at {}",
            counts.failures,
            counts.calls,
            seconds(policy.window),
            rfc3339(probe_at)
        );
        Some((
            Control {
                breaker: Breaker::Open {
                    reason: reason.clone(),
                    since: now,
                    probe_at,
                },
                ..self.clone()
            },
            Change {
                action: "open",
                detail: reason,
            },
        ))
    }

    /// Claims one probe slot: the cool-down has passed (a new round of `policy.probes`), or the
    /// current round has slots left. `None`: no probe may go now.
    pub fn claim_probe(
        &self,
        policy: &BreakerPolicy,
        now: SystemTime,
    ) -> Option<(Control, Change)> {
        let (reason, since, probe_at, probes_left) = match &self.breaker {
            Breaker::Closed => return None,
            Breaker::Open {
                since, probe_at, ..
            } if now >= *probe_at => {
                let next_round = now + policy.cooldown;
                (
                    half_open_reason(now, next_round),
                    *since,
                    next_round,
                    policy.probes.max(1) - 1,
                )
            }
            Breaker::HalfOpen {
                since, probe_at, ..
            } if now >= *probe_at => {
                // No probe reported within a cool-down: a new round.
                let next_round = now + policy.cooldown;
                (
                    half_open_reason(now, next_round),
                    *since,
                    next_round,
                    policy.probes.max(1) - 1,
                )
            }
            Breaker::HalfOpen {
                reason,
                since,
                probe_at,
                probes_left,
            } if *probes_left > 0 => (reason.clone(), *since, *probe_at, probes_left - 1),
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => return None,
        };
        Some((
            Control {
                breaker: Breaker::HalfOpen {
                    reason,
                    since,
                    probe_at,
                    probes_left,
                },
                ..self.clone()
            },
            Change {
                action: "probe",
                detail: format!("probe payment let through; {probes_left} left in this round"),
            },
        ))
    }

    /// A probe payment of `round` was healthy: close the breaker. Only from HALF_OPEN in that
    /// same round: a probe reporting after another probe re-opened the breaker, or after a new
    /// round began (its call outlived its round), changes nothing.
    pub fn probe_succeeded(&self, round: ProbeRound) -> Option<(Control, Change)> {
        if self.breaker.probe_round() != Some(round) {
            return None;
        }
        Some((
            Control {
                breaker: Breaker::Closed,
                ..self.clone()
            },
            Change {
                action: "close",
                detail: "a probe payment's gateway calls were healthy".to_owned(),
            },
        ))
    }

    /// A probe payment of `round` failed at the gateway: open again with a new cool-down. Only
    /// from HALF_OPEN in that same round (a late failure from an earlier round must not re-open
    /// the breaker over the current round's probes).
    pub fn probe_failed(
        &self,
        round: ProbeRound,
        what: &str,
        policy: &BreakerPolicy,
        now: SystemTime,
    ) -> Option<(Control, Change)> {
        let Breaker::HalfOpen {
            since, probe_at, ..
        } = &self.breaker
        else {
            return None;
        };
        if ProbeRound(*probe_at) != round {
            return None;
        }
        let probe_at = now + policy.cooldown;
        let reason = format!(
            "gateway circuit breaker open: a probe payment failed at the gateway ({what}); \
             probing again at {}",
            rfc3339(probe_at)
        );
        Some((
            Control {
                breaker: Breaker::Open {
                    reason: reason.clone(),
                    since: *since,
                    probe_at,
                },
                ..self.clone()
            },
            Change {
                action: "reopen",
                detail: reason,
            },
        ))
    }
}

fn half_open_reason(now: SystemTime, next_round: SystemTime) -> String {
    format!(
        "gateway circuit breaker half-open: probe payments are being tried since {}; other new \
         payments are refused until one succeeds (next probes at {} if none reports)",
        rfc3339(now),
        rfc3339(next_round)
    )
}

/// `30 s`, `1.5 s`.
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use gateway_client::UnknownReason;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_percent: 50,
            cooldown: Duration::from_secs(5),
            probes: 2,
        }
    }

    fn counts(calls: u32, failures: u32) -> Counts {
        Counts { calls, failures }
    }

    #[test]
    fn the_threshold_needs_enough_calls_and_a_large_enough_share() {
        let p = policy();
        assert!(!p.trips(counts(3, 3)), "too few calls");
        assert!(p.trips(counts(4, 2)), "50% of 4");
        assert!(!p.trips(counts(5, 2)), "40%");
        assert!(p.trips(counts(10, 10)));
        assert!(!p.trips(counts(0, 0)));
        let all = BreakerPolicy {
            failure_percent: 100,
            min_calls: 0,
            ..p
        };
        assert!(!all.trips(counts(0, 0)), "no calls never trip");
        assert!(!all.trips(counts(3, 2)));
        assert!(all.trips(counts(1, 1)));
    }

    #[test]
    fn outcomes_are_classified() {
        let ok: Outcome<()> = Outcome::Succeeded(());
        assert_eq!(classify(&ok), CallHealth::Healthy);
        let declined: Outcome<()> = Outcome::Declined {
            decline_code: "generic_decline".into(),
            message: String::new(),
            intent_id: None,
        };
        assert_eq!(classify(&declined), CallHealth::Healthy);
        let unknown: Outcome<()> = Outcome::Unknown {
            reason: UnknownReason::Timeout,
            detail: String::new(),
        };
        assert_eq!(classify(&unknown), CallHealth::Failed);
        let later: Outcome<()> = Outcome::RetryLater { after: S };
        assert_eq!(classify(&later), CallHealth::Failed);
        let not_sent: Outcome<()> = Outcome::NotSent {
            detail: String::new(),
        };
        assert_eq!(classify(&not_sent), CallHealth::Failed);
        let rejected = |status| -> Outcome<()> {
            Outcome::Rejected {
                status,
                error_type: None,
                code: None,
                param: None,
                message: String::new(),
            }
        };
        assert_eq!(classify(&rejected(400)), CallHealth::Healthy);
        assert_eq!(classify(&rejected(404)), CallHealth::Healthy);
        assert_eq!(classify(&rejected(401)), CallHealth::Failed);
        assert_eq!(classify(&rejected(403)), CallHealth::Failed);
    }

    #[test]
    fn the_window_slides_bucket_by_bucket() {
        let mut w = Window::new(Duration::from_secs(10));
        for t in [0, 100, 999] {
            w.record(t, CallHealth::Failed);
        }
        w.record(1_000, CallHealth::Healthy);
        w.record(9_999, CallHealth::Failed);
        assert_eq!(w.counts(9_999), counts(5, 4));
        // At 10 s the first bucket (0..1 s) has left the window.
        assert_eq!(w.counts(10_000), counts(2, 1));
        assert_eq!(w.counts(10_999), counts(2, 1));
        assert_eq!(w.counts(11_000), counts(1, 1));
        assert_eq!(w.counts(18_999), counts(1, 1));
        assert_eq!(w.counts(19_000), counts(0, 0));
        // A bucket's slot is reused for a later bucket: the old counts are dropped.
        w.record(20_500, CallHealth::Healthy);
        assert_eq!(w.counts(20_500), counts(1, 0));
        w.record(20_600, CallHealth::Failed);
        w.clear();
        assert_eq!(w.counts(20_600), counts(0, 0));
    }

    #[test]
    fn a_tiny_window_still_works() {
        let mut w = Window::new(Duration::from_millis(3));
        w.record(5, CallHealth::Failed);
        assert_eq!(w.counts(5), counts(1, 1));
        assert_eq!(w.counts(15), counts(0, 0));
    }

    fn open_at(t: u64) -> Control {
        let (c, change) = Control::default()
            .trip(counts(4, 3), &policy(), at(t))
            .expect("a closed breaker trips");
        assert_eq!(change.action, "open");
        c
    }

    #[test]
    fn closed_accepts_and_trips_once() {
        let closed = Control::default();
        assert_eq!(closed.admit(at(0)), Admit::Accept);
        assert_eq!(closed.paused(), None);
        let open = open_at(0);
        let Breaker::Open {
            reason,
            since,
            probe_at,
        } = &open.breaker
        else {
            panic!("{open:?}");
        };
        assert_eq!(*since, at(0));
        assert_eq!(*probe_at, at(5));
        assert!(
            reason.starts_with(
                "gateway circuit breaker open: 3 of 4 gateway calls failed or ended unknown in \
                 the last 10 s; probing again at 2023-11-14T22:13:25Z"
            ),
            "{reason}"
        );
        // Another replica's trip finds it open: nothing to do.
        assert_eq!(open.trip(counts(9, 9), &policy(), at(1)), None);
    }

    #[test]
    fn open_refuses_until_the_cool_down_then_asks_for_a_probe() {
        let open = open_at(0);
        let Admit::Refuse(paused) = open.admit(at(4)) else {
            panic!("refused while cooling down");
        };
        assert_eq!(paused.cause, Cause::CircuitBreaker);
        assert_eq!(paused.by, BREAKER_ACTOR);
        assert_eq!(paused.since, at(0));
        assert!(paused.reason.contains("3 of 4"));
        assert_eq!(open.admit(at(5)), Admit::Probe);
        // Too early for the store's clock: no slot.
        assert_eq!(open.claim_probe(&policy(), at(4)), None);
    }

    #[test]
    fn half_open_lets_a_few_probes_through_per_cool_down() {
        let p = policy();
        let open = open_at(0);
        let (one, change) = open.claim_probe(&p, at(6)).expect("first probe");
        assert_eq!(change.action, "probe");
        let Breaker::HalfOpen {
            since,
            probe_at,
            probes_left,
            ..
        } = one.breaker.clone()
        else {
            panic!("{one:?}");
        };
        assert_eq!((since, probe_at, probes_left), (at(0), at(11), 1));
        assert_eq!(one.admit(at(7)), Admit::Probe);
        let (two, _) = one.claim_probe(&p, at(7)).expect("second probe");
        assert_eq!(two.breaker.probe_at(), Some(at(11)));
        // The round is used up: refused, without asking the store.
        let Admit::Refuse(paused) = two.admit(at(8)) else {
            panic!("refused when the round is used up");
        };
        assert!(paused.reason.contains("half-open"), "{}", paused.reason);
        assert_eq!(paused.since, at(0));
        assert_eq!(two.claim_probe(&p, at(8)), None);
        // No probe reported within a cool-down (lost to a crash, or refused after its claim): a
        // new round.
        assert_eq!(two.admit(at(11)), Admit::Probe);
        let (again, _) = two.claim_probe(&p, at(11)).expect("new round");
        assert_eq!(again.breaker.probe_at(), Some(at(16)));
        assert!(matches!(
            again.breaker,
            Breaker::HalfOpen { probes_left: 1, .. }
        ));
    }

    #[test]
    fn a_probe_closes_or_reopens() {
        let p = policy();
        let (half, _) = open_at(0).claim_probe(&p, at(5)).expect("probe");
        let round = half.breaker.probe_round().expect("half-open");
        assert_eq!(round, ProbeRound(at(10)));
        let (closed, change) = half.probe_succeeded(round).expect("closes");
        assert_eq!(closed.breaker, Breaker::Closed);
        assert_eq!(change.action, "close");
        assert_eq!(closed.admit(at(6)), Admit::Accept);
        // A second probe's late answer changes nothing once closed.
        assert_eq!(closed.probe_succeeded(round), None);
        assert_eq!(
            closed.probe_failed(round, "create: unknown", &p, at(6)),
            None
        );

        let (reopened, change) = half
            .probe_failed(round, "create: unknown", &p, at(7))
            .expect("re-opens");
        assert_eq!(change.action, "reopen");
        let Breaker::Open {
            reason,
            since,
            probe_at,
        } = &reopened.breaker
        else {
            panic!("{reopened:?}");
        };
        assert_eq!((*since, *probe_at), (at(0), at(12)));
        assert!(reason.contains("create: unknown"), "{reason}");
        // A late success from the earlier round does not close a re-opened breaker.
        assert_eq!(reopened.probe_succeeded(round), None);
    }

    #[test]
    fn a_late_report_from_an_earlier_round_changes_nothing() {
        let p = policy();
        // Round 1: one probe goes at 5 s, and its gateway call hangs.
        let (first, _) = open_at(0).claim_probe(&p, at(5)).expect("round 1");
        let stale = first.breaker.probe_round().expect("half-open");
        // Nothing reported by 10 s: round 2, and its probe goes.
        let (second, _) = first.claim_probe(&p, at(10)).expect("round 2");
        let current = second.breaker.probe_round().expect("half-open");
        assert_ne!(stale, current);
        assert_eq!(current, ProbeRound(at(15)));
        // Round 1's probe reports at last, either way: round 2 is left to its own probes.
        assert_eq!(second.probe_succeeded(stale), None);
        assert_eq!(
            second.probe_failed(stale, "create: unknown", &p, at(11)),
            None
        );
        // A second slot of round 2 keeps the round: its reports count.
        let (slot, _) = second
            .claim_probe(&p, at(11))
            .expect("round 2, second slot");
        assert_eq!(slot.breaker.probe_round(), Some(current));
        let (reopened, change) = slot
            .probe_failed(current, "confirm: timeout", &p, at(12))
            .expect("the current round re-opens");
        assert_eq!(change.action, "reopen");
        assert_eq!(reopened.breaker.probe_at(), Some(at(17)));
        // Round 3 after that cool-down: round 2's late success does not close it either.
        let (third, _) = reopened.claim_probe(&p, at(17)).expect("round 3");
        assert_eq!(third.probe_succeeded(current), None);
        assert_eq!(third.probe_succeeded(stale), None);
        let (closed, _) = third
            .probe_succeeded(ProbeRound(at(22)))
            .expect("round 3's own probe closes it");
        assert_eq!(closed.breaker, Breaker::Closed);
    }

    #[test]
    fn the_admin_pause_is_independent_of_the_breaker() {
        let (paused, change) = Control::default().pause("admin-1", "gateway maintenance", at(0));
        assert_eq!(change.action, "pause");
        let Admit::Refuse(refusal) = paused.admit(at(1)) else {
            panic!("paused");
        };
        assert_eq!(
            refusal,
            Paused {
                cause: Cause::Admin,
                reason: "gateway maintenance".into(),
                since: at(0),
                by: "admin-1".into(),
            }
        );
        // Pausing again keeps the time, updates the reason and who.
        let (again, _) = paused.pause("admin-2", "still maintenance", at(9));
        let admin = again.admin.clone().expect("paused");
        assert_eq!((admin.by.as_str(), admin.since), ("admin-2", at(0)));

        // The breaker trips under an admin pause; the admin's reason is what callers read,
        // and no probe is let through while paused.
        let (both, _) = again.trip(counts(4, 4), &policy(), at(10)).expect("trips");
        assert_eq!(both.paused().map(|p| p.cause), Some(Cause::Admin));
        assert!(matches!(both.admit(at(100)), Admit::Refuse(_)));

        // Resuming lifts the admin pause only; the breaker stays open.
        let (resumed, change) = both.resume(false).expect("resumes");
        assert_eq!(change.action, "resume");
        assert!(change.detail.contains("admin-2"), "{}", change.detail);
        assert_eq!(resumed.admin, None);
        assert_eq!(resumed.breaker.state(), BreakerState::Open);
        assert_eq!(
            resumed.paused().map(|p| p.cause),
            Some(Cause::CircuitBreaker)
        );
        // Nothing to resume: no change.
        assert_eq!(resumed.resume(false), None);
        // By hand, the breaker closes.
        let (reset, change) = resumed.resume(true).expect("resets");
        assert_eq!(change.action, "reset_breaker");
        assert_eq!(reset.breaker, Breaker::Closed);
        assert_eq!(reset.admit(at(11)), Admit::Accept);
        assert_eq!(reset.resume(true), None);
    }

    #[test]
    fn stored_states_round_trip() {
        for s in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            assert_eq!(BreakerState::from_stored(s.as_str()), Some(s));
        }
        assert_eq!(BreakerState::from_stored("open"), None);
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(seconds(Duration::from_secs(30)), "30 s");
    }
}
