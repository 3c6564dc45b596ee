//! The keyring file `$PGDATA/pg_tde/keyring.json` (DESIGN §2).
//!
//! Layout (format version 1):
//!
//! ```json
//! { "format": "tde-keyring", "version": 1,
//!   "system_identifier": "7301…", "cluster_salt": "<64 hex>",
//!   "principals": [ { "fingerprint": "<16 hex>", "nonce": "<32 hex>",
//!                     "data_keys": [ { "generation": 1, "wrapped": "<64 hex>" } ],
//!                     "mac": "<64 hex>" } ] }
//! ```
//!
//! Each principal entry is a self-contained, authenticated copy of every data
//! key: with K the principal key and a fresh random nonce N per entry,
//! `enc = HKDF(K, N, "enc")`, `mac = HKDF(K, N, "mac")`; each data key is
//! AES-256-CTR encrypted under `enc` with a counter block that starts at its
//! generation, and one HMAC-SHA256 under `mac` covers the header, the entry's
//! fingerprint and nonce and every wrapped key (encrypt-then-MAC; a full
//! HMAC-SHA256 tag commits to the key). The current generation is the highest
//! one, so rotation never edits a field another principal's MAC covers.
//!
//! Byte by byte (integers little-endian, `fp` the fingerprint's 16 ASCII hex
//! digits, `ct_i` the 32-byte wrapped key of generation `g_i`):
//!
//! ```text
//! enc_key = HKDF-SHA256(ikm = K, salt = N, info = "tde/v1/wrap/enc", 32 bytes)
//! mac_key = HKDF-SHA256(ikm = K, salt = N, info = "tde/v1/wrap/mac", 32 bytes)
//! ct_i    = AES-256-CTR(enc_key, counter block = g_i ‖ 0^15) XOR DEK_i
//! mac     = HMAC-SHA256(mac_key, "tde/v1/keyring-entry" ‖ 0x00 ‖ u64 version
//!             ‖ u64 system_identifier ‖ cluster_salt (32) ‖ u64 len(fp) ‖ fp
//!             ‖ N (16) ‖ u64 count ‖ (g_i (1) ‖ ct_i (32)) for each key in order)
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kdf::{fill_random, wrap_keys, Key256, KEY_LEN};
use crate::principal::PrincipalKey;
use crate::{Error, Result};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub const FORMAT_NAME: &str = "tde-keyring";
pub const FORMAT_VERSION: u64 = 1;
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
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalEntry {
    pub fingerprint: String,
    pub nonce: String,
    pub data_keys: Vec<WrappedKey>,
    pub mac: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    pub generation: u8,
    pub wrapped: String,
}

/// The unwrapped keyring: what the server holds in memory.
#[derive(Debug)]
pub struct Keyring {
    pub system_identifier: u64,
    pub cluster_salt: [u8; 32],
    /// Fingerprint of the principal key that opened it.
    pub opened_with: String,
    data_keys: BTreeMap<u8, Key256>,
}

impl Keyring {
    /// A new keyring for a cluster: random cluster salt, data key generation 1.
    pub fn generate(system_identifier: u64) -> Result<Keyring> {
        let mut cluster_salt = [0u8; 32];
        fill_random(&mut cluster_salt)?;
        let mut data_keys = BTreeMap::new();
        data_keys.insert(1, Key256::random()?);
        Ok(Keyring {
            system_identifier,
            cluster_salt,
            opened_with: String::new(),
            data_keys,
        })
    }

