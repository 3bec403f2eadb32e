//! The service manifest: what a publisher signs about a service besides its
//! code.
//!
//! Authors write it as `kelp.toml` beside the service's `Cargo.toml`:
//!
//! ```toml
//! name = "hello"
//! version = "1.0.0"
//! kind = "component"        # or "core-module"
//! restart = "on-failure:3"  # always (default), never, on-failure:N
//! memory = "32MiB"          # default 64MiB
//! env = { GREETING = "hi" }
//!
//! [grants.gpio.led]          # the pin the device labels `led`
//! modes = ["output"]         # input, output, edges
//! [grants.i2c.sensors]       # the bus the device labels `sensors`
//! addresses = [0x48]         # the devices on it the service talks to
//!
//! [grants.network]           # see `network` for the forms a destination takes
//! connect = ["broker.local:1883", "*.example.org:443"]
//! ```
//!
//! `kelp sign --manifest kelp.toml` embeds it in the Wasm file as a custom
//! section named [`MANIFEST_SECTION`] holding the manifest as UTF-8 JSON, and
//! then signs the whole file, manifest included. JSON rather than TOML inside
//! the file because every language and tool that inspects Wasm already reads
//! JSON.
//!
//! The signature format leaves the 8-byte Wasm header unsigned, so the
//! manifest states the [`WasmKind`] and a verifier checks that the file's
//! header agrees ([`Manifest::check_kind`]).
//!
//! Unknown fields are refused, in `kelp.toml` and in an embedded manifest:
//! a typo must not silently drop a setting, and a device must not run a
//! service whose signed manifest asks for something it does not understand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::network::{DestinationError, NetworkGrant};
use crate::sections::{MANIFEST_SECTION, SIGNATURE_SECTION};
use crate::wasm::{WasmFile, custom_section};
use crate::{ByteSize, RestartPolicy, WasmError, WasmKind};

/// Largest embedded manifest (and `kelp.toml`) read. A manifest is a few
/// hundred bytes; 64 KiB leaves room for a long env table while keeping a
/// hostile file from making a device parse megabytes of JSON before its
/// signature is even checked.
pub const MAX_MANIFEST_SIZE: usize = 64 << 10;

/// Longest service name: a DNS label, since names end up in host names,
/// log prefixes and file names.
pub const MAX_NAME_LEN: usize = 63;

/// Memory limit of a service whose manifest names none.
pub const DEFAULT_MEMORY: ByteSize = ByteSize::mib(64);

/// What a publisher says about a service: who it is, what it may touch, and
/// how the device runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    /// Service name: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// The publisher's version string (free form, e.g. `1.2.0`).
    pub version: String,
    /// Whether the file is a component or a core module.
    pub kind: WasmKind,
    /// Hardware and network the service asks for; a device grants at most
    /// this, and only what its own hardware map allows.
    #[serde(default)]
    pub grants: Grants,
    /// Restart policy (default `always`).
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Memory limit (default 64 MiB).
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Environment the service starts with; fleet and device variables may
    /// override it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_memory() -> ByteSize {
    DEFAULT_MEMORY
}

/// Requested grants: pins and buses by the labels a device's hardware map
/// gives them, and network destinations. Each table may be empty or absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Grants {
    /// `[grants.gpio.<label>]`: GPIO pins.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::gpio_grants))]
    pub gpio: BTreeMap<String, GpioGrant>,
    /// `[grants.i2c.<label>]`: I2C buses.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::i2c_grants))]
    pub i2c: BTreeMap<String, I2cGrant>,
    /// `[grants.network]`: hosts and ports, and whether it answers HTTP.
    #[serde(default, skip_serializing_if = "NetworkGrant::is_empty")]
    pub network: NetworkGrant,
}

impl Grants {
    fn validate(&self) -> Result<(), ManifestError> {
        let labels = self.gpio.keys().chain(self.i2c.keys());
        if let Some(bad) = labels.into_iter().find(|l| !valid_label(l)) {
            return Err(ManifestError::Label(bad.clone()));
        }
        for (label, grant) in &self.gpio {
            if grant.modes.is_empty() {
                return Err(ManifestError::NoModes {
                    label: label.clone(),
                });
            }
        }
        for (label, grant) in &self.i2c {
            if grant.addresses.is_empty() {
                return Err(ManifestError::NoAddresses {
                    label: label.clone(),
                });
            }
            if let Some(&address) = grant.addresses.iter().find(|&&a| a > MAX_I2C_ADDRESS) {
                return Err(ManifestError::BadAddress {
                    label: label.clone(),
                    address,
                });
            }
        }
        self.network.validate()?;
        Ok(())
    }
}

