//! Files PostgreSQL deletes at every server start, encrypted under a key
//! drawn in the postmaster that never leaves memory (format and argument:
//! `docs/format/ephemeral.md`): temporary files in every tablespace's
//! `pgsql_tmp` (sorts, hashes, tuplestores, shared file sets, the apply
//! worker's streamed transactions), logical decoding spill files and the
//! NOTIFY queue. The WAL wrappers (`wal_hooks`) track their descriptors and
//! hand their reads, writes and truncations here.
//!
//! Like the WAL wrappers these never raise PostgreSQL errors: a failure is
//! the call's own -1 and errno, which PostgreSQL reports as it would on a
//! server without tde.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::OnceLock;

use libc::ssize_t;
use tde_core::ephemeral::{
    file_id, plan_truncate, plan_write, read_layout, read_window, EphemeralCipher, Plan,
    ReadLayout, SECTOR,
};

use crate::wal_hooks::{pread_full, pwrite_full, set_errno, with_scratch};

static CIPHER: OnceLock<EphemeralCipher> = OnceLock::new();

/// Draws this server lifetime's key; in the postmaster, before any process
/// that could open such a file is forked.
pub fn init() -> Result<(), tde_core::Error> {
    let cipher = EphemeralCipher::generate()?;
    let _ = CIPHER.set(cipher);
    Ok(())
}

fn cipher() -> Result<&'static EphemeralCipher, c_int> {
    CIPHER.get().ok_or(libc::EIO)
}

/// The file id of `path` (as the server opened it) when it is one of these
/// files. Paths are relative to the data directory (the server's working
/// directory) or absolute under it.
pub fn classify(path: &[u8]) -> Option<u64> {
    let rel = match path.first() {
        Some(b'/') => {
            let mut dir = crate::startup::data_dir()
                .into_os_string()
                .into_encoded_bytes();
            dir.push(b'/');
            path.strip_prefix(dir.as_slice())?
        }
        _ => path,
    };
    is_ephemeral(rel).then(|| file_id(rel))
}

/// `base/pgsql_tmp/…`, `pg_tblspc/<oid>/<version>/pgsql_tmp/…`,
/// `pg_replslot/<slot>/xid-….spill` and `pg_notify/<segment>`.
fn is_ephemeral(rel: &[u8]) -> bool {
    // Every open passes here: the first components, without allocating.
    const MAX: usize = 6;
    let mut parts: [&[u8]; MAX + 1] = [&[]; MAX + 1];
    let mut n = 0;
    for part in rel.split(|&b| b == b'/').take(MAX + 1) {
        parts[n] = part;
        n += 1;
    }
    match &parts[..n] {
        [b"base", b"pgsql_tmp", _, ..] => true,
        [b"pg_tblspc", _, _, b"pgsql_tmp", _, ..] => true,
        [b"pg_replslot", _, name] => name.starts_with(b"xid-") && name.ends_with(b".spill"),
        [b"pg_notify", name] => !name.is_empty() && name.iter().all(u8::is_ascii_hexdigit),
        _ => false,
    }
}

fn stat(fd: c_int) -> Result<libc::stat, c_int> {
    // SAFETY: fstat into a zeroed stat buffer owned here.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the descriptor is the server's.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(crate::wal_hooks::errno());
    }
    Ok(st)
}

fn file_len(fd: c_int) -> Result<u64, c_int> {
    stat(fd).map(|st| st.st_size as u64)
}

fn outcome(r: Result<ssize_t, c_int>) -> ssize_t {
    r.unwrap_or_else(|e| {
        set_errno(e);
        -1
    })
}

/// `pread` of `dst.len()` bytes at `offset`, decrypted; short at the end of
/// the file, as the plain call is.
pub fn pread(fd: c_int, file: u64, dst: &mut [u8], offset: u64) -> ssize_t {
    outcome((|| {
        flush(fd)?;
        let cipher = cipher()?;
        if let Some(n) = read_whole_sectors(fd, file, cipher, dst, offset)? {
            return Ok(n);
        }
        let mut window = read_window(offset, dst.len() as u64);
        loop {
            let done = with_scratch(
                (window.end - window.start) as usize,
                |s| -> Result<Option<ssize_t>, c_int> {
                    let got = pread_full(fd, s, window.start)? as u64;
                    let (len, whole) = match read_layout(&window, offset, got) {
                        ReadLayout::Past => return Ok(Some(0)),
                        ReadLayout::StartAt(start) => {
                            window.start = start;
                            return Ok(None);
                        }
                        ReadLayout::Units { len, whole } => (len, whole),
                    };
                    let whole = &mut s[..whole as usize];
                    cipher.decrypt(file, len, window.start, whole);
                    let skip = (offset - window.start) as usize;
                    let n = (whole.len() - skip).min(dst.len());
                    dst[..n].copy_from_slice(&whole[skip..skip + n]);
                    Ok(Some(n as ssize_t))
                },
            )?;
            if let Some(n) = done {
                return Ok(n);
            }
        }
    })())
}

