//! The digests the registry serves by: sha256, which the rest of Kelp
//! addresses everything by ([`kelp_core::Digest`]), and sha512, which the
//! OCI spec lets clients use for any blob or manifest.
//!
//! sha512 lives here, not in `kelp_core::Digest`: that type is a `Copy`
//! 32-byte address that the device's content store, compile cache, image
//! pulls and signatures all name files and check bytes by, and none of them
//! meets a sha512 digest. Only the registry's server has to accept one.

use std::fmt;
use std::str::FromStr;

use kelp_core::Digest;
use sha2::{Digest as _, Sha256, Sha512};

/// A content address the registry accepts: `sha256:<64 hex>` or
/// `sha512:<128 hex>`, lowercase, as the OCI image spec registers them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobDigest {
    Sha256(Digest),
    Sha512([u8; 64]),
}

/// The hash functions behind [`BlobDigest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

/// Why a string is not a [`BlobDigest`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobDigestError {
    #[error("digest `{0}` is not `sha256:…` or `sha512:…`")]
    Algorithm(String),
    #[error("digest `{0}` must have {1} lowercase hex digits after its algorithm")]
    Hex(String, usize),
}

impl Algorithm {
    /// The name in a digest and the store's directory for it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// A hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }
}

impl BlobDigest {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            BlobDigest::Sha256(_) => Algorithm::Sha256,
            BlobDigest::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// The digest of `bytes` by `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let mut hasher = algorithm.hasher();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The hex digits alone: a file name in the store.
    pub fn hex(&self) -> String {
        match self {
            BlobDigest::Sha256(d) => d.hex(),
            BlobDigest::Sha512(bytes) => hex::encode(bytes),
        }
    }

    /// Parses the hex digits alone, the algorithm told by their number.
    pub fn from_hex(hex: &str) -> Result<Self, BlobDigestError> {
        let algorithm = match hex.len() {
            128 => Algorithm::Sha512,
            _ => Algorithm::Sha256,
        };
        Self::parse_hex(algorithm, hex, hex)
    }

    fn parse_hex(algorithm: Algorithm, hex: &str, whole: &str) -> Result<Self, BlobDigestError> {
        let bad = || BlobDigestError::Hex(whole.to_owned(), algorithm.hex_len());
        let lower = hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex.len() != algorithm.hex_len() || !lower {
            return Err(bad());
        }
        match algorithm {
            Algorithm::Sha256 => Digest::from_hex(hex)
                .map(BlobDigest::Sha256)
                .map_err(|_| bad()),
            Algorithm::Sha512 => {
                let mut out = [0u8; 64];
                hex::decode_to_slice(hex, &mut out).map_err(|_| bad())?;
                Ok(BlobDigest::Sha512(out))
            }
        }
    }
}

impl From<Digest> for BlobDigest {
    fn from(d: Digest) -> Self {
        BlobDigest::Sha256(d)
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm().name(), self.hex())
    }
}

impl fmt::Debug for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for BlobDigest {
    type Err = BlobDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, hex) = match s.split_once(':') {
            Some(("sha256", hex)) => (Algorithm::Sha256, hex),
            Some(("sha512", hex)) => (Algorithm::Sha512, hex),
            _ => return Err(BlobDigestError::Algorithm(s.to_owned())),
        };
        Self::parse_hex(algorithm, hex, s)
    }
}

impl serde::Serialize for BlobDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BlobDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A running hash of either algorithm. `io::Write`, so a file can be copied
/// into it.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Hasher {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> BlobDigest {
        match self {
            Hasher::Sha256(h) => BlobDigest::Sha256(Digest::from_bytes(h.finalize().into())),
            Hasher::Sha512(h) => BlobDigest::Sha512(h.finalize().into()),
        }
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Algorithm::Sha256.hasher()
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_parse_print_and_hash_as_the_spec_writes_them() {
        let empty256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let empty512 = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
        assert_eq!(BlobDigest::of(Algorithm::Sha256, b"").to_string(), empty256);
        assert_eq!(BlobDigest::of(Algorithm::Sha512, b"").to_string(), empty512);
        for s in [empty256, empty512] {
            let d: BlobDigest = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
            assert_eq!(BlobDigest::from_hex(&d.hex()).unwrap(), d);
        }
        assert!(matches!(
            "md5:00".parse::<BlobDigest>(),
            Err(BlobDigestError::Algorithm(_))
        ));
        // A sha256 length after `sha512:`, and uppercase hex: both refused.
        assert!(matches!(
            format!("sha512:{}", &empty256[7..]).parse::<BlobDigest>(),
            Err(BlobDigestError::Hex(_, 128))
        ));
        assert!(
            empty512
                .to_uppercase()
                .replace("SHA512", "sha512")
                .parse::<BlobDigest>()
                .is_err()
        );
    }
}
