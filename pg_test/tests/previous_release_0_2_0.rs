//! A cluster written by tde 0.2.0 (the library itself, built from its
//! release commit by `scripts/build-previous.sh 0.2.0 <major>`) runs on
//! under this release: it replays 0.2.0's WAL after a crash, reads every
//! page 0.2.0 stored in page format 1 (fake LSNs of LSN-0 pages, GiST build
//! pages, unlogged and temporary relations included), `tde_verify()` and
//! `tdectl verify` count those pages, `tde_encrypt_all()` moves every one
//! of them to format 2, and `ALTER EXTENSION tde UPDATE` brings the SQL up
//! to date.

use std::path::PathBuf;

use pg_test::cluster::quote;
use pg_test::workload::{amcheck, contents, fill, tdectl_verify};
use pg_test::{marker, os, random_key_hex, scan, Cluster, ClusterOptions, TestDir};

/// The directory holding 0.2.0's `tde.so` for the server under test.
fn release_0_2_0_lib() -> PathBuf {
    let major = os::server_major();
    let dir = std::env::var_os("TDE_RELEASE_0_2_0_LIB")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/opt/tde-pg/tde-0.2.0/pg{major}")));
    assert!(
        dir.join("tde.so").is_file(),
        "tde 0.2.0 is not built at {}; run scripts/build-previous.sh 0.2.0 {major}",
        dir.display()
    );
    dir
}

/// Encrypted pages per page format version, from `tde_verify()` (0.3.0).
fn formats(c: &Cluster) -> String {
    c.psql("CHECKPOINT");
    c.psql("SELECT formats FROM tde_verify()")
}

/// Writes, next to a relation's `file`, a file (a relation no catalog
/// knows) holding its stored block 0 with one encrypted byte changed.
fn colliding_copy(file: &std::path::Path) -> PathBuf {
    let mut block = std::fs::read(file).expect("read the relation file");
    block.truncate(8192);
    assert_eq!(block[11] >> 3 & 3, 1, "block 0 is in format 1");
    block[4000] ^= 0x40;
    let copy = file.with_file_name("999999");
    os::write_file(&copy, &block, 0o600);
    copy
}

#[test]
fn a_cluster_written_by_0_2_0_runs_on_under_this_release() {
    let lib = release_0_2_0_lib();
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(
        &dir,
        "main",
        ClusterOptions::with_key_file(&key).checksums(true),
    );
    // 'tde' resolves through dynamic_library_path: 0.2.0's library first.
    c.set(
        "dynamic_library_path",
        &quote(&format!("{}:$libdir", lib.display())),
    );
    c.set("autovacuum", "off");
    c.start();
    c.psql("CREATE EXTENSION tde VERSION '0.2.0'");
    let m = marker("under-0.2.0");
    fill(&c, &m);
    c.psql(&format!(
        "CREATE TABLE pts(id int, p point);
         INSERT INTO pts SELECT g, point(g % 300, g / 300) FROM generate_series(1, 30000) g;
         CREATE INDEX pts_gist ON pts USING gist(p);
         CREATE UNLOGGED TABLE u(id int PRIMARY KEY, v text);
         INSERT INTO u SELECT g, '{m}-u-' || g FROM generate_series(1, 3000) g;
         VACUUM;
         SELECT tde_encrypt_all();
         CHECKPOINT;"
    ));
    // Written after the checkpoint and left to crash recovery: the WAL this
    // release replays is 0.2.0's.
    c.psql(&format!(
        "UPDATE pgbench_accounts SET abalance = abalance + 3 WHERE aid % 89 = 0;
         CREATE TABLE late(id int PRIMARY KEY, v text);
         INSERT INTO late SELECT g, '{m}-late-' || g FROM generate_series(1, 2000) g;"
    ));
    let mut before = contents(&c);
    // Unlogged contents do not survive the crash.
    before.remove("public.u");
    let gist = c.psql("SELECT count(*) FROM pts WHERE p <@ box '((10,10),(50,50))'");
    let accounts = c.relation_file("pgbench_accounts");
    c.kill9();
    let stopped = tdectl_verify(&c);
    let text = stopped.text();
    assert!(
        text.contains("format 1:") && !text.contains("format 2:"),
        "0.2.0 wrote only format 1 pages:\n{text}"
    );
    assert!(text.contains("IV collisions:     0"), "{text}");
    let colliding = colliding_copy(&accounts);
    let collided = tdectl_verify(&c);
    assert!(
        !collided.success() && collided.text().contains("IV collisions:     1"),
        "tdectl verify missed a shared keystream:\n{}",
        collided.text()
    );
    std::fs::remove_file(&colliding).expect("remove the colliding copy");

    // This release.
    c.unset("dynamic_library_path");
    c.start();
    let mut after = contents(&c);
    after.remove("public.u");
    assert_eq!(
        after, before,
        "contents differ after 0.2.0's WAL was replayed"
    );
    assert_eq!(
        c.psql(
            "SET enable_seqscan = off; SELECT count(*) FROM pts WHERE p <@ box '((10,10),(50,50))'"
        ),
        gist
    );
    c.psql("ALTER EXTENSION tde UPDATE");
    let mixed = formats(&c);
    assert!(
        mixed.contains("\"1\": "),
        "format 1 pages are counted: {mixed}"
    );
    assert_eq!(c.psql("SELECT iv_collisions FROM tde_verify()"), "0");
    // A file holding pgbench_accounts' block 0 with one byte changed: the
    // same counter block (key, LSN, block, nonce) over other contents.
    let colliding = colliding_copy(&accounts);
    assert_eq!(c.psql("SELECT iv_collisions FROM tde_verify()"), "1");
    std::fs::remove_file(&colliding).expect("remove the colliding copy");
    assert_eq!(c.psql("SELECT iv_collisions FROM tde_verify()"), "0");
    let rewritten: i64 = c
        .psql("SELECT tde_encrypt_all()")
        .parse()
        .expect("page count");
    assert!(rewritten > 100, "tde_encrypt_all rewrote {rewritten} pages");
    let moved = formats(&c);
    assert!(
        moved.starts_with("{\"2\": ") && !moved.contains("\"1\""),
        "format 1 pages left after tde_encrypt_all(): {moved}"
    );
    // New writes are format 2, the unlogged table works again.
    c.psql(&format!(
        "INSERT INTO u SELECT g, '{m}-u2-' || g FROM generate_series(1, 500) g;
         CREATE TEMP TABLE tt AS SELECT g FROM generate_series(1, 1000) g;"
    ));
    assert_eq!(c.psql("SELECT count(*) FROM u"), "500");
    amcheck(&c);
    assert_eq!(
        contents(&c).remove("public.late"),
        before.remove("public.late")
    );
    c.stop();
    let verified = tdectl_verify(&c);
    assert!(
        verified.success(),
        "tdectl verify after tde_encrypt_all():\n{}",
        verified.text()
    );
    let hits = scan::find_in_tree(c.data_dir(), &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker on disk: {hits:?}");
}
