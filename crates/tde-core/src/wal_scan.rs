//! Which data key generations the WAL segments of a directory use, read from
//! the salts in their page headers. Only pages that carry their own position
//! as `xlp_pageaddr` count: a recycled segment's leftover pages are never
//! read as WAL (PostgreSQL rejects them by their plaintext header), so they
//! keep no generation alive.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::wal::{SegmentSalt, WalPageHeader, WAL_PAGE_SIZE};

/// Generations in use, each with the names of the segment files that use it.
pub type WalGenerations = BTreeMap<u8, Vec<String>>;

/// The segment number a WAL file name (`TTTTTTTTLLLLLLLLSSSSSSSS`, optionally
/// `.partial`) stands for, given the segment size.
pub fn segment_number(name: &str, segment_size: u64) -> Option<u64> {
    let base = name.strip_suffix(".partial").unwrap_or(name);
    if base.len() != 24 || !base.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&base[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&base[16..24], 16).ok()?;
    let per_log = (1u64 << 32).checked_div(segment_size)?;
    log.checked_mul(per_log)?.checked_add(seg)
}

/// Calls `f` with the byte offset and the bytes of every page of `file`, in
/// order, the last one possibly partial, until `f` returns `false`.
fn for_each_wal_page(mut file: File, mut f: impl FnMut(u64, &[u8]) -> bool) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * WAL_PAGE_SIZE];
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        for page in buf[..filled].chunks(WAL_PAGE_SIZE) {
            if !f(offset, page) {
                return Ok(());
            }
            offset += WAL_PAGE_SIZE as u64;
        }
        if filled < buf.len() {
            return Ok(());
        }
    }
}

/// The generations of the live encrypted pages of one segment file.
pub fn segment_generations(
    path: &Path,
    segment: u64,
    segment_size: u64,
) -> std::io::Result<BTreeSet<u8>> {
    let mut found = BTreeSet::new();
    for_each_wal_page(File::open(path)?, |offset, page| {
        let live = page.len() == WAL_PAGE_SIZE
            && WalPageHeader::parse(page).is_some_and(|h| {
                Some(h.pageaddr) == segment.checked_mul(segment_size).map(|s| s + offset)
            });
        if live {
            if let Some(salt) = SegmentSalt::from_page(page) {
                found.insert(salt.generation());
            }
        }
        true
    })?;
    Ok(found)
}

/// The segment size recorded in the long header of the first segment file
/// of `pg_wal` that has one (offline tools do not read `pg_control`).
pub fn detect_segment_size(pg_wal: &Path) -> Option<u64> {
    let mut names: Vec<String> = std::fs::read_dir(pg_wal)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| segment_number(n, 16 << 20).is_some())
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let mut first = vec![0u8; WAL_PAGE_SIZE];
        File::open(pg_wal.join(name))
            .ok()?
            .read_exact(&mut first)
            .ok()?;
        let size = WalPageHeader::parse(&first)?.long?.segment_size;
        (size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)).then_some(size as u64)
    })
}

/// Scans every segment file of `pg_wal` (other files are skipped).
pub fn wal_generations(pg_wal: &Path, segment_size: u64) -> std::io::Result<WalGenerations> {
    wal_generations_with(pg_wal, segment_size, || {})
}

/// [`wal_generations`], calling `each_file` before every segment.
pub fn wal_generations_with(
    pg_wal: &Path,
    segment_size: u64,
    mut each_file: impl FnMut(),
) -> std::io::Result<WalGenerations> {
    let mut out = WalGenerations::new();
    let mut names: Vec<String> = std::fs::read_dir(pg_wal)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let Some(segment) = segment_number(&name, segment_size) else {
            continue;
        };
        each_file();
        let generations = match segment_generations(&pg_wal.join(&name), segment, segment_size) {
            Ok(g) => g,
            // Removed or recycled while we looked: it holds nothing live.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for g in generations {
            out.entry(g).or_default().push(name.clone());
        }
    }
    Ok(out)
}

/// An encrypted WAL page found in `pg_wal`: the file, the page's offset in
/// it, and the data key generation its salt names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedWalPage {
    pub file: PathBuf,
    pub offset: u64,
    pub generation: u8,
}

/// Whether `page` is a WAL page that tde encrypted: a PostgreSQL WAL page
/// header (a magic number of the `0xD1xx` family every supported major
/// version uses, a page-aligned `xlp_pageaddr`) with a segment salt in its
/// padding. PostgreSQL writes that padding as zeros, and the files it
/// zero-fills or copies into `pg_wal` hold no such header, so a plaintext
/// cluster never shows one.
fn is_encrypted_wal_page(page: &[u8]) -> Option<u8> {
    let header = WalPageHeader::parse(page)?;
    let looks_like_wal = header.magic >> 8 == 0xD1 && header.pageaddr % WAL_PAGE_SIZE as u64 == 0;
    looks_like_wal
        .then(|| SegmentSalt::from_page(page))
        .flatten()
        .map(|salt| salt.generation())
}

