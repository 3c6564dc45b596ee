//! Property tests of the page transform (`docs/format/pages.md`).

mod common;

use std::sync::OnceLock;

use proptest::prelude::*;

use common::*;
use tde_core::checksum::{page_checksum, set_checksum, stored_checksum};
use tde_core::hctr2::Hctr2Aes256;
use tde_core::kdf::{ForkKind, Key256};
use tde_core::keyring::Keyring;
use tde_core::page::v1::FAKE_LSN_BASE;
use tde_core::page::v2::SECTOR;
use tde_core::page::{
    classify, original_lsn, plan_rewrite, Mode, Page, PageCipher, PageMark, PageState, ReadOutcome,
    RewritePlan, WriteOutcome, WriteParams, FORMAT_WIDE, FORMAT_XTS, PAGE_SIZE,
    STANDARD_SIZE_VERSION,
};
use tde_core::Error;

const GENERATIONS: [u8; 3] = [1, 7, 255];

fn ring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        Keyring::from_parts(
            99,
            counting32(0x40),
            GENERATIONS.map(|g| (g, Key256::random().unwrap())),
        )
    })
}

fn cipher() -> &'static PageCipher {
    static CIPHER: OnceLock<PageCipher> = OnceLock::new();
    CIPHER.get_or_init(|| PageCipher::new(ring()))
}

/// A page with a header PostgreSQL would write and random everything else.
#[derive(Clone, Debug)]
struct PageSpec {
    lsn: u64,
    pg_flags: u16,
    checksum_field: u16,
    content_seed: u64,
}

impl PageSpec {
    fn build(&self) -> Page {
        let mut p = [0u8; PAGE_SIZE];
        fill_from_seed(&mut p, self.content_seed);
        set_lsn(&mut p, self.lsn);
        set_checksum(&mut p, self.checksum_field);
        p[10..12].copy_from_slice(&self.pg_flags.to_le_bytes());
        p[18..20].copy_from_slice(&STANDARD_SIZE_VERSION.to_le_bytes());
        p
    }
}

/// Every kind of LSN PostgreSQL stores: 0, the GiST build LSN (1), the
/// bootstrap LSN (0x28), fake LSNs of unlogged and temporary GiST indexes
/// (from 1000), WAL positions, and values in format 1's fake range (format
/// 2 stores every LSN as it is).
fn lsn() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(0x28u64),
        1000u64..100_000,
        0x100_0000u64..(1 << 48),
        FAKE_LSN_BASE..=u64::MAX,
    ]
}

fn page_spec() -> impl Strategy<Value = PageSpec> {
    (lsn(), 0u16..8, any::<u16>(), any::<u64>()).prop_map(
        |(lsn, pg_flags, checksum_field, content_seed)| PageSpec {
            lsn,
            pg_flags,
            checksum_field,
            content_seed,
        },
    )
}

fn fork() -> impl Strategy<Value = ForkKind> {
    (0u8..4).prop_map(|i| ForkKind::from_index(i).unwrap())
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Wide), Just(Mode::Xts)]
}

fn write_params() -> impl Strategy<Value = WriteParams> {
    (
        any::<u32>(),
        any::<u32>(),
        fork(),
        prop::sample::select(GENERATIONS.to_vec()),
        mode(),
        any::<bool>(),
    )
        .prop_map(
            |(block, relfilenumber, fork, generation, mode, checksums)| WriteParams {
                block,
                relfilenumber,
                fork,
                generation,
                mode,
                checksums,
                keep_zero_sectors: false,
            },
        )
}

fn encrypt(src: &Page, p: &WriteParams) -> Page {
    let mut dst = [0u8; PAGE_SIZE];
    let out = cipher().encrypt(src, &mut dst, p).unwrap();
    assert_eq!(out, WriteOutcome::Encrypted);
    dst
}

fn decrypt(stored: &Page, p: &WriteParams) -> (Page, ReadOutcome) {
    let mut page = *stored;
    let out = cipher()
        .decrypt(&mut page, p.block, p.relfilenumber, p.checksums)
        .unwrap();
    (page, out)
}

/// The page PostgreSQL gets back: the original, with the checksum of the
/// plaintext when checksums are on.
fn as_read(src: &Page, p: &WriteParams) -> Page {
    let mut want = *src;
    if p.checksums {
        set_checksum(&mut want, page_checksum(src, p.block));
    }
    want
}

