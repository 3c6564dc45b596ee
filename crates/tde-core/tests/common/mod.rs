//! Helpers shared by the integration tests. Everything cryptographic here is
//! written against the `aes`, `ctr`, `hkdf`, `hmac` and `sha2` crates
//! directly, never through `tde_core`'s own helpers, so that the tests check
//! the crate against an independent statement of the format.
#![allow(dead_code)]

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use tde_core::kdf::Key256;
use tde_core::keyring::Keyring;
use tde_core::page::{Page, PAGE_SIZE};

pub type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
pub type HmacSha256 = hmac::Hmac<Sha256>;

pub fn unhex<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).expect("test vector is valid hex");
    out
}

/// `start, start + 1, ..., start + 31`.
pub fn counting32(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Data keys, cluster salt and system identifier of the known-answer
/// vectors (page and WAL alike).
pub const DEK: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const DEK2: &str = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf";
pub const SALT: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
pub const SYSID: u64 = 7_301_234_567_890_123_456;

/// The vectors' keyring: DEK as generation 3, DEK2 as generation 200.
pub fn vector_keyring() -> Keyring {
    Keyring::from_parts(
        SYSID,
        unhex(SALT),
        [
            (3, Key256::from_bytes(unhex(DEK))),
            (200, Key256::from_bytes(unhex(DEK2))),
        ],
    )
}

/// RFC 5869 HKDF-SHA256 with a 64-byte output.
pub fn hkdf64(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .expect("64 bytes is a valid HKDF-SHA256 length");
    out
}

/// RFC 5869 HKDF-SHA256 with a 32-byte output.
pub fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// AES-256-CTR (128-bit big-endian counter) applied in place.
pub fn aes256_ctr(key: &[u8; 32], iv: &[u8; 16], data: &mut [u8]) {
    let mut c = Aes256Ctr::new(key.into(), iv.into());
    c.apply_keystream(data);
}

/// A PostgreSQL heap page with three 64-byte tuples (the builder the page
/// vectors were computed from; see `vectors.rs`):
///
/// * `pd_lsn` = `lsn` as {xlogid, xrecoff}, each little-endian,
/// * `pd_checksum` = 0, `pd_flags` = `flags`,
/// * `pd_lower` = 24 + 4 * 3, `pd_upper` = 8000, `pd_special` = 8192,
///   `pd_pagesize_version` = 0x2004, `pd_prune_xid` = 0x1234,
/// * line pointers i = 0..3: `lp_off` 8000 + 64 i, `lp_flags` 1, `lp_len` 64,
/// * bytes 8000..8192: `(j * 7 + 3) % 251`, then `TDE-PLAINTEXT-MARKER` at 8024.
pub fn heap_page(lsn: u64, flags: u16) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    set_lsn(&mut p, lsn);
    p[10..12].copy_from_slice(&flags.to_le_bytes());
    p[12..14].copy_from_slice(&(24u16 + 4 * 3).to_le_bytes());
    p[14..16].copy_from_slice(&8000u16.to_le_bytes());
    p[16..18].copy_from_slice(&8192u16.to_le_bytes());
    p[18..20].copy_from_slice(&0x2004u16.to_le_bytes());
    p[20..24].copy_from_slice(&0x1234u32.to_le_bytes());
    for i in 0..3u32 {
        let lp = (8000 + 64 * i) | (1 << 15) | (64 << 17);
        let at = 24 + 4 * i as usize;
        p[at..at + 4].copy_from_slice(&lp.to_le_bytes());
    }
    for (j, b) in p.iter_mut().enumerate().skip(8000) {
        *b = ((j * 7 + 3) % 251) as u8;
    }
    p[8024..8024 + MARKER.len()].copy_from_slice(MARKER);
    p
}

pub const MARKER: &[u8] = b"TDE-PLAINTEXT-MARKER";

pub fn set_lsn(p: &mut Page, lsn: u64) {
    p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
    p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
}

