//! Resolving an unknown outcome: what to do next, given what is known. Pure: the caller
//! (`recovery.rs`) executes the action, interprets the gateway's answer, and asks again.
//!
//! Final answers are never decided here: an intent seen `succeeded`, declined
//! (`requires_payment_method`) or `canceled` ends the attempt at once (see
//! `recovery::interpret`). This module decides what to do while the outcome is NOT known.
//!
//! | flow | intent id persisted | known state | capabilities | action |
//! | --- | --- | --- | --- | --- |
//! | any | — | — | tries exhausted | `ManualReview` |
//! | two_phase | no | — | any | `NothingCharged` (never confirmed: nothing charged through it) |
//! | one_shot | no | the create provably did nothing (429, not sent, 4xx) | any | `NothingCharged` |
//! | one_shot | no | create in doubt | idempotency, window open | `ReplayCreate` (same key: the gateway answers the original, or creates it once) |
//! | one_shot | no | create in doubt | otherwise | `ManualReview` (nothing can find the intent) |
//! | any | yes | not looked up | lookup | `Lookup` |
//! | any | yes | not looked up | no lookup, idempotency, window open | `ReplayConfirm` (the replay answers the original outcome) |
//! | any | yes | not looked up | no lookup, no replay, cancel | `Cancel` (a voided intent cannot be charged; a cancel refused as `unexpected_state` ⇒ manual review) |
//! | any | yes | not looked up | none of these | `ManualReview` |
//! | any | yes | `requires_confirmation` | idempotency, window open | `ReplayConfirm` (same key) |
//! | any | yes | `requires_confirmation` | otherwise, cancel | `Cancel` |
//! | any | yes | `requires_confirmation` | otherwise | `ReplayConfirm` (still safe, see below) |
//! | any | yes | `processing` and the like | — | `Wait` (then look again) |
//! | any | — | the gateway asked to wait / was unreachable | — | `Wait` (then the same decision) |
//!
//! Why confirming a `requires_confirmation` intent is safe even without idempotency keys: the
//! charge is tied to the intent, whose state machine allows it to succeed once. A confirm that
//! lands twice is refused the second time with `payment_intent_unexpected_state`, nothing charged
//! again. We prefer a same-key replay (the gateway's own recovery path) and, without it, a cancel
//! (conclusive: once voided, no confirm still travelling can charge it, and the order is payable
//! again), and confirm without a key only when neither exists.

use std::time::{Duration, SystemTime};

use gateway_client::{Capabilities, Flow};

/// What is known about the gateway's side, short of an outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// The last charging call (or the crash) left the outcome unknown.
    InDoubt,
    /// The last charging call provably did nothing (429 after the client's retries, connection
    /// never established, a 4xx refusal): the intent is where it was before that call.
    NotDone,
    /// A lookup (or a replayed answer) says the intent waits for its confirmation.
    AwaitsConfirmation,
    /// A lookup says the gateway has not decided yet (`processing`, `requires_action`, …).
    Undecided,
    /// The gateway asked us to wait (429, 409 key in use) or could not be reached while
    /// resolving: nothing learnt; look again after `after`.
    Busy { after: Duration },
}

/// The facts a decision rests on.
#[derive(Clone, Debug)]
pub struct Situation {
    pub flow: Flow,
    pub capabilities: Capabilities,
    /// The intent id as persisted on the attempt (or learnt since).
    pub intent_id: Option<String>,
    pub known: Known,
    /// When the attempt's first charging call may have been sent (the attempt's start): the
    /// idempotency window runs from it.
    pub first_sent_at: SystemTime,
    pub now: SystemTime,
    /// Resolution actions taken so far, this attempt, across runs and replicas (the bound).
    pub tries: u32,
    /// Actions taken in this run (the spacing between them: 0.5 s, 1 s, 2 s, …; the spacing
    /// between runs is the worker's `next_check_at`).
    pub run_tries: u32,
    pub max_tries: u32,
}

