//! `kelp-cloud`, Kelp's control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kelp_registry::PullPolicy;

/// Kelp's control plane: the registry and the fleet API.
#[derive(Parser, Debug)]
#[command(name = "kelp-cloud", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Serve(ServeArgs),
}

/// Serve the registry under /v2/, the fleet API under /api/v1/ and
/// /device/v1/, and the web dashboard at /.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Data directory: blobs, the admin token, and the SQLite database unless
    /// --database names another.
    #[arg(long, env = "KELP_CLOUD_DATA", value_name = "DIR")]
    data: PathBuf,

    /// Address to listen on; port 0 picks a free port (the bound address is
    /// printed).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,

    /// Who may pull: `anonymous` (anyone) or `token`. Pushing always needs a
    /// token.
    #[arg(long, default_value = "token")]
    pull: PullPolicy,

    /// Fleet database: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`
    /// (several kelp-cloud processes may share one PostgreSQL database).
    /// Default: DIR/kelp.db.
    #[arg(long, env = "KELP_CLOUD_DATABASE", value_name = "URL")]
    database: Option<String>,
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Watch the signals before anything is announced, so a SIGTERM sent the
    // moment the address is printed is a clean stop and not a kill.
    let shutdown = shutdown_signals()?;
    let data = kelp_cloud::DataDir::open(&args.data)?;
    if let Some(token) = &data.new_admin_token {
        println!(
            "admin token: {token}, saved in {}",
            args.data.join("admin.token").display()
        );
    }
    let url = match &args.database {
        Some(url) => url.clone(),
        None => kelp_cloud::sqlite_url(&args.data)?,
    };
    let cp = kelp_cloud::ControlPlane::open(&data, &url).await?;
    let stopper = cp.clone();
    let closer = cp.clone();
    let app = kelp_cloud::app_with_fleet(&data, args.pull, cp)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, data = %args.data.display(), pull = %args.pull, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopper.stop();
        })
        .await
        .context("server failed")?;
    closer.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// A future that resolves on SIGTERM or SIGINT (Ctrl-C); the handlers are
/// installed when this returns, not when the future is first polled.
fn shutdown_signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KELP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
