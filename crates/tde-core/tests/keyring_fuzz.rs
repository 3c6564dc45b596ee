//! Robustness of the keyring parser and opener: arbitrary bytes and mutated
//! valid files never panic, and a modified file never opens with key
//! material other than the original's (a change that keeps the meaning, such
//! as whitespace, key order or hex case, opens with identical keys).

mod common;

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use common::counting32;
use tde_core::kdf::Key256;
use tde_core::keyring::{Keyring, KeyringFile, MAX_KEYRING_BYTES};
use tde_core::principal::PrincipalKey;
use tde_core::Error;

const CASES: u32 = 2000;
const SYSID: u64 = 12_345_678_901_234_567_890;

struct Fixture {
    ring: Keyring,
    keyring_key: Key256,
    principals: [PrincipalKey; 2],
    stranger: PrincipalKey,
    text: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keyring_key = Key256::from_bytes(counting32(0x70));
        // Generations 1, 2 and 9 held; 12 was the last issued (and dropped).
        let ring = Keyring::from_parts(
            SYSID,
            counting32(0x33),
            [1u8, 2, 9, 12].map(|g| (g, Key256::random().unwrap())),
        )
        .with_keyring_key(keyring_key.clone());
        let ring = ring.with_data_keys([1u8, 2, 9].map(|g| (g, ring.data_key(g).unwrap().clone())));
        assert_eq!(ring.last_generation(), 12);
        let principals =
            [0x10, 0x50].map(|b| PrincipalKey::from_key(Key256::from_bytes(counting32(b))));
        let stranger = PrincipalKey::from_key(Key256::from_bytes(counting32(0x90)));
        let text = ring
            .seal(&[&principals[0], &principals[1]])
            .unwrap()
            .to_json();
        Fixture {
            ring,
            keyring_key,
            principals,
            stranger,
            text,
        }
    })
}

/// Panics unless `ring` holds exactly the fixture's keys.
fn assert_fixture_keys(ring: &Keyring) {
    let f = fixture();
    assert_eq!(ring.system_identifier, SYSID);
    assert_eq!(ring.cluster_salt, f.ring.cluster_salt);
    assert_eq!(ring.last_generation(), f.ring.last_generation());
    assert!(ring.same_keyring(&f.ring));
    assert_eq!(
        ring.generations().collect::<Vec<_>>(),
        f.ring.generations().collect::<Vec<_>>()
    );
    for g in f.ring.generations() {
        assert_eq!(ring.data_key(g), f.ring.data_key(g), "generation {g}");
    }
}

/// Parses and opens `bytes` with every principal key (and with the keyring
/// key, as a running server rereads it); returns how many principal keys
/// opened it. Panics (failing the property) if anything opens with key
/// material that differs from the original keyring's.
fn parse_and_open(bytes: &[u8]) -> usize {
    let f = fixture();
    let Ok(file) = KeyringFile::parse(bytes) else {
        return 0;
    };
    let mut opened = 0;
    for pk in &f.principals {
        if let Ok(ring) = file.open(pk) {
            opened += 1;
            assert_eq!(ring.opened_with, pk.fingerprint());
            assert_fixture_keys(&ring);
        }
    }
    if let Ok(ring) = file.open_with_keyring_key(&f.keyring_key) {
        assert_fixture_keys(&ring);
    }
    assert!(
        file.open(&f.stranger).is_err(),
        "opened with a key that has no entry"
    );
    opened
}

#[test]
fn fixture_opens_and_meaning_preserving_edits_open_identically() {
    let f = fixture();
    assert_eq!(parse_and_open(f.text.as_bytes()), 2);
    let v: Value = serde_json::from_str(&f.text).unwrap();
    // Whitespace and key order.
    assert_eq!(
        parse_and_open(serde_json::to_string(&v).unwrap().as_bytes()),
        2
    );
    assert_eq!(
        parse_and_open(f.text.replace('\n', " \r\n\t ").as_bytes()),
        2
    );
    // Principal entries in another order.
    let mut swapped = v.clone();
    swapped["principals"].as_array_mut().unwrap().reverse();
    assert_eq!(parse_and_open(swapped.to_string().as_bytes()), 2);
    // Upper-case hex in MAC-covered fields (the fingerprint is compared as
    // text, so only the other fields).
    let mut upper = v.clone();
    upper["cluster_salt"] = upper["cluster_salt"]
        .as_str()
        .unwrap()
        .to_uppercase()
        .into();
    upper["mac"] = upper["mac"].as_str().unwrap().to_uppercase().into();
    for p in upper["principals"].as_array_mut().unwrap() {
        for field in ["nonce", "wrapped_key", "mac"] {
            p[field] = p[field].as_str().unwrap().to_uppercase().into();
        }
    }
    for k in upper["data_keys"].as_array_mut().unwrap() {
        for field in ["nonce", "wrapped"] {
            k[field] = k[field].as_str().unwrap().to_uppercase().into();
        }
    }
    assert_eq!(parse_and_open(upper.to_string().as_bytes()), 2);
    let file = KeyringFile::parse(upper.to_string().as_bytes()).unwrap();
    assert_fixture_keys(&file.open_with_keyring_key(&f.keyring_key).unwrap());
    // A principal key whose entry was removed no longer opens it; the other
    // still does.
    let mut one = v.clone();
    one["principals"].as_array_mut().unwrap().remove(0);
    assert_eq!(parse_and_open(one.to_string().as_bytes()), 1);
    assert!(matches!(
        KeyringFile::parse(one.to_string().as_bytes())
            .unwrap()
            .open(&f.principals[0]),
        Err(Error::WrongPrincipalKey { .. })
    ));
}

