//! Data checksums on an encrypted cluster: verifiable offline without keys,
//! and damage still surfaces as PostgreSQL's own checksum failure.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};

use pg_test::{encrypted_cluster, tde, TestDir};

const ROWS: i64 = 5000;

#[test]
fn pg_checksums_on_encrypted_cluster() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    assert_eq!(c.psql("SHOW data_checksums"), "on");
    c.psql(&format!(
        "CREATE EXTENSION pageinspect;
         CREATE TABLE t(id int, v text);
         INSERT INTO t
           SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 6) i)
           FROM generate_series(1, {ROWS}) g;
         CHECKPOINT;"
    ));
    let pages = tde::relation_pages(&c, "t");
    let main = pages["main"];
    assert!(main.total >= 10, "{pages:?}");
    assert_eq!(
        main.encrypted, main.total,
        "every page of t is encrypted: {pages:?}"
    );

    // Where block 1's first tuple sits (plaintext layout, same offsets on
    // disk): damage it there, well past the page header.
    let item =
        c.psql("SELECT lp_off, lp_len FROM heap_page_items(get_raw_page('t', 1)) WHERE lp = 1");
    let (off, len) = item.split_once('|').expect("lp_off|lp_len");
    let (off, len): (u64, u64) = (off.parse().expect("lp_off"), len.parse().expect("lp_len"));
    assert!(off >= 24 && len > 100, "{item}");
    let file = c.relation_file("t");
    c.stop();

    let clean = c.run_tool("pg_checksums", &["--check"]);
    assert!(
        clean.success(),
        "pg_checksums failed on a clean encrypted cluster:\n{}",
        clean.text()
    );
    assert!(
        clean.stdout.contains("Bad checksums:  0"),
        "{}",
        clean.stdout
    );
    assert!(
        !clean.stdout.contains("Blocks scanned:  0\n"),
        "{}",
        clean.stdout
    );

    // Flip the lowest bit of one byte inside the tuple's data.
    let at = 8192 + off + len - 10;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .expect("open table file");
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.read_exact(&mut byte).expect("read");
    byte[0] ^= 0x01;
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&byte).expect("write");
    f.sync_all().expect("fsync");
    drop(f);

    let damaged = c.run_tool("pg_checksums", &["--check"]);
    assert!(
        !damaged.success(),
        "pg_checksums did not notice a damaged encrypted page:\n{}",
        damaged.text()
    );
    assert!(
        damaged.text().contains("checksum verification failed")
            && damaged.stdout.contains("Bad checksums:  1"),
        "{}",
        damaged.text()
    );

    c.start();
    let err = c
        .try_psql("SELECT count(*) FROM t")
        .expect_err("reading a damaged page succeeded without ignore_checksum_failure");
    assert!(err.contains("invalid page in block 1"), "{err}");
    // Up to 17 the checksum warning reaches the client; 18 (whose reads
    // complete asynchronously) logs it in the server log only.
    assert!(
        err.contains("page verification failed")
            || c.log_text()
                .contains("page verification failed, calculated checksum"),
        "{err}"
    );

    let out = c.psql_output(
        "postgres",
        "SET ignore_checksum_failure = on;
         SELECT count(*) FROM t;",
    );
    assert!(out.success(), "{}", out.text());
    assert_eq!(out.stdout.trim(), ROWS.to_string());
    assert!(
        out.stderr.contains("page verification failed")
            || out.stderr.contains("ignoring checksum failure")
            || c.log_text().matches("page verification failed").count() >= 2,
        "{}",
        out.stderr
    );
    c.stop();
}
