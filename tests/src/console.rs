//! The real console binary (`target/debug/console`) as a child process for the console's tests:
//! `--listen 127.0.0.1:0` and the address read from its one stdout line (`console listening on
//! http://ADDR`); its stderr (the log) kept in a temporary file so a test can assert that no key
//! or card number was logged. Killed when dropped. `scripts/test.sh` must build it first
//! (`cargo build -p console --bins`).

use std::{
    path::PathBuf,
    process::Stdio,
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdout, Command},
};

use crate::checks::GUARD;

/// `console` next to the test executable (`target/debug/deps/…` → `target/debug/`), else
/// `$CARGO_TARGET_DIR/debug/console` or the workspace's `target/debug/console`.
pub fn console_binary() -> PathBuf {
    let beside_tests = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("console")));
    if let Some(binary) = beside_tests.filter(|b| b.is_file()) {
        return binary;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let binary = target.join("debug").join("console");
    assert!(
        binary.is_file(),
        "the console binary {} is missing: build it first with `cargo build -p console --bins`",
        binary.display()
    );
    binary
}

/// One console serving on a free port, talking to one coordinator.
pub struct ConsoleProcess {
    child: Child,
    url: String,
    log: PathBuf,
    /// Kept open so that the console never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl ConsoleProcess {
    /// Starts the console against `coordinator_url` and waits for its address.
    pub async fn spawn(coordinator_url: &str) -> ConsoleProcess {
        Self::spawn_with(coordinator_url, &[]).await
    }

    /// As `spawn`, with `extra` arguments.
    pub async fn spawn_with(coordinator_url: &str, extra: &[&str]) -> ConsoleProcess {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let log = std::env::temp_dir().join(format!("console-{}-{nanos}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("create the console's log file");
        let mut child = Command::new(console_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--coordinator-url",
                coordinator_url,
            ])
            .args(extra)
            .env("RUST_LOG", "debug")
            .env_remove("CONSOLE_LISTEN")
            .env_remove("COORDINATOR_URL")
            .env_remove("CONSOLE_SESSION_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start the console binary");
        let mut stdout = BufReader::new(child.stdout.take().expect("the console's stdout"));
        let mut line = String::new();
        let read = tokio::time::timeout(GUARD, stdout.read_line(&mut line)).await;
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        match read {
            Ok(Ok(n)) if n > 0 => {}
            other => panic!(
                "the console printed no address ({other:?}); its log:\n{}",
                log_text()
            ),
        }
        let url = line
            .trim()
            .strip_prefix("console listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; log:\n{}", log_text()))
            .to_owned();
        ConsoleProcess {
            child,
            url,
            log,
            _stdout: stdout,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `kill -TERM` (a graceful stop), then waits for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the console is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        tokio::time::timeout(GUARD, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("never happened: the console exits; log:\n{}", self.log()))
            .expect("wait for the console")
    }

    /// What the console logged so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("the console's log is kept at {}", self.log.display());
        }
    }
}
