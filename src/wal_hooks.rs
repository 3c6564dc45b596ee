//! WAL segment I/O (DESIGN §4): the postgres executable's imported
//! open/close/read/write/pread/pwrite/pwritev are rebound to these wrappers.
//! They track which descriptors are `pg_wal/` segment files and transform
//! whole WAL pages on their way to and from disk; every other descriptor
//! passes straight through.
//!
//! These run inside XLogWrite's critical section and in every process that
//! does file I/O, so they never raise PostgreSQL errors, never panic across
//! the boundary and keep `errno` meaningful: a failure is reported as EIO
//! from the call itself.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr};

use libc::{iovec, off_t, size_t, ssize_t};
use pgrx::pg_sys;
use tde_core::wal::{SegmentSalt, WalCipher, WalPageHeader, WAL_PAGE_SIZE};

use crate::{guc, keys};

mod guards;
pub mod stream_out;

const PAGE: usize = WAL_PAGE_SIZE;

/// What a tracked descriptor refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A segment file; the byte address of its first page.
    Segment { start: u64 },
    /// `xlogtemp.*` (a segment being created or copied) or `RECOVERYXLOG`.
    Temp,
    /// A file PostgreSQL deletes at every start (see `ephemeral_files`);
    /// `append`: the server opened it with `O_APPEND`.
    Ephemeral { file: u64, append: bool },
}

#[derive(Clone, Copy, Debug)]
struct Tracked {
    kind: Kind,
    /// Salt for new pages written through this descriptor, once known.
    salt: Option<SegmentSalt>,
}

thread_local! {
    /// The descriptor of `global/pg_control` opened for writing, if any:
    /// what is written there names the last completed checkpoint's redo
    /// pointer (see `redo_point`).
    static CONTROL_FD: std::cell::Cell<c_int> = const { std::cell::Cell::new(-1) };
    static FDS: RefCell<Vec<Option<Tracked>>> = const { RefCell::new(Vec::new()) };
    /// This process's WAL cipher and the key epoch it was built for.
    static CIPHER: RefCell<Option<(u64, WalCipher)>> = const { RefCell::new(None) };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };

}

/// Alignment that descriptors opened with O_DIRECT (`wal_sync_method =
/// open_datasync`) demand of I/O buffers.
const DIRECT_ALIGN: usize = 4096;

/// Runs `f` with a zeroed, `DIRECT_ALIGN`-aligned buffer of `len` bytes.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.resize(len + DIRECT_ALIGN, 0);
        let off = s.as_ptr().align_offset(DIRECT_ALIGN);
        f(&mut s[off..off + len])
    })
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: errno is thread-local and always writable.
    unsafe { *libc::__errno_location() = e };
}

pub(crate) fn errno() -> c_int {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

pub fn is_tracked(fd: c_int) -> bool {
    tracked(fd).is_some()
}

fn tracked(fd: c_int) -> Option<Tracked> {
    if fd < 0 {
        return None;
    }
    FDS.with(|t| t.borrow().get(fd as usize).copied().flatten())
}

fn set_tracked(fd: c_int, value: Option<Tracked>) {
    if fd < 0 {
        return;
    }
    FDS.with(|t| {
        let mut t = t.borrow_mut();
        let i = fd as usize;
        if value.is_some() && t.len() <= i {
            t.resize(i + 1, None);
        }
        if let Some(slot) = t.get_mut(i) {
            *slot = value;
        }
    });
}

fn segment_size() -> u64 {
    // SAFETY: plain read of a global set from pg_control at start-up.
    unsafe { pg_sys::wal_segment_size as u64 }
}

/// Classifies a path opened by the server. Paths are relative to the data
/// directory (the server's working directory) or absolute under it.
fn classify(path: &[u8]) -> Option<Kind> {
    let rel = match path.strip_prefix(b"pg_wal/") {
        Some(rel) => rel,
        None if path.first() != Some(&b'/') => return None,
        None => {
            let data_dir = crate::startup::data_dir();
            let mut prefix = data_dir.into_os_string().into_encoded_bytes();
            prefix.extend_from_slice(b"/pg_wal/");
            path.strip_prefix(prefix.as_slice())?
        }
    };
    if rel.starts_with(b"xlogtemp.") || rel == b"RECOVERYXLOG" {
        return Some(Kind::Temp);
    }
    let name = rel.strip_suffix(b".partial").unwrap_or(rel);
    if name.len() != 24 || !name.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let hex = |r: std::ops::Range<usize>| {
        u64::from_str_radix(std::str::from_utf8(&name[r]).ok()?, 16).ok()
    };
    let (log, seg) = (hex(8..16)?, hex(16..24)?);
    let size = segment_size();
    if size == 0 {
        return None;
    }
    let segno = log * (0x1_0000_0000 / size) + seg;
    Some(Kind::Segment {
        start: segno * size,
    })
}

/// Whether `path` is the control file (relative to the data directory, the
/// server's working directory, or absolute under it).
fn is_control_file(path: &[u8]) -> bool {
    const CONTROL: &[u8] = b"global/pg_control";
    if path == CONTROL {
        return true;
    }
    let Some(rel) = path.strip_suffix(CONTROL) else {
        return false;
    };
    let mut dir = crate::startup::data_dir()
        .into_os_string()
        .into_encoded_bytes();
    dir.push(b'/');
    rel == dir.as_slice()
}

/// After a write of `count` bytes of `buf` at `offset` to `fd`: publishes
/// the redo pointer when `fd` is the control file.
fn after_write(fd: c_int, buf: *const c_void, written: ssize_t, offset: Option<u64>) {
    if written <= 0 || CONTROL_FD.with(|c| c.get()) != fd {
        return;
    }
    let e = errno();
    // SAFETY: the server's buffer holds at least the `written` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), written as usize) };
    let _ = std::panic::catch_unwind(|| {
        if let Some(offset) = offset {
            crate::redo_point::observe_control_write(bytes, offset);
        }
    });
    set_errno(e);
}

/// Processes that must see WAL files as stored when they open them to read:
/// the archiver (it copies segments, also through archive_library) and a
/// walsender running BASE_BACKUP (it copies files). Both also write WAL now
/// and then (a base backup switches segments and logs its end), and those
/// writes are encrypted like any other.
fn copies_files_as_stored(flags: c_int) -> bool {
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        return false;
    }
    // SAFETY: plain reads of process globals; MyWalSnd is checked for NULL
    // and points into shared memory owned by this walsender.
    unsafe {
        if pg_sys::MyBackendType == pg_sys::BackendType::B_ARCHIVER {
            return true;
        }
        pg_sys::am_walsender
            && !pg_sys::MyWalSnd.is_null()
            && (*pg_sys::MyWalSnd).state == pg_sys::WalSndState::WALSNDSTATE_BACKUP
    }
}

