//! Callers and roles (CONTRACT §4): API keys, stored hashed, and the table of who may call what.
//!
//! [`AuthLayer`] wraps the tonic server's routes: every `payments.v1.PaymentCoordinator` call must
//! carry `authorization: Bearer <api key>`; the key's id and role land in the request's extensions
//! as a [`Caller`], which handlers read with `request.extensions().get::<Caller>()`. Health and
//! reflection stay open. Neither a key nor the header is ever logged: only the key's id.
//!
//! Each key also has a request budget ([`RateLimiters`]: one `governor` limiter per key id,
//! `RATE_LIMIT_PER_SECOND` / `RATE_LIMIT_BURST`, or the key's own `rate_per_second` / `burst` in
//! the keys file). It is charged only after authentication, so requests with a wrong or missing
//! key never spend a real caller's budget, and each key has its own, so one noisy caller cannot
//! starve the others. A call counts once when it starts: a watch stream costs one request
//! however long it stays open.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::error::Error;

/// The path prefix of the coordinator's RPCs; other paths (health, reflection) are not guarded.
pub const SERVICE_PATH_PREFIX: &str = "/payments.v1.PaymentCoordinator/";

/// What a caller may do (CONTRACT §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Operator,
    Reviewer,
    Service,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Operator, Role::Reviewer, Role::Service, Role::Admin];

    /// The name used in the keys file and in messages: `operator`, `reviewer`, `service`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Reviewer => "reviewer",
            Role::Service => "service",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ();

    /// Exactly the lower-case names of [`Role::as_str`].
    fn from_str(s: &str) -> Result<Self, ()> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or(())
    }
}

/// The RPCs of `payments.v1.PaymentCoordinator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    ProcessPayment,
    GetOrder,
    WatchOrder,
    WatchEvents,
    RefundPayment,
    ListManualReviews,
    ResolveManualReview,
    PausePayments,
    ResumePayments,
    GetPaymentsStatus,
    GetCaller,
}

impl Rpc {
    pub const ALL: [Rpc; 11] = [
        Rpc::ProcessPayment,
        Rpc::GetOrder,
        Rpc::WatchOrder,
        Rpc::WatchEvents,
        Rpc::RefundPayment,
        Rpc::ListManualReviews,
        Rpc::ResolveManualReview,
        Rpc::PausePayments,
        Rpc::ResumePayments,
        Rpc::GetPaymentsStatus,
        Rpc::GetCaller,
    ];

    /// The method name as in the proto (`ProcessPayment`).
    pub fn name(self) -> &'static str {
        match self {
            Rpc::ProcessPayment => "ProcessPayment",
            Rpc::GetOrder => "GetOrder",
            Rpc::WatchOrder => "WatchOrder",
            Rpc::WatchEvents => "WatchEvents",
            Rpc::RefundPayment => "RefundPayment",
            Rpc::ListManualReviews => "ListManualReviews",
            Rpc::ResolveManualReview => "ResolveManualReview",
            Rpc::PausePayments => "PausePayments",
            Rpc::ResumePayments => "ResumePayments",
            Rpc::GetPaymentsStatus => "GetPaymentsStatus",
            Rpc::GetCaller => "GetCaller",
        }
    }

    /// The RPC of an HTTP/2 path such as `/payments.v1.PaymentCoordinator/ProcessPayment`.
    pub fn from_path(path: &str) -> Option<Rpc> {
        let method = path.strip_prefix(SERVICE_PATH_PREFIX)?;
        Rpc::ALL.into_iter().find(|rpc| rpc.name() == method)
    }

    /// The HTTP/2 path of this RPC.
    pub fn path(self) -> String {
        format!("{SERVICE_PATH_PREFIX}{}", self.name())
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// May `role` call `rpc`? The table of CONTRACT §4, one line per RPC.
///
/// `GetPaymentsStatus` is open to every role: it is read-only and tells an operator or a
/// consuming service why new payments are refused, which each of them needs to know.
/// `GetCaller` too: it tells a caller only what its own key already is.
pub fn allowed(role: Role, rpc: Rpc) -> bool {
    use Role::*;
    match rpc {
        Rpc::ProcessPayment => matches!(role, Operator | Reviewer | Admin),
        Rpc::GetOrder | Rpc::WatchOrder => true,
        Rpc::WatchEvents => matches!(role, Service | Admin),
        Rpc::ListManualReviews | Rpc::ResolveManualReview | Rpc::RefundPayment => {
            matches!(role, Reviewer | Admin)
        }
        Rpc::PausePayments | Rpc::ResumePayments => matches!(role, Admin),
        Rpc::GetPaymentsStatus | Rpc::GetCaller => true,
    }
}

/// An authenticated caller: the key's id (recorded as `operator_id`/`actor`) and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub role: Role,
}

