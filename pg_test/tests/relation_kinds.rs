//! Every relation kind and every fork is written encrypted.

use std::collections::BTreeMap;

use pg_test::{encrypted_cluster, tde, TestDir};

/// Relations created by the test, by name, with the forks that must hold
/// at least one encrypted page.
const EXPECTED: &[(&str, &[&str])] = &[
    ("k_heap", &["main", "fsm", "vm"]),
    ("k_heap_pkey", &["main"]),
    ("k_btree", &["main"]),
    ("k_hash", &["main"]),
    ("k_gin", &["main"]),
    ("k_gin_ts", &["main"]),
    ("k_gist", &["main"]),
    ("k_spgist", &["main"]),
    ("k_brin", &["main"]),
    ("k_seq", &["main"]),
    ("k_serial", &["main", "fsm", "vm"]),
    ("k_serial_id_seq", &["main"]),
    ("k_serial_pkey", &["main"]),
    ("k_mv", &["main", "fsm", "vm"]),
    ("k_mv_id", &["main"]),
    ("k_unlogged", &["main", "fsm", "vm"]),
    ("k_unlogged_pkey", &["main", "init"]),
];

#[test]
fn all_relation_kinds_encrypted() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    c.psql(
        "CREATE TABLE k_heap(id int PRIMARY KEY, t text, arr int[], p point, ts tsvector, big text);
         ALTER TABLE k_heap ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO k_heap
           SELECT g, md5(g::text), ARRAY[g % 100, g % 7, g],
                  point(g % 1000, g / 1000), to_tsvector('simple', 'word' || (g % 500) || ' other' || (g % 13)),
                  CASE WHEN g % 200 = 1
                       THEN (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 100) i)
                  END
           FROM generate_series(1, 20000) g;
         CREATE INDEX k_btree ON k_heap(t);
         CREATE INDEX k_hash ON k_heap USING hash(t);
         CREATE INDEX k_gin ON k_heap USING gin(arr);
         CREATE INDEX k_gin_ts ON k_heap USING gin(ts);
         CREATE INDEX k_gist ON k_heap USING gist(p);
         CREATE INDEX k_spgist ON k_heap USING spgist(t);
         CREATE INDEX k_brin ON k_heap USING brin(id);
         CREATE SEQUENCE k_seq;
         SELECT nextval('k_seq');
         CREATE TABLE k_serial(id bigserial PRIMARY KEY, v text);
         INSERT INTO k_serial(v) SELECT md5(g::text) FROM generate_series(1, 5000) g;
         CREATE MATERIALIZED VIEW k_mv AS SELECT id, t FROM k_heap WHERE id % 3 = 0;
         CREATE UNIQUE INDEX k_mv_id ON k_mv(id);
         CREATE UNLOGGED TABLE k_unlogged(id int PRIMARY KEY, v text);
         INSERT INTO k_unlogged SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
         -- Dead tuples and free space, then VACUUM: free space and
         -- visibility map forks.
         UPDATE k_heap SET t = t || 'x' WHERE id % 10 = 0;
         DELETE FROM k_heap WHERE id % 50 = 0;
         DELETE FROM k_serial WHERE id % 50 = 0;
         DELETE FROM k_unlogged WHERE id % 50 = 0;
         REFRESH MATERIALIZED VIEW CONCURRENTLY k_mv;
         VACUUM (ANALYZE);
         CHECKPOINT;",
    );
    // Unlogged relations are written at the shutdown checkpoint.
    c.restart();

    let rows = c.psql(
        "SELECT c.oid::regclass, c.relkind, f.fork, f.total, f.encrypted, f.plaintext, f.empty
         FROM pg_class c CROSS JOIN LATERAL tde_relation_pages(c.oid::regclass) f
         WHERE c.oid >= 16384 AND c.relkind IN ('r', 'i', 't', 'S', 'm')
         ORDER BY 1, 3",
    );
    // relation -> fork -> (total, encrypted, plaintext, empty)
    let mut seen: BTreeMap<String, BTreeMap<String, [i64; 4]>> = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let mut plaintext = Vec::new();
    for line in rows.lines() {
        let cols: Vec<&str> = line.split('|').collect();
        assert_eq!(cols.len(), 7, "{line}");
        let n: Vec<i64> = cols[3..]
            .iter()
            .map(|s| s.parse().unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect();
        if n[2] != 0 {
            plaintext.push(line.to_string());
        }
        kinds.insert(cols[1].to_string(), ());
        seen.entry(cols[0].to_string())
            .or_default()
            .insert(cols[2].to_string(), [n[0], n[1], n[2], n[3]]);
    }
    assert!(
        plaintext.is_empty(),
        "plaintext pages in relations created with tde active:\n{}",
        plaintext.join("\n")
    );
    for kind in ["r", "i", "t", "S", "m"] {
        assert!(
            kinds.contains_key(kind),
            "no relation of kind {kind} was checked: {rows}"
        );
    }
    for (rel, forks) in EXPECTED {
        let on_disk = seen
            .get(*rel)
            .unwrap_or_else(|| panic!("{rel} is not among the checked relations:\n{rows}"));
        for fork in *forks {
            let counts = on_disk
                .get(*fork)
                .unwrap_or_else(|| panic!("{rel} has no {fork} fork on disk: {on_disk:?}"));
            assert!(counts[1] > 0, "{rel} {fork}: no encrypted page: {counts:?}");
        }
    }
    // TOAST: the table's TOAST relation and its index hold data.
    let toast = c.psql("SELECT reltoastrelid::regclass FROM pg_class WHERE relname = 'k_heap'");
    let toast_index = c.psql(&format!(
        "SELECT indexrelid::regclass FROM pg_index WHERE indrelid = '{toast}'::regclass"
    ));
    for rel in [&toast, &toast_index] {
        let main = seen
            .get(rel.as_str())
            .and_then(|f| f.get("main"))
            .unwrap_or_else(|| panic!("{rel} not checked:\n{rows}"));
        assert!(main[1] > 0, "{rel}: no encrypted page: {main:?}");
    }

    // Catalogs: pages written since tde started are encrypted too (older
    // ones from initdb stay plaintext until rewritten).
    let pg_class = tde::relation_pages(&c, "pg_class");
    assert!(
        pg_class.get("main").is_some_and(|p| p.encrypted > 0),
        "no encrypted pg_class page after all this activity: {pg_class:?}"
    );

    // And everything reads back.
    assert_eq!(
        c.psql(
            "SET enable_seqscan = off;
             SELECT (SELECT count(*) FROM k_heap WHERE t > ''),
                    (SELECT count(*) FROM k_heap WHERE arr @> ARRAY[42]),
                    (SELECT count(*) FROM k_heap WHERE ts @@ 'word7'::tsquery),
                    (SELECT count(*) FROM k_heap WHERE p <@ box '((0,0),(9,9))'),
                    (SELECT count(*) FROM k_heap WHERE big IS NOT NULL),
                    (SELECT count(*) FROM k_mv),
                    (SELECT count(*) FROM k_unlogged),
                    (SELECT last_value FROM k_seq);"
        ),
        "19600|200|40|90|100|6533|4900|1"
    );
    c.stop();
}
