//! Migrating a format 1 keyring (tde 0.1.0). `fixtures/keyring-v1.json` was
//! written by tde 0.1.0's own code: cluster salt 00 01 … 1f, system
//! identifier 7301234567890123456, data keys 0xa1 × 32 (generation 1) and
//! 0xa3 × 32 (generation 3), sealed under principal keys 0x11 × 32 and
//! 0x22 × 32.

use tde_core::kdf::Key256;
use tde_core::keyring::{open_for_cluster, KeyringFile};
use tde_core::keyring_v1::{is_format_1, migrate};
use tde_core::principal::PrincipalKey;
use tde_core::Error;

/// A change to a keyring's JSON.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

const FIXTURE: &str = include_str!("fixtures/keyring-v1.json");
const SYSID: u64 = 7_301_234_567_890_123_456;

fn pk(b: u8) -> PrincipalKey {
    PrincipalKey::from_key(Key256::from_bytes([b; 32]))
}

fn salt() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

#[test]
fn the_fixture_is_format_1_and_the_current_parser_says_so() {
    assert!(is_format_1(FIXTURE.as_bytes()));
    let r = KeyringFile::parse(FIXTURE.as_bytes());
    assert!(matches!(r, Err(Error::KeyringFormat1)), "{r:?}");
    let current = tde_core::keyring::Keyring::generate(SYSID)
        .unwrap()
        .seal(&[&pk(0x11)])
        .unwrap();
    assert!(!is_format_1(current.to_json().as_bytes()));
    assert!(!is_format_1(b"not json"));
}

