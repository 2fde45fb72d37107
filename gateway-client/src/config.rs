//! The client's configuration: where the gateway is, how to authenticate, which flow and which
//! capabilities the coordinator may rely on, timeouts, the client-side rate limit and the bounded
//! retry policy for answers that prove nothing happened (429, connection never established).

use std::{
    fmt,
    num::NonZeroU32,
    str::FromStr,
    time::{Duration, SystemTime},
};

use thiserror::Error;

/// The gateway's secret key. Its `Debug` never shows the value, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself: only for building the `Authorization` header (marked sensitive).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for ApiKey {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for ApiKey {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

/// How a payment is driven through the gateway (`GATEWAY_FLOW`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Create the intent without confirming, persist its id, then confirm it. Correct even for a
    /// gateway without idempotency keys: the confirm of a known intent id cannot charge twice.
    #[default]
    TwoPhase,
    /// Create with `confirm=true` and the idempotency key: one commit fewer, relies on the key.
    OneShot,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::TwoPhase => "two_phase",
            Flow::OneShot => "one_shot",
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown gateway flow {given:?}: expected `two_phase` or `one_shot`")]
pub struct ParseFlowError {
    pub given: String,
}

impl FromStr for Flow {
    type Err = ParseFlowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "two_phase" => Ok(Flow::TwoPhase),
            "one_shot" => Ok(Flow::OneShot),
            other => Err(ParseFlowError {
                given: other.to_owned(),
            }),
        }
    }
}

/// The gateway's idempotency window (Stripe remembers keys for 24 hours).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
/// How long before the window's end a replay is no longer attempted: clocks differ between
/// replicas and the gateway, and a request takes time to arrive.
pub const DEFAULT_REPLAY_SAFETY_MARGIN: Duration = Duration::from_secs(60 * 60);

/// What the gateway supports (`GATEWAY_CAPABILITIES`); what is missing is never relied on.
///
/// Equality and `Display` consider only the three capabilities, not the replay window.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    idempotency: bool,
    lookup: bool,
    cancel: bool,
    idempotency_window: Duration,
    replay_safety_margin: Duration,
}

impl Capabilities {
    pub const fn new(idempotency: bool, lookup: bool, cancel: bool) -> Self {
        Self {
            idempotency,
            lookup,
            cancel,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            replay_safety_margin: DEFAULT_REPLAY_SAFETY_MARGIN,
        }
    }

    /// `idempotency,lookup,cancel`.
    pub const fn all() -> Self {
        Self::new(true, true, true)
    }

    /// `none`.
    pub const fn none() -> Self {
        Self::new(false, false, false)
    }

    /// Another idempotency window than Stripe's 24 h (e.g. a simulator configured shorter), and
    /// the safety margin before its end after which a replay is no longer attempted.
    pub const fn with_idempotency_window(
        mut self,
        window: Duration,
        safety_margin: Duration,
    ) -> Self {
        self.idempotency_window = window;
        self.replay_safety_margin = safety_margin;
        self
    }

    /// The gateway deduplicates POSTs by `Idempotency-Key`.
    pub const fn idempotency(&self) -> bool {
        self.idempotency
    }

    /// `GET /v1/payment_intents/{id}` may be relied on.
    pub const fn may_lookup(&self) -> bool {
        self.lookup
    }

    /// `POST /v1/payment_intents/{id}/cancel` may be relied on.
    pub const fn may_cancel(&self) -> bool {
        self.cancel
    }

    pub const fn idempotency_window(&self) -> Duration {
        self.idempotency_window
    }

    pub const fn replay_safety_margin(&self) -> Duration {
        self.replay_safety_margin
    }

    /// Whether a POST first sent at `first_sent_at` may be sent again with the same key at `now`.
    ///
    /// Only with `idempotency`, and only strictly inside the idempotency window less the safety
    /// margin: past the window the gateway has forgotten the key, so a replay would be a new
    /// charge (CONTRACT §5). A `now` before `first_sent_at` (clocks of two replicas) counts as
    /// "just sent".
    pub fn may_replay(&self, first_sent_at: SystemTime, now: SystemTime) -> bool {
        if !self.idempotency {
            return false;
        }
        let Some(limit) = self
            .idempotency_window
            .checked_sub(self.replay_safety_margin)
        else {
            return false;
        };
        let elapsed = now.duration_since(first_sent_at).unwrap_or(Duration::ZERO);
        elapsed < limit
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::all()
    }
}

