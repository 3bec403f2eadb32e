//! The checks every client-supplied name and value passes before it is
//! stored. The request and response bodies themselves live in
//! `kelp_core::api`, shared with the agent and the CLI.

pub use kelp_core::api::*;
use kelp_core::{ByteSize, Grants, MAX_I2C_ADDRESS, valid_label};
use kelp_registry::{ManifestRef, Reference};

use super::ApiError;

/// Most services in one release: far more than one device runs, few enough
/// that a target state stays small to send and to hash.
pub const MAX_SERVICES: usize = 64;
/// Most variables one service's `env` may set in a release.
pub const MAX_ENV_VARS: usize = 256;
/// Longest variable name.
pub const MAX_ENV_NAME: usize = 128;
/// Longest variable value: room for a certificate, not for a file system.
pub const MAX_ENV_VALUE: usize = 16 << 10;
/// Longest free-form name (device, token) and version string.
pub const MAX_TEXT: usize = 64;
/// Most log lines one read returns, and how many it returns by default.
pub const MAX_LOG_READ: i64 = 1000;
pub const DEFAULT_LOG_READ: i64 = 100;
/// Largest memory limit: a 32-bit linear memory cannot grow past 4 GiB.
pub const MAX_MEMORY: ByteSize = ByteSize::mib(4096);

/// A fleet name: a DNS label (lowercase letters, digits, `-` inside), since
/// it ends up in URLs and host names.
pub fn check_fleet_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "fleet name `{}` is not 1 to 63 lowercase letters, digits and inner `-`",
                shown(name)
            ),
        ))
    }
}

/// A device uuid: what the device chose, 1 to 64 letters, digits, `-`, `_`.
pub fn check_uuid(field: &str, uuid: &str) -> Result<(), ApiError> {
    let ok = !uuid.is_empty()
        && uuid.len() <= 64
        && uuid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "device uuid `{}` is not 1 to 64 letters, digits, `-` and `_`",
                shown(uuid)
            ),
        ))
    }
}

/// An id the server made (a token's, a release's): a UUID, so anything
/// else names nothing and is refused before it reaches the database.
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!("`{}` is not an id this server made", shown(id)),
        ))
    }
}

/// Free text shown to people (a device or token name): 1 to [`MAX_TEXT`]
/// characters, none of them control characters.
pub fn check_text(field: &str, text: &str) -> Result<(), ApiError> {
    let n = text.chars().count();
    if n == 0 || n > MAX_TEXT || text.chars().any(char::is_control) {
        return Err(ApiError::field(
            field,
            format!("`{field}` must be 1 to {MAX_TEXT} characters with no control characters"),
        ));
    }
    Ok(())
}

/// A word that appears in URLs (a version, an architecture): 1 to
/// [`MAX_TEXT`] of letters, digits, `.`, `_`, `+`, `-`.
pub fn check_word(field: &str, word: &str) -> Result<(), ApiError> {
    let ok = !word.is_empty()
        && word.len() <= MAX_TEXT
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "`{}` is not 1 to {MAX_TEXT} letters, digits, `.`, `_`, `+` and `-`",
                shown(word)
            ),
        ))
    }
}

/// A service name, by the rule manifests and devices use.
pub fn check_service_name(field: &str, name: &str) -> Result<(), ApiError> {
    if kelp_core::valid_service_name(name) {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "service name `{}` is not 1 to 63 lowercase letters, digits, `-` and `_`, starting with a letter or digit",
                shown(name)
            ),
        ))
    }
}

/// An environment variable name as POSIX shells accept it.
pub fn check_env_name(field: &str, name: &str) -> Result<(), ApiError> {
    let mut bytes = name.bytes();
    let ok = name.len() <= MAX_ENV_NAME
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "variable name `{}` is not a letter or `_` then letters, digits and `_` \
                 (at most {MAX_ENV_NAME})",
                shown(name)
            ),
        ))
    }
}

