//! No plaintext in the files PostgreSQL writes outside relation pages and
//! WAL while a query runs: temporary files of every kind, in the default
//! tablespace and in another one, logical decoding spill files, the files
//! of a subscription's streamed transactions, and the NOTIFY queue.
//!
//! Each workload is stopped in the middle, while its files exist: a
//! function in the query waits for an advisory lock this test holds. The
//! whole data directory, the WAL included, and the tablespace are scanned
//! then. A control cluster without tde runs the same workloads and must
//! show the marker in the very directory the workload spills to (so the
//! scan is shown to see those files), and every query's result must be the
//! same on both.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use pg_test::scan;
use pg_test::{marker, os, random_key_hex, Cluster, ClusterOptions, Psql, TestDir};

const LOCK: i64 = 4242;

/// Rows of the spilled table: enough for several megabytes of temporary
/// files at the smallest `work_mem`.
const ROWS: u32 = 60_000;

struct Setup {
    cluster: Cluster,
    tablespace: PathBuf,
}

fn cluster(dir: &TestDir, name: &str, tde: bool, m: &str) -> Setup {
    cluster_with(dir, name, tde, m, None)
}

fn cluster_with(dir: &TestDir, name: &str, tde: bool, m: &str, io_method: Option<&str>) -> Setup {
    let key = dir.key_file(name, &random_key_hex(), 0o600);
    let mut opts = ClusterOptions::with_key_file(&key);
    opts.preload = tde;
    let c = Cluster::new(dir, name, opts);
    if let Some(method) = io_method {
        c.set("io_method", method);
    }
    c.set("max_parallel_workers_per_gather", "2");
    c.set("max_worker_processes", "8");
    c.set("wal_level", "logical");
    c.start();
    if tde {
        c.psql("CREATE EXTENSION tde");
    }
    let tablespace = dir.subdir(&format!("{name}-tablespace"));
    c.psql(&format!(
        "CREATE TABLESPACE spill LOCATION '{}';
         CREATE TABLE t(id int, v text);
         INSERT INTO t SELECT g, '{m}-' || lpad(g::text, 8, '0') || repeat('x', 60)
           FROM generate_series(1, {ROWS}) g;
         ANALYZE t;
         -- Waits (without holding anything) while the test holds LOCK.
         CREATE FUNCTION hold(v text) RETURNS text LANGUAGE plpgsql
           IMMUTABLE PARALLEL RESTRICTED AS $$
         BEGIN
           PERFORM pg_advisory_lock_shared({LOCK});
           PERFORM pg_advisory_unlock_shared({LOCK});
           RETURN v;
         END $$;
         -- The same, for the last row only: an index expression.
         CREATE FUNCTION hold_last(v text) RETURNS text LANGUAGE plpgsql
           IMMUTABLE AS $$
         BEGIN
           IF v LIKE '%-{ROWS:08}x%' THEN
             PERFORM pg_advisory_lock_shared({LOCK});
             PERFORM pg_advisory_unlock_shared({LOCK});
           END IF;
           RETURN v;
         END $$;",
        tablespace.display()
    ));
    Setup {
        cluster: c,
        tablespace,
    }
}

/// Every regular file under the data directory and the tablespace that
/// holds `m`, relative paths.
fn hits(s: &Setup, m: &str) -> Vec<String> {
    let mut out = Vec::new();
    for root in [s.cluster.data_dir(), s.tablespace.as_path()] {
        for h in scan::find_in_tree(root, &[m.as_bytes()], &[]) {
            out.push(
                h.file
                    .strip_prefix(root)
                    .unwrap_or(&h.file)
                    .display()
                    .to_string(),
            );
        }
    }
    out
}

