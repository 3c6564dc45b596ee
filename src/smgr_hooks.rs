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
use tde_core::page::{
    is_all_zero, page_lsn, plan_rewrite, Mode, Page, RewritePlan, WriteOutcome, WriteParams,
    PAGE_SIZE,
};

use crate::attach::compat::StorageId;
use crate::relpath::fork_kind;
use crate::{errors, guc, keys, redo_point, startup};

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
    /// Where a page's version on disk is read before a rewrite that no
    /// full-page image covers.
    static STORED_PAGE: RefCell<Option<Box<AlignedPage>>> = const { RefCell::new(None) };
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
/// `reln` is live; `buffer` points at a whole page the caller may write.
unsafe fn decrypt_read(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *mut c_char,
) {
    // SAFETY: per the contract.
    let (page, storage) = unsafe { (&mut *(buffer as *mut Page), StorageId::of_smgr(reln)) };
    if let Err(e) =
        keys::current()
            .page
            .decrypt(page, blocknum, storage.relfilenode, checksums_enabled())
    {
        errors::raise(
            &format!(
                "cannot decrypt block {blocknum} of \"{}\"",
                storage.fork_path(forknum)
            ),
            &e,
        );
    }
}

/// How one page is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Plaintext,
    Encrypt {
        mode: Mode,
        generation: u8,
        /// See [`RewritePlan::OverZeros`].
        keep_zero_sectors: bool,
    },
}

/// What a write is, for choosing how to store its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A temporary relation, or a fork of an unlogged relation other than
    /// its init fork: a crash removes or resets it, so no torn write of it
    /// is ever read.
    Transient,
    /// A new block of a relation that survives a crash (extend).
    NewBlock,
    /// An existing block of a relation that survives a crash.
    Rewrite,
}

/// How a page is stored (see `docs/format/pages.md`):
///
/// - transient relations: wide mode, fresh, under the current generation;
/// - new blocks, and rewrites that a full-page image in WAL after the last
///   checkpoint covers (`protected`): XTS mode under the current
///   generation;
/// - other rewrites: what `plan` (the version on disk compared with the
///   page's LSN) says, so that a torn write changes only the bytes
///   PostgreSQL changed; a free space or visibility map page (`map_fork`)
///   written over a block still zeros keeps its zero sectors as zeros.
///
/// With data encryption off, what would be encrypted afresh is written in
/// plaintext; a rewrite keeps an encrypted version encrypted.
fn store_as(
    encrypt: bool,
    current: u8,
    kind: Kind,
    protected: bool,
    map_fork: bool,
    plan: impl FnOnce() -> RewritePlan,
) -> Store {
    let fresh = |mode, keep_zero_sectors| match encrypt {
        true => Store::Encrypt {
            mode,
            generation: current,
            keep_zero_sectors,
        },
        false => Store::Plaintext,
    };
    match kind {
        Kind::Transient => fresh(Mode::Wide, false),
        Kind::NewBlock => fresh(Mode::Xts, false),
        Kind::Rewrite if protected => fresh(Mode::Xts, false),
        Kind::Rewrite => match plan() {
            RewritePlan::Fresh => fresh(Mode::Xts, false),
            // Other forks' pages written without an image over zeros belong
            // to relations whose creating transaction has not committed
            // (see the residual case R1): a crash discards them, so keeping
            // their zero sectors would reveal how full they are for nothing.
            RewritePlan::OverZeros => fresh(Mode::Xts, map_fork),
            RewritePlan::KeepPlaintext => Store::Plaintext,
            RewritePlan::KeepGeneration(generation) => Store::Encrypt {
                mode: Mode::Xts,
                generation,
                keep_zero_sectors: false,
            },
        },
    }
}

/// Whether a write of a page with LSN `lsn` is covered by a full-page
/// image in WAL after the redo point crash recovery would start from: the
/// page was then changed, with WAL, after the last completed checkpoint,
/// and PostgreSQL logs a full-page image with the first change of a page
/// after a checkpoint's redo pointer.
fn protected_by_full_page_image(lsn: u64) -> bool {
    // SAFETY: a plain read of a server variable.
    let full_page_writes = unsafe { pg_sys::fullPageWrites };
    // SAFETY: a plain read of a flag the postmaster set from its options.
    if !full_page_writes && !unsafe { pg_sys::IsBinaryUpgrade } {
        warn_full_page_writes_off();
    }
    full_page_writes && lsn > redo_point::completed()
}

