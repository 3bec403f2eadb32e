//! The one way a target becomes running services, whether it comes from
//! the local target file (the `local` module) or from the cloud: images
//! fetched and checked, each service's restart policy and memory limit
//! settled, the supervisor moved to the new set, and what did not run as
//! the target says noted, with why, on the [`Node`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kelp_core::api::{TargetState, UpdateStrategy};
use kelp_core::{ByteSize, RestartPolicy};

use super::images::ImageRef;
use super::node::{Node, Refused};
use crate::service::{DEFAULT_MEMORY_LIMIT, DEFAULT_STOP_GRACE, ServiceSpec};
use crate::supervisor::ApplyReport;

/// A service of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetService {
    /// How to run it. Its `restart` and `memory_limit` are settled when the
    /// target is applied (see [`TargetService::restart`]).
    pub spec: ServiceSpec,
    /// The image the service runs, for `image =`. Its `spec.module` is empty
    /// until the image is fetched ([`super::images::ImageStore::fetch`]).
    pub image: Option<ImageRef>,
    /// Key id of the publisher key that must have signed the image (a
    /// release names it); `None` accepts any trusted key.
    pub signer: Option<String>,
    /// The restart policy the target names. Without one the module's
    /// signed manifest decides, and without a manifest the default
    /// (`always`).
    pub restart: Option<RestartPolicy>,
    /// The memory limit the target names; as for `restart`, else the
    /// manifest's, else [`DEFAULT_MEMORY_LIMIT`].
    pub memory: Option<ByteSize>,
}

/// The services of a target from the cloud, as the supervisor runs them.
/// Each service's `/data` is `data_root/<name>`. A service whose image is
/// not pinned by digest is returned apart, with why.
pub fn from_cloud(
    target: &TargetState,
    data_root: &Path,
) -> (Vec<TargetService>, BTreeMap<String, String>) {
    let mut services = Vec::new();
    let mut refused = BTreeMap::new();
    for (name, s) in &target.services {
        // Refused before its image is fetched; the supervisor would refuse
        // it after.
        if !kelp_core::valid_service_name(name) {
            refused.insert(name.clone(), "not a valid service name".to_owned());
            continue;
        }
        let image = match s.image.parse() {
            Ok(image) => image,
            Err(e) => {
                refused.insert(name.clone(), format!("{e}"));
                continue;
            }
        };
        services.push(TargetService {
            spec: ServiceSpec {
                name: name.clone(),
                module: PathBuf::new(),
                // The image names the version: a new image is a new version.
                version: Some(s.image.clone()),
                args: Vec::new(),
                env: s.env.clone(),
                restart: s.restart,
                memory_limit: s.memory,
                data_dir: Some(data_root.join(name)),
                stop_grace: DEFAULT_STOP_GRACE,
                grants: None,
                update: s.update_strategy,
            },
            image: Some(image),
            signer: s.signer.clone(),
            // The release took them from the signed manifest already.
            restart: Some(s.restart),
            memory: Some(s.memory),
        });
    }
    (services, refused)
}

/// The images a target from the cloud names, each pinned by digest.
pub fn images_of(target: &TargetState) -> Vec<ImageRef> {
    target
        .services
        .values()
        .filter_map(|s| s.image.parse().ok())
        .collect()
}

/// Fetches into the store the images of a target from the cloud, before
/// anything of it runs: what [`apply_cloud`] will find there. Stopping it
/// part way (dropping the future) is safe: a download stopped in the middle
/// goes on from where it stopped the next time. What fails here is tried
/// again, and reported, by [`apply_cloud`]. A service that is to be stopped
/// before its new version is fetched (`kill-then-download`) is left to it.
pub async fn fetch_cloud(node: &Node, target: &TargetState) {
    let Some(store) = node.images() else {
        return;
    };
    for (name, service) in &target.services {
        if service.update_strategy == UpdateStrategy::KillThenDownload {
            continue;
        }
        let Ok(image) = service.image.parse::<ImageRef>() else {
            continue;
        };
        if let Err(e) = store.fetch(&image).await {
            tracing::warn!(service = %name, error = %e, "cannot fetch ahead of the switch");
        }
    }
}

/// Moves the device to a target from its local file.
pub async fn apply_local(node: &Node, target: Vec<TargetService>) -> ApplyReport {
    apply(node, target, Refused::new()).await
}

/// Moves the device to a target from the cloud; services it names wrongly
/// are refused, with why, beside those [`apply_local`] would refuse. A new
/// hardware map restarts the services the target left alone, so that every
/// service is granted by it; so does a restart the cloud asked for.
pub async fn apply_cloud(node: &Node, target: &TargetState, services_dir: &Path) {
    let (services, bad) = from_cloud(target, services_dir);
    let map_changed = node.use_map(target.hardware_map.as_deref());
    let report = apply(node, services, bad).await;
    let asked = node.restarts_asked(&target.restarts);
    for name in &report.unchanged {
        let why = if map_changed {
            "for the new hardware map"
        } else if asked.contains(name) {
            "as asked from the cloud"
        } else {
            continue;
        };
        tracing::info!(service = %name, "restarting {why}");
        if let Err(e) = node.supervisor.restart(name).await {
            tracing::warn!(service = %name, error = %e, "cannot restart {why}");
        }
    }
}

