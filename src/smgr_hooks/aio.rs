//! PostgreSQL 18 reads relation pages through asynchronous I/O: the buffer
//! manager starts a read with `smgrstartreadv`, the kernel (io_uring), an I/O
//! worker or the backend itself (`io_method = sync`) fills the buffers, and
//! completion callbacks run — md.c's first, then the buffer manager's, which
//! verifies each page.
//!
//! Shared completion callbacks run in whichever process completes the I/O:
//! with io_uring, any backend waiting for an I/O drains its owner's
//! completion queue. Pages of shared buffers are decrypted there, by our
//! wrapper in md.c's callback table entry (`aio_md_readv_cb`), before the
//! buffer manager's shared callback verifies them. Pages of temporary
//! tables sit in the owning backend's private memory, which another process
//! cannot reach, and the buffer manager verifies them in a local callback
//! that only the owner runs (`aio_local_buffer_readv_cb`); so they are
//! decrypted by our wrapper of that callback, just before it.
//!
//! Completion callbacks run inside a critical section and must not raise
//! errors. A page under a data key generation (or format) this server does
//! not hold ends the read the way md.c ends a failed one: the pages before
//! it count as read (the buffer manager retries from there), and a read
//! that starts at it fails with ENOKEY ("Required key not available"), an
//! I/O error that `zero_damaged_pages` does not paper over. A damaged page
//! is left as stored for the buffer manager's own verification.

use std::sync::atomic::{AtomicUsize, Ordering};

use pgrx::pg_sys::{self, PgAioHandle, PgAioResult, PgAioTargetData};
use tde_core::page::{Page, PAGE_SIZE};

use super::checksums_enabled;
use crate::keys;

type CompleteFn = unsafe extern "C-unwind" fn(*mut PgAioHandle, PgAioResult, u8) -> PgAioResult;

/// `PGAIO_HCB_MD_READV` of storage/aio.h: failures reported as md.c's own.
const MD_READV_CALLBACK_ID: u32 = 1;

/// `struct PgAioHandleCallbacks` (storage/aio.h), which pgrx's bindings
/// leave opaque: four function pointers.
#[repr(C)]
pub struct Callbacks {
    pub stage: usize,
    pub complete_shared: usize,
    pub complete_local: usize,
    pub report: usize,
}

// Declared here because pgrx's bindings do not cover storage/aio.h,
// storage/md.h and the callback tables of storage/bufmgr.h; the signatures
// are PostgreSQL 18's.
extern "C-unwind" {
    pub static aio_md_readv_cb: Callbacks;
    pub static aio_local_buffer_readv_cb: Callbacks;
    fn pgaio_io_get_target_data(ioh: *mut PgAioHandle) -> *mut PgAioTargetData;
    fn pgaio_io_get_iovec_length(
        ioh: *mut PgAioHandle,
        iov: *mut *mut libc::iovec,
    ) -> std::ffi::c_int;
}

/// One completion callback replaced by ours: the server's original, saved
/// in the postmaster before any I/O.
pub struct Hooked {
    original: AtomicUsize,
    wrapper: CompleteFn,
}

/// md.c's shared completion of reads (`md_readv_complete`).
pub static MD_READV: Hooked = Hooked {
    original: AtomicUsize::new(0),
    wrapper: tde_md_readv_complete,
};

/// The buffer manager's local completion of reads into temporary tables'
/// buffers (`local_buffer_readv_complete`).
pub static LOCAL_BUFFER_READV: Hooked = Hooked {
    original: AtomicUsize::new(0),
    wrapper: tde_local_buffer_readv_complete,
};

impl Hooked {
    pub fn save_original(&self, complete: usize) {
        self.original.store(complete, Ordering::Relaxed);
    }

    pub fn wrapper(&self) -> usize {
        self.wrapper as *const () as usize
    }

    fn original(&self) -> CompleteFn {
        // SAFETY: set once in the postmaster, before any I/O, from the
        // callback table entry it replaced, of signature CompleteFn.
        unsafe { std::mem::transmute::<usize, CompleteFn>(self.original.load(Ordering::Relaxed)) }
    }
}

