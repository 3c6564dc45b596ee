//! Who reads WAL as plaintext and who copies it as stored (DESIGN §4), and
//! `tdectl key generate`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use pg_test::scan;
use pg_test::wal::{self, tdectl};
use pg_test::{marker, os, random_key_hex, Cluster, ClusterOptions, TestDir};

fn cluster_with(dir: &TestDir, settings: &[(&str, &str)]) -> Cluster {
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(
        dir,
        "main",
        ClusterOptions::with_key_file(&key).checksums(true),
    );
    for (k, v) in settings {
        c.set(k, v);
    }
    c.start();
    c.psql("CREATE EXTENSION tde");
    c
}

/// Backends that interpret WAL get plaintext: logical decoding through a
/// replication slot and pg_walinspect both see the marker, while no file
/// under pg_wal holds it.
#[test]
fn logical_decoding_and_walinspect_read_plaintext() {
    let dir = TestDir::new();
    let c = cluster_with(&dir, &[("wal_level", "logical")]);
    let m = marker("decoded");
    c.psql(
        "CREATE EXTENSION pg_walinspect;
         CREATE TABLE d(id int PRIMARY KEY, v text);
         SELECT 'slot' FROM pg_create_logical_replication_slot('tde_slot', 'test_decoding');",
    );
    let start = c.psql("SELECT pg_current_wal_insert_lsn()");
    c.psql(&format!("INSERT INTO d VALUES (1, '{m}')"));
    let end = c.psql("SELECT pg_current_wal_flush_lsn()");

    let changes = c.psql(
        "SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes('tde_slot', NULL, NULL)",
    );
    assert!(
        changes.contains(&m),
        "logical decoding did not return the marker:\n{changes}"
    );
    let inserts = c.psql(&format!(
        "SELECT count(*) FROM pg_get_wal_records_info('{start}', '{end}')
          WHERE resource_manager = 'Heap' AND record_type LIKE 'INSERT%'"
    ));
    assert_eq!(
        inserts, "1",
        "pg_walinspect heap inserts between {start} and {end}"
    );

    let hits = scan::find_in_tree(&c.data_dir().join("pg_wal"), &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker in pg_wal: {hits:?}");
    c.stop();
}

/// archive_library (basic_archive) copies segments inside the archiver
/// process through the server's own file functions: it must still copy
/// them as stored, encrypted.
#[test]
fn archive_library_copies_segments_as_stored() {
    let dir = TestDir::new();
    let archive = dir.subdir("archive");
    let archive_setting = format!("'{}'", archive.display());
    let c = cluster_with(
        &dir,
        &[
            ("archive_mode", "on"),
            ("archive_library", "'basic_archive'"),
            ("basic_archive.archive_directory", &archive_setting),
        ],
    );
    let m = marker("archived");
    let segment = c.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    c.psql(&format!(
        "CREATE TABLE a(v text); INSERT INTO a VALUES ('{m}'); SELECT pg_switch_wal();"
    ));
    wal::wait_archived(&c, &segment, &archive);
    let archived = wal::read(&archive.join(&segment));
    let stored = wal::read(&c.data_dir().join("pg_wal").join(&segment));
    assert!(
        archived == stored,
        "archived {segment} differs from pg_wal's copy"
    );
    assert!(
        scan::find(&archived, m.as_bytes()).is_none(),
        "marker in the archived segment"
    );
    let salts = wal::page_salts(&archived);
    assert!(
        salts.iter().any(|(_, s)| *s != [0; 4]),
        "no encrypted page in the archived segment"
    );
    c.stop();
}

fn tdectl_key_generate(path: &std::path::Path) -> os::Output {
    let mut cmd = Command::new(tdectl());
    cmd.args(["key", "generate"]).arg(path);
    os::run(&mut cmd, None, Duration::from_secs(30))
}

/// `tdectl key generate` writes 64 hex digits with mode 0600, never
/// overwrites, and the key starts a cluster.
#[test]
fn tdectl_key_generate_writes_a_usable_key() {
    let dir = TestDir::new();
    let path = dir.path().join("generated.key");
    let out = tdectl_key_generate(&path);
    assert!(out.success(), "{}", out.text());
    let text = std::fs::read_to_string(&path).expect("key file");
    let hex = text.trim_end();
    assert_eq!(hex.len(), 64, "{text:?}");
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{text:?}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");

    let again = tdectl_key_generate(&path);
    assert!(!again.success(), "overwrote an existing key file");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "key file changed"
    );

    let other = dir.path().join("second.key");
    assert!(tdectl_key_generate(&other).success());
    assert_ne!(
        std::fs::read_to_string(&other).unwrap(),
        text,
        "two generated keys are equal"
    );

    // The generated key (given to the server user) starts a cluster.
    let key = dir.key_file("for-server", hex, 0o600);
    let c = Cluster::new(&dir, "main", ClusterOptions::with_key_file(&key));
    c.start();
    assert_eq!(
        c.psql("CREATE EXTENSION tde; SELECT data_key_generation FROM tde_status()"),
        "1"
    );
    c.stop();
}
