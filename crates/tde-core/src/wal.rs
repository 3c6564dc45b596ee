//! The WAL page transform (DESIGN §4).
//!
//! # On-disk format
//!
//! A WAL page is `XLOG_BLCKSZ` = 8192 bytes. Its header stays plaintext
//! (integers little-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0–1 | `xlp_magic` |
//! | 2–3 | `xlp_info`; bit `0x0002` (`XLP_LONG_HEADER`) marks the long header |
//! | 4–7 | `xlp_tli` |
//! | 8–15 | `xlp_pageaddr` |
//! | 16–19 | `xlp_rem_len` |
//! | 20–23 | padding, zero as PostgreSQL writes it; here the **segment salt** |
//! | 24–31 | `xlp_sysid` (long header only) |
//! | 32–35 | `xlp_seg_size` (long header only) |
//! | 36–39 | `xlp_xlog_blcksz` (long header only) |
//!
//! The header is `H` = 40 bytes long with `XLP_LONG_HEADER` (the first page of
//! a segment) and 24 bytes otherwise. The segment salt is byte 20 = data key
//! generation (1–255) and bytes 21..24 = random, not all zero. A page whose
//! bytes 20..24 are all zero is plaintext (so is an all-zero page) and is
//! read and written untouched; decryption puts the zeros back, so PostgreSQL
//! sees exactly the page it wrote.
//!
//! Bytes `H..8192` of an encrypted page are one XTS-AES-256 data unit
//! (IEEE 1619, with its ciphertext stealing for the final partial block),
//! with tweak = `xlp_pageaddr` as a 128-bit little-endian integer. The data
//! unit's byte sequence is the region **rotated left by 24 bytes**:
//!
//! ```text
//! X = page[H+24 .. 8192] ‖ page[H .. H+24]                (8168 or 8152 bytes)
//! page[H+24 .. 8192] ‖ page[H .. H+24] := XTS-AES-256-Enc(K1 ‖ K2, tweak, X)
//! ```
//!
//! So block `i` of the data unit is `page[H+24+16i .. H+40+16i]` for
//! `i < m-1` (m = 510 for the short header, 509 for the long one), the last
//! full block `m-1` is `page[H .. H+16]` and the 8-byte partial block `m`
//! is `page[H+16 .. H+24]`. Why rotate: both header lengths are 8 mod 16, so
//! in the plain order every 512-byte sector boundary of the page would cut a
//! cipher block in two, and a torn rewrite of the last WAL page (one sector
//! new, the next one still old) would garble already durable bytes sharing
//! a block with newly appended ones. Rotated, every block but the stealing
//! pair starts at a multiple of 16 in the page, and the pair lies in the
//! first 64 bytes: no decryption depends on bytes of two different sectors,
//! so a torn page decrypts, sector by sector, to old or new plaintext, just
//! as PostgreSQL expects of a torn plaintext WAL page.
//!
//! The keys are per segment (see [`crate::kdf::wal_keys`]):
//!
//! ```text
//! K1 ‖ K2 = HKDF-SHA256(ikm = DEK of the salt's generation, salt = cluster salt,
//!                       info = "tde/v1/wal" ‖ system identifier (u64 LE)
//!                              ‖ xlp_tli (u32 LE) ‖ segment number (u64 LE)
//!                              ‖ segment salt (4 bytes), length 64)
//! ```
//!
//! with segment number = `xlp_pageaddr / segment size`. Everything a reader
//! needs comes from the page itself and the keyring, so archived, copied or
//! recycled segments stay readable, and plaintext pages can sit next to
//! encrypted ones.
//!
//! Properties (each is tested): identical bytes at the same position give
//! identical ciphertext, so rewriting the partly filled last page changes
//! only the 16-byte blocks that changed (`page[H..H+24]`, the stealing
//! pair, changes as a whole) and never exposes a keystream:
//! two captures of a block before and after it was filled do not XOR to its
//! plaintext. What a rewrite does reveal is *which* blocks changed.
//!
//! Partial-page reads and writes (the walreceiver writes what it receives,
//! `XLogFileCopy` reads part of a page) are the caller's business: this
//! module transforms whole pages only.

use std::collections::BTreeMap;

use crate::kdf::{fill_random, wal_keys, Key256};
use crate::keyring::Keyring;
use crate::page::is_all_zero;
use crate::{Error, Result};

pub use crate::xts::XtsAes256;