/// Bytes in the files under `root`'s subdirectories named `dir` (e.g.
/// `pgsql_tmp`), so that a scan is known to have had something to find.
fn bytes_in(root: &Path, dir: &str) -> u64 {
    scan::files_under(root, &[])
        .iter()
        .filter(|f| f.components().any(|c| c.as_os_str() == dir))
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// One workload, stopped in the middle.
struct Case {
    name: &'static str,
    /// Session settings, then the query; its result is compared.
    settings: &'static str,
    query: &'static str,
    /// Where its files are, as a directory name in their path.
    spills_to: &'static str,
    /// Whether they are in the tablespace `spill`.
    in_tablespace: bool,
    /// What EXPLAIN must show, to be sure the case runs as meant.
    plan: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "sort",
        settings: "SET work_mem = '64kB'",
        query: "SELECT md5(string_agg(hold(v), ',')) FROM (SELECT v FROM t ORDER BY v DESC) s",
        spills_to: "pgsql_tmp",
        in_tablespace: false,
        plan: "Sort",
    },
    Case {
        name: "sort in a tablespace",
        settings: "SET work_mem = '64kB'; SET temp_tablespaces = 'spill'",
        query: "SELECT md5(string_agg(hold(v), ',')) FROM (SELECT v FROM t ORDER BY v DESC) s",
        spills_to: "pgsql_tmp",
        in_tablespace: true,
        plan: "Sort",
    },
    Case {
        name: "hash join",
        settings: "SET work_mem = '64kB'; SET enable_mergejoin = off; SET enable_nestloop = off;
                   SET max_parallel_workers_per_gather = 0",
        query: "SELECT md5(string_agg(hold(a.v) || b.v, ',' ORDER BY a.id))
                  FROM t a JOIN t b USING (id)",
        spills_to: "pgsql_tmp",
        in_tablespace: false,
        plan: "Hash Join",
    },
    Case {
        name: "parallel hash join",
        settings: "SET work_mem = '64kB'; SET enable_mergejoin = off; SET enable_nestloop = off;
                   SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
                   SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2",
        query: "SELECT count(hold(a.v || b.v)) FROM t a JOIN t b USING (id)",
        spills_to: "pgsql_tmp",
        in_tablespace: false,
        plan: "Parallel Hash Join",
    },
    Case {
        name: "hash aggregate",
        settings: "SET work_mem = '64kB'; SET enable_sort = off; SET max_parallel_workers_per_gather = 0",
        query: "SELECT count(hold(v)), sum(n) FROM (SELECT v, count(*) AS n FROM t GROUP BY v) s",
        spills_to: "pgsql_tmp",
        in_tablespace: false,
        plan: "HashAggregate",
    },
    Case {
        name: "tuplestore of a window function",
        settings: "SET work_mem = '64kB'; SET max_parallel_workers_per_gather = 0",
        query: "SELECT md5(string_agg(hold(v) || n, ',')) FROM (SELECT v, count(*) OVER () AS n FROM t) s",
        spills_to: "pgsql_tmp",
        in_tablespace: false,
        plan: "WindowAgg",
    },
    Case {
        name: "CREATE INDEX",
        settings: "SET maintenance_work_mem = '1MB'; SET max_parallel_maintenance_workers = 0;
                   SET synchronize_seqscans = off",
        query: "CREATE INDEX t_hold ON t (hold_last(v))",
        spills_to: "pgsql_tmp",
        in_tablespace: false,
        plan: "",
    },
    Case {
        name: "CLUSTER",
        settings: "SET maintenance_work_mem = '1MB'; SET enable_indexscan = off;
                   SET synchronize_seqscans = off",
        query: "CLUSTER t USING t_hold",
        spills_to: "pgsql_tmp",
        in_tablespace: false,
        plan: "",
    },
];

/// Runs `case` on `s` up to the moment its files exist; returns what was
/// found in them (hits of `m` anywhere, and the bytes in the spill
/// directory), then lets it finish and returns its result too.
fn run_case(s: &Setup, case: &Case, m: &str) -> (Vec<String>, u64, String) {
    let c = &s.cluster;
    if !case.plan.is_empty() {
        let plan = c.psql(&format!("{}; EXPLAIN {}", case.settings, case.query));
        assert!(
            plan.contains(case.plan),
            "{}: plan without {}:\n{plan}",
            case.name,
            case.plan
        );
    }
    let mut holder = c.connect();
    holder.exec(&format!("SELECT pg_advisory_lock({LOCK})"));
    let session = c.connect();
    let sql = format!("{}; {}", case.settings, case.query);
    let worker = thread::spawn(move || {
        let mut session: Psql = session;
        let out = session.try_exec(&sql);
        session.close();
        out
    });
    wait_until(&format!("{} to wait for the lock", case.name), || {
        c.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted") != "0"
    });
    let root = if case.in_tablespace {
        s.tablespace.as_path()
    } else {
        c.data_dir()
    };
    let spilled = bytes_in(root, case.spills_to);
    let found = hits(s, m);
    holder.exec(&format!("SELECT pg_advisory_unlock({LOCK})"));
    holder.close();
    let result = worker
        .join()
        .expect("query thread")
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    (found, spilled, result)
}

