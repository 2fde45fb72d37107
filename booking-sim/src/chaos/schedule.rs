//! The fault schedule: generated up front from the seed alone (and the run's shape: payments,
//! enabled kinds, replicas, timings), so the same seed replays the same schedule. Each entry
//! says at which payment it fires (the workload does not start that payment before the fault is
//! applied), what it does and for how long.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Value, json};

/// Salt of the schedule's random stream (the workload draws from others).
const SCHEDULE_SALT: u64 = 0x5c4e_d01e_c4a0_5000;

/// Every kind of fault the chaos run can apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `kill -9` of one replica, restarted (same address and journal) after a while.
    Kill9,
    /// SIGSTOP of one replica for longer than its lease (plus a recovery sweep), then SIGCONT.
    Sigstop,
    /// PostgreSQL stopped at once (`pg_ctl stop -m immediate`), started again after a while.
    Postgres,
    /// Redis stopped (keys forgotten, or saved and brought back), started again after a while.
    Redis,
    /// The simulator answers every call late for a while.
    Latency,
    /// The simulator processes a call but holds its answer past the gateway timeout.
    Timeout,
    /// The simulator never answers a call (nothing processed) while the client waits.
    Hang,
    /// The simulator answers 500 without processing the call.
    Error500Before,
    /// The simulator processes the call (charges), then answers 500.
    Error500After,
    /// The simulator processes the call (charges), then drops the connection.
    DropAfterCharge,
    /// The simulator answers 429 with `Retry-After`.
    RateLimited,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Kill9,
        FaultKind::Sigstop,
        FaultKind::Postgres,
        FaultKind::Redis,
        FaultKind::Latency,
        FaultKind::Timeout,
        FaultKind::Hang,
        FaultKind::Error500Before,
        FaultKind::Error500After,
        FaultKind::DropAfterCharge,
        FaultKind::RateLimited,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill9 => "kill-9",
            FaultKind::Sigstop => "sigstop",
            FaultKind::Postgres => "postgres",
            FaultKind::Redis => "redis",
            FaultKind::Latency => "latency",
            FaultKind::Timeout => "timeout",
            FaultKind::Hang => "hang",
            FaultKind::Error500Before => "500-before",
            FaultKind::Error500After => "500-after",
            FaultKind::DropAfterCharge => "drop-after-charge",
            FaultKind::RateLimited => "429",
        }
    }

    /// The simulator's own name of the fault (`POST /_sim/faults`), for the simulator's kinds
    /// other than latency.
    pub fn sim_name(self) -> Option<&'static str> {
        Some(match self {
            FaultKind::Timeout => "timeout",
            FaultKind::Hang => "hang",
            FaultKind::Error500Before => "error_500_before",
            FaultKind::Error500After => "error_500_after",
            FaultKind::DropAfterCharge => "drop_after_charge",
            FaultKind::RateLimited => "rate_limited",
            _ => return None,
        })
    }

    /// The simulator's rate field for the kind.
    fn sim_rate_field(self) -> Option<&'static str> {
        Some(match self {
            FaultKind::Timeout => "timeout_rate",
            FaultKind::Hang => "hang_rate",
            FaultKind::Error500Before => "error_500_before_rate",
            FaultKind::Error500After => "error_500_after_rate",
            FaultKind::DropAfterCharge => "drop_after_charge_rate",
            FaultKind::RateLimited => "rate_429",
            _ => return None,
        })
    }

    /// Whether applying it needs processes this run started (replicas, PostgreSQL, Redis);
    /// the others only need the simulator.
    pub fn needs_owned_stack(self) -> bool {
        matches!(
            self,
            FaultKind::Kill9 | FaultKind::Sigstop | FaultKind::Postgres | FaultKind::Redis
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        let alias = match wanted.as_str() {
            "kill9" | "kill" => Some(FaultKind::Kill9),
            "stop" | "pause" => Some(FaultKind::Sigstop),
            "pg" | "postgresql" => Some(FaultKind::Postgres),
            "error-500-before" => Some(FaultKind::Error500Before),
            "error-500-after" => Some(FaultKind::Error500After),
            "drop" => Some(FaultKind::DropAfterCharge),
            "rate-limited" => Some(FaultKind::RateLimited),
            _ => None,
        };
        alias
            .or_else(|| FaultKind::ALL.into_iter().find(|k| k.name() == wanted))
            .ok_or_else(|| {
                format!(
                    "unknown fault kind {s:?}; known: all, none, {}",
                    FaultKind::ALL.map(FaultKind::name).join(", ")
                )
            })
    }
}

