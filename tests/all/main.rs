//! Kelp's end-to-end tests: the runtime in-process with real sample services,
//! and the `kelp` and `kelpd` binaries as a user runs them (signatures are
//! checked against the reference tool, `wasmsign2`, too).

mod support;

mod agent;
mod client;
mod dashboard;
mod demo;
mod engine;
mod fetching;
mod fleet;
mod fleet_cli;
mod hardware;
mod http;
mod images;
mod kelp_os;
mod kelp_run;
mod kelpd;
mod lifecycle;
mod network;
mod registry;
mod registry_oci;
mod signing;
mod toolchain;
