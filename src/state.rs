//! Process-global state, built in the postmaster before backends fork and
//! inherited by every child process.

use std::sync::OnceLock;

use tde_core::page::PageCipher;

use crate::startup::Loaded;

pub struct State {
    pub cipher: PageCipher,
    /// Data key generation used for new page writes.
    pub cipher_generation: u8,
    pub fingerprint: String,
}

static STATE: OnceLock<State> = OnceLock::new();

pub fn install(loaded: Loaded) {
    let state = State {
        cipher: PageCipher::new(&loaded.keyring),
        cipher_generation: loaded.keyring.current_generation(),
        fingerprint: loaded.keyring.opened_with.clone(),
    };
    // The keyring (and its data keys) is dropped and wiped here; only the
    // expanded page keys remain.
    drop(loaded);
    if STATE.set(state).is_err() {
        pgrx::error!("tde: initialized twice");
    }
}

pub fn get() -> &'static State {
    STATE
        .get()
        .expect("tde state is installed in _PG_init before any storage access")
}
