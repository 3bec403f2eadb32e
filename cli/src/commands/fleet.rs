//! `kelp fleet`: create, list, show and pin fleets.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kelp_core::api::{FleetCreated, FleetView};
use reqwest::Method;
use serde_json::json;

use crate::cloud::{Cloud, decode};
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
        let cloud = Cloud::from_session()?;
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
    async fn run(self, cloud: &Cloud) -> anyhow::Result<()> {
        let created = cloud
            .call(
                Method::POST,
                &["api", "v1", "fleets"],
                &[],
                Some(json!({ "name": self.name })),
            )
            .await?;
        let created: FleetCreated = decode(&created)?;
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
    async fn run(self, cloud: &Cloud) -> anyhow::Result<()> {
        let fleets = cloud.get(&["api", "v1", "fleets"], &[]).await?;
        if self.output.json() {
            return output::print_json(&fleets);
        }
        let fleets: Vec<FleetView> = decode(&fleets)?;
        let rows: Vec<_> = fleets.iter().map(row).collect();
        output::table(&HEADERS, &rows);
        Ok(())
    }
}

impl ShowArgs {
    async fn run(self, cloud: &Cloud) -> anyhow::Result<()> {
        let fleet = cloud.get(&["api", "v1", "fleets", &self.name], &[]).await?;
        if self.output.json() {
            return output::print_json(&fleet);
        }
        let f: FleetView = decode(&fleet)?;
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
    async fn run(self, cloud: &Cloud) -> anyhow::Result<()> {
        let release = if self.latest { None } else { self.version };
        let fleet = cloud
            .call(
                Method::PUT,
                &["api", "v1", "fleets", &self.name, "pin"],
                &[],
                Some(json!({ "release": release })),
            )
            .await?;
        let f: FleetView = decode(&fleet)?;
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
