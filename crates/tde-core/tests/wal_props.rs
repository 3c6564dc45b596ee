//! Property tests of the WAL page transform (DESIGN §4, `tde_core::wal`).
//!
//! The reference for every ciphertext here is the `xts-mode` crate (one AES
//! block at a time, checked against OpenSSL by its own test suite) over the
//! documented data unit, with keys from the `hkdf` crate and an info string
//! assembled in this file, so the batched XTS and the layout in
//! `tde_core::wal` are checked against an independent statement of both.

mod common;

use std::sync::OnceLock;

use aes::cipher::KeyInit;
use proptest::prelude::*;

use common::*;
use tde_core::kdf::Key256;
use tde_core::keyring::Keyring;
use tde_core::wal::{
    SegmentSalt, WalCipher, WalPage, WalPageHeader, WalRangeSummary, WalReadOutcome,
    WalWriteOutcome, XtsAes256, WAL_PAGE_SIZE,
};
use tde_core::Error;
use xts_mode::{get_tweak_default, Xts128};

const GENERATIONS: [u8; 3] = [1, 7, 255];
const SYSID: u64 = 0x6F00_1234_5678_9ABC;
const SEG16: u32 = 16 << 20;

fn ring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        Keyring::from_parts(
            SYSID,
            counting32(0x40),
            GENERATIONS.map(|g| (g, Key256::random().unwrap())),
        )
    })
}

/// The same cluster after generation 7 was dropped.
fn ring_without_7() -> Keyring {
    let r = ring();
    Keyring::from_parts(
        r.system_identifier,
        r.cluster_salt,
        [1, 255].map(|g| (g, r.data_key(g).unwrap().clone())),
    )
}

fn cipher(segment_size: u32) -> WalCipher {
    WalCipher::new(ring(), segment_size).unwrap()
}

// ---------------------------------------------------------------- page model

/// A WAL page: header as PostgreSQL writes it, records from a seed up to
/// `fill_to`, zeros after.
#[derive(Clone, Debug)]
struct Spec {
    long: bool,
    tli: u32,
    segment: u64,
    /// Page number within the segment (0 for a long header).
    index: u64,
    segment_size: u32,
    seed: u64,
    fill_to: usize,
}

impl Spec {
    fn h(&self) -> usize {
        if self.long {
            40
        } else {
            24
        }
    }

    fn pageaddr(&self) -> u64 {
        self.segment * self.segment_size as u64 + self.index * WAL_PAGE_SIZE as u64
    }

    fn build(&self) -> WalPage {
        let mut p = [0u8; WAL_PAGE_SIZE];
        let h = self.h();
        fill_from_seed(&mut p[h..self.fill_to.max(h)], self.seed);
        header(
            &mut p,
            self.long,
            self.tli,
            self.pageaddr(),
            self.segment_size,
        );
        p
    }
}

fn header(p: &mut WalPage, long: bool, tli: u32, pageaddr: u64, segment_size: u32) {
    let info: u16 = 0x0005 | if long { 0x0002 } else { 0 };
    p[0..2].copy_from_slice(&0xD116u16.to_le_bytes());
    p[2..4].copy_from_slice(&info.to_le_bytes());
    p[4..8].copy_from_slice(&tli.to_le_bytes());
    p[8..16].copy_from_slice(&pageaddr.to_le_bytes());
    p[16..20].copy_from_slice(&((pageaddr as u32) % 5000).to_le_bytes());
    p[20..24].fill(0);
    if long {
        p[24..32].copy_from_slice(&SYSID.to_le_bytes());
        p[32..36].copy_from_slice(&segment_size.to_le_bytes());
        p[36..40].copy_from_slice(&(WAL_PAGE_SIZE as u32).to_le_bytes());
    }
}

fn segment_size() -> impl Strategy<Value = u32> {
    prop_oneof![4 => Just(SEG16), 1 => (20u32..=30).prop_map(|b| 1 << b)]
}

