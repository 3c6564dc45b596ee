//! Data keys at run time (DESIGN §2, "Rotation"): which generations every
//! process may use and which one new writes use. They live in shared memory
//! so that a data-key rotation or drop takes effect in every process at once,
//! without a restart.
//!
//! The table is filled in the postmaster at every shared-memory
//! initialization (server start and each crash restart) from the keyring
//! file, opened with the keyring key the postmaster unwrapped at start-up, so
//! a crash restart sees the generations added since the start. Each process
//! keeps its own expanded ciphers and rebuilds them when the shared epoch
//! moves.
//!
//! Writers hold the table's lock in shared mode from choosing a generation
//! until their write has reached the kernel. Once a rotation or drop has held
//! the lock exclusively, no write under an earlier choice is still in flight:
//! that is what lets a drop prove, by scanning files, that nothing uses a
//! generation.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::lwlock::PgLwLockShareGuard;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic, PgLwLock};
use tde_core::kdf::Key256;
use tde_core::keyring::{Keyring, KeyringFile};
use tde_core::page::PageCipher;
use zeroize::Zeroize;

use crate::{startup, state};

const SLOTS: usize = 256;

#[derive(Clone, Copy)]
#[repr(C)]
pub struct KeyTable {
    /// Moves on every change; processes compare it with their copy.
    epoch: u64,
    present: [bool; SLOTS],
    keys: [[u8; 32]; SLOTS],
}

// SAFETY: plain bytes without pointers, identical in every process.
unsafe impl PGRXSharedMemory for KeyTable {}

impl KeyTable {
    const EMPTY: KeyTable = KeyTable {
        epoch: 0,
        present: [false; SLOTS],
        keys: [[0; 32]; SLOTS],
    };

    fn load(&mut self, ring: &Keyring) {
        self.keys.zeroize();
        self.present = [false; SLOTS];
        for g in ring.generations() {
            let key = ring.data_key(g).expect("listed generation");
            self.keys[g as usize] = *key.as_bytes();
            self.present[g as usize] = true;
        }
        self.epoch += 1;
    }

    fn data_keys(&self) -> Vec<(u8, Key256)> {
        (1..SLOTS)
            .filter(|&g| self.present[g])
            .map(|g| (g as u8, Key256::from_bytes(self.keys[g])))
            .collect()
    }
}

// SAFETY: the names are unique to this extension.
static TABLE: PgLwLock<KeyTable> = unsafe { PgLwLock::new(c"tde_data_keys") };
static EPOCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"tde_data_keys_epoch") };

static mut PREV_SHMEM_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

/// The keys one process has expanded, as of `epoch`.
pub struct Keys {
    pub epoch: u64,
    /// The keyring as this process sees it: its current generation is the
    /// one new writes use.
    pub ring: Keyring,
    pub page: PageCipher,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Keys>>> = const { RefCell::new(None) };
}

pub fn init() {
    pg_shmem_init!(TABLE = KeyTable::EMPTY);
    pg_shmem_init!(EPOCH = AtomicU64::new(0));
    // SAFETY: _PG_init runs once in the postmaster, before any process
    // forks; chaining the hook is the documented protocol.
    unsafe {
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(fill_table);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn fill_table() {
    // SAFETY: the previous hook (pgrx's, which creates TABLE) is called as
    // PostgreSQL would have.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| prev());
        }
    }
    // After a crash restart the file is the only record of the generations
    // added or dropped since the start; guessing would risk writing under a
    // dropped key or losing a new one.
    let ring = reread().unwrap_or_else(|e| {
        ereport!(
            PgLogLevel::FATAL,
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("tde: cannot reload the data keys: {e}"),
            "Restore pg_tde/keyring.json and start the server again."
        );
        unreachable!("FATAL does not return")
    });
    // Epochs must not repeat across shared memory initializations: the
    // postmaster itself may have cached keys of an earlier one (its WAL
    // self-test reads them), and every process it forks inherits that cache.
    static INITIALIZATIONS: AtomicU64 = AtomicU64::new(0);
    let n = INITIALIZATIONS.fetch_add(1, Ordering::Relaxed) + 1;
    TABLE.exclusive().epoch = n << 32;
    publish(&ring);
}

/// The keyring file as it is now, opened with this server's keyring key.
pub fn reread() -> Result<Keyring, String> {
    let path = startup::keyring_path();
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("cannot read keyring \"{}\": {e}", path.display()))?;
    let mut ring = KeyringFile::parse(&bytes)
        .and_then(|f| f.open_with_keyring_key(state::get().keyring.keyring_key()))
        .map_err(|e| format!("keyring \"{}\": {e}", path.display()))?;
    ring.opened_with = state::get().fingerprint.clone();
    Ok(ring)
}

/// Makes `ring`'s data keys the ones every process uses; its highest
/// generation becomes the one for new writes. Waits for writes in flight.
pub fn publish(ring: &Keyring) {
    let mut table = TABLE.exclusive();
    table.load(ring);
    EPOCH.get().store(table.epoch, Ordering::Release);
}

/// Waits until no write that chose its generation before this call is
/// still in flight.
pub fn fence() {
    drop(TABLE.exclusive());
}

fn cached() -> Option<Rc<Keys>> {
    LOCAL.with(|l| l.borrow().clone())
}

fn rebuild(table: &KeyTable) -> Rc<Keys> {
    let ring = state::get().keyring.with_data_keys(table.data_keys());
    let keys = Rc::new(Keys {
        epoch: table.epoch,
        page: PageCipher::new(&ring),
        ring,
    });
    LOCAL.with(|l| *l.borrow_mut() = Some(keys.clone()));
    keys
}

/// This process's keys, brought up to date with the shared table.
pub fn current() -> Rc<Keys> {
    let epoch = EPOCH.get().load(Ordering::Acquire);
    match cached() {
        Some(k) if k.epoch == epoch => k,
        _ => rebuild(&TABLE.share()),
    }
}

/// Keys for a write, with the table held in shared mode until the guard is
/// dropped (after the write has been handed to the kernel).
pub struct WriteGuard {
    _table: PgLwLockShareGuard<'static, KeyTable>,
    pub keys: Rc<Keys>,
}

impl WriteGuard {
    pub fn generation(&self) -> u8 {
        self.keys.ring.current_generation()
    }
}

pub fn for_write() -> WriteGuard {
    let table = TABLE.share();
    let keys = match cached() {
        Some(k) if k.epoch == table.epoch => k,
        _ => rebuild(&table),
    };
    WriteGuard {
        _table: table,
        keys,
    }
}