/// Parses `all`, `none`, or a comma-separated list of kinds (duplicates ignored).
pub fn parse_kinds(list: &str) -> Result<Vec<FaultKind>, String> {
    match list.trim() {
        "all" => return Ok(FaultKind::ALL.to_vec()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    let mut kinds: Vec<FaultKind> = list.split(',').map(str::parse).collect::<Result<_, _>>()?;
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// What one simulator fault window sets (`POST /_sim/faults`).
#[derive(Clone, Debug, PartialEq)]
pub struct SimWindow {
    /// Seeds the simulator's fault RNG for the window.
    pub seed: u64,
    /// Gateway operations the fault applies to.
    pub operations: Vec<&'static str>,
    /// That many matching calls get the fault for sure (the simulator's `next` queue).
    pub forced: u32,
    /// Then this share of the window's matching calls.
    pub rate: f64,
    /// `timeout` only: how long the simulator holds the processed call's answer.
    pub slow_answer_ms: u64,
}

/// One fault and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// `slow_ms`: just before the signal the gateway answers that much later (for half that
    /// time), so the replica is caught with calls in flight.
    Kill9 {
        replica: usize,
        down: Duration,
        slow_ms: u64,
    },
    Sigstop {
        replica: usize,
        frozen: Duration,
        slow_ms: u64,
    },
    Postgres {
        down: Duration,
    },
    /// `save`: `SHUTDOWN SAVE` (keys come back at restart), else `SHUTDOWN NOSAVE` (empty).
    Redis {
        down: Duration,
        save: bool,
    },
    Latency {
        latency_ms: u64,
        jitter_ms: u64,
        window: Duration,
    },
    Sim {
        kind: FaultKind,
        window: Duration,
        sim: SimWindow,
    },
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Kill9 { .. } => FaultKind::Kill9,
            Fault::Sigstop { .. } => FaultKind::Sigstop,
            Fault::Postgres { .. } => FaultKind::Postgres,
            Fault::Redis { .. } => FaultKind::Redis,
            Fault::Latency { .. } => FaultKind::Latency,
            Fault::Sim { kind, .. } => *kind,
        }
    }

    /// The simulator's fault configuration while the fault lasts (the baseline latency kept),
    /// for the simulator's kinds.
    pub fn sim_config(&self, baseline: &Baseline) -> Option<Value> {
        match self {
            Fault::Latency {
                latency_ms,
                jitter_ms,
                ..
            } => Some(json!({
                "seed": baseline.seed,
                "latency_ms": baseline.latency_ms + latency_ms,
                "latency_jitter_ms": baseline.jitter_ms + jitter_ms,
            })),
            Fault::Sim { kind, sim, .. } => {
                let name = kind.sim_name()?;
                let rate_field = kind.sim_rate_field()?;
                let mut config = json!({
                    "seed": sim.seed,
                    "latency_ms": baseline.latency_ms,
                    "latency_jitter_ms": baseline.jitter_ms,
                    "operations": sim.operations,
                    "next": vec![name; sim.forced as usize],
                    rate_field: sim.rate,
                });
                if *kind == FaultKind::Timeout
                    && let Some(object) = config.as_object_mut()
                {
                    object.insert("slow_answer_ms".to_owned(), json!(sim.slow_answer_ms));
                }
                Some(config)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill9 {
                replica,
                down,
                slow_ms,
            } => write!(
                f,
                "kill -9 replica r{replica} mid-call (gateway +{slow_ms} ms just before), restarted after {down:?}"
            ),
            Fault::Sigstop {
                replica,
                frozen,
                slow_ms,
            } => write!(
                f,
                "SIGSTOP replica r{replica} mid-call (gateway +{slow_ms} ms just before), SIGCONT after {frozen:?}"
            ),
            Fault::Postgres { down } => write!(f, "PostgreSQL stopped for {down:?}"),
            Fault::Redis { down, save } => write!(
                f,
                "Redis stopped for {down:?}, {}",
                if *save {
                    "restarted from a snapshot (stale leases back)"
                } else {
                    "restarted empty"
                }
            ),
            Fault::Latency {
                latency_ms,
                jitter_ms,
                window,
            } => write!(
                f,
                "gateway +{latency_ms} ms (+0..{jitter_ms} ms) on every call for {window:?}"
            ),
            Fault::Sim { kind, window, sim } => {
                write!(
                    f,
                    "gateway {} on the next {} {} call(s), then {:.1}% of them for {window:?}",
                    kind.sim_name().unwrap_or("?"),
                    sim.forced,
                    sim.operations.join("/"),
                    sim.rate * 100.0
                )?;
                if *kind == FaultKind::Timeout {
                    write!(f, " (answers held {} ms)", sim.slow_answer_ms)?;
                }
                Ok(())
            }
        }
    }
}

/// The simulator's configuration between faults: a little latency so that callers overlap.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    pub seed: u64,
    pub latency_ms: u64,
    pub jitter_ms: u64,
}