/// PostgreSQL's WAL page size (`XLOG_BLCKSZ`, the build default).
pub const WAL_PAGE_SIZE: usize = 8192;
pub type WalPage = [u8; WAL_PAGE_SIZE];

/// `xlp_info` bit of the first page of a segment.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `SizeOfXLogShortPHD` on 64-bit platforms.
pub const SHORT_HEADER_LEN: usize = 24;
/// `SizeOfXLogLongPHD` on 64-bit platforms.
pub const LONG_HEADER_LEN: usize = 40;

const SALT_AT: usize = 20;
/// The last full block and the 8-byte partial block of the data unit (both
/// header lengths leave `8192 - H` = 8 mod 16), stored at `page[H..H+24]`.
const STEALING_PAIR_LEN: usize = 24;

/// The plaintext header fields of a WAL page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub pageaddr: u64,
    pub rem_len: u32,
    /// Present when `info & XLP_LONG_HEADER`.
    pub long: Option<LongHeader>,
}

/// The fields the first page of a segment adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeader {
    pub system_identifier: u64,
    pub segment_size: u32,
    pub xlog_blcksz: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl WalPageHeader {
    /// Reads the header at the start of `page`; `None` when `page` is too
    /// short to hold it. Offline tools read the segment size from the long
    /// header of a segment's first page this way.
    pub fn parse(page: &[u8]) -> Option<WalPageHeader> {
        if page.len() < SHORT_HEADER_LEN {
            return None;
        }
        let info = le16(page, 2);
        let long = if info & XLP_LONG_HEADER != 0 {
            if page.len() < LONG_HEADER_LEN {
                return None;
            }
            Some(LongHeader {
                system_identifier: le64(page, 24),
                segment_size: le32(page, 32),
                xlog_blcksz: le32(page, 36),
            })
        } else {
            None
        };
        Some(WalPageHeader {
            magic: le16(page, 0),
            info,
            timeline: le32(page, 4),
            pageaddr: le64(page, 8),
            rem_len: le32(page, 16),
            long,
        })
    }

    /// 24, or 40 for a long header: where the encrypted region starts.
    pub fn header_len(&self) -> usize {
        if self.long.is_some() {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }
}

/// The 4-byte segment salt stored in the header padding: data key generation
/// (1–255), then 3 random bytes that are not all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentSalt([u8; 4]);

impl SegmentSalt {
    /// A fresh salt for a new segment, from the operating system's CSPRNG.
    pub fn generate(generation: u8) -> Result<SegmentSalt> {
        if generation == 0 {
            return Err(Error::ReservedGeneration);
        }
        let mut salt = [generation, 0, 0, 0];
        while salt[1..] == [0, 0, 0] {
            fill_random(&mut salt[1..])?;
        }
        Ok(SegmentSalt(salt))
    }

    /// A salt from its stored bytes; `None` unless the generation byte and
    /// the random bytes are both non-zero.
    pub fn from_bytes(bytes: [u8; 4]) -> Option<SegmentSalt> {
        (bytes[0] != 0 && bytes[1..] != [0, 0, 0]).then_some(SegmentSalt(bytes))
    }

    /// The salt a WAL page carries; `None` for a plaintext page (padding
    /// zero), a malformed salt or a buffer shorter than a page header.
    pub fn from_page(page: &[u8]) -> Option<SegmentSalt> {
        let bytes = page.get(SALT_AT..SALT_AT + 4)?;
        SegmentSalt::from_bytes(bytes.try_into().expect("4 bytes"))
    }

    pub fn generation(&self) -> u8 {
        self.0[0]
    }

    pub fn to_bytes(&self) -> [u8; 4] {
        self.0
    }
}

// ---------------------------------------------------------------- pages

/// What the write path did with a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalWriteOutcome {
    /// All-zero page (pre-allocated segment): left untouched.
    PassThrough,
    Encrypted,
}

/// What the read path found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalReadOutcome {
    /// All-zero page, left untouched.
    Empty,
    /// Plaintext page (zero padding), left untouched.
    Plain,
    /// Decrypted in place, padding restored to zero.
    Decrypted { generation: u8 },
}

/// Page counts of a range transform.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalRangeSummary {
    /// All-zero pages, left untouched.
    pub empty: usize,
    /// Plaintext pages left untouched (reads only).
    pub plain: usize,
    /// Encrypted pages whose `xlp_pageaddr` is not their position in the
    /// file, left untouched (reads only): leftovers of a recycled segment,
    /// which PostgreSQL rejects by their plaintext header alone.
    pub stale: usize,
    /// Pages encrypted (writes) or decrypted (reads).
    pub encrypted: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SegmentKeyId {
    salt: SegmentSalt,
    timeline: u32,
    segment: u64,
}

