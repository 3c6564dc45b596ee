//! Page format 1, as tde 0.1.0 and 0.2.0 wrote it: AES-256-CTR over bytes
//! 12.. with the first counter block
//! `LSN (64, BE) ‖ block number (32, BE) ‖ write nonce (16, BE) ‖ 0 (16)`;
//! the random write nonce is then stored in bytes 18..20 in place of the
//! constant `pd_pagesize_version`. A page whose LSN was 0 was stored with a
//! fake LSN from [`FAKE_LSN_BASE`] upwards, and reads restore 0.
//!
//! This release only reads format 1 (and rewrites such pages in format 2
//! whenever it writes them). The writer stays for tests that need pages as
//! the previous releases stored them.

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher, StreamCipherCoreWrapper};
use aes::Aes256;

use super::{page_lsn, set_page_lsn, Page, ENCRYPTED_FROM, STANDARD_SIZE_VERSION};
use crate::kdf::{page_key, ForkKind, Key256};

/// Format 1's fake LSNs live in `0xFF00_0000_0000_0000..`.
pub const FAKE_LSN_BASE: u64 = 0xFF00_0000_0000_0000;

pub fn is_fake_lsn(lsn: u64) -> bool {
    lsn >> 56 == 0xFF
}

const NONCE_AT: usize = 18;

/// The LSN PostgreSQL wrote, from a format 1 page as stored.
pub fn original_lsn(stored: &Page) -> u64 {
    let lsn = page_lsn(stored);
    if is_fake_lsn(lsn) {
        0
    } else {
        lsn
    }
}

/// Format 1's page keys for one data key: `HKDF(DEK, cluster salt,
/// "tde/v1/page/<fork>")`, expanded, indexed by fork kind.
pub fn keys(dek: &Key256, cluster_salt: &[u8; 32]) -> [Aes256; 4] {
    ForkKind::ALL.map(|fork| Aes256::new(page_key(dek, cluster_salt, fork).as_bytes().into()))
}

type PageCtr = StreamCipherCoreWrapper<ctr::CtrCore<Aes256, ctr::flavors::Ctr128BE>>;

fn keystream(key: &Aes256, lsn: u64, block: u32, nonce: u16) -> PageCtr {
    let mut iv = [0u8; 16];
    iv[0..8].copy_from_slice(&lsn.to_be_bytes());
    iv[8..12].copy_from_slice(&block.to_be_bytes());
    iv[12..14].copy_from_slice(&nonce.to_be_bytes());
    let core = ctr::CtrCore::inner_iv_init(key.clone(), &iv.into());
    StreamCipherCoreWrapper::from_core(core)
}

/// Decrypts bytes 12.. of a format 1 page in place and puts back
/// `pd_pagesize_version` and an LSN of 0. Flags and checksum are the
/// caller's.
pub fn decrypt(key: &Aes256, page: &mut Page, block: u32) {
    let lsn = page_lsn(page);
    let nonce = u16::from_le_bytes([page[NONCE_AT], page[NONCE_AT + 1]]);
    keystream(key, lsn, block, nonce).apply_keystream(&mut page[ENCRYPTED_FROM..]);
    page[NONCE_AT..NONCE_AT + 2].copy_from_slice(&STANDARD_SIZE_VERSION.to_le_bytes());
    if is_fake_lsn(lsn) {
        set_page_lsn(page, 0);
    }
}

/// Encrypts a plaintext page as format 1 did: `fake_lsn` replaces an LSN of
/// 0. Sets the keystream part only; the caller sets the mark (format code
/// [`super::FORMAT_CTR`]) and the checksum.
pub fn encrypt(key: &Aes256, page: &mut Page, block: u32, nonce: u16, fake_lsn: u64) {
    let mut lsn = page_lsn(page);
    if lsn == 0 {
        debug_assert!(is_fake_lsn(fake_lsn));
        lsn = fake_lsn;
        set_page_lsn(page, lsn);
    }
    keystream(key, lsn, block, nonce).apply_keystream(&mut page[ENCRYPTED_FROM..]);
    page[NONCE_AT..NONCE_AT + 2].copy_from_slice(&nonce.to_le_bytes());
}
