//! Black-box tests: the real app on 127.0.0.1:0 (in-process or the real binary) in front of a
//! fake backend, driven by real clients. One module per topic.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should stop them loudly")]

mod common;

mod admin;
#[cfg(feature = "services")]
mod browser;
mod cli;
#[cfg(feature = "services")]
mod conformance;
mod cors;
mod downstream_wire;
mod errors;
mod forward;
mod forward_auth;
#[cfg(feature = "services")]
mod forward_auth_peers;
mod fuzz_findings;
mod h2;
#[cfg(feature = "services")]
mod hsm;
mod ledger;
#[cfg(feature = "services")]
mod ledger_postgres;
mod logs;
mod metrics;
#[cfg(feature = "services")]
mod nginx;
mod ratelimit;
mod refused;
mod relay;
mod reload;
mod rotation;
mod seeds;
#[cfg(feature = "services")]
mod shared_state;
mod shutdown;
mod slow_clients;
mod streaming;
mod tls;
mod tls_client;
mod tokens;
mod tracing;
mod upstream_wire;
mod websocket;
