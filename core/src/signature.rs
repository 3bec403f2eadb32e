//! Module signatures in the WebAssembly tool-conventions format, the one
//! `wasmsign2` reads and writes, so files signed here verify there and the
//! other way round.
//!
//! The format, as `wasmsign2` implements it:
//!
//! - A custom section named `signature` is the file's first section. It
//!   holds: spec version `0x01`, content type `0x01` (a Wasm module), hash
//!   function `0x01` (SHA-256), then a vector of *signed hash sets*, each a
//!   vector of 32-byte hashes and a vector of signatures. Every signature is
//!   a key id (may be empty), an algorithm id `0x01` (Ed25519) and the 64
//!   signature bytes. Counts are LEB128; every vector element is
//!   length-prefixed.
//! - The hash is SHA-256 of every byte after the signature section: all
//!   other sections, custom ones included, as they are in the file. The
//!   8-byte header is not hashed, which is why the signed manifest states
//!   the kind.
//! - A signature is Ed25519 over `"wasmsig" ‖ 01 ‖ 01 ‖ 01 ‖ hashes…`.
//! - A key id is the first 12 bytes of HMAC-SHA256 keyed with the public
//!   key over the text `key_id`.
//! - Key files are raw: a public key is `0x01` then its 32 bytes, a secret
//!   key `0x81` then the 32-byte seed and the 32-byte public key.
//!
//! Signing a file that is already signed over the same bytes adds a
//! signature beside the others; `wasmsign2` does the same.
//!
//! The crypto is here, in `core`, rather than in a crate of its own because
//! the design gives the signature format to `core`: the CLI signs and the
//! device verifies with the same code, and neither may disagree on a byte.
//! It costs `core` three small, widely audited crates (`ed25519-dalek`,
//! `sha2`, `hmac`) and `getrandom` for key generation.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac as _};
use serde::{Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::manifest::{ManifestError, extract_from};
use crate::sections::SIGNATURE_SECTION;
use crate::wasm::{WasmFile, custom_section, read_u32, write_u32};
use crate::{Digest, Manifest, WasmError, WasmKind};

/// Most signed hash sets read from a signature section; `wasmsign2`'s limit.
/// Kelp writes one; more than a few means a hostile file.
pub const MAX_HASH_SETS: usize = 64;

/// Most hashes in one signed hash set; `wasmsign2`'s limit. Each is 32 bytes
/// and is hashed into every signature check.
pub const MAX_HASHES: usize = 64;

/// Most signatures read from one signature section, across all its hash
/// sets. `wasmsign2` allows 256 per set; a fleet has a handful of publisher
/// keys, and every signature costs an Ed25519 check per trusted key, so 256
/// in all keeps a hostile file from making a device spend seconds on it.
pub const MAX_SIGNATURES: usize = 256;

/// Largest key file read: a raw secret key is 65 bytes, so anything near
/// this is not a key.
pub const MAX_KEY_FILE_SIZE: usize = 4 << 10;

const SPEC_VERSION: u8 = 0x01;
const CONTENT_TYPE_MODULE: u8 = 0x01;
const HASH_SHA256: u8 = 0x01;
const ALG_ED25519: u8 = 0x01;
const DOMAIN: &[u8] = b"wasmsig";
const PUBLIC_KEY_TAG: u8 = 0x01;
const SECRET_KEY_TAG: u8 = 0x81;
const KEY_ID_LEN: usize = 12;
const SIGNATURE_LEN: usize = 64;

/// Why a file cannot be signed or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(transparent)]
    Wasm(#[from] WasmError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("no signature section")]
    NoSignature,
    #[error("the signature section is not the first section (it is at byte {offset})")]
    NotFirst { offset: usize },
    #[error("malformed signature section: {0}")]
    Malformed(&'static str),
    #[error("unsupported signature {what} {value:#04x}")]
    Unsupported { what: &'static str, value: u32 },
    #[error("signature section has more than {limit} {what}")]
    TooMany { what: &'static str, limit: usize },
    #[error("no public key given to verify with")]
    NoKeys,
    #[error("signature by key id {0} does not verify: the file was changed after it was signed")]
    DoesNotVerify(KeyId),
    #[error("not signed by any of the given public keys (signed by key ids {signers})")]
    Untrusted { signers: String },
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "not a public key file: expected 33 bytes, 0x01 then an Ed25519 key (the raw format `kelp key generate` and `wasmsign2 keygen` write)"
    )]
    NotPublic,
    #[error(
        "not a secret key file: expected 65 bytes, 0x81 then an Ed25519 seed and public key (the raw format `kelp key generate` and `wasmsign2 keygen` write)"
    )]
    NotSecret,
    #[error("the public key is not a valid Ed25519 point")]
    BadPoint,
    #[error("the secret key's public half does not match its seed")]
    Inconsistent,
}

