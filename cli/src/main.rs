//! `kelp`, the Kelp command line.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod commands;

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
    Key(commands::key::KeyArgs),
    Sign(commands::sign::SignArgs),
    Verify(commands::verify::VerifyArgs),
    Inspect(commands::inspect::InspectArgs),
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
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

/// `kelp run` is the one command that needs the async runtime.
fn run(args: commands::run::RunArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(args.run())
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
