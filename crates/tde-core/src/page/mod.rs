//! The relation page transform. The on-disk format, and the argument that
//! it never lets two different plaintexts share a key and keystream, is
//! `docs/format/pages.md`; this module is its implementation.
//!
//! On disk an encrypted page keeps `pd_lsn` (bytes 0..8), `pd_checksum`
//! (8..10) and `pd_flags` (10..12) in plaintext; bytes 12.. are encrypted.
//! `pd_flags` gains, in bits PostgreSQL never sets:
//!
//! | bits | meaning |
//! | --- | --- |
//! | 15 | encrypted mark |
//! | 13–14 | fork kind whose key encrypted the page |
//! | 11–12 | format code: 1 = format 1 ([`v1`], AES-CTR, tde 0.1–0.2); 2 = format 2, wide mode; 3 = format 2, XTS mode ([`v2`]) |
//! | 3–10 | data key generation (1–255) |
//!
//! A server without `tde` rejects such a page ("invalid page") instead of
//! misreading it. All-zero pages and pages without the mark pass untouched.

pub mod v1;
pub mod v2;

use std::collections::BTreeMap;

use aes::Aes256;

pub use v2::Mode;

use crate::checksum::{page_checksum, set_checksum, stored_checksum};
use crate::hctr2::Hctr2Aes256;
use crate::kdf::{page_keys_v2, ForkKind};
use crate::keyring::Keyring;
use crate::xts::XtsAes256;
use crate::{Error, Result};

pub const PAGE_SIZE: usize = 8192;
pub type Page = [u8; PAGE_SIZE];

/// `BLCKSZ | PG_PAGE_LAYOUT_VERSION`, the value every PostgreSQL page carries.
pub const STANDARD_SIZE_VERSION: u16 = 8192 | 4;
/// Flag bits PostgreSQL itself uses (PD_VALID_FLAG_BITS).
pub const PG_FLAG_BITS: u16 = 0x0007;

const MARK_ENCRYPTED: u16 = 0x8000;
const FORK_SHIFT: u32 = 13;
const FORMAT_SHIFT: u32 = 11;
const GENERATION_SHIFT: u32 = 3;

/// Format code of format 1 (AES-CTR with a stored nonce).
pub const FORMAT_CTR: u8 = 1;
/// Format code of format 2, wide mode (temporary and unlogged relations).
pub const FORMAT_WIDE: u8 = 2;
/// Format code of format 2, XTS mode (permanent relations).
pub const FORMAT_XTS: u8 = 3;

/// First encrypted byte: `pd_lsn`, `pd_checksum` and `pd_flags` stay plain.
const ENCRYPTED_FROM: usize = 12;

/// What a page's own bytes say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// All zero: PostgreSQL's "new page", stored as is.
    Empty,
    /// No encrypted mark.
    Plain,
    Encrypted(PageMark),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMark {
    pub generation: u8,
    pub fork: ForkKind,
    /// The format code (see the module documentation).
    pub format: u8,
}

impl PageMark {
    fn to_bits(self) -> u16 {
        MARK_ENCRYPTED
            | ((self.fork as u16) << FORK_SHIFT)
            | ((self.format as u16) << FORMAT_SHIFT)
            | ((self.generation as u16) << GENERATION_SHIFT)
    }

    fn from_flags(flags: u16) -> Option<PageMark> {
        if flags & MARK_ENCRYPTED == 0 {
            return None;
        }
        Some(PageMark {
            fork: ForkKind::from_index(((flags >> FORK_SHIFT) & 0x3) as u8)
                .expect("two bits always name a fork kind"),
            format: ((flags >> FORMAT_SHIFT) & 0x3) as u8,
            generation: ((flags >> GENERATION_SHIFT) & 0xFF) as u8,
        })
    }

    /// The format version (1 or 2) of a known format code.
    pub fn format_version(&self) -> Option<u8> {
        match self.format {
            FORMAT_CTR => Some(1),
            FORMAT_WIDE | FORMAT_XTS => Some(2),
            _ => None,
        }
    }
}

