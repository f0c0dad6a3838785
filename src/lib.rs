//! tokengate: a reverse-proxy sidecar that forwards traffic untouched and mints signed JWTs
//! for third-party SDKs on a few configured token routes.
#![forbid(unsafe_code)]
#![warn(rust_2018_idioms)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod conn_info;
pub mod context;
pub mod cors;
pub mod demo;
pub mod error;
pub mod forward_auth;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod header_view;
pub mod hsm;
pub mod json_body;
pub mod keys;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod profiles;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod revocations;
pub mod routing;
pub mod server;
pub mod shared;
pub mod shelf;
pub mod stack;
pub mod state;
pub mod stores;
pub mod template;
pub mod tls;
pub mod token;
pub mod trace;
pub mod upstream;
pub mod wire;

pub use app::App;
