//! Kelp's control plane: the registry under `/v2/`, and the fleet API —
//! fleets, devices, releases, variables, target state — under `/api/v1/`
//! (for people and tools) and `/device/v1/` (for devices). Fleet state lives
//! in one database, SQLite in the data directory by default or PostgreSQL
//! shared by several processes; `GET /api/v1/openapi.json` describes every
//! endpoint (see [`openapi`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let dir = std::path::Path::new("/var/lib/kelp-cloud");
//! let data = kelp_cloud::DataDir::open(dir)?;
//! let cp = kelp_cloud::ControlPlane::open(&data, &kelp_cloud::sqlite_url(dir)?).await?;
//! let app = kelp_cloud::app_with_fleet(&data, kelp_registry::PullPolicy::Token, cp)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Inside, requests go one way: the JSON API (`api`) and the dashboard
//! (`dashboard`) take a request apart and call the fleet operations
//! (`ops`), which check what they are given and read and write the
//! database (`db`, one module per table). Waiting devices hear of changes
//! through `changes`; `keys` and `seen` batch what every poll would
//! otherwise ask of the database.

mod api;
mod changes;
mod dashboard;
mod db;
mod keys;
mod ops;
mod secret;
mod seen;

pub use api::{MAX_JSON_BODY, MAX_WAIT, RECHECK, openapi, router as fleet_router};
pub use changes::Changes;
pub use dashboard::{MAX_FORM_BODY, SESSION_LIFETIME, router as dashboard_router};
pub use db::{Db, DbError, KEPT_LOG_LINES, MAX_CONNECTIONS, ScratchSchema, sqlite_url};
pub use ops::targets::MAX_COPY_AGE;
pub use ops::{
    ApiError, FleetCreated, MAX_LOG_BATCH, MAX_LOG_LINE, ONLINE_WINDOW, RegisteredDevice,
    TargetState, TokenCreated, UpdateStrategy,
};
pub use seen::SEEN_FLUSH;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use kelp_core::fsutil::{write_atomic, write_atomic_private};
use kelp_registry::{Auth, GcPolicy, PullPolicy, Registry, Retained, Store, TokenHash, Tokens};

/// Longest any request may take. Long enough to upload the largest blob the
/// registry accepts ([`kelp_registry::MAX_BLOB_SIZE`], 512 MiB) at about
/// 1 MB/s; short enough that a stalled client does not hold a connection
/// and an upload session for ever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Largest request body: the largest blob, plus room for a chunk's framing.
/// The registry checks its own limits as it streams; this refuses an
/// oversized `Content-Length` before a byte is read.
pub const MAX_REQUEST_BODY: usize = kelp_registry::MAX_BLOB_SIZE as usize + (1 << 20);

/// The cloud's data directory: `registry/` (the blob store), `kelp.db` (the
/// fleet database, unless `--database` names another), `tokens` (the sha256
/// of the admin token) and `admin.token` (the admin token itself, mode 0600,
/// written once for the operator to read).
pub struct DataDir {
    pub root: PathBuf,
    pub tokens: Vec<TokenHash>,
    /// The admin token, when this start created it (the first start).
    pub new_admin_token: Option<String>,
}

impl DataDir {
    /// Opens `root`, creating it, the store and an admin token on first use.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create data directory {}", root.display()))?;
        let tokens_path = root.join("tokens");
        let mut new_admin_token = None;
        let tokens = match fs::read_to_string(&tokens_path) {
            Ok(text) => parse_tokens(&text)
                .with_context(|| format!("cannot read {}", tokens_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = secret::new_secret("")?;
                let admin = root.join("admin.token");
                write_atomic_private(&admin, format!("{token}\n").as_bytes())
                    .with_context(|| format!("cannot write {}", admin.display()))?;
                let hash = TokenHash::of(&token);
                write_atomic(&tokens_path, format!("{hash}\n").as_bytes())
                    .with_context(|| format!("cannot write {}", tokens_path.display()))?;
                new_admin_token = Some(token);
                vec![hash]
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", tokens_path.display()));
            }
        };
        Ok(DataDir {
            root: root.to_owned(),
            tokens,
            new_admin_token,
        })
    }
}

