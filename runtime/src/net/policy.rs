//! One instance's network rights ([`NetRun`]): the service's policy, what
//! its own lookups returned, and the refusals it noted.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use kelp_core::{Destination, NetworkGrant, NetworkPolicy, Refusal, Transport};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::logs::{LogBuffer, Stream};

/// Most outgoing HTTP connections one run holds open at once. A device
/// service talks to a handful of endpoints; each connection costs the host a
/// socket, a task and buffers. Past it the guest gets
/// `connection-limit-reached` until one of its responses is done.
pub const MAX_HTTP_CONNECTIONS: usize = 16;

/// Most addresses one run remembers as resolved from a granted name. A
/// service talks to a handful of hosts with a few addresses each; this
/// bounds what a guest that looks names up in a loop makes the host keep.
/// Addresses past it are not remembered, so connecting to them is refused.
pub const MAX_RESOLVED_ADDRESSES: usize = 1024;

/// Most lookups one run may have open at once whose answers are still being
/// recorded; a guest holds one or two. Past it, those open are forgotten
/// (their addresses are then refused, never allowed).
pub const MAX_OPEN_LOOKUPS: usize = 256;

/// Most distinct refusals one run notes in its log. Each destination is
/// noted once; a guest scanning ports must not fill the log with them.
pub const MAX_NOTED_REFUSALS: usize = 64;

/// One instance's network rights and what its lookups returned.
///
/// A command's run is one instance. A service that answers HTTP has an
/// instance per request; those share the service's [`NetRun`] parts
/// (policy, outgoing HTTP connections, refusals noted) and each gets its own
/// lookups from [`NetRun::instance`], since lookup streams are numbered per
/// instance.
#[derive(Clone)]
pub(crate) struct NetRun {
    shared: Arc<Shared>,
    lookups: Arc<Mutex<Lookups>>,
}

struct Shared {
    policy: NetworkPolicy,
    /// The manifest asks for UDP (the device may still forbid it).
    udp_granted: bool,
    /// Outgoing HTTP connections the service may still open.
    http_connections: Arc<tokio::sync::Semaphore>,
    logs: Arc<LogBuffer>,
    /// Destinations whose refusal was noted.
    noted: Mutex<HashSet<String>>,
}

#[derive(Default)]
struct Lookups {
    /// Address → the granted names that resolved to it in this instance.
    resolved: HashMap<IpAddr, Vec<String>>,
    /// Open lookup stream (its resource index) → the name it resolves.
    open: HashMap<u32, String>,
}