#[test]
fn either_principal_key_migrates_every_data_key() {
    for (mine, other) in [(pk(0x11), pk(0x22)), (pk(0x22), pk(0x11))] {
        let m = migrate(FIXTURE.as_bytes(), &[&mine], Some(SYSID)).unwrap();
        assert_eq!(m.ring.generations().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(m.ring.data_key(1), Some(&Key256::from_bytes([0xa1; 32])));
        assert_eq!(m.ring.data_key(3), Some(&Key256::from_bytes([0xa3; 32])));
        assert_eq!(m.ring.current_generation(), 3);
        assert_eq!(m.ring.last_generation(), 3);
        assert_eq!(m.ring.cluster_salt, salt());
        assert_eq!(m.ring.system_identifier, SYSID);
        assert_eq!(m.ring.opened_with, mine.fingerprint());
        assert_eq!(m.not_carried, vec![other.fingerprint()]);

        // The new file is the current format, opens with the key used and
        // with no other, and holds the same keys.
        let text = m.file.to_json();
        let reparsed = KeyringFile::parse(text.as_bytes()).unwrap();
        assert_eq!(reparsed.fingerprints(), vec![mine.fingerprint().as_str()]);
        let reopened = open_for_cluster(&reparsed, &mine, SYSID).unwrap();
        assert!(reopened.same_keyring(&m.ring));
        assert_eq!(reopened.data_key(1), m.ring.data_key(1));
        assert_eq!(reopened.data_key(3), m.ring.data_key(3));
        let r = open_for_cluster(&reparsed, &other, SYSID);
        assert!(matches!(r, Err(Error::WrongPrincipalKey { .. })), "{r:?}");
    }
}

#[test]
fn wrong_key_foreign_cluster_and_tampering_are_refused() {
    let r = migrate(FIXTURE.as_bytes(), &[&pk(0x33)], Some(SYSID));
    match r {
        Err(Error::WrongPrincipalKey { expected, actual }) => {
            assert_eq!(
                expected,
                format!("{} or {}", pk(0x11).fingerprint(), pk(0x22).fingerprint())
            );
            assert_eq!(actual, pk(0x33).fingerprint());
        }
        other => panic!("{:?}", other.err()),
    }

    let r = migrate(FIXTURE.as_bytes(), &[&pk(0x11)], Some(SYSID + 1));
    assert!(
        matches!(r, Err(Error::ForeignKeyring { keyring: SYSID, cluster }) if cluster == SYSID + 1),
        "{:?}",
        r.err()
    );
    // Without a cluster to check against, the keyring's own identifier
    // stands (the MAC covers it).
    let m = migrate(FIXTURE.as_bytes(), &[&pk(0x11)], None).unwrap();
    assert_eq!(m.ring.system_identifier, SYSID);

    // Every field the MAC covers: changing any one refuses the keyring.
    let base: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    let edits: Vec<(&str, Edit)> = vec![
        (
            "cluster salt",
            Box::new(|v| v["cluster_salt"] = "ff".repeat(32).into()),
        ),
        (
            "nonce",
            Box::new(|v| v["principals"][0]["nonce"] = "00".repeat(16).into()),
        ),
        (
            "wrapped key",
            Box::new(|v| v["principals"][0]["data_keys"][1]["wrapped"] = "00".repeat(32).into()),
        ),
        (
            "generation",
            Box::new(|v| v["principals"][0]["data_keys"][1]["generation"] = 2.into()),
        ),
        (
            "dropped key",
            Box::new(|v| {
                v["principals"][0]["data_keys"]
                    .as_array_mut()
                    .unwrap()
                    .remove(0);
            }),
        ),
        (
            "mac",
            Box::new(|v| v["principals"][0]["mac"] = "00".repeat(32).into()),
        ),
    ];
    for (name, edit) in edits {
        let mut v = base.clone();
        edit(&mut v);
        let r = migrate(v.to_string().as_bytes(), &[&pk(0x11)], Some(SYSID));
        assert!(
            matches!(r, Err(Error::KeyringTampered { .. })),
            "{name}: {:?}",
            r.err()
        );
    }

    // The system identifier is covered too; with the cluster's own
    // identifier changed to match, the MAC still fails.
    let mut v = base.clone();
    v["system_identifier"] = (SYSID + 1).to_string().into();
    let r = migrate(v.to_string().as_bytes(), &[&pk(0x11)], Some(SYSID + 1));
    assert!(
        matches!(r, Err(Error::KeyringTampered { .. })),
        "{:?}",
        r.err()
    );

    // Structure: refused as corrupt, never a panic.
    for doc in [
        serde_json::json!({"format": "tde-keyring", "version": 1}),
        {
            let mut v = base.clone();
            v["principals"] = serde_json::json!([]);
            v
        },
        {
            let mut v = base.clone();
            v["principals"][0]["nonce"] = "zz".into();
            v
        },
        {
            let mut v = base.clone();
            v["principals"][1]["fingerprint"] = base["principals"][0]["fingerprint"].clone();
            v
        },
        {
            let mut v = base.clone();
            v["extra"] = 1.into();
            v
        },
    ] {
        let r = migrate(doc.to_string().as_bytes(), &[&pk(0x11)], Some(SYSID));
        assert!(
            matches!(r, Err(Error::KeyringCorrupt(_))),
            "{doc}: {:?}",
            r.err()
        );
    }
}

#[test]
fn every_principal_key_given_is_carried_over() {
    let m = migrate(FIXTURE.as_bytes(), &[&pk(0x11), &pk(0x22)], Some(SYSID)).unwrap();
    assert!(m.not_carried.is_empty(), "{:?}", m.not_carried);
    assert_eq!(m.ring.opened_with, pk(0x11).fingerprint());
    let text = m.file.to_json();
    let reparsed = KeyringFile::parse(text.as_bytes()).unwrap();
    assert_eq!(
        reparsed.fingerprints(),
        vec![
            pk(0x11).fingerprint().as_str(),
            pk(0x22).fingerprint().as_str()
        ]
    );
    for key in [pk(0x11), pk(0x22)] {
        let ring = open_for_cluster(&reparsed, &key, SYSID).unwrap();
        assert!(ring.same_keyring(&m.ring));
        assert_eq!(ring.data_key(1), Some(&Key256::from_bytes([0xa1; 32])));
        assert_eq!(ring.data_key(3), Some(&Key256::from_bytes([0xa3; 32])));
    }
    // A key given that opens no entry refuses the whole migration.
    let r = migrate(FIXTURE.as_bytes(), &[&pk(0x11), &pk(0x33)], Some(SYSID));
    assert!(
        matches!(r, Err(Error::WrongPrincipalKey { .. })),
        "{:?}",
        r.err()
    );
}

/// Copies of one format 1 keyring migrated separately (a primary's and a
/// standby's) get different random keyring keys, so that no principal key
/// can derive one; they hold the same cluster and data keys, which is what
/// importing one into the other checks after opening it with a principal
/// key both share.
#[test]
fn separate_migrations_hold_the_same_keys_under_different_keyring_keys() {
    let a = migrate(FIXTURE.as_bytes(), &[&pk(0x11)], Some(SYSID)).unwrap();
    let b = migrate(FIXTURE.as_bytes(), &[&pk(0x11), &pk(0x22)], None).unwrap();
    assert!(!a.ring.same_keyring(&b.ring));
    assert_ne!(a.ring.keyring_key(), b.ring.keyring_key());
    let reopened = open_for_cluster(&b.file, &pk(0x11), SYSID).unwrap();
    assert_eq!(reopened.cluster_salt, a.ring.cluster_salt);
    assert_eq!(reopened.system_identifier, a.ring.system_identifier);
    for g in [1, 3] {
        assert_eq!(reopened.data_key(g), a.ring.data_key(g));
    }
    // Under the other's keyring key the body does not authenticate.
    let r = b.file.merged_with(&a.ring);
    assert!(
        matches!(r, Err(Error::KeyringBodyMismatch)),
        "{:?}",
        r.err()
    );
}
