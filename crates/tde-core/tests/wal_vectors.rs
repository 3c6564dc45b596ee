//! Known-answer tests of the WAL page transform (`tde_core::wal`). Every
//! expected value was computed once outside this crate and pasted in; the
//! comments give the commands.
//!
//! Common inputs (the same as `vectors.rs`):
//!
//! ```text
//! DEK   (generation 3)   = 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
//! DEK2  (generation 200) = c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf
//! SALT  (cluster salt)   = 808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f
//! SYSID                  = 7301234567890123456 (c0bae4e827325365 little-endian)
//! segment size           = 16 MiB
//! ```
//!
//! `openssl enc` of OpenSSL 3.0 refuses XTS ("XTS ciphers not supported"),
//! so the page ciphertexts come from Python's `cryptography` package
//! (48.0.0, bundling OpenSSL 4.0.0), whose `modes.XTS` is OpenSSL's
//! `EVP_aes_256_xts` including its ciphertext stealing, and were checked
//! against a second, pure-Python XTS (tweak doubling in GF(2^128) and
//! ciphertext stealing written out by hand over AES-256-ECB blocks):
//!
//! ```python
//! def xts(k, pageaddr, data):   # OpenSSL's XTS-AES-256, K1 = k[:32], K2 = k[32:]
//!     e = Cipher(algorithms.AES(k), modes.XTS(pageaddr.to_bytes(16, "little"))).encryptor()
//!     return e.update(data) + e.finalize()
//! p, h = page(...)                     # the builder `wal_page` below, in Python
//! x = p[h+24:] + p[h:h+24]             # the data unit: region rotated left by 24
//! c = xts(k1k2, pageaddr, x)           # == the hand-written XTS of the same
//! enc = p[:20] + salt + p[24:h] + c[-24:] + c[:-24]
//! ```

mod common;

use common::*;
use tde_core::kdf::{wal_keys, Key256};
use tde_core::wal::{
    SegmentSalt, WalCipher, WalPage, WalPageHeader, WalReadOutcome, WalWriteOutcome, XtsAes256,
    WAL_PAGE_SIZE,
};
use xts_mode::{get_tweak_default, Xts128};

const SEGMENT_SIZE: u32 = 16 << 20;

