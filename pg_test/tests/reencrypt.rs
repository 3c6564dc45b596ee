//! Bringing a plaintext cluster under encryption in place with
//! `tde_encrypt_all()`, surviving a crash in the middle.

use std::process::Command;
use std::time::{Duration, Instant};

use pg_test::cluster::quote;
use pg_test::wal::tdectl;
use pg_test::{os, random_key_hex, Cluster, ClusterOptions, TestDir};

const SCALE: i64 = 10;

fn verify(c: &Cluster) -> os::Output {
    let mut cmd = Command::new(tdectl());
    cmd.arg("verify").arg(c.data_dir()).arg("--data-checksums");
    os::run(&mut cmd, None, Duration::from_secs(300))
}

fn digest(c: &Cluster) -> String {
    c.psql(
        "SELECT md5(string_agg(aid::text || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts",
    )
}

#[test]
fn plaintext_cluster_encrypted_in_place_despite_a_crash() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let mut opts = ClusterOptions::with_key_file(&key).checksums(true);
    opts.preload = false;
    let c = Cluster::new(&dir, "main", opts);
    // A plaintext cluster with data: no tde at all.
    c.unset("tde.principal_key_file");
    c.start();
    let init = c.run_client(
        "pgbench",
        &["-i", "-q", "-s", &SCALE.to_string()],
        Duration::from_secs(300),
    );
    assert!(init.success(), "{}", init.text());
    let before = digest(&c);
    c.stop();
    let plain = verify(&c);
    assert!(
        !plain.success(),
        "a plaintext cluster verified clean:\n{}",
        plain.text()
    );

    // Enable tde and encrypt in place; kill the postmaster in the middle.
    c.set("shared_preload_libraries", &quote("tde"));
    c.set("tde.principal_key_file", &quote(&key.display().to_string()));
    c.start();
    c.psql("CREATE EXTENSION tde");
    let accounts = c.relation_file("pgbench_accounts");
    let mut run = c.client("psql");
    run.args(["-X", "-q", "-c", "SELECT tde_encrypt_all()"]);
    run.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = run.spawn().expect("start psql");
    let started = Instant::now();
    let backend: i32 = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tde_encrypt_all did not start"
        );
        let pid = c.psql(
            "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT tde_encrypt_all()' AND pid <> pg_backend_pid()",
        );
        if let Ok(pid) = pid.parse() {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // The largest table takes a while: crash as soon as its first page is
    // stored encrypted (bit 15 of pd_flags).
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "encryption did not reach pgbench_accounts"
        );
        let first = pg_test::wal::read_at(&accounts, 0, 8192);
        if first[11] & 0x80 != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Killing the backend makes the postmaster crash-restart every
    // process and run crash recovery (killing only the postmaster would let
    // the busy backend run to completion).
    os::kill(backend, libc::SIGKILL);
    let _ = child.wait();
    let recovered = Instant::now();
    while c.try_psql("SELECT 1").is_err() {
        assert!(
            recovered.elapsed() < Duration::from_secs(120),
            "no recovery after the crash"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        c.log_text()
            .contains("all server processes terminated; reinitializing"),
        "the crash did not reinitialize the server"
    );
    let left: i64 = c
        .psql("SELECT plaintext FROM tde_verify()")
        .parse()
        .unwrap();
    assert!(left > 0, "nothing was left plaintext by the crash");
    let rewritten: i64 = c.psql("SELECT tde_encrypt_all()").parse().unwrap();
    assert!(rewritten > 0, "the rerun had nothing left to do");
    assert_eq!(
        c.psql("SELECT tde_encrypt_all()"),
        "0",
        "a third run still found pages"
    );
    assert_eq!(digest(&c), before, "data changed by re-encryption");
    let check = c.run_client(
        "pg_amcheck",
        &["--all", "--install-missing", "--heapallindexed"],
        Duration::from_secs(300),
    );
    assert!(check.success(), "pg_amcheck: {}", check.text());
    c.stop();

    let out = verify(&c);
    assert!(
        out.success(),
        "tdectl verify after tde_encrypt_all:\n{}",
        out.text()
    );
    assert!(
        out.stdout.contains("plaintext:         0"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("checksum failures: 0"),
        "{}",
        out.stdout
    );
}

/// One relation at a time: pages written while `tde.data_encryption` was
/// off are rewritten by `tde_encrypt_relation`, other relations untouched.
#[test]
fn encrypt_relation_rewrites_only_that_relation() {
    let dir = TestDir::new();
    let c = pg_test::encrypted_cluster(&dir);
    c.set_and_reload("tde.data_encryption", "off", "off");
    c.psql(
        "CREATE TABLE a(id int PRIMARY KEY, v text);
         CREATE TABLE b(id int, v text);
         INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
         INSERT INTO b SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
         CHECKPOINT;",
    );
    let plain = |rel: &str| -> i64 {
        c.psql(&format!(
            "SELECT sum(plaintext) FROM tde_relation_pages('{rel}')"
        ))
        .parse()
        .unwrap()
    };
    assert!(plain("a") > 0 && plain("b") > 0);
    // Refused while new writes would be plaintext.
    let refused = c.try_psql("SELECT tde_encrypt_relation('a')");
    assert!(refused.unwrap_err().contains("tde.data_encryption is off"));
    c.set_and_reload("tde.data_encryption", "on", "on");
    let before = c.psql("SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM a");
    let rewritten: i64 = c.psql("SELECT tde_encrypt_relation('a')").parse().unwrap();
    assert!(rewritten > 0);
    assert_eq!(plain("a"), 0, "table a still has plaintext pages");
    assert_eq!(c.psql("SELECT tde_encrypt_relation('a')"), "0");
    assert!(plain("b") > 0, "table b was rewritten too");
    // The primary key index is a relation of its own.
    assert!(plain("a_pkey") > 0);
    c.psql("SELECT tde_encrypt_relation('a_pkey')");
    assert_eq!(plain("a_pkey"), 0);
    assert_eq!(
        c.psql("SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM a"),
        before
    );
    c.stop();
}

/// Waits until block 0 of `file` is stored encrypted (bit 15 of pd_flags):
/// a running re-encryption has reached it.
fn wait_until_first_page_encrypted(file: &std::path::Path) {
    let started = Instant::now();
    while pg_test::wal::read_at(file, 0, 8192)[11] & 0x80 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "tde_encrypt_all did not reach {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A relation dropped while `tde_encrypt_all()` is rewriting it is skipped:
/// its file is truncated under the run, which then finds nothing left.
#[test]
fn encrypt_all_skips_a_relation_dropped_under_it() {
    let dir = TestDir::new();
    let c = pg_test::encrypted_cluster(&dir);
    c.set_and_reload("tde.data_encryption", "off", "off");
    c.psql(
        "CREATE TABLE keep(id int PRIMARY KEY, v text);
         INSERT INTO keep SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
         CREATE TABLE doomed AS SELECT g, md5(g::text) AS v FROM generate_series(1, 300000) g;
         CHECKPOINT;",
    );
    c.set_and_reload("tde.data_encryption", "on", "on");
    let before = c.psql("SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM keep");
    let doomed = c.relation_file("doomed");

    // A cancelled run ends (it is not taken for a vanished file).
    let mut run = c.connect();
    let worker = std::thread::spawn(move || {
        let out = run.try_exec("SELECT tde_encrypt_all()");
        run.close();
        out
    });
    wait_until_first_page_encrypted(&doomed);
    c.psql(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
          WHERE query LIKE 'SELECT tde_encrypt_all()%' AND pid <> pg_backend_pid()",
    );
    let cancelled = worker.join().unwrap();
    assert!(
        cancelled
            .as_ref()
            .is_err_and(|e| e.contains("canceling statement due to user request")),
        "{cancelled:?}"
    );
    // Start again from plaintext for the drop below.
    c.set_and_reload("tde.data_encryption", "off", "off");
    c.psql("VACUUM FULL doomed; CHECKPOINT");
    c.set_and_reload("tde.data_encryption", "on", "on");
    let doomed = c.relation_file("doomed");

    let mut run = c.connect();
    let worker = std::thread::spawn(move || {
        let out = run.try_exec("SELECT tde_encrypt_all()");
        let notices = run.stderr_text();
        run.close();
        (out, notices)
    });
    // `doomed` takes the run seconds: drop it once its first page is
    // stored encrypted.
    wait_until_first_page_encrypted(&doomed);
    c.psql("DROP TABLE doomed");
    let (result, notices) = worker.join().unwrap();
    let rewritten: i64 = match &result {
        Ok(n) => n.trim().parse().unwrap(),
        Err(e) => panic!("tde_encrypt_all failed with a concurrent drop: {e}"),
    };
    assert!(rewritten > 0);
    assert!(
        notices.contains("its relation was dropped, truncated or rewritten meanwhile"),
        "nothing was skipped: the drop came too late to test anything:\n{notices}"
    );
    assert_eq!(c.psql("SELECT tde_encrypt_all()"), "0");
    assert_eq!(c.psql("SELECT plaintext FROM tde_verify()"), "0");
    assert_eq!(
        c.psql("SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM keep"),
        before
    );
    c.stop();
}

/// `tde_encrypt_all()` logs each page it rewrites as a full-page image;
/// free space map and visibility map pages keep their contents where a
/// standard page has its unused hole, so their images must be whole: crash
/// recovery replays those images over the pages on disk.
#[test]
fn encrypt_all_keeps_visibility_and_free_space_maps_through_crash_recovery() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(&dir, "main", ClusterOptions::with_key_file(&key));
    c.set("autovacuum", "off");
    c.set("tde.data_encryption", "off");
    c.start();
    c.psql(
        "CREATE EXTENSION tde; CREATE EXTENSION pg_visibility; CREATE EXTENSION pg_freespacemap;
         CREATE TABLE t(id int, v text) WITH (autovacuum_enabled = off);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g;
         DELETE FROM t WHERE id % 4 = 0;
         VACUUM t;
         CHECKPOINT;",
    );
    let maps = "SELECT (SELECT all_visible FROM pg_visibility_map_summary('t')) || ' ' ||
                       (SELECT count(*) FROM pg_freespace('t') WHERE avail > 0)";
    let before = c.psql(maps);
    let (visible, free) = before.split_once(' ').expect("two numbers");
    assert!(
        visible.parse::<i64>().unwrap() > 100 && free.parse::<i64>().unwrap() > 100,
        "the maps are empty before the test: {before}"
    );
    c.set_and_reload("tde.data_encryption", "on", "on");
    assert_ne!(c.psql("SELECT tde_encrypt_all()"), "0");
    // No checkpoint: recovery replays every image tde_encrypt_all logged.
    c.kill9();
    c.start();
    assert_eq!(
        c.psql(maps),
        before,
        "the visibility map or free space map lost contents in crash recovery"
    );
    let pages = pg_test::tde::relation_pages(&c, "t");
    assert!(
        pages.values().all(|f| f.plaintext == 0),
        "plaintext pages left: {pages:?}"
    );
}
