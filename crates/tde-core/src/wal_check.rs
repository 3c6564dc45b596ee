//! Does the keyring decrypt the WAL in `pg_wal`? A keyring can hold the
//! right generation numbers with the wrong keys (a copy from another node,
//! or from before a rotation another copy made): XTS then decrypts without
//! complaint, and PostgreSQL would take the garbage for the end of WAL, so
//! recovery would stop early and lose committed transactions silently.
//!
//! For every data key generation the live segments in `pg_wal` use, the
//! oldest segment of that generation is decrypted until its first record.
//! The record's header must be one PostgreSQL writes: a total length of at
//! least a header and under 1 GB, and a back pointer `xl_prev` that is 0
//! (the cluster's first record) or a MAXALIGNed position less than 1 GB
//! before it; a random header passes that with probability about 2^-37.
//! When the whole record is present its CRC-32C (PostgreSQL's `xl_crc`,
//! over the record's data, then its header up to the CRC) must hold too
//! (2^-32 for a random record). A generation whose segments hold no whole
//! first record is judged by the header alone.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::wal::{SegmentSalt, WalCipher, WalPage, WalPageHeader, WAL_PAGE_SIZE};
use crate::wal_scan::segment_number;
use crate::{Error, Result};

/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `SizeOfXLogRecord`.
const RECORD_HEADER: usize = 24;
/// Where `xl_crc` sits in the record header.
const CRC_AT: usize = 20;
/// PostgreSQL never writes a record of a gigabyte or more.
const MAX_RECORD: u32 = 1 << 30;

fn maxalign(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// The decrypted pages of one timeline's consecutive segments, read on
/// demand.
struct Reader<'a> {
    pg_wal: &'a Path,
    cipher: &'a mut WalCipher,
    timeline: String,
    segment_size: u64,
    /// (segment, page index) → decrypted page.
    pages: BTreeMap<(u64, u64), Box<WalPage>>,
}

