//! WAL as it leaves the server through a replication connection.
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
//! A walsender seals what it sends with a [`StreamSealer`]: a fresh random
//! salt for each segment of each stream, under the generation
//! `tde.wal_stream_generation` names. The security argument is in
//! `docs/format/wal-stream.md`.

use std::collections::BTreeMap;

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use aes::Aes256;

use crate::kdf::{wal_stream_key, Key256};
use crate::keyring::Keyring;
use crate::page::is_all_zero;
use crate::wal::{
    check_segment_size, held_keys, SegmentSalt, WalPage, WalPageHeader, LONG_HEADER_LEN,
    SHORT_HEADER_LEN, WAL_PAGE_SIZE, XLP_LONG_HEADER,
};
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
        check_segment_size(segment_size)?;
        Ok(WalStreamCipher {
            data_keys: held_keys(ring),
            cluster_salt: ring.cluster_salt,
            system_identifier: ring.system_identifier,
            segment_size,
        })
    }

    /// The oldest generation the keyring holds: the one every node cloned
    /// from this one holds too, unless it was dropped here since.
    pub fn oldest_generation(&self) -> u8 {
        *self
            .data_keys
            .keys()
            .next()
            .expect("a keyring holds at least one generation")
    }

    fn holds(&self, generation: u8) -> bool {
        self.data_keys.contains_key(&generation)
    }

    fn key(&self, timeline: u32, pageaddr: u64, salt: SegmentSalt) -> Result<Key256> {
        let dek = self
            .data_keys
            .get(&salt.generation())
            .ok_or(Error::UnknownWalGeneration {
                generation: salt.generation(),
                pageaddr,
            })?;
        Ok(wal_stream_key(
            dek,
            &self.cluster_salt,
            self.system_identifier,
            timeline,
            pageaddr / u64::from(self.segment_size),
            &salt.to_bytes(),
        ))
    }

    /// The keystream of the page at `pageaddr`, positioned at its first
    /// byte.
    fn page_keystream(&self, key: &Key256, pageaddr: u64) -> Ctr {
        let first_block = u128::from(pageaddr % u64::from(self.segment_size) / 16);
        Ctr::new(key.as_bytes().into(), &first_block.to_be_bytes().into())
    }

    fn keystream(&self, header: &WalPageHeader, salt: SegmentSalt) -> Result<Ctr> {
        let key = self.key(header.timeline, header.pageaddr, salt)?;
        Ok(self.page_keystream(&key, header.pageaddr))
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

/// Seals the WAL one replication stream sends, message by message, into the
/// stream format: the same bytes [`WalStreamCipher::seal_page`] gives for
/// each page, however the pages are cut into messages.
///
/// A stream is contiguous from its start; a message that does not continue
/// the previous one starts a new stream (fresh salts). A stream must start
/// at a page boundary, since the receiver can only decrypt bytes whose page
/// header (and salt) it received; every stock receiver starts at a segment
/// boundary.
pub struct StreamSealer {
    cipher: WalStreamCipher,
    /// The position right after the last byte sealed.
    next: Option<u64>,
    /// The segment being sent and the salt this stream gives it.
    segment: Option<(u64, SegmentSalt)>,
    page: Option<OpenPage>,
}

/// The page being sent: its plaintext header as far as it was seen, and
/// once the header is complete, its keystream.
struct OpenPage {
    start: u64,
    salt: SegmentSalt,
    header: [u8; SHORT_HEADER_LEN],
    seen: usize,
    keystream: Option<(usize, Ctr)>,
}

impl StreamSealer {
    pub fn new(cipher: WalStreamCipher) -> StreamSealer {
        StreamSealer {
            cipher,
            next: None,
            segment: None,
            page: None,
        }
    }

    /// Goes on with the keys of a newer keyring (a rotation, an import):
    /// the page being sent keeps its key; a segment whose salt's generation
    /// the new keyring lacks gets a new salt at its next page.
    pub fn replace_cipher(&mut self, cipher: WalStreamCipher) {
        self.cipher = cipher;
    }

    /// Seals `bytes`, the WAL from position `start`, in place, drawing each
    /// new segment's salt, under `generation`, from the operating system's
    /// CSPRNG.
    pub fn seal(&mut self, start: u64, bytes: &mut [u8], generation: u8) -> Result<()> {
        self.seal_with(start, bytes, &mut || SegmentSalt::generate(generation))
    }

    /// [`StreamSealer::seal`] with the salts from `fresh_salt`. On error
    /// `bytes` are left partly sealed: send none of them.
    pub fn seal_with(
        &mut self,
        start: u64,
        bytes: &mut [u8],
        fresh_salt: &mut dyn FnMut() -> Result<SegmentSalt>,
    ) -> Result<()> {
        if self.next != Some(start) {
            self.segment = None;
            self.page = None;
        }
        self.next = None;
        let size = u64::from(self.cipher.segment_size);
        let mut pos = start;
        let mut rest = bytes;
        while !rest.is_empty() {
            let in_page = (pos % WAL_PAGE_SIZE as u64) as usize;
            let n = rest.len().min(WAL_PAGE_SIZE - in_page);
            if in_page == 0 {
                let segno = pos / size;
                let salt = match self.segment {
                    // A salt whose generation was dropped since gives way
                    // to a fresh one: every page carries its own salt.
                    Some((s, salt)) if s == segno && self.cipher.holds(salt.generation()) => salt,
                    _ => {
                        let salt = fresh_salt()?;
                        self.segment = Some((segno, salt));
                        salt
                    }
                };
                self.page = Some(OpenPage {
                    start: pos,
                    salt,
                    header: [0; SHORT_HEADER_LEN],
                    seen: 0,
                    keystream: None,
                });
            }
            let page = match self.page.as_mut() {
                Some(p) if p.start == pos - in_page as u64 && p.seen == in_page => p,
                _ => return Err(Error::WalStreamStartsMidPage { at: pos }),
            };
            let (piece, tail) = rest.split_at_mut(n);
            page.absorb(&self.cipher, piece)?;
            rest = tail;
            pos += n as u64;
        }
        self.next = Some(pos);
        Ok(())
    }
}

impl OpenPage {
    /// Seals `piece`, the page's bytes from `self.seen` on.
    fn absorb(&mut self, cipher: &WalStreamCipher, piece: &mut [u8]) -> Result<()> {
        let from = self.seen;
        let end = from + piece.len();
        self.seen = end;
        // A page with no magic is one PostgreSQL zeroed whole (the rest of
        // a segment after a WAL switch): sent as it is, so every byte of
        // it must be zero.
        if from >= 2 && self.header[..2] == [0, 0] {
            return match piece.iter().all(|b| *b == 0) {
                true => Ok(()),
                false => Err(self.not_plaintext()),
            };
        }
        for j in from..end.min(SHORT_HEADER_LEN) {
            let b = &mut piece[j - from];
            self.header[j] = *b;
            match j {
                2 if self.header[..2] == [0, 0] => {
                    return match piece[j - from..].iter().all(|b| *b == 0) {
                        true => Ok(()),
                        false => Err(self.not_plaintext()),
                    };
                }
                2 if *b & (XLP_TDE_STREAM as u8) != 0 => return Err(self.not_plaintext()),
                2 => *b |= XLP_TDE_STREAM as u8,
                // The disk format leaves its salt in the padding of a page
                // it decrypted (PostgreSQL never reads the padding).
                SALT_AT..=23 => *b = self.salt.to_bytes()[j - SALT_AT],
                _ => {}
            }
        }
        if end <= SHORT_HEADER_LEN {
            return Ok(());
        }
        if self.keystream.is_none() {
            let info = u16::from_le_bytes([self.header[2], self.header[3]]);
            let timeline = u32::from_le_bytes(self.header[4..8].try_into().expect("4 bytes"));
            let pageaddr = u64::from_le_bytes(self.header[8..16].try_into().expect("8 bytes"));
            if pageaddr != self.start {
                return Err(Error::UnexpectedWalPage {
                    pageaddr: self.start,
                    detail: format!("carries the address {pageaddr:#x} in its header"),
                });
            }
            let body = if info & XLP_LONG_HEADER != 0 {
                LONG_HEADER_LEN
            } else {
                SHORT_HEADER_LEN
            };
            let key = cipher.key(timeline, pageaddr, self.salt)?;
            self.keystream = Some((body, cipher.page_keystream(&key, pageaddr)));
        }
        let (body, ks) = self.keystream.as_mut().expect("set above");
        let first = from.max(*body);
        if end > first {
            ks.seek(first as u64);
            ks.apply_keystream(&mut piece[first - from..]);
        }
        Ok(())
    }

    fn not_plaintext(&self) -> Error {
        Error::UnexpectedWalPage {
            pageaddr: self.start,
            detail: "is not a plaintext page: refusing to seal it".into(),
        }
    }
}
