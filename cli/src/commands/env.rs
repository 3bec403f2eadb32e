//! `kelp env`: variables of a fleet or a device, for all services or one.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use kelp_client::Client;

use crate::cloud::{self, ForUser as _};
use crate::output::{self, OutputArg};

/// Set, unset and list environment variables.
///
/// A device's services see the release's env with variables over it, from the weakest scope to the
/// strongest: fleet, fleet and service, device, device and service.
#[derive(Args, Debug)]
pub struct EnvArgs {
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Subcommand, Debug)]
enum EnvCommand {
    Set(SetArgs),
    Unset(UnsetArgs),
    List(ListArgs),
}

/// Where variables are set: a fleet or a device, and one service or all.
#[derive(Args, Debug)]
struct Scope {
    #[command(flatten)]
    owner: Owner,
    /// Only this service (default: every service).
    #[arg(long)]
    service: Option<String>,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Owner {
    /// The fleet's variables.
    #[arg(long)]
    fleet: Option<String>,
    /// The device's variables (by uuid).
    #[arg(long, value_name = "UUID")]
    device: Option<String>,
}

/// Set variables.
#[derive(Args, Debug)]
struct SetArgs {
    /// KEY=VALUE, one or more.
    #[arg(required = true, value_name = "KEY=VALUE")]
    vars: Vec<String>,
    #[command(flatten)]
    scope: Scope,
}

/// Remove variables.
#[derive(Args, Debug)]
struct UnsetArgs {
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
    #[command(flatten)]
    scope: Scope,
}

/// List the variables set at one scope.
#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    scope: Scope,
    #[command(flatten)]
    output: OutputArg,
}

impl Scope {
    /// The fleet or device named.
    fn owner(&self) -> kelp_client::Scope<'_> {
        match (&self.owner.fleet, &self.owner.device) {
            (Some(fleet), _) => kelp_client::Scope::Fleet(fleet),
            (None, Some(device)) => kelp_client::Scope::Device(device),
            // clap requires one of them.
            (None, None) => kelp_client::Scope::Fleet(""),
        }
    }

    /// `fleet garden`, `device pump-1, service web`.
    fn describe(&self) -> String {
        let owner = match (&self.owner.fleet, &self.owner.device) {
            (Some(fleet), _) => format!("fleet {fleet}"),
            (None, Some(device)) => format!("device {device}"),
            (None, None) => String::new(),
        };
        match &self.service {
            Some(s) => format!("{owner}, service {s}"),
            None => owner,
        }
    }
}

impl EnvArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cloud = cloud::from_session()?;
        match self.command {
            EnvCommand::Set(args) => args.run(&cloud).await?,
            EnvCommand::Unset(args) => args.run(&cloud).await?,
            EnvCommand::List(args) => args.run(&cloud).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl SetArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        // Every pair is checked before the first is set.
        let mut pairs = Vec::with_capacity(self.vars.len());
        for var in &self.vars {
            let Some((key, value)) = var.split_once('=') else {
                bail!("`{var}` is not KEY=VALUE");
            };
            pairs.push((key, value));
        }
        let service = self.scope.service.as_deref();
        for (key, value) in pairs {
            cloud
                .set_env(self.scope.owner(), key, value, service)
                .await
                .for_user()?;
            println!("set {key} for {}", self.scope.describe());
        }
        Ok(())
    }
}

impl UnsetArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let service = self.scope.service.as_deref();
        for key in &self.keys {
            cloud
                .delete_env(self.scope.owner(), key, service)
                .await
                .for_user()?;
            println!("unset {key} for {}", self.scope.describe());
        }
        Ok(())
    }
}

impl ListArgs {
    async fn run(self, cloud: &Client) -> anyhow::Result<()> {
        let service = self.scope.service.as_deref();
        let vars = cloud.env(self.scope.owner(), service).await.for_user()?;
        if self.output.json() {
            return output::print_value(&vars);
        }
        let rows: Vec<_> = vars
            .into_iter()
            .map(|v| vec![v.name, v.value.replace('\n', "\\n")])
            .collect();
        output::table(&["NAME", "VALUE"], &rows);
        Ok(())
    }
}
