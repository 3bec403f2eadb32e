//! The fleet API as the CLI meets it: which cloud to talk to and with which
//! API token (stored by `kelp login`, overridden by `KELP_URL` and
//! `KELP_TOKEN`), called through `kelp-client`, whose every failure reads as
//! one line that names the problem. The token is sent, never printed.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kelp_client::{Client, StatusCode, Url};
use serde::{Deserialize, Serialize};

/// Largest config file read: it holds a URL and a token.
const MAX_CONFIG_SIZE: u64 = 64 << 10;

/// What `kelp login` stores: the cloud's URL and an API token for it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub url: String,
    pub token: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("url", &self.url)
            .field("token", &"…")
            .finish()
    }
}

/// `$XDG_CONFIG_HOME/kelp/config.toml`, else `~/.config/kelp/config.toml`.
pub fn config_path() -> anyhow::Result<PathBuf> {
    // The XDG spec says a relative XDG_CONFIG_HOME is to be ignored.
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Ok(PathBuf::from(dir).join("kelp").join("config.toml"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither XDG_CONFIG_HOME nor HOME is set, so there is no config directory")?;
    Ok(PathBuf::from(home)
        .join(".config")
        .join("kelp")
        .join("config.toml"))
}

/// The stored login, if there is one.
pub fn stored() -> anyhow::Result<Option<Login>> {
    let path = config_path()?;
    let context = || format!("cannot read `{}`", path.display());
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(context),
    };
    if len > MAX_CONFIG_SIZE {
        bail!(
            "`{}` is larger than {MAX_CONFIG_SIZE} bytes; it is not a kelp config",
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path).with_context(context)?;
    let login = toml::from_str(&text).with_context(|| {
        format!(
            "`{}` is not a kelp login; run `kelp login` again",
            path.display()
        )
    })?;
    Ok(Some(login))
}

/// Stores `login` where [`config_path`] says: readable by its owner only,
/// written whole or not at all.
pub fn store(login: &Login) -> anyhow::Result<PathBuf> {
    let path = config_path()?;
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let text = toml::to_string(login).context("cannot encode the login")?;
    kelp_core::fsutil::write_atomic_private(&path, text.as_bytes())
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(path)
}

/// Removes the stored login; where it was, if there was one.
pub fn forget() -> anyhow::Result<Option<PathBuf>> {
    let path = config_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot remove `{}`", path.display())),
    }
}

/// The login fleet commands use: the stored one, with `KELP_URL` and
/// `KELP_TOKEN` over it.
pub fn session() -> anyhow::Result<Login> {
    let from_env = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (env_url, env_token) = (from_env("KELP_URL"), from_env("KELP_TOKEN"));
    let stored = if env_url.is_some() && env_token.is_some() {
        None
    } else {
        stored()?
    };
    let url = env_url.or_else(|| stored.as_ref().map(|l| l.url.clone()));
    let token = env_token.or_else(|| stored.map(|l| l.token));
    match (url, token) {
        (Some(url), Some(token)) => Ok(Login { url, token }),
        _ => bail!(
            "not logged in to a Kelp cloud: run `kelp login URL --token TOKEN` \
             (or set KELP_URL and KELP_TOKEN)"
        ),
    }
}

/// The cloud's URL, checked: http or https, and no password in it (the
/// token goes in `--token`, where it is never echoed).
pub fn parse_url(url: &str) -> anyhow::Result<Url> {
    let parsed = kelp_client::parse_url(url);
    if let Ok(u) = Url::parse(url)
        && (!u.username().is_empty() || u.password().is_some())
    {
        bail!("the cloud's URL must not hold credentials; give the API token with --token");
    }
    Ok(parsed?)
}

/// The fleet API of the cloud of the current [`session`].
pub fn from_session() -> anyhow::Result<Client> {
    let login = session()?;
    Ok(Client::new(&login.url, login.token)?)
}

/// A call's error as the CLI says it: a refused token says how to log in
/// again.
pub trait ForUser<T> {
    fn for_user(self) -> anyhow::Result<T>;
}

impl<T> ForUser<T> for Result<T, kelp_client::Error> {
    fn for_user(self) -> anyhow::Result<T> {
        self.map_err(|e| match e.status() {
            Some(StatusCode::UNAUTHORIZED) => {
                anyhow::anyhow!("{e}; run `kelp login` with a live token")
            }
            _ => e.into(),
        })
    }
}
