//! Verification of a whole data directory as stored: how many pages are
//! encrypted (per data key generation and per page format), plaintext or
//! empty, which pages fail their checksum, and which format 1 pages share
//! a keystream. Used offline by `tdectl verify` and online by
//! `tde_verify()`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checksum::{page_checksum, stored_checksum};
use crate::page::{classify, page_lsn, Page, PageMark, PageState, FORMAT_CTR, PAGE_SIZE};
use crate::scan::relation_files;

/// Blocks per segment file with PostgreSQL's default 1 GB segments.
pub const RELSEG_SIZE: u64 = 131_072;
/// How many individual findings a report lists (counts are always complete).
const MAX_LISTED: usize = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub files: u64,
    pub pages: u64,
    pub encrypted: u64,
    pub plaintext: u64,
    pub empty: u64,
    /// Encrypted pages per data key generation.
    pub by_generation: BTreeMap<u8, u64>,
    /// Encrypted pages per page format version (1: tde 0.1–0.2, 2: now).
    pub by_format: BTreeMap<u8, u64>,
    pub checksum_failures: u64,
    /// Format 1 pages that share their whole AES-CTR counter block (key,
    /// LSN, block number and nonce) with another stored page of different
    /// contents: each such page and the first one seen with its counter
    /// block expose the XOR of their plaintexts. Format 2 has no keystream
    /// (see `docs/format/pages.md`).
    pub iv_collisions: u64,
    /// Up to 100 of them: (file, block, the file and block it collides with).
    pub collisions: Vec<(PathBuf, u64, PathBuf, u64)>,
    /// Up to 100 pages that failed their checksum: (file, block).
    pub failed_pages: Vec<(PathBuf, u64)>,
    /// Up to 100 files holding plaintext pages, with their counts.
    pub plaintext_files: Vec<(PathBuf, u64)>,
}

impl Report {
    /// Nothing plaintext, nothing damaged, no shared keystream.
    pub fn is_clean(&self) -> bool {
        self.plaintext == 0 && self.checksum_failures == 0 && self.iv_collisions == 0
    }
}

/// Block number of the first page of a segment file (`16384.3` → 3 × 131072).
fn first_block(file: &Path) -> u64 {
    file.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit_once('.'))
        .and_then(|(_, seg)| seg.parse::<u64>().ok())
        .map_or(0, |seg| seg * RELSEG_SIZE)
}

fn checksum_ok(page: &Page, block: u64) -> bool {
    page_checksum(page, block as u32) == stored_checksum(page)
}

/// Format 1's whole first counter block: key (generation, fork), LSN as
/// stored, block number and the nonce in bytes 18..20.
fn format1_counter_block(mark: &PageMark, page: &Page, block: u64) -> u128 {
    let nonce = u16::from_le_bytes([page[18], page[19]]);
    ((mark.generation as u128) << 120)
        | ((mark.fork as u128) << 112)
        | ((nonce as u128) << 96)
        | ((block as u32 as u128) << 64)
        | page_lsn(page) as u128
}

/// A 64-bit digest of the encrypted bytes, to tell different contents
/// under one counter block apart.
fn content_digest(page: &Page) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(&page[12..]);
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Scans every relation file under `pgdata`. With `checksums`, pages that
/// are not all-zero must carry a valid checksum of their stored bytes. A
/// page that fails is read once more before it counts, so a page being
/// written by a running server is not reported as damaged.
pub fn verify_data_dir(pgdata: &Path, checksums: bool) -> std::io::Result<Report> {
    verify_data_dir_with(pgdata, checksums, || {})
}

/// [`verify_data_dir`], calling `each_file` before every file (a server
/// checks for query cancellation there).
pub fn verify_data_dir_with(
    pgdata: &Path,
    checksums: bool,
    mut each_file: impl FnMut(),
) -> std::io::Result<Report> {
    let mut r = Report::default();
    let mut page = Box::new([0u8; PAGE_SIZE]);
    // Format 1 counter block → (content digest, where first seen).
    let mut counter_blocks: HashMap<u128, (u64, PathBuf, u64)> = HashMap::new();
    for path in relation_files(pgdata)? {
        each_file();
        let file = match File::open(&path) {
            Ok(f) => f,
            // Dropped between listing and opening.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        r.files += 1;
        let rel = path.strip_prefix(pgdata).unwrap_or(&path).to_path_buf();
        let base = first_block(&path);
        let mut plaintext_here = 0;
        let mut index = 0u64;
        while file
            .read_exact_at(&mut page[..], index * PAGE_SIZE as u64)
            .is_ok()
        {
            r.pages += 1;
            let state = classify(&page);
            match state {
                PageState::Empty => r.empty += 1,
                PageState::Plain => {
                    r.plaintext += 1;
                    plaintext_here += 1;
                }
                PageState::Encrypted(mark) => {
                    r.encrypted += 1;
                    *r.by_generation.entry(mark.generation).or_default() += 1;
                    let version = mark.format_version().unwrap_or(0);
                    *r.by_format.entry(version).or_default() += 1;
                    if mark.format == FORMAT_CTR {
                        let block = base + index;
                        let key = format1_counter_block(&mark, &page, block);
                        let digest = content_digest(&page);
                        match counter_blocks.get(&key) {
                            Some((d, first, first_block)) if *d != digest => {
                                r.iv_collisions += 1;
                                if r.collisions.len() < MAX_LISTED {
                                    r.collisions.push((
                                        rel.clone(),
                                        block,
                                        first.clone(),
                                        *first_block,
                                    ));
                                }
                            }
                            Some(_) => {}
                            None => {
                                counter_blocks.insert(key, (digest, rel.clone(), block));
                            }
                        }
                    }
                }
            }
            let block = base + index;
            if checksums && state != PageState::Empty && !checksum_ok(&page, block) {
                let again = file
                    .read_exact_at(&mut page[..], index * PAGE_SIZE as u64)
                    .is_ok();
                if !again || !checksum_ok(&page, block) {
                    r.checksum_failures += 1;
                    if r.failed_pages.len() < MAX_LISTED {
                        r.failed_pages.push((rel.clone(), block));
                    }
                }
            }
            index += 1;
        }
        if plaintext_here > 0 && r.plaintext_files.len() < MAX_LISTED {
            r.plaintext_files.push((rel, plaintext_here));
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn segment_numbers_give_block_offsets() {
        assert_eq!(first_block(Path::new("base/5/16384")), 0);
        assert_eq!(first_block(Path::new("base/5/16384.2")), 2 * RELSEG_SIZE);
        assert_eq!(first_block(Path::new("base/5/16384_fsm")), 0);
    }
}
