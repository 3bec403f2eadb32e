//! Devices: listed, named, tagged, their services restarted and their
//! samples read.

use kelp_core::api::{DeviceUpdate, DeviceView, RestartRequested, ServiceSamples, TagValue};
use reqwest::Method;

use crate::{Client, Error};

/// Which devices [`Client::devices`] lists.
#[derive(Clone, Debug, Default)]
pub struct DeviceQuery<'a> {
    /// Only this fleet's.
    pub fleet: Option<&'a str>,
    /// Only those whose uuid sorts after this one: the last of the
    /// previous page.
    pub after: Option<&'a str>,
    /// At most this many (the cloud's limit when absent).
    pub limit: Option<u32>,
}

impl Client {
    /// One page of devices, by uuid.
    pub async fn devices(&self, q: &DeviceQuery<'_>) -> Result<Vec<DeviceView>, Error> {
        let limit = q.limit.map(|l| l.to_string());
        let query: Vec<(&str, &str)> = [
            ("fleet", q.fleet),
            ("after", q.after),
            ("limit", limit.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
        self.get(&["api", "v1", "devices"], &query).await
    }

    pub async fn device(&self, uuid: &str) -> Result<DeviceView, Error> {
        self.get(&["api", "v1", "devices", uuid], &[]).await
    }

    /// Gives the device the name people see; its uuid stays.
    pub async fn rename_device(&self, uuid: &str, name: &str) -> Result<DeviceView, Error> {
        let body = DeviceUpdate {
            name: Some(name.to_owned()),
        };
        let path = ["api", "v1", "devices", uuid];
        self.send(Method::PATCH, &path, &[], Some(&body)).await
    }

    pub async fn set_tag(&self, uuid: &str, tag: &str, value: &str) -> Result<DeviceView, Error> {
        let body = TagValue {
            value: value.to_owned(),
        };
        let path = ["api", "v1", "devices", uuid, "tags", tag];
        self.send(Method::PUT, &path, &[], Some(&body)).await
    }

    pub async fn delete_tag(&self, uuid: &str, tag: &str) -> Result<(), Error> {
        let path = ["api", "v1", "devices", uuid, "tags", tag];
        self.empty(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// Asks the device to restart `service`; it does when it next hears
    /// from the cloud.
    pub async fn restart_service(
        &self,
        uuid: &str,
        service: &str,
    ) -> Result<RestartRequested, Error> {
        let path = ["api", "v1", "devices", uuid, "services", service, "restart"];
        self.send(Method::POST, &path, &[], None::<&()>).await
    }

    /// Each service's memory and restarts over time, since `since`
    /// (seconds since the epoch; the last hour when `None`).
    pub async fn samples(&self, uuid: &str, since: Option<i64>) -> Result<ServiceSamples, Error> {
        let since = since.map(|s| s.to_string());
        let query: Vec<(&str, &str)> = since.as_deref().map(|s| ("since", s)).into_iter().collect();
        self.get(&["api", "v1", "devices", uuid, "samples"], &query)
            .await
    }
}
