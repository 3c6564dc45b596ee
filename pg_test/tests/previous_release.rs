//! A cluster created and written by tde 0.1.0 (the library itself, built
//! from its release commit by `scripts/build-previous.sh`) keeps working
//! under this release: the server rewrites the format 1 keyring at start,
//! replays the WAL 0.1.0 wrote after a crash, reads every page, and
//! `ALTER EXTENSION tde UPDATE` brings the SQL objects up to date. A
//! keyring that another principal key (a recovery key) also opens is left
//! to `tdectl keyring migrate`, given every key, and copies migrated with
//! the same key import into each other.
//!
//! 0.1.0 ran on PostgreSQL 15 only; under other versions there is no
//! earlier release to start from and the test says so and returns.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pg_test::wal::tdectl;
use pg_test::workload::{amcheck, contents, fill, tdectl_verify};
use pg_test::{marker, os, random_key_hex, scan, Cluster, ClusterOptions, TestDir};

/// The directory holding 0.1.0's `tde.so` for the server under test.
fn previous_release_lib() -> Option<PathBuf> {
    let major = os::server_major();
    if major != 15 {
        eprintln!("PostgreSQL {major}: tde 0.1.0 did not support it; nothing to start from");
        return None;
    }
    let dir = std::env::var_os("TDE_PREVIOUS_RELEASE_LIB")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/tde-pg/tde-0.1.0/pg15"));
    assert!(
        dir.join("tde.so").is_file(),
        "tde 0.1.0 is not built at {}; run scripts/build-previous.sh 15",
        dir.display()
    );
    Some(dir)
}

fn keyring_json(c: &Cluster) -> serde_json::Value {
    let text = std::fs::read_to_string(c.keyring_path()).expect("read the keyring");
    serde_json::from_str(&text).expect("the keyring is JSON")
}

/// This release's `tdectl` with `args` (paths through [`s`]).
fn tdectl_run(args: &[&str]) -> os::Output {
    let mut cmd = Command::new(tdectl());
    cmd.args(args);
    os::run(&mut cmd, None, Duration::from_secs(60))
}

