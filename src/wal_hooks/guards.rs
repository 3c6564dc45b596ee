//! The executable's other file I/O imports that could reach a WAL file:
//! `preadv` reads tracked descriptors like `pread`; `dup` and `dup2` carry
//! the tracking over to the new descriptor; `copy_file_range` and `mmap` of
//! a tracked descriptor, and `fopen`/`freopen` of a tracked file's path, are
//! refused (PostgreSQL does none of these on WAL files; a refusal is
//! visible, a silent plaintext copy would not be).

use std::ffi::{c_char, c_int, c_void, CStr};

use libc::{iovec, off_t, size_t, ssize_t, FILE};

use super::{classify, guarded, set_errno, set_tracked, tracked, tracked_pread};

pub unsafe extern "C" fn tde_preadv(
    fd: c_int,
    iov: *const iovec,
    iovcnt: c_int,
    offset: off_t,
) -> ssize_t {
    let t = match tracked(fd) {
        Some(t) if offset >= 0 && iovcnt > 0 => t,
        // SAFETY: forwarding the server's arguments.
        _ => return unsafe { libc::preadv(fd, iov, iovcnt, offset) },
    };
    // SAFETY: the server passes `iovcnt` valid iovecs.
    let parts = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    let total: usize = parts.iter().map(|v| v.iov_len).sum();
    let mut joined = vec![0u8; total];
    let n = guarded(|| tracked_pread(fd, t.kind, joined.as_mut_ptr(), total, offset as u64));
    if n > 0 {
        let mut left = &joined[..n as usize];
        for v in parts {
            let take = v.iov_len.min(left.len());
            // SAFETY: each iovec describes a writable buffer of iov_len bytes.
            unsafe { std::ptr::copy_nonoverlapping(left.as_ptr(), v.iov_base.cast(), take) };
            left = &left[take..];
        }
    }
    n
}

pub unsafe extern "C" fn tde_dup(fd: c_int) -> c_int {
    if let Err(e) = crate::ephemeral_files::flush(fd) {
        set_errno(e);
        return -1;
    }
    // SAFETY: forwarding the server's descriptor.
    let new = unsafe { libc::dup(fd) };
    if new >= 0 {
        set_tracked(new, tracked(fd));
    }
    new
}

pub unsafe extern "C" fn tde_dup2(fd: c_int, fd2: c_int) -> c_int {
    if let Err(e) = crate::ephemeral_files::flush(fd) {
        set_errno(e);
        return -1;
    }
    // dup2 closes fd2 first: what was appended to it is stored before.
    let _ = crate::ephemeral_files::flush(fd2);
    // SAFETY: forwarding the server's descriptors.
    let new = unsafe { libc::dup2(fd, fd2) };
    if new >= 0 && new != fd {
        set_tracked(new, tracked(fd));
    }
    new
}

pub unsafe extern "C" fn tde_copy_file_range(
    fd_in: c_int,
    off_in: *mut i64,
    fd_out: c_int,
    off_out: *mut i64,
    len: size_t,
    flags: libc::c_uint,
) -> ssize_t {
    if tracked(fd_in).is_some() || tracked(fd_out).is_some() {
        set_errno(libc::EIO);
        return -1;
    }
    // SAFETY: forwarding the server's arguments.
    unsafe { libc::copy_file_range(fd_in, off_in, fd_out, off_out, len, flags) }
}

pub unsafe extern "C" fn tde_mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    if tracked(fd).is_some() {
        set_errno(libc::EACCES);
        return libc::MAP_FAILED;
    }
    // SAFETY: forwarding the server's arguments.
    unsafe { libc::mmap(addr, len, prot, flags, fd, offset) }
}

/// Whether `path` names a file the wrappers would track: WAL, or one that
/// `ephemeral_files` encrypts.
fn is_wal_path(path: *const c_char) -> bool {
    if path.is_null() {
        return false;
    }
    // SAFETY: the server passes a NUL-terminated path.
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    std::panic::catch_unwind(|| {
        classify(p).is_some() || crate::ephemeral_files::classify(p).is_some()
    })
    .unwrap_or(true)
}

pub unsafe extern "C" fn tde_fopen(path: *const c_char, mode: *const c_char) -> *mut FILE {
    if is_wal_path(path) {
        set_errno(libc::EACCES);
        return std::ptr::null_mut();
    }
    // SAFETY: forwarding the server's arguments.
    unsafe { libc::fopen(path, mode) }
}

pub unsafe extern "C" fn tde_freopen(
    path: *const c_char,
    mode: *const c_char,
    stream: *mut FILE,
) -> *mut FILE {
    if is_wal_path(path) {
        set_errno(libc::EACCES);
        return std::ptr::null_mut();
    }
    // SAFETY: forwarding the server's arguments.
    unsafe { libc::freopen(path, mode, stream) }
}