fn with_cipher<R>(f: impl FnOnce(&mut WalCipher) -> R) -> Result<R, tde_core::Error> {
    let keys = keys::current();
    CIPHER.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(epoch, _)| *epoch != keys.epoch) {
            let cipher = WalCipher::new(&keys.ring, segment_size() as u32)?;
            *c = Some((keys.epoch, cipher));
        }
        Ok(f(&mut c.as_mut().expect("just filled").1))
    })
}

fn page_magic_ok(page: &[u8]) -> bool {
    u16::from_le_bytes([page[0], page[1]]) as u32 == pg_sys::XLOG_PAGE_MAGIC
}

fn segno(kind: Kind) -> Option<u64> {
    match kind {
        Kind::Segment { start } => Some(start / segment_size()),
        Kind::Temp | Kind::Ephemeral { .. } => None,
    }
}

/// Decrypts the pages of `buf`, read at `offset` (page-aligned, whole pages)
/// of a tracked file. In a segment file, pages left over from the file's
/// previous life under another address are left alone.
fn decrypt_read(kind: Kind, buf: &mut [u8], offset: u64) -> Result<(), tde_core::Error> {
    with_cipher(|c| match segno(kind) {
        Some(segno) => c.decrypt_range(buf, segno, offset).map(|_| ()),
        None => {
            for page in buf.chunks_exact_mut(PAGE) {
                let page: &mut [u8; PAGE] = page.try_into().expect("exact chunk");
                c.decrypt_page(page)?;
            }
            Ok(())
        }
    })?
}

/// A WAL page that cannot be decrypted reaches PostgreSQL as EIO, whose
/// message never names the key. Says why, once per reason and process.
/// Crash recovery, and archive recovery towards the end of WAL, would take
/// the failed read for the end of WAL and silently stop replaying there: a
/// missing data key generation stops the server instead. Not on a standby
/// (it retries until the keyring is imported), and not with a recovery
/// target (WAL is read ahead of replay, possibly past the target; PostgreSQL
/// itself refuses to end recovery before reaching a target).
fn report_unreadable(e: &tde_core::Error) {
    thread_local! {
        static LAST: RefCell<String> = const { RefCell::new(String::new()) };
    }
    // SAFETY: plain reads of process globals.
    let (in_critical_section, replaying, target) = unsafe {
        (
            pg_sys::CritSectionCount > 0,
            // The startup process, or a single-user server replaying WAL.
            pg_sys::MyBackendType == pg_sys::BackendType::B_STARTUP
                || (!pg_sys::IsUnderPostmaster && pg_sys::InRecovery),
            pg_sys::ArchiveRecoveryRequested
                && pg_sys::recoveryTarget != pg_sys::RecoveryTargetType::RECOVERY_TARGET_UNSET,
        )
    };
    if in_critical_section {
        return;
    }
    let message = format!("tde: cannot decrypt WAL: {e}");
    let reason = match e {
        tde_core::Error::UnknownWalGeneration { generation, .. } => {
            format!("generation {generation}")
        }
        other => other.to_string(),
    };
    if replaying
        && !target
        && matches!(e, tde_core::Error::UnknownWalGeneration { .. })
        && !is_standby()
    {
        log_direct(
            pg_sys::FATAL as c_int,
            &message,
            "Recovery cannot go past this page. Put a keyring that holds this generation (the newest copy, e.g. the primary's or a backup's) into pg_tde/ and start the server again.",
        );
    }
    if LAST.with(|last| std::mem::replace(&mut *last.borrow_mut(), reason.clone()) != reason) {
        log_direct(pg_sys::WARNING as c_int, &message, "");
    }
}

/// Whether this server was started as a standby. `StandbyMode` is still off
/// during the crash recovery a standby may run first, so the signal file
/// decides.
fn is_standby() -> bool {
    crate::startup::data_dir().join("standby.signal").exists()
}

