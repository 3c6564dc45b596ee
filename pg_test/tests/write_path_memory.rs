//! The write path allocates nothing that outlives a write: the checkpointer,
//! whose memory is reset only after an error, must not grow with the number
//! of pages it writes.

use std::time::Duration;

use pg_test::{encrypted_cluster, wal, TestDir};

/// The checkpointer's memory in use, as `pg_log_backend_memory_contexts`
/// logs it ("Grand total: … used").
fn checkpointer_memory(c: &pg_test::Cluster) -> u64 {
    let before = c.log_text().len();
    c.psql(
        "SELECT pg_log_backend_memory_contexts(pid) FROM pg_stat_activity
          WHERE backend_type = 'checkpointer'",
    );
    wal::wait_for(
        Duration::from_secs(30),
        || {
            let log = c.log_text();
            let line = log[before..].lines().find(|l| l.contains("Grand total:"))?;
            // "Grand total: 547632 bytes in 21 blocks; 67272 free (58 chunks); 480360 used"
            let used = line.trim_end().strip_suffix("used")?;
            used.split_whitespace().last()?.parse().ok()
        },
        || "the checkpointer logged no memory totals".into(),
    )
}

#[test]
fn checkpoint_writes_do_not_grow_the_checkpointer() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    c.psql(
        "CREATE TABLE w(id int, v text);
         INSERT INTO w SELECT g, md5(g::text) FROM generate_series(1, 200000) g;
         CHECKPOINT;",
    );
    let start = checkpointer_memory(&c);
    let mut pages = 0;
    for round in 0..4 {
        c.psql(&format!("UPDATE w SET v = v || '{round}'; CHECKPOINT;"));
        pages += c
            .psql("SELECT pg_relation_size('w') / 8192")
            .parse::<u64>()
            .expect("pages");
    }
    let end = checkpointer_memory(&c);
    assert!(pages > 5000, "only {pages} pages written");
    assert!(
        end < start + 64 * 1024,
        "the checkpointer grew from {start} to {end} bytes over about {pages} page writes"
    );
}
