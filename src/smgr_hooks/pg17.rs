//! PostgreSQL 17 and later: vectored reads and writes (`smgr_readv`,
//! `smgr_writev`, up to `io_combine_limit` pages per call) and
//! `smgr_extend` for one page. `smgr_zeroextend` writes all-zero pages,
//! which are stored as they are anyway, so it is left alone.

use std::ffi::{c_char, c_void};

use pgrx::pg_sys::{BlockNumber, ForkNumber, SMgrRelation};
use pgrx::prelude::*;

use super::{decrypt_read, original, with_encrypted, EXTEND, READ, WRITE};
use crate::attach::{self_test_hit, HIT_EXTEND, HIT_READ, HIT_WRITE};

type ReadvFn = unsafe extern "C-unwind" fn(
    SMgrRelation,
    ForkNumber::Type,
    BlockNumber,
    *mut *mut c_void,
    BlockNumber,
);
type WritevFn = unsafe extern "C-unwind" fn(
    SMgrRelation,
    ForkNumber::Type,
    BlockNumber,
    *const *const c_void,
    BlockNumber,
    bool,
);
type ExtendFn =
    unsafe extern "C-unwind" fn(SMgrRelation, ForkNumber::Type, BlockNumber, *const c_void, bool);

pub fn wrapper_read() -> usize {
    tde_smgr_readv as ReadvFn as *const () as usize
}

pub fn wrapper_write() -> usize {
    tde_smgr_writev as WritevFn as *const () as usize
}

pub fn wrapper_extend() -> usize {
    tde_smgr_extend as ExtendFn as *const () as usize
}

/// Reads a block as stored, without decrypting it.
///
/// # Safety
/// `reln` is live, the block exists, `buffer` is a private page.
pub unsafe fn read_raw(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *mut std::ffi::c_char,
) {
    // SAFETY: set once in the postmaster from the slot that held mdreadv.
    let orig = unsafe { std::mem::transmute::<usize, ReadvFn>(original(READ)) };
    let mut buffers = [buffer.cast::<c_void>()];
    // SAFETY: per the contract; one private page. An ERROR inside becomes
    // a Rust panic that the calling wrapper's pg_guard re-raises.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            orig(reln, forknum, blocknum, buffers.as_mut_ptr(), 1)
        })
    };
}

#[pg_guard]
unsafe extern "C-unwind" fn tde_smgr_readv(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffers: *mut *mut c_void,
    nblocks: BlockNumber,
) {
    if self_test_hit(HIT_READ) {
        return;
    }
    // SAFETY: set once in the postmaster from the dispatch table slot that
    // held mdreadv, of signature ReadvFn.
    let orig = unsafe { std::mem::transmute::<usize, ReadvFn>(original(READ)) };
    // SAFETY: the server's arguments, forwarded to mdreadv; an ERROR inside
    // becomes a Rust panic re-raised by pg_guard. Afterwards each of the
    // `nblocks` buffers holds its page, owned by this backend while the
    // read is in progress.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            orig(reln, forknum, blocknum, buffers, nblocks)
        });
        for i in 0..nblocks {
            let page = *buffers.add(i as usize);
            decrypt_read(reln, forknum, blocknum + i, page.cast());
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tde_smgr_writev(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffers: *const *const c_void,
    nblocks: BlockNumber,
    skip_fsync: bool,
) {
    if self_test_hit(HIT_WRITE) {
        return;
    }
    // SAFETY: set once in the postmaster from the slot that held mdwritev.
    let orig = unsafe { std::mem::transmute::<usize, WritevFn>(original(WRITE)) };
    // SAFETY: the server passes `nblocks` page pointers; the targets handed
    // to mdwritev are those pages or private encrypted copies, all valid
    // for the call.
    unsafe {
        let pages: Vec<*const c_char> = (0..nblocks as usize)
            .map(|i| (*buffers.add(i)).cast::<c_char>())
            .collect();
        with_encrypted(reln, forknum, blocknum, &pages, true, |targets| {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                orig(
                    reln,
                    forknum,
                    blocknum,
                    targets.as_ptr().cast::<*const c_void>(),
                    nblocks,
                    skip_fsync,
                )
            })
        })
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tde_smgr_extend(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *const c_void,
    skip_fsync: bool,
) {
    if self_test_hit(HIT_EXTEND) {
        return;
    }
    // SAFETY: set once in the postmaster from the slot that held mdextend.
    let orig = unsafe { std::mem::transmute::<usize, ExtendFn>(original(EXTEND)) };
    // SAFETY: buffer is a whole page; the target handed to mdextend is it or
    // a private encrypted copy.
    unsafe {
        with_encrypted(
            reln,
            forknum,
            blocknum,
            &[buffer.cast::<c_char>()],
            false,
            |t| {
                pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                    orig(reln, forknum, blocknum, t[0].cast::<c_void>(), skip_fsync)
                })
            },
        )
    }
}
