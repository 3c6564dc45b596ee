//! The redo pointer of the last completed checkpoint, which crash recovery
//! would start from: a page whose LSN is newer was changed with WAL after
//! it, and PostgreSQL logged a full-page image of it with the first such
//! change, so a torn write of the page is repaired (see
//! `docs/format/pages.md`, "Torn writes").
//!
//! PostgreSQL keeps the value in `pg_control` only, so every process that
//! writes `global/pg_control` through the executable's `write` (the
//! checkpointer at the end of a checkpoint or restartpoint, the startup
//! process) publishes the redo pointer it writes, and the postmaster reads
//! the file at every shared memory initialization. A value published
//! before the file is durable errs on the safe side: it is never older than
//! the one recovery would start from.

use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};

use crate::{errors, startup};

// SAFETY: the name is unique to this extension.
static REDO: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"tde_completed_redo") };

static mut PREV_SHMEM_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

pub fn init() {
    pg_shmem_init!(REDO = AtomicU64::new(0));
    // SAFETY: _PG_init runs once in the postmaster, before any process
    // forks; chaining the hook is the documented protocol.
    unsafe {
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(read_control_file);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn read_control_file() {
    // SAFETY: the previous hook (pgrx's, which creates REDO) is called as
    // PostgreSQL would have.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| prev());
        }
    }
    match tde_core::control::read_checkpoint_redo(&startup::data_dir()) {
        Ok(redo) => REDO.get().store(redo, Ordering::Release),
        Err(e) => errors::raise("cannot read the checkpoint's redo pointer", &e),
    }
}

/// The redo pointer of the last completed checkpoint (or restartpoint).
pub fn completed() -> u64 {
    REDO.get().load(Ordering::Acquire)
}

/// Called with what a process writes to `global/pg_control` at `offset`.
pub fn observe_control_write(bytes: &[u8], offset: u64) {
    if offset != 0 {
        return;
    }
    if let Some(redo) = tde_core::control::checkpoint_redo(bytes) {
        REDO.get().store(redo, Ordering::Release);
    }
}
