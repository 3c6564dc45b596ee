//! Configuration parameters. Key sources can only be set at server start.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

pub static PRINCIPAL_KEY_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static PRINCIPAL_KEY_COMMAND: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static DATA_ENCRYPTION: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static WAL_ENCRYPTION: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static ALLOW_CORE_DUMPS: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static WAL_STREAM_GENERATION: GucSetting<StreamGeneration> =
    GucSetting::<StreamGeneration>::new(StreamGeneration::Oldest);

/// Which data key generation walsenders seal what they send under
/// (`docs/format/wal-stream.md`).
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum StreamGeneration {
    #[name = c"oldest"]
    Oldest,
    #[name = c"current"]
    Current,
}

pub fn register() {
    GucRegistry::define_string_guc(
        c"tde.principal_key_file",
        c"File holding the principal key (64 hexadecimal digits, mode 0600).",
        c"Keep it outside the data directory.",
        &PRINCIPAL_KEY_FILE,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"tde.principal_key_command",
        c"Shell command the postmaster runs at start to obtain the principal key.",
        c"The command must print 64 hexadecimal digits on standard output.",
        &PRINCIPAL_KEY_COMMAND,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_bool_guc(
        c"tde.data_encryption",
        c"Encrypt relation pages as they are written.",
        c"Pages written while off are stored in plaintext; encrypted pages stay readable either way.",
        &DATA_ENCRYPTION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"tde.wal_encryption",
        c"Encrypt newly written WAL.",
        c"Segments written while off are stored in plaintext; encrypted segments stay readable either way.",
        &WAL_ENCRYPTION,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"tde.wal_stream_generation",
        c"Data key generation that WAL sent to replication clients is sealed under.",
        c"oldest (default): the oldest the keyring holds, so standbys cloned before a rotation keep streaming; current: the one new writes use, so streams follow rotations (standbys must import the keyring first).",
        &WAL_STREAM_GENERATION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"tde.allow_core_dumps",
        c"Let server processes write core dumps, which then contain encryption keys.",
        c"Off: server processes are not dumpable, so no core dump is written.",
        &ALLOW_CORE_DUMPS,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    // SAFETY: called from _PG_init in the postmaster, where defining and
    // reserving GUCs is allowed; the string is a static C string.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"tde".as_ptr()) };
}

pub fn key_file() -> Option<String> {
    PRINCIPAL_KEY_FILE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

pub fn key_command() -> Option<String> {
    PRINCIPAL_KEY_COMMAND
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}
