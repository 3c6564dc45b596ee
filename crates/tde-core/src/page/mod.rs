//! The data page transform (DESIGN §3).
//!
//! On disk, an encrypted page keeps `pd_lsn` (bytes 0..8), `pd_checksum`
//! (8..10) and `pd_flags` (10..12) in plaintext. Bytes 12.. are XORed with an
//! AES-256-CTR keystream whose first counter block is
//! `LSN (64, BE) ‖ block number (32, BE) ‖ write nonce (16, BE) ‖ 0 (16)`,
//! after which bytes 18..20 (`pd_pagesize_version`, a constant) are replaced
//! by the write nonce. `pd_flags` gains, in bits PostgreSQL never sets:
//!
//! | bits | meaning |
//! | --- | --- |
//! | 15 | encrypted mark |
//! | 13–14 | fork kind whose key encrypted the page |
//! | 11–12 | page format version (1) |
//! | 3–10 | data key generation (1–255) |
//!
//! A server without `tde` rejects such a page ("invalid page") instead of
//! misreading it. All-zero pages and pages without the mark pass untouched.
//! A page whose LSN is 0 gets a fake LSN from a range real WAL never reaches,
//! and reads restore 0.

use std::collections::BTreeMap;

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher, StreamCipherCoreWrapper};
use aes::Aes256;

use crate::checksum::{page_checksum, set_checksum, stored_checksum};
use crate::kdf::{page_key, ForkKind};
use crate::keyring::Keyring;
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
pub const PAGE_FORMAT_V1: u8 = 1;

/// Fake LSNs live in `0xFF00_0000_0000_0000..`: 2^56 bytes of real WAL
/// would be needed to reach them.
pub const FAKE_LSN_BASE: u64 = 0xFF00_0000_0000_0000;

pub fn is_fake_lsn(lsn: u64) -> bool {
    lsn >> 56 == 0xFF
}

const ENCRYPTED_FROM: usize = 12;
const NONCE_AT: usize = 18;

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
    /// `None` when the bits name no fork kind this build knows (cannot happen
    /// with two bits and four kinds, kept for clarity of intent).
    pub fork: ForkKind,
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

fn iv(lsn: u64, block: u32, nonce: u16) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[0..8].copy_from_slice(&lsn.to_be_bytes());
    iv[8..12].copy_from_slice(&block.to_be_bytes());
    iv[12..14].copy_from_slice(&nonce.to_be_bytes());
    iv
}

type PageCtr = StreamCipherCoreWrapper<ctr::CtrCore<Aes256, ctr::flavors::Ctr128BE>>;

/// The page keystream, reusing the already expanded AES key schedule.
fn keystream(key: &Aes256, lsn: u64, block: u32, nonce: u16) -> PageCtr {
    let core = ctr::CtrCore::inner_iv_init(key.clone(), &iv(lsn, block, nonce).into());
    StreamCipherCoreWrapper::from_core(core)
}

/// What the write path did with a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// All-zero page: write the caller's buffer unchanged.
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

/// Per-write inputs chosen by the caller.
#[derive(Clone, Copy, Debug)]
pub struct WriteParams {
    pub block: u32,
    pub fork: ForkKind,
    pub generation: u8,
    pub nonce: u16,
    /// Maintain `pd_checksum` (the cluster has data checksums on).
    pub checksums: bool,
}

/// Page keys for every data key generation and fork kind, expanded once.
pub struct PageCipher {
    keys: BTreeMap<u8, [Aes256; 4]>,
}

impl PageCipher {
    pub fn new(ring: &Keyring) -> PageCipher {
        let mut keys = BTreeMap::new();
        for generation in ring.generations() {
            let dek = ring.data_key(generation).expect("listed generation");
            let per_fork = ForkKind::ALL.map(|fork| {
                let k = page_key(dek, &ring.cluster_salt, fork);
                Aes256::new(k.as_bytes().into())
            });
            keys.insert(generation, per_fork);
        }
        PageCipher { keys }
    }

    pub fn has_generation(&self, generation: u8) -> bool {
        self.keys.contains_key(&generation)
    }

