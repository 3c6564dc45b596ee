//! `wal_check::check_keys_decrypt_wal` on synthetic segments: WAL records
//! laid out as PostgreSQL writes them (headers, records split across pages,
//! a record continued from the previous segment), encrypted, then checked
//! with the keyring that wrote them and with one that holds the same
//! generation under another key.

mod common;

use std::path::{Path, PathBuf};

use common::counting32;
use tde_core::kdf::Key256;
use tde_core::keyring::Keyring;
use tde_core::wal::{SegmentSalt, WalCipher, WAL_PAGE_SIZE};
use tde_core::wal_check::check_keys_decrypt_wal;
use tde_core::Error;

const SEGMENT: u64 = 1 << 20;
const SYSID: u64 = 42;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> Dir {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    let p = std::env::temp_dir().join(format!("tde-wal-check-{}", hex::encode(r)));
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

fn ring(keys: &[(u8, [u8; 32])]) -> Keyring {
    Keyring::from_parts(
        SYSID,
        counting32(0x20),
        keys.iter().map(|(g, k)| (*g, Key256::from_bytes(*k))),
    )
}

/// A record of `len` bytes (at least 24): header with `xl_tot_len` and the
/// back pointer `xl_prev` (set by [`link`]), body from `seed`.
fn record(len: usize, seed: u8) -> Vec<u8> {
    let mut r: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    r[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    r[17] = 10; // xl_rmid: RM_HEAP_ID
    r
}

/// PostgreSQL's CRC-32C of a record: over the body, then the header up to
/// the CRC.
fn seal(r: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&r[24..]), &r[..20]);
    r[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// Plaintext WAL of consecutive segments from segment 1: the stream of
/// `records` laid out with page headers, each record MAXALIGNed, split
/// across pages and segments where it falls, `xlp_rem_len` and
/// `XLP_FIRST_IS_CONTRECORD` set on pages that start inside a record.
fn layout(records: &[Vec<u8>], segments: u64) -> Vec<u8> {
    let total = (segments * SEGMENT) as usize;
    let mut wal = vec![0u8; total];
    // The records back to back, each padded to 8, with (start, end).
    let mut stream: Vec<u8> = Vec::new();
    let mut bounds = Vec::new();
    for r in records {
        let start = stream.len();
        stream.extend_from_slice(r);
        bounds.push((start, stream.len()));
        stream.resize(stream.len().div_ceil(8) * 8, 0);
    }
    // Each record's xl_prev: the WAL position of the one before it.
    let position = |stream_pos: usize| {
        let per_page = |page: usize| {
            if page.is_multiple_of(SEGMENT as usize / WAL_PAGE_SIZE) {
                40
            } else {
                24
            }
        };
        let (mut left, mut page) = (stream_pos, 0usize);
        loop {
            let room = WAL_PAGE_SIZE - per_page(page);
            if left < room {
                return SEGMENT + (page * WAL_PAGE_SIZE + per_page(page) + left) as u64;
            }
            left -= room;
            page += 1;
        }
    };
    for i in 0..bounds.len() {
        let prev = if i == 0 { 0 } else { position(bounds[i - 1].0) };
        let (s, e) = bounds[i];
        stream[s + 8..s + 16].copy_from_slice(&prev.to_le_bytes());
        seal(&mut stream[s..e]);
    }
    let mut pos = 0usize;
    let mut at = 0usize;
    while pos < stream.len() && at < total {
        let addr = SEGMENT + at as u64;
        let long = addr.is_multiple_of(SEGMENT);
        let h = if long { 40 } else { 24 };
        let rem = bounds
            .iter()
            .find(|(s, e)| *s < pos && pos < *e)
            .map_or(0, |(_, e)| e - pos);
        let p = &mut wal[at..at + WAL_PAGE_SIZE];
        p[0..2].copy_from_slice(&0xD116u16.to_le_bytes());
        let info: u16 = if long { 0x0002 } else { 0 } | if rem > 0 { 0x0001 } else { 0 };
        p[2..4].copy_from_slice(&info.to_le_bytes());
        p[4..8].copy_from_slice(&1u32.to_le_bytes());
        p[8..16].copy_from_slice(&addr.to_le_bytes());
        p[16..20].copy_from_slice(&(rem as u32).to_le_bytes());
        if long {
            p[24..32].copy_from_slice(&SYSID.to_le_bytes());
            p[32..36].copy_from_slice(&(SEGMENT as u32).to_le_bytes());
            p[36..40].copy_from_slice(&(WAL_PAGE_SIZE as u32).to_le_bytes());
        }
        let take = (WAL_PAGE_SIZE - h).min(stream.len() - pos);
        p[h..h + take].copy_from_slice(&stream[pos..pos + take]);
        pos += take;
        at += WAL_PAGE_SIZE;
    }
    wal
}

/// Encrypts the plaintext WAL under `generation` of `ring` and writes its
/// segments into `dir` (timeline 1, from segment 1).
fn write_segments(dir: &Path, plain: &[u8], ring: &Keyring, generation: u8) {
    let mut cipher = WalCipher::new(ring, SEGMENT as u32).unwrap();
    for (i, seg) in plain.chunks(SEGMENT as usize).enumerate() {
        let segno = 1 + i as u64;
        let mut bytes = seg.to_vec();
        let salt = SegmentSalt::generate(generation).unwrap();
        cipher.encrypt_range(&mut bytes, segno, 0, salt).unwrap();
        let name = format!("00000001{:08X}{:08X}", 0, segno);
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn wal_of(records: &[usize]) -> Vec<u8> {
    let rs: Vec<Vec<u8>> = records
        .iter()
        .enumerate()
        .map(|(i, &len)| record(len, i as u8))
        .collect();
    layout(&rs, 2)
}

#[test]
fn the_writing_keyring_passes_and_another_key_under_the_same_generation_is_named() {
    // A first record of 30 000 bytes spans pages (its header at the start of
    // segment 1); the records after it cross page boundaries anywhere; one
    // record crosses into segment 2, whose first record follows the rest of it.
    let mut lens = vec![30_000];
    lens.extend((0..400).map(|i| 24 + (i * 977) % 9000));
    let plain = wal_of(&lens);
    let right = ring(&[(3, [7; 32])]);
    let wrong = ring(&[(3, [8; 32])]);

    let d = temp_dir();
    write_segments(&d.0, &plain, &right, 3);
    let mut cipher = WalCipher::new(&right, SEGMENT as u32).unwrap();
    check_keys_decrypt_wal(&d.0, &mut cipher).unwrap();

    let mut cipher = WalCipher::new(&wrong, SEGMENT as u32).unwrap();
    match check_keys_decrypt_wal(&d.0, &mut cipher) {
        Err(Error::WalKeyMismatch {
            generation,
            segment,
            record,
        }) => {
            assert_eq!(generation, 3);
            assert_eq!(segment, "000000010000000000000001");
            assert_eq!(record, SEGMENT + 40);
        }
        other => panic!("expected WalKeyMismatch, got {other:?}"),
    }
}

#[test]
fn the_first_record_after_a_continued_one_is_checked() {
    // Segment 2 starts inside a record: its first whole record is found
    // after the continuation, and is checked (segment 1 is plaintext here).
    let mut lens = vec![100];
    lens.extend((0..200).map(|i| 24 + (i * 7919) % 12000));
    let plain = wal_of(&lens);
    let right = ring(&[(5, [1; 32])]);
    let wrong = ring(&[(5, [2; 32])]);
    let d = temp_dir();
    write_segments(&d.0, &plain, &right, 5);
    std::fs::write(
        d.0.join("000000010000000000000001"),
        &plain[..SEGMENT as usize],
    )
    .unwrap();
    let second = &plain[SEGMENT as usize..SEGMENT as usize + WAL_PAGE_SIZE];
    assert_eq!(second[2] & 1, 1, "segment 2 must start inside a record");

    let mut cipher = WalCipher::new(&right, SEGMENT as u32).unwrap();
    check_keys_decrypt_wal(&d.0, &mut cipher).unwrap();
    let mut cipher = WalCipher::new(&wrong, SEGMENT as u32).unwrap();
    match check_keys_decrypt_wal(&d.0, &mut cipher) {
        Err(Error::WalKeyMismatch {
            segment, record, ..
        }) => {
            assert_eq!(segment, "000000010000000000000002");
            assert!(record > 2 * SEGMENT + 40, "{record:X}");
        }
        other => panic!("expected WalKeyMismatch, got {other:?}"),
    }
}

#[test]
fn generations_the_keyring_lacks_and_plaintext_segments_are_not_judged() {
    let plain = wal_of(&[200, 300, 400]);
    let d = temp_dir();
    write_segments(&d.0, &plain, &ring(&[(9, [4; 32])]), 9);
    let mut cipher = WalCipher::new(&ring(&[(1, [4; 32])]), SEGMENT as u32).unwrap();
    check_keys_decrypt_wal(&d.0, &mut cipher).unwrap();

    let d = temp_dir();
    std::fs::write(
        d.0.join("000000010000000000000001"),
        &plain[..SEGMENT as usize],
    )
    .unwrap();
    let mut cipher = WalCipher::new(&ring(&[(1, [4; 32])]), SEGMENT as u32).unwrap();
    check_keys_decrypt_wal(&d.0, &mut cipher).unwrap();
}
