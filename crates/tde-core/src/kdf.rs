//! 256-bit key type and the HKDF-SHA256 derivations of DESIGN §2.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{Error, Result};

pub const KEY_LEN: usize = 32;

/// A 256-bit secret, wiped when dropped. `Debug` never prints the bytes.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Key256([u8; KEY_LEN]);

impl Key256 {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Key256(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Result<Self> {
        let mut k = Key256([0; KEY_LEN]);
        fill_random(&mut k.0)?;
        Ok(k)
    }
}

impl std::fmt::Debug for Key256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key256(<redacted>)")
    }
}

pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}

/// The relation fork a page key belongs to. The discriminant is what the page
/// mark stores, so it is part of the on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ForkKind {
    Main = 0,
    Fsm = 1,
    Vm = 2,
    Init = 3,
}

impl ForkKind {
    pub const ALL: [ForkKind; 4] = [ForkKind::Main, ForkKind::Fsm, ForkKind::Vm, ForkKind::Init];

    pub fn from_index(i: u8) -> Option<ForkKind> {
        Self::ALL.get(i as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            ForkKind::Main => "main",
            ForkKind::Fsm => "fsm",
            ForkKind::Vm => "vm",
            ForkKind::Init => "init",
        }
    }
}

fn expand(ikm: &Key256, salt: &[u8], info: &[&[u8]]) -> Key256 {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm.as_bytes());
    let mut out = Key256([0; KEY_LEN]);
    hk.expand_multi_info(info, &mut out.0)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// Page key of format 1 for one fork kind: `HKDF(DEK, cluster salt,
/// "tde/v1/page/<fork>")`.
/// Nothing here depends on relfilenode, database or tablespace, so copied
/// files stay readable.
pub fn page_key(dek: &Key256, cluster_salt: &[u8; 32], fork: ForkKind) -> Key256 {
    expand(
        dek,
        cluster_salt,
        &[b"tde/v1/page/", fork.name().as_bytes()],
    )
}

/// Page keys of format 2 for one fork kind, as (the wide mode's HCTR2 key,
/// the XTS mode's K1, K2):
///
/// ```text
/// wide    = HKDF-SHA256(DEK, cluster salt, "tde/v2/page/wide/<fork>", 32 bytes)
/// K1 ‖ K2 = HKDF-SHA256(DEK, cluster salt, "tde/v2/page/xts/<fork>", 64 bytes)
/// ```
///
/// Like format 1's, they depend on no relfilenode, database or tablespace
/// OID, so copied files stay readable.
pub fn page_keys_v2(
    dek: &Key256,
    cluster_salt: &[u8; 32],
    fork: ForkKind,
) -> (Key256, Key256, Key256) {
    let wide = expand(
        dek,
        cluster_salt,
        &[b"tde/v2/page/wide/", fork.name().as_bytes()],
    );
    let hk = Hkdf::<Sha256>::new(Some(cluster_salt), dek.as_bytes());
    let mut okm = Zeroizing::new([0u8; 2 * KEY_LEN]);
    hk.expand_multi_info(&[b"tde/v2/page/xts/", fork.name().as_bytes()], &mut okm[..])
        .expect("64 bytes is a valid HKDF-SHA256 output length");
    (wide, split_key(&okm[..KEY_LEN]), split_key(&okm[KEY_LEN..]))
}

fn split_key(bytes: &[u8]) -> Key256 {
    let mut k = Key256([0; KEY_LEN]);
    k.0.copy_from_slice(bytes);
    k
}

/// The two XTS-AES-256 keys of one WAL segment (DESIGN §4), as
/// `(data key K1, tweak key K2)`:
///
/// ```text
/// K1 ‖ K2 = HKDF-SHA256(ikm = DEK of the salt's generation, salt = cluster salt,
///                       info = "tde/v1/wal" ‖ system_identifier (u64 LE)
///                              ‖ timeline (u32 LE) ‖ segment number (u64 LE)
///                              ‖ segment salt (4 bytes), 64 bytes)
/// ```
///
/// The timeline is the page's own `xlp_tli` and the segment number is
/// `xlp_pageaddr / segment size`, so every page names its own key.
pub fn wal_keys(
    dek: &Key256,
    cluster_salt: &[u8; 32],
    system_identifier: u64,
    timeline: u32,
    segment: u64,
    segment_salt: &[u8; 4],
) -> (Key256, Key256) {
    let mut okm = Zeroizing::new([0u8; 2 * KEY_LEN]);
    let id = SegmentId {
        system_identifier,
        timeline,
        segment,
        segment_salt,
    };
    segment_okm(dek, cluster_salt, b"tde/v1/wal", &id, &mut okm[..]);
    (split_key(&okm[..KEY_LEN]), split_key(&okm[KEY_LEN..]))
}

/// The key of the WAL stream format (`crate::wal_stream`) for one segment:
/// `HKDF-SHA256(ikm = DEK, salt = cluster salt, info = "tde/v1/wal-stream"
/// ‖ system identifier ‖ timeline ‖ segment number (little-endian) ‖
/// segment salt)`, 32 bytes. Its own label: independent of the segment's
/// XTS keys on disk.
pub fn wal_stream_key(
    dek: &Key256,
    cluster_salt: &[u8; 32],
    system_identifier: u64,
    timeline: u32,
    segment: u64,
    segment_salt: &[u8; 4],
) -> Key256 {
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    let id = SegmentId {
        system_identifier,
        timeline,
        segment,
        segment_salt,
    };
    segment_okm(dek, cluster_salt, b"tde/v1/wal-stream", &id, &mut okm[..]);
    split_key(&okm[..])
}

/// What names one WAL segment's keys in their HKDF info, after the label.
struct SegmentId<'a> {
    system_identifier: u64,
    timeline: u32,
    segment: u64,
    segment_salt: &'a [u8; 4],
}

/// `HKDF-SHA256(ikm = dek, salt = cluster salt, info = label ‖ system
/// identifier ‖ timeline ‖ segment number (little-endian) ‖ segment salt)`
/// into `okm`: the derivation both WAL formats share, each under its own
/// label.
fn segment_okm(
    dek: &Key256,
    cluster_salt: &[u8; 32],
    label: &[u8],
    id: &SegmentId,
    okm: &mut [u8],
) {
    Hkdf::<Sha256>::new(Some(cluster_salt), dek.as_bytes())
        .expand_multi_info(
            &[
                label,
                &id.system_identifier.to_le_bytes(),
                &id.timeline.to_le_bytes(),
                &id.segment.to_le_bytes(),
                id.segment_salt,
            ],
            okm,
        )
        .expect("32 or 64 bytes is a valid HKDF-SHA256 output length");
}

/// Keys protecting one wrapped copy of the data keys under a principal key:
/// (encryption key, MAC key).
pub fn wrap_keys(principal: &Key256, nonce: &[u8; 16]) -> (Key256, Key256) {
    (
        expand(principal, nonce, &[b"tde/v1/wrap/enc"]),
        expand(principal, nonce, &[b"tde/v1/wrap/mac"]),
    )
}

/// Keys protecting the data keys under the keyring key R (keyring format 2):
/// `(HKDF(R, cluster salt, "tde/v2/keyring/enc"), HKDF(R, cluster salt,
/// "tde/v2/keyring/mac"))`.
pub fn keyring_keys(keyring_key: &Key256, cluster_salt: &[u8; 32]) -> (Key256, Key256) {
    (
        expand(keyring_key, cluster_salt, &[b"tde/v2/keyring/enc"]),
        expand(keyring_key, cluster_salt, &[b"tde/v2/keyring/mac"]),
    )
}