/// Why the API keys file cannot be used. Messages name key ids, never a key or a hash value.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read the API keys file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the API keys file {} is not valid: {message} (line {line}); expected [[keys]] tables \
         with id, role and sha256",
        path.display()
    )]
    Parse {
        path: PathBuf,
        /// The parser's message, without its quote of the file (which could hold a key).
        message: String,
        line: usize,
    },
    #[error("key id {id:?} must be 1–64 characters of [A-Za-z0-9._:-]")]
    BadId { id: String },
    #[error(
        "key {id:?}: sha256 must be 64 hexadecimal digits, the SHA-256 of the key (never the key \
         itself)"
    )]
    BadHash { id: String },
    #[error("key {id:?}: unknown role {role:?}; expected operator, reviewer, service or admin")]
    UnknownRole { id: String, role: String },
    #[error("key {id:?}: rate_per_second and burst must be at least 1 when set")]
    BadRateLimit { id: String },
    #[error("key id {id:?} is configured more than once")]
    DuplicateId { id: String },
    #[error("keys {first:?} and {second:?} have the same sha256: one key would have two ids")]
    DuplicateHash { first: String, second: String },
    #[error(
        "the API keys file {} defines no keys; add [[keys]] tables with id, role and sha256",
        path.display()
    )]
    NoKeys { path: PathBuf },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRow {
    id: String,
    role: String,
    sha256: String,
    /// This key's own request rate, instead of `RATE_LIMIT_PER_SECOND`.
    #[serde(default)]
    rate_per_second: Option<u32>,
    /// This key's own burst, instead of `RATE_LIMIT_BURST`.
    #[serde(default)]
    burst: Option<u32>,
}

struct KeyEntry {
    id: String,
    role: Role,
    sha256: [u8; 32],
    /// Overrides of the default budget, from the keys file.
    rate_per_second: Option<NonZeroU32>,
    burst: Option<NonZeroU32>,
}

/// A request budget: on average `per_second` requests a second, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RateLimit {
    fn quota(self) -> governor::Quota {
        governor::Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// Every configured caller's request budget: one `governor` limiter per key id, made once from
/// the key store (the set of ids is fixed, so nothing grows with traffic).
pub struct RateLimiters {
    by_id: HashMap<String, (RateLimit, governor::DefaultDirectRateLimiter)>,
}

impl fmt::Debug for RateLimiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.by_id.iter().map(|(id, (limit, _))| (id, limit)))
            .finish()
    }
}

impl RateLimiters {
    /// A budget per key of `keys`: the key's own `rate_per_second` / `burst` where the keys file
    /// sets them, else `default`'s.
    pub fn new(keys: &KeyStore, default: RateLimit) -> Self {
        let by_id = keys
            .keys
            .iter()
            .map(|k| {
                let limit = RateLimit {
                    per_second: k.rate_per_second.unwrap_or(default.per_second),
                    burst: k.burst.unwrap_or(default.burst),
                };
                (
                    k.id.clone(),
                    (limit, governor::RateLimiter::direct(limit.quota())),
                )
            })
            .collect();
        Self { by_id }
    }

    /// The budget of key `id`, if it is configured.
    pub fn limit_of(&self, id: &str) -> Option<RateLimit> {
        self.by_id.get(id).map(|(limit, _)| *limit)
    }

