//! Keys out of core dumps. Every server process holds key material: the
//! data keys in shared memory, the keyring key and the expanded ciphers in
//! its own heap, derived keys on its stack while it encrypts. A core dump
//! of any of them (with `core_pattern = core` it lands in the data
//! directory, where base backups pick it up) would carry those keys.
//!
//! Marking single regions `MADV_DONTDUMP` cannot cover the heap and stack
//! copies, so the postmaster makes itself not dumpable before it fetches
//! any key, and every process it forks inherits that: no core dump is
//! written at all. `tde.allow_core_dumps = on` gives core dumps back for
//! debugging, knowing that they contain keys.

use pgrx::prelude::*;

use crate::guc;

pub fn protect() {
    if guc::ALLOW_CORE_DUMPS.get() {
        ereport!(
            PgLogLevel::WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            "tde: tde.allow_core_dumps is on: core dumps of server processes contain encryption keys",
            "Treat every core file as secret as the principal key, and turn the setting off when done debugging."
        );
        return;
    }
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
            format!("tde: cannot keep encryption keys out of core dumps: prctl(PR_SET_DUMPABLE) failed: {e}"),
            "Set tde.allow_core_dumps = on to start anyway; core dumps will then contain keys."
        );
    }
}
