//! The local outcome journal: where an attempt's outcome goes when PostgreSQL cannot take it
//! (CONTRACT §1.3, no lost outcome), and the drainer that writes it to PostgreSQL later.
//!
//! # Why redb, not a hand-rolled log
//!
//! The journal is one file, `JOURNAL_DIR/outcomes.redb`, a [redb](https://docs.rs/redb) database.
//! redb is a copy-on-write B-tree with checksummed pages and atomic commits: a commit either
//! happened entirely or not at all, a torn write after a crash is detected by the page checksums
//! and rolled back to the last commit on open, and every commit here is `Durability::Immediate`
//! (redb's default, set explicitly): the file is fsync'd before `record` returns. An fsync'd
//! append-only log with per-record checksums would give the same guarantees, but would need its own
//! framing, torn-tail handling, compaction of drained records and directory fsyncs, each a place
//! for a subtle bug in the one component whose job is to never lose anything; redb is
//! well-kept, pure Rust, and lets the drainer delete a record in place by key.
//!
//! # Records
//!
//! Keyed by `(order_id, attempt)`. The value is self-describing JSON: an envelope
//! `{format, version, sha256, payload}` whose `payload` is the record as a JSON string (the
//! fence with its token, the outcome with intent id, decline code and reasons, the actor, the
//! replica and when it was journaled) and `sha256` the hex SHA-256 of that string. A value that
//! does not parse, has an unknown format or version, or whose checksum does not match is
//! **never dropped**: `pending` logs it at error level with its key and moves the raw bytes to the
//! `quarantine` table, where an operator finds them (`quarantined`). The attempt itself is still
//! `IN_FLIGHT` in PostgreSQL, so the recovery worker resolves it from the gateway meanwhile.
//!
//! # Who writes a journaled outcome
//!
//! The attempt's own task first (`Runner::persist`): after a short retry it journals the outcome,
//! then keeps retrying the fenced write while it *holds* the entry ([`Hold`]). During that time the
//! attempt's heartbeat and Redis lease keep being renewed by the same task, so no recovery worker
//! sees a stale holder once PostgreSQL answers, and the order stays `AWAITING_CONFIRMATION`
//! (every replica refuses new attempts). Entries nobody holds (left by a previous process, or by
//! a task that stopped at shutdown, or whose write PostgreSQL refused) are written by the
//! [`Drainer`], every second and at start-up, before the replica's recovery worker starts. Both
//! use the fenced, idempotent `Store::finish_attempt`: `Applied`, or already recorded (an earlier
//! commit whose answer was lost), or `Superseded` (a newer holder took over: what we learnt goes
//! to the attempt's history) remove the entry; an unreachable store keeps it.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::domain::resolution::ReviewCause;
use crate::store::{Fence, Fenced, Finish, Store, StoreError};

/// The journal's file inside `JOURNAL_DIR`.
pub const FILE_NAME: &str = "outcomes.redb";

/// Outcomes waiting for PostgreSQL, by (order id, attempt number).
const OUTCOMES: TableDefinition<(&str, i32), &[u8]> = TableDefinition::new("outcomes");
/// Records that failed to decode, by (order id, attempt number, nanoseconds since the epoch when
/// quarantined): kept byte for byte for an operator.
const QUARANTINE: TableDefinition<(&str, i32, u64), &[u8]> = TableDefinition::new("quarantine");

/// The envelope's `format`.
const FORMAT: &str = "payments.journal.outcome";
/// The envelope's `version`.
const VERSION: u32 = 1;

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("encoding a journal record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("journal task: {0}")]
    Task(String),
}

impl From<redb::DatabaseError> for JournalError {
    fn from(e: redb::DatabaseError) -> Self {
        JournalError::Storage(e.into())
    }
}
impl From<redb::TransactionError> for JournalError {
    fn from(e: redb::TransactionError) -> Self {
        JournalError::Storage(e.into())
    }
}
impl From<redb::TableError> for JournalError {
    fn from(e: redb::TableError) -> Self {
        JournalError::Storage(e.into())
    }
}
impl From<redb::StorageError> for JournalError {
    fn from(e: redb::StorageError) -> Self {
        JournalError::Storage(e.into())
    }
}
impl From<redb::CommitError> for JournalError {
    fn from(e: redb::CommitError) -> Self {
        JournalError::Storage(e.into())
    }
}
impl From<redb::SetDurabilityError> for JournalError {
    fn from(e: redb::SetDurabilityError) -> Self {
        JournalError::Storage(e.into())
    }
}