pub fn check_env_value(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_ENV_VALUE || value.contains('\0') {
        return Err(ApiError::field(
            field,
            format!("a variable's value must be at most {MAX_ENV_VALUE} bytes, without NUL"),
        ));
    }
    Ok(())
}

/// The first 64 characters of a client's string, to quote it in an error
/// without echoing a megabyte back.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks every field of a new release, naming the first at fault.
pub fn check_release(release: &NewRelease) -> Result<(), ApiError> {
    check_word("version", &release.version)?;
    if release.services.len() > MAX_SERVICES {
        return Err(ApiError::field(
            "services",
            format!("a release has at most {MAX_SERVICES} services"),
        ));
    }
    for (name, spec) in &release.services {
        let at = format!("services.{}", shown(name));
        check_service_name(&at, name)?;
        check_service(spec, &at)?;
    }
    Ok(())
}

fn check_service(spec: &ServiceSpec, at: &str) -> Result<(), ApiError> {
    let field = format!("{at}.image");
    let reference: Reference = spec.image.parse().map_err(|_| {
        ApiError::field(
            &field,
            format!(
                "image `{}` is not REGISTRY/REPOSITORY@sha256:DIGEST",
                shown(&spec.image)
            ),
        )
    })?;
    if !matches!(reference.reference, ManifestRef::Digest(_)) {
        return Err(ApiError::field(
            &field,
            format!(
                "image `{}` names a tag; pin it by digest (REPOSITORY@sha256:…) so every \
                 device runs the same file",
                shown(&spec.image)
            ),
        ));
    }
    if spec.env.len() > MAX_ENV_VARS {
        return Err(ApiError::field(
            format!("{at}.env"),
            format!("a service sets at most {MAX_ENV_VARS} variables"),
        ));
    }
    for (name, value) in &spec.env {
        let field = format!("{at}.env.{}", shown(name));
        check_env_name(&field, name)?;
        check_env_value(&field, value)?;
    }
    if spec.memory.bytes() == 0 || spec.memory > MAX_MEMORY {
        return Err(ApiError::field(
            format!("{at}.memory"),
            format!("memory must be more than 0 and at most {MAX_MEMORY}"),
        ));
    }
    check_grants(&spec.grants, &format!("{at}.grants"))?;
    if let Some(signer) = &spec.signer {
        let ok = signer.len() == 24
            && signer
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(ApiError::field(
                format!("{at}.signer"),
                format!(
                    "signer `{}` is not a key id (24 lowercase hex digits)",
                    shown(signer)
                ),
            ));
        }
    }
    Ok(())
}

fn check_grants(g: &Grants, at: &str) -> Result<(), ApiError> {
    for (kind, label) in g
        .gpio
        .keys()
        .map(|l| ("gpio", l))
        .chain(g.i2c.keys().map(|l| ("i2c", l)))
    {
        if !valid_label(label) {
            return Err(ApiError::field(
                format!("{at}.{kind}"),
                format!(
                    "label `{}` is not 1 to 63 letters, digits, `-` and `_`",
                    shown(label)
                ),
            ));
        }
    }
    for (label, grant) in &g.gpio {
        if grant.modes.is_empty() {
            return Err(ApiError::field(
                format!("{at}.gpio.{label}.modes"),
                "a GPIO grant names at least one mode",
            ));
        }
    }
    for (label, grant) in &g.i2c {
        if grant.addresses.is_empty() {
            return Err(ApiError::field(
                format!("{at}.i2c.{label}.addresses"),
                "an I2C grant names at least one address",
            ));
        }
        if let Some(a) = grant.addresses.iter().find(|&&a| a > MAX_I2C_ADDRESS) {
            return Err(ApiError::field(
                format!("{at}.i2c.{label}.addresses"),
                format!("I2C address {a:#x} is above {MAX_I2C_ADDRESS:#x}"),
            ));
        }
    }
    if let Err(e) = g.network.validate() {
        return Err(ApiError::field(format!("{at}.network"), e.to_string()));
    }
    Ok(())
}
