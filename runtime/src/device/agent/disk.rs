//! The files of a device of a fleet, under `<data-dir>/device/`: its uuid,
//! its device key, the rollout state and the log outbox's directory.

use std::path::{Path, PathBuf};

use kelp_core::fsutil;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::AgentError;

/// Longest a device key or uuid file may be.
const MAX_SMALL_FILE: u64 = 4096;

/// The files of a device's agent under its data directory.
#[derive(Clone, Debug)]
pub struct DeviceFiles {
    dir: PathBuf,
}

impl DeviceFiles {
    pub fn open(data_dir: &Path) -> Result<DeviceFiles, AgentError> {
        let dir = data_dir.join("device");
        std::fs::create_dir_all(&dir).map_err(|error| AgentError::Io {
            path: dir.clone(),
            error,
        })?;
        Ok(DeviceFiles { dir })
    }

    /// This device's uuid, made up and kept on first use.
    pub fn uuid(&self) -> Result<String, AgentError> {
        let path = self.dir.join("uuid");
        if let Some(text) = read_small(&path)? {
            let uuid = text.trim();
            if uuid.is_empty()
                || uuid.len() > 64
                || !uuid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(AgentError::Damaged {
                    path,
                    message: "it does not hold a device uuid".to_owned(),
                });
            }
            return Ok(uuid.to_owned());
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        fsutil::write_atomic(&path, format!("{uuid}\n").as_bytes())
            .map_err(|error| AgentError::Io { path, error })?;
        Ok(uuid)
    }

    /// The device key, if the device has registered.
    pub fn key(&self) -> Result<Option<String>, AgentError> {
        let path = self.dir.join("key");
        Ok(read_small(&path)?
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty()))
    }

    pub fn save_key(&self, key: &str) -> Result<(), AgentError> {
        let path = self.dir.join("key");
        fsutil::write_atomic_private(&path, format!("{key}\n").as_bytes())
            .map_err(|error| AgentError::Io { path, error })
    }

    /// What the device last knew of its targets (`state.json`), or the
    /// default before the first target.
    pub fn state<T: DeserializeOwned + Default>(&self) -> Result<T, AgentError> {
        let path = self.dir.join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
            Err(error) => return Err(AgentError::Io { path, error }),
        };
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Damaged {
            path,
            message: e.to_string(),
        })
    }

    /// Keeps `state` for the next start, written whole and atomically.
    pub fn save_state(&self, state: &impl Serialize) -> Result<(), AgentError> {
        let path = self.dir.join("state.json");
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| AgentError::Io {
            path: path.clone(),
            error: std::io::Error::other(e),
        })?;
        fsutil::write_atomic(&path, &bytes).map_err(|error| AgentError::Io { path, error })
    }

    /// Where log lines wait for the cloud.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

fn read_small(path: &Path) -> Result<Option<String>, AgentError> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(AgentError::Io {
                path: path.to_owned(),
                error,
            });
        }
    };
    let mut text = String::new();
    file.take(MAX_SMALL_FILE)
        .read_to_string(&mut text)
        .map_err(|error| AgentError::Io {
            path: path.to_owned(),
            error,
        })?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uuid_is_made_once_and_the_key_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = DeviceFiles::open(dir.path()).unwrap();
        let uuid = store.uuid().unwrap();
        assert_eq!(DeviceFiles::open(dir.path()).unwrap().uuid().unwrap(), uuid);
        assert_eq!(store.key().unwrap(), None);
        store.save_key("kelp_dk_00").unwrap();
        assert_eq!(store.key().unwrap().as_deref(), Some("kelp_dk_00"));
        let mode = std::fs::metadata(dir.path().join("device/key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("device/uuid"), "../../etc\n").unwrap();
        let e = store.uuid().unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }
}
