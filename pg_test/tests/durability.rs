//! Data written through tde survives restarts and crashes intact.

use std::thread;
use std::time::{Duration, Instant};

use pg_test::{encrypted_cluster, random_key_hex, tde, Cluster, ClusterOptions, TestDir};

/// A digest of the table's full contents in primary-key order.
const TABLE_DIGEST: &str =
    "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM t";
/// A digest read through the index on `v` (sequential scans disabled).
const INDEX_DIGEST: &str = "SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT md5(string_agg(id::text, ',' ORDER BY v)) FROM t WHERE v > '';";

fn assert_all_encrypted(c: &Cluster, relation: &str) {
    let forks = tde::relation_pages(c, relation);
    let main = forks
        .get("main")
        .unwrap_or_else(|| panic!("{relation}: no main fork on disk: {forks:?}"));
    assert!(
        main.encrypted > 0,
        "{relation}: no encrypted page: {forks:?}"
    );
    for (fork, pages) in &forks {
        assert_eq!(pages.plaintext, 0, "{relation} fork {fork}: {forks:?}");
    }
}

#[test]
fn restart_and_read_back() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(&dir, "main", ClusterOptions::with_key_file(&key));
    c.start();
    c.psql("CREATE EXTENSION tde");
    let status = tde::status(&c);
    assert!(status.attach.starts_with("smgr"), "{status:?}");
    assert!(status.data_encryption, "{status:?}");

    c.psql(
        "CREATE TABLE t(id int PRIMARY KEY, v text, big text);
         ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO t
           SELECT g, md5(g::text),
                  CASE WHEN g % 500 = 0
                       THEN (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 100) i)
                  END
           FROM generate_series(1, 30000) g;
         CREATE INDEX t_v ON t(v);
         UPDATE t SET v = v || '-updated' WHERE id % 7 = 0;
         DELETE FROM t WHERE id % 11 = 0;",
    );
    let table = c.psql(TABLE_DIGEST);
    let index = c.psql(INDEX_DIGEST);
    assert!(table.starts_with("27273:"), "unexpected contents {table}");
    c.psql("CHECKPOINT");
    for rel in ["t", "t_pkey", "t_v"] {
        assert_all_encrypted(&c, rel);
    }
    let toast = c.psql("SELECT reltoastrelid::regclass FROM pg_class WHERE relname = 't'");
    assert_all_encrypted(&c, &toast);

    // A restart empties shared buffers: everything below is read from disk
    // and decrypted.
    c.restart();
    assert_eq!(c.psql(TABLE_DIGEST), table, "table contents after restart");
    assert_eq!(c.psql(INDEX_DIGEST), index, "index order after restart");
    assert_eq!(
        c.psql("SELECT v FROM t WHERE id = 12348"),
        "ee25f924b7df4d4fb93b3da96ee342b1-updated",
        "single-row index lookup"
    );

    c.stop();
    assert!(!c.is_running());
    c.start();
    assert_eq!(
        c.psql(TABLE_DIGEST),
        table,
        "table contents after stop and start"
    );
    assert_eq!(
        c.psql(INDEX_DIGEST),
        index,
        "index order after stop and start"
    );
    c.stop();
}

/// Sums that pgbench's transactions keep equal: each one adds the same delta
/// to one account, teller and branch and logs it in pgbench_history.
fn pgbench_sums(c: &Cluster) -> [i64; 4] {
    let row = c.psql(
        "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),
                (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches),
                (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let v: Vec<i64> = row
        .split('|')
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{row}: {e}")))
        .collect();
    [v[0], v[1], v[2], v[3]]
}

#[test]
fn crash_recovery_under_pgbench() {
    const SCALE: i64 = 5;
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    let init = c.run_client(
        "pgbench",
        &["-i", "-q", "-s", &SCALE.to_string()],
        Duration::from_secs(300),
    );
    assert!(init.success(), "pgbench -i failed:\n{}", init.text());

    let mut bench = c.spawn_pgbench(&["-n", "-c", "4", "-j", "2", "-T", "20"]);
    let started = Instant::now();
    // A checkpoint mid-run: recovery then starts from a point where the
    // disk holds encrypted pages that later WAL records modify.
    thread::sleep(Duration::from_secs(4));
    c.psql("CHECKPOINT");
    thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    assert!(
        bench.running(),
        "pgbench ended before the crash:\n{}",
        bench.output()
    );
    let committed: i64 = c
        .psql("SELECT count(*) FROM pgbench_history")
        .parse()
        .expect("count");
    assert!(committed > 0, "no pgbench transaction committed in 8 s");
    let log_before = c.log_text().len();
    c.kill9();

    // pgbench loses its connections; give it a bounded time to notice.
    bench.wait_or_kill(Duration::from_secs(60));

    c.start();
    let log = c.log_text();
    let recovery = &log[log_before.min(log.len())..];
    assert!(
        recovery.contains("automatic recovery in progress") && recovery.contains("redo done"),
        "the restart did not run crash recovery:\n{recovery}"
    );

    let check = c.run_client(
        "pg_amcheck",
        &["--all", "--install-missing", "--heapallindexed"],
        Duration::from_secs(300),
    );
    assert!(
        check.success(),
        "pg_amcheck found problems after crash recovery ({}):\n{}",
        check.status,
        check.text()
    );

    let counts = c.psql(
        "SELECT (SELECT count(*) FROM pgbench_accounts),
                (SELECT count(*) FROM pgbench_branches),
                (SELECT count(*) FROM pgbench_tellers)",
    );
    assert_eq!(
        counts,
        format!("{}|{}|{}", SCALE * 100_000, SCALE, SCALE * 10),
        "row counts after crash recovery"
    );
    let [a, b, t, h] = pgbench_sums(&c);
    assert!(
        a == b && b == t && t == h,
        "pgbench balances disagree after crash recovery: accounts {a}, branches {b}, tellers {t}, history {h}"
    );
    let history: i64 = c
        .psql("SELECT count(*) FROM pgbench_history")
        .parse()
        .expect("count");
    eprintln!(
        "pgbench: {committed} transactions committed just before the crash, {history} after recovery; balance sum {a}"
    );
    assert!(
        history >= committed,
        "committed transactions lost: {history} < {committed}"
    );

    c.psql("CHECKPOINT");
    for rel in [
        "pgbench_accounts",
        "pgbench_accounts_pkey",
        "pgbench_history",
    ] {
        assert_all_encrypted(&c, rel);
    }
    c.stop();
}
