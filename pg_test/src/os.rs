//! Operating-system plumbing: the server's OS user, running commands with a
//! time limit, processes and randomness.

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Default time limit for one command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// The directory holding `initdb`, `pg_ctl`, `psql`, ...
pub fn pg_bin() -> PathBuf {
    std::env::var_os("TDE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The major version of the server in [`pg_bin`].
pub fn server_major() -> u32 {
    major_of(&pg_bin())
}

/// The major version of the PostgreSQL binaries in `bin`.
pub fn major_of(bin: &Path) -> u32 {
    let out = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .expect("postgres --version");
    // "postgres (PostgreSQL) 17.11"
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected postgres --version output {text:?}"))
}

/// The stock build of PostgreSQL major version `major` under /opt/tde-pg
/// (scripts/build-pg.sh), if installed; `TDE_PG_BIN_<major>` overrides.
pub fn stock_pg_bin(major: u32) -> Option<PathBuf> {
    let dir = std::env::var_os(format!("TDE_PG_BIN_{major}"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/opt/tde-pg/{major}/bin")));
    dir.join("postgres").is_file().then_some(dir)
}

/// uid and gid of the OS user the servers run as, when the tests run as
/// root; `None` when they already run as an ordinary user.
pub fn server_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new("postgres").expect("no NUL");
        // SAFETY: getpwnam returns a pointer to static storage or NULL; the
        // fields are copied at once and the tests look up users from one
        // thread at a time (this runs once).
        unsafe {
            let pw = libc::getpwnam(name.as_ptr());
            assert!(
                !pw.is_null(),
                "running as root, but there is no OS user \"postgres\" to run the servers as"
            );
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    })
}

/// Makes `path` belong to the server's OS user (no-op when not root).
pub fn chown_to_server(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Writes `contents` to `path` with `mode`, owned by the server's OS user.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    chown_to_server(path);
}

/// A command for `program` that runs as the server's OS user, in `cwd`,
/// without any `PG*` variables inherited from the caller's environment.
pub fn command(program: impl AsRef<OsStr>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", cwd);
    if let Some((uid, gid)) = server_user() {
        // std drops the supplementary groups when it switches uid as root.
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout and stderr together, for messages and substring checks.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion with `input` on its stdin, killing it and
/// panicking when it takes longer than `timeout`.
pub fn run(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    try_run(cmd, input, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run`], but returns an error instead of panicking when the command
/// cannot be started or times out (for use in `Drop`).
pub fn try_run(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let writer = input.map(|bytes| {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let bytes = bytes.to_vec();
        // A thread, so a command that stops reading cannot block us.
        thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })
    });
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}: {what}"));
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Random bytes from the kernel, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes this process adopt the orphaned descendants it starts.
///
/// `pg_ctl start` leaves the postmaster without a parent; it would be
/// re-parented to PID 1, which on some machines never reaps exited
/// processes. A postmaster killed with SIGKILL would then linger as a
/// zombie, and a zombie's PID still answers `kill(pid, 0)`, so the next
/// postmaster would refuse to start ("lock file already exists"). As a
/// subreaper this process inherits the postmaster and reaps it itself.
pub fn become_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER) failed");
    });
}

/// The state letter of process `pid` (`R`, `S`, `Z`, ...), `None` when it
/// does not exist.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: i32) -> bool {
    matches!(process_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// The command line of `pid`, with NULs turned into spaces.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// PIDs of the direct children of `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return kids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(parent) {
            kids.push(pid);
        }
    }
    kids
}

pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) };
}

/// Reaps `pid` if it is an exited child of this process; returns whether it
/// is gone (reaped, or not ours and not alive).
pub fn reap(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid on a specific pid with a valid status pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    rc == pid || !is_alive(pid)
}

/// Waits until `pid` has exited (reaping it when it is ours), at most
/// `timeout`; returns whether it did.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if reap(pid) {
            // One more reap in case it exited between the two checks.
            reap(pid);
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
