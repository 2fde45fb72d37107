//! PostgreSQL: the single source of truth for orders, attempts and events.
//!
//! The state machine (`domain::machine`) decides; this module applies its decisions inside short
//! transactions. No transaction is ever held across anything but its own statements (never across a
//! gateway call or a Redis round trip).
//!
//! The order's `fence` column is the lock of record (CONTRACT §1.5): `begin_attempt` bumps it, and
//! every later write about the attempt is conditional on it, so a stale holder (paused process,
//! expired Redis lease, partitioned replica) can never overwrite a newer holder's state.

mod attempts;
mod control;
pub(crate) mod events;
mod migrate;
mod orders;
mod records;
mod refunds;
mod reviews;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

pub use control::CONTROL_CHANNEL;
pub use events::{Backlog, EventRecord};
pub use migrate::MIGRATIONS;
pub use records::{
    AttemptRecord, Begin, BeginRefusal, ErrorEntry, Fence, Fenced, Finish, LineItemRecord,
    NewAttempt, OrderRecord, RefundRecord, ReviewDecision, Stranded,
};
pub use refunds::{BeginRefund, NewRefund, RefundFence, RefundFinish, StrandedRefund};
pub use reviews::{Decision, Resolve, ReviewCursor, ReviewRecord};

use crate::domain::UnknownStoredValue;

/// How long to wait for a connection (new or from the pool) before calling PostgreSQL unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a health probe may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Server-side limits on every coordinator connection (the pool's and the feed's own), so that the
/// coordinator's transactions stay short whatever goes wrong in the process: no statement runs
/// longer than this...
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// ... and a transaction left idle (a stuck task, a bug holding a transaction across an await) is
/// ended by the server after this, releasing its row locks. An open transaction also delays its own
/// events on the feed (they are stamped only once committed) and holds back vacuum.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL could not be reached (pool, connection or I/O error). Nothing was written by the
    /// failed call... or, for a commit that lost its connection, nothing is known: callers treat it
    /// as "not recorded" and retry idempotently.
    #[error("PostgreSQL unavailable: {0}")]
    Unavailable(String),
    /// A stored value the code does not understand: the schema and the code disagree.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// Any other error reported by PostgreSQL (constraint, syntax, ...).
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        classify(&error)
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(e) => classify(&e),
            PoolError::NoRuntimeSpecified => StoreError::Other(error.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl From<UnknownStoredValue> for StoreError {
    fn from(error: UnknownStoredValue) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

/// A `DbError` with a SQLSTATE is PostgreSQL answering: `Other`, except the connection class
/// (08xxx) and administrator shutdowns (57P0x), which mean the server is going away. No `DbError` at
/// all means the answer never came (I/O, closed connection, timeout): `Unavailable`.
fn classify(error: &tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            if code.starts_with("08") || code.starts_with("57P0") {
                StoreError::Unavailable(error.to_string())
            } else {
                StoreError::Other(format!("{error} (SQLSTATE {code})"))
            }
        }
        None => StoreError::Unavailable(error.to_string()),
    }
}

/// A pool of connections to the coordinator's database, migrated.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL: it may carry a password.
        let status = self.pool.status();
        f.debug_struct("Store")
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

impl Store {
    /// Connects to `database_url`, creating the database if it does not exist yet, and migrates it.
    /// Safe when several replicas start at once: a concurrent `CREATE DATABASE` is tolerated and the
    /// migrations run under an advisory lock.
    pub async fn connect(database_url: &str, pool_size: usize) -> Result<Store, StoreError> {
        let mut config = session_config(database_url)?;
        if config.get_application_name().is_none() {
            config.application_name("coordinator");
        }
        ensure_database(&config).await?;

        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Other(format!("building the connection pool: {e}")))?;

        let store = Store { pool };
        {
            let mut client = store.client().await?;
            migrate::run(&mut client).await?;
        }
        Ok(store)
    }

    /// Whether PostgreSQL answers a trivial query now (for the health service).
    pub async fn ping(&self) -> bool {
        let probe = async {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<(), StoreError>(())
        };
        matches!(tokio::time::timeout(PING_TIMEOUT, probe).await, Ok(Ok(())))
    }

    /// The pool's size, idle connections and waiters now (for metrics).
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// The connection settings of `database_url` with the coordinator's session limits
/// (`STATEMENT_TIMEOUT`, `IDLE_IN_TRANSACTION_TIMEOUT`) and a connect timeout. Options already in the
/// URL come after ours, so an operator's explicit setting wins.
pub fn session_config(database_url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e| StoreError::Other(format!("invalid database URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let ours = format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        STATEMENT_TIMEOUT.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    );
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{ours} {theirs}"),
        _ => ours,
    };
    config.options(&options);
    Ok(config)
}

/// Creates the database named in `config` if it does not exist (SQLSTATE 3D000 on connect), through
/// the server's `postgres` database.
async fn ensure_database(config: &tokio_postgres::Config) -> Result<(), StoreError> {
    let error = match config.connect(NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            // Dropping the client ends the connection task cleanly.
            let _ = connection.await;
            return Ok(());
        }
        Err(error) => error,
    };
    if error.code() != Some(&SqlState::INVALID_CATALOG_NAME) {
        return Err(classify(&error));
    }
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Err(classify(&error));
    };
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(NoTls).await?;
    let task = tokio::spawn(connection);
    let created = client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await;
    drop(client);
    let _ = task.await;
    match created {
        Ok(()) => {
            tracing::info!(database = %name, "created the database");
            Ok(())
        }
        // Several replicas race to create it: losing the race is fine.
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        Err(e) => Err(classify(&e)),
    }
}

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("payments"), "\"payments\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
