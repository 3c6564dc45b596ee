//! A workload with every storage kind, a digest of what it stored, and the
//! checks that a cluster holding it is sound: shared by the tests that carry
//! a cluster across versions (pg_upgrade, an earlier tde release).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::os;
use crate::wal::tdectl;
use crate::Cluster;

/// A digest of every user table's rows and every sequence's state.
pub fn contents(c: &Cluster) -> BTreeMap<String, String> {
    let tables = c.psql(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
          WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
    let mut out = BTreeMap::new();
    for t in tables.lines() {
        out.insert(
            t.to_string(),
            c.psql(&format!(
                "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {t} x"
            )),
        );
    }
    let seqs =
        c.psql("SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences ORDER BY 1");
    for s in seqs.lines() {
        out.insert(
            s.to_string(),
            c.psql(&format!("SELECT last_value || ':' || is_called FROM {s}")),
        );
    }
    assert!(out.len() >= 6, "too little to compare: {out:?}");
    out
}

/// Tables of every storage kind the upgrade carries: pgbench's tables, heap
/// with TOAST and btree and GIN indexes, sequences, a materialized view.
pub fn fill(c: &Cluster, m: &str) {
    let init = c.run_client(
        "pgbench",
        &["-i", "-q", "-s", "2"],
        Duration::from_secs(300),
    );
    assert!(init.success(), "{}", init.text());
    c.psql(&format!(
        "CREATE TABLE docs(id bigserial PRIMARY KEY, body text, tags text[]);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs(body, tags)
           SELECT '{m}-' || g || repeat(md5(g::text), CASE WHEN g % 50 = 0 THEN 200 ELSE 1 END),
                  ARRAY['t' || g % 7]
           FROM generate_series(1, 5000) g;
         CREATE INDEX docs_tags ON docs USING gin(tags);
         CREATE MATERIALIZED VIEW docs_mv AS SELECT id, left(body, 40) AS head FROM docs WHERE id % 3 = 0;
         CREATE SEQUENCE lone_seq; SELECT setval('lone_seq', 4242);
         CHECKPOINT;"
    ));
}

/// `pg_amcheck` over every database, indexes against their heaps.
pub fn amcheck(c: &Cluster) {
    let check = c.run_client(
        "pg_amcheck",
        &["--all", "--install-missing", "--heapallindexed"],
        Duration::from_secs(300),
    );
    assert!(check.success(), "pg_amcheck: {}", check.text());
}

/// `tdectl verify --data-checksums` on the stopped cluster.
pub fn tdectl_verify(c: &Cluster) -> os::Output {
    let mut cmd = Command::new(tdectl());
    cmd.arg("verify").arg(c.data_dir()).arg("--data-checksums");
    os::run(&mut cmd, None, Duration::from_secs(300))
}
