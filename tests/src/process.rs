//! The real coordinator binary (`target/debug/coordinator`) as a child process, for faults only
//! a process can suffer: `kill -9`, SIGSTOP and SIGCONT, and SIGTERM (a graceful shutdown) with
//! its exit status. A test environment's replica on `booking_sim::stack::coordinator` (shared
//! with `booking-sim chaos`), failing the test on any error.
//! `scripts/test.sh` builds the binary before the tests.

use std::{net::SocketAddr, path::PathBuf, process::ExitStatus};

use booking_sim::stack::{
    self,
    coordinator::{ReplicaProcess, ReplicaSpec},
};

use crate::checks::GUARD;
use crate::coordinator::{Client, TestEnv, client, key_for};

/// `$CARGO_TARGET_DIR/debug/coordinator`, or the workspace's `target/debug/coordinator`.
pub fn coordinator_binary() -> PathBuf {
    stack::coordinator::find_coordinator_binary(None).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `booking-sim` next to the test executable (`target/debug/deps/…` → `target/debug/`), else
/// `$CARGO_TARGET_DIR/debug/booking-sim` or the workspace's `target/debug/booking-sim`.
/// `scripts/test.sh` builds it before the tests (`cargo build -p booking-sim --bins`).
pub fn booking_sim_binary() -> PathBuf {
    let beside_tests = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("booking-sim")));
    if let Some(binary) = beside_tests.filter(|b| b.exists()) {
        return binary;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let binary = target.join("debug").join("booking-sim");
    assert!(
        binary.exists(),
        "the booking-sim binary {} is missing: build it first with `cargo build -p booking-sim \
         --bins`",
        binary.display()
    );
    binary
}

/// Runs the real `booking-sim load` with `args` (the real coordinator binary, nothing inherited
/// from the caller's environment that would point it elsewhere) and returns its stdout and stderr
/// once it has exited 0; any other exit fails the test with both streams.
pub async fn run_load(args: &[&str]) -> (String, String) {
    let output = tokio::process::Command::new(booking_sim_binary())
        .arg("load")
        .args(args)
        .arg("--coordinator-bin")
        .arg(coordinator_binary())
        .env_remove("DATABASE_URL")
        .env_remove("GATEWAY_URL")
        .env_remove("COORDINATOR_BIN")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run booking-sim load");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// One coordinator replica running as its own process.
pub struct CoordinatorProcess {
    inner: ReplicaProcess,
    pub pid: u32,
    pub addr: SocketAddr,
    pub url: String,
}

impl CoordinatorProcess {
    /// Starts replica `replica` of `env` (its usual arguments plus `extra`) on a free port and
    /// waits until the port accepts connections.
    pub async fn spawn(env: &TestEnv, replica: &str, extra: &[&str]) -> Self {
        Self::spawn_with_env(env, replica, extra, &[]).await
    }

    /// As `spawn`, with these environment variables set too (e.g. `OTEL_*`, read only from the
    /// environment).
    pub async fn spawn_with_env(
        env: &TestEnv,
        replica: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Self {
        let port = stack::free_port().expect("free port");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::env::temp_dir().join(format!(
            "coordinator-{replica}-{port}-{}.log",
            std::process::id()
        ));
        let spec = ReplicaSpec {
            binary: coordinator_binary(),
            replica_id: replica.to_owned(),
            database_url: env.database_url.clone(),
            redis_url: env.redis_url.clone(),
            redis_key_prefix: env.redis_prefix.clone(),
            gateway_url: env.sim.base_url(),
            api_keys_file: env.keys_file().to_path_buf(),
            journal_dir: env.journal_dir(replica),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            log,
            listen: Some(addr),
            env: [("RUST_LOG", "info")]
                .iter()
                .chain(vars)
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let inner = ReplicaProcess::spawn(spec)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            pid: inner.pid(),
            url: inner.url(),
            addr,
            inner,
        }
    }

    /// A client authenticated as `key_id`.
    pub async fn client(&self, key_id: &str) -> Client {
        client(&self.url, Some(&key_for(key_id))).await
    }

    /// What the process logged so far (for failure messages).
    pub fn log_text(&self) -> String {
        self.inner.log_text()
    }

    /// `kill -9`: the process dies at once, mid-call, without any clean-up.
    pub fn kill_9(&mut self) {
        self.inner.kill_9().expect("SIGKILL the coordinator");
    }

    /// `kill -STOP`: the process is frozen (timers, sockets and all) until `resume`.
    pub fn pause(&self) {
        self.inner.pause().expect("kill -STOP");
    }

    /// `kill -CONT`.
    pub fn resume(&self) {
        self.inner.resume().expect("kill -CONT");
    }

    /// `kill -TERM`: what Kubernetes sends to stop a pod; starts a graceful shutdown.
    pub fn terminate(&self) {
        self.inner.terminate().expect("kill -TERM");
    }

    /// Waits until the process has exited and returns its exit status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        self.inner
            .wait_exit(GUARD)
            .await
            .unwrap_or_else(|e| panic!("never happened: the coordinator process exits ({e:#})"))
    }

    /// Starts the exited (or killed) replica again with the same REPLICA_ID, address, journal
    /// and settings; waits until the port accepts connections.
    pub async fn restart(&mut self) {
        self.inner
            .restart()
            .await
            .unwrap_or_else(|e| panic!("restarting the coordinator: {e:#}"));
        self.pid = self.inner.pid();
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        // The process itself is killed (SIGKILL, which also ends a stopped one) by `inner`.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(self.inner.log_path());
        }
    }
}
