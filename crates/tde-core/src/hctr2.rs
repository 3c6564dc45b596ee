//! HCTR2 with AES-256: a tweakable, length-preserving, wide-block cipher
//! (Crowley, Huckleberry, Biggers, "Length-preserving encryption with
//! HCTR2", IACR ePrint 2021/1441), composed from the `aes` and `polyval`
//! crates.
//!
//! Wide-block means every bit of the output depends on every bit of the
//! input: encrypting two different messages under the same key and tweak
//! gives two unrelated ciphertexts, and all an observer learns from a
//! repeated tweak is whether the two messages were identical. That is why
//! relation pages use it (see `docs/format/pages.md`): a page whose LSN
//! stays the same while its contents change needs no per-write nonce.
//!
//! The construction, for key K, tweak T and message P = M ‖ N with
//! |M| = 16 bytes:
//!
//! ```text
//! h = E_K(le128(0)),  L = E_K(le128(1))
//! H(T, X) = POLYVAL(h, le128(2·bits(T) + 2) ‖ pad(T) ‖ X)          if 16 divides |X|
//!         = POLYVAL(h, le128(2·bits(T) + 3) ‖ pad(T) ‖ pad(X ‖ 01)) otherwise
//! MM = M ⊕ H(T, N);  UU = E_K(MM);  S = MM ⊕ UU ⊕ L
//! V  = N ⊕ XCTR_K(S),  XCTR block i (from 1) = E_K(S ⊕ le128(i))
//! U  = UU ⊕ H(T, V);  C = U ‖ V
//! ```
//!
//! Decryption runs the same steps with `D_K` in place of the one `E_K` on
//! MM. The tests prove this module equal to an independent implementation
//! (the `hctr2-rs` crate) and pin known-answer vectors.

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::Aes256;
use polyval::universal_hash::UniversalHash;
use polyval::Polyval;
use zeroize::Zeroize;

use crate::kdf::Key256;

type Block = Array<u8, U16>;

/// Blocks per batched AES call in XCTR (as in the WAL's XTS).
const BATCH: usize = 64;

/// HCTR2-AES-256 under one key. The hash key `h` and `L` are derived once.
#[derive(Clone)]
pub struct Hctr2Aes256 {
    aes: Aes256,
    /// POLYVAL keyed with `h`, nothing absorbed yet.
    hash: Polyval,
    l: [u8; 16],
}

impl Drop for Hctr2Aes256 {
    fn drop(&mut self) {
        // `aes` and `polyval` zeroize their own state (their "zeroize"
        // features are on).
        self.l.zeroize();
    }
}

impl Hctr2Aes256 {
    pub fn new(key: &Key256) -> Hctr2Aes256 {
        let aes = Aes256::new(key.as_bytes().into());
        let mut h = Block::from(0u128.to_le_bytes());
        aes.encrypt_block(&mut h);
        let mut l = Block::from(1u128.to_le_bytes());
        aes.encrypt_block(&mut l);
        let hash = Polyval::new(&h);
        h.0.zeroize();
        let out = Hctr2Aes256 { aes, hash, l: l.0 };
        l.0.zeroize();
        out
    }

    /// Encrypts `data` (at least 16 bytes) in place under `tweak`.
    ///
    /// # Panics
    ///
    /// If `data` is shorter than 16 bytes.
    pub fn encrypt(&self, tweak: &[u8], data: &mut [u8]) {
        self.transform(tweak, data, true);
    }

    /// Inverse of [`Hctr2Aes256::encrypt`].
    ///
    /// # Panics
    ///
    /// If `data` is shorter than 16 bytes.
    pub fn decrypt(&self, tweak: &[u8], data: &mut [u8]) {
        self.transform(tweak, data, false);
    }

    fn transform(&self, tweak: &[u8], data: &mut [u8], encrypt: bool) {
        assert!(data.len() >= 16, "HCTR2 needs at least one 16-byte block");
        let (m, n) = data.split_at_mut(16);
        // Both hashes start with the same length block and tweak.
        let length_code = 2 * (tweak.len() as u128) * 8 + if n.len() % 16 == 0 { 2 } else { 3 };
        let mut after_tweak = self.hash.clone();
        after_tweak.update(&[Block::from(length_code.to_le_bytes())]);
        after_tweak.update_padded(tweak);

        let mut mm = Block::from(xor16(m, &hash_tail(after_tweak.clone(), n)));
        let mut uu = mm;
        if encrypt {
            self.aes.encrypt_block(&mut uu);
        } else {
            self.aes.decrypt_block(&mut uu);
        }
        let mut s = xor16(&mm.0, &uu.0);
        s = xor16(&s, &self.l);
        self.xctr(&s, n);
        let u = xor16(&uu.0, &hash_tail(after_tweak, n));
        m.copy_from_slice(&u);
        mm.0.zeroize();
        uu.0.zeroize();
        s.zeroize();
    }

    /// XORs `data` with the XCTR keystream of nonce `s`.
    fn xctr(&self, s: &[u8; 16], data: &mut [u8]) {
        let s = u128::from_le_bytes(*s);
        let mut blocks = [Block::default(); BATCH];
        let mut counter: u128 = 1;
        for chunk in data.chunks_mut(16 * BATCH) {
            let needed = chunk.len().div_ceil(16);
            for b in blocks.iter_mut().take(needed) {
                b.0 = (s ^ counter).to_le_bytes();
                counter += 1;
            }
            self.aes.encrypt_blocks(&mut blocks[..needed]);
            let (whole, rest) = chunk.as_chunks_mut::<16>();
            for (bytes, ks) in whole.iter_mut().zip(blocks.iter()) {
                *bytes = (u128::from_ne_bytes(*bytes) ^ u128::from_ne_bytes(ks.0)).to_ne_bytes();
            }
            if let Some(ks) = blocks.get(whole.len()) {
                for (d, k) in rest.iter_mut().zip(ks.0.iter()) {
                    *d ^= k;
                }
            }
        }
        for b in blocks.iter_mut() {
            b.0.zeroize();
        }
    }
}

/// Finishes `H(T, X)` from a state that has absorbed the length block and
/// the tweak: absorbs `X` (padded with `01 00…` when not whole blocks).
fn hash_tail(mut state: Polyval, x: &[u8]) -> [u8; 16] {
    let whole = x.len() / 16 * 16;
    let (blocks, rest) = x.split_at(whole);
    if !blocks.is_empty() {
        state.update_padded(blocks);
    }
    if !rest.is_empty() {
        let mut last = Block::default();
        last.0[..rest.len()].copy_from_slice(rest);
        last.0[rest.len()] = 1;
        state.update(&[last]);
    }
    state.finalize().0
}

fn xor16(a: &[u8], b: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}
