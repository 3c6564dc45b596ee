//! `verify::verify_data_dir` on a synthetic data directory.

mod common;

use std::path::PathBuf;

use common::heap_page;
use tde_core::checksum::{page_checksum, set_checksum};
use tde_core::kdf::{ForkKind, Key256};
use tde_core::keyring::Keyring;
use tde_core::page::{Mode, PageCipher, WriteParams, PAGE_SIZE};
use tde_core::verify::{verify_data_dir, RELSEG_SIZE};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> Dir {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    let p = std::env::temp_dir().join(format!("tde-verify-{}", hex::encode(r)));
    std::fs::create_dir_all(p.join("global")).unwrap();
    std::fs::create_dir_all(p.join("base/5")).unwrap();
    Dir(p)
}

fn encrypted(cipher: &PageCipher, generation: u8, block: u32) -> Vec<u8> {
    let mut dst = [0u8; PAGE_SIZE];
    let p = WriteParams {
        block,
        relfilenumber: 16384,
        fork: ForkKind::Main,
        generation,
        mode: Mode::Xts,
        checksums: true,
        keep_zero_sectors: false,
    };
    cipher.encrypt(&heap_page(0x1000, 0), &mut dst, &p).unwrap();
    dst.to_vec()
}

fn plaintext(block: u32) -> Vec<u8> {
    let mut p = heap_page(0x1000, 0);
    let c = page_checksum(&p, block);
    set_checksum(&mut p, c);
    p.to_vec()
}

#[test]
fn counts_generations_plaintext_and_checksum_failures() {
    let d = temp_dir();
    let ring = Keyring::from_parts(
        1,
        [3; 32],
        [
            (1, Key256::from_bytes([1; 32])),
            (2, Key256::from_bytes([2; 32])),
        ],
    );
    let cipher = PageCipher::new(&ring);

    // base/5/16384: gen 1, gen 2, zero, plaintext, gen 2 with a flipped byte.
    let mut rel = Vec::new();
    rel.extend(encrypted(&cipher, 1, 0));
    rel.extend(encrypted(&cipher, 2, 1));
    rel.extend(vec![0u8; PAGE_SIZE]);
    rel.extend(plaintext(3));
    let mut bad = encrypted(&cipher, 2, 4);
    bad[4000] ^= 0x10;
    rel.extend(bad);
    std::fs::write(d.0.join("base/5/16384"), &rel).unwrap();
    // Its second segment: the checksum must use block RELSEG_SIZE, not 0.
    std::fs::write(
        d.0.join("base/5/16384.1"),
        encrypted(&cipher, 1, RELSEG_SIZE as u32),
    )
    .unwrap();
    // Not relation files: ignored.
    std::fs::write(d.0.join("base/5/PG_VERSION"), "15\n").unwrap();
    std::fs::write(d.0.join("global/pg_control"), vec![7u8; 8192]).unwrap();

    let r = verify_data_dir(&d.0, true).unwrap();
    assert_eq!(r.files, 2);
    assert_eq!(r.pages, 6);
    assert_eq!((r.encrypted, r.plaintext, r.empty), (4, 1, 1));
    assert_eq!(r.by_generation.get(&1), Some(&2));
    assert_eq!(r.by_generation.get(&2), Some(&2));
    assert_eq!(r.checksum_failures, 1, "{r:?}");
    assert_eq!(r.failed_pages, vec![(PathBuf::from("base/5/16384"), 4)]);
    assert_eq!(r.plaintext_files, vec![(PathBuf::from("base/5/16384"), 1)]);
    assert!(!r.is_clean());

    // Without checksums the damaged page is not reported.
    let r = verify_data_dir(&d.0, false).unwrap();
    assert_eq!(r.checksum_failures, 0);

    // Only encrypted, intact pages: clean.
    std::fs::write(d.0.join("base/5/16384"), encrypted(&cipher, 2, 0)).unwrap();
    let r = verify_data_dir(&d.0, true).unwrap();
    assert!(r.is_clean(), "{r:?}");
}

/// A format 1 page of `base/5/<rel>` at `block`, as tde 0.2.0 wrote it.
fn format1(cipher: &PageCipher, content: u16, block: u32, nonce: u16) -> Vec<u8> {
    let mut page = heap_page(0x1000, 0);
    page[8000..8002].copy_from_slice(&content.to_le_bytes());
    cipher
        .encrypt_format1_in_place(&mut page, block, ForkKind::Main, 1, nonce, 0, false)
        .unwrap();
    page.to_vec()
}

#[test]
fn counts_formats_and_finds_format_1_pages_sharing_a_counter_block() {
    let d = temp_dir();
    let ring = Keyring::from_parts(1, [3; 32], [(1, Key256::from_bytes([1; 32]))]);
    let cipher = PageCipher::new(&ring);
    // Two relations whose block 0 has the same LSN and nonce: the same
    // counter block. Different contents: a collision; equal contents (a
    // copied file): none.
    let mut a = format1(&cipher, 1, 0, 77);
    a.extend(format1(&cipher, 1, 1, 5));
    a.extend(encrypted(&cipher, 1, 2));
    std::fs::write(d.0.join("base/5/16384"), &a).unwrap();
    std::fs::write(d.0.join("base/5/16390"), format1(&cipher, 2, 0, 77)).unwrap();
    std::fs::write(d.0.join("base/5/16391"), format1(&cipher, 1, 1, 5)).unwrap();
    std::fs::write(d.0.join("base/5/16392"), format1(&cipher, 3, 0, 78)).unwrap();

    let r = verify_data_dir(&d.0, false).unwrap();
    assert_eq!(r.by_format.get(&1), Some(&5), "{r:?}");
    assert_eq!(r.by_format.get(&2), Some(&1), "{r:?}");
    assert_eq!(r.iv_collisions, 1, "{r:?}");
    assert_eq!(
        r.collisions,
        vec![(
            PathBuf::from("base/5/16390"),
            0,
            PathBuf::from("base/5/16384"),
            0
        )]
    );
    assert!(!r.is_clean());

    std::fs::remove_file(d.0.join("base/5/16390")).unwrap();
    let r = verify_data_dir(&d.0, false).unwrap();
    assert_eq!(r.iv_collisions, 0, "{r:?}");
    assert!(r.is_clean(), "{r:?}");
}
