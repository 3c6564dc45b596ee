//! Start-up in the postmaster: fetch the principal key, then open the
//! keyring — or create it, when this data directory has never been
//! encrypted.

use std::ffi::CStr;
use std::path::PathBuf;

use pgrx::prelude::*;
use tde_core::keyring::{open_for_cluster, write_atomic, Keyring, KeyringFile};
use tde_core::keyring_v1;
use tde_core::provider::{KeyCommand, KeyFile, KeyProvider};
use tde_core::{control, scan, wal_scan, Error};

use crate::{errors, guc, keyring_io};

pub struct Loaded {
    pub keyring: Keyring,
}

pub const KEYRING_DIR: &str = "pg_tde";
pub const KEYRING_FILE: &str = "keyring.json";

pub fn data_dir() -> PathBuf {
    // SAFETY: DataDir is set by the postmaster before shared_preload_libraries
    // are loaded and never freed; it is a NUL-terminated C string.
    let dir = unsafe { CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(dir.to_string_lossy().into_owned())
}

pub fn keyring_path() -> PathBuf {
    data_dir().join(KEYRING_DIR).join(KEYRING_FILE)
}

fn provider() -> Result<Box<dyn KeyProvider>, Error> {
    match (guc::key_file(), guc::key_command()) {
        (Some(_), Some(_)) => Err(Error::TwoKeySources),
        (Some(path), None) => Ok(Box::new(KeyFile { path: path.into() })),
        (None, Some(command)) => Ok(Box::new(KeyCommand { command })),
        (None, None) => Err(Error::NoKeySource),
    }
}

/// The principal key, fetched afresh from `tde.principal_key_file` or
/// `tde.principal_key_command` (the server keeps no copy after start-up).
pub fn principal_key() -> Result<tde_core::principal::PrincipalKey, Error> {
    provider().and_then(|p| p.fetch())
}

/// Refuses to start where a torn page write could not read back the way it
/// would without tde. Every rewrite of a page under a new LSN changes all of
/// its stored bytes, which is safe because PostgreSQL logs a full-page image
/// of the page first; with `full_page_writes = off` it does not (see
/// `docs/format/pages.md`, "Torn writes").
///
/// pg_upgrade starts the new cluster in binary-upgrade mode with
/// `full_page_writes = off` and `fsync = off`: a crash there leaves a
/// cluster pg_upgrade must build again from `initdb`, so no torn page of
/// it is ever read back, and tde lets it run.
pub fn require_full_page_writes() {
    // SAFETY: plain reads of server variables set from the postmaster's
    // options and postgresql.conf before shared_preload_libraries are loaded.
    if !unsafe { pg_sys::fullPageWrites } && !unsafe { pg_sys::IsBinaryUpgrade } {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            "tde: full_page_writes is off; tde requires it on",
            "tde rewrites every stored byte of a page whose LSN changed, relying on the full-page image PostgreSQL logs before such a change: without it a torn write of an encrypted page cannot be read back. Set full_page_writes = on and start the server again."
        );
    }
}

pub fn load_keys() -> Loaded {
    let principal =
        principal_key().unwrap_or_else(|e| errors::raise("cannot obtain the principal key", &e));
    let pgdata = data_dir();
    let sysid = control::system_identifier(&pgdata)
        .unwrap_or_else(|e| errors::raise("cannot identify the cluster", &e));
    let dir = pgdata.join(KEYRING_DIR);
    let path = dir.join(KEYRING_FILE);
    let keyring = match std::fs::read(&path) {
        Ok(bytes) if keyring_v1::is_format_1(&bytes) => migrate_format_1(&path, &principal, sysid),
        Ok(bytes) => KeyringFile::parse(&bytes)
            .and_then(|file| open_for_cluster(&file, &principal, sysid))
            .unwrap_or_else(|e| {
                errors::raise(&format!("cannot open keyring \"{}\"", path.display()), &e)
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_keyring(&pgdata, &dir, &path, &principal, sysid)
        }
        Err(source) => errors::raise(
            "cannot open keyring",
            &Error::KeyringUnreadable {
                path: path.clone(),
                source,
            },
        ),
    };
    check_keys_decrypt_wal(&pgdata, &keyring);
    Loaded { keyring }
}

/// Refuses to start with a keyring whose data keys do not decrypt the WAL
/// in `pg_wal` (see `tde_core::wal_check`): recovery would otherwise take
/// the undecryptable WAL for its end.
fn check_keys_decrypt_wal(pgdata: &std::path::Path, keyring: &Keyring) {
    // SAFETY: plain read of a global set from pg_control before
    // shared_preload_libraries are loaded.
    let segment_size = unsafe { pg_sys::wal_segment_size } as u32;
    let checked = tde_core::wal::WalCipher::new(keyring, segment_size).and_then(|mut cipher| {
        tde_core::wal_check::check_keys_decrypt_wal(&pgdata.join("pg_wal"), &mut cipher)
    });
    if let Err(e) = checked {
        errors::raise("the keyring does not match the WAL", &e);
    }
}

/// Rewrites a keyring written by tde 0.1.0 (format 1) in the current
/// format, under the keyring lock so `tdectl` cannot interleave. Only a
/// keyring that no other principal key opens is migrated here: the server
/// holds only its own key, and dropping a recovery key unasked would leave
/// the cluster with one key fewer than its administrator set up.
fn migrate_format_1(
    path: &std::path::Path,
    principal: &tde_core::principal::PrincipalKey,
    sysid: u64,
) -> Keyring {
    let lock = keyring_io::lock();
    let bytes = std::fs::read(path).unwrap_or_else(|source| {
        errors::raise(
            "cannot open keyring",
            &Error::KeyringUnreadable {
                path: path.to_path_buf(),
                source,
            },
        )
    });
    let context = format!(
        "cannot migrate keyring \"{}\" from format 1",
        path.display()
    );
    if !keyring_v1::is_format_1(&bytes) {
        // Migrated by someone else while this server waited for the lock.
        return KeyringFile::parse(&bytes)
            .and_then(|file| open_for_cluster(&file, principal, sysid))
            .unwrap_or_else(|e| errors::raise(&context, &e));
    }
    let migration = keyring_v1::migrate(&bytes, &[principal], Some(sysid))
        .unwrap_or_else(|e| errors::raise(&context, &e));
    if !migration.not_carried.is_empty() {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "tde: {context}: it also opens with principal keys {}, which the server does not hold",
                migration.not_carried.join(", ")
            ),
            format!(
                "With the server stopped, run \"tdectl keyring migrate --pgdata {} --key-file <this key> --also-key-file <each other key>\" (or add --drop-other-keys to keep only the keys given), then start the server.",
                data_dir().display()
            )
        );
    }
    keyring_io::write(&lock, &migration.file);
    log!(
        "tde: rewrote keyring \"{}\" from format 1 (tde 0.1.0) in format 2, data key generations {}",
        path.display(),
        migration
            .ring
            .generations()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    migration.ring
}