/// A publisher's public key, which devices pin to decide what may run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// A publisher's secret signing key.
pub struct SecretKey(SigningKey);

/// The 12-byte identifier of a public key stored beside each signature, so
/// a verifier knows which of its keys to try. Shown as 24 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl PublicKey {
    /// Reads a raw public key file (`0x01` and 32 bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let key: [u8; 32] = match bytes {
            [PUBLIC_KEY_TAG, rest @ ..] => rest.try_into().map_err(|_| KeyError::NotPublic)?,
            _ => return Err(KeyError::NotPublic),
        };
        VerifyingKey::from_bytes(&key)
            .map(PublicKey)
            .map_err(|_| KeyError::BadPoint)
    }

    /// The raw key file bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![PUBLIC_KEY_TAG];
        out.extend_from_slice(self.0.as_bytes());
        out
    }

    /// This key's id, as `wasmsign2` computes it.
    pub fn key_id(&self) -> KeyId {
        // HMAC accepts keys of any length.
        let mut mac = match Hmac::<Sha256>::new_from_slice(self.0.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => return KeyId([0; KEY_ID_LEN]),
        };
        mac.update(b"key_id");
        let tag = mac.finalize().into_bytes();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&tag[..KEY_ID_LEN]);
        KeyId(id)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl SecretKey {
    /// A new random key, from the operating system's random source.
    pub fn generate() -> Result<Self, SignatureError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SignatureError::Random(e.to_string()))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Reads a raw secret key file (`0x81`, seed, public key).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let (seed, public): ([u8; 32], &[u8]) = match bytes {
            [SECRET_KEY_TAG, rest @ ..] if rest.len() == 64 => {
                let (seed, public) = rest.split_at(32);
                (seed.try_into().map_err(|_| KeyError::NotSecret)?, public)
            }
            _ => return Err(KeyError::NotSecret),
        };
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes() != public {
            return Err(KeyError::Inconsistent);
        }
        Ok(SecretKey(key))
    }

    /// The raw key file bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![SECRET_KEY_TAG];
        out.extend_from_slice(self.0.as_bytes());
        out.extend_from_slice(self.0.verifying_key().as_bytes());
        out
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {})", self.public_key().key_id())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&key_id_hex(&self.0))
    }
}

/// A key id as text: two lowercase hex digits a byte. Key ids read from a
/// file are shown this way whatever their length.
fn key_id_hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One signature from a signature section.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SignatureEntry {
    key_id: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

/// Signatures over one list of hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SignedHashes {
    hashes: Vec<[u8; 32]>,
    signatures: Vec<SignatureEntry>,
}

impl SignedHashes {
    fn message(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(DOMAIN.len() + 3 + 32 * self.hashes.len());
        msg.extend_from_slice(DOMAIN);
        msg.extend_from_slice(&[SPEC_VERSION, CONTENT_TYPE_MODULE, HASH_SHA256]);
        for h in &self.hashes {
            msg.extend_from_slice(h);
        }
        msg
    }
}

/// Reads the contents of a signature section.
fn decode(mut data: &[u8]) -> Result<Vec<SignedHashes>, SignatureError> {
    let header = take_u32(&mut data)?;
    if header != u32::from(SPEC_VERSION) {
        return Err(SignatureError::Unsupported {
            what: "spec version",
            value: header,
        });
    }
    let content_type = take_u32(&mut data)?;
    if content_type != u32::from(CONTENT_TYPE_MODULE) {
        return Err(SignatureError::Unsupported {
            what: "content type",
            value: content_type,
        });
    }
    let hash = take_u32(&mut data)?;
    if hash != u32::from(HASH_SHA256) {
        return Err(SignatureError::Unsupported {
            what: "hash function",
            value: hash,
        });
    }
    let sets = count(take_u32(&mut data)?, MAX_HASH_SETS, "signed hash sets")?;
    let mut out = Vec::with_capacity(sets);
    let mut total_signatures = 0usize;
    for _ in 0..sets {
        let mut set = take_slice(&mut data)?;
        let n = count(take_u32(&mut set)?, MAX_HASHES, "hashes in a set")?;
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            let (h, rest) = set
                .split_first_chunk::<32>()
                .ok_or(SignatureError::Malformed("a hash is cut short"))?;
            hashes.push(*h);
            set = rest;
        }
        let n = take_u32(&mut set)? as usize;
        total_signatures = total_signatures.saturating_add(n);
        if total_signatures > MAX_SIGNATURES {
            return Err(SignatureError::TooMany {
                what: "signatures",
                limit: MAX_SIGNATURES,
            });
        }
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            let mut entry = take_slice(&mut set)?;
            let key_id = take_slice(&mut entry)?.to_vec();
            let (&alg, mut rest) = entry
                .split_first()
                .ok_or(SignatureError::Malformed("a signature is cut short"))?;
            let signature = take_slice(&mut rest)?;
            // wasmsign2 skips signatures of algorithms it does not know;
            // so does this.
            if alg != ALG_ED25519 {
                continue;
            }
            let signature = signature
                .try_into()
                .map_err(|_| SignatureError::Malformed("an Ed25519 signature is not 64 bytes"))?;
            signatures.push(SignatureEntry { key_id, signature });
        }
        out.push(SignedHashes { hashes, signatures });
    }
    Ok(out)
}

