//! A throwaway Redis server (`redis-server` on a free port, its files in a temp dir), for runs
//! that stop and start Redis. Never touches a server it did not start.
//!
//! Every operation blocks (briefly): from async code call it in `spawn_blocking`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

/// How long a start or a stop may take before it counts as failed (a guard, not a speed goal).
const GUARD: Duration = Duration::from_secs(30);

pub struct ThrowawayRedis {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl ThrowawayRedis {
    /// Starts `redis-server` on a free port; returns once it answers PING.
    pub fn start() -> anyhow::Result<Self> {
        let port = super::free_port()?;
        let dir =
            std::env::temp_dir().join(format!("throwaway-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the directory {}", dir.display()))?;
        let mut redis = Self {
            dir,
            port,
            child: None,
        };
        redis.start_again()?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this handle's server process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the (stopped) server again on the same port and directory (a `dump.rdb` left by
    /// `stop_saving` is loaded); returns once it answers PING.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "redis-server already running");
        let log_path = self.dir.join("redis.log");
        let log = std::fs::File::create(&log_path).context("creating the redis log")?;
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log.try_clone().context("redis log")?)
            .stderr(log)
            .stdin(Stdio::null());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .context("starting redis-server (apt-get install -y redis-server)")?;
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "redis-server exited at start ({status}): {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if start.elapsed() > GUARD {
                self.kill();
                bail!("redis-server never answered on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Whether the server answers PING now.
    pub fn answers(&self) -> bool {
        self.command("PING").is_some_and(|r| r.starts_with("+PONG"))
    }

    /// One inline command; the raw answer, or `None` if the server cannot be reached.
    fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Stops the server at once, forgetting every key (`SHUTDOWN NOSAVE`): a Redis that restarts
    /// empty.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown("SHUTDOWN NOSAVE")
    }

    /// Stops the server after writing its keys to disk (`SHUTDOWN SAVE`): when it starts again
    /// every key comes back with its expiry, as after a failover to a replica that had them.
    pub fn stop_saving(&mut self) -> anyhow::Result<()> {
        self.shutdown("SHUTDOWN SAVE")
    }

    fn shutdown(&mut self, command: &str) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("redis-server is not running");
        };
        // The server closes the connection without an answer once it is going down.
        let _ = self.command(command);
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {}
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(error).context("waiting for redis-server to stop");
                }
            }
            if start.elapsed() > GUARD {
                let _ = child.kill();
                let _ = child.wait();
                bail!("redis-server did not stop after {command}; killed it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
