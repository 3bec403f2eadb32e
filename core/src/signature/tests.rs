use super::*;
use crate::manifest::embed;
use crate::wasm::tests::{EMPTY_COMPONENT, EMPTY_MODULE};

fn module() -> Vec<u8> {
    let mut m = EMPTY_COMPONENT.to_vec();
    m.extend(custom_section("producers", b"some code stands in here"));
    m
}

fn key() -> SecretKey {
    SecretKey::generate().unwrap()
}

#[test]
fn signs_and_verifies_and_names_the_signer() {
    let k = key();
    let signed = sign(&module(), &k).unwrap();
    let file = WasmFile::parse(&signed).unwrap();
    assert!(file.sections[0].is_custom(SIGNATURE_SECTION));
    assert_eq!(&signed[signed.len() - module().len() + 8..], &module()[8..]);
    let by = verify(&signed, &[k.public_key()]).unwrap();
    assert_eq!(by.key_ids, vec![k.public_key().key_id()]);
    assert_eq!(by.kind, WasmKind::Component);
}

#[test]
fn every_changed_byte_after_the_header_breaks_the_signature() {
    let k = key();
    let signed = sign(&module(), &k).unwrap();
    let sig_end = WasmFile::parse(&signed).unwrap().sections[0].raw.len() + 8;
    for i in sig_end..signed.len() {
        let mut bad = signed.clone();
        bad[i] ^= 0x01;
        assert!(
            verify(&bad, &[k.public_key()]).is_err(),
            "byte {i} changed and still verified"
        );
    }
    let mut bad = signed.clone();
    *bad.last_mut().unwrap() ^= 0x20;
    let err = verify(&bad, &[k.public_key()]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "signature by key id {} does not verify: the file was changed after it was signed",
            k.public_key().key_id()
        )
    );
}

#[test]
fn another_key_is_not_trusted() {
    let k = key();
    let signed = sign(&module(), &k).unwrap();
    let err = verify(&signed, &[key().public_key()])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("not signed by any of the given public keys"));
    assert!(err.contains(&k.public_key().key_id().to_string()), "{err}");
}

#[test]
fn unsigned_files_say_so() {
    let err = verify(&module(), &[key().public_key()]).unwrap_err();
    assert_eq!(err.to_string(), "no signature section");
}

#[test]
fn a_second_signer_adds_a_signature_and_both_verify() {
    let (a, b) = (key(), key());
    let once = sign(&module(), &a).unwrap();
    let twice = sign(&once, &b).unwrap();
    assert_eq!(sign(&twice, &b).unwrap(), twice, "re-signing is a no-op");
    let by = verify(&twice, &[a.public_key(), b.public_key()]).unwrap();
    assert_eq!(by.key_ids.len(), 2);
    assert_eq!(inspect(&twice).unwrap().signatures.len(), 2);
    verify(&twice, &[a.public_key()]).unwrap();
}

#[test]
fn the_manifest_kind_must_match_the_unsigned_header() {
    let k = key();
    let manifest =
        Manifest::from_toml("name = \"x\"\nversion = \"1\"\nkind = \"component\"").unwrap();
    let signed = sign(&embed(EMPTY_COMPONENT, &manifest).unwrap(), &k).unwrap();
    let by = verify(&signed, &[k.public_key()]).unwrap();
    assert_eq!(by.manifest, Some(manifest));
    // The header is not signed: swap it and the signature still holds,
    // but the manifest gives the swap away.
    let mut swapped = signed.clone();
    swapped[..8].copy_from_slice(EMPTY_MODULE);
    let err = verify(&swapped, &[k.public_key()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "manifest says component but file is a core module"
    );
}

#[test]
fn key_files_round_trip_and_refuse_garbage() {
    let k = key();
    let again = SecretKey::from_bytes(&k.to_bytes()).unwrap();
    assert_eq!(again.public_key(), k.public_key());
    let pk = PublicKey::from_bytes(&k.public_key().to_bytes()).unwrap();
    assert_eq!(pk, k.public_key());
    assert_eq!(
        PublicKey::from_bytes(&k.to_bytes()),
        Err(KeyError::NotPublic)
    );
    assert!(matches!(
        SecretKey::from_bytes(&pk.to_bytes()),
        Err(KeyError::NotSecret)
    ));
    let mut mixed = k.to_bytes();
    mixed[33..].copy_from_slice(key().public_key().to_bytes()[1..].as_ref());
    assert!(matches!(
        SecretKey::from_bytes(&mixed),
        Err(KeyError::Inconsistent)
    ));
}

#[test]
fn hostile_signature_sections_are_refused_not_trusted() {
    let k = key();
    let mut data = vec![SPEC_VERSION, CONTENT_TYPE_MODULE, HASH_SHA256];
    write_u32(&mut data, MAX_HASH_SETS + 1);
    let mut bytes = EMPTY_COMPONENT.to_vec();
    bytes.extend(custom_section(SIGNATURE_SECTION, &data));
    let err = verify(&bytes, &[k.public_key()]).unwrap_err();
    assert!(matches!(err, SignatureError::TooMany { .. }), "{err}");

    let mut bytes = EMPTY_COMPONENT.to_vec();
    bytes.extend(custom_section(SIGNATURE_SECTION, &[1, 1, 1, 1, 9]));
    let err = verify(&bytes, &[k.public_key()]).unwrap_err();
    assert!(matches!(err, SignatureError::Malformed(_)), "{err}");

    let mut bytes = EMPTY_COMPONENT.to_vec();
    bytes.extend(custom_section(SIGNATURE_SECTION, &[2, 1, 1, 0]));
    let err = verify(&bytes, &[k.public_key()]).unwrap_err();
    assert_eq!(err.to_string(), "unsupported signature spec version 0x02");

    let signed = sign(&module(), &k).unwrap();
    let mut late = module();
    late.extend_from_slice(WasmFile::parse(&signed).unwrap().sections[0].raw);
    let err = verify(&late, &[k.public_key()]).unwrap_err();
    assert!(matches!(err, SignatureError::NotFirst { .. }), "{err}");
}

/// A known answer from `wasmsign2 sign -k sk -K pk` (v0.2.8): the key
/// with seed `[1; 32]` signing a core module with one custom section.
/// Ed25519 is deterministic, so Kelp must write the very same bytes.
#[test]
fn writes_the_same_bytes_as_wasmsign2() {
    const WASMSIGN2: &[&str] = &[
        "0061736d01000000008101097369676e61747572650101010172017c654e0948",
        "76b240d95ae3be0bc2ea05a678b04c443546be9e493f314c21531f014f0c236c",
        "79a936837526e7b8746a0140f4ce73fddd66ca6827d270dd96a4ec9143a6ced7",
        "fa238d6ed11b6e81fb2b8146fb19dab832832d3d43474b68ee4139c7dca42cf4",
        "a18855982a5ca0078acf0909000b0568656c6c6f776f726c64",
    ];
    let expected: Vec<u8> = WASMSIGN2
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect();
    let k = SecretKey(SigningKey::from_bytes(&[1; 32]));
    let mut m = EMPTY_MODULE.to_vec();
    m.extend(custom_section("hello", b"world"));
    assert_eq!(sign(&m, &k).unwrap(), expected);
    assert_eq!(
        k.public_key().key_id().to_string(),
        "236c79a936837526e7b8746a"
    );
    verify(&expected, &[k.public_key()]).unwrap();
}