// elog.h's reporting protocol; pgrx keeps it out of its bindings, but
// these wrappers cannot use pgrx's reporting, which raises by panicking.
extern "C" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg_internal(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// `ereport` through PostgreSQL's C interface. Below ERROR it returns;
/// FATAL exits the process.
fn log_direct(level: c_int, message: &str, hint: &str) {
    let message = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
    let hint = std::ffi::CString::new(hint.replace('\0', " ")).unwrap_or_default();
    // SAFETY: the error-reporting protocol of elog.h (errstart, detail
    // calls, errfinish) with NUL-terminated strings passed through "%s";
    // levels below ERROR return, FATAL exits the process.
    unsafe {
        if errstart(level, std::ptr::null()) {
            errcode(pgrx::PgSqlErrorCode::ERRCODE_DATA_CORRUPTED as c_int);
            errmsg_internal(c"%s".as_ptr(), message.as_ptr());
            if !hint.is_empty() {
                errhint(c"%s".as_ptr(), hint.as_ptr());
            }
            errfinish(c"wal_hooks.rs".as_ptr(), line!() as c_int, std::ptr::null());
        }
    }
}

/// For each page of `buf` (stored pages, `src` to be written at byte
/// `head` of it): whether the page will be in stream format once `src` is
/// in place, judged by its header as it will be.
fn ends_in_stream_format(buf: &[u8], head: usize, src: &[u8]) -> Vec<bool> {
    let info_low = 2;
    (0..buf.len() / PAGE)
        .map(|i| {
            let at = i * PAGE + info_low;
            let byte = match at.checked_sub(head) {
                Some(j) if j < src.len() => src[j],
                _ => buf[at],
            };
            byte & tde_core::wal_stream::XLP_TDE_STREAM as u8 != 0
        })
        .collect()
}

/// Best-effort decryption of pages about to be partly overwritten: a page
/// that cannot be decrypted (a header still being received, a leftover of a
/// recycled file) stays as stored, opaque. A page that will be in stream
/// format (`stream`) is merged with its bytes as stored, never with a
/// decryption of them: stored as received (see `encrypt_write`), the
/// decrypted rest of an older page would reach the disk in plaintext.
fn decrypt_for_merge(buf: &mut [u8], stream: &[bool]) -> Result<(), ()> {
    with_cipher(|c| {
        for (page, stream) in buf.chunks_exact_mut(PAGE).zip(stream) {
            if *stream {
                continue;
            }
            let page: &mut [u8; PAGE] = page.try_into().expect("exact chunk");
            let mut copy = *page;
            if c.decrypt_page(&mut copy).is_ok() {
                *page = copy;
            }
        }
    })
    .map_err(|_| ())
}

/// Encrypts the pages of `buf`, to be written at `offset` (page-aligned,
/// whole pages) of a tracked file. All-zero pages (pre-allocated segments)
/// stay as they are. Every other page must be a plaintext WAL page as the
/// server writes it: zero padding, a header that fits this cluster and, in
/// a segment file, the address of its position. Anything else is refused,
/// and the caller writes nothing: a page that cannot be classified is never
/// written in plaintext.
fn encrypt_write(
    kind: Kind,
    buf: &mut [u8],
    offset: u64,
    salt: SegmentSalt,
) -> Result<(), tde_core::Error> {
    for page in buf.chunks_exact(PAGE) {
        if !page_magic_ok(page) && page.iter().any(|&b| b != 0) {
            let header = WalPageHeader::parse(page).expect("a whole page holds a header");
            return Err(tde_core::Error::UnexpectedWalPage {
                pageaddr: header.pageaddr,
                detail: format!(
                    "has magic {:#06x} where this server writes {:#06x}: it is not a WAL page of this server; refusing to encrypt it",
                    header.magic,
                    pg_sys::XLOG_PAGE_MAGIC
                ),
            });
        }
    }
    with_cipher(|c| match segno(kind) {
        Some(segno) => {
            // WAL a walreceiver received in stream format is stored as it
            // came (every byte of it decrypts on its own, so the rest of a
            // page can follow in a later write); the rest is encrypted.
            for (i, page) in buf.chunks_exact_mut(PAGE).enumerate() {
                if !tde_core::wal_stream::is_stream_page(page) {
                    c.encrypt_range(page, segno, offset + (i * PAGE) as u64, salt)?;
                }
            }
            Ok(())
        }
        None => {
            for page in buf.chunks_exact_mut(PAGE) {
                let page: &mut [u8; PAGE] = page.try_into().expect("exact chunk");
                c.encrypt_page(page, salt)?;
            }
            Ok(())
        }
    })?
}

/// Says why a WAL write was refused; PostgreSQL then reports the EIO
/// (and, writing WAL, stops with PANIC rather than lose or expose it).
fn report_unwritable(e: &tde_core::Error) {
    log_direct(
        pg_sys::LOG as c_int,
        &format!("tde: refusing to write a WAL page that cannot be encrypted: {e}"),
        "Nothing was written. A WAL page that tde cannot classify is never written in plaintext.",
    );
}

/// Reads exactly `buf.len()` bytes at `offset` unless the file ends first;
/// returns the count read.
pub(crate) fn pread_full(fd: c_int, buf: &mut [u8], offset: u64) -> Result<usize, c_int> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the destination range lies inside `buf`.
        let n = unsafe {
            libc::pread(
                fd,
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as off_t,
            )
        };
        match n {
            0 => break,
            n if n < 0 => {
                if errno() == libc::EINTR {
                    continue;
                }
                return Err(errno());
            }
            n => done += n as usize,
        }
    }
    Ok(done)
}

pub(crate) fn pwrite_full(fd: c_int, buf: &[u8], offset: u64) -> Result<(), c_int> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the source range lies inside `buf`.
        let n = unsafe {
            libc::pwrite(
                fd,
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as off_t,
            )
        };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(errno());
        }
        if n == 0 {
            return Err(libc::ENOSPC);
        }
        done += n as usize;
    }
    Ok(())
}

