//! No plaintext of any relation kind reaches the data directory.
//!
//! WAL (`pg_wal/`) is not scanned here: WAL encryption has its own
//! tests, with a control cluster whose WAL is plaintext (`tests/wal.rs`).
//! Everything else in the data directory is scanned, every file, byte by
//! byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pg_test::scan::{self, Hit};
use pg_test::{encrypted_cluster, marker, os, tde, TestDir};

const EXCLUDE: &[&str] = &["pg_wal"];

/// Whether `file` is `main` itself or another fork or segment of the same
/// relation (`<main>_fsm`, `<main>.1`, ...).
fn is_fork_or_segment_of(file: &Path, main: &Path) -> bool {
    let (f, m) = (file.to_string_lossy(), main.to_string_lossy());
    f == m
        || f.strip_prefix(&*m)
            .is_some_and(|rest| rest.starts_with(['_', '.']))
}

/// Describes hits with the relation each file belongs to, when known.
fn describe(
    hits: &[Hit],
    needles: &[(&str, Vec<u8>)],
    data: &Path,
    files: &BTreeMap<PathBuf, String>,
) -> String {
    hits.iter()
        .map(|h| {
            let rel = h.file.strip_prefix(data).unwrap_or(&h.file);
            let owner = files
                .iter()
                .find(|(f, _)| is_fork_or_segment_of(&h.file, f))
                .map(|(_, name)| format!(" (relation {name})"))
                .unwrap_or_default();
            format!(
                "  marker {} in {} at offset {}{owner}\n",
                needles[h.needle].0,
                rel.display(),
                h.offset
            )
        })
        .collect()
}

fn assert_encrypted_pages(forks: &BTreeMap<String, tde::ForkPages>, what: &str) {
    let main = forks
        .get("main")
        .unwrap_or_else(|| panic!("{what}: no main fork on disk: {forks:?}"));
    assert!(
        main.encrypted > 0,
        "{what}: no encrypted page on disk: {forks:?}"
    );
    for (fork, p) in forks {
        assert_eq!(
            p.plaintext, 0,
            "{what}: plaintext pages in fork {fork}: {forks:?}"
        );
    }
}

/// A distinctive random int8 value for a sequence, far from small numbers.
fn sequence_value() -> i64 {
    let r = u32::from_str_radix(&os::random_hex(4), 16).expect("hex");
    6_000_000_000_000_000_000 + i64::from(r) * 1_000_003
}

/// The relations the marker test writes into (its TOAST table comes on top).
const MARKED_RELATIONS: [&str; 8] = [
    "m_heap",
    "m_index",
    "m_index_k",
    "m_toast",
    "m_seq",
    "m_matview",
    "m_unlogged",
    "m_unlogged_v",
];

