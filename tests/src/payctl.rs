//! The real `payctl` binary (`target/debug/payctl`) as a child process: run to completion
//! (exit code, stdout, stderr), or spawned with its stdout streamed line by line (`watch`).
//! `cargo test --workspace` builds it (the `payctl` package has an integration test of its own,
//! so Cargo builds its binary before any test runs); alone: `cargo build -p payctl`.

use std::{path::PathBuf, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

use crate::checks::GUARD;
use crate::coordinator::key_for;

/// `payctl` next to this test executable (`target/debug/deps/…` → `target/debug/payctl`), else
/// `$CARGO_TARGET_DIR/debug/payctl` or the workspace's `target/debug/payctl`.
pub fn payctl_binary() -> PathBuf {
    let beside_tests = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("payctl")));
    if let Some(binary) = beside_tests.filter(|b| b.exists()) {
        return binary;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let binary = target.join("debug").join("payctl");
    assert!(
        binary.exists(),
        "the payctl binary {} is missing: build it first with `cargo build -p payctl`",
        binary.display()
    );
    binary
}

/// What one run of `payctl` left behind.
#[derive(Debug)]
pub struct Output {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout and stderr together, for "appears anywhere" checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// How to run `payctl` against one coordinator: its URL and the caller's key, passed the way an
/// operator would (the `PAYCTL_API_KEY` environment variable), or none at all.
#[derive(Clone, Debug)]
pub struct Payctl {
    server: String,
    key: Option<String>,
}

impl Payctl {
    /// As the key id `key_id` of the test environment (`OPERATOR`, `ADMIN`…).
    pub fn new(server: &str, key_id: &str) -> Payctl {
        Payctl {
            server: server.to_owned(),
            key: Some(key_for(key_id)),
        }
    }

    /// With this plaintext key (a wrong one, say).
    pub fn with_key(server: &str, key: &str) -> Payctl {
        Payctl {
            server: server.to_owned(),
            key: Some(key.to_owned()),
        }
    }

    /// With no key at all.
    pub fn anonymous(server: &str) -> Payctl {
        Payctl {
            server: server.to_owned(),
            key: None,
        }
    }

    /// The command, with a clean `PAYCTL_*` environment and stdin closed (never a terminal, so
    /// it never prompts).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(payctl_binary());
        command
            .env_remove("PAYCTL_API_KEY")
            .env_remove("PAYCTL_KEY_FILE")
            .env("PAYCTL_SERVER", &self.server)
            .env("RUST_LOG", "warn,payments_client=info")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(key) = &self.key {
            command.env("PAYCTL_API_KEY", key);
        }
        command
    }

    /// Runs to completion (a hung run fails the test after the guard).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        run(&mut command).await
    }

    /// Starts `payctl` with its stdout piped, for commands that stream (`watch`).
    pub fn spawn(&self, args: &[&str]) -> Streaming {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn payctl");
        let stdout = child.stdout.take().expect("piped stdout");
        Streaming {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }
}

/// Runs a prepared `payctl` command to completion.
pub async fn run(command: &mut Command) -> Output {
    let output = tokio::time::timeout(GUARD, command.output())
        .await
        .expect("payctl never finished")
        .expect("run payctl");
    Output {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `payctl` whose stdout is read line by line; killed when dropped.
pub struct Streaming {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Streaming {
    /// Reads lines until one satisfies `wanted`, returning it and every line before it; fails
    /// the test if the output ends first (or nothing comes within the guard).
    pub async fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        let read = async {
            while let Some(line) = self.lines.next_line().await.expect("read payctl's stdout") {
                let done = wanted(&line);
                seen.push(line);
                if done {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(GUARD, read).await {
            Ok(true) => seen,
            Ok(false) => panic!(
                "payctl ended before {what}; it printed:\n{}",
                seen.join("\n")
            ),
            Err(_) => panic!(
                "never happened: {what}; payctl printed:\n{}",
                seen.join("\n")
            ),
        }
    }

    /// Kills the process and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