fn spec_in(segment_size: u32) -> impl Strategy<Value = Spec> {
    let pages = segment_size as u64 / WAL_PAGE_SIZE as u64;
    (
        any::<bool>(),
        1u32..1000,
        0u64..(1 << 34),
        1..pages,
        any::<u64>(),
        0usize..=WAL_PAGE_SIZE,
    )
        .prop_map(move |(long, tli, segment, index, seed, fill)| Spec {
            long,
            tli,
            segment,
            index: if long { 0 } else { index },
            segment_size,
            seed,
            fill_to: fill.max(if long { 41 } else { 25 }),
        })
}

fn spec() -> impl Strategy<Value = Spec> {
    segment_size().prop_flat_map(spec_in)
}

fn salt() -> impl Strategy<Value = SegmentSalt> {
    (prop::sample::select(&GENERATIONS[..]), 1u32..(1 << 24)).prop_map(|(g, r)| {
        let r = r.to_le_bytes();
        SegmentSalt::from_bytes([g, r[0], r[1], r[2]]).unwrap()
    })
}

// ---------------------------------------------------------------- reference

/// K1 ‖ K2 of a page, from the format description.
fn reference_keys(tli: u32, segment: u64, salt: SegmentSalt) -> [u8; 64] {
    let mut info = b"tde/v1/wal".to_vec();
    info.extend_from_slice(&SYSID.to_le_bytes());
    info.extend_from_slice(&tli.to_le_bytes());
    info.extend_from_slice(&segment.to_le_bytes());
    info.extend_from_slice(&salt.to_bytes());
    let dek = ring().data_key(salt.generation()).unwrap();
    hkdf64(dek.as_bytes(), &ring().cluster_salt, &info)
}

fn reference_xts(keys: &[u8; 64]) -> Xts128<aes::Aes256> {
    Xts128::new(
        aes::Aes256::new_from_slice(&keys[..32]).unwrap(),
        aes::Aes256::new_from_slice(&keys[32..]).unwrap(),
    )
}

/// The page encrypted as the module documentation says, with `xts-mode`.
fn reference_encrypt(plain: &WalPage, spec: &Spec, salt: SegmentSalt) -> WalPage {
    let h = spec.h();
    let mut unit = plain[h + 24..].to_vec();
    unit.extend_from_slice(&plain[h..h + 24]);
    let keys = reference_keys(spec.tli, spec.segment, salt);
    reference_xts(&keys).encrypt_sector(&mut unit, get_tweak_default(spec.pageaddr() as u128));
    let mut out = *plain;
    out[20..24].copy_from_slice(&salt.to_bytes());
    let body = WAL_PAGE_SIZE - h - 24;
    out[h + 24..].copy_from_slice(&unit[..body]);
    out[h..h + 24].copy_from_slice(&unit[body..]);
    out
}

fn encrypted(spec: &Spec, salt: SegmentSalt) -> (WalPage, WalPage) {
    let plain = spec.build();
    let mut enc = plain;
    assert_eq!(
        cipher(spec.segment_size)
            .encrypt_page(&mut enc, salt)
            .unwrap(),
        WalWriteOutcome::Encrypted
    );
    (plain, enc)
}

/// Cipher blocks of a page as stored: the stealing pair `page[H..H+24]`,
/// then the 16-byte blocks `page[H+24+16i..]`.
fn cipher_blocks(h: usize) -> Vec<std::ops::Range<usize>> {
    std::iter::once(h..h + 24)
        .chain((h + 24..WAL_PAGE_SIZE).step_by(16).map(|s| s..s + 16))
        .collect()
}

// ---------------------------------------------------------------- XTS itself

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The batched XTS equals the `xts-mode` crate for any key, tweak and
    /// length (every remainder, batch boundaries, the page region lengths).
    #[test]
    fn batched_xts_equals_xts_mode(
        keys in prop::array::uniform32(any::<u8>()).prop_flat_map(|a| {
            (Just(a), prop::array::uniform32(any::<u8>()))
        }),
        tweak in any::<u128>(),
        len in prop_oneof![16usize..300, 1000usize..1100, 8140usize..8200, 16usize..20000],
        seed in any::<u64>(),
    ) {
        let mut data = vec![0u8; len];
        fill_from_seed(&mut data, seed);
        let mut both = [0u8; 64];
        both[..32].copy_from_slice(&keys.0);
        both[32..].copy_from_slice(&keys.1);
        let ours = XtsAes256::new(&Key256::from_bytes(keys.0), &Key256::from_bytes(keys.1));
        let theirs = reference_xts(&both);

        let mut a = data.clone();
        ours.encrypt_data_unit(tweak, &mut a);
        let mut b = data.clone();
        theirs.encrypt_sector(&mut b, get_tweak_default(tweak));
        prop_assert_eq!(&a, &b);
        prop_assert_ne!(&a, &data);

        theirs.decrypt_sector(&mut b, get_tweak_default(tweak));
        prop_assert_eq!(&b, &data);
        ours.decrypt_data_unit(tweak, &mut a);
        prop_assert_eq!(&a, &data);
    }
}