impl Baseline {
    /// The baseline with every call `extra_ms` slower.
    pub fn slowed(&self, extra_ms: u64) -> Value {
        json!({
            "seed": self.seed,
            "latency_ms": self.latency_ms + extra_ms,
            "latency_jitter_ms": self.jitter_ms,
        })
    }

    pub fn config(&self) -> Value {
        json!({
            "seed": self.seed,
            "latency_ms": self.latency_ms,
            "latency_jitter_ms": self.jitter_ms,
        })
    }
}

/// One entry of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledFault {
    /// 1-based position in the schedule.
    pub number: usize,
    /// The fault is applied before payment number `at_payment` (0-based) starts.
    pub at_payment: usize,
    pub fault: Fault,
}

/// What the schedule is generated from.
#[derive(Clone, Debug)]
pub struct ScheduleParams {
    pub seed: u64,
    pub payments: usize,
    pub kinds: Vec<FaultKind>,
    /// One fault per this many payments (at least one of each kind when the run is long enough).
    pub payments_per_fault: usize,
    pub replicas: usize,
    pub lease_ttl: Duration,
    pub recovery_sweep: Duration,
    pub gateway_timeout: Duration,
    /// The replicas use GATEWAY_FLOW=one_shot: charging calls are creates only (no confirm).
    pub one_shot: bool,
}

/// The whole schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub seed: u64,
    pub faults: Vec<ScheduledFault>,
    /// Enabled kinds that did not fit (the run is too short for one of each).
    pub left_out: Vec<FaultKind>,
}

impl Schedule {
    /// Generates the schedule: the same parameters give the same schedule.
    pub fn generate(params: &ScheduleParams) -> Schedule {
        let mut rng = StdRng::seed_from_u64(params.seed ^ SCHEDULE_SALT);
        let payments = params.payments;
        // Faults fire between 3% and 85% of the payments: some calm before, and enough
        // payments after the last one for its effects to meet traffic.
        let start = (payments * 3 / 100).max(1).min(payments);
        let end = (payments * 85 / 100).max(start);
        let slots = end - start;
        let mut kinds = params.kinds.clone();
        kinds.sort();
        kinds.dedup();
        let wanted = if kinds.is_empty() {
            0
        } else {
            kinds.len().max(payments / params.payments_per_fault.max(1))
        };
        let count = wanted.min(slots);
        // Every kind once (in a random order), then random kinds; then all shuffled.
        let mut list = kinds.clone();
        list.shuffle(&mut rng);
        let left_out = if count < list.len() {
            let mut out = list.split_off(count);
            out.sort();
            out
        } else {
            Vec::new()
        };
        while list.len() < count {
            list.push(kinds[rng.random_range(0..kinds.len())]);
        }
        list.shuffle(&mut rng);
        let width = if count == 0 {
            0.0
        } else {
            slots as f64 / count as f64
        };
        let faults = list
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let slot_start = start + (i as f64 * width).floor() as usize;
                let room = (width.floor() as usize).max(1);
                let at_payment = slot_start + rng.random_range(0..room);
                ScheduledFault {
                    number: i + 1,
                    at_payment,
                    fault: draw_fault(&mut rng, kind, params),
                }
            })
            .collect();
        Schedule {
            seed: params.seed,
            faults,
            left_out,
        }
    }

    /// How many faults of each kind the schedule holds.
    pub fn counts(&self) -> BTreeMap<FaultKind, u32> {
        let mut counts = BTreeMap::new();
        for entry in &self.faults {
            *counts.entry(entry.fault.kind()).or_default() += 1;
        }
        counts
    }

    /// One line per fault.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        for entry in &self.faults {
            out.push_str(&format!(
                "  #{:<3} at payment {:>6}  {:<18} {}\n",
                entry.number,
                entry.at_payment,
                entry.fault.kind().name(),
                entry.fault
            ));
        }
        out
    }
}

