//! pg_upgrade into the PostgreSQL version under test from the previous
//! supported one (15 → 17 from the stock 15 build of 17's minor release
//! round, 17 → 18), with stock pg_upgrade: an encrypted cluster with
//! `--copy` and with `--link` (the new cluster gets the old keyring through
//! `tdectl prepare-upgrade`), and a plaintext cluster into an encrypted one
//! with `--link`, encrypted in place afterwards. Every table's contents and
//! every sequence are compared before and after, `pg_amcheck` must be clean
//! and new writes encrypted.
//!
//! Under PostgreSQL 15 (no older supported version) there is nothing to
//! upgrade from, and the tests say so and return.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use pg_test::wal::tdectl;
use pg_test::workload::{amcheck, contents, fill, tdectl_verify};
use pg_test::{marker, os, random_key_hex, scan, tde, Cluster, ClusterOptions, TestDir};

/// The version under test and the one to upgrade from.
fn versions() -> Option<(u32, std::path::PathBuf)> {
    let under_test = os::server_major();
    let old = match under_test {
        17 => 15,
        18 => 17,
        _ => {
            eprintln!("PostgreSQL {under_test}: no older supported version to upgrade from");
            return None;
        }
    };
    // The stock build of the old version, of the same minor release round
    // as the new one (see scripts/build-pg.sh).
    let bin = os::stock_pg_bin(old).unwrap_or_else(|| {
        panic!(
            "PostgreSQL {old} (the upgrade source) is not installed; run scripts/build-pg.sh {old}"
        )
    });
    Some((old, bin))
}

/// `pg_upgrade` from `old` into `new` (both stopped), as the server's user.
fn pg_upgrade_command(old: &Cluster, new: &Cluster, mode: &str) -> Command {
    let mut cmd = os::command(new.bin().join("pg_upgrade"), new.root());
    cmd.arg("-b")
        .arg(old.bin())
        .arg("-B")
        .arg(new.bin())
        .arg("-d")
        .arg(old.data_dir())
        .arg("-D")
        .arg(new.data_dir())
        .args(["-p", &old.port().to_string(), "-P", &new.port().to_string()])
        .arg("-s")
        .arg(new.socket_dir())
        .args(["-U", "postgres", mode]);
    cmd
}

fn pg_upgrade(old: &Cluster, new: &Cluster, mode: &str) {
    let out = os::run(
        &mut pg_upgrade_command(old, new, mode),
        None,
        Duration::from_secs(600),
    );
    assert!(out.success(), "pg_upgrade {mode} failed:\n{}", out.text());
}

/// After the upgrade: identical contents, amcheck clean, new writes
/// encrypted, and after `tde_encrypt_all()` no plaintext page at all.
fn check_upgraded(new: &Cluster, before: &BTreeMap<String, String>) {
    assert_eq!(&contents(new), before, "contents after pg_upgrade");
    amcheck(new);
    let m = marker("after-upgrade");
    new.psql(&format!(
        "CREATE TABLE fresh AS SELECT g, '{m}-' || g AS v FROM generate_series(1, 3000) g; CHECKPOINT"
    ));
    let plain: i64 = new
        .psql("SELECT sum(plaintext) FROM tde_relation_pages('fresh')")
        .parse()
        .unwrap();
    assert_eq!(plain, 0, "new writes after the upgrade are plaintext");
    let hits = scan::find_in_tree(new.data_dir(), &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker on disk: {hits:?}");
    new.psql("SELECT tde_encrypt_all()");
    new.stop();
    let out = tdectl_verify(new);
    assert!(
        out.success(),
        "tdectl verify after the upgrade:\n{}",
        out.text()
    );
}

fn encrypted_upgrade(mode: &str) {
    let Some((old_major, old_bin)) = versions() else {
        return;
    };
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let opts = ClusterOptions::with_key_file(&key).checksums(true);
    let old = Cluster::new(&dir, "old", opts.clone().bin(&old_bin));
    old.start();
    old.psql("CREATE EXTENSION tde");
    let m = marker("before-upgrade");
    fill(&old, &m);
    let before = contents(&old);
    let fingerprint = tde::status(&old).principal_key_fingerprint;
    old.stop();
    eprintln!("upgrading an encrypted PostgreSQL {old_major} cluster with {mode}");

    let new = Cluster::new(&dir, "new", opts);
    let mut prepare = Command::new(tdectl());
    prepare
        .args(["prepare-upgrade", "--pgdata"])
        .arg(old.data_dir())
        .arg("--key-file")
        .arg(&key)
        .arg(new.data_dir());
    let out = os::run(&mut prepare, None, Duration::from_secs(60));
    assert!(out.success(), "tdectl prepare-upgrade:\n{}", out.text());
    pg_upgrade(&old, &new, mode);
    new.start();
    // The old cluster's pages came over as they were: encrypted.
    let hits = scan::find_in_tree(new.data_dir(), &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker on disk: {hits:?}");
    assert_eq!(tde::status(&new).principal_key_fingerprint, fingerprint);
    check_upgraded(&new, &before);
}

#[test]
fn encrypted_cluster_upgrades_with_copy() {
    encrypted_upgrade("--copy");
}

#[test]
fn encrypted_cluster_upgrades_with_link() {
    encrypted_upgrade("--link");
}

#[test]
fn plaintext_cluster_upgrades_into_an_encrypted_one_with_link() {
    let Some((_, old_bin)) = versions() else {
        return;
    };
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let mut plain_opts = ClusterOptions::with_key_file(&key)
        .checksums(true)
        .bin(&old_bin);
    plain_opts.preload = false;
    plain_opts.key = pg_test::KeySource::None;
    let old = Cluster::new(&dir, "old", plain_opts);
    old.start();
    let m = marker("plaintext-before");
    fill(&old, &m);
    let before = contents(&old);
    old.stop();
    let hits = scan::find_in_tree(old.data_dir(), &[m.as_bytes()], &["pg_wal"]);
    assert!(
        !hits.is_empty(),
        "control: the old cluster is not plaintext"
    );

    let new = Cluster::new(
        &dir,
        "new",
        ClusterOptions::with_key_file(&key).checksums(true),
    );
    // Started by pg_upgrade, the new cluster refuses to create a keyring
    // (pg_upgrade could be about to bring encrypted files); one ordinary
    // start with tde creates it.
    let mut check = pg_upgrade_command(&old, &new, "--link");
    let refused = os::run(&mut check, None, Duration::from_secs(300));
    assert!(!refused.success(), "pg_upgrade ran without a keyring");
    assert!(
        std::fs::read_dir(new.data_dir())
            .unwrap()
            .flatten()
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with("pg_upgrade_output")),
        "{}",
        refused.text()
    );
    assert!(
        !new.keyring_path().exists(),
        "a keyring was created by pg_upgrade"
    );
    new.start();
    new.stop();
    pg_upgrade(&old, &new, "--link");
    new.start();
    // Readable at once, before any re-encryption.
    assert_eq!(contents(&new), before, "contents right after pg_upgrade");
    new.psql("CREATE EXTENSION tde");
    check_upgraded(&new, &before);
    let hits = scan::find_in_tree(new.data_dir(), &[m.as_bytes()], &["pg_wal"]);
    assert!(hits.is_empty(), "marker after tde_encrypt_all: {hits:?}");
}