pub fn page_lsn(page: &Page) -> u64 {
    let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    ((hi as u64) << 32) | lo as u64
}

fn set_page_lsn(page: &mut Page, lsn: u64) {
    page[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
    page[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
}

fn flags(page: &Page) -> u16 {
    u16::from_le_bytes([page[10], page[11]])
}

fn set_flags(page: &mut Page, flags: u16) {
    page[10..12].copy_from_slice(&flags.to_le_bytes());
}

fn size_version(page: &Page) -> u16 {
    u16::from_le_bytes([page[18], page[19]])
}

pub fn is_all_zero(page: &Page) -> bool {
    page.chunks_exact(8)
        .all(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")) == 0)
}

pub fn classify(page: &Page) -> PageState {
    match PageMark::from_flags(flags(page)) {
        Some(mark) => PageState::Encrypted(mark),
        None if is_all_zero(page) => PageState::Empty,
        None => PageState::Plain,
    }
}

/// The LSN PostgreSQL gave a page, read from the page as stored (format 1
/// replaced an LSN of 0 by a fake one; nothing else changes `pd_lsn`).
pub fn original_lsn(stored: &Page) -> u64 {
    match classify(stored) {
        PageState::Encrypted(mark) if mark.format == FORMAT_CTR => v1::original_lsn(stored),
        _ => page_lsn(stored),
    }
}

/// What the write path did with a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Write the caller's buffer unchanged: an all-zero page.
    PassThrough,
    /// The encrypted page is in the destination buffer.
    Encrypted,
}

/// What the read path found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Empty,
    Plain,
    /// Decrypted in place. `checksum_ok` is false when data checksums are on
    /// and the stored checksum did not match the stored bytes; the page then
    /// carries a plaintext checksum that deliberately fails verification, so
    /// PostgreSQL reports (or, with `ignore_checksum_failure`, tolerates) it
    /// exactly as for a plaintext page.
    Decrypted {
        generation: u8,
        checksum_ok: bool,
    },
    /// Data checksums are on, the stored checksum does not match and the
    /// mark names no key this keyring holds: the page is left as stored for
    /// PostgreSQL's verification to reject (or zero) like any damaged page.
    Damaged,
}

/// Where a page is written and with which key.
#[derive(Clone, Copy, Debug)]
pub struct WriteParams {
    pub block: u32,
    /// The relation file's number (`relfilenode`), part of the tweak.
    pub relfilenumber: u32,
    pub fork: ForkKind,
    pub generation: u8,
    pub mode: Mode,
    /// Maintain `pd_checksum` (the cluster has data checksums on).
    pub checksums: bool,
    /// XTS mode only: store each sector after sector 0 whose plaintext is
    /// all zeros as zeros ([`RewritePlan::OverZeros`]).
    pub keep_zero_sectors: bool,
}

/// Every page key of one data key generation, expanded once.
struct GenerationKeys {
    /// Format 1, read only.
    ctr: [Aes256; 4],
    /// Format 2, indexed by fork kind.
    v2: [v2::ForkKeys; 4],
}

/// Page keys for every data key generation of a keyring.
pub struct PageCipher {
    keys: BTreeMap<u8, GenerationKeys>,
}

impl PageCipher {
    pub fn new(ring: &Keyring) -> PageCipher {
        let mut keys = BTreeMap::new();
        for generation in ring.generations() {
            let dek = ring.data_key(generation).expect("listed generation");
            let salt = &ring.cluster_salt;
            let v2 = ForkKind::ALL.map(|fork| {
                let (wide, k1, k2) = page_keys_v2(dek, salt, fork);
                v2::ForkKeys {
                    wide: Hctr2Aes256::new(&wide),
                    xts: XtsAes256::new(&k1, &k2),
                }
            });
            let ctr = v1::keys(dek, salt);
            keys.insert(generation, GenerationKeys { ctr, v2 });
        }
        PageCipher { keys }
    }

    pub fn has_generation(&self, generation: u8) -> bool {
        self.keys.contains_key(&generation)
    }

    fn generation_keys(&self, generation: u8, block: u32) -> Result<&GenerationKeys> {
        self.keys
            .get(&generation)
            .ok_or(Error::UnknownGeneration { block, generation })
    }

    /// Encrypts `src` into `dst`; `src` is never modified (it may be a shared
    /// buffer other processes still change).
    pub fn encrypt(&self, src: &Page, dst: &mut Page, p: &WriteParams) -> Result<WriteOutcome> {
        dst.copy_from_slice(src);
        self.encrypt_in_place(dst, p)
    }

    /// Encrypts a private copy of a page in place, in format 2.
    pub fn encrypt_in_place(&self, page: &mut Page, p: &WriteParams) -> Result<WriteOutcome> {
        let pg_flags = match check_writable(page, p.block)? {
            Some(f) => f,
            None => return Ok(WriteOutcome::PassThrough),
        };
        let key = self.generation_keys(p.generation, p.block)?;
        v2::encrypt(
            &key.v2[p.fork as usize],
            p.mode,
            page,
            p.block,
            p.relfilenumber,
            p.keep_zero_sectors,
        );
        let format = match p.mode {
            Mode::Wide => FORMAT_WIDE,
            Mode::Xts => FORMAT_XTS,
        };
        finish_write(
            page,
            pg_flags,
            p.fork,
            p.generation,
            format,
            p.block,
            p.checksums,
        );
        Ok(WriteOutcome::Encrypted)
    }

    /// Encrypts a private copy of a page in format 1, as tde 0.1.0 and 0.2.0
    /// did; `fake_lsn` (in [`v1::FAKE_LSN_BASE`]..) replaces an LSN of 0.
    /// Only tests write format 1 now.
    #[allow(clippy::too_many_arguments)]
    pub fn encrypt_format1_in_place(
        &self,
        page: &mut Page,
        block: u32,
        fork: ForkKind,
        generation: u8,
        nonce: u16,
        fake_lsn: u64,
        checksums: bool,
    ) -> Result<WriteOutcome> {
        let pg_flags = match check_writable(page, block)? {
            Some(f) => f,
            None => return Ok(WriteOutcome::PassThrough),
        };
        let key = &self.generation_keys(generation, block)?.ctr[fork as usize];
        v1::encrypt(key, page, block, nonce, fake_lsn);
        finish_write(
            page, pg_flags, fork, generation, FORMAT_CTR, block, checksums,
        );
        Ok(WriteOutcome::Encrypted)
    }

    /// Decrypts a page read from disk in place; plaintext and empty pages are
    /// left untouched. The key and format are chosen by the page's own mark;
    /// `relfilenumber` is that of the file the page was read from.
    pub fn decrypt(
        &self,
        page: &mut Page,
        block: u32,
        relfilenumber: u32,
        checksums: bool,
    ) -> Result<ReadOutcome> {
        let mark = match classify(page) {
            PageState::Empty => return Ok(ReadOutcome::Empty),
            PageState::Plain => return Ok(ReadOutcome::Plain),
            PageState::Encrypted(mark) => mark,
        };
        let checksum_ok = !checksums || page_checksum(page, block) == stored_checksum(page);
        let known = mark.format_version().is_some() && self.has_generation(mark.generation);
        if !checksum_ok && !known {
            // The mark itself may be what is damaged: leave the page as
            // stored, so PostgreSQL's own verification reports the checksum
            // failure and zero_damaged_pages / ignore_checksum_failure apply.
            return Ok(ReadOutcome::Damaged);
        }
        if mark.format_version().is_none() {
            return Err(Error::UnknownPageFormat {
                block,
                format: mark.format,
            });
        }
        let key = self.generation_keys(mark.generation, block)?;
        let fork = mark.fork as usize;
        match mark.format {
            FORMAT_CTR => v1::decrypt(&key.ctr[fork], page, block),
            FORMAT_WIDE => v2::decrypt(&key.v2[fork], Mode::Wide, page, block, relfilenumber),
            _ => v2::decrypt(&key.v2[fork], Mode::Xts, page, block, relfilenumber),
        }
        let f = flags(page);
        set_flags(page, f & PG_FLAG_BITS);
        if checksums {
            let c = page_checksum(page, block);
            set_checksum(page, if checksum_ok { c } else { c ^ 1 });
        }
        Ok(ReadOutcome::Decrypted {
            generation: mark.generation,
            checksum_ok,
        })
    }
}

/// `Ok(None)` for an all-zero page (stored as is), else the page's own
/// flag bits; a page that is not a plaintext PostgreSQL page is refused.
fn check_writable(page: &Page, block: u32) -> Result<Option<u16>> {
    let flags = flags(page);
    if flags & !PG_FLAG_BITS != 0 || size_version(page) != STANDARD_SIZE_VERSION {
        if is_all_zero(page) {
            return Ok(None);
        }
        return Err(Error::UnexpectedPageHeader {
            block,
            flags,
            size_version: size_version(page),
        });
    }
    Ok(Some(flags))
}

fn finish_write(
    page: &mut Page,
    pg_flags: u16,
    fork: ForkKind,
    generation: u8,
    format: u8,
    block: u32,
    checksums: bool,
) {
    let mark = PageMark {
        generation,
        fork,
        format,
    };
    set_flags(page, pg_flags | mark.to_bits());
    if checksums {
        let c = page_checksum(page, block);
        set_checksum(page, c);
    }
}

/// How to rewrite a page of a permanent relation over the version of the
/// same block on disk, when the write may not be covered by a full-page
/// image in WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewritePlan {
    /// Encrypt under the current generation: the stored version has another
    /// LSN, or is not a page PostgreSQL would read, so this write is not a
    /// rewrite of it.
    Fresh,
    /// The stored version is plaintext with the same LSN and a header
    /// PostgreSQL accepts: write plaintext, so that only the bytes
    /// PostgreSQL changed change on disk.
    KeepPlaintext,
    /// The stored version is in XTS mode with the same LSN: encrypt under
    /// its generation, so that only the 16-byte blocks PostgreSQL changed
    /// change on disk.
    KeepGeneration(u8),
    /// The block is zeros on disk (extended, never written): encrypt under
    /// the current generation, keeping the sectors after sector 0 that are
    /// zeros in plaintext as zeros. A torn write may keep the old, all-zero
    /// sector 0 with new later sectors; a server without tde reads that as
    /// zeros when those sectors are zeros, and so does tde, because a stored
    /// sector after sector 0 that is all zeros reads as zeros.
    OverZeros,
}

