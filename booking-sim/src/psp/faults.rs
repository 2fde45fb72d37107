//! Injected faults, configured by `POST /_sim/faults`. Deterministic under the seed: one seeded
//! RNG behind a mutex, and exactly one draw (a roll and a jitter) per faultable request, whatever
//! the rates, so the same seed and the same sequence of requests give the same faults.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::state::Op;

/// What can go wrong with one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    /// Processed (charge applied, answer saved), but the answer is held back `slow_answer_ms`.
    #[serde(rename = "timeout")]
    Timeout,
    /// Not processed and never answered while the client waits (the key stays claimed until
    /// the client goes away).
    #[serde(rename = "hang")]
    Hang,
    /// 500 `api_error`, nothing processed, nothing saved.
    #[serde(rename = "error_500_before")]
    Error500Before,
    /// Processed and saved under the key, then 500 `api_error`.
    #[serde(rename = "error_500_after")]
    Error500After,
    /// Processed and saved under the key, then the connection is closed without an answer.
    #[serde(rename = "drop_after_charge")]
    DropAfterCharge,
    /// 429 with `Retry-After`, nothing processed.
    #[serde(rename = "rate_limited")]
    RateLimited,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Timeout => "timeout",
            FaultKind::Hang => "hang",
            FaultKind::Error500Before => "error_500_before",
            FaultKind::Error500After => "error_500_after",
            FaultKind::DropAfterCharge => "drop_after_charge",
            FaultKind::RateLimited => "rate_limited",
        }
    }
}

/// An entry of the `next` queue: a fault, or `none` to let one matching call through untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Forced {
    Fault(FaultKind),
    None(NoFault),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoFault {
    #[serde(rename = "none")]
    None,
}

impl Forced {
    fn fault(self) -> Option<FaultKind> {
        match self {
            Forced::Fault(kind) => Some(kind),
            Forced::None(_) => None,
        }
    }
}

/// The fault configuration; every field optional in JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Seeds the fault RNG; absent: the simulator's `--seed`.
    pub seed: Option<u64>,
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    pub timeout_rate: f64,
    pub slow_answer_ms: u64,
    pub hang_rate: f64,
    pub error_500_before_rate: f64,
    pub error_500_after_rate: f64,
    pub drop_after_charge_rate: f64,
    pub rate_429: f64,
    pub retry_after_secs: u64,
    /// Which calls latency and faults apply to.
    pub operations: Vec<Op>,
    /// Forced faults for the next matching calls, in order, before any rate.
    pub next: VecDeque<Forced>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            seed: None,
            latency_ms: 0,
            latency_jitter_ms: 0,
            timeout_rate: 0.0,
            slow_answer_ms: 120_000,
            hang_rate: 0.0,
            error_500_before_rate: 0.0,
            error_500_after_rate: 0.0,
            drop_after_charge_rate: 0.0,
            rate_429: 0.0,
            retry_after_secs: 1,
            operations: Op::ALL.to_vec(),
            next: VecDeque::new(),
        }
    }
}

impl FaultConfig {
    /// Rates in the order a roll is matched against them; fixed, so outcomes are reproducible.
    fn rates(&self) -> [(FaultKind, f64); 6] {
        [
            (FaultKind::RateLimited, self.rate_429),
            (FaultKind::Error500Before, self.error_500_before_rate),
            (FaultKind::Hang, self.hang_rate),
            (FaultKind::Timeout, self.timeout_rate),
            (FaultKind::Error500After, self.error_500_after_rate),
            (FaultKind::DropAfterCharge, self.drop_after_charge_rate),
        ]
    }

