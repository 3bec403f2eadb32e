//! What can go wrong for a device of a fleet.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read config file `{path}`: {error}")]
    ReadConfig {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file `{path}` is not valid: {message}")]
    Config { path: PathBuf, message: String },
    #[error("`{path}`: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("`{path}` is damaged: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error(
        "this device is not registered yet, and the config file gives no `provisioning-key` to register it with"
    )]
    NoProvisioningKey,
    #[error("cloud {url}: {message}")]
    Cloud { url: String, message: String },
    /// The cloud refused what was sent as wrong (a 4xx other than 401,
    /// 408 and 429): sending it again would be refused again.
    #[error("cloud {url} refused it: {message}")]
    Rejected { url: String, message: String },
    #[error(
        "the cloud registered this device into fleet `{got}`, but the config file says `{want}`"
    )]
    WrongFleet { want: String, got: String },
    #[error(
        "the cloud refused the device key (401): the device was re-registered elsewhere, or its key revoked"
    )]
    KeyRefused,
}
