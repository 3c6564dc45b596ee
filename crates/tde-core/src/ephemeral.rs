//! Files PostgreSQL deletes at every server start: temporary files
//! (`pgsql_tmp`), logical decoding spill files and the NOTIFY queue
//! (`pg_notify`). Format and argument: `docs/format/ephemeral.md`.
//!
//! They are encrypted under a key drawn at server start that never leaves
//! memory, in place and without changing a file's size: PostgreSQL counts
//! `temp_file_limit` and reports `log_temp_files` from the sizes it wrote,
//! and other processes learn a shared file's size from the file itself.
//!
//! A file of `len` bytes is cut into **data units**, each one XTS-AES-256
//! data unit (IEEE 1619, ciphertext stealing for a final partial block)
//! with tweak `file id · 2^64 + unit start / 512`:
//!
//! - every 512-byte sector `[512k, 512k + 512)` that lies wholly inside the
//!   file is a unit;
//! - the final partial sector, when it holds at least 16 bytes, is a unit;
//! - a final partial sector of 1 to 15 bytes is too short for XTS and joins
//!   the sector before it (one unit of 513 to 527 bytes);
//! - a file shorter than 16 bytes is one unit under AES-256-CTR with the
//!   counter block `file id ‖ len` (the one case with a keystream; see the
//!   format document for what it can reveal);
//! - a whole sector stored as zeros is a hole and reads as zeros: a write
//!   past the end leaves the sectors it skips unwritten.
//!
//! PostgreSQL writes and reads these files at any offset and length and
//! rewrites parts of them (logtape reuses blocks, BufFile seeks back):
//! the plans below say which whole units a write or truncation must read,
//! decrypt, patch and store again. XTS has no keystream: a rewrite of a
//! unit with other bytes reveals at most which 16-byte blocks of it kept
//! their value.

use std::ops::Range;

use aes::cipher::{KeyIvInit, StreamCipher};
use aes::Aes256;
use sha2::{Digest, Sha256};

use crate::kdf::Key256;
use crate::xts::XtsAes256;
use crate::Result;

/// Bytes per sector, the size of every data unit but the last.
pub const SECTOR: u64 = 512;
/// The shortest XTS data unit.
const BLOCK: u64 = 16;

type Ctr = ctr::Ctr128BE<Aes256>;

/// The data unit of a file `len` bytes long that holds byte `pos` (`pos <
/// len`).
pub fn unit_at(len: u64, pos: u64) -> Range<u64> {
    debug_assert!(pos < len);
    if len < BLOCK {
        return 0..len;
    }
    let full = len / SECTOR;
    let rest = len % SECTOR;
    let k = pos / SECTOR;
    if rest > 0 && rest < BLOCK && full >= 1 && k + 1 >= full {
        return (full - 1) * SECTOR..len;
    }
    if k == full {
        return full * SECTOR..len;
    }
    k * SECTOR..(k + 1) * SECTOR
}

/// Widens `range` (non-empty, inside both files) to whole units of a file
/// `a` bytes long and of one `b` bytes long at once; a range end past a
/// file's end counts as that file's end.
fn whole_units(mut range: Range<u64>, lens: [u64; 2]) -> Range<u64> {
    loop {
        let mut next = range.clone();
        for len in lens {
            if next.start < len {
                next.start = next.start.min(unit_at(len, next.start).start);
            }
            if next.end <= len && next.end > 0 {
                next.end = next.end.max(unit_at(len, next.end - 1).end);
            }
        }
        if next == range {
            return range;
        }
        range = next;
    }
}

/// What to do for one write or truncation: read `read` (stored bytes,
/// decrypted as a file of `old_len` bytes), lay the new bytes over them,
/// encrypt `write` as a file of `new_len` bytes and store it there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub read: Range<u64>,
    pub write: Range<u64>,
    pub old_len: u64,
    pub new_len: u64,
}

