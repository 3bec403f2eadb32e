//! A fleet's releases, and the pins that hold a fleet or a device to one.

use kelp_core::api::{DeviceView, FleetView, NewRelease, Pin, ReleaseView};
use reqwest::Method;

use crate::{Client, Error, Scope};

/// What a pin answers: the fleet or the device, as it is now.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value a call, moved out at once: boxing would only add an allocation"
)]
pub enum Pinned {
    Fleet(FleetView),
    Device(DeviceView),
}

impl Client {
    /// The fleet's releases, oldest first.
    pub async fn releases(&self, fleet: &str) -> Result<Vec<ReleaseView>, Error> {
        self.get(&["api", "v1", "fleets", fleet, "releases"], &[])
            .await
    }

    pub async fn create_release(
        &self,
        fleet: &str,
        release: &NewRelease,
    ) -> Result<ReleaseView, Error> {
        let path = ["api", "v1", "fleets", fleet, "releases"];
        self.send(Method::POST, &path, &[], Some(release)).await
    }

    pub async fn release(&self, fleet: &str, version: &str) -> Result<ReleaseView, Error> {
        self.get(&["api", "v1", "fleets", fleet, "releases", version], &[])
            .await
    }

    /// Pins a fleet, or a device, to release `version` (of the device's
    /// fleet). With `None` a fleet tracks its latest release again and a
    /// device follows its fleet.
    pub async fn pin(&self, scope: Scope<'_>, version: Option<&str>) -> Result<Pinned, Error> {
        let body = Pin {
            release: version.map(str::to_owned),
        };
        let path = scope.path(&["pin"]);
        Ok(match scope {
            Scope::Fleet(_) => {
                Pinned::Fleet(self.send(Method::PUT, &path, &[], Some(&body)).await?)
            }
            Scope::Device(_) => {
                Pinned::Device(self.send(Method::PUT, &path, &[], Some(&body)).await?)
            }
        })
    }
}
