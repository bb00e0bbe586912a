//! A throwaway PostgreSQL cluster for integration tests: initdb'd and run as
//! the OS user `postgres` in a temporary directory, reachable only through a
//! unix socket in that directory. The cluster is stopped when dropped.
//!
//! `BGW_PG_CONFIG` selects the installation (default `/usr/bin/pg_config`);
//! the extension must already be installed there (`scripts/test` does it).
#![allow(dead_code)]

use postgres::{Client, NoTls};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod jobs;

pub const PORT: u16 = 5432;
/// How long a test waits for a job's run.
pub const T_JOBS: Duration = Duration::from_secs(60);
pub const OS_USER: &str = "postgres";

pub fn pg_config() -> String {
    std::env::var("BGW_PG_CONFIG").unwrap_or_else(|_| "/usr/bin/pg_config".into())
}

fn pg_config_value(flag: &str) -> PathBuf {
    let out = Command::new(pg_config())
        .arg(flag)
        .output()
        .expect("run pg_config");
    assert!(out.status.success(), "pg_config {flag} failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn bindir() -> PathBuf {
    pg_config_value("--bindir")
}

pub fn pkglibdir() -> PathBuf {
    pg_config_value("--pkglibdir")
}

/// Runs a program as the `postgres` OS user, without the caller's Rust
/// settings leaking into the server (RUST_BACKTRACE would add backtraces to
/// error DETAILs).
pub fn run_as_postgres(program: &Path, args: &[&str]) -> Output {
    Command::new(runuser())
        .args(["-u", OS_USER, "--"])
        .arg(program)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("LC_ALL", "C")
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} via {}: {e}",
                program.display(),
                runuser().display()
            )
        })
}

/// util-linux's runuser, which lives in sbin (not on every PATH).
fn runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

pub struct Cluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    running: bool,
}

impl Cluster {
    /// initdb and start with the library preloaded, plus `conf` lines.
    pub fn start(conf: &[&str]) -> Cluster {
        Self::start_with(&["shared_preload_libraries = 'bgworker_rs'"], conf)
    }

    /// A cluster that does not preload the library.
    pub fn start_without_preload(conf: &[&str]) -> Cluster {
        Self::start_with(&[], conf)
    }

