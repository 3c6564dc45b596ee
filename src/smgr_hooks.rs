//! The storage manager wrappers (PostgreSQL 15 signatures): encrypt a private
//! copy of each page on write and extend, decrypt in place after read.

use std::cell::RefCell;
use std::ffi::c_char;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use pgrx::pg_sys::{self, BlockNumber, ForkNumber, SMgrRelation};
use pgrx::prelude::*;
use tde_core::nonce::NonceSource;
use tde_core::page::{Page, WriteOutcome, WriteParams, PAGE_SIZE};

use crate::attach::{self_test_hit, HIT_EXTEND, HIT_READ, HIT_WRITE};
use crate::relpath::{fork_kind, fork_path};
use crate::{errors, fake_lsn, guc, keys};

type ReadFn = unsafe extern "C-unwind" fn(SMgrRelation, ForkNumber::Type, BlockNumber, *mut c_char);
type WriteFn =
    unsafe extern "C-unwind" fn(SMgrRelation, ForkNumber::Type, BlockNumber, *mut c_char, bool);

static ORIG_READ: AtomicUsize = AtomicUsize::new(0);
static ORIG_WRITE: AtomicUsize = AtomicUsize::new(0);
static ORIG_EXTEND: AtomicUsize = AtomicUsize::new(0);

pub fn save_originals(read: usize, write: usize, extend: usize) {
    ORIG_READ.store(read, Ordering::Relaxed);
    ORIG_WRITE.store(write, Ordering::Relaxed);
    ORIG_EXTEND.store(extend, Ordering::Relaxed);
}

pub fn wrapper_read() -> usize {
    tde_smgr_read as ReadFn as *const () as usize
}

pub fn wrapper_write() -> usize {
    tde_smgr_write as WriteFn as *const () as usize
}

pub fn wrapper_extend() -> usize {
    tde_smgr_extend as WriteFn as *const () as usize
}

fn original_read() -> ReadFn {
    let p = ORIG_READ.load(Ordering::Relaxed);
    // SAFETY: set once in the postmaster from the dispatch table slot that
    // held mdread, whose signature is ReadFn; non-zero before any call.
    unsafe { std::mem::transmute::<usize, ReadFn>(p) }
}

fn original_write(slot: &AtomicUsize) -> WriteFn {
    let p = slot.load(Ordering::Relaxed);
    // SAFETY: set once in the postmaster from the slot that held mdwrite or
    // mdextend, both of signature WriteFn.
    unsafe { std::mem::transmute::<usize, WriteFn>(p) }
}

/// Private, aligned page for the encrypted copy: the caller's buffer may be a
/// shared buffer other backends still modify, so it is never changed.
#[repr(C, align(4096))]
struct AlignedPage(Page);

thread_local! {
    static WRITE_PAGE: RefCell<Box<AlignedPage>> = RefCell::new(Box::new(AlignedPage([0; PAGE_SIZE])));
    static NONCES: RefCell<NonceSource> = const { RefCell::new(NonceSource::new()) };
}

static CHECKSUMS: OnceLock<bool> = OnceLock::new();

fn checksums_enabled() -> bool {
    // SAFETY: reads the control file copy in shared memory, which exists in
    // every process that does storage I/O. Fixed for the server's lifetime
    // on PostgreSQL 15 (checksums can only change offline).
    *CHECKSUMS.get_or_init(|| unsafe { pg_sys::DataChecksumsEnabled() })
}

fn relation_path(reln: SMgrRelation, forknum: ForkNumber::Type) -> String {
    // SAFETY: reln is the live SMgrRelation passed to the wrapper.
    let r = unsafe { &(*reln).smgr_rnode };
    fork_path(r.node, r.backend, forknum)
}

#[pg_guard]
unsafe extern "C-unwind" fn tde_smgr_read(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *mut c_char,
) {
    if self_test_hit(HIT_READ) {
        return;
    }
    let orig = original_read();
    // SAFETY: same arguments the server passed to us, forwarded to mdread;
    // an ERROR inside is turned into a Rust panic and re-raised by pg_guard.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| orig(reln, forknum, blocknum, buffer))
    };
    // SAFETY: buffer is a BLCKSZ page the server owns exclusively while the
    // read is in progress (the buffer is marked I/O-in-progress).
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

/// Encrypts `buffer` into the private page and calls the original function
/// with it (or with `buffer` itself for an all-zero page or when data
/// encryption is off).
///
/// # Safety
/// Arguments as received from the server's smgr dispatch.
unsafe fn write_through(
    orig: WriteFn,
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *mut c_char,
    skip_fsync: bool,
) {
    if !guc::DATA_ENCRYPTION.get() {
        // SAFETY: forwarding the server's own arguments.
        unsafe {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                orig(reln, forknum, blocknum, buffer, skip_fsync)
            })
        };
        return;
    }
    // Held until the write below has returned: see `keys`.
    let guard = keys::for_write();
    let nonce = NONCES.with(|n| n.borrow_mut().next_u16());
    let nonce = nonce.unwrap_or_else(|e| errors::raise("cannot draw a page nonce", &e));
    let params = WriteParams {
        block: blocknum,
        fork: fork_kind(forknum),
        generation: guard.generation(),
        nonce,
        checksums: checksums_enabled(),
    };
    let outcome = WRITE_PAGE.with(|cell| {
        let mut page = cell.borrow_mut();
        // SAFETY: buffer points at BLCKSZ readable bytes; other backends may
        // change hint bits concurrently, which only affects those bits of the
        // copy (PostgreSQL itself copies such buffers the same way).
        unsafe {
            std::ptr::copy_nonoverlapping(buffer as *const u8, page.0.as_mut_ptr(), PAGE_SIZE)
        };
        match guard
            .keys
            .page
            .encrypt_in_place(&mut page.0, &params, fake_lsn::next)
        {
            Ok(WriteOutcome::Encrypted) => Ok(Some(page.0.as_mut_ptr().cast::<c_char>())),
            Ok(WriteOutcome::PassThrough) => Ok(None),
            Err(e) => Err(e),
        }
    });
    let target = match outcome {
        Ok(Some(encrypted)) => encrypted,
        Ok(None) => buffer,
        Err(e) => errors::raise(
            &format!(
                "cannot encrypt block {blocknum} of \"{}\"",
                relation_path(reln, forknum)
            ),
            &e,
        ),
    };
    // SAFETY: target is either the server's buffer or our private page, which
    // is not touched again until this call returns (backends are
    // single-threaded and the wrappers do not nest).
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            orig(reln, forknum, blocknum, target, skip_fsync)
        })
    };
    drop(guard);
}

#[pg_guard]
unsafe extern "C-unwind" fn tde_smgr_write(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *mut c_char,
    skip_fsync: bool,
) {
    if self_test_hit(HIT_WRITE) {
        return;
    }
    // SAFETY: forwarding the server's arguments.
    unsafe {
        write_through(
            original_write(&ORIG_WRITE),
            reln,
            forknum,
            blocknum,
            buffer,
            skip_fsync,
        )
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tde_smgr_extend(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *mut c_char,
    skip_fsync: bool,
) {
    if self_test_hit(HIT_EXTEND) {
        return;
    }
    // SAFETY: forwarding the server's arguments.
    unsafe {
        write_through(
            original_write(&ORIG_EXTEND),
            reln,
            forknum,
            blocknum,
            buffer,
            skip_fsync,
        )
    }
}