/// Every length from one block to past two batches, one key.
#[test]
fn batched_xts_equals_xts_mode_every_length() {
    let k1 = counting32(1);
    let k2 = counting32(101);
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(&k1);
    both[32..].copy_from_slice(&k2);
    let ours = XtsAes256::new(&Key256::from_bytes(k1), &Key256::from_bytes(k2));
    let theirs = reference_xts(&both);
    for len in 16..2200 {
        let mut data = vec![0u8; len];
        fill_from_seed(&mut data, len as u64);
        let mut a = data.clone();
        let mut b = data.clone();
        ours.encrypt_data_unit(len as u128 * 8192, &mut a);
        theirs.encrypt_sector(&mut b, get_tweak_default(len as u128 * 8192));
        assert_eq!(a, b, "length {len}");
        ours.decrypt_data_unit(len as u128 * 8192, &mut a);
        assert_eq!(a, data, "length {len}");
    }
}

#[test]
#[should_panic(expected = "at least 16 bytes")]
fn xts_refuses_short_data_unit() {
    let k = Key256::from_bytes([1; 32]);
    XtsAes256::new(&k, &Key256::from_bytes([2; 32])).encrypt_data_unit(0, &mut [0u8; 15]);
}

// ---------------------------------------------------------------- pages

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Encryption is exactly the documented construction; headers stay,
    /// the salt lands in the padding, decryption restores the page.
    #[test]
    fn page_round_trip_matches_reference(spec in spec(), salt in salt()) {
        let (plain, enc) = encrypted(&spec, salt);
        prop_assert_eq!(&enc[..], &reference_encrypt(&plain, &spec, salt)[..]);
        let h = spec.h();
        prop_assert_eq!(&enc[..20], &plain[..20], "header bytes 0..20");
        prop_assert_eq!(&enc[20..24], &salt.to_bytes()[..], "salt in the padding");
        prop_assert_eq!(&enc[24..h], &plain[24..h], "long header bytes 24..40");
        prop_assert_eq!(SegmentSalt::from_page(&enc), Some(salt));
        prop_assert_eq!(WalPageHeader::parse(&enc), WalPageHeader::parse(&plain));
        prop_assert_ne!(&enc[h..], &plain[h..]);

        let mut page = enc;
        let out = cipher(spec.segment_size).decrypt_page(&mut page).unwrap();
        prop_assert_eq!(out, WalReadOutcome::Decrypted { generation: salt.generation() });
        prop_assert_eq!(&page[..], &plain[..]);
        prop_assert_eq!(&page[20..24], &[0u8; 4][..], "padding back to zero");
    }

    /// Same bytes, same place, same salt: same ciphertext, whatever the
    /// cipher's cache held before.
    #[test]
    fn encryption_is_deterministic_and_cache_independent(
        specs in prop::collection::vec(spec_in(SEG16), 2..6),
        salts in prop::collection::vec(salt(), 6),
    ) {
        let mut shared = cipher(SEG16);
        for (spec, &salt) in specs.iter().zip(&salts) {
            let mut a = spec.build();
            let mut b = a;
            shared.encrypt_page(&mut a, salt).unwrap();
            cipher(SEG16).encrypt_page(&mut b, salt).unwrap();
            prop_assert_eq!(&a[..], &b[..]);
        }
        // Decrypt in reverse order through the same cipher.
        for (spec, &salt) in specs.iter().zip(&salts).rev() {
            let plain = spec.build();
            let mut p = plain;
            shared.encrypt_page(&mut p, salt).unwrap();
            shared.decrypt_page(&mut p).unwrap();
            prop_assert_eq!(&p[..], &plain[..]);
        }
    }

    /// Every input of the key derivation matters: another salt, timeline or
    /// segment gives another ciphertext for the same body.
    #[test]
    fn key_inputs_separate(spec in spec_in(SEG16), salt in salt(), other in salt()) {
        prop_assume!(other != salt);
        let (_, base) = encrypted(&spec, salt);
        let (_, by_salt) = encrypted(&spec, other);
        let (_, by_tli) = encrypted(&Spec { tli: spec.tli + 1, ..spec.clone() }, salt);
        let (_, by_seg) = encrypted(&Spec { segment: spec.segment + 1, ..spec.clone() }, salt);
        let h = spec.h();
        for other in [by_salt, by_tli, by_seg] {
            prop_assert_ne!(&other[h + 24..h + 40], &base[h + 24..h + 40]);
        }
    }

    /// All-zero pages are passed through both ways; plaintext pages are
    /// returned untouched by the read path.
    #[test]
    fn zero_and_plaintext_pages_untouched(spec in spec(), salt in salt()) {
        let mut c = cipher(spec.segment_size);
        let mut zero = [0u8; WAL_PAGE_SIZE];
        prop_assert_eq!(c.encrypt_page(&mut zero, salt).unwrap(), WalWriteOutcome::PassThrough);
        prop_assert!(zero.iter().all(|&b| b == 0));
        prop_assert_eq!(c.decrypt_page(&mut zero).unwrap(), WalReadOutcome::Empty);
        prop_assert!(zero.iter().all(|&b| b == 0));

        let plain = spec.build();
        let mut p = plain;
        prop_assert_eq!(c.decrypt_page(&mut p).unwrap(), WalReadOutcome::Plain);
        prop_assert_eq!(&p[..], &plain[..]);
        prop_assert_eq!(SegmentSalt::from_page(&p), None);
    }

    /// Rewriting a page with more data (tail and holes filled) changes
    /// exactly the cipher blocks whose plaintext changed; the stealing pair
    /// `page[H..H+24]` counts as one.
    #[test]
    fn rewrite_changes_only_changed_blocks(
        spec in spec_in(SEG16),
        salt in salt(),
        old_fill in 0usize..=WAL_PAGE_SIZE,
        holes in prop::collection::vec((0usize..WAL_PAGE_SIZE, 1usize..40), 0..6),
    ) {
        let spec = Spec { fill_to: WAL_PAGE_SIZE, ..spec };
        let h = spec.h();
        let (new_plain, new_enc) = encrypted(&spec, salt);
        let mut old_plain = new_plain;
        old_plain[old_fill.max(h)..].fill(0);
        for (at, len) in holes {
            let at = at.max(h);
            old_plain[at..(at + len).min(WAL_PAGE_SIZE)].fill(0);
        }
        let mut old_enc = old_plain;
        cipher(SEG16).encrypt_page(&mut old_enc, salt).unwrap();

        prop_assert_eq!(&old_enc[..h], &new_enc[..h], "header and salt unchanged");
        for r in cipher_blocks(h) {
            let pt_changed = old_plain[r.clone()] != new_plain[r.clone()];
            let ct_changed = old_enc[r.clone()] != new_enc[r.clone()];
            prop_assert_eq!(ct_changed, pt_changed, "block {:?}", r);
        }
    }

    /// Two captures of a page, before and after its zero tail was filled
    /// with records, XOR to something other than the new records for every
    /// block that changed: no keystream is exposed (CTR would expose it).
    #[test]
    fn keystream_is_not_exposed(
        spec in spec_in(SEG16),
        salt in salt(),
        old_fill in 0usize..8000,
    ) {
        let spec = Spec { fill_to: WAL_PAGE_SIZE, ..spec };
        let h = spec.h();
        let (new_plain, new_enc) = encrypted(&spec, salt);
        let mut old_plain = new_plain;
        old_plain[old_fill.max(h)..].fill(0);
        let mut old_enc = old_plain;
        cipher(SEG16).encrypt_page(&mut old_enc, salt).unwrap();

        let mut filled = 0;
        for r in cipher_blocks(h) {
            if old_plain[r.clone()] == new_plain[r.clone()] {
                continue;
            }
            filled += 1;
            let xor: Vec<u8> = r.clone().map(|i| old_enc[i] ^ new_enc[i]).collect();
            let delta: Vec<u8> = r.clone().map(|i| old_plain[i] ^ new_plain[i]).collect();
            prop_assert_ne!(&xor, &delta, "block {:?} leaks its plaintext", r);
        }
        prop_assert!(filled >= 10, "the tail held at least 192 bytes");
    }

    /// A torn rewrite (some sectors new, the rest old) decrypts, block by
    /// block, to the old or the new plaintext: bytes that were durable
    /// before the rewrite are never garbled. With the plain (unrotated)
    /// XTS order a cipher block would straddle every 512-byte sector
    /// boundary and this would fail when the durable end sits on one.
    #[test]
    fn torn_rewrite_keeps_durable_bytes(
        spec in spec_in(SEG16),
        salt in salt(),
        durable_end in prop_oneof![
            (1usize..16).prop_map(|k| k * 512),
            (1usize..16).prop_map(|k| k * 512 + 8),
            (1usize..16).prop_map(|k| k * 512 - 8),
            (3usize..1024).prop_map(|k| k * 8),
        ],
        sector in prop::sample::select(&[512usize, 4096][..]),
        old_first in any::<bool>(),
    ) {
        let spec = Spec { fill_to: WAL_PAGE_SIZE, ..spec };
        let h = spec.h();
        let (new_plain, new_enc) = encrypted(&spec, salt);
        let mut old_plain = new_plain;
        old_plain[durable_end.max(h)..].fill(0);
        let mut old_enc = old_plain;
        cipher(SEG16).encrypt_page(&mut old_enc, salt).unwrap();

        let mut c = cipher(SEG16);
        for tear in (sector..WAL_PAGE_SIZE).step_by(sector) {
            let (first, second) = if old_first { (&old_enc, &new_enc) } else { (&new_enc, &old_enc) };
            let mut torn = *first;
            torn[tear..].copy_from_slice(&second[tear..]);
            c.decrypt_page(&mut torn).unwrap();
            prop_assert_eq!(&torn[..durable_end], &new_plain[..durable_end], "tear at {}", tear);
            for r in cipher_blocks(h) {
                prop_assert!(
                    torn[r.clone()] == old_plain[r.clone()] || torn[r.clone()] == new_plain[r.clone()],
                    "tear at {}: block {:?} is neither old nor new", tear, r
                );
            }
        }
    }
}