pub fn lsn_of(p: &Page) -> u64 {
    let hi = u32::from_le_bytes(p[0..4].try_into().unwrap()) as u64;
    let lo = u32::from_le_bytes(p[4..8].try_into().unwrap()) as u64;
    (hi << 32) | lo
}

pub fn flags_of(p: &Page) -> u16 {
    u16::from_le_bytes([p[10], p[11]])
}

/// Fills `buf` from a splitmix64 stream: fast, deterministic page content for
/// property tests (proptest shrinks the seed instead of 8 KiB of bytes).
pub fn fill_from_seed(buf: &mut [u8], seed: u64) {
    let mut s = seed;
    for chunk in buf.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

// ------------------------------------------------------------ keyring format 2
//
// The keyring construction of `keyring.rs`'s module documentation, restated
// with the primitives above (never `tde_core::kdf` or `tde_core::keyring`),
// reading nothing but the JSON document.

/// A principal key's fingerprint: the first 8 bytes of
/// `HMAC-SHA256(K, "tde/v1/principal-key-fingerprint")`, as 16 hex digits.
pub fn own_fingerprint(principal_key: &[u8; 32]) -> String {
    let tag = hmac_sha256(principal_key, &[b"tde/v1/principal-key-fingerprint"]);
    hex::encode(&tag[..8])
}

fn json_hex(v: &serde_json::Value, field: &str) -> Vec<u8> {
    hex::decode(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("field {field:?} is a string")),
    )
    .unwrap_or_else(|_| panic!("field {field:?} is hex"))
}

/// `label ‖ 0x00 ‖ u64 version ‖ u64 system_identifier ‖ cluster_salt`, the
/// common prefix of both MAC inputs.
fn own_mac_prefix(file: &serde_json::Value, label: &[u8]) -> Vec<u8> {
    let version = file["version"].as_u64().expect("numeric version");
    let sysid: u64 = file["system_identifier"]
        .as_str()
        .expect("system identifier string")
        .parse()
        .expect("system identifier is a u64");
    let mut m = Vec::new();
    m.extend_from_slice(label);
    m.push(0);
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(&sysid.to_le_bytes());
    m.extend_from_slice(&json_hex(file, "cluster_salt"));
    m
}

/// The documented MAC input of principal entry `entry` of `file`:
/// `"tde/v2/keyring-principal" ‖ 0x00 ‖ u64 version ‖ cluster_salt
/// ‖ u64 len(fp) ‖ fp ‖ nonce ‖ wrapped_key` (no system identifier).
pub fn own_entry_mac_input(file: &serde_json::Value, entry: &serde_json::Value) -> Vec<u8> {
    let fp = entry["fingerprint"].as_str().expect("fingerprint string");
    let version = file["version"].as_u64().expect("numeric version");
    let mut m = Vec::new();
    m.extend_from_slice(b"tde/v2/keyring-principal\0");
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(&json_hex(file, "cluster_salt"));
    m.extend_from_slice(&(fp.len() as u64).to_le_bytes());
    m.extend_from_slice(fp.as_bytes());
    m.extend_from_slice(&json_hex(entry, "nonce"));
    m.extend_from_slice(&json_hex(entry, "wrapped_key"));
    m
}

/// The documented MAC input of the data keys of `file`:
/// `"tde/v2/keyring-data-keys" ‖ 0x00 ‖ u64 version ‖ u64 system_identifier
/// ‖ cluster_salt ‖ last_generation (1) ‖ u64 count ‖ (g ‖ nonce ‖ wrapped)*`.
pub fn own_data_keys_mac_input(file: &serde_json::Value) -> Vec<u8> {
    let keys = file["data_keys"].as_array().expect("data_keys array");
    let last = file["last_generation"].as_u64().expect("last_generation");
    let mut m = own_mac_prefix(file, b"tde/v2/keyring-data-keys");
    m.push(u8::try_from(last).expect("last_generation is one byte"));
    m.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for k in keys {
        let g = k["generation"].as_u64().expect("numeric generation");
        m.push(u8::try_from(g).expect("generation is one byte"));
        m.extend_from_slice(&json_hex(k, "nonce"));
        m.extend_from_slice(&json_hex(k, "wrapped"));
    }
    m
}

