//! Principal keys: online rotation, offline rewrap, recovery keys, and a
//! standby with the wrong key.

use std::process::Command;
use std::time::Duration;

use pg_test::cluster::quote;
use pg_test::wal::tdectl;
use pg_test::{encrypted_cluster, os, random_key_hex, tde, Cluster, TestDir};

fn tdectl_keyring(c: &Cluster, args: &[&str]) -> os::Output {
    let mut cmd = Command::new(tdectl());
    cmd.arg("keyring")
        .arg(args[0])
        .arg("--pgdata")
        .arg(c.data_dir())
        .args(&args[1..]);
    os::run(&mut cmd, None, Duration::from_secs(60))
}

fn digest(c: &Cluster) -> String {
    c.psql("SELECT md5(string_agg(id::text || v, ',' ORDER BY id)) FROM r")
}

#[test]
fn online_rotation_replaces_the_principal_key() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    c.psql("CREATE TABLE r(id int, v text); INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
    let before = digest(&c);
    let old_fp = tde::status(&c).principal_key_fingerprint;
    let old_key = c.key_file().unwrap().to_path_buf();
    let new_key = dir.key_file("rotated", &random_key_hex(), 0o600);

    let new_fp = c.psql(&format!(
        "SELECT tde_rotate_principal_key(new_key_file => {})",
        quote(&new_key.display().to_string())
    ));
    assert_eq!(new_fp.len(), 16, "{new_fp}");
    assert_ne!(new_fp, old_fp);
    assert_eq!(
        tde::status(&c).principal_key_fingerprint,
        new_fp,
        "tde_status after rotation"
    );
    // Rotating again from a key that is gone is refused; to the same key too.
    let again = c.try_psql(&format!(
        "SELECT tde_rotate_principal_key(new_key_file => {})",
        quote(&new_key.display().to_string())
    ));
    assert!(again.unwrap_err().contains("current one"));
    // A role without superuser cannot rotate.
    let denied = c.try_psql(&format!(
        "CREATE ROLE plain LOGIN; SET ROLE plain; SELECT tde_rotate_principal_key(new_key_file => {})",
        quote(&old_key.display().to_string())
    ));
    assert!(denied.unwrap_err().contains("only superusers"));

    // Offline: the old key no longer opens the keyring, the new one does.
    c.stop();
    let old_key_arg = old_key.display().to_string();
    let new_key_arg = new_key.display().to_string();
    let show = tdectl_keyring(&c, &["show", "--key-file", &old_key_arg]);
    assert!(
        !show.success() && show.text().contains("wrong principal key"),
        "{}",
        show.text()
    );
    let show = tdectl_keyring(&c, &["show", "--key-file", &new_key_arg]);
    assert!(show.success(), "{}", show.text());
    assert!(
        show.stdout.contains(&new_fp) && !show.stdout.contains(&old_fp),
        "{}",
        show.stdout
    );

    // The server still configured with the old key refuses to start and
    // names both fingerprints.
    let err = c.try_start().expect_err("started with the rotated-out key");
    assert!(
        err.contains("wrong principal key") && err.contains(&old_fp) && err.contains(&new_fp),
        "{err}"
    );
    c.set("tde.principal_key_file", &quote(&new_key_arg));
    c.start();
    assert_eq!(digest(&c), before);
    assert_eq!(tde::status(&c).principal_key_fingerprint, new_fp);
    c.stop();
}

