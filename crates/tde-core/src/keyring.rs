//! The keyring file `$PGDATA/pg_tde/keyring.json` (DESIGN §2).
//!
//! Layout (format version 2):
//!
//! ```json
//! { "format": "tde-keyring", "version": 2,
//!   "system_identifier": "7301…", "cluster_salt": "<64 hex>",
//!   "principals": [ { "fingerprint": "<16 hex>", "nonce": "<32 hex>",
//!                     "wrapped_key": "<64 hex>", "mac": "<64 hex>" } ],
//!   "last_generation": 2,
//!   "data_keys": [ { "generation": 1, "nonce": "<32 hex>", "wrapped": "<64 hex>" } ],
//!   "mac": "<64 hex>" }
//! ```
//!
//! Two layers. A random 256-bit **keyring key** R wraps the data keys once;
//! each principal entry wraps R under one principal key. So a server holding
//! only its own principal key can add or drop a data key generation online
//! and every other principal key (a recovery key) still opens the result,
//! and replacing a principal key touches only its own entry.
//!
//! Principal entry (K the principal key, N a fresh random nonce per entry):
//!
//! ```text
//! enc_P  = HKDF-SHA256(ikm = K, salt = N, info = "tde/v1/wrap/enc", 32 bytes)
//! mac_P  = HKDF-SHA256(ikm = K, salt = N, info = "tde/v1/wrap/mac", 32 bytes)
//! wrapped_key = AES-256-CTR(enc_P, counter block = 0^16) XOR R
//! mac    = HMAC-SHA256(mac_P, "tde/v2/keyring-principal" ‖ 0x00 ‖ u64 version
//!            ‖ cluster_salt (32) ‖ u64 len(fp) ‖ fp ‖ N (16) ‖ wrapped_key (32))
//! ```
//!
//! The entry is bound to its keyring by the cluster salt, not to a cluster's
//! system identifier, so that moving the keyring to an upgraded cluster
//! (which pg_upgrade gives a new identifier) needs only the keyring key,
//! and every principal key keeps opening it.
//!
//! Data keys (n_i a fresh random nonce per wrapped key, g_i its generation):
//!
//! ```text
//! enc_R  = HKDF-SHA256(ikm = R, salt = cluster_salt, info = "tde/v2/keyring/enc")
//! mac_R  = HKDF-SHA256(ikm = R, salt = cluster_salt, info = "tde/v2/keyring/mac")
//! ct_i   = AES-256-CTR(enc_R, counter block = n_i) XOR DEK_i
//! mac    = HMAC-SHA256(mac_R, "tde/v2/keyring-data-keys" ‖ 0x00 ‖ u64 version
//!            ‖ u64 system_identifier ‖ cluster_salt (32) ‖ last_generation (1)
//!            ‖ u64 count ‖ (g_i (1) ‖ n_i (16) ‖ ct_i (32)) for each key in order)
//! ```
//!
//! Integers are little-endian and `fp` is the fingerprint's 16 ASCII hex
//! digits. Both MACs are full HMAC-SHA256 tags (encrypt-then-MAC; the tag
//! commits to the key). The current generation is the highest one held;
//! `last_generation` is the highest ever issued, so a dropped generation
//! number is never issued again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kdf::{fill_random, keyring_keys, wrap_keys, Key256, KEY_LEN};
use crate::principal::PrincipalKey;
use crate::{Error, Result};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub const FORMAT_NAME: &str = "tde-keyring";
pub const FORMAT_VERSION: u64 = 2;
/// Generations are stored in one byte of the page mark and WAL salt; 0 means
/// "not encrypted".
pub const MAX_GENERATION: u8 = 255;
/// Keyring files are small; anything larger is not ours.
pub const MAX_KEYRING_BYTES: usize = 1 << 20;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyringFile {
    pub format: String,
    pub version: u64,
    /// pg_control's system identifier, as a decimal string (JSON numbers lose
    /// precision above 2^53 in many tools).
    pub system_identifier: String,
    pub cluster_salt: String,
    pub principals: Vec<PrincipalEntry>,
    pub last_generation: u8,
    pub data_keys: Vec<WrappedKey>,
    pub mac: String,
}

/// The keyring key, wrapped under one principal key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalEntry {
    pub fingerprint: String,
    pub nonce: String,
    pub wrapped_key: String,
    pub mac: String,
}

/// One data key, wrapped under the keyring key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    pub generation: u8,
    pub nonce: String,
    pub wrapped: String,
}

/// The unwrapped keyring: what the server holds in memory.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub system_identifier: u64,
    pub cluster_salt: [u8; 32],
    /// Fingerprint of the principal key that opened it.
    pub opened_with: String,
    keyring_key: Key256,
    last_generation: u8,
    data_keys: BTreeMap<u8, Key256>,
}

