//! A throwaway PostgreSQL server (initdb + pg_ctl in a temp dir, on a free port), for runs that
//! stop and start the database. Never touches a server it did not start. As root, the cluster
//! belongs to the `postgres` user (initdb refuses to run as root).
//!
//! Every operation blocks (it runs `pg_ctl`): from async code call it in `spawn_blocking`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};

pub struct ThrowawayPg {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The directory holding `initdb` and `pg_ctl`: the one on `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v pg_ctl"])
        .output()
        && out.status.success()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if let Some(dir) = Path::new(&path).parent()
            && dir.join("initdb").exists()
        {
            return Ok(dir.to_path_buf());
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .context("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl ThrowawayPg {
    /// initdb and start; returns once the server accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let bin = pg_bin_dir()?;
        let port = super::free_port()?;
        let dir = std::env::temp_dir().join(format!("throwaway-pg-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the directory {}", dir.display()))?;
        let as_postgres = is_root();
        // From here on, Drop removes the directory whatever fails.
        let pg = Self {
            dir,
            bin,
            port,
            as_postgres,
        };
        if as_postgres {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(&pg.dir)
                .status()
                .context("running chown")?;
            ensure!(status.success(), "chown postgres {}", pg.dir.display());
        }
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "root",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        pg.start_again()?;
        Ok(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let output = self
            .command(tool)
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !output.status.success() {
            bail!(
                "{tool} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// `postgres://root@127.0.0.1:PORT` (append `/dbname`).
    pub fn url_base(&self) -> String {
        format!("postgres://root@127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Starts the (stopped) server again on the same port and data; returns once it is ready.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let log = self.log_path();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        )
    }

    /// Stops the server at once (connections are cut, as in a crash of the database host).
    pub fn stop(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// Whether the server runs (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let data = self.dir.join("data");
        self.command("pg_ctl")
            .args(["-D", &data.to_string_lossy(), "status"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data.to_string_lossy(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
