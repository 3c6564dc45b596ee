//! XTS-AES-256 (IEEE 1619-2018) with ciphertext stealing, shared by the WAL
//! transform and the page transform's sector-safe format.

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::Aes256;

use crate::kdf::Key256;

type Block = Array<u8, U16>;

/// Blocks per batched AES call: enough for the widest backend's pipeline,
/// small enough that the tweaks stay in L1.
const BATCH: usize = 64;

/// Multiplication by α in GF(2^128) on a tweak held little-endian (IEEE 1619
/// §5.2: shift left by one bit, reduce with x^128 = x^7 + x^2 + x + 1).
#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    let carry = ((t as i128) >> 127) as u128 & 0x87;
    (t << 1) ^ carry
}

#[inline(always)]
fn xor_block(b: &mut Block, t: u128) {
    b.0 = (u128::from_le_bytes(b.0) ^ t).to_le_bytes();
}

#[inline(always)]
fn xex_block(b: &mut Block, t: u128, cipher: impl FnOnce(&mut Block)) {
    xor_block(b, t);
    cipher(b);
    xor_block(b, t);
}

/// A contiguous data unit as (first `m-1` full blocks, last full block and
/// partial block).
fn split_data_unit(data: &mut [u8]) -> (&mut [u8], &mut [u8]) {
    assert!(data.len() >= 16, "an XTS data unit holds at least 16 bytes");
    let body = (data.len() / 16 - 1) * 16;
    data.split_at_mut(body)
}

/// XTS-AES-256 (IEEE 1619-2018) with ciphertext stealing, composed from the
/// `aes` crate's block cipher: the tweaks of a run of blocks are computed
/// first (doubling in GF(2^128)), then the blocks go through one batched AES
/// call (pipelined AES-NI / VAES), which is what makes it several times
/// faster than one block at a time; only the last full block and the
/// stolen partial block are done singly. The tests prove it equal to the
/// `xts-mode` crate and to OpenSSL.
#[derive(Clone)]
pub struct XtsAes256 {
    /// K1, encrypts the data blocks.
    data: Aes256,
    /// K2, encrypts the tweak.
    tweak: Aes256,
}

impl XtsAes256 {
    pub fn new(k1: &Key256, k2: &Key256) -> XtsAes256 {
        XtsAes256 {
            data: Aes256::new(k1.as_bytes().into()),
            tweak: Aes256::new(k2.as_bytes().into()),
        }
    }

    /// Encrypts one data unit of at least 16 bytes in place; `tweak` is the
    /// data unit number, used little-endian as IEEE 1619 and OpenSSL do.
    ///
    /// # Panics
    ///
    /// If `data` is shorter than one block.
    pub fn encrypt_data_unit(&self, tweak: u128, data: &mut [u8]) {
        let (body, tail) = split_data_unit(data);
        self.encrypt_parts(tweak, body, tail);
    }

    /// Inverse of [`XtsAes256::encrypt_data_unit`].
    ///
    /// # Panics
    ///
    /// If `data` is shorter than one block.
    pub fn decrypt_data_unit(&self, tweak: u128, data: &mut [u8]) {
        let (body, tail) = split_data_unit(data);
        self.decrypt_parts(tweak, body, tail);
    }

    /// Encrypts consecutive whole data units of `unit` bytes each (a
    /// multiple of 16) in place, numbered `first`, `first + 1`, …: the same
    /// as [`XtsAes256::encrypt_data_unit`] on each, with the units' tweaks
    /// encrypted in one batch and no block done singly, which is what makes
    /// short units (512 bytes) nearly as fast as long ones.
    ///
    /// # Panics
    ///
    /// If `unit` is not a positive multiple of 16 or `data` not a whole
    /// number of units.
    pub fn encrypt_units(&self, first: u128, unit: usize, data: &mut [u8]) {
        self.whole_units(first, unit, data, true);
    }

    /// Inverse of [`XtsAes256::encrypt_units`].
    pub fn decrypt_units(&self, first: u128, unit: usize, data: &mut [u8]) {
        self.whole_units(first, unit, data, false);
    }

    fn whole_units(&self, first: u128, unit: usize, data: &mut [u8], encrypt: bool) {
        assert!(
            unit > 0 && unit.is_multiple_of(16) && data.len().is_multiple_of(unit),
            "whole units of whole blocks"
        );
        let mut number = first;
        for group in data.chunks_mut(unit * BATCH) {
            let count = group.len() / unit;
            let mut tweaks = [Block::default(); BATCH];
            for (k, t) in tweaks[..count].iter_mut().enumerate() {
                *t = Block::from(number.wrapping_add(k as u128).to_le_bytes());
            }
            self.tweak.encrypt_blocks(&mut tweaks[..count]);
            let (blocks, _) = Block::slice_as_chunks_mut(group);
            self.xex_units(blocks, unit / 16, &tweaks[..count], encrypt);
            number = number.wrapping_add(count as u128);
        }
    }

    fn first_tweak(&self, tweak: u128) -> u128 {
        let mut t = Block::from(tweak.to_le_bytes());
        self.tweak.encrypt_block(&mut t);
        u128::from_le_bytes(t.0)
    }

