//! Data keys while the server runs: rotation under load with a standby
//! attached, adopting the primary's keyring on the standby, dropping a
//! generation only once nothing uses it, and a crash restart that must keep
//! the generations added since the server started.

use std::process::Command;
use std::time::Duration;

use pg_test::wal::{self, tdectl};
use pg_test::{encrypted_cluster, os, random_key_hex, tde, Cluster, ClusterOptions, TestDir};

fn pgbench_init(c: &Cluster, scale: u32) {
    let init = c.run_client(
        "pgbench",
        &["-i", "-q", "-s", &scale.to_string()],
        Duration::from_secs(300),
    );
    assert!(init.success(), "pgbench -i failed:\n{}", init.text());
}

/// A digest of every pgbench table's contents.
fn digest(c: &Cluster) -> String {
    c.psql(
        "SELECT md5(
           (SELECT string_agg(aid || ':' || abalance, ',' ORDER BY aid) FROM pgbench_accounts) ||
           (SELECT string_agg(bid || ':' || bbalance, ',' ORDER BY bid) FROM pgbench_branches) ||
           (SELECT string_agg(tid || ':' || tbalance, ',' ORDER BY tid) FROM pgbench_tellers) ||
           (SELECT coalesce(string_agg(tid || ':' || aid || ':' || delta, ',' ORDER BY tid, aid, delta, mtime), '')
              FROM pgbench_history))",
    )
}

/// Encrypted pages per generation of the whole cluster, as `tde_verify()`
/// reports them (`{"1": 120, "2": 8}`).
fn page_generations(c: &Cluster) -> String {
    c.psql("CHECKPOINT");
    c.psql("SELECT generations FROM tde_verify()")
}

fn held_generations(c: &Cluster) -> String {
    c.psql("SELECT data_key_generations FROM tde_status()")
}

/// `pg_amcheck --heapallindexed`; a standby (read-only) relies on the
/// primary having installed amcheck.
fn amcheck(c: &Cluster, install: bool) {
    let mut args = vec!["--all", "--heapallindexed"];
    if install {
        args.push("--install-missing");
    }
    let check = c.run_client("pg_amcheck", &args, Duration::from_secs(300));
    assert!(check.success(), "pg_amcheck: {}", check.text());
}

/// The data key generation of the WAL segment the primary writes now.
fn wal_generation(c: &Cluster) -> u8 {
    let salt = c.psql("SELECT wal_segment_salt FROM tde_status()");
    u8::from_str_radix(&salt[..2], 16).unwrap_or_else(|_| panic!("salt {salt:?}"))
}