// ---------------------------------------------------------------- ranges

#[derive(Clone, Copy, Debug)]
enum Kind {
    Zero,
    Plain,
    Encrypted(SegmentSalt),
    /// Encrypted page of the file's previous life as an older segment.
    Stale(SegmentSalt),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::Zero),
        1 => Just(Kind::Plain),
        3 => salt().prop_map(Kind::Encrypted),
        1 => salt().prop_map(Kind::Stale),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A read covering zero, plaintext, encrypted and stale pages of one
    /// segment returns what PostgreSQL wrote for the current pages and the
    /// stored bytes for stale ones; a write of zero and plaintext pages
    /// equals page-by-page encryption.
    #[test]
    fn mixed_range(
        kinds in prop::collection::vec(kind(), 1..10),
        segment in 10u64..(1 << 30),
        first in 0u64..2040,
        tli in 1u32..100,
        seed in any::<u64>(),
        write_salt in salt(),
    ) {
        let n = kinds.len();
        let first = first.min(2048 - n as u64);
        let offset = first * WAL_PAGE_SIZE as u64;
        let mut disk = vec![0u8; n * WAL_PAGE_SIZE];
        let mut want = disk.clone();
        let mut plain_buf = disk.clone();
        let mut expect = WalRangeSummary::default();
        for (i, k) in kinds.iter().enumerate() {
            let index = first + i as u64;
            let mut spec = Spec {
                long: index == 0,
                tli,
                segment,
                index,
                segment_size: SEG16,
                seed: seed ^ index,
                fill_to: 100 + (seed as usize ^ i) % 8092,
            };
            let at = i * WAL_PAGE_SIZE..(i + 1) * WAL_PAGE_SIZE;
            let (stored, read) = match *k {
                Kind::Zero => {
                    expect.empty += 1;
                    ([0u8; WAL_PAGE_SIZE], [0u8; WAL_PAGE_SIZE])
                }
                Kind::Plain => {
                    expect.plain += 1;
                    (spec.build(), spec.build())
                }
                Kind::Encrypted(salt) => {
                    expect.encrypted += 1;
                    let (p, e) = encrypted(&spec, salt);
                    (e, p)
                }
                Kind::Stale(salt) => {
                    expect.stale += 1;
                    spec.segment -= 1 + seed % 10;
                    let (_, e) = encrypted(&spec, salt);
                    (e, e)
                }
            };
            disk[at.clone()].copy_from_slice(&stored);
            want[at.clone()].copy_from_slice(&read);
            if !matches!(k, Kind::Stale(_)) {
                plain_buf[at].copy_from_slice(&read);
            }
        }

        let mut c = cipher(SEG16);
        let mut buf = disk.clone();
        prop_assert_eq!(c.decrypt_range(&mut buf, segment, offset).unwrap(), expect);
        prop_assert!(buf == want);

        // Write path: the current pages (stale ones zeroed) with one salt.
        let mut buf = plain_buf.clone();
        let summary = c.encrypt_range(&mut buf, segment, offset, write_salt).unwrap();
        let mut one_by_one = plain_buf.clone();
        for page in one_by_one.chunks_exact_mut(WAL_PAGE_SIZE) {
            cipher(SEG16).encrypt_page(page.try_into().unwrap(), write_salt).unwrap();
        }
        prop_assert!(buf == one_by_one);
        prop_assert_eq!(summary.encrypted, expect.plain + expect.encrypted);
        prop_assert_eq!(summary.empty, expect.empty + expect.stale);
        c.decrypt_range(&mut buf, segment, offset).unwrap();
        prop_assert!(buf == plain_buf);
    }
}