/// The salt for new pages of this descriptor: the segment's existing salt if
/// its first page already belongs to this segment, else a fresh one under
/// the current generation. A remembered salt whose generation has since been
/// dropped was never used for a page still in pg_wal (the drop proved
/// that), so a fresh one replaces it.
fn salt_for(fd: c_int, t: Tracked, keys: &keys::WriteGuard) -> Result<SegmentSalt, c_int> {
    let held = |s: &SegmentSalt| keys.keys.ring.data_key(s.generation()).is_some();
    if let Some(salt) = t.salt.filter(held) {
        return Ok(salt);
    }
    let generation = keys.generation();
    let mut salt = None;
    if let Kind::Segment { start } = t.kind {
        salt = with_scratch(PAGE, |first| -> Result<_, c_int> {
            if pread_full(fd, first, 0)? == PAGE && page_magic_ok(first) {
                let addr = u64::from_le_bytes(first[8..16].try_into().expect("8 bytes"));
                if addr == start {
                    return Ok(SegmentSalt::from_page(first).filter(held));
                }
            }
            Ok(None)
        })?;
    }
    let salt = match salt {
        Some(s) => s,
        None => SegmentSalt::generate(generation).map_err(|_| libc::EIO)?,
    };
    set_tracked(
        fd,
        Some(Tracked {
            salt: Some(salt),
            ..t
        }),
    );
    Ok(salt)
}

/// Reads `count` bytes at `offset` of a tracked descriptor into `dst`,
/// decrypted.
fn tracked_pread(fd: c_int, kind: Kind, dst: *mut u8, count: usize, offset: u64) -> ssize_t {
    if let Kind::Ephemeral { file, .. } = kind {
        // SAFETY: the caller's buffer holds `count` bytes.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst, count) };
        return crate::ephemeral_files::pread(fd, file, dst, offset);
    }
    if stream_out::must_seal() && !stream_out::connection_seals() {
        // Its connection was not wrapped (another library's authentication
        // hook that did not call ours): what it read would leave in
        // plaintext.
        log_direct(
            pg_sys::WARNING as c_int,
            "tde: this walsender's connection does not seal the WAL it sends; refusing to read WAL for it",
            "A library in shared_preload_libraries replaced the client authentication hook without calling the previous one.",
        );
        set_errno(libc::EIO);
        return -1;
    }
    let aligned = offset.is_multiple_of(PAGE as u64) && count.is_multiple_of(PAGE);
    if aligned {
        // SAFETY: the caller's buffer holds `count` bytes.
        let n = unsafe { libc::pread(fd, dst.cast(), count, offset as off_t) };
        if n > 0 {
            let e = errno();
            // SAFETY: `n` bytes of the caller's buffer were just filled.
            let buf = unsafe { std::slice::from_raw_parts_mut(dst, n as usize) };
            let whole = n as usize - n as usize % PAGE;
            if let Err(e) = decrypt_read(kind, &mut buf[..whole], offset) {
                report_unreadable(&e);
                set_errno(libc::EIO);
                return -1;
            }
            set_errno(e);
        }
        return n;
    }
    let start = offset - offset % PAGE as u64;
    let end = (offset + count as u64).div_ceil(PAGE as u64) * PAGE as u64;
    with_scratch((end - start) as usize, |s| {
        let got = match pread_full(fd, s, start) {
            Ok(n) => n,
            Err(e) => {
                set_errno(e);
                return -1;
            }
        };
        let whole = got - got % PAGE;
        if let Err(e) = decrypt_read(kind, &mut s[..whole], start) {
            report_unreadable(&e);
            set_errno(libc::EIO);
            return -1;
        }
        let skip = (offset - start) as usize;
        let n = got.saturating_sub(skip).min(count);
        // SAFETY: `n <= count` bytes into the caller's buffer.
        unsafe { std::ptr::copy_nonoverlapping(s[skip..].as_ptr(), dst, n) };
        n as ssize_t
    })
}

/// The first write of a timeline history file. History files are text
/// (timeline, LSN and reason lines, blank lines and `#` comments, copied
/// verbatim from the parent's) and never hold a NUL byte, while every first
/// write of a WAL file through `xlogtemp.*` does: zero-fill, or a page whose
/// header has zero padding.
fn is_history_text(src: &[u8]) -> bool {
    !src.is_empty() && !src.contains(&0)
}

