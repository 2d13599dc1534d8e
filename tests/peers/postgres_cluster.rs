//! A PostgreSQL cluster of one test's own, on a free port, that the test may stop and start
//! again: the shared server cannot be taken away from the other tests.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every command runs as
//! the `postgres` user (`runuser`) on a data directory the test creates and hands to that
//! user. The binaries are those of the newest PostgreSQL under /usr/lib/postgresql, or of
//! `PAYSTEP_TEST_POSTGRES_BIN`. The cluster is stopped when dropped, so a failing test
//! leaves no server behind.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

/// How long `pg_ctl` waits for the server to start (crash recovery included) or stop.
const PG_CTL_WAIT_S: &str = "60";

pub struct PostgresCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PostgresCluster {
    /// Creates a cluster (trust authentication, superuser `postgres`) on a free port and
    /// starts it.
    pub async fn start() -> PostgresCluster {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::Builder::new()
            .prefix("paystep-postgres-")
            .tempdir()
            .expect("a temporary directory for the cluster");
        let cluster = PostgresCluster {
            bin: binaries(),
            dir,
            port,
        };
        if running_as_root() {
            // The server's user must own its data directory and the socket directory.
            let owned = std::process::Command::new("chown")
                .arg("postgres:")
                .arg(cluster.dir.path())
                .output()
                .expect("chown runs");
            assert!(owned.status.success(), "chown: {}", text(&owned));
        }
        let data = cluster.data_dir();
        let initdb = cluster
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .await
            .expect("initdb runs");
        assert!(initdb.status.success(), "initdb failed: {}", text(&initdb));
        cluster.start_again().await;
        cluster
    }

    /// The URL of `database` on this cluster, over TCP.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server and waits until it accepts connections (after crash recovery when
    /// it was stopped immediately).
    pub async fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let started = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-o", &options, "-w", "-t", PG_CTL_WAIT_S, "start"])
            .output()
            .await
            .expect("pg_ctl runs");
        assert!(
            started.status.success(),
            "PostgreSQL did not start: {}\n{}",
            text(&started),
            self.log_tail()
        );
    }

    /// Stops the server in immediate mode, as a crash would: every backend is killed, the
    /// clients' connections break, and the next start runs crash recovery. Returns once the
    /// server is gone.
    pub async fn stop_immediately(&self) {
        let stopped = self.stop_command().output().await.expect("pg_ctl runs");
        assert!(
            stopped.status.success(),
            "PostgreSQL did not stop: {}\n{}",
            text(&stopped),
            self.log_tail()
        );
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!("postgres.log (end):\n{}", lines[start..].join("\n"))
    }

    fn stop_command(&self) -> Command {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.data_dir()).args([
            "-m",
            "immediate",
            "-w",
            "-t",
            PG_CTL_WAIT_S,
            "stop",
        ]);
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// `program` from the PostgreSQL binaries, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.kill_on_drop(true);
        command
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if !self.data_dir().join("postmaster.pid").exists() {
            return;
        }
        // Blocking is right here: the directory goes right after, and the server with it.
        let stopped = self.stop_command().as_std_mut().output();
        if stopped.is_ok_and(|output| output.status.success()) {
            return;
        }
        // pg_ctl failed: kill the postmaster by the PID it wrote, so nothing is left running.
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid"));
        if let Some(pid) = pid_file
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned))
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
    }
}

/// The directory of `initdb`, `pg_ctl` and `postgres`.
fn binaries() -> PathBuf {
    if let Ok(bin) = std::env::var("PAYSTEP_TEST_POSTGRES_BIN") {
        return PathBuf::from(bin);
    }
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("pg_ctl").exists())
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server binaries under /usr/lib/postgresql (scripts/test.sh installs \
             them; or set PAYSTEP_TEST_POSTGRES_BIN)"
        ),
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|metadata| metadata.uid() == 0)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
