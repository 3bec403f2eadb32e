//! `kelp push`: a `.wasm` file to an OCI registry, as a Wasm artifact, and
//! with `--fleet` a release of it for a fleet.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use kelp_client::Client as Cloud;
use kelp_core::api::{NewRelease, ReleaseView, ServiceSpec, UpdateStrategy};
use kelp_core::{Digest, Manifest};
use kelp_registry::{Client, ManifestRef, Reference};

use crate::cloud::ForUser as _;

/// Build (given a crate), sign and push a service to a registry as a Wasm
/// OCI artifact.
///
/// With `--fleet`, also create a release of it for that fleet (using the
/// login from `kelp login`).
#[derive(Args, Debug)]
pub struct PushArgs {
    /// A service crate (a directory with Cargo.toml and kelp.toml), which is
    /// built, or a .wasm file, which is pushed as it is.
    file: PathBuf,

    /// Sign with this secret key (from `kelp key generate`) before pushing.
    #[arg(long, value_name = "FILE", env = "KELP_KEY")]
    key: Option<PathBuf>,

    /// Embed this manifest (a kelp.toml) in a .wasm file before signing; a
    /// crate's own kelp.toml is always embedded.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,

    /// Where: REGISTRY/REPOSITORY:TAG, e.g. 127.0.0.1:8080/hello:v1.
    #[arg(long, value_name = "REGISTRY/REPO:TAG")]
    to: Reference,

    /// Registry token (the admin token `kelp-cloud serve` printed). With
    /// none, the login's API token is sent to the registry of the cloud
    /// logged in to, and to no other.
    #[arg(long, env = "KELP_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Create a release for this fleet whose one service (named as the
    /// manifest names it) runs the pushed image, pinned by digest.
    #[arg(long)]
    fleet: Option<String>,

    /// The release's version (default: the tag pushed to).
    #[arg(long, requires = "fleet")]
    version: Option<String>,
}

impl PushArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let ManifestRef::Tag(tag) = &self.to.reference else {
            bail!("push to a tag (REGISTRY/REPO:TAG), not a digest");
        };
        // What a release needs from the cloud is checked before anything is
        // built or pushed: a login, the fleet, and a version it lacks.
        let cloud = match &self.fleet {
            Some(_) => Some(crate::cloud::from_session()?),
            None => None,
        };
        let release_version = match &self.version {
            Some(v) => v.clone(),
            None => tag.to_string(),
        };
        if let (Some(cloud), Some(fleet)) = (&cloud, &self.fleet) {
            cloud.fleet(fleet).await.for_user()?;
            let exists = match cloud.release(fleet, &release_version).await {
                Ok(_) => true,
                Err(e) if e.is_not_found() => false,
                Err(e) => return Err(e).for_user(),
            };
            if exists {
                bail!(
                    "fleet `{fleet}` already has a release `{release_version}`; \
                     name another with --version"
                );
            }
        }
        let (path, manifest) = if self.file.is_dir() {
            let built = crate::build::build_crate(&self.file)?;
            (built.wasm, Some(built.manifest))
        } else {
            let manifest = match &self.manifest {
                Some(m) => Some(kelp_core::read_manifest_file(m)?),
                None => None,
            };
            (self.file.clone(), manifest)
        };
        // A release names its service as the manifest does: the one given,
        // else the one the file carries.
        let service_manifest = match (&cloud, &manifest) {
            (None, _) => None,
            (Some(_), Some(m)) => Some(m.clone()),
            (Some(_), None) => Some(embedded_manifest(&path).await?),
        };
        let token = match &self.token {
            Some(t) => Some(t.clone()),
            None => login_token_for(&self.to.registry),
        };
        let client = crate::progress::attach(Client::new(&self.to.registry, token)?, "pushing");
        let mut signer = None;
        let (digest, size) = if manifest.is_none() && self.key.is_none() {
            // Pushed as it is: streamed from the file, never held whole.
            warn_unsigned();
            client.push_wasm_file(&self.to.repo, tag, &path).await?
        } else {
            // Embedding and signing rewrite the file: it is held in memory.
            let mut wasm = tokio::fs::read(&path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            if let Some(manifest) = &manifest {
                wasm = kelp_core::embed(&wasm, manifest).with_context(|| {
                    format!("cannot embed the manifest in `{}`", path.display())
                })?;
            }
            match &self.key {
                Some(key) => {
                    let key = super::key::read_secret_key(key)?;
                    wasm = kelp_core::sign(&wasm, &key)
                        .with_context(|| format!("cannot sign `{}`", path.display()))?;
                    let key_id = key.public_key().key_id();
                    eprintln!("signed with key id {key_id}");
                    signer = Some(key_id.to_string());
                }
                None => warn_unsigned(),
            }
            let size = wasm.len() as u64;
            let digest = client.push_wasm(&self.to.repo, tag, wasm.into()).await?;
            (digest, size)
        };
        println!(
            "pushed {} ({size} bytes) as {}@{digest}",
            path.display(),
            self.to
        );
        if let (Some(cloud), Some(fleet), Some(m)) = (&cloud, &self.fleet, service_manifest) {
            let image = Reference {
                registry: self.to.registry.clone(),
                repo: self.to.repo.clone(),
                reference: ManifestRef::Digest(digest),
            };
            let release =
                create_release(cloud, fleet, &release_version, &m, &image, digest, signer).await?;
            println!(
                "created release {} of fleet {fleet}: service {} runs {image}",
                release.version, m.name
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The manifest embedded in the .wasm file at `path`.
async fn embedded_manifest(path: &std::path::Path) -> anyhow::Result<Manifest> {
    let wasm = tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    kelp_core::extract(&wasm)
        .with_context(|| format!("cannot read the manifest embedded in `{}`", path.display()))?
        .with_context(|| {
            format!(
                "`{}` carries no manifest, so the release has no service name: \
                 push its crate, or give --manifest kelp.toml",
                path.display()
            )
        })
}

/// The login's API token, if `registry` (`http(s)://host[:port]`) is the
/// registry of the cloud logged in to: a token is never sent elsewhere.
fn login_token_for(registry: &str) -> Option<String> {
    let login = crate::cloud::session().ok()?;
    let cloud = crate::cloud::parse_url(&login.url).ok()?;
    let registry = kelp_client::Url::parse(registry).ok()?;
    (registry.origin() == cloud.origin()).then_some(login.token)
}

/// Creates release `version` of `fleet` with the one service `m` names,
/// running `image` with the manifest's restart policy, memory and grants.
async fn create_release(
    cloud: &Cloud,
    fleet: &str,
    version: &str,
    m: &Manifest,
    image: &Reference,
    digest: Digest,
    signer: Option<String>,
) -> anyhow::Result<ReleaseView> {
    let spec = ServiceSpec {
        image: image.to_string(),
        env: Default::default(),
        restart: m.restart,
        memory: m.memory,
        grants: m.grants.clone(),
        update_strategy: UpdateStrategy::default(),
        signer,
    };
    let release = NewRelease {
        version: version.to_owned(),
        services: [(m.name.clone(), spec)].into(),
    };
    cloud
        .create_release(fleet, &release)
        .await
        .for_user()
        .with_context(|| format!("pushed {digest}, but cannot create release {version}"))
}

fn warn_unsigned() {
    eprintln!("warning: pushing unsigned (no --key); devices that pin keys will refuse it");
}
