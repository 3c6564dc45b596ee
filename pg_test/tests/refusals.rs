//! Bad configuration and damaged keyrings: the server refuses to start,
//! says why, and writes nothing.

use std::path::Path;

use pg_test::{random_key_hex, tde, wal, Cluster, ClusterOptions, KeySource, TestDir};

/// A cluster that has never run with tde: initdb only.
fn fresh(dir: &TestDir, key: KeySource) -> Cluster {
    let opts = ClusterOptions {
        checksums: false,
        key,
        preload: true,
        wal_segment_size_mb: None,
        bin: None,
    };
    Cluster::new(dir, "main", opts)
}

/// A stopped cluster that ran with tde and holds encrypted data: table
/// `enc` with 5000 rows. Returns the key fingerprint from `tde_status()`.
fn encrypted(dir: &TestDir, name: &str, key_file: &Path) -> (Cluster, String) {
    let c = Cluster::new(dir, name, ClusterOptions::with_key_file(key_file));
    c.start();
    c.psql(
        "CREATE EXTENSION tde;
         CREATE TABLE enc(id int PRIMARY KEY, v text);
         INSERT INTO enc SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
         CHECKPOINT;",
    );
    let pages = tde::relation_pages(&c, "enc");
    assert!(
        pages
            .get("main")
            .is_some_and(|p| p.encrypted > 0 && p.plaintext == 0),
        "fixture table is not encrypted: {pages:?}"
    );
    let fingerprint = tde::status(&c).principal_key_fingerprint;
    c.stop();
    assert!(c.keyring_path().is_file());
    (c, fingerprint)
}

/// Starts `c`, which must fail with `needle` in the server's output.
fn assert_refuses(c: &Cluster, needle: &str) -> String {
    let err = match c.try_start() {
        Ok(()) => panic!("the server started, but should have refused ({needle})"),
        Err(e) => e,
    };
    assert!(
        err.contains(needle),
        "the refusal does not mention {needle:?}:\n{err}"
    );
    assert!(!c.is_running(), "a refused server is running");
    err
}