/// PostgreSQL 18 reads relations through asynchronous I/O; temporary files
/// stay synchronous, which every `io_method` must leave intact.
fn io_methods() -> Vec<Option<&'static str>> {
    if os::server_major() >= 18 {
        vec![Some("sync"), Some("worker"), Some("io_uring")]
    } else {
        vec![None]
    }
}

#[test]
fn temporary_files_hold_no_plaintext() {
    for method in io_methods() {
        let dir = TestDir::new();
        eprintln!("io_method: {}", method.unwrap_or("(before 18)"));
        temporary_files(&dir, method);
    }
}

fn temporary_files(dir: &TestDir, io_method: Option<&str>) {
    let m = marker("spill");
    let enc = cluster_with(dir, "encrypted", true, &m, io_method);
    let plain = cluster_with(dir, "plain", false, &m, io_method);
    // Relation pages and WAL of the encrypted cluster are encrypted; only
    // the workloads could still put the marker on disk.
    enc.cluster.psql("CHECKPOINT");
    assert_eq!(hits(&enc, &m), Vec::<String>::new(), "before any workload");
    for case in CASES {
        let (found, spilled, result) = run_case(&enc, case, &m);
        assert!(
            spilled > 0,
            "{}: no temporary file existed during the scan",
            case.name
        );
        assert!(
            found.is_empty(),
            "{}: marker in plaintext on disk while the query ran: {found:?}",
            case.name
        );
        let (control, control_spilled, control_result) = run_case(&plain, case, &m);
        let shown: Vec<&String> = control
            .iter()
            .filter(|f| f.contains(case.spills_to))
            .collect();
        eprintln!(
            "{}: {spilled} bytes of temporary files, no marker; control: {control_spilled} bytes, marker in {} of its files, e.g. {:?}",
            case.name,
            shown.len(),
            shown.first()
        );
        assert!(
            control.iter().any(|f| f.contains(case.spills_to)),
            "{}: control run: the marker was not found in {} (the scan saw nothing to find): {control:?}",
            case.name,
            case.spills_to
        );
        assert_eq!(result, control_result, "{}: result differs", case.name);
    }
    assert_eq!(
        temp_file_accounting(&enc.cluster),
        temp_file_accounting(&plain.cluster),
        "log_temp_files and temp_file_limit"
    );
    let log = enc.cluster.log_text();
    assert!(!log.contains("could not read"), "{log}");
}

/// What `log_temp_files` reports for a spilling sort (sizes in order), and
/// the error `temp_file_limit` raises for it: the same with and without
/// tde, as tde stores every byte in place.
fn temp_file_accounting(c: &Cluster) -> (Vec<u64>, String) {
    let sort = "SET work_mem = '64kB'; SET max_parallel_workers_per_gather = 0;
                SELECT count(*) FROM (SELECT v FROM t ORDER BY v OFFSET 0) s";
    let before = c.log_text().len();
    c.psql(&format!("SET log_temp_files = 0; {sort}"));
    let log = c.log_text();
    let mut sizes: Vec<u64> = log[before..]
        .lines()
        .filter(|l| l.contains("temporary file: path"))
        .filter_map(|l| l.rsplit("size ").next()?.trim().parse().ok())
        .collect();
    sizes.sort_unstable();
    assert!(
        !sizes.is_empty(),
        "no temporary file logged:\n{}",
        &log[before..]
    );
    let err = c
        .try_psql(&format!("SET temp_file_limit = '1MB'; {sort}"))
        .expect_err("temp_file_limit must stop the sort");
    let err = err
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("temp_file_limit"), "{err}");
    (sizes, err)
}

