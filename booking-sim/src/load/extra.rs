//! The load run's other figures (issue 9, item 3, and bad input under load), each on a stack of
//! its own (a fresh database, simulator and replicas of the run's first flow), after the flows'
//! tables and before the ceiling's ratio line:
//! - [`race`]: many callers paying one fresh order at the same moment;
//! - [`scale`]: the cost of a payment with many orders already in the tables;
//! - [`inflight`]: each replica's RSS with many attempts in flight;
//! - [`abuse`]: malformed and unauthenticated requests mixed into a load.
//!
//! Each prints a small table whose `check` rows are what the run must show (exactly one charge
//! per raced order, every bad request refused with the right code...): a failed check makes the
//! run exit 1. Figures are never checked against a budget.
//!
//! [`race`]: super::race
//! [`scale`]: super::scale
//! [`inflight`]: super::inflight
//! [`abuse`]: super::abuse

use std::fmt::Write as _;

use anyhow::{bail, ensure};
use payments_client::{Bearer, Client, TlsFiles};
use payments_proto::v1::payment_coordinator_client::PaymentCoordinatorClient;

use super::{
    abuse, inflight, race, scale,
    services::{FlowStack, Owned},
};
use crate::{chaos::progress::say, sim_control::SimControl};

/// One of the other figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    Race,
    Scale,
    Inflight,
    Abuse,
}

impl Figure {
    pub const ALL: [Figure; 4] = [Figure::Race, Figure::Scale, Figure::Inflight, Figure::Abuse];

    pub fn as_str(self) -> &'static str {
        match self {
            Figure::Race => "race",
            Figure::Scale => "scale",
            Figure::Inflight => "inflight",
            Figure::Abuse => "abuse",
        }
    }
}

/// `all`, `none` or a comma-separated list of `race`, `scale`, `inflight`, `abuse`.
pub fn parse_figures(text: &str) -> anyhow::Result<Vec<Figure>> {
    match text.trim() {
        "all" => return Ok(Figure::ALL.to_vec()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    let mut figures = Vec::new();
    for name in text.split(',').map(str::trim) {
        let Some(figure) = Figure::ALL.into_iter().find(|f| f.as_str() == name) else {
            bail!("unknown figure {name:?}: expected all, none or race,scale,inflight,abuse");
        };
        if !figures.contains(&figure) {
            figures.push(figure);
        }
    }
    Ok(figures)
}

/// What the other figures measure.
#[derive(Clone, Debug, Default)]
pub struct ExtraConfig {
    pub figures: Vec<Figure>,
    /// Skip the flows' benchmark (and the ceiling): only these figures.
    pub only: bool,
    pub race: race::RaceConfig,
    pub scale: scale::ScaleConfig,
    pub inflight: inflight::InflightConfig,
    pub abuse: abuse::AbuseConfig,
}

/// One figure's table: rows of figures and rows of checks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtraReport {
    pub title: String,
    pub rows: Vec<(String, String)>,
    /// `(what, held)`.
    pub checks: Vec<(String, bool)>,
}

impl ExtraReport {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    pub fn row(&mut self, name: &str, value: impl Into<String>) {
        self.rows.push((name.to_owned(), value.into()));
    }

    pub fn check(&mut self, what: impl Into<String>, held: bool) {
        self.checks.push((what.into(), held));
    }

    pub fn ok(&self) -> bool {
        self.checks.iter().all(|(_, held)| *held)
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "{}", self.title);
        for (name, value) in &self.rows {
            let _ = writeln!(t, "  {name:<32} {value}");
        }
        for (what, held) in &self.checks {
            let _ = writeln!(
                t,
                "  {:<32} {what}{}",
                "check",
                if *held { "" } else { "  << MISMATCH" }
            );
        }
        t
    }
}

/// A report saying the figure could not be measured (a failed check, so the run exits 1).
fn failed(figure: Figure, error: &anyhow::Error) -> ExtraReport {
    let mut report = ExtraReport::new(format!("{}: not measured", figure.as_str()));
    report.check(format!("the run itself: {error:#}"), false);
    report
}

/// What a figure runs on: one fresh stack of the run.
pub struct Stack<'a> {
    pub owned: &'a Owned,
    pub stack: &'a mut FlowStack,
    pub sim: SimControl,
    pub urls: Vec<String>,
    /// Order ids of this figure start with it.
    pub prefix: String,
}