    /// The data unit `body ‖ tail`: `body` is the first `m-1` full blocks,
    /// `tail` the last full block followed by the partial block (16 to 31
    /// bytes). Two slices, so that the page transform can store the tail
    /// apart from the body.
    pub(crate) fn encrypt_parts(&self, tweak: u128, body: &mut [u8], tail: &mut [u8]) {
        let (blocks, rest) = Block::slice_as_chunks_mut(body);
        debug_assert!(rest.is_empty() && (16..32).contains(&tail.len()));
        let t = self.xex(blocks, self.first_tweak(tweak), true);
        let (last, partial) = tail.split_at_mut(16);
        let last = Block::slice_as_mut_array(last).expect("16 bytes");
        xex_block(last, t, |b| self.data.encrypt_block(b));
        if !partial.is_empty() {
            // Ciphertext stealing: `last` holds CC = Enc_t(P[m-1]); the
            // partial block takes CC's head, and Enc_{t·α}(P[m] ‖ CC's tail)
            // takes the last full block's place.
            let r = partial.len();
            let mut pp = Block::default();
            pp.0[..r].copy_from_slice(partial);
            pp.0[r..].copy_from_slice(&last.0[r..]);
            partial.copy_from_slice(&last.0[..r]);
            xex_block(&mut pp, mul_alpha(t), |b| self.data.encrypt_block(b));
            *last = pp;
        }
    }

    pub(crate) fn decrypt_parts(&self, tweak: u128, body: &mut [u8], tail: &mut [u8]) {
        let (blocks, rest) = Block::slice_as_chunks_mut(body);
        debug_assert!(rest.is_empty() && (16..32).contains(&tail.len()));
        let t = self.xex(blocks, self.first_tweak(tweak), false);
        let (last, partial) = tail.split_at_mut(16);
        let last = Block::slice_as_mut_array(last).expect("16 bytes");
        if partial.is_empty() {
            xex_block(last, t, |b| self.data.decrypt_block(b));
            return;
        }
        // The stored last full block was encrypted with the final tweak.
        xex_block(last, mul_alpha(t), |b| self.data.decrypt_block(b));
        let r = partial.len();
        let mut cc = Block::default();
        cc.0[..r].copy_from_slice(partial);
        cc.0[r..].copy_from_slice(&last.0[r..]);
        partial.copy_from_slice(&last.0[..r]);
        xex_block(&mut cc, t, |b| self.data.decrypt_block(b));
        *last = cc;
    }

    /// XOR-encrypt-XOR of consecutive units of `per_unit` blocks whose first
    /// tweaks are `starts`. The batches of the AES call run across unit
    /// boundaries: a 512-byte unit is only 32 blocks, and a call shorter
    /// than the backend's pipeline (64 blocks with VAES) falls back to one
    /// block at a time, a quarter of the speed.
    fn xex_units(&self, blocks: &mut [Block], per_unit: usize, starts: &[Block], encrypt: bool) {
        debug_assert_eq!(blocks.len(), per_unit * starts.len());
        let mut units = starts.iter();
        let mut t = 0u128;
        let mut left = 0usize;
        self.xex_with(blocks, encrypt, || {
            if left == 0 {
                t = u128::from_le_bytes(units.next().expect("a tweak per unit").0);
                left = per_unit;
            }
            left -= 1;
            let this = t;
            t = mul_alpha(t);
            this
        });
    }

    /// XOR-encrypt-XOR of consecutive blocks starting at tweak `t`; returns
    /// the tweak of the block after the last.
    fn xex(&self, blocks: &mut [Block], mut t: u128, encrypt: bool) -> u128 {
        self.xex_with(blocks, encrypt, || {
            let this = t;
            t = mul_alpha(t);
            this
        });
        t
    }

    /// XOR-encrypt-XOR of `blocks`, each with the next tweak `next` gives,
    /// through batched AES calls.
    #[inline(always)]
    fn xex_with(&self, blocks: &mut [Block], encrypt: bool, mut next: impl FnMut() -> u128) {
        let mut tweaks = [0u128; BATCH];
        for batch in blocks.chunks_mut(BATCH) {
            for (b, slot) in batch.iter_mut().zip(tweaks.iter_mut()) {
                *slot = next();
                xor_block(b, *slot);
            }
            if encrypt {
                self.data.encrypt_blocks(batch);
            } else {
                self.data.decrypt_blocks(batch);
            }
            for (b, &tw) in batch.iter_mut().zip(tweaks.iter()) {
                xor_block(b, tw);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batched whole-unit path is the per-unit path: across batch
    /// boundaries, for several unit sizes, both directions.
    #[test]
    fn batched_units_equal_single_units() {
        let xts = XtsAes256::new(&Key256::from_bytes([7; 32]), &Key256::from_bytes([9; 32]));
        for unit in [16usize, 48, 512, 1040, 4096] {
            for count in [1usize, 3, BATCH, BATCH + 5] {
                let plain: Vec<u8> = (0..unit * count).map(|i| (i * 31 + 7) as u8).collect();
                let first = (0xfeed_u128 << 64) | 0xffff_fffe;
                let mut batched = plain.clone();
                xts.encrypt_units(first, unit, &mut batched);
                let mut single = plain.clone();
                for (k, u) in single.chunks_mut(unit).enumerate() {
                    xts.encrypt_data_unit(first + k as u128, u);
                }
                assert_eq!(batched, single, "unit {unit} count {count}");
                xts.decrypt_units(first, unit, &mut batched);
                assert_eq!(batched, plain, "unit {unit} count {count}");
            }
        }
    }
}
