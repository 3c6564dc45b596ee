//! `tdectl prepare-upgrade`: gives the new cluster of a pg_upgrade the old
//! cluster's keyring. pg_upgrade copies, links or clones the relation files,
//! so the new cluster must hold the same data keys; it also has a new system
//! identifier, to which the keyring is rebound (every principal key keeps
//! opening it).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tde_core::control;
use tde_core::keyring::{write_atomic, KeyringFile};

use crate::Options;

pub fn prepare_upgrade(o: &Options) -> Result<(), String> {
    let [new_pgdata] = o.positional.as_slice() else {
        return Err("prepare-upgrade needs the new cluster's data directory".into());
    };
    if !new_pgdata.join("PG_VERSION").is_file() {
        return Err(format!(
            "\"{}\" is not a PostgreSQL data directory (run initdb for the new cluster first)",
            new_pgdata.display()
        ));
    }
    let file = crate::read_keyring(o)?;
    let principal = o.provider.fetch().map_err(|e| e.to_string())?;
    let ring = file.open(&principal).map_err(|e| e.to_string())?;
    if let Some(old_pgdata) = o.keyring.parent().and_then(Path::parent) {
        if let Ok(old_sysid) = control::system_identifier(old_pgdata) {
            if file.system_identifier().map_err(|e| e.to_string())? != old_sysid {
                return Err(format!(
                    "keyring \"{}\" does not belong to the cluster in \"{}\"",
                    o.keyring.display(),
                    old_pgdata.display()
                ));
            }
        }
    }
    let new_sysid = control::system_identifier(new_pgdata).map_err(|e| e.to_string())?;
    let dir = new_pgdata.join("pg_tde");
    let target = dir.join("keyring.json");
    if target.exists() {
        // A rerun (the old cluster may have changed keys since) rewrites a
        // keyring this command wrote; a keyring of the new cluster's own is
        // refused.
        let existing = std::fs::read(&target)
            .ok()
            .and_then(|b| KeyringFile::parse(&b).ok());
        if existing.is_none_or(|e| e.cluster_salt != file.cluster_salt) {
            return Err(format!(
                "the new cluster already has a keyring of its own (\"{}\"): it was started with tde before; initdb it again and run this before its first start",
                target.display()
            ));
        }
    }
    // The new cluster starts a new WAL history that reaches LSNs the old
    // cluster used; a fresh data key generation keeps page IVs of the two
    // apart (should the old cluster ever run again after --copy).
    let moved = file
        .rebound_to(&ring, new_sysid)
        .and_then(|f| f.with_data_key_added(&ring))
        .map_err(|e| e.to_string())?
        .0;
    // Owned like the new data directory, which the server's OS user owns.
    let owner = std::fs::metadata(new_pgdata).map_err(|e| e.to_string())?;
    let create = || -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)?;
        std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid()))?;
        write_atomic(&target, moved.to_json().as_bytes())?;
        std::os::unix::fs::chown(&target, Some(owner.uid()), Some(owner.gid()))
    };
    create().map_err(|e| format!("cannot write \"{}\": {e}", target.display()))?;
    println!(
        "wrote \"{}\" for system identifier {new_sysid} (opens with: {})",
        target.display(),
        moved.fingerprints().join(", ")
    );
    println!(
        "next: in \"{}\" set shared_preload_libraries = 'tde' and the same tde.principal_key_file or tde.principal_key_command as the old cluster, then run pg_upgrade",
        new_pgdata.join("postgresql.conf").display()
    );
    Ok(())
}