/// Writes the contents of a signature section.
fn encode(sets: &[SignedHashes]) -> Vec<u8> {
    let mut out = vec![SPEC_VERSION, CONTENT_TYPE_MODULE, HASH_SHA256];
    write_u32(&mut out, sets.len());
    for set in sets {
        let mut s = Vec::new();
        write_u32(&mut s, set.hashes.len());
        for h in &set.hashes {
            s.extend_from_slice(h);
        }
        write_u32(&mut s, set.signatures.len());
        for sig in &set.signatures {
            let mut e = Vec::new();
            put_slice(&mut e, &sig.key_id);
            e.push(ALG_ED25519);
            put_slice(&mut e, &sig.signature);
            put_slice(&mut s, &e);
        }
        put_slice(&mut out, &s);
    }
    out
}

fn count(n: u32, limit: usize, what: &'static str) -> Result<usize, SignatureError> {
    let n = n as usize;
    if n > limit {
        return Err(SignatureError::TooMany { what, limit });
    }
    Ok(n)
}

fn take_u32(data: &mut &[u8]) -> Result<u32, SignatureError> {
    let (v, len) =
        read_u32(data).map_err(|_| SignatureError::Malformed("a number is cut short"))?;
    *data = &data[len..];
    Ok(v)
}

fn take_slice<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], SignatureError> {
    let len = take_u32(data)? as usize;
    if len > data.len() {
        return Err(SignatureError::Malformed("a field runs past the section"));
    }
    let (head, rest) = data.split_at(len);
    *data = rest;
    Ok(head)
}

fn put_slice(out: &mut Vec<u8>, bytes: &[u8]) {
    write_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// The signature section of a parsed file, and the SHA-256 of what it
/// covers (every section but the signature section).
fn split_signed<'a>(file: &WasmFile<'a>) -> Result<(Option<&'a [u8]>, [u8; 32]), SignatureError> {
    let mut hasher = Sha256::new();
    let mut signature = None;
    for (i, section) in file.sections.iter().enumerate() {
        match section.custom {
            Some((SIGNATURE_SECTION, data)) if i == 0 => signature = Some(data),
            Some((SIGNATURE_SECTION, _)) => {
                return Err(SignatureError::NotFirst {
                    offset: section.offset,
                });
            }
            _ => hasher.update(section.raw),
        }
    }
    Ok((signature, hasher.finalize().into()))
}

/// Signs `module` with `key`: returns the file with a signature section first
/// and every other byte unchanged (except the header, which is kept).
///
/// A file already signed over the same bytes keeps its signatures and gains
/// this one; signing twice with the same key changes nothing. Signatures over
/// other bytes are dropped, since they can never verify.
pub fn sign(module: &[u8], key: &SecretKey) -> Result<Vec<u8>, SignatureError> {
    let file = WasmFile::parse(module)?;
    let (existing, hash) = split_signed(&file)?;
    let mut sets = match existing {
        Some(data) => decode(data)?,
        None => Vec::new(),
    };
    sets.retain(|set| set.hashes == [hash]);
    let mut set = sets.pop().unwrap_or(SignedHashes {
        hashes: vec![hash],
        signatures: Vec::new(),
    });
    let entry = SignatureEntry {
        key_id: key.public_key().key_id().0.to_vec(),
        signature: key.0.sign(&set.message()).to_bytes(),
    };
    if !set.signatures.contains(&entry) {
        if set.signatures.len() >= MAX_SIGNATURES {
            return Err(SignatureError::TooMany {
                what: "signatures",
                limit: MAX_SIGNATURES,
            });
        }
        set.signatures.push(entry);
    }
    let section = custom_section(SIGNATURE_SECTION, &encode(&[set]));
    let mut out = Vec::with_capacity(module.len() + section.len());
    out.extend_from_slice(file.header);
    out.extend_from_slice(&section);
    for s in &file.sections {
        if !s.is_custom(SIGNATURE_SECTION) {
            out.extend_from_slice(s.raw);
        }
    }
    Ok(out)
}

