//! Per-order leases in Redis: an early, cheap refusal of a second concurrent attempt.
//!
//! A lease only spares PostgreSQL (and the caller) a round trip when another replica is already
//! working on the order, and tells the caller who holds it. It is never trusted for correctness
//! (CONTRACT §1.5): a lease can expire while its holder is paused, Redis can fail over and forget
//! it, a partitioned replica can still believe it holds one. What guarantees "at most one attempt in
//! flight" and "no stale overwrite" is the order's fence in PostgreSQL (`store::Store::begin_attempt`
//! and the fenced writes). So every operation here is best effort, and every write is a
//! compare-and-set on the exact value this holder stored (with a random nonce), so that a holder
//! whose lease expired can never touch, extend or delete the lease of whoever took the order next.

use std::time::Duration;

use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use crate::telemetry::TRACE_ONLY;

/// Who holds (or held) an order's lease; stored as JSON in the lease's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    pub replica: String,
    pub operator_id: String,
    pub started_at_ms: i64,
    /// The attempt number once the attempt is committed in PostgreSQL.
    pub attempt: Option<i32>,
    /// The holder's own idempotency key (scoped by `operator_id`), so that a caller meeting a
    /// lease can tell its own concurrent request (to be joined) from somebody else's (refused).
    /// `None` in leases written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
}

impl LeaseHolder {
    /// What `Busy` reports when the stored value cannot be read (another version, or garbage).
    fn unknown() -> LeaseHolder {
        LeaseHolder {
            replica: "unknown".to_owned(),
            operator_id: "unknown".to_owned(),
            started_at_ms: 0,
            attempt: None,
            request_key: None,
        }
    }
}

/// The stored value: the holder plus a nonce that makes it unique to this acquisition.
#[derive(Serialize, Deserialize)]
struct StoredValue {
    #[serde(flatten)]
    holder: LeaseHolder,
    nonce: String,
}

/// A lease this process holds (or held: it may have expired since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub order_id: String,
    /// The exact stored value: every compare-and-set compares against it.
    pub value: String,
    pub holder: LeaseHolder,
    nonce: String,
}

/// The answer of `acquire`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    Held(Lease),
    /// Someone else holds it: the current holder, read in the same round trip.
    Busy(LeaseHolder),
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("lease value: {0}")]
    Encode(#[from] serde_json::Error),
}

