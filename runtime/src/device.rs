//! What makes kelpd a device: its [`node`] (the supervisor, what it
//! refused, status), the [`local`] target file or the cloud [`agent`], the
//! one way either's target becomes running services ([`target`]), the
//! images it pulls ([`images`]) and the [`local_api`]. [`run`] is kelpd
//! from its start to its stop.
//!
//! Reading "a device receives a new target, judges it, rolls back" is
//! [`agent::rollout`], then [`target`].

pub mod agent;
pub mod images;
pub mod local;
pub mod local_api;
pub mod node;
pub mod target;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{Runtime, Supervisor};

/// How kelpd runs this device.
pub struct Setup {
    /// `--local FILE`: the target file, without a cloud.
    pub local: Option<PathBuf>,
    /// `--config FILE`: the cloud this device follows.
    pub fleet: Option<agent::Config>,
    /// Where services keep their `/data`, the compile cache, and status.
    pub data_dir: PathBuf,
    /// Token for the registries `image =` services are pulled from.
    pub registry_token: Option<String>,
}

/// Runs the device until SIGTERM or SIGINT (or, for a device of a fleet,
/// an error no retry fixes), then stops every service within its grace.
/// SIGHUP applies an edited local target file.
pub async fn run(runtime: Runtime, setup: Setup) -> anyhow::Result<()> {
    let Setup {
        local,
        fleet,
        data_dir,
        registry_token,
    } = setup;
    let services_dir = data_dir.join("services");
    std::fs::create_dir_all(&services_dir)
        .with_context(|| format!("cannot create data directory `{}`", services_dir.display()))?;
    let target = match &local {
        Some(path) => Some(local::load(path, &services_dir)?),
        None => None,
    };
    // Who the device is, before anything runs: a device that cannot
    // register says so at once.
    let fleet = match fleet {
        Some(config) => {
            let files = agent::DeviceFiles::open(&data_dir)?;
            let uuid = files.uuid()?;
            if files.key()?.is_none() && config.provisioning_key.is_none() {
                return Err(agent::AgentError::NoProvisioningKey.into());
            }
            Some((config, files, uuid))
        }
        None => None,
    };
    let images = (!runtime.trusted_keys().is_empty())
        .then(|| images::ImageStore::new(data_dir.join("blobs"), registry_token));
    if images.is_none() {
        tracing::warn!(
            "no --trusted-key given: module signatures are not checked, and services from a registry do not run"
        );
    }
    match (&local, &fleet) {
        (Some(local), _) => {
            tracing::info!(allocator = %runtime.allocator(), local = %local.display(), "kelpd starting");
        }
        (None, Some((config, _, uuid))) => {
            tracing::info!(allocator = %runtime.allocator(), cloud = %config.cloud, %uuid, "kelpd starting");
        }
        (None, None) => {}
    }
    let logs = node::LogSinks::new();
    let supervisor = Arc::new(Supervisor::new(runtime).on_start(logs.forwarder()));
    let node = node::Node::new(
        supervisor.clone(),
        images,
        logs.clone(),
        data_dir.join("status.json"),
    );
    let socket = data_dir.join(local_api::SOCKET);
    let local_api = local_api::serve(node.clone(), &socket)
        .with_context(|| format!("cannot serve the local API on `{}`", socket.display()))?;

    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let status_writer = tokio::spawn(node.clone().write_status());

    let mut following = match fleet {
        Some((config, files, uuid)) => {
            let logs_dir = files.logs_dir();
            let outbox = agent::outbox::Outbox::open(&logs_dir, config.log_buffer)
                .with_context(|| format!("cannot open the log outbox `{}`", logs_dir.display()))?;
            let outbox = Arc::new(outbox);
            logs.send_to(outbox.clone());
            Some(tokio::spawn(
                agent::Agent {
                    config,
                    files,
                    uuid,
                    node: node.clone(),
                    services_dir: services_dir.clone(),
                    outbox,
                }
                .run(),
            ))
        }
        None => None,
    };
    let mut next = target;
    let mut failed = None;
    loop {
        if let Some(target) = next.take() {
            // Fetching an image can take minutes on a slow link: a stop
            // request does not wait for it (a partial download resumes on
            // the next start).
            tokio::select! {
                _ = target::apply_local(&node, target) => {}
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        tokio::select! {
            _ = hangup.recv() => {
                let Some(path) = &local else {
                    tracing::info!("SIGHUP: the cloud gives this device its target; nothing to reload");
                    continue;
                };
                match local::load(path, &services_dir) {
                    Ok(target) => next = Some(target),
                    // A broken edit must not take down what runs: keep the
                    // current set and say why.
                    Err(e) => tracing::error!(error = %e, "not applying target file"),
                }
            }
            ended = async {
                match following.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                following = None;
                failed = Some(match ended {
                    Ok(Ok(())) => anyhow::anyhow!("stopped following the cloud"),
                    Ok(Err(e)) => e.into(),
                    Err(e) => anyhow::anyhow!("the cloud agent failed: {e}"),
                });
                break;
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    if let Some(task) = following {
        task.abort();
        let _ = task.await;
    }
    tracing::info!("stopping services");
    supervisor.shutdown().await;
    status_writer.abort();
    local_api.abort();
    let _ = std::fs::remove_file(&socket);
    node.save_status();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