impl Reader<'_> {
    fn file_name(&self, segment: u64) -> String {
        let per_log = (1u64 << 32) / self.segment_size;
        format!(
            "{}{:08X}{:08X}",
            self.timeline,
            segment / per_log,
            segment % per_log
        )
    }

    /// The decrypted page at byte `pos` of the WAL; `Ok(None)` when it is
    /// not in `pg_wal`.
    fn page(&mut self, pos: u64) -> Result<Option<&WalPage>> {
        let segment = pos / self.segment_size;
        let index = (pos % self.segment_size) / WAL_PAGE_SIZE as u64;
        if !self.pages.contains_key(&(segment, index)) {
            let path = self.pg_wal.join(self.file_name(segment));
            let mut page = Box::new([0u8; WAL_PAGE_SIZE]);
            let read = File::open(&path).and_then(|mut f| {
                std::io::Seek::seek(
                    &mut f,
                    std::io::SeekFrom::Start(index * WAL_PAGE_SIZE as u64),
                )?;
                f.read_exact(&mut page[..])
            });
            if read.is_err() {
                return Ok(None);
            }
            let header = WalPageHeader::parse(&page[..]).expect("a whole page");
            if header.pageaddr != pos - pos % WAL_PAGE_SIZE as u64 {
                // Not written yet (zero-filled or recycled).
                return Ok(None);
            }
            self.cipher.decrypt_page(&mut page)?;
            self.pages.insert((segment, index), page);
        }
        Ok(self.pages.get(&(segment, index)).map(|p| &**p))
    }

    /// Data bytes of the WAL from `pos` on, skipping page headers: up to
    /// `len` of them, fewer when the WAL present ends first.
    fn data(&mut self, mut pos: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let in_page = (pos % WAL_PAGE_SIZE as u64) as usize;
            let Some(page) = self.page(pos)? else {
                break;
            };
            let header_len = WalPageHeader::parse(&page[..])
                .expect("a whole page")
                .header_len();
            let from = in_page.max(header_len);
            let take = (WAL_PAGE_SIZE - from).min(len - out.len());
            out.extend_from_slice(&page[from..from + take]);
            pos = pos - in_page as u64 + WAL_PAGE_SIZE as u64;
        }
        Ok(out)
    }

    /// The position of the first record that starts in segment `segment`,
    /// skipping the rest of a record continued from the previous segment.
    fn first_record(&mut self, segment: u64) -> Result<Option<u64>> {
        let mut pos = segment * self.segment_size;
        loop {
            let Some(page) = self.page(pos)? else {
                return Ok(None);
            };
            let header = WalPageHeader::parse(&page[..]).expect("a whole page");
            let start = pos + header.header_len() as u64;
            if header.info & XLP_FIRST_IS_CONTRECORD == 0 {
                return Ok(Some(start));
            }
            let room = (WAL_PAGE_SIZE - header.header_len()) as u64;
            if (header.rem_len as u64) < room {
                // A record may start anywhere before the page's end; its
                // header may continue on the next page.
                let after = maxalign(header.header_len() + header.rem_len as usize);
                if after < WAL_PAGE_SIZE {
                    return Ok(Some(pos + after as u64));
                }
            }
            pos += WAL_PAGE_SIZE as u64;
            if pos / self.segment_size != segment {
                return Ok(None);
            }
        }
    }

    /// Whether the record at `pos` is one PostgreSQL wrote: `Some(false)`
    /// for an impossible header or a CRC that fails, `Some(true)` for a
    /// whole record whose CRC holds, `None` for a possible header whose
    /// record runs past the WAL present.
    fn record_crc_holds(&mut self, pos: u64) -> Result<Option<bool>> {
        let header = self.data(pos, RECORD_HEADER)?;
        if header.len() < RECORD_HEADER {
            return Ok(None);
        }
        let total = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let prev = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let prev_possible =
            prev == 0 || (prev < pos && pos - prev < MAX_RECORD as u64 && prev.is_multiple_of(8));
        if !(RECORD_HEADER as u32..MAX_RECORD).contains(&total) || !prev_possible {
            return Ok(Some(false));
        }
        let record = self.data(pos, total as usize)?;
        if record.len() < total as usize {
            return Ok(None);
        }
        let want = u32::from_le_bytes(record[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
        let crc =
            crc32c::crc32c_append(crc32c::crc32c(&record[RECORD_HEADER..]), &record[..CRC_AT]);
        Ok(Some(crc == want))
    }
}

/// A live segment: the timeline part of its name, its number, its name.
type Segment = (String, u64, String);

/// The live segments of `pg_wal` per data key generation, oldest first.
fn segments_by_generation(
    pg_wal: &Path,
    segment_size: u64,
) -> std::io::Result<BTreeMap<u8, Vec<Segment>>> {
    let mut names: Vec<String> = std::fs::read_dir(pg_wal)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    let mut out: BTreeMap<u8, Vec<Segment>> = BTreeMap::new();
    for name in names {
        let Some(segment) = segment_number(&name, segment_size) else {
            continue;
        };
        let mut first = [0u8; WAL_PAGE_SIZE];
        let Ok(()) = File::open(pg_wal.join(&name)).and_then(|mut f| f.read_exact(&mut first))
        else {
            continue;
        };
        let live =
            WalPageHeader::parse(&first).is_some_and(|h| h.pageaddr == segment * segment_size);
        if let (true, Some(salt)) = (live, SegmentSalt::from_page(&first)) {
            out.entry(salt.generation())
                .or_default()
                .push((name[..8].to_string(), segment, name));
        }
    }
    Ok(out)
}

/// Checks that `cipher`'s data keys decrypt the WAL in `pg_wal` (see the
/// module documentation). Generations the keyring does not hold are left
/// to the reader, which refuses them by name.
pub fn check_keys_decrypt_wal(pg_wal: &Path, cipher: &mut WalCipher) -> Result<()> {
    let segment_size = cipher.segment_size() as u64;
    let by_generation =
        segments_by_generation(pg_wal, segment_size).map_err(|e| Error::WalUnreadable {
            path: pg_wal.to_path_buf(),
            reason: e.to_string(),
        })?;
    for (generation, segments) in by_generation {
        if !cipher.has_generation(generation) {
            continue;
        }
        for (timeline, segment, name) in segments {
            let mut reader = Reader {
                pg_wal,
                cipher,
                timeline,
                segment_size,
                pages: BTreeMap::new(),
            };
            let Some(pos) = reader.first_record(segment)? else {
                continue;
            };
            match reader.record_crc_holds(pos)? {
                Some(true) => break,
                Some(false) => {
                    return Err(Error::WalKeyMismatch {
                        generation,
                        segment: name,
                        record: pos,
                    })
                }
                None => continue,
            }
        }
    }
    Ok(())
}