/// The next thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Lookup(String),
    ReplayCreate,
    ReplayConfirm(String),
    Cancel(String),
    /// Provably nothing was charged: finish the attempt CANCELLED, the order payable again.
    NothingCharged(String),
    /// Nothing can establish the outcome: attempt UNKNOWN, order MANUAL_REVIEW; why, as a
    /// closed cause and in words.
    ManualReview(ReviewCause, String),
    /// Wait this long, then decide again.
    Wait(Duration),
}

/// Why nothing can establish an outcome: a closed set (the `reason` of
/// `coordinator_payments_finished_total{outcome="unknown"}`), beside the words for the reviewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReviewCause {
    /// RECOVERY_MAX_RUNS runs spent their actions without an answer that settles it.
    RunsExhausted,
    /// Only a same-key replay could tell, and the gateway's idempotency window has passed.
    IdempotencyWindowPassed,
    /// The gateway offers nothing that could tell (no lookup, no idempotency keys, no cancel).
    NoCapability,
}

impl ReviewCause {
    pub const ALL: [ReviewCause; 3] = [
        ReviewCause::RunsExhausted,
        ReviewCause::IdempotencyWindowPassed,
        ReviewCause::NoCapability,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewCause::RunsExhausted => "runs_exhausted",
            ReviewCause::IdempotencyWindowPassed => "idempotency_window_passed",
            ReviewCause::NoCapability => "no_capability",
        }
    }

    pub fn parse(s: &str) -> Option<ReviewCause> {
        ReviewCause::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A replay was not possible: with idempotency keys, because the window passed.
    fn without_replay(capabilities: &Capabilities) -> ReviewCause {
        if capabilities.idempotency() {
            ReviewCause::IdempotencyWindowPassed
        } else {
            ReviewCause::NoCapability
        }
    }
}

/// The first wait between resolution tries; it doubles each try, up to `MAX_SPACING`.
pub const FIRST_SPACING: Duration = Duration::from_millis(500);
pub const MAX_SPACING: Duration = Duration::from_secs(60);

/// The spacing after `tries` tries: 0.5 s, 1 s, 2 s, 4 s, … capped at a minute.
pub fn spacing(tries: u32) -> Duration {
    FIRST_SPACING
        .saturating_mul(1u32.checked_shl(tries.min(16)).unwrap_or(u32::MAX))
        .min(MAX_SPACING)
}