    /// A keyring from explicit key material, for tools that import keys and
    /// for known-answer tests. [`Keyring::generate`] is what a cluster uses.
    ///
    /// # Panics
    ///
    /// If `data_keys` is empty or holds generation 0 (0 means "not
    /// encrypted" in the page mark and WAL salt). A later duplicate of a
    /// generation replaces the earlier one.
    pub fn from_parts(
        system_identifier: u64,
        cluster_salt: [u8; 32],
        data_keys: impl IntoIterator<Item = (u8, Key256)>,
    ) -> Keyring {
        let data_keys: BTreeMap<u8, Key256> = data_keys.into_iter().collect();
        assert!(
            !data_keys.is_empty(),
            "a keyring needs at least one data key"
        );
        assert!(
            !data_keys.contains_key(&0),
            "data key generation 0 is reserved for \"not encrypted\""
        );
        Keyring {
            system_identifier,
            cluster_salt,
            opened_with: String::new(),
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

    pub fn data_key(&self, generation: u8) -> Option<&Key256> {
        self.data_keys.get(&generation)
    }

    pub fn generations(&self) -> impl Iterator<Item = u8> + '_ {
        self.data_keys.keys().copied()
    }

    /// Serializes the keyring with one authenticated copy of the data keys per
    /// principal key given.
    pub fn seal(&self, principals: &[&PrincipalKey]) -> Result<KeyringFile> {
        let mut entries = Vec::with_capacity(principals.len());
        for p in principals {
            entries.push(self.seal_entry(p)?);
        }
        Ok(KeyringFile {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            system_identifier: self.system_identifier.to_string(),
            cluster_salt: hex::encode(self.cluster_salt),
            principals: entries,
        })
    }

    fn seal_entry(&self, principal: &PrincipalKey) -> Result<PrincipalEntry> {
        let mut nonce = [0u8; 16];
        fill_random(&mut nonce)?;
        let (enc, mac_key) = wrap_keys(principal.key(), &nonce);
        let fingerprint = principal.fingerprint();
        let mut wrapped = Vec::with_capacity(self.data_keys.len());
        for (&generation, dek) in &self.data_keys {
            let mut buf = Zeroizing::new(*dek.as_bytes());
            wrap_cipher(&enc, generation).apply_keystream(&mut buf[..]);
            wrapped.push((generation, *buf));
        }
        let tag = entry_mac(
            &mac_key,
            self.system_identifier,
            &self.cluster_salt,
            &fingerprint,
            &nonce,
            &wrapped,
        );
        Ok(PrincipalEntry {
            fingerprint,
            nonce: hex::encode(nonce),
            data_keys: wrapped
                .iter()
                .map(|(generation, ct)| WrappedKey {
                    generation: *generation,
                    wrapped: hex::encode(ct),
                })
                .collect(),
            mac: hex::encode(tag),
        })
    }
}

fn wrap_cipher(enc: &Key256, generation: u8) -> Aes256Ctr {
    let mut iv = [0u8; 16];
    iv[0] = generation;
    Aes256Ctr::new(enc.as_bytes().into(), &iv.into())
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
    mac.update(&FORMAT_VERSION.to_le_bytes());
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
    Error::KeyringCorrupt(msg.into())
}

fn hex_array<const N: usize>(field: &str, text: &str) -> Result<[u8; N]> {
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
        // Read the version first so a future format gets a version error, not
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
        if self.principals.is_empty() {
            return Err(corrupt("no principal key entries"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.principals {
            hex_array::<8>("fingerprint", &p.fingerprint)?;
            hex_array::<16>("nonce", &p.nonce)?;
            hex_array::<32>("mac", &p.mac)?;
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
                hex_array::<KEY_LEN>("wrapped", &k.wrapped)?;
            }
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

    /// Unwraps the data keys with `principal`, checking the MAC first.
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
        let system_identifier = self.system_identifier()?;
        let cluster_salt = hex_array::<32>("cluster_salt", &self.cluster_salt)?;
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
            &cluster_salt,
            &fingerprint,
            &nonce,
            &wrapped,
        );
        if !bool::from(expected.ct_eq(&stored_mac)) {
            return Err(Error::KeyringTampered { fingerprint });
        }
        let mut data_keys = BTreeMap::new();
        for (generation, ct) in wrapped {
            let mut buf = Zeroizing::new(ct);
            wrap_cipher(&enc, generation).apply_keystream(&mut buf[..]);
            data_keys.insert(generation, Key256::from_bytes(*buf));
        }
        Ok(Keyring {
            system_identifier,
            cluster_salt,
            opened_with: fingerprint,
            data_keys,
        })
    }

    /// A copy with one more principal key able to open it. `ring` must be
    /// this file opened with a key it already holds.
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

    fn check_same_keyring(&self, ring: &Keyring) -> Result<()> {
        let salt = hex_array::<32>("cluster_salt", &self.cluster_salt)?;
        if self.system_identifier()? != ring.system_identifier || salt != ring.cluster_salt {
            return Err(Error::PrincipalKeyChange(
                "the unwrapped keys belong to another keyring".into(),
            ));
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("keyring serializes");
        s.push('\n');
        s
    }
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
        let mut w = t.principals[0].data_keys[0].wrapped.clone().into_bytes();
        w[0] = if w[0] == b'0' { b'1' } else { b'0' };
        t.principals[0].data_keys[0].wrapped = String::from_utf8(w).unwrap();
        assert!(matches!(t.open(&pk(1)), Err(Error::KeyringTampered { .. })));
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
        let text = file.to_json().replace("\"version\": 1", "\"version\": 9");
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
