//! Garbage collection, online: blobs no manifest uses and upload sessions
//! abandoned for longer than a limit are removed while the server runs.
//!
//! What keeps a blob: being a manifest some repository holds, being named
//! (as config, layer, or an index's manifest) by such a manifest, being a
//! manifest a [`Retained`] source names (the cloud's releases) or named by
//! one, or being younger than the grace period. Three things make this safe
//! against pushes in flight:
//!
//! - A manifest push checks its blobs and links itself under the read side
//!   of one lock; collection marks and sweeps under the write side. So a
//!   manifest is either linked before collection looks (and its blobs are
//!   marked), or checked after it swept (and a blob it lost is reported
//!   missing, so the client pushes it again): never linked to a blob that
//!   is gone.
//! - Every way a client learns that a blob is there (an upload completing,
//!   a mount, a `HEAD`) stamps the blob's time, under the same read lock.
//!   A blob younger than the grace period is kept, so a client that uploads
//!   blobs and then pushes their manifest within that time never loses one.
//! - An upload session is removed only once it has been idle that long.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use kelp_core::Digest;

use super::Registry;
use super::manifests::Parsed;
use crate::digest::BlobDigest;
use crate::names::RepoName;
use crate::store::{Store, blocking};

/// How often the server collects, and how long a new blob or an idle
/// upload is spared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// Time between collections; `None` turns periodic collection off.
    pub every: Option<Duration>,
    /// A blob written or announced more recently than this, and an upload
    /// session touched more recently, is kept.
    pub grace: Duration,
}

/// Time between collections by default: reclaiming space is not urgent,
/// and each run reads every manifest.
pub const GC_EVERY: Duration = Duration::from_secs(3600);

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            every: Some(GC_EVERY),
            grace: super::UPLOAD_IDLE_TIMEOUT,
        }
    }
}

/// A GC setting in the environment that is not a number of seconds.
#[derive(Debug, thiserror::Error)]
#[error("`{name}={value}` is not a number of seconds")]
pub struct GcPolicyError {
    name: &'static str,
    value: String,
}

impl GcPolicy {
    /// The default, changed by `KELP_REGISTRY_GC_EVERY` (seconds between
    /// collections, `0` for none) and `KELP_REGISTRY_GC_GRACE` (seconds a new
    /// blob or an idle upload is spared).
    pub fn from_env() -> Result<Self, GcPolicyError> {
        let seconds = |name: &'static str| -> Result<Option<Duration>, GcPolicyError> {
            match std::env::var(name) {
                Ok(value) => value
                    .trim()
                    .parse::<u64>()
                    .map(|s| Some(Duration::from_secs(s)))
                    .map_err(|_| GcPolicyError { name, value }),
                Err(_) => Ok(None),
            }
        };
        let mut policy = GcPolicy::default();
        if let Some(every) = seconds("KELP_REGISTRY_GC_EVERY")? {
            policy.every = (!every.is_zero()).then_some(every);
        }
        if let Some(grace) = seconds("KELP_REGISTRY_GC_GRACE")? {
            policy.grace = grace;
        }
        Ok(policy)
    }
}

/// Manifests that must be kept whatever is deleted: the cloud names here
/// the images of its releases, which devices may still pull.
#[async_trait::async_trait]
pub trait Retained: Send + Sync + fmt::Debug {
    async fn manifests(&self) -> std::io::Result<Vec<Digest>>;
}

/// Nothing beyond what the repositories hold.
#[derive(Debug)]
pub struct RetainNothing;

#[async_trait::async_trait]
impl Retained for RetainNothing {
    async fn manifests(&self) -> std::io::Result<Vec<Digest>> {
        Ok(Vec::new())
    }
}

/// What one collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub bytes_removed: u64,
    pub uploads_removed: usize,
    pub blobs_kept: usize,
}

/// Who keeps each blob alive: a manifest in a repository (the blob may be
/// that manifest itself), or a retained manifest (`None`).
pub(super) type Users = HashMap<BlobDigest, (Option<RepoName>, BlobDigest)>;

