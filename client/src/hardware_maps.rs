//! Hardware maps (TOML, as a device's `hardware-map.toml`) of a fleet or a
//! device.

use kelp_core::api::{HardwareMapView, NewHardwareMap};
use reqwest::Method;

use crate::{Client, Error, Scope};

impl Client {
    /// The hardware map `scope` has of its own, if any.
    pub async fn hardware_map(&self, scope: Scope<'_>) -> Result<Option<String>, Error> {
        let path = scope.path(&["hardware-map"]);
        Ok(self.get::<HardwareMapView>(&path, &[]).await?.map)
    }

    /// Gives a fleet's devices without a map of their own `map`, or gives a
    /// device its own, over its fleet's.
    pub async fn set_hardware_map(&self, scope: Scope<'_>, map: &str) -> Result<(), Error> {
        let body = NewHardwareMap {
            map: map.to_owned(),
        };
        let path = scope.path(&["hardware-map"]);
        self.send::<HardwareMapView, _>(Method::PUT, &path, &[], Some(&body))
            .await
            .map(drop)
    }

    pub async fn delete_hardware_map(&self, scope: Scope<'_>) -> Result<(), Error> {
        let path = scope.path(&["hardware-map"]);
        self.empty(Method::DELETE, &path, &[], None::<&()>).await
    }
}