/// The common read (BufFile and logtape read whole blocks): whole sectors
/// at a sector boundary, read straight into the caller's buffer and
/// decrypted there, with the 16 bytes that follow read alongside by the
/// same `preadv`: present, they prove every sector read is a plain unit
/// (see `read_window`). `None` when the read is not of that shape or the
/// file ends within reach; the general path then reads it again.
fn read_whole_sectors(
    fd: c_int,
    file: u64,
    cipher: &EphemeralCipher,
    dst: &mut [u8],
    offset: u64,
) -> Result<Option<ssize_t>, c_int> {
    let count = dst.len() as u64;
    if count == 0 || !offset.is_multiple_of(SECTOR) || !count.is_multiple_of(SECTOR) {
        return Ok(None);
    }
    let mut probe = [0u8; 16];
    let iov = [
        libc::iovec {
            iov_base: dst.as_mut_ptr().cast(),
            iov_len: dst.len(),
        },
        libc::iovec {
            iov_base: probe.as_mut_ptr().cast(),
            iov_len: probe.len(),
        },
    ];
    // SAFETY: both vectors point to buffers owned here or by the caller,
    // of the lengths given; the descriptor is the server's.
    let n = unsafe { libc::preadv(fd, iov.as_ptr(), 2, offset as libc::off_t) };
    if n < 0 {
        let e = crate::wal_hooks::errno();
        return match e {
            libc::EINTR => Ok(None),
            _ => Err(e),
        };
    }
    if n as u64 != count + probe.len() as u64 {
        return Ok(None);
    }
    cipher.decrypt(file, offset + n as u64, offset, dst);
    Ok(Some(count as ssize_t))
}

/// Carries out `plan`: the stored units it reads, decrypted, with `patch`
/// applied (it gets the plaintext of `plan.write`), encrypted and stored.
fn rewrite(fd: c_int, file: u64, plan: &Plan, patch: impl FnOnce(&mut [u8])) -> Result<(), c_int> {
    let cipher = cipher()?;
    let read_len = (plan.read.end - plan.read.start) as usize;
    let len = (plan.write.end - plan.write.start).max(plan.read.end - plan.read.start) as usize;
    with_scratch(len, |s| {
        if pread_full(fd, &mut s[..read_len], plan.read.start)? != read_len {
            // The file shrank under us: nothing else writes these files.
            return Err(libc::EIO);
        }
        cipher.decrypt(file, plan.old_len, plan.read.start, &mut s[..read_len]);
        s[read_len..].fill(0);
        let s = &mut s[..(plan.write.end - plan.write.start) as usize];
        patch(s);
        cipher.encrypt(file, plan.new_len, plan.write.start, s);
        pwrite_full(fd, s, plan.write.start)
    })
}

/// `pwrite` of `src` at `offset`, encrypted; all of it or -1.
pub fn pwrite(fd: c_int, file: u64, src: &[u8], offset: u64) -> ssize_t {
    if src.is_empty() {
        return 0;
    }
    outcome((|| {
        flush(fd)?;
        let plan = plan_write(file_len(fd)?, offset, src.len() as u64);
        let at = (offset - plan.write.start) as usize;
        rewrite(fd, file, &plan, |s| {
            s[at..at + src.len()].copy_from_slice(src)
        })?;
        Ok(src.len() as ssize_t)
    })())
}

/// Bytes appended through a descriptor the server opened with `O_APPEND`
/// and not stored yet. The reorder buffer appends each decoded change to
/// its spill file with a `write()` of a hundred bytes or so and closes the
/// file before anything reads it back; storing each would rewrite the
/// file's last unit every time. They are stored together instead, once
/// `FLUSH_AT` bytes have gathered, and before anything else happens to the
/// descriptor through the wrappers (close, reads, writes at an offset,
/// truncation, dup).
struct Pending {
    file: u64,
    /// Where the first pending byte goes: the file's length when the first
    /// of them was appended.
    start: u64,
    bytes: Vec<u8>,
}

