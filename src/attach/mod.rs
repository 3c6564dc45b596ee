//! Attaching to a stock server (DESIGN §5): the storage manager's dispatch
//! table is found by the addresses of the `md*` functions it holds, the
//! read/write/extend slots are pointed at our wrappers, and a self-test
//! proves that the server's own `smgr*` entry points reach them. Any doubt
//! stops the server from starting; it never runs half-hooked.
//!
//! Everything PostgreSQL-version-specific lives in this module.

pub mod compat;
mod got;
mod relro;
mod table;
mod wal_self_test;

pub use wal_self_test::install_round_trip;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use pgrx::prelude::*;

use crate::{smgr_hooks, wal_hooks};
pub use table::{locate, MdSymbols};

/// Which server functions the dispatch table held, and where.
pub struct Attached {
    pub description: String,
}

static ATTACHED: OnceLock<Attached> = OnceLock::new();

pub fn attached() -> Option<&'static Attached> {
    ATTACHED.get()
}

// The md.c entry points, declared without their signatures: only their
// addresses are used here (the real signatures are in smgr_hooks).
extern "C" {
    fn mdinit();
    fn mdopen();
    fn mdclose();
    fn mdcreate();
    fn mdexists();
    fn mdunlink();
    fn mdextend();
    fn mdprefetch();
    fn mdwriteback();
    fn mdnblocks();
    fn mdtruncate();
    fn mdimmedsync();
}

#[cfg(feature = "pg15")]
extern "C" {
    fn mdread();
    fn mdwrite();
}

#[cfg(any(feature = "pg17", feature = "pg18"))]
extern "C" {
    fn mdreadv();
    fn mdwritev();
    fn mdzeroextend();
    fn mdregistersync();
}

#[cfg(feature = "pg18")]
extern "C" {
    fn mdmaxcombine();
    fn mdstartreadv();
    fn mdfd();
}

/// Dispatch table entries that later versions added.
fn newer_neighbours() -> Vec<(&'static str, usize)> {
    #[allow(unused_mut)]
    let mut added = Vec::new();
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    added.extend([
        ("mdzeroextend", mdzeroextend as *const () as usize),
        ("mdregistersync", mdregistersync as *const () as usize),
    ]);
    #[cfg(feature = "pg18")]
    added.extend([
        ("mdmaxcombine", mdmaxcombine as *const () as usize),
        ("mdstartreadv", mdstartreadv as *const () as usize),
        ("mdfd", mdfd as *const () as usize),
    ]);
    added
}

fn md_symbols() -> MdSymbols {
    let mut required = vec![
        ("mdclose", mdclose as *const () as usize),
        ("mdcreate", mdcreate as *const () as usize),
        ("mdexists", mdexists as *const () as usize),
        ("mdunlink", mdunlink as *const () as usize),
        ("mdprefetch", mdprefetch as *const () as usize),
        ("mdwriteback", mdwriteback as *const () as usize),
        ("mdnblocks", mdnblocks as *const () as usize),
        ("mdtruncate", mdtruncate as *const () as usize),
    ];
    required.extend(newer_neighbours());
    #[cfg(feature = "pg15")]
    let (read, write) = (
        ("mdread", mdread as *const () as usize),
        ("mdwrite", mdwrite as *const () as usize),
    );
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    let (read, write) = (
        ("mdreadv", mdreadv as *const () as usize),
        ("mdwritev", mdwritev as *const () as usize),
    );
    MdSymbols {
        read,
        write,
        extend: ("mdextend", mdextend as *const () as usize),
        required_neighbours: required,
        optional_neighbours: vec![
            mdinit as *const () as usize,
            mdopen as *const () as usize,
            mdimmedsync as *const () as usize,
        ],
    }
}

