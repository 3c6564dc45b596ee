//! Page transform throughput on 8 KiB pages, one core.
//!
//! Prints one line per measurement: `name bytes_per_second`. `make bench`
//! compares these with `openssl speed -evp aes-256-ctr` in the same run.

mod common;
use common::{measure, seconds_arg};

use std::hint::black_box;

use tde_core::kdf::{ForkKind, Key256};
use tde_core::keyring::Keyring;
use tde_core::page::{Mode, PageCipher, WriteParams, PAGE_SIZE, STANDARD_SIZE_VERSION};

fn sample_page() -> Box<[u8; PAGE_SIZE]> {
    let mut p = Box::new([0u8; PAGE_SIZE]);
    for (i, b) in p.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    p[0..8].copy_from_slice(&[0, 0, 0, 0, 0x10, 0, 0, 1]);
    p[8..10].copy_from_slice(&[0, 0]);
    p[10..12].copy_from_slice(&[0, 0]);
    p[12..14].copy_from_slice(&200u16.to_le_bytes());
    p[14..16].copy_from_slice(&4000u16.to_le_bytes());
    p[16..18].copy_from_slice(&8192u16.to_le_bytes());
    p[18..20].copy_from_slice(&STANDARD_SIZE_VERSION.to_le_bytes());
    p
}

fn main() {
    let seconds = seconds_arg();
    let ring = Keyring::from_parts(1, [7; 32], [(1, Key256::from_bytes([9; 32]))]);
    let cipher = PageCipher::new(&ring);
    let src = sample_page();
    let mut dst = Box::new([0u8; PAGE_SIZE]);
    for (mode, checksums) in [
        (Mode::Xts, false),
        (Mode::Xts, true),
        (Mode::Wide, false),
        (Mode::Wide, true),
    ] {
        let suffix = format!(
            "_{}{}",
            mode.name(),
            if checksums { "_checksums" } else { "" }
        );
        let p = WriteParams {
            block: 17,
            relfilenumber: 16384,
            fork: ForkKind::Main,
            generation: 1,
            mode,
            checksums,
            keep_zero_sectors: false,
        };
        measure(&format!("page_encrypt{suffix}"), seconds, || {
            black_box(cipher.encrypt(&src, &mut dst, &p).unwrap());
        });
        let mut encrypted = Box::new([0u8; PAGE_SIZE]);
        cipher.encrypt(&src, &mut encrypted, &p).unwrap();
        measure(&format!("page_decrypt{suffix}"), seconds, || {
            dst.copy_from_slice(&encrypted[..]);
            black_box(cipher.decrypt(&mut dst, 17, 16384, checksums).unwrap());
        });
    }
}