fn equal_bytes(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

/// Two unrelated 8180-byte strings agree on about 32 bytes; far more means
/// the two encryptions share structure.
const UNRELATED: usize = 100;

fn format_code(mode: Mode) -> u8 {
    match mode {
        Mode::Wide => FORMAT_WIDE,
        Mode::Xts => FORMAT_XTS,
    }
}

/// The 16-byte cipher block of the XTS mode holding page byte `at`: the
/// aligned block from byte 32 on, and bytes 12..32 (the last full block
/// and the stolen partial block) together.
fn xts_block(at: usize) -> std::ops::Range<usize> {
    if at < 32 {
        12..32
    } else {
        let start = at / 16 * 16;
        start..start + 16
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(spec in page_spec(), p in write_params()) {
        let src = spec.build();
        let before = src;
        let stored = encrypt(&src, &p);
        prop_assert_eq!(src, before, "encrypt modified its source");

        // What lands on disk: the LSN exactly as PostgreSQL wrote it.
        prop_assert_eq!(lsn_of(&stored), spec.lsn);
        prop_assert_eq!(original_lsn(&stored), spec.lsn);
        let f = flags_of(&stored);
        prop_assert_eq!(f & 7, spec.pg_flags);
        prop_assert_eq!(
            classify(&stored),
            PageState::Encrypted(PageMark {
                generation: p.generation,
                fork: p.fork,
                format: format_code(p.mode),
            })
        );
        if p.checksums {
            prop_assert_eq!(page_checksum(&stored, p.block), stored_checksum(&stored));
        } else {
            prop_assert_eq!(stored_checksum(&stored), spec.checksum_field);
        }
        prop_assert!(equal_bytes(&stored[12..], &src[12..]) < UNRELATED);

        let (page, out) = decrypt(&stored, &p);
        prop_assert_eq!(out, ReadOutcome::Decrypted { generation: p.generation, checksum_ok: true });
        prop_assert!(page == as_read(&src, &p), "decrypted page differs from the original");
    }

    /// The wide mode is one wide block: a page rewritten under the same LSN
    /// with one bit changed anywhere (a hint bit, say) shares nothing with
    /// the earlier version on disk but the plaintext header fields.
    #[test]
    fn wide_rewrite_reveals_only_that_the_page_changed(
        spec in page_spec(),
        mut p in write_params(),
        at in 12usize..PAGE_SIZE,
        bit in 0u8..8,
    ) {
        p.mode = Mode::Wide;
        prop_assume!(!(18..20).contains(&at)); // pd_pagesize_version is checked
        let old = spec.build();
        let mut new = old;
        new[at] ^= 1 << bit;
        let a = encrypt(&old, &p);
        let b = encrypt(&new, &p);
        prop_assert!(equal_bytes(&a[12..], &b[12..]) < UNRELATED);
        // Equal plaintexts give equal pages: deterministic, no nonce.
        prop_assert!(encrypt(&old, &p) == a);
    }

    /// In XTS mode a change stays inside its 16-byte block, which no
    /// sector boundary cuts: a rewrite under the same LSN reveals which
    /// blocks changed, and nothing else.
    #[test]
    fn xts_change_stays_in_its_block(
        spec in page_spec(),
        mut p in write_params(),
        at in 12usize..PAGE_SIZE,
        bit in 0u8..8,
    ) {
        p.mode = Mode::Xts;
        p.checksums = false;
        prop_assume!(!(18..20).contains(&at));
        let old = spec.build();
        let mut new = old;
        new[at] ^= 1 << bit;
        let (a, b) = (encrypt(&old, &p), encrypt(&new, &p));
        let changed = xts_block(at);
        prop_assert_eq!(changed.start / SECTOR, (changed.end - 1) / SECTOR, "a block spans two sectors");
        prop_assert_eq!(&a[..changed.start], &b[..changed.start]);
        prop_assert_eq!(&a[changed.end..], &b[changed.end..]);
        prop_assert!(equal_bytes(&a[changed.clone()], &b[changed]) < 8);
    }

    /// A write in XTS mode torn at any sector boundary (the first sectors
    /// new and the rest old, or the other way round) reads back as the
    /// same mix of the two plaintexts, exactly as a torn write of a
    /// plaintext page would.
    #[test]
    fn xts_torn_write_reads_as_old_and_new_sectors(
        spec in page_spec(),
        mut p in write_params(),
        new_seed in any::<u64>(),
        from in 24usize..PAGE_SIZE,
        split in 1usize..PAGE_SIZE / SECTOR,
        new_first in any::<bool>(),
    ) {
        p.mode = Mode::Xts;
        p.checksums = false;
        let old = spec.build();
        // The new version: same header (LSN, flags), anything after.
        let mut new = old;
        fill_from_seed(&mut new[from..], new_seed);
        let (a, b) = (encrypt(&old, &p), encrypt(&new, &p));
        let cut = split * SECTOR;
        let (first, second) = if new_first { (&b, &a) } else { (&a, &b) };
        let mut torn = *second;
        torn[..cut].copy_from_slice(&first[..cut]);
        let (page, _) = decrypt(&torn, &p);
        let (pfirst, psecond) = if new_first { (&new, &old) } else { (&old, &new) };
        let mut want = *psecond;
        want[..cut].copy_from_slice(&pfirst[..cut]);
        prop_assert!(page == want);
    }

    /// A page that is empty past its header (as `PageInit` leaves it) is
    /// stored with its later sectors all zeros, and reads back. A torn
    /// write of any page over a block not written yet (zeros) reads back
    /// as a server without tde would read the same mix of sectors: the
    /// mix when the first sector is new; zeros when the first sector is
    /// old and the new sectors are zeros in plaintext, provided the write
    /// keeps zero sectors (as tde's first write over zeros does, or any
    /// write of an empty page); otherwise a page with a zero header that is
    /// not all zeros, which PostgreSQL rejects with or without tde.
    #[test]
    fn xts_torn_write_over_a_block_not_written_yet(
        spec in page_spec(),
        mut p in write_params(),
        empty in any::<bool>(),
        keep_zero_sectors in any::<bool>(),
        zeros_from in 24usize..=PAGE_SIZE,
        split in 1usize..PAGE_SIZE / SECTOR,
        new_first in any::<bool>(),
    ) {
        p.mode = Mode::Xts;
        p.checksums = false;
        p.keep_zero_sectors = keep_zero_sectors;
        let mut new = spec.build();
        new[zeros_from..].fill(0);
        if empty {
            new[24..].fill(0);
        }
        let stored = encrypt(&new, &p);
        prop_assert!(decrypt(&stored, &p).0 == new);
        if empty || keep_zero_sectors {
            for k in 1..PAGE_SIZE / SECTOR {
                let r = k * SECTOR..(k + 1) * SECTOR;
                let zero = new[r.clone()].iter().all(|&b| b == 0);
                prop_assert_eq!(stored[r].iter().all(|&b| b == 0), zero);
            }
        }
        let zeros = [0u8; PAGE_SIZE];
        let cut = split * SECTOR;
        let (first, second, pfirst, psecond) = if new_first {
            (&stored, &zeros, &new, &zeros)
        } else {
            (&zeros, &stored, &zeros, &new)
        };
        let mut torn = *second;
        torn[..cut].copy_from_slice(&first[..cut]);
        let mut want = *psecond;
        want[..cut].copy_from_slice(&pfirst[..cut]);
        let (page, _) = decrypt(&torn, &p);
        let want_zeros = want.iter().all(|&b| b == 0);
        if new_first || (want_zeros && (empty || keep_zero_sectors)) {
            prop_assert!(page == want);
        } else if !want_zeros {
            // Read as a plaintext page with a zero header and more: what
            // PostgreSQL's page verification rejects, as it rejects `want`.
            prop_assert!(page[..24].iter().all(|&b| b == 0));
            prop_assert!(page.iter().any(|&b| b != 0));
        }
    }

    /// Block number, relfilenumber, LSN, generation and fork kind each
    /// select an unrelated encryption.
    #[test]
    fn every_tweak_and_key_input_matters(
        spec in page_spec(),
        p in write_params(),
        which in 0usize..5,
        delta in 1u32..1000,
    ) {
        let src = spec.build();
        let a = encrypt(&src, &p);
        let (mut q, mut other) = (p, src);
        match which {
            0 => q.block = p.block.wrapping_add(delta),
            1 => q.relfilenumber = p.relfilenumber.wrapping_add(delta),
            2 => set_lsn(&mut other, spec.lsn.wrapping_add(delta as u64)),
            3 => q.generation = *GENERATIONS.iter().find(|&&g| g != p.generation).unwrap(),
            _ => q.fork = ForkKind::from_index((p.fork as u8 + 1) % 4).unwrap(),
        }
        let b = encrypt(&other, &q);
        prop_assert!(equal_bytes(&a[12..], &b[12..]) < UNRELATED);
    }

    /// Any one-byte change to a stored page is either refused or reported as
    /// a checksum failure, and the page handed to PostgreSQL then fails its
    /// own checksum verification too.
    #[test]
    fn tampering_detected_by_checksum(
        spec in page_spec(),
        mut p in write_params(),
        at in 0usize..PAGE_SIZE,
        xor in 1u8..=255,
    ) {
        p.checksums = true;
        let mut page = encrypt(&spec.build(), &p);
        page[at] ^= xor;
        // A 16-bit checksum collides with probability 2^-16; such a change
        // is undetectable by design, not a failure of the transform.
        prop_assume!(page_checksum(&page, p.block) != stored_checksum(&page));
        match cipher().decrypt(&mut page, p.block, p.relfilenumber, true) {
            Ok(ReadOutcome::Decrypted { checksum_ok, .. }) => {
                prop_assert!(!checksum_ok);
                prop_assert_ne!(page_checksum(&page, p.block), stored_checksum(&page));
            }
            // The mark bit was cleared: PostgreSQL verifies the page itself.
            Ok(ReadOutcome::Plain) => {
                prop_assert!(at == 11);
                prop_assert_ne!(page_checksum(&page, p.block), stored_checksum(&page));
            }
            Ok(ReadOutcome::Empty) => prop_assert!(false, "a tampered page read as empty"),
            // The mark now names a generation or format that does not exist:
            // the page stays as stored, so PostgreSQL's own checksum
            // verification rejects it like any damaged page.
            Ok(ReadOutcome::Damaged) => {
                prop_assert!(at == 10 || at == 11);
                prop_assert_ne!(page_checksum(&page, p.block), stored_checksum(&page));
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn missing_generation_is_an_error(spec in page_spec(), p in write_params()) {
        let mut page = encrypt(&spec.build(), &p);
        let others = GENERATIONS
            .into_iter()
            .filter(|&g| g != p.generation)
            .map(|g| (g, ring().data_key(g).unwrap().clone()));
        let partial = PageCipher::new(&Keyring::from_parts(99, ring().cluster_salt, others));
        prop_assert!(!partial.has_generation(p.generation));
        let before = page;
        match partial.decrypt(&mut page, p.block, p.relfilenumber, p.checksums) {
            Err(Error::UnknownGeneration { block, generation }) => {
                prop_assert_eq!(block, p.block);
                prop_assert_eq!(generation, p.generation);
            }
            other => prop_assert!(false, "expected UnknownGeneration, got {other:?}"),
        }
        prop_assert!(page == before, "a failed read must not alter the page");

        // Writing with a generation the keyring lacks is refused as well.
        let mut dst = [0u8; PAGE_SIZE];
        let r = partial.encrypt(&spec.build(), &mut dst, &p);
        let refused = matches!(r, Err(Error::UnknownGeneration { .. }));
        prop_assert!(refused, "{:?}", r);
    }

    /// Pages without the mark are returned untouched (in-place encryption of
    /// an existing cluster relies on it).
    #[test]
    fn unmarked_pages_pass_untouched(seed in any::<u64>(), valid_header in any::<bool>(), block in any::<u32>(), rel in any::<u32>(), checksums in any::<bool>()) {
        let mut page = [0u8; PAGE_SIZE];
        fill_from_seed(&mut page, seed);
        page[11] &= 0x7F;
        if valid_header {
            page[10] &= 0x07;
            page[11] = 0;
            page[18..20].copy_from_slice(&STANDARD_SIZE_VERSION.to_le_bytes());
        }
        let before = page;
        prop_assert_eq!(cipher().decrypt(&mut page, block, rel, checksums).unwrap(), ReadOutcome::Plain);
        prop_assert!(page == before);
    }

    /// Non-zero pages whose header PostgreSQL would not write (wrong
    /// size/version, or flag bits it never sets, e.g. an already encrypted
    /// page) are refused rather than encrypted.
    #[test]
    fn unexpected_header_refused(spec in page_spec(), p in write_params(), size_version in any::<u16>(), high_flags in 0u16..0x1FFF) {
        let mut src = spec.build();
        let bad_size = size_version != STANDARD_SIZE_VERSION;
        if bad_size {
            src[18..20].copy_from_slice(&size_version.to_le_bytes());
        } else {
            let f = flags_of(&src) | ((high_flags + 1) << 3);
            src[10..12].copy_from_slice(&f.to_le_bytes());
        }
        let before = src;
        let mut dst = [0u8; PAGE_SIZE];
        match cipher().encrypt(&src, &mut dst, &p) {
            Err(Error::UnexpectedPageHeader { block, flags, size_version: sv }) => {
                prop_assert_eq!(block, p.block);
                prop_assert_eq!(flags, flags_of(&src));
                prop_assert_eq!(sv, u16::from_le_bytes([src[18], src[19]]));
            }
            other => prop_assert!(false, "expected UnexpectedPageHeader, got {other:?}"),
        }
        prop_assert!(src == before);
    }

    /// The key comes from the page's mark, never from the fork it is read
    /// through: a page written as the init fork and copied over the main
    /// fork (an unlogged relation reset after a crash) reads back.
    #[test]
    fn key_chosen_by_mark(spec in page_spec(), mut p in write_params()) {
        p.fork = ForkKind::Init;
        let src = spec.build();
        let as_init = encrypt(&src, &p);
        let (page, out) = decrypt(&as_init, &WriteParams { fork: ForkKind::Main, ..p });
        let ok = matches!(out, ReadOutcome::Decrypted { checksum_ok: true, .. });
        prop_assert!(ok, "{:?}", out);
        prop_assert!(page == as_read(&src, &p));
    }

    #[test]
    fn plaintext_marker_not_in_ciphertext(spec in page_spec(), p in write_params(), at in 20usize..PAGE_SIZE - 20) {
        let mut src = spec.build();
        src[at..at + MARKER.len()].copy_from_slice(MARKER);
        let stored = encrypt(&src, &p);
        prop_assert!(!stored.windows(MARKER.len()).any(|w| w == MARKER));
    }

    /// Pages stored in format 1 by tde 0.1.0 and 0.2.0 stay readable, fake
    /// LSN and all.
    #[test]
    fn format_1_pages_read_back(spec in page_spec(), p in write_params(), nonce in any::<u16>(), fake in FAKE_LSN_BASE..=u64::MAX) {
        prop_assume!(spec.lsn < FAKE_LSN_BASE);
        let src = spec.build();
        let mut stored = src;
        cipher()
            .encrypt_format1_in_place(&mut stored, p.block, p.fork, p.generation, nonce, fake, p.checksums)
            .unwrap();
        prop_assert_eq!(lsn_of(&stored), if spec.lsn == 0 { fake } else { spec.lsn });
        prop_assert_eq!(original_lsn(&stored), spec.lsn);
        let (page, out) = decrypt(&stored, &p);
        prop_assert_eq!(out, ReadOutcome::Decrypted { generation: p.generation, checksum_ok: true });
        prop_assert!(page == as_read(&src, &p));
    }

    /// The rewrite plan keeps whatever the stored version with the same LSN
    /// uses, and starts afresh otherwise.
    #[test]
    fn rewrite_plan(spec in page_spec(), p in write_params(), other_lsn in lsn(), nonce in any::<u16>()) {
        let mut src = spec.build();
        // pd_lower, pd_upper, pd_special as PostgreSQL's verification wants.
        for (at, v) in [(12, 64u16), (14, 4096), (16, 8192)] {
            src[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        let same = spec.lsn;
        prop_assert_eq!(plan_rewrite(&src, same), RewritePlan::KeepPlaintext);
        let xts = encrypt(&src, &WriteParams { mode: Mode::Xts, ..p });
        prop_assert_eq!(plan_rewrite(&xts, same), RewritePlan::KeepGeneration(p.generation));
        let wide = encrypt(&src, &WriteParams { mode: Mode::Wide, ..p });
        prop_assert_eq!(plan_rewrite(&wide, same), RewritePlan::Fresh);
        prop_assert_eq!(plan_rewrite(&[0u8; PAGE_SIZE], same), RewritePlan::OverZeros);
        // A torn first write that kept the zero first sector: neither a
        // plaintext page to keep in plaintext nor zeros.
        let mut torn = xts;
        torn[..SECTOR].fill(0);
        prop_assert_eq!(plan_rewrite(&torn, 0), RewritePlan::Fresh);
        // A plaintext version PostgreSQL would reject is not kept either.
        let mut bad = src;
        bad[14..16].copy_from_slice(&0u16.to_le_bytes());
        prop_assert_eq!(plan_rewrite(&bad, same), RewritePlan::Fresh);
        if other_lsn != same {
            prop_assert_eq!(plan_rewrite(&src, other_lsn), RewritePlan::Fresh);
            prop_assert_eq!(plan_rewrite(&xts, other_lsn), RewritePlan::Fresh);
        }
        prop_assume!(spec.lsn < FAKE_LSN_BASE);
        let mut v1 = src;
        cipher().encrypt_format1_in_place(&mut v1, p.block, p.fork, p.generation, nonce, FAKE_LSN_BASE, false).unwrap();
        prop_assert_eq!(plan_rewrite(&v1, same), RewritePlan::Fresh);
    }
}

#[test]
fn all_zero_page_passes_through() {
    for checksums in [false, true] {
        for mode in Mode::ALL {
            let src = [0u8; PAGE_SIZE];
            let mut dst = [0xAAu8; PAGE_SIZE];
            let p = WriteParams {
                block: 5,
                relfilenumber: 16384,
                fork: ForkKind::Main,
                generation: 7,
                mode,
                checksums,
                keep_zero_sectors: false,
            };
            let out = cipher().encrypt(&src, &mut dst, &p).unwrap();
            assert_eq!(out, WriteOutcome::PassThrough);
            assert!(dst.iter().all(|&b| b == 0));
            let mut page = [0u8; PAGE_SIZE];
            assert_eq!(
                cipher().decrypt(&mut page, 5, 16384, checksums).unwrap(),
                ReadOutcome::Empty
            );
            assert!(page.iter().all(|&b| b == 0));
        }
    }
}

#[test]
fn marked_page_with_unknown_format_is_refused() {
    let src = heap_page(0x10_0000, 0);
    let p = WriteParams {
        block: 3,
        relfilenumber: 16384,
        fork: ForkKind::Vm,
        generation: 1,
        mode: Mode::Wide,
        checksums: false,
        keep_zero_sectors: false,
    };
    let mut page = encrypt(&src, &p);
    let f = flags_of(&page) & !(3 << 11);
    page[10..12].copy_from_slice(&f.to_le_bytes());
    assert!(matches!(
        cipher().decrypt(&mut page, 3, 16384, false),
        Err(Error::UnknownPageFormat {
            block: 3,
            format: 0
        })
    ));
}

/// The HCTR2 implementation equals an independent one (`hctr2-rs`) on
/// random keys, tweaks and lengths, including the page transform's own
/// lengths.
#[test]
fn hctr2_equals_reference_implementation() {
    let mut seed = 1u64;
    for len in [16usize, 17, 31, 32, 33, 500, 512, 4096, 8180] {
        for _ in 0..8 {
            seed += 1;
            let mut key = [0u8; 32];
            fill_from_seed(&mut key, seed);
            let mut tweak = vec![0u8; (seed % 40) as usize];
            fill_from_seed(&mut tweak, seed ^ 0x55);
            let mut plain = vec![0u8; len];
            fill_from_seed(&mut plain, seed ^ 0xAA);
            let ours = Hctr2Aes256::new(&Key256::from_bytes(key));
            let reference = hctr2_rs::Hctr2_256::new(&key);
            let mut data = plain.clone();
            ours.encrypt(&tweak, &mut data);
            let mut want = vec![0u8; len];
            reference.encrypt(&plain, &tweak, &mut want).unwrap();
            assert_eq!(data, want, "length {len}");
            ours.decrypt(&tweak, &mut data);
            assert_eq!(data, plain);
        }
    }
}