fn server_version() -> String {
    // SAFETY: GetConfigOption returns a pointer to GUC storage that stays valid
    // while no GUC is reassigned; it is copied at once.
    unsafe {
        let p = pg_sys::GetConfigOption(c"server_version".as_ptr(), true, false);
        if p.is_null() {
            "unknown".into()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

fn refuse(what: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!(
            "tde: cannot attach to PostgreSQL {} (built for {}): {what}",
            server_version(),
            built_for()
        ),
        "tde only runs on server builds whose storage manager and file I/O it recognizes and has proven to reach its wrappers; the server was not started."
    );
}

pub fn attach_storage_manager() {
    let region = relro::main_program_relro().unwrap_or_else(|e| refuse(&e));
    // SAFETY: the region is the main program's PT_GNU_RELRO segment as
    // reported by the dynamic loader: mapped, readable and never unmapped.
    let words = unsafe { relro::words(&region) };
    let md = md_symbols();
    let found = locate(words, &md).unwrap_or_else(|e| refuse(&e));
    let slots = [
        (found.read, smgr_hooks::wrapper_read()),
        (found.write, smgr_hooks::wrapper_write()),
        (found.extend, smgr_hooks::wrapper_extend()),
    ];
    smgr_hooks::save_originals(words[found.read], words[found.write], words[found.extend]);
    // SAFETY: every slot index lies inside the RELRO region found above;
    // the region is made writable only for these stores, then read-only
    // again, before any other process exists.
    if let Err(e) = unsafe { relro::store_words(&region, &slots) } {
        refuse(&e);
    }
    self_test();
    #[cfg(feature = "pg18")]
    attach_aio_reads();
    let _ = ATTACHED.set(Attached {
        description: format!(
            "smgr: dispatch table patched ({}, {}, {}) on PostgreSQL {}",
            md.read.0,
            md.write.0,
            md.extend.0,
            server_version()
        ),
    });
}

/// PostgreSQL 18: the completion callbacks of asynchronous reads that see
/// the pages first — md.c's shared one and the buffer manager's local one
/// for temporary tables — are replaced, in their callback table entries
/// (read-only relocated data), by wrappers that decrypt what was read
/// (see `smgr_hooks::aio`).
#[cfg(feature = "pg18")]
fn attach_aio_reads() {
    use smgr_hooks::aio;
    // SAFETY: only the addresses of the exported callback table entries are
    // taken.
    let (md, local) = unsafe {
        (
            &raw const aio::aio_md_readv_cb.complete_shared,
            &raw const aio::aio_local_buffer_readv_cb.complete_local,
        )
    };
    let region = relro::main_program_relro().unwrap_or_else(|e| refuse(&e));
    for (slot, hooked, what) in [
        (
            md,
            &aio::MD_READV,
            "md.c's shared completion of asynchronous reads",
        ),
        (
            local,
            &aio::LOCAL_BUFFER_READV,
            "the buffer manager's local completion of asynchronous reads",
        ),
    ] {
        // SAFETY: an aligned word of an exported, initialized constant.
        let current = unsafe { *slot };
        if current == 0 {
            refuse(&format!("{what} has no callback to wrap"));
        }
        let slot = slot as usize;
        if slot < region.start || slot >= region.start + region.len {
            refuse(&format!("{what} is not in read-only relocated data"));
        }
        hooked.save_original(current);
        // SAFETY: the slot is an aligned word of the RELRO segment holding a
        // function pointer of the wrapper's signature; no other process
        // exists yet.
        if let Err(e) = unsafe { relro::patch_word(slot, hooked.wrapper()) } {
            refuse(&format!("cannot hook {what}: {e}"));
        }
    }
}

/// Rebinds the postgres executable's file I/O imports to the WAL wrappers,
/// all of them or none: a missing required import, or an import of a file
/// I/O function the wrappers do not handle (one that could read or write a
/// WAL file around them), refuses the start.
pub fn attach_wal_io() {
    let slots = got::import_slots().unwrap_or_else(|e| refuse(&e));
    let handling = wal_hooks::handling();
    let mut handled: Vec<&str> = handling.iter().map(|(name, _)| *name).collect();
    handled.extend(slots.keys().map(String::as_str).filter(|name| {
        wal_hooks::HARMLESS_PREFIXES
            .iter()
            .any(|(prefix, _)| name.starts_with(prefix))
    }));
    let unhandled = tde_core::file_io::unhandled(slots.keys().map(String::as_str), &handled);
    if !unhandled.is_empty() {
        refuse(&format!(
            "the postgres executable imports file I/O that tde does not wrap: {}(); WAL read or written through it would bypass encryption",
            unhandled.join("(), ")
        ));
    }
    let mut plan = Vec::new();
    for (name, how) in &handling {
        let wal_hooks::Handling::Wrapped { wrapper, required } = *how else {
            continue;
        };
        match slots.get(*name) {
            Some(slot) => plan.push((*name, slot.address, wrapper)),
            None if required => refuse(&format!(
                "the postgres executable does not import {name}() through its PLT"
            )),
            None => {}
        }
    }
    for (name, address, wrapper) in &plan {
        // SAFETY: the address is the executable's JUMP_SLOT for `name`, a
        // word of its RELRO segment or (lazy binding) of its writable GOT; the wrapper has the libc signature of
        // `name`; no other process or thread exists yet.
        if let Err(e) = unsafe { relro::patch_word(*address, *wrapper) } {
            refuse(&format!("cannot rebind {name}(): {e}"));
        }
    }
    wal_self_test::descriptors_are_tracked();
    wal_self_test::remember_read_slots(&slots);
    let names: Vec<&str> = plan.iter().map(|(n, _, _)| *n).collect();
    let _ = WAL_ATTACHED.set(format!("wal: file I/O rebound ({})", names.join(", ")));
}

static WAL_ATTACHED: OnceLock<String> = OnceLock::new();

pub fn wal_attached() -> Option<&'static str> {
    WAL_ATTACHED.get().map(String::as_str)
}

pub const HIT_READ: u32 = 1;
pub const HIT_WRITE: u32 = 2;
pub const HIT_EXTEND: u32 = 4;
/// Non-zero while the self-test runs: the wrappers record the call and
/// return without touching storage.
pub static SELF_TEST: AtomicU32 = AtomicU32::new(0);
const SELF_TEST_ACTIVE: u32 = 0x100;

pub fn self_test_hit(which: u32) -> bool {
    let v = SELF_TEST.load(Ordering::Relaxed);
    if v & SELF_TEST_ACTIVE == 0 {
        return false;
    }
    SELF_TEST.store(v | which, Ordering::Relaxed);
    true
}

/// One read, one write and one extend through the server's own `smgr*`
/// entry points.
///
/// # Safety
/// `rel` and `page` stay valid for the calls; the self-test flag must be set
/// (so the wrappers return before touching either).
#[cfg(feature = "pg15")]
unsafe fn self_test_calls(rel: pg_sys::SMgrRelation, page: *mut std::ffi::c_char) {
    use pg_sys::ForkNumber::MAIN_FORKNUM;
    // SAFETY: per the contract.
    unsafe {
        pg_sys::smgrread(rel, MAIN_FORKNUM, 0, page);
        pg_sys::smgrwrite(rel, MAIN_FORKNUM, 0, page, true);
        pg_sys::smgrextend(rel, MAIN_FORKNUM, 0, page, true);
    }
}

/// # Safety
/// As above.
#[cfg(any(feature = "pg17", feature = "pg18"))]
unsafe fn self_test_calls(rel: pg_sys::SMgrRelation, page: *mut std::ffi::c_char) {
    use pg_sys::ForkNumber::MAIN_FORKNUM;
    let mut pages = [page.cast::<std::ffi::c_void>()];
    let const_pages = [page.cast_const().cast::<std::ffi::c_void>()];
    // SAFETY: per the contract; one page each.
    unsafe {
        pg_sys::smgrreadv(rel, MAIN_FORKNUM, 0, pages.as_mut_ptr(), 1);
        pg_sys::smgrwritev(
            rel,
            MAIN_FORKNUM,
            0,
            const_pages.as_ptr().cast_mut(),
            1,
            true,
        );
        pg_sys::smgrextend(rel, MAIN_FORKNUM, 0, page.cast(), true);
    }
}

/// Calls the server's own read/write/extend entry points with a dummy
/// relation; each must arrive in our wrapper.
fn self_test() {
    let mut rel = pg_sys::SMgrRelationData {
        smgr_which: 0,
        ..Default::default()
    };
    let mut buf = vec![0u8; tde_core::page::PAGE_SIZE];
    SELF_TEST.store(SELF_TEST_ACTIVE, Ordering::Relaxed);
    let ptr = buf.as_mut_ptr().cast::<std::ffi::c_char>();
    let rel_ptr: pg_sys::SMgrRelation = &mut rel;
    let outcome = PgTryBuilder::new(|| {
        // SAFETY: `rel` and `buf` outlive the calls; with the self-test flag
        // set our wrappers return before using either. Should a call not
        // reach a wrapper, md.c fails to open the dummy relation's file and
        // raises an ERROR, which is caught below.
        unsafe { self_test_calls(rel_ptr, ptr) };
        true
    })
    .catch_others(|_| false)
    .execute();
    let hits = SELF_TEST.swap(0, Ordering::Relaxed) & !SELF_TEST_ACTIVE;
    if !outcome || hits != HIT_READ | HIT_WRITE | HIT_EXTEND {
        refuse(&format!(
            "self-test failed: calls through the smgr entry points reached the wrappers {{read: {}, write: {}, extend: {}}}",
            hits & HIT_READ != 0,
            hits & HIT_WRITE != 0,
            hits & HIT_EXTEND != 0
        ));
    }
}

fn built_for() -> String {
    pg_sys::PG_VERSION.to_string_lossy().into_owned()
}
