//! A PostgreSQL cluster of our own: initdb, configuration, start/stop/kill,
//! and clients pointed at it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::os::{self, Output, COMMAND_TIMEOUT};
use crate::psql::Psql;
use crate::testdir::TestDir;

/// Where the principal key comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `tde.principal_key_file`
    File(PathBuf),
    /// `tde.principal_key_command`
    Command(String),
    /// Both parameters set (a configuration error).
    Both(PathBuf, String),
    /// Neither parameter set.
    None,
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `initdb --data-checksums`
    pub checksums: bool,
    pub key: KeySource,
    /// Whether `tde` is in `shared_preload_libraries`.
    pub preload: bool,
    /// `initdb --wal-segsize` in MB (PostgreSQL's default, 16, when `None`).
    pub wal_segment_size_mb: Option<u32>,
    /// The PostgreSQL binaries to use ([`os::pg_bin`] when `None`).
    pub bin: Option<PathBuf>,
}

impl ClusterOptions {
    /// tde preloaded with the principal key in `key_file`, no checksums.
    pub fn with_key_file(key_file: &Path) -> ClusterOptions {
        ClusterOptions {
            checksums: false,
            key: KeySource::File(key_file.to_path_buf()),
            preload: true,
            wal_segment_size_mb: None,
            bin: None,
        }
    }

    /// A cluster of another PostgreSQL installation (e.g. the old version of
    /// a pg_upgrade).
    pub fn bin(mut self, dir: &Path) -> ClusterOptions {
        self.bin = Some(dir.to_path_buf());
        self
    }

    pub fn checksums(mut self, on: bool) -> ClusterOptions {
        self.checksums = on;
        self
    }

    pub fn wal_segment_size_mb(mut self, mb: u32) -> ClusterOptions {
        self.wal_segment_size_mb = Some(mb);
        self
    }
}

/// Quotes `s` as a postgresql.conf / SQL string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Name of the configuration file, included from `postgresql.conf`, that the
/// tests rewrite whole whenever a setting changes.
const TEST_CONF: &str = "tde_test.conf";

fn next_port(sock_dir: &Path) -> u16 {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        // Spread concurrent test processes over the range.
        AtomicU16::new(56000 + (std::process::id() % 400) as u16 * 10)
    });
    for _ in 0..4000 {
        let mut port = next.fetch_add(1, Ordering::Relaxed);
        if !(56000..60000).contains(&port) {
            next.store(56001, Ordering::Relaxed);
            port = 56000;
        }
        let socket = format!(".s.PGSQL.{port}");
        let taken = [
            sock_dir,
            Path::new("/tmp"),
            Path::new("/var/run/postgresql"),
        ]
        .iter()
        .any(|d| d.join(&socket).exists() || d.join(format!("{socket}.lock")).exists());
        if !taken {
            return port;
        }
    }
    panic!("no free port in 56000..60000");
}

pub struct Cluster {
    dir: TestDir,
    name: String,
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    key: KeySource,
    settings: RefCell<BTreeMap<String, String>>,
    bin: PathBuf,
}

