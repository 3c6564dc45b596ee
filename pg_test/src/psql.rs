//! One long-lived `psql` process: a single database connection kept across
//! several steps (temporary tables, per-connection settings).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::os;

pub struct Psql {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    steps: u64,
}

impl Psql {
    /// Starts `cmd` (a `psql` command line reading its script from stdin).
    pub fn spawn(mut cmd: Command) -> Psql {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start psql: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("stderr lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Psql {
            child,
            stdin,
            lines,
            stderr,
            steps: 0,
        }
    }

    /// Runs `sql` (complete statements) on the connection and returns what it
    /// printed; `Err` carries psql's error output when a statement fails
    /// (psql then exits: `ON_ERROR_STOP`).
    pub fn try_exec(&mut self, sql: &str) -> Result<String, String> {
        self.steps += 1;
        let done = format!("__tde_step_{}_{}__", self.steps, os::random_hex(4));
        let script = format!("{sql}\n;\n\\echo {done}\n");
        let stdin = self.stdin.as_mut().ok_or("psql has been closed")?;
        if stdin
            .write_all(script.as_bytes())
            .and_then(|_| stdin.flush())
            .is_err()
        {
            return Err(self.failure("psql exited"));
        }
        let deadline = Instant::now() + os::COMMAND_TIMEOUT;
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == done => return Ok(out),
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.failure("psql exited")),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("psql step timed out after {:?}: {sql}", os::COMMAND_TIMEOUT);
                }
            }
        }
    }

    /// Like [`Psql::try_exec`], panicking on failure.
    pub fn exec(&mut self, sql: &str) -> String {
        self.try_exec(sql)
            .unwrap_or_else(|e| panic!("psql step failed: {sql}\n{e}"))
    }

    fn failure(&mut self, what: &str) -> String {
        // Give the stderr reader a moment to collect the last words.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(100));
        format!("{what}: {}", self.stderr.lock().expect("stderr lock"))
    }

    /// Everything psql has written to stderr so far (notices, warnings).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Closes the connection (closing psql's stdin) and waits for psql to exit.
    pub fn close(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        self.finish();
    }
}
