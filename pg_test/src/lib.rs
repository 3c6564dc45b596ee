//! Helpers for driving real PostgreSQL clusters in tests.
//!
//! The tests start real servers with `initdb`, `pg_ctl`, `psql`, `pgbench`
//! and friends from the PostgreSQL binaries directory (`TDE_PG_BIN`, default
//! `/usr/lib/postgresql/15/bin`), with `tde` loaded from that installation.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every
//! server-side and client command runs as the OS user `postgres` (the uid and
//! gid are set on the child process directly, so a timed-out command can be
//! killed by its own pid). Each test works in its own directory
//! `/var/tmp/tde-pg-test-<random>`, owned by that user, which is removed when
//! the test passes and kept (its path printed) when it fails. Servers listen
//! on a Unix socket in that directory only, and every server is stopped when
//! its [`Cluster`] is dropped, including while a failing test unwinds.
//!
//! Run the suite one test at a time (`-- --test-threads=1`): the machines it
//! runs on are small and the tests measure what reaches the disk.

pub mod cluster;
pub mod os;
pub mod psql;
pub mod scan;
pub mod tde;
pub mod testdir;
pub mod wal;
pub mod workload;

pub use cluster::{Cluster, ClusterOptions, KeySource};
pub use os::Output;
pub use psql::Psql;
pub use testdir::TestDir;

/// A random marker string for one kind of data, e.g.
/// `tde-marker-heap-3f9c0a1b2c4d`: distinctive enough never to occur on disk
/// by chance, and different in every run.
pub fn marker(kind: &str) -> String {
    format!("tde-marker-{kind}-{}", os::random_hex(6))
}

/// Hex digits of a random 256-bit principal key.
pub fn random_key_hex() -> String {
    os::random_hex(32)
}

/// A started cluster named `main` in `dir`: data checksums on, a fresh
/// principal key file, `tde` preloaded and `CREATE EXTENSION tde` done.
pub fn encrypted_cluster(dir: &TestDir) -> Cluster {
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(
        dir,
        "main",
        ClusterOptions::with_key_file(&key).checksums(true),
    );
    c.start();
    c.psql("CREATE EXTENSION tde");
    c
}