impl Cluster {
    /// Runs initdb for a new cluster `name` in `dir` and writes its
    /// configuration; the server is not started.
    pub fn new(dir: &TestDir, name: &str, opts: ClusterOptions) -> Cluster {
        os::become_subreaper();
        let root = dir.subdir(name);
        let data = root.join("data");
        let log = root.join("server.log");
        let bin = opts.bin.clone().unwrap_or_else(os::pg_bin);
        let mut initdb = os::command(bin.join("initdb"), &root);
        initdb.args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]);
        if opts.checksums {
            initdb.arg("--data-checksums");
        } else if os::major_of(&bin) >= 18 {
            // Since PostgreSQL 18 initdb turns them on unless told not to.
            initdb.arg("--no-data-checksums");
        }
        if let Some(mb) = opts.wal_segment_size_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        let out = os::run(&mut initdb, None, COMMAND_TIMEOUT);
        assert!(out.success(), "initdb failed:\n{}", out.text());

        let port = next_port(dir.path());
        let cluster = Cluster {
            dir: dir.clone(),
            name: name.to_string(),
            root,
            data,
            log,
            port,
            key: opts.key.clone(),
            settings: RefCell::new(BTreeMap::new()),
            bin,
        };
        {
            let mut s = cluster.settings.borrow_mut();
            s.insert("listen_addresses".into(), quote(""));
            s.insert(
                "unix_socket_directories".into(),
                quote(&dir.path().to_string_lossy()),
            );
            s.insert("port".into(), port.to_string());
            s.insert("max_connections".into(), "30".into());
            // Small, so that ordinary workloads evict pages through the
            // storage manager, not only checkpoints.
            s.insert("shared_buffers".into(), quote("32MB"));
            s.insert("log_line_prefix".into(), quote("%m [%p] "));
            if opts.preload {
                s.insert("shared_preload_libraries".into(), quote("tde"));
            }
            // Another build of tde to run a test against (for example the
            // previous release, to see a test fail on it).
            if let Some(lib) = std::env::var_os("TDE_TEST_LIBRARY_DIR") {
                s.insert(
                    "dynamic_library_path".into(),
                    quote(&format!("{}:$libdir", Path::new(&lib).display())),
                );
            }
            match &opts.key {
                KeySource::File(path) => {
                    s.insert(
                        "tde.principal_key_file".into(),
                        quote(&path.to_string_lossy()),
                    );
                }
                KeySource::Command(cmd) => {
                    s.insert("tde.principal_key_command".into(), quote(cmd));
                }
                KeySource::Both(path, cmd) => {
                    s.insert(
                        "tde.principal_key_file".into(),
                        quote(&path.to_string_lossy()),
                    );
                    s.insert("tde.principal_key_command".into(), quote(cmd));
                }
                KeySource::None => {}
            }
        }
        let conf = cluster.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&format!("\ninclude '{TEST_CONF}'\n"));
        std::fs::write(&conf, text).expect("write postgresql.conf");
        cluster.write_settings();
        cluster
    }

    /// A new cluster `name` whose data directory is a base backup of the
    /// running cluster `source`, taken with `pg_basebackup -D <data>
    /// <args>` (e.g. `-X stream -R` for a standby, `-X none` for a backup
    /// restored from a WAL archive). It keeps `source`'s settings and
    /// principal key (the keyring is part of the copied data directory) and
    /// gets a port of its own; it is not started.
    pub fn from_base_backup(source: &Cluster, name: &str, args: &[&str]) -> Cluster {
        let root = source.dir.subdir(name);
        let data = root.join("data");
        let mut cmd = source.client("pg_basebackup");
        cmd.arg("-D").arg(&data).args(["-c", "fast", "--no-sync"]);
        cmd.args(args);
        let out = os::run(&mut cmd, None, COMMAND_TIMEOUT);
        assert!(
            out.success(),
            "pg_basebackup of {} failed:\n{}",
            source.name,
            out.text()
        );
        Cluster::copy_of(source, name)
    }

    /// A cluster made of `<name>/data` next to `source`'s, which a copy of
    /// `source` (a base backup the test ran itself) has filled; same key
    /// and settings, its own port.
    pub fn copy_of(source: &Cluster, name: &str) -> Cluster {
        let root = source.dir.path().join(name);
        let data = root.join("data");
        let cluster = Cluster {
            dir: source.dir.clone(),
            name: name.to_string(),
            log: root.join("server.log"),
            root,
            data,
            port: next_port(source.dir.path()),
            key: source.key.clone(),
            settings: RefCell::new(source.settings.borrow().clone()),
            bin: source.bin.clone(),
        };
        cluster.set("port", &cluster.port.to_string());
        cluster
    }

    /// The directory of this cluster's PostgreSQL binaries.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The principal key file, when the key comes from a file.
    pub fn key_file(&self) -> Option<&Path> {
        match &self.key {
            KeySource::File(path) | KeySource::Both(path, _) => Some(path),
            _ => None,
        }
    }

    /// The value of a parameter set by the tests, as written.
    pub fn setting(&self, key: &str) -> Option<String> {
        self.settings.borrow().get(key).cloned()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The cluster's own directory (holding `data/` and `server.log`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn keyring_dir(&self) -> PathBuf {
        self.data.join("pg_tde")
    }

    pub fn keyring_path(&self) -> PathBuf {
        self.keyring_dir().join("keyring.json")
    }

    /// Sets a configuration parameter; `value` is written as is (quote
    /// strings with [`quote`]). Takes effect at the next start or reload.
    pub fn set(&self, key: &str, value: &str) {
        self.settings
            .borrow_mut()
            .insert(key.to_string(), value.to_string());
        self.write_settings();
    }

    /// Removes a configuration parameter set by the tests.
    pub fn unset(&self, key: &str) {
        self.settings.borrow_mut().remove(key);
        self.write_settings();
    }

    fn write_settings(&self) {
        let mut text = String::from("# Written by the tde integration tests.\n");
        for (k, v) in self.settings.borrow().iter() {
            text.push_str(&format!("{k} = {v}\n"));
        }
        os::write_file(&self.data.join(TEST_CONF), text.as_bytes(), 0o600);
    }

    /// The whole server log.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn log_len(&self) -> usize {
        std::fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = os::command(self.bin.join("pg_ctl"), &self.root);
        cmd.arg("-D").arg(&self.data);
        cmd
    }

    /// Starts the server; on failure returns pg_ctl's output and what the
    /// server logged during this attempt.
    pub fn try_start(&self) -> Result<(), String> {
        self.try_start_with(&[])
    }

    /// [`Cluster::try_start`] with more `pg_ctl start` options (`-c` lifts
    /// the core file size limit).
    pub fn try_start_with(&self, pg_ctl_options: &[&str]) -> Result<(), String> {
        let before = self.log_len();
        let mut cmd = self.pg_ctl();
        cmd.args(["start", "-w", "-t", "120"])
            .args(pg_ctl_options)
            .arg("-l")
            .arg(&self.log);
        let out = os::run(&mut cmd, None, Duration::from_secs(180));
        if out.success() {
            return Ok(());
        }
        // A postmaster that failed before writing its pid file is already
        // reaped by pg_ctl; one that wrote it must not be left behind.
        self.stop_immediate_quietly();
        let log = self.log_text();
        let attempt = log.get(before..).unwrap_or(&log);
        Err(format!(
            "pg_ctl start failed ({}):\n{}\n--- server log of this attempt ---\n{}",
            out.status,
            out.text(),
            tail(attempt, 16 * 1024)
        ))
    }

    /// Starts the server, panicking with the log on failure.
    pub fn start(&self) {
        if let Err(e) = self.try_start() {
            panic!("cluster {} did not start: {e}", self.name);
        }
    }

    /// `pg_ctl stop -m fast`: a clean shutdown with a shutdown checkpoint.
    pub fn stop(&self) {
        let pid = self.postmaster_pid();
        let mut cmd = self.pg_ctl();
        cmd.args(["stop", "-m", "fast", "-w", "-t", "120"]);
        let out = os::run(&mut cmd, None, Duration::from_secs(180));
        assert!(
            out.success(),
            "pg_ctl stop failed:\n{}\n--- server log ---\n{}",
            out.text(),
            tail(&self.log_text(), 8 * 1024)
        );
        if let Some(pid) = pid {
            os::wait_gone(pid, Duration::from_secs(30));
        }
    }

    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// The postmaster's pid from the first line of `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The pid of the running postmaster: from `postmaster.pid`, alive, and
    /// still a postgres process (a stale pid file after `kill -9` may name a
    /// pid reused by something else).
    fn live_postmaster(&self) -> Option<i32> {
        let pid = self.postmaster_pid()?;
        (os::is_alive(pid) && os::cmdline(pid).contains("postgres")).then_some(pid)
    }

    pub fn is_running(&self) -> bool {
        self.live_postmaster().is_some()
    }

    /// `kill -9` of the postmaster, as in a crash; then waits until every
    /// server process is gone so that the next start runs crash recovery
    /// instead of finding shared memory still in use.
    pub fn kill9(&self) {
        let pid = self
            .live_postmaster()
            .expect("kill9: the server is not running");
        let children = os::children_of(pid);
        os::kill(pid, libc::SIGKILL);
        assert!(
            os::wait_gone(pid, Duration::from_secs(30)),
            "postmaster {pid} survived SIGKILL"
        );
        // Children notice the postmaster's death and exit on their own.
        let deadline = Instant::now() + Duration::from_secs(30);
        for &child in &children {
            let left = deadline.saturating_duration_since(Instant::now());
            if !os::wait_gone(child, left) && os::cmdline(child).contains("postgres") {
                os::kill(child, libc::SIGKILL);
                os::wait_gone(child, Duration::from_secs(10));
            }
        }
    }

    fn stop_immediate_quietly(&self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        if self.live_postmaster().is_none() {
            os::reap(pid);
            return;
        }
        let mut cmd = self.pg_ctl();
        cmd.args(["stop", "-m", "immediate", "-w", "-t", "60"]);
        let _ = os::try_run(&mut cmd, None, Duration::from_secs(90));
        if !os::wait_gone(pid, Duration::from_secs(10)) {
            os::kill(pid, libc::SIGKILL);
            os::wait_gone(pid, Duration::from_secs(10));
        }
    }

    /// A client program from the PostgreSQL binaries directory with the
    /// connection environment pointing at this cluster.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = os::command(self.bin.join(program), &self.root);
        cmd.env("PGHOST", self.dir.path())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            .env("PGCONNECT_TIMEOUT", "30");
        cmd
    }

    fn psql_cmd(&self, db: &str) -> Command {
        let mut cmd = self.client("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", db]);
        cmd
    }

    /// Runs `sql` (one or more statements, each in its own transaction)
    /// in database `db`; returns everything psql printed.
    pub fn psql_output(&self, db: &str, sql: &str) -> Output {
        let mut cmd = self.psql_cmd(db);
        cmd.args(["-f", "-"]);
        os::run(&mut cmd, Some(sql.as_bytes()), COMMAND_TIMEOUT)
    }

    /// Runs `sql` in database `postgres`; `Err` holds psql's output when
    /// it fails (connection refused, an error in a statement).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = self.psql_output("postgres", sql);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(out.text())
        }
    }

    /// Runs `sql` in database `postgres`, panicking on failure; returns the
    /// rows in unaligned format (`|` between columns), trimmed.
    pub fn psql(&self, sql: &str) -> String {
        match self.try_psql(sql) {
            Ok(out) => out.trim().to_string(),
            Err(e) => panic!("psql failed on cluster {}:\n{sql}\n---\n{e}", self.name),
        }
    }

    /// A long-lived connection to database `postgres`.
    pub fn connect(&self) -> Psql {
        Psql::spawn(self.psql_cmd("postgres"))
    }

    /// Runs a client program (pgbench, pg_amcheck, ...) to completion.
    pub fn run_client(&self, program: &str, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = self.client(program);
        cmd.args(args);
        os::run(&mut cmd, None, timeout)
    }

    /// Runs a server-side tool (pg_checksums, pg_controldata, ...) on the
    /// data directory: `tool <args> -D <data>`.
    pub fn run_tool(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = os::command(self.bin.join(program), &self.root);
        cmd.args(args).arg("-D").arg(&self.data);
        os::run(&mut cmd, None, COMMAND_TIMEOUT)
    }

    /// Starts pgbench in the background with its output in `pgbench.out`
    /// of the cluster directory.
    pub fn spawn_pgbench(&self, args: &[&str]) -> Background {
        let out_path = self.root.join("pgbench.out");
        let out = std::fs::File::create(&out_path).expect("create pgbench.out");
        let err = out.try_clone().expect("dup pgbench.out");
        let mut cmd = self.client("pgbench");
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        Background {
            child: cmd.spawn().expect("start pgbench"),
            output: out_path,
        }
    }

    /// Absolute path of a relation's main fork file.
    pub fn relation_file(&self, relation: &str) -> PathBuf {
        let rel = self.psql(&format!("SELECT pg_relation_filepath({})", quote(relation)));
        assert!(!rel.is_empty(), "{relation} has no storage");
        self.data.join(rel)
    }

    /// Sets a parameter, reloads the configuration and waits until new
    /// connections see `expect` for `SHOW key`; then gives the background
    /// processes (checkpointer, background writer), signalled by the
    /// postmaster at the same time, a moment to apply it too.
    pub fn set_and_reload(&self, key: &str, value: &str, expect: &str) {
        self.set(key, value);
        self.psql("SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.psql(&format!("SHOW {key}"));
            if now == expect {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key} is still {now}, not {expect}, 30 s after reload"
            );
            thread::sleep(Duration::from_millis(100));
        }
        thread::sleep(Duration::from_secs(1));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_immediate_quietly();
        if std::thread::panicking() {
            eprintln!(
                "cluster {}: data directory {}, server log {}",
                self.name,
                self.data.display(),
                self.log.display()
            );
        }
    }
}

/// A client running in the background; killed (and reaped) if still
/// running when dropped.
pub struct Background {
    child: std::process::Child,
    output: PathBuf,
}

impl Background {
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits at most `timeout` for it to end, then kills it; returns
    /// whether it ended by itself.
    pub fn wait_or_kill(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The last `max` bytes of `s` (on a character boundary).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
