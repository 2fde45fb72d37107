//! The real coordinator binary as a child process, for faults only a process can suffer:
//! `kill -9` (`Child::kill` sends SIGKILL on Unix), SIGSTOP and SIGCONT, SIGTERM (a graceful
//! shutdown) with its exit status, and a restart on the same address with the same journal.
//!
//! booking-sim does not depend on the `coordinator` crate: it runs the binary, found by
//! [`find_coordinator_binary`]. Each replica's output goes to a log file of its own, appended
//! to across restarts.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

/// How long a replica may take to listen before its start counts as failed.
pub const START_GUARD: Duration = Duration::from_secs(60);

/// Where the coordinator binary is: `explicit` if given (it must exist), else `$COORDINATOR_BIN`,
/// else next to the running executable (`target/debug/booking-sim` → `target/debug/coordinator`;
/// a test binary in `target/debug/deps` looks one level up), else `$CARGO_TARGET_DIR/debug`, else
/// this workspace's `target/debug`, else `coordinator` on `PATH`.
pub fn find_coordinator_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        ensure!(
            path.is_file(),
            "the coordinator binary {} does not exist",
            path.display()
        );
        return Ok(path.to_path_buf());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("COORDINATOR_BIN") {
        candidates.push(PathBuf::from(path));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("coordinator"));
        if dir.file_name().is_some_and(|name| name == "deps")
            && let Some(up) = dir.parent()
        {
            candidates.push(up.join("coordinator"));
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("debug").join("coordinator"));
    }
    candidates.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/debug/coordinator"
    )));
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v coordinator"])
        .output()
        && out.status.success()
    {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "the coordinator binary was not found (looked at {}, and on PATH): build it with \
         `cargo build -p coordinator --bins`, or name it with --coordinator-bin / COORDINATOR_BIN",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Everything one replica is started with. The listen address is fixed at the first start (a
/// free port unless given), so a restarted replica is found where it was.
#[derive(Clone, Debug)]
pub struct ReplicaSpec {
    pub binary: PathBuf,
    pub replica_id: String,
    pub database_url: String,
    pub redis_url: String,
    pub redis_key_prefix: String,
    pub gateway_url: String,
    pub api_keys_file: PathBuf,
    pub journal_dir: PathBuf,
    /// More `--flag value` arguments, after the ones above (a later flag wins).
    pub extra: Vec<String>,
    /// Where the process' stdout and stderr go (appended to).
    pub log: PathBuf,
    /// `None`: a free port on 127.0.0.1.
    pub listen: Option<SocketAddr>,
    /// Environment variables set for the process (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
}

impl ReplicaSpec {
    /// The command line (without the program) for listening on `listen`.
    fn args(&self, listen: SocketAddr) -> Vec<String> {
        let mut args: Vec<String> = [
            "--coordinator-listen",
            &listen.to_string(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--database-url",
            &self.database_url,
            "--redis-url",
            &self.redis_url,
            "--redis-key-prefix",
            &self.redis_key_prefix,
            "--gateway-url",
            &self.gateway_url,
            "--api-keys-file",
            &self.api_keys_file.to_string_lossy(),
            "--journal-dir",
            &self.journal_dir.to_string_lossy(),
            "--replica-id",
            &self.replica_id,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// One coordinator replica running as its own process (or killed, waiting for a restart).
pub struct ReplicaProcess {
    spec: ReplicaSpec,
    addr: SocketAddr,
    child: Option<Child>,
    pid: u32,
    paused: AtomicBool,
}

impl ReplicaProcess {
    /// Starts the replica and waits until its port accepts connections.
    pub async fn spawn(spec: ReplicaSpec) -> anyhow::Result<Self> {
        let addr = match spec.listen {
            Some(addr) => addr,
            None => ([127, 0, 0, 1], super::free_port()?).into(),
        };
        let mut process = Self {
            spec,
            addr,
            child: None,
            pid: 0,
            paused: AtomicBool::new(false),
        };
        process.start().await?;
        Ok(process)
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        ensure!(
            self.child.is_none(),
            "replica {} is already running",
            self.spec.replica_id
        );
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .with_context(|| format!("opening the log {}", self.spec.log.display()))?;
        let _ = writeln!(
            log,
            "==== booking-sim: starting replica {} on {} ====",
            self.spec.replica_id, self.addr
        );
        let mut command = Command::new(&self.spec.binary);
        command
            .args(self.spec.args(self.addr))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("process log")?)
            .stderr(log);
        for (name, value) in &self.spec.env {
            command.env(name, value);
        }
        // Its own process group: a Ctrl-C at the terminal reaches the driver only.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().with_context(|| {
            format!(
                "starting the coordinator binary {}",
                self.spec.binary.display()
            )
        })?;
        self.pid = child.id();
        self.child = Some(child);
        self.paused.store(false, Ordering::SeqCst);
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "replica {} exited before listening ({status}); its log ({}) ends:\n{}",
                    self.spec.replica_id,
                    self.spec.log.display(),
                    self.log_tail(40)
                );
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > START_GUARD {
                self.kill_9()?;
                bail!(
                    "replica {} never listened on {}; its log ({}) ends:\n{}",
                    self.spec.replica_id,
                    self.addr,
                    self.spec.log.display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a replica that was killed (or exited) again, on the same address, journal and
    /// settings; waits until it listens.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.try_wait()?.is_none() && self.child.is_some() {
            bail!("replica {} is still running", self.spec.replica_id);
        }
        self.child = None;
        self.start().await
    }

    pub fn replica_id(&self) -> &str {
        &self.spec.replica_id
    }

    pub fn spec(&self) -> &ReplicaSpec {
        &self.spec
    }

    /// The process id of the current (or last) incarnation.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// What the process logged so far, every incarnation.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.spec.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process runs (possibly frozen by SIGSTOP).
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None)) && self.child.is_some()
    }

    /// Whether it was frozen with [`Self::pause`] and not resumed since.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The exit status once the process has ended (`None` while it runs, or if it was never
    /// started again after a kill).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().context("reading the replica's status"),
            None => Ok(None),
        }
    }

    /// `kill -9`: the process dies at once, mid-call, without any clean-up (a frozen one too).
    pub fn kill_9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // Fails only if it has already been reaped; either way it is gone after wait.
            let _ = child.kill();
            child.wait().context("reaping the replica")?;
        }
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// `kill -STOP`: the process is frozen (timers, sockets and all) until [`Self::resume`].
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// `kill -CONT`.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// `kill -TERM`: what Kubernetes sends to stop a pod; starts a graceful shutdown.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("-TERM")
    }

    /// Waits until the process has exited (checking every 50 ms, at most `guard`) and returns
    /// its exit status.
    pub async fn wait_exit(&mut self, guard: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!("replica {} is not running", self.spec.replica_id);
            };
            if let Some(status) = child.try_wait().context("reading the replica's status")? {
                return Ok(status);
            }
            if start.elapsed() > guard {
                bail!(
                    "replica {} did not exit within {guard:?}",
                    self.spec.replica_id
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        ensure!(
            self.child.is_some(),
            "replica {} is not running",
            self.spec.replica_id
        );
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid.to_string())
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill {signal} {} failed", self.pid);
        Ok(())
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