enum ReadPlan {
    Empty,
    Plain,
    Stale,
    Decrypt(WalPageHeader, SegmentSalt),
    /// A page in the stream format (`crate::wal_stream`), as a receiver of
    /// streamed WAL stores it.
    Stream,
}

/// The WAL transform for one cluster: the keyring's data keys, cluster salt
/// and system identifier, and the WAL segment size. Keeps the expanded XTS
/// keys of the most recently used segment, so consecutive pages of one
/// segment cost one HKDF.
/// A `wal_segment_size` PostgreSQL allows: a power of two from 1 MiB to
/// 1 GiB.
pub(crate) fn check_segment_size(segment_size: u32) -> Result<()> {
    match segment_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&segment_size) {
        true => Ok(()),
        false => Err(Error::InvalidWalSegmentSize(segment_size)),
    }
}

/// Every data key the keyring holds, by generation.
pub(crate) fn held_keys(ring: &Keyring) -> BTreeMap<u8, Key256> {
    ring.generations()
        .map(|g| (g, ring.data_key(g).expect("listed generation").clone()))
        .collect()
}

#[derive(Clone)]
pub struct WalCipher {
    data_keys: BTreeMap<u8, Key256>,
    cluster_salt: [u8; 32],
    system_identifier: u64,
    segment_size: u32,
    cached: Option<(SegmentKeyId, XtsAes256)>,
    stream: crate::wal_stream::WalStreamCipher,
}

impl WalCipher {
    /// `segment_size` is the cluster's `wal_segment_size` in bytes (the
    /// server knows it; offline tools read it with [`WalPageHeader::parse`]
    /// from the first page of a segment).
    pub fn new(ring: &Keyring, segment_size: u32) -> Result<WalCipher> {
        check_segment_size(segment_size)?;
        Ok(WalCipher {
            data_keys: held_keys(ring),
            cluster_salt: ring.cluster_salt,
            system_identifier: ring.system_identifier,
            segment_size,
            cached: None,
            stream: crate::wal_stream::WalStreamCipher::new(ring, segment_size)?,
        })
    }

    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    /// The stream-format cipher of the same keyring.
    pub fn stream_cipher(&self) -> crate::wal_stream::WalStreamCipher {
        self.stream.clone()
    }

    pub fn has_generation(&self, generation: u8) -> bool {
        self.data_keys.contains_key(&generation)
    }

    /// Encrypts a plaintext WAL page in place and stores `salt` in its
    /// padding. An all-zero page is left as is; a page whose padding is not
    /// zero (already encrypted, or not a WAL page) is refused. On error the
    /// page is unchanged.
    pub fn encrypt_page(
        &mut self,
        page: &mut WalPage,
        salt: SegmentSalt,
    ) -> Result<WalWriteOutcome> {
        match self.plan_write(page, salt, None)? {
            None => Ok(WalWriteOutcome::PassThrough),
            Some(header) => {
                self.apply_encrypt(page, &header, salt);
                Ok(WalWriteOutcome::Encrypted)
            }
        }
    }

    /// Decrypts a WAL page in place; plaintext and all-zero pages are left
    /// untouched. The key is chosen by the page's own header. On error the
    /// page is unchanged.
    pub fn decrypt_page(&mut self, page: &mut WalPage) -> Result<WalReadOutcome> {
        match self.plan_read(page, None)? {
            ReadPlan::Empty => Ok(WalReadOutcome::Empty),
            // Without a position nothing is stale.
            ReadPlan::Plain | ReadPlan::Stale => Ok(WalReadOutcome::Plain),
            ReadPlan::Decrypt(header, salt) => {
                self.apply_decrypt(page, &header, salt);
                Ok(WalReadOutcome::Decrypted {
                    generation: salt.generation(),
                })
            }
            ReadPlan::Stream => {
                let generation = page[SALT_AT];
                self.stream.open_page(page, WAL_PAGE_SIZE)?;
                Ok(WalReadOutcome::Decrypted { generation })
            }
        }
    }