/// tde refuses to start with `full_page_writes = off` (outside pg_upgrade's
/// binary-upgrade mode); turned off by a reload, every rewrite of a page under a new LSN loses its protection
/// against torn writes. Said once per process.
fn warn_full_page_writes_off() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        pgrx::warning!(
            "tde: full_page_writes is off: encrypted pages rewritten under a new LSN are not protected against torn writes; set it back on"
        );
    }
}

/// Whether `storage`'s relation is unlogged: it has an init fork.
fn is_unlogged(storage: &StorageId, forknum: ForkNumber::Type) -> bool {
    forknum != ForkNumber::INIT_FORKNUM
        && std::fs::metadata(startup::data_dir().join(storage.fork_path(ForkNumber::INIT_FORKNUM)))
            .is_ok()
}

/// Calls `write` with the pages to store in place of `buffers` (written at
/// `blocknum`, `blocknum + 1`, …): encrypted private copies, or the
/// buffers themselves where a page is stored in plaintext (all-zero pages
/// are stored as they are). `rewrite` is true when the blocks exist on disk
/// (write, not extend). New writes cannot switch data key generation until
/// `write` has returned.
///
/// # Safety
/// `reln` is live; each buffer points at BLCKSZ readable bytes.
unsafe fn with_encrypted<R>(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffers: &[*const c_char],
    rewrite: bool,
    write: impl FnOnce(&[*const c_char]) -> R,
) -> R {
    let encrypt = guc::DATA_ENCRYPTION.get();
    if !encrypt && !rewrite {
        return write(buffers);
    }
    // SAFETY: per the contract.
    let storage = unsafe { StorageId::of_smgr(reln) };
    let mut kind = None;
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
            // SAFETY: src points at BLCKSZ readable bytes; other backends may
            // change hint bits concurrently, which only affects those bits of
            // the copy (PostgreSQL itself copies such buffers the same way).
            unsafe {
                std::ptr::copy_nonoverlapping(src as *const u8, copy.0.as_mut_ptr(), PAGE_SIZE)
            };
            if is_all_zero(&copy.0) {
                targets.push(src);
                continue;
            }
            let kind = *kind.get_or_insert_with(|| {
                if storage.is_temporary() || is_unlogged(&storage, forknum) {
                    Kind::Transient
                } else if rewrite {
                    Kind::Rewrite
                } else {
                    Kind::NewBlock
                }
            });
            let lsn = page_lsn(&copy.0);
            let store = store_as(
                encrypt,
                guard.generation(),
                kind,
                protected_by_full_page_image(lsn),
                matches!(
                    forknum,
                    ForkNumber::FSM_FORKNUM | ForkNumber::VISIBILITYMAP_FORKNUM
                ),
                || {
                    // SAFETY: reln is live.
                    let stored = unsafe { read_stored(reln, forknum, block) };
                    plan_rewrite(&stored, lsn)
                },
            );
            let (mode, generation, keep_zero_sectors) = match store {
                Store::Plaintext => {
                    targets.push(src);
                    continue;
                }
                Store::Encrypt {
                    mode,
                    generation,
                    keep_zero_sectors,
                } => (mode, generation, keep_zero_sectors),
            };
            let params = WriteParams {
                block,
                relfilenumber: storage.relfilenode,
                fork: fork_kind(forknum),
                generation,
                mode,
                checksums: checksums_enabled(),
                keep_zero_sectors,
            };
            match guard.keys.page.encrypt_in_place(&mut copy.0, &params) {
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

/// The version of a block on disk, as stored (not decrypted); all zeros
/// when the block lies beyond the end of the fork (`smgrwrite` may write
/// there, as PostgreSQL 15's `btbuildempty` does).
///
/// # Safety
/// `reln` is live.
unsafe fn read_stored(reln: SMgrRelation, forknum: ForkNumber::Type, block: BlockNumber) -> Page {
    // SAFETY: per the contract; nblocks dispatches to md.c's, unwrapped.
    if block >= unsafe { pg_sys::smgrnblocks(reln, forknum) } {
        return [0; PAGE_SIZE];
    }
    STORED_PAGE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let page = slot.get_or_insert_with(|| Box::new(AlignedPage([0; PAGE_SIZE])));
        // SAFETY: per the contract; the buffer is an aligned private page.
        unsafe { version::read_raw(reln, forknum, block, page.0.as_mut_ptr().cast()) };
        page.0
    })
}
