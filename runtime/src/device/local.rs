//! The local target file: the services a device runs without a cloud
//! (`kelpd --local FILE`), as balena's local mode, and the way to preload a
//! device. Only the file is read here; [`super::target`] runs what it says.
//!
//! ```toml
//! [services.hello]
//! module = "hello.wasm"          # relative to this file; or, from a registry:
//! # image = "registry.example.com/kelp/hello@sha256:…"
//! args = ["Kelp"]
//! env = { NAME = "Kelp" }
//! memory = "32MiB"               # default: the manifest's, else 64MiB
//! restart = "on-failure:3"       # always, never, on-failure:N;
//!                                # default: the manifest's, else always
//! stop-grace = "5s"              # default 10s
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kelp_core::{ByteSize, RestartPolicy};
use serde::Deserialize;

use super::target::TargetService;
use crate::service::{DEFAULT_MEMORY_LIMIT, DEFAULT_STOP_GRACE, ServiceSpec};

/// Largest target file read. A file for hundreds of services is a few tens of
/// KiB.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read target file `{path}`: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("target file `{path}` is larger than {MAX_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("target file `{path}` is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    #[serde(default)]
    services: BTreeMap<String, LocalService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LocalService {
    module: Option<PathBuf>,
    image: Option<String>,
    version: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    memory: Option<ByteSize>,
    restart: Option<RestartPolicy>,
    #[serde(default, with = "humantime_serde_opt")]
    stop_grace: Option<Duration>,
    /// `download-then-kill` (default), `kill-then-download` or `hand-over`.
    update: Option<kelp_core::api::UpdateStrategy>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration: {e}")))
    }
}

/// Reads a target file into service specs. Each service's `/data` is
/// `data_root/<name>`.
pub fn load(path: &Path, data_root: &Path) -> Result<Vec<TargetService>, LocalError> {
    let meta = std::fs::metadata(path).map_err(|error| LocalError::Read {
        path: path.to_owned(),
        error,
    })?;
    if meta.len() > MAX_FILE {
        return Err(LocalError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|error| LocalError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(&text, path, data_root)
}

pub fn parse(text: &str, path: &Path, data_root: &Path) -> Result<Vec<TargetService>, LocalError> {
    let invalid = |message: String| LocalError::Parse {
        path: path.to_owned(),
        message,
    };
    let file: TargetFile =
        toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    file.services
        .into_iter()
        .map(|(name, s)| {
            let (module, image) = match (s.module, s.image) {
                (Some(module), None) => (base.join(module), None),
                (None, Some(image)) => {
                    let image = image
                        .parse()
                        .map_err(|e| invalid(format!("service `{name}`: {e}")))?;
                    (PathBuf::new(), Some(image))
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(format!(
                        "service `{name}` has both `module` and `image`; give one"
                    )));
                }
                (None, None) => {
                    return Err(invalid(format!(
                        "service `{name}` needs `module = \"FILE.wasm\"` or `image = \"REGISTRY/REPOSITORY@sha256:…\"`"
                    )));
                }
            };
            let spec = ServiceSpec {
                module,
                // Without a version of its own, the image names it.
                version: s.version.or_else(|| image.as_ref().map(ToString::to_string)),
                args: s.args,
                env: s.env,
                // Settled by the manifest when the target is applied, if the
                // file names none.
                restart: s.restart.unwrap_or_default(),
                memory_limit: s.memory.unwrap_or(DEFAULT_MEMORY_LIMIT),
                data_dir: Some(data_root.join(&name)),
                stop_grace: s.stop_grace.unwrap_or(DEFAULT_STOP_GRACE),
                grants: None,
                update: s.update.unwrap_or_default(),
                name,
            };
            Ok(TargetService {
                spec,
                image,
                signer: None,
                restart: s.restart,
                memory: s.memory,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_services_with_defaults_and_relative_modules() {
        let specs = parse(
            r#"
            [services.hello]
            module = "hello.wasm"
            env = { NAME = "Kelp" }
            memory = "32MiB"
            restart = "on-failure:3"
            stop-grace = "1s 500ms"

            [services.idle]
            module = "/opt/idle.wasm"
            "#,
            Path::new("/etc/kelp/local.toml"),
            Path::new("/var/lib/kelp/services"),
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert!(specs.iter().all(|s| s.image.is_none()));
        let hello = &specs[0].spec;
        assert_eq!(hello.module, Path::new("/etc/kelp/hello.wasm"));
        assert_eq!(hello.memory_limit, ByteSize::mib(32));
        assert_eq!(hello.restart, RestartPolicy::OnFailure { max_restarts: 3 });
        assert_eq!(hello.stop_grace, Duration::from_millis(1500));
        assert_eq!(hello.env["NAME"], "Kelp");
        assert_eq!(
            hello.data_dir.as_deref(),
            Some(Path::new("/var/lib/kelp/services/hello"))
        );
        let idle = &specs[1].spec;
        assert_eq!(idle.module, Path::new("/opt/idle.wasm"));
        assert_eq!(idle.restart, RestartPolicy::Always);
        assert_eq!(idle.memory_limit, DEFAULT_MEMORY_LIMIT);
    }

    #[test]
    fn names_the_field_at_fault() {
        let err = parse(
            "[services.x]\nmodule = \"x.wasm\"\nrestart = \"sometimes\"\n",
            Path::new("t.toml"),
            Path::new("/d"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.toml") && err.contains("sometimes"), "{err}");
        let err = parse(
            "[services.x]\nmodul = \"x.wasm\"\n",
            Path::new("t.toml"),
            Path::new("/d"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("modul"), "{err}");
    }

    #[test]
    fn an_image_is_pinned_by_digest() {
        let digest = kelp_registry::oci::digest_of(b"manifest");
        let image = format!("127.0.0.1:8080/kelp/hello@{digest}");
        let specs = parse(
            &format!("[services.hello]\nimage = {image:?}\nmemory = \"8MiB\"\n"),
            Path::new("/etc/kelp/local.toml"),
            Path::new("/d"),
        )
        .unwrap();
        let found = specs[0].image.as_ref().unwrap();
        assert_eq!((found.digest(), found.to_string()), (digest, image));
        assert_eq!(specs[0].spec.memory_limit, ByteSize::mib(8));

        let parse_err = |text: &str| {
            parse(text, Path::new("t.toml"), Path::new("/d"))
                .unwrap_err()
                .to_string()
        };
        let err = parse_err("[services.x]\nimage = \"127.0.0.1:8080/kelp/hello:v1\"\n");
        assert!(
            err.contains("t.toml")
                && err.contains("service `x`")
                && err.contains("pin it by digest"),
            "{err}"
        );
        let err = parse_err(&format!(
            "[services.x]\nmodule = \"x.wasm\"\nimage = \"h/x@{digest}\"\n"
        ));
        assert!(err.contains("both `module` and `image`"), "{err}");
        let err = parse_err("[services.x]\nargs = []\n");
        assert!(err.contains("needs `module"), "{err}");
    }
}
