//! The config file of `kelpd --config` (its format is in the `agent`
//! module's documentation).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::AgentError;
use super::rollout::DEFAULT_HEALTH_WINDOW;

/// Largest config file read.
const MAX_CONFIG: u64 = 64 << 10;
/// The config file of `kelpd --config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    cloud: String,
    provisioning_key: Option<String>,
    fleet: Option<String>,
    device_name: Option<String>,
    #[serde(default)]
    trusted_keys: Vec<PathBuf>,
    hardware_map: Option<PathBuf>,
    hardware: Option<String>,
    data_dir: Option<PathBuf>,
    health_window: Option<String>,
    log_buffer: Option<kelp_core::ByteSize>,
    registries: Option<Vec<String>>,
}

/// A device's config, its paths made relative to the config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The cloud's base URL, without a trailing `/`.
    pub cloud: String,
    pub provisioning_key: Option<String>,
    pub fleet: Option<String>,
    pub device_name: Option<String>,
    pub trusted_keys: Vec<PathBuf>,
    pub hardware_map: Option<PathBuf>,
    pub hardware: Option<kelp_hostcalls::BackendKind>,
    pub data_dir: Option<PathBuf>,
    /// How long a new target must run without a service failing.
    pub health_window: Duration,
    /// Bytes of log lines kept on disk for the cloud.
    pub log_buffer: u64,
    /// The registries (`host[:port]`, as an image names them) the device
    /// pulls images from: the config's `registries`, else its cloud's.
    pub registries: Vec<String>,
}

/// Log lines kept on disk for the cloud unless the config file says.
pub const DEFAULT_LOG_BUFFER: u64 = 8 << 20;

impl Config {
    /// The cloud's registry as a pulled image's reference names it:
    /// `http(s)://host[:port]`.
    pub fn registry(&self) -> Option<String> {
        let url = reqwest::Url::parse(&self.cloud).ok()?;
        Some(url.origin().ascii_serialization())
    }

    pub fn load(path: &Path) -> Result<Config, AgentError> {
        let read = |error| AgentError::ReadConfig {
            path: path.to_owned(),
            error,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > MAX_CONFIG {
            return Err(AgentError::Config {
                path: path.to_owned(),
                message: format!("it is larger than {MAX_CONFIG} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, AgentError> {
        let invalid = |message: String| AgentError::Config {
            path: path.to_owned(),
            message,
        };
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        let cloud = file.cloud.trim_end_matches('/').to_owned();
        match reqwest::Url::parse(&cloud) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => {
                return Err(invalid(format!(
                    "`cloud = {cloud:?}` is not an http or https URL"
                )));
            }
            Err(e) => return Err(invalid(format!("`cloud = {cloud:?}` is not a URL: {e}"))),
        }
        let hardware = file
            .hardware
            .map(|h| {
                h.parse()
                    .map_err(|e: String| invalid(format!("`hardware`: {e}")))
            })
            .transpose()?;
        let health_window = match &file.health_window {
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| invalid(format!("`health-window = {text:?}`: {e}")))?,
            None => DEFAULT_HEALTH_WINDOW,
        };
        let registries = match file.registries {
            Some(list) => list
                .iter()
                .map(|r| {
                    registry_host(r).ok_or_else(|| {
                        invalid(format!(
                            "`registries`: {r:?} is not a registry's host[:port]"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => registry_host(&cloud).into_iter().collect(),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Config {
            cloud,
            provisioning_key: file.provisioning_key,
            fleet: file.fleet,
            device_name: file.device_name,
            trusted_keys: file.trusted_keys.iter().map(|k| base.join(k)).collect(),
            hardware_map: file.hardware_map.map(|m| base.join(m)),
            hardware,
            data_dir: file.data_dir.map(|d| base.join(d)),
            health_window,
            log_buffer: file.log_buffer.map_or(DEFAULT_LOG_BUFFER, |b| b.bytes()),
            registries,
        })
    }
}

/// `host[:port]` of a registry named as `host[:port]` or by its URL.
fn registry_host(name: &str) -> Option<String> {
    let url = match name.contains("://") {
        true => reqwest::Url::parse(name).ok()?,
        false => reqwest::Url::parse(&format!("https://{name}")).ok()?,
    };
    if !matches!(url.scheme(), "http" | "https") || !matches!(url.path(), "" | "/") {
        return None;
    }
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_config_relative_to_its_file() {
        let config = Config::parse(
            r#"
            cloud = "http://127.0.0.1:8080/"
            provisioning-key = "kelp_pk_00"
            trusted-keys = ["keys/a.pub", "/etc/kelp/b.pub"]
            hardware = "sim"
            data-dir = "var"
            "#,
            Path::new("/etc/kelp/device.toml"),
        )
        .unwrap();
        assert_eq!(config.cloud, "http://127.0.0.1:8080");
        assert_eq!(config.registry().as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(
            config.trusted_keys,
            [
                PathBuf::from("/etc/kelp/keys/a.pub"),
                PathBuf::from("/etc/kelp/b.pub")
            ]
        );
        assert_eq!(config.hardware, Some(kelp_hostcalls::BackendKind::Sim));
        assert_eq!(config.data_dir, Some(PathBuf::from("/etc/kelp/var")));
        // Without `registries`, the cloud's own.
        assert_eq!(config.registries, ["127.0.0.1:8080"]);
        let config = Config::parse(
            "cloud = \"https://kelp.example.com\"\nregistries = [\"registry.example.com\", \"http://10.0.0.2:5000/\"]\n",
            Path::new("d.toml"),
        )
        .unwrap();
        assert_eq!(config.registries, ["registry.example.com", "10.0.0.2:5000"]);
    }

    #[test]
    fn a_bad_config_names_what_is_wrong() {
        let err = |text: &str| {
            Config::parse(text, Path::new("d.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = err("cloud = \"ftp://x\"\n");
        assert!(e.contains("d.toml") && e.contains("not an http"), "{e}");
        let e = err("cloud = \"http://x\"\nprovisioning_key = \"k\"\n");
        assert!(e.contains("provisioning_key"), "{e}");
        let e = err("cloud = \"http://x\"\nhardware = \"gpio\"\n");
        assert!(e.contains("`hardware`") && e.contains("gpio"), "{e}");
        let e = err("cloud = \"http://x\"\nregistries = [\"ftp://r\"]\n");
        assert!(e.contains("`registries`") && e.contains("ftp://r"), "{e}");
        let e = err("provisioning-key = \"k\"\n");
        assert!(e.contains("cloud"), "{e}");
    }
}