#[test]
fn rotation_under_pgbench_with_a_standby_attached() {
    let dir = TestDir::new();
    let primary = encrypted_cluster(&dir);
    pgbench_init(&primary, 5);
    let standby = Cluster::from_base_backup(&primary, "standby", &["-X", "stream", "-R"]);
    standby.start();
    wal::wait_streaming(&standby);
    assert_eq!(held_generations(&primary), "1");

    let mut bench = primary.spawn_pgbench(&["-n", "-c", "4", "-j", "2", "-T", "24"]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(primary.psql("SELECT tde_rotate_data_key()"), "2");
    assert_eq!(tde::status(&primary).data_key_generation, 2);
    std::thread::sleep(Duration::from_secs(4));
    primary.psql("SELECT pg_switch_wal()");
    assert_eq!(primary.psql("SELECT tde_rotate_data_key()"), "3");
    assert_eq!(held_generations(&primary), "1, 2, 3");
    std::thread::sleep(Duration::from_secs(4));
    // A segment begun after the rotation is under the new generation.
    primary.psql("SELECT pg_switch_wal()");
    primary.psql("CREATE TABLE after_rotation AS SELECT g FROM generate_series(1, 1000) g");
    assert_eq!(wal_generation(&primary), 3, "WAL segment after rotation");
    assert!(
        bench.wait_or_kill(Duration::from_secs(120)),
        "pgbench did not finish"
    );
    let out = bench.output();
    assert!(
        out.contains("number of transactions actually processed")
            && !out.to_lowercase().contains("error")
            && !out.contains("aborted"),
        "pgbench under rotation:\n{out}"
    );
    // pgbench's own connections, opened before the rotations, and the
    // checkpointer wrote under the new generation.
    let pages = page_generations(&primary);
    assert!(pages.contains("\"3\": "), "pages per generation: {pages}");

    // The standby kept replaying throughout, with its own generation.
    let lsn = wal::lsn(&primary, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn);
    assert_eq!(standby.psql("SELECT count(*) FROM after_rotation"), "1000");
    assert_eq!(digest(&standby), digest(&primary), "standby's data");
    assert_eq!(held_generations(&standby), "1");
    let refused = standby.try_psql("SELECT tde_rotate_data_key()");
    assert!(
        refused.as_ref().unwrap_err().contains("on a standby"),
        "{refused:?}"
    );
    let refused = standby.try_psql("SELECT tde_drop_data_key(1)");
    assert!(
        refused.as_ref().unwrap_err().contains("on a standby"),
        "{refused:?}"
    );
    // A keyring of another cluster (another keyring key) is refused.
    let stranger_dir = TestDir::new();
    let stranger = encrypted_cluster(&stranger_dir);
    stranger.stop();
    let foreign = standby.root().join("foreign-keyring.json");
    os::write_file(
        &foreign,
        &std::fs::read(stranger.keyring_path()).unwrap(),
        0o600,
    );
    let refused = standby.try_psql(&format!(
        "SELECT tde_import_keyring('{}')",
        foreign.display()
    ));
    assert!(
        refused
            .as_ref()
            .unwrap_err()
            .contains("cannot import keyring"),
        "{refused:?}"
    );
    // The documented step: copy the primary's keyring next to the standby
    // and import it there.
    let copy = standby.root().join("primary-keyring.json");
    os::write_file(
        &copy,
        &std::fs::read(primary.keyring_path()).unwrap(),
        0o600,
    );
    assert_eq!(
        standby.psql(&format!("SELECT tde_import_keyring('{}')", copy.display())),
        "1, 2, 3"
    );
    assert_eq!(tde::status(&standby).data_key_generation, 3);

    // Both restart and read everything.
    let before = digest(&primary);
    primary.restart();
    standby.restart();
    assert_eq!(digest(&primary), before, "primary after restart");
    assert_eq!(held_generations(&primary), "1, 2, 3");
    assert_eq!(held_generations(&standby), "1, 2, 3");
    primary.psql("INSERT INTO after_rotation VALUES (0)");
    let lsn = wal::lsn(&primary, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn);
    assert_eq!(digest(&standby), before, "standby after restart");
    assert_eq!(standby.psql("SELECT count(*) FROM after_rotation"), "1001");
    amcheck(&primary, true);
    let lsn = wal::lsn(&primary, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn);
    amcheck(&standby, false);
}

#[test]
fn a_generation_is_dropped_only_when_nothing_uses_it() {
    let dir = TestDir::new();
    // Segments large enough that re-encrypting the whole cluster stays in
    // the segment begun under generation 1 below.
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(
        &dir,
        "main",
        ClusterOptions::with_key_file(&key)
            .checksums(true)
            .wal_segment_size_mb(64),
    );
    c.start();
    c.psql("CREATE EXTENSION tde");
    c.psql(
        "CREATE TABLE r(id int PRIMARY KEY, v text);
         INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
    );
    let digest = || c.psql("SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM r");
    let refusal = |sql: &str, expect: &str| {
        let e = c.try_psql(sql).expect_err(sql);
        assert!(e.contains(expect), "{sql}: {e}");
    };
    refusal(
        "SELECT tde_drop_data_key(1)",
        "generation 1 is the current data key",
    );
    refusal(
        "SELECT tde_drop_data_key(7)",
        "holds no data key generation 7",
    );
    refusal("SELECT tde_drop_data_key(0)", "1 to 255");
    refusal("SELECT tde_drop_data_key(256)", "1 to 255");
    refusal(
        "CREATE ROLE plain LOGIN; SET ROLE plain; SELECT tde_drop_data_key(1)",
        "only superusers",
    );
    refusal(
        "SET ROLE plain; SELECT tde_rotate_data_key()",
        "only superusers",
    );

    c.psql("SELECT pg_switch_wal()");
    c.psql("INSERT INTO r VALUES (0, 'first record of a generation-1 segment')");
    assert_eq!(wal_generation(&c), 1);
    assert_eq!(c.psql("SELECT tde_rotate_data_key()"), "2");
    refusal(
        "SELECT tde_drop_data_key(1)",
        "page(s) on disk still use it",
    );
    let rewritten: i64 = c.psql("SELECT tde_encrypt_all()").parse().unwrap();
    assert!(rewritten > 0);
    let pages = page_generations(&c);
    assert!(
        !pages.contains("\"1\""),
        "generation 1 pages after tde_encrypt_all: {pages}"
    );
    let before = digest();
    // The segment written when the rotation happened keeps generation 1.
    refusal(
        "SELECT tde_drop_data_key(1)",
        "WAL segment(s) in pg_wal still use it",
    );
    let wal = c.psql("SELECT wal_generations FROM tde_verify()");
    assert!(
        wal.contains("\"1\": "),
        "tde_verify's WAL generations: {wal}"
    );
    let mut dropped = None;
    for _ in 0..4 {
        c.psql("SELECT pg_switch_wal()");
        c.psql("CHECKPOINT");
        if let Ok(left) = c.try_psql("SELECT tde_drop_data_key(1)") {
            dropped = Some(left.trim().to_string());
            break;
        }
    }
    assert_eq!(dropped.as_deref(), Some("2"), "generation 1 never dropped");
    assert_eq!(held_generations(&c), "2");
    let wal = c.psql("SELECT wal_generations FROM tde_verify()");
    assert!(
        !wal.contains("\"1\""),
        "tde_verify's WAL generations: {wal}"
    );
    assert_eq!(digest(), before);
    // The next generation is 3, whatever was dropped.
    assert_eq!(c.psql("SELECT tde_rotate_data_key()"), "3");
    c.psql("UPDATE r SET v = v WHERE id <= 100");
    c.restart();
    assert_eq!(digest(), before);
    amcheck(&c, true);
    c.stop();

    // Offline, the keyring holds generations 2 and 3 only, and every page
    // verifies.
    let key = c.key_file().unwrap().display().to_string();
    let mut show = Command::new(tdectl());
    show.args(["keyring", "show", "--pgdata"])
        .arg(c.data_dir())
        .args(["--key-file", &key]);
    let out = os::run(&mut show, None, Duration::from_secs(60));
    assert!(
        out.stdout.contains("data key generations: 2, 3"),
        "{}",
        out.text()
    );
    let mut verify = Command::new(tdectl());
    verify
        .arg("verify")
        .arg(c.data_dir())
        .arg("--data-checksums");
    let out = os::run(&mut verify, None, Duration::from_secs(300));
    assert!(out.success(), "{}", out.text());
    assert!(
        out.stdout.contains("WAL segments under generation 2: ")
            && !out.stdout.contains("WAL segments under generation 1: "),
        "{}",
        out.stdout
    );
}

/// A backend crash makes the postmaster reinitialize shared memory; the
/// generations added since the server started must survive that.
#[test]
fn crash_restart_keeps_generations_added_at_run_time() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    assert_eq!(c.psql("SELECT tde_rotate_data_key()"), "2");
    c.psql(
        "CREATE TABLE r(id int, v text);
         INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
         CHECKPOINT;",
    );
    let pages = page_generations(&c);
    assert!(pages.contains("\"2\": "), "{pages}");
    let before = c.psql("SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM r");

    let victim: i32 = c
        .psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        .parse()
        .unwrap();
    os::kill(victim, libc::SIGKILL);
    wal::wait_for(
        Duration::from_secs(120),
        || {
            c.log_text()
                .contains("all server processes terminated; reinitializing")
                .then_some(())
        },
        || "no crash restart".into(),
    );
    wal::wait_for(
        Duration::from_secs(120),
        || c.try_psql("SELECT 1").ok(),
        || format!("no recovery after the crash:\n{}", c.log_text()),
    );
    assert_eq!(held_generations(&c), "1, 2");
    assert_eq!(tde::status(&c).data_key_generation, 2);
    // The crash restart emptied shared buffers: this reads generation-2
    // pages from disk.
    assert_eq!(
        c.psql("SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM r"),
        before
    );
}