    fn key(&self, generation: u8, fork: ForkKind, block: u32) -> Result<&Aes256> {
        self.keys
            .get(&generation)
            .map(|k| &k[fork as usize])
            .ok_or(Error::UnknownGeneration { block, generation })
    }

    /// Encrypts `src` into `dst`; `src` is never modified (it may be a shared
    /// buffer other processes still change).
    pub fn encrypt(
        &self,
        src: &Page,
        dst: &mut Page,
        p: &WriteParams,
        fake_lsn: impl FnOnce() -> u64,
    ) -> Result<WriteOutcome> {
        dst.copy_from_slice(src);
        self.encrypt_in_place(dst, p, fake_lsn)
    }

    /// Encrypts a private copy of a page in place. `fake_lsn` is called only
    /// when the page's LSN is 0 and must return a value in the fake range
    /// (see [`is_fake_lsn`]) not handed out before.
    pub fn encrypt_in_place(
        &self,
        page: &mut Page,
        p: &WriteParams,
        fake_lsn: impl FnOnce() -> u64,
    ) -> Result<WriteOutcome> {
        let flags = flags(page);
        if flags & !PG_FLAG_BITS != 0 || size_version(page) != STANDARD_SIZE_VERSION {
            if is_all_zero(page) {
                return Ok(WriteOutcome::PassThrough);
            }
            return Err(Error::UnexpectedPageHeader {
                block: p.block,
                flags,
                size_version: size_version(page),
            });
        }
        let key = self.key(p.generation, p.fork, p.block)?;
        let mut lsn = page_lsn(page);
        if lsn == 0 {
            lsn = fake_lsn();
            debug_assert!(is_fake_lsn(lsn));
            set_page_lsn(page, lsn);
        }
        keystream(key, lsn, p.block, p.nonce).apply_keystream(&mut page[ENCRYPTED_FROM..]);
        page[NONCE_AT..NONCE_AT + 2].copy_from_slice(&p.nonce.to_le_bytes());
        let mark = PageMark {
            generation: p.generation,
            fork: p.fork,
            format: PAGE_FORMAT_V1,
        };
        set_flags(page, flags | mark.to_bits());
        if p.checksums {
            let c = page_checksum(page, p.block);
            set_checksum(page, c);
        }
        Ok(WriteOutcome::Encrypted)
    }

    /// Decrypts a page read from disk in place; plaintext and empty pages are
    /// left untouched. The key is chosen by the page's own mark.
    pub fn decrypt(&self, page: &mut Page, block: u32, checksums: bool) -> Result<ReadOutcome> {
        let mark = match classify(page) {
            PageState::Empty => return Ok(ReadOutcome::Empty),
            PageState::Plain => return Ok(ReadOutcome::Plain),
            PageState::Encrypted(mark) => mark,
        };
        let checksum_ok = !checksums || page_checksum(page, block) == stored_checksum(page);
        if !checksum_ok && (mark.format != PAGE_FORMAT_V1 || !self.has_generation(mark.generation))
        {
            // The mark itself may be what is damaged: leave the page as
            // stored, so PostgreSQL's own verification reports the checksum
            // failure and zero_damaged_pages / ignore_checksum_failure apply.
            return Ok(ReadOutcome::Damaged);
        }
        if mark.format != PAGE_FORMAT_V1 {
            return Err(Error::UnknownPageFormat {
                block,
                format: mark.format,
            });
        }
        let key = self.key(mark.generation, mark.fork, block)?;
        let lsn = page_lsn(page);
        let nonce = u16::from_le_bytes([page[NONCE_AT], page[NONCE_AT + 1]]);
        keystream(key, lsn, block, nonce).apply_keystream(&mut page[ENCRYPTED_FROM..]);
        page[NONCE_AT..NONCE_AT + 2].copy_from_slice(&STANDARD_SIZE_VERSION.to_le_bytes());
        let f = flags(page);
        set_flags(page, f & PG_FLAG_BITS);
        if is_fake_lsn(lsn) {
            set_page_lsn(page, 0);
        }
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