/// Runs each figure on a fresh stack of `flow`, printing its table as it ends.
pub async fn run(
    config: &super::LoadConfig,
    owned: &Owned,
    flow: gateway_client::Flow,
    run_id: &str,
) -> Vec<ExtraReport> {
    let mut reports = Vec::new();
    for &figure in &config.extra.figures {
        say(&format!(
            "phase: {}: a fresh database, simulator and replicas ({flow})",
            figure.as_str()
        ));
        let report = if figure == Figure::Scale {
            // A fresh stack per size: scale starts its own.
            let prefix = format!("load-{run_id}-scale");
            scale::run(config, owned, flow, &prefix)
                .await
                .unwrap_or_else(|error| failed(figure, &error))
        } else {
            match owned.start_flow(flow).await {
                Ok(mut stack) => {
                    let result = match SimControl::new(&stack.sim.base_url()) {
                        Ok(sim) => {
                            let urls = stack.urls();
                            let prefix = format!("load-{run_id}-{}", figure.as_str());
                            let mut on = Stack {
                                owned,
                                stack: &mut stack,
                                sim,
                                urls,
                                prefix,
                            };
                            match figure {
                                Figure::Race => race::run(&config.extra.race, &mut on).await,
                                Figure::Scale => {
                                    Err(anyhow::anyhow!("scale starts its own stacks"))
                                }
                                Figure::Inflight => {
                                    inflight::run(&config.extra.inflight, &mut on).await
                                }
                                Figure::Abuse => abuse::run(config, &mut on).await,
                            }
                        }
                        Err(error) => Err(error),
                    };
                    owned.finish_flow(stack).await;
                    result.unwrap_or_else(|error| failed(figure, &error))
                }
                Err(error) => failed(figure, &error),
            }
        };
        print!("{}", report.table());
        reports.push(report);
    }
    reports
}

/// `n` clients over `per_replica` connections to each of `urls` (client `c` on replica
/// `c % urls.len()`), client `c` with `keys[c % keys.len()]`; `keys` empty: no credentials.
pub async fn clients(
    urls: &[String],
    keys: &[Bearer],
    n: usize,
    per_replica: usize,
) -> anyhow::Result<Vec<Client>> {
    ensure!(!urls.is_empty(), "no coordinator to call");
    let per_replica = per_replica.max(1);
    let mut channels = Vec::with_capacity(urls.len());
    for url in urls {
        let mut connections = Vec::with_capacity(per_replica);
        for _ in 0..per_replica {
            connections.push(payments_client::connect_channel(url, &TlsFiles::default()).await?);
        }
        channels.push(connections);
    }
    Ok((0..n)
        .map(|c| {
            let channel = channels[c % urls.len()][(c / urls.len()) % per_replica].clone();
            let bearer = match keys {
                [] => Bearer::anonymous(),
                keys => keys[c % keys.len()].clone(),
            };
            PaymentCoordinatorClient::with_interceptor(channel, bearer)
        })
        .collect())
}

/// The run's operator keys as bearers.
pub fn bearers(keys: &[String]) -> anyhow::Result<Vec<Bearer>> {
    keys.iter().map(|key| Bearer::new(key)).collect()
}

/// `a / b` as `R.RR`, `n/a` if `b` is zero.
pub fn ratio_text(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".to_owned()
    }
}

/// A duration in ms with two decimals.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_parse() {
        assert_eq!(parse_figures("all").unwrap(), Figure::ALL);
        assert_eq!(parse_figures("none").unwrap(), []);
        assert_eq!(
            parse_figures("abuse, race,abuse").unwrap(),
            [Figure::Abuse, Figure::Race]
        );
        assert!(parse_figures("race,speed").is_err());
    }

    #[test]
    fn a_failed_check_fails_the_report() {
        let mut report = ExtraReport::new("race: 2 orders");
        report.row("refusals", "10");
        report.check("one charge per order", true);
        assert!(report.ok());
        assert!(!report.table().contains("MISMATCH"));
        report.check("every bad request refused", false);
        assert!(!report.ok());
        let table = report.table();
        assert!(table.starts_with("race: 2 orders\n  refusals "), "{table}");
        assert!(table.contains("check"), "{table}");
        assert!(table.contains("every bad request refused  << MISMATCH"));
        assert_eq!(ratio_text(3.0, 2.0), "1.50");
        assert_eq!(ratio_text(3.0, 0.0), "n/a");
    }
}