fn count(c: &Cluster, sql: &str) -> u64 {
    c.psql(sql)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Scans `s` (a publisher or subscriber) once `what` has written into a
/// file whose path holds `file` (e.g. `.spill`); returns the hits.
fn scan_while(s: &Setup, what: &str, file: &str, m: &str) -> Vec<String> {
    wait_until(&format!("{what} to write a {file} file"), || {
        scan::files_under(s.cluster.data_dir(), &[])
            .iter()
            .filter(|f| f.to_string_lossy().contains(file))
            .filter_map(|f| std::fs::metadata(f).ok())
            .any(|m| m.len() > 0)
    });
    hits(s, m)
}

struct Roads {
    spill: Vec<String>,
    stream: Vec<String>,
    notify: Vec<String>,
}

/// A subscription whose walsender spills a large open transaction to
/// `pg_replslot`, then streams one to the subscriber's `pgsql_tmp`, and a
/// NOTIFY queue that outgrows its buffers; each scanned while it exists,
/// then checked to arrive whole.
fn logical_and_notify(dir: &TestDir, tde: bool, m: &str) -> Roads {
    let tag = if tde { "enc" } else { "plain" };
    let publisher = cluster(dir, &format!("{tag}-pub"), tde, m);
    let subscriber = cluster(dir, &format!("{tag}-sub"), tde, m);
    let (p, s) = (&publisher.cluster, &subscriber.cluster);
    p.psql("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'; SELECT pg_reload_conf()");
    let table = "CREATE TABLE r(id int PRIMARY KEY, v text)";
    p.psql(&format!("{table}; CREATE PUBLICATION pub FOR TABLE r"));
    s.psql(table);
    s.psql(&format!(
        "CREATE SUBSCRIPTION sub CONNECTION 'host={} port={} dbname=postgres user=postgres'
           PUBLICATION pub WITH (streaming = off)",
        p.socket_dir().display(),
        p.port()
    ));
    wait_until("the subscription to be ready", || {
        count(
            s,
            "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'",
        ) == 0
    });
    let insert = |from: u32, to: u32| {
        format!(
            "BEGIN; INSERT INTO r SELECT g, '{m}-' || g || repeat('y', 100)
               FROM generate_series({from}, {to}) g"
        )
    };
    let mut open = p.connect();
    open.exec(&insert(1, 20_000));
    let spill = scan_while(&publisher, "the walsender", ".spill", m);
    open.exec("COMMIT");
    wait_until("the spilled transaction to arrive", || {
        count(s, "SELECT count(*) FROM r") == 20_000
    });
    s.psql("ALTER SUBSCRIPTION sub SET (streaming = on)");
    open.exec(&insert(20_001, 40_000));
    let stream = scan_while(&subscriber, "the apply worker", "pgsql_tmp/", m);
    open.exec("COMMIT");
    wait_until("the streamed transaction to arrive", || {
        count(s, "SELECT count(*) FROM r") == 40_000
    });
    let applied = s.psql(&format!(
        "SELECT count(*) FROM r WHERE v = '{m}-' || id || repeat('y', 100)"
    ));
    assert_eq!(applied, "40000", "{tag}: rows arrived changed");
    open.close();

    // Several listeners, so that reading the queue back (which evicts and
    // writes pages of it) happens in several processes at once.
    let mut listeners: Vec<Psql> = (0..3).map(|_| p.connect()).collect();
    for l in &mut listeners {
        l.exec("LISTEN ch; BEGIN; SELECT 1");
    }
    p.psql(&format!(
        "SELECT pg_notify('ch', '{m}-' || g || repeat('z', 500)) FROM generate_series(1, 2000) g"
    ));
    let notify = scan_while(&publisher, "the notification queue", "pg_notify/", m);
    let readers: Vec<_> = listeners
        .into_iter()
        .map(|mut l| {
            thread::spawn(move || {
                let delivered = l.exec("COMMIT; SELECT 1");
                l.close();
                delivered
            })
        })
        .collect();
    for r in readers {
        let delivered = r.join().expect("listener thread");
        let received = delivered
            .lines()
            .filter(|l| l.contains(m) && l.contains(&"z".repeat(500)))
            .count();
        assert_eq!(received, 2000, "{tag}: notifications delivered");
    }
    Roads {
        spill,
        stream,
        notify,
    }
}

#[test]
fn decoding_spills_streamed_transactions_and_notify_hold_no_plaintext() {
    let dir = TestDir::new();
    let m = marker("road");
    let enc = logical_and_notify(&dir, true, &m);
    let plain = logical_and_notify(&dir, false, &m);
    for (road, found, control, dir) in [
        ("spill files", &enc.spill, &plain.spill, "pg_replslot"),
        (
            "streamed transaction",
            &enc.stream,
            &plain.stream,
            "pgsql_tmp",
        ),
        ("NOTIFY", &enc.notify, &plain.notify, "pg_notify"),
    ] {
        assert!(
            found.is_empty(),
            "{road}: marker in plaintext on disk: {found:?}"
        );
        assert!(
            control.iter().any(|f| f.contains(dir)),
            "{road}: control run: the marker was not found in {dir}: {control:?}"
        );
        eprintln!("{road}: no marker; control: marker in {dir}");
    }
}

/// A small tmpfs mounted for the test's lifetime, owned by the server's OS
/// user; unmounted when dropped (before the test directory is removed).
struct SmallFs(PathBuf);

impl SmallFs {
    /// `None` where this process may not mount (not root, or no
    /// CAP_SYS_ADMIN in its container).
    fn mount(at: PathBuf, size: &str) -> Option<SmallFs> {
        let (uid, gid) = os::server_user()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700,uid={uid},gid={gid}"))
            .arg("tmpfs")
            .arg(&at)
            .output()
            .ok()?;
        out.status.success().then_some(SmallFs(at))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The ERROR line of a failed psql run with its SQLSTATE, the quoted file
/// path (it names the backend's pid) replaced by `<path>`.
fn error_line(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.contains("ERROR:"))
        .unwrap_or_else(|| panic!("no ERROR in:\n{out}"));
    match (line.find('"'), line.rfind('"')) {
        (Some(a), Some(b)) if a < b => format!("{}<path>{}", &line[..a], &line[b + 1..]),
        _ => line.to_string(),
    }
}

/// What a spilling sort gives when its temporary tablespace fills up, then
/// a sort that fits in what is left: (error of the first, result of the
/// second, bytes left in the tablespace between them).
fn full_disk(s: &Setup, fs: &Path) -> (String, String, u64) {
    let c = &s.cluster;
    c.psql(&format!(
        "CREATE TABLESPACE full_disk LOCATION '{}'",
        fs.display()
    ));
    let session = "SET work_mem = '64kB'; SET max_parallel_workers_per_gather = 0;
                   SET temp_tablespaces = 'full_disk'; SET log_temp_files = 0;";
    let err = c
        .try_psql(&format!(
            "\\set VERBOSITY verbose\n{session}
             SELECT count(*) FROM (SELECT v FROM t ORDER BY v OFFSET 0) s"
        ))
        .expect_err("the sort must fill the tablespace");
    let left = bytes_in(fs, "pgsql_tmp");
    let before = c.log_text().len();
    let fits = c.psql(&format!(
        "{session} SELECT md5(string_agg(v, ',')) FROM (SELECT v FROM t WHERE id <= 8000 ORDER BY v DESC) s"
    ));
    let log = c.log_text();
    assert!(
        log[before..]
            .lines()
            .any(|l| l.contains("temporary file: path \"pg_tblspc/")),
        "{}: the sort that fits did not spill to the tablespace:\n{}",
        c.name(),
        &log[before..]
    );
    (error_line(&err), fits, left)
}

/// A temporary tablespace that fills up: the query fails with the same
/// error (SQLSTATE 53100, "No space left on device") as without tde, its
/// files are removed, and the next query that fits runs and gives the
/// same result. tde writes each temporary file byte in place, so it fills
/// the disk at the same point as PostgreSQL alone.
#[test]
fn a_full_temporary_tablespace_fails_as_without_tde() {
    let dir = TestDir::new();
    let m = marker("full");
    let (enc_at, plain_at) = (dir.subdir("encrypted-full"), dir.subdir("plain-full"));
    let (Some(enc_fs), Some(plain_fs)) =
        (SmallFs::mount(enc_at, "3m"), SmallFs::mount(plain_at, "3m"))
    else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
        return;
    };
    let enc = cluster(&dir, "encrypted", true, &m);
    let plain = cluster(&dir, "plain", false, &m);
    let (enc_err, enc_fits, enc_left) = full_disk(&enc, &enc_fs.0);
    let (plain_err, plain_fits, plain_left) = full_disk(&plain, &plain_fs.0);
    eprintln!("with tde: {enc_err}\nwithout:  {plain_err}");
    assert!(
        plain_err.contains("53100") && plain_err.contains("No space left on device"),
        "control: {plain_err}"
    );
    assert_eq!(
        enc_err, plain_err,
        "the error differs from PostgreSQL's own"
    );
    assert_eq!(
        (enc_left, plain_left),
        (0, 0),
        "temporary files left behind"
    );
    assert_eq!(
        enc_fits, plain_fits,
        "the sort that fits gives another result"
    );
    assert_eq!(hits(&enc, &m), Vec::<String>::new());
    assert!(
        scan::find_in_tree(&enc_fs.0, &[m.as_bytes()], &[]).is_empty(),
        "marker in the full tablespace"
    );
    let log = enc.cluster.log_text();
    let trouble: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("PANIC") || (l.contains("tde:") && !l.contains("LOG:")))
        .collect();
    assert!(trouble.is_empty(), "{trouble:#?}");
    drop((enc, plain));
}