/// Nothing was written: no keyring where there was none.
fn assert_no_keyring(c: &Cluster) {
    assert!(
        !c.keyring_dir().exists(),
        "{} was created by a server that refused to start",
        c.keyring_dir().display()
    );
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Overwrites the keyring in place (keeping its owner and mode).
fn overwrite(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// After the damage is undone the cluster starts and its data is intact:
/// the refused start harmed nothing.
fn assert_recovers(c: &Cluster, fingerprint: &str) {
    c.start();
    assert_eq!(
        c.psql("SELECT count(*), sum(length(v)) FROM enc"),
        "5000|160000"
    );
    assert_eq!(tde::status(c).principal_key_fingerprint, fingerprint);
    c.stop();
}

#[test]
fn refuses_missing_key_file() {
    let dir = TestDir::new();
    let c = fresh(&dir, KeySource::File(dir.path().join("no-such.key")));
    assert_refuses(&c, "cannot be read");
    assert_no_keyring(&c);
}

#[test]
fn refuses_wrong_key() {
    let dir = TestDir::new();
    let right = dir.key_file("right", &random_key_hex(), 0o600);
    let wrong = dir.key_file("wrong", &random_key_hex(), 0o600);
    let (c, fingerprint) = encrypted(&dir, "main", &right);
    let before = read(&c.keyring_path());
    c.set(
        "tde.principal_key_file",
        &pg_test::cluster::quote(&wrong.to_string_lossy()),
    );
    let err = assert_refuses(&c, "wrong principal key");
    let message = &err[err.find("wrong principal key").expect("found above")..];
    let message = message.lines().next().unwrap_or_default();
    let fps = tde::fingerprints_in(message);
    assert!(
        fps.contains(&fingerprint),
        "the refusal does not name the keyring's fingerprint {fingerprint}: {message}"
    );
    assert!(
        fps.iter().any(|f| *f != fingerprint),
        "the refusal does not name the configured key's fingerprint: {message}"
    );
    assert_eq!(read(&c.keyring_path()), before, "the keyring was modified");

    c.set(
        "tde.principal_key_file",
        &pg_test::cluster::quote(&right.to_string_lossy()),
    );
    assert_recovers(&c, &fingerprint);
}

#[test]
fn refuses_key_file_mode_0644() {
    let dir = TestDir::new();
    let key = dir.key_file("open", &random_key_hex(), 0o644);
    let c = fresh(&dir, KeySource::File(key));
    assert_refuses(&c, "mode 0644");
    assert_no_keyring(&c);
}

#[test]
fn refuses_key_file_bad_hex() {
    let dir = TestDir::new();
    let mut text = random_key_hex();
    text.replace_range(10..12, "zq");
    let key = dir.key_file("badhex", &format!("{text}\n"), 0o600);
    let c = fresh(&dir, KeySource::File(key));
    assert_refuses(&c, "not hexadecimal");
    assert_no_keyring(&c);
}

#[test]
fn refuses_key_file_too_short() {
    let dir = TestDir::new();
    let key = dir.key_file("short", &format!("{}\n", &random_key_hex()[..62]), 0o600);
    let c = fresh(&dir, KeySource::File(key));
    assert_refuses(&c, "expected 64 hexadecimal digits");
    assert_no_keyring(&c);
}

#[test]
fn refuses_corrupt_keyring() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let (c, fingerprint) = encrypted(&dir, "main", &key);
    let original = read(&c.keyring_path());
    let garbage: Vec<u8> = (0..original.len()).map(|i| (i * 131 % 251) as u8).collect();
    overwrite(&c.keyring_path(), &garbage);
    assert_refuses(&c, "keyring is corrupt");
    assert_eq!(read(&c.keyring_path()), garbage, "the keyring was modified");

    overwrite(&c.keyring_path(), &original);
    assert_recovers(&c, &fingerprint);
}

#[test]
fn refuses_truncated_keyring() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let (c, fingerprint) = encrypted(&dir, "main", &key);
    let original = read(&c.keyring_path());
    let half = original[..original.len() / 2].to_vec();
    overwrite(&c.keyring_path(), &half);
    assert_refuses(&c, "keyring is corrupt");
    assert_eq!(read(&c.keyring_path()), half, "the keyring was modified");

    overwrite(&c.keyring_path(), &original);
    assert_recovers(&c, &fingerprint);
}

#[test]
fn refuses_tampered_keyring() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let (c, fingerprint) = encrypted(&dir, "main", &key);
    let original = read(&c.keyring_path());
    let text = String::from_utf8(original.clone()).expect("the keyring is text");
    // Change one hex digit of the cluster salt; the JSON stays valid.
    let field = text
        .find("\"cluster_salt\"")
        .expect("keyring has cluster_salt");
    let value = field + text[field..].find(": \"").expect("string value") + 3;
    let digit = text.as_bytes()[value];
    assert!(
        digit.is_ascii_hexdigit(),
        "unexpected keyring layout:\n{text}"
    );
    let mut tampered = original.clone();
    tampered[value] = if digit == b'0' { b'1' } else { b'0' };
    overwrite(&c.keyring_path(), &tampered);
    assert_refuses(&c, "tampered");
    assert_eq!(
        read(&c.keyring_path()),
        tampered,
        "the keyring was modified"
    );

    overwrite(&c.keyring_path(), &original);
    assert_recovers(&c, &fingerprint);
}

#[test]
fn refuses_keyring_of_another_cluster() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let (a, fingerprint) = encrypted(&dir, "a", &key);
    // Same principal key, different cluster (system identifier).
    let (b, fingerprint_b) = encrypted(&dir, "b", &key);
    assert_eq!(fingerprint, fingerprint_b);
    let original = read(&a.keyring_path());
    let foreign = read(&b.keyring_path());
    assert_ne!(original, foreign);
    overwrite(&a.keyring_path(), &foreign);
    assert_refuses(&a, "another cluster");
    assert_eq!(read(&a.keyring_path()), foreign, "the keyring was modified");

    overwrite(&a.keyring_path(), &original);
    assert_recovers(&a, &fingerprint);
}

