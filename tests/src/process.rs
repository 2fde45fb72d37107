//! The real coordinator binary (`target/debug/coordinator`) as a child process, for faults only
//! a process can suffer: `kill -9` (`Child::kill` sends SIGKILL on Unix), SIGSTOP and SIGCONT,
//! and SIGTERM (a graceful shutdown) with its exit status.
//! `scripts/test.sh` builds the binary before the tests.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::checks::wait_for;
use crate::coordinator::{Client, TestEnv, client, key_for};

/// How long the process may take to listen before the test fails (a guard, not an assertion).
const GUARD: Duration = Duration::from_secs(60);

/// `$CARGO_TARGET_DIR/debug/coordinator`, or the workspace's `target/debug/coordinator`.
pub fn coordinator_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let binary = target.join("debug").join("coordinator");
    assert!(
        binary.exists(),
        "the coordinator binary {} is missing: build it first with `cargo build -p coordinator --bins` \
         (scripts/test.sh does)",
        binary.display()
    );
    binary
}

/// One coordinator replica running as its own process.
pub struct CoordinatorProcess {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub url: String,
    log: PathBuf,
}

impl CoordinatorProcess {
    /// Starts replica `replica` of `env` (its usual arguments plus `extra`) on a free port and
    /// waits until the port accepts connections.
    pub async fn spawn(env: &TestEnv, replica: &str, extra: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut args = env.args(replica, extra, true);
        args.remove(0); // the program name
        let listen = args
            .iter()
            .position(|a| a == "--coordinator-listen")
            .expect("--coordinator-listen in the test arguments");
        args[listen + 1] = addr.to_string();
        let log = std::env::temp_dir().join(format!(
            "coordinator-{replica}-{port}-{}.log",
            std::process::id()
        ));
        let out = std::fs::File::create(&log).expect("process log");
        let child = Command::new(coordinator_binary())
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn the coordinator binary");
        let mut process = Self {
            pid: child.id(),
            child,
            addr,
            url: format!("http://{addr}"),
            log,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = process.child.try_wait().expect("child status") {
                panic!(
                    "the coordinator exited before listening ({status}):\n{}",
                    process.log_text()
                );
            }
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(
                start.elapsed() < GUARD,
                "the coordinator never listened on {addr}:\n{}",
                process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process
    }

    /// A client authenticated as `key_id`.
    pub async fn client(&self, key_id: &str) -> Client {
        client(&self.url, Some(&key_for(key_id))).await
    }

    /// What the process logged so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: the process dies at once, mid-call, without any clean-up.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL the coordinator");
        self.child.wait().expect("reap the coordinator");
    }

    /// `kill -STOP`: the process is frozen (timers, sockets and all) until `resume`.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `kill -CONT`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// `kill -TERM`: what Kubernetes sends to stop a pod; starts a graceful shutdown.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Waits until the process has exited (checking its state, see `checks::wait_for`) and
    /// returns its exit status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        wait_for("the coordinator process exits", async || {
            child.try_wait().expect("child status")
        })
        .await
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}", self.pid);
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