fn ms(rng: &mut StdRng, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rng.random_range(range))
}

fn draw_fault(rng: &mut StdRng, kind: FaultKind, params: &ScheduleParams) -> Fault {
    let replicas = params.replicas.max(1);
    match kind {
        FaultKind::Kill9 => Fault::Kill9 {
            replica: rng.random_range(0..replicas),
            down: ms(rng, 300..=1500),
            slow_ms: rng.random_range(200..=800),
        },
        FaultKind::Sigstop => {
            // Past the lease and a recovery sweep: another replica takes its attempts over.
            let past = params.lease_ttl + params.recovery_sweep;
            Fault::Sigstop {
                replica: rng.random_range(0..replicas),
                frozen: past + ms(rng, 300..=1500),
                slow_ms: rng.random_range(200..=800),
            }
        }
        FaultKind::Postgres => Fault::Postgres {
            down: ms(rng, 1000..=3000),
        },
        FaultKind::Redis => Fault::Redis {
            down: ms(rng, 500..=2000),
            save: rng.random_bool(0.5),
        },
        FaultKind::Latency => Fault::Latency {
            latency_ms: rng.random_range(300..=1200),
            jitter_ms: rng.random_range(0..=400),
            window: ms(rng, 1500..=3000),
        },
        _ => {
            // Charging calls always (one_shot has no confirm); refunds and look-ups sometimes.
            // A fault that acts after the charge must meet a call that charges: under two_phase
            // that is the confirm only (a create charges nothing), and nothing else may take the
            // forced fault first. (The draws stay in the same order, so the rest of a seed's
            // schedule is unchanged.)
            let after_charge = matches!(
                kind,
                FaultKind::Timeout | FaultKind::Error500After | FaultKind::DropAfterCharge
            );
            let mut operations = match (rng.random_range(0..3), params.one_shot) {
                (_, true) | (0, false) => vec!["create"],
                (1, false) => vec!["confirm"],
                _ => vec!["create", "confirm"],
            };
            if after_charge && !params.one_shot {
                operations = vec!["confirm"];
            }
            let (with_refunds, with_lookups) = (rng.random_bool(0.3), rng.random_bool(0.15));
            if with_refunds && !after_charge {
                operations.push("refund");
            }
            if with_lookups && !after_charge {
                operations.push("get");
            }
            let timeout_ms = params.gateway_timeout.as_millis() as u64;
            Fault::Sim {
                kind,
                window: ms(rng, 1000..=2500),
                sim: SimWindow {
                    seed: rng.random(),
                    operations,
                    forced: rng.random_range(1..=3),
                    rate: (rng.random_range(0..=50) as f64) / 1000.0,
                    slow_answer_ms: timeout_ms + rng.random_range(500..=2000),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64, payments: usize) -> ScheduleParams {
        ScheduleParams {
            seed,
            payments,
            kinds: FaultKind::ALL.to_vec(),
            payments_per_fault: 25,
            replicas: 3,
            lease_ttl: Duration::from_millis(1000),
            recovery_sweep: Duration::from_millis(500),
            gateway_timeout: Duration::from_millis(1500),
            one_shot: false,
        }
    }

    #[test]
    fn two_phase_faults_after_the_charge_hit_confirms_only() {
        let s = Schedule::generate(&params(11, 2000));
        let mut seen = 0;
        for entry in &s.faults {
            if let Fault::Sim { kind, sim, .. } = &entry.fault
                && matches!(
                    kind,
                    FaultKind::Timeout | FaultKind::Error500After | FaultKind::DropAfterCharge
                )
            {
                assert_eq!(sim.operations, ["confirm"], "{entry:?}");
                seen += 1;
            }
        }
        assert!(seen >= 3);
    }

    #[test]
    fn one_shot_faults_hit_creates() {
        let p = ScheduleParams {
            one_shot: true,
            ..params(5, 1000)
        };
        let s = Schedule::generate(&p);
        for entry in &s.faults {
            if let Fault::Sim { sim, .. } = &entry.fault {
                assert!(sim.operations.contains(&"create"), "{}", entry.fault);
                assert!(!sim.operations.contains(&"confirm"), "{}", entry.fault);
            }
        }
        // The same draws: only the operations differ from the two_phase schedule.
        let two_phase = Schedule::generate(&params(5, 1000));
        let at = |s: &Schedule| s.faults.iter().map(|f| f.at_payment).collect::<Vec<_>>();
        assert_eq!(at(&s), at(&two_phase));
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = Schedule::generate(&params(7, 3000));
        assert_eq!(a, Schedule::generate(&params(7, 3000)));
        assert_ne!(a, Schedule::generate(&params(8, 3000)));
        assert_eq!(a.faults.len(), 120);
    }

    #[test]
    fn every_kind_at_least_once_in_order_and_in_range() {
        for seed in 0..50 {
            let s = Schedule::generate(&params(seed, 150));
            assert!(s.left_out.is_empty());
            let counts = s.counts();
            for kind in FaultKind::ALL {
                assert!(counts.get(&kind).copied().unwrap_or(0) >= 1, "{kind}");
            }
            let at: Vec<usize> = s.faults.iter().map(|f| f.at_payment).collect();
            assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
            assert!(at.iter().all(|&a| (4..=127).contains(&a)), "{at:?}");
            for entry in &s.faults {
                if let Fault::Sigstop { frozen, .. } = entry.fault {
                    assert!(frozen > Duration::from_millis(1500));
                }
            }
        }
    }

    #[test]
    fn a_short_run_says_what_it_left_out() {
        let s = Schedule::generate(&params(1, 10));
        assert!(s.faults.len() < FaultKind::ALL.len());
        assert_eq!(s.faults.len() + s.left_out.len(), FaultKind::ALL.len());
    }

    #[test]
    fn kinds_parse() {
        assert_eq!(parse_kinds("all"), Ok(FaultKind::ALL.to_vec()));
        assert_eq!(parse_kinds("none"), Ok(vec![]));
        assert_eq!(
            parse_kinds("hang,kill9,error_500_after,429,hang"),
            Ok(vec![
                FaultKind::Kill9,
                FaultKind::Hang,
                FaultKind::Error500After,
                FaultKind::RateLimited
            ])
        );
        assert!(parse_kinds("meteor").is_err());
        for kind in FaultKind::ALL {
            assert_eq!(kind.name().parse::<FaultKind>(), Ok(kind));
        }
    }

    #[test]
    fn sim_configs_are_accepted_by_the_simulator() {
        let baseline = Baseline {
            seed: 1,
            latency_ms: 20,
            jitter_ms: 40,
        };
        let s = Schedule::generate(&params(3, 400));
        for entry in &s.faults {
            if let Some(config) = entry.fault.sim_config(&baseline) {
                let parsed: crate::psp::FaultConfig = serde_json::from_value(config.clone())
                    .unwrap_or_else(|e| panic!("{config}: {e}"));
                assert!(parsed.validate().is_ok(), "{config}");
            }
        }
    }
}
