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
//!   Every stored 16-byte block depends only on its own plaintext block and
//!   position, so a torn write reads back, sector by sector, as the old or
//!   the new plaintext. Used for permanent relations.
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

/// Encrypts bytes 12.. of `page` in place; the tweak's LSN is the page's.
pub fn encrypt(keys: &ForkKeys, mode: Mode, page: &mut Page, block: u32, relfilenumber: u32) {
    let t = tweak(super::page_lsn(page), block, relfilenumber);
    match mode {
        Mode::Wide => keys.wide.encrypt(&t, &mut page[ENCRYPTED_FROM..]),
        Mode::Xts => {
            let (head, body) = page.split_at_mut(XTS_BODY_FROM);
            keys.xts
                .encrypt_parts(u128::from_le_bytes(t), body, &mut head[ENCRYPTED_FROM..]);
        }
    }
}

/// Inverse of [`encrypt`].
pub fn decrypt(keys: &ForkKeys, mode: Mode, page: &mut Page, block: u32, relfilenumber: u32) {
    let t = tweak(super::page_lsn(page), block, relfilenumber);
    match mode {
        Mode::Wide => keys.wide.decrypt(&t, &mut page[ENCRYPTED_FROM..]),
        Mode::Xts => {
            let (head, body) = page.split_at_mut(XTS_BODY_FROM);
            keys.xts
                .decrypt_parts(u128::from_le_bytes(t), body, &mut head[ENCRYPTED_FROM..]);
        }
    }
}

const _: () = assert!(
    XTS_BODY_FROM.is_multiple_of(16)
        && SECTOR.is_multiple_of(16)
        && PAGE_SIZE.is_multiple_of(SECTOR)
);
const _: () = assert!(XTS_BODY_FROM - ENCRYPTED_FROM >= 16 && XTS_BODY_FROM - ENCRYPTED_FROM < 32);