impl Keyring {
    /// A new keyring for a cluster: random cluster salt and keyring key,
    /// data key generation 1.
    pub fn generate(system_identifier: u64) -> Result<Keyring> {
        let mut cluster_salt = [0u8; 32];
        fill_random(&mut cluster_salt)?;
        let mut data_keys = BTreeMap::new();
        data_keys.insert(1, Key256::random()?);
        Ok(Keyring {
            system_identifier,
            cluster_salt,
            opened_with: String::new(),
            keyring_key: Key256::random()?,
            last_generation: 1,
            data_keys,
        })
    }

    /// A keyring from explicit data keys, for tools that import keys and for
    /// known-answer tests; its keyring key is random (see
    /// [`Keyring::with_keyring_key`]). [`Keyring::generate`] is what a
    /// cluster uses.
    ///
    /// # Panics
    ///
    /// If `data_keys` is empty or holds generation 0 (0 means "not
    /// encrypted" in the page mark and WAL salt), or if the operating
    /// system's random generator fails. A later duplicate of a generation
    /// replaces the earlier one.
    pub fn from_parts(
        system_identifier: u64,
        cluster_salt: [u8; 32],
        data_keys: impl IntoIterator<Item = (u8, Key256)>,
    ) -> Keyring {
        let data_keys = checked_data_keys(data_keys);
        Keyring {
            system_identifier,
            cluster_salt,
            opened_with: String::new(),
            keyring_key: Key256::random().expect("operating system random generator"),
            last_generation: *data_keys.keys().next_back().expect("not empty"),
            data_keys,
        }
    }

    /// The same keyring under an explicit keyring key (known-answer tests).
    pub fn with_keyring_key(mut self, keyring_key: Key256) -> Keyring {
        self.keyring_key = keyring_key;
        self
    }

    /// The same cluster and keyring key holding exactly `data_keys` (a
    /// server's view after generations were added or dropped at run time).
    ///
    /// # Panics
    ///
    /// Under the conditions of [`Keyring::from_parts`].
    pub fn with_data_keys(&self, data_keys: impl IntoIterator<Item = (u8, Key256)>) -> Keyring {
        let data_keys = checked_data_keys(data_keys);
        let highest = *data_keys.keys().next_back().expect("not empty");
        // No randomness here: servers call this inside critical sections.
        Keyring {
            system_identifier: self.system_identifier,
            cluster_salt: self.cluster_salt,
            opened_with: self.opened_with.clone(),
            keyring_key: self.keyring_key.clone(),
            last_generation: self.last_generation.max(highest),
            data_keys,
        }
    }

    pub fn current_generation(&self) -> u8 {
        *self
            .data_keys
            .keys()
            .next_back()
            .expect("a keyring always holds at least one data key")
    }

    /// The random key that wraps the data keys; what a running server uses
    /// to reread its keyring after a change.
    pub fn keyring_key(&self) -> &Key256 {
        &self.keyring_key
    }

    /// The highest generation ever issued (dropped ones included).
    pub fn last_generation(&self) -> u8 {
        self.last_generation
    }

    pub fn data_key(&self, generation: u8) -> Option<&Key256> {
        self.data_keys.get(&generation)
    }

    pub fn generations(&self) -> impl Iterator<Item = u8> + '_ {
        self.data_keys.keys().copied()
    }

    /// Whether `other` was opened from the same keyring (cluster, salt and
    /// keyring key), whatever principal key opened it.
    pub fn same_keyring(&self, other: &Keyring) -> bool {
        self.system_identifier == other.system_identifier
            && self.cluster_salt == other.cluster_salt
            && self.keyring_key == other.keyring_key
    }

    /// Serializes the keyring with one entry per principal key given.
    pub fn seal(&self, principals: &[&PrincipalKey]) -> Result<KeyringFile> {
        let mut entries = Vec::with_capacity(principals.len());
        for p in principals {
            entries.push(self.seal_entry(p)?);
        }
        let (data_keys, mac) = self.seal_data_keys()?;
        Ok(KeyringFile {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            system_identifier: self.system_identifier.to_string(),
            cluster_salt: hex::encode(self.cluster_salt),
            principals: entries,
            last_generation: self.last_generation,
            data_keys,
            mac,
        })
    }

    fn seal_entry(&self, principal: &PrincipalKey) -> Result<PrincipalEntry> {
        let mut nonce = [0u8; 16];
        fill_random(&mut nonce)?;
        let (enc, mac_key) = wrap_keys(principal.key(), &nonce);
        let fingerprint = principal.fingerprint();
        let mut wrapped = Zeroizing::new(*self.keyring_key.as_bytes());
        ctr(&enc, &[0; 16]).apply_keystream(&mut wrapped[..]);
        let tag = entry_mac(&mac_key, &self.cluster_salt, &fingerprint, &nonce, &wrapped);
        Ok(PrincipalEntry {
            fingerprint,
            nonce: hex::encode(nonce),
            wrapped_key: hex::encode(*wrapped),
            mac: hex::encode(tag),
        })
    }

    fn seal_data_keys(&self) -> Result<(Vec<WrappedKey>, String)> {
        let (enc, mac_key) = keyring_keys(&self.keyring_key, &self.cluster_salt);
        let mut wrapped = Vec::with_capacity(self.data_keys.len());
        for (&generation, dek) in &self.data_keys {
            let mut nonce = [0u8; 16];
            fill_random(&mut nonce)?;
            let mut buf = Zeroizing::new(*dek.as_bytes());
            ctr(&enc, &nonce).apply_keystream(&mut buf[..]);
            wrapped.push((generation, nonce, *buf));
        }
        let tag = data_keys_mac(
            &mac_key,
            self.system_identifier,
            &self.cluster_salt,
            self.last_generation,
            &wrapped,
        );
        let keys = wrapped
            .iter()
            .map(|(generation, nonce, ct)| WrappedKey {
                generation: *generation,
                nonce: hex::encode(nonce),
                wrapped: hex::encode(ct),
            })
            .collect();
        Ok((keys, hex::encode(tag)))
    }
}