#[test]
fn ranges_must_be_whole_pages_inside_one_segment() {
    let mut c = cipher(SEG16);
    let salt = SegmentSalt::generate(1).unwrap();
    let mut buf = vec![0u8; 2 * WAL_PAGE_SIZE];
    for (len, offset) in [
        (WAL_PAGE_SIZE, 100),
        (WAL_PAGE_SIZE - 1, 0),
        (WAL_PAGE_SIZE + 512, 0),
        (2 * WAL_PAGE_SIZE, SEG16 as u64 - WAL_PAGE_SIZE as u64),
        (WAL_PAGE_SIZE, SEG16 as u64),
    ] {
        let e = c.decrypt_range(&mut buf[..len], 3, offset).unwrap_err();
        assert!(matches!(e, Error::WalRangeMisaligned { .. }), "{e}");
        let e = c
            .encrypt_range(&mut buf[..len], 3, offset, salt)
            .unwrap_err();
        assert!(matches!(e, Error::WalRangeMisaligned { .. }), "{e}");
    }
    // The last page of a segment and an empty range are fine.
    let last = SEG16 as u64 - WAL_PAGE_SIZE as u64;
    assert_eq!(
        c.decrypt_range(&mut buf[..WAL_PAGE_SIZE], 3, last)
            .unwrap()
            .empty,
        1
    );
    assert_eq!(
        c.encrypt_range(&mut [], 3, 0, salt).unwrap(),
        WalRangeSummary::default()
    );
}