/// What the documented construction gives for one principal key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnKeyring {
    pub keyring_key: [u8; 32],
    pub last_generation: u8,
    /// In file order.
    pub data_keys: Vec<(u8, [u8; 32])>,
}

/// Opens keyring document `file` with `principal_key` the documented way:
/// find the entry by fingerprint, check its MAC under
/// `HKDF(K, nonce, "tde/v1/wrap/mac")`, unwrap R with
/// `AES-256-CTR(HKDF(K, nonce, "tde/v1/wrap/enc"), 0^16)`, then
/// [`own_open_with_keyring_key`].
pub fn own_open(file: &serde_json::Value, principal_key: &[u8; 32]) -> Result<OwnKeyring, String> {
    let fp = own_fingerprint(principal_key);
    let entry = file["principals"]
        .as_array()
        .ok_or("no principals array")?
        .iter()
        .find(|e| e["fingerprint"] == fp.as_str())
        .ok_or_else(|| format!("no entry for principal key {fp}"))?;
    let nonce = json_hex(entry, "nonce");
    let enc = hkdf32(principal_key, &nonce, b"tde/v1/wrap/enc");
    let mac = hkdf32(principal_key, &nonce, b"tde/v1/wrap/mac");
    let tag = hmac_sha256(&mac, &[&own_entry_mac_input(file, entry)]);
    if hex::encode(tag) != entry["mac"].as_str().ok_or("entry mac")?.to_lowercase() {
        return Err(format!("entry MAC of {fp} does not verify"));
    }
    let mut r: [u8; 32] = json_hex(entry, "wrapped_key")
        .try_into()
        .map_err(|_| "wrapped_key is not 32 bytes")?;
    aes256_ctr(&enc, &[0; 16], &mut r);
    own_open_with_keyring_key(file, &r)
}

/// Checks the data keys' MAC under `HKDF(R, cluster_salt,
/// "tde/v2/keyring/mac")` and unwraps each data key with
/// `AES-256-CTR(HKDF(R, cluster_salt, "tde/v2/keyring/enc"), nonce)`.
pub fn own_open_with_keyring_key(
    file: &serde_json::Value,
    keyring_key: &[u8; 32],
) -> Result<OwnKeyring, String> {
    let salt = json_hex(file, "cluster_salt");
    let enc = hkdf32(keyring_key, &salt, b"tde/v2/keyring/enc");
    let mac = hkdf32(keyring_key, &salt, b"tde/v2/keyring/mac");
    let tag = hmac_sha256(&mac, &[&own_data_keys_mac_input(file)]);
    if hex::encode(tag) != file["mac"].as_str().ok_or("top-level mac")?.to_lowercase() {
        return Err("data keys' MAC does not verify".into());
    }
    let mut data_keys = Vec::new();
    for k in file["data_keys"].as_array().ok_or("no data_keys array")? {
        let generation = k["generation"].as_u64().ok_or("generation")? as u8;
        let nonce: [u8; 16] = json_hex(k, "nonce")
            .try_into()
            .map_err(|_| "data key nonce is not 16 bytes")?;
        let mut dek: [u8; 32] = json_hex(k, "wrapped")
            .try_into()
            .map_err(|_| "wrapped data key is not 32 bytes")?;
        aes256_ctr(&enc, &nonce, &mut dek);
        data_keys.push((generation, dek));
    }
    Ok(OwnKeyring {
        keyring_key: *keyring_key,
        last_generation: file["last_generation"].as_u64().ok_or("last_generation")? as u8,
        data_keys,
    })
}

/// `text` with the hexadecimal digit at `at` replaced by another one.
pub fn flip_hex_digit(text: &str, at: usize) -> String {
    let mut b = text.as_bytes().to_vec();
    assert!(b[at].is_ascii_hexdigit(), "not a hex digit at {at}");
    b[at] = if b[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}
