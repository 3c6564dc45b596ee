//! Every way PostgreSQL moves relation pages to and from disk goes through
//! the wrappers: multi-block extension (zero-extend, then write), the bulk
//! writer (index builds, table rewrites, storage copies), file-level
//! database copies, and multi-block (vectored, from PostgreSQL 17) reads.
//! Each relation ends up with no plaintext page and no marker on disk, and
//! reads back identically after a restart emptied shared buffers.

use pg_test::{encrypted_cluster, marker, scan, tde, Cluster, TestDir};

fn plaintext_pages(c: &Cluster, db: &str, rel: &str) -> i64 {
    let out = c.psql_output(
        db,
        &format!("SELECT coalesce(sum(plaintext), 0), coalesce(sum(encrypted), 0) FROM tde_relation_pages('{rel}')"),
    );
    assert!(out.success(), "{}", out.text());
    let row = out.stdout.trim().to_string();
    let (plain, encrypted) = row.split_once('|').unwrap_or_else(|| panic!("{row}"));
    let encrypted: i64 = encrypted.parse().unwrap();
    assert!(encrypted > 0, "{db}.{rel} has no encrypted page");
    plain.parse().unwrap()
}

fn digest(c: &Cluster, db: &str, table: &str) -> String {
    let out = c.psql_output(
        db,
        &format!("SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM {table}"),
    );
    assert!(out.success(), "{}", out.text());
    out.stdout.trim().to_string()
}

#[test]
fn bulk_vectored_and_copy_paths_are_encrypted() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    let m = marker("io-path");
    let ts_dir = dir.subdir("tablespace");
    c.psql(&format!(
        "CREATE TABLESPACE elsewhere LOCATION '{}';
         -- COPY extends the table by many blocks at a time (zero-extension
         -- from PostgreSQL 16 on), then writes them.
         CREATE TABLE copied(id int, v text);
         COPY copied(id) FROM PROGRAM 'seq 1 60000';
         UPDATE copied SET v = '{m}-' || id;
         -- Index builds go through the bulk writer.
         CREATE INDEX copied_v ON copied(v);
         -- A table rewrite, and a copy of its storage to a tablespace.
         CREATE TABLE rewritten AS SELECT id, v FROM copied WHERE id % 2 = 0;
         VACUUM FULL rewritten;
         CREATE TABLE moved AS SELECT id, v FROM copied WHERE id % 3 = 0;
         ALTER TABLE moved SET TABLESPACE elsewhere;
         -- A database copied page by page through the buffer manager, and
         -- one copied file by file.
         CREATE DATABASE by_wal_log STRATEGY wal_log;
         CREATE DATABASE by_file_copy STRATEGY file_copy;
         CHECKPOINT;",
        ts_dir.display()
    ));
    for db in ["by_wal_log", "by_file_copy"] {
        let out = c.psql_output(
            db,
            &format!(
                "CREATE EXTENSION tde;
                 CREATE TABLE local(id int, v text);
                 INSERT INTO local SELECT g, '{m}-' || g FROM generate_series(1, 20000) g;
                 CHECKPOINT;"
            ),
        );
        assert!(out.success(), "{}", out.text());
    }
    let relations = ["copied", "copied_v", "rewritten", "moved"];
    for rel in relations {
        assert_eq!(plaintext_pages(&c, "postgres", rel), 0, "{rel}");
    }
    for db in ["by_wal_log", "by_file_copy"] {
        assert_eq!(plaintext_pages(&c, db, "local"), 0, "{db}.local");
        // The copied catalogs stay readable in the new database.
        let out = c.psql_output(db, "SELECT count(*) > 0 FROM pg_class");
        assert_eq!(out.stdout.trim(), "t", "{db}: {}", out.text());
    }
    let before: Vec<String> = ["copied", "rewritten", "moved"]
        .iter()
        .map(|t| digest(&c, "postgres", t))
        .collect();
    let local_before = digest(&c, "by_wal_log", "local");
    let hits = scan::find_in_tree(c.data_dir(), &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker on disk: {hits:?}");
    let hits = scan::find_in_tree(&ts_dir, &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker in the tablespace: {hits:?}");

    // Empty shared buffers, then read everything back with the largest
    // multi-block reads the server allows (PostgreSQL 17 reads up to
    // io_combine_limit blocks per call).
    c.restart();
    let combine = if tde::status(&c).server_version.starts_with("15") {
        ""
    } else {
        "SET io_combine_limit = '256kB'; "
    };
    for (t, want) in ["copied", "rewritten", "moved"].iter().zip(&before) {
        let out = c.psql_output(
            "postgres",
            &format!("{combine}SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM {t}"),
        );
        assert!(out.success(), "{}", out.text());
        assert_eq!(out.stdout.trim(), want, "{t} after restart");
    }
    assert_eq!(digest(&c, "by_wal_log", "local"), local_before);
    assert_eq!(
        c.psql(&format!(
            "SET enable_seqscan = off; SELECT count(*) FROM copied WHERE v = '{m}-777'"
        )),
        "1",
        "index lookup after restart"
    );
    c.stop();
}

/// PostgreSQL 18 reads through asynchronous I/O; every `io_method` the
/// server offers (sync, worker and, when built with liburing, io_uring) must
/// hand the buffer manager decrypted pages (its page verification would fail
/// otherwise): shared buffers, and a temporary table's local buffers, which
/// only the owning backend can decrypt. Earlier versions have no
/// `io_method`, and the test returns at once.
#[test]
fn every_io_method_reads_decrypted_pages() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    let methods = c.psql(
        "SELECT coalesce((SELECT array_to_string(enumvals, ' ') FROM pg_settings WHERE name = 'io_method'), '')",
    );
    if methods.is_empty() {
        eprintln!("no io_method on this server: nothing to test");
        return;
    }
    // scripts/build-pg.sh builds 18 with liburing, as the project's packages
    // are; without it io_uring would go untested without a word.
    assert!(
        methods.split_whitespace().any(|m| m == "io_uring"),
        "this server offers no io_method io_uring ({methods}); rebuild it with scripts/build-pg.sh"
    );
    c.psql(
        "CREATE TABLE r(id int, v text);
         INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 100000) g;
         CREATE INDEX r_id ON r(id);
         CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 4) AS v
           FROM generate_series(1, 300000) g;
         CREATE INDEX big_id ON big(id);
         CHECKPOINT;",
    );
    // `big` is larger than shared_buffers, so its pages keep being read;
    // the temporary tables below are larger than temp_buffers.
    c.set("temp_buffers", "'1MB'");
    let want = digest(&c, "postgres", "r");
    for method in methods.split_whitespace() {
        c.set("io_method", method);
        c.restart();
        assert_eq!(c.psql("SHOW io_method"), method);
        // After the restart nothing is in shared buffers: a sequential scan
        // with the largest multi-block reads, and index lookups.
        let out = c.psql_output(
            "postgres",
            "SET io_combine_limit = '256kB';
             SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM r",
        );
        assert!(out.success(), "io_method {method}: {}", out.text());
        assert_eq!(out.stdout.trim(), want, "io_method {method}");
        assert_eq!(
            c.psql("SET enable_seqscan = off; SELECT v FROM r WHERE id = 4242"),
            c.psql("SELECT md5('4242')"),
            "io_method {method}: index lookup"
        );
        temp_table_round_trip(&c, method);
    }
    c.stop();
}