impl PartialEq for Capabilities {
    fn eq(&self, other: &Self) -> bool {
        (self.idempotency, self.lookup, self.cancel)
            == (other.idempotency, other.lookup, other.cancel)
    }
}

impl Eq for Capabilities {}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.idempotency, "idempotency"),
            (self.lookup, "lookup"),
            (self.cancel, "cancel"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseCapabilitiesError {
    #[error(
        "unknown gateway capability {0:?}: expected a comma-separated list of `idempotency`, `lookup`, `cancel`, or `none`"
    )]
    Unknown(String),
    #[error(
        "empty gateway capability list or item: expected a comma-separated list of `idempotency`, `lookup`, `cancel`, or `none`"
    )]
    Empty,
    #[error("`none` cannot be combined with other gateway capabilities")]
    NoneWithOthers,
}

impl FromStr for Capabilities {
    type Err = ParseCapabilitiesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        if items.iter().any(|item| item.is_empty()) {
            return Err(ParseCapabilitiesError::Empty);
        }
        if items.contains(&"none") {
            return if items.len() == 1 {
                Ok(Self::none())
            } else {
                Err(ParseCapabilitiesError::NoneWithOthers)
            };
        }
        let mut caps = Self::none();
        for item in items {
            match item {
                "idempotency" => caps.idempotency = true,
                "lookup" => caps.lookup = true,
                "cancel" => caps.cancel = true,
                other => return Err(ParseCapabilitiesError::Unknown(other.to_owned())),
            }
        }
        Ok(caps)
    }
}

/// A client-side rate limit: at most `burst` requests at once, refilled at one request per
/// `replenish_interval`. Enforced with `governor` before every request, retries included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    replenish_interval: Duration,
    burst: NonZeroU32,
}

impl RateLimit {
    /// `n` requests per second, burst `n`.
    pub fn per_second(n: NonZeroU32) -> Self {
        Self {
            replenish_interval: Duration::from_secs(1) / n.get(),
            burst: n,
        }
    }

    /// One request per `interval`, burst 1.
    pub fn one_per(interval: Duration) -> Self {
        Self {
            replenish_interval: interval,
            burst: NonZeroU32::MIN,
        }
    }

    pub fn with_burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    pub fn replenish_interval(&self) -> Duration {
        self.replenish_interval
    }

    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    pub(crate) fn quota(&self) -> Option<governor::Quota> {
        governor::Quota::with_period(self.replenish_interval).map(|q| q.allow_burst(self.burst))
    }
}

/// The bounded retry of answers that prove the request did nothing: 429 and a connection that
/// could not be established. Timeouts, dropped connections and 5xx are never retried here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (0: never retry).
    pub max_retries: u32,
    /// First backoff; doubles on each retry.
    pub min_backoff: Duration,
    /// Upper bound of the exponential backoff.
    pub max_backoff: Duration,
    /// Randomise each backoff (adds up to the backoff again), so clients do not retry in step.
    pub jitter: bool,
    /// The wait assumed for a 429 without a usable `Retry-After`.
    pub default_retry_after: Duration,
    /// A 429 asking to wait longer than this is returned at once as `RetryLater` instead of
    /// blocking the call.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// No retry at all: 429 is returned as `RetryLater`, a refused connection as `NotSent`.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            jitter: true,
            default_retry_after: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

/// Default per-call timeout (`GATEWAY_TIMEOUT_MS`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on establishing a connection (never more than the per-call timeout).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the client needs. `Debug` shows everything but the key.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// e.g. `http://127.0.0.1:12111` or `https://api.stripe.com` (paths `/v1/...` are appended).
    pub base_url: String,
    pub api_key: ApiKey,
    /// How long one HTTP request may take, from connecting to the end of the answer's body,
    /// before its outcome counts as unknown. Each retry of a 429 gets its own.
    pub timeout: Duration,
    /// How long establishing a connection may take (capped by `timeout`). A connection that
    /// could not be established proves the request was never sent.
    pub connect_timeout: Duration,
    pub flow: Flow,
    pub capabilities: Capabilities,
    /// `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    pub retry: RetryPolicy,
    /// Sent as `payment_method_types[]` on create when not empty. Stripe's test mode needs
    /// `card` to confirm without a `return_url` (its default "automatic payment methods" may
    /// redirect); [`GatewayConfig::new`] sets it for `api.stripe.com` only, since the simulator
    /// speaks just the subset of CONTRACT §5.
    pub payment_method_types: Vec<String>,
}