#[test]
fn refuses_failing_key_command() {
    let dir = TestDir::new();
    let c = fresh(&dir, KeySource::Command("exit 3".into()));
    assert_refuses(&c, "principal key command failed");
    assert_no_keyring(&c);
}

#[test]
fn refuses_key_command_printing_garbage() {
    let dir = TestDir::new();
    let c = fresh(&dir, KeySource::Command("echo hello".into()));
    assert_refuses(&c, "expected 64 hexadecimal digits");
    assert_no_keyring(&c);
}

#[test]
fn refuses_without_key_configuration() {
    let dir = TestDir::new();
    let c = fresh(&dir, KeySource::None);
    assert_refuses(&c, "no principal key configured");
    assert_no_keyring(&c);
}

#[test]
fn refuses_both_key_sources() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let command = format!("cat {}", key.display());
    let c = fresh(&dir, KeySource::Both(key, command));
    assert_refuses(&c, "configure exactly one");
    assert_no_keyring(&c);
}

#[test]
fn refuses_missing_keyring_directory() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let (c, fingerprint) = encrypted(&dir, "main", &key);
    let saved = dir.path().join("keyring-backup.json");
    std::fs::copy(c.keyring_path(), &saved).expect("back up the keyring");
    std::fs::remove_dir_all(c.keyring_dir()).expect("remove pg_tde");
    assert_refuses(&c, "is missing");
    assert_no_keyring(&c);

    // Restoring the keyring from the backup brings the data back.
    std::fs::create_dir(c.keyring_dir()).expect("mkdir pg_tde");
    pg_test::os::chown_to_server(&c.keyring_dir());
    std::fs::copy(&saved, c.keyring_path()).expect("restore the keyring");
    pg_test::os::chown_to_server(&c.keyring_path());
    assert_recovers(&c, &fingerprint);
}

/// A cluster (not started) whose WAL is encrypted but whose pages are not.
fn wal_only_cluster(dir: &TestDir) -> Cluster {
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(dir, "main", ClusterOptions::with_key_file(&key));
    c.set("tde.data_encryption", "off");
    c
}

