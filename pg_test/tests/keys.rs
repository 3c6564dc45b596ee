//! Principal key providers.

use pg_test::cluster::quote;
use pg_test::{random_key_hex, tde, Cluster, ClusterOptions, KeySource, TestDir};

const DIGEST: &str = "SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM t";

#[test]
fn key_command_works() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let opts = ClusterOptions {
        key: KeySource::Command(format!("cat {}", key.display())),
        ..ClusterOptions::with_key_file(&key)
    };
    let c = Cluster::new(&dir, "main", opts);
    c.start();
    assert!(
        c.keyring_path().is_file(),
        "no keyring after the first start"
    );
    c.psql(
        "CREATE EXTENSION tde;
         CREATE TABLE t(id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
         CHECKPOINT;",
    );
    let by_command = tde::status(&c);
    assert_eq!(
        by_command.principal_key_fingerprint.len(),
        16,
        "{by_command:?}"
    );
    let pages = tde::relation_pages(&c, "t");
    assert!(
        pages["main"].encrypted > 0 && pages["main"].plaintext == 0,
        "{pages:?}"
    );
    let digest = c.psql(DIGEST);
    assert!(digest.starts_with("5000:"), "{digest}");

    // The same key from a file: same fingerprint, same keyring, same data.
    c.stop();
    c.unset("tde.principal_key_command");
    c.set("tde.principal_key_file", &quote(&key.to_string_lossy()));
    c.start();
    let by_file = tde::status(&c);
    assert_eq!(
        by_file.principal_key_fingerprint, by_command.principal_key_fingerprint,
        "the key command and the key file give different fingerprints"
    );
    assert_eq!(c.psql(DIGEST), digest);
    c.stop();

    // A fresh cluster given the same key by file shows the same fingerprint.
    let other = Cluster::new(&dir, "other", ClusterOptions::with_key_file(&key));
    other.start();
    other.psql("CREATE EXTENSION tde");
    assert_eq!(
        tde::status(&other).principal_key_fingerprint,
        by_command.principal_key_fingerprint
    );
    other.stop();
}