/// What a successful [`verify`] established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBy {
    /// Ids of the given keys with a valid signature over the file.
    pub key_ids: Vec<KeyId>,
    /// The file's kind, from its header.
    pub kind: WasmKind,
    /// The signed manifest, if the file has one; its kind matches the file.
    pub manifest: Option<Manifest>,
}

/// Checks that `module` carries a valid signature by at least one of `keys`
/// over all its contents, and that an embedded manifest agrees with the
/// file's header.
pub fn verify(module: &[u8], keys: &[PublicKey]) -> Result<VerifiedBy, SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoKeys);
    }
    let file = WasmFile::parse(module)?;
    let (section, hash) = split_signed(&file)?;
    let sets = decode(section.ok_or(SignatureError::NoSignature)?)?;

    let mut verified = Vec::new();
    let mut failed = None;
    for key in keys {
        let id = key.key_id();
        for set in &sets {
            let msg = set.message();
            for sig in &set.signatures {
                // A signature names its key, or names none and is tried
                // with every key.
                if !sig.key_id.is_empty() && sig.key_id != id.0 {
                    continue;
                }
                let signature = ed25519_dalek::Signature::from_bytes(&sig.signature);
                let genuine = key.0.verify_strict(&msg, &signature).is_ok();
                if genuine && set.hashes.contains(&hash) {
                    if !verified.contains(&id) {
                        verified.push(id);
                    }
                } else if genuine || !sig.key_id.is_empty() {
                    // This key's signature, over other contents.
                    failed.get_or_insert(id);
                }
            }
        }
    }
    if verified.is_empty() {
        if let Some(id) = failed {
            return Err(SignatureError::DoesNotVerify(id));
        }
        return Err(SignatureError::Untrusted {
            signers: signer_list(&sets),
        });
    }
    let manifest = extract_from(&file)?;
    if let Some(m) = &manifest {
        m.check_kind(file.kind)?;
    }
    Ok(VerifiedBy {
        key_ids: verified,
        kind: file.kind,
        manifest,
    })
}

fn signer_list(sets: &[SignedHashes]) -> String {
    let ids: Vec<String> = sets
        .iter()
        .flat_map(|s| &s.signatures)
        .map(|s| match s.key_id.as_slice() {
            [] => "(none)".to_owned(),
            id => key_id_hex(id),
        })
        .collect();
    if ids.is_empty() {
        "none: the section holds no Ed25519 signature".to_owned()
    } else {
        ids.join(", ")
    }
}

/// What a Wasm file says about itself, without checking any signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inspection {
    pub kind: WasmKind,
    /// sha256 of the whole file, as a registry addresses it.
    pub digest: Digest,
    pub size: u64,
    pub manifest: Option<Manifest>,
    /// The signatures in the signature section, in order.
    pub signatures: Vec<SignatureSummary>,
}

/// One signature, as [`inspect`] sees it: whose it claims to be and whether
/// it is over the file's current contents. Whether it is genuine takes the
/// public key; see [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignatureSummary {
    /// Hex key id, or `None` for a signature that names no key.
    pub key_id: Option<String>,
    /// False when the file was changed after this signature was made.
    pub covers_contents: bool,
}

/// Reads a file's kind, digest, manifest and signatures.
pub fn inspect(module: &[u8]) -> Result<Inspection, SignatureError> {
    let file = WasmFile::parse(module)?;
    let (section, hash) = split_signed(&file)?;
    let sets = match section {
        Some(data) => decode(data)?,
        None => Vec::new(),
    };
    let signatures = sets
        .iter()
        .flat_map(|set| {
            set.signatures.iter().map(|sig| SignatureSummary {
                key_id: (!sig.key_id.is_empty()).then(|| key_id_hex(&sig.key_id)),
                covers_contents: set.hashes.contains(&hash),
            })
        })
        .collect();
    Ok(Inspection {
        kind: file.kind,
        digest: Digest::from_bytes(Sha256::digest(module).into()),
        size: module.len() as u64,
        manifest: extract_from(&file)?,
        signatures,
    })
}

#[cfg(test)]
mod tests;