#[test]
fn recovery_key_and_offline_rewrap() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    c.psql("CREATE TABLE r(id int, v text); INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 500) g");
    let before = digest(&c);
    let main_fp = tde::status(&c).principal_key_fingerprint;
    c.stop();
    let main_key = c.key_file().unwrap().display().to_string();
    let recovery = dir
        .key_file("recovery", &random_key_hex(), 0o600)
        .display()
        .to_string();
    let rewrapped = dir
        .key_file("rewrapped", &random_key_hex(), 0o600)
        .display()
        .to_string();

    let out = tdectl_keyring(
        &c,
        &[
            "add-key",
            "--key-file",
            &main_key,
            "--new-key-file",
            &recovery,
        ],
    );
    assert!(out.success(), "{}", out.text());
    // The server starts with either key.
    c.set("tde.principal_key_file", &quote(&recovery));
    c.start();
    let recovery_fp = tde::status(&c).principal_key_fingerprint;
    assert_ne!(recovery_fp, main_fp);
    assert_eq!(digest(&c), before);
    c.stop();

    // Offline rewrap of the main key; the recovery key keeps working.
    let out = tdectl_keyring(
        &c,
        &[
            "rewrap",
            "--key-file",
            &main_key,
            "--new-key-file",
            &rewrapped,
        ],
    );
    assert!(out.success(), "{}", out.text());
    c.set("tde.principal_key_file", &quote(&main_key));
    let err = c
        .try_start()
        .expect_err("old main key still opens the keyring");
    assert!(err.contains("wrong principal key"), "{err}");
    c.set("tde.principal_key_file", &quote(&rewrapped));
    c.start();
    assert_eq!(digest(&c), before);
    c.stop();

    // Removing the recovery key: it no longer opens the keyring.
    let out = tdectl_keyring(
        &c,
        &[
            "remove-key",
            "--key-file",
            &rewrapped,
            "--fingerprint",
            &recovery_fp,
        ],
    );
    assert!(out.success(), "{}", out.text());
    c.set("tde.principal_key_file", &quote(&recovery));
    let err = c
        .try_start()
        .expect_err("removed recovery key still opens the keyring");
    assert!(err.contains(&recovery_fp), "{err}");
    // And the last key cannot be removed.
    let rewrapped_fp = tdectl_keyring(&c, &["show", "--key-file", &rewrapped]);
    let fp = rewrapped_fp
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("principal key:"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .expect("a principal key line");
    let out = tdectl_keyring(
        &c,
        &["remove-key", "--key-file", &rewrapped, "--fingerprint", &fp],
    );
    assert!(
        !out.success() && out.text().contains("only one"),
        "{}",
        out.text()
    );
}

#[test]
fn standby_with_another_key_refuses_to_start() {
    let dir = TestDir::new();
    let primary = encrypted_cluster(&dir);
    let primary_fp = tde::status(&primary).principal_key_fingerprint;
    let standby = Cluster::from_base_backup(&primary, "standby", &["-X", "stream", "-R"]);
    let other = dir.key_file("standby-key", &random_key_hex(), 0o600);
    standby.set(
        "tde.principal_key_file",
        &quote(&other.display().to_string()),
    );
    let err = standby
        .try_start()
        .expect_err("standby started with a key that does not open the keyring");
    assert!(
        err.contains("wrong principal key") && err.contains(&primary_fp),
        "{err}"
    );
    primary.stop();
}

/// A keyring rewrite writes a temporary file, syncs it and renames it over
/// the keyring. A crash before the rename leaves the old keyring and a
/// partial temporary file: the old key still opens the keyring, and the next
/// rotation replaces the leftover. (A crash after the rename leaves the new
/// keyring, which the test above opens with the new key.)
#[test]
fn a_rotation_cut_short_before_the_rename_leaves_the_old_keyring() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    c.psql("CREATE TABLE r(id int, v text); INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 500) g");
    let before = digest(&c);
    let old_fp = tde::status(&c).principal_key_fingerprint;
    c.stop();
    let keyring = std::fs::read(c.keyring_path()).unwrap();
    let leftover = c.keyring_dir().join("keyring.json.tmp");
    os::write_file(&leftover, &keyring[..keyring.len() / 2], 0o600);
    c.start();
    assert_eq!(digest(&c), before);
    assert_eq!(tde::status(&c).principal_key_fingerprint, old_fp);
    let new_key = dir.key_file("rotated", &random_key_hex(), 0o600);
    let new_fp = c.psql(&format!(
        "SELECT tde_rotate_principal_key(new_key_file => {})",
        quote(&new_key.display().to_string())
    ));
    assert!(!leftover.exists(), "the temporary file was left behind");
    c.psql("SELECT tde_rotate_data_key()");
    c.stop();
    c.set(
        "tde.principal_key_file",
        &quote(&new_key.display().to_string()),
    );
    c.start();
    assert_eq!(tde::status(&c).principal_key_fingerprint, new_fp);
    assert_eq!(tde::status(&c).data_key_generation, 2);
    assert_eq!(digest(&c), before);
}