    /// Encrypts whole pages of segment `segment` starting at byte
    /// `file_offset` of the segment file, with the segment's salt. Every
    /// page that is not all zero must carry its own position as
    /// `xlp_pageaddr`. All or nothing: on error `buf` is unchanged.
    pub fn encrypt_range(
        &mut self,
        buf: &mut [u8],
        segment: u64,
        file_offset: u64,
        salt: SegmentSalt,
    ) -> Result<WalRangeSummary> {
        let start = self.range_start(buf, segment, file_offset)?;
        for (page, at) in pages(buf, start) {
            self.plan_write(page, salt, Some(at))?;
        }
        let mut summary = WalRangeSummary::default();
        for (page, at) in pages(buf, start) {
            match self.plan_write(page, salt, Some(at))? {
                None => summary.empty += 1,
                Some(header) => {
                    self.apply_encrypt(page, &header, salt);
                    summary.encrypted += 1;
                }
            }
        }
        Ok(summary)
    }

    /// Decrypts whole pages of segment `segment` read from byte
    /// `file_offset` of the segment file. Plaintext and all-zero pages, and
    /// encrypted pages left over from the file's previous life as another
    /// segment (their `xlp_pageaddr` is not their position), are left
    /// untouched. All or nothing: on error `buf` is unchanged.
    pub fn decrypt_range(
        &mut self,
        buf: &mut [u8],
        segment: u64,
        file_offset: u64,
    ) -> Result<WalRangeSummary> {
        let start = self.range_start(buf, segment, file_offset)?;
        for (page, at) in pages(buf, start) {
            self.plan_read(page, Some(at))?;
        }
        let mut summary = WalRangeSummary::default();
        for (page, at) in pages(buf, start) {
            match self.plan_read(page, Some(at))? {
                ReadPlan::Empty => summary.empty += 1,
                ReadPlan::Plain => summary.plain += 1,
                ReadPlan::Stale => summary.stale += 1,
                ReadPlan::Decrypt(header, salt) => {
                    self.apply_decrypt(page, &header, salt);
                    summary.encrypted += 1;
                }
                ReadPlan::Stream => {
                    self.stream.open_page(page, WAL_PAGE_SIZE)?;
                    summary.encrypted += 1;
                }
            }
        }
        Ok(summary)
    }