    /// Spends one request of `caller_id`'s budget: `Err(wait)` when it is spent, with how long
    /// until the next request fits. An id without a budget (not configured) is not limited.
    pub fn check(&self, caller_id: &str) -> Result<(), Duration> {
        let Some((_, limiter)) = self.by_id.get(caller_id) else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}

/// A key generated by [`KeyStore::generate_dev`]. `Debug` hides the key; print `key` on purpose.
#[derive(Clone)]
pub struct DevKey {
    pub id: String,
    pub role: Role,
    /// The plaintext key, to hand to a developer once.
    pub key: String,
}

impl fmt::Debug for DevKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevKey")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The configured callers' keys, hashed.
pub struct KeyStore {
    keys: Vec<KeyEntry>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| format!("{} ({})", k.id, k.role)))
            .finish()
    }
}

/// Hex SHA-256 of a key, as the keys file's `sha256` holds it.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

impl KeyStore {
    /// Reads `API_KEYS_FILE`: `[[keys]]` tables with `id`, `role` and `sha256`.
    pub fn load(path: impl AsRef<Path>) -> Result<KeyStore, AuthConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: KeysFile = toml::from_str(&text).map_err(|e| AuthConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
            line: e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| before.matches('\n').count() + 1)
                .unwrap_or(0),
        })?;
        if file.keys.is_empty() {
            return Err(AuthConfigError::NoKeys {
                path: path.to_owned(),
            });
        }
        let mut keys = Vec::with_capacity(file.keys.len());
        for row in file.keys {
            let role = row
                .role
                .parse::<Role>()
                .map_err(|()| AuthConfigError::UnknownRole {
                    id: row.id.clone(),
                    role: row.role.clone(),
                })?;
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(row.sha256.trim(), &mut sha256)
                .map_err(|_| AuthConfigError::BadHash { id: row.id.clone() })?;
            let positive = |n: Option<u32>| match n {
                None => Ok(None),
                Some(n) => NonZeroU32::new(n)
                    .map(Some)
                    .ok_or_else(|| AuthConfigError::BadRateLimit { id: row.id.clone() }),
            };
            let rate_per_second = positive(row.rate_per_second)?;
            let burst = positive(row.burst)?;
            keys.push(KeyEntry {
                id: row.id,
                role,
                sha256,
                rate_per_second,
                burst,
            });
        }
        Self::from_entries(keys)
    }

    /// A store holding these plaintext keys (hashed here): for tests and tools.
    pub fn from_keys<I, K>(keys: I) -> Result<KeyStore, AuthConfigError>
    where
        I: IntoIterator<Item = (String, Role, K)>,
        K: AsRef<str>,
    {
        Self::from_entries(
            keys.into_iter()
                .map(|(id, role, key)| KeyEntry {
                    id,
                    role,
                    sha256: Sha256::digest(key.as_ref().as_bytes()).into(),
                    rate_per_second: None,
                    burst: None,
                })
                .collect(),
        )
    }

    fn from_entries(keys: Vec<KeyEntry>) -> Result<KeyStore, AuthConfigError> {
        if keys.is_empty() {
            return Err(AuthConfigError::NoKeys {
                path: PathBuf::from("(in memory)"),
            });
        }
        let mut ids = HashSet::new();
        for (i, k) in keys.iter().enumerate() {
            if !valid_key_id(&k.id) {
                return Err(AuthConfigError::BadId { id: k.id.clone() });
            }
            if !ids.insert(k.id.as_str()) {
                return Err(AuthConfigError::DuplicateId { id: k.id.clone() });
            }
            if let Some(first) = keys[..i].iter().find(|other| other.sha256 == k.sha256) {
                return Err(AuthConfigError::DuplicateHash {
                    first: first.id.clone(),
                    second: k.id.clone(),
                });
            }
        }
        Ok(KeyStore { keys })
    }

    /// One fresh random key per role (`dev-operator`, `dev-reviewer`, `dev-service`,
    /// `dev-admin`), each `pk_dev_` and 32 random bytes in hex, for `--dev` to print once.
    pub fn generate_dev() -> (KeyStore, Vec<DevKey>) {
        let dev: Vec<DevKey> = Role::ALL
            .into_iter()
            .map(|role| DevKey {
                id: format!("dev-{role}"),
                role,
                key: format!("pk_dev_{}", hex::encode(rand::random::<[u8; 32]>())),
            })
            .collect();
        let keys = dev
            .iter()
            .map(|d| KeyEntry {
                id: d.id.clone(),
                role: d.role,
                sha256: Sha256::digest(d.key.as_bytes()).into(),
                rate_per_second: None,
                burst: None,
            })
            .collect();
        (KeyStore { keys }, dev)
    }

    /// The caller whose key this is, if any.
    ///
    /// The presented key's SHA-256 is compared with every configured hash in constant time and
    /// without leaving the loop early, so timing tells neither which key nor whether any matched.
    pub fn authenticate(&self, key: &str) -> Option<Caller> {
        if key.is_empty() {
            return None;
        }
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.keys.iter().enumerate() {
            let same = entry.sha256.ct_eq(&presented);
            index.conditional_assign(&(i as u64), same);
            found |= same;
        }
        if !bool::from(found) {
            return None;
        }
        let entry = self.keys.get(usize::try_from(index).ok()?)?;
        Some(Caller {
            id: entry.id.clone(),
            role: entry.role,
        })
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a store holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The key of an `authorization: Bearer <key>` header (scheme case-insensitive).
fn bearer_key(headers: &http::HeaderMap) -> Result<&str, &'static str> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or("missing authorization header; send `authorization: Bearer <api key>`")?;
    let value = value
        .to_str()
        .map_err(|_| "the authorization header is not `Bearer <api key>`")?;
    let (scheme, key) = value
        .trim()
        .split_once(' ')
        .ok_or("the authorization header is not `Bearer <api key>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the authorization header is not `Bearer <api key>`");
    }
    let key = key.trim();
    if key.is_empty() {
        return Err("the authorization header carries no API key");
    }
    Ok(key)
}

