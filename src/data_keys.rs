//! Online data-key changes (DESIGN §2, "Rotation"): a new generation for all
//! new writes, adopting a keyring copied from another node, and dropping a
//! generation once a scan proves that nothing on this node uses it.
//!
//! Generation numbers are issued by the primary only, so every node of a
//! replication group means the same key by the same number; a standby takes
//! the primary's new generations when an administrator copies the keyring
//! over and runs `tde_reload_keyring()` (pages and WAL a standby writes are
//! its own, so until then it simply keeps using the generations it has).

use pgrx::prelude::*;
use tde_core::keyring::Keyring;
use tde_core::wal_scan;

use crate::{errors, keyring_io, keys, startup};

fn generations(ring: &Keyring) -> String {
    ring.generations()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts a new data key generation: from now on every process writes new
/// pages and new WAL segments under it. Older generations stay readable.
/// Returns the new generation.
#[pg_extern(volatile, parallel_unsafe)]
fn tde_rotate_data_key() -> i32 {
    errors::require_superuser("rotate the data key");
    if errors::in_recovery() {
        pgrx::error!(
            "tde: cannot rotate the data key on a standby: generations are issued by the primary; rotate there, then copy pg_tde/keyring.json here and run SELECT tde_reload_keyring()"
        );
    }
    let lock = keyring_io::lock();
    let (file, ring) = keyring_io::read(&lock)
        .with_data_key_added(&keys::current().ring)
        .unwrap_or_else(|e| errors::raise("cannot rotate the data key", &e));
    // Durable before any page or segment can use it.
    keyring_io::write(&lock, &file);
    keys::publish(&ring);
    let generation = ring.current_generation();
    ereport!(
        NOTICE,
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        format!("tde: data key generation {generation} is now used for new page and WAL writes"),
        "Pages under older generations are re-encrypted when rewritten, or by SELECT tde_encrypt_all(). Standbys keep their generations until pg_tde/keyring.json is copied to them and SELECT tde_reload_keyring() runs there."
    );
    generation as i32
}

/// Rereads the keyring file (for example one copied from the primary after
/// a data-key rotation) and makes its data keys available to every process.
/// Keys this server holds that the file lacks are kept and written back, so
/// nothing this node may still read is lost. Returns the generations held.
#[pg_extern(volatile, parallel_unsafe)]
fn tde_reload_keyring() -> String {
    errors::require_superuser("reload the keyring");
    let lock = keyring_io::lock();
    let stored = keyring_io::read(&lock);
    let (file, ring) = stored
        .merged_with(&keys::current().ring)
        .unwrap_or_else(|e| errors::raise("cannot reload the keyring", &e));
    if file != stored {
        keyring_io::write(&lock, &file);
    }
    keys::publish(&ring);
    generations(&ring)
}

/// Removes data key generation `generation` from the keyring, after proving
/// on this node that no relation page and no WAL segment in pg_wal uses it.
/// The current generation cannot be dropped. WAL archives and backups taken
/// while the generation was in use need a keyring copy that still holds it.
#[pg_extern(volatile, parallel_unsafe)]
fn tde_drop_data_key(generation: i32) -> String {
    errors::require_superuser("drop a data key");
    let generation = match u8::try_from(generation) {
        Ok(g) if g > 0 => g,
        _ => pgrx::error!("tde: data key generations are 1 to 255, not {generation}"),
    };
    let lock = keyring_io::lock();
    let stored = keyring_io::read(&lock);
    // Refuse what the keyring itself rules out before scanning anything.
    let ring = keys::current().ring.clone();
    if let Err(e) = stored.with_data_key_dropped(&ring, generation) {
        errors::raise("cannot drop the data key", &e);
    }
    // No write that chose this generation is still in flight after this.
    keys::fence();
    let pgdata = startup::data_dir();
    // SAFETY: reads the control file copy in shared memory.
    let checksums = unsafe { pg_sys::DataChecksumsEnabled() };
    let report = tde_core::verify::verify_data_dir(&pgdata, checksums)
        .unwrap_or_else(|e| pgrx::error!("tde: cannot scan the data directory: {e}"));
    if let Some(pages) = report.by_generation.get(&generation) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("tde: cannot drop data key generation {generation}: {pages} page(s) on disk still use it"),
            "Run SELECT tde_encrypt_all() (and CHECKPOINT), then try again."
        );
    }
    // SAFETY: plain read of a global set from pg_control at start-up.
    let segment_size = unsafe { pg_sys::wal_segment_size } as u64;
    let wal = wal_scan::wal_generations(&pgdata.join("pg_wal"), segment_size)
        .unwrap_or_else(|e| pgrx::error!("tde: cannot scan pg_wal: {e}"));
    if let Some(segments) = wal.get(&generation) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!(
                "tde: cannot drop data key generation {generation}: {} WAL segment(s) in pg_wal still use it, the first {}",
                segments.len(),
                segments[0]
            ),
            "Segments are removed once no checkpoint, replication slot or wal_keep_size needs them: run SELECT pg_switch_wal() and CHECKPOINT, then try again."
        );
    }
    let (file, ring) = stored
        .with_data_key_dropped(&ring, generation)
        .unwrap_or_else(|e| errors::raise("cannot drop the data key", &e));
    keyring_io::write(&lock, &file);
    keys::publish(&ring);
    generations(&ring)
}
