//! The JSON schemas of the fleet API's bodies that the derives cannot say
//! alone: maps whose keys follow a rule, and the patterns the cloud checks
//! strings against. The cloud's checks and these must agree, so that a
//! client reading the document sends what the cloud takes.

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};

/// Free text shown to people: 1 to 64 characters, none of them control
/// characters.
pub const TEXT: &str = r"^[^\u0000-\u001f\u007f-\u009f]{1,64}$";
/// A fleet name: a DNS label.
pub const FLEET: &str = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// A device uuid as the device chose it.
pub const UUID: &str = r"^[A-Za-z0-9_-]{1,64}$";
/// A word that appears in URLs: a version, an architecture, a tag name.
pub const WORD: &str = r"^[A-Za-z0-9._+-]{1,64}$";
/// An id the server made.
pub const ID: &str = r"^[0-9A-Fa-f-]{36}$";
/// A service name.
pub const SERVICE: &str = r"^[a-z0-9][a-z0-9_-]{0,62}$";
/// An environment variable name as POSIX shells accept it.
pub const ENV_NAME: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$";
/// A pin, bus or network label.
pub const LABEL: &str = r"^[A-Za-z0-9_-]{1,63}$";
/// An image pinned by digest: `[http[s]://]REGISTRY/REPOSITORY@sha256:HEX`,
/// the repository at most 255 characters.
pub const IMAGE: &str = r"^(https?://)?[^/]+/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*@sha256:[0-9a-f]{64}$";
/// A publisher key id.
pub const KEY_ID: &str = r"^[0-9a-f]{24}$";

/// A string matching `pattern`.
pub fn string(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// An object whose keys match `keys`, at most `max` of them, each holding a
/// `value`.
pub fn map(keys: &str, max: Option<usize>, value: impl Into<RefOr<Schema>>) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(string(keys)))
        .max_properties(max)
        .additional_properties(Some(value.into()))
        .into()
}

fn named(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

/// A release's services by name.
pub fn services() -> Schema {
    map(SERVICE, Some(64), named("ServiceSpec"))
}

/// A target state's services by name.
pub fn target_services() -> Schema {
    map(SERVICE, None, named("TargetService"))
}

/// A device's report of its services: each one's state, or null for one
/// it no longer runs.
pub fn reports() -> Schema {
    let value = OneOfBuilder::new()
        .item(named("ServiceReport"))
        .item(ObjectBuilder::new().schema_type(Type::Null));
    map(SERVICE, Some(64), value)
}

/// A service's variables.
pub fn env() -> Schema {
    map(ENV_NAME, Some(256), env_value())
}

/// A variable's value: at most 16 KiB, without NUL.
pub fn env_value() -> ObjectBuilder {
    string(r"^[^\u0000]*$").max_length(Some(16 << 10))
}

pub fn gpio_grants() -> Schema {
    map(LABEL, None, named("GpioGrant"))
}

pub fn i2c_grants() -> Schema {
    map(LABEL, None, named("I2cGrant"))
}

/// A service's memory limit as a release gives it: more than nothing and
/// at most 4 GiB, as a number of bytes or a string with a unit. The string
/// form is described by its common spellings only (up to 999999 KiB, 999
/// MiB, 4 GiB), since a pattern cannot bound a number's value.
pub fn memory() -> Schema {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(4u64 << 30)),
        )
        .item(string(
            "^ ?([1-9][0-9]{0,5} ?[kK]|[1-9][0-9]{0,2} ?[mM]|[1-4] ?[gG])([iI]?[bB])? ?$",
        ))
        .description(Some(
            "The most memory the service may use: a number of bytes, or a string like \
             `64MiB`; more than 0, at most 4 GiB.",
        ))
        .into()
}

/// GPIO modes: at least one; a mode named twice counts once.
pub fn gpio_modes() -> Schema {
    ArrayBuilder::new()
        .items(named("GpioMode"))
        .min_items(Some(1))
        .into()
}

/// I2C addresses: at least one, 7-bit or 10-bit; an address named twice
/// counts once.
pub fn i2c_addresses() -> Schema {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(crate::MAX_I2C_ADDRESS)),
        )
        .min_items(Some(1))
        .into()
}