#[test]
fn oversized_and_deeply_nested_input_is_rejected() {
    let deep = "[".repeat(100_000);
    assert!(matches!(
        KeyringFile::parse(deep.as_bytes()),
        Err(Error::KeyringCorrupt(_))
    ));
    let mut big = fixture().text.clone().into_bytes();
    big.resize(MAX_KEYRING_BYTES + 1, b' ');
    assert!(matches!(
        KeyringFile::parse(&big),
        Err(Error::KeyringCorrupt(_))
    ));
}

/// Structural damage is reported as a corrupt (or newer) keyring by the
/// parser, before any key is tried.
#[test]
fn structural_errors_are_reported_by_the_parser() {
    let base: Value = serde_json::from_str(&fixture().text).unwrap();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "duplicate generation",
            Box::new(|v| {
                let keys = v["data_keys"].as_array_mut().unwrap();
                let first = keys[0].clone();
                keys.insert(0, first);
            }),
        ),
        (
            "decreasing generations",
            Box::new(|v| {
                v["data_keys"].as_array_mut().unwrap().reverse();
            }),
        ),
        (
            "generation 0",
            Box::new(|v| v["data_keys"][0]["generation"] = 0.into()),
        ),
        (
            "generation 256",
            Box::new(|v| v["data_keys"][2]["generation"] = 256.into()),
        ),
        (
            "negative generation",
            Box::new(|v| v["data_keys"][0]["generation"] = (-1).into()),
        ),
        (
            "string generation",
            Box::new(|v| v["data_keys"][0]["generation"] = "1".into()),
        ),
        (
            "no data keys",
            Box::new(|v| v["data_keys"] = serde_json::json!([])),
        ),
        (
            "last_generation below a held generation",
            Box::new(|v| v["last_generation"] = 8.into()),
        ),
        (
            "last_generation 256",
            Box::new(|v| v["last_generation"] = 256.into()),
        ),
        (
            "last_generation null",
            Box::new(|v| v["last_generation"] = Value::Null),
        ),
        (
            "no principals",
            Box::new(|v| v["principals"] = serde_json::json!([])),
        ),
        (
            "duplicate principal",
            Box::new(|v| {
                let ps = v["principals"].as_array_mut().unwrap();
                let first = ps[0].clone();
                ps.push(first);
            }),
        ),
        ("short salt", Box::new(|v| v["cluster_salt"] = "00".into())),
        (
            "non-hex entry nonce",
            Box::new(|v| v["principals"][1]["nonce"] = "zz".repeat(16).into()),
        ),
        (
            "short data key nonce",
            Box::new(|v| v["data_keys"][1]["nonce"] = "ab".repeat(15).into()),
        ),
        (
            "short entry mac",
            Box::new(|v| v["principals"][1]["mac"] = "ab".repeat(31).into()),
        ),
        (
            "long top-level mac",
            Box::new(|v| v["mac"] = "ab".repeat(33).into()),
        ),
        (
            "non-hex top-level mac",
            Box::new(|v| v["mac"] = "g".repeat(64).into()),
        ),
        (
            "long wrapped data key",
            Box::new(|v| v["data_keys"][1]["wrapped"] = "ab".repeat(33).into()),
        ),
        (
            "short wrapped keyring key",
            Box::new(|v| v["principals"][0]["wrapped_key"] = "ab".repeat(31).into()),
        ),
        (
            "short fingerprint",
            Box::new(|v| v["principals"][0]["fingerprint"] = "abcd".into()),
        ),
        (
            "negative system identifier",
            Box::new(|v| v["system_identifier"] = "-1".into()),
        ),
        (
            "numeric system identifier",
            Box::new(|v| v["system_identifier"] = SYSID.into()),
        ),
        ("unknown field", Box::new(|v| v["comment"] = "x".into())),
        (
            "unknown entry field",
            Box::new(|v| v["principals"][0]["comment"] = "x".into()),
        ),
        (
            "unknown key field",
            Box::new(|v| v["data_keys"][0]["x"] = 1.into()),
        ),
        (
            "version 1 layout: data keys inside an entry",
            Box::new(|v| {
                let keys = v["data_keys"].clone();
                v["principals"][0]["data_keys"] = keys;
            }),
        ),
        (
            "missing field",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("cluster_salt");
            }),
        ),
        (
            "missing top-level mac",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("mac");
            }),
        ),
        (
            "missing last_generation",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("last_generation");
            }),
        ),
        (
            "missing data keys",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("data_keys");
            }),
        ),
        (
            "missing wrapped keyring key",
            Box::new(|v| {
                v["principals"][1]
                    .as_object_mut()
                    .unwrap()
                    .remove("wrapped_key");
            }),
        ),
        (
            "missing data key nonce",
            Box::new(|v| {
                v["data_keys"][2].as_object_mut().unwrap().remove("nonce");
            }),
        ),
        (
            "wrong format name",
            Box::new(|v| v["format"] = "tde-keyring2".into()),
        ),
        (
            "fractional version",
            Box::new(|v| v["version"] = 2.0.into()),
        ),
        (
            "not an object",
            Box::new(|v| *v = serde_json::json!([1, 2, 3])),
        ),
    ];
    for (name, edit) in cases {
        let mut v = base.clone();
        edit(&mut v);
        let r = KeyringFile::parse(v.to_string().as_bytes());
        assert!(matches!(r, Err(Error::KeyringCorrupt(_))), "{name}: {r:?}");
    }
    // A version 1 keyring (its own layout: data keys wrapped per principal
    // entry) is reported as format 1, to be migrated, not as corrupt.
    let v1 = serde_json::json!({
        "format": "tde-keyring",
        "version": 1,
        "system_identifier": SYSID.to_string(),
        "cluster_salt": base["cluster_salt"],
        "principals": [{
            "fingerprint": base["principals"][0]["fingerprint"],
            "nonce": base["principals"][0]["nonce"],
            "data_keys": [{ "generation": 1, "wrapped": "ab".repeat(32) }],
            "mac": "cd".repeat(32),
        }],
    });
    for doc in [v1, {
        let mut v = base.clone();
        v["version"] = 1.into();
        v
    }] {
        let r = KeyringFile::parse(doc.to_string().as_bytes());
        assert!(matches!(r, Err(Error::KeyringFormat1)), "{r:?}");
    }
    let mut v = base.clone();
    v["version"] = 3.into();
    let r = KeyringFile::parse(v.to_string().as_bytes());
    assert!(
        matches!(
            r,
            Err(Error::KeyringVersion {
                found: 3,
                supported: 2
            })
        ),
        "{r:?}"
    );
}