/// Marks every blob in use, from the manifests repositories hold and the
/// retained ones.
pub(super) fn users(store: &Store, retained: &[Digest]) -> std::io::Result<Users> {
    let mut users = Users::new();
    let mut queue: Vec<(Option<RepoName>, BlobDigest)> = Vec::new();
    for repo in store.repos()? {
        for (digest, _) in store.manifests(&repo)? {
            queue.push((Some(repo.clone()), digest));
        }
    }
    queue.extend(retained.iter().map(|d| (None, BlobDigest::from(*d))));
    let mut parsed: HashSet<BlobDigest> = HashSet::new();
    while let Some((repo, manifest)) = queue.pop() {
        users
            .entry(manifest)
            .or_insert_with(|| (repo.clone(), manifest));
        if !parsed.insert(manifest) {
            continue;
        }
        let Some(bytes) = store.read_verified(&manifest)? else {
            continue;
        };
        // A stored manifest was checked when it was pushed; one that no
        // longer parses keeps nothing but itself.
        let Ok(doc) = serde_json::from_slice::<Parsed>(&bytes) else {
            continue;
        };
        for descriptor in doc.references() {
            users
                .entry(descriptor.digest)
                .or_insert_with(|| (repo.clone(), manifest));
        }
        // An index's manifests keep their own blobs.
        for child in doc.manifests.iter().flatten() {
            queue.push((repo.clone(), child.digest));
        }
    }
    Ok(users)
}

impl Registry {
    /// Removes what nothing uses, now, while the server goes on serving.
    pub async fn collect_garbage(&self, grace: Duration) -> std::io::Result<GcReport> {
        let uploads_removed = self.sweep_uploads(grace).await?;
        let retained = self.inner.retained.manifests().await?;
        let _exclusive = self.inner.gc_lock.write().await;
        let store = self.store().clone();
        let mut report = blocking(move || {
            let users = users(&store, &retained)?;
            let cutoff = SystemTime::now()
                .checked_sub(grace)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut report = GcReport::default();
            for (digest, written) in store.blobs()? {
                if users.contains_key(&digest) || written > cutoff {
                    report.blobs_kept += 1;
                    continue;
                }
                let size = store.blob_size(&digest)?.unwrap_or(0);
                if store.delete_blob(&digest)? {
                    tracing::info!(%digest, size, "unused blob removed");
                    report.blobs_removed += 1;
                    report.bytes_removed += size;
                }
            }
            Ok(report)
        })
        .await?;
        report.uploads_removed = uploads_removed;
        Ok(report)
    }

    /// Ends upload sessions idle longer than `grace`, with their files.
    /// Every other upload file belongs to a request in progress, which
    /// removes it on every way out, or was left by a process that stopped
    /// and went when the store was opened.
    async fn sweep_uploads(&self, grace: Duration) -> std::io::Result<usize> {
        let mut uploads = self.uploads();
        let before = uploads.len();
        super::uploads::sweep_idle(&mut uploads, grace);
        Ok(before - uploads.len())
    }

    /// Collects every `policy.every` until the server stops. Call from
    /// within a tokio runtime; does nothing if the policy has no period.
    pub fn spawn_gc(&self, policy: GcPolicy) {
        let Some(every) = policy.every else {
            return;
        };
        let registry = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is now; the store was just opened.
            ticks.tick().await;
            loop {
                ticks.tick().await;
                match registry.collect_garbage(policy.grace).await {
                    Ok(r) => tracing::info!(
                        blobs_removed = r.blobs_removed,
                        bytes_removed = r.bytes_removed,
                        uploads_removed = r.uploads_removed,
                        blobs_kept = r.blobs_kept,
                        "registry garbage collected"
                    ),
                    Err(e) => tracing::warn!(error = %e, "registry garbage collection failed"),
                }
            }
        });
    }
}
