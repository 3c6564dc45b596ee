//! Reading relation files directly: page counts per state, and the search for
//! encrypted pages that guards against creating a second keyring.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::page::{classify, Page, PageState, PAGE_SIZE};

/// Page counts for one fork of a relation, as stored on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageCounts {
    pub total: u64,
    pub encrypted: u64,
    pub plaintext: u64,
    pub empty: u64,
    /// Encrypted pages per data key generation.
    pub by_generation: BTreeMap<u8, u64>,
}

impl PageCounts {
    fn add(&mut self, page: &Page) {
        self.total += 1;
        match classify(page) {
            PageState::Empty => self.empty += 1,
            PageState::Plain => self.plaintext += 1,
            PageState::Encrypted(mark) => {
                self.encrypted += 1;
                *self.by_generation.entry(mark.generation).or_default() += 1;
            }
        }
    }
}

/// Calls `f` with every whole page of `file`; a trailing partial page (a file
/// being extended) is ignored.
fn for_each_page(path: &Path, mut f: impl FnMut(u64, &Page) -> bool) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    let mut page = Box::new([0u8; PAGE_SIZE]);
    let mut index = 0u64;
    loop {
        let mut filled = 0;
        while filled < PAGE_SIZE {
            let n = file.read(&mut page[filled..])?;
            if n == 0 {
                return Ok(());
            }
            filled += n;
        }
        if !f(index, &page) {
            return Ok(());
        }
        index += 1;
    }
}

