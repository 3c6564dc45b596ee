//! WAL as it leaves the server through a replication connection (work in
//! progress, not wired into the server yet).
//!
//! A walsender sends WAL up to the flush pointer, which may end anywhere in
//! a page, and every receiver (a standby's walreceiver, `pg_receivewal`,
//! `pg_basebackup -X stream`) stores the bytes at the offsets they came
//! from. The disk format (XTS, `crate::wal`) cannot travel that way: a send
//! that ends inside a 16-byte block and the next send that completes it
//! would leave the receiver a block made of two different encryptions. So
//! what a walsender reads is turned into the **stream format**, in which
//! every byte can be decrypted on its own:
//!
//! - the page header stays plaintext, with bit `XLP_TDE_STREAM` (0x0010,
//!   unused by PostgreSQL 15 to 18, whose readers reject it: no stock tool
//!   mistakes such a page for plaintext) set in `xlp_info` and the segment
//!   salt in the padding, as on disk;
//! - byte `x` of the segment past the header is XORed with byte `x` of the
//!   AES-256-CTR keystream of the segment's stream key
//!   ([`crate::kdf::wal_stream_key`]), counter block `x / 16` (128-bit
//!   big-endian) from 0 at the segment's start.
//!
//! A keystream is safe here because a walsender only sends WAL that is
//! flushed, and a flushed byte at one position of one timeline is never
//! different in any later send: the same position always carries the same
//! plaintext under the same key. (Storage that loses acknowledged flushes,
//! or a crash-consistent copy of the cluster started as a second primary,
//! would break that; the per-segment random salt bounds it to the rest of
//! the segment it happened in.)

use std::collections::BTreeMap;

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use aes::Aes256;

use crate::kdf::{wal_stream_key, Key256};
use crate::keyring::Keyring;
use crate::page::is_all_zero;
use crate::wal::{SegmentSalt, WalPage, WalPageHeader, WAL_PAGE_SIZE};
use crate::{Error, Result};

/// The `xlp_info` bit of a page in stream format.
pub const XLP_TDE_STREAM: u16 = 0x0010;

const SALT_AT: usize = 20;

type Ctr = ctr::Ctr128BE<Aes256>;

/// Whether `page` (at least a page header) is in stream format.
pub fn is_stream_page(page: &[u8]) -> bool {
    WalPageHeader::parse(page).is_some_and(|h| h.info & XLP_TDE_STREAM != 0)
}

#[derive(Clone)]
pub struct WalStreamCipher {
    data_keys: BTreeMap<u8, Key256>,
    cluster_salt: [u8; 32],
    system_identifier: u64,
    segment_size: u32,
}

impl WalStreamCipher {
    pub fn new(ring: &Keyring, segment_size: u32) -> Result<WalStreamCipher> {
        if !segment_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&segment_size) {
            return Err(Error::InvalidWalSegmentSize(segment_size));
        }
        let data_keys = ring
            .generations()
            .map(|g| (g, ring.data_key(g).expect("listed generation").clone()))
            .collect();
        Ok(WalStreamCipher {
            data_keys,
            cluster_salt: ring.cluster_salt,
            system_identifier: ring.system_identifier,
            segment_size,
        })
    }

    fn keystream(&self, header: &WalPageHeader, salt: SegmentSalt) -> Result<Ctr> {
        let dek = self
            .data_keys
            .get(&salt.generation())
            .ok_or(Error::UnknownWalGeneration {
                generation: salt.generation(),
                pageaddr: header.pageaddr,
            })?;
        let size = u64::from(self.segment_size);
        let key = wal_stream_key(
            dek,
            &self.cluster_salt,
            self.system_identifier,
            header.timeline,
            header.pageaddr / size,
            &salt.to_bytes(),
        );
        let first_block = u128::from(header.pageaddr % size / 16);
        Ok(Ctr::new(
            key.as_bytes().into(),
            &first_block.to_be_bytes().into(),
        ))
    }

    /// Turns a plaintext page (padding zero, as PostgreSQL writes it) into
    /// stream format under `salt`. All-zero pages stay as they are.
    pub fn seal_page(&self, page: &mut WalPage, salt: SegmentSalt) -> Result<()> {
        if is_all_zero(page) {
            return Ok(());
        }
        let header = WalPageHeader::parse(page).expect("a page holds a header");
        if page[SALT_AT..SALT_AT + 4] != [0; 4] || header.info & XLP_TDE_STREAM != 0 {
            return Err(Error::UnexpectedWalPage {
                pageaddr: header.pageaddr,
                detail: "is not a plaintext page: refusing to seal it".into(),
            });
        }
        let mut ks = self.keystream(&header, salt)?;
        let h = header.header_len();
        ks.seek(h as u64);
        ks.apply_keystream(&mut page[h..]);
        let info = header.info | XLP_TDE_STREAM;
        page[2..4].copy_from_slice(&info.to_le_bytes());
        page[SALT_AT..SALT_AT + 4].copy_from_slice(&salt.to_bytes());
        Ok(())
    }

    /// Turns the first `valid` bytes of a page in stream format back into
    /// the plaintext PostgreSQL wrote (flag cleared, padding zero); bytes
    /// past `valid` (not received yet) are left as they are. `Ok(false)`
    /// for a page not in stream format, left untouched.
    pub fn open_page(&self, page: &mut WalPage, valid: usize) -> Result<bool> {
        let Some(header) = WalPageHeader::parse(page) else {
            return Ok(false);
        };
        if header.info & XLP_TDE_STREAM == 0 {
            return Ok(false);
        }
        let salt = SegmentSalt::from_page(page).ok_or(Error::UnexpectedWalPage {
            pageaddr: header.pageaddr,
            detail: "is marked as stream format but carries no salt".into(),
        })?;
        let mut ks = self.keystream(&header, salt)?;
        let h = header.header_len();
        let end = valid.min(WAL_PAGE_SIZE);
        if end > h {
            ks.seek(h as u64);
            ks.apply_keystream(&mut page[h..end]);
        }
        let info = header.info & !XLP_TDE_STREAM;
        page[2..4].copy_from_slice(&info.to_le_bytes());
        page[SALT_AT..SALT_AT + 4].fill(0);
        Ok(true)
    }
}