/// A base backup copies the keyring at one moment and pages at others, so
/// data-key changes are refused while one runs.
#[test]
fn key_changes_are_refused_during_a_base_backup() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    let target = dir.subdir("backup");
    let mut backup = c.client("pg_basebackup");
    // Slow enough to still run while the statements below execute.
    backup
        .arg("-D")
        .arg(&target)
        .args(["-X", "none", "--max-rate=32k"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = backup.spawn().expect("start pg_basebackup");
    wal::wait_for(
        Duration::from_secs(60),
        || (c.psql("SELECT count(*) FROM pg_stat_progress_basebackup") == "1").then_some(()),
        || "the base backup did not start".into(),
    );
    for sql in [
        "SELECT tde_rotate_data_key()",
        "SELECT tde_drop_data_key(1)",
    ] {
        let e = c.try_psql(sql).expect_err(sql);
        assert!(e.contains("while a base backup is running"), "{sql}: {e}");
    }
    let _ = child.kill();
    let _ = child.wait();
    wal::wait_for(
        Duration::from_secs(60),
        || (c.psql("SELECT count(*) FROM pg_stat_progress_basebackup") == "0").then_some(()),
        || "the base backup did not end".into(),
    );
    assert_eq!(c.psql("SELECT tde_rotate_data_key()"), "2");
}

/// A page under a generation the keyring no longer holds (say, a keyring
/// restored from an older backup) is a read error naming the problem —
/// never zeroed, even with `zero_damaged_pages` — and reads again once the
/// right keyring is back.
#[test]
fn a_page_under_a_missing_generation_is_an_error_not_zeroed() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    // Plaintext WAL, so that only pages need the missing generation (with
    // WAL under it the server could not even find its checkpoint).
    c.set("tde.wal_encryption", "off");
    c.restart();
    let only_first = std::fs::read(c.keyring_path()).unwrap();
    assert_eq!(c.psql("SELECT tde_rotate_data_key()"), "2");
    c.psql(
        "CREATE TABLE t(id int, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CHECKPOINT;",
    );
    let both = std::fs::read(c.keyring_path()).unwrap();
    c.stop();
    os::write_file(&c.keyring_path(), &only_first, 0o600);
    // Catalog pages written after the rotation are under generation 2 as
    // well, so this may fail as early as the connection.
    c.start();
    let out = c.psql_output(
        "postgres",
        "SET zero_damaged_pages = on; SELECT count(*) FROM t",
    );
    assert!(
        !out.success(),
        "read a page under a missing key: {}",
        out.text()
    );
    let text = out.text();
    assert!(
        text.contains("generation 2, which the keyring does not hold")
            || text.contains("Required key not available"),
        "{text}"
    );
    c.stop();
    os::write_file(&c.keyring_path(), &both, 0o600);
    c.start();
    assert_eq!(
        c.psql("SELECT count(*) FROM t"),
        "20000",
        "pages were zeroed"
    );
}

