//! Reading and rewriting the keyring file while the server runs: one change
//! at a time across all backends (a file lock), the file reread under the
//! lock so no change is lost, and an atomic rewrite.

use std::fs::File;

use tde_core::keyring::{write_atomic, KeyringFile};

use crate::{errors, startup};

/// Held while the keyring is read, changed and written back.
pub struct KeyringLock(#[allow(dead_code)] File);

/// Waits for the keyring lock (shared with `tdectl keyring`), answering
/// query cancellation while it waits.
pub fn lock() -> KeyringLock {
    let path = startup::data_dir()
        .join(startup::KEYRING_DIR)
        .join("keyring.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| pgrx::error!("tde: cannot open \"{}\": {e}", path.display()));
    loop {
        match file.try_lock() {
            Ok(()) => return KeyringLock(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                pgrx::check_for_interrupts!();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                pgrx::error!("tde: cannot lock the keyring ({}): {e}", path.display())
            }
        }
    }
}

/// The keyring file as stored now. The lock must be held.
pub fn read(_lock: &KeyringLock) -> KeyringFile {
    let path = startup::keyring_path();
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| pgrx::error!("tde: cannot read keyring \"{}\": {e}", path.display()));
    KeyringFile::parse(&bytes).unwrap_or_else(|e| {
        errors::raise(&format!("cannot read keyring \"{}\"", path.display()), &e)
    })
}

/// Replaces the keyring file atomically. The lock must be held.
pub fn write(_lock: &KeyringLock, file: &KeyringFile) {
    let path = startup::keyring_path();
    write_atomic(&path, file.to_json().as_bytes())
        .unwrap_or_else(|e| pgrx::error!("tde: cannot write keyring \"{}\": {e}", path.display()));
}
