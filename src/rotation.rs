//! Online principal-key rotation: the keyring is rewrapped under a new
//! principal key; the data keys, and so every page and WAL segment, stay as
//! they are.

use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use tde_core::provider::{KeyCommand, KeyFile, KeyProvider};

use crate::{errors, keyring_io, state};

// SAFETY: the name is unique to this extension.
static CURRENT: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"tde_current_principal_key") };

fn parse_fingerprint(fp: &str) -> u64 {
    u64::from_str_radix(fp, 16).unwrap_or(0)
}

pub fn init() {
    pg_shmem_init!(CURRENT = AtomicU64::new(parse_fingerprint(&state::get().fingerprint)));
}

/// Fingerprint of the principal key that currently opens the keyring (the
/// start-up key, or the key of the latest rotation), shared by all backends.
pub fn current_fingerprint() -> String {
    format!("{:016x}", CURRENT.get().load(Ordering::Acquire))
}

/// Rewraps the keyring under a new principal key read from `new_key_file`
/// or printed by `new_key_command`, replacing the current principal key;
/// other principal keys (recovery keys) keep working. Returns the new
/// fingerprint. Point `tde.principal_key_file` / `tde.principal_key_command`
/// at the new key before the next restart.
#[pg_extern(volatile, parallel_unsafe)]
fn tde_rotate_principal_key(
    new_key_file: default!(Option<&str>, "NULL"),
    new_key_command: default!(Option<&str>, "NULL"),
) -> String {
    errors::require_superuser("rotate the principal key");
    let provider: Box<dyn KeyProvider> = match (new_key_file, new_key_command) {
        (Some(path), None) => Box::new(KeyFile { path: path.into() }),
        (None, Some(command)) => Box::new(KeyCommand {
            command: command.into(),
        }),
        _ => pgrx::error!("tde: give exactly one of new_key_file and new_key_command"),
    };
    let new = provider
        .fetch()
        .unwrap_or_else(|e| errors::raise("cannot obtain the new principal key", &e));
    let lock = keyring_io::lock();
    let old = current_fingerprint();
    let updated = keyring_io::read(&lock)
        .with_principal_replaced(&state::get().keyring, &old, &new)
        .unwrap_or_else(|e| errors::raise("cannot rotate the principal key", &e));
    keyring_io::write(&lock, &updated);
    let fingerprint = new.fingerprint();
    CURRENT
        .get()
        .store(parse_fingerprint(&fingerprint), Ordering::Release);
    drop(lock);
    ereport!(
        NOTICE,
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        format!("tde: principal key {old} replaced by {fingerprint}"),
        "Point tde.principal_key_file or tde.principal_key_command at the new key before the next restart; the old key no longer opens the keyring."
    );
    fingerprint
}
