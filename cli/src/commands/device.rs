//! `kelp device`: list, show, pin, rename and tag devices.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kelp_client::{Client, DeviceQuery, Pinned, Scope};
use kelp_core::api::DeviceView;

use crate::cloud::{self, ForUser as _};
use crate::output::{self, OutputArg, or_dash};

/// Most devices the cloud answers with in one page (its own limit).
const PAGE: u32 = 500;

/// Manage devices.
#[derive(Args, Debug)]
pub struct DeviceArgs {
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    List(ListArgs),
    Show(ShowArgs),
    Pin(PinArgs),
    Rename(RenameArgs),
    Restart(RestartArgs),
    Tag(TagArgs),
    Untag(UntagArgs),
}

/// List devices, of every fleet or of one.
#[derive(Args, Debug)]
struct ListArgs {
    /// Only this fleet's devices.
    #[arg(long)]
    fleet: Option<String>,
    #[command(flatten)]
    output: OutputArg,
    /// Devices asked for per request.
    #[arg(long, hide = true, default_value_t = PAGE, value_parser = clap::value_parser!(u32).range(1..=i64::from(PAGE)))]
    page_size: u32,
}

/// Show one device: its releases and each service as it last reported.
#[derive(Args, Debug)]
struct ShowArgs {
    uuid: String,
    #[command(flatten)]
    output: OutputArg,
}

/// Pin a device to a release of its fleet, or let it follow its fleet again.
#[derive(Args, Debug)]
struct PinArgs {
    uuid: String,
    /// The release version to pin to.
    #[arg(required_unless_present = "fleet")]
    version: Option<String>,
    /// Follow the fleet's release instead of a pinned one.
    #[arg(long, conflicts_with = "version")]
    fleet: bool,
}

/// Give a device a new name (its uuid stays).
#[derive(Args, Debug)]
struct RenameArgs {
    uuid: String,
    /// 1 to 64 characters, no control characters.
    name: String,
}

/// Restart one service on a device, when the device next hears from the
/// cloud (at once if it is online).
#[derive(Args, Debug)]
struct RestartArgs {
    uuid: String,
    /// A service the device runs.
    service: String,
}

/// Set tags on a device: labels of your own, such as its site.
#[derive(Args, Debug)]
struct TagArgs {
    uuid: String,
    /// KEY=VALUE, one or more; a key is letters, digits, `.`, `_`, `+`, `-`.
    #[arg(required = true, value_name = "KEY=VALUE")]
    tags: Vec<String>,
}

/// Remove tags from a device.
#[derive(Args, Debug)]
struct UntagArgs {
    uuid: String,
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
}

impl DeviceArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cloud = cloud::from_session()?;
        match self.command {
            DeviceCommand::List(args) => args.run(&cloud).await?,
            DeviceCommand::Show(args) => args.run(&cloud).await?,
            DeviceCommand::Pin(args) => args.run(&cloud).await?,
            DeviceCommand::Rename(args) => args.run(&cloud).await?,
            DeviceCommand::Restart(args) => args.run(&cloud).await?,
            DeviceCommand::Tag(args) => args.run(&cloud).await?,
            DeviceCommand::Untag(args) => args.run(&cloud).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ListArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        // Page after page, each after the last uuid of the one before,
        // until an empty one.
        let mut devices: Vec<DeviceView> = Vec::new();
        loop {
            let after = devices.last().map(|d| d.uuid.clone());
            let query = DeviceQuery {
                fleet: self.fleet.as_deref(),
                after: after.as_deref(),
                limit: Some(self.page_size),
            };
            let page = cloud.devices(&query).await.for_user()?;
            if page.is_empty() {
                break;
            }
            devices.extend(page);
        }
        if self.output.json() {
            return output::print_value(&devices);
        }
        let rows: Vec<_> = devices
            .iter()
            .map(|d| {
                vec![
                    d.uuid.clone(),
                    d.name.clone(),
                    d.fleet.clone(),
                    online(d).to_owned(),
                    or_dash(d.target_release.as_deref()),
                    or_dash(d.current_release.as_deref()),
                    output::time(d.last_seen),
                ]
            })
            .collect();
        output::table(
            &[
                "UUID",
                "NAME",
                "FLEET",
                "STATUS",
                "TARGET",
                "CURRENT",
                "LAST SEEN",
            ],
            &rows,
        );
        Ok(())
    }
}

