//! Keyring format 1, written by tde 0.1.0: read once, to migrate a keyring
//! to the current format ([`crate::keyring`]). Nothing writes format 1.
//!
//! Layout:
//!
//! ```json
//! { "format": "tde-keyring", "version": 1,
//!   "system_identifier": "7301…", "cluster_salt": "<64 hex>",
//!   "principals": [ { "fingerprint": "<16 hex>", "nonce": "<32 hex>",
//!                     "data_keys": [ { "generation": 1, "wrapped": "<64 hex>" } ],
//!                     "mac": "<64 hex>" } ] }
//! ```
//!
//! Each principal entry held its own authenticated copy of every data key
//! (K the principal key, N the entry's nonce, integers little-endian):
//!
//! ```text
//! enc = HKDF-SHA256(ikm = K, salt = N, info = "tde/v1/wrap/enc", 32 bytes)
//! mac = HKDF-SHA256(ikm = K, salt = N, info = "tde/v1/wrap/mac", 32 bytes)
//! ct_i = AES-256-CTR(enc, counter block = g_i ‖ 0^15) XOR DEK_i
//! tag = HMAC-SHA256(mac, "tde/v1/keyring-entry" ‖ 0x00 ‖ u64 1
//!         ‖ u64 system_identifier ‖ cluster_salt (32) ‖ u64 len(fp) ‖ fp
//!         ‖ N (16) ‖ u64 count ‖ (g_i (1) ‖ ct_i (32)) for each key in order)
//! ```
//!
//! Format 2 wraps the data keys under a keyring key that each principal
//! entry wraps in turn. A principal entry is carried over only when its
//! principal key is given to the migration; [`Migration::not_carried`]
//! names the others, and the callers refuse to drop them unasked.

use std::collections::{BTreeMap, BTreeSet};

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kdf::{wrap_keys, Key256, KEY_LEN};
use crate::keyring::{
    hex_array, open_for_cluster, Keyring, KeyringFile, FORMAT_NAME, MAX_KEYRING_BYTES,
};
use crate::principal::PrincipalKey;
use crate::{Error, Result};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub const VERSION: u64 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    version: u64,
    system_identifier: String,
    cluster_salt: String,
    principals: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    fingerprint: String,
    nonce: String,
    data_keys: Vec<Wrapped>,
    mac: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    generation: u8,
    wrapped: String,
}

/// A format 1 keyring rewritten in the current format.
pub struct Migration {
    /// The keys, opened with the first principal key given, under a new
    /// random keyring key.
    pub ring: Keyring,
    /// The keyring to write in place of the old file; the principal keys
    /// given, and no other, open it.
    pub file: KeyringFile,
    /// Principal keys that opened the old keyring and do not open the new
    /// one.
    pub not_carried: Vec<String>,
}

/// Whether `bytes` is a keyring in format 1 (by its header alone; the rest
/// is checked by [`migrate`]).
pub fn is_format_1(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Header {
        format: String,
        version: u64,
    }
    // Unknown fields are ignored: only the header decides.
    bytes.len() <= MAX_KEYRING_BYTES
        && serde_json::from_slice::<Header>(bytes)
            .is_ok_and(|h| h.format == FORMAT_NAME && h.version == VERSION)
}

/// Opens a format 1 keyring with each of `principals` (the first is the
/// one in use), checks every MAC (and, given the cluster's system
/// identifier, that the keyring belongs to that cluster), and seals the
/// same data keys and cluster salt in the current format for exactly those
/// principal keys.
pub fn migrate(
    bytes: &[u8],
    principals: &[&PrincipalKey],
    cluster: Option<u64>,
) -> Result<Migration> {
    let first = principals
        .first()
        .expect("a migration needs at least one principal key");
    let file = parse(bytes)?;
    let keyring_sysid = parse_sysid(&file.system_identifier)?;
    if let Some(cluster) = cluster.filter(|c| *c != keyring_sysid) {
        return Err(Error::ForeignKeyring {
            keyring: keyring_sysid,
            cluster,
        });
    }
    let cluster_salt = hex_array::<32>("cluster_salt", &file.cluster_salt)?;
    let mut data_keys: BTreeMap<u8, Key256> = BTreeMap::new();
    for principal in principals {
        for (generation, key) in open_entry(&file, principal, keyring_sysid, &cluster_salt)? {
            match data_keys.get(&generation) {
                Some(existing) if *existing != key => {
                    return Err(corrupt(format!(
                        "principal entries hold different data keys for generation {generation}"
                    )))
                }
                Some(_) => {}
                None => {
                    data_keys.insert(generation, key);
                }
            }
        }
    }
    let ring = Keyring::from_parts(keyring_sysid, cluster_salt, data_keys)
        .with_keyring_key(Key256::random()?);
    let new_file = ring.seal(principals)?;
    // What the server will use is what it reads back, as on any start.
    let ring = open_for_cluster(&new_file, first, keyring_sysid)?;
    let given: Vec<String> = principals.iter().map(|p| p.fingerprint()).collect();
    let not_carried = fingerprints(&file)
        .into_iter()
        .filter(|f| !given.iter().any(|g| g == f))
        .map(str::to_string)
        .collect();
    Ok(Migration {
        ring,
        file: new_file,
        not_carried,
    })
}

