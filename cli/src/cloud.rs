//! The fleet API as the CLI meets it: which cloud to talk to and with which
//! API token (stored by `kelp login`, overridden by `KELP_URL` and
//! `KELP_TOKEN`), and requests whose every failure reads as one line that
//! names the problem. The token is sent, never printed.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long to wait for the cloud to accept a connection: long enough for
/// a slow link, short enough that a wrong address fails while the user
/// waits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest one request may take. Every fleet API answer is small; a cloud
/// that takes longer is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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
    let parsed = Url::parse(url)
        .with_context(|| format!("`{url}` is not a URL (like http://127.0.0.1:8080)"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        bail!("`{url}` is not an http:// or https:// URL of a Kelp cloud");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        bail!("the cloud's URL must not hold credentials; give the API token with --token");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("the cloud's URL `{url}` must not have a query or fragment");
    }
    Ok(parsed)
}

/// An error body of the fleet API.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    field: Option<String>,
}

/// A client of one cloud's fleet API, holding its token.
pub struct Cloud {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl Cloud {
    /// A client for the cloud of the current [`session`].
    pub fn from_session() -> anyhow::Result<Cloud> {
        let login = session()?;
        Cloud::new(&login.url, login.token)
    }

    pub fn new(url: &str, token: String) -> anyhow::Result<Cloud> {
        let base = parse_url(url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("kelp/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Cloud { http, base, token })
    }

    /// The cloud's URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The API token (for the registry, when it is this cloud's).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `segments` (each percent-encoded, so a name cannot reach another
    /// path) under the base URL, with `query`.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends one request; the answer's body as it came (JSON, or empty),
    /// or an error that says what the cloud refused and why.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Vec<u8>> {
        let (status, bytes) = self.request(method, segments, query, body).await?;
        if !status.is_success() {
            return Err(self.refusal(status, &bytes));
        }
        Ok(bytes)
    }

    /// Whether what `segments` names exists: `false` for a 404, an error
    /// for any other refusal.
    pub async fn exists(&self, segments: &[&str]) -> anyhow::Result<bool> {
        let (status, bytes) = self.request(Method::GET, segments, &[], None).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            s => Err(self.refusal(s, &bytes)),
        }
    }

    /// Sends one request; the status and body of the answer, which is
    /// checked to be JSON if it has a body at all.
    async fn request(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let url = self.url(segments, query);
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            let bytes = serde_json::to_vec(&body).context("cannot encode the request")?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let response = request
            .send()
            .await
            .map_err(reqwest::Error::without_url)
            .with_context(|| format!("cannot reach the Kelp cloud at {}", self.base))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(reqwest::Error::without_url)
            .with_context(|| {
                format!("cannot read the answer of the Kelp cloud at {}", self.base)
            })?;
        if status.is_success()
            && !bytes.is_empty()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
        {
            bail!(
                "{} answered with something other than JSON; is it a Kelp cloud?",
                self.base
            );
        }
        Ok((status, bytes.to_vec()))
    }

    /// The one-line error for a refused request.
    fn refusal(&self, status: StatusCode, bytes: &[u8]) -> anyhow::Error {
        let Ok(body) = serde_json::from_slice::<ErrorBody>(bytes) else {
            return anyhow::anyhow!("{} answered {status}; is it a Kelp cloud?", self.base);
        };
        // One line, whatever the server sent.
        let message = body.error.replace(['\n', '\r'], " ");
        if status == StatusCode::UNAUTHORIZED {
            return anyhow::anyhow!(
                "the Kelp cloud at {} refused the API token: {message}; \
                 run `kelp login` with a live token",
                self.base
            );
        }
        match body.field {
            Some(field) => anyhow::anyhow!("{message} (field `{field}`; {status})"),
            None => anyhow::anyhow!("{message} ({status})"),
        }
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
        self.call(Method::GET, segments, query, None).await
    }
}

/// An answer read as the type this CLI expects.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes)
        .context("the cloud's answer is not what this version of kelp expects")
}
