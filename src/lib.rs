//! tether: session persistence for Envoy, as a proxy-wasm HTTP filter.
//!
//! The pure core knows nothing of proxy-wasm and is tested natively and as
//! wasm32-unknown-unknown in Node: `config` (the plugin JSON), `plugin` (routes, owned headers,
//! one compiled policy per route), `policy` (the session families and their decisions),
//! `outcome` (what a response says happened), `seal`, `secret`, `table`, `cookies`, `metrics` and
//! `endpoints` (what is counted, in total and per endpoint). `filter` is
//! the thin adapter that owns every host call, built only for the module's target,
//! wasm32-wasip1.

pub mod config;
pub mod cookies;
pub mod encoding;
pub mod endpoints;
pub mod entropy;
pub mod http;
pub mod metrics;
pub mod outcome;
pub mod pin;
pub mod plugin;
pub mod policy;
pub mod seal;
pub mod secret;
pub mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod filter;