/// The data keys of `principal`'s entry, after checking its MAC.
fn open_entry(
    file: &File,
    principal: &PrincipalKey,
    system_identifier: u64,
    cluster_salt: &[u8; 32],
) -> Result<Vec<(u8, Key256)>> {
    let fingerprint = principal.fingerprint();
    let entry = file
        .principals
        .iter()
        .find(|p| p.fingerprint == fingerprint)
        .ok_or_else(|| Error::WrongPrincipalKey {
            expected: fingerprints(file).join(" or "),
            actual: fingerprint.clone(),
        })?;
    let nonce = hex_array::<16>("nonce", &entry.nonce)?;
    let stored_mac = hex_array::<32>("mac", &entry.mac)?;
    let mut wrapped = Vec::with_capacity(entry.data_keys.len());
    for k in &entry.data_keys {
        wrapped.push((k.generation, hex_array::<KEY_LEN>("wrapped", &k.wrapped)?));
    }
    let (enc, mac_key) = wrap_keys(principal.key(), &nonce);
    let expected = entry_mac(
        &mac_key,
        system_identifier,
        cluster_salt,
        &fingerprint,
        &nonce,
        &wrapped,
    );
    if !bool::from(expected.ct_eq(&stored_mac)) {
        return Err(Error::KeyringTampered { fingerprint });
    }
    Ok(wrapped
        .into_iter()
        .map(|(generation, ct)| {
            let mut buf = Zeroizing::new(ct);
            let mut iv = [0u8; 16];
            iv[0] = generation;
            Aes256Ctr::new(enc.as_bytes().into(), &iv.into()).apply_keystream(&mut buf[..]);
            (generation, Key256::from_bytes(*buf))
        })
        .collect())
}

fn parse(bytes: &[u8]) -> Result<File> {
    if !is_format_1(bytes) {
        return Err(corrupt("not a keyring in format 1"));
    }
    let file: File = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("unexpected structure ({e})")))?;
    debug_assert!(file.format == FORMAT_NAME && file.version == VERSION);
    if file.principals.is_empty() {
        return Err(corrupt("no principal key entries"));
    }
    let mut seen = BTreeSet::new();
    for p in &file.principals {
        hex_array::<8>("fingerprint", &p.fingerprint)?;
        if !seen.insert(p.fingerprint.as_str()) {
            return Err(corrupt(format!(
                "principal key {} appears twice",
                p.fingerprint
            )));
        }
        if p.data_keys.is_empty() {
            return Err(corrupt("a principal entry holds no data keys"));
        }
        let mut last = 0u8;
        for k in &p.data_keys {
            if k.generation <= last {
                return Err(corrupt(
                    "data key generations must be positive and strictly increasing",
                ));
            }
            last = k.generation;
        }
    }
    Ok(file)
}

fn fingerprints(file: &File) -> Vec<&str> {
    file.principals
        .iter()
        .map(|p| p.fingerprint.as_str())
        .collect()
}

fn parse_sysid(text: &str) -> Result<u64> {
    text.parse::<u64>()
        .map_err(|_| corrupt("\"system_identifier\" is not an unsigned 64-bit integer"))
}

fn entry_mac(
    mac_key: &Key256,
    system_identifier: u64,
    cluster_salt: &[u8; 32],
    fingerprint: &str,
    nonce: &[u8; 16],
    wrapped: &[(u8, [u8; KEY_LEN])],
) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(mac_key.as_bytes()).expect("any key length");
    mac.update(b"tde/v1/keyring-entry\0");
    mac.update(&VERSION.to_le_bytes());
    mac.update(&system_identifier.to_le_bytes());
    mac.update(cluster_salt);
    mac.update(&(fingerprint.len() as u64).to_le_bytes());
    mac.update(fingerprint.as_bytes());
    mac.update(nonce);
    mac.update(&(wrapped.len() as u64).to_le_bytes());
    for (generation, ct) in wrapped {
        mac.update(&[*generation]);
        mac.update(ct);
    }
    mac.finalize().into_bytes().into()
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::KeyringCorrupt(format!("format 1: {}", msg.into()))
}