/// One journaled outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub fence: Fence,
    pub finish: Finish,
    pub actor: String,
    /// The replica that journaled it.
    pub replica: String,
    pub journaled_at: SystemTime,
}

/// A record that could not be decoded: reported, quarantined, never dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptEntry {
    pub order_id: String,
    pub attempt: i32,
    pub reason: String,
    /// The raw value's length in bytes (the bytes themselves are in the quarantine table).
    pub len: usize,
}

/// The envelope stored as the value.
#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    version: u32,
    sha256: String,
    payload: String,
}

/// The payload (version 1).
#[derive(Serialize, Deserialize)]
struct Record {
    order_id: String,
    attempt: i32,
    token: i64,
    finish: JournaledFinish,
    actor: String,
    replica: String,
    journaled_at_unix_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum JournaledFinish {
    Succeeded {
        intent_id: String,
    },
    Declined {
        intent_id: Option<String>,
        decline_code: String,
        message: String,
    },
    Cancelled {
        intent_id: Option<String>,
        reason: String,
    },
    Unknown {
        reason: String,
        /// `ReviewCause::as_str`; absent from entries written before it was recorded.
        #[serde(default)]
        cause: Option<String>,
    },
}

impl From<&Finish> for JournaledFinish {
    fn from(finish: &Finish) -> Self {
        match finish.clone() {
            Finish::Succeeded { intent_id } => JournaledFinish::Succeeded { intent_id },
            Finish::Declined {
                intent_id,
                decline_code,
                message,
            } => JournaledFinish::Declined {
                intent_id,
                decline_code,
                message,
            },
            Finish::Cancelled { intent_id, reason } => {
                JournaledFinish::Cancelled { intent_id, reason }
            }
            Finish::Unknown { cause, reason } => JournaledFinish::Unknown {
                reason,
                cause: Some(cause.as_str().to_owned()),
            },
        }
    }
}

impl From<JournaledFinish> for Finish {
    fn from(finish: JournaledFinish) -> Self {
        match finish {
            JournaledFinish::Succeeded { intent_id } => Finish::Succeeded { intent_id },
            JournaledFinish::Declined {
                intent_id,
                decline_code,
                message,
            } => Finish::Declined {
                intent_id,
                decline_code,
                message,
            },
            JournaledFinish::Cancelled { intent_id, reason } => {
                Finish::Cancelled { intent_id, reason }
            }
            JournaledFinish::Unknown { reason, cause } => Finish::Unknown {
                cause: cause
                    .as_deref()
                    .and_then(ReviewCause::parse)
                    .unwrap_or_else(|| legacy_cause(&reason)),
                reason,
            },
        }
    }
}

/// The cause of an entry journaled before causes were recorded, from the words `decide` wrote.
fn legacy_cause(reason: &str) -> ReviewCause {
    if reason.contains("resolution tries") {
        ReviewCause::RunsExhausted
    } else if reason.contains("idempotency window has passed") {
        ReviewCause::IdempotencyWindowPassed
    } else {
        ReviewCause::NoCapability
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn encode(
    fence: &Fence,
    finish: &Finish,
    actor: &str,
    replica: &str,
) -> Result<Vec<u8>, JournalError> {
    let journaled_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let payload = serde_json::to_string(&Record {
        order_id: fence.order_id.clone(),
        attempt: fence.attempt,
        token: fence.token,
        finish: finish.into(),
        actor: actor.to_owned(),
        replica: replica.to_owned(),
        journaled_at_unix_ms,
    })?;
    Ok(serde_json::to_vec(&Envelope {
        format: FORMAT.to_owned(),
        version: VERSION,
        sha256: sha256_hex(payload.as_bytes()),
        payload,
    })?)
}

/// Decodes a value stored under `(order_id, attempt)`; any doubt is an error.
fn decode(order_id: &str, attempt: i32, bytes: &[u8]) -> Result<Entry, CorruptEntry> {
    let corrupt = |reason: String| CorruptEntry {
        order_id: order_id.to_owned(),
        attempt,
        reason,
        len: bytes.len(),
    };
    let envelope: Envelope = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("not a journal envelope: {e}")))?;
    if envelope.format != FORMAT || envelope.version != VERSION {
        return Err(corrupt(format!(
            "unknown format {:?} version {}",
            envelope.format, envelope.version
        )));
    }
    let actual = sha256_hex(envelope.payload.as_bytes());
    if actual != envelope.sha256 {
        return Err(corrupt(format!(
            "checksum mismatch: stored {}, computed {actual}",
            envelope.sha256
        )));
    }
    let record: Record = serde_json::from_str(&envelope.payload)
        .map_err(|e| corrupt(format!("payload does not decode: {e}")))?;
    if record.order_id != order_id || record.attempt != attempt {
        return Err(corrupt(format!(
            "stored under the wrong key: the record is for order {} attempt {}",
            record.order_id, record.attempt
        )));
    }
    Ok(Entry {
        fence: Fence {
            order_id: record.order_id,
            attempt: record.attempt,
            token: record.token,
        },
        finish: record.finish.into(),
        actor: record.actor,
        replica: record.replica,
        journaled_at: UNIX_EPOCH + Duration::from_millis(record.journaled_at_unix_ms),
    })
}

/// Decodes a value stored under `(order_id, attempt)` exactly as `Journal::get` and
/// `Journal::pending` do: the entry, or why it is corrupt (what `pending` quarantines). Public
/// for the property tests and the fuzz target `journal_record` (fuzz/), which feed it any bytes.
pub fn decode_record(order_id: &str, attempt: i32, bytes: &[u8]) -> Result<Entry, CorruptEntry> {
    decode(order_id, attempt, bytes)
}

/// Encodes a record exactly as `Journal::record` stores it (journaled now, by `replica`).
/// Public for the property tests and the fuzz target, with [`decode_record`].
pub fn encode_record(
    fence: &Fence,
    finish: &Finish,
    actor: &str,
    replica: &str,
) -> Result<Vec<u8>, JournalError> {
    encode(fence, finish, actor, replica)
}

/// The journal of one replica. Cheap to clone; the file is locked by redb for this process.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    replica: String,
    /// Entries whose writer is running now (an attempt's task or the drainer): nobody else
    /// writes them meanwhile.
    held: Mutex<HashSet<(String, i32)>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// The exclusive right to write one journaled entry to PostgreSQL; released on drop.
pub struct Hold {
    journal: Journal,
    key: (String, i32),
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.journal.held().remove(&self.key);
    }
}

