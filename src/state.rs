//! Process-global state, built in the postmaster before backends fork and
//! inherited by every child process. The data keys in use are in
//! [`crate::keys`], which can change while the server runs.

use std::sync::OnceLock;

use tde_core::keyring::Keyring;

use crate::startup::Loaded;

pub struct State {
    /// Fingerprint of the principal key the server started with.
    pub fingerprint: String,
    /// The keyring as opened at start-up. Its keyring key wraps the data
    /// keys; principal-key rotation rewraps that key, and data-key changes
    /// reread the file with it.
    pub keyring: Keyring,
}

static STATE: OnceLock<State> = OnceLock::new();

pub fn install(loaded: Loaded) {
    let state = State {
        fingerprint: loaded.keyring.opened_with.clone(),
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