/// A path as an argument (the test directories' paths are UTF-8).
fn s(path: &std::path::Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn a_cluster_written_by_0_1_0_runs_on_under_this_release() {
    let Some(lib) = previous_release_lib() else {
        return;
    };
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(
        &dir,
        "main",
        ClusterOptions::with_key_file(&key).checksums(true),
    );
    // 'tde' (shared_preload_libraries and the extension's module_pathname)
    // resolves through dynamic_library_path: 0.1.0's library comes first.
    c.set(
        "dynamic_library_path",
        &pg_test::cluster::quote(&format!("{}:$libdir", lib.display())),
    );
    c.start();
    let ring = keyring_json(&c);
    assert_eq!(ring["version"], 1, "0.1.0 writes keyring format 1: {ring}");
    c.psql("CREATE EXTENSION tde VERSION '0.1.0'");
    let m = marker("under-0.1.0");
    fill(&c, &m);
    // initdb wrote the catalogs in plaintext; 0.1.0 encrypts them.
    c.psql("SELECT tde_encrypt_all()");
    // Written after the checkpoint and left to crash recovery: the WAL that
    // this release replays is 0.1.0's.
    c.psql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 97 = 0");
    let first = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    c.psql(&format!(
        "CREATE TABLE late(id int PRIMARY KEY, v text);
         INSERT INTO late SELECT g, '{m}-late-' || g FROM generate_series(1, 2000) g;"
    ));
    let last = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let before = contents(&c);
    let fingerprint = c.psql("SELECT principal_key_fingerprint FROM tde_status()");
    c.kill9();

    // A recovery key, added by 0.1.0's tdectl: format 2 cannot carry it
    // over without that key, so the server must say to add it again.
    let recovery = dir.key_file("recovery", &random_key_hex(), 0o600);
    let mut add = os::command(lib.join("tdectl"), dir.path());
    add.args(["keyring", "add-key", "--pgdata"])
        .arg(c.data_dir())
        .arg("--key-file")
        .arg(&key)
        .arg("--new-key-file")
        .arg(&recovery);
    let out = os::run(&mut add, None, Duration::from_secs(60));
    assert!(
        out.success(),
        "0.1.0's tdectl keyring add-key:\n{}",
        out.text()
    );
    let ring = keyring_json(&c);
    let fingerprints: Vec<String> = ring["principals"]
        .as_array()
        .expect("principals")
        .iter()
        .map(|p| p["fingerprint"].as_str().expect("fingerprint").to_string())
        .collect();
    assert_eq!(ring["version"], 1, "{ring}");
    assert_eq!(fingerprints.len(), 2, "{ring}");
    assert_eq!(fingerprints[0], fingerprint);
    let recovery_fingerprint = fingerprints[1].clone();
    let format_1 = std::fs::read(c.keyring_path()).unwrap();

    // Offline: tdectl rewrites a copy of the 0.1.0 keyring, and the copy
    // decrypts the WAL 0.1.0 wrote.
    let copies = dir.subdir("copies");
    let keyring_copy = copies.join("keyring.json");
    std::fs::copy(c.keyring_path(), &keyring_copy).expect("copy the keyring");
    // The segments holding the late rows.
    let segments: Vec<PathBuf> = pg_test::wal::segment_files(&c.data_dir().join("pg_wal"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            *name >= *first && *name <= *last
        })
        .collect();
    assert!(
        !segments.is_empty(),
        "no WAL segment from {first} to {last}"
    );
    let show = tdectl_run(&[
        "keyring",
        "show",
        "--keyring",
        s(&keyring_copy),
        "--key-file",
        s(&key),
    ]);
    assert!(
        !show.success() && show.stderr.contains("format 1") && show.stderr.contains("migrate"),
        "tdectl keyring show on a 0.1.0 keyring:\n{}",
        show.text()
    );
    // The recovery key is not dropped unasked.
    let migrate = tdectl_run(&[
        "keyring",
        "migrate",
        "--keyring",
        s(&keyring_copy),
        "--key-file",
        s(&key),
    ]);
    assert!(
        !migrate.success()
            && migrate.stderr.contains(&recovery_fingerprint)
            && migrate.stderr.contains("--drop-other-keys"),
        "tdectl keyring migrate without the recovery key:\n{}",
        migrate.text()
    );
    let migrate = tdectl_run(&[
        "keyring",
        "migrate",
        "--keyring",
        s(&keyring_copy),
        "--key-file",
        s(&key),
        "--also-key-file",
        s(&recovery),
    ]);
    assert!(
        migrate.success()
            && migrate.stdout.contains("rewritten in format 2")
            && migrate.stdout.contains(&format!(
                "opens with: {fingerprint}, {recovery_fingerprint}"
            )),
        "tdectl keyring migrate with both keys:\n{}",
        migrate.text()
    );
    let late = format!("{m}-late-");
    let (mut encrypted, mut decrypted) = (Vec::new(), Vec::new());
    for segment in &segments {
        let plain = copies.join(segment.file_name().unwrap());
        let decrypt = tdectl_run(&[
            "wal",
            "decrypt",
            "--keyring",
            s(&keyring_copy),
            "--key-file",
            s(&key),
            s(segment),
            s(&plain),
        ]);
        assert!(decrypt.success(), "tdectl wal decrypt:\n{}", decrypt.text());
        encrypted.extend(std::fs::read(segment).unwrap());
        decrypted.extend(std::fs::read(&plain).unwrap());
    }
    assert!(
        scan::find(&encrypted, late.as_bytes()).is_none(),
        "0.1.0's WAL is not encrypted"
    );
    assert!(
        scan::find(&decrypted, late.as_bytes()).is_some(),
        "the migrated keyring does not decrypt 0.1.0's WAL"
    );

    // This release, on the data directory as 0.1.0 left it.
    c.unset("dynamic_library_path");
    // With a key that does not open it, the old keyring is refused by name
    // and left as it was.
    let wrong = dir.key_file("wrong", &random_key_hex(), 0o600);
    c.set(
        "tde.principal_key_file",
        &pg_test::cluster::quote(&wrong.to_string_lossy()),
    );
    let refused = c.try_start();
    let log = c.log_text();
    assert!(
        refused.is_err()
            && log.contains("cannot migrate keyring")
            && log.contains("wrong principal key"),
        "start with a wrong key: {refused:?}\n{}",
        pg_test::cluster::tail(&log, 4096)
    );
    assert_eq!(
        std::fs::read(c.keyring_path()).unwrap(),
        format_1,
        "a refused start changed the keyring"
    );
    c.set(
        "tde.principal_key_file",
        &pg_test::cluster::quote(&key.to_string_lossy()),
    );
    // The server holds only its own key: it does not drop the recovery key
    // but says how to migrate with it.
    let refused = c.try_start();
    let log = c.log_text();
    assert!(
        refused.is_err()
            && log.contains(&format!(
                "it also opens with principal keys {recovery_fingerprint}, which the server does not hold"
            ))
            && log.contains("tdectl keyring migrate"),
        "start with a recovery key in the keyring: {refused:?}\n{}",
        pg_test::cluster::tail(&log, 4096)
    );
    assert_eq!(
        std::fs::read(c.keyring_path()).unwrap(),
        format_1,
        "a refused start changed the keyring"
    );
    // Without the recovery key (removed by 0.1.0's tdectl), the server
    // migrates the keyring itself.
    let mut remove = os::command(lib.join("tdectl"), dir.path());
    remove
        .args(["keyring", "remove-key", "--pgdata"])
        .arg(c.data_dir())
        .arg("--key-file")
        .arg(&key)
        .args(["--fingerprint", &recovery_fingerprint]);
    let out = os::run(&mut remove, None, Duration::from_secs(60));
    assert!(
        out.success(),
        "0.1.0's tdectl keyring remove-key:\n{}",
        out.text()
    );
    c.start();
    let log = c.log_text();
    assert!(
        log.contains("from format 1 (tde 0.1.0) in format 2"),
        "no migration in the log:\n{}",
        pg_test::cluster::tail(&log, 4096)
    );
    let ring = keyring_json(&c);
    assert_eq!(ring["version"], 2, "{ring}");
    assert_eq!(ring["principals"].as_array().map(Vec::len), Some(1));
    assert_eq!(ring["principals"][0]["fingerprint"], fingerprint.as_str());
    // The recovery key is added again, online.
    let readd = tdectl_run(&[
        "keyring",
        "add-key",
        "--pgdata",
        s(c.data_dir()),
        "--key-file",
        s(&key),
        "--new-key-file",
        s(&recovery),
    ]);
    assert!(readd.success(), "tdectl keyring add-key:\n{}", readd.text());
    assert_eq!(contents(&c), before, "contents under this release");
    let hits = scan::find_in_tree(c.data_dir(), &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker on disk: {hits:?}");

    // 0.1.0's SQL objects work until the update, and the update works.
    assert_eq!(c.psql("SELECT data_key_generation FROM tde_status()"), "1");
    c.psql("ALTER EXTENSION tde UPDATE");
    assert_eq!(
        c.psql("SELECT extversion FROM pg_extension WHERE extname = 'tde'"),
        env!("CARGO_PKG_VERSION")
    );
    // The copy migrated by tdectl has the same keyring key (both were
    // migrated with this principal key first): it imports, as a standby's
    // copy would.
    os::chown_to_server(&keyring_copy);
    assert_eq!(
        c.psql(&format!(
            "SELECT tde_import_keyring('{}')",
            keyring_copy.display()
        )),
        "1"
    );
    assert_eq!(c.psql("SELECT tde_rotate_data_key()"), "2");
    let m2 = marker("after-update");
    c.psql(&format!(
        "INSERT INTO late SELECT g, '{m2}-' || g FROM generate_series(2001, 3000) g; CHECKPOINT"
    ));
    amcheck(&c);
    let after = contents(&c);
    c.stop();
    let verify = tdectl_verify(&c);
    assert!(verify.success(), "tdectl verify:\n{}", verify.text());
    let hits = scan::find_in_tree(c.data_dir(), &[m.as_bytes(), m2.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker on disk: {hits:?}");
    c.start();
    assert_eq!(contents(&c), after, "contents after a restart");
    assert_eq!(
        c.psql("SELECT data_key_generations FROM tde_status()"),
        "1, 2"
    );
    // The recovery key opens the keyring rotated since.
    let show = tdectl_run(&[
        "keyring",
        "show",
        "--pgdata",
        s(c.data_dir()),
        "--key-file",
        s(&recovery),
    ]);
    assert!(
        show.success() && show.stdout.contains("data key generations: 1, 2"),
        "tdectl keyring show with the recovery key:\n{}",
        show.text()
    );
}