/// The data keys of a keyring: at least one, none under generation 0 (which
/// means "not encrypted" in the page mark and WAL salt).
fn checked_data_keys(data_keys: impl IntoIterator<Item = (u8, Key256)>) -> BTreeMap<u8, Key256> {
    let data_keys: BTreeMap<u8, Key256> = data_keys.into_iter().collect();
    assert!(
        !data_keys.is_empty(),
        "a keyring needs at least one data key"
    );
    assert!(
        !data_keys.contains_key(&0),
        "data key generation 0 is reserved for \"not encrypted\""
    );
    data_keys
}

fn ctr(key: &Key256, iv: &[u8; 16]) -> Aes256Ctr {
    Aes256Ctr::new(key.as_bytes().into(), iv.into())
}

fn new_mac(
    key: &Key256,
    label: &[u8],
    system_identifier: u64,
    cluster_salt: &[u8; 32],
) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(label);
    mac.update(&[0]);
    mac.update(&FORMAT_VERSION.to_le_bytes());
    mac.update(&system_identifier.to_le_bytes());
    mac.update(cluster_salt);
    mac
}

fn entry_mac(
    mac_key: &Key256,
    cluster_salt: &[u8; 32],
    fingerprint: &str,
    nonce: &[u8; 16],
    wrapped_key: &[u8; KEY_LEN],
) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(mac_key.as_bytes()).expect("any key length");
    mac.update(b"tde/v2/keyring-principal\0");
    mac.update(&FORMAT_VERSION.to_le_bytes());
    mac.update(cluster_salt);
    mac.update(&(fingerprint.len() as u64).to_le_bytes());
    mac.update(fingerprint.as_bytes());
    mac.update(nonce);
    mac.update(wrapped_key);
    mac.finalize().into_bytes().into()
}

fn data_keys_mac(
    mac_key: &Key256,
    system_identifier: u64,
    cluster_salt: &[u8; 32],
    last_generation: u8,
    wrapped: &[(u8, [u8; 16], [u8; KEY_LEN])],
) -> [u8; 32] {
    let mut mac = new_mac(
        mac_key,
        b"tde/v2/keyring-data-keys",
        system_identifier,
        cluster_salt,
    );
    mac.update(&[last_generation]);
    mac.update(&(wrapped.len() as u64).to_le_bytes());
    for (generation, nonce, ct) in wrapped {
        mac.update(&[*generation]);
        mac.update(nonce);
        mac.update(ct);
    }
    mac.finalize().into_bytes().into()
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::KeyringCorrupt(msg.into())
}

pub(crate) fn hex_array<const N: usize>(field: &str, text: &str) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    if text.len() != 2 * N {
        return Err(corrupt(format!(
            "field \"{field}\" must be {} hexadecimal digits",
            2 * N
        )));
    }
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| corrupt(format!("field \"{field}\" is not hexadecimal")))?;
    Ok(out)
}