impl GatewayConfig {
    /// Defaults of CONTRACT §6 for everything but the URL and the key.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<ApiKey>) -> Self {
        let base_url = base_url.into();
        let payment_method_types = if is_stripe(&base_url) {
            vec!["card".to_owned()]
        } else {
            Vec::new()
        };
        Self {
            base_url,
            api_key: api_key.into(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            flow: Flow::default(),
            capabilities: Capabilities::default(),
            rate_limit: None,
            retry: RetryPolicy::default(),
            payment_method_types,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn with_flow(mut self, flow: Flow) -> Self {
        self.flow = flow;
        self
    }

    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    pub fn with_rate_limit(mut self, rate_limit: Option<RateLimit>) -> Self {
        self.rate_limit = rate_limit;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_payment_method_types(mut self, types: Vec<String>) -> Self {
        self.payment_method_types = types;
        self
    }
}

fn is_stripe(base_url: &str) -> bool {
    reqwest::Url::parse(base_url)
        .ok()
        .and_then(|url| {
            url.host_str()
                .map(|h| h.eq_ignore_ascii_case("api.stripe.com"))
        })
        .unwrap_or(false)
}

/// Why a client could not be built.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid gateway base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("the gateway API key is empty or contains characters not allowed in an HTTP header")]
    ApiKey,
    #[error("invalid rate limit: the replenish interval must be more than zero")]
    RateLimit,
    #[error("invalid timeout: must be more than zero")]
    Timeout,
    #[error("could not build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_parses_and_round_trips() {
        assert_eq!("two_phase".parse::<Flow>(), Ok(Flow::TwoPhase));
        assert_eq!("one_shot".parse::<Flow>(), Ok(Flow::OneShot));
        assert_eq!(Flow::default(), Flow::TwoPhase);
        for flow in [Flow::TwoPhase, Flow::OneShot] {
            assert_eq!(flow.to_string().parse::<Flow>(), Ok(flow));
        }
        let err = "three_phase".parse::<Flow>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown gateway flow \"three_phase\": expected `two_phase` or `one_shot`")
        );
        assert!("TwoPhase".parse::<Flow>().is_err());
        assert!("".parse::<Flow>().is_err());
    }

    #[test]
    fn capabilities_parse() {
        let all: Capabilities = "idempotency,lookup,cancel"
            .parse()
            .unwrap_or(Capabilities::none());
        assert_eq!(all, Capabilities::all());
        assert!(all.idempotency() && all.may_lookup() && all.may_cancel());
        assert_eq!("none".parse::<Capabilities>(), Ok(Capabilities::none()));
        assert_eq!(
            " cancel , idempotency ".parse::<Capabilities>(),
            Ok(Capabilities::new(true, false, true))
        );
        assert_eq!(
            "lookup".parse::<Capabilities>(),
            Ok(Capabilities::new(false, true, false))
        );
        assert_eq!(Capabilities::default(), Capabilities::all());
    }

    #[test]
    fn capabilities_refuse_unknown_and_malformed() {
        assert_eq!(
            "lookup,teleport".parse::<Capabilities>(),
            Err(ParseCapabilitiesError::Unknown("teleport".to_owned()))
        );
        assert_eq!(
            "".parse::<Capabilities>(),
            Err(ParseCapabilitiesError::Empty)
        );
        assert_eq!(
            "lookup,".parse::<Capabilities>(),
            Err(ParseCapabilitiesError::Empty)
        );
        assert_eq!(
            "none,lookup".parse::<Capabilities>(),
            Err(ParseCapabilitiesError::NoneWithOthers)
        );
        assert!("Lookup".parse::<Capabilities>().is_err());
        let msg = ParseCapabilitiesError::Unknown("teleport".into()).to_string();
        assert!(
            msg.contains("teleport") && msg.contains("idempotency"),
            "{msg}"
        );
    }

    #[test]
    fn capabilities_display_round_trips() {
        for idempotency in [false, true] {
            for lookup in [false, true] {
                for cancel in [false, true] {
                    let caps = Capabilities::new(idempotency, lookup, cancel);
                    let shown = caps.to_string();
                    assert_eq!(shown.parse::<Capabilities>(), Ok(caps), "{shown}");
                }
            }
        }
        assert_eq!(Capabilities::all().to_string(), "idempotency,lookup,cancel");
        assert_eq!(Capabilities::none().to_string(), "none");
    }

    #[test]
    fn may_replay_only_with_idempotency_and_inside_the_window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let caps = Capabilities::all();
        let limit = DEFAULT_IDEMPOTENCY_WINDOW - DEFAULT_REPLAY_SAFETY_MARGIN;
        assert!(caps.may_replay(t0, t0));
        assert!(caps.may_replay(t0, t0 + Duration::from_secs(60)));
        assert!(caps.may_replay(t0, t0 + limit - Duration::from_nanos(1)));
        // Strictly inside: the edge itself is refused, and everything after it.
        assert!(!caps.may_replay(t0, t0 + limit));
        assert!(!caps.may_replay(t0, t0 + DEFAULT_IDEMPOTENCY_WINDOW));
        assert!(!caps.may_replay(t0, t0 + Duration::from_secs(25 * 3600)));
        // A clock behind the first send counts as "just sent".
        assert!(caps.may_replay(t0, t0 - Duration::from_secs(5)));
        // Without idempotency: never.
        let poor = Capabilities::new(false, true, true);
        assert!(!poor.may_replay(t0, t0));
    }

    #[test]
    fn may_replay_with_a_custom_window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let caps = Capabilities::all()
            .with_idempotency_window(Duration::from_secs(60), Duration::from_secs(10));
        assert!(caps.may_replay(t0, t0 + Duration::from_secs(49)));
        assert!(!caps.may_replay(t0, t0 + Duration::from_secs(50)));
        // A margin as large as the window leaves no replay at all.
        let none = Capabilities::all()
            .with_idempotency_window(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!none.may_replay(t0, t0));
        let inverted = Capabilities::all()
            .with_idempotency_window(Duration::from_secs(60), Duration::from_secs(120));
        assert!(!inverted.may_replay(t0, t0));
    }

    #[test]
    fn debug_of_config_redacts_the_key() {
        let config = GatewayConfig::new("http://127.0.0.1:12111", "sk_test_supersecret");
        let shown = format!("{config:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("ApiKey(****)"), "{shown}");
        assert!(shown.contains("127.0.0.1:12111"), "{shown}");
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = GatewayConfig::new("http://127.0.0.1:12111", "sk_test_local");
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.flow, Flow::TwoPhase);
        assert_eq!(config.capabilities, Capabilities::all());
        assert_eq!(config.rate_limit, None);
        assert!(config.payment_method_types.is_empty());
        let stripe = GatewayConfig::new("https://api.stripe.com", "sk_test_x");
        assert_eq!(stripe.payment_method_types, vec!["card".to_owned()]);
    }

    #[test]
    fn rate_limit_builds_a_governor_quota() {
        let five = NonZeroU32::new(5).map(RateLimit::per_second);
        let quota = five.and_then(|r| r.quota());
        assert_eq!(
            quota.map(|q| (q.replenish_interval(), q.burst_size().get())),
            Some((Duration::from_millis(200), 5))
        );
        let hourly = RateLimit::one_per(Duration::from_secs(3600));
        assert_eq!(hourly.quota().map(|q| q.burst_size().get()), Some(1));
        assert_eq!(RateLimit::one_per(Duration::ZERO).quota(), None);
    }

    #[test]
    fn a_governor_limiter_from_the_config_refuses_beyond_the_burst() {
        // One per hour, burst 2: two immediate permits, the third must wait (deterministic: the
        // next permit is an hour away).
        let Some(burst) = NonZeroU32::new(2) else {
            return;
        };
        let limit = RateLimit::one_per(Duration::from_secs(3600)).with_burst(burst);
        let Some(quota) = limit.quota() else {
            panic!("quota");
        };
        let limiter = governor::RateLimiter::direct(quota);
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
    }
}