/// Writes `src` at `offset` of a tracked descriptor, encrypting whole pages;
/// pages only partly covered are read, decrypted, merged and rewritten.
fn tracked_pwrite(fd: c_int, t: Tracked, src: &[u8], offset: u64) -> ssize_t {
    if let Kind::Ephemeral { file, .. } = t.kind {
        return crate::ephemeral_files::pwrite(fd, file, src, offset);
    }
    if matches!(t.kind, Kind::Temp) && offset == 0 && is_history_text(src) {
        // PostgreSQL writes a new timeline history file through
        // `xlogtemp.<pid>` too, then renames it to `<TLI>.history`. History
        // files stay plaintext (as stored in pg_wal and the archive, and as
        // the stock tools read them): the descriptor is not WAL.
        set_tracked(fd, None);
        return match pwrite_full(fd, src, offset) {
            Ok(()) => src.len() as ssize_t,
            Err(e) => {
                set_errno(e);
                -1
            }
        };
    }
    let result = (|| -> Result<(), c_int> {
        let start = offset - offset % PAGE as u64;
        let end = (offset + src.len() as u64).div_ceil(PAGE as u64) * PAGE as u64;
        // Held until the write below has returned: see `keys`.
        let guard = guc::WAL_ENCRYPTION.get().then(keys::for_write);
        let salt = match &guard {
            Some(g) => Some(salt_for(fd, t, g)?),
            None => None,
        };
        let len = (end - start) as usize;
        with_scratch(len, |s| {
            let head = (offset - start) as usize;
            let tail = len - head - src.len();
            if head != 0 {
                pread_full(fd, &mut s[..PAGE], start)?;
            }
            if tail != 0 && (len > PAGE || head == 0) {
                pread_full(fd, &mut s[len - PAGE..], end - PAGE as u64)?;
            }
            if head != 0 || tail != 0 {
                let stream = ends_in_stream_format(s, head, src);
                decrypt_for_merge(s, &stream).map_err(|_| libc::EIO)?;
            }
            s[head..head + src.len()].copy_from_slice(src);
            if let Some(salt) = salt {
                encrypt_write(t.kind, s, start, salt).map_err(|e| {
                    report_unwritable(&e);
                    libc::EIO
                })?;
            }
            pwrite_full(fd, s, start)
        })
    })();
    match result {
        Ok(()) => src.len() as ssize_t,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

fn current_offset(fd: c_int) -> Option<u64> {
    // SAFETY: lseek on a descriptor the caller passed us.
    let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
    (pos >= 0).then_some(pos as u64)
}

fn advance(fd: c_int, to: u64) {
    // SAFETY: as above.
    unsafe { libc::lseek(fd, to as off_t, libc::SEEK_SET) };
}

/// Runs a wrapper body; a panic (a bug) becomes EIO instead of unwinding
/// into C.
fn guarded(f: impl FnOnce() -> ssize_t) -> ssize_t {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        set_errno(libc::EIO);
        -1
    })
}

pub unsafe extern "C" fn tde_open(path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int {
    let ephemeral = if path.is_null() {
        None
    } else {
        // SAFETY: the server passes a NUL-terminated path.
        let p = unsafe { CStr::from_ptr(path) }.to_bytes();
        match std::panic::catch_unwind(|| crate::ephemeral_files::classify(p)) {
            Ok(found) => found,
            // A file that might need encrypting is not opened untracked.
            Err(_) => {
                set_errno(libc::EIO);
                return -1;
            }
        }
    };
    // Units are read back and rewritten in place: a write-only descriptor
    // could not read them, and O_APPEND would turn every write into an
    // append (the wrappers find the end themselves, `tde_write`).
    let open_flags = match ephemeral {
        Some(_) if flags & libc::O_ACCMODE == libc::O_WRONLY => {
            (flags & !libc::O_APPEND & !libc::O_ACCMODE) | libc::O_RDWR
        }
        Some(_) => flags & !libc::O_APPEND,
        None => flags,
    };
    // SAFETY: same arguments as the server passed; the mode is only read by
    // libc when O_CREAT or O_TMPFILE is set, as with a direct call.
    let fd = unsafe { libc::open(path, open_flags, mode as libc::c_uint) };
    if fd >= 0 && !path.is_null() {
        let e = errno();
        if ephemeral.is_some() {
            let check = std::panic::catch_unwind(|| crate::ephemeral_files::opened(fd, flags))
                .unwrap_or(Err(libc::EIO));
            if let Err(refused) = check {
                // SAFETY: the descriptor just opened, not handed out.
                unsafe { libc::close(fd) };
                set_errno(refused);
                return -1;
            }
        }
        // SAFETY: the server passes a NUL-terminated path.
        let p = unsafe { CStr::from_ptr(path) }.to_bytes();
        let kind = match ephemeral {
            Some(file) => Some(Kind::Ephemeral {
                file,
                append: flags & libc::O_APPEND != 0,
            }),
            None => {
                std::panic::catch_unwind(|| classify(p).filter(|_| !copies_files_as_stored(flags)))
                    .ok()
                    .flatten()
            }
        };
        set_tracked(fd, kind.map(|kind| Tracked { kind, salt: None }));
        if flags & libc::O_ACCMODE != libc::O_RDONLY && is_control_file(p) {
            CONTROL_FD.with(|c| c.set(fd));
        }
        set_errno(e);
    }
    fd
}

pub unsafe extern "C" fn tde_close(fd: c_int) -> c_int {
    let mut flushed = Ok(());
    match tracked(fd) {
        Some(Tracked {
            kind: Kind::Ephemeral { append: true, .. },
            ..
        }) => {
            flushed = std::panic::catch_unwind(|| crate::ephemeral_files::closing(fd))
                .unwrap_or(Err(libc::EIO));
            set_tracked(fd, None);
        }
        Some(_) => set_tracked(fd, None),
        None => {}
    }
    let _ = std::panic::catch_unwind(|| crate::ephemeral_files::forget(fd));
    CONTROL_FD.with(|c| {
        if c.get() == fd {
            c.set(-1);
        }
    });
    // SAFETY: forwarding the server's descriptor.
    let closed = unsafe { libc::close(fd) };
    match flushed {
        // Appends that could not be stored fail the close, as a file
        // system that writes back at close reports it.
        Err(e) => {
            set_errno(e);
            -1
        }
        Ok(()) => closed,
    }
}

pub unsafe extern "C" fn tde_pread(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    offset: off_t,
) -> ssize_t {
    let t = match tracked(fd) {
        Some(t) if offset >= 0 => t,
        // SAFETY: forwarding the server's arguments.
        _ => return unsafe { libc::pread(fd, buf, count, offset) },
    };
    guarded(|| tracked_pread(fd, t.kind, buf.cast(), count, offset as u64))
}

pub unsafe extern "C" fn tde_read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    let Some(t) = tracked(fd) else {
        // SAFETY: forwarding the server's arguments.
        return unsafe { libc::read(fd, buf, count) };
    };
    // A tracked file is never read untransformed: a failed lseek fails the
    // read with its errno.
    let Some(pos) = current_offset(fd) else {
        return -1;
    };
    let n = guarded(|| tracked_pread(fd, t.kind, buf.cast(), count, pos));
    if n > 0 {
        advance(fd, pos + n as u64);
    }
    n
}

