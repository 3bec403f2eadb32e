//! A typed client of the Kelp cloud's fleet API (`/api/v1/…`): API tokens,
//! fleets and their provisioning keys, releases and pins, devices (names,
//! tags), environment variables of a fleet or a device, hardware maps and
//! device logs, including following them. The bodies are
//! [`kelp_core::api`]'s, the ones the cloud itself serves; the cloud
//! describes every call in its OpenAPI document, `GET /api/v1/openapi.json`
//! ([`Client::openapi`]).
//!
//! What fleets and devices both have (variables, hardware maps, pins) is one
//! call with a [`Scope`]: `Scope::Fleet(name)` or `Scope::Device(uuid)`.
//! Every call returns one [`Error`] type; a refusal carries the status and
//! the cloud's own message, and the field at fault when there is one.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kelp_client::Error> {
//! use kelp_client::{Client, Scope, StatusCode};
//!
//! let cloud = Client::new("http://127.0.0.1:8080", "the API token")?;
//! match cloud.create_fleet("garden").await {
//!     Ok(created) => println!("provisioning key: {}", created.provisioning_key),
//!     Err(e) if e.status() == Some(StatusCode::CONFLICT) => println!("garden exists"),
//!     Err(e) => return Err(e),
//! }
//! cloud.set_env(Scope::Fleet("garden"), "GREETING", "hello", None).await?;
//! for release in cloud.releases("garden").await? {
//!     println!("{} ({} services)", release.version, release.services.len());
//! }
//! # Ok(()) }
//! ```
//!
//! The modules: `client` (the connection and how each call is sent), `error`,
//! `scope`, then one module per resource: `tokens`, `fleets`, `releases`
//! (with pins), `devices`, `env`, `hardware_maps`, `logs`.

mod client;
mod devices;
mod env;
mod error;
mod fleets;
mod hardware_maps;
mod logs;
mod releases;
mod scope;
mod tokens;

pub use client::{CONNECT_TIMEOUT, Client, REQUEST_TIMEOUT, parse_url};
pub use devices::DeviceQuery;
pub use error::Error;
pub use kelp_core::api;
pub use logs::{FOLLOW_INTERVAL, LogFollower, LogQuery, MAX_LOG_READ};
pub use releases::Pinned;
pub use reqwest::{StatusCode, Url};
pub use scope::Scope;
