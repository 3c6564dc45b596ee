//! Proof that the server's own file I/O reaches the WAL wrappers: a WAL
//! file opened through the server's `BasicOpenFile` is tracked (checked at
//! attach time), and, once the data keys are in shared memory, a WAL page
//! written through the server's `pg_pwritev_with_retry` reaches the disk
//! encrypted and reads back as written through the executable's own
//! `pread` and `read` import slots. Any failure refuses the start.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use libc::{iovec, off_t, size_t, ssize_t};
use pgrx::prelude::*;
use tde_core::wal::{SegmentSalt, WAL_PAGE_SIZE};

use super::got::Slot;
use super::refuse;
use crate::{guc, wal_hooks};

const PATH: &std::ffi::CStr = c"pg_wal/xlogtemp.tde-self-test";
const MARKER: &[u8] = b"tde-wal-self-test-marker";

/// The executable's `pread` and `read` import slots.
static READ_SLOTS: OnceLock<(usize, usize)> = OnceLock::new();

extern "C" {
    // storage/fd.h (15), common/file_utils.h (17, 18): part of the server.
    fn pg_pwritev_with_retry(fd: c_int, iov: *const iovec, iovcnt: c_int, offset: off_t)
        -> ssize_t;
}

fn open_test_file() -> c_int {
    // SAFETY: BasicOpenFile with a static path; the caller closes the
    // descriptor and removes the file.
    let fd = unsafe {
        pg_sys::BasicOpenFile(PATH.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC)
    };
    if fd < 0 {
        refuse(&format!(
            "self-test cannot create {}: {}",
            PATH.to_string_lossy(),
            std::io::Error::last_os_error()
        ));
    }
    fd
}

fn close_and_remove(fd: c_int) {
    // SAFETY: closing the descriptor opened through the wrapper (so its
    // tracking entry goes too) and removing the file.
    unsafe {
        wal_hooks::tde_close(fd);
        libc::unlink(PATH.as_ptr());
    }
}

/// A WAL file opened through the server's open() is tracked.
pub fn descriptors_are_tracked() {
    let fd = open_test_file();
    let seen = wal_hooks::is_tracked(fd);
    close_and_remove(fd);
    if !seen {
        refuse("self-test failed: a WAL file opened through the server's open() was not seen by the wrapper");
    }
}

pub fn remember_read_slots(slots: &HashMap<String, Slot>) {
    let slot = |name: &str| {
        slots
            .get(name)
            .map(|s| s.address)
            .unwrap_or_else(|| refuse(&format!("the postgres executable does not import {name}()")))
    };
    let _ = READ_SLOTS.set((slot("pread"), slot("read")));
}

static mut PREV_SHMEM_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

/// Runs the round trip after every shared memory initialization (start and
/// crash restart), once the data keys are there: to be installed after
/// `keys::init`, whose hook then runs first.
pub fn install_round_trip() {
    // SAFETY: _PG_init runs once in the postmaster, before any process
    // forks; chaining the hook is the documented protocol.
    unsafe {
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(after_shmem_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn after_shmem_startup() {
    // SAFETY: the previous hooks are called as PostgreSQL would have.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| prev());
        }
    }
    // SAFETY: a plain read of a process global.
    if !unsafe { pg_sys::IsUnderPostmaster } {
        round_trip();
    }
}

/// A short-header WAL page of this server at 0/1000000, full of the marker.
fn test_page() -> Vec<u8> {
    let mut page = vec![0u8; WAL_PAGE_SIZE];
    page[0..2].copy_from_slice(&(pg_sys::XLOG_PAGE_MAGIC as u16).to_le_bytes());
    page[4..8].copy_from_slice(&1u32.to_le_bytes());
    page[8..16].copy_from_slice(&(16u64 << 20).to_le_bytes());
    for (i, b) in page[24..].iter_mut().enumerate() {
        *b = MARKER[i % MARKER.len()];
    }
    page
}

type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t;
type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;

fn round_trip() {
    let Some(&(pread_slot, read_slot)) = READ_SLOTS.get() else {
        refuse("self-test: the WAL import slots were not recorded");
    };
    let page = test_page();
    let fd = open_test_file();
    let result = (|| -> Result<(), String> {
        let iov = iovec {
            iov_base: page.as_ptr() as *mut c_void,
            iov_len: page.len(),
        };
        // SAFETY: one iovec over a whole page we own; the server's own
        // writer, which calls pwritev through the executable's import.
        let written = unsafe { pg_pwritev_with_retry(fd, &iov, 1, 0) };
        if written != page.len() as ssize_t {
            return Err(format!(
                "writing a WAL page through the server failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut stored = vec![0u8; page.len()];
        // SAFETY: libc's own pread (not the server's import) into a buffer
        // of that size: the bytes as stored.
        let n = unsafe { libc::pread(fd, stored.as_mut_ptr().cast(), stored.len(), 0) };
        if n != page.len() as ssize_t {
            return Err("reading the page back as stored failed".into());
        }
        let encrypted = SegmentSalt::from_page(&stored).is_some()
            && !stored.windows(MARKER.len()).any(|w| w == MARKER);
        if guc::WAL_ENCRYPTION.get() != encrypted {
            return Err(format!(
                "a WAL page written through the server was stored {} with tde.wal_encryption = {}",
                if encrypted {
                    "encrypted"
                } else {
                    "in plaintext"
                },
                if guc::WAL_ENCRYPTION.get() {
                    "on"
                } else {
                    "off"
                }
            ));
        }
        // SAFETY: the slots hold the executable's current pread and read
        // entries (the wrappers, once rebound), of these signatures; each
        // reads into a buffer of the given size.
        unsafe {
            let pread = std::mem::transmute::<usize, PreadFn>(*(pread_slot as *const usize));
            let read = std::mem::transmute::<usize, ReadFn>(*(read_slot as *const usize));
            let mut back = vec![0u8; page.len()];
            if pread(fd, back.as_mut_ptr().cast(), back.len(), 0) != page.len() as ssize_t
                || back != page
            {
                return Err(
                    "a WAL page read through the server's pread() differs from the page written"
                        .into(),
                );
            }
            back.fill(0);
            libc::lseek(fd, 0, libc::SEEK_SET);
            if read(fd, back.as_mut_ptr().cast(), back.len()) != page.len() as ssize_t
                || back != page
            {
                return Err(
                    "a WAL page read through the server's read() differs from the page written"
                        .into(),
                );
            }
        }
        Ok(())
    })();
    close_and_remove(fd);
    if let Err(e) = result {
        refuse(&format!("self-test failed: {e}"));
    }
}
