//! Online data-key changes (DESIGN §2, "Rotation"): a new generation for all
//! new writes, importing the generations of a keyring from another node, and
//! dropping a generation once a scan proves that nothing on this node uses
//! it.
//!
//! Generation numbers are issued by the primary only, so every node of a
//! replication group means the same key by the same number. A streaming
//! standby receives WAL sealed by the primary's walsender under the oldest
//! generation (by default, `tde.wal_stream_generation`; see
//! `docs/format/wal-stream.md`), stores it as received and writes its pages
//! under its own current generation, so it keeps working after a rotation
//! on the primary; it takes the new generations when
//! an administrator copies the primary's keyring next to it and runs
//! `tde_import_keyring()` there (needed before it reads WAL written by the
//! primary under the new generation from an archive, or before it serves as
//! a copy source).
//!
//! Every change starts from the union of the keyring file and the keys this
//! server holds, so no sequence of copies, imports, rotations and drops can
//! make the durable keyring lose a key the server uses.

use pgrx::prelude::*;
use tde_core::keyring::{open_for_cluster, Keyring, KeyringFile};
use tde_core::wal_scan;

use crate::{errors, keyring_io, keys, startup};

fn generations(ring: &Keyring) -> String {
    ring.generations()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The keyring file merged with the keys this server holds, under the lock.
fn current_keyring(lock: &keyring_io::KeyringLock, what: &str) -> (KeyringFile, Keyring) {
    keyring_io::read(lock)
        .merged_with(&keys::current().ring)
        .unwrap_or_else(|e| errors::raise(what, &e))
}

/// A base backup copies the keyring at some point of its run and pages at
/// others; changing data keys meanwhile can leave it with pages under a
/// generation its keyring copy lacks.
fn refuse_during_base_backup(action: &str) {
    let running = Spi::get_one::<i64>("SELECT count(*) FROM pg_stat_progress_basebackup")
        .ok()
        .flatten()
        .unwrap_or(0);
    if running > 0 {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("tde: cannot {action} while a base backup is running"),
            "The backup's copy of the keyring could miss the change. Try again when pg_stat_progress_basebackup is empty; backups taken with pg_backup_start() are not visible here, so do not overlap them either."
        );
    }
}

/// Starts a new data key generation: from now on every process writes new
/// pages and new WAL segments under it. Older generations stay readable.
/// Returns the new generation. Not transactional: a rollback does not undo
/// it.
#[pg_extern(volatile, parallel_unsafe)]
fn tde_rotate_data_key() -> i32 {
    errors::require_superuser("rotate the data key");
    if errors::in_recovery() {
        pgrx::error!(
            "tde: cannot rotate the data key on a standby: generations are issued by the primary; rotate there, then copy its pg_tde/keyring.json next to this node and run SELECT tde_import_keyring('<path of the copy>') here"
        );
    }
    refuse_during_base_backup("rotate the data key");
    let lock = keyring_io::lock();
    let (base, held) = current_keyring(&lock, "cannot rotate the data key");
    let (file, ring) = base
        .with_data_key_added(&held)
        .unwrap_or_else(|e| errors::raise("cannot rotate the data key", &e));
    // Durable before any page or segment can use it.
    keyring_io::write(&lock, &file);
    keys::publish(&ring);
    let generation = ring.current_generation();
    ereport!(
        NOTICE,
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        format!("tde: data key generation {generation} is now used for new page and WAL writes"),
        "Pages under older generations are re-encrypted when rewritten, or by SELECT tde_encrypt_all(). Copy pg_tde/keyring.json next to each standby and run SELECT tde_import_keyring('<path of the copy>') there; keep a copy with your backups."
    );
    generation as i32
}