/// Whether `name` may name a service: 1 to [`MAX_NAME_LEN`] lowercase
/// letters, digits, `-` and `_`, starting with a letter or digit. The same
/// rule everywhere a service is named: manifests, target files, releases
/// and the supervisor.
pub fn valid_service_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

/// Whether `label` may name a pin or bus: what a device's hardware
/// map and a manifest can both spell.
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_NAME_LEN
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// One requested GPIO pin: what the service will do with it.
///
/// ```toml
/// [grants.gpio.button]
/// modes = ["input", "edges"]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpioGrant {
    /// At least one.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::gpio_modes))]
    pub modes: BTreeSet<GpioMode>,
}

/// A way of using a GPIO pin, as a manifest asks for it and a device's
/// hardware map allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GpioMode {
    /// Read the pin's level.
    Input,
    /// Drive the pin's level.
    Output,
    /// Wait for rising and falling edges (implies reading).
    Edges,
}

impl fmt::Display for GpioMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GpioMode::Input => "input",
            GpioMode::Output => "output",
            GpioMode::Edges => "edges",
        })
    }
}

/// One requested I2C bus: the device addresses the service will talk to.
///
/// ```toml
/// [grants.i2c.sensors]
/// addresses = [0x48]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct I2cGrant {
    /// At least one; 7-bit (up to 0x7f) or 10-bit (up to 0x3ff).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::i2c_addresses))]
    pub addresses: BTreeSet<u16>,
}

/// Highest I2C address there is (10-bit addressing).
pub const MAX_I2C_ADDRESS: u16 = 0x3ff;

/// Why a manifest cannot be read, embedded or trusted.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Wasm(#[from] WasmError),
    #[error("manifest is {size} bytes, more than the limit of {MAX_MANIFEST_SIZE}")]
    TooLarge { size: usize },
    #[error("invalid manifest, line {line}: {message}")]
    Toml { line: usize, message: String },
    #[error("invalid `{MANIFEST_SECTION}` section: {0}")]
    Json(#[from] serde_json::Error),
    #[error("more than one `{MANIFEST_SECTION}` section")]
    Duplicate,
    #[error(
        "invalid service name `{0}`: use 1 to {MAX_NAME_LEN} lowercase letters, digits, `-` and `_`, starting with a letter or digit"
    )]
    Name(String),
    #[error("manifest has an empty version")]
    Version,
    #[error(
        "grant `gpio.{label}` names no modes: ask for some of \"input\", \"output\", \"edges\""
    )]
    NoModes { label: String },
    #[error("grant `i2c.{label}` names no addresses")]
    NoAddresses { label: String },
    #[error(
        "grant `i2c.{label}` asks for address {address:#x}, above the highest I2C address {MAX_I2C_ADDRESS:#x}"
    )]
    BadAddress { label: String, address: u16 },
    #[error("invalid grant label `{0}`: use 1 to {MAX_NAME_LEN} letters, digits, `-` and `_`")]
    Label(String),
    #[error("grant `network`: {0}")]
    Network(#[from] DestinationError),
    #[error("manifest says {manifest} but file is a {file}")]
    KindMismatch { manifest: WasmKind, file: WasmKind },
}

impl Manifest {
    /// Parses and checks `kelp.toml` text.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        if text.len() > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge { size: text.len() });
        }
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            let start = e.span().map_or(0, |span| span.start.min(text.len()));
            ManifestError::Toml {
                line: 1 + text.as_bytes()[..start]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count(),
                // One line: the error's own display adds a multi-line
                // snippet of the file.
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The bytes stored in the [`MANIFEST_SECTION`] section.
    pub fn to_section_bytes(&self) -> Vec<u8> {
        // A struct of strings, maps and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn from_section_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge { size: bytes.len() });
        }
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if !valid_service_name(&self.name) {
            return Err(ManifestError::Name(self.name.clone()));
        }
        if self.version.trim().is_empty() {
            return Err(ManifestError::Version);
        }
        self.grants.validate()
    }

    /// Checks that the manifest's `kind` is what the file's header says.
    pub fn check_kind(&self, file: WasmKind) -> Result<(), ManifestError> {
        if self.kind != file {
            return Err(ManifestError::KindMismatch {
                manifest: self.kind,
                file,
            });
        }
        Ok(())
    }
}

