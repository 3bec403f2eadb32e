//! The custom sections Kelp adds to a Wasm file, named in one place.
//!
//! The manifest and the signature each live in a section of their own, and
//! each must know the other's: embedding a new manifest drops the signature
//! that covered the old one, and a signature hashes everything after its
//! section, manifest included. Both modules use this one, not each other.

/// Name of the custom section that holds the manifest.
pub const MANIFEST_SECTION: &str = "kelp-manifest";

/// Name of the custom section that holds the signatures.
pub const SIGNATURE_SECTION: &str = "signature";
