//! The fleet operations: one function for each thing a person or a tool
//! does to fleets and devices (tokens, fleets and their provisioning keys,
//! releases and pins, variables, hardware maps, tags, names, restarts) and
//! for each thing a device tells the cloud. The JSON API and the dashboard
//! both call these, so a variable set on a page reaches devices exactly as
//! one set through the API does: checked the same way, logged the same
//! way, announced to waiting devices the same way.
//!
//! Where a fleet and a device are given the same thing (a pin, a variable,
//! a hardware map) one function takes the [`Scope`]. `by` is the id of the
//! API token acting, which the log names beside every change.

mod check;
pub mod devices;
mod error;
pub mod fleets;
pub mod maps;
pub mod releases;
pub mod reports;
mod scope;
pub mod sessions;
pub mod targets;
pub mod tokens;
pub mod vars;

pub use check::*;
pub use error::ApiError;
pub use scope::Scope;

/// A device counts as online if it asked for its target this recently: two
/// of its longest polls, so one slow round trip does not flap it offline.
pub const ONLINE_WINDOW: i64 = 2 * 60;

/// Whether a device last seen at `last_seen` counts as online.
pub fn is_online(last_seen: i64) -> bool {
    crate::db::now().saturating_sub(last_seen) <= ONLINE_WINDOW
}
