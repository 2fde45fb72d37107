//! The counters read around the measured phase: PostgreSQL's commits in the run's database
//! (`pg_stat_database.xact_commit`), Redis' command calls (`INFO commandstats`) and each
//! replica's resident memory (`/proc/PID/status`).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use tokio_postgres::NoTls;

use crate::watch_bench::parse_status_kb;

/// How long PostgreSQL 15 may hold a backend's counters before they reach `pg_stat_database`:
/// a backend flushes them at most once a second, and one that goes idle within that second
/// flushes PGSTAT_IDLE_INTERVAL (10 s) later. A backend that exits flushes at once.
pub const PG_STATS_FLUSH: Duration = Duration::from_millis(10_500);

/// A connection to the server's `postgres` database: it creates and drops the run's databases
/// and reads their statistics without ever committing inside them.
pub struct PgServer {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
    base: String,
}

impl PgServer {
    /// `base` is `postgres://user@host:port`, without a database.
    pub async fn connect(base: &str) -> anyhow::Result<PgServer> {
        let base = base.trim_end_matches('/').to_owned();
        let (client, connection) = tokio_postgres::connect(&format!("{base}/postgres"), NoTls)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", redact(&base)))?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(PgServer {
            client,
            connection,
            base,
        })
    }

    /// The URL of database `name` on this server.
    pub fn database_url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// Creates an empty database (`name`: lower-case letters, digits and `_`).
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        check_name(name)?;
        self.client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating the database {name}"))
    }

    /// Drops the database, cutting any connection still open on it.
    pub async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        check_name(name)?;
        self.client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .with_context(|| format!("dropping the database {name}"))
    }

    /// Transactions committed in database `name` so far, as far as the statistics know.
    pub async fn commits(&self, name: &str) -> anyhow::Result<u64> {
        self.database_stat(name, "xact_commit").await
    }

    /// Buffer pages read in database `name` so far (from shared buffers or from outside them:
    /// `blks_hit + blks_read`), as far as the statistics know. Per payment, it says whether the
    /// statements use their indexes: a scan grows with the tables, an index descent barely.
    pub async fn pages_read(&self, name: &str) -> anyhow::Result<u64> {
        self.database_stat(name, "blks_hit + blks_read").await
    }

    /// `expression` (a bigint of `pg_stat_database` columns, written here) for database `name`.
    async fn database_stat(&self, name: &str, expression: &str) -> anyhow::Result<u64> {
        let row = self
            .client
            .query_opt(
                &format!("SELECT {expression} FROM pg_stat_database WHERE datname = $1"),
                &[&name],
            )
            .await
            .context("reading pg_stat_database")?
            .with_context(|| format!("no statistics for the database {name}"))?;
        let value: i64 = row.get(0);
        Ok(u64::try_from(value).unwrap_or_default())
    }

    /// Backends connected to database `name` now.
    pub async fn backends(&self, name: &str) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&name],
            )
            .await
            .context("reading pg_stat_activity")?;
        Ok(row.get(0))
    }

    /// Waits until no backend is connected to database `name` (each flushed its counters as it
    /// exited), at most `guard`.
    pub async fn wait_no_backends(&self, name: &str, guard: Duration) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            let left = self.backends(name).await?;
            if left == 0 {
                return Ok(());
            }
            if started.elapsed() > guard {
                bail!("{left} connection(s) to {name} still open after {guard:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many orders database `name` holds, and how many of them are PAID.
    pub async fn orders(&self, name: &str) -> anyhow::Result<(i64, i64)> {
        let (client, connection) = tokio_postgres::connect(&self.database_url(name), NoTls)
            .await
            .with_context(|| format!("connecting to the database {name}"))?;
        let task = tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE state = 'PAID') FROM orders",
                &[],
            )
            .await
            .context("counting the orders");
        drop(client);
        let _ = task.await;
        let row = row?;
        Ok((row.get(0), row.get(1)))
    }

    pub async fn close(self) {
        drop(self.client);
        let _ = self.connection.await;
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("{name:?} is not a plain database name");
    }
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:****{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Calls per command since the Redis server started (or its last `CONFIG RESETSTAT`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandCalls(pub BTreeMap<String, u64>);

impl CommandCalls {
    /// Every call but our own `INFO`.
    pub fn total(&self) -> u64 {
        self.0
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(_, calls)| calls)
            .sum()
    }

    /// Calls made since `before`, per command (commands with none left out; `INFO` too).
    pub fn since(&self, before: &CommandCalls) -> CommandCalls {
        CommandCalls(
            self.0
                .iter()
                .filter(|(name, _)| name.as_str() != "info")
                .map(|(name, calls)| {
                    let earlier = before.0.get(name).copied().unwrap_or(0);
                    (name.clone(), calls.saturating_sub(earlier))
                })
                .filter(|(_, calls)| *calls > 0)
                .collect(),
        )
    }
}

/// Parses `INFO commandstats`: lines `cmdstat_<name>:calls=N,usec=…`.
pub fn parse_commandstats(info: &str) -> CommandCalls {
    CommandCalls(
        info.lines()
            .filter_map(|line| {
                let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = fields
                    .split(',')
                    .find_map(|field| field.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect(),
    )
}

/// One connection to Redis for `INFO commandstats`.
pub struct RedisStats {
    connection: redis::aio::MultiplexedConnection,
}

impl RedisStats {
    pub async fn connect(url: &str) -> anyhow::Result<RedisStats> {
        let client = redis::Client::open(url).context("the Redis URL")?;
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .context("connecting to Redis")?;
        Ok(RedisStats { connection })
    }

    pub async fn calls(&mut self) -> anyhow::Result<CommandCalls> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.connection)
            .await
            .context("INFO commandstats")?;
        Ok(parse_commandstats(&info))
    }
}

/// A process' resident memory in MB, if it can be read.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(parse_status_kb(&status, "VmRSS")? as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_parsed_and_our_info_left_out() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_set:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=3,usec=1,usec_per_call=0.3\r\ncmdstat_client|setinfo:calls=2,usec=1\r\n",
        );
        assert_eq!(before.0["set"], 10);
        assert_eq!(before.0["client|setinfo"], 2);
        assert_eq!(before.total(), 12);
        let after = parse_commandstats(
            "cmdstat_set:calls=40,usec=90\ncmdstat_evalsha:calls=30,usec=9\ncmdstat_info:calls=9,usec=2\ncmdstat_client|setinfo:calls=2,usec=1\n",
        );
        let delta = after.since(&before);
        assert_eq!(
            delta.0,
            BTreeMap::from([("evalsha".to_owned(), 30), ("set".to_owned(), 30)])
        );
        assert_eq!(delta.total(), 60);
        assert_eq!(parse_commandstats("garbage\ncmdstat_x:usec=1\n").0.len(), 0);
    }

    #[test]
    fn database_names_are_plain() {
        assert!(check_name("load_1a2b_two_phase").is_ok());
        assert!(check_name("Load").is_err());
        assert!(check_name("x\"; DROP").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn passwords_never_shown() {
        assert_eq!(
            redact("postgres://root:secret@127.0.0.1:5432"),
            "postgres://root:****@127.0.0.1:5432"
        );
        assert_eq!(
            redact("postgres://root@127.0.0.1:5432"),
            "postgres://root@127.0.0.1:5432"
        );
    }
}
