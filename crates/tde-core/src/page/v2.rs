//! Page format 2: bytes 12..8192 encrypted in one of two modes, chosen by
//! how the page can be rewritten (see `docs/format/pages.md`):
//!
//! - **wide** (format code 2): HCTR2-AES-256 ([`crate::hctr2`]) over bytes
//!   12..8192 as one message. Every stored bit depends on every plaintext
//!   bit, so two versions under one tweak reveal only whether they are
//!   equal. Used for temporary and unlogged relations, which a crash
//!   removes or resets, so a torn write of them is never read.
//! - **xts** (format code 3): XTS-AES-256 ([`crate::xts`]) with the page as
//!   one data unit, laid out so that no cipher block spans two 512-byte
//!   sectors: the data unit is bytes 32..8192 followed by bytes 12..32 (its
//!   last full block and the 4-byte stolen block both lie in sector 0).
//!   Each stored 16-byte block from byte 32 on depends only on its own
//!   plaintext block and position (bytes 12..32 depend on each other, all
//!   within sector 0), so a torn write reads back, sector by sector, as the
//!   old or the new plaintext. Two rules extend that to sectors PostgreSQL
//!   has not written yet: a stored sector (past sector 0) that is all zeros
//!   reads as zeros, and a page that is empty past its 24-byte header (as
//!   `PageInit` leaves it), or a map page written over a block that is
//!   zeros on disk without a full-page image to repair it, is stored with
//!   its zero sectors after sector 0 as zeros. Used for permanent
//!   relations.
//!
//! Both take the same 128-bit tweak, read back from where the page is:
//! `pd_lsn (u64 LE) ‖ block number (u32 LE) ‖ relfilenumber (u32 LE)`;
//! for XTS that is the data unit number as a little-endian integer.
//! `pd_lsn` is stored as PostgreSQL wrote it.
//!
//! Keys, per data key generation and fork kind:
//! `HKDF-SHA256(DEK, cluster salt, "tde/v2/page/wide/<fork>")` (32 bytes)
//! and `HKDF-SHA256(DEK, cluster salt, "tde/v2/page/xts/<fork>")` (64
//! bytes, K1 ‖ K2); see [`crate::kdf::page_keys_v2`].

use super::{Page, ENCRYPTED_FROM, PAGE_SIZE};
use crate::hctr2::Hctr2Aes256;
use crate::xts::XtsAes256;

/// Bytes per sector: the smallest unit a disk writes atomically.
pub const SECTOR: usize = 512;
/// Where XTS's data unit starts: the first 16-aligned byte after the
/// plaintext header fields with room for a whole block before it.
const XTS_BODY_FROM: usize = 32;

/// The two modes of format 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Wide,
    Xts,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Wide, Mode::Xts];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Wide => "wide",
            Mode::Xts => "xts",
        }
    }
}

/// The keys of one generation and fork kind.
pub struct ForkKeys {
    pub wide: Hctr2Aes256,
    pub xts: XtsAes256,
}

/// The tweak of a page: its LSN, block number and relfilenumber.
pub fn tweak(lsn: u64, block: u32, relfilenumber: u32) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[0..8].copy_from_slice(&lsn.to_le_bytes());
    t[8..12].copy_from_slice(&block.to_le_bytes());
    t[12..16].copy_from_slice(&relfilenumber.to_le_bytes());
    t
}

/// `PageHeaderData`'s size: what an empty page has besides zeros.
const PAGE_HEADER: usize = 24;

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// The byte range of sector `k`.
fn sector(k: usize) -> std::ops::Range<usize> {
    k * SECTOR..(k + 1) * SECTOR
}

/// The sectors after sector 0 that are all zeros, as a bit set (bit k for
/// sector k).
fn zero_sectors(page: &Page) -> u16 {
    (1..PAGE_SIZE / SECTOR)
        .filter(|&k| all_zero(&page[sector(k)]))
        .fold(0, |set, k| set | 1 << k)
}

fn fill_zero_sectors(page: &mut Page, set: u16) {
    for k in (1..PAGE_SIZE / SECTOR).filter(|&k| set & 1 << k != 0) {
        page[sector(k)].fill(0);
    }
}

/// Encrypts bytes 12.. of `page` in place; the tweak's LSN is the page's.
/// In XTS mode, `keep_zero_sectors` stores every sector after sector 0
/// whose plaintext is all zeros as zeros (the write path asks for it on a
/// free space or visibility map page's write over a block still zeros on
/// disk); an empty page does so whatever it says.
pub fn encrypt(
    keys: &ForkKeys,
    mode: Mode,
    page: &mut Page,
    block: u32,
    relfilenumber: u32,
    keep_zero_sectors: bool,
) {
    let t = tweak(super::page_lsn(page), block, relfilenumber);
    match mode {
        Mode::Wide => keys.wide.encrypt(&t, &mut page[ENCRYPTED_FROM..]),
        Mode::Xts => {
            // Zero sectors kept as zeros: a torn write of the page over a
            // block not written yet then reads back as PostgreSQL wrote it.
            let zero = match keep_zero_sectors || all_zero(&page[PAGE_HEADER..]) {
                true => zero_sectors(page),
                false => 0,
            };
            let (head, body) = page.split_at_mut(XTS_BODY_FROM);
            keys.xts
                .encrypt_parts(u128::from_le_bytes(t), body, &mut head[ENCRYPTED_FROM..]);
            fill_zero_sectors(page, zero);
        }
    }
}

/// Inverse of [`encrypt`].
pub fn decrypt(keys: &ForkKeys, mode: Mode, page: &mut Page, block: u32, relfilenumber: u32) {
    let t = tweak(super::page_lsn(page), block, relfilenumber);
    match mode {
        Mode::Wide => keys.wide.decrypt(&t, &mut page[ENCRYPTED_FROM..]),
        Mode::Xts => {
            // Sectors still as the file was extended, or as an empty page
            // stores them: zeros, not ciphertext.
            let zero = zero_sectors(page);
            let (head, body) = page.split_at_mut(XTS_BODY_FROM);
            keys.xts
                .decrypt_parts(u128::from_le_bytes(t), body, &mut head[ENCRYPTED_FROM..]);
            fill_zero_sectors(page, zero);
        }
    }
}

const _: () = assert!(
    XTS_BODY_FROM.is_multiple_of(16)
        && SECTOR.is_multiple_of(16)
        && PAGE_SIZE.is_multiple_of(SECTOR)
);
const _: () = assert!(XTS_BODY_FROM - ENCRYPTED_FROM >= 16 && XTS_BODY_FROM - ENCRYPTED_FROM < 32);