fn parse_tokens(text: &str) -> anyhow::Result<Vec<TokenHash>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.parse().with_context(|| format!("bad token hash `{l}`")))
        .collect()
}

/// The fleet API's shared state: the database, the word that a target
/// changed, copies of what targets are made of (each checked against the
/// database's change count before use), sightings of devices not yet
/// written, and the task that looks device keys up in batches. Cheap to clone; holds nothing another process would need.
#[derive(Clone)]
pub struct ControlPlane {
    pub(crate) db: Db,
    pub(crate) changes: Changes,
    pub(crate) targets: ops::targets::Targets,
    pub(crate) seen: seen::Seen,
    pub(crate) keys: keys::KeyLookups,
    /// Word that a device's log lines arrived, keyed by its uuid, for the
    /// dashboard's live logs.
    pub(crate) logs: Changes,
}

impl ControlPlane {
    /// Connects to the database at `url`, migrates it, and makes the data
    /// directory's admin token an API token (unless it is one already, or
    /// was revoked).
    pub async fn open(data: &DataDir, url: &str) -> anyhow::Result<Self> {
        let db = Db::connect(url).await?;
        let changes = Changes::default();
        if db.is_postgres() {
            changes::listen(url.to_owned(), changes.clone());
        }
        for hash in &data.tokens {
            db.adopt_token(&secret::new_id(), "admin", &hash.to_string())
                .await
                .context("cannot record the admin token")?;
        }
        let seen = seen::Seen::default();
        seen.flush_every_while_used(db.clone());
        Ok(ControlPlane {
            keys: keys::KeyLookups::start(db.clone()),
            logs: Changes::default(),
            db,
            changes,
            targets: ops::targets::Targets::default(),
            seen,
        })
    }

    /// Counts a change to what `fleet`'s targets depend on and wakes the
    /// requests waiting on them, in this process and, on PostgreSQL, in
    /// every other. Failures here are logged, not returned: the change
    /// itself is stored, and a request told of it reads its target again
    /// regardless.
    pub(crate) async fn changed(&self, fleet: &str) {
        // Counted before anyone is told, so whoever looks sees the count
        // move.
        if let Err(e) = self.db.bump_generation(fleet).await {
            tracing::warn!(error = %e, fleet, "cannot count a change");
        }
        self.changes.notify(fleet);
        if let Err(e) = self.db.announce_change(fleet).await {
            tracing::warn!(error = %e, "cannot announce a change to other processes");
        }
    }

    /// Answers every held `?wait=` request now, as the server begins to
    /// shut down, so that it does not wait up to [`MAX_WAIT`] for them.
    pub fn stop(&self) {
        self.changes.stop();
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes when devices were last seen, then closes the database,
    /// waiting for queries in flight: the last thing a stopping server
    /// does.
    pub async fn close(&self) {
        if let Err(e) = self.seen.flush(&self.db).await {
            tracing::warn!(error = %e, "cannot record when devices were last seen");
        }
        self.db.close().await;
    }
}

/// The whole HTTP service: the registry under `/v2/`, the fleet API and the
/// dashboard at `/`, with body limits and timeouts on every route.
pub fn app_with_fleet(
    data: &DataDir,
    pull: PullPolicy,
    cp: ControlPlane,
) -> anyhow::Result<Router> {
    let registry = registry_router(
        data,
        pull,
        Arc::new(ApiTokens(cp.db.clone())),
        Arc::new(ReleaseImages(cp.db.clone())),
    )?;
    let dashboard = dashboard::router(cp.clone());
    Ok(with_limits(
        registry.merge(api::router(cp)).merge(dashboard),
    ))
}

/// The registry alone under `/v2/`, with body limits and timeouts on every
/// route.
pub fn app(data: &DataDir, pull: PullPolicy) -> anyhow::Result<Router> {
    Ok(with_limits(registry_router(
        data,
        pull,
        Arc::new(data.tokens.clone()),
        Arc::new(kelp_registry::RetainNothing),
    )?))
}

/// The fleet API's token table as the registry's tokens: a token is valid
/// on `/v2/` while it is live there, so revoking one through the API refuses
/// it on the registry at the next request, and one created there works on
/// the registry too.
struct ApiTokens(Db);

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the fleet API's tokens")
    }
}