// KEYS[1] = the lease key; ARGV[1] = the value we stored.
const SET_IF_OURS: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#;
const PEXPIRE_IF_OURS: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;
const DELETE_IF_OURS: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The order leases of every replica, in one Redis.
#[derive(Clone)]
pub struct Leases {
    connection: ConnectionManager,
    prefix: String,
    ttl: Duration,
    set_if_ours: Script,
    pexpire_if_ours: Script,
    delete_if_ours: Script,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Leases {
    /// Connects to Redis (a `/N` database number in the URL is honoured). `prefix` namespaces the
    /// keys; `ttl` is each lease's time to live (the holder renews well before it runs out).
    ///
    /// Only a malformed URL is an error. Redis being unreachable at start-up is not: leases are an
    /// early refusal, never what correctness rests on (PostgreSQL's row lock and fence are), so the
    /// replica starts anyway, every lease operation fails (and falls back to PostgreSQL alone)
    /// until Redis answers, and the connection is established on the first request after that.
    pub async fn connect(
        redis_url: &str,
        prefix: &str,
        ttl: Duration,
    ) -> Result<Leases, LeaseError> {
        let client = redis::Client::open(redis_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let connection =
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "Redis unreachable at start-up: starting without leases (PostgreSQL alone \
                         decides) until it answers"
                    );
                    ConnectionManager::new_lazy_with_config(client, config)?
                }
            };
        Ok(Leases {
            connection,
            prefix: prefix.to_owned(),
            ttl,
            set_if_ours: Script::new(SET_IF_OURS),
            pexpire_if_ours: Script::new(PEXPIRE_IF_OURS),
            delete_if_ours: Script::new(DELETE_IF_OURS),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The Redis key of an order's lease.
    pub fn key(&self, order_id: &str) -> String {
        format!("{}lease:order:{order_id}", self.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Takes the order's lease, or says who holds it, in ONE round trip:
    /// `SET key value NX PX ttl GET` (Redis ≥ 7.0): nil means we set it; a value means it was
    /// already there and is left untouched.
    #[tracing::instrument(
        name = "lease.acquire",
        target = TRACE_ONLY,
        skip_all,
        fields(otel.kind = "client", db.system.name = "redis", order_id = %order_id)
    )]
    pub async fn acquire(
        &self,
        order_id: &str,
        holder: LeaseHolder,
    ) -> Result<Acquire, LeaseError> {
        let nonce = new_nonce();
        let value = serde_json::to_string(&StoredValue {
            holder: holder.clone(),
            nonce: nonce.clone(),
        })?;
        let previous: Option<String> = redis::cmd("SET")
            .arg(self.key(order_id))
            .arg(&value)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .arg("GET")
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(match previous {
            None => Acquire::Held(Lease {
                order_id: order_id.to_owned(),
                value,
                holder,
                nonce,
            }),
            Some(current) => Acquire::Busy(
                serde_json::from_str::<StoredValue>(&current)
                    .map(|stored| stored.holder)
                    .unwrap_or_else(|_| LeaseHolder::unknown()),
            ),
        })
    }

    /// Records the attempt number in the lease (so `Busy` can name it), and renews it; `false` if
    /// the lease is no longer ours (then `lease` is left unchanged).
    #[tracing::instrument(
        name = "lease.set_attempt",
        target = TRACE_ONLY,
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "redis",
            order_id = %lease.order_id,
            attempt = attempt,
        )
    )]
    pub async fn set_attempt(&self, lease: &mut Lease, attempt: i32) -> Result<bool, LeaseError> {
        let mut holder = lease.holder.clone();
        holder.attempt = Some(attempt);
        let value = serde_json::to_string(&StoredValue {
            holder: holder.clone(),
            nonce: lease.nonce.clone(),
        })?;
        let set: i64 = self
            .set_if_ours
            .key(self.key(&lease.order_id))
            .arg(&lease.value)
            .arg(&value)
            .arg(self.ttl_ms())
            .invoke_async(&mut self.connection.clone())
            .await?;
        if set == 1 {
            lease.value = value;
            lease.holder = holder;
        }
        Ok(set == 1)
    }

    /// Extends the lease by a full TTL if it is still ours.
    #[tracing::instrument(
        name = "lease.renew",
        target = TRACE_ONLY,
        skip_all,
        fields(otel.kind = "client", db.system.name = "redis", order_id = %lease.order_id)
    )]
    pub async fn renew(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let renewed: i64 = self
            .pexpire_if_ours
            .key(self.key(&lease.order_id))
            .arg(&lease.value)
            .arg(self.ttl_ms())
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(renewed == 1)
    }

    /// Deletes the lease if it is still ours; never deletes another holder's lease.
    #[tracing::instrument(
        name = "lease.release",
        target = TRACE_ONLY,
        skip_all,
        fields(otel.kind = "client", db.system.name = "redis", order_id = %lease.order_id)
    )]
    pub async fn release(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let deleted: i64 = self
            .delete_if_ours
            .key(self.key(&lease.order_id))
            .arg(&lease.value)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(deleted == 1)
    }

    /// Whether Redis answers now (for health and metrics).
    pub async fn ping(&self) -> bool {
        let mut connection = self.connection.clone();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut connection).await;
        pong.is_ok()
    }

    /// The current holder of an order's lease, if any (read only).
    pub async fn holder(&self, order_id: &str) -> Result<Option<LeaseHolder>, LeaseError> {
        let value: Option<String> = self.connection.clone().get(self.key(order_id)).await?;
        Ok(value.map(|v| {
            serde_json::from_str::<StoredValue>(&v)
                .map(|stored| stored.holder)
                .unwrap_or_else(|_| LeaseHolder::unknown())
        }))
    }
}

fn new_nonce() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}
