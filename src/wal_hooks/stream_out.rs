//! WAL leaving through a physical replication connection, sealed into the
//! stream format (`tde_core::wal_stream`) as the walsender hands each
//! message to the client connection.
//!
//! The walsender reads WAL through our decrypting file wrappers and, since
//! PostgreSQL 17, straight from the WAL buffers, so neither read is the
//! place to seal: the one place every byte of a physical stream passes is
//! the connection's `PqCommMethods`, which this module wraps in walsenders
//! (installed from `ClientAuthentication_hook`, before any replication
//! command runs). A `CopyData` message whose payload is an `XLogData`
//! (`'w'`, dataStart, walEnd, sendTime, WAL) of a physical stream has its
//! WAL sealed at dataStart; everything else passes as it is: logical
//! streams (decoded rows for a subscriber that runs its own encryption),
//! base backups (files as stored), keepalives and the results of commands.
//! A message that cannot be sealed is not sent: the walsender raises an
//! ERROR and the client sees the reason.

use std::cell::RefCell;
use std::ffi::{c_char, c_int};

use pgrx::pg_sys;
use pgrx::prelude::*;
use tde_core::wal_stream::StreamSealer;

use super::with_cipher;
use crate::errors;

/// `PQcommMethods` (libpq/libpq.h), identical in PostgreSQL 15 to 18.
#[repr(C)]
struct CommMethods {
    comm_reset: unsafe extern "C-unwind" fn(),
    flush: unsafe extern "C-unwind" fn() -> c_int,
    flush_if_writable: unsafe extern "C-unwind" fn() -> c_int,
    is_send_pending: unsafe extern "C-unwind" fn() -> bool,
    putmessage: unsafe extern "C-unwind" fn(c_char, *const c_char, usize) -> c_int,
    putmessage_noblock: unsafe extern "C-unwind" fn(c_char, *const c_char, usize),
}

type ClientAuthHook = unsafe extern "C-unwind" fn(*mut pg_sys::Port, c_int);

extern "C-unwind" {
    static mut PqCommMethods: *const CommMethods;
    static mut ClientAuthentication_hook: Option<ClientAuthHook>;
}

/// The hook installed before ours at load.
static mut PREV_CLIENT_AUTH: Option<ClientAuthHook> = None;
/// The hook a library loaded after tde put in front of ours, found once
/// every preloaded library is in: called first, so that ours is outermost.
static mut LATER_CLIENT_AUTH: Option<ClientAuthHook> = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;
/// The connection's own methods, which ours forward to.
static mut INNER: *const CommMethods = std::ptr::null();

static SEALING: CommMethods = CommMethods {
    comm_reset,
    flush,
    flush_if_writable,
    is_send_pending,
    putmessage,
    putmessage_noblock,
};

/// `CopyData` payload header of an `XLogData` message: `'w'`, dataStart,
/// walEnd, sendTime.
const XLOGDATA_HEADER: usize = 1 + 8 + 8 + 8;

thread_local! {
    static SEALER: RefCell<Option<(u64, StreamSealer)>> = const { RefCell::new(None) };
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The sealed copy being forwarded: the socket's `putmessage_noblock`
    /// sends through `putmessage`, which must not seal it again. Cleared
    /// however the forwarding call ends, before that copy can be freed.
    static FORWARDING: std::cell::Cell<*const u8> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Installs the hook that wraps each walsender's connection. Postmaster
/// only, from `_PG_init`.
pub fn init() {
    // SAFETY: single-threaded postmaster start-up; the previous hooks are
    // kept and called.
    unsafe {
        PREV_CLIENT_AUTH = ClientAuthentication_hook;
        ClientAuthentication_hook = Some(after_authentication);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(stay_outermost);
    }
}

/// Runs in the postmaster once every preloaded library is loaded. A library
/// loaded after tde that set its own authentication hook and did not call
/// ours would leave walsenders unwrapped, and since PostgreSQL 17 they send
/// recent WAL from the WAL buffers, which no file wrapper sees: ours goes
/// back in front and calls that library's first.
#[pg_guard]
unsafe extern "C-unwind" fn stay_outermost() {
    // SAFETY: single-threaded postmaster; hook chaining as above.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev());
        }
        let ours: ClientAuthHook = after_authentication;
        match ClientAuthentication_hook {
            Some(h) if std::ptr::fn_addr_eq(h, ours) => {}
            other => {
                LATER_CLIENT_AUTH = other;
                ClientAuthentication_hook = Some(ours);
            }
        }
    }
}

