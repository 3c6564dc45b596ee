//! PostgreSQL's data page checksum (FNV-1a variant over 32 parallel lanes,
//! the algorithm of `storage/checksum_impl.h`). Encrypted pages carry the
//! checksum of their stored bytes, so this must match the server bit for bit.

use crate::page::PAGE_SIZE;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;

/// The algorithm's published starting values, one per lane.
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline(always)]
fn comp(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// Checksum of a page as PostgreSQL computes it for block `blkno`, with the
/// stored `pd_checksum` field (bytes 8..10) treated as zero.
pub fn page_checksum(page: &[u8; PAGE_SIZE], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (row_index, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        let mut words = [0u32; N_SUMS];
        for (w, b) in words.iter_mut().zip(row.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if row_index == 0 {
            // pd_checksum (bytes 8..10) is the low half of the third
            // little-endian word; pd_flags (10..12), the high half, counts.
            words[2] &= 0xFFFF_0000;
        }
        for (s, w) in sums.iter_mut().zip(words) {
            *s = comp(*s, w);
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = comp(*s, 0);
        }
    }
    let checksum = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((checksum % 65535) + 1) as u16
}

pub fn stored_checksum(page: &[u8; PAGE_SIZE]) -> u16 {
    u16::from_le_bytes([page[8], page[9]])
}

pub fn set_checksum(page: &mut [u8; PAGE_SIZE], value: u16) {
    page[8..10].copy_from_slice(&value.to_le_bytes());
}
