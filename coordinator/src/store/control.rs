//! The `payments_control` row: whether new payments are accepted (admin pause, circuit breaker).
//!
//! Decisions are made in `domain::breaker` on a fresh read; they are written back with a
//! compare-and-set on `version`, so two replicas deciding at once cannot both apply a decision
//! made on the same state (a second breaker trip, a probe slot claimed twice): the loser reads
//! again and decides again. The write, its history row and `NOTIFY payments_control` are one
//! statement, so one transaction: a replica that hears the notification reads the change.

use std::time::SystemTime;

use tokio_postgres::Row;

use super::orders::column;
use super::{Store, StoreError};
use crate::domain::breaker::{AdminPause, Breaker, BreakerState, Change, Control};

/// The channel every change is notified on.
pub const CONTROL_CHANNEL: &str = "payments_control";

const READ: &str = "SELECT admin_paused, admin_reason, admin_by, admin_since, breaker, \
     breaker_reason, breaker_since, breaker_probe_at, probes_left, version, \
     clock_timestamp() AS now \
     FROM payments_control WHERE id";

const WRITE: &str = "WITH changed AS ( \
       UPDATE payments_control SET \
         admin_paused = $2, admin_reason = $3, admin_by = $4, admin_since = $5, \
         breaker = $6, breaker_reason = $7, breaker_since = $8, breaker_probe_at = $9, \
         probes_left = $10, updated_at = now(), version = version + 1 \
       WHERE id AND version = $1 \
       RETURNING version \
     ), logged AS ( \
       INSERT INTO payments_control_history (version, actor, action, detail) \
       SELECT version, $11, $12, $13 FROM changed \
     ) \
     SELECT version, pg_notify('payments_control', version::text) FROM changed";

impl Store {
    /// The row, and PostgreSQL's clock when it was read (decisions about cool-downs use the
    /// database's clock, the same for every replica).
    pub async fn read_control(&self) -> Result<(Control, SystemTime), StoreError> {
        let client = self.client().await?;
        let read = client.prepare_cached(READ).await?;
        let row = client
            .query_opt(&read, &[])
            .await?
            .ok_or_else(|| StoreError::Corrupt("the payments_control row is missing".to_owned()))?;
        Ok((control_from_row(&row)?, column(&row, "now")?))
    }

    /// Writes `next` if the row is still at `expected` (its version), with its history row and
    /// the notification. `Some(version)`: written; `None`: the row changed meanwhile.
    pub async fn write_control(
        &self,
        expected: i64,
        next: &Control,
        actor: &str,
        change: &Change,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let write = client.prepare_cached(WRITE).await?;
        let admin = next.admin.as_ref();
        let (state, reason, since, probe_at, probes_left) = match &next.breaker {
            Breaker::Closed => (BreakerState::Closed, None, None, None, 0),
            Breaker::Open {
                reason,
                since,
                probe_at,
            } => (
                BreakerState::Open,
                Some(reason.as_str()),
                Some(*since),
                Some(*probe_at),
                0,
            ),
            Breaker::HalfOpen {
                reason,
                since,
                probe_at,
                probes_left,
            } => (
                BreakerState::HalfOpen,
                Some(reason.as_str()),
                Some(*since),
                Some(*probe_at),
                i32::try_from(*probes_left).unwrap_or(i32::MAX),
            ),
        };
        let row = client
            .query_opt(
                &write,
                &[
                    &expected,
                    &admin.is_some(),
                    &admin.map(|a| a.reason.as_str()),
                    &admin.map(|a| a.by.as_str()),
                    &admin.map(|a| a.since),
                    &state.as_str(),
                    &reason,
                    &since,
                    &probe_at,
                    &probes_left,
                    &actor,
                    &change.action,
                    &change.detail,
                ],
            )
            .await?;
        row.map(|r| column(&r, "version")).transpose()
    }
}

fn control_from_row(row: &Row) -> Result<Control, StoreError> {
    let admin = if column::<bool>(row, "admin_paused")? {
        Some(AdminPause {
            reason: column(row, "admin_reason")?,
            by: column(row, "admin_by")?,
            since: column(row, "admin_since")?,
        })
    } else {
        None
    };
    let stored: &str = column(row, "breaker")?;
    let state = BreakerState::from_stored(stored)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown breaker state {stored:?}")))?;
    let breaker = match state {
        BreakerState::Closed => Breaker::Closed,
        BreakerState::Open => Breaker::Open {
            reason: column(row, "breaker_reason")?,
            since: column(row, "breaker_since")?,
            probe_at: column(row, "breaker_probe_at")?,
        },
        BreakerState::HalfOpen => Breaker::HalfOpen {
            reason: column(row, "breaker_reason")?,
            since: column(row, "breaker_since")?,
            probe_at: column(row, "breaker_probe_at")?,
            probes_left: u32::try_from(column::<i32>(row, "probes_left")?).unwrap_or(0),
        },
    };
    Ok(Control {
        admin,
        breaker,
        version: column(row, "version")?,
    })
}