/// With `tde.data_encryption = off` the WAL is all that is encrypted, and
/// after a crash before any checkpoint the rows exist only there. A lost
/// keyring must still be refused (a fresh one would make recovery take the
/// encrypted WAL for its end and lose the rows), and nothing is written.
#[test]
fn refuses_missing_keyring_when_only_wal_is_encrypted() {
    let dir = TestDir::new();
    let c = wal_only_cluster(&dir);
    c.set("checkpoint_timeout", "'1h'");
    c.start();
    c.psql(
        "CREATE EXTENSION tde;
         CREATE TABLE t(id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
    );
    assert!(tde::status(&c).wal_encryption, "WAL encryption is off");
    c.kill9();
    let saved = read(&c.keyring_path());
    std::fs::remove_dir_all(c.keyring_dir()).expect("remove pg_tde");
    let pg_wal = c.data_dir().join("pg_wal");
    let wal_before = wal::files_of(&pg_wal);

    // The relation files hold no encrypted page: the WAL is the evidence.
    assert_refuses(&c, "WAL page at offset");
    assert_no_keyring(&c);
    assert!(
        wal::files_of(&pg_wal) == wal_before,
        "a refused start changed pg_wal"
    );

    std::fs::create_dir(c.keyring_dir()).expect("mkdir pg_tde");
    pg_test::os::chown_to_server(&c.keyring_dir());
    pg_test::os::write_file(&c.keyring_path(), &saved, 0o600);
    c.start();
    assert_eq!(
        c.psql("SELECT count(*), sum(length(v)) FROM t"),
        "5000|160000"
    );
    c.stop();
}

/// A base backup restored without its keyring, to recover from an
/// archive: with `-X stream` its pg_wal holds only plaintext WAL and, with
/// `tde.data_encryption = off`, no page is encrypted, so nothing on disk
/// shows that the archive is encrypted. A new keyring would give
/// generation 1 another key and recovery would take the archive for the
/// end of WAL; the start is refused instead, for recovery and standby alike.
#[test]
fn refuses_to_create_a_keyring_for_recovery() {
    let dir = TestDir::new();
    let c = wal_only_cluster(&dir);
    c.start();
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let restored = Cluster::from_base_backup(&c, "restored", &["-X", "stream"]);
    c.stop();
    std::fs::remove_dir_all(restored.keyring_dir()).expect("remove pg_tde");
    for signal in ["recovery.signal", "standby.signal"] {
        let file = restored.data_dir().join(signal);
        pg_test::os::write_file(&file, b"", 0o600);
        let err = assert_refuses(&restored, "refusing to create a keyring");
        assert!(
            err.contains(signal),
            "the refusal does not name {signal}:\n{err}"
        );
        assert_no_keyring(&restored);
        std::fs::remove_file(&file).expect("remove the signal file");
    }
}

#[test]
fn refuses_missing_keyring_file() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let (c, fingerprint) = encrypted(&dir, "main", &key);
    let original = read(&c.keyring_path());
    std::fs::remove_file(c.keyring_path()).expect("remove keyring.json");
    assert_refuses(&c, "is missing");
    assert!(
        !c.keyring_path().exists(),
        "a new keyring was created for a cluster with encrypted data"
    );
    let left: Vec<_> = std::fs::read_dir(c.keyring_dir())
        .expect("pg_tde still exists")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "files appeared in pg_tde: {left:?}");

    pg_test::os::write_file(&c.keyring_path(), &original, 0o600);
    assert_recovers(&c, &fingerprint);
}

#[test]
fn create_extension_requires_preload() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let opts = ClusterOptions {
        preload: false,
        ..ClusterOptions::with_key_file(&key)
    };
    let c = Cluster::new(&dir, "main", opts);
    c.start();
    let err = c
        .try_psql("CREATE EXTENSION tde")
        .expect_err("CREATE EXTENSION tde succeeded without shared_preload_libraries");
    assert!(
        err.contains("must be loaded via shared_preload_libraries"),
        "unexpected error: {err}"
    );
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_extension WHERE extname = 'tde'"),
        "0"
    );
    assert_no_keyring(&c);
    c.stop();
}

#[test]
fn server_without_tde_rejects_encrypted_pages() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let (c, _) = encrypted(&dir, "main", &key);
    c.unset("shared_preload_libraries");
    match c.try_start() {
        // Refusing to start at all is an acceptable way to fail loudly.
        Err(e) => eprintln!("the server without tde did not start:\n{e}"),
        Ok(()) => {
            match c.try_psql("SELECT count(*), sum(length(v)) FROM enc") {
                Ok(rows) => panic!(
                    "a server without tde returned rows from encrypted pages: {}",
                    rows.trim()
                ),
                Err(e) => assert!(
                    e.contains("invalid page"),
                    "the error does not say the page is invalid: {e}"
                ),
            }
            c.stop();
        }
    }
}

/// `full_page_writes = off` is refused: page format 2 rewrites every stored
/// byte of a page whose LSN changed, which is torn-write safe only because
/// PostgreSQL logs a full-page image before the change.
#[test]
fn refuses_full_page_writes_off() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let (c, _) = encrypted(&dir, "main", &key);
    let keyring = read(&c.keyring_path());
    c.set("full_page_writes", "off");
    let err = assert_refuses(&c, "full_page_writes is off; tde requires it on");
    assert!(err.contains("Set full_page_writes = on"), "{err}");
    assert_eq!(read(&c.keyring_path()), keyring, "the keyring changed");
    c.set("full_page_writes", "on");
    c.start();
    assert_eq!(c.psql("SELECT count(*) FROM enc"), "5000");
}
