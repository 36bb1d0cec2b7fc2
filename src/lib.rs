//! tether: session persistence for Envoy, as a proxy-wasm HTTP filter.
//!
//! The pure core (`config`, `token`, `seal`, `cookies`, `table`, `session`) knows nothing of
//! proxy-wasm and is tested natively and as wasm32-unknown-unknown in Node; `filter` is the thin
//! adapter that owns every host call, built only for the module's target, wasm32-wasip1.

pub mod config;
pub mod cookies;
pub mod metrics;
pub mod seal;
pub mod session;
pub mod table;
pub mod token;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod filter;