/// What to do next.
pub fn decide(s: &Situation) -> Action {
    if s.tries >= s.max_tries {
        return Action::ManualReview(
            ReviewCause::RunsExhausted,
            format!(
                "the outcome could not be established after {} resolution tries",
                s.tries
            ),
        );
    }
    let replay = s.capabilities.may_replay(s.first_sent_at, s.now);
    if let Known::Busy { after } = s.known {
        return Action::Wait(after.max(spacing(s.run_tries)));
    }
    let Some(intent_id) = s.intent_id.clone() else {
        return match (s.flow, &s.known) {
            (Flow::TwoPhase, _) => Action::NothingCharged(
                "two_phase: the intent id was never persisted, so the intent was never confirmed \
                 and nothing was charged through it"
                    .to_owned(),
            ),
            (Flow::OneShot, Known::NotDone) => Action::NothingCharged(
                "one_shot: the create provably did nothing at the gateway".to_owned(),
            ),
            (Flow::OneShot, _) if replay => Action::ReplayCreate,
            (Flow::OneShot, _) => Action::ManualReview(
                ReviewCause::without_replay(&s.capabilities),
                if s.capabilities.idempotency() {
                    "one_shot create in doubt and the gateway's idempotency window has passed: \
                 a replay now would be a new charge"
                        .to_owned()
                } else {
                    "one_shot create in doubt, the intent id is unknown and the gateway has no \
                 idempotency keys: nothing can tell whether it charged"
                        .to_owned()
                },
            ),
        };
    };
    match s.known {
        Known::InDoubt => {
            if s.capabilities.may_lookup() {
                Action::Lookup(intent_id)
            } else if replay {
                Action::ReplayConfirm(intent_id)
            } else if s.capabilities.may_cancel() {
                Action::Cancel(intent_id)
            } else {
                Action::ManualReview(
                    ReviewCause::without_replay(&s.capabilities),
                    format!(
                        "intent {intent_id} in doubt and the gateway allows no lookup, no replay \
                         and no cancel"
                    ),
                )
            }
        }
        Known::NotDone | Known::AwaitsConfirmation => {
            if replay {
                Action::ReplayConfirm(intent_id)
            } else if s.capabilities.may_cancel() {
                Action::Cancel(intent_id)
            } else {
                Action::ReplayConfirm(intent_id)
            }
        }
        Known::Undecided => Action::Wait(spacing(s.run_tries)),
        Known::Busy { .. } => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn caps(list: &str) -> Capabilities {
        list.parse().expect("capabilities")
    }

    fn situation(flow: Flow, c: &str, intent: Option<&str>, known: Known) -> Situation {
        let now = SystemTime::now();
        Situation {
            flow,
            capabilities: caps(c),
            intent_id: intent.map(str::to_owned),
            known,
            first_sent_at: now - Duration::from_secs(5),
            now,
            tries: 0,
            run_tries: 0,
            max_tries: 5,
        }
    }

    const ALL_CAPS: [&str; 8] = [
        "none",
        "idempotency",
        "lookup",
        "cancel",
        "idempotency,lookup",
        "idempotency,cancel",
        "lookup,cancel",
        "idempotency,lookup,cancel",
    ];

    fn all_known() -> Vec<Known> {
        vec![
            Known::InDoubt,
            Known::NotDone,
            Known::AwaitsConfirmation,
            Known::Undecided,
            Known::Busy {
                after: Duration::from_secs(2),
            },
        ]
    }

    #[test]
    fn exhausted_tries_always_go_to_manual_review() {
        for flow in [Flow::TwoPhase, Flow::OneShot] {
            for c in ALL_CAPS {
                for known in all_known() {
                    for intent in [None, Some("pi_1")] {
                        let mut s = situation(flow, c, intent, known.clone());
                        s.tries = 5;
                        assert!(
                            matches!(
                                decide(&s),
                                Action::ManualReview(ReviewCause::RunsExhausted, _)
                            ),
                            "{flow} {c} {known:?} {intent:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn busy_always_waits_at_least_what_the_gateway_asked() {
        for flow in [Flow::TwoPhase, Flow::OneShot] {
            for c in ALL_CAPS {
                for intent in [None, Some("pi_1")] {
                    let s = situation(
                        flow,
                        c,
                        intent,
                        Known::Busy {
                            after: Duration::from_secs(3),
                        },
                    );
                    assert_eq!(decide(&s), Action::Wait(Duration::from_secs(3)));
                    // Spacing grows within a run, not with earlier runs.
                    let mut later = s.clone();
                    later.tries = 4;
                    assert_eq!(decide(&later), Action::Wait(Duration::from_secs(3)));
                }
            }
        }
    }

    #[test]
    fn two_phase_without_a_persisted_intent_charged_nothing() {
        for c in ALL_CAPS {
            for known in [Known::InDoubt, Known::NotDone] {
                let s = situation(Flow::TwoPhase, c, None, known);
                assert!(matches!(decide(&s), Action::NothingCharged(_)), "{c}");
            }
        }
    }

    #[test]
    fn one_shot_without_an_intent_replays_only_inside_the_window() {
        for c in ALL_CAPS {
            let s = situation(Flow::OneShot, c, None, Known::InDoubt);
            let expected_replay = caps(c).idempotency();
            match decide(&s) {
                Action::ReplayCreate => assert!(expected_replay, "{c}"),
                Action::ManualReview(cause, why) => {
                    assert!(!expected_replay, "{c}");
                    assert_eq!(cause, ReviewCause::NoCapability, "{c}");
                    assert!(why.contains("idempotency keys"), "{why}");
                }
                other => panic!("{c}: {other:?}"),
            }
            // 23 h 30 min later: inside 24 h but past the safety margin.
            let mut late = situation(Flow::OneShot, c, None, Known::InDoubt);
            late.first_sent_at = late.now - (23 * HOUR + HOUR / 2);
            let expected_cause = if caps(c).idempotency() {
                ReviewCause::IdempotencyWindowPassed
            } else {
                ReviewCause::NoCapability
            };
            assert!(
                matches!(decide(&late), Action::ManualReview(cause, _) if cause == expected_cause),
                "{c}: never replay a create near or past the window"
            );
            // A create that provably did nothing charged nothing.
            let not_done = situation(Flow::OneShot, c, None, Known::NotDone);
            assert!(matches!(decide(&not_done), Action::NothingCharged(_)));
        }
    }

    #[test]
    fn a_known_intent_in_doubt_is_looked_up_else_replayed_else_cancelled() {
        for flow in [Flow::TwoPhase, Flow::OneShot] {
            for c in ALL_CAPS {
                let k = caps(c);
                let s = situation(flow, c, Some("pi_1"), Known::InDoubt);
                let expected = if k.may_lookup() {
                    Action::Lookup("pi_1".into())
                } else if k.idempotency() {
                    Action::ReplayConfirm("pi_1".into())
                } else if k.may_cancel() {
                    Action::Cancel("pi_1".into())
                } else {
                    Action::ManualReview(ReviewCause::NoCapability, String::new())
                };
                match (decide(&s), expected) {
                    (Action::ManualReview(got, _), Action::ManualReview(cause, _)) => {
                        assert_eq!(got, cause, "{flow} {c}");
                    }
                    (got, expected) => assert_eq!(got, expected, "{flow} {c}"),
                }
            }
        }
    }

    #[test]
    fn an_intent_awaiting_confirmation_is_confirmed_with_the_same_key_or_voided() {
        for c in ALL_CAPS {
            let k = caps(c);
            for known in [Known::AwaitsConfirmation, Known::NotDone] {
                let s = situation(Flow::TwoPhase, c, Some("pi_1"), known.clone());
                let expected = if k.idempotency() {
                    Action::ReplayConfirm("pi_1".into())
                } else if k.may_cancel() {
                    Action::Cancel("pi_1".into())
                } else {
                    Action::ReplayConfirm("pi_1".into())
                };
                assert_eq!(decide(&s), expected, "{c} {known:?}");
            }
            // Past the window: never a keyed replay; void it if possible.
            let mut late = situation(Flow::TwoPhase, c, Some("pi_1"), Known::AwaitsConfirmation);
            late.first_sent_at = late.now - 25 * HOUR;
            let expected = if k.may_cancel() {
                Action::Cancel("pi_1".into())
            } else {
                Action::ReplayConfirm("pi_1".into())
            };
            assert_eq!(decide(&late), expected, "{c}");
        }
    }

    #[test]
    fn an_undecided_intent_is_looked_at_again_later_with_growing_spacing() {
        let mut s = situation(Flow::TwoPhase, "lookup", Some("pi_1"), Known::Undecided);
        let mut last = Duration::ZERO;
        for tries in 0..5 {
            s.run_tries = tries;
            let Action::Wait(after) = decide(&s) else {
                panic!("waits")
            };
            assert!(after > last);
            last = after;
        }
        assert_eq!(spacing(0), Duration::from_millis(500));
        assert_eq!(spacing(3), Duration::from_secs(4));
        assert_eq!(spacing(40), MAX_SPACING);
    }
}
