//! What can go wrong talking to a registry.

use std::path::PathBuf;

use kelp_core::Digest;
use reqwest::StatusCode;

use crate::names::NameError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "`{0}` is not REGISTRY/REPOSITORY[:TAG] or REGISTRY/REPOSITORY@sha256:… (e.g. 127.0.0.1:8080/hello:v1)"
    )]
    Reference(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: the registry answered {status}{message}")]
    Status {
        what: String,
        status: StatusCode,
        message: String,
    },
    #[error("{what}: the content has digest {actual}, not {expected}")]
    Digest {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: the registry sent more than the {size} bytes the manifest declares")]
    TooLong { what: String, size: u64 },
    #[error("{what}: the registry sent {got} of the {size} bytes the manifest declares")]
    TooShort { what: String, got: u64, size: u64 },
    #[error("{0}")]
    Manifest(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(super) type Result<T, E = ClientError> = std::result::Result<T, E>;