    fn start_with(base: &[&str], conf: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("bgw-test-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod tempdir");
        let cluster = Cluster {
            dir,
            bindir: bindir(),
            running: false,
        };
        let data = cluster.data_dir();
        let out = run_as_postgres(
            &cluster.bindir.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut lines = vec![
            "listen_addresses = ''".to_string(),
            format!(
                "unix_socket_directories = '{}'",
                cluster.socket_dir().display()
            ),
            format!("port = {PORT}"),
            "fsync = off".into(),
            "bgworker_rs.naptime = '100ms'".into(),
            // No job scheduler unless a test asks for one (tests/jobs.rs):
            // the other suites count workers and worker slots exactly.
            "bgworker_rs.max_jobs = 0".into(),
        ];
        lines.extend(base.iter().map(|s| s.to_string()));
        lines.extend(conf.iter().map(|s| s.to_string()));
        cluster.append_conf(&lines.join("\n"));
        let mut cluster = cluster;
        cluster.pg_ctl_start();
        cluster
    }

    /// A streaming standby of `primary`, made with `pg_basebackup -R`,
    /// listening on its own socket directory, plus `conf` lines.
    pub fn standby_of(primary: &Cluster, conf: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("bgw-standby-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod tempdir");
        let mut standby = Cluster {
            dir,
            bindir: bindir(),
            running: false,
        };
        let data = standby.data_dir();
        let out = run_as_postgres(
            &standby.bindir.join("pg_basebackup"),
            &[
                "-h",
                primary.socket_dir().to_str().unwrap(),
                "-p",
                &PORT.to_string(),
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines = vec![format!(
            "unix_socket_directories = '{}'",
            standby.socket_dir().display()
        )];
        lines.extend(conf.iter().map(|s| s.to_string()));
        standby.append_conf(&lines.join("\n"));
        standby.pg_ctl_start();
        standby
    }

    /// The postmaster's pid, from postmaster.pid.
    pub fn postmaster_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .expect("read postmaster.pid");
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("pid in postmaster.pid")
    }

    /// Forget that the server runs (it was killed from outside).
    pub fn mark_stopped(&mut self) {
        self.running = false;
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn append_conf(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(f, "\n{text}").expect("write postgresql.conf");
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data_dir();
        let log = self.log_path();
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(args);
        run_as_postgres(&self.bindir.join("pg_ctl"), &all)
    }

    /// Starts the server; panics with the server log if it does not come up.
    pub fn pg_ctl_start(&mut self) {
        let out = self.pg_ctl(&["-w", "-t", "60", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.running = true;
    }

    /// Starts the server and returns pg_ctl's outcome instead of panicking.
    pub fn try_start(&mut self) -> Output {
        let out = self.pg_ctl(&["-w", "-t", "30", "start"]);
        self.running = out.status.success();
        out
    }

    pub fn stop(&mut self, mode: &str) -> Output {
        let out = self.pg_ctl(&["-w", "-t", "60", "-m", mode, "stop"]);
        if out.status.success() {
            self.running = false;
        }
        out
    }

    /// Stops with `pg_ctl -m mode -t secs`: fails if not stopped by then.
    pub fn stop_within(&mut self, mode: &str, secs: u32) -> Output {
        let out = self.pg_ctl(&["-w", "-t", &secs.to_string(), "-m", mode, "stop"]);
        if out.status.success() {
            self.running = false;
        }
        out
    }

    pub fn restart(&mut self) {
        let out = self.stop("fast");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.pg_ctl_start();
    }

    pub fn reload(&self) {
        let out = self.pg_ctl(&["reload"]);
        assert!(out.status.success(), "pg_ctl reload failed");
    }

    pub fn connect(&self) -> Client {
        self.connect_as("postgres", "postgres")
    }

    fn config(&self, user: &str, dbname: &str) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host_path(self.socket_dir())
            .port(PORT)
            .user(user)
            .dbname(dbname)
            .application_name("bgworker_rs tests");
        config
    }

    pub fn try_connect_as(&self, user: &str, dbname: &str) -> Result<Client, postgres::Error> {
        self.config(user, dbname).connect(NoTls)
    }

    /// A session with settings of its own from its start (`options`, as in
    /// `-c name=value`), over those of its database and role.
    pub fn connect_with_options(&self, user: &str, dbname: &str, options: &str) -> Client {
        self.config(user, dbname)
            .options(options)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect as {user} to {dbname}: {e}"))
    }

    pub fn connect_as(&self, user: &str, dbname: &str) -> Client {
        self.try_connect_as(user, dbname)
            .unwrap_or_else(|e| panic!("connect as {user} to {dbname}: {e}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the server log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let found = poll(timeout, || self.log().contains(needle).then_some(()));
        assert!(
            found.is_some(),
            "log never contained {needle:?} within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    /// How many times `needle` appears in the server log.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The server's side of a failed test, for CI logs.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!("---- server log (last {} lines) ----", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if self.running {
            let _ = self.stop("immediate");
        }
    }
}

/// Calls `f` every 20 ms until it returns `Some`, or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like `poll`, but panics with `what` when the deadline passes.
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting until {what}"))
}

/// Pids of our workers by backend type ('bgworker_rs' or 'bgworker_rs dynamic').
pub fn worker_pids(client: &mut Client, backend_type: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = $1 ORDER BY pid",
            &[&backend_type],
        )
        .expect("query pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub fn pid_alive(client: &mut Client, pid: i32) -> bool {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .map(|r| r.get::<_, i64>(0) == 1)
        .unwrap_or(false)
}

/// Current 'total' of schemaN.counted, if the row exists.
pub fn total(client: &mut Client, index: i32) -> Option<i32> {
    let sql = format!("SELECT value FROM schema{index}.counted WHERE type = 'total'");
    client.query_opt(&sql, &[]).ok().flatten().map(|r| r.get(0))
}

pub fn delta_count(client: &mut Client, index: i32) -> i64 {
    let sql = format!("SELECT count(*) FROM schema{index}.counted WHERE type = 'delta'");
    client.query_one(&sql, &[]).expect("count deltas").get(0)
}

pub fn table_exists(client: &mut Client, index: i32) -> bool {
    let sql = format!("SELECT to_regclass('schema{index}.counted') IS NOT NULL");
    client
        .query_one(&sql, &[])
        .map(|r| r.get(0))
        .unwrap_or(false)
}

/// The SQLSTATE and message of a failed statement; panics if it succeeded.
pub fn expect_error(
    client: &mut Client,
    sql: &str,
) -> (String, String, Option<String>, Option<String>) {
    match client.batch_execute(sql) {
        Ok(()) => panic!("expected an error from {sql:?}, but it succeeded"),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("not a server error for {sql:?}: {e}"));
            (
                db.code().code().to_string(),
                db.message().to_string(),
                db.detail().map(str::to_string),
                db.hint().map(str::to_string),
            )
        }
    }
}

/// Sends a signal (e.g. "KILL", "TERM") to a process; false if it failed.
pub fn signal(pid: i32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Does a process with this pid exist (zombies included)?
pub fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A bgw_list() row: (kind, index, pid, state, restarts, last_error).
pub type ListRow = (String, i32, Option<i32>, String, i32, Option<String>);

pub fn bgw_list(c: &mut Client) -> Vec<ListRow> {
    c.query(
        "SELECT kind, index, pid, state, restarts, last_error FROM bgw_list() ORDER BY kind, index",
        &[],
    )
    .expect("bgw_list")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

/// A cluster with the library preloaded and the extension created in
/// database postgres, and a connection to it.
pub fn start_with_extension(conf: &[&str]) -> (Cluster, Client) {
    let cluster = Cluster::start(conf);
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION bgworker_rs")
        .expect("CREATE EXTENSION");
    (cluster, c)
}

/// The int8 in the first column of the one row `sql` returns.
pub fn scalar_i64(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
