//! Network grants: the hosts and ports a service may reach, and how a
//! device narrows them.
//!
//! A manifest lists destinations, each a host and a port:
//!
//! ```toml
//! [grants.network]
//! connect = ["broker.local:1883", "api.example.com:443", "*.example.org:443", "10.0.0.5:502"]
//! udp = ["10.0.0.5:514"]      # datagrams
//! serve-http = true           # the service answers HTTP (wasi:http/incoming-handler)
//! ```
//!
//! A device's map may narrow every service at once (`[network] allow`, where
//! a port is optional and a network may be written as a CIDR block):
//!
//! ```toml
//! [network]
//! allow = ["192.168.0.0/16", "*.local"]   # only the local network
//! ```
//!
//! A [`NetworkPolicy`] joins the two. A name may be looked up only if the
//! service was granted it; an address may be reached only if the service was
//! granted the address itself or a name that resolved to it, and the device
//! allows it too. Nothing is allowed by default.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest host name there is (RFC 1035, without the trailing dot).
pub const MAX_HOST_NAME_LEN: usize = 253;

/// Most destinations one list may hold. A real service names a handful; the
/// policy is checked on every connect, by a linear scan.
pub const MAX_DESTINATIONS: usize = 256;

/// The host half of a destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// One host name, lower case, without a trailing dot.
    Name(String),
    /// `*.example.org`: every name below `example.org` (not the name itself).
    /// Holds the suffix with its leading dot, `.example.org`.
    Wildcard(String),
    /// One address.
    Ip(IpAddr),
    /// A CIDR block, `10.0.0.0/8`.
    Net { addr: IpAddr, prefix: u8 },
}

impl Host {
    /// Whether this host is `name` or covers it.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = normalize_name(name);
        match self {
            Host::Name(n) => *n == name,
            Host::Wildcard(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
            Host::Ip(_) | Host::Net { .. } => false,
        }
    }

    /// Whether this host is `addr` or a block that holds it.
    pub fn matches_ip(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        match *self {
            Host::Ip(ip) => canonical(ip) == addr,
            Host::Net { addr: net, prefix } => in_block(addr, canonical(net), prefix),
            Host::Name(_) | Host::Wildcard(_) => false,
        }
    }

    fn is_name(&self) -> bool {
        matches!(self, Host::Name(_) | Host::Wildcard(_))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Wildcard(suffix) => write!(f, "*{suffix}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Net {
                addr: IpAddr::V6(ip),
                prefix,
            } => write!(f, "[{ip}/{prefix}]"),
            Host::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

/// A host and, where the list allows leaving it out, a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub host: Host,
    /// `None` is any port; only a device's allow list may leave it out.
    pub port: Option<u16>,
}

impl Destination {
    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    fn matches(&self, addr: SocketAddr, names: &[&str]) -> bool {
        self.port_matches(addr.port())
            && (self.host.matches_ip(addr.ip()) || names.iter().any(|n| self.host.matches_name(n)))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Why a destination cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("destination is empty")]
    Empty,
    #[error("destination `{0}`: invalid port (1 to 65535)")]
    Port(String),
    #[error("destination `{0}` names no port: write it as `host:port`")]
    NoPort(String),
    #[error("destination `{0}`: invalid host name")]
    Name(String),
    #[error("destination `{0}`: invalid network (address/prefix)")]
    Net(String),
    #[error("destination `{0}`: write an IPv6 address in brackets, `[::1]:80`")]
    Brackets(String),
    #[error("more than {MAX_DESTINATIONS} destinations")]
    TooMany,
}

impl FromStr for Destination {
    type Err = DestinationError;

    /// `host`, `host:port`, `*.suffix:port`, `10.0.0.0/8`, `[::1]:80`,
    /// `[fd00::/8]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad_port = || DestinationError::Port(s.to_owned());
        if s.is_empty() {
            return Err(DestinationError::Empty);
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| DestinationError::Brackets(s.to_owned()))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad_port)?),
            };
            (host, port)
        } else {
            match s.split_once(':') {
                Some((host, port)) if !port.contains(':') => (host, Some(port)),
                Some(_) => return Err(DestinationError::Brackets(s.to_owned())),
                None => (s, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad_port()),
                Ok(p) => Some(p),
            },
        };
        let host = parse_host(host).map_err(|kind| match kind {
            HostError::Name => DestinationError::Name(s.to_owned()),
            HostError::Net => DestinationError::Net(s.to_owned()),
        })?;
        if matches!(
            host,
            Host::Ip(IpAddr::V6(_))
                | Host::Net {
                    addr: IpAddr::V6(_),
                    ..
                }
        ) && !s.starts_with('[')
        {
            return Err(DestinationError::Brackets(s.to_owned()));
        }
        Ok(Destination { host, port })
    }
}