unsafe extern "C-unwind" fn tde_md_readv_complete(
    ioh: *mut PgAioHandle,
    prior: PgAioResult,
    cb_data: u8,
) -> PgAioResult {
    // SAFETY: forwarding the server's arguments to md.c's own callback.
    let result = unsafe { MD_READV.original()(ioh, prior, cb_data) };
    // SAFETY: the handle is the I/O being completed.
    if unsafe { (*pgaio_io_get_target_data(ioh)).smgr.is_temp() } {
        // Left to the owner's local completion (see the module comment).
        return result;
    }
    // SAFETY: the handle is a read being completed by this process.
    unsafe { decrypted(ioh, result) }
}

unsafe extern "C-unwind" fn tde_local_buffer_readv_complete(
    ioh: *mut PgAioHandle,
    prior: PgAioResult,
    cb_data: u8,
) -> PgAioResult {
    // SAFETY: only the backend owning the temporary table's buffers runs
    // local completion callbacks, so the iovecs point into its memory.
    let prior = unsafe { decrypted(ioh, prior) };
    // SAFETY: forwarding to the buffer manager's own callback.
    unsafe { LOCAL_BUFFER_READV.original()(ioh, prior, cb_data) }
}

/// `result` (md.c's distilled result of the read `ioh`) after decrypting
/// the pages it says were read: unchanged, or ended at the first page under
/// a key this server does not hold.
///
/// # Safety
/// `ioh` is a read being completed by this process, into memory this
/// process can reach.
unsafe fn decrypted(ioh: *mut PgAioHandle, result: PgAioResult) -> PgAioResult {
    if result.status() == pg_sys::PgAioResultStatus::PGAIO_RS_ERROR || result.result <= 0 {
        return result;
    }
    let blocks = result.result as usize;
    // Never unwind into the server's critical section; after a panic (a
    // bug) no page counts as decrypted, so the read fails.
    let readable = std::panic::catch_unwind(|| {
        // SAFETY: the handle is the completing I/O; its target data and
        // iovecs describe the buffers it read, which nobody else may touch
        // until the completion callbacks are done.
        unsafe { decrypt_completed(ioh, blocks) }
    })
    .unwrap_or(0);
    if readable == blocks {
        return result;
    }
    let mut result = result;
    result.set_id(MD_READV_CALLBACK_ID);
    if readable == 0 {
        result.set_status(pg_sys::PgAioResultStatus::PGAIO_RS_ERROR);
        result.set_error_data(libc::ENOKEY as u32);
        result.result = 0;
    } else {
        result.set_status(pg_sys::PgAioResultStatus::PGAIO_RS_PARTIAL);
        result.result = readable as i32;
    }
    result
}

/// Decrypts the first `blocks` pages of a completed read, in place; returns
/// how many leading pages are readable (all of them, or up to the first
/// one under a key this server does not hold).
///
/// # Safety
/// `ioh` is a read being completed by this process.
unsafe fn decrypt_completed(ioh: *mut PgAioHandle, blocks: usize) -> usize {
    // SAFETY: per the contract.
    let target = unsafe { (*pgaio_io_get_target_data(ioh)).smgr };
    let blocks = blocks.min(target.nblocks as usize);
    let mut iov: *mut libc::iovec = std::ptr::null_mut();
    // SAFETY: per the contract; the count is this read's own iovecs.
    let count = unsafe { pgaio_io_get_iovec_length(ioh, &raw mut iov) };
    let keys = keys::current();
    let checksums = checksums_enabled();
    let mut done = 0usize;
    for i in 0..count.max(0) as usize {
        // SAFETY: i < count.
        let v = unsafe { *iov.add(i) };
        for k in 0..v.iov_len / PAGE_SIZE {
            if done == blocks {
                return done;
            }
            // SAFETY: each iovec covers whole pages of the read's buffers.
            let page = unsafe { &mut *(v.iov_base.cast::<u8>().add(k * PAGE_SIZE) as *mut Page) };
            if keys
                .page
                .decrypt(
                    page,
                    target.blockNum + done as u32,
                    target.rlocator.relNumber.into(),
                    checksums,
                )
                .is_err()
            {
                return done;
            }
            done += 1;
        }
    }
    done
}