thread_local! {
    static IN_AUTH_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn after_authentication(port: *mut pg_sys::Port, status: c_int) {
    // SAFETY: the hook chain as PostgreSQL calls it, same arguments. A
    // later library's hook that does call ours reaches this function again
    // from inside the outer call: that inner call goes on down the chain
    // tde found at load. (An ERROR in a hook ends the connection: the flag
    // never outlives it.)
    unsafe {
        let call = |hook: ClientAuthHook| pg_sys::ffi::pg_guard_ffi_boundary(|| hook(port, status));
        if IN_AUTH_HOOK.get() {
            if let Some(prev) = PREV_CLIENT_AUTH {
                call(prev);
            }
            return;
        }
        IN_AUTH_HOOK.set(true);
        match (LATER_CLIENT_AUTH, PREV_CLIENT_AUTH) {
            (Some(later), _) => call(later),
            (None, Some(prev)) => call(prev),
            (None, None) => {}
        }
        IN_AUTH_HOOK.set(false);
        // A failed authentication ends the connection with an ERROR right
        // after this hook; nothing to wrap then.
        if pg_sys::am_walsender && status == pg_sys::STATUS_OK as c_int && INNER.is_null() {
            INNER = PqCommMethods;
            PqCommMethods = &SEALING;
        }
    }
}

/// The postgres executable's `send()` (every byte a backend sends to its
/// client goes through it, with or without SSL): refused with EIO in a
/// walsender that must seal what it sends but whose connection is not
/// wrapped, so that WAL it took from the WAL buffers never leaves unsealed
/// whatever another library did to the authentication hook.
///
/// # Safety
///
/// As `send(2)`.
pub unsafe extern "C" fn tde_send(
    fd: c_int,
    buf: *const std::ffi::c_void,
    len: libc::size_t,
    flags: c_int,
) -> libc::ssize_t {
    if must_seal() && !connection_seals() {
        super::set_errno(libc::EIO);
        return -1;
    }
    // SAFETY: the caller's arguments, as `send(2)` takes them.
    unsafe { libc::send(fd, buf, len, flags) }
}

/// Whether this walsender's connection seals what it sends (checked by the
/// WAL read path, so a walsender whose connection was not wrapped cannot
/// send WAL it read from a file).
pub fn connection_seals() -> bool {
    // SAFETY: plain reads of process globals.
    unsafe { std::ptr::eq(PqCommMethods, &SEALING) }
}

/// Whether what this walsender sends of WAL must be sealed: it streams
/// physical WAL and WAL encryption is on (with it off, `pg_wal` itself is
/// plaintext and so is the stream).
pub fn must_seal() -> bool {
    // Every send() of every backend asks: the cheap process flag first.
    streams_physical_wal() && crate::guc::WAL_ENCRYPTION.get()
}

/// Whether this process is a walsender streaming physical WAL: a logical
/// walsender decodes in this process and sends rows, a base backup sends
/// files as stored, and a walsender running a SQL command (`replication =
/// database`) is in neither streaming state.
pub fn streams_physical_wal() -> bool {
    // SAFETY: plain reads of process globals; MyWalSnd and
    // MyReplicationSlot are checked for NULL and point into shared memory
    // this walsender owns.
    unsafe {
        use pg_sys::WalSndState::*;
        pg_sys::am_walsender
            && !pg_sys::MyWalSnd.is_null()
            && matches!(
                (*pg_sys::MyWalSnd).state,
                WALSNDSTATE_CATCHUP | WALSNDSTATE_STREAMING | WALSNDSTATE_STOPPING
            )
            && (pg_sys::MyReplicationSlot.is_null()
                || (*pg_sys::MyReplicationSlot).data.database == pg_sys::InvalidOid)
    }
}

/// Seals `wal`, the WAL from `start` on, in place.
fn seal(start: u64, wal: &mut [u8]) -> Result<(), tde_core::Error> {
    let keys = crate::keys::current();
    let epoch = keys.epoch;
    let generation = match crate::guc::WAL_STREAM_GENERATION.get() {
        crate::guc::StreamGeneration::Current => keys.ring.current_generation(),
        crate::guc::StreamGeneration::Oldest => keys
            .ring
            .generations()
            .next()
            .expect("a keyring holds a generation"),
    };
    SEALER.with(|s| {
        let mut s = s.borrow_mut();
        match s.as_mut() {
            Some((e, _)) if *e == epoch => {}
            // New keys (a rotation, an import): the stream goes on.
            Some((e, sealer)) => {
                sealer.replace_cipher(with_cipher(|c| c.stream_cipher())?);
                *e = epoch;
            }
            None => {
                *s = Some((
                    epoch,
                    StreamSealer::new(with_cipher(|c| c.stream_cipher())?),
                ))
            }
        }
        s.as_mut()
            .expect("filled above")
            .1
            .seal(start, wal, generation)
    })
}

/// For the WAL of a physical stream, hands a sealed copy of the message to
/// `f` and returns true; false for a message to send as it is.
///
/// # Safety
///
/// `s` points to `len` readable bytes.
unsafe fn sealed(
    msgtype: c_char,
    s: *const c_char,
    len: usize,
    f: impl FnOnce(*const c_char, usize),
) -> bool {
    if msgtype as u8 != b'd' || len <= XLOGDATA_HEADER || s.is_null() {
        return false;
    }
    // SAFETY: the caller's message holds `len` bytes.
    let msg = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), len) };
    if msg[0] != b'w' || FORWARDING.get() == msg.as_ptr() || !must_seal() {
        return false;
    }
    // Taken out while the connection's method runs: an ERROR it raises
    // (out of memory) leaves no borrow behind, only this buffer.
    let mut out = OUT.with(|o| std::mem::take(&mut *o.borrow_mut()));
    out.clear();
    out.extend_from_slice(msg);
    let start = u64::from_be_bytes(out[1..9].try_into().expect("8 bytes"));
    let result = seal(start, &mut out[XLOGDATA_HEADER..]);
    if result.is_ok() {
        /// Clears `FORWARDING` however the forwarding call ends, before
        /// the buffer it names can be freed.
        struct Forwarding;
        impl Drop for Forwarding {
            fn drop(&mut self) {
                FORWARDING.set(std::ptr::null());
            }
        }
        FORWARDING.set(out.as_ptr());
        let _forwarding = Forwarding;
        f(out.as_ptr().cast(), out.len());
    }
    OUT.with(|o| *o.borrow_mut() = out);
    if let Err(e) = result {
        errors::raise("cannot send WAL to this replication client", &e);
    }
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn putmessage_noblock(msgtype: c_char, s: *const c_char, len: usize) {
    // SAFETY: forwarding the caller's message, or our sealed copy of it, to
    // the connection's own method (INNER is set before ours is installed),
    // through pgrx's boundary so that an ERROR unwinds our frames.
    unsafe {
        let inner = &*INNER;
        let send =
            |p, n| pg_sys::ffi::pg_guard_ffi_boundary(|| (inner.putmessage_noblock)(msgtype, p, n));
        if !sealed(msgtype, s, len, send) {
            send(s, len)
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn putmessage(msgtype: c_char, s: *const c_char, len: usize) -> c_int {
    // SAFETY: as in `putmessage_noblock`.
    unsafe {
        let inner = &*INNER;
        let send = |p, n| pg_sys::ffi::pg_guard_ffi_boundary(|| (inner.putmessage)(msgtype, p, n));
        let mut rc = 0;
        if !sealed(msgtype, s, len, |p, n| rc = send(p, n)) {
            rc = send(s, len);
        }
        rc
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn comm_reset() {
    // SAFETY: forwarding to the connection's own method.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| ((*INNER).comm_reset)()) }
}

#[pg_guard]
unsafe extern "C-unwind" fn flush() -> c_int {
    // SAFETY: forwarding to the connection's own method.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| ((*INNER).flush)()) }
}

#[pg_guard]
unsafe extern "C-unwind" fn flush_if_writable() -> c_int {
    // SAFETY: forwarding to the connection's own method.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| ((*INNER).flush_if_writable)()) }
}

#[pg_guard]
unsafe extern "C-unwind" fn is_send_pending() -> bool {
    // SAFETY: forwarding to the connection's own method.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| ((*INNER).is_send_pending)()) }
}
