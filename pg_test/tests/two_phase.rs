//! Prepared transactions survive crashes on an encrypted primary and its
//! standby, and their state files hold no row data in plaintext: the rows
//! of a prepared transaction live in WAL and relation pages, both
//! encrypted; `pg_twophase/` holds the GID, locks and the records WAL
//! carries for the transaction (see `docs/format/ephemeral.md`).

use pg_test::{encrypted_cluster, marker, scan, wal, Cluster, TestDir};

fn twophase_files(c: &Cluster) -> usize {
    std::fs::read_dir(c.data_dir().join("pg_twophase"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rows(c: &Cluster, m: &str) -> String {
    c.psql(&format!("SELECT count(*) FROM p WHERE v LIKE '{m}-%'"))
}

#[test]
fn prepared_transactions_survive_kill9_on_primary_and_standby() {
    let dir = TestDir::new();
    let primary = encrypted_cluster(&dir);
    primary.set("max_prepared_transactions", "10");
    primary.restart();
    primary.psql("CREATE TABLE p(id int, v text)");
    let standby = Cluster::from_base_backup(&primary, "standby", &["-X", "stream", "-R"]);
    standby.start();
    wal::wait_streaming(&standby);

    let (m1, m2) = (marker("prepared-one"), marker("prepared-two"));
    for (m, gid) in [(&m1, "tde-gid-one"), (&m2, "tde-gid-two")] {
        primary.psql(&format!(
            "BEGIN;
             INSERT INTO p SELECT g, '{m}-' || g FROM generate_series(1, 500) g;
             PREPARE TRANSACTION '{gid}'"
        ));
    }
    // Checkpoints write the state files of transactions prepared before
    // them, on the primary and (restartpoints) on the standby.
    primary.psql("CHECKPOINT");
    let lsn = wal::lsn(&primary, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn);
    standby.psql("CHECKPOINT");
    for c in [&primary, &standby] {
        assert_eq!(twophase_files(c), 2, "{}: state files", c.name());
        let hits = scan::find_in_tree(c.data_dir(), &[m1.as_bytes(), m2.as_bytes()], &[]);
        assert!(hits.is_empty(), "{}: markers on disk: {hits:?}", c.name());
    }

    primary.kill9();
    primary.start();
    assert_eq!(
        primary.psql("SELECT string_agg(gid, ',' ORDER BY gid) FROM pg_prepared_xacts"),
        "tde-gid-one,tde-gid-two"
    );
    primary.psql("COMMIT PREPARED 'tde-gid-one'");
    assert_eq!(rows(&primary, &m1), "500", "primary after kill -9");
    assert_eq!(rows(&primary, &m2), "0", "still prepared");

    let lsn = wal::lsn(&primary, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn);
    standby.kill9();
    standby.start();
    wal::wait_replayed(&standby, lsn);
    assert_eq!(rows(&standby, &m1), "500", "standby after kill -9");
    primary.stop();
    assert_eq!(standby.psql("SELECT pg_promote()"), "t");
    // A standby lists prepared transactions only once it is promoted.
    assert_eq!(
        standby.psql("SELECT gid FROM pg_prepared_xacts"),
        "tde-gid-two"
    );
    standby.psql("COMMIT PREPARED 'tde-gid-two'");
    assert_eq!(rows(&standby, &m2), "500", "promoted standby");
    assert_eq!(rows(&standby, &m1), "500", "promoted standby");
}