impl Journal {
    /// Opens (or creates, with its directory) `dir/outcomes.redb`. A database left by a crash is
    /// checked and rolled back to its last commit by redb; a file redb cannot open (truncated,
    /// corrupted beyond repair) is an error: the replica refuses to start rather than ignore it.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        Self::open_as(dir, "")
    }

    /// `open`, recording `replica` in every record.
    pub fn open_as(dir: &Path, replica: &str) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path)?;
        {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            tx.open_table(OUTCOMES)?;
            tx.open_table(QUARANTINE)?;
            tx.commit()?;
        }
        let journal = Journal {
            inner: Arc::new(Inner {
                db,
                path,
                replica: replica.to_owned(),
                held: Mutex::new(HashSet::new()),
            }),
        };
        let pending = journal.len()?;
        let quarantined = journal.quarantined()?;
        tracing::info!(path = %journal.inner.path.display(), pending, quarantined = quarantined.len(), "outcome journal open");
        for (order_id, attempt, len) in &quarantined {
            tracing::error!(%order_id, attempt, len, path = %journal.inner.path.display(), "a quarantined journal record awaits an operator (the attempt stays in flight for recovery)");
        }
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// At shutdown: how many outcomes stay journaled (drained at the next start), and whether
    /// this was the last handle, so that the database is closed now (its file lock released).
    /// Every commit was already durable when it returned; closing loses nothing.
    pub fn close(self) -> Result<(u64, bool), JournalError> {
        let pending = self.len()?;
        let closed = Arc::into_inner(self.inner).is_some();
        Ok((pending, closed))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<(String, i32)>> {
        // A poisoned set only means a panic elsewhere; single inserts/removes keep it consistent.
        self.inner
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the right to write `(order_id, attempt)`, unless someone else has it.
    pub fn try_hold(&self, order_id: &str, attempt: i32) -> Option<Hold> {
        let key = (order_id.to_owned(), attempt);
        if self.held().insert(key.clone()) {
            Some(Hold {
                journal: self.clone(),
                key,
            })
        } else {
            None
        }
    }

    /// Journals an outcome; durable (fsync'd) when this returns `Ok`. A second record for the
    /// same attempt replaces the first (the same fence can only learn one final outcome).
    pub fn record(&self, fence: &Fence, finish: &Finish, actor: &str) -> Result<(), JournalError> {
        let value = encode(fence, finish, actor, &self.inner.replica)?;
        let mut tx = self.inner.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut table = tx.open_table(OUTCOMES)?;
            if let Some(old) = table.get((fence.order_id.as_str(), fence.attempt))? {
                // An older fence's entry for the same attempt (a stale holder's outcome, left by
                // a previous process): the newer holder's outcome replaces it; say what it was.
                let old = match decode(&fence.order_id, fence.attempt, old.value()) {
                    Ok(entry) => {
                        format!("fence {}: {}", entry.fence.token, describe(&entry.finish))
                    }
                    Err(corrupt) => format!("undecodable: {}", corrupt.reason),
                };
                tracing::warn!(order_id = %fence.order_id, attempt = fence.attempt, replaced = %old, "a journaled outcome of the same attempt is replaced by a newer one");
            }
            table.insert((fence.order_id.as_str(), fence.attempt), value.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One entry, if journaled (`Err` inside: it does not decode; `pending` quarantines it).
    pub fn get(
        &self,
        order_id: &str,
        attempt: i32,
    ) -> Result<Option<Result<Entry, CorruptEntry>>, JournalError> {
        let tx = self.inner.db.begin_read()?;
        let table = tx.open_table(OUTCOMES)?;
        Ok(table
            .get((order_id, attempt))?
            .map(|value| decode(order_id, attempt, value.value())))
    }

    /// Every journaled outcome, oldest key first. A record that does not decode is logged at
    /// error level with its key, moved to the quarantine table, and returned as `Err`.
    pub fn pending(&self) -> Result<Vec<Result<Entry, CorruptEntry>>, JournalError> {
        let mut out = Vec::new();
        let mut bad: Vec<(String, i32, Vec<u8>)> = Vec::new();
        {
            let tx = self.inner.db.begin_read()?;
            let table = tx.open_table(OUTCOMES)?;
            for item in table.iter()? {
                let (key, value) = item?;
                let (order_id, attempt) = key.value();
                let decoded = decode(order_id, attempt, value.value());
                if decoded.is_err() {
                    bad.push((order_id.to_owned(), attempt, value.value().to_vec()));
                }
                out.push(decoded);
            }
        }
        if !bad.is_empty() {
            self.quarantine(&bad)?;
            for entry in out.iter().filter_map(|e| e.as_ref().err()) {
                tracing::error!(
                    order_id = %entry.order_id,
                    attempt = entry.attempt,
                    reason = %entry.reason,
                    len = entry.len,
                    path = %self.inner.path.display(),
                    "corrupt journal record: quarantined (kept, not drained); the attempt stays in flight for the recovery worker"
                );
            }
        }
        Ok(out)
    }

    /// Moves records to the quarantine table, byte for byte, in one commit.
    fn quarantine(&self, bad: &[(String, i32, Vec<u8>)]) -> Result<(), JournalError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut tx = self.inner.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut quarantine = tx.open_table(QUARANTINE)?;
            let mut outcomes = tx.open_table(OUTCOMES)?;
            for (n, (order_id, attempt, bytes)) in bad.iter().enumerate() {
                let at = now.saturating_add(n as u64);
                quarantine.insert((order_id.as_str(), *attempt, at), bytes.as_slice())?;
                outcomes.remove((order_id.as_str(), *attempt))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes an entry once PostgreSQL has it (or a newer holder's state stands). `true` if it
    /// was there.
    pub fn remove(&self, order_id: &str, attempt: i32) -> Result<bool, JournalError> {
        let mut tx = self.inner.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let removed = {
            let mut table = tx.open_table(OUTCOMES)?;
            table.remove((order_id, attempt))?.is_some()
        };
        tx.commit()?;
        Ok(removed)
    }

    /// How many outcomes wait for PostgreSQL.
    pub fn len(&self) -> Result<u64, JournalError> {
        let tx = self.inner.db.begin_read()?;
        Ok(tx.open_table(OUTCOMES)?.len()?)
    }

    pub fn is_empty(&self) -> Result<bool, JournalError> {
        Ok(self.len()? == 0)
    }

    /// The quarantined records: (order id, attempt, length in bytes).
    pub fn quarantined(&self) -> Result<Vec<(String, i32, usize)>, JournalError> {
        let tx = self.inner.db.begin_read()?;
        let table = tx.open_table(QUARANTINE)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (key, value) = item?;
            let (order_id, attempt, _) = key.value();
            out.push((order_id.to_owned(), attempt, value.value().len()));
        }
        Ok(out)
    }

    /// Runs a blocking journal operation off the async workers (each commit is an fsync).
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let journal = self.clone();
        tokio::task::spawn_blocking(move || f(&journal))
            .await
            .map_err(|e| JournalError::Task(e.to_string()))?
    }
}

/// What a fenced outcome write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Recorded now.
    Applied,
    /// This fence already recorded this outcome (an earlier commit whose answer was lost).
    AlreadyRecorded,
    /// A newer holder owns the order (or the attempt ended otherwise): its state stands; what we
    /// learnt is in the attempt's history.
    Superseded,
}

/// Writes an outcome with the fenced, idempotent `finish_attempt`. On `Superseded`, tells an
/// outcome already recorded by this very fence (the order's fence unchanged and the attempt
/// carrying this outcome: an earlier commit whose answer was lost) from a newer holder's state,
/// and notes
/// ours in the attempt's history (append-only, unfenced) so it is never lost (§1.3). An error
/// (including failing to write that note) means nothing is settled: keep the outcome.
pub async fn write_outcome(
    store: &Store,
    fence: &Fence,
    finish: &Finish,
    actor: &str,
    step: &str,
) -> Result<Written, StoreError> {
    match store.finish_attempt(fence, finish, actor).await? {
        Fenced::Applied => Ok(Written::Applied),
        Fenced::Superseded => {
            // Our own earlier commit (its answer lost) if the fence is still ours and the
            // attempt carries this outcome; otherwise a newer holder's state stands.
            let order = store.get_order(&fence.order_id).await?;
            let recorded = order
                .as_ref()
                .filter(|o| o.fence == fence.token)
                .and_then(|o| o.attempts.iter().find(|a| a.number == fence.attempt))
                .map(|a| a.outcome);
            if recorded == Some(finish.outcome()) {
                tracing::info!(order_id = %fence.order_id, attempt = fence.attempt, outcome = finish.outcome().as_str(), "the outcome was already recorded");
                return Ok(Written::AlreadyRecorded);
            }
            let what = describe(finish);
            tracing::error!(order_id = %fence.order_id, attempt = fence.attempt, outcome = finish.outcome().as_str(), %what, "superseded: outcome kept in the attempt's history only");
            store
                .note_unfenced(
                    &fence.order_id,
                    fence.attempt,
                    step,
                    &format!("superseded holder learnt: {what}"),
                )
                .await?;
            Ok(Written::Superseded)
        }
    }
}

/// The outcome in words, with the intent id, for logs and history.
pub fn describe(finish: &Finish) -> String {
    match finish {
        Finish::Succeeded { intent_id } => format!("succeeded: {intent_id} charged"),
        Finish::Declined {
            intent_id,
            decline_code,
            message,
        } => format!(
            "declined ({decline_code}): {message}; intent {}",
            intent_id.as_deref().unwrap_or("unknown")
        ),
        Finish::Cancelled { intent_id, reason } => format!(
            "cancelled, nothing charged ({reason}); intent {}",
            intent_id.as_deref().unwrap_or("none")
        ),
        Finish::Unknown { reason, .. } => format!("unknown, manual review: {reason}"),
    }
}

/// What one drain pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub applied: usize,
    pub already_recorded: usize,
    pub superseded: usize,
    /// Kept: PostgreSQL unreachable.
    pub waiting: usize,
    /// Kept: PostgreSQL answered with an error.
    pub failed: usize,
    /// Quarantined this pass.
    pub corrupt: usize,
    /// Held by a running attempt task (it writes them itself).
    pub held: usize,
}

/// Writes journaled outcomes nobody holds to PostgreSQL.
#[derive(Clone)]
pub struct Drainer {
    pub journal: Journal,
    pub store: Store,
    pub feed: Option<crate::feed::Feed>,
    pub metrics: crate::metrics::Metrics,
}

/// How often the drainer looks at the journal.
pub const DRAIN_EVERY: Duration = Duration::from_secs(1);

impl Drainer {
    /// One pass over the journal.
    pub async fn drain_once(&self) -> Result<Pass, JournalError> {
        let mut pass = Pass::default();
        let entries = self.journal.blocking(Journal::pending).await?;
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(_) => {
                    // Reported and quarantined by `pending`.
                    pass.corrupt += 1;
                    continue;
                }
            };
            let fence = entry.fence.clone();
            let Some(_hold) = self.journal.try_hold(&fence.order_id, fence.attempt) else {
                pass.held += 1;
                continue;
            };
            // Re-read under the hold: its writer may have finished it meanwhile.
            let (order_id, attempt) = (fence.order_id.clone(), fence.attempt);
            match self
                .journal
                .blocking(move |j| j.get(&order_id, attempt))
                .await?
            {
                Some(Ok(_)) => {}
                // Gone (written meanwhile), or corrupt (the next pass quarantines it).
                _ => continue,
            }
            let outcome = entry.finish.outcome().as_str();
            match write_outcome(&self.store, &fence, &entry.finish, &entry.actor, "journal").await {
                Ok(written) => {
                    match written {
                        Written::Applied => {
                            pass.applied += 1;
                            self.metrics.payment_finished(&entry.finish, "journal");
                            if let Some(feed) = &self.feed {
                                feed.nudge();
                            }
                            tracing::info!(order_id = %fence.order_id, attempt = fence.attempt, outcome, journaled_by = %entry.replica, "journaled outcome written to PostgreSQL");
                        }
                        Written::AlreadyRecorded => {
                            pass.already_recorded += 1;
                            tracing::info!(order_id = %fence.order_id, attempt = fence.attempt, outcome, "journaled outcome was already in PostgreSQL");
                        }
                        Written::Superseded => {
                            pass.superseded += 1;
                            tracing::warn!(order_id = %fence.order_id, attempt = fence.attempt, outcome, "journaled outcome superseded by a newer holder; noted in the attempt's history");
                        }
                    }
                    let (order_id, attempt) = (fence.order_id.clone(), fence.attempt);
                    if let Err(error) = self
                        .journal
                        .blocking(move |j| j.remove(&order_id, attempt))
                        .await
                    {
                        // The next pass finds it recorded and removes it then.
                        tracing::error!(%error, order_id = %fence.order_id, attempt = fence.attempt, "could not remove a drained journal entry");
                    }
                }
                Err(error) if error.is_unavailable() => {
                    pass.waiting += 1;
                    tracing::debug!(%error, order_id = %fence.order_id, attempt = fence.attempt, "journaled outcome kept: PostgreSQL unreachable");
                }
                Err(error) => {
                    pass.failed += 1;
                    tracing::error!(%error, order_id = %fence.order_id, attempt = fence.attempt, outcome, "journaled outcome kept: PostgreSQL refused the write; retried every pass");
                }
            }
        }
        Ok(pass)
    }

    /// Passes until one finds PostgreSQL answering for every entry it tried (or `stop`): run at
    /// start-up, before the replica's recovery worker, so this replica's own journaled outcomes
    /// are written before any worker could take their attempts over.
    pub async fn drain_until_answered(&self, stop: &CancellationToken) {
        loop {
            match self.drain_once().await {
                Ok(pass) if pass.waiting == 0 => {
                    log_pass(&pass, true);
                    return;
                }
                Ok(pass) => log_pass(&pass, true),
                Err(error) => tracing::error!(%error, "journal drain pass failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(DRAIN_EVERY) => {}
            }
        }
    }

    /// A pass every `DRAIN_EVERY` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut last_waiting = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(DRAIN_EVERY) => {}
            }
            match self.drain_once().await {
                Ok(pass) => {
                    log_pass(&pass, pass.waiting != last_waiting);
                    last_waiting = pass.waiting;
                }
                Err(error) => tracing::error!(%error, "journal drain pass failed"),
            }
        }
    }
}

