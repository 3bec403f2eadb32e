//! `wasi:sockets` as a service sees it: the stock name lookup and socket
//! constructors shadowed by the policy's checks and the socket limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    Host as _, HostResolveAddressStream as _, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host as TcpCreate;
use wasmtime_wasi::p2::bindings::sockets::udp_create_socket::Host as UdpCreate;
use wasmtime_wasi::p2::{TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::{WasiSocketsCtxView, WasiSocketsView};

use super::policy::NetRun;

/// The `wasi:sockets` name lookup interface as wasmtime-wasi 48 links it; its
/// `resolve-addresses` is shadowed under this name (components importing
/// any 0.2.x version are served by it). wasmtime is pinned to one release;
/// the network tests' refused lookup fails if this name ever stops matching.
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// The `wasi:sockets` interfaces that make sockets, as wasmtime-wasi 48
/// links them; shadowed to count sockets against [`MAX_SOCKETS`].
const TCP_CREATE_SOCKET: &str = "wasi:sockets/tcp-create-socket@0.2.12";
const UDP_CREATE_SOCKET: &str = "wasi:sockets/udp-create-socket@0.2.12";

/// Most sockets, TCP and UDP together, one instance holds at once. Each is
/// a file descriptor of kelpd's, shared by every service on the device; a
/// service talks to a handful of hosts. Past it the guest gets
/// `new-socket-limit` until it drops one.
pub const MAX_SOCKETS: usize = 64;

/// Store data whose instance's network goes through a [`NetRun`]. Its
/// sockets view is wasmtime-wasi's, which every `WasiView` has.
pub(crate) trait NetView: WasiSocketsView + 'static {
    fn net(&self) -> &NetRun;
}

/// Sockets the instance whose resources are in `view` holds now.
fn sockets_held(view: &mut WasiSocketsCtxView<'_>) -> usize {
    view.table
        .iter_mut()
        .filter(|entry| entry.is::<TcpSocket>() || entry.is::<UdpSocket>())
        .count()
}

/// Shadows the stock `resolve-addresses` (and the stream's
/// `resolve-next-address`, to record answers) with the policy's checks, and
/// the socket constructors with the [`MAX_SOCKETS`] limit.
/// Call after `wasmtime_wasi::p2::add_to_linker_async`.
pub(crate) fn add_to_linker<T: NetView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.instance(TCP_CREATE_SOCKET)?.func_wrap(
        "create-tcp-socket",
        |mut store: StoreContextMut<'_, T>, (family,): (IpAddressFamily,)| {
            let mut view = store.data_mut().sockets();
            if sockets_held(&mut view) >= MAX_SOCKETS {
                return Ok((Err(ErrorCode::NewSocketLimit),));
            }
            match TcpCreate::create_tcp_socket(&mut view, family) {
                Ok(socket) => Ok((Ok(socket),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    linker.instance(UDP_CREATE_SOCKET)?.func_wrap_async(
        "create-udp-socket",
        |mut store: StoreContextMut<'_, T>, (family,): (IpAddressFamily,)| {
            Box::new(async move {
                let mut view = store.data_mut().sockets();
                if sockets_held(&mut view) >= MAX_SOCKETS {
                    return Ok((Err(ErrorCode::NewSocketLimit),));
                }
                match UdpCreate::create_udp_socket(&mut view, family).await {
                    Ok(socket) => Ok((Ok(socket),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    let mut lookup = linker.instance(IP_NAME_LOOKUP)?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store: StoreContextMut<'_, T>, (network, name): (Resource<Network>, String)| {
            let state = store.data_mut();
            let net = state.net().clone();
            // An address written out needs no lookup; connecting to it is
            // checked on its own.
            let literal = name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok();
            if !literal && net.may_resolve(&name, None).is_err() {
                return Ok((Err(ErrorCode::AccessDenied),));
            }
            match state.sockets().resolve_addresses(network, name.clone()) {
                Ok(stream) => {
                    net.lookup_started(stream.rep(), (!literal).then_some(name));
                    Ok((Ok(stream),))
                }
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store: StoreContextMut<'_, T>, (stream,): (Resource<ResolveAddressStream>,)| {
            let state = store.data_mut();
            let net = state.net().clone();
            let rep = stream.rep();
            match state.sockets().resolve_next_address(stream) {
                Ok(Some(address)) => {
                    net.lookup_answered(rep, ip_of(address));
                    Ok((Ok(Some(address)),))
                }
                Ok(None) => Ok((Ok(None),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn ip_of(address: IpAddress) -> IpAddr {
    match address {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
        }
    }
}