/// Crash recovery that meets WAL under a data key generation the keyring
/// does not hold (an older keyring restored by mistake) must stop the
/// server with a message naming the generation, not take the unreadable
/// page for the end of WAL and start without the transactions after it.
#[test]
fn crash_recovery_refuses_wal_under_a_missing_generation() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    // The checkpoint that recovery starts from, in a segment ended before
    // the rotation, so that it stays readable under generation 1 alone
    // (a partly filled WAL page is rewritten under the newest generation).
    c.psql("CREATE TABLE t(id int, v text); CHECKPOINT");
    c.psql("SELECT pg_switch_wal()");
    let only_first = std::fs::read(c.keyring_path()).unwrap();
    assert_eq!(c.psql("SELECT tde_rotate_data_key()"), "2");
    c.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    let both = std::fs::read(c.keyring_path()).unwrap();
    c.kill9();

    os::write_file(&c.keyring_path(), &only_first, 0o600);
    let started = c.try_start();
    let log = c.log_text();
    assert!(
        started.is_err() && !log.contains("redo done at"),
        "recovery went past WAL it cannot read: {started:?}\n{}",
        pg_test::cluster::tail(&log, 4096)
    );
    assert!(
        log.contains("FATAL:  tde: cannot decrypt WAL: WAL page at")
            && log.contains("generation 2, which the keyring does not hold"),
        "{}",
        pg_test::cluster::tail(&log, 4096)
    );

    os::write_file(&c.keyring_path(), &both, 0o600);
    c.start();
    assert_eq!(
        c.psql("SELECT count(*) FROM t"),
        "20000",
        "transactions lost"
    );
}