/// What to do with one request.
enum Decision {
    /// Not a coordinator RPC (health, reflection): no credentials needed.
    PassThrough,
    Allow(Caller),
    Refuse(Error),
}

fn decide(
    keys: &KeyStore,
    limits: Option<&RateLimiters>,
    path: &str,
    headers: &http::HeaderMap,
) -> Decision {
    if !path.starts_with(SERVICE_PATH_PREFIX) {
        return Decision::PassThrough;
    }
    let caller = match bearer_key(headers) {
        Err(why) => return Decision::Refuse(Error::Unauthenticated(why)),
        Ok(key) => match keys.authenticate(key) {
            None => return Decision::Refuse(Error::Unauthenticated("unknown API key")),
            Some(caller) => caller,
        },
    };
    // Only now, authenticated: every call of this key counts against its own budget, whatever
    // the RPC (a refused role included); nobody else's.
    if let Some(limits) = limits
        && let Err(retry_after) = limits.check(&caller.id)
    {
        // Debug, not info: a caller over its budget would otherwise flood the log.
        tracing::debug!(caller = %caller.id, path, retry_after_ms = retry_after.as_millis() as u64, "call refused: rate limited");
        return Decision::Refuse(Error::RateLimited { retry_after });
    }
    match Rpc::from_path(path) {
        Some(rpc) if !allowed(caller.role, rpc) => {
            tracing::info!(caller = %caller.id, role = %caller.role, %rpc, "call refused: role may not call this RPC");
            Decision::Refuse(Error::Forbidden {
                role: caller.role,
                rpc,
            })
        }
        // An unknown method of the service: authenticated callers get tonic's UNIMPLEMENTED.
        rpc => {
            tracing::debug!(caller = %caller.id, role = %caller.role, rpc = ?rpc, "caller authenticated");
            Decision::Allow(caller)
        }
    }
}

/// Authenticates, rate-limits and authorises coordinator RPCs; see the module documentation.
///
/// `Server::builder().layer(AuthLayer::new(keys).with_rate_limits(limits))`.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    keys: Arc<KeyStore>,
    limits: Option<Arc<RateLimiters>>,
}

impl AuthLayer {
    /// Authentication and roles only, no request budget.
    pub fn new(keys: Arc<KeyStore>) -> Self {
        Self { keys, limits: None }
    }