/// Whether PostgreSQL's page verification accepts the header of `page`, a
/// page that is not all zeros: what it checks before the checksum. A
/// stored page that fails it is not a plaintext version to keep in
/// plaintext; a torn first write that kept the zero first sector over
/// encrypted later sectors is one, and PostgreSQL rewrites such a free
/// space map page after zeroing it in memory.
fn plain_header_is_sane(page: &Page) -> bool {
    let u16_at = |at: usize| u16::from_le_bytes([page[at], page[at + 1]]) as usize;
    let (lower, upper, special) = (u16_at(12), u16_at(14), u16_at(16));
    upper != 0
        && flags(page) & !PG_FLAG_BITS == 0
        && lower <= upper
        && upper <= special
        && special <= PAGE_SIZE
        && special.is_multiple_of(8)
}

/// The plan for writing, in XTS mode, a page whose LSN is `lsn` over
/// `stored`, the version of the same block on disk. See
/// `docs/format/pages.md`, "Torn writes".
pub fn plan_rewrite(stored: &Page, lsn: u64) -> RewritePlan {
    match classify(stored) {
        PageState::Plain if page_lsn(stored) == lsn && plain_header_is_sane(stored) => {
            RewritePlan::KeepPlaintext
        }
        PageState::Encrypted(mark) if mark.format == FORMAT_XTS && page_lsn(stored) == lsn => {
            RewritePlan::KeepGeneration(mark.generation)
        }
        PageState::Empty => RewritePlan::OverZeros,
        _ => RewritePlan::Fresh,
    }
}