fn log_pass(pass: &Pass, waiting_changed: bool) {
    if pass.waiting > 0 && waiting_changed {
        tracing::warn!(
            waiting = pass.waiting,
            held = pass.held,
            "journaled outcomes wait for PostgreSQL"
        );
    }
    if pass.applied + pass.already_recorded + pass.superseded + pass.corrupt + pass.failed > 0 {
        tracing::info!(?pass, "journal drain pass");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let n: u64 = rand::random();
        std::env::temp_dir().join(format!("journal-unit-{name}-{n:016x}"))
    }

    fn fence(order_id: &str, attempt: i32) -> Fence {
        Fence {
            order_id: order_id.to_owned(),
            attempt,
            token: 7,
        }
    }

    fn entries(journal: &Journal) -> Vec<Result<Entry, CorruptEntry>> {
        journal.pending().expect("pending")
    }

    #[test]
    fn round_trip_of_every_outcome() {
        let dir = temp_dir("round-trip");
        let journal = Journal::open_as(&dir, "r0").expect("open");
        assert_eq!(journal.len().unwrap(), 0);
        let finishes = [
            Finish::Succeeded {
                intent_id: "pi_1".into(),
            },
            Finish::Declined {
                intent_id: Some("pi_2".into()),
                decline_code: "insufficient_funds".into(),
                message: "no money".into(),
            },
            Finish::Cancelled {
                intent_id: None,
                reason: "voided".into(),
            },
            Finish::Unknown {
                cause: ReviewCause::NoCapability,
                reason: "nothing establishes it".into(),
            },
        ];
        for (n, finish) in finishes.iter().enumerate() {
            journal
                .record(&fence("o-1", n as i32 + 1), finish, "op-alice")
                .expect("record");
        }
        assert_eq!(journal.len().unwrap(), 4);
        let got = entries(&journal);
        for (n, (entry, finish)) in got.iter().zip(&finishes).enumerate() {
            let entry = entry.as_ref().expect("decodes");
            assert_eq!(entry.fence, fence("o-1", n as i32 + 1));
            assert_eq!(&entry.finish, finish);
            assert_eq!(entry.actor, "op-alice");
            assert_eq!(entry.replica, "r0");
        }
        assert!(journal.remove("o-1", 1).unwrap());
        assert!(!journal.remove("o-1", 1).unwrap());
        assert_eq!(journal.len().unwrap(), 3);
        assert!(journal.get("o-1", 1).unwrap().is_none());
        drop(journal);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unknown_journaled_before_causes_were_recorded_still_decodes_with_its_cause() {
        for (reason, cause) in [
            (
                "the outcome could not be established after 6 resolution tries. order o-1",
                ReviewCause::RunsExhausted,
            ),
            (
                "one_shot create in doubt and the gateway's idempotency window has passed: x",
                ReviewCause::IdempotencyWindowPassed,
            ),
            (
                "intent pi_1 in doubt and the gateway allows no lookup, no replay and no cancel",
                ReviewCause::NoCapability,
            ),
        ] {
            let old = serde_json::json!({ "outcome": "unknown", "reason": reason });
            let finish: JournaledFinish = serde_json::from_value(old).expect("decodes");
            assert_eq!(
                Finish::from(finish),
                Finish::Unknown {
                    cause,
                    reason: reason.to_owned()
                }
            );
        }
    }

    #[test]
    fn entries_survive_a_reopen() {
        let dir = temp_dir("reopen");
        let journal = Journal::open(&dir).expect("open");
        journal
            .record(
                &fence("o-2", 1),
                &Finish::Succeeded {
                    intent_id: "pi_9".into(),
                },
                "op",
            )
            .expect("record");
        drop(journal);
        let journal = Journal::open(&dir).expect("reopen");
        let got = entries(&journal);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].as_ref().expect("decodes").finish,
            Finish::Succeeded {
                intent_id: "pi_9".into()
            }
        );
        drop(journal);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Writes `bytes` under a key through redb directly, bypassing `record`.
    fn put_raw(journal: &Journal, order_id: &str, attempt: i32, bytes: &[u8]) {
        let tx = journal.inner.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(OUTCOMES).unwrap();
            table.insert((order_id, attempt), bytes).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn corrupt_records_are_quarantined_not_dropped() {
        let dir = temp_dir("corrupt");
        let journal = Journal::open(&dir).expect("open");
        let good = fence("good", 1);
        journal
            .record(
                &good,
                &Finish::Succeeded {
                    intent_id: "pi_ok".into(),
                },
                "op",
            )
            .expect("record");
        // Garbage bytes.
        put_raw(&journal, "garbage", 1, b"\x00\xff not json at all");
        // A truncated record.
        let whole = encode(
            &fence("truncated", 2),
            &Finish::Succeeded {
                intent_id: "pi_t".into(),
            },
            "op",
            "r0",
        )
        .unwrap();
        put_raw(&journal, "truncated", 2, &whole[..whole.len() / 2]);
        // A well-formed envelope whose payload was altered (checksum mismatch).
        let altered = String::from_utf8(
            encode(
                &fence("altered", 3),
                &Finish::Succeeded {
                    intent_id: "pi_1000".into(),
                },
                "op",
                "r0",
            )
            .unwrap(),
        )
        .unwrap()
        .replace("pi_1000", "pi_9999");
        put_raw(&journal, "altered", 3, altered.as_bytes());

        let got = entries(&journal);
        assert_eq!(got.len(), 4, "every record is reported");
        let corrupt: Vec<&CorruptEntry> = got.iter().filter_map(|e| e.as_ref().err()).collect();
        assert_eq!(corrupt.len(), 3);
        assert!(
            corrupt
                .iter()
                .any(|c| c.order_id == "altered" && c.reason.contains("checksum")),
            "{corrupt:?}"
        );
        assert!(corrupt.iter().any(|c| c.order_id == "truncated"));
        assert!(corrupt.iter().any(|c| c.order_id == "garbage"));
        // Kept, byte for byte, in quarantine; only the good entry is left to drain.
        let quarantined = journal.quarantined().unwrap();
        assert_eq!(quarantined.len(), 3, "{quarantined:?}");
        assert!(quarantined.contains(&("garbage".to_owned(), 1, 18)));
        assert_eq!(journal.len().unwrap(), 1);
        let again = entries(&journal);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].as_ref().expect("decodes").fence, good);
        // And still there after a reopen.
        drop(journal);
        let journal = Journal::open(&dir).expect("reopen");
        assert_eq!(journal.quarantined().unwrap().len(), 3);
        drop(journal);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_held_entry_is_not_held_twice() {
        let dir = temp_dir("hold");
        let journal = Journal::open(&dir).expect("open");
        let hold = journal.try_hold("o", 1).expect("first hold");
        assert!(journal.try_hold("o", 1).is_none());
        assert!(journal.try_hold("o", 2).is_some());
        drop(hold);
        assert!(journal.try_hold("o", 1).is_some());
        drop(journal);
        let _ = std::fs::remove_dir_all(dir);
    }
}
