//! Stripe's idempotency keys: the first executed request's answer is saved under its key and
//! replayed to any repeat with the same method, path and parameters, for `window` (24 h) after
//! the key was first seen. Pure logic; the caller passes the time and holds the lock.
//!
//! A key is *claimed* (in flight) from the moment its request is accepted until its answer is
//! saved; repeats in that time get 409. A claim whose request dies before answering (client
//! gone during a hang) is *released*, so the key does not stay "in use" forever. Claims carry a
//! token so that a late release or completion from an expired, replaced claim is a no-op.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::reply::Reply;

#[derive(Clone, Debug, PartialEq, Eq)]
enum EntryState {
    InFlight,
    Done(Reply),
}

#[derive(Clone, Debug)]
struct Entry {
    fingerprint: String,
    first_seen: SystemTime,
    token: u64,
    state: EntryState,
}

/// The outcome of presenting a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// New (or expired) key: the request runs; finish with `complete` or `release`.
    Claimed(Claim),
    /// Same request already answered: send this answer again.
    Replay(Reply),
    /// The first request with this key is still running.
    InUse,
    /// The key was first used with another method, path or parameters.
    Mismatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    token: u64,
}

/// Idempotency keys held by running requests, and keys with a saved answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStats {
    pub in_flight: usize,
    pub saved: usize,
}

pub struct IdempotencyStore {
    window: Duration,
    entries: HashMap<String, Entry>,
    /// Keys in the order they were first seen, for pruning expired entries in amortised O(1).
    by_age: VecDeque<(SystemTime, String, u64)>,
    next_token: u64,
}