/// Returns `module` with `manifest` in its [`MANIFEST_SECTION`] section,
/// replacing any manifest already there.
///
/// Any signature is removed too: it covered the old manifest, so it could
/// not verify any more. Sign the result.
pub fn embed(module: &[u8], manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    let file = WasmFile::parse(module)?;
    manifest.check_kind(file.kind)?;
    let section = custom_section(MANIFEST_SECTION, &manifest.to_section_bytes());
    let mut out = Vec::with_capacity(module.len() + section.len());
    out.extend_from_slice(file.header);
    for s in &file.sections {
        if !s.is_custom(MANIFEST_SECTION) && !s.is_custom(SIGNATURE_SECTION) {
            out.extend_from_slice(s.raw);
        }
    }
    out.extend_from_slice(&section);
    Ok(out)
}

/// The manifest embedded in `module`, if it has one. Does not check it
/// against the header; [`Manifest::check_kind`] does.
pub fn extract(module: &[u8]) -> Result<Option<Manifest>, ManifestError> {
    extract_from(&WasmFile::parse(module)?)
}

pub(crate) fn extract_from(file: &WasmFile<'_>) -> Result<Option<Manifest>, ManifestError> {
    let mut found = None;
    for section in &file.sections {
        if let Some((MANIFEST_SECTION, data)) = section.custom {
            if found.is_some() {
                return Err(ManifestError::Duplicate);
            }
            found = Some(data);
        }
    }
    found.map(Manifest::from_section_bytes).transpose()
}