/// A WAL page as PostgreSQL 15 lays it out (the builder the vectors were
/// computed from):
///
/// * `xlp_magic` 0xD110, `xlp_info` 0x0001 (`XLP_FIRST_IS_CONTRECORD`) | 0x0002
///   when `long`, `xlp_tli`, `xlp_pageaddr`, `xlp_rem_len` 0x123, padding 0;
/// * long header: `xlp_sysid` = SYSID, `xlp_seg_size` = 16 MiB,
///   `xlp_xlog_blcksz` = 8192;
/// * bytes `H..fill_to`: `(j * 7 + 3) % 251` for page offset j, then
///   `TDE-WAL-PLAINTEXT` at `H + 64`; zeros after `fill_to`.
fn wal_page(tli: u32, pageaddr: u64, long: bool, fill_to: usize) -> WalPage {
    let mut p = [0u8; WAL_PAGE_SIZE];
    let info: u16 = 0x0001 | if long { 0x0002 } else { 0 };
    p[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    p[2..4].copy_from_slice(&info.to_le_bytes());
    p[4..8].copy_from_slice(&tli.to_le_bytes());
    p[8..16].copy_from_slice(&pageaddr.to_le_bytes());
    p[16..20].copy_from_slice(&0x123u32.to_le_bytes());
    let h = if long {
        p[24..32].copy_from_slice(&SYSID.to_le_bytes());
        p[32..36].copy_from_slice(&SEGMENT_SIZE.to_le_bytes());
        p[36..40].copy_from_slice(&8192u32.to_le_bytes());
        40
    } else {
        24
    };
    for (j, b) in p.iter_mut().enumerate().take(fill_to).skip(h) {
        *b = ((j * 7 + 3) % 251) as u8;
    }
    p[h + 64..h + 64 + MARKER.len()].copy_from_slice(MARKER);
    p
}

const MARKER: &[u8] = b"TDE-WAL-PLAINTEXT";

// ---------------------------------------------------------------- key derivation

// W1: generation 3, timeline 3, segment 0x3A7, segment salt 035ac3e1.
// info = "tde/v1/wal" ‖ SYSID LE ‖ tli u32 LE ‖ segno u64 LE ‖ salt:
//   openssl kdf -keylen 64 -kdfopt digest:SHA256 -kdfopt hexkey:$DEK -kdfopt hexsalt:$SALT \
//     -kdfopt hexinfo:7464652f76312f77616cc0bae4e82732536503000000a703000000000000035ac3e1 HKDF
// (output colons removed, lower case); cross-checked with Python:
//   prk = hmac.new(salt, dek, sha256).digest(); t1 = hmac.new(prk, info + b"\x01", sha256).digest()
//   t2 = hmac.new(prk, t1 + info + b"\x02", sha256).digest(); (t1 + t2).hex()
const W1_INFO: &str = "7464652f76312f77616cc0bae4e82732536503000000a703000000000000035ac3e1";
const W1_KEYS: &str = concat!(
    "2c8c2b98ce2b71920018cdb778bee7a2ae60532da227335d4f7bbd5efaa5e826",
    "879d2873a21a0786627974ccaf5cc058e2214d73b0ff810d991c394b25b60476",
);
// W2: generation 200 (DEK2), timeline 7, segment 0x3A8, segment salt c89e0001:
//   openssl kdf -keylen 64 -kdfopt digest:SHA256 -kdfopt hexkey:$DEK2 -kdfopt hexsalt:$SALT \
//     -kdfopt hexinfo:7464652f76312f77616cc0bae4e82732536507000000a803000000000000c89e0001 HKDF
const W2_INFO: &str = "7464652f76312f77616cc0bae4e82732536507000000a803000000000000c89e0001";
const W2_KEYS: &str = concat!(
    "c5b939ec3fc746132f742db1a0895217c8172a94e2d605a412beb7dd645ffed1",
    "9bafa6ccfa62eccb497850682716290ec1627dad664f8002f419a8b6995a4cd4",
);

fn keys_hex(k: (Key256, Key256)) -> String {
    format!(
        "{}{}",
        hex::encode(k.0.as_bytes()),
        hex::encode(k.1.as_bytes())
    )
}

#[test]
fn wal_keys_known_answers() {
    let salt: [u8; 32] = unhex(SALT);
    let dek = Key256::from_bytes(unhex(DEK));
    let dek2 = Key256::from_bytes(unhex(DEK2));
    assert_eq!(
        keys_hex(wal_keys(
            &dek,
            &salt,
            SYSID,
            3,
            0x3A7,
            &[0x03, 0x5A, 0xC3, 0xE1]
        )),
        W1_KEYS
    );
    assert_eq!(
        keys_hex(wal_keys(
            &dek2,
            &salt,
            SYSID,
            7,
            0x3A8,
            &[0xC8, 0x9E, 0x00, 0x01]
        )),
        W2_KEYS
    );
    // The info string is laid out as documented.
    let mut info = b"tde/v1/wal".to_vec();
    info.extend_from_slice(&SYSID.to_le_bytes());
    info.extend_from_slice(&3u32.to_le_bytes());
    info.extend_from_slice(&0x3A7u64.to_le_bytes());
    info.extend_from_slice(&[0x03, 0x5A, 0xC3, 0xE1]);
    assert_eq!(hex::encode(&info), W1_INFO);
    assert_eq!(
        hex::encode(hkdf64(&unhex::<32>(DEK), &salt, &info)),
        W1_KEYS
    );
    let w2_info = hex::decode(W2_INFO).unwrap();
    assert_eq!(
        hex::encode(hkdf64(&unhex::<32>(DEK2), &salt, &w2_info)),
        W2_KEYS
    );
    // Each input changes the keys.
    let base = keys_hex(wal_keys(
        &dek,
        &salt,
        SYSID,
        3,
        0x3A7,
        &[3, 0x5A, 0xC3, 0xE1],
    ));
    for other in [
        wal_keys(&dek, &salt, SYSID + 1, 3, 0x3A7, &[3, 0x5A, 0xC3, 0xE1]),
        wal_keys(&dek, &salt, SYSID, 4, 0x3A7, &[3, 0x5A, 0xC3, 0xE1]),
        wal_keys(&dek, &salt, SYSID, 3, 0x3A8, &[3, 0x5A, 0xC3, 0xE1]),
        wal_keys(&dek, &salt, SYSID, 3, 0x3A7, &[3, 0x5A, 0xC3, 0xE2]),
        wal_keys(&dek2, &salt, SYSID, 3, 0x3A7, &[3, 0x5A, 0xC3, 0xE1]),
    ] {
        assert_ne!(keys_hex(other), base);
    }
}

// ---------------------------------------------------------------- pages

struct Vector {
    keys: &'static str,
    tli: u32,
    pageaddr: u64,
    long: bool,
    fill_to: usize,
    salt: [u8; 4],
    plain_sha256: &'static str,
    /// SHA-256 of the rotated data unit `page[H+24..] ‖ page[H..H+24]`
    /// before and after `cryptography`'s XTS.
    unit_sha256: &'static str,
    unit_enc_sha256: &'static str,
    enc_sha256: &'static str,
    enc_0_64: &'static str,
    enc_8160_8192: &'static str,
}

// W1: short header, timeline 3, pageaddr 3/A7006000 (segment 0x3A7, offset
// 0x6000), records up to byte 5000 and zeros after, generation 3, salt
// 035ac3e1. XTS tweak (OpenSSL's 16-byte IV) = 006000a7030000000000000000000000.
const W1: Vector = Vector {
    keys: W1_KEYS,
    tli: 3,
    pageaddr: 0x3_A700_6000,
    long: false,
    fill_to: 5000,
    salt: [0x03, 0x5A, 0xC3, 0xE1],
    plain_sha256: "1412442f856fda47bca511128c398f04ffefc3c55db8ea8b141d5b6c402a378a",
    unit_sha256: "d23a9dfbe5279b2373ade84b74832a4eb6068d5a8813869877692255fd95251e",
    unit_enc_sha256: "32dec12b6d18cec83b329c527762db7b5fca48873649a5c4c842dcb93257c525",
    enc_sha256: "f31e008b8dfd362e81cdb7ab5b8d1ec8203d3b300c98faa3446f667322818c11",
    enc_0_64: concat!(
        "10d1010003000000006000a70300000023010000035ac3e13c9eb3c19ed65056",
        "903e1344aa615300ec513f56fc61ca13464b697bae938710716ea318b35359b6",
    ),
    enc_8160_8192: "cc0f90e4b70f7e978257e2d56d4e364e221722742f6fea5579332c1d91936e6d",
};

// W2: long header (first page of segment 0x3A8), timeline 7, pageaddr
// 3/A8000000, records to the end of the page, generation 200 (DEK2), salt
// c89e0001. XTS tweak = 000000a8030000000000000000000000.
const W2: Vector = Vector {
    keys: W2_KEYS,
    tli: 7,
    pageaddr: 0x3_A800_0000,
    long: true,
    fill_to: WAL_PAGE_SIZE,
    salt: [0xC8, 0x9E, 0x00, 0x01],
    plain_sha256: "35c475c9fd2d985d14ca64502a8e090a8b59b07c7dd81b37ea43e9724c1f2cee",
    unit_sha256: "0bab8e5579d878d28f1af476e2288a537e767e742b8cf27f66a45b78553d4a03",
    unit_enc_sha256: "16fb23c5330f89bf57696e995a0def6f88a8ae3eff4cd35955cf8026a39db9e6",
    enc_sha256: "2bf177b85018059a0c0b7c00fda82faa78a31ff930f4b3d35cc9e4a4fb30a2c0",
    enc_0_64: concat!(
        "10d1030007000000000000a80300000023010000c89e0001c0bae4e827325365",
        "0000000100200000b3c5dc3bcdb5d7599071d2e3f136d06da5f7c6754d642ef9",
    ),
    enc_8160_8192: "0d66be30e6221f04685ec2c2b618e23dca559bca99564466145e129df5788605",
};

/// `page[H+24..] ‖ page[H..H+24]`, the documented XTS data unit.
fn data_unit(page: &WalPage, h: usize) -> Vec<u8> {
    let mut x = page[h + 24..].to_vec();
    x.extend_from_slice(&page[h..h + 24]);
    x
}

fn check_vector(v: &Vector) {
    let plain = wal_page(v.tli, v.pageaddr, v.long, v.fill_to);
    assert_eq!(
        sha256_hex(&plain),
        v.plain_sha256,
        "test page builder changed"
    );
    let h = if v.long { 40 } else { 24 };
    assert_eq!(WalPageHeader::parse(&plain).unwrap().header_len(), h);
    assert_eq!(sha256_hex(&data_unit(&plain, h)), v.unit_sha256);

    let mut cipher = WalCipher::new(&vector_keyring(), SEGMENT_SIZE).unwrap();
    let salt = SegmentSalt::from_bytes(v.salt).unwrap();
    let mut enc = plain;
    assert_eq!(
        cipher.encrypt_page(&mut enc, salt).unwrap(),
        WalWriteOutcome::Encrypted
    );
    assert_eq!(sha256_hex(&enc), v.enc_sha256);
    assert_eq!(hex::encode(&enc[..64]), v.enc_0_64);
    assert_eq!(hex::encode(&enc[8160..]), v.enc_8160_8192);
    assert_eq!(sha256_hex(&data_unit(&enc, h)), v.unit_enc_sha256);

    // Header in plaintext, salt in the padding, nothing of the body visible.
    assert_eq!(&enc[..20], &plain[..20]);
    assert_eq!(&enc[20..24], &v.salt);
    assert_eq!(&enc[24..h], &plain[24..h]);
    assert_eq!(SegmentSalt::from_page(&enc), Some(salt));
    assert!(!enc.windows(MARKER.len()).any(|w| w == MARKER));

    // The same data unit through two other XTS implementations: this
    // crate's own `XtsAes256` on the contiguous unit and the `xts-mode`
    // crate, with K1 ‖ K2 from openssl.
    let keys: [u8; 64] = unhex(v.keys);
    let k1 = Key256::from_bytes(keys[..32].try_into().unwrap());
    let k2 = Key256::from_bytes(keys[32..].try_into().unwrap());
    let mut x = data_unit(&plain, h);
    XtsAes256::new(&k1, &k2).encrypt_data_unit(v.pageaddr as u128, &mut x);
    assert_eq!(x, data_unit(&enc, h));
    let mut x = data_unit(&plain, h);
    reference_xts(&keys).encrypt_sector(&mut x, get_tweak_default(v.pageaddr as u128));
    assert_eq!(x, data_unit(&enc, h));

    let mut page = enc;
    assert_eq!(
        cipher.decrypt_page(&mut page).unwrap(),
        WalReadOutcome::Decrypted {
            generation: v.salt[0]
        }
    );
    assert_eq!(page, plain, "decryption restores the page and zero padding");
}

fn reference_xts(keys: &[u8; 64]) -> Xts128<aes::Aes256> {
    use aes::cipher::KeyInit;
    Xts128::new(
        aes::Aes256::new_from_slice(&keys[..32]).unwrap(),
        aes::Aes256::new_from_slice(&keys[32..]).unwrap(),
    )
}

#[test]
fn wal_vector_w1_short_header() {
    check_vector(&W1);
}

#[test]
fn wal_vector_w2_long_header() {
    check_vector(&W2);
}

/// The two vector pages in one buffer, as an offline tool would see them
/// when they are copied into one file: each page picks its key from its
/// own header.
#[test]
fn vectors_decrypt_one_after_another() {
    let mut cipher = WalCipher::new(&vector_keyring(), SEGMENT_SIZE).unwrap();
    let mut pages = [
        wal_page(W1.tli, W1.pageaddr, W1.long, W1.fill_to),
        wal_page(W2.tli, W2.pageaddr, W2.long, W2.fill_to),
        wal_page(W1.tli, W1.pageaddr, W1.long, W1.fill_to),
    ];
    let plain = pages;
    for (p, v) in pages.iter_mut().zip([&W1, &W2, &W1]) {
        cipher
            .encrypt_page(p, SegmentSalt::from_bytes(v.salt).unwrap())
            .unwrap();
        assert_eq!(sha256_hex(p), v.enc_sha256);
    }
    for p in pages.iter_mut() {
        cipher.decrypt_page(p).unwrap();
    }
    assert_eq!(pages, plain);
}