    /// The WAL position of `buf[0]`, after checking that `buf` is whole
    /// pages inside one segment.
    fn range_start(&self, buf: &[u8], segment: u64, file_offset: u64) -> Result<u64> {
        let page = WAL_PAGE_SIZE as u64;
        let seg = self.segment_size as u64;
        let inside = file_offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= seg);
        let start = segment
            .checked_mul(seg)
            .and_then(|s| s.checked_add(file_offset));
        match start {
            Some(start)
                if inside
                    && file_offset.is_multiple_of(page)
                    && buf.len().is_multiple_of(WAL_PAGE_SIZE) =>
            {
                Ok(start)
            }
            _ => Err(Error::WalRangeMisaligned {
                offset: file_offset,
                len: buf.len(),
                page_size: WAL_PAGE_SIZE,
                segment_size: self.segment_size,
            }),
        }
    }

    /// `Ok(None)`: pass the page through; `Ok(Some(header))`: encrypt it.
    fn plan_write(
        &self,
        page: &WalPage,
        salt: SegmentSalt,
        position: Option<u64>,
    ) -> Result<Option<WalPageHeader>> {
        let header = WalPageHeader::parse(page).expect("a whole page holds a header");
        let padding = &page[SALT_AT..SALT_AT + 4];
        if padding != [0; 4] {
            return Err(Error::UnexpectedWalPage {
                pageaddr: header.pageaddr,
                detail: format!(
                    "has header padding {} instead of zeros: it is not a plaintext WAL page; refusing to encrypt it",
                    hex::encode(padding)
                ),
            });
        }
        if is_all_zero(page) {
            return Ok(None);
        }
        self.check_header(&header)?;
        if let Some(at) = position.filter(|&at| at != header.pageaddr) {
            return Err(Error::UnexpectedWalPage {
                pageaddr: header.pageaddr,
                detail: format!(
                    "is being written at WAL position {}; refusing to encrypt it",
                    crate::error::lsn(at)
                ),
            });
        }
        self.check_generation(&header, salt)?;
        Ok(Some(header))
    }

    fn plan_read(&self, page: &WalPage, position: Option<u64>) -> Result<ReadPlan> {
        let header = WalPageHeader::parse(page).expect("a whole page holds a header");
        let padding: [u8; 4] = page[SALT_AT..SALT_AT + 4].try_into().expect("4 bytes");
        if padding == [0; 4] {
            return Ok(if is_all_zero(page) {
                ReadPlan::Empty
            } else {
                ReadPlan::Plain
            });
        }
        if position.is_some_and(|at| at != header.pageaddr) {
            return Ok(ReadPlan::Stale);
        }
        let salt = SegmentSalt::from_bytes(padding).ok_or_else(|| Error::UnexpectedWalPage {
            pageaddr: header.pageaddr,
            detail: format!(
                "carries a malformed segment salt {} (neither zero nor generation and random bytes)",
                hex::encode(padding)
            ),
        })?;
        self.check_header(&header)?;
        self.check_generation(&header, salt)?;
        if header.info & crate::wal_stream::XLP_TDE_STREAM != 0 {
            return Ok(ReadPlan::Stream);
        }
        Ok(ReadPlan::Decrypt(header, salt))
    }

    fn check_header(&self, header: &WalPageHeader) -> Result<()> {
        let detail = if !header.pageaddr.is_multiple_of(WAL_PAGE_SIZE as u64) {
            format!("has an xlp_pageaddr that is not a multiple of {WAL_PAGE_SIZE}")
        } else if let Some(long) = header.long.filter(|l| {
            l.segment_size != self.segment_size || l.xlog_blcksz != WAL_PAGE_SIZE as u32
        }) {
            format!(
                "has segment size {} and page size {} in its long header, expected {} and {WAL_PAGE_SIZE}",
                long.segment_size, long.xlog_blcksz, self.segment_size
            )
        } else {
            return Ok(());
        };
        Err(Error::UnexpectedWalPage {
            pageaddr: header.pageaddr,
            detail,
        })
    }

    fn check_generation(&self, header: &WalPageHeader, salt: SegmentSalt) -> Result<()> {
        if self.has_generation(salt.generation()) {
            Ok(())
        } else {
            Err(Error::UnknownWalGeneration {
                pageaddr: header.pageaddr,
                generation: salt.generation(),
            })
        }
    }

    /// The XTS keys of the page's segment, derived at most once per run of
    /// pages of one segment. The generation has been checked.
    fn xts(&mut self, header: &WalPageHeader, salt: SegmentSalt) -> &XtsAes256 {
        let id = SegmentKeyId {
            salt,
            timeline: header.timeline,
            segment: header.pageaddr / self.segment_size as u64,
        };
        if self.cached.as_ref().map(|(cached, _)| *cached) != Some(id) {
            let dek = &self.data_keys[&salt.generation()];
            let (k1, k2) = wal_keys(
                dek,
                &self.cluster_salt,
                self.system_identifier,
                id.timeline,
                id.segment,
                &salt.to_bytes(),
            );
            self.cached = Some((id, XtsAes256::new(&k1, &k2)));
        }
        &self.cached.as_ref().expect("just filled").1
    }

    fn apply_encrypt(&mut self, page: &mut WalPage, header: &WalPageHeader, salt: SegmentSalt) {
        let xts = self.xts(header, salt);
        let (tail, body) = region(page, header);
        xts.encrypt_parts(header.pageaddr as u128, body, tail);
        page[SALT_AT..SALT_AT + 4].copy_from_slice(&salt.to_bytes());
    }

    fn apply_decrypt(&mut self, page: &mut WalPage, header: &WalPageHeader, salt: SegmentSalt) {
        let xts = self.xts(header, salt);
        let (tail, body) = region(page, header);
        xts.decrypt_parts(header.pageaddr as u128, body, tail);
        page[SALT_AT..SALT_AT + 4].fill(0);
    }
}

/// The encrypted region of a page as (`page[H..H+24]`, `page[H+24..]`):
/// the XTS data unit is the second followed by the first.
fn region<'a>(page: &'a mut WalPage, header: &WalPageHeader) -> (&'a mut [u8], &'a mut [u8]) {
    let h = header.header_len();
    let (head, body) = page.split_at_mut(h + STEALING_PAIR_LEN);
    (&mut head[h..], body)
}

/// The pages of `buf` with their WAL positions.
fn pages(buf: &mut [u8], start: u64) -> impl Iterator<Item = (&mut WalPage, u64)> {
    buf.chunks_exact_mut(WAL_PAGE_SIZE)
        .zip((start..).step_by(WAL_PAGE_SIZE))
        .map(|(page, at)| (<&mut WalPage>::try_from(page).expect("whole pages"), at))
}
