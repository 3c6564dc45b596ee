//! Re-encryption in place: every page on disk that is plaintext or under an
//! older data key generation is read through the buffer manager, logged as a
//! full-page image (so crash recovery and standbys stay consistent) and
//! written back, which encrypts it under the current generation. This is how
//! a plaintext cluster is brought under encryption.
//!
//! Each page is locked only while it is logged and written, so normal reads
//! and writes go on. A run interrupted by a crash or an error is simply run
//! again: pages already under the current generation are skipped.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgRelation;
use tde_core::kdf::ForkKind;
use tde_core::scan::{self, RelationFile};

use crate::attach::compat::{StorageId, NO_BACKEND};
use crate::relpath::fork_number;
use crate::{errors, guc, keys, startup};

fn check_can_run() {
    errors::require_superuser("re-encrypt relations");
    if errors::in_recovery() {
        pgrx::error!("tde: cannot re-encrypt during recovery; run it on the primary");
    }
    if !guc::DATA_ENCRYPTION.get() {
        pgrx::error!(
            "tde: tde.data_encryption is off, so rewritten pages would be stored in plaintext"
        );
    }
}

/// Logs and writes one block so that it is stored under the current
/// generation. `logged` is false for the forks of unlogged relations.
fn rewrite_block(rf: &RelationFile, block: u64, logged: bool) {
    let id = StorageId {
        tablespace: rf.tablespace,
        database: rf.database,
        relfilenode: rf.relfilenode,
        backend: NO_BACKEND,
    };
    // SAFETY: the buffer is pinned by ReadBufferWithoutRelcache, locked
    // exclusively while it is dirtied and logged inside a critical section
    // (as PostgreSQL's own log_newpage_range does), flushed under that lock,
    // then unlocked and unpinned. A missing file or block raises an ERROR
    // before anything is changed.
    unsafe {
        let buf = id.read_buffer(fork_number(rf.fork), block as pg_sys::BlockNumber, logged);
        pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32);
        pg_sys::CritSectionCount += 1;
        pg_sys::MarkBufferDirty(buf);
        if logged {
            // Free space map and visibility map pages keep their contents
            // where a standard page has its hole: log them whole.
            let standard = matches!(rf.fork, ForkKind::Main | ForkKind::Init);
            pg_sys::log_newpage_buffer(buf, standard);
        }
        pg_sys::CritSectionCount -= 1;
        pg_sys::FlushOneBuffer(buf);
        pg_sys::UnlockReleaseBuffer(buf);
    }
}

/// Re-encrypts one segment file; returns the number of pages rewritten.
/// `at` tracks the block being rewritten, for the caller's error handling.
fn reencrypt_file(path: &Path, rf: &RelationFile, generation: u8, at: &Cell<u64>) -> u64 {
    let blocks = match scan::blocks_to_reencrypt(path, rf.first_block, generation) {
        Ok(b) => b,
        // Dropped since it was listed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => pgrx::error!("tde: cannot read \"{}\": {e}", path.display()),
    };
    // The forks of an unlogged relation (it has an init fork) are not
    // WAL-logged; its init fork is.
    let logged = rf.fork == ForkKind::Init || {
        let init = path.with_file_name(format!("{}_init", rf.relfilenode));
        !init.exists()
    };
    for &block in &blocks {
        pg_sys::check_for_interrupts!();
        at.set(block);
        rewrite_block(rf, block, logged);
    }
    blocks.len() as u64
}

/// Whether block `block` (of the relation fork) no longer exists in
/// `path`: its relation was dropped, truncated (by VACUUM) or rewritten
/// after the file was listed.
fn vanished(path: &Path, rf: &RelationFile, block: u64) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => m.len() <= (block - rf.first_block) * tde_core::page::PAGE_SIZE as u64,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Errors that must end the run even when the file also vanished.
fn is_interruption(cause: &CaughtError) -> bool {
    let report = match cause {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { .. } => return true,
    };
    matches!(
        report.sql_error_code(),
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED | PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN
    )
}

/// Re-encrypts one file in a subtransaction of its own, so that a file whose
/// relation is dropped or truncated under the run is skipped (from the
/// block that vanished on) instead of ending the run; cancellation and any
/// other error end it as before.
fn reencrypt_file_in_subtransaction(path: &Path, rf: &RelationFile, generation: u8) -> u64 {
    // SAFETY: the internal-subtransaction protocol PL/pgSQL follows: after
    // the commit or rollback below, the caller's memory context and resource
    // owner are restored.
    let (context, owner) = unsafe {
        let saved = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(saved.0);
        saved
    };
    let at = Cell::new(rf.first_block);
    let outcome = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        Ok(reencrypt_file(path, rf, generation, &at))
    }))
    .catch_others(|cause| Err(Box::new(cause)))
    .execute();
    // SAFETY: as above; exactly one of commit or rollback, for the
    // subtransaction begun above.
    unsafe {
        match outcome {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    match outcome {
        Ok(pages) => pages,
        Err(cause) if !is_interruption(&cause) && vanished(path, rf, at.get()) => {
            drop(cause);
            ereport!(
                NOTICE,
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!(
                    "tde: skipped \"{}\" from block {}: its relation was dropped, truncated or rewritten meanwhile",
                    path.display(),
                    at.get()
                )
            );
            0
        }
        Err(cause) => cause.rethrow(),
    }
}

fn reencrypt_files(files: Vec<(PathBuf, RelationFile)>) -> i64 {
    check_can_run();
    let generation = keys::current().ring.current_generation();
    let total_files = files.len();
    let mut pages = 0u64;
    for (i, (path, rf)) in files.iter().enumerate() {
        pages += reencrypt_file_in_subtransaction(path, rf, generation);
        if (i + 1) % 500 == 0 {
            ereport!(
                NOTICE,
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!(
                    "tde: {} of {total_files} files checked, {pages} pages rewritten",
                    i + 1
                )
            );
        }
    }
    pages as i64
}

/// Rewrites every page of the whole cluster (all databases, shared
/// catalogs, tablespaces) that is plaintext or under an older data key
/// generation. Returns the number of pages rewritten. Temporary relations
/// are skipped: they never outlive their session.
#[pg_extern(volatile, parallel_unsafe)]
fn tde_encrypt_all() -> i64 {
    let pgdata = startup::data_dir();
    let files = scan::relation_files(&pgdata)
        .unwrap_or_else(|e| pgrx::error!("tde: cannot list relation files: {e}"))
        .into_iter()
        .filter_map(|path| {
            let rf = scan::parse_relation_path(path.strip_prefix(&pgdata).ok()?)?;
            (!rf.temporary).then_some((path, rf))
        })
        .collect();
    reencrypt_files(files)
}

/// Rewrites every page of one relation (all forks) that is plaintext or
/// under an older data key generation. Returns the number of pages
/// rewritten.
#[pg_extern(volatile, parallel_unsafe)]
fn tde_encrypt_relation(rel: PgRelation) -> i64 {
    let id = StorageId::of_relation(&rel);
    if id.is_temporary() {
        pgrx::error!("tde: temporary relations are encrypted as their pages are written");
    }
    if id.relfilenode == 0 {
        return 0;
    }
    let pgdata = startup::data_dir();
    let mut files = Vec::new();
    for fork in ForkKind::ALL {
        let rel_path = id.fork_path(fork_number(fork));
        for path in scan::segment_files(&pgdata.join(&rel_path)) {
            if let Some(rf) = path
                .strip_prefix(&pgdata)
                .ok()
                .and_then(scan::parse_relation_path)
            {
                files.push((path, rf));
            }
        }
    }
    reencrypt_files(files)
}
