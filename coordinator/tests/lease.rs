//! Order leases against a real Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`). Each test
//! uses its own random key prefix and deletes its keys at the end.

use std::time::{Duration, Instant};

use coordinator::lease::{Acquire, Lease, LeaseHolder, Leases};
use rand::Rng;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

struct TestRedis {
    prefix: String,
    raw: MultiplexedConnection,
}

impl TestRedis {
    async fn new() -> TestRedis {
        let suffix: u64 = rand::rng().random();
        let client = redis::Client::open(redis_url()).expect("redis url");
        TestRedis {
            prefix: format!("lease_test_{suffix:016x}:"),
            raw: client
                .get_multiplexed_async_connection()
                .await
                .expect("redis"),
        }
    }

    async fn leases(&self, ttl: Duration) -> Leases {
        Leases::connect(&redis_url(), &self.prefix, ttl)
            .await
            .expect("connect")
    }

    fn key(&self, order_id: &str) -> String {
        format!("{}lease:order:{order_id}", self.prefix)
    }

    async fn get(&self, order_id: &str) -> Option<String> {
        self.raw.clone().get(self.key(order_id)).await.expect("GET")
    }

    async fn pttl(&self, order_id: &str) -> i64 {
        self.raw
            .clone()
            .pttl(self.key(order_id))
            .await
            .expect("PTTL")
    }

    /// Polls until the key is gone (it expires), within a bound.
    async fn until_gone(&self, order_id: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let exists: bool = self
                .raw
                .clone()
                .exists(self.key(order_id))
                .await
                .expect("EXISTS");
            if !exists {
                return;
            }
            assert!(Instant::now() < deadline, "the lease never expired");
            // Poll the state at a short interval; the expiry itself is what is awaited.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn cleanup(&self) {
        let mut raw = self.raw.clone();
        let keys: Vec<String> = raw.keys(format!("{}*", self.prefix)).await.expect("KEYS");
        if !keys.is_empty() {
            let _: i64 = raw.del(keys).await.expect("DEL");
        }
    }
}

fn holder(replica: &str, operator: &str) -> LeaseHolder {
    LeaseHolder {
        replica: replica.to_owned(),
        operator_id: operator.to_owned(),
        started_at_ms: 1_700_000_000_000,
        attempt: None,
        request_key: Some(format!("key-of-{operator}")),
    }
}

async fn held(leases: &Leases, order_id: &str, who: LeaseHolder) -> Lease {
    match leases.acquire(order_id, who).await.expect("acquire") {
        Acquire::Held(lease) => lease,
        Acquire::Busy(holder) => panic!("busy: held by {holder:?}"),
    }
}

#[tokio::test]
async fn a_second_acquire_is_told_who_holds_the_order() {
    let redis = TestRedis::new().await;
    let leases = redis.leases(Duration::from_secs(10)).await;
    let lease = held(&leases, "o1", holder("replica-a", "alice")).await;
    assert_eq!(lease.order_id, "o1");
    assert_eq!(lease.holder, holder("replica-a", "alice"));
    assert_eq!(redis.get("o1").await.as_deref(), Some(lease.value.as_str()));
    let pttl = redis.pttl("o1").await;
    assert!(pttl > 0 && pttl <= 10_000, "{pttl}");

    assert_eq!(
        leases
            .acquire("o1", holder("replica-b", "bob"))
            .await
            .expect("acquire"),
        Acquire::Busy(holder("replica-a", "alice"))
    );
    // A Busy answer leaves the holder's lease untouched.
    assert_eq!(redis.get("o1").await.as_deref(), Some(lease.value.as_str()));
    // Another order is free.
    held(&leases, "o2", holder("replica-b", "bob")).await;

    assert!(leases.release(&lease).await.expect("release"));
    assert_eq!(redis.get("o1").await, None);
    held(&leases, "o1", holder("replica-b", "bob")).await;
    redis.cleanup().await;
}

