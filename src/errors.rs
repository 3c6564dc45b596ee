//! The one place where core errors become PostgreSQL errors with SQLSTATEs.

use pgrx::prelude::*;
use tde_core::Error;

fn sqlstate(e: &Error) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match e {
        Error::KeyFileUnreadable { .. }
        | Error::KeyringUnreadable { .. }
        | Error::KeyringWrite { .. }
        | Error::ControlFile { .. } => ERRCODE_IO_ERROR,
        Error::KeyFilePermissions { .. } | Error::KeyFileNotRegular { .. } => {
            ERRCODE_INSUFFICIENT_PRIVILEGE
        }
        Error::KeyFormat { .. }
        | Error::KeyCommandSpawn(_)
        | Error::KeyCommandFailed { .. }
        | Error::NoKeySource
        | Error::TwoKeySources => ERRCODE_CONFIG_FILE_ERROR,
        Error::PrincipalKeyChange(_) | Error::DataKeyChange(_) => ERRCODE_INVALID_PARAMETER_VALUE,
        Error::WrongPrincipalKey { .. } => ERRCODE_INVALID_PASSWORD,
        Error::KeyringMissing { .. } => ERRCODE_UNDEFINED_FILE,
        Error::KeyringCorrupt(_)
        | Error::KeyringVersion { .. }
        | Error::KeyringFormat1
        | Error::KeyringTampered { .. }
        | Error::KeyringBodyMismatch
        | Error::ForeignKeyring { .. }
        | Error::UnknownGeneration { .. }
        | Error::UnknownPageFormat { .. }
        | Error::UnknownWalGeneration { .. }
        | Error::UnexpectedWalPage { .. }
        | Error::WalKeyMismatch { .. } => ERRCODE_DATA_CORRUPTED,
        Error::WalUnreadable { .. } => ERRCODE_IO_ERROR,
        Error::WalStreamStartsMidPage { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
        Error::InvalidWalSegmentSize(_)
        | Error::ReservedGeneration
        | Error::WalRangeMisaligned { .. } => ERRCODE_INTERNAL_ERROR,
        Error::UnexpectedPageHeader { .. } | Error::Random(_) => ERRCODE_INTERNAL_ERROR,
    }
}

/// Raises `e` as an ERROR (FATAL in the postmaster at start-up) prefixed
/// with `context`. Messages carry no key material by construction.
pub fn raise(context: &str, e: &Error) -> ! {
    let message = format!("tde: {context}: {e}");
    ereport!(ERROR, sqlstate(e), message);
}

/// Refuses unless the current role is a superuser; `action` completes
/// "only superusers may …".
pub fn require_superuser(action: &str) {
    // SAFETY: superuser() only reads the current role.
    if !unsafe { pg_sys::superuser() } {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("tde: only superusers may {action}")
        );
    }
}

pub fn in_recovery() -> bool {
    // SAFETY: RecoveryInProgress() only reads shared state.
    unsafe { pg_sys::RecoveryInProgress() }
}