fn online(d: &DeviceView) -> &'static str {
    if d.online { "online" } else { "offline" }
}

impl ShowArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let device = cloud.device(&self.uuid).await.for_user()?;
        if self.output.json() {
            return output::print_value(&device);
        }
        show(device);
        Ok(())
    }
}

fn show(d: DeviceView) {
    let status = online(&d).to_owned();
    // How the last update went: `3.0 rolled-back: service `web` is crash-looping`.
    let update = d.update.as_ref().map_or_else(
        || "-".to_owned(),
        |u| {
            let mut text = format!("{} {}", u.release.as_deref().unwrap_or("-"), u.state);
            if let Some(reason) = &u.reason {
                text.push_str(": ");
                text.push_str(reason);
            }
            text
        },
    );
    let tags = if d.tags.is_empty() {
        "-".to_owned()
    } else {
        d.tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    output::fields(&[
        ("uuid", d.uuid),
        ("name", d.name),
        ("fleet", d.fleet),
        ("status", status),
        ("arch", d.arch),
        ("agent", d.agent_version),
        (
            "pinned release",
            d.pinned_release
                .unwrap_or_else(|| "none (follows its fleet)".to_owned()),
        ),
        ("target release", or_dash(d.target_release.as_deref())),
        ("current release", or_dash(d.current_release.as_deref())),
        ("last update", update),
        ("tags", tags),
        ("last seen", output::time(d.last_seen)),
        ("registered", output::time(d.created_at)),
    ]);
    if d.services.is_empty() {
        return;
    }
    println!();
    let rows: Vec<_> = d
        .services
        .iter()
        .map(|(name, s)| {
            vec![
                name.clone(),
                s.state.clone(),
                s.memory.and_then(|m| u64::try_from(m).ok()).map_or_else(
                    || "-".to_owned(),
                    |m| kelp_core::ByteSize::bytes_exact(m).to_string(),
                ),
                output::time(s.updated_at),
            ]
        })
        .collect();
    output::table(&["SERVICE", "STATE", "MEMORY", "UPDATED"], &rows);
}

impl PinArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let release = if self.fleet { None } else { self.version };
        let pinned = cloud
            .pin(Scope::Device(&self.uuid), release.as_deref())
            .await
            .for_user()?;
        let Pinned::Device(d) = pinned else {
            anyhow::bail!(
                "the cloud answered the pin of device {} with a fleet",
                self.uuid
            );
        };
        match &d.pinned_release {
            Some(v) => println!("device {} pinned to release {v}", d.uuid),
            None => println!(
                "device {} follows fleet {} (release {})",
                d.uuid,
                d.fleet,
                or_dash(d.target_release.as_deref())
            ),
        }
        Ok(())
    }
}

impl RenameArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let d = cloud
            .rename_device(&self.uuid, &self.name)
            .await
            .for_user()?;
        println!("device {} is now named {}", d.uuid, d.name);
        Ok(())
    }
}

impl RestartArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let asked = cloud
            .restart_service(&self.uuid, &self.service)
            .await
            .for_user()?;
        println!(
            "asked device {} to restart {} (restart #{})",
            self.uuid, asked.service, asked.count
        );
        Ok(())
    }
}

impl TagArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        // Every argument is checked before any is sent.
        let mut pairs = Vec::new();
        for tag in &self.tags {
            let Some((key, value)) = tag.split_once('=') else {
                anyhow::bail!("`{tag}` is not KEY=VALUE");
            };
            pairs.push((key, value));
        }
        for (key, value) in pairs {
            cloud.set_tag(&self.uuid, key, value).await.for_user()?;
            println!("{}: {key}={value}", self.uuid);
        }
        Ok(())
    }
}

impl UntagArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        for key in &self.keys {
            cloud.delete_tag(&self.uuid, key).await.for_user()?;
            println!("{}: {key} removed", self.uuid);
        }
        Ok(())
    }
}
