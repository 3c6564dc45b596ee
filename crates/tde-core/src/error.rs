//! One error type for the core. Messages never carry key bytes.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("principal key file \"{path}\" cannot be read: {source}")]
    KeyFileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("principal key file \"{path}\" is accessible by group or others (mode {mode:04o}); it must be mode 0600 or stricter")]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error("principal key file \"{path}\" is not a regular file")]
    KeyFileNotRegular { path: PathBuf },
    #[error("principal key from {source_name} is malformed: {reason}")]
    KeyFormat { source_name: String, reason: String },
    #[error("principal key command could not be run: {0}")]
    KeyCommandSpawn(std::io::Error),
    #[error("principal key command failed ({status}){stderr}")]
    KeyCommandFailed { status: String, stderr: String },
    #[error(
        "no principal key configured: set tde.principal_key_file or tde.principal_key_command"
    )]
    NoKeySource,
    #[error(
        "both tde.principal_key_file and tde.principal_key_command are set; configure exactly one"
    )]
    TwoKeySources,

    #[error("keyring \"{path}\" is missing, but the data directory already holds encrypted data ({evidence}); refusing to create a new keyring. Restore the keyring from a backup")]
    KeyringMissing { path: PathBuf, evidence: String },
    #[error("keyring \"{path}\" cannot be read: {source}")]
    KeyringUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keyring is corrupt: {0}")]
    KeyringCorrupt(String),
    #[error(
        "keyring format version {found} is not supported (this build reads version {supported})"
    )]
    KeyringVersion { found: u64, supported: u64 },
    #[error("the keyring is in format 1 (tde 0.1.0): the server rewrites it in the current format when it starts, or run \"tdectl keyring migrate\"")]
    KeyringFormat1,
    #[error("wrong principal key: the keyring expects fingerprint {expected}, the configured key has fingerprint {actual}")]
    WrongPrincipalKey { expected: String, actual: String },
    #[error("keyring authentication failed for principal key {fingerprint}: the keyring has been tampered with or is corrupt")]
    KeyringTampered { fingerprint: String },
    #[error("keyring belongs to another cluster: keyring system identifier {keyring}, this cluster's is {cluster}")]
    ForeignKeyring { keyring: u64, cluster: u64 },
    #[error("cannot write keyring \"{path}\": {source}")]
    KeyringWrite {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("the keyring's data keys fail authentication under this server's keyring key: the file has been tampered with, is corrupt, or belongs to another keyring")]
    KeyringBodyMismatch,

    #[error("cannot change principal keys: {0}")]
    PrincipalKeyChange(String),
    #[error("cannot change data keys: {0}")]
    DataKeyChange(String),
    #[error("cannot read pg_control \"{path}\": {reason}")]
    ControlFile { path: PathBuf, reason: String },

    #[error("page {block} is encrypted with data key generation {generation}, which the keyring does not hold")]
    UnknownGeneration { block: u32, generation: u8 },
    #[error("page {block} carries encryption format {format}, which this build does not read")]
    UnknownPageFormat { block: u32, format: u8 },
    #[error("page {block} has an unexpected header (flags {flags:#06x}, size/version {size_version:#06x}); refusing to write it")]
    UnexpectedPageHeader {
        block: u32,
        flags: u16,
        size_version: u16,
    },
    #[error("WAL segment size {0} is not valid: it must be a power of two from 1 MB to 1 GB")]
    InvalidWalSegmentSize(u32),
    #[error("data key generation 0 is reserved for \"not encrypted\"")]
    ReservedGeneration,
    #[error("WAL page at {} is encrypted with data key generation {generation}, which the keyring does not hold", lsn(*.pageaddr))]
    UnknownWalGeneration { pageaddr: u64, generation: u8 },
    #[error("WAL page at {} {detail}", lsn(*.pageaddr))]
    UnexpectedWalPage { pageaddr: u64, detail: String },
    #[error("a replication stream starts at {}, inside a WAL page whose header it did not send: tde can only send WAL from a page boundary, where the receiver gets the page's salt (every stock receiver starts at a segment boundary)", lsn(*.at))]
    WalStreamStartsMidPage { at: u64 },
    #[error("the keyring's data key generation {generation} does not decrypt the WAL: the record at {} in segment {segment} fails its CRC when decrypted with it, so this keyring is not the one that encrypted this WAL (a copy from another node, or one older or newer than a data key rotation). Put back the keyring this WAL was written with", lsn(*.record))]
    WalKeyMismatch {
        generation: u8,
        segment: String,
        record: u64,
    },
    #[error("cannot read WAL directory \"{path}\": {reason}")]
    WalUnreadable { path: PathBuf, reason: String },
    #[error("WAL range at segment offset {offset} of {len} bytes is not made of whole {page_size}-byte pages inside one {segment_size}-byte segment")]
    WalRangeMisaligned {
        offset: u64,
        len: usize,
        page_size: usize,
        segment_size: u32,
    },
    #[error("operating system random number generator failed: {0}")]
    Random(String),
}

/// A WAL position the way PostgreSQL prints it (`%X/%X`).
pub fn lsn(pos: u64) -> String {
    format!("{:X}/{:X}", pos >> 32, pos as u32)
}
