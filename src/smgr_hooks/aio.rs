//! PostgreSQL 18 reads relation pages through asynchronous I/O: the buffer
//! manager starts a read with `smgrstartreadv`, the kernel (io_uring), an I/O
//! worker or the backend itself (`io_method = sync`) fills the buffers, and
//! completion callbacks run in whichever process completes the I/O — md.c's
//! first, then the buffer manager's, which verifies each page. Our wrapper
//! takes md.c's place in its callback table entry (`aio_md_readv_cb`) and
//! decrypts the pages that were read before the buffer manager looks at them.
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

/// The head of `struct PgAioHandleCallbacks` (storage/aio.h), which pgrx's
/// bindings leave opaque: `stage`, then `complete_shared`.
#[repr(C)]
pub struct CallbacksHead {
    pub stage: usize,
    pub complete_shared: usize,
}

// Declared here because pgrx's bindings do not cover storage/aio.h and
// storage/md.h; the signatures are PostgreSQL 18's.
extern "C-unwind" {
    pub static aio_md_readv_cb: CallbacksHead;
    fn pgaio_io_get_target_data(ioh: *mut PgAioHandle) -> *mut PgAioTargetData;
    fn pgaio_io_get_iovec_length(
        ioh: *mut PgAioHandle,
        iov: *mut *mut libc::iovec,
    ) -> std::ffi::c_int;
}

static ORIGINAL: AtomicUsize = AtomicUsize::new(0);

pub fn save_original(complete: usize) {
    ORIGINAL.store(complete, Ordering::Relaxed);
}

pub fn wrapper() -> usize {
    tde_md_readv_complete as CompleteFn as *const () as usize
}

unsafe extern "C-unwind" fn tde_md_readv_complete(
    ioh: *mut PgAioHandle,
    prior: PgAioResult,
    cb_data: u8,
) -> PgAioResult {
    // SAFETY: set once in the postmaster from the callback entry that held
    // md_readv_complete, of signature CompleteFn.
    let orig =
        unsafe { std::mem::transmute::<usize, CompleteFn>(ORIGINAL.load(Ordering::Relaxed)) };
    // SAFETY: forwarding the server's arguments to md.c's own callback.
    let result = unsafe { orig(ioh, prior, cb_data) };
    if result.status() == pg_sys::PgAioResultStatus::PGAIO_RS_ERROR || result.result <= 0 {
        return result;
    }
    let blocks = result.result as usize;
    // Never unwind into the server's critical section.
    let readable = std::panic::catch_unwind(|| {
        // SAFETY: the handle is the completing I/O; its target data and
        // iovecs describe the buffers it read, which nobody else may touch
        // until the completion callbacks are done.
        unsafe { decrypt_completed(ioh, blocks) }
    })
    .unwrap_or(blocks);
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
                .decrypt(page, target.blockNum + done as u32, checksums)
                .is_err()
            {
                return done;
            }
            done += 1;
        }
    }
    done
}