impl IdempotencyStore {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            entries: HashMap::new(),
            by_age: VecDeque::new(),
            next_token: 0,
        }
    }

    fn expired(&self, first_seen: SystemTime, now: SystemTime) -> bool {
        // A clock that went backwards never expires anything.
        now.duration_since(first_seen)
            .is_ok_and(|age| age >= self.window)
    }

    fn prune(&mut self, now: SystemTime) {
        while let Some((first_seen, _, _)) = self.by_age.front() {
            if !self.expired(*first_seen, now) {
                break;
            }
            if let Some((_, key, token)) = self.by_age.pop_front()
                && self.entries.get(&key).is_some_and(|e| e.token == token)
            {
                self.entries.remove(&key);
            }
        }
    }

    pub fn begin(&mut self, key: &str, fingerprint: &str, now: SystemTime) -> Begin {
        self.prune(now);
        if let Some(entry) = self.entries.get(key)
            && !self.expired(entry.first_seen, now)
        {
            return match &entry.state {
                EntryState::InFlight => Begin::InUse,
                EntryState::Done(_) if entry.fingerprint != fingerprint => Begin::Mismatch,
                EntryState::Done(reply) => Begin::Replay(reply.clone()),
            };
        }
        let token = self.next_token;
        self.next_token += 1;
        self.entries.insert(
            key.to_owned(),
            Entry {
                fingerprint: fingerprint.to_owned(),
                first_seen: now,
                token,
                state: EntryState::InFlight,
            },
        );
        self.by_age.push_back((now, key.to_owned(), token));
        Begin::Claimed(Claim { token })
    }

    /// Saves the claimed request's answer. False if the claim is no longer current.
    pub fn complete(&mut self, key: &str, claim: Claim, reply: Reply) -> bool {
        match self.entries.get_mut(key) {
            Some(entry) if entry.token == claim.token && entry.state == EntryState::InFlight => {
                entry.state = EntryState::Done(reply);
                true
            }
            _ => false,
        }
    }

    /// Forgets a claim whose request ended without an answer to save.
    pub fn release(&mut self, key: &str, claim: Claim) {
        if self
            .entries
            .get(key)
            .is_some_and(|e| e.token == claim.token && e.state == EntryState::InFlight)
        {
            self.entries.remove(key);
        }
    }

    pub fn stats(&self) -> KeyStats {
        let in_flight = self
            .entries
            .values()
            .filter(|e| e.state == EntryState::InFlight)
            .count();
        KeyStats {
            in_flight,
            saved: self.entries.len() - in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const DAY: Duration = Duration::from_secs(86_400);

    fn reply(text: &'static str) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: bytes::Bytes::from_static(text.as_bytes()),
        }
    }

    fn claim(store: &mut IdempotencyStore, key: &str, fp: &str, now: SystemTime) -> Claim {
        match store.begin(key, fp, now) {
            Begin::Claimed(claim) => claim,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    #[test]
    fn same_request_is_replayed_other_request_refused() {
        let t0 = SystemTime::UNIX_EPOCH + DAY;
        let mut store = IdempotencyStore::new(DAY);
        let c = claim(&mut store, "k", "POST /a x=1", t0);
        assert!(store.complete("k", c, reply("first")));
        assert_eq!(
            store.begin("k", "POST /a x=1", t0),
            Begin::Replay(reply("first"))
        );
        assert_eq!(store.begin("k", "POST /a x=2", t0), Begin::Mismatch);
        assert_eq!(store.begin("k", "POST /b x=1", t0), Begin::Mismatch);
        // Keys are independent.
        assert!(matches!(
            store.begin("other", "POST /a x=1", t0),
            Begin::Claimed(_)
        ));
    }

    #[test]
    fn running_request_holds_the_key() {
        let t0 = SystemTime::UNIX_EPOCH + DAY;
        let mut store = IdempotencyStore::new(DAY);
        let _c = claim(&mut store, "k", "fp", t0);
        assert_eq!(store.begin("k", "fp", t0), Begin::InUse);
        assert_eq!(store.begin("k", "other", t0), Begin::InUse);
        assert_eq!(
            store.stats(),
            KeyStats {
                in_flight: 1,
                saved: 0
            }
        );
    }

    #[test]
    fn released_key_is_new_again() {
        let t0 = SystemTime::UNIX_EPOCH + DAY;
        let mut store = IdempotencyStore::new(DAY);
        let c = claim(&mut store, "k", "fp", t0);
        store.release("k", c);
        assert_eq!(store.stats(), KeyStats::default());
        let c2 = claim(&mut store, "k", "fp2", t0);
        // A stale release (old token) does not touch the new claim.
        store.release("k", c);
        assert_eq!(store.begin("k", "fp2", t0), Begin::InUse);
        assert!(store.complete("k", c2, reply("b")));
        // Release after completion keeps the saved answer.
        store.release("k", c2);
        assert_eq!(store.begin("k", "fp2", t0), Begin::Replay(reply("b")));
    }

    #[test]
    fn keys_expire_after_the_window() {
        let t0 = SystemTime::UNIX_EPOCH + DAY;
        let mut store = IdempotencyStore::new(DAY);
        let c = claim(&mut store, "k", "fp", t0);
        assert!(store.complete("k", c, reply("a")));
        let just_before = t0 + DAY - Duration::from_secs(1);
        assert_eq!(
            store.begin("k", "fp", just_before),
            Begin::Replay(reply("a"))
        );
        // At 24 h the key is forgotten: the same request is brand new.
        let c2 = claim(&mut store, "k", "fp", t0 + DAY);
        assert_ne!(c, c2);
        // The expired claim's token can no longer complete anything.
        assert!(!store.complete("k", c, reply("late")));
        assert!(store.complete("k", c2, reply("b")));
        assert_eq!(store.begin("k", "fp", t0 + DAY), Begin::Replay(reply("b")));
    }

    #[test]
    fn pruning_drops_old_entries() {
        let t0 = SystemTime::UNIX_EPOCH + DAY;
        let mut store = IdempotencyStore::new(DAY);
        for i in 0..10 {
            let key = format!("k{i}");
            let c = claim(&mut store, &key, "fp", t0);
            store.complete(&key, c, reply("x"));
        }
        assert_eq!(store.stats().saved, 10);
        let _ = claim(&mut store, "fresh", "fp", t0 + DAY);
        assert_eq!(
            store.stats(),
            KeyStats {
                in_flight: 1,
                saved: 0
            }
        );
        assert_eq!(store.by_age.len(), 1);
    }

    #[test]
    fn a_backwards_clock_expires_nothing() {
        let t0 = SystemTime::UNIX_EPOCH + DAY;
        let mut store = IdempotencyStore::new(DAY);
        let c = claim(&mut store, "k", "fp", t0);
        store.complete("k", c, reply("a"));
        assert_eq!(
            store.begin("k", "fp", t0 - Duration::from_secs(5)),
            Begin::Replay(reply("a"))
        );
    }
}
