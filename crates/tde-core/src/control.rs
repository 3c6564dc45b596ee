//! The little we read from `global/pg_control`: the system identifier, which
//! is its first field in every PostgreSQL version.

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
