//! Fleets and their provisioning keys.

use kelp_core::api::{FleetCreated, FleetView, NewFleet, ProvisioningKeyCreated};
use reqwest::Method;

use crate::{Client, Error};

impl Client {
    pub async fn fleets(&self) -> Result<Vec<FleetView>, Error> {
        self.get(&["api", "v1", "fleets"], &[]).await
    }

    /// A new fleet; its provisioning key is in the answer, this once.
    pub async fn create_fleet(&self, name: &str) -> Result<FleetCreated, Error> {
        let body = NewFleet {
            name: name.to_owned(),
        };
        self.send(Method::POST, &["api", "v1", "fleets"], &[], Some(&body))
            .await
    }

    pub async fn fleet(&self, name: &str) -> Result<FleetView, Error> {
        self.get(&["api", "v1", "fleets", name], &[]).await
    }

    /// A new provisioning key for fleet `name`; the previous one stops
    /// working.
    pub async fn rotate_provisioning_key(
        &self,
        name: &str,
    ) -> Result<ProvisioningKeyCreated, Error> {
        let path = ["api", "v1", "fleets", name, "provisioning-key"];
        self.send(Method::POST, &path, &[], None::<&()>).await
    }
}
