//! `kelp login` and `kelp logout`: which cloud the fleet commands talk to.

use std::process::ExitCode;

use clap::Args;

use kelp_client::Client;

use crate::cloud::{self, ForUser as _, Login};

/// Log in to a Kelp cloud, for the fleet commands.
///
/// Checks an API token against the cloud, then stores the URL and the token,
/// readable by you only, in `$XDG_CONFIG_HOME/kelp/config.toml` (by default
/// `~/.config/kelp/config.toml`). `KELP_URL` and `KELP_TOKEN` override them.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The cloud's URL, e.g. http://127.0.0.1:8080.
    url: String,

    /// An API token of that cloud (the admin token `kelp-cloud serve`
    /// printed, or one from `POST /api/v1/tokens`).
    #[arg(long, env = "KELP_TOKEN", hide_env_values = true)]
    token: String,
}

impl LoginArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        cloud::parse_url(&self.url)?;
        let cloud = Client::new(&self.url, self.token)?;
        // Any request that needs a token will do; this one changes nothing.
        cloud.fleets().await.for_user()?;
        let login = Login {
            url: cloud.base().as_str().trim_end_matches('/').to_owned(),
            token: cloud.token().to_owned(),
        };
        let path = cloud::store(&login)?;
        println!("logged in to {}; saved in {}", login.url, path.display());
        Ok(ExitCode::SUCCESS)
    }
}

/// Forget the stored login.
#[derive(Args, Debug)]
pub struct LogoutArgs {}

impl LogoutArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match cloud::forget()? {
            Some(path) => println!("logged out; removed {}", path.display()),
            None => println!("not logged in; nothing to remove"),
        }
        Ok(ExitCode::SUCCESS)
    }
}
