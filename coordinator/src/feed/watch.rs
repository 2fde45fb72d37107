//! One watcher's stream: replay from the table, then the fan-out, with no gap and no duplicate.
//!
//! A watcher holds only its broadcast receiver, its cursor and at most one page of replayed events:
//! no connection and no task of its own. It reads the table (through the store's pool) when it
//! starts, and again only when it fell behind the fan-out (`RecvError::Lagged`) or sees a hole in
//! the positions; a slow consumer therefore never blocks the others nor makes anything grow: the
//! channel overwrites what it did not read, and it catches up from the table. Dropping the stream
//! (a client disconnecting) drops the receiver: nothing is left behind.
//!
//! Before its first read of the table a watcher is admitted (`Shared::try_admit`): a replica with
//! no watcher does not follow the feed (its listener neither listens nor reads), so the first
//! watcher wakes it and waits until it follows again. The listener then publishes every event after
//! a head that the watcher's reads, all made later, reach: no gap at the seam.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_stream::Stream;

use super::{FeedEvent, Inner};
use crate::store::StoreError;

pub(super) type Item = Result<FeedEvent, StoreError>;

/// What a watcher follows, and so what its cursor counts.
pub(super) enum Scope {
    /// Every event; the cursor is the `global_sequence`.
    All,
    /// One order's events; the cursor is the order's `sequence`.
    Order(String),
}

pub(super) struct Watch {
    inner: Arc<Inner>,
    receiver: broadcast::Receiver<Arc<FeedEvent>>,
    scope: Scope,
    /// The position of the last event delivered (or the caller's starting cursor).
    last: i64,
    /// Replayed events not yet delivered (at most one page).
    replayed: VecDeque<FeedEvent>,
    /// Reading the table rather than the fan-out.
    catching_up: bool,
    /// Counted in `Gate::admitted` (until dropped).
    admitted: bool,
    finished: bool,
}

impl Watch {
    /// Subscribes at once, before the first read of the table, so that nothing published after
    /// that read can be missed: whatever the table and the fan-out both hold is skipped by position.
    pub(super) fn new(inner: Arc<Inner>, scope: Scope, after: i64) -> Watch {
        let receiver = match &scope {
            Scope::All => inner.sender.subscribe(),
            Scope::Order(order_id) => inner.shared.subscribe_order(order_id),
        };
        Watch {
            inner,
            receiver,
            scope,
            last: after,
            replayed: VecDeque::new(),
            catching_up: true,
            admitted: false,
            finished: false,
        }
    }

    /// Waits until this watcher may read the table (see the module's docs); `false` at shutdown.
    async fn admit(&mut self) -> bool {
        let shared = &self.inner.shared;
        let mut listening = shared.listening.subscribe();
        loop {
            listening.borrow_and_update();
            if shared.try_admit() {
                self.admitted = true;
                return true;
            }
            shared.demand.notify_one();
            tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => return false,
                changed = listening.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// The event's position in this watcher's scope, `None` if it is not in the scope.
    fn position(&self, event: &FeedEvent) -> Option<i64> {
        match &self.scope {
            Scope::All => Some(event.global_sequence),
            Scope::Order(order_id) => (event.order_id == *order_id).then_some(event.sequence),
        }
    }

    async fn read_page(&self) -> Result<Vec<FeedEvent>, StoreError> {
        let page = self.inner.config.replay_page;
        match &self.scope {
            Scope::All => self.inner.store.events_after(self.last, page).await,
            Scope::Order(order_id) => {
                self.inner
                    .store
                    .order_events_after(order_id, self.last, page)
                    .await
            }
        }
    }

    /// The next event, `None` at shutdown, an error once (then `None`) if the store failed.
    pub(super) async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(event) = self.replayed.pop_front() {
                if let Some(position) = self.position(&event) {
                    self.last = position;
                }
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if self.catching_up {
                if !self.admitted && !self.admit().await {
                    return None;
                }
                let page = tokio::select! {
                    biased;
                    _ = self.inner.shutdown.cancelled() => return None,
                    page = self.read_page() => page,
                };
                match page {
                    Ok(page) => {
                        if (page.len() as i64) < self.inner.config.replay_page {
                            self.catching_up = false;
                        }
                        self.replayed.extend(page);
                    }
                    Err(error) => {
                        self.finished = true;
                        return Some(Err(error));
                    }
                }
                continue;
            }
            let received = tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => return None,
                received = self.receiver.recv() => received,
            };
            match received {
                Ok(event) => match self.position(&event) {
                    None => {}
                    Some(position) if position <= self.last => {}
                    Some(position) if position == self.last + 1 => {
                        self.last = position;
                        return Some(Ok(Arc::unwrap_or_clone(event)));
                    }
                    Some(_) => {
                        // A hole: something was published before this watcher caught up with
                        // the fan-out. The table has it.
                        self.catching_up = true;
                    }
                },
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(
                        skipped,
                        "a feed watcher fell behind; catching up from the table"
                    );
                    self.catching_up = true;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Our receiver must be gone before the count is read: swap it for a detached one.
        let (detached, _) = broadcast::channel(1);
        drop(std::mem::replace(&mut self.receiver, detached.subscribe()));
        let order_id = match &self.scope {
            Scope::Order(order_id) => Some(order_id.as_str()),
            Scope::All => None,
        };
        self.inner.shared.release(order_id, self.admitted);
    }
}

type Step = Pin<Box<dyn Future<Output = Option<(Item, Watch)>> + Send>>;

/// A `Watch` as a `Stream` (what `futures::stream::unfold` would give, without the dependency).
pub(super) struct WatchStream {
    idle: Option<Watch>,
    step: Option<Step>,
}

impl WatchStream {
    pub(super) fn new(watch: Watch) -> WatchStream {
        WatchStream {
            idle: Some(watch),
            step: None,
        }
    }
}

impl Stream for WatchStream {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self.get_mut();
        if this.step.is_none() {
            let Some(mut watch) = this.idle.take() else {
                return Poll::Ready(None);
            };
            this.step = Some(Box::pin(async move {
                let item = watch.next().await?;
                Some((item, watch))
            }));
        }
        let Some(step) = this.step.as_mut() else {
            return Poll::Ready(None);
        };
        match step.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(done) => {
                this.step = None;
                match done {
                    Some((item, watch)) => {
                        this.idle = Some(watch);
                        Poll::Ready(Some(item))
                    }
                    None => Poll::Ready(None),
                }
            }
        }
    }
}