/// The first encrypted WAL page in any file directly under `pg_wal` (or a
/// symbolic link to one), live or not: recycled segments keep the pages they
/// held under their new names, and they too prove that a keyring once
/// encrypted this WAL. A trailing partial page is looked at too. Files
/// removed while the scan runs are skipped; every other failure (a missing
/// or unreadable `pg_wal`, say an unmounted WAL volume) is an error, since
/// "nothing found" would allow a new keyring.
pub fn find_encrypted_wal_page(pg_wal: &Path) -> std::io::Result<Option<EncryptedWalPage>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(pg_wal)? {
        let path = entry?.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => names.push(path),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    names.sort();
    for path in names {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut found = None;
        for_each_wal_page(file, |offset, page| {
            found = is_encrypted_wal_page(page).map(|generation| (offset, generation));
            found.is_none()
        })?;
        if let Some((offset, generation)) = found {
            return Ok(Some(EncryptedWalPage {
                file: path,
                offset,
                generation,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    /// A page header at `pageaddr` with `salt` in the padding.
    fn page(pageaddr: u64, salt: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; WAL_PAGE_SIZE];
        p[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        p[4..8].copy_from_slice(&1u32.to_le_bytes());
        p[8..16].copy_from_slice(&pageaddr.to_le_bytes());
        p[20..24].copy_from_slice(&salt);
        p
    }

    #[test]
    fn any_encrypted_page_of_any_file_is_found() {
        let dir = std::env::temp_dir().join(format!("tde-wal-find-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("archive_status")).unwrap();
        assert!(
            find_encrypted_wal_page(&dir.join("missing")).is_err(),
            "a missing pg_wal must not read as one without encrypted pages"
        );
        // Plaintext WAL, a zero-filled segment, a history file, a text file
        // whose bytes 20..24 are not zero: nothing encrypted.
        let plain: Vec<u8> = [page(3 * SEG, [0; 4]), page(3 * SEG + 8192, [0; 4])].concat();
        std::fs::write(dir.join("000000010000000000000003"), &plain).unwrap();
        std::fs::write(dir.join("000000010000000000000004"), vec![0u8; 4 * 8192]).unwrap();
        std::fs::write(dir.join("00000002.history"), vec![b'x'; 8192]).unwrap();
        let mut not_wal = page(0, [3, 1, 2, 3]);
        not_wal[0..2].copy_from_slice(b"ab");
        std::fs::write(dir.join("xlogtemp.123"), &not_wal).unwrap();
        let unaligned = page(SEG + 100, [3, 1, 2, 3]);
        std::fs::write(dir.join("000000010000000000000009"), &unaligned).unwrap();
        assert_eq!(find_encrypted_wal_page(&dir).unwrap(), None);
        // A recycled segment: its second page is encrypted and names
        // another segment's position; found all the same.
        // A half-copied file: its only, partial page is encrypted.
        let partial = page(2 * SEG, [6, 1, 2, 3]);
        std::fs::write(dir.join("000000010000000000000008"), &partial[..100]).unwrap();
        assert_eq!(
            find_encrypted_wal_page(&dir).unwrap().map(|f| f.generation),
            Some(6)
        );
        std::fs::remove_file(dir.join("000000010000000000000008")).unwrap();
        let recycled: Vec<u8> = [page(SEG, [0; 4]), page(SEG + 8192, [5, 1, 2, 3])].concat();
        std::fs::write(dir.join("000000010000000000000007"), recycled).unwrap();
        let found = find_encrypted_wal_page(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            Some(EncryptedWalPage {
                file: dir.join("000000010000000000000007"),
                offset: 8192,
                generation: 5,
            })
        );
    }

    #[test]
    fn segment_numbers_follow_postgres_naming() {
        assert_eq!(
            segment_number("000000010000000000000003", 16 << 20),
            Some(3)
        );
        assert_eq!(
            segment_number("000000020000000100000002", 16 << 20),
            Some(256 + 2)
        );
        assert_eq!(
            segment_number("000000010000000100000002.partial", 64 << 20),
            Some(64 + 2)
        );
        assert_eq!(segment_number("00000001.history", 16 << 20), None);
        assert_eq!(segment_number("archive_status", 16 << 20), None);
    }

    #[test]
    fn only_live_pages_count() {
        let dir = std::env::temp_dir().join(format!("tde-wal-scan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Segment 3: a live page under generation 2, a plaintext page, a
        // live page under generation 4.
        let live: Vec<u8> = [
            page(3 * SEG, [2, 9, 9, 9]),
            page(3 * SEG + 8192, [0; 4]),
            page(3 * SEG + 16384, [4, 1, 1, 1]),
        ]
        .concat();
        std::fs::write(dir.join("000000010000000000000003"), live).unwrap();
        // Segment 5 is a recycled file: its pages still name segment 1.
        let stale: Vec<u8> = [page(SEG, [7, 1, 2, 3]), page(SEG + 8192, [7, 1, 2, 3])].concat();
        std::fs::write(dir.join("000000010000000000000005"), stale).unwrap();
        assert_eq!(detect_segment_size(&dir), None, "no long header yet");
        let mut long = page(6 * SEG, [0; 4]);
        long[2..4].copy_from_slice(&2u16.to_le_bytes());
        long[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        long[36..40].copy_from_slice(&8192u32.to_le_bytes());
        std::fs::write(dir.join("000000010000000000000006"), long).unwrap();
        assert_eq!(detect_segment_size(&dir), Some(SEG));
        // Not a segment at all.
        std::fs::write(dir.join("00000002.history"), page(0, [9, 9, 9, 9])).unwrap();
        let found = wal_generations(&dir, SEG).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let want: WalGenerations = [
            (2, vec!["000000010000000000000003".to_string()]),
            (4, vec!["000000010000000000000003".to_string()]),
        ]
        .into_iter()
        .collect();
        assert_eq!(found, want);
    }
}
