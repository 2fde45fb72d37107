//! The live feed check's subscriber: one `WatchEvents` consumer (a `service` key, the public
//! API) kept through the whole run. Whenever its stream breaks (its replica killed, frozen and
//! woken, PostgreSQL restarted under it) it resumes after the highest position it received, on
//! the next replica, as a real consumer would. It records every position as it arrived, repeats
//! included: it deliberately does not use `payments_client::Follower`, which drops repeats, so
//! that the checker sees exactly what the server sent ([`crate::checker::judge_live`]).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use payments_client::WatchClient;
use tokio::{sync::watch, task::JoinHandle};

use super::progress::say;
use crate::checker::{self, LiveFeed};

/// How long opening one stream may take before the subscriber tries the next replica.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Subscriber {
    log: Arc<Mutex<LiveFeed>>,
    highest: watch::Receiver<i64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    /// Starts following from position 0 on replica `first` (the run's first kill -9 victim, so
    /// that its stream breaks at least once); returns once the first stream is open, or after
    /// `open_bound` with the subscriber still trying (it replays what it missed once in).
    pub async fn start(
        mut clients: Vec<WatchClient>,
        first: usize,
        open_bound: Duration,
    ) -> Option<Subscriber> {
        if clients.is_empty() {
            return None;
        }
        let first = first % clients.len();
        clients.rotate_left(first);
        let log = Arc::new(Mutex::new(LiveFeed::default()));
        let (highest_tx, highest) = watch::channel(0i64);
        let (stop, stop_rx) = watch::channel(false);
        let (opened_tx, mut opened) = watch::channel(0u64);
        let task = tokio::spawn(follow(clients, log.clone(), highest_tx, stop_rx, opened_tx));
        if tokio::time::timeout(open_bound, opened.wait_for(|n| *n > 0))
            .await
            .is_err()
        {
            say("the live feed subscriber could not open its stream yet; it keeps trying");
        }
        Some(Subscriber {
            log,
            highest,
            stop,
            task,
        })
    }

    /// The highest position received so far.
    pub fn highest(&self) -> i64 {
        *self.highest.borrow()
    }

    /// Waits (at most `bound`) until the subscriber has received up to the feed's highest
    /// stamped position, read again after each catch-up in case it moved; then stops it.
    /// Returns what it received and the position it is judged against.
    pub async fn finish(
        mut self,
        database_url: &str,
        bound: Duration,
    ) -> anyhow::Result<(LiveFeed, i64)> {
        let give_up = tokio::time::Instant::now() + bound;
        let mut max = checker::feed_max_position(database_url).await?;
        loop {
            let reached = tokio::time::timeout_at(give_up, self.highest.wait_for(|h| *h >= max))
                .await
                .is_ok_and(|r| r.is_ok());
            let now = checker::feed_max_position(database_url).await?;
            if !reached || now == max {
                break;
            }
            max = now;
        }
        let _ = self.stop.send(true);
        self.task.abort();
        let feed = self
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        Ok((feed, max))
    }
}

fn record(log: &Mutex<LiveFeed>, f: impl FnOnce(&mut LiveFeed)) {
    let mut guard = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut guard);
}

async fn follow(
    clients: Vec<WatchClient>,
    log: Arc<Mutex<LiveFeed>>,
    highest: watch::Sender<i64>,
    mut stop: watch::Receiver<bool>,
    opened: watch::Sender<u64>,
) {
    let mut cursor = 0i64;
    let mut turn = 0usize;
    let mut failures = 0u32;
    let mut told_refusal = false;
    loop {
        let client = &clients[turn % clients.len()];
        let open = tokio::select! {
            _ = stop.changed() => return,
            open = tokio::time::timeout(OPEN_TIMEOUT, client.watch_events(cursor)) => open,
        };
        match open {
            Ok(Ok(mut stream)) => {
                record(&log, |l| l.streams += 1);
                opened.send_modify(|n| *n += 1);
                loop {
                    let message = tokio::select! {
                        biased;
                        _ = stop.changed() => return,
                        message = stream.message() => message,
                    };
                    let Ok(Some(event)) = message else { break };
                    failures = 0;
                    let position = event.global_sequence;
                    record(&log, |l| l.positions.push(position));
                    if position > cursor {
                        cursor = position;
                        highest.send_replace(cursor);
                    }
                }
            }
            Ok(Err(status)) if !payments_client::is_retryable(&status) && !told_refusal => {
                // Not a broken stream but a refusal (a key or role problem): say it once, keep
                // trying (the row will show what was missed).
                told_refusal = true;
                say(&format!(
                    "the live feed subscriber was refused: {:?} {}",
                    status.code(),
                    status.message()
                ));
            }
            _ => {}
        }
        record(&log, |l| l.resumes += 1);
        failures = failures.saturating_add(1);
        turn += 1;
        let pause = Duration::from_millis(50u64.saturating_mul(1 << failures.min(5)).min(1000));
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