/// The plan for writing `count` (> 0) bytes at `offset` into a file of
/// `old_len` bytes. A write past the end stores encrypted zeros in the
/// units it shares with the gap and leaves the gap's other whole sectors
/// as holes, which read as zeros.
pub fn plan_write(old_len: u64, offset: u64, count: u64) -> Plan {
    assert!(count > 0, "an empty write changes nothing");
    // Whole sectors between the end of the file and the write stay holes,
    // as the file system leaves them: a process writing there at the same
    // time (SLRU pages of one segment are written by whichever backend
    // evicts them) is never overwritten with zeros.
    let start = if offset <= old_len {
        offset
    } else {
        (offset - offset % SECTOR).max(old_len)
    };
    let end = offset + count;
    let new_len = old_len.max(end);
    let mut range = start..end;
    if end > old_len && !old_len.is_multiple_of(SECTOR) {
        // The file grows past a last unit that is not a whole sector: that
        // unit is laid out anew.
        range.start = range.start.min(unit_at(old_len, old_len - 1).start);
    }
    let write = whole_units(range, [old_len, new_len]);
    // Stored bytes are read only where the units keep some of them: a
    // write that covers its units whole (a BufFile or logtape block written
    // over a block it reuses) reads nothing.
    let kept = write.start..write.end.min(old_len).max(write.start);
    let covered = write.start == offset && kept.end <= end;
    Plan {
        read: if covered {
            write.start..write.start
        } else {
            kept
        },
        write,
        old_len,
        new_len,
    }
}

/// The plan for cutting a file of `old_len` bytes to `new_len` bytes
/// (`new_len < old_len`): the new last unit is stored again, then the file
/// is truncated.
pub fn plan_truncate(old_len: u64, new_len: u64) -> Plan {
    assert!(new_len < old_len, "only shrinking is a truncation");
    if new_len == 0 {
        return Plan {
            read: 0..0,
            write: 0..0,
            old_len,
            new_len,
        };
    }
    let last = unit_at(new_len, new_len - 1);
    // Whole units of both lengths: the read ends where the old unit
    // holding the new last byte ends.
    let read = whole_units(last.start..new_len, [old_len, new_len]);
    Plan {
        write: read.start..new_len,
        read,
        old_len,
        new_len,
    }
}

/// The stored range to read for `count` bytes at `offset`, when the
/// file's length is not known: the sectors it overlaps, and 16 bytes more,
/// whose presence tells that the last of them is a plain sector.
pub fn read_window(offset: u64, count: u64) -> Range<u64> {
    let start = offset - offset % SECTOR;
    let end = (offset + count).div_ceil(SECTOR) * SECTOR;
    start..end + BLOCK
}

/// What the bytes read for a window mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadLayout {
    /// The file ends at or before the offset read.
    Past,
    /// Decrypt the first `whole` bytes read as a file `len` bytes long. A
    /// full window only proves the file is longer than its sectors; its
    /// units are then plain sectors.
    Units { len: u64, whole: u64 },
    /// The window starts inside the file's joined last unit (a final
    /// partial sector of under 16 bytes): read again from here.
    StartAt(u64),
}

/// After reading `got` bytes of `window` (from [`read_window`], or one
/// moved by [`ReadLayout::StartAt`]) for a read at `offset`.
pub fn read_layout(window: &Range<u64>, offset: u64, got: u64) -> ReadLayout {
    let want = window.end - window.start;
    if window.start + got <= offset {
        return ReadLayout::Past;
    }
    if got == want {
        return ReadLayout::Units {
            len: window.end,
            whole: want - BLOCK,
        };
    }
    let len = window.start + got;
    let first = unit_at(len, window.start).start;
    if first < window.start {
        ReadLayout::StartAt(first)
    } else {
        ReadLayout::Units { len, whole: got }
    }
}

/// The cipher for one server lifetime.
pub struct EphemeralCipher {
    xts: XtsAes256,
    tiny: Key256,
}

impl EphemeralCipher {
    /// Fresh keys from the operating system's random source.
    pub fn generate() -> Result<EphemeralCipher> {
        Ok(EphemeralCipher::from_keys(
            &Key256::random()?,
            &Key256::random()?,
            Key256::random()?,
        ))
    }

