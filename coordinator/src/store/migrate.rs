//! Versioned schema migrations, embedded in the binary and applied at start.
//!
//! Several replicas may start at the same moment against one database: each runs the pending
//! migrations inside one transaction that first takes a transaction-scoped advisory lock, so they
//! queue up, and all but the first find nothing left to do.

use deadpool_postgres::Object;

use super::StoreError;

/// One migration: `coordinator/migrations/NNNN_name.sql`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Never edit one that has shipped: add the next.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "orders_attempts_events",
        sql: include_str!("../../migrations/0001_orders_attempts_events.sql"),
    },
    Migration {
        version: 2,
        name: "event_feed",
        sql: include_str!("../../migrations/0002_event_feed.sql"),
    },
    Migration {
        version: 3,
        name: "recovery",
        sql: include_str!("../../migrations/0003_recovery.sql"),
    },
    Migration {
        version: 4,
        name: "reviews_refunds",
        sql: include_str!("../../migrations/0004_reviews_refunds.sql"),
    },
    Migration {
        version: 5,
        name: "payments_control",
        sql: include_str!("../../migrations/0005_payments_control.sql"),
    },
    Migration {
        version: 6,
        name: "refund_reviews",
        sql: include_str!("../../migrations/0006_refund_reviews.sql"),
    },
];

/// The advisory lock serialising migrations across replicas ("payments" in ASCII).
const MIGRATION_LOCK: i64 = 0x7061_796d_656e_7473;

pub(super) async fn run(client: &mut Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    // The pool's connections carry a `statement_timeout` (see `store::SESSION_OPTIONS`): a replica
    // queueing behind another's migration, or a migration rebuilding an index on a big table, must
    // not be cut short by it. `SET LOCAL` ends with this transaction.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Under the lock, so that concurrent replicas never race on creating this table either.
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Corrupt(format!("schema_migrations: {e}")))?;
    if let Some(newest) = applied.last()
        && MIGRATIONS.iter().all(|m| m.version < *newest)
    {
        // A newer coordinator migrated this database (a rolling upgrade): migrations stay backward
        // compatible, so carry on, but say so.
        tracing::warn!(
            database_version = newest,
            "the database schema is newer than this coordinator knows"
        );
    }
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied a schema migration"
        );
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }
}
