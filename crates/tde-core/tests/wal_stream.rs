//! The WAL stream format (`tde_core::wal_stream`): a known answer computed
//! with Python `cryptography` (HKDF-SHA256 and AES-256-CTR, independent of
//! the crates used here), and the property that makes it fit for
//! streaming: the stream bytes of a page prefix depend on that prefix only.

mod common;

use common::*;
use proptest::prelude::*;
use tde_core::wal::{SegmentSalt, WalPage};
use tde_core::wal_stream::{is_stream_page, StreamSealer, WalStreamCipher, XLP_TDE_STREAM};
use tde_core::Error;

const SEG16: u32 = 16 << 20;

/// A short-header page of timeline 1 at `pageaddr`, body `(i * 7 + 5) &
/// 0xff` (or from `seed`), padding zero.
fn page(pageaddr: u64, seed: Option<u8>) -> WalPage {
    let mut p = [0u8; 8192];
    p[0..2].copy_from_slice(&0xD116u16.to_le_bytes());
    p[2..4].copy_from_slice(&1u16.to_le_bytes());
    p[4..8].copy_from_slice(&1u32.to_le_bytes());
    p[8..16].copy_from_slice(&pageaddr.to_le_bytes());
    p[16..20].copy_from_slice(&1234u32.to_le_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(24) {
        *b = match seed {
            None => ((i * 7 + 5) & 0xff) as u8,
            Some(s) => ((i * 13) as u8) ^ s,
        };
    }
    p
}

fn salt() -> SegmentSalt {
    SegmentSalt::from_bytes([3, 0xa1, 0xb2, 0xc3]).unwrap()
}

#[test]
fn known_answer() {
    let c = WalStreamCipher::new(&vector_keyring(), SEG16).unwrap();
    let pageaddr = 5 * u64::from(SEG16) + 3 * 8192;
    let plain = page(pageaddr, None);
    let mut p = plain;
    c.seal_page(&mut p, salt()).unwrap();
    assert_eq!(
        sha256_hex(&p),
        "c7ffd8f717d6724c6c724cdf312f9bce9a8c593470d1e1df4c1ab03b5e58298f"
    );
    assert!(is_stream_page(&p));
    assert_eq!(&p[..2], &plain[..2], "magic stays");
    assert_eq!(u16::from_le_bytes([p[2], p[3]]), 1 | XLP_TDE_STREAM);
    assert!(c.open_page(&mut p, 8192).unwrap());
    assert_eq!(p, plain);
}

#[test]
fn refusals() {
    let c = WalStreamCipher::new(&vector_keyring(), SEG16).unwrap();
    let mut p = page(8192, None);
    p[21] = 1;
    assert!(matches!(
        c.seal_page(&mut p, salt()),
        Err(Error::UnexpectedWalPage { .. })
    ));
    let mut p = page(8192, None);
    let unknown = SegmentSalt::from_bytes([9, 1, 2, 3]).unwrap();
    assert!(matches!(
        c.seal_page(&mut p, unknown),
        Err(Error::UnknownWalGeneration { generation: 9, .. })
    ));
    let mut zero = [0u8; 8192];
    c.seal_page(&mut zero, salt()).unwrap();
    assert_eq!(zero, [0u8; 8192], "all-zero pages stay");
    let mut plain = page(8192, None);
    assert!(!c.open_page(&mut plain, 8192).unwrap(), "not stream format");
}

proptest! {
    /// What a walsender sends of a page before its end is filled in is the
    /// same as what it sends of those bytes later: a receiver that stores
    /// the first send's bytes and then the rest of the second's has the
    /// whole page, and opens it to the plaintext.
    #[test]
    fn prefixes_are_stable(index in 0u64..2048, cut in 24usize..8192, a in any::<u8>(), b in any::<u8>()) {
        let c = WalStreamCipher::new(&vector_keyring(), SEG16).unwrap();
        let pageaddr = 2 * u64::from(SEG16) + index * 8192;
        let full = page(pageaddr, Some(a));
        // Earlier, the page held the same bytes up to `cut`, other bytes after.
        let mut early = page(pageaddr, Some(b));
        early[..cut].copy_from_slice(&full[..cut]);
        let (mut s_full, mut s_early) = (full, early);
        c.seal_page(&mut s_full, salt()).unwrap();
        c.seal_page(&mut s_early, salt()).unwrap();
        prop_assert_eq!(&s_full[..cut], &s_early[..cut]);
        let mut received = s_early;
        received[cut..].copy_from_slice(&s_full[cut..]);
        prop_assert!(c.open_page(&mut received, 8192).unwrap());
        prop_assert_eq!(received, full);
        // Opened before the rest arrived: the received part is right.
        let mut partial = s_early;
        partial[cut..].fill(0);
        prop_assert!(c.open_page(&mut partial, cut).unwrap());
        prop_assert_eq!(&partial[..cut], &full[..cut]);
    }
}

/// Every reader of stored WAL (the server's read path, the start-up key
/// check, `tdectl wal decrypt`) goes through `WalCipher`, which opens
/// stream-format pages by their flag, next to disk-format and plaintext
/// ones.
#[test]
fn the_disk_reader_opens_stream_pages() {
    use tde_core::wal::WalCipher;
    let ring = vector_keyring();
    let stream = WalStreamCipher::new(&ring, SEG16).unwrap();
    let mut disk = WalCipher::new(&ring, SEG16).unwrap();
    let segment = 4u64;
    let base = segment * u64::from(SEG16);
    let plain: Vec<WalPage> = (0..3)
        .map(|i| page(base + i * 8192, Some(i as u8)))
        .collect();
    let mut buf = Vec::new();
    let mut p0 = plain[0];
    stream.seal_page(&mut p0, salt()).unwrap();
    let mut p1 = plain[1];
    disk.encrypt_page(&mut p1, salt()).unwrap();
    buf.extend_from_slice(&p0);
    buf.extend_from_slice(&p1);
    buf.extend_from_slice(&plain[2]);
    disk.decrypt_range(&mut buf, segment, 0).unwrap();
    let want: Vec<u8> = plain.iter().flatten().copied().collect();
    assert!(buf == want);
}

/// The first page of a segment (long header) of timeline 1.
fn first_page(pageaddr: u64, seed: u8) -> WalPage {
    let mut p = page(pageaddr, Some(seed));
    p[2..4].copy_from_slice(&(1u16 | 0x0002).to_le_bytes());
    p[20..24].fill(0);
    p[24..32].copy_from_slice(&7u64.to_le_bytes());
    p[32..36].copy_from_slice(&SEG16.to_le_bytes());
    p[36..40].copy_from_slice(&8192u32.to_le_bytes());
    p
}

/// Three pages at the end of segment 6 and two at the start of segment 7.
fn pages_across_a_segment_boundary() -> (u64, Vec<u8>) {
    let start = 7 * u64::from(SEG16) - 3 * 8192;
    let mut wal = Vec::new();
    for i in 0..5u64 {
        let at = start + i * 8192;
        let p = if at % u64::from(SEG16) == 0 {
            first_page(at, i as u8)
        } else {
            page(at, Some(i as u8))
        };
        wal.extend_from_slice(&p);
    }
    (start, wal)
}

fn salts() -> impl FnMut() -> Result<SegmentSalt, Error> {
    let mut n = 0u8;
    move || {
        n += 1;
        Ok(SegmentSalt::from_bytes([3, n, 0x5a, 0xa5]).unwrap())
    }
}

proptest! {
    /// However a walsender cuts the WAL into messages, the receiver stores
    /// what `seal_page` gives for each page under its segment's salt (one
    /// salt per segment per stream) and opens it to the plaintext.
    #[test]
    fn messages_cut_anywhere_give_the_sealed_pages(cuts in proptest::collection::vec(1usize..20000, 0..12)) {
        let ring = vector_keyring();
        let c = WalStreamCipher::new(&ring, SEG16).unwrap();
        let (start, plain) = pages_across_a_segment_boundary();
        let mut sent = plain.clone();
        let mut sealer = StreamSealer::new(c.clone());
        let mut fresh = salts();
        let (mut at, mut rest) = (0usize, &mut sent[..]);
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let n = (*cut).min(rest.len());
            let (msg, tail) = rest.split_at_mut(n);
            sealer.seal_with(start + at as u64, msg, &mut fresh).unwrap();
            at += n;
            rest = tail;
        }
        for (i, (got, want)) in sent.chunks_exact(8192).zip(plain.chunks_exact(8192)).enumerate() {
            let mut want: WalPage = want.try_into().unwrap();
            // Salt 1 for segment 6 (pages 0..3), salt 2 for segment 7.
            let salt = SegmentSalt::from_bytes([3, if i < 3 { 1 } else { 2 }, 0x5a, 0xa5]).unwrap();
            c.seal_page(&mut want, salt).unwrap();
            prop_assert!(got == &want[..], "page {} differs", i);
            let mut opened: WalPage = got.try_into().unwrap();
            prop_assert!(c.open_page(&mut opened, 8192).unwrap());
            prop_assert!(opened[..] == plain[i * 8192..(i + 1) * 8192]);
        }
    }
}

