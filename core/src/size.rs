use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of memory, written `64MiB`, `512KiB`, `1GiB` or a plain number of
/// bytes. `K`, `M`, `G` (and `KB`, `MB`, `GB`) are read as powers of 1024 too,
/// since nobody sizes a linear memory in powers of ten.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(u64);

/// Why a string is not a [`ByteSize`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("size `{0}` is not a number of bytes with an optional unit (KiB, MiB, GiB)")]
pub struct SizeError(String);

impl ByteSize {
    pub const fn bytes_exact(bytes: u64) -> Self {
        ByteSize(bytes)
    }

    pub const fn mib(mib: u64) -> Self {
        ByteSize(mib << 20)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (unit, name) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{} {name}", self.0 / unit);
            }
        }
        if self.0 >= 1 << 20 {
            return write!(f, "{:.1} MiB", self.0 as f64 / f64::from(1u32 << 20));
        }
        if self.0 >= 1 << 10 {
            return write!(f, "{:.1} KiB", self.0 as f64 / 1024.0);
        }
        write!(f, "{} B", self.0)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SizeError(s.to_owned());
        let trimmed = s.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number.parse().map_err(|_| err())?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            _ => return Err(err()),
        };
        number
            .checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(err)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A number of bytes, or a string with a unit; answers always hold the
/// number.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ByteSize {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(BYTE_SIZE_PATTERN)),
            )
            .description(Some(
                "An amount of memory: a number of bytes, or a string like `64MiB`, \
                 `512 KiB` or `1GiB` (`K`, `M`, `G`, `KB`, `MB`, `GB` are powers of 1024 \
                 too). Answers give the number.",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ByteSize {
    fn name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
}

/// What [`ByteSize::from_str`] reads, as a regular expression.
#[cfg(feature = "openapi")]
pub const BYTE_SIZE_PATTERN: &str = r"^\s*[0-9]+\s*([bB]|[kKmMgG]([iI]?[bB])?)?\s*$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().bytes(), 64 << 20);
        assert_eq!("64M".parse::<ByteSize>().unwrap().bytes(), 64 << 20);
        assert_eq!("512 KiB".parse::<ByteSize>().unwrap().bytes(), 512 << 10);
        assert_eq!("1gib".parse::<ByteSize>().unwrap().bytes(), 1 << 30);
        assert_eq!("4096".parse::<ByteSize>().unwrap().bytes(), 4096);
    }

    #[test]
    fn rejects_nonsense_and_overflow() {
        for bad in ["", "MiB", "12 parsecs", "-1MiB", "99999999999999999999GiB"] {
            let err = bad.parse::<ByteSize>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(ByteSize::mib(64).to_string(), "64 MiB");
        assert_eq!(ByteSize::bytes_exact(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize::bytes_exact(12).to_string(), "12 B");
    }

    #[test]
    fn reads_numbers_and_strings_from_toml() {
        #[derive(Deserialize)]
        struct T {
            a: ByteSize,
            b: ByteSize,
        }
        let t: T = toml::from_str("a = 1024\nb = \"2MiB\"").unwrap();
        assert_eq!((t.a.bytes(), t.b.bytes()), (1024, 2 << 20));
    }
}