#[tokio::test]
async fn an_unreadable_value_is_reported_busy_with_placeholders() {
    let redis = TestRedis::new().await;
    let leases = redis.leases(Duration::from_secs(10)).await;
    let _: () = redis
        .raw
        .clone()
        .set_ex(redis.key("o1"), "not json", 10)
        .await
        .expect("SET");
    let Acquire::Busy(holder) = leases
        .acquire("o1", holder("replica-a", "alice"))
        .await
        .expect("acquire")
    else {
        panic!("expected Busy");
    };
    assert_eq!(holder.replica, "unknown");
    assert_eq!(holder.attempt, None);
    redis.cleanup().await;
}

#[tokio::test]
async fn a_stale_lease_never_touches_the_next_holders_lease() {
    let redis = TestRedis::new().await;
    let short = redis.leases(Duration::from_millis(50)).await;
    let normal = redis.leases(Duration::from_secs(10)).await;

    let mut stale = held(&short, "o1", holder("replica-a", "alice")).await;
    redis.until_gone("o1").await;
    let current = held(&normal, "o1", holder("replica-b", "bob")).await;
    assert_ne!(stale.value, current.value);

    assert!(!short.release(&stale).await.expect("release"));
    assert!(!short.renew(&stale).await.expect("renew"));
    assert!(!short.set_attempt(&mut stale, 7).await.expect("set_attempt"));
    assert_eq!(stale.holder.attempt, None);
    assert_eq!(
        redis.get("o1").await.as_deref(),
        Some(current.value.as_str())
    );
    assert!(redis.pttl("o1").await > 1_000);
    assert_eq!(
        normal
            .acquire("o1", holder("replica-c", "carol"))
            .await
            .expect("acquire"),
        Acquire::Busy(holder("replica-b", "bob"))
    );

    assert!(normal.release(&current).await.expect("release"));
    assert_eq!(redis.get("o1").await, None);
    redis.cleanup().await;
}

#[tokio::test]
async fn renew_extends_the_lease() {
    let redis = TestRedis::new().await;
    let leases = redis.leases(Duration::from_secs(10)).await;
    assert_eq!(leases.ttl(), Duration::from_secs(10));
    let lease = held(&leases, "o1", holder("replica-a", "alice")).await;
    // Let it nearly run out, then renew.
    let _: bool = redis
        .raw
        .clone()
        .pexpire(redis.key("o1"), 1_000)
        .await
        .expect("PEXPIRE");
    assert!(redis.pttl("o1").await <= 1_000);
    assert!(leases.renew(&lease).await.expect("renew"));
    let pttl = redis.pttl("o1").await;
    assert!(pttl > 1_000 && pttl <= 10_000, "{pttl}");
    assert_eq!(redis.get("o1").await.as_deref(), Some(lease.value.as_str()));
    assert!(leases.release(&lease).await.expect("release"));
    assert!(!leases.renew(&lease).await.expect("renew"));
    redis.cleanup().await;
}

#[tokio::test]
async fn set_attempt_names_the_attempt_to_later_callers() {
    let redis = TestRedis::new().await;
    let leases = redis.leases(Duration::from_secs(10)).await;
    let mut lease = held(&leases, "o1", holder("replica-a", "alice")).await;
    let before = lease.value.clone();
    assert!(
        leases
            .set_attempt(&mut lease, 3)
            .await
            .expect("set_attempt")
    );
    assert_eq!(lease.holder.attempt, Some(3));
    assert_ne!(lease.value, before);
    assert_eq!(redis.get("o1").await.as_deref(), Some(lease.value.as_str()));
    assert!(redis.pttl("o1").await > 1_000);

    let Acquire::Busy(seen) = leases
        .acquire("o1", holder("replica-b", "bob"))
        .await
        .expect("acquire")
    else {
        panic!("expected Busy");
    };
    assert_eq!(seen.attempt, Some(3));
    assert_eq!(seen.operator_id, "alice");

    // The updated lease is still ours (same nonce): renew and release work with it.
    assert!(leases.renew(&lease).await.expect("renew"));
    assert!(leases.release(&lease).await.expect("release"));
    redis.cleanup().await;
}