/// A write of a page at the wrong position, or a read of a page whose
/// generation is gone, fails the whole range and leaves it unchanged.
#[test]
fn ranges_are_all_or_nothing() {
    let salt = SegmentSalt::from_bytes([7, 1, 2, 3]).unwrap();
    let specs: Vec<Spec> = (0..3)
        .map(|i| Spec {
            long: false,
            tli: 2,
            segment: 40,
            index: 5 + i,
            segment_size: SEG16,
            seed: i,
            fill_to: 6000,
        })
        .collect();
    let mut plain = vec![0u8; 3 * WAL_PAGE_SIZE];
    for (i, s) in specs.iter().enumerate() {
        plain[i * WAL_PAGE_SIZE..(i + 1) * WAL_PAGE_SIZE].copy_from_slice(&s.build());
    }
    let offset = 5 * WAL_PAGE_SIZE as u64;

    // Written one page too far: the first page already mismatches.
    let mut buf = plain.clone();
    let e = cipher(SEG16)
        .encrypt_range(&mut buf, 40, offset + WAL_PAGE_SIZE as u64, salt)
        .unwrap_err();
    assert!(
        e.to_string().contains("is being written at WAL position"),
        "{e}"
    );
    assert!(buf == plain);
    // Only the last page is misplaced: still nothing is encrypted.
    let mut bad = plain.clone();
    bad[2 * WAL_PAGE_SIZE + 8..2 * WAL_PAGE_SIZE + 16]
        .copy_from_slice(&(40 * SEG16 as u64 + 100 * WAL_PAGE_SIZE as u64).to_le_bytes());
    let mut buf = bad.clone();
    assert!(cipher(SEG16)
        .encrypt_range(&mut buf, 40, offset, salt)
        .is_err());
    assert!(buf == bad);

    // Encrypted with generation 7, read by a keyring without it.
    let mut enc = plain.clone();
    cipher(SEG16)
        .encrypt_range(&mut enc, 40, offset, salt)
        .unwrap();
    let mut buf = enc.clone();
    let e = WalCipher::new(&ring_without_7(), SEG16)
        .unwrap()
        .decrypt_range(&mut buf, 40, offset)
        .unwrap_err();
    assert!(
        matches!(e, Error::UnknownWalGeneration { generation: 7, .. }),
        "{e}"
    );
    assert!(buf == enc);
    // One page of the range under generation 1, the rest unreadable.
    let mut mixed = enc.clone();
    let mut p0 = specs[0].build();
    cipher(SEG16)
        .encrypt_page(&mut p0, SegmentSalt::from_bytes([1, 9, 9, 9]).unwrap())
        .unwrap();
    mixed[..WAL_PAGE_SIZE].copy_from_slice(&p0);
    let mut buf = mixed.clone();
    assert!(WalCipher::new(&ring_without_7(), SEG16)
        .unwrap()
        .decrypt_range(&mut buf, 40, offset)
        .is_err());
    assert!(buf == mixed);
}

