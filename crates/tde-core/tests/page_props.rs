//! Property tests of the page transform (DESIGN §3).

mod common;

use std::cell::Cell;
use std::sync::OnceLock;

use proptest::prelude::*;

use common::*;
use tde_core::checksum::{page_checksum, set_checksum, stored_checksum};
use tde_core::kdf::{ForkKind, Key256};
use tde_core::keyring::Keyring;
use tde_core::page::{
    classify, is_fake_lsn, Page, PageCipher, PageState, ReadOutcome, WriteOutcome, WriteParams,
    FAKE_LSN_BASE, PAGE_SIZE, STANDARD_SIZE_VERSION,
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

fn page_spec() -> impl Strategy<Value = PageSpec> {
    (
        // Real LSNs never reach the fake range; 0 gets a fake one.
        prop_oneof![Just(0u64), 1..FAKE_LSN_BASE],
        0u16..8,
        any::<u16>(),
        any::<u64>(),
    )
        .prop_map(|(lsn, pg_flags, checksum_field, content_seed)| PageSpec {
            lsn,
            pg_flags,
            checksum_field,
            content_seed,
        })
}

fn fork() -> impl Strategy<Value = ForkKind> {
    (0u8..4).prop_map(|i| ForkKind::from_index(i).unwrap())
}

fn write_params() -> impl Strategy<Value = WriteParams> {
    (
        any::<u32>(),
        fork(),
        prop::sample::select(GENERATIONS.to_vec()),
        any::<u16>(),
        any::<bool>(),
    )
        .prop_map(|(block, fork, generation, nonce, checksums)| WriteParams {
            block,
            fork,
            generation,
            nonce,
            checksums,
        })
}

/// Encrypts `src`, handing out `fake` if a fake LSN is needed; returns the
/// stored page and whether the fake LSN was asked for.
fn encrypt(src: &Page, p: &WriteParams, fake: u64) -> (Page, bool) {
    let asked = Cell::new(false);
    let mut dst = [0u8; PAGE_SIZE];
    let out = cipher()
        .encrypt(src, &mut dst, p, || {
            asked.set(true);
            fake
        })
        .unwrap();
    assert_eq!(out, WriteOutcome::Encrypted);
    (dst, asked.get())
}

fn fake_lsn() -> impl Strategy<Value = u64> {
    (0u64..(1 << 56)).prop_map(|n| FAKE_LSN_BASE | n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(spec in page_spec(), p in write_params(), fake in fake_lsn()) {
        let src = spec.build();
        let before = src;
        let (stored, asked) = encrypt(&src, &p, fake);
        prop_assert_eq!(src, before, "encrypt modified its source");
        prop_assert_eq!(asked, spec.lsn == 0, "fake LSN asked for iff LSN is 0");

        // What lands on disk.
        prop_assert_eq!(lsn_of(&stored), if spec.lsn == 0 { fake } else { spec.lsn });
        let f = flags_of(&stored);
        prop_assert_eq!(f >> 15, 1);
        prop_assert_eq!((f >> 13) & 3, p.fork as u16);
        prop_assert_eq!((f >> 11) & 3, 1);
        prop_assert_eq!((f >> 3) & 0xFF, p.generation as u16);
        prop_assert_eq!(f & 7, spec.pg_flags);
        prop_assert_eq!(&stored[18..20], &p.nonce.to_le_bytes()[..]);
        prop_assert_eq!(
            classify(&stored),
            PageState::Encrypted(tde_core::page::PageMark {
                generation: p.generation,
                fork: p.fork,
                format: 1,
            })
        );
        if p.checksums {
            prop_assert_eq!(page_checksum(&stored, p.block), stored_checksum(&stored));
        } else {
            prop_assert_eq!(stored_checksum(&stored), spec.checksum_field);
        }
        prop_assert_ne!(&stored[20..], &src[20..]);

        // And back.
        let mut page = stored;
        let out = cipher().decrypt(&mut page, p.block, p.checksums).unwrap();
        prop_assert_eq!(out, ReadOutcome::Decrypted { generation: p.generation, checksum_ok: true });
        let mut want = src;
        if p.checksums {
            set_checksum(&mut want, page_checksum(&src, p.block));
        }
        prop_assert_eq!(lsn_of(&page), spec.lsn);
        prop_assert!(page == want, "decrypted page differs from the original");
    }

    /// Any one-byte change to a stored page is either refused or reported as
    /// a checksum failure, and the page handed to PostgreSQL then fails its
    /// own checksum verification too.
    #[test]
    fn tampering_detected_by_checksum(
        spec in page_spec(),
        mut p in write_params(),
        fake in fake_lsn(),
        at in 0usize..PAGE_SIZE,
        xor in 1u8..=255,
    ) {
        p.checksums = true;
        let (mut page, _) = encrypt(&spec.build(), &p, fake);
        page[at] ^= xor;
        // A 16-bit checksum collides with probability 2^-16; such a change
        // is undetectable by design, not a failure of the transform.
        prop_assume!(page_checksum(&page, p.block) != stored_checksum(&page));
        match cipher().decrypt(&mut page, p.block, true) {
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
    fn missing_generation_is_an_error(spec in page_spec(), p in write_params(), fake in fake_lsn()) {
        let (mut page, _) = encrypt(&spec.build(), &p, fake);
        let others = GENERATIONS
            .into_iter()
            .filter(|&g| g != p.generation)
            .map(|g| (g, ring().data_key(g).unwrap().clone()));
        let partial = PageCipher::new(&Keyring::from_parts(99, ring().cluster_salt, others));
        prop_assert!(!partial.has_generation(p.generation));
        let before = page;
        match partial.decrypt(&mut page, p.block, p.checksums) {
            Err(Error::UnknownGeneration { block, generation }) => {
                prop_assert_eq!(block, p.block);
                prop_assert_eq!(generation, p.generation);
            }
            other => prop_assert!(false, "expected UnknownGeneration, got {other:?}"),
        }
        prop_assert!(page == before, "a failed read must not alter the page");

        // Writing with a generation the keyring lacks is refused as well.
        let mut dst = [0u8; PAGE_SIZE];
        let r = partial.encrypt(&spec.build(), &mut dst, &p, || fake);
        let refused = matches!(r, Err(Error::UnknownGeneration { .. }));
        prop_assert!(refused, "{:?}", r);
    }

    /// Pages without the mark are returned untouched (in-place encryption of
    /// an existing cluster relies on it).
    #[test]
    fn unmarked_pages_pass_untouched(seed in any::<u64>(), valid_header in any::<bool>(), block in any::<u32>(), checksums in any::<bool>()) {
        let mut page = [0u8; PAGE_SIZE];
        fill_from_seed(&mut page, seed);
        page[11] &= 0x7F;
        if valid_header {
            page[10] &= 0x07;
            page[11] = 0;
            page[18..20].copy_from_slice(&STANDARD_SIZE_VERSION.to_le_bytes());
        }
        let before = page;
        prop_assert_eq!(cipher().decrypt(&mut page, block, checksums).unwrap(), ReadOutcome::Plain);
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
        match cipher().encrypt(&src, &mut dst, &p, || FAKE_LSN_BASE) {
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
    /// fork reads back; each fork kind really has its own key.
    #[test]
    fn key_chosen_by_mark(spec in page_spec(), mut p in write_params(), fake in fake_lsn()) {
        p.fork = ForkKind::Init;
        let src = spec.build();
        let (as_init, _) = encrypt(&src, &p, fake);
        let mut page = as_init;
        let out = cipher().decrypt(&mut page, p.block, p.checksums).unwrap();
        let ok = matches!(out, ReadOutcome::Decrypted { checksum_ok: true, .. });
        prop_assert!(ok, "{:?}", out);
        let mut want = src;
        if p.checksums {
            set_checksum(&mut want, page_checksum(&src, p.block));
        }
        prop_assert!(page == want);

        p.fork = ForkKind::Main;
        let (as_main, _) = encrypt(&src, &p, fake);
        prop_assert_ne!(&as_init[20..], &as_main[20..]);
    }

    #[test]
    fn nonce_changes_ciphertext(spec in page_spec(), p in write_params(), other in any::<u16>(), fake in fake_lsn()) {
        prop_assume!(other != p.nonce);
        let src = spec.build();
        let (a, _) = encrypt(&src, &p, fake);
        let (b, _) = encrypt(&src, &WriteParams { nonce: other, ..p }, fake);
        prop_assert_ne!(&a[12..18], &b[12..18]);
        // Two keystreams must not agree on more than a handful of bytes.
        let same = a[20..].iter().zip(&b[20..]).filter(|(x, y)| x == y).count();
        prop_assert!(same < 100, "{same} equal bytes");
    }

    #[test]
    fn plaintext_marker_not_in_ciphertext(spec in page_spec(), p in write_params(), at in 20usize..PAGE_SIZE - 20, fake in fake_lsn()) {
        let mut src = spec.build();
        src[at..at + MARKER.len()].copy_from_slice(MARKER);
        let (stored, _) = encrypt(&src, &p, fake);
        prop_assert!(!stored.windows(MARKER.len()).any(|w| w == MARKER));
    }
}

#[test]
fn all_zero_page_passes_through() {
    for checksums in [false, true] {
        let src = [0u8; PAGE_SIZE];
        let mut dst = [0xAAu8; PAGE_SIZE];
        let p = WriteParams {
            block: 5,
            fork: ForkKind::Main,
            generation: 7,
            nonce: 9,
            checksums,
        };
        let out = cipher()
            .encrypt(&src, &mut dst, &p, || panic!("no fake LSN for a new page"))
            .unwrap();
        assert_eq!(out, WriteOutcome::PassThrough);
        assert!(dst.iter().all(|&b| b == 0));
        let mut page = [0u8; PAGE_SIZE];
        assert_eq!(
            cipher().decrypt(&mut page, 5, checksums).unwrap(),
            ReadOutcome::Empty
        );
        assert!(page.iter().all(|&b| b == 0));
    }
}

#[test]
fn marked_page_with_unknown_format_is_refused() {
    let src = heap_page(0x10_0000, 0);
    let p = WriteParams {
        block: 3,
        fork: ForkKind::Vm,
        generation: 1,
        nonce: 77,
        checksums: false,
    };
    let (mut page, _) = encrypt(&src, &p, 0);
    for format in [0u16, 2, 3] {
        let f = (flags_of(&page) & !(3 << 11)) | (format << 11);
        page[10..12].copy_from_slice(&f.to_le_bytes());
        let mut copy = page;
        assert!(matches!(
            cipher().decrypt(&mut copy, 3, false),
            Err(Error::UnknownPageFormat { block: 3, format: got }) if got as u16 == format
        ));
    }
}

#[test]
fn fake_lsn_range() {
    assert!(is_fake_lsn(FAKE_LSN_BASE));
    assert!(is_fake_lsn(u64::MAX));
    assert!(!is_fake_lsn(FAKE_LSN_BASE - 1));
    assert!(!is_fake_lsn(0));
}
