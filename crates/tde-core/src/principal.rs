//! The principal key (key-encryption key) and its public fingerprint.

use hmac::{KeyInit, Mac};
use zeroize::Zeroizing;

use crate::kdf::{Key256, KEY_LEN};
use crate::{Error, Result};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The 256-bit key-encryption key. It never touches the data directory.
#[derive(Clone, Debug)]
pub struct PrincipalKey(Key256);

impl PrincipalKey {
    pub fn from_key(key: Key256) -> Self {
        PrincipalKey(key)
    }

    /// Parses exactly 64 hexadecimal digits, ignoring surrounding whitespace.
    /// `source_name` names where the text came from, for the error message.
    pub fn parse_hex(text: &str, source_name: &str) -> Result<Self> {
        let text = text.trim();
        let bad = |reason: String| Error::KeyFormat {
            source_name: source_name.to_string(),
            reason,
        };
        if text.len() != 2 * KEY_LEN {
            return Err(bad(format!(
                "expected {} hexadecimal digits, found {} characters",
                2 * KEY_LEN,
                text.chars().count()
            )));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text, &mut bytes[..])
            .map_err(|_| bad("contains characters that are not hexadecimal digits".into()))?;
        Ok(PrincipalKey(Key256::from_bytes(*bytes)))
    }

    pub fn key(&self) -> &Key256 {
        &self.0
    }

    /// Public identifier of the key: HMAC-SHA256(key, label), first 8 bytes in
    /// hex. A PRF output, so it reveals nothing about the key.
    pub fn fingerprint(&self) -> String {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(self.0.as_bytes())
            .expect("HMAC accepts any key length");
        mac.update(b"tde/v1/principal-key-fingerprint");
        let out = mac.finalize().into_bytes();
        hex::encode(&out[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_with_newline() {
        let k = PrincipalKey::parse_hex(&format!("{}\n", "ab".repeat(32)), "test").unwrap();
        assert_eq!(k.key().as_bytes(), &[0xab; 32]);
    }

    #[test]
    fn rejects_short_and_non_hex() {
        let e = PrincipalKey::parse_hex("abcd", "file x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 64 hexadecimal digits"), "{e}");
        let e = PrincipalKey::parse_hex(&"zz".repeat(32), "file x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not hexadecimal"), "{e}");
        assert!(!e.contains("zz"), "error must not echo key text: {e}");
    }

    #[test]
    fn fingerprint_differs_per_key_and_is_stable() {
        let a = PrincipalKey::parse_hex(&"00".repeat(32), "t").unwrap();
        let b = PrincipalKey::parse_hex(&"01".repeat(32), "t").unwrap();
        assert_eq!(a.fingerprint().len(), 16);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