// ---------------------------------------------------------------- refusals

#[test]
fn unknown_generation_is_named() {
    let spec = Spec {
        long: false,
        tli: 1,
        segment: 0x3A7,
        index: 6,
        segment_size: SEG16,
        seed: 1,
        fill_to: 8192,
    };
    let salt7 = SegmentSalt::from_bytes([7, 0xAA, 0xBB, 0xCC]).unwrap();
    let (plain, enc) = encrypted(&spec, salt7);
    let mut c = WalCipher::new(&ring_without_7(), SEG16).unwrap();
    assert!(!c.has_generation(7));

    let mut page = enc;
    let e = c.decrypt_page(&mut page).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnknownWalGeneration {
                pageaddr: 0x3_A700_C000,
                generation: 7
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "WAL page at 3/A700C000 is encrypted with data key generation 7, which the keyring does not hold"
    );
    assert_eq!(page, enc, "left as stored");

    let mut page = plain;
    let e = c.encrypt_page(&mut page, salt7).unwrap_err();
    assert!(
        matches!(e, Error::UnknownWalGeneration { generation: 7, .. }),
        "{e:?}"
    );
    assert_eq!(page, plain);
}

#[test]
fn unexpected_pages_are_refused_unchanged() {
    let spec = Spec {
        long: true,
        tli: 1,
        segment: 12,
        index: 0,
        segment_size: SEG16,
        seed: 2,
        fill_to: 3000,
    };
    let salt = SegmentSalt::from_bytes([1, 0, 0, 1]).unwrap();
    let (plain, enc) = encrypted(&spec, salt);
    let mut c = cipher(SEG16);

    // Encrypting an encrypted page (or anything with non-zero padding).
    let mut page = enc;
    let e = c.encrypt_page(&mut page, salt).unwrap_err();
    assert!(e.to_string().contains("padding 01000001"), "{e}");
    assert_eq!(page, enc);

    // Malformed salts: generation 0 with random bytes, or no random bytes.
    for bad in [[0u8, 1, 2, 3], [5, 0, 0, 0]] {
        let mut page = enc;
        page[20..24].copy_from_slice(&bad);
        let stored = page;
        let e = c.decrypt_page(&mut page).unwrap_err();
        assert!(e.to_string().contains("malformed segment salt"), "{e}");
        assert_eq!(page, stored);
    }

    // A long header naming another segment size, on either path.
    let mut other = WalCipher::new(ring(), 64 << 20).unwrap();
    let mut page = enc;
    let e = other.decrypt_page(&mut page).unwrap_err();
    assert!(e.to_string().contains("segment size 16777216"), "{e}");
    assert_eq!(page, enc);
    let mut page = plain;
    assert!(other.encrypt_page(&mut page, salt).is_err());
    assert_eq!(page, plain);

    // A page address that is not page-aligned.
    let mut page = plain;
    page[8..16].copy_from_slice(&(12 * SEG16 as u64 + 100).to_le_bytes());
    let stored = page;
    let e = c.encrypt_page(&mut page, salt).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("WAL page at 0/C000064 has an xlp_pageaddr"),
        "{e}"
    );
    assert_eq!(page, stored);
}