/// Temporary tables several times `temp_buffers` (set for the cluster), so
/// that their pages are written out and read back through the backend's
/// local buffers. Every session joins its own temporary table to the shared
/// table `big` (larger than shared_buffers) by index lookups in the same order, so the sessions keep
/// waiting for each other's reads of `big` — with io_uring a backend that
/// waits for another's read completes everything in that backend's queue,
/// the reads of its temporary table included (which only the owner can
/// decrypt).
fn temp_table_round_trip(c: &Cluster, method: &str) {
    const JOIN: &str = "SET enable_hashjoin = off; SET enable_mergejoin = off;
         SELECT count(*) || ':' || md5(string_agg(big.v || tt.v, ',' ORDER BY tt.id))
           FROM tt JOIN big ON big.id = tt.id * 7";
    let m = marker("temp");
    let fill = format!(
        "CREATE TEMP TABLE IF NOT EXISTS tt AS
           SELECT g AS id, '{m}-' || g || repeat('x', 100) AS v FROM generate_series(1, 40000) g"
    );
    pg_test::os::write_file(
        &c.root().join("join.sql"),
        format!("{fill};\n{};\n", JOIN.replace('\n', " ")).as_bytes(),
        0o644,
    );
    let mut s = c.connect();
    s.exec(&fill);
    let pages: i64 = s
        .exec("SELECT pg_relation_size('tt') / 8192")
        .trim()
        .parse()
        .unwrap();
    assert!(
        pages > 4 * 128,
        "temporary table of {pages} pages, temp_buffers 128"
    );
    let want = c.psql(&format!(
        "SELECT count(*) || ':' || md5(string_agg(big.v || '{m}-' || g || repeat('x', 100), ',' ORDER BY g))
           FROM generate_series(1, 40000) g JOIN big ON big.id = g * 7"
    ));
    let mut others = c.spawn_pgbench(&[
        "-n",
        "-c",
        "2",
        "-T",
        "10",
        "-f",
        c.root().join("join.sql").to_str().expect("UTF-8 path"),
    ]);
    s.exec("SET io_combine_limit = '256kB'");
    let mut rounds = 0;
    while others.running() || rounds < 3 {
        assert_eq!(
            s.exec(JOIN).lines().last().unwrap_or_default(),
            want,
            "io_method {method}: temporary table joined to a shared one, round {rounds}"
        );
        rounds += 1;
    }
    // Evicted pages were written encrypted (the files exist while the
    // sessions live).
    let hits = scan::find_in_tree(c.data_dir(), &[m.as_bytes()], &[]);
    assert!(
        hits.is_empty(),
        "io_method {method}: marker on disk: {hits:?}"
    );
    s.close();
    assert!(
        others.wait_or_kill(std::time::Duration::from_secs(60)),
        "io_method {method}: the other sessions did not finish"
    );
    let out = others.output();
    assert!(
        out.contains("number of failed transactions: 0") && !out.contains("aborted"),
        "io_method {method}: the other sessions failed:\n{out}"
    );
    eprintln!("io_method {method}: {rounds} rounds of the temporary-table join");
}
