//! tether: session persistence for Envoy, as a proxy-wasm HTTP filter.
//!
//! The pure core (`config`, `token`, `cookies`, `table`, `session`) knows nothing of proxy-wasm
//! and is tested natively; `filter` is the thin adapter that owns every host call, built only
//! for wasm32.

pub mod config;
pub mod cookies;
pub mod seal;
pub mod session;
pub mod table;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod filter;