/// The segment files of one relation fork: `base`, `base.1`, `base.2`, …
pub fn segment_files(fork_path: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if fork_path.exists() {
        files.push(fork_path.to_path_buf());
    }
    for segno in 1u32.. {
        let mut name = fork_path.as_os_str().to_owned();
        name.push(format!(".{segno}"));
        let p = PathBuf::from(name);
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    files
}

/// Counts pages of one relation fork across all its segment files.
pub fn count_fork(fork_path: &Path) -> std::io::Result<PageCounts> {
    let mut counts = PageCounts::default();
    for file in segment_files(fork_path) {
        match for_each_page(&file, |_, page| {
            counts.add(page);
            true
        }) {
            Ok(()) => {}
            // A segment dropped between listing and opening: nothing to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(counts)
}

/// Whether a file name is a relation data file (`16384`, `16384_fsm`,
/// `16384.1`, `t3_16384_vm`, …).
pub fn is_relation_file(name: &str) -> bool {
    let name = name.strip_prefix('t').map_or(name, |rest| {
        rest.split_once('_').map_or(name, |(backend, rel)| {
            if !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()) {
                rel
            } else {
                name
            }
        })
    });
    let (stem, seg) = match name.split_once('.') {
        Some((stem, seg)) => (stem, Some(seg)),
        None => (name, None),
    };
    if let Some(seg) = seg {
        if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    let digits = ["_fsm", "_vm", "_init"]
        .iter()
        .find_map(|suffix| stem.strip_suffix(suffix))
        .unwrap_or(stem);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Every relation file under the data directory: `global/`, `base/*/` and
/// each tablespace's version directory.
pub fn relation_files(pgdata: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = vec![pgdata.join("global")];
    for parent in [pgdata.join("base")] {
        if let Ok(rd) = std::fs::read_dir(&parent) {
            for e in rd.flatten() {
                dirs.push(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(pgdata.join("pg_tblspc")) {
        for ts in rd.flatten() {
            // <tablespace>/PG_<version>_<catversion>/<dboid>/
            if let Ok(versions) = std::fs::read_dir(ts.path()) {
                for v in versions.flatten() {
                    if let Ok(dbs) = std::fs::read_dir(v.path()) {
                        for db in dbs.flatten() {
                            dirs.push(db.path());
                        }
                    }
                }
            }
        }
    }
    let mut files = Vec::new();
    for dir in dirs {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(e) => return Err(e),
        };
        for e in rd.flatten() {
            if e.file_name().to_str().is_some_and(is_relation_file) {
                files.push(e.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The first encrypted page found in the data directory, if any.
pub fn find_encrypted_page(pgdata: &Path) -> std::io::Result<Option<(PathBuf, u64)>> {
    for file in relation_files(pgdata)? {
        let mut found = None;
        match for_each_page(&file, |index, page| {
            if matches!(classify(page), PageState::Encrypted(_)) {
                found = Some(index);
                return false;
            }
            true
        }) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if let Some(index) = found {
            return Ok(Some((file, index)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::is_relation_file;

    #[test]
    fn relation_file_names() {
        for ok in [
            "1259",
            "16384_fsm",
            "16384_vm",
            "16384_init",
            "16384.12",
            "t3_16384",
            "t12_99_vm.2",
        ] {
            assert!(is_relation_file(ok), "{ok}");
        }
        for bad in [
            "PG_VERSION",
            "pg_filenode.map",
            "pg_internal.init",
            "16384.",
            "_vm",
            "t3_",
            "x1",
            "1.a",
        ] {
            assert!(!is_relation_file(bad), "{bad}");
        }
    }
}

/// Where a relation file sits, parsed from its path relative to the data
/// directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationFile {
    pub tablespace: u32,
    pub database: u32,
    pub relfilenode: u32,
    pub fork: crate::kdf::ForkKind,
    /// Block number of the file's first page (segment number × blocks per
    /// segment).
    pub first_block: u64,
    /// A temporary relation's file (`t<backend>_<relfilenode>`).
    pub temporary: bool,
}

/// PostgreSQL's fixed OIDs of the `pg_default` and `pg_global` tablespaces.
pub const DEFAULT_TABLESPACE: u32 = 1663;
pub const GLOBAL_TABLESPACE: u32 = 1664;

/// Parses `global/1262`, `base/5/16384_fsm.2`,
/// `pg_tblspc/16400/PG_15_202209061/5/16401`, `base/5/t3_16390`.
pub fn parse_relation_path(rel: &Path) -> Option<RelationFile> {
    let parts: Vec<&str> = rel.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
    let num = |s: &str| s.parse::<u32>().ok();
    let (tablespace, database, name) = match parts.as_slice() {
        ["global", name] => (GLOBAL_TABLESPACE, 0, *name),
        ["base", db, name] => (DEFAULT_TABLESPACE, num(db)?, *name),
        ["pg_tblspc", spc, _version, db, name] => (num(spc)?, num(db)?, *name),
        _ => return None,
    };
    if !is_relation_file(name) {
        return None;
    }
    let (name, temporary) = match name.strip_prefix('t').and_then(|r| r.split_once('_')) {
        Some((backend, rest)) if backend.bytes().all(|b| b.is_ascii_digit()) => (rest, true),
        _ => (name, false),
    };
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) => (stem, seg.parse::<u64>().ok()?),
        None => (name, 0),
    };
    let (digits, fork) = [
        ("_fsm", crate::kdf::ForkKind::Fsm),
        ("_vm", crate::kdf::ForkKind::Vm),
        ("_init", crate::kdf::ForkKind::Init),
    ]
    .iter()
    .find_map(|(suffix, fork)| stem.strip_suffix(suffix).map(|d| (d, *fork)))
    .unwrap_or((stem, crate::kdf::ForkKind::Main));
    Some(RelationFile {
        tablespace,
        database,
        relfilenode: num(digits)?,
        fork,
        first_block: segment * crate::verify::RELSEG_SIZE,
        temporary,
    })
}

/// Blocks of one segment file (numbered from the relation's first block)
/// that are not encrypted under `generation` in the current format:
/// plaintext pages, pages of older generations and pages in format 1.
/// All-zero pages need nothing.
pub fn blocks_to_reencrypt(
    file: &Path,
    first_block: u64,
    generation: u8,
) -> std::io::Result<Vec<u64>> {
    let mut blocks = Vec::new();
    for_each_page(file, |index, page| {
        match classify(page) {
            PageState::Empty => {}
            // Generations only grow: a page under a newer one than the run
            // started with (a rotation meanwhile) needs no rewrite.
            PageState::Encrypted(mark)
                if mark.generation >= generation && mark.format_version() == Some(2) => {}
            _ => blocks.push(first_block + index),
        }
        true
    })?;
    Ok(blocks)
}

#[cfg(test)]
mod path_tests {
    use super::*;
    use crate::kdf::ForkKind;

    #[test]
    fn parses_relation_paths() {
        let p = parse_relation_path(Path::new("base/5/16384_fsm.2")).unwrap();
        assert_eq!(
            (
                p.tablespace,
                p.database,
                p.relfilenode,
                p.fork,
                p.first_block,
                p.temporary
            ),
            (
                DEFAULT_TABLESPACE,
                5,
                16384,
                ForkKind::Fsm,
                2 * 131_072,
                false
            )
        );
        let p = parse_relation_path(Path::new("global/1262")).unwrap();
        assert_eq!(
            (p.tablespace, p.database, p.relfilenode),
            (GLOBAL_TABLESPACE, 0, 1262)
        );
        let p =
            parse_relation_path(Path::new("pg_tblspc/16400/PG_15_202209061/5/16401_init")).unwrap();
        assert_eq!(
            (p.tablespace, p.database, p.fork),
            (16400, 5, ForkKind::Init)
        );
        assert!(
            parse_relation_path(Path::new("base/5/t3_16390"))
                .unwrap()
                .temporary
        );
        assert!(parse_relation_path(Path::new("base/5/PG_VERSION")).is_none());
        assert!(parse_relation_path(Path::new("pg_wal/000000010000000000000001")).is_none());
    }
}