const FLUSH_AT: usize = 64 * 1024;

thread_local! {
    static PENDING: RefCell<HashMap<c_int, Pending>> = RefCell::new(HashMap::new());
    /// Files (device, inode) whose pending appends could not be stored when
    /// their descriptor was closed, with the error: PostgreSQL ignores what
    /// closing a spill file returns, so the loss is reported instead when
    /// the file is opened again (to read it back, or to append more).
    static LOST: RefCell<HashMap<(u64, u64), c_int>> = RefCell::new(HashMap::new());
}

fn identity(fd: c_int) -> Result<(u64, u64), c_int> {
    stat(fd).map(|st| (st.st_dev, st.st_ino))
}

/// Right after the server opened one of these files as `fd`: forgets
/// appends left under that descriptor number by a descriptor closed around
/// the wrappers, and refuses a file whose appends were lost at a close
/// (see `LOST`) unless it is being created afresh.
pub fn opened(fd: c_int, flags: c_int) -> Result<(), c_int> {
    PENDING.with(|p| p.borrow_mut().remove(&fd));
    if LOST.with(|l| l.borrow().is_empty()) {
        return Ok(());
    }
    let id = identity(fd)?;
    let Some(e) = LOST.with(|l| l.borrow().get(&id).copied()) else {
        return Ok(());
    };
    if flags & libc::O_CREAT != 0 && file_len(fd)? == 0 {
        LOST.with(|l| l.borrow_mut().remove(&id));
        return Ok(());
    }
    Err(e)
}

/// Before `fd` is closed: stores its pending appends; on failure the file
/// is remembered as damaged (see `LOST`) and the error returned.
pub fn closing(fd: c_int) -> Result<(), c_int> {
    match flush(fd) {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Ok(id) = identity(fd) {
                LOST.with(|l| l.borrow_mut().insert(id, e));
            }
            Err(e)
        }
    }
}

/// Drops whatever is pending under a descriptor number being closed that
/// is not an append descriptor (nothing should be).
pub fn forget(fd: c_int) {
    PENDING.with(|p| p.borrow_mut().remove(&fd));
}

/// `write()` through a descriptor opened with `O_APPEND`: all of `src`,
/// stored at once or with later appends (see [`Pending`]).
pub fn append(fd: c_int, file: u64, src: &[u8]) -> ssize_t {
    outcome((|| {
        if src.len() >= FLUSH_AT {
            // A large change is stored as it is, not copied.
            flush(fd)?;
            store_appended(fd, file, src, file_len(fd)?)?;
            return Ok(src.len() as ssize_t);
        }
        let full = PENDING.with(|p| -> Result<bool, c_int> {
            let mut p = p.borrow_mut();
            let pending = match p.entry(fd) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(Pending {
                    file,
                    start: file_len(fd)?,
                    bytes: Vec::new(),
                }),
            };
            pending
                .bytes
                .try_reserve(src.len())
                .map_err(|_| libc::ENOMEM)?;
            pending.bytes.extend_from_slice(src);
            Ok(pending.bytes.len() >= FLUSH_AT)
        })?;
        if full {
            flush(fd)?;
        }
        Ok(src.len() as ssize_t)
    })())
}

/// Stores what was appended through `fd` and not stored yet, and leaves
/// the file position at the end, where an append leaves it. On failure
/// the bytes are dropped, as a failed `write()` drops them.
pub fn flush(fd: c_int) -> Result<(), c_int> {
    let Some(pending) = PENDING.with(|p| p.borrow_mut().remove(&fd)) else {
        return Ok(());
    };
    if pending.bytes.is_empty() {
        return Ok(());
    }
    store_appended(fd, pending.file, &pending.bytes, pending.start)
}

/// Stores `bytes` appended at `at` (the end of the file) and leaves the
/// file position after them, where an append leaves it.
fn store_appended(fd: c_int, file: u64, bytes: &[u8], at: u64) -> Result<(), c_int> {
    if pwrite(fd, file, bytes, at) < 0 {
        return Err(crate::wal_hooks::errno());
    }
    let end = at + bytes.len() as u64;
    // SAFETY: lseek on the server's descriptor.
    if unsafe { libc::lseek(fd, end as libc::off_t, libc::SEEK_SET) } < 0 {
        return Err(crate::wal_hooks::errno());
    }
    Ok(())
}

