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
    principals: [PrincipalKey; 2],
    stranger: PrincipalKey,
    text: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ring = Keyring::from_parts(
            SYSID,
            counting32(0x33),
            [1u8, 2, 9].map(|g| (g, Key256::random().unwrap())),
        );
        let principals =
            [0x10, 0x50].map(|b| PrincipalKey::from_key(Key256::from_bytes(counting32(b))));
        let stranger = PrincipalKey::from_key(Key256::from_bytes(counting32(0x90)));
        let text = ring
            .seal(&[&principals[0], &principals[1]])
            .unwrap()
            .to_json();
        Fixture {
            ring,
            principals,
            stranger,
            text,
        }
    })
}

/// Parses and opens `bytes` with every principal key; returns how many keys
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
            assert_eq!(ring.system_identifier, SYSID);
            assert_eq!(ring.cluster_salt, f.ring.cluster_salt);
            assert_eq!(ring.opened_with, pk.fingerprint());
            assert_eq!(
                ring.generations().collect::<Vec<_>>(),
                f.ring.generations().collect::<Vec<_>>()
            );
            for g in f.ring.generations() {
                assert_eq!(ring.data_key(g), f.ring.data_key(g), "generation {g}");
            }
        }
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
    for p in upper["principals"].as_array_mut().unwrap() {
        for field in ["nonce", "mac"] {
            p[field] = p[field].as_str().unwrap().to_uppercase().into();
        }
    }
    assert_eq!(parse_and_open(upper.to_string().as_bytes()), 2);
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
                let keys = v["principals"][0]["data_keys"].as_array_mut().unwrap();
                let first = keys[0].clone();
                keys.insert(0, first);
            }),
        ),
        (
            "decreasing generations",
            Box::new(|v| {
                v["principals"][0]["data_keys"]
                    .as_array_mut()
                    .unwrap()
                    .reverse();
            }),
        ),
        (
            "generation 0",
            Box::new(|v| v["principals"][0]["data_keys"][0]["generation"] = 0.into()),
        ),
        (
            "generation 256",
            Box::new(|v| v["principals"][0]["data_keys"][2]["generation"] = 256.into()),
        ),
        (
            "no data keys",
            Box::new(|v| v["principals"][0]["data_keys"] = serde_json::json!([])),
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
            "non-hex nonce",
            Box::new(|v| v["principals"][1]["nonce"] = "zz".repeat(16).into()),
        ),
        (
            "short mac",
            Box::new(|v| v["principals"][1]["mac"] = "ab".repeat(31).into()),
        ),
        (
            "long wrapped key",
            Box::new(|v| v["principals"][0]["data_keys"][1]["wrapped"] = "ab".repeat(33).into()),
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
            Box::new(|v| v["principals"][1]["data_keys"][0]["x"] = 1.into()),
        ),
        (
            "missing field",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("cluster_salt");
            }),
        ),
        (
            "wrong format name",
            Box::new(|v| v["format"] = "tde-keyring2".into()),
        ),
        (
            "fractional version",
            Box::new(|v| v["version"] = 1.0.into()),
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
    let mut v = base.clone();
    v["version"] = 2.into();
    let r = KeyringFile::parse(v.to_string().as_bytes());
    assert!(
        matches!(
            r,
            Err(Error::KeyringVersion {
                found: 2,
                supported: 1
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
