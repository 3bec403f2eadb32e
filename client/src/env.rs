//! Environment variables of a fleet or a device, for all services or one.

use kelp_core::api::{EnvValue, EnvView};
use reqwest::Method;

use crate::{Client, Error, Scope};

impl Client {
    /// The variables of `scope` for all services, or with `service` for that
    /// one. A device's are its own, which win over its fleet's.
    pub async fn env(
        &self,
        scope: Scope<'_>,
        service: Option<&str>,
    ) -> Result<Vec<EnvView>, Error> {
        self.get(&scope.path(&["env"]), &service_query(service))
            .await
    }

    pub async fn set_env(
        &self,
        scope: Scope<'_>,
        name: &str,
        value: &str,
        service: Option<&str>,
    ) -> Result<EnvView, Error> {
        let body = EnvValue {
            value: value.to_owned(),
        };
        let path = scope.path(&["env", name]);
        self.send(Method::PUT, &path, &service_query(service), Some(&body))
            .await
    }

    pub async fn delete_env(
        &self,
        scope: Scope<'_>,
        name: &str,
        service: Option<&str>,
    ) -> Result<(), Error> {
        let path = scope.path(&["env", name]);
        self.empty(Method::DELETE, &path, &service_query(service), None::<&()>)
            .await
    }
}

fn service_query(service: Option<&str>) -> Vec<(&str, &str)> {
    service.map(|s| ("service", s)).into_iter().collect()
}