impl NetRun {
    pub(crate) fn new(
        grant: &NetworkGrant,
        device_allow: Option<&[Destination]>,
        logs: Arc<LogBuffer>,
    ) -> Self {
        NetRun {
            shared: Arc::new(Shared {
                policy: NetworkPolicy::new(grant, device_allow),
                udp_granted: !grant.udp.is_empty(),
                http_connections: Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS)),
                logs,
                noted: Mutex::default(),
            }),
            lookups: Arc::default(),
        }
    }

    /// The same rights for another instance of the service, with lookups of
    /// its own.
    pub(crate) fn instance(&self) -> NetRun {
        NetRun {
            shared: self.shared.clone(),
            lookups: Arc::default(),
        }
    }

    /// One of the service's outgoing HTTP connections, if it has one left.
    pub(super) fn http_connection(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.shared
            .http_connections
            .clone()
            .try_acquire_owned()
            .ok()
    }

    /// What the operator should know at start: grants this device rules out.
    pub(crate) fn notices(&self) -> Vec<String> {
        self.shared
            .policy
            .narrowed_away()
            .into_iter()
            .map(|(transport, d)| {
                let list = match transport {
                    Transport::Tcp => "connect",
                    Transport::Udp => "udp",
                };
                format!("grant network.{list} `{d}`: {}", Refusal::NotAllowedHere)
            })
            .collect()
    }

    /// Hands wasmtime-wasi the checks for this run's sockets.
    pub(crate) fn configure(&self, wasi: &mut WasiCtxBuilder) {
        let run = self.clone();
        wasi.allow_ip_name_lookup(!self.shared.policy.denies_all())
            .allow_tcp(true)
            .allow_udp(true)
            .socket_addr_check(move |addr, used| {
                let allowed = run.check(addr, used);
                Box::pin(std::future::ready(allowed))
            });
    }

    /// Whether the guest may use `addr` for `used`; notes refusals.
    pub(super) fn check(&self, addr: SocketAddr, used: SocketAddrUse) -> bool {
        let policy = &self.shared.policy;
        // What `connect` and `send` bind on their own: a local port the
        // kernel picks, on no address in particular.
        let ephemeral = addr.ip().is_unspecified() && addr.port() == 0;
        match used {
            SocketAddrUse::TcpBind if ephemeral => true,
            SocketAddrUse::TcpBind | SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => {
                self.note(
                    format!("listen on `{addr}`"),
                    "services do not listen; answering HTTP is granted with `serve-http`",
                );
                false
            }
            SocketAddrUse::UdpBind if !policy.allows(Transport::Udp) => {
                let why = if self.shared.udp_granted {
                    Refusal::NotAllowedHere
                } else {
                    Refusal::NotGranted
                };
                self.note("udp".into(), &why.to_string());
                false
            }
            SocketAddrUse::UdpBind if ephemeral => true,
            SocketAddrUse::UdpBind => {
                self.note(
                    format!("udp bind on `{addr}`"),
                    "services do not listen; UDP goes out from a port the host picks",
                );
                false
            }
            SocketAddrUse::TcpConnect => self.may_connect_as(Transport::Tcp, addr, None, true),
            SocketAddrUse::UdpSend => self.may_connect_as(Transport::Udp, addr, None, true),
            // Datagrams arrive unasked: dropped quietly unless from where the
            // service may send.
            SocketAddrUse::UdpReceive => self.may_connect_as(Transport::Udp, addr, None, false),
        }
    }

    /// May the guest reach `addr`? `looked_up` is a name the host itself
    /// just resolved to it (for `wasi:http`); the run's own lookups count
    /// too. Refusals are noted when `note`.
    pub(super) fn may_connect_as(
        &self,
        transport: Transport,
        addr: SocketAddr,
        looked_up: Option<&str>,
        note: bool,
    ) -> bool {
        let mut names = self.names_of(addr.ip());
        if let Some(name) = looked_up {
            names.insert(0, name.to_owned());
        }
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        match self.shared.policy.may_connect(transport, addr, &name_refs) {
            Ok(()) => true,
            Err(refusal) => {
                if note {
                    // What the guest asked for: the name when the host
                    // looked it up, else the address and the names this
                    // run resolved to it.
                    let shown = match looked_up {
                        Some(name) => format!("`{name}:{}`", addr.port()),
                        None if names.is_empty() => format!("`{addr}`"),
                        None => format!("`{addr}` ({})", names.join(", ")),
                    };
                    let what = match transport {
                        Transport::Tcp => shown,
                        Transport::Udp => format!("udp {shown}"),
                    };
                    self.note(what, &refusal.to_string());
                }
                false
            }
        }
    }

    /// The granted names that resolved to `ip` in this run.
    fn names_of(&self, ip: IpAddr) -> Vec<String> {
        lock(&self.lookups)
            .resolved
            .get(&ip.to_canonical())
            .cloned()
            .unwrap_or_default()
    }

    /// May the guest look `name` up? Noted when not, with the `port` it was
    /// for when the host knows it (`wasi:http`; a socket's lookup has none).
    pub(super) fn may_resolve(&self, name: &str, port: Option<u16>) -> Result<(), Refusal> {
        self.shared.policy.may_resolve(name).inspect_err(|refusal| {
            let what = match port {
                Some(port) => format!("`{name}:{port}`"),
                None => format!("`{name}`"),
            };
            self.note(what, &refusal.to_string());
        })
    }

    /// A lookup stream was opened: for a granted `name`, or (`None`) for an
    /// address written out. A stream's index is reused once the guest drops
    /// it, so an address's stream must clear what an earlier name left
    /// under the same index, or its answer would count as that name's.
    pub(super) fn lookup_started(&self, stream: u32, name: Option<String>) {
        let mut lookups = lock(&self.lookups);
        let Some(name) = name else {
            lookups.open.remove(&stream);
            return;
        };
        if lookups.open.len() >= MAX_OPEN_LOOKUPS && !lookups.open.contains_key(&stream) {
            lookups.open.clear();
        }
        lookups.open.insert(stream, name);
    }

    pub(super) fn lookup_answered(&self, stream: u32, ip: IpAddr) {
        let mut lookups = lock(&self.lookups);
        let Some(name) = lookups.open.get(&stream).cloned() else {
            return;
        };
        let ip = ip.to_canonical();
        if !lookups.resolved.contains_key(&ip) && lookups.resolved.len() >= MAX_RESOLVED_ADDRESSES {
            return;
        }
        let names = lookups.resolved.entry(ip).or_default();
        if !names.contains(&name) {
            names.push(name);
        }
    }

    /// Writes `kelp: network WHAT refused: WHY` to the service's log, once
    /// per `what`.
    fn note(&self, what: String, why: &str) {
        let mut noted = lock(&self.shared.noted);
        if noted.len() > MAX_NOTED_REFUSALS || noted.contains(&what) {
            return;
        }
        let line = if noted.len() == MAX_NOTED_REFUSALS {
            "kelp: network: more refusals, not noted\n".to_owned()
        } else {
            format!("kelp: network {what} refused: {why}\n")
        };
        noted.insert(what);
        drop(noted);
        self.shared.logs.write(Stream::Stderr, line.as_bytes());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogEvent;

    fn run(connect: &[&str], udp: &[&str], allow: Option<&[&str]>) -> (NetRun, Arc<LogBuffer>) {
        let grant = NetworkGrant {
            connect: connect.iter().map(|d| d.parse().unwrap()).collect(),
            udp: udp.iter().map(|d| d.parse().unwrap()).collect(),
            serve_http: false,
        };
        let allow: Option<Vec<Destination>> =
            allow.map(|a| a.iter().map(|d| d.parse().unwrap()).collect());
        let logs = LogBuffer::new();
        (NetRun::new(&grant, allow.as_deref(), logs.clone()), logs)
    }

    fn notes(logs: &LogBuffer) -> Vec<String> {
        logs.drain()
            .into_iter()
            .filter_map(|e| match e {
                LogEvent::Line(l) => Some(l.text),
                LogEvent::Dropped(_) => None,
            })
            .collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn binds_only_what_connect_and_send_do_on_their_own() {
        let (net, logs) = run(&["localhost:80"], &[], None);
        assert!(net.check(addr("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(net.check(addr("[::]:0"), SocketAddrUse::TcpBind));
        assert!(!net.check(addr("0.0.0.0:8080"), SocketAddrUse::TcpBind));
        assert!(!net.check(addr("127.0.0.1:0"), SocketAddrUse::TcpBind));
        assert!(!net.check(addr("0.0.0.0:41000"), SocketAddrUse::TcpListen));
        // No UDP grant: not even a socket of its own.
        assert!(!net.check(addr("0.0.0.0:0"), SocketAddrUse::UdpBind));
        assert_eq!(
            notes(&logs),
            [
                "kelp: network listen on `0.0.0.0:8080` refused: services do not listen; \
                 answering HTTP is granted with `serve-http`",
                "kelp: network listen on `127.0.0.1:0` refused: services do not listen; \
                 answering HTTP is granted with `serve-http`",
                "kelp: network listen on `0.0.0.0:41000` refused: services do not listen; \
                 answering HTTP is granted with `serve-http`",
                "kelp: network udp refused: not granted",
            ]
        );
        let (net, logs) = run(&[], &["10.0.0.5:514"], Some(&[]));
        assert!(!net.check(addr("0.0.0.0:0"), SocketAddrUse::UdpBind));
        assert_eq!(
            notes(&logs),
            ["kelp: network udp refused: not allowed on this device"]
        );
        let (net, _) = run(&[], &["10.0.0.5:514"], None);
        assert!(net.check(addr("0.0.0.0:0"), SocketAddrUse::UdpBind));
        assert!(!net.check(addr("0.0.0.0:514"), SocketAddrUse::UdpBind));
        assert!(net.check(addr("10.0.0.5:514"), SocketAddrUse::UdpSend));
        assert!(!net.check(addr("10.0.0.6:514"), SocketAddrUse::UdpSend));
        assert!(net.check(addr("10.0.0.5:514"), SocketAddrUse::UdpReceive));
        assert!(!net.check(addr("10.0.0.6:514"), SocketAddrUse::UdpReceive));
    }

    #[test]
    fn a_granted_name_opens_the_addresses_it_resolved_to_in_this_run() {
        let (net, logs) = run(&["broker.local:1883"], &[], None);
        let broker = addr("192.168.1.20:1883");
        assert!(!net.check(broker, SocketAddrUse::TcpConnect));
        net.lookup_started(7, Some("broker.local".into()));
        net.lookup_answered(7, broker.ip());
        assert!(net.check(broker, SocketAddrUse::TcpConnect));
        // The stream's index, reused for an address written out, does not
        // make that address the name's.
        net.lookup_started(7, None);
        net.lookup_answered(7, "10.8.8.8".parse().unwrap());
        assert!(!net.check(addr("10.8.8.8:1883"), SocketAddrUse::TcpConnect));
        // The IPv4-mapped form is the same address.
        assert!(net.check(
            addr("[::ffff:192.168.1.20]:1883"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!net.check(addr("192.168.1.20:22"), SocketAddrUse::TcpConnect));
        // An answer to a stream that is not a granted lookup opens nothing.
        net.lookup_answered(8, "10.9.9.9".parse().unwrap());
        assert!(!net.check(addr("10.9.9.9:1883"), SocketAddrUse::TcpConnect));
        assert_eq!(
            notes(&logs),
            [
                "kelp: network `192.168.1.20:1883` refused: not granted",
                "kelp: network `10.8.8.8:1883` refused: not granted",
                "kelp: network `192.168.1.20:22` (broker.local) refused: not granted",
                "kelp: network `10.9.9.9:1883` refused: not granted",
            ]
        );
    }

    #[test]
    fn refusals_are_noted_once_each_and_then_no_more() {
        let (net, logs) = run(&[], &[], None);
        for _ in 0..3 {
            assert!(!net.check(addr("10.0.0.1:80"), SocketAddrUse::TcpConnect));
        }
        assert_eq!(notes(&logs).len(), 1);
        for port in 1..=200 {
            net.check(addr(&format!("10.0.0.2:{port}")), SocketAddrUse::TcpConnect);
        }
        let noted = notes(&logs);
        assert_eq!(noted.len(), MAX_NOTED_REFUSALS);
        assert_eq!(
            noted.last().map(String::as_str),
            Some("kelp: network: more refusals, not noted")
        );
    }

    #[test]
    fn says_at_start_what_the_device_rules_out() {
        let (net, _) = run(&["localhost:8080"], &["10.0.0.5:514"], Some(&[]));
        assert_eq!(
            net.notices(),
            [
                "grant network.connect `localhost:8080`: not allowed on this device",
                "grant network.udp `10.0.0.5:514`: not allowed on this device",
            ]
        );
        assert!(run(&["localhost:8080"], &[], None).0.notices().is_empty());
    }
}