    /// XTS keys `k1 ‖ k2` and the CTR key for files under 16 bytes.
    pub fn from_keys(k1: &Key256, k2: &Key256, tiny: Key256) -> EphemeralCipher {
        EphemeralCipher {
            xts: XtsAes256::new(k1, k2),
            tiny,
        }
    }

    /// Encrypts `buf`, the bytes `[start, start + buf.len())` of file
    /// `file` as it is `len` bytes long; the range is whole units.
    pub fn encrypt(&self, file: u64, len: u64, start: u64, buf: &mut [u8]) {
        self.apply(file, len, start, buf, true);
    }

    /// Inverse of [`EphemeralCipher::encrypt`].
    pub fn decrypt(&self, file: u64, len: u64, start: u64, buf: &mut [u8]) {
        self.apply(file, len, start, buf, false);
    }

    fn apply(&self, file: u64, len: u64, start: u64, buf: &mut [u8], encrypt: bool) {
        if buf.is_empty() {
            return;
        }
        let end = start + buf.len() as u64;
        assert!(end <= len, "a range inside the file");
        let tweak = |at: u64| (u128::from(file) << 64) | u128::from(at / SECTOR);
        let mut pos = start;
        while pos < end {
            let unit = unit_at(len, pos);
            assert!(
                unit.start == pos && unit.end <= end,
                "whole units: {unit:?} at {pos} in {start}..{end} of {len}"
            );
            if unit.end - unit.start == SECTOR {
                // A run of whole sectors goes through XTS in one batch.
                let mut run_end = unit.end;
                while run_end < end {
                    let next = unit_at(len, run_end);
                    if next.end - next.start != SECTOR || next.end > end {
                        break;
                    }
                    run_end = next.end;
                }
                let run = &mut buf[(pos - start) as usize..(run_end - start) as usize];
                if encrypt {
                    self.xts.encrypt_units(tweak(pos), SECTOR as usize, run);
                } else {
                    self.decrypt_sectors(tweak(pos), run);
                }
                pos = run_end;
                continue;
            }
            let bytes = &mut buf[(unit.start - start) as usize..(unit.end - start) as usize];
            if len < BLOCK {
                let mut iv = [0u8; 16];
                iv[..8].copy_from_slice(&file.to_be_bytes());
                iv[8..].copy_from_slice(&len.to_be_bytes());
                Ctr::new(self.tiny.as_bytes().into(), &iv.into()).apply_keystream(bytes);
            } else if encrypt {
                self.xts.encrypt_data_unit(tweak(unit.start), bytes);
            } else {
                self.xts.decrypt_data_unit(tweak(unit.start), bytes);
            }
            pos = unit.end;
        }
    }

    /// Decrypts whole sectors, the first under `first`, leaving holes (see
    /// `plan_write`) as the zeros the file system keeps: a stored sector of
    /// XTS output is all zeros with probability 2^-4096.
    fn decrypt_sectors(&self, first: u128, run: &mut [u8]) {
        let sector = SECTOR as usize;
        let is_hole = |s: &[u8]| s.iter().all(|&b| b == 0);
        let mut k = 0;
        let count = run.len() / sector;
        while k < count {
            if is_hole(&run[k * sector..(k + 1) * sector]) {
                k += 1;
                continue;
            }
            let mut stop = k + 1;
            while stop < count && !is_hole(&run[stop * sector..(stop + 1) * sector]) {
                stop += 1;
            }
            self.xts.decrypt_units(
                first + k as u128,
                sector,
                &mut run[k * sector..stop * sector],
            );
            k = stop;
        }
    }
}

