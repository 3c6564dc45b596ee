//! The little we read from `global/pg_control`: the system identifier (its
//! first field) and the redo pointer of the last completed checkpoint
//! (`checkPointCopy.redo`), at the same offset in every supported version:
//! `system_identifier` (8 bytes), `pg_control_version` and
//! `catalog_version_no` (4 each), `state` (4, then 4 of padding), `time`
//! (8), `checkPoint` (8), then `checkPointCopy`, which starts with `redo`.

use std::path::Path;

use crate::{Error, Result};

pub fn system_identifier(pgdata: &Path) -> Result<u64> {
    let path = pgdata.join("global").join("pg_control");
    let bytes = std::fs::read(&path).map_err(|e| Error::ControlFile {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::ControlFile {
            path: path.clone(),
            reason: "file is shorter than 8 bytes".into(),
        })?;
    Ok(u64::from_le_bytes(first))
}

/// Where `checkPointCopy.redo` sits in `ControlFileData`.
const REDO_AT: usize = 40;

/// The redo pointer of the last completed checkpoint, from the bytes of a
/// control file (as read, or as being written); `None` when too short.
pub fn checkpoint_redo(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(REDO_AT..REDO_AT + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// [`checkpoint_redo`] of `pgdata`'s `global/pg_control`.
pub fn read_checkpoint_redo(pgdata: &Path) -> Result<u64> {
    let path = pgdata.join("global").join("pg_control");
    let bytes = std::fs::read(&path).map_err(|e| Error::ControlFile {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    checkpoint_redo(&bytes).ok_or_else(|| Error::ControlFile {
        path,
        reason: "file is shorter than 48 bytes".into(),
    })
}