/// Adds the data keys of the keyring file at `path` (for example the
/// primary's, copied here after a rotation) to this node's keyring and makes
/// them available to every process. Only data keys are taken: this node's
/// principal keys stay as they are, and no key this node holds is dropped.
/// Refused if the file belongs to another keyring or gives one generation a
/// different key. Returns the generations held afterwards.
#[pg_extern(volatile, parallel_unsafe)]
fn tde_import_keyring(path: &str) -> String {
    errors::require_superuser("import a keyring");
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| pgrx::error!("tde: cannot read keyring \"{path}\": {e}"));
    let context = format!("cannot import keyring \"{path}\"");
    let lock = keyring_io::lock();
    let (live, held) = current_keyring(&lock, &context);
    let file = KeyringFile::parse(&bytes).unwrap_or_else(|e| errors::raise(&context, &e));
    let imported = match file.merged_with(&held) {
        Ok((_, ring)) => ring,
        Err(tde_core::Error::KeyringBodyMismatch) => adopt_under_own_keyring_key(&file, &held)
            .unwrap_or_else(|e| errors::raise(&context, &e)),
        Err(e) => errors::raise(&context, &e),
    };
    let (file, ring) = live
        .merged_with(&imported)
        .unwrap_or_else(|e| errors::raise(&context, &e));
    if file != keyring_io::read(&lock) {
        keyring_io::write(&lock, &file);
    }
    keys::publish(&ring);
    generations(&ring)
}

/// A copy of this cluster's keyring under a keyring key of its own (each
/// node that migrated a tde 0.1.0 keyring drew one): opened with this
/// server's principal key, which must open it, and merged with `held` under
/// this server's keyring key.
fn adopt_under_own_keyring_key(
    file: &KeyringFile,
    held: &Keyring,
) -> Result<Keyring, tde_core::Error> {
    let principal = startup::principal_key()?;
    let theirs = open_for_cluster(file, &principal, held.system_identifier)?;
    if theirs.cluster_salt != held.cluster_salt {
        return Err(tde_core::Error::DataKeyChange(
            "it belongs to another keyring of this cluster (a different cluster salt)".into(),
        ));
    }
    theirs
        .with_keyring_key(held.keyring_key().clone())
        .seal(&[&principal])?
        .merged_with(held)
        .map(|(_, ring)| ring)
}

/// Removes data key generation `generation` from the keyring, after proving
/// on this node that no relation page on disk and no live page of a segment
/// in pg_wal uses it. The current generation cannot be dropped, and nothing
/// is dropped on a standby (it may still need the key for WAL it has yet to
/// replay). WAL archives and base backups taken while the generation was in
/// use need a keyring copy that still holds it.
#[pg_extern(volatile, parallel_unsafe)]
fn tde_drop_data_key(generation: i32) -> String {
    errors::require_superuser("drop a data key");
    let generation = match u8::try_from(generation) {
        Ok(g) if g > 0 => g,
        _ => pgrx::error!("tde: data key generations are 1 to 255, not {generation}"),
    };
    if errors::in_recovery() {
        pgrx::error!(
            "tde: cannot drop a data key on a standby: it may still need the key for WAL it has not replayed yet; drop it after promotion, or rebuild the standby"
        );
    }
    refuse_during_base_backup("drop a data key");
    let lock = keyring_io::lock();
    let (base, held) = current_keyring(&lock, "cannot drop the data key");
    // Refuse what the keyring itself rules out before scanning anything.
    let (file, ring) = base
        .with_data_key_dropped(&held, generation)
        .unwrap_or_else(|e| errors::raise("cannot drop the data key", &e));
    // No write that chose this generation is still in flight after this.
    keys::fence();
    let pgdata = startup::data_dir();
    // SAFETY: reads the control file copy in shared memory.
    let checksums = unsafe { pg_sys::DataChecksumsEnabled() };
    let report = tde_core::verify::verify_data_dir_with(&pgdata, checksums, || {
        pgrx::check_for_interrupts!();
    })
    .unwrap_or_else(|e| pgrx::error!("tde: cannot scan the data directory: {e}"));
    if let Some(pages) = report.by_generation.get(&generation) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("tde: cannot drop data key generation {generation}: {pages} page(s) on disk still use it"),
            "Run SELECT tde_encrypt_all() and CHECKPOINT, then try again. Pages of temporary tables are rewritten only by their own session; they go when it ends."
        );
    }
    // SAFETY: plain read of a global set from pg_control at start-up.
    let segment_size = unsafe { pg_sys::wal_segment_size } as u64;
    let wal = wal_scan::wal_generations_with(&pgdata.join("pg_wal"), segment_size, || {
        pgrx::check_for_interrupts!();
    })
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
    keyring_io::write(&lock, &file);
    keys::publish(&ring);
    generations(&ring)
}