/// A file's identity in the tweak: the first 8 bytes of SHA-256 of its path
/// relative to the data directory, which every process that opens a shared
/// temporary file names the same way.
pub fn file_id(relative_path: &[u8]) -> u64 {
    let digest = Sha256::digest(relative_path);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cipher() -> EphemeralCipher {
        EphemeralCipher::from_keys(
            &Key256::from_bytes([1; 32]),
            &Key256::from_bytes([2; 32]),
            Key256::from_bytes([3; 32]),
        )
    }

    /// A file as stored, driven through the plans the way the server's
    /// wrappers drive them.
    struct Stored {
        bytes: Vec<u8>,
        file: u64,
    }

    impl Stored {
        fn write(&mut self, c: &EphemeralCipher, offset: u64, data: &[u8]) {
            let plan = plan_write(self.bytes.len() as u64, offset, data.len() as u64);
            let mut buf = if plan.read.is_empty() {
                Vec::new()
            } else {
                self.bytes[plan.read.start as usize..plan.read.end as usize].to_vec()
            };
            c.decrypt(self.file, plan.old_len, plan.read.start, &mut buf);
            buf.resize((plan.write.end - plan.write.start) as usize, 0);
            let at = (offset - plan.write.start) as usize;
            buf[at..at + data.len()].copy_from_slice(data);
            c.encrypt(self.file, plan.new_len, plan.write.start, &mut buf);
            self.bytes.resize(plan.new_len as usize, 0);
            self.bytes[plan.write.start as usize..plan.write.end as usize].copy_from_slice(&buf);
        }

        fn truncate(&mut self, c: &EphemeralCipher, len: u64) {
            let plan = plan_truncate(self.bytes.len() as u64, len);
            let mut buf = self.bytes[plan.read.start as usize..plan.read.end as usize].to_vec();
            c.decrypt(self.file, plan.old_len, plan.read.start, &mut buf);
            buf.truncate((plan.write.end - plan.write.start) as usize);
            c.encrypt(self.file, plan.new_len, plan.write.start, &mut buf);
            self.bytes[plan.write.start as usize..plan.write.end as usize].copy_from_slice(&buf);
            self.bytes.truncate(len as usize);
        }

        fn read(&self, c: &EphemeralCipher, offset: u64, count: u64) -> Vec<u8> {
            let mut window = read_window(offset, count);
            loop {
                let mut buf = self
                    .bytes
                    .get(window.start as usize..)
                    .map_or(Vec::new(), |b| {
                        b[..b.len().min((window.end - window.start) as usize)].to_vec()
                    });
                let got = buf.len();
                let (len, whole) = match read_layout(&window, offset, got as u64) {
                    ReadLayout::Past => return Vec::new(),
                    ReadLayout::StartAt(start) => {
                        window.start = start;
                        continue;
                    }
                    ReadLayout::Units { len, whole } => (len, whole),
                };
                buf.truncate(whole as usize);
                c.decrypt(self.file, len, window.start, &mut buf);
                let skip = (offset - window.start) as usize;
                return buf
                    .get(skip..)
                    .map_or(Vec::new(), |b| b[..b.len().min(count as usize)].to_vec());
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write { offset: u64, data: Vec<u8> },
        Truncate { len: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..3000, proptest::collection::vec(any::<u8>(), 1..1400))
                .prop_map(|(offset, data)| Op::Write { offset, data }),
            1 => (0u64..3000).prop_map(|len| Op::Truncate { len }),
        ]
    }

    proptest! {
        /// Any sequence of writes (at any offset, past the end too) and
        /// truncations leaves a file of the plain file's size whose every
        /// range reads back as the plain file's.
        #[test]
        fn reads_see_every_write(ops in proptest::collection::vec(op(), 1..40),
                                 reads in proptest::collection::vec((0u64..4000, 1u64..2000), 8)) {
            let c = cipher();
            let mut plain: Vec<u8> = Vec::new();
            let mut stored = Stored { bytes: Vec::new(), file: 77 };
            for op in ops {
                match op {
                    Op::Write { offset, data } => {
                        let end = offset as usize + data.len();
                        if plain.len() < end {
                            plain.resize(end, 0);
                        }
                        plain[offset as usize..end].copy_from_slice(&data);
                        stored.write(&c, offset, &data);
                    }
                    Op::Truncate { len } if (len as usize) < plain.len() => {
                        plain.truncate(len as usize);
                        stored.truncate(&c, len);
                    }
                    Op::Truncate { .. } => {}
                }
                prop_assert_eq!(stored.bytes.len(), plain.len());
                let mut all = stored.bytes.clone();
                c.decrypt(stored.file, all.len() as u64, 0, &mut all);
                prop_assert_eq!(&all, &plain);
            }
            for (offset, count) in reads {
                let want = plain.get(offset as usize..).map_or(Vec::new(), |b| {
                    b[..b.len().min(count as usize)].to_vec()
                });
                prop_assert_eq!(stored.read(&c, offset, count), want);
            }
        }
    }

    #[test]
    fn units_tile_the_file() {
        for len in 1..3 * SECTOR + 40 {
            let mut pos = 0;
            while pos < len {
                let unit = unit_at(len, pos);
                assert_eq!(unit.start, pos, "len {len}");
                assert!(
                    unit.end - unit.start >= BLOCK.min(len),
                    "len {len} unit {unit:?}"
                );
                assert!(
                    unit.end - unit.start < SECTOR + BLOCK,
                    "len {len} unit {unit:?}"
                );
                for inner in unit.clone() {
                    assert_eq!(unit_at(len, inner), unit);
                }
                pos = unit.end;
            }
        }
    }

    /// Known answers: every unit is one XTS-AES-256 data unit of the
    /// reference implementation (the `xts-mode` crate) with tweak `file id ·
    /// 2^64 + sector`, and a file under 16 bytes is AES-256-CTR from the
    /// counter block `file id ‖ len`, both big-endian.
    #[test]
    fn units_are_reference_xts_data_units() {
        use aes::cipher::KeyInit;
        let xts = xts_mode::Xts128::new(
            Aes256::new(&[1u8; 32].into()),
            Aes256::new(&[2u8; 32].into()),
        );
        let file = 0x0123_4567_89ab_cdef_u64;
        // Past 64 sectors too: whole sectors go through AES in batches of
        // 64 units.
        for len in [
            16u64, 100, 512, 515, 1000, 1024, 1030, 1551, 1536, 33_380, 66_560,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut ours = plain.clone();
            cipher().encrypt(file, len, 0, &mut ours);
            let mut back = ours.clone();
            cipher().decrypt(file, len, 0, &mut back);
            assert_eq!(back, plain, "len {len}: decrypted");
            let mut reference = plain.clone();
            let mut pos = 0;
            while pos < len {
                let unit = unit_at(len, pos);
                let tweak =
                    ((u128::from(file) << 64) | u128::from(unit.start / SECTOR)).to_le_bytes();
                xts.encrypt_sector(
                    &mut reference[unit.start as usize..unit.end as usize],
                    tweak.into(),
                );
                pos = unit.end;
            }
            assert_eq!(ours, reference, "len {len}");
            assert_ne!(ours, plain);
        }
        let mut tiny = b"fifteen bytes!!".to_vec();
        cipher().encrypt(file, 15, 0, &mut tiny);
        let mut reference = b"fifteen bytes!!".to_vec();
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&file.to_be_bytes());
        iv[8..].copy_from_slice(&15u64.to_be_bytes());
        Ctr::new(&[3u8; 32].into(), &iv.into()).apply_keystream(&mut reference);
        assert_eq!(tiny, reference);
        assert_ne!(&tiny[..], b"fifteen bytes!!");
    }

    /// A read that starts in a joined last unit reads again from its start.
    #[test]
    fn reads_inside_a_joined_tail() {
        let c = cipher();
        let plain: Vec<u8> = (0..1029u32).map(|i| (i % 251) as u8).collect();
        let mut stored = Stored {
            bytes: Vec::new(),
            file: 5,
        };
        stored.write(&c, 0, &plain);
        assert_eq!(unit_at(1029, 1025), 512..1029);
        let window = read_window(1025, 3);
        assert_eq!(window.start, 1024);
        assert_eq!(read_layout(&window, 1025, 5), ReadLayout::StartAt(512));
        for (offset, count) in [(1024, 5), (1025, 3), (1028, 10), (1000, 40)] {
            let want = &plain[offset..(offset + count).min(1029)];
            assert_eq!(
                stored.read(&c, offset as u64, count as u64),
                want,
                "{offset}"
            );
        }
    }

    #[test]
    fn file_ids_differ_by_path() {
        assert_ne!(
            file_id(b"base/pgsql_tmp/pgsql_tmp100.0"),
            file_id(b"base/pgsql_tmp/pgsql_tmp100.1")
        );
        assert_eq!(file_id(b"pg_notify/0000"), file_id(b"pg_notify/0000"));
    }

    #[test]
    fn plans_for_typical_buffile_writes() {
        // Appending whole blocks touches only the new bytes.
        let p = plan_write(8192, 8192, 8192);
        assert_eq!((p.read, p.write), (8192..8192, 8192..16384));
        // Appending after a partial sector re-lays that sector.
        let p = plan_write(1000, 1000, 8192);
        assert_eq!((p.read, p.write), (512..1000, 512..9192));
        // A 5-byte tail joins the sector before it.
        let p = plan_write(1024, 1024, 5);
        assert_eq!((p.read, p.write), (512..1024, 512..1029));
        // Rewriting a whole block inside the file (logtape reusing a
        // block) reads nothing: every stored byte of its units is replaced.
        let p = plan_write(65536, 8192, 8192);
        assert_eq!((p.read, p.write), (8192..8192, 8192..16384));
        // Rewriting part of a sector reads that sector.
        let p = plan_write(65536, 8200, 100);
        assert_eq!((p.read, p.write), (8192..8704, 8192..8704));
        // A rewrite whose last unit holds a joined tail it does not cover
        // reads that unit.
        let p = plan_write(8197, 0, 8192);
        assert_eq!((p.read, p.write), (0..8197, 0..8197));
    }

    /// SLRU pages of one segment are written by whichever backend evicts
    /// them, two at once at times, each having seen the file's length
    /// before the other's write: each write stays within its own page.
    #[test]
    fn concurrent_page_writes_leave_each_other_alone() {
        let c = cipher();
        let page = |n: u8| vec![n; 8192];
        for a_first in [true, false] {
            let mut stored = Stored {
                bytes: Vec::new(),
                file: 9,
            };
            for n in 0..5u8 {
                stored.write(&c, u64::from(n) * 8192, &page(n + 1));
            }
            let seen = stored.bytes.len() as u64;
            // A writes page 5, B page 6; both planned against 5 pages.
            let a = plan_write(seen, 5 * 8192, 8192);
            let b = plan_write(seen, 6 * 8192, 8192);
            assert_eq!(
                (a.write.clone(), b.write.clone()),
                (40960..49152, 49152..57344)
            );
            assert!(a.read.is_empty() && b.read.is_empty());
            let enc = |plan: &Plan, n: u8| {
                let mut buf = page(n);
                c.encrypt(stored.file, plan.new_len, plan.write.start, &mut buf);
                (plan.write.clone(), buf)
            };
            let (ra, ba) = enc(&a, 6);
            let (rb, bb) = enc(&b, 7);
            let order = if a_first {
                [(ra, ba), (rb, bb)]
            } else {
                [(rb, bb), (ra, ba)]
            };
            for (range, buf) in order {
                if stored.bytes.len() < range.end as usize {
                    stored.bytes.resize(range.end as usize, 0);
                }
                stored.bytes[range.start as usize..range.end as usize].copy_from_slice(&buf);
            }
            let mut all = stored.bytes.clone();
            c.decrypt(stored.file, all.len() as u64, 0, &mut all);
            let want: Vec<u8> = (1..=7u8).flat_map(page).collect();
            assert!(all == want, "a_first {a_first}");
        }
    }
}
