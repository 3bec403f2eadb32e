//! `kelp`, the Kelp command line.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod build;
mod cloud;
mod commands;
mod output;
mod progress;
#[cfg(test)]
mod reference;

/// Build, sign, ship and run WebAssembly services on fleets of devices.
#[derive(Parser, Debug)]
#[command(name = "kelp", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Run(commands::run::RunArgs),
    Demo(commands::demo::DemoArgs),
    Key(commands::key::KeyArgs),
    Sign(commands::sign::SignArgs),
    Verify(commands::verify::VerifyArgs),
    Inspect(commands::inspect::InspectArgs),
    Push(commands::push::PushArgs),
    Pull(commands::pull::PullArgs),
    Login(commands::login::LoginArgs),
    Logout(commands::login::LogoutArgs),
    Fleet(commands::fleet::FleetArgs),
    Device(commands::device::DeviceArgs),
    Release(commands::release::ReleaseArgs),
    Env(commands::env::EnvArgs),
    Logs(commands::logs::LogsArgs),
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => block_on(args.run()),
        Command::Demo(args) => block_on(args.run()),
        Command::Push(args) => block_on(args.run()),
        Command::Pull(args) => block_on(args.run()),
        Command::Login(args) => block_on(args.run()),
        Command::Logout(args) => args.run(),
        Command::Fleet(args) => block_on(args.run()),
        Command::Device(args) => block_on(args.run()),
        Command::Release(args) => block_on(args.run()),
        Command::Env(args) => block_on(args.run()),
        Command::Logs(args) => block_on(args.run()),
        Command::Key(args) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Sign(args) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Verify(args) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => args.run().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an async command on an executor tuned for guests (see
/// `kelp_runtime::executor`); commands that need none skip starting it.
fn block_on(
    command: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    kelp_runtime::executor(None)
        .build()
        .context("cannot start the async runtime")?
        .block_on(command)
}

fn init_tracing() {
    // Quiet unless asked: `kelp` output is the service's output.
    let filter = tracing_subscriber::EnvFilter::try_from_env("KELP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
