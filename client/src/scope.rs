//! What the operations that fleets and devices share act on.

/// A fleet, by name, or one device, by uuid: the operations both have
/// (environment variables, hardware maps, pins) take one of these, and a
/// device's setting wins over its fleet's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    Fleet(&'a str),
    Device(&'a str),
}

impl<'a> Scope<'a> {
    /// The API path of what the scope names, then `rest`.
    pub(crate) fn path(self, rest: &[&'a str]) -> Vec<&'a str> {
        let (collection, id) = match self {
            Scope::Fleet(name) => ("fleets", name),
            Scope::Device(uuid) => ("devices", uuid),
        };
        let mut path = vec!["api", "v1", collection, id];
        path.extend_from_slice(rest);
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_names_its_fleet_or_device_in_the_path() {
        assert_eq!(
            Scope::Fleet("garden").path(&["env", "GREETING"]),
            ["api", "v1", "fleets", "garden", "env", "GREETING"]
        );
        assert_eq!(
            Scope::Device("pump-1").path(&["hardware-map"]),
            ["api", "v1", "devices", "pump-1", "hardware-map"]
        );
    }
}