pub unsafe extern "C" fn tde_read_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    buflen: size_t,
) -> ssize_t {
    if count > buflen {
        // The fortified read's contract: abort on a buffer overflow.
        std::process::abort();
    }
    // SAFETY: same contract as read.
    unsafe { tde_read(fd, buf, count) }
}

pub unsafe extern "C" fn tde_pwrite(
    fd: c_int,
    buf: *const c_void,
    count: size_t,
    offset: off_t,
) -> ssize_t {
    match tracked(fd) {
        Some(t) if offset >= 0 && count > 0 => {
            // SAFETY: the server's buffer holds `count` bytes.
            let src = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), count) };
            guarded(|| tracked_pwrite(fd, t, src, offset as u64))
        }
        _ => {
            // SAFETY: forwarding the server's arguments.
            let n = unsafe { libc::pwrite(fd, buf, count, offset) };
            after_write(fd, buf, n, u64::try_from(offset).ok());
            n
        }
    }
}

pub unsafe extern "C" fn tde_write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    let Some(t) = tracked(fd).filter(|_| count > 0) else {
        let control = CONTROL_FD.with(|c| c.get()) == fd;
        let offset = if control { current_offset(fd) } else { None };
        // SAFETY: forwarding the server's arguments.
        let n = unsafe { libc::write(fd, buf, count) };
        if control {
            after_write(fd, buf, n, offset);
        }
        return n;
    };
    // SAFETY: the server's buffer holds `count` bytes.
    let src = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), count) };
    if let Kind::Ephemeral { file, append: true } = t.kind {
        return guarded(|| crate::ephemeral_files::append(fd, file, src));
    }
    // A tracked file is never written untransformed: a failed lseek fails
    // the write with its errno.
    let Some(pos) = current_offset(fd) else {
        return -1;
    };
    let n = guarded(|| tracked_pwrite(fd, t, src, pos));
    if n > 0 {
        advance(fd, pos + n as u64);
    }
    n
}

pub unsafe extern "C" fn tde_pwritev(
    fd: c_int,
    iov: *const iovec,
    iovcnt: c_int,
    offset: off_t,
) -> ssize_t {
    let t = match tracked(fd) {
        Some(t) if offset >= 0 && iovcnt > 0 => t,
        // SAFETY: forwarding the server's arguments.
        _ => return unsafe { libc::pwritev(fd, iov, iovcnt, offset) },
    };
    // SAFETY: the server passes `iovcnt` valid iovecs.
    let parts = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    // Zero-filling a new segment: all-zero pages are stored as they are, so
    // skip gathering and merging them.
    // SAFETY: each iovec describes a readable buffer of iov_len bytes.
    let all_zero = parts.iter().all(|v| unsafe {
        std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
            .iter()
            .all(|&b| b == 0)
    });
    let whole_pages = (offset as u64).is_multiple_of(PAGE as u64)
        && parts
            .iter()
            .map(|v| v.iov_len)
            .sum::<usize>()
            .is_multiple_of(PAGE);
    if all_zero && whole_pages && !matches!(t.kind, Kind::Ephemeral { .. }) {
        // SAFETY: forwarding the server's arguments.
        return unsafe { libc::pwritev(fd, iov, iovcnt, offset) };
    }
    let mut joined = Vec::with_capacity(parts.iter().map(|v| v.iov_len).sum());
    for v in parts {
        // SAFETY: each iovec describes a readable buffer of iov_len bytes.
        joined.extend_from_slice(unsafe {
            std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
        });
    }
    if joined.is_empty() {
        return 0;
    }
    guarded(|| tracked_pwrite(fd, t, &joined, offset as u64))
}

pub unsafe extern "C" fn tde_ftruncate(fd: c_int, length: off_t) -> c_int {
    match tracked(fd) {
        Some(Tracked {
            kind: Kind::Ephemeral { file, .. },
            ..
        }) if length >= 0 => {
            std::panic::catch_unwind(|| crate::ephemeral_files::ftruncate(fd, file, length as u64))
                .unwrap_or_else(|_| {
                    set_errno(libc::EIO);
                    -1
                })
        }
        Some(_) => {
            // WAL files are never truncated; a truncation could cut a page.
            set_errno(libc::EIO);
            -1
        }
        // SAFETY: forwarding the server's arguments.
        None => unsafe { libc::ftruncate(fd, length) },
    }
}

/// How the attach layer treats one of the executable's file I/O imports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Rebound to this wrapper; `required`: the server must import it.
    Wrapped { wrapper: usize, required: bool },
    /// Left alone, for the reason given: it cannot reach WAL data, or
    /// that of the files `ephemeral_files` encrypts, around the wrappers.
    Harmless(&'static str),
}

/// Families of imports left alone, with the reason.
pub const HARMLESS_PREFIXES: &[(&str, &str)] = &[(
    "io_uring_",
    "PostgreSQL 18 starts asynchronous I/O only for relation reads, never for WAL",
)];

