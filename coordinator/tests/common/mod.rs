//! Shared by the coordinator's integration tests: a fresh PostgreSQL database per test.
//!
//! `DATABASE_URL_BASE` (default `postgres://root@127.0.0.1:5432`) names the server.

#![allow(dead_code)]

use rand::Rng;
use tokio_postgres::NoTls;

use coordinator::store::Store;

pub fn base_url() -> String {
    std::env::var("DATABASE_URL_BASE")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A database name no other test uses; dropped (with FORCE) when the guard goes, even on panic.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A fresh database named `{prefix}_test_<random>`.
    pub fn new(prefix: &str) -> TestDb {
        let suffix: u64 = rand::rng().random();
        TestDb {
            name: format!("{prefix}_test_{suffix:016x}"),
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", base_url(), self.name)
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.url(), 8).await.expect("connect")
    }

    /// A plain connection to the test database, for checks and for tampering like a rival would.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .expect("connect for SQL");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&format!("{}/postgres", base_url()), NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