impl KeyringFile {
    /// Parses and structurally validates a keyring file. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<KeyringFile> {
        if bytes.len() > MAX_KEYRING_BYTES {
            return Err(corrupt("file is larger than any keyring"));
        }
        if bytes.is_empty() {
            return Err(corrupt("file is empty"));
        }
        // Read the version first so another format gets a version error, not
        // a complaint about unknown fields.
        let probe: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON ({e})")))?;
        if probe.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(corrupt(
                "not a tde keyring (missing \"format\": \"tde-keyring\")",
            ));
        }
        match probe.get("version").and_then(|v| v.as_u64()) {
            Some(FORMAT_VERSION) => {}
            Some(crate::keyring_v1::VERSION) => return Err(Error::KeyringFormat1),
            Some(found) => {
                return Err(Error::KeyringVersion {
                    found,
                    supported: FORMAT_VERSION,
                })
            }
            None => return Err(corrupt("missing or invalid \"version\"")),
        }
        let file: KeyringFile = serde_json::from_value(probe)
            .map_err(|e| corrupt(format!("unexpected structure ({e})")))?;
        file.validate()?;
        Ok(file)
    }

    fn validate(&self) -> Result<()> {
        self.system_identifier()?;
        hex_array::<32>("cluster_salt", &self.cluster_salt)?;
        hex_array::<32>("mac", &self.mac)?;
        if self.principals.is_empty() {
            return Err(corrupt("no principal key entries"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.principals {
            hex_array::<8>("fingerprint", &p.fingerprint)?;
            hex_array::<16>("nonce", &p.nonce)?;
            hex_array::<KEY_LEN>("wrapped_key", &p.wrapped_key)?;
            hex_array::<32>("mac", &p.mac)?;
            if !seen.insert(p.fingerprint.as_str()) {
                return Err(corrupt(format!(
                    "principal key {} appears twice",
                    p.fingerprint
                )));
            }
        }
        if self.data_keys.is_empty() {
            return Err(corrupt("the keyring holds no data keys"));
        }
        let mut last = 0u8;
        for k in &self.data_keys {
            if k.generation <= last {
                return Err(corrupt(
                    "data key generations must be positive and strictly increasing",
                ));
            }
            last = k.generation;
            hex_array::<16>("nonce", &k.nonce)?;
            hex_array::<KEY_LEN>("wrapped", &k.wrapped)?;
        }
        if self.last_generation < last {
            return Err(corrupt(
                "\"last_generation\" is lower than a generation the keyring holds",
            ));
        }
        Ok(())
    }

    pub fn system_identifier(&self) -> Result<u64> {
        self.system_identifier
            .parse::<u64>()
            .map_err(|_| corrupt("\"system_identifier\" is not an unsigned 64-bit integer"))
    }

    pub fn fingerprints(&self) -> Vec<&str> {
        self.principals
            .iter()
            .map(|p| p.fingerprint.as_str())
            .collect()
    }

    /// Generations of the data keys, as listed (not authenticated).
    pub fn generations(&self) -> Vec<u8> {
        self.data_keys.iter().map(|k| k.generation).collect()
    }

    /// Unwraps the keyring key with `principal` and the data keys with it,
    /// checking each MAC before using what it covers.
    pub fn open(&self, principal: &PrincipalKey) -> Result<Keyring> {
        self.validate()?;
        let fingerprint = principal.fingerprint();
        let entry = self
            .principals
            .iter()
            .find(|p| p.fingerprint == fingerprint)
            .ok_or_else(|| Error::WrongPrincipalKey {
                expected: self.fingerprints().join(" or "),
                actual: fingerprint.clone(),
            })?;
        let cluster_salt = hex_array::<32>("cluster_salt", &self.cluster_salt)?;
        let nonce = hex_array::<16>("nonce", &entry.nonce)?;
        let wrapped = hex_array::<KEY_LEN>("wrapped_key", &entry.wrapped_key)?;
        let stored_mac = hex_array::<32>("mac", &entry.mac)?;
        let (enc, mac_key) = wrap_keys(principal.key(), &nonce);
        let expected = entry_mac(&mac_key, &cluster_salt, &fingerprint, &nonce, &wrapped);
        if !bool::from(expected.ct_eq(&stored_mac)) {
            return Err(Error::KeyringTampered { fingerprint });
        }
        let mut keyring_key = Zeroizing::new(wrapped);
        ctr(&enc, &[0; 16]).apply_keystream(&mut keyring_key[..]);
        let mut ring = self
            .open_with_keyring_key(&Key256::from_bytes(*keyring_key))
            .map_err(|e| match e {
                Error::KeyringBodyMismatch => Error::KeyringTampered {
                    fingerprint: fingerprint.clone(),
                },
                other => other,
            })?;
        ring.opened_with = fingerprint;
        Ok(ring)
    }

    /// Unwraps the data keys with the keyring key itself: how a running
    /// server, which holds it, rereads its keyring after a change. Checks
    /// the data keys' MAC first.
    pub fn open_with_keyring_key(&self, keyring_key: &Key256) -> Result<Keyring> {
        self.validate()?;
        let system_identifier = self.system_identifier()?;
        let cluster_salt = hex_array::<32>("cluster_salt", &self.cluster_salt)?;
        let stored_mac = hex_array::<32>("mac", &self.mac)?;
        let mut wrapped = Vec::with_capacity(self.data_keys.len());
        for k in &self.data_keys {
            wrapped.push((
                k.generation,
                hex_array::<16>("nonce", &k.nonce)?,
                hex_array::<KEY_LEN>("wrapped", &k.wrapped)?,
            ));
        }
        let (enc, mac_key) = keyring_keys(keyring_key, &cluster_salt);
        let expected = data_keys_mac(
            &mac_key,
            system_identifier,
            &cluster_salt,
            self.last_generation,
            &wrapped,
        );
        if !bool::from(expected.ct_eq(&stored_mac)) {
            return Err(Error::KeyringBodyMismatch);
        }
        let mut data_keys = BTreeMap::new();
        for (generation, nonce, ct) in wrapped {
            let mut buf = Zeroizing::new(ct);
            ctr(&enc, &nonce).apply_keystream(&mut buf[..]);
            data_keys.insert(generation, Key256::from_bytes(*buf));
        }
        Ok(Keyring {
            system_identifier,
            cluster_salt,
            opened_with: String::new(),
            keyring_key: keyring_key.clone(),
            last_generation: self.last_generation,
            data_keys,
        })
    }

    /// A copy with one more principal key able to open it. `ring` must be
    /// this keyring, opened with a key it already holds.
    pub fn with_principal_added(&self, ring: &Keyring, new: &PrincipalKey) -> Result<KeyringFile> {
        self.check_same_keyring(ring)?;
        let fingerprint = new.fingerprint();
        if self.principals.iter().any(|p| p.fingerprint == fingerprint) {
            return Err(Error::PrincipalKeyChange(format!(
                "principal key {fingerprint} can already open this keyring"
            )));
        }
        let mut out = self.clone();
        out.principals.push(ring.seal_entry(new)?);
        Ok(out)
    }

    /// A copy that principal key `fingerprint` no longer opens. The last
    /// principal key cannot be removed.
    pub fn with_principal_removed(&self, fingerprint: &str) -> Result<KeyringFile> {
        if !self.principals.iter().any(|p| p.fingerprint == fingerprint) {
            return Err(Error::PrincipalKeyChange(format!(
                "principal key {fingerprint} is not in this keyring (it holds {})",
                self.fingerprints().join(", ")
            )));
        }
        if self.principals.len() == 1 {
            return Err(Error::PrincipalKeyChange(format!(
                "principal key {fingerprint} is the only one that opens this keyring; add another first"
            )));
        }
        let mut out = self.clone();
        out.principals.retain(|p| p.fingerprint != fingerprint);
        Ok(out)
    }

    /// Rotation: `new` replaces principal key `old_fingerprint`, in place in
    /// the list; other principal keys (e.g. recovery keys) stay.
    pub fn with_principal_replaced(
        &self,
        ring: &Keyring,
        old_fingerprint: &str,
        new: &PrincipalKey,
    ) -> Result<KeyringFile> {
        self.check_same_keyring(ring)?;
        let fingerprint = new.fingerprint();
        if fingerprint == old_fingerprint {
            return Err(Error::PrincipalKeyChange(
                "the new principal key is the current one".into(),
            ));
        }
        if self.principals.iter().any(|p| p.fingerprint == fingerprint) {
            return Err(Error::PrincipalKeyChange(format!(
                "principal key {fingerprint} can already open this keyring"
            )));
        }
        let index = self
            .principals
            .iter()
            .position(|p| p.fingerprint == old_fingerprint)
            .ok_or_else(|| {
                Error::PrincipalKeyChange(format!(
                    "principal key {old_fingerprint} is not in this keyring (it holds {})",
                    self.fingerprints().join(", ")
                ))
            })?;
        let mut out = self.clone();
        out.principals[index] = ring.seal_entry(new)?;
        Ok(out)
    }

    /// Data-key rotation: a copy holding a new random data key as generation
    /// `last_generation + 1`, and the keyring it opens to. `ring` must be
    /// this keyring (any principal key, or a server's run-time view); the
    /// data keys come from this file, so a concurrent change is never lost.
    pub fn with_data_key_added(&self, ring: &Keyring) -> Result<(KeyringFile, Keyring)> {
        let current = self.open_with_keyring_key(&ring.keyring_key)?;
        let Some(generation) = current.last_generation.checked_add(1) else {
            return Err(Error::DataKeyChange(format!(
                "all {MAX_GENERATION} data key generations have been issued"
            )));
        };
        let mut keys: Vec<(u8, Key256)> = current
            .data_keys
            .iter()
            .map(|(g, k)| (*g, k.clone()))
            .collect();
        keys.push((generation, Key256::random()?));
        let mut next = current.with_data_keys(keys);
        next.last_generation = generation;
        next.opened_with = ring.opened_with.clone();
        Ok((self.with_sealed_data_keys(&next)?, next))
    }

    /// A copy without data key `generation`, and the keyring it opens to.
    /// The current (highest) generation cannot be dropped. Whether anything
    /// still uses the generation is the caller's to prove.
    pub fn with_data_key_dropped(
        &self,
        ring: &Keyring,
        generation: u8,
    ) -> Result<(KeyringFile, Keyring)> {
        let current = self.open_with_keyring_key(&ring.keyring_key)?;
        if current.data_key(generation).is_none() {
            return Err(Error::DataKeyChange(format!(
                "the keyring holds no data key generation {generation} (it holds {})",
                list(current.generations())
            )));
        }
        if generation == current.current_generation() {
            return Err(Error::DataKeyChange(format!(
                "generation {generation} is the current data key; rotate to a new one first"
            )));
        }
        let keys: Vec<(u8, Key256)> = current
            .data_keys
            .iter()
            .filter(|(g, _)| **g != generation)
            .map(|(g, k)| (*g, k.clone()))
            .collect();
        let mut next = current.with_data_keys(keys);
        next.opened_with = ring.opened_with.clone();
        Ok((self.with_sealed_data_keys(&next)?, next))
    }

    /// A copy whose data keys are `ring`'s (which must share this file's
    /// keyring key, an invariant of the callers); principal entries stay.
    fn with_sealed_data_keys(&self, ring: &Keyring) -> Result<KeyringFile> {
        let (data_keys, mac) = ring.seal_data_keys()?;
        let mut out = self.clone();
        out.last_generation = ring.last_generation;
        out.data_keys = data_keys;
        out.mac = mac;
        Ok(out)
    }

    /// A copy holding every data key of this file and of `ring` (a node's
    /// run-time view), so adopting a keyring copied from another node never
    /// loses a key this node holds. Refuses two different keys under one
    /// generation number.
    pub fn merged_with(&self, ring: &Keyring) -> Result<(KeyringFile, Keyring)> {
        let theirs = self.open_with_keyring_key(&ring.keyring_key)?;
        let mut keys: BTreeMap<u8, Key256> = theirs.data_keys.clone();
        for (g, k) in &ring.data_keys {
            match keys.get(g) {
                Some(existing) if existing != k => {
                    return Err(Error::DataKeyChange(format!(
                        "generation {g} holds a different data key in this keyring than on this server; the keyrings have diverged"
                    )))
                }
                Some(_) => {}
                None => {
                    keys.insert(*g, k.clone());
                }
            }
        }
        let mut next = theirs.with_data_keys(keys);
        next.last_generation = theirs.last_generation.max(ring.last_generation);
        next.opened_with = ring.opened_with.clone();
        let file = if next.data_keys == theirs.data_keys
            && next.last_generation == theirs.last_generation
        {
            self.clone()
        } else {
            self.with_sealed_data_keys(&next)?
        };
        Ok((file, next))
    }

    /// A copy for the cluster with system identifier `system_identifier`
    /// (the new cluster of a pg_upgrade, which keeps the relation files and
    /// so needs the same keys). `ring` must be this keyring. Every principal
    /// key keeps opening the copy.
    pub fn rebound_to(&self, ring: &Keyring, system_identifier: u64) -> Result<KeyringFile> {
        let mut current = self.open_with_keyring_key(&ring.keyring_key)?;
        current.system_identifier = system_identifier;
        let mut out = self.with_sealed_data_keys(&current)?;
        out.system_identifier = system_identifier.to_string();
        Ok(out)
    }

    fn check_same_keyring(&self, ring: &Keyring) -> Result<()> {
        let salt = hex_array::<32>("cluster_salt", &self.cluster_salt)?;
        if self.system_identifier()? != ring.system_identifier || salt != ring.cluster_salt {
            return Err(Error::PrincipalKeyChange(
                "the unwrapped keys belong to another keyring".into(),
            ));
        }
        self.open_with_keyring_key(&ring.keyring_key)
            .map(|_| ())
            .map_err(|_| {
                Error::PrincipalKeyChange("the unwrapped keys belong to another keyring".into())
            })
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("keyring serializes");
        s.push('\n');
        s
    }
}

fn list(generations: impl Iterator<Item = u8>) -> String {
    generations
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens the keyring and checks that it belongs to this cluster.
pub fn open_for_cluster(
    file: &KeyringFile,
    principal: &PrincipalKey,
    cluster_system_identifier: u64,
) -> Result<Keyring> {
    let keyring_sysid = file.system_identifier()?;
    if keyring_sysid != cluster_system_identifier {
        return Err(Error::ForeignKeyring {
            keyring: keyring_sysid,
            cluster: cluster_system_identifier,
        });
    }
    file.open(principal)
}

/// Writes `contents` to `path` atomically: temporary file, fsync, rename,
/// fsync of the directory. A crash leaves either the old or the new file.
/// A replaced file keeps its owner and group (so a keyring rewritten by an
/// administrator as root stays readable by the server's OS user).
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    let owner = std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(b: u8) -> PrincipalKey {
        PrincipalKey::from_key(Key256::from_bytes([b; 32]))
    }

    #[test]
    fn seal_open_round_trip() {
        let ring = Keyring::generate(42).unwrap();
        let file = ring.seal(&[&pk(1)]).unwrap();
        let text = file.to_json();
        let parsed = KeyringFile::parse(text.as_bytes()).unwrap();
        let opened = open_for_cluster(&parsed, &pk(1), 42).unwrap();
        assert_eq!(opened.current_generation(), 1);
        assert_eq!(opened.data_key(1), ring.data_key(1));
        assert_eq!(opened.cluster_salt, ring.cluster_salt);
    }

    #[test]
    fn wrong_key_names_both_fingerprints() {
        let file = Keyring::generate(1).unwrap().seal(&[&pk(1)]).unwrap();
        let e = file.open(&pk(2)).unwrap_err().to_string();
        assert!(e.contains(&pk(1).fingerprint()), "{e}");
        assert!(e.contains(&pk(2).fingerprint()), "{e}");
    }

    #[test]
    fn foreign_cluster_refused() {
        let file = Keyring::generate(7).unwrap().seal(&[&pk(1)]).unwrap();
        let e = open_for_cluster(&file, &pk(1), 8).unwrap_err().to_string();
        assert!(e.contains("another cluster"), "{e}");
    }

    #[test]
    fn any_of_several_principals_opens() {
        let ring = Keyring::generate(5).unwrap();
        let file = ring.seal(&[&pk(1), &pk(2)]).unwrap();
        assert_eq!(file.open(&pk(1)).unwrap().data_key(1), ring.data_key(1));
        assert_eq!(file.open(&pk(2)).unwrap().data_key(1), ring.data_key(1));
    }

    #[test]
    fn tampering_detected() {
        let file = Keyring::generate(5).unwrap().seal(&[&pk(1)]).unwrap();
        let mut t = file.clone();
        t.cluster_salt = hex::encode([0u8; 32]);
        assert!(matches!(t.open(&pk(1)), Err(Error::KeyringTampered { .. })));
        let mut t = file.clone();
        t.system_identifier = "6".into();
        assert!(matches!(t.open(&pk(1)), Err(Error::KeyringTampered { .. })));
        let mut t = file.clone();
        t.data_keys[0].wrapped = flip_digit(&t.data_keys[0].wrapped);
        assert!(matches!(t.open(&pk(1)), Err(Error::KeyringTampered { .. })));
        let mut t = file.clone();
        t.principals[0].wrapped_key = flip_digit(&t.principals[0].wrapped_key);
        assert!(matches!(t.open(&pk(1)), Err(Error::KeyringTampered { .. })));
        let mut t = file.clone();
        t.last_generation = 7;
        assert!(matches!(t.open(&pk(1)), Err(Error::KeyringTampered { .. })));
    }

    fn flip_digit(hex: &str) -> String {
        let mut w = hex.to_string().into_bytes();
        w[0] = if w[0] == b'0' { b'1' } else { b'0' };
        String::from_utf8(w).unwrap()
    }

    #[test]
    fn data_key_added_opens_for_every_principal() {
        let file = Keyring::generate(5)
            .unwrap()
            .seal(&[&pk(1), &pk(2)])
            .unwrap();
        let by_one = file.open(&pk(1)).unwrap();
        let (file2, ring2) = file.with_data_key_added(&by_one).unwrap();
        assert_eq!(ring2.current_generation(), 2);
        assert_eq!(ring2.generations().collect::<Vec<_>>(), vec![1, 2]);
        // The other principal key opens the new generation too.
        let by_two = KeyringFile::parse(file2.to_json().as_bytes())
            .unwrap()
            .open(&pk(2))
            .unwrap();
        assert_eq!(by_two.data_key(2), ring2.data_key(2));
        assert_eq!(by_two.data_key(1), by_one.data_key(1));
        assert_ne!(by_two.data_key(2), by_one.data_key(1));
        // Principal entries are untouched.
        assert_eq!(file2.principals, file.principals);
    }

    #[test]
    fn dropped_generation_is_never_reissued() {
        let file = Keyring::generate(5).unwrap().seal(&[&pk(1)]).unwrap();
        let ring = file.open(&pk(1)).unwrap();
        let (f2, r2) = file.with_data_key_added(&ring).unwrap();
        let e = f2.with_data_key_dropped(&r2, 2).unwrap_err().to_string();
        assert!(e.contains("current data key"), "{e}");
        let e = f2.with_data_key_dropped(&r2, 9).unwrap_err().to_string();
        assert!(e.contains("no data key generation 9"), "{e}");
        let (f3, r3) = f2.with_data_key_dropped(&r2, 1).unwrap();
        assert_eq!(r3.generations().collect::<Vec<_>>(), vec![2]);
        let (f4, r4) = f3.with_data_key_added(&r3).unwrap();
        assert_eq!(r4.generations().collect::<Vec<_>>(), vec![2, 3]);
        let opened = f4.open(&pk(1)).unwrap();
        assert_eq!(opened.last_generation(), 3);
        assert_eq!(opened.data_key(2), r2.data_key(2));
    }

    #[test]
    fn rebound_keyring_opens_for_the_new_cluster_with_every_principal() {
        let file = Keyring::generate(5)
            .unwrap()
            .seal(&[&pk(1), &pk(2)])
            .unwrap();
        let ring = file.open(&pk(1)).unwrap();
        let moved = file.rebound_to(&ring, 77).unwrap();
        let moved = KeyringFile::parse(moved.to_json().as_bytes()).unwrap();
        for k in [pk(1), pk(2)] {
            let opened = open_for_cluster(&moved, &k, 77).unwrap();
            assert_eq!(opened.data_key(1), ring.data_key(1));
            assert_eq!(opened.cluster_salt, ring.cluster_salt);
        }
        assert!(matches!(
            open_for_cluster(&moved, &pk(1), 5),
            Err(Error::ForeignKeyring { .. })
        ));
        // The identifier stays authenticated: editing it back is detected.
        let mut forged = moved.clone();
        forged.system_identifier = "5".into();
        assert!(matches!(
            forged.open(&pk(1)),
            Err(Error::KeyringTampered { .. })
        ));
    }

    #[test]
    fn generations_run_out_at_255() {
        let ring = Keyring::from_parts(5, [1; 32], [(255, Key256::from_bytes([3; 32]))]);
        let file = ring.seal(&[&pk(1)]).unwrap();
        let e = file.with_data_key_added(&ring).unwrap_err().to_string();
        assert!(e.contains("255"), "{e}");
    }

    #[test]
    fn merge_keeps_local_keys_and_refuses_divergence() {
        let file = Keyring::generate(5).unwrap().seal(&[&pk(1)]).unwrap();
        let ring = file.open(&pk(1)).unwrap();
        let (f2, r2) = file.with_data_key_added(&ring).unwrap();
        let (f3, _) = f2.with_data_key_dropped(&r2, 1).unwrap();
        // A node still at generation 1 adopts the copy with only 2: keeps 1.
        let (merged, view) = f3.merged_with(&ring).unwrap();
        assert_eq!(view.generations().collect::<Vec<_>>(), vec![1, 2]);
        let reopened = merged.open(&pk(1)).unwrap();
        assert_eq!(reopened.data_key(1), ring.data_key(1));
        assert_eq!(reopened.data_key(2), r2.data_key(2));
        // Two nodes that each issued their own generation 2.
        let (_, other2) = file.with_data_key_added(&ring).unwrap();
        let e = f2.merged_with(&other2).unwrap_err().to_string();
        assert!(e.contains("diverged"), "{e}");
        // A keyring with another keyring key is refused outright.
        let stranger = Keyring::generate(5).unwrap();
        assert!(matches!(
            f2.merged_with(&stranger),
            Err(Error::KeyringBodyMismatch)
        ));
    }

    #[test]
    fn from_parts_keeps_the_given_keys() {
        let ring = Keyring::from_parts(
            9,
            [7; 32],
            [
                (4, Key256::from_bytes([4; 32])),
                (2, Key256::from_bytes([2; 32])),
            ],
        );
        assert_eq!(ring.system_identifier, 9);
        assert_eq!(ring.cluster_salt, [7; 32]);
        assert_eq!(ring.generations().collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(ring.current_generation(), 4);
        assert_eq!(ring.data_key(2).unwrap().as_bytes(), &[2; 32]);
        let file = ring.seal(&[&pk(1)]).unwrap();
        let opened = file.open(&pk(1)).unwrap();
        assert_eq!(opened.data_key(4).unwrap().as_bytes(), &[4; 32]);
    }

    #[test]
    #[should_panic(expected = "generation 0")]
    fn from_parts_refuses_generation_zero() {
        Keyring::from_parts(1, [0; 32], [(0, Key256::from_bytes([1; 32]))]);
    }

    #[test]
    #[should_panic(expected = "at least one data key")]
    fn from_parts_refuses_no_keys() {
        Keyring::from_parts(1, [0; 32], std::iter::empty());
    }

    #[test]
    fn version_and_garbage() {
        let file = Keyring::generate(5).unwrap().seal(&[&pk(1)]).unwrap();
        let text = file.to_json().replace("\"version\": 2", "\"version\": 9");
        assert!(matches!(
            KeyringFile::parse(text.as_bytes()),
            Err(Error::KeyringVersion { found: 9, .. })
        ));
        let full = file.to_json();
        let truncated = &full.as_bytes()[..full.len() / 2];
        assert!(matches!(
            KeyringFile::parse(truncated),
            Err(Error::KeyringCorrupt(_))
        ));
        assert!(matches!(
            KeyringFile::parse(b""),
            Err(Error::KeyringCorrupt(_))
        ));
    }
}