/// A byte-level edit of the file text.
#[derive(Clone, Debug)]
enum ByteEdit {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, u8),
    Delete(Index, usize),
    Duplicate(Index, usize),
    /// Replace one hexadecimal digit of the text by another: keeps the file
    /// well-formed, so it reaches the MAC check.
    HexDigit(Index, u8),
}

/// Bytes likely to keep the text JSON-shaped.
const JSONISH: &[u8] = b" \n\t0123456789abcdefABCDEF\"{}[],:-+.eEnulltrsx\\";

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(JSONISH)];
    prop_oneof![
        1 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| ByteEdit::Flip(i, x)),
        1 => any::<Index>().prop_map(ByteEdit::Truncate),
        1 => (any::<Index>(), byte).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        1 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        1 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| ByteEdit::Duplicate(i, n)),
        4 => (any::<Index>(), prop::sample::select(&b"0123456789abcdefABCDEF"[..]))
            .prop_map(|(i, d)| ByteEdit::HexDigit(i, d)),
    ]
}

fn apply_byte_edit(bytes: &mut Vec<u8>, e: &ByteEdit) {
    if bytes.is_empty() {
        return;
    }
    match e {
        ByteEdit::Flip(i, x) => {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        ByteEdit::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        ByteEdit::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
        ByteEdit::Delete(i, n) => {
            let i = i.index(bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        ByteEdit::Duplicate(i, n) => {
            let i = i.index(bytes.len());
            let end = (i + n).min(bytes.len());
            let piece = bytes[i..end].to_vec();
            bytes.splice(i..i, piece);
        }
        ByteEdit::HexDigit(i, d) => {
            let digits: Vec<usize> = (0..bytes.len())
                .filter(|&n| bytes[n].is_ascii_hexdigit())
                .collect();
            if !digits.is_empty() {
                bytes[digits[i.index(digits.len())]] = *d;
            }
        }
    }
}

/// A structural edit of the parsed JSON, applied at the `Index`-chosen node.
#[derive(Clone, Debug)]
enum TreeEdit {
    Replace(Index, Value),
    Remove(Index),
    DuplicateElement(Index),
    AddField(Index, String, Value),
    EditChar(Index, Index, char),
    Uppercase(Index),
    AddToNumber(Index, i64),
    Swap(Index, Index),
}

fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..300).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[0-9a-fA-F]{0,80}".prop_map(Value::from),
        "[0-9a-f]{16}|[0-9a-f]{32}|[0-9a-f]{64}".prop_map(Value::from),
        "[+-]?[0-9]{1,22}".prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => json_scalar(),
        1 => prop::collection::vec(json_scalar(), 0..3).prop_map(Value::from),
        1 => Just(serde_json::json!({})),
    ]
}

