//! SQL functions (`CREATE EXTENSION tde`).

use std::path::PathBuf;

use pgrx::prelude::*;
use pgrx::PgRelation;
use tde_core::scan;

use crate::{attach, guc, keys, startup};

// pgrx reads the column names from this signature, so it cannot be aliased.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe, name = "tde_status")]
fn tde_status_v2() -> TableIterator<
    'static,
    (
        name!(attach, String),
        name!(server_version, String),
        name!(principal_key_fingerprint, String),
        name!(data_key_generation, i32),
        name!(data_key_generations, String),
        name!(data_encryption, bool),
        name!(wal_encryption, bool),
        name!(wal_segment, Option<String>),
        name!(wal_segment_salt, Option<String>),
    ),
> {
    let keys = keys::current();
    let attach = attach::attached()
        .map(|a| a.description.clone())
        .unwrap_or_else(|| "not attached".into());
    // SAFETY: PG_VERSION_STR-like runtime value; copied at once.
    let version = unsafe {
        let p = pg_sys::GetConfigOption(c"server_version".as_ptr(), false, false);
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    let attach = match attach::wal_attached() {
        Some(wal) => format!("{attach}; {wal}"),
        None => attach,
    };
    let (segment, salt) = current_segment_salt();
    TableIterator::once((
        attach,
        version,
        crate::rotation::current_fingerprint(),
        keys.ring.current_generation() as i32,
        keys.ring
            .generations()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        guc::DATA_ENCRYPTION.get(),
        guc::WAL_ENCRYPTION.get(),
        segment,
        salt,
    ))
}

/// The WAL segment holding the flush position and the salt of the last page
/// written to it, as stored on disk (NULL when that page is plaintext).
/// After a segment switch the switched segment's tail was never written, so
/// the search steps back to the last page that carries a header.
fn current_segment_salt() -> (Option<String>, Option<String>) {
    use std::os::unix::fs::FileExt;
    // SAFETY: plain calls into xlog.c that are valid in any backend.
    let (lsn, tli, size) = unsafe {
        if pg_sys::RecoveryInProgress() {
            return (None, None);
        }
        let mut tli: pg_sys::TimeLineID = 0;
        let lsn = pg_sys::GetFlushRecPtr(&mut tli);
        (lsn.saturating_sub(1), tli, pg_sys::wal_segment_size as u64)
    };
    let page_size = tde_core::wal::WAL_PAGE_SIZE as u64;
    let segno = lsn / size;
    let per_log = 0x1_0000_0000 / size;
    let name = format!("{tli:08X}{:08X}{:08X}", segno / per_log, segno % per_log);
    let path = startup::data_dir().join("pg_wal").join(&name);
    // std's file API calls libc directly, so this reads the bytes as stored.
    let Ok(file) = std::fs::File::open(&path) else {
        return (Some(name), None);
    };
    let mut page = [0u8; tde_core::wal::WAL_PAGE_SIZE];
    let mut at = lsn % size / page_size * page_size;
    loop {
        if file.read_exact_at(&mut page, at).is_err() {
            return (Some(name), None);
        }
        if tde_core::wal::WalPageHeader::parse(&page)
            .is_some_and(|h| h.pageaddr == segno * size + at)
        {
            let salt =
                tde_core::wal::SegmentSalt::from_page(&page).map(|s| hex_string(&s.to_bytes()));
            return (Some(name), salt);
        }
        if at == 0 {
            return (Some(name), None);
        }
        at -= page_size;
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const FORKS: [(pg_sys::ForkNumber::Type, &str); 4] = [
    (pg_sys::ForkNumber::MAIN_FORKNUM, "main"),
    (pg_sys::ForkNumber::FSM_FORKNUM, "fsm"),
    (pg_sys::ForkNumber::VISIBILITYMAP_FORKNUM, "vm"),
    (pg_sys::ForkNumber::INIT_FORKNUM, "init"),
];

/// Page counts per fork, read from the relation's files on disk (pages still
/// only in shared buffers are not counted: run CHECKPOINT first).
#[pg_extern(volatile, parallel_safe)]
fn tde_relation_pages(
    rel: PgRelation,
) -> TableIterator<
    'static,
    (
        name!(fork, String),
        name!(total, i64),
        name!(encrypted, i64),
        name!(plaintext, i64),
        name!(empty, i64),
        name!(generations, String),
    ),
> {
    let id = crate::attach::compat::StorageId::of_relation(&rel);
    if id.relfilenode == 0 {
        return TableIterator::new(Vec::new());
    }
    let pgdata = startup::data_dir();
    let mut rows = Vec::new();
    for (forknum, name) in FORKS {
        let rel_path = id.fork_path(forknum);
        let path: PathBuf = pgdata.join(rel_path);
        if scan::segment_files(&path).is_empty() {
            continue;
        }
        let c = scan::count_fork(&path)
            .unwrap_or_else(|e| pgrx::error!("tde: cannot read \"{}\": {e}", path.display()));
        rows.push((
            name.to_string(),
            c.total as i64,
            c.encrypted as i64,
            c.plaintext as i64,
            c.empty as i64,
            generations_json(&c.by_generation),
        ));
    }
    TableIterator::new(rows)
}

/// `{"1": 120, "2": 8}`: encrypted pages per data key generation.
fn generations_json(by_generation: &std::collections::BTreeMap<u8, u64>) -> String {
    let fields: Vec<String> = by_generation
        .iter()
        .map(|(g, n)| format!("\"{g}\": {n}"))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// Verifies every relation file of the cluster as stored on disk, like
/// `tdectl verify` on a stopped cluster, and reports which data key
/// generations the WAL segments in pg_wal use. Pages still only in shared buffers
/// are not seen (run CHECKPOINT first); a page that fails its checksum is
/// read a second time before it counts, so pages being written are not
/// reported as damaged. `formats` counts encrypted pages per page format
/// version; `iv_collisions` counts format 1 pages that share their
/// keystream with another page of different contents.
// pgrx reads the column names from this signature, so it cannot be aliased.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe, name = "tde_verify")]
fn tde_verify_v3() -> TableIterator<
    'static,
    (
        name!(files, i64),
        name!(pages, i64),
        name!(encrypted, i64),
        name!(plaintext, i64),
        name!(empty, i64),
        name!(checksum_failures, i64),
        name!(generations, String),
        name!(wal_generations, String),
        name!(formats, String),
        name!(iv_collisions, i64),
    ),
> {
    // SAFETY: reads the control file copy in shared memory.
    let checksums = unsafe { pg_sys::DataChecksumsEnabled() };
    let r = tde_core::verify::verify_data_dir_with(&startup::data_dir(), checksums, || {
        pg_sys::check_for_interrupts!();
    })
    .unwrap_or_else(|e| pgrx::error!("tde: cannot scan the data directory: {e}"));
    TableIterator::once((
        r.files as i64,
        r.pages as i64,
        r.encrypted as i64,
        r.plaintext as i64,
        r.empty as i64,
        r.checksum_failures as i64,
        generations_json(&r.by_generation),
        wal_generations_json(),
        generations_json(&r.by_format),
        r.iv_collisions as i64,
    ))
}

/// `{"1": 2, "2": 5}`: segments in pg_wal per data key generation of their
/// live pages.
fn wal_generations_json() -> String {
    // SAFETY: plain read of a global set from pg_control at start-up.
    let size = unsafe { pg_sys::wal_segment_size } as u64;
    let wal = tde_core::wal_scan::wal_generations(&startup::data_dir().join("pg_wal"), size)
        .unwrap_or_else(|e| pgrx::error!("tde: cannot scan pg_wal: {e}"));
    generations_json(&wal.iter().map(|(g, s)| (*g, s.len() as u64)).collect())
}

// The shapes of earlier releases, still behind their C symbols: until
// `ALTER EXTENSION tde UPDATE` runs, a database's catalog declares these
// result columns for `tde_status_wrapper`, `tde_verify_wrapper` (0.1.0) and
// `tde_verify_v2_wrapper` (0.2.0), and PostgreSQL builds the rows by that
// declaration. Not part of the current SQL.

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe, sql = false)]
fn tde_verify_v2() -> TableIterator<
    'static,
    (
        name!(files, i64),
        name!(pages, i64),
        name!(encrypted, i64),
        name!(plaintext, i64),
        name!(empty, i64),
        name!(checksum_failures, i64),
        name!(generations, String),
        name!(wal_generations, String),
    ),
> {
    TableIterator::new(
        tde_verify_v3()
            .map(|(f, p, e, pl, em, c, g, w, _formats, _collisions)| (f, p, e, pl, em, c, g, w)),
    )
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe, sql = false)]
fn tde_status() -> TableIterator<
    'static,
    (
        name!(attach, String),
        name!(server_version, String),
        name!(principal_key_fingerprint, String),
        name!(data_key_generation, i32),
        name!(data_encryption, bool),
        name!(wal_encryption, bool),
        name!(wal_segment, Option<String>),
        name!(wal_segment_salt, Option<String>),
    ),
> {
    TableIterator::new(
        tde_status_v2().map(|(a, v, fp, g, _all, d, w, seg, salt)| (a, v, fp, g, d, w, seg, salt)),
    )
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe, sql = false)]
fn tde_verify() -> TableIterator<
    'static,
    (
        name!(files, i64),
        name!(pages, i64),
        name!(encrypted, i64),
        name!(plaintext, i64),
        name!(empty, i64),
        name!(checksum_failures, i64),
        name!(generations, String),
    ),
> {
    TableIterator::new(
        tde_verify_v3()
            .map(|(f, p, e, pl, em, c, g, _wal, _formats, _collisions)| (f, p, e, pl, em, c, g)),
    )
}
