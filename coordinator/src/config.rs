//! Settings of CONTRACT §6, parsed once at start-up. Every setting is an environment variable
//! and the matching `--flag`; defaults suit a developer's machine.

use std::{fmt, net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use clap::Parser;

/// The coordinator's settings.
#[derive(Parser, Clone)]
#[command(
    name = "coordinator",
    version,
    about = "The payment coordinator (gRPC)",
    // A later flag wins over an earlier one (tests and scripts layer overrides).
    args_override_self = true
)]
pub struct Settings {
    /// gRPC address.
    #[arg(long, env = "COORDINATOR_LISTEN", default_value = "127.0.0.1:50051")]
    pub coordinator_listen: SocketAddr,

    /// PEM certificate chain of the gRPC port; with TLS_KEY_FILE the port serves TLS only.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of TLS_CERT_FILE's certificate.
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA bundle: every client must present a certificate signed by it (mTLS); needs
    /// TLS_CERT_FILE.
    #[arg(long, env = "TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// An extra plain-text address serving only grpc.health.v1 (for probes that cannot present
    /// a client certificate); unset: none.
    #[arg(long, env = "HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://root@127.0.0.1:5432/payments",
        // It may carry a password: --help never shows the environment's value.
        hide_env_values = true
    )]
    pub database_url: String,

    /// Redis URL (a `/N` database number is honoured).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis key this coordinator writes (tests give each run its own).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "payments:")]
    pub redis_key_prefix: String,

    /// The gateway's base URL.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:12111")]
    pub gateway_url: String,

    /// The gateway's secret key.
    #[arg(
        long,
        env = "GATEWAY_API_KEY",
        default_value = "sk_test_local",
        hide_env_values = true
    )]
    pub gateway_api_key: Secret,

    /// Callers' keys: TOML `[[keys]]` tables with `id`, `role`, `sha256`.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Developer mode: without API_KEYS_FILE, generate and print a key per role.
    #[arg(long)]
    pub dev: bool,

    /// Local journal for outcomes that could not reach PostgreSQL.
    #[arg(long, env = "JOURNAL_DIR", default_value = "./journal")]
    pub journal_dir: PathBuf,

    /// Prometheus `/metrics` address.
    #[arg(long, env = "METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,

    /// This replica's name in leases and events (default: the host name).
    #[arg(long, env = "REPLICA_ID")]
    pub replica_id: Option<String>,

    /// `two_phase` (create, persist the intent id, confirm) or `one_shot`.
    #[arg(long, env = "GATEWAY_FLOW", default_value = "two_phase")]
    pub gateway_flow: gateway_client::Flow,

    /// What the gateway supports: `idempotency`, `lookup`, `cancel` (comma-separated), or `none`.
    #[arg(
        long,
        env = "GATEWAY_CAPABILITIES",
        default_value = "idempotency,lookup,cancel"
    )]
    pub gateway_capabilities: gateway_client::Capabilities,

    /// How long one gateway call may take before its outcome counts as unknown.
    #[arg(long, env = "GATEWAY_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub gateway_timeout_ms: u64,

    /// An order lease's time to live; the holder renews it well before it runs out.
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(300..))]
    pub lease_ttl_ms: u64,

    /// How often the recovery worker sweeps for stranded attempts (and once at start-up);
    /// unset: max(LEASE_TTL/2, 1 s), so a stranded attempt is resolved within LEASE_TTL plus
    /// one sweep.
    #[arg(long, env = "RECOVERY_SWEEP_MS",
          value_parser = clap::value_parser!(u64).range(50..))]
    pub recovery_sweep_ms: Option<u64>,

    /// Gateway actions (lookup, replay, cancel) one resolution run may take, spaced 0.5 s, 1 s,
    /// 2 s, … before it hands the attempt to the recovery worker.
    #[arg(long, env = "RECOVERY_ACTIONS_PER_RUN", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub recovery_actions_per_run: u32,

    /// Resolution runs (the inline one, then the recovery worker's) before an outcome that
    /// could not be established goes to manual review.
    #[arg(long, env = "RECOVERY_MAX_RUNS", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub recovery_max_runs: u32,

    /// How many stranded attempts one sweep takes over at most.
    #[arg(long, env = "RECOVERY_BATCH", default_value_t = 32,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub recovery_batch: i64,

    /// The gateway circuit breaker measures the share of failed or unknown charging calls over
    /// this sliding window (each replica its own calls).
    #[arg(long, env = "BREAKER_WINDOW_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub breaker_window_ms: u64,

    /// Fewer calls than this in the window never open the breaker.
    #[arg(long, env = "BREAKER_MIN_CALLS", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_min_calls: u32,

    /// The breaker opens when at least this share (percent) of the window's calls failed or
    /// ended unknown.
    #[arg(long, env = "BREAKER_FAILURE_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub breaker_failure_percent: u32,

    /// How long the breaker stays open (new payments refused) before probe payments go through.
    #[arg(long, env = "BREAKER_COOLDOWN_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub breaker_cooldown_ms: u64,

    /// Probe payments let through per cool-down while the breaker is half-open, across all
    /// replicas; the first healthy one closes it, a failed one opens it again.
    #[arg(long, env = "BREAKER_PROBES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub breaker_probes: u32,

    /// Log lines: `text` (human-readable, the default) or `json` (one object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,

    /// Where traces go (OTLP/gRPC, http:// or https://); unset: no export. Its value is hidden
    /// from `--help` (it may carry credentials).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", hide_env_values = true)]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// Each API key's sustained request rate (requests per second); past its budget a caller is
    /// refused with RESOURCE_EXHAUSTED / RATE_LIMITED and a retry delay. A key's own
    /// `rate_per_second` in API_KEYS_FILE overrides it.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value = "200")]
    pub rate_limit_per_second: NonZeroU32,

    /// How many requests an API key may make at once above its rate (a key's own `burst` in
    /// API_KEYS_FILE overrides it).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value = "400")]
    pub rate_limit_burst: NonZeroU32,

    /// On SIGTERM, how long attempts in flight get to reach an outcome before they are handed to
    /// the other replicas' recovery workers; keep it well under the orchestrator's kill timeout
    /// (Kubernetes' terminationGracePeriodSeconds, 30 s by default).
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 20_000)]
    pub shutdown_grace_ms: u64,
}