#[async_trait::async_trait]
impl Tokens for ApiTokens {
    async fn accepts(&self, token: &str) -> std::io::Result<bool> {
        self.0
            .token_by_hash(&secret::hash(token))
            .await
            .map(|id| id.is_some())
            .map_err(std::io::Error::other)
    }

    /// A device key pulls too: devices fetch their releases' images with
    /// the key they poll with.
    async fn may_pull(&self, token: &str) -> std::io::Result<bool> {
        if self.accepts(token).await? {
            return Ok(true);
        }
        if !token.starts_with(secret::DEVICE_PREFIX) {
            return Ok(false);
        }
        let hash = secret::hash(token);
        self.0
            .devices_by_key_hashes(&[hash.as_str()])
            .await
            .map(|found| !found.is_empty())
            .map_err(std::io::Error::other)
    }
}

/// The images of every release the fleet database holds: the registry
/// keeps them (and their blobs) while a release names them, since a device
/// or a pin may still need them.
struct ReleaseImages(Db);

impl std::fmt::Debug for ReleaseImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the images of the fleet API's releases")
    }
}

#[async_trait::async_trait]
impl Retained for ReleaseImages {
    async fn manifests(&self) -> std::io::Result<Vec<kelp_core::Digest>> {
        let mut out = Vec::new();
        let fleets = self.0.fleets().await.map_err(std::io::Error::other)?;
        for fleet in fleets {
            let releases = self
                .0
                .releases(&fleet.name)
                .await
                .map_err(std::io::Error::other)?;
            for release in releases {
                let services: std::collections::BTreeMap<String, kelp_core::api::ServiceSpec> =
                    serde_json::from_str(&release.services).map_err(std::io::Error::other)?;
                out.extend(services.values().filter_map(|s| {
                    s.image
                        .rsplit_once('@')
                        .and_then(|(_, d)| d.parse::<kelp_core::Digest>().ok())
                }));
            }
        }
        Ok(out)
    }
}

fn registry_router(
    data: &DataDir,
    pull: PullPolicy,
    tokens: Arc<dyn Tokens>,
    retained: Arc<dyn Retained>,
) -> anyhow::Result<Router> {
    let store_dir = data.root.join("registry");
    let store = Store::open(&store_dir)
        .with_context(|| format!("cannot open the registry store in {}", store_dir.display()))?;
    let auth = Auth { pull, tokens };
    let registry = Registry::retaining(store, auth, retained);
    // Garbage collection runs in the serving process, where it sees the
    // uploads and pushes in flight; a router built outside a runtime (a
    // test's) has none.
    if tokio::runtime::Handle::try_current().is_ok() {
        registry.spawn_gc(GcPolicy::from_env().context("reading the registry's GC settings")?);
    }
    Ok(kelp_registry::router(registry))
}

fn with_limits(router: Router) -> Router {
    router
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_REQUEST_BODY,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_admin_token_is_made_once_and_only_its_hash_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let token = first.new_admin_token.clone().unwrap();
        let saved = fs::read_to_string(dir.path().join("admin.token")).unwrap();
        assert_eq!(saved.trim(), token);
        let mode = fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let hashes = fs::read_to_string(dir.path().join("tokens")).unwrap();
        assert!(!hashes.contains(&token));
        assert_eq!(first.tokens, vec![TokenHash::of(&token)]);

        let again = DataDir::open(dir.path()).unwrap();
        assert_eq!(again.new_admin_token, None);
        assert_eq!(again.tokens, first.tokens);
    }
}
