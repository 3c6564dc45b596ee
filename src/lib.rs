//! `tde`: transparent data encryption for stock PostgreSQL.
//!
//! This crate is the glue between PostgreSQL and the PostgreSQL-free core
//! (`tde-core`): configuration, start-up, the attach layer that routes the
//! server's storage manager through our wrappers, and the SQL functions.
#![deny(unsafe_op_in_unsafe_fn)]

use pgrx::prelude::*;

mod attach;
mod core_dumps;
mod data_keys;
mod ephemeral_files;
mod errors;
mod guc;
mod keyring_io;
mod keys;
mod redo_point;
mod reencrypt;
mod relpath;
mod rotation;
mod smgr_hooks;
mod sql;
mod startup;
mod state;
mod wal_hooks;

pgrx::pg_module_magic!();

/// Runs in the postmaster (via `shared_preload_libraries`) before any backend
/// forks. Either everything is in place when it returns, or the server does
/// not start.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a plain read of a postmaster-global flag set by PostgreSQL
    // around the loading of preload libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if !preloading {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "tde must be loaded via shared_preload_libraries",
            "Add 'tde' to shared_preload_libraries in postgresql.conf, set tde.principal_key_file or tde.principal_key_command, and restart the server."
        );
    }
    guc::register();
    startup::require_full_page_writes();
    // Before the first key is fetched.
    core_dumps::protect();
    state::install(startup::load_keys());
    attach::attach_storage_manager();
    ephemeral_files::init()
        .unwrap_or_else(|e| errors::raise("cannot draw the key for temporary files", &e));
    attach::attach_wal_io();
    wal_hooks::stream_out::init();
    rotation::init();
    keys::init();
    redo_point::init();
    attach::install_round_trip();
    log!(
        "tde: data encryption active (data key generation {}, principal key {})",
        state::get().keyring.current_generation(),
        state::get().fingerprint
    );
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn status_reports_attached_and_generation() {
        let row = Spi::get_three::<String, String, i32>(
            "SELECT attach, principal_key_fingerprint, data_key_generation FROM tde_status()",
        )
        .expect("tde_status() runs");
        let (attach, fp, generation) = (row.0.unwrap(), row.1.unwrap(), row.2.unwrap());
        assert!(attach.starts_with("smgr"), "{attach}");
        assert_eq!(fp.len(), 16, "{fp}");
        assert_eq!(generation, 1);
        let enc = Spi::get_one::<bool>("SELECT data_encryption FROM tde_status()")
            .unwrap()
            .unwrap();
        assert!(enc);
    }

    #[pg_test]
    fn relation_pages_counts_encrypted_pages() {
        Spi::run("CREATE TABLE t_pages(id int, v text)").unwrap();
        Spi::run("INSERT INTO t_pages SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
            .unwrap();
        Spi::run("CHECKPOINT").unwrap();
        let main = Spi::get_three::<i64, i64, i64>(
            "SELECT total, encrypted, plaintext FROM tde_relation_pages('t_pages') WHERE fork = 'main'",
        )
        .unwrap();
        let (total, encrypted, plaintext) = (main.0.unwrap(), main.1.unwrap(), main.2.unwrap());
        assert!(total > 10, "total {total}");
        assert_eq!(encrypted, total);
        assert_eq!(plaintext, 0);
        let forks = Spi::get_one::<i64>("SELECT count(*) FROM tde_relation_pages('t_pages')")
            .unwrap()
            .unwrap();
        assert!(forks >= 1);
    }

    #[pg_test]
    fn verify_counts_the_new_table_as_encrypted() {
        Spi::run("CREATE TABLE t_verify(id int, v text)").unwrap();
        Spi::run("INSERT INTO t_verify SELECT g, md5(g::text) FROM generate_series(1, 3000) g")
            .unwrap();
        Spi::run("CHECKPOINT").unwrap();
        let generations = Spi::get_one::<String>(
            "SELECT generations FROM tde_relation_pages('t_verify') WHERE fork = 'main'",
        )
        .unwrap()
        .unwrap();
        let encrypted = Spi::get_one::<i64>(
            "SELECT encrypted FROM tde_relation_pages('t_verify') WHERE fork = 'main'",
        )
        .unwrap()
        .unwrap();
        assert_eq!(generations, format!("{{\"1\": {encrypted}}}"));
        let row = Spi::get_three::<i64, i64, String>(
            "SELECT encrypted, checksum_failures, generations FROM tde_verify()",
        )
        .unwrap();
        let (all_encrypted, failures, all_generations) =
            (row.0.unwrap(), row.1.unwrap(), row.2.unwrap());
        assert!(all_encrypted >= encrypted, "{all_encrypted} < {encrypted}");
        assert_eq!(failures, 0);
        assert!(all_generations.starts_with("{\"1\": "), "{all_generations}");
    }

    #[pg_test]
    fn data_reads_back_after_eviction() {
        Spi::run("CREATE TABLE t_back(id int primary key, v text)").unwrap();
        Spi::run("INSERT INTO t_back SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
            .unwrap();
        Spi::run("CHECKPOINT").unwrap();
        let sum = Spi::get_one::<i64>("SELECT sum(length(v))::bigint FROM t_back WHERE id % 7 = 0")
            .unwrap()
            .unwrap();
        assert_eq!(sum, 714 * 32);
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'tde'",
            "tde.principal_key_command = 'echo 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'",
        ]
    }
}
