//! Outbound network access by grant.
//!
//! Each instance of a component gets a [`NetRun`]: the service's
//! [`NetworkPolicy`] (its manifest's `[grants.network]`, narrowed by the
//! device map's `[network] allow`) and what the instance's own name lookups
//! returned. A command has one instance per run; a service that answers
//! HTTP has one per request. Every way out goes through it:
//!
//! - `wasi:sockets` TCP and UDP: wasmtime-wasi asks [`NetRun::check`] about
//!   every address before any syscall. Connections and datagrams go only to
//!   granted addresses, or to addresses a granted name resolved to in this
//!   run. Nothing listens: a bind is allowed only to the wildcard address and
//!   an ephemeral port (what `connect` and `send` do on their own), and
//!   `listen` is always refused. UDP sockets exist only for services granted
//!   UDP.
//! - `wasi:sockets/ip-name-lookup`: the stock `resolve-addresses` has no
//!   per-name hook, so it is shadowed here. A name the policy refuses is
//!   never looked up and the guest gets `access-denied` (wasi-libc turns that
//!   into `EAI_SYSTEM` with `errno` `EACCES`, which Rust's std reports as
//!   `ErrorKind::PermissionDenied`: a guest can tell it from a name that does
//!   not exist, `name-unresolvable`). The addresses a granted name resolves
//!   to are recorded for the connection checks.
//! - `wasi:http` outgoing requests: see [`http_client`].
//!
//! A refusal is `access-denied` (or `HTTP-request-denied`) to the guest,
//! never a trap and never a packet, and is noted once per destination in the
//! service's log.

mod http_client;
mod policy;
mod sockets;

pub use http_client::{
    DEFAULT_BETWEEN_BYTES_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT,
};
pub(crate) use policy::NetRun;
pub use policy::{
    MAX_HTTP_CONNECTIONS, MAX_NOTED_REFUSALS, MAX_OPEN_LOOKUPS, MAX_RESOLVED_ADDRESSES,
};
pub use sockets::MAX_SOCKETS;
pub(crate) use sockets::{NetView, add_to_linker};