#[test]
fn segment_salts() {
    assert!(matches!(
        SegmentSalt::generate(0),
        Err(Error::ReservedGeneration)
    ));
    let mut seen = std::collections::HashSet::new();
    for g in [1u8, 2, 200, 255] {
        for _ in 0..50 {
            let s = SegmentSalt::generate(g).unwrap();
            assert_eq!(s.generation(), g);
            assert_eq!(s.to_bytes()[0], g);
            assert_ne!(s.to_bytes()[1..], [0, 0, 0]);
            assert_eq!(SegmentSalt::from_bytes(s.to_bytes()), Some(s));
            let mut page = [0u8; 24];
            page[20..24].copy_from_slice(&s.to_bytes());
            assert_eq!(SegmentSalt::from_page(&page), Some(s));
            seen.insert(s);
        }
    }
    assert!(seen.len() > 190, "salts are random");
    assert_eq!(SegmentSalt::from_bytes([0, 0, 0, 0]), None);
    assert_eq!(SegmentSalt::from_bytes([0, 1, 2, 3]), None);
    assert_eq!(SegmentSalt::from_bytes([9, 0, 0, 0]), None);
    assert_eq!(SegmentSalt::from_page(&[1u8; 23]), None);
}

#[test]
fn segment_sizes() {
    for bad in [0, 1 << 19, 3 << 20, 1 << 31, (16 << 20) + 8192] {
        assert!(
            matches!(WalCipher::new(ring(), bad), Err(Error::InvalidWalSegmentSize(s)) if s == bad),
            "{bad}"
        );
    }
    for good in [1 << 20, 16 << 20, 1 << 30] {
        assert_eq!(WalCipher::new(ring(), good).unwrap().segment_size(), good);
    }
}

#[test]
fn header_parsing() {
    let long = Spec {
        long: true,
        tli: 9,
        segment: 3,
        index: 0,
        segment_size: SEG16,
        seed: 3,
        fill_to: 100,
    }
    .build();
    let h = WalPageHeader::parse(&long).unwrap();
    assert_eq!(h.magic, 0xD116);
    assert_eq!(h.timeline, 9);
    assert_eq!(h.pageaddr, 3 * SEG16 as u64);
    assert_eq!(h.header_len(), 40);
    let l = h.long.unwrap();
    assert_eq!(
        (l.system_identifier, l.segment_size, l.xlog_blcksz),
        (SYSID, SEG16, 8192)
    );
    assert_eq!(WalPageHeader::parse(&long[..39]), None);
    assert_eq!(WalPageHeader::parse(&long[..23]), None);
    let mut short = long;
    short[2] &= !0x02;
    let h = WalPageHeader::parse(&short[..24]).unwrap();
    assert_eq!((h.header_len(), h.long), (24, None));
}