impl Settings {
    /// The replica name: `REPLICA_ID`, else the host name.
    pub fn replica(&self) -> String {
        self.replica_id.clone().unwrap_or_else(|| {
            gethostname::gethostname()
                .into_string()
                .unwrap_or_else(|_| "coordinator".to_owned())
        })
    }

    pub fn gateway_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway_timeout_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// Every API key's default request budget.
    pub fn rate_limit(&self) -> crate::auth::RateLimit {
        crate::auth::RateLimit {
            per_second: self.rate_limit_per_second,
            burst: self.rate_limit_burst,
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The recovery worker's settings.
    pub fn recovery(&self) -> crate::recovery::RecoveryConfig {
        let sweep_every = match self.recovery_sweep_ms {
            Some(ms) => Duration::from_millis(ms),
            None => (self.lease_ttl() / 2).max(Duration::from_secs(1)),
        };
        crate::recovery::RecoveryConfig {
            actions_per_run: self.recovery_actions_per_run,
            max_runs: self.recovery_max_runs,
            sweep_every,
            stale_after: self.lease_ttl(),
            batch: self.recovery_batch,
        }
    }

    /// The gateway circuit breaker's settings.
    pub fn breaker(&self) -> crate::domain::breaker::BreakerPolicy {
        crate::domain::breaker::BreakerPolicy {
            window: Duration::from_millis(self.breaker_window_ms),
            min_calls: self.breaker_min_calls,
            failure_percent: self.breaker_failure_percent,
            cooldown: Duration::from_millis(self.breaker_cooldown_ms),
            probes: self.breaker_probes,
        }
    }
}

/// A secret setting: its value never appears in `Debug` output, logs or `--help`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // DATABASE_URL may carry a password: show only that it is set.
        f.debug_struct("Settings")
            .field("coordinator_listen", &self.coordinator_listen)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_client_ca_file", &self.tls_client_ca_file)
            .field("health_listen", &self.health_listen)
            .field("database_url", &redact_url_password(&self.database_url))
            .field("redis_url", &redact_url_password(&self.redis_url))
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("gateway_url", &self.gateway_url)
            .field("gateway_api_key", &self.gateway_api_key)
            .field("api_keys_file", &self.api_keys_file)
            .field("dev", &self.dev)
            .field("journal_dir", &self.journal_dir)
            .field("metrics_listen", &self.metrics_listen)
            .field("replica_id", &self.replica_id)
            .field("gateway_flow", &self.gateway_flow)
            .field("gateway_capabilities", &self.gateway_capabilities)
            .field("gateway_timeout_ms", &self.gateway_timeout_ms)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("recovery_sweep_ms", &self.recovery_sweep_ms)
            .field("recovery_actions_per_run", &self.recovery_actions_per_run)
            .field("recovery_max_runs", &self.recovery_max_runs)
            .field("recovery_batch", &self.recovery_batch)
            .field("breaker_window_ms", &self.breaker_window_ms)
            .field("breaker_min_calls", &self.breaker_min_calls)
            .field("breaker_failure_percent", &self.breaker_failure_percent)
            .field("breaker_cooldown_ms", &self.breaker_cooldown_ms)
            .field("breaker_probes", &self.breaker_probes)
            .field("log_format", &self.log_format)
            // May carry credentials (user:password@): shown without them.
            .field(
                "otel_exporter_otlp_endpoint",
                &self
                    .otel_exporter_otlp_endpoint
                    .as_deref()
                    .map(crate::telemetry::without_userinfo),
            )
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .finish()
    }
}