impl Serialize for Destination {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

enum HostError {
    Name,
    Net,
}

fn parse_host(host: &str) -> Result<Host, HostError> {
    if let Some((addr, prefix)) = host.split_once('/') {
        let addr: IpAddr = addr.parse().map_err(|_| HostError::Net)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().map_err(|_| HostError::Net)?;
        if prefix > max {
            return Err(HostError::Net);
        }
        return Ok(Host::Net { addr, prefix });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let name = normalize_name(name);
    if !valid_host_name(&name) {
        return Err(HostError::Name);
    }
    Ok(if wildcard {
        Host::Wildcard(format!(".{name}"))
    } else {
        Host::Name(name)
    })
}

/// Whether `name` is a DNS name a service may ask for: dot-separated labels
/// of letters, digits, `-` and `_`, none empty or longer than 63 bytes.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOST_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.5`) is the IPv4 address:
/// matching must not let the one form past a rule written in the other.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn in_block(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether a device's allow entry `a` could let through some of granted `d`.
fn could_allow(a: &Destination, d: &Destination) -> bool {
    let ports = match (a.port, d.port) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    ports
        && match (&a.host, &d.host) {
            // A name may resolve to any address.
            (Host::Ip(_) | Host::Net { .. }, Host::Name(_) | Host::Wildcard(_)) => true,
            (Host::Name(_) | Host::Wildcard(_), Host::Ip(_) | Host::Net { .. }) => false,
            (a, Host::Name(n)) => a.matches_name(n),
            (Host::Name(n), d) => d.matches_name(n),
            (Host::Wildcard(x), Host::Wildcard(y)) => {
                x.ends_with(y.as_str()) || y.ends_with(x.as_str())
            }
            (Host::Ip(x), d) => d.matches_ip(*x),
            (a, Host::Ip(y)) => a.matches_ip(*y),
            (
                Host::Net {
                    addr: x,
                    prefix: px,
                },
                Host::Net {
                    addr: y,
                    prefix: py,
                },
            ) => {
                let p = (*px).min(*py);
                in_block(canonical(*x), canonical(*y), p)
            }
        }
}

/// What a manifest asks of the network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkGrant {
    /// TCP destinations, HTTP and HTTPS included: `host:port`,
    /// `*.suffix:port`, `10.0.0.5:502`, `[::1]:80`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub connect: Vec<Destination>,
    /// Destinations of UDP datagrams, written as `connect`'s are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub udp: Vec<Destination>,
    /// The service answers HTTP requests (it exports
    /// `wasi:http/incoming-handler`); the device says where.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub serve_http: bool,
}

impl NetworkGrant {
    /// Whether the grant asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.connect.is_empty() && self.udp.is_empty() && !self.serve_http
    }

    /// Every destination names a port, and the lists are of a sane length.
    pub fn validate(&self) -> Result<(), DestinationError> {
        for list in [&self.connect, &self.udp] {
            if list.len() > MAX_DESTINATIONS {
                return Err(DestinationError::TooMany);
            }
            if let Some(d) = list.iter().find(|d| d.port.is_none()) {
                return Err(DestinationError::NoPort(d.to_string()));
            }
        }
        Ok(())
    }
}

/// The transport a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// Why a lookup or connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The service's manifest does not grant it.
    NotGranted,
    /// Granted, but this device's map does not allow it.
    NotAllowedHere,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::NotGranted => "not granted",
            Refusal::NotAllowedHere => "not allowed on this device",
        })
    }
}

/// One service's network rights on one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    grant: NetworkGrant,
    /// `None`: the device does not narrow.
    device: Option<Vec<Destination>>,
}

impl NetworkPolicy {
    pub fn new(grant: &NetworkGrant, device: Option<&[Destination]>) -> Self {
        NetworkPolicy {
            grant: grant.clone(),
            device: device.map(<[Destination]>::to_vec),
        }
    }

    /// No outbound traffic at all is possible.
    pub fn denies_all(&self) -> bool {
        (self.grant.connect.is_empty() && self.grant.udp.is_empty())
            || self.device.as_ref().is_some_and(Vec::is_empty)
    }

    /// Whether any outbound TCP or UDP is granted.
    pub fn allows(&self, transport: Transport) -> bool {
        !self.list(transport).is_empty() && !self.device.as_ref().is_some_and(Vec::is_empty)
    }

    fn list(&self, transport: Transport) -> &[Destination] {
        match transport {
            Transport::Tcp => &self.grant.connect,
            Transport::Udp => &self.grant.udp,
        }
    }

    /// The granted destinations this device's allow list rules out entirely,
    /// so the operator can be told at start. A granted name is ruled out
    /// only when the list holds no address (the name might resolve into one
    /// of them) and no name covering it; a granted address or block only
    /// when no address or block on the list overlaps it.
    pub fn narrowed_away(&self) -> Vec<(Transport, &Destination)> {
        let Some(allow) = &self.device else {
            return Vec::new();
        };
        [Transport::Tcp, Transport::Udp]
            .into_iter()
            .flat_map(|t| self.list(t).iter().map(move |d| (t, d)))
            .filter(|(_, d)| !allow.iter().any(|a| could_allow(a, d)))
            .collect()
    }

    /// May the service look `name` up? Only a name its grant covers, and
    /// one the device does not rule out: a device whose allow list holds only
    /// names must cover this one; one that lists addresses leaves the check
    /// to the connection.
    pub fn may_resolve(&self, name: &str) -> Result<(), Refusal> {
        let granted = self
            .grant
            .connect
            .iter()
            .chain(&self.grant.udp)
            .any(|d| d.host.matches_name(name));
        if !granted {
            return Err(Refusal::NotGranted);
        }
        match &self.device {
            None => Ok(()),
            Some(allow) => {
                if allow
                    .iter()
                    .any(|d| !d.host.is_name() || d.host.matches_name(name))
                {
                    Ok(())
                } else {
                    Err(Refusal::NotAllowedHere)
                }
            }
        }
    }

    /// May the service reach `addr` over `transport`? `names` are the names
    /// this service looked up that resolved to `addr` (empty for an address
    /// it had on its own).
    pub fn may_connect(
        &self,
        transport: Transport,
        addr: SocketAddr,
        names: &[&str],
    ) -> Result<(), Refusal> {
        if !self.list(transport).iter().any(|d| d.matches(addr, names)) {
            return Err(Refusal::NotGranted);
        }
        match &self.device {
            Some(allow) if !allow.iter().any(|d| d.matches(addr, names)) => {
                Err(Refusal::NotAllowedHere)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
