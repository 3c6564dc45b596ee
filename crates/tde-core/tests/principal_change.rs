//! Adding, removing and replacing principal keys of a keyring file.

use tde_core::kdf::Key256;
use tde_core::keyring::{Keyring, KeyringFile};
use tde_core::principal::PrincipalKey;
use tde_core::Error;

fn pk(b: u8) -> PrincipalKey {
    PrincipalKey::from_key(Key256::from_bytes([b; 32]))
}

fn reparse(f: &KeyringFile) -> KeyringFile {
    KeyringFile::parse(f.to_json().as_bytes()).expect("round trip")
}

#[test]
fn rotation_replaces_the_old_key_and_keeps_the_data_keys() {
    let ring = Keyring::generate(11).unwrap();
    let file = ring.seal(&[&pk(1), &pk(9)]).unwrap();
    let opened = file.open(&pk(1)).unwrap();
    let rotated = reparse(
        &file
            .with_principal_replaced(&opened, &pk(1).fingerprint(), &pk(2))
            .unwrap(),
    );
    assert!(matches!(
        rotated.open(&pk(1)),
        Err(Error::WrongPrincipalKey { .. })
    ));
    let by_new = rotated.open(&pk(2)).unwrap();
    assert_eq!(by_new.data_key(1), ring.data_key(1));
    // The recovery key's entry is untouched and still opens it.
    assert_eq!(rotated.open(&pk(9)).unwrap().data_key(1), ring.data_key(1));
    assert_eq!(rotated.principals[1], file.principals[1]);
    // Only the rotated entry changes: the data keys are wrapped under the
    // keyring key, not under any principal key.
    assert_eq!(rotated.data_keys, file.data_keys);
    assert_eq!(rotated.mac, file.mac);
    assert_eq!(rotated.last_generation, file.last_generation);
    assert!(by_new.same_keyring(&opened));
    // Rotating to a key already present, or from a key not present, fails.
    assert!(rotated
        .with_principal_replaced(&by_new, &pk(2).fingerprint(), &pk(9))
        .is_err());
    assert!(rotated
        .with_principal_replaced(&by_new, &pk(1).fingerprint(), &pk(3))
        .is_err());
}

#[test]
fn add_and_remove() {
    let ring = Keyring::generate(12).unwrap();
    let file = ring.seal(&[&pk(1)]).unwrap();
    let opened = file.open(&pk(1)).unwrap();
    let two = reparse(&file.with_principal_added(&opened, &pk(5)).unwrap());
    assert_eq!(two.open(&pk(5)).unwrap().data_key(1), ring.data_key(1));
    assert_eq!(two.principals[0], file.principals[0]);
    assert_eq!((&two.data_keys, &two.mac), (&file.data_keys, &file.mac));
    assert!(
        two.with_principal_added(&opened, &pk(5)).is_err(),
        "added twice"
    );
    let one = reparse(&two.with_principal_removed(&pk(1).fingerprint()).unwrap());
    assert!(one.open(&pk(1)).is_err());
    assert_eq!(one.open(&pk(5)).unwrap().data_key(1), ring.data_key(1));
    let e = one
        .with_principal_removed(&pk(5).fingerprint())
        .unwrap_err();
    assert!(e.to_string().contains("only one"), "{e}");
    assert!(one.with_principal_removed("0000000000000000").is_err());
}

/// A data key added with one principal key's view is opened by every other
/// principal key, and a principal key added afterwards opens it too.
#[test]
fn data_key_changes_reach_every_principal_key() {
    let file = Keyring::generate(13)
        .unwrap()
        .seal(&[&pk(1), &pk(9)])
        .unwrap();
    let by_one = file.open(&pk(1)).unwrap();
    let (file2, ring2) = file.with_data_key_added(&by_one).unwrap();
    let file2 = reparse(&file2);
    assert_eq!(file2.principals, file.principals);
    let by_nine = file2.open(&pk(9)).unwrap();
    assert_eq!(by_nine.generations().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(by_nine.data_key(2), ring2.data_key(2));
    let (file3, _) = file2.with_data_key_dropped(&by_nine, 1).unwrap();
    let file3 = reparse(&file3.with_principal_added(&by_nine, &pk(4)).unwrap());
    for k in [1, 4, 9] {
        let r = file3.open(&pk(k)).unwrap();
        assert_eq!(r.generations().collect::<Vec<_>>(), vec![2], "key {k}");
        assert_eq!(r.data_key(2), ring2.data_key(2), "key {k}");
        assert_eq!(r.last_generation(), 2);
    }
    // A principal key view of a file is refused for another keyring's file.
    let other = Keyring::generate(13).unwrap().seal(&[&pk(1)]).unwrap();
    assert!(matches!(
        other.with_data_key_added(&by_one),
        Err(Error::KeyringBodyMismatch)
    ));
}

#[test]
fn keys_of_another_keyring_are_refused() {
    let a = Keyring::generate(1).unwrap();
    let b = Keyring::generate(1).unwrap();
    let file = a.seal(&[&pk(1)]).unwrap();
    let e = file.with_principal_added(&b, &pk(2)).unwrap_err();
    assert!(e.to_string().contains("another keyring"), "{e}");
}

mod mutated {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Rewrapping a keyring file whose text was modified never panics,
        /// and whatever it produces opens (with the new key) only to the
        /// original data keys: a modified header is refused, never sealed.
        #[test]
        fn rewrap_of_a_modified_file(at in 0usize..4000, with in any::<u8>()) {
            let ring = Keyring::generate(77).unwrap();
            let file = ring.seal(&[&pk(1), &pk(9)]).unwrap();
            let opened = file.open(&pk(1)).unwrap();
            let mut text = file.to_json().into_bytes();
            let at = at % text.len();
            prop_assume!(text[at] != with);
            text[at] = with;
            let Ok(modified) = KeyringFile::parse(&text) else { return Ok(()) };
            let Ok(rotated) = modified.with_principal_replaced(&opened, &pk(1).fingerprint(), &pk(2)) else {
                return Ok(());
            };
            let reopened = KeyringFile::parse(rotated.to_json().as_bytes()).unwrap().open(&pk(2)).unwrap();
            prop_assert_eq!(reopened.system_identifier, 77);
            prop_assert_eq!(reopened.cluster_salt, ring.cluster_salt);
            prop_assert_eq!(reopened.data_key(1), ring.data_key(1));
            // The recovery key opens it only if its entry was left intact.
            if let Ok(by_recovery) = rotated.open(&pk(9)) {
                prop_assert_eq!(by_recovery.data_key(1), ring.data_key(1));
            }
        }
    }
}
