//! PostgreSQL 15: one page per call (`smgr_read`, `smgr_write`,
//! `smgr_extend`).

use std::ffi::c_char;

use pgrx::pg_sys::{BlockNumber, ForkNumber, SMgrRelation};
use pgrx::prelude::*;

use super::{decrypt_read, original, with_encrypted, EXTEND, READ, WRITE};
use crate::attach::{self_test_hit, HIT_EXTEND, HIT_READ, HIT_WRITE};

type ReadFn = unsafe extern "C-unwind" fn(SMgrRelation, ForkNumber::Type, BlockNumber, *mut c_char);
type WriteFn =
    unsafe extern "C-unwind" fn(SMgrRelation, ForkNumber::Type, BlockNumber, *mut c_char, bool);

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
    // SAFETY: set once in the postmaster from the dispatch table slot that
    // held mdread, whose signature is ReadFn; non-zero before any call.
    unsafe { std::mem::transmute::<usize, ReadFn>(original(READ)) }
}

fn original_write(which: usize) -> WriteFn {
    // SAFETY: set once in the postmaster from the slot that held mdwrite or
    // mdextend, both of signature WriteFn.
    unsafe { std::mem::transmute::<usize, WriteFn>(original(which)) }
}

/// Reads a block as stored, without decrypting it.
///
/// # Safety
/// `reln` is live, the block exists, `buffer` is a private page.
pub unsafe fn read_raw(
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *mut c_char,
) {
    let orig = original_read();
    // SAFETY: per the contract; an ERROR inside becomes a Rust panic that
    // the calling wrapper's pg_guard re-raises.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| orig(reln, forknum, blocknum, buffer))
    };
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
    // Then the buffer holds the page, which the server owns exclusively
    // while the read is in progress.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| orig(reln, forknum, blocknum, buffer));
        decrypt_read(reln, forknum, blocknum, buffer);
    }
}

/// # Safety
/// Arguments as received from the server's smgr dispatch.
unsafe fn write_through(
    which: usize,
    reln: SMgrRelation,
    forknum: ForkNumber::Type,
    blocknum: BlockNumber,
    buffer: *mut c_char,
    skip_fsync: bool,
) {
    let orig = original_write(which);
    // SAFETY: buffer is a whole page; the target handed to md.c is either
    // it or a private encrypted copy, both valid for the call.
    unsafe {
        let rewrite = which == WRITE;
        with_encrypted(
            reln,
            forknum,
            blocknum,
            &[buffer.cast_const()],
            rewrite,
            |t| {
                pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                    orig(reln, forknum, blocknum, t[0].cast_mut(), skip_fsync)
                })
            },
        )
    }
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
    unsafe { write_through(WRITE, reln, forknum, blocknum, buffer, skip_fsync) }
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
    unsafe { write_through(EXTEND, reln, forknum, blocknum, buffer, skip_fsync) }
}