    /// Every rate within 0..=1, and together at most 1 (a roll picks at most one fault).
    pub fn validate(&self) -> Result<(), String> {
        let names = [
            "rate_429",
            "error_500_before_rate",
            "hang_rate",
            "timeout_rate",
            "error_500_after_rate",
            "drop_after_charge_rate",
        ];
        for ((_, rate), name) in self.rates().iter().zip(names) {
            if !(0.0..=1.0).contains(rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        let sum: f64 = self.rates().iter().map(|(_, rate)| rate).sum();
        if sum > 1.0 + 1e-9 {
            return Err(format!(
                "the fault rates add up to {sum}; together they must be at most 1"
            ));
        }
        Ok(())
    }

    fn pick(&self, roll: f64) -> Option<FaultKind> {
        let mut upper = 0.0;
        for (kind, rate) in self.rates() {
            upper += rate;
            if rate > 0.0 && roll < upper {
                return Some(kind);
            }
        }
        None
    }
}

/// What happens to one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub fault: Option<FaultKind>,
    pub latency: Duration,
    pub slow_answer: Duration,
    pub retry_after_secs: u64,
}

struct Inner {
    config: FaultConfig,
    rng: StdRng,
    injected: BTreeMap<FaultKind, u64>,
}

pub struct Faults {
    default_seed: u64,
    inner: Mutex<Inner>,
}

impl Faults {
    pub fn new(default_seed: u64) -> Self {
        let config = FaultConfig {
            seed: Some(default_seed),
            ..FaultConfig::default()
        };
        Self {
            default_seed,
            inner: Mutex::new(Inner {
                config,
                rng: StdRng::seed_from_u64(default_seed),
                injected: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock; recover rather than propagate a poison.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the configuration and reseeds the RNG (with the config's seed, or the
    /// simulator's). Returns the configuration now in force.
    pub fn set(&self, mut config: FaultConfig) -> Result<FaultConfig, String> {
        config.validate()?;
        let seed = *config.seed.get_or_insert(self.default_seed);
        let mut inner = self.lock();
        inner.rng = StdRng::seed_from_u64(seed);
        inner.config = config.clone();
        Ok(config)
    }

    pub fn config(&self) -> FaultConfig {
        self.lock().config.clone()
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> BTreeMap<String, u64> {
        self.lock()
            .injected
            .iter()
            .map(|(kind, n)| (kind.as_str().to_owned(), *n))
            .collect()
    }

    /// Decides the fate of one call: the one draw per faultable request.
    pub fn draw(&self, op: Op) -> Plan {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let config = &mut inner.config;
        if !config.operations.contains(&op) {
            return Plan::default();
        }
        let roll: f64 = inner.rng.random();
        let jitter = inner.rng.random_range(0..=config.latency_jitter_ms);
        let fault = match config.next.pop_front() {
            Some(forced) => forced.fault(),
            None => config.pick(roll),
        };
        if let Some(kind) = fault {
            *inner.injected.entry(kind).or_default() += 1;
        }
        Plan {
            fault,
            latency: Duration::from_millis(config.latency_ms.saturating_add(jitter)),
            slow_answer: Duration::from_millis(config.slow_answer_ms),
            retry_after_secs: config.retry_after_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> FaultConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn defaults() {
        let c = config("{}");
        assert_eq!(c.slow_answer_ms, 120_000);
        assert_eq!(c.retry_after_secs, 1);
        assert_eq!(c.operations, Op::ALL.to_vec());
        assert!(c.next.is_empty());
        let faults = Faults::new(1);
        for op in Op::ALL {
            assert_eq!(faults.draw(op).fault, None);
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(serde_json::from_str::<FaultConfig>(r#"{"hang_rates":0.1}"#).is_err());
        assert!(serde_json::from_str::<FaultConfig>(r#"{"next":["explode"]}"#).is_err());
        assert!(serde_json::from_str::<FaultConfig>(r#"{"operations":["charge"]}"#).is_err());
        assert!(serde_json::from_str::<FaultConfig>(r#"{"latency_ms":-1}"#).is_err());
        let faults = Faults::new(1);
        assert!(faults.set(config(r#"{"hang_rate":1.5}"#)).is_err());
        assert!(faults.set(config(r#"{"rate_429":-0.1}"#)).is_err());
        assert!(
            faults
                .set(config(r#"{"rate_429":0.6,"hang_rate":0.6}"#))
                .is_err()
        );
        assert!(
            faults
                .set(config(r#"{"rate_429":0.5,"hang_rate":0.5}"#))
                .is_ok()
        );
    }

    #[test]
    fn forced_faults_come_first_and_only_for_listed_operations() {
        let faults = Faults::new(1);
        let set = faults.set(config(
            r#"{"operations":["create"],"next":["drop_after_charge","none","rate_limited"]}"#,
        ));
        assert!(set.is_ok());
        assert_eq!(faults.draw(Op::Get).fault, None);
        assert_eq!(
            faults.draw(Op::Create).fault,
            Some(FaultKind::DropAfterCharge)
        );
        assert_eq!(faults.draw(Op::Confirm).fault, None);
        assert_eq!(faults.draw(Op::Create).fault, None);
        assert_eq!(faults.draw(Op::Create).fault, Some(FaultKind::RateLimited));
        assert_eq!(faults.draw(Op::Create).fault, None);
        assert!(faults.config().next.is_empty());
        let injected = faults.injected();
        assert_eq!(injected.get("drop_after_charge"), Some(&1));
        assert_eq!(injected.get("rate_limited"), Some(&1));
    }

    #[test]
    fn rate_one_always_faults() {
        let faults = Faults::new(3);
        assert!(
            faults
                .set(config(
                    r#"{"timeout_rate":1.0,"slow_answer_ms":5,"retry_after_secs":9}"#
                ))
                .is_ok()
        );
        for _ in 0..100 {
            let plan = faults.draw(Op::Refund);
            assert_eq!(plan.fault, Some(FaultKind::Timeout));
            assert_eq!(plan.slow_answer, Duration::from_millis(5));
            assert_eq!(plan.retry_after_secs, 9);
        }
    }

    fn sequence(faults: &Faults, n: usize) -> Vec<(Option<FaultKind>, Duration)> {
        (0..n)
            .map(|_| faults.draw(Op::Create))
            .map(|p| (p.fault, p.latency))
            .collect()
    }

    #[test]
    fn same_seed_same_sequence() {
        let json = r#"{"seed":42,"rate_429":0.2,"error_500_before_rate":0.2,"error_500_after_rate":0.2,
                       "latency_ms":10,"latency_jitter_ms":50}"#;
        let a = Faults::new(0);
        let b = Faults::new(99);
        assert!(a.set(config(json)).is_ok());
        assert!(b.set(config(json)).is_ok());
        let seq_a = sequence(&a, 200);
        assert_eq!(seq_a, sequence(&b, 200));
        // Every kind with a rate shows up, and so do unfaulted calls.
        for kind in [
            FaultKind::RateLimited,
            FaultKind::Error500Before,
            FaultKind::Error500After,
        ] {
            assert!(
                seq_a.iter().any(|(f, _)| *f == Some(kind)),
                "{kind:?} never drawn"
            );
        }
        assert!(seq_a.iter().any(|(f, _)| f.is_none()));
        assert!(
            seq_a
                .iter()
                .all(|(_, l)| *l >= Duration::from_millis(10) && *l <= Duration::from_millis(60))
        );
        // Re-posting the same config restarts the same sequence.
        assert!(a.set(config(json)).is_ok());
        assert_eq!(seq_a, sequence(&a, 200));
        // Another seed gives another sequence.
        assert!(
            b.set(config(&json.replace("\"seed\":42", "\"seed\":43")))
                .is_ok()
        );
        assert_ne!(seq_a, sequence(&b, 200));
    }

    #[test]
    fn absent_seed_means_the_simulator_seed() {
        let json = r#"{"rate_429":0.5}"#;
        let a = Faults::new(7);
        let b = Faults::new(7);
        assert_eq!(a.set(config(json)).ok().and_then(|c| c.seed), Some(7));
        assert!(b.set(config(json)).is_ok());
        assert_eq!(sequence(&a, 100), sequence(&b, 100));
    }
}
