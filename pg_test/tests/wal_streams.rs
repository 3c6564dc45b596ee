//! WAL leaving the server through replication connections is stored
//! encrypted by stock clients (work in progress: `pg_receivewal`).

use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use pg_test::{
    encrypted_cluster, marker, random_key_hex, scan, wal, Cluster, ClusterOptions, TestDir,
};

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `pg_receivewal` into `out` while 1000 rows holding `m` are
/// inserted in a segment of their own; returns that segment's name.
fn receive(c: &Cluster, out: &Path, m: &str) -> String {
    c.psql("SELECT pg_switch_wal()");
    let mut child = c
        .client("pg_receivewal")
        .arg("-D")
        .arg(out)
        .arg("--no-sync")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pg_receivewal");
    let segment = c.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    wait_for_file(&out.join(format!("{segment}.partial")));
    c.psql(&format!(
        "CREATE TABLE IF NOT EXISTS s(id int, v text);
         INSERT INTO s SELECT g, '{m}-' || g FROM generate_series(1, 1000) g"
    ));
    let end = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    assert_eq!(end, segment);
    wait_for_file(&out.join(&segment));
    let _ = child.kill();
    let _ = child.wait();
    segment
}

#[test]
fn pg_receivewal_stores_encrypted_wal() {
    let dir = TestDir::new();
    let m = marker("received");
    let enc = encrypted_cluster(&dir);
    let out = dir.subdir("received");
    let segment = receive(&enc, &out, &m);
    let hits = scan::find_in_tree(&out, &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker in pg_receivewal's files: {hits:?}");
    let decrypted = dir.subdir("decrypted");
    wal::tdectl_wal_ok(
        "decrypt",
        &enc,
        &out.join(&segment),
        &decrypted.join(&segment),
    );
    assert!(
        scan::find_in_file(&decrypted.join(&segment), m.as_bytes()).is_some(),
        "tdectl wal decrypt does not give the marker back"
    );

    let key = dir.key_file("plain", &random_key_hex(), 0o600);
    let mut opts = ClusterOptions::with_key_file(&key);
    opts.preload = false;
    let plain = Cluster::new(&dir, "plain", opts);
    plain.start();
    let plain_out = dir.subdir("plain-received");
    receive(&plain, &plain_out, &m);
    let hits = scan::find_in_tree(&plain_out, &[m.as_bytes()], &[]);
    assert!(
        !hits.is_empty(),
        "control: the marker is not in the received WAL"
    );
}
