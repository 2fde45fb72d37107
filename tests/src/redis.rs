//! A throwaway Redis server of a test's own (`redis-server` on a free port, its files in a temp
//! dir), for tests that stop and start Redis. Never touches a server it did not start.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a start or a stop may take before the test fails (a guard, not a speed assertion).
const GUARD: Duration = Duration::from_secs(30);

pub struct ThrowawayRedis {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl ThrowawayRedis {
    /// Starts `redis-server` on a free port; blocks until it answers PING.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("throwaway-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut redis = Self {
            dir,
            port,
            child: None,
        };
        redis.start_again();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the (stopped) server again on the same port and directory (a `dump.rdb` left by
    /// `stop_saving` is loaded); waits until it answers PING.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = std::fs::File::create(self.dir.join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install -y redis-server)");
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "redis-server exited at start ({status}): {}",
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                );
            }
            assert!(start.elapsed() < GUARD, "redis-server never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
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
    pub fn stop(&mut self) {
        self.shutdown("SHUTDOWN NOSAVE");
    }

    /// Stops the server after writing its keys to disk (`SHUTDOWN SAVE`): when it starts again
    /// every key comes back with its expiry, as after a failover to a replica that had them.
    pub fn stop_saving(&mut self) {
        self.shutdown("SHUTDOWN SAVE");
    }

    fn shutdown(&mut self, command: &str) {
        let mut child = self.child.take().expect("redis-server running");
        // The server closes the connection without an answer once it is going down.
        let _ = self.command(command);
        let start = Instant::now();
        loop {
            if child.try_wait().expect("redis-server status").is_some() {
                break;
            }
            assert!(start.elapsed() < GUARD, "redis-server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