/// Reads and checks a `kelp.toml` file.
pub fn read_manifest_file(path: &Path) -> Result<Manifest, ManifestFileError> {
    let io = |source| ManifestFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_MANIFEST_SIZE as u64 {
        return Err(ManifestFileError::Invalid {
            path: path.display().to_string(),
            source: ManifestError::TooLarge {
                size: usize::try_from(len).unwrap_or(usize::MAX),
            },
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    Manifest::from_toml(&text).map_err(|source| ManifestFileError::Invalid {
        path: path.display().to_string(),
        source,
    })
}

/// Why a `kelp.toml` file cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestFileError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}`: {source}")]
    Invalid { path: String, source: ManifestError },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::tests::{EMPTY_COMPONENT, EMPTY_MODULE};

    const TOML: &str = r#"
        name = "hello"
        version = "1.0.0"
        kind = "component"
        restart = "on-failure:3"
        memory = "32MiB"
        env = { GREETING = "hi" }

        [grants.gpio.led]
        modes = ["output"]
        [grants.gpio.button]
        modes = ["input", "edges"]
        [grants.i2c.sensors]
        addresses = [0x48, 0x49]
    "#;

    #[test]
    fn reads_kelp_toml_with_defaults() {
        let m = Manifest::from_toml(TOML).unwrap();
        assert_eq!(m.kind, WasmKind::Component);
        assert_eq!(m.restart, RestartPolicy::OnFailure { max_restarts: 3 });
        assert_eq!(m.memory, ByteSize::mib(32));
        assert_eq!(m.env["GREETING"], "hi");
        assert_eq!(
            m.grants.gpio["button"].modes,
            BTreeSet::from([GpioMode::Input, GpioMode::Edges])
        );
        assert_eq!(
            m.grants.i2c["sensors"].addresses,
            BTreeSet::from([0x48, 0x49])
        );
        assert!(m.grants.network.is_empty());
    }

    #[test]
    fn network_grants_need_ports_and_survive_embedding() {
        let with_net = format!(
            "{TOML}\n[grants.network]\nconnect = [\"broker.local:1883\"]\nserve-http = true\n"
        );
        let m = Manifest::from_toml(&with_net).unwrap();
        assert_eq!(m.grants.network.connect[0].to_string(), "broker.local:1883");
        assert!(m.grants.network.serve_http);
        let json = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let no_port = with_net.replace("broker.local:1883", "broker.local");
        let e = Manifest::from_toml(&no_port).unwrap_err().to_string();
        assert!(e.contains("`broker.local` names no port"), "{e}");

        let bare =
            Manifest::from_toml("name = \"x\"\nversion = \"1\"\nkind = \"core-module\"").unwrap();
        assert_eq!(bare.memory, DEFAULT_MEMORY);
        assert_eq!(bare.restart, RestartPolicy::Always);
        assert_eq!(bare.grants, Grants::default());
    }

    #[test]
    fn refuses_typos_bad_names_and_unknown_kinds() {
        let err =
            Manifest::from_toml("name = \"x\"\nversion = \"1\"\nkind = \"component\"\nmemroy = 1")
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with("invalid manifest, line 4: unknown field `memroy`"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let err = Manifest::from_toml(&TOML.replace("\"hello\"", "\"Hello World\"")).unwrap_err();
        assert!(err.to_string().contains("`Hello World`"), "{err}");
        let err = Manifest::from_toml(&TOML.replace("\"component\"", "\"container\"")).unwrap_err();
        assert!(err.to_string().contains("container"), "{err}");
        let err = Manifest::from_toml(&TOML.replace("[grants.i2c.sensors]", "[grants.usb.x]"))
            .unwrap_err();
        assert!(err.to_string().contains("usb"), "{err}");
    }

    #[test]
    fn service_names_are_safe_directory_names() {
        for good in ["hello", "a", "sensor-1", "x_y", "0day"] {
            assert!(valid_service_name(good), "{good}");
        }
        for bad in ["", "..", "a/b", "Hello", "-x", "a b", &"x".repeat(64)] {
            assert!(!valid_service_name(bad), "{bad}");
        }
    }

    #[test]
    fn refuses_grants_that_ask_for_nothing_or_the_impossible() {
        let cases = [
            (
                r#"modes = ["output"]"#,
                "modes = []",
                "grant `gpio.led` names no modes",
            ),
            (
                r#"modes = ["output"]"#,
                r#"modes = ["pwm"]"#,
                "unknown variant `pwm`",
            ),
            (
                "addresses = [0x48, 0x49]",
                "addresses = []",
                "grant `i2c.sensors` names no addresses",
            ),
            (
                "addresses = [0x48, 0x49]",
                "addresses = [0x400]",
                "address 0x400, above the highest I2C address 0x3ff",
            ),
            (
                "[grants.gpio.led]",
                "[grants.gpio.\"../led\"]",
                "invalid grant label `../led`",
            ),
        ];
        for (from, to, expected) in cases {
            let err = Manifest::from_toml(&TOML.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{to}: {err}");
        }
    }

    #[test]
    fn embeds_replaces_and_extracts() {
        let mut m = Manifest::from_toml(TOML).unwrap();
        assert_eq!(extract(EMPTY_COMPONENT).unwrap(), None);
        let once = embed(EMPTY_COMPONENT, &m).unwrap();
        assert_eq!(extract(&once).unwrap(), Some(m.clone()));

        m.version = "2.0.0".into();
        let twice = embed(&once, &m).unwrap();
        assert_eq!(extract(&twice).unwrap(), Some(m));
        let file = WasmFile::parse(&twice).unwrap();
        assert_eq!(file.sections.len(), 1, "the old manifest was replaced");
    }

    #[test]
    fn will_not_embed_a_manifest_of_the_other_kind() {
        let m = Manifest::from_toml(TOML).unwrap();
        let err = embed(EMPTY_MODULE, &m).unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest says component but file is a core module"
        );
    }

    #[test]
    fn refuses_two_manifests_and_oversized_ones() {
        let m = Manifest::from_toml(TOML).unwrap();
        let mut bytes = embed(EMPTY_COMPONENT, &m).unwrap();
        bytes.extend(custom_section(MANIFEST_SECTION, &m.to_section_bytes()));
        assert!(matches!(extract(&bytes), Err(ManifestError::Duplicate)));

        let mut big = EMPTY_COMPONENT.to_vec();
        big.extend(custom_section(
            MANIFEST_SECTION,
            &vec![b' '; MAX_MANIFEST_SIZE + 1],
        ));
        assert!(matches!(extract(&big), Err(ManifestError::TooLarge { .. })));
    }
}