#[test]
fn a_stream_starts_at_a_page_boundary_with_fresh_salts() {
    let ring = vector_keyring();
    let c = WalStreamCipher::new(&ring, SEG16).unwrap();
    assert_eq!(
        c.oldest_generation(),
        *ring.generations().collect::<Vec<_>>().first().unwrap()
    );
    let (start, plain) = pages_across_a_segment_boundary();
    let mut sealer = StreamSealer::new(c.clone());
    let mut fresh = salts();
    // A message that starts inside a page the stream has not sent.
    let mut mid = plain[100..9000].to_vec();
    assert!(matches!(
        sealer.seal_with(start + 100, &mut mid, &mut fresh),
        Err(Error::WalStreamStartsMidPage { at }) if at == start + 100
    ));
    // Sent once, then again from the start (a new stream): new salts, so
    // no byte is sealed twice under one key unless it is the same byte.
    let mut first = plain[..10000].to_vec();
    sealer.seal_with(start, &mut first, &mut fresh).unwrap();
    let mut again = plain[..10000].to_vec();
    sealer.seal_with(start, &mut again, &mut fresh).unwrap();
    assert_eq!(&first[20..24], &[3, 1, 0x5a, 0xa5]);
    assert_eq!(&again[20..24], &[3, 2, 0x5a, 0xa5]);
    assert_ne!(first[100..], again[100..]);
    // A page already in stream format is refused, never sealed twice.
    let mut sealed = first[..8192].to_vec();
    let mut s2 = StreamSealer::new(c.clone());
    assert!(matches!(
        s2.seal_with(start, &mut sealed, &mut fresh),
        Err(Error::UnexpectedWalPage { .. })
    ));
    // A page whose header names another address is refused.
    let mut wrong = page(start + 8192, None).to_vec();
    let mut s3 = StreamSealer::new(c);
    assert!(matches!(
        s3.seal_with(start, &mut wrong, &mut fresh),
        Err(Error::UnexpectedWalPage { .. })
    ));
}