/// `scheme://user:secret@host` → `scheme://user:****@host`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Settings {
        let mut argv = vec!["coordinator"];
        argv.extend_from_slice(args);
        Settings::try_parse_from(argv).expect("settings parse")
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = parse(&[]);
        assert_eq!(s.coordinator_listen.to_string(), "127.0.0.1:50051");
        assert_eq!(s.gateway_flow, gateway_client::Flow::TwoPhase);
        assert_eq!(
            s.gateway_capabilities.to_string(),
            "idempotency,lookup,cancel"
        );
        assert_eq!(s.gateway_timeout(), Duration::from_secs(10));
        assert_eq!(s.lease_ttl(), Duration::from_secs(10));
        assert_eq!(s.rate_limit().per_second.get(), 200);
        assert_eq!(s.rate_limit().burst.get(), 400);
        assert_eq!(s.shutdown_grace(), Duration::from_secs(20));
    }

    #[test]
    fn a_zero_rate_limit_is_refused() {
        for flag in ["--rate-limit-per-second", "--rate-limit-burst"] {
            assert!(Settings::try_parse_from(["coordinator", flag, "0"]).is_err());
        }
        let s = parse(&[
            "--rate-limit-per-second",
            "1",
            "--rate-limit-burst",
            "3",
            "--shutdown-grace-ms",
            "500",
        ]);
        assert_eq!(s.rate_limit().per_second.get(), 1);
        assert_eq!(s.rate_limit().burst.get(), 3);
        assert_eq!(s.shutdown_grace(), Duration::from_millis(500));
    }

    #[test]
    fn breaker_settings_have_defaults_and_ranges() {
        assert_eq!(
            parse(&[]).breaker(),
            crate::domain::breaker::BreakerPolicy::default()
        );
        let s = parse(&[
            "--breaker-window-ms",
            "60000",
            "--breaker-min-calls",
            "4",
            "--breaker-failure-percent",
            "100",
            "--breaker-cooldown-ms",
            "1500",
            "--breaker-probes",
            "1",
        ]);
        let p = s.breaker();
        assert_eq!(
            (
                p.window,
                p.min_calls,
                p.failure_percent,
                p.cooldown,
                p.probes
            ),
            (
                Duration::from_secs(60),
                4,
                100,
                Duration::from_millis(1500),
                1
            )
        );
        for (flag, bad) in [
            ("--breaker-failure-percent", "0"),
            ("--breaker-failure-percent", "101"),
            ("--breaker-min-calls", "0"),
            ("--breaker-probes", "0"),
            ("--breaker-window-ms", "10"),
            ("--breaker-cooldown-ms", "0"),
        ] {
            assert!(
                Settings::try_parse_from(["coordinator", flag, bad]).is_err(),
                "{flag} {bad}"
            );
        }
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(parse(&[]).log_format, crate::telemetry::LogFormat::Text);
        assert_eq!(
            parse(&["--log-format", "json"]).log_format,
            crate::telemetry::LogFormat::Json
        );
        assert!(Settings::try_parse_from(["coordinator", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn bad_flow_and_capabilities_are_refused() {
        let bad_flow = Settings::try_parse_from(["coordinator", "--gateway-flow", "three_phase"]);
        assert!(bad_flow.is_err());
        let bad_caps =
            Settings::try_parse_from(["coordinator", "--gateway-capabilities", "lookup,teleport"]);
        assert!(bad_caps.is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let s = parse(&[
            "--gateway-api-key",
            "sk_live_supersecret",
            "--database-url",
            "postgres://app:hunter2@db:5432/payments",
            "--otel-exporter-otlp-endpoint",
            "https://otel:s3cret@collector:4317",
        ]);
        let shown = format!("{s:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("https://collector:4317"), "{shown}");
        assert!(
            shown.contains("postgres://app:****@db:5432/payments"),
            "{shown}"
        );
    }
}
