//! Creates a fleet (or finds it), lists its devices, sets a variable for
//! all of its services and prints its releases.
//!
//! ```text
//! KELP_URL=http://127.0.0.1:8080 KELP_TOKEN=… cargo run -p kelp-client --example fleet -- garden
//! ```

use std::io::Write;

use kelp_client::{Client, DeviceQuery, Scope, StatusCode};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KELP_URL").map_err(|_| "set KELP_URL to the cloud's URL")?;
    let token = std::env::var("KELP_TOKEN").map_err(|_| "set KELP_TOKEN to an API token")?;
    let fleet = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "garden".to_owned());
    let client = Client::new(&url, token)?;
    tour(&client, &fleet, &mut std::io::stdout().lock()).await
}

/// The tour itself, writing what it finds to `out`.
pub async fn tour(
    client: &Client,
    fleet: &str,
    out: &mut dyn Write,
) -> Result<(), Box<dyn std::error::Error>> {
    match client.create_fleet(fleet).await {
        Ok(created) => writeln!(
            out,
            "created fleet {} (provisioning key: {} characters, shown this once)",
            created.fleet.name,
            created.provisioning_key.len()
        )?,
        Err(e) if e.status() == Some(StatusCode::CONFLICT) => {
            writeln!(out, "fleet {fleet} exists")?;
        }
        Err(e) => return Err(e.into()),
    }

    let query = DeviceQuery {
        fleet: Some(fleet),
        ..DeviceQuery::default()
    };
    let devices = client.devices(&query).await?;
    writeln!(out, "{} devices", devices.len())?;
    for d in &devices {
        let state = if d.online { "online" } else { "offline" };
        writeln!(out, "  {} {} ({state})", d.uuid, d.name)?;
    }

    let var = client
        .set_env(
            Scope::Fleet(fleet),
            "GREETING",
            "hello from kelp-client",
            None,
        )
        .await?;
    writeln!(out, "set {}={}", var.name, var.value)?;

    let releases = client.releases(fleet).await?;
    writeln!(out, "{} releases", releases.len())?;
    for r in &releases {
        let services: Vec<&str> = r.services.keys().map(String::as_str).collect();
        writeln!(out, "  {} [{}]", r.version, services.join(", "))?;
    }
    Ok(())
}