/// Every file I/O function (in `tde_core::file_io`'s sense) the attach layer
/// knows how to handle. An import of any other refuses the start.
pub fn handling() -> Vec<(&'static str, Handling)> {
    type Open = unsafe extern "C" fn(*const c_char, c_int, libc::mode_t) -> c_int;
    type Close = unsafe extern "C" fn(c_int) -> c_int;
    type Pread = unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t;
    type Read = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
    type ReadChk = unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t) -> ssize_t;
    type Pwrite = unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
    type Write = unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
    type Vector = unsafe extern "C" fn(c_int, *const iovec, c_int, off_t) -> ssize_t;
    type Dup = unsafe extern "C" fn(c_int) -> c_int;
    type Send = unsafe extern "C" fn(c_int, *const c_void, size_t, c_int) -> ssize_t;
    type Ftruncate = unsafe extern "C" fn(c_int, off_t) -> c_int;
    type Dup2 = unsafe extern "C" fn(c_int, c_int) -> c_int;
    type CopyRange =
        unsafe extern "C" fn(c_int, *mut i64, c_int, *mut i64, size_t, libc::c_uint) -> ssize_t;
    type Mmap =
        unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;
    type Fopen = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE;
    type Freopen =
        unsafe extern "C" fn(*const c_char, *const c_char, *mut libc::FILE) -> *mut libc::FILE;
    let wrapped = |wrapper: usize, required| Handling::Wrapped { wrapper, required };
    const STREAMS: &str = "reads and writes streams, which only fopen and freopen open";
    vec![
        ("open", wrapped(tde_open as Open as usize, true)),
        ("close", wrapped(tde_close as Close as usize, true)),
        ("read", wrapped(tde_read as Read as usize, true)),
        ("write", wrapped(tde_write as Write as usize, true)),
        ("pread", wrapped(tde_pread as Pread as usize, true)),
        ("pwrite", wrapped(tde_pwrite as Pwrite as usize, true)),
        ("pwritev", wrapped(tde_pwritev as Vector as usize, false)),
        (
            "__read_chk",
            wrapped(tde_read_chk as ReadChk as usize, false),
        ),
        (
            "preadv",
            wrapped(guards::tde_preadv as Vector as usize, false),
        ),
        ("dup", wrapped(guards::tde_dup as Dup as usize, false)),
        (
            "ftruncate",
            wrapped(tde_ftruncate as Ftruncate as usize, false),
        ),
        (
            "truncate",
            Handling::Harmless(
                "PostgreSQL truncates by path only relation files, to zero length when it drops them",
            ),
        ),
        ("dup2", wrapped(guards::tde_dup2 as Dup2 as usize, false)),
        (
            "copy_file_range",
            wrapped(guards::tde_copy_file_range as CopyRange as usize, false),
        ),
        ("mmap", wrapped(guards::tde_mmap as Mmap as usize, false)),
        (
            "send",
            wrapped(stream_out::tde_send as Send as usize, false),
        ),
        ("fopen", wrapped(guards::tde_fopen as Fopen as usize, false)),
        (
            "freopen",
            wrapped(guards::tde_freopen as Freopen as usize, false),
        ),
        ("fread", Handling::Harmless(STREAMS)),
        ("fwrite", Handling::Harmless(STREAMS)),
        ("fgets", Handling::Harmless(STREAMS)),
        ("fgetc", Handling::Harmless(STREAMS)),
        ("getc", Handling::Harmless(STREAMS)),
        ("fputc", Handling::Harmless(STREAMS)),
        ("fputs", Handling::Harmless(STREAMS)),
        ("putc", Handling::Harmless(STREAMS)),
        ("fprintf", Handling::Harmless(STREAMS)),
        (
            "fcntl",
            Handling::Harmless(
                "PostgreSQL only reads and sets descriptor and status flags with it",
            ),
        ),
    ]
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use std::ffi::CString;

    use pgrx::prelude::*;

    use super::*;

    const MARKER: &[u8] = b"tde-wal-writer-refusal-marker";

    /// A short-header WAL page at `pageaddr` whose record area is full of
    /// the marker.
    fn wal_page(magic: u16, pageaddr: u64, timeline: u32) -> Vec<u8> {
        let mut page = vec![0u8; PAGE];
        page[0..2].copy_from_slice(&magic.to_le_bytes());
        page[4..8].copy_from_slice(&timeline.to_le_bytes());
        page[8..16].copy_from_slice(&pageaddr.to_le_bytes());
        for chunk in page[24..].chunks_mut(MARKER.len()) {
            chunk.copy_from_slice(&MARKER[..chunk.len()]);
        }
        page
    }

    fn holds_marker(path: &str) -> bool {
        let stored = std::fs::read(path).unwrap_or_default();
        stored.windows(MARKER.len()).any(|w| w == MARKER)
    }

    /// Opens (creating it) the segment file of `segno` on `timeline`
    /// through the wrappers; the caller closes and removes it.
    fn open_segment(timeline: u32, segno: u64) -> (String, c_int) {
        let per_log = 0x1_0000_0000 / segment_size();
        let name = format!(
            "pg_wal/{timeline:08X}{:08X}{:08X}",
            segno / per_log,
            segno % per_log
        );
        let c_name = CString::new(name.clone()).unwrap();
        // SAFETY: a NUL-terminated path; the caller closes the descriptor.
        let fd = unsafe { tde_open(c_name.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
        assert!(fd >= 0, "open {name}: errno {}", errno());
        (name, fd)
    }

    #[pg_test]
    fn the_wal_writer_never_writes_a_page_it_cannot_encrypt() {
        let size = segment_size();
        let (timeline, segno) = (0x7Fu32, 3u64);
        let (name, fd) = open_segment(timeline, segno);
        assert!(is_tracked(fd), "{name} is not taken for a WAL segment");

        let at = PAGE as u64;
        let addr = segno * size + at;
        let magic = pg_sys::XLOG_PAGE_MAGIC as u16;
        let mut salted = wal_page(magic, addr, timeline);
        salted[20..24].copy_from_slice(&[0, 7, 0, 0]);
        let refused = [
            ("a foreign magic", wal_page(0x1234, addr, timeline)),
            ("another address", wal_page(magic, addr + at, timeline)),
            ("non-zero padding", salted),
        ];
        for (what, page) in refused {
            // SAFETY: `page` holds PAGE bytes.
            let n = unsafe { tde_pwrite(fd, page.as_ptr().cast(), PAGE, at as off_t) };
            assert_eq!(n, -1, "a page with {what} was written");
            assert_eq!(errno(), libc::EIO, "a page with {what}");
            assert!(!holds_marker(&name), "a page with {what} reached the disk");
        }

        // The control: a page the server could write is written, encrypted,
        // and reads back as it was.
        let page = wal_page(magic, addr, timeline);
        // SAFETY: `page` holds PAGE bytes.
        let n = unsafe { tde_pwrite(fd, page.as_ptr().cast(), PAGE, at as off_t) };
        assert_eq!(
            n,
            PAGE as ssize_t,
            "a valid page was refused: errno {}",
            errno()
        );
        assert!(
            !holds_marker(&name),
            "the valid page is stored in plaintext"
        );
        let mut back = vec![0u8; PAGE];
        // SAFETY: `back` holds PAGE bytes.
        let n = unsafe { tde_pread(fd, back.as_mut_ptr().cast(), PAGE, at as off_t) };
        assert_eq!(n, PAGE as ssize_t);
        assert!(back == page, "the valid page does not read back as written");

        // SAFETY: the descriptor opened above.
        unsafe { tde_close(fd) };
        std::fs::remove_file(&name).unwrap();
    }

    /// A walreceiver writes the WAL it receives, in stream format, a piece
    /// at a time over whatever the segment file held: a page it only begins
    /// is merged with the stored page. Merged with a decryption of a stored
    /// disk-format page (a recycled segment, one restored from an archive
    /// or copied by `pg_basebackup -X fetch`), the rest of the page would be
    /// stored in plaintext next to the stream bytes.
    #[pg_test]
    fn a_stream_piece_over_a_disk_page_never_stores_its_plaintext() {
        let size = segment_size();
        let (timeline, segno) = (0x7Eu32, 5u64);
        let (name, fd) = open_segment(timeline, segno);
        let at = 2 * PAGE as u64;
        let addr = segno * size + at;
        let magic = pg_sys::XLOG_PAGE_MAGIC as u16;
        let page = wal_page(magic, addr, timeline);
        // SAFETY: `page` holds PAGE bytes.
        let n = unsafe { tde_pwrite(fd, page.as_ptr().cast(), PAGE, at as off_t) };
        assert_eq!(n, PAGE as ssize_t, "errno {}", errno());
        assert!(!holds_marker(&name), "the disk page is stored in plaintext");

        // The beginning of the same page as a stream sends it.
        let mut piece = page[..300].to_vec();
        piece[2] |= tde_core::wal_stream::XLP_TDE_STREAM as u8;
        piece[20..24].copy_from_slice(&[1, 9, 9, 9]);
        piece[24..].fill(0xA5);
        // SAFETY: `piece` holds its length in bytes.
        let n = unsafe { tde_pwrite(fd, piece.as_ptr().cast(), piece.len(), at as off_t) };
        assert_eq!(n, piece.len() as ssize_t, "errno {}", errno());
        assert!(
            !holds_marker(&name),
            "the rest of the disk page was stored in plaintext next to the stream piece"
        );
        let stored = std::fs::read(&name).unwrap();
        assert!(
            stored[at as usize..][..300] == piece[..],
            "the stream piece is not stored as received"
        );

        // SAFETY: the descriptor opened above.
        unsafe { tde_close(fd) };
        std::fs::remove_file(&name).unwrap();
    }

    /// A new timeline's history file goes through `xlogtemp.*` like a new
    /// segment; it is text, not WAL, and is written as it is.
    #[pg_test]
    fn a_history_file_written_through_xlogtemp_stays_as_written() {
        let name = "pg_wal/xlogtemp.987654";
        let c_name = CString::new(name).unwrap();
        // SAFETY: a NUL-terminated path; the descriptor is closed below.
        let fd = unsafe { tde_open(c_name.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
        assert!(fd >= 0 && is_tracked(fd), "xlogtemp is not tracked");
        let lines: [&[u8]; 3] = [
            b"# edited by hand\n\n",
            b"1\t0/4017858\tno recovery target specified\n",
            b"2\t0/5000000\tat restore point \"r\"\n",
        ];
        for line in lines {
            // SAFETY: `line` holds that many bytes.
            let n = unsafe { tde_write(fd, line.as_ptr().cast(), line.len()) };
            assert_eq!(n, line.len() as ssize_t, "errno {}", errno());
        }
        // SAFETY: the descriptor opened above.
        unsafe { tde_close(fd) };
        assert_eq!(std::fs::read(name).unwrap(), lines.concat());
        std::fs::remove_file(name).unwrap();
    }
}
