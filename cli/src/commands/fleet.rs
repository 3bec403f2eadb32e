//! `kelp fleet`: create, list, show and pin fleets.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kelp_client::{Client, Pinned, Scope};
use kelp_core::api::FleetView;

use crate::cloud::{self, ForUser as _};
use crate::output::{self, OutputArg, or_dash};

/// Manage fleets: groups of devices that run the same release.
#[derive(Args, Debug)]
pub struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Subcommand, Debug)]
enum FleetCommand {
    Create(CreateArgs),
    List(ListArgs),
    Show(ShowArgs),
    Pin(PinArgs),
}

/// Create a fleet, and print its provisioning key (shown this once).
#[derive(Args, Debug)]
struct CreateArgs {
    /// 1 to 63 lowercase letters, digits and inner `-`.
    name: String,
}

/// List the fleets.
#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    output: OutputArg,
}

/// Show one fleet.
#[derive(Args, Debug)]
struct ShowArgs {
    name: String,
    #[command(flatten)]
    output: OutputArg,
}

/// Pin a fleet to one of its releases, or let it track its latest again.
#[derive(Args, Debug)]
struct PinArgs {
    name: String,
    /// The release version to pin to.
    #[arg(required_unless_present = "latest")]
    version: Option<String>,
    /// Track the latest release instead of a pinned one.
    #[arg(long, conflicts_with = "version")]
    latest: bool,
}

impl FleetArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cloud = cloud::from_session()?;
        match self.command {
            FleetCommand::Create(args) => args.run(&cloud).await?,
            FleetCommand::List(args) => args.run(&cloud).await?,
            FleetCommand::Show(args) => args.run(&cloud).await?,
            FleetCommand::Pin(args) => args.run(&cloud).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl CreateArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let created = cloud.create_fleet(&self.name).await.for_user()?;
        println!("created fleet {}", created.fleet.name);
        println!("provisioning key: {}", created.provisioning_key);
        println!(
            "This key is shown this once: keep it for registering devices \
             (`kelp-cloud` keeps only its hash)."
        );
        Ok(())
    }
}

fn row(f: &FleetView) -> Vec<String> {
    vec![
        f.name.clone(),
        or_dash(f.latest_release.as_deref()),
        f.pinned_release
            .clone()
            .unwrap_or_else(|| "(latest)".to_owned()),
        output::time(f.created_at),
    ]
}

const HEADERS: [&str; 4] = ["NAME", "LATEST", "PINNED", "CREATED"];

impl ListArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let fleets = cloud.fleets().await.for_user()?;
        if self.output.json() {
            return output::print_value(&fleets);
        }
        let rows: Vec<_> = fleets.iter().map(row).collect();
        output::table(&HEADERS, &rows);
        Ok(())
    }
}

impl ShowArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let f = cloud.fleet(&self.name).await.for_user()?;
        if self.output.json() {
            return output::print_value(&f);
        }
        output::fields(&[
            ("name", f.name),
            ("latest release", or_dash(f.latest_release.as_deref())),
            (
                "pinned release",
                f.pinned_release
                    .unwrap_or_else(|| "none (tracks its latest)".to_owned()),
            ),
            ("created", output::time(f.created_at)),
        ]);
        Ok(())
    }
}

impl PinArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let release = if self.latest { None } else { self.version };
        let pinned = cloud
            .pin(Scope::Fleet(&self.name), release.as_deref())
            .await
            .for_user()?;
        let Pinned::Fleet(f) = pinned else {
            anyhow::bail!(
                "the cloud answered the pin of fleet {} with a device",
                self.name
            );
        };
        match &f.pinned_release {
            Some(v) => println!("fleet {} pinned to release {v}", f.name),
            None => println!(
                "fleet {} tracks its latest release ({})",
                f.name,
                or_dash(f.latest_release.as_deref())
            ),
        }
        Ok(())
    }
}
