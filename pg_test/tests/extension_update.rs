//! `ALTER EXTENSION tde UPDATE` from each previous release's SQL (kept in
//! `sql/`) gives exactly the objects of a fresh install of the current one,
//! and they work.

use pg_test::{encrypted_cluster, TestDir};

/// The extension's functions with their full signatures, result types,
/// volatility, strictness, parallel safety and C symbols, one per line,
/// sorted.
const FUNCTIONS: &str = "SELECT string_agg(sig, E'\\n' ORDER BY sig) FROM (
       SELECT p.proname || '(' || pg_get_function_arguments(p.oid) || ') -> '
              || pg_get_function_result(p.oid) || ' ' || p.provolatile::text || p.proisstrict::text
              || p.proparallel::text || ' ' || p.prosrc AS sig
         FROM pg_proc p
         JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
         JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass
                             AND d.refobjid = e.oid AND e.extname = 'tde') s";

#[test]
fn update_from_each_previous_release_matches_a_fresh_install() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    let fresh = c.psql(FUNCTIONS);
    let current = c.psql("SELECT extversion FROM pg_extension WHERE extname = 'tde'");
    assert_eq!(current, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        c.psql("SELECT default_version FROM pg_available_extensions WHERE name = 'tde'"),
        current
    );

    for previous in ["0.1.0", "0.2.0"] {
        let db = format!("updated_from_{}", previous.replace('.', "_"));
        c.psql(&format!("CREATE DATABASE {db}"));
        let in_updated = |sql: &str| {
            let out = c.psql_output(&db, sql);
            assert!(out.success(), "{previous}: {sql}: {}", out.text());
            out.stdout.trim().to_string()
        };
        in_updated(&format!("CREATE EXTENSION tde VERSION '{previous}'"));
        let old = in_updated(FUNCTIONS);
        assert_eq!(
            old.contains("tde_rotate_data_key"),
            previous != "0.1.0",
            "{previous} objects:\n{old}"
        );
        assert!(!old.contains("iv_collisions"), "{previous} objects:\n{old}");
        // The previous release's objects keep working with the current
        // library until the update (their rows are built by that release's
        // declarations).
        assert_eq!(
            in_updated(
                "SELECT data_key_generation || ' ' || data_encryption || ' ' || (wal_segment IS NOT NULL)
                   FROM tde_status()"
            ),
            "1 true true"
        );
        assert!(in_updated("SELECT generations FROM tde_verify()").starts_with('{'));
        if previous == "0.2.0" {
            assert!(in_updated("SELECT wal_generations FROM tde_verify()").starts_with('{'));
        }
        in_updated("ALTER EXTENSION tde UPDATE");
        assert_eq!(
            in_updated("SELECT extversion FROM pg_extension WHERE extname = 'tde'"),
            current
        );
        assert_eq!(
            in_updated(FUNCTIONS),
            fresh,
            "updated from {previous} versus fresh install"
        );
        // The new and the changed functions run.
        assert_eq!(
            in_updated("SELECT data_key_generations FROM tde_status()"),
            "1"
        );
        assert!(in_updated("SELECT wal_generations FROM tde_verify()").starts_with('{'));
        assert_eq!(
            in_updated("SELECT formats || ' ' || iv_collisions FROM tde_verify()")
                .split_once(' ')
                .map(|(_, n)| n.to_string()),
            Some("0".to_string())
        );
        let formats = in_updated("SELECT formats FROM tde_verify()");
        assert!(
            formats.starts_with('{') && !formats.contains("\"1\""),
            "{formats}"
        );
    }
    assert_eq!(c.psql("SELECT tde_rotate_data_key()"), "2");
}