/// A keyring is only ever created for a data directory that holds no
/// encrypted page: a fresh keyring for an encrypted cluster would make its
/// data unreadable for good.
fn create_keyring(
    pgdata: &std::path::Path,
    dir: &std::path::Path,
    path: &std::path::Path,
    principal: &tde_core::principal::PrincipalKey,
    sysid: u64,
) -> Keyring {
    let missing = |evidence: String| {
        errors::raise(
            "refusing to start",
            &Error::KeyringMissing {
                path: path.to_path_buf(),
                evidence,
            },
        )
    };
    if dir.exists() {
        missing(format!("directory \"{}\" exists", dir.display()));
    }
    // pg_upgrade starts the new cluster before it brings the old cluster's
    // files over, so the scan below cannot see them yet.
    // SAFETY: a plain read of a flag the postmaster set from its options.
    if unsafe { pg_sys::IsBinaryUpgrade } {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "tde: refusing to create a keyring in a cluster started by pg_upgrade (\"{}\" is missing)",
                path.display()
            ),
            "If the old cluster is encrypted, run tdectl prepare-upgrade for the new cluster first; if it is plaintext, start the new cluster once with tde before running pg_upgrade."
        );
    }
    // Archive recovery and standbys replay WAL that is not in pg_wal yet: an
    // archive or a primary may hold it encrypted under the keys of the
    // keyring this data directory lost, and a new keyring (generation 1
    // again, another key) would make the replay take it for the end of WAL.
    if let Some(signal) = ["recovery.signal", "standby.signal"]
        .into_iter()
        .find(|f| pgdata.join(f).exists())
    {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "tde: refusing to create a keyring for a server that starts recovery (\"{signal}\" exists, \"{}\" is missing)",
                path.display()
            ),
            "The WAL it will replay may be encrypted under the keys of the cluster this data directory comes from: put that cluster's pg_tde/keyring.json in place (a base backup carries it). If the primary does not run tde, start it with tde first and take the base backup after that."
        );
    }
    match scan::find_encrypted_page(pgdata) {
        Ok(Some((file, block))) => missing(format!(
            "page {block} of \"{}\" is encrypted",
            file.strip_prefix(pgdata).unwrap_or(&file).display()
        )),
        Ok(None) => {}
        Err(e) => pgrx::error!("tde: cannot scan the data directory for encrypted pages: {e}"),
    }
    // WAL too: with tde.data_encryption = off, or before the first
    // checkpoint, encrypted WAL may be all there is, and a fresh keyring
    // would make recovery take it for the end of WAL.
    match wal_scan::find_encrypted_wal_page(&pgdata.join("pg_wal")) {
        Ok(Some(found)) => missing(format!(
            "WAL page at offset {} of \"{}\" is encrypted (data key generation {})",
            found.offset,
            found
                .file
                .strip_prefix(pgdata)
                .unwrap_or(&found.file)
                .display(),
            found.generation
        )),
        Ok(None) => {}
        Err(e) => pgrx::error!("tde: cannot scan pg_wal for encrypted WAL pages: {e}"),
    }
    let keyring =
        Keyring::generate(sysid).unwrap_or_else(|e| errors::raise("cannot generate data keys", &e));
    let file = keyring
        .seal(&[principal])
        .unwrap_or_else(|e| errors::raise("cannot seal the keyring", &e));
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        write_atomic(path, file.to_json().as_bytes())
    };
    if let Err(source) = write() {
        errors::raise(
            "cannot create the keyring",
            &Error::KeyringWrite {
                path: path.to_path_buf(),
                source,
            },
        );
    }
    log!(
        "tde: created keyring \"{}\" (principal key {})",
        path.display(),
        principal.fingerprint()
    );
    let mut keyring = keyring;
    keyring.opened_with = principal.fingerprint();
    keyring
}