fn tree_edit() -> impl Strategy<Value = TreeEdit> {
    prop_oneof![
        (any::<Index>(), json_value()).prop_map(|(i, v)| TreeEdit::Replace(i, v)),
        any::<Index>().prop_map(TreeEdit::Remove),
        any::<Index>().prop_map(TreeEdit::DuplicateElement),
        (any::<Index>(), "[a-z_]{1,12}", json_value())
            .prop_map(|(i, k, v)| TreeEdit::AddField(i, k, v)),
        (
            any::<Index>(),
            any::<Index>(),
            prop::sample::select("0123456789abcdefABCDEF+- x".chars().collect::<Vec<_>>())
        )
            .prop_map(|(i, j, c)| TreeEdit::EditChar(i, j, c)),
        any::<Index>().prop_map(TreeEdit::Uppercase),
        (any::<Index>(), -3i64..=3).prop_map(|(i, d)| TreeEdit::AddToNumber(i, d)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TreeEdit::Swap(a, b)),
    ]
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    At(usize),
}

/// Paths of every node below the root.
fn paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Seg::Key(k.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Seg::At(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(root: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(root, |v, seg| match seg {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::At(i) => &mut v[*i],
    })
}

fn pick(root: &Value, i: &Index) -> Option<Vec<Seg>> {
    let mut all = Vec::new();
    paths(root, &mut Vec::new(), &mut all);
    (!all.is_empty()).then(|| all[i.index(all.len())].clone())
}

fn apply_tree_edit(root: &mut Value, e: &TreeEdit) {
    let at = |i: &Index, root: &Value| pick(root, i);
    match e {
        TreeEdit::Replace(i, v) => {
            if let Some(p) = at(i, root) {
                *node_mut(root, &p) = v.clone();
            }
        }
        TreeEdit::Remove(i) => {
            if let Some(p) = at(i, root) {
                let (last, parent) = p.split_last().unwrap();
                match (node_mut(root, parent), last) {
                    (Value::Object(m), Seg::Key(k)) => {
                        m.remove(k);
                    }
                    (Value::Array(a), Seg::At(n)) => {
                        a.remove(*n);
                    }
                    _ => unreachable!(),
                }
            }
        }
        TreeEdit::DuplicateElement(i) => {
            if let Some(p) = at(i, root) {
                let (last, parent) = p.split_last().unwrap();
                match (node_mut(root, parent), last) {
                    (Value::Array(a), Seg::At(n)) => {
                        let copy = a[*n].clone();
                        a.insert(*n, copy);
                    }
                    (Value::Object(m), Seg::Key(k)) => {
                        let copy = m[k].clone();
                        m.insert(format!("{k}_copy"), copy);
                    }
                    _ => unreachable!(),
                }
            }
        }
        TreeEdit::AddField(i, k, v) => {
            let target = match at(i, root) {
                Some(p) => node_mut(root, &p),
                None => root,
            };
            if let Value::Object(m) = target {
                m.insert(k.clone(), v.clone());
            }
        }
        TreeEdit::EditChar(i, j, c) => {
            if let Some(p) = at(i, root) {
                if let Value::String(s) = node_mut(root, &p) {
                    let mut chars: Vec<char> = s.chars().collect();
                    if !chars.is_empty() {
                        let n = j.index(chars.len());
                        chars[n] = *c;
                        *s = chars.into_iter().collect();
                    }
                }
            }
        }
        TreeEdit::Uppercase(i) => {
            if let Some(p) = at(i, root) {
                if let Value::String(s) = node_mut(root, &p) {
                    *s = s.to_uppercase();
                }
            }
        }
        TreeEdit::AddToNumber(i, d) => {
            if let Some(p) = at(i, root) {
                let node = node_mut(root, &p);
                if let Some(n) = node.as_i64() {
                    *node = Value::from(n.saturating_add(*d));
                }
            }
        }
        TreeEdit::Swap(a, b) => {
            if let (Some(pa), Some(pb)) = (at(a, root), at(b, root)) {
                let va = node_mut(root, &pa).clone();
                let vb = node_mut(root, &pb).clone();
                // Writing a into b's place first would lose b when one path
                // contains the other; then only overwrite one of them.
                *node_mut(root, &pa) = vb;
                if pick_still_valid(root, &pb) {
                    *node_mut(root, &pb) = va;
                }
            }
        }
    }
}

/// Whether `path` still names a node (after an edit that may have replaced an
/// ancestor). Indexing a missing node with `IndexMut` would panic or create
/// it, so walk with `get` first.
fn pick_still_valid(root: &Value, path: &[Seg]) -> bool {
    let mut v = root;
    for seg in path {
        let next = match seg {
            Seg::Key(k) => v.as_object().and_then(|m| m.get(k)),
            Seg::At(i) => v.as_array().and_then(|a| a.get(*i)),
        };
        match next {
            Some(n) => v = n,
            None => return false,
        }
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = parse_and_open(&bytes);
    }

    #[test]
    fn arbitrary_jsonish_text_never_panics(bytes in prop::collection::vec(prop::sample::select(JSONISH), 0..512)) {
        let _ = parse_and_open(&bytes);
    }

    #[test]
    fn byte_mutations_never_yield_other_keys(edits in prop::collection::vec(byte_edit(), 1..4)) {
        let mut bytes = fixture().text.clone().into_bytes();
        for e in &edits {
            apply_byte_edit(&mut bytes, e);
        }
        let _ = parse_and_open(&bytes);
    }

    #[test]
    fn tree_mutations_never_yield_other_keys(edits in prop::collection::vec(tree_edit(), 1..4), pretty in any::<bool>()) {
        let mut v: Value = serde_json::from_str(&fixture().text).unwrap();
        for e in &edits {
            apply_tree_edit(&mut v, e);
        }
        let text = if pretty {
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            serde_json::to_string(&v).unwrap()
        };
        let _ = parse_and_open(text.as_bytes());
    }
}

// ------------------------------------------------------------ operation sequences
//
// Random sequences of keyring changes, each followed by a serialize/parse
// round trip, checked against a model of what the keyring must hold.

mod sequences {
    use std::collections::BTreeMap;

    use super::*;
    use common::{own_open, OwnKeyring};

    const SEQ_SYSID: u64 = 6_000_000_000_000_000_042;
    /// Principal keys the operations draw from: few, so that adding one
    /// already present, removing one absent, etc. happen often.
    const POOL: usize = 4;

    fn pool_key(i: usize) -> [u8; 32] {
        counting32(0x11 + 0x31 * i as u8)
    }

    fn pool() -> &'static [PrincipalKey; POOL] {
        static P: OnceLock<[PrincipalKey; POOL]> = OnceLock::new();
        P.get_or_init(|| {
            std::array::from_fn(|i| PrincipalKey::from_key(Key256::from_bytes(pool_key(i))))
        })
    }

    #[derive(Clone, Debug)]
    enum GenPick {
        /// One the model holds (the current one included).
        Held(usize),
        Any(u8),
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// `via` picks the present principal key that opens the file first.
        AddPrincipal {
            via: usize,
            new: usize,
        },
        RemovePrincipal(usize),
        ReplacePrincipal {
            via: usize,
            old: usize,
            new: usize,
        },
        /// With the keyring opened by a principal key (`None`) or with an
        /// earlier, possibly stale, run-time view.
        AddDataKey(Option<usize>),
        DropDataKey {
            view: Option<usize>,
            pick: GenPick,
        },
        /// Merge with an earlier run-time view.
        Merge(usize),
        /// Merge with a view that issued its own next generation from an
        /// earlier file (a diverged node).
        MergeDiverged(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let who = 0..POOL;
        prop_oneof![
            3 => (any::<usize>(), who.clone()).prop_map(|(via, new)| Op::AddPrincipal { via, new }),
            2 => who.clone().prop_map(Op::RemovePrincipal),
            2 => (any::<usize>(), who.clone(), who)
                .prop_map(|(via, old, new)| Op::ReplacePrincipal { via, old, new }),
            3 => prop::option::of(any::<usize>()).prop_map(Op::AddDataKey),
            3 => (
                prop::option::of(any::<usize>()),
                prop_oneof![
                    3 => any::<usize>().prop_map(GenPick::Held),
                    1 => any::<u8>().prop_map(GenPick::Any),
                ]
            )
                .prop_map(|(view, pick)| Op::DropDataKey { view, pick }),
            2 => any::<usize>().prop_map(Op::Merge),
            1 => any::<usize>().prop_map(Op::MergeDiverged),
        ]
    }

    /// Initial generations held, mostly small, sometimes close to 255 so
    /// that running out of generations is reached too; and the last
    /// generation issued, sometimes above the highest held (a generation
    /// issued and dropped before).
    fn initial_generations() -> impl Strategy<Value = (Vec<u8>, u8)> {
        let held = prop_oneof![
            2 => Just(vec![1u8]),
            2 => prop::collection::btree_set(1u8..=255, 1..4)
                .prop_map(|s| s.into_iter().collect()),
            1 => (250u8..=255).prop_map(|g| vec![1, g]),
        ];
        let extra = prop_oneof![3 => Just(0u8), 1 => 1u8..=6];
        (held, extra).prop_map(|(held, extra)| {
            let last = held.iter().max().unwrap().saturating_add(extra);
            (held, last)
        })
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Model {
        /// Pool indices of the principal keys, in file order.
        principals: Vec<usize>,
        keys: BTreeMap<u8, [u8; 32]>,
        last_generation: u8,
    }

    impl Model {
        fn current(&self) -> u8 {
            *self.keys.keys().next_back().unwrap()
        }
    }

    struct Run {
        file: KeyringFile,
        model: Model,
        keyring_key: Key256,
        /// Every run-time view returned so far.
        views: Vec<Keyring>,
        /// Every file state so far.
        files: Vec<KeyringFile>,
        /// Operations that were refused, as the model said.
        refused: usize,
    }

    fn keys_of(ring: &Keyring) -> BTreeMap<u8, [u8; 32]> {
        ring.generations()
            .map(|g| (g, *ring.data_key(g).unwrap().as_bytes()))
            .collect()
    }

    /// Panics unless `ring` holds exactly the model's data keys.
    fn assert_ring(ring: &Keyring, model: &Model, what: &str) {
        assert_eq!(ring.system_identifier, SEQ_SYSID, "{what}");
        assert_eq!(keys_of(ring), model.keys, "{what}");
        assert_eq!(ring.last_generation(), model.last_generation, "{what}");
        assert_eq!(ring.current_generation(), model.current(), "{what}");
    }

    fn reparse(file: &KeyringFile) -> KeyringFile {
        let text = file.to_json();
        let parsed = KeyringFile::parse(text.as_bytes()).expect("a written keyring parses");
        assert_eq!(&parsed, file, "round trip");
        parsed
    }

    /// Every principal key the model holds opens the file to the model's
    /// keys; no other one opens it. The test's own reading of the documented
    /// construction agrees.
    fn check(run: &Run) {
        let m = &run.model;
        let fingerprints: Vec<String> = m
            .principals
            .iter()
            .map(|&i| pool()[i].fingerprint())
            .collect();
        assert_eq!(run.file.fingerprints(), fingerprints);
        assert_eq!(
            run.file.generations(),
            m.keys.keys().copied().collect::<Vec<_>>()
        );
        let json: Value = serde_json::from_str(&run.file.to_json()).unwrap();
        let own = OwnKeyring {
            keyring_key: *run.keyring_key.as_bytes(),
            last_generation: m.last_generation,
            data_keys: m.keys.iter().map(|(g, k)| (*g, *k)).collect(),
        };
        for (i, pk) in pool().iter().enumerate() {
            let r = run.file.open(pk);
            if m.principals.contains(&i) {
                let ring = r.unwrap_or_else(|e| panic!("principal {i} must open it: {e}"));
                assert_eq!(ring.opened_with, pk.fingerprint());
                assert_ring(&ring, m, &format!("opened by principal {i}"));
                assert!(ring.same_keyring(&run.views[0]));
                assert_eq!(own_open(&json, &pool_key(i)).as_ref(), Ok(&own));
            } else {
                assert!(
                    matches!(r, Err(Error::WrongPrincipalKey { .. })),
                    "principal {i} is not in the keyring: {r:?}"
                );
                assert!(own_open(&json, &pool_key(i)).is_err());
            }
        }
        let by_r = run.file.open_with_keyring_key(&run.keyring_key).unwrap();
        assert_ring(&by_r, m, "opened with the keyring key");
    }

    fn start(held: &[u8], last_generation: u8) -> Run {
        let keyring_key = Key256::random().unwrap();
        // Issue `last_generation` too, then drop it unless it is held.
        let issued = Keyring::from_parts(
            SEQ_SYSID,
            counting32(0xa7),
            held.iter()
                .chain([&last_generation])
                .map(|&g| (g, Key256::random().unwrap())),
        )
        .with_keyring_key(keyring_key.clone());
        let ring = issued.with_data_keys(
            held.iter()
                .map(|&g| (g, issued.data_key(g).unwrap().clone())),
        );
        assert_eq!(ring.last_generation(), last_generation);
        let file = reparse(&ring.seal(&[&pool()[0]]).unwrap());
        let model = Model {
            principals: vec![0],
            keys: keys_of(&ring),
            last_generation,
        };
        let run = Run {
            files: vec![file.clone()],
            file,
            model,
            keyring_key,
            views: vec![ring],
            refused: 0,
        };
        check(&run);
        run
    }

    /// A ring to act with: opened by a principal key the model holds, or an
    /// earlier view.
    fn acting_ring(run: &Run, view: &Option<usize>) -> Keyring {
        match view {
            Some(i) => run.views[i % run.views.len()].clone(),
            None => {
                let p = run.model.principals[0];
                run.file.open(&pool()[p]).unwrap()
            }
        }
    }

    fn opened_via(run: &Run, via: &usize) -> Keyring {
        let p = run.model.principals[via % run.model.principals.len()];
        run.file.open(&pool()[p]).unwrap()
    }

    /// What merging `view` into the model gives, or `None` if some
    /// generation holds different keys in the two.
    fn merged_model(model: &Model, view: &Keyring) -> Option<Model> {
        let mut next = model.clone();
        for (g, k) in keys_of(view) {
            match next.keys.get(&g) {
                Some(mine) if *mine != k => return None,
                _ => {
                    next.keys.insert(g, k);
                }
            }
        }
        next.last_generation = next.last_generation.max(view.last_generation());
        Some(next)
    }

    /// Applies `op`, checking the outcome against the model.
    fn apply(run: &mut Run, op: &Op) {
        let before = run.file.clone();
        let m = run.model.clone();
        let present = |i: usize| m.principals.contains(&i);
        // (result, expected model on success, whether a data-key ring came back)
        let (result, expected): (
            tde_core::Result<(KeyringFile, Option<Keyring>)>,
            Option<Model>,
        ) = match op {
            Op::AddPrincipal { via, new } => {
                let ring = opened_via(run, via);
                let r = run.file.with_principal_added(&ring, &pool()[*new]);
                let mut next = m.clone();
                next.principals.push(*new);
                (r.map(|f| (f, None)), (!present(*new)).then_some(next))
            }
            Op::RemovePrincipal(old) => {
                let r = run.file.with_principal_removed(&pool()[*old].fingerprint());
                let mut next = m.clone();
                next.principals.retain(|p| p != old);
                let ok = present(*old) && m.principals.len() > 1;
                (r.map(|f| (f, None)), ok.then_some(next))
            }
            Op::ReplacePrincipal { via, old, new } => {
                let ring = opened_via(run, via);
                let r = run.file.with_principal_replaced(
                    &ring,
                    &pool()[*old].fingerprint(),
                    &pool()[*new],
                );
                let mut next = m.clone();
                for p in &mut next.principals {
                    if p == old {
                        *p = *new;
                    }
                }
                let ok = present(*old) && !present(*new);
                (r.map(|f| (f, None)), ok.then_some(next))
            }
            Op::AddDataKey(view) => {
                let ring = acting_ring(run, view);
                let r = run.file.with_data_key_added(&ring);
                let expected = m.last_generation.checked_add(1).map(|g| {
                    let mut next = m.clone();
                    next.last_generation = g;
                    // The new key's bytes are random: taken from the result.
                    if let Ok((_, ring)) = &r {
                        if let Some(k) = ring.data_key(g) {
                            next.keys.insert(g, *k.as_bytes());
                        }
                    }
                    next
                });
                (r.map(|(f, ring)| (f, Some(ring))), expected)
            }
            Op::DropDataKey { view, pick } => {
                let g = match pick {
                    GenPick::Held(i) => *m.keys.keys().nth(i % m.keys.len()).unwrap(),
                    GenPick::Any(g) => *g,
                };
                let ring = acting_ring(run, view);
                let r = run.file.with_data_key_dropped(&ring, g);
                let mut next = m.clone();
                next.keys.remove(&g);
                let ok = m.keys.contains_key(&g) && g != m.current();
                (r.map(|(f, ring)| (f, Some(ring))), ok.then_some(next))
            }
            Op::Merge(i) => {
                let view = run.views[i % run.views.len()].clone();
                let r = run.file.merged_with(&view);
                (r.map(|(f, ring)| (f, Some(ring))), merged_model(&m, &view))
            }
            Op::MergeDiverged(i) => {
                let earlier = run.files[i % run.files.len()].clone();
                let Ok((_, diverged)) = earlier.with_data_key_added(&run.views[0]) else {
                    // That file had issued every generation already.
                    assert_eq!(
                        earlier
                            .open_with_keyring_key(&run.keyring_key)
                            .unwrap()
                            .last_generation(),
                        255
                    );
                    return;
                };
                run.views.push(diverged.clone());
                let r = run.file.merged_with(&diverged);
                (
                    r.map(|(f, ring)| (f, Some(ring))),
                    merged_model(&m, &diverged),
                )
            }
        };
        assert_eq!(run.file, before, "operations never modify their input");
        match (result, expected) {
            (Ok((file, ring)), Some(next)) => {
                run.file = reparse(&file);
                run.model = next;
                if let Some(ring) = ring {
                    assert_ring(&ring, &run.model, &format!("ring returned by {op:?}"));
                    run.views.push(ring);
                }
                run.files.push(run.file.clone());
            }
            (Err(e), None) => {
                let principal_op = matches!(
                    op,
                    Op::AddPrincipal { .. } | Op::RemovePrincipal(_) | Op::ReplacePrincipal { .. }
                );
                if principal_op {
                    assert!(matches!(e, Error::PrincipalKeyChange(_)), "{op:?}: {e:?}");
                } else {
                    assert!(matches!(e, Error::DataKeyChange(_)), "{op:?}: {e:?}");
                }
                assert_eq!(run.model, m);
                run.refused += 1;
            }
            (Ok(_), None) => panic!("{op:?} must fail (model {m:?})"),
            (Err(e), Some(_)) => panic!("{op:?} must succeed: {e}"),
        }
        check(run);
    }

    fn run_ops((held, last_generation): &(Vec<u8>, u8), ops: &[Op]) -> Run {
        let mut run = start(held, *last_generation);
        for op in ops {
            apply(&mut run, op);
        }
        run
    }

    /// A fixed sequence touching every refusal the model knows, so the
    /// property's model is known to exercise them.
    #[test]
    fn every_refusal_is_reached() {
        let i0 = 0;
        let ops = [
            Op::RemovePrincipal(0),               // the last one
            Op::AddPrincipal { via: i0, new: 0 }, // already present
            Op::AddPrincipal { via: i0, new: 1 },
            Op::ReplacePrincipal {
                via: i0,
                old: 2,
                new: 3,
            }, // old absent
            Op::ReplacePrincipal {
                via: i0,
                old: 0,
                new: 1,
            }, // new present
            Op::ReplacePrincipal {
                via: i0,
                old: 0,
                new: 2,
            },
            Op::RemovePrincipal(0), // absent
            Op::DropDataKey {
                view: None,
                pick: GenPick::Held(i0),
            }, // current
            Op::DropDataKey {
                view: None,
                pick: GenPick::Any(77),
            }, // missing
            Op::AddDataKey(Some(i0)), // stale view
            Op::DropDataKey {
                view: Some(i0),
                pick: GenPick::Held(i0),
            },
            Op::Merge(i0),         // brings 1 back
            Op::MergeDiverged(i0), // diverged 2
            Op::AddDataKey(None),
        ];
        let run = run_ops(&(vec![1], 1), &ops);
        assert_eq!(run.refused, 8);
        assert_eq!(run.model.principals, vec![2, 1]);
        assert_eq!(
            run.model.keys.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(run.model.last_generation, 3);
        // Out of generations.
        let run = run_ops(&(vec![255], 255), &[Op::AddDataKey(None)]);
        assert_eq!(run.refused, 1);
        let run = run_ops(&(vec![3], 255), &[Op::AddDataKey(None)]);
        assert_eq!(run.refused, 1);
        // Generations above the highest held were issued already: a new
        // one comes after them.
        let ops = [
            Op::AddDataKey(None),
            Op::DropDataKey {
                view: None,
                pick: GenPick::Any(2),
            },
            Op::AddDataKey(Some(0)),
        ];
        let run = run_ops(&(vec![1, 2], 5), &ops);
        assert_eq!(run.refused, 0);
        assert_eq!(
            run.model.keys.keys().copied().collect::<Vec<_>>(),
            vec![1, 6, 7]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn operation_sequences_follow_the_model(
            initial in initial_generations(),
            ops in prop::collection::vec(op(), 1..12),
        ) {
            run_ops(&initial, &ops);
        }

        /// Changing any one hexadecimal digit of a file such a sequence
        /// produced never opens it to other keys: refused, or the same keys
        /// (e.g. a digit changed to its upper-case form). Each case tries
        /// several single-digit changes, each on its own copy.
        #[test]
        fn one_digit_changed_never_opens_to_other_keys(
            initial in initial_generations(),
            ops in prop::collection::vec(op(), 0..8),
            changes in prop::collection::vec(
                (any::<Index>(), prop::sample::select(&b"0123456789abcdefABCDEF"[..])),
                1..16,
            ),
        ) {
            let run = run_ops(&initial, &ops);
            let original = run.file.to_json().into_bytes();
            let digits: Vec<usize> = (0..original.len())
                .filter(|&n| original[n].is_ascii_hexdigit())
                .collect();
            for (at, digit) in &changes {
                let at = digits[at.index(digits.len())];
                if original[at] == *digit {
                    continue;
                }
                let mut text = original.clone();
                text[at] = *digit;
                let Ok(file) = KeyringFile::parse(&text) else { continue };
                for (i, pk) in pool().iter().enumerate() {
                    if let Ok(ring) = file.open(pk) {
                        prop_assert!(
                            run.model.principals.contains(&i),
                            "principal {} opened it after byte {} became {}", i, at, *digit as char
                        );
                        assert_ring(&ring, &run.model, &format!("byte {at} changed"));
                    }
                }
                if let Ok(ring) = file.open_with_keyring_key(&run.keyring_key) {
                    assert_ring(&ring, &run.model, &format!("byte {at} changed, keyring key"));
                }
            }
        }
    }
}