/// After a WAL switch PostgreSQL zeroes the rest of the segment, headers
/// included, and a walsender sends those pages: they go as they are (no
/// data, nothing to seal, readers see no page there), but a page without
/// magic that holds any other byte is refused rather than sent.
#[test]
fn zeroed_pages_pass_and_nothing_else_without_magic() {
    let c = WalStreamCipher::new(&vector_keyring(), SEG16).unwrap();
    let start = 3 * u64::from(SEG16) + 8 * 8192;
    let mut wal = page(start, Some(1)).to_vec();
    wal.extend_from_slice(&[0u8; 2 * 8192]);
    let mut sent = wal.clone();
    let mut sealer = StreamSealer::new(c.clone());
    let mut fresh = salts();
    let (a, b) = sent.split_at_mut(8192 + 1);
    sealer.seal_with(start, a, &mut fresh).unwrap();
    sealer.seal_with(start + 8192 + 1, b, &mut fresh).unwrap();
    assert!(is_stream_page(&sent[..8192]));
    assert!(
        sent[8192..].iter().all(|b| *b == 0),
        "zeroed pages stay zero"
    );
    for at in [2usize, 100, 8000] {
        let mut bad = vec![0u8; 8192];
        bad[at] = 1;
        let mut sealer = StreamSealer::new(c.clone());
        assert!(
            matches!(
                sealer.seal_with(start, &mut bad, &mut fresh),
                Err(Error::UnexpectedWalPage { .. })
            ),
            "byte {at}"
        );
    }
}