#[test]
fn markers_never_on_disk() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);

    let heap = marker("heap");
    let index = marker("index");
    let toast = marker("toast");
    let matview = marker("matview");
    let unlogged = marker("unlogged");
    let temp = marker("temp");
    let seq_value = sequence_value();

    c.psql(&format!(
        "CREATE TABLE m_heap(id int, v text);
         INSERT INTO m_heap SELECT g, '{heap}-' || g FROM generate_series(1, 3000) g;

         CREATE TABLE m_index(id int, k text);
         INSERT INTO m_index SELECT g, '{index}-' || g FROM generate_series(1, 3000) g;
         CREATE INDEX m_index_k ON m_index(k);

         -- Stored out of line and uncompressed; the marker recurs every ~60
         -- bytes so that whole copies sit inside single TOAST chunks.
         CREATE TABLE m_toast(id int, big text);
         ALTER TABLE m_toast ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO m_toast
           SELECT g, (SELECT string_agg(md5(random()::text) || '{toast}', '') FROM generate_series(1, 200))
           FROM generate_series(1, 20) g;

         CREATE SEQUENCE m_seq START {seq_value};
         SELECT nextval('m_seq');

         CREATE MATERIALIZED VIEW m_matview AS
           SELECT g AS id, '{matview}-' || g AS v FROM generate_series(1, 3000) g;

         CREATE UNLOGGED TABLE m_unlogged(id int, v text);
         INSERT INTO m_unlogged SELECT g, '{unlogged}-' || g FROM generate_series(1, 3000) g;
         CREATE INDEX m_unlogged_v ON m_unlogged(v);

         CHECKPOINT;"
    ));
    let toast_rel =
        c.psql("SELECT reltoastrelid::regclass FROM pg_class WHERE relname = 'm_toast'");
    assert!(toast_rel.starts_with("pg_toast."), "{toast_rel}");

    // Unlogged pages reach the disk only at a shutdown checkpoint (or when
    // evicted): restart cleanly before looking.
    c.restart();

    // Read everything back (from disk, decrypted) and check it.
    let counts = c.psql(&format!(
        "SELECT (SELECT count(*) FROM m_heap WHERE v LIKE '{heap}-%'),
                (SELECT count(*) FROM m_matview WHERE v LIKE '{matview}-%'),
                (SELECT count(*) FROM m_unlogged WHERE v LIKE '{unlogged}-%'),
                (SELECT count(*) FROM m_toast WHERE strpos(big, '{toast}') > 0 AND length(big) > 10000),
                (SELECT last_value FROM m_seq)"
    ));
    assert_eq!(
        counts,
        format!("3000|3000|3000|20|{seq_value}"),
        "read back after restart"
    );
    let by_index = c.psql(&format!(
        "SET enable_seqscan = off;
         SELECT id FROM m_index WHERE k = '{index}-1234';"
    ));
    assert_eq!(by_index, "1234", "index lookup after restart");
    // Reading set hint bits; write those pages out (encrypted) now.
    c.psql("CHECKPOINT");

    // Temporary tables live in the backend's local buffers and reach the
    // disk only when those overflow: 100 buffers (800 kB) against ~4 MB of
    // rows. The scan runs while the connection, and so the files, still exist.
    let mut conn = c.connect();
    conn.exec("SET temp_buffers = 100");
    conn.exec(&format!(
        "CREATE TEMP TABLE m_temp(id int, v text);
         INSERT INTO m_temp SELECT g, '{temp}-' || g || '-' || md5(g::text) FROM generate_series(1, 40000) g;"
    ));
    let temp_file = c
        .data_dir()
        .join(conn.exec("SELECT pg_relation_filepath('m_temp')").trim());
    let temp_pages =
        tde::parse_pages(&conn.exec(
            "SELECT fork, total, encrypted, plaintext, empty FROM tde_relation_pages('m_temp')",
        ));
    assert!(
        temp_pages.get("main").is_some_and(|p| p.encrypted >= 200),
        "temp table pages did not reach the disk encrypted: {temp_pages:?}"
    );
    assert_encrypted_pages(&temp_pages, "m_temp");
    assert_eq!(
        conn.exec(&format!(
            "SELECT count(*) FROM m_temp WHERE v LIKE '{temp}-%'"
        ))
        .trim(),
        "40000",
        "temp table read back"
    );

    let mut files = BTreeMap::new();
    for rel in MARKED_RELATIONS.iter().copied().chain([toast_rel.as_str()]) {
        files.insert(c.relation_file(rel), rel.to_string());
    }
    files.insert(temp_file.clone(), "m_temp".into());
    assert!(temp_file.exists(), "{}", temp_file.display());

    let needles: Vec<(&str, Vec<u8>)> = [&heap, &index, &toast, &matview, &unlogged, &temp]
        .iter()
        .map(|m| (m.as_str(), m.as_bytes().to_vec()))
        .collect();
    let needle_refs: Vec<&[u8]> = needles.iter().map(|(_, b)| b.as_slice()).collect();
    let hits = scan::find_in_tree(c.data_dir(), &needle_refs, EXCLUDE);
    assert!(
        hits.is_empty(),
        "plaintext markers found in the data directory:\n{}",
        describe(&hits, &needles, c.data_dir(), &files)
    );
    conn.close();

    // A sequence holds numbers, and any 8 bytes may occur somewhere by
    // chance: look for the value only in the sequence's own file.
    let seq_file = c.relation_file("m_seq");
    assert_eq!(
        scan::find_in_file(&seq_file, &seq_value.to_le_bytes()),
        None,
        "sequence value {seq_value} in plaintext in {}",
        seq_file.display()
    );

    for rel in MARKED_RELATIONS.iter().copied().chain([toast_rel.as_str()]) {
        assert_encrypted_pages(&tde::relation_pages(&c, rel), rel);
    }
    let unlogged_index = tde::relation_pages(&c, "m_unlogged_v");
    assert!(
        unlogged_index.get("init").is_some_and(|p| p.encrypted >= 1),
        "unlogged index init fork: {unlogged_index:?}"
    );

    // Control: with encryption off, the same kinds of markers must be
    // found, or the scan above proves nothing.
    c.set_and_reload("tde.data_encryption", "off", "off");
    assert!(!tde::status(&c).data_encryption);
    let plain_heap = marker("control-heap");
    let plain_toast = marker("control-toast");
    let plain_seq = sequence_value() + 1;
    c.psql(&format!(
        "CREATE TABLE c_plain(id int, v text, big text);
         ALTER TABLE c_plain ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO c_plain SELECT g, '{plain_heap}-' || g FROM generate_series(1, 3000) g;
         INSERT INTO c_plain
           SELECT 0, '', (SELECT string_agg(md5(random()::text) || '{plain_toast}', '') FROM generate_series(1, 200));
         CREATE SEQUENCE c_seq START {plain_seq};
         SELECT nextval('c_seq');
         CHECKPOINT;"
    ));
    let plain_file = c.relation_file("c_plain");
    assert!(
        scan::find_in_file(&plain_file, plain_heap.as_bytes()).is_some(),
        "control: plaintext marker not found in {}; the scan cannot see table data",
        plain_file.display()
    );
    let plain_toast_rel =
        c.psql("SELECT reltoastrelid::regclass FROM pg_class WHERE relname = 'c_plain'");
    let plain_toast_file = c.relation_file(&plain_toast_rel);
    assert!(
        scan::find_in_file(&plain_toast_file, plain_toast.as_bytes()).is_some(),
        "control: plaintext TOAST marker not found in {}",
        plain_toast_file.display()
    );
    let plain_seq_file = c.relation_file("c_seq");
    assert!(
        scan::find_in_file(&plain_seq_file, &plain_seq.to_le_bytes()).is_some(),
        "control: plaintext sequence value not found in {}",
        plain_seq_file.display()
    );
    let hits = scan::find_in_tree(c.data_dir(), &[plain_heap.as_bytes()], EXCLUDE);
    assert!(
        hits.iter().any(|h| h.file == plain_file),
        "control: the tree scan missed {}: {hits:?}",
        plain_file.display()
    );
    let plain_pages = tde::relation_pages(&c, "c_plain");
    assert!(
        plain_pages
            .get("main")
            .is_some_and(|p| p.plaintext > 0 && p.encrypted == 0),
        "control table pages: {plain_pages:?}"
    );

    // And back on: new writes are encrypted again.
    c.set_and_reload("tde.data_encryption", "on", "on");
    assert!(tde::status(&c).data_encryption);
    let after = marker("after-reenable");
    c.psql(&format!(
        "CREATE TABLE m_after(id int, v text);
         INSERT INTO m_after SELECT g, '{after}-' || g FROM generate_series(1, 3000) g;
         CHECKPOINT;"
    ));
    let hits = scan::find_in_tree(c.data_dir(), &[after.as_bytes()], EXCLUDE);
    assert!(
        hits.is_empty(),
        "marker written after re-enabling encryption found in plaintext: {hits:?}"
    );
    assert_encrypted_pages(&tde::relation_pages(&c, "m_after"), "m_after");
    c.stop();
}
