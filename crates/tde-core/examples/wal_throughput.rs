//! WAL page transform throughput on 8 KiB pages, one core.
//!
//! Prints one line per measurement: `name bytes_per_second`, to compare with
//! `openssl speed -evp aes-256-xts -bytes 8192` run on the same machine.
//! `xts_mode_reference_*` runs the `xts-mode` crate (one AES block at a
//! time) on the same region, to show what the batched XTS buys.

mod common;
use common::{measure, seconds_arg};
use std::time::Instant;

use std::hint::black_box;

use aes::cipher::{array::Array, KeyInit};
use aes::Aes256;
use tde_core::kdf::Key256;
use tde_core::keyring::Keyring;
use tde_core::wal::{SegmentSalt, WalCipher, WalPage, WAL_PAGE_SIZE};
use xts_mode::{get_tweak_default, Xts128};

const SEGMENT_SIZE: u32 = 16 << 20;

/// A short-header WAL page at 0/3002000 on timeline 1, records everywhere.
fn sample_page() -> Box<WalPage> {
    let mut p = Box::new([0u8; WAL_PAGE_SIZE]);
    for (i, b) in p.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    p[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    p[2..4].copy_from_slice(&0x0005u16.to_le_bytes());
    p[4..8].copy_from_slice(&1u32.to_le_bytes());
    p[8..16].copy_from_slice(&0x0300_2000u64.to_le_bytes());
    p[16..20].copy_from_slice(&0u32.to_le_bytes());
    p[20..24].fill(0);
    p
}

fn main() {
    let seconds = seconds_arg();
    let ring = Keyring::from_parts(1, [7; 32], [(1, Key256::from_bytes([9; 32]))]);
    let mut cipher = WalCipher::new(&ring, SEGMENT_SIZE).unwrap();
    let salt = SegmentSalt::from_bytes([1, 0xAB, 0xCD, 0xEF]).unwrap();
    let src = sample_page();
    let mut page = Box::new([0u8; WAL_PAGE_SIZE]);

    measure("wal_encrypt", seconds, || {
        page.copy_from_slice(&src[..]);
        black_box(cipher.encrypt_page(&mut page, salt).unwrap());
    });
    let mut encrypted = src.clone();
    cipher.encrypt_page(&mut encrypted, salt).unwrap();
    measure("wal_decrypt", seconds, || {
        page.copy_from_slice(&encrypted[..]);
        black_box(cipher.decrypt_page(&mut page).unwrap());
    });

    // A whole 1 MiB write through the range helper, as XLogWrite issues it.
    let mut big = vec![0u8; 128 * WAL_PAGE_SIZE];
    let mut big_src = big.clone();
    for (i, chunk) in big_src.chunks_exact_mut(WAL_PAGE_SIZE).enumerate() {
        chunk.copy_from_slice(&src[..]);
        chunk[8..16].copy_from_slice(&(0x0300_0000u64 + (i * WAL_PAGE_SIZE) as u64).to_le_bytes());
    }
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        big.copy_from_slice(&big_src);
        black_box(cipher.encrypt_range(&mut big, 3, 0, salt).unwrap());
        bytes += big.len() as u64;
    }
    println!(
        "wal_encrypt_range_1MiB {:.0}",
        bytes as f64 / start.elapsed().as_secs_f64()
    );

    let k1 = Aes256::new(&Array([9u8; 32]));
    let k2 = Aes256::new(&Array([10u8; 32]));
    let xts = Xts128::new(k1, k2);
    measure("xts_mode_reference_encrypt", seconds, || {
        page.copy_from_slice(&src[..]);
        xts.encrypt_sector(&mut page[24..], get_tweak_default(0x0300_2000));
        black_box(&page);
    });
    measure("xts_mode_reference_decrypt", seconds, || {
        xts.decrypt_sector(&mut page[24..], get_tweak_default(0x0300_2000));
        black_box(&page);
    });
}