    /// Each caller's requests also count against its budget in `limits`.
    pub fn with_rate_limits(mut self, limits: Arc<RateLimiters>) -> Self {
        self.limits = Some(limits);
        self
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            keys: Arc::clone(&self.keys),
            limits: self.limits.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    keys: Arc<KeyStore>,
    limits: Option<Arc<RateLimiters>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        match decide(
            &self.keys,
            self.limits.as_deref(),
            request.uri().path(),
            request.headers(),
        ) {
            Decision::PassThrough => {}
            Decision::Allow(caller) => {
                request.extensions_mut().insert(caller);
            }
            Decision::Refuse(error) => {
                let status = tonic::Status::from(error);
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tonic::body::Body;
    use tower::{Layer, ServiceExt};

    use super::*;

    fn temp_file(name: &str, content: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "coordinator-auth-{}-{}-{name}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, content).unwrap();
        path
    }

    fn load(content: &str) -> Result<KeyStore, AuthConfigError> {
        let path = temp_file("keys", content);
        let result = KeyStore::load(&path);
        let _ = std::fs::remove_file(&path);
        result
    }

    fn row(id: &str, role: &str, key: &str) -> String {
        format!(
            "[[keys]]\nid = \"{id}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            sha256_hex(key)
        )
    }

    #[test]
    fn a_good_file_loads_and_authenticates() {
        let content = [
            row("op-1", "operator", "key-op"),
            row("rev-1", "reviewer", "key-rev"),
            row("svc-1", "service", "key-svc"),
            row("adm-1", "admin", "key-adm"),
        ]
        .concat();
        let keys = load(&content).unwrap();
        assert_eq!(keys.len(), 4);
        let caller = keys.authenticate("key-rev").unwrap();
        assert_eq!(
            caller,
            Caller {
                id: "rev-1".into(),
                role: Role::Reviewer
            }
        );
        assert_eq!(keys.authenticate("key-adm").unwrap().role, Role::Admin);
        assert_eq!(keys.authenticate("key-op").unwrap().id, "op-1");
        assert!(keys.authenticate("key-nope").is_none());
        assert!(keys.authenticate("").is_none());
        assert!(keys.authenticate("key-op ").is_none());
        // Debug shows ids and roles, never hashes.
        let shown = format!("{keys:?}");
        assert!(shown.contains("op-1 (operator)"));
        assert!(!shown.contains(&sha256_hex("key-op")));
    }

    #[test]
    fn upper_case_hex_is_accepted() {
        let content = format!(
            "[[keys]]\nid = \"a\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            sha256_hex("k").to_uppercase()
        );
        assert_eq!(load(&content).unwrap().authenticate("k").unwrap().id, "a");
    }

    #[test]
    fn bad_files_are_refused_clearly() {
        let missing = std::env::temp_dir().join("coordinator-auth-no-such-file.toml");
        let err = KeyStore::load(&missing).unwrap_err();
        assert!(matches!(err, AuthConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("no-such-file"));

        let err = load("[[keys]\nid = ").unwrap_err();
        assert!(matches!(err, AuthConfigError::Parse { .. }), "{err}");

        // A plaintext key put where it does not belong is not quoted back.
        let err =
            load("[[keys]]\nid = \"a\"\nrole = \"admin\"\nkey = \"pk_live_SECRET\"\n").unwrap_err();
        assert!(
            matches!(err, AuthConfigError::Parse { line: 4, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("SECRET"), "{err}");

        let err = load("[[keys]]\nid = \"a\"\nrole = \"admin\"\nsha256 = \"pk_live_SECRET\"\n")
            .unwrap_err();
        assert!(matches!(err, AuthConfigError::BadHash { .. }), "{err}");
        assert!(!err.to_string().contains("SECRET"), "{err}");
        let short = format!(
            "[[keys]]\nid = \"a\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            &sha256_hex("k")[..62]
        );
        assert!(matches!(
            load(&short).unwrap_err(),
            AuthConfigError::BadHash { .. }
        ));

        let err = load(&row("a", "root", "k")).unwrap_err();
        assert!(matches!(err, AuthConfigError::UnknownRole { .. }), "{err}");
        assert!(matches!(
            load(&row("a", "Admin", "k")).unwrap_err(),
            AuthConfigError::UnknownRole { .. }
        ));

        let err =
            load(&[row("a", "admin", "k1"), row("a", "operator", "k2")].concat()).unwrap_err();
        assert!(matches!(err, AuthConfigError::DuplicateId { .. }), "{err}");

        let err = load(&[row("a", "admin", "k"), row("b", "operator", "k")].concat()).unwrap_err();
        assert!(
            matches!(err, AuthConfigError::DuplicateHash { .. }),
            "{err}"
        );

        let err = load(&row("has space", "admin", "k")).unwrap_err();
        assert!(matches!(err, AuthConfigError::BadId { .. }), "{err}");

        for empty in ["", "# nothing\n", "keys = []\n"] {
            let err = load(empty).unwrap_err();
            assert!(matches!(err, AuthConfigError::NoKeys { .. }), "{err}");
        }
    }

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn keys_may_carry_their_own_budget() {
        let content = format!(
            "{}{}rate_per_second = 50\nburst = 7\n{}burst = 9\n",
            row("op-1", "operator", "key-op"),
            row("svc-1", "service", "key-svc"),
            row("adm-1", "admin", "key-adm"),
        );
        let keys = load(&content).unwrap();
        let limits = RateLimiters::new(&keys, limit(200, 400));
        assert_eq!(limits.limit_of("op-1"), Some(limit(200, 400)));
        assert_eq!(limits.limit_of("svc-1"), Some(limit(50, 7)));
        assert_eq!(limits.limit_of("adm-1"), Some(limit(200, 9)));
        assert_eq!(limits.limit_of("nobody"), None);

        let zero = format!("{}burst = 0\n", row("op-1", "operator", "key-op"));
        let err = load(&zero).unwrap_err();
        assert!(matches!(err, AuthConfigError::BadRateLimit { .. }), "{err}");
        let zero = format!("{}rate_per_second = 0\n", row("op-1", "operator", "key-op"));
        assert!(matches!(
            load(&zero).unwrap_err(),
            AuthConfigError::BadRateLimit { .. }
        ));
    }

    #[test]
    fn a_spent_budget_refuses_with_a_delay_and_spares_other_keys() {
        let limits = RateLimiters::new(&keys(), limit(1, 3));
        for _ in 0..3 {
            assert_eq!(limits.check("op-1"), Ok(()));
        }
        let wait = limits.check("op-1").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another key has its own budget.
        assert_eq!(limits.check("adm-1"), Ok(()));
        // An id without a budget is not limited (every authenticated id has one).
        assert_eq!(limits.check("nobody"), Ok(()));
    }

    #[tokio::test]
    async fn the_layer_refuses_a_caller_over_its_budget_after_authenticating() {
        let keys = keys();
        let limits = Arc::new(RateLimiters::new(&keys, limit(1, 2)));
        let service = AuthLayer::new(keys)
            .with_rate_limits(limits)
            .layer(echo_caller());
        let call = |path: &'static str, auth: Option<&'static str>| {
            let service = service.clone();
            async move {
                let mut request = http::Request::builder().method("POST").uri(path);
                if let Some(a) = auth {
                    request = request.header("authorization", a);
                }
                service
                    .oneshot(request.body(Body::default()).unwrap())
                    .await
                    .unwrap()
            }
        };
        // Unauthenticated calls spend nobody's budget.
        for _ in 0..5 {
            let response = call(PROCESS, Some("Bearer key-wrong")).await;
            assert_eq!(grpc_status(&response), Some("16"));
        }
        for _ in 0..2 {
            let response = call(PROCESS, Some("Bearer key-op")).await;
            assert_eq!(caller(&response), Some("op-1/operator"));
        }
        let response = call(PROCESS, Some("Bearer key-op")).await;
        assert_eq!(grpc_status(&response), Some("8"));
        assert_eq!(caller(&response), None);
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "RATE_LIMITED");
        let delay = details.retry_info().unwrap().retry_delay.unwrap();
        assert!(delay > Duration::ZERO, "{delay:?}");
        assert!(!status.message().contains("key-op"), "{}", status.message());
        // Another caller is served at once; health is never limited.
        let response = call(PAUSE, Some("Bearer key-adm")).await;
        assert_eq!(caller(&response), Some("adm-1/admin"));
        let response = call("/grpc.health.v1.Health/Check", Some("Bearer key-op")).await;
        assert_eq!(grpc_status(&response), None);
    }

    #[test]
    fn dev_keys_cover_every_role_and_authenticate() {
        let (keys, dev) = KeyStore::generate_dev();
        assert_eq!(dev.len(), 4);
        for d in &dev {
            assert_eq!(d.id, format!("dev-{}", d.role));
            assert!(d.key.starts_with("pk_dev_"));
            assert_eq!(d.key.len(), "pk_dev_".len() + 64);
            assert_eq!(
                keys.authenticate(&d.key),
                Some(Caller {
                    id: d.id.clone(),
                    role: d.role
                })
            );
            assert!(!format!("{d:?}").contains(&d.key));
        }
        let (_, again) = KeyStore::generate_dev();
        assert_ne!(dev[0].key, again[0].key);
    }

    #[test]
    fn the_role_table() {
        use Role::*;
        use Rpc::*;
        let table: [(Rpc, &[Role]); 11] = [
            (ProcessPayment, &[Operator, Reviewer, Admin]),
            (GetOrder, &[Operator, Reviewer, Service, Admin]),
            (WatchOrder, &[Operator, Reviewer, Service, Admin]),
            (WatchEvents, &[Service, Admin]),
            (RefundPayment, &[Reviewer, Admin]),
            (ListManualReviews, &[Reviewer, Admin]),
            (ResolveManualReview, &[Reviewer, Admin]),
            (PausePayments, &[Admin]),
            (ResumePayments, &[Admin]),
            (GetPaymentsStatus, &[Operator, Reviewer, Service, Admin]),
            (GetCaller, &[Operator, Reviewer, Service, Admin]),
        ];
        for (rpc, roles) in table {
            for role in Role::ALL {
                assert_eq!(allowed(role, rpc), roles.contains(&role), "{role} {rpc}");
            }
        }
        assert!(Rpc::ALL.into_iter().all(|rpc| allowed(Admin, rpc)));
    }

    #[test]
    fn rpcs_from_paths() {
        for rpc in Rpc::ALL {
            assert_eq!(Rpc::from_path(&rpc.path()), Some(rpc));
            assert_eq!(
                Rpc::from_path(&format!("/payments.v1.PaymentCoordinator/{rpc}")),
                Some(rpc)
            );
        }
        assert_eq!(
            Rpc::from_path("/payments.v1.PaymentCoordinator/ProcessPayment"),
            Some(Rpc::ProcessPayment)
        );
        for unknown in [
            "",
            "/",
            "/payments.v1.PaymentCoordinator/",
            "/payments.v1.PaymentCoordinator/Nope",
            "/payments.v1.PaymentCoordinator/processpayment",
            "/payments.v2.PaymentCoordinator/ProcessPayment",
            "/grpc.health.v1.Health/Check",
            "payments.v1.PaymentCoordinator/ProcessPayment",
        ] {
            assert_eq!(Rpc::from_path(unknown), None, "{unknown}");
        }
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("ADMIN".parse::<Role>().is_err());
    }

    /// An inner service answering 200 with the caller's id in `x-caller`, if any.
    fn echo_caller() -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|req: http::Request<Body>| async move {
            let mut response = http::Response::new(Body::default());
            if let Some(caller) = req.extensions().get::<Caller>() {
                let value = format!("{}/{}", caller.id, caller.role);
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    response.headers_mut().insert("x-caller", v);
                }
            }
            Ok::<_, Infallible>(response)
        })
    }

    fn keys() -> Arc<KeyStore> {
        Arc::new(
            KeyStore::from_keys([
                ("op-1".to_owned(), Role::Operator, "key-op"),
                ("adm-1".to_owned(), Role::Admin, "key-adm"),
            ])
            .unwrap(),
        )
    }

    async fn call(path: &str, authorization: Option<&str>) -> http::Response<Body> {
        let service = AuthLayer::new(keys()).layer(echo_caller());
        let mut request = http::Request::builder().method("POST").uri(path);
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        service
            .oneshot(request.body(Body::default()).unwrap())
            .await
            .unwrap()
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    fn caller(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("x-caller")
            .and_then(|v| v.to_str().ok())
    }

    const PROCESS: &str = "/payments.v1.PaymentCoordinator/ProcessPayment";
    const PAUSE: &str = "/payments.v1.PaymentCoordinator/PausePayments";

    #[tokio::test]
    async fn the_layer_refuses_missing_and_unknown_keys() {
        for auth in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic key-op"),
            Some("key-op"),
            Some("Bearer key-wrong"),
        ] {
            let response = call(PROCESS, auth).await;
            assert_eq!(grpc_status(&response), Some("16"), "{auth:?}");
            assert_eq!(caller(&response), None);
            let status = tonic::Status::from_header_map(response.headers()).unwrap();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains("key-"), "{}", status.message());
        }
    }

    #[tokio::test]
    async fn the_layer_refuses_a_role_that_may_not_call() {
        let response = call(PAUSE, Some("Bearer key-op")).await;
        assert_eq!(grpc_status(&response), Some("7"));
        assert_eq!(caller(&response), None);
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        use tonic_types::StatusExt;
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "FORBIDDEN");
    }

