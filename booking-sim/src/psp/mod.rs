//! The gateway simulator: a subset of Stripe's PaymentIntents API (CONTRACT §5) with a ledger
//! that is the ground truth for double charges, injectable faults and an injectable clock.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = booking_sim::psp::spawn(booking_sim::psp::SimConfig::default()).await?;
//! println!("gateway at {}", sim.base_url());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod clock;
mod errors;
mod faults;
mod idempotency;
mod params;
mod reply;
mod requests;
mod routes;
mod server;
mod state;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use clock::Clock;
pub use faults::{FaultConfig, FaultKind, Forced, NoFault};
pub use idempotency::KeyStats;
pub use requests::SimRequest;
pub use state::{Calls, IntentStatus, Ledger, LedgerIntent, LedgerRefund, Op, Totals};

/// Capabilities the simulated gateway can be started without (`--without idempotency,lookup`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Without {
    /// `Idempotency-Key` is ignored: every repeat is a new request.
    pub idempotency: bool,
    /// `GET /v1/payment_intents/{id}` answers 404.
    pub lookup: bool,
    /// Cancel answers 400 `cancel_unsupported` and changes nothing.
    pub cancel: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown capability {0:?}: expected a comma-separated list of idempotency, lookup, cancel (or none)"
)]
pub struct UnknownCapability(String);

impl FromStr for Without {
    type Err = UnknownCapability;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut without = Without::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "idempotency" => without.idempotency = true,
                "lookup" => without.lookup = true,
                "cancel" => without.cancel = true,
                "none" => {}
                other => return Err(UnknownCapability(other.to_owned())),
            }
        }
        Ok(without)
    }
}

impl fmt::Display for Without {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.idempotency, "idempotency"),
            (self.lookup, "lookup"),
            (self.cancel, "cancel"),
        ]
        .into_iter()
        .filter_map(|(off, name)| off.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// How to run the simulator.
#[derive(Clone)]
pub struct SimConfig {
    /// The secret key callers must present as `Authorization: Bearer <api_key>`.
    pub api_key: String,
    pub without: Without,
    /// Seeds the fault RNG (unless `/_sim/faults` gives its own seed).
    pub seed: u64,
    /// How long an idempotency key is remembered (Stripe: 24 hours), by the simulator's clock.
    pub idempotency_window: Duration,
    /// How many `/v1` requests `GET /_sim/requests` remembers (the oldest are forgotten first).
    pub remembered_requests: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_key: "sk_test_local".to_owned(),
            without: Without::default(),
            seed: 0,
            idempotency_window: Duration::from_secs(24 * 60 * 60),
            remembered_requests: requests::REMEMBERED,
        }
    }
}

/// Never prints the API key.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("api_key", &"<redacted>")
            .field("without", &self.without)
            .field("seed", &self.seed)
            .field("idempotency_window", &self.idempotency_window)
            .field("remembered_requests", &self.remembered_requests)
            .finish()
    }
}

/// A simulator serving in the background. Dropping it stops accepting and closes connections
/// (without waiting); [`RunningSim::shutdown`] does the same and waits for every task to end.
pub struct RunningSim {
    pub addr: SocketAddr,
    /// The simulator's clock: advance it to age idempotency keys.
    pub clock: Clock,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl RunningSim {
    /// `http://127.0.0.1:PORT` (a wildcard listen address is reached through loopback).
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// Stops accepting, finishes the requests in progress (hung and slow requests have their
    /// connections closed), and waits for every connection task to end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Binds `127.0.0.1:0` and serves in a background task owned by the returned [`RunningSim`].
pub async fn spawn(config: SimConfig) -> std::io::Result<RunningSim> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    spawn_on(config, listener).await
}

/// Serves on an already bound listener.
pub async fn spawn_on(config: SimConfig, listener: TcpListener) -> std::io::Result<RunningSim> {
    let addr = listener.local_addr()?;
    let clock = Clock::system();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let app = Arc::new(routes::App::new(config, clock.clone(), shutdown.clone()));
    tracker.spawn(server::serve(
        listener,
        routes::router(app),
        shutdown.clone(),
        tracker.clone(),
    ));
    Ok(RunningSim {
        addr,
        clock,
        shutdown,
        tracker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_parses_comma_lists() {
        assert_eq!("".parse(), Ok(Without::default()));
        assert_eq!("none".parse(), Ok(Without::default()));
        assert_eq!(
            "idempotency,lookup".parse(),
            Ok(Without {
                idempotency: true,
                lookup: true,
                cancel: false
            })
        );
        assert_eq!(
            " cancel , idempotency,".parse(),
            Ok(Without {
                idempotency: true,
                lookup: false,
                cancel: true
            })
        );
        assert!("idempotency,refunds".parse::<Without>().is_err());
        let all = Without {
            idempotency: true,
            lookup: true,
            cancel: true,
        };
        assert_eq!(all.to_string(), "idempotency,lookup,cancel");
        assert_eq!(all.to_string().parse(), Ok(all));
        assert_eq!(Without::default().to_string(), "none");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let config = SimConfig {
            api_key: "sk_test_secret".into(),
            ..SimConfig::default()
        };
        assert!(!format!("{config:?}").contains("secret"));
    }
}
