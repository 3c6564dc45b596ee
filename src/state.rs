//! Process-global state, built in the postmaster before backends fork and
//! inherited by every child process.

use std::sync::OnceLock;

use pgrx::pg_sys;
use tde_core::keyring::Keyring;
use tde_core::page::PageCipher;
use tde_core::wal::WalCipher;

use crate::startup::Loaded;

pub struct State {
    pub cipher: PageCipher,
    /// Data key generation used for new page writes.
    pub cipher_generation: u8,
    /// Fingerprint of the principal key the server started with.
    pub fingerprint: String,
    /// The unwrapped keyring, to wrap the data keys under a new principal
    /// key when it is rotated.
    pub keyring: Keyring,
    /// Template for each process's WAL cipher (which caches segment keys).
    pub wal: WalCipher,
}

static STATE: OnceLock<State> = OnceLock::new();

pub fn install(loaded: Loaded) {
    let state = State {
        cipher: PageCipher::new(&loaded.keyring),
        cipher_generation: loaded.keyring.current_generation(),
        fingerprint: loaded.keyring.opened_with.clone(),
        // SAFETY: plain read of a global the postmaster set from pg_control
        // before loading preload libraries.
        wal: WalCipher::new(&loaded.keyring, unsafe { pg_sys::wal_segment_size } as u32)
            .unwrap_or_else(|e| crate::errors::raise("cannot set up WAL encryption", &e)),
        keyring: loaded.keyring,
    };
    if STATE.set(state).is_err() {
        pgrx::error!("tde: initialized twice");
    }
}

pub fn get() -> &'static State {
    STATE
        .get()
        .expect("tde state is installed in _PG_init before any storage access")
}