    #[tokio::test]
    async fn the_layer_lets_the_caller_through_with_its_identity() {
        let response = call(PROCESS, Some("Bearer key-op")).await;
        assert_eq!(grpc_status(&response), None);
        assert_eq!(caller(&response), Some("op-1/operator"));
        let response = call(PAUSE, Some("bearer   key-adm")).await;
        assert_eq!(caller(&response), Some("adm-1/admin"));
        let response = call(PAUSE, Some("BEARER key-adm")).await;
        assert_eq!(caller(&response), Some("adm-1/admin"));
        // An unknown method still needs a key; tonic then answers UNIMPLEMENTED.
        let response = call("/payments.v1.PaymentCoordinator/Nope", None).await;
        assert_eq!(grpc_status(&response), Some("16"));
        let response = call(
            "/payments.v1.PaymentCoordinator/Nope",
            Some("Bearer key-op"),
        )
        .await;
        assert_eq!(caller(&response), Some("op-1/operator"));
    }

    #[tokio::test]
    async fn health_and_reflection_pass_without_a_key() {
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            let response = call(path, None).await;
            assert_eq!(grpc_status(&response), None, "{path}");
            assert_eq!(caller(&response), None);
        }
        // Even with a key, nothing is inserted for them.
        let response = call("/grpc.health.v1.Health/Check", Some("Bearer key-op")).await;
        assert_eq!(caller(&response), None);
    }

    /// Through a real tonic server and client: the layer fits `Server::builder().layer(...)`.
    #[tokio::test]
    async fn the_layer_guards_a_real_server() {
        use payments_proto::v1::{
            GetPaymentsStatusRequest, payment_coordinator_client::PaymentCoordinatorClient,
        };

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Only health is served, so an authorised coordinator call ends in UNIMPLEMENTED: this
        // test does not depend on the handlers.
        let (_health, health_service) = tonic_health::server::health_reporter();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(AuthLayer::new(keys()))
                .add_service(health_service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown.clone().cancelled_owned(),
                ),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = PaymentCoordinatorClient::new(channel.clone());

        let status = client
            .get_payments_status(GetPaymentsStatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        use tonic_types::StatusExt;
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "UNAUTHENTICATED");

        let mut request = tonic::Request::new(GetPaymentsStatusRequest {});
        request
            .metadata_mut()
            .insert("authorization", "Bearer key-op".parse().unwrap());
        let status = client.get_payments_status(request).await.unwrap_err();
        // Past the layer: the router answers.
        assert_eq!(status.code(), tonic::Code::Unimplemented);

        let mut request =
            tonic::Request::new(payments_proto::v1::PausePaymentsRequest { reason: "x".into() });
        request
            .metadata_mut()
            .insert("authorization", "Bearer key-op".parse().unwrap());
        let status = client.pause_payments(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);

        let mut health_client = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = health_client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            reply.into_inner().status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
