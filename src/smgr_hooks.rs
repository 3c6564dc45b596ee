//! The storage manager wrappers: encrypt private copies of pages on their
//! way to md.c, decrypt in place after md.c has read them. The wrappers'
//! signatures follow the server version (PostgreSQL 15: read, write,
//! extend; 17 and later: readv, writev, extend); the work they share is
//! here.

use std::cell::RefCell;
use std::ffi::c_char;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use pgrx::pg_sys::{self, BlockNumber, ForkNumber, SMgrRelation};
use tde_core::nonce::NonceSource;
use tde_core::page::{Page, WriteOutcome, WriteParams, PAGE_SIZE};

use crate::attach::compat::StorageId;
use crate::relpath::fork_kind;
use crate::{errors, fake_lsn, guc, keys};

#[cfg(feature = "pg15")]
#[path = "smgr_hooks/pg15.rs"]
mod version;
#[cfg(any(feature = "pg17", feature = "pg18"))]
#[path = "smgr_hooks/pg17.rs"]
mod version;

pub use version::{wrapper_extend, wrapper_read, wrapper_write};

#[cfg(feature = "pg18")]
#[path = "smgr_hooks/aio.rs"]
pub mod aio;

/// The dispatch table's original read, write and extend entries (md.c's).
static ORIGINALS: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
const READ: usize = 0;
const WRITE: usize = 1;
const EXTEND: usize = 2;

pub fn save_originals(read: usize, write: usize, extend: usize) {
    ORIGINALS[READ].store(read, Ordering::Relaxed);
    ORIGINALS[WRITE].store(write, Ordering::Relaxed);
    ORIGINALS[EXTEND].store(extend, Ordering::Relaxed);
}

fn original(which: usize) -> usize {
    ORIGINALS[which].load(Ordering::Relaxed)
}

/// Private, aligned pages for encrypted copies: the caller's buffers may be
/// shared buffers other backends still modify, so they are never changed.
#[repr(C, align(4096))]
struct AlignedPage(Page);

thread_local! {
    static WRITE_PAGES: RefCell<Vec<Box<AlignedPage>>> = const { RefCell::new(Vec::new()) };
    static NONCES: RefCell<NonceSource> = const { RefCell::new(NonceSource::new()) };
}

static CHECKSUMS: OnceLock<bool> = OnceLock::new();

fn checksums_enabled() -> bool {
    // SAFETY: reads the control file copy in shared memory, which exists in
    // every process that does storage I/O. Fixed for the server's lifetime
    // (checksums can only change offline).
    *CHECKSUMS.get_or_init(|| unsafe { pg_sys::DataChecksumsEnabled() })
}

fn relation_path(reln: SMgrRelation, forknum: ForkNumber::Type) -> String {
    // SAFETY: reln is the live SMgrRelation passed to the wrapper.
    unsafe { StorageId::of_smgr(reln) }.fork_path(forknum)
}

/// Decrypts a page md.c has just read into `buffer` (BLCKSZ bytes the
/// caller owns exclusively while the read is in progress).
///
/// # Safety
/// `buffer` points at a whole page the caller may write.
unsafe fn decrypt_read(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *mut c_char,
) {
    // SAFETY: per the contract.
    let page = unsafe { &mut *(buffer as *mut Page) };
    if let Err(e) = keys::current()
        .page
        .decrypt(page, blocknum, checksums_enabled())
    {
        errors::raise(
            &format!(
                "cannot decrypt block {blocknum} of \"{}\"",
                relation_path(reln, forknum)
            ),
            &e,
        );
    }
}

/// Calls `write` with the pages to store in place of `buffers` (written at
/// `blocknum`, `blocknum + 1`, …): encrypted private copies, or the
/// buffers themselves when data encryption is off (and for all-zero pages,
/// which are stored as they are). New writes cannot switch data key
/// generation until `write` has returned.
///
/// # Safety
/// Each buffer points at BLCKSZ readable bytes.
unsafe fn with_encrypted<R>(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffers: &[*const c_char],
    write: impl FnOnce(&[*const c_char]) -> R,
) -> R {
    if !guc::DATA_ENCRYPTION.get() {
        return write(buffers);
    }
    // Held until `write` has returned: see `keys`.
    let guard = keys::for_write();
    WRITE_PAGES.with(|cell| {
        let mut pages = cell.borrow_mut();
        while pages.len() < buffers.len() {
            pages.push(Box::new(AlignedPage([0; PAGE_SIZE])));
        }
        let mut targets = Vec::with_capacity(buffers.len());
        for (i, (&src, copy)) in buffers.iter().zip(pages.iter_mut()).enumerate() {
            let block = blocknum + i as BlockNumber;
            let nonce = NONCES.with(|n| n.borrow_mut().next_u16());
            let nonce = nonce.unwrap_or_else(|e| errors::raise("cannot draw a page nonce", &e));
            let params = WriteParams {
                block,
                fork: fork_kind(forknum),
                generation: guard.generation(),
                nonce,
                checksums: checksums_enabled(),
            };
            // SAFETY: src points at BLCKSZ readable bytes; other backends may
            // change hint bits concurrently, which only affects those bits of
            // the copy (PostgreSQL itself copies such buffers the same way).
            unsafe {
                std::ptr::copy_nonoverlapping(src as *const u8, copy.0.as_mut_ptr(), PAGE_SIZE)
            };
            match guard
                .keys
                .page
                .encrypt_in_place(&mut copy.0, &params, fake_lsn::next)
            {
                Ok(WriteOutcome::Encrypted) => targets.push(copy.0.as_ptr().cast::<c_char>()),
                Ok(WriteOutcome::PassThrough) => targets.push(src),
                Err(e) => errors::raise(
                    &format!(
                        "cannot encrypt block {block} of \"{}\"",
                        relation_path(reln, forknum)
                    ),
                    &e,
                ),
            }
        }
        // The private pages are not touched again until `write` returns
        // (backends are single-threaded and the wrappers do not nest).
        write(&targets)
    })
}