/// `ftruncate` to `len`: the new last unit is stored again first; growing
/// writes encrypted zeros.
pub fn ftruncate(fd: c_int, file: u64, len: u64) -> c_int {
    let result = (|| {
        flush(fd)?;
        let old_len = file_len(fd)?;
        if len > old_len {
            let zeros = vec![0u8; (len - old_len) as usize];
            return match pwrite(fd, file, &zeros, old_len) {
                -1 => Err(crate::wal_hooks::errno()),
                _ => Ok(()),
            };
        }
        if len < old_len {
            rewrite(fd, file, &plan_truncate(old_len, len), |_| {})?;
        }
        // SAFETY: the server's descriptor and length.
        match unsafe { libc::ftruncate(fd, len as libc::off_t) } {
            0 => Ok(()),
            _ => Err(crate::wal_hooks::errno()),
        }
    })();
    match result {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use super::is_ephemeral;

    /// Appends that cannot be stored when a spill file is closed are
    /// reported again when the file is opened, so that the reorder buffer,
    /// which ignores what closing returns, raises an error instead of
    /// reading a short file.
    #[pg_test]
    fn appends_lost_at_close_fail_the_next_open() {
        use std::ffi::CString;
        let dir = "pg_replslot/tde_test_lost";
        std::fs::create_dir_all(dir).unwrap();
        let path = CString::new(format!("{dir}/xid-7-lsn-0-1000000.spill")).unwrap();
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND;
        // SAFETY: a NUL-terminated path; descriptors closed below.
        let fd = unsafe { crate::wal_hooks::tde_open(path.as_ptr(), flags, 0o600) };
        assert!(fd >= 0);
        let change = [7u8; 100];
        // SAFETY: `change` holds 100 bytes.
        let n = unsafe { crate::wal_hooks::tde_write(fd, change.as_ptr().cast(), 100) };
        assert_eq!(n, 100);
        // The file can no longer be written through this descriptor, as
        // when the disk fills: the pending appends cannot be stored.
        // SAFETY: replacing the descriptor behind the wrappers' back.
        unsafe {
            let ro = libc::open(path.as_ptr(), libc::O_RDONLY);
            assert!(ro >= 0);
            assert_eq!(libc::dup2(ro, fd), fd);
            libc::close(ro);
        }
        // SAFETY: the descriptor opened above.
        assert_eq!(unsafe { crate::wal_hooks::tde_close(fd) }, -1);
        // SAFETY: a NUL-terminated path.
        let again = unsafe { crate::wal_hooks::tde_open(path.as_ptr(), libc::O_RDONLY, 0) };
        let e = std::io::Error::last_os_error();
        assert_eq!(again, -1, "the damaged spill file opened again");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        // Created afresh (the reorder buffer removed it), it is usable.
        std::fs::remove_file(path.to_str().unwrap()).unwrap();
        // SAFETY: as above.
        let fresh = unsafe { crate::wal_hooks::tde_open(path.as_ptr(), flags, 0o600) };
        assert!(fresh >= 0);
        // SAFETY: the descriptor just opened.
        assert_eq!(unsafe { crate::wal_hooks::tde_close(fresh) }, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[pg_test]
    fn ephemeral_paths() {
        for yes in [
            &b"base/pgsql_tmp/pgsql_tmp123.4"[..],
            b"base/pgsql_tmp/pgsql_tmp123.4.fileset/i1of2.p0.0",
            b"base/pgsql_tmp/pgsql_tmp123.4.sharedfileset/16394-740.changes.0",
            b"pg_tblspc/16384/PG_17_202406281/pgsql_tmp/pgsql_tmp99.0",
            b"pg_replslot/s1/xid-740-lsn-0-3000000.spill",
            b"pg_notify/0000",
            b"pg_notify/000000000000000",
        ] {
            assert!(is_ephemeral(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"base/16384/16385"[..],
            b"base/pgsql_tmp",
            b"pg_replslot/s1/state",
            b"pg_notify",
            b"pg_xact/0000",
            b"pg_wal/000000010000000000000001",
            b"pg_tblspc/16384/PG_17_202406281/16384/16385",
        ] {
            assert!(!is_ephemeral(no), "{}", String::from_utf8_lossy(no));
        }
    }
}