/// Moves the node's supervisor to `target`, fetching the images it names
/// first, and notes each service that does not run as the target says,
/// with why (`before`: those refused before they got here): its image could
/// not be fetched, its new version did not load, or it was rejected. A
/// service whose image cannot be fetched, or whose new version does not
/// load, keeps running the version it runs, if any.
///
/// A device that trusts no publisher key fetches nothing: code from a
/// registry runs only if a key the device trusts signed it.
async fn apply(node: &Node, target: Vec<TargetService>, before: Refused) -> ApplyReport {
    let supervisor = &node.supervisor;
    let images = node.images();
    let mut refused = Refused::new();
    let mut specs = Vec::new();
    let mut by_image = BTreeMap::new();
    for service in target {
        let TargetService {
            spec,
            image,
            signer,
            restart,
            memory,
        } = service;
        let Some(image) = image else {
            specs.push(settle(spec, restart, memory).await);
            continue;
        };
        let name = spec.name.clone();
        // Asked to make room first: the running version stops before the
        // new one is fetched.
        if spec.update == UpdateStrategy::KillThenDownload
            && let Some(running) = supervisor.service(&name)
            && running.spec().version != spec.version
        {
            tracing::info!(service = %name, "stopping before fetching its new version (kill-then-download)");
            let _ = supervisor.stop(&name).await;
        }
        let fetched = match images {
            Some(store) => store.fetch(&image).await.map_err(|e| e.to_string()),
            None => Err(format!(
                "not fetching image {image}: this device trusts no publisher key (--trusted-key), and runs code from a registry only if one signed it"
            )),
        };
        let fetched = match (fetched, &signer, images) {
            (Ok(module), Some(signer), Some(store)) => store
                .check_signer(&module, signer, supervisor.runtime().trusted_keys())
                .await
                .map(|()| module),
            (fetched, _, _) => fetched,
        };
        match fetched {
            Ok(module) => specs.push(settle(ServiceSpec { module, ..spec }, restart, memory).await),
            Err(why) => {
                // Keep what runs: the same spec is an unchanged service.
                if let Some(running) = supervisor.service(&name) {
                    specs.push(running.spec().clone());
                }
                refused.insert(name.clone(), why);
            }
        }
        // The loader's reasons name the module's file; the image says more.
        by_image.insert(name, image);
    }
    let report = supervisor.apply(specs).await;
    for (name, why) in report.rejected.iter().chain(&report.kept) {
        let why = match by_image.get(name) {
            Some(image) => format!("image {image}: {why}"),
            None => why.clone(),
        };
        refused.insert(name.clone(), why);
    }
    refused.extend(before);
    tracing::info!(
        started = ?report.started,
        stopped = ?report.stopped,
        restarted = ?report.restarted,
        unchanged = ?report.unchanged,
        "applied target"
    );
    // Rejected, kept on its old version, or its image refused.
    for (name, why) in &refused {
        tracing::error!(service = %name, %why, "refused");
    }
    node.set_refused(refused);
    report
}

/// The spec with its restart policy and memory limit settled: what the
/// target names, else what the module's manifest says, else the defaults.
/// A module that cannot be read or whose manifest cannot be parsed gets the
/// defaults here; loading it says what is wrong with it.
async fn settle(
    mut spec: ServiceSpec,
    restart: Option<RestartPolicy>,
    memory: Option<ByteSize>,
) -> ServiceSpec {
    let manifest = match (restart, memory) {
        (Some(_), Some(_)) => None,
        _ => match crate::read_module(&spec.module).await {
            Ok(bytes) => kelp_core::extract(&bytes).ok().flatten(),
            Err(_) => None,
        },
    };
    spec.restart = restart
        .or(manifest.as_ref().map(|m| m.restart))
        .unwrap_or_default();
    spec.memory_limit = memory
        .or(manifest.as_ref().map(|m| m.memory))
        .unwrap_or(DEFAULT_MEMORY_LIMIT);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_becomes_service_specs_and_a_tag_is_refused() {
        let digest = kelp_registry::oci::digest_of(b"manifest");
        let text = format!(
            r#"{{"release":{{"id":"r1","version":"1.0"}},"services":{{
            "web":{{"image":"127.0.0.1:1/kelp/web@{digest}","env":{{"A":"1"}},"restart":"never",
              "memory":1048576,"grants":{{}},"update_strategy":"download-then-kill"}},
            "tagged":{{"image":"127.0.0.1:1/kelp/web:v1","env":{{}},"restart":"always",
              "memory":1048576,"grants":{{}},"update_strategy":"download-then-kill"}}}}}}"#
        );
        let target: TargetState = serde_json::from_str(&text).unwrap();
        let (services, refused) = from_cloud(&target, Path::new("/d"));
        assert_eq!(services.len(), 1);
        let web = &services[0];
        assert_eq!(web.spec.env["A"], "1");
        assert_eq!(web.spec.memory_limit, kelp_core::ByteSize::mib(1));
        assert_eq!(web.spec.data_dir.as_deref(), Some(Path::new("/d/web")));
        assert_eq!(web.image.as_ref().unwrap().digest(), digest);
        assert!(
            refused["tagged"].contains("pin it by digest"),
            "{refused:?}"
        );
    }
}
