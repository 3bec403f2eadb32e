//! `kelp release`: a fleet's releases.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kelp_core::Grants;
use kelp_core::api::{ReleaseView, UpdateStrategy};

use crate::cloud::{Cloud, decode};
use crate::output::{self, OutputArg};

/// List and show releases (`kelp push --fleet` creates them).
#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    command: ReleaseCommand,
}

#[derive(Subcommand, Debug)]
enum ReleaseCommand {
    List(ListArgs),
    Show(ShowArgs),
}

/// List a fleet's releases, oldest first.
#[derive(Args, Debug)]
struct ListArgs {
    fleet: String,
    #[command(flatten)]
    output: OutputArg,
}

/// Show one release: each service's image, limits and grants.
#[derive(Args, Debug)]
struct ShowArgs {
    fleet: String,
    version: String,
    #[command(flatten)]
    output: OutputArg,
}

impl ReleaseArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cloud = Cloud::from_session()?;
        match self.command {
            ReleaseCommand::List(args) => args.run(&cloud).await?,
            ReleaseCommand::Show(args) => args.run(&cloud).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ListArgs {
    async fn run(self, cloud: &Cloud) -> anyhow::Result<()> {
        let releases = cloud
            .get(&["api", "v1", "fleets", &self.fleet, "releases"], &[])
            .await?;
        if self.output.json() {
            return output::print_json(&releases);
        }
        let releases: Vec<ReleaseView> = decode(&releases)?;
        let rows: Vec<_> = releases
            .iter()
            .map(|r| {
                let services: Vec<&str> = r.services.keys().map(String::as_str).collect();
                vec![
                    r.version.clone(),
                    services.join(","),
                    output::time(r.created_at),
                    r.id.clone(),
                ]
            })
            .collect();
        output::table(&["VERSION", "SERVICES", "CREATED", "ID"], &rows);
        Ok(())
    }
}

impl ShowArgs {
    async fn run(self, cloud: &Cloud) -> anyhow::Result<()> {
        let release = cloud
            .get(
                &[
                    "api",
                    "v1",
                    "fleets",
                    &self.fleet,
                    "releases",
                    &self.version,
                ],
                &[],
            )
            .await?;
        if self.output.json() {
            return output::print_json(&release);
        }
        let r: ReleaseView = decode(&release)?;
        output::fields(&[
            ("version", r.version),
            ("fleet", r.fleet),
            ("id", r.id),
            ("created", output::time(r.created_at)),
        ]);
        for (name, s) in r.services {
            println!();
            let env: Vec<String> = s.env.keys().cloned().collect();
            output::fields(&[
                ("service", name),
                ("image", s.image),
                ("restart", s.restart.to_string()),
                ("memory", s.memory.to_string()),
                ("grants", grants(&s.grants)),
                (
                    "env",
                    if env.is_empty() {
                        "-".to_owned()
                    } else {
                        env.join(", ")
                    },
                ),
                (
                    "update",
                    match s.update_strategy {
                        UpdateStrategy::DownloadThenKill => "download-then-kill",
                        UpdateStrategy::KillThenDownload => "kill-then-download",
                        UpdateStrategy::HandOver => "hand-over",
                    }
                    .to_owned(),
                ),
                ("signer", s.signer.unwrap_or_else(|| "-".to_owned())),
            ]);
        }
        Ok(())
    }
}

/// Grants as `gpio:led i2c:sensors`, or `-` for none.
fn grants(g: &Grants) -> String {
    let all: Vec<String> = g
        .gpio
        .keys()
        .map(|l| format!("gpio:{l}"))
        .chain(g.i2c.keys().map(|l| format!("i2c:{l}")))
        .chain(g.network.connect.iter().map(|d| format!("tcp:{d}")))
        .chain(g.network.udp.iter().map(|d| format!("udp:{d}")))
        .chain(g.network.serve_http.then(|| "http:serve".to_owned()))
        .collect();
    if all.is_empty() {
        "-".to_owned()
    } else {
        all.join(" ")
    }
}
