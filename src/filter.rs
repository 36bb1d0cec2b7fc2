//! The proxy-wasm adapter: the one place that talks to Envoy. It reads what the core needs
//! (headers, properties, time, shared data), calls the core, and carries out its answer.
//!
//! Host access goes through `proxy_wasm::hostcalls` and the `_bytes` getters only: the SDK's
//! convenience methods unwrap host results and decode headers as UTF-8, and a panic kills the
//! VM for every later request on this worker.

use crate::config::Settings;
use crate::session::{Engine, RequestState};
use crate::table::{Store, StoreError};
use crate::token::SystemEntropy;
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};
use std::rc::Rc;
use std::time::UNIX_EPOCH;

// The SDK's entry-point macro runs the WASI constructors in an unsafe block.
#[allow(unsafe_code)]
mod entry {
    use super::*;
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Trace);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TetherRoot { engine: None }) });
    }}
}

/// Envoy's shared data, seen through the core's `Store`.
struct SharedData;

impl Store for SharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        hostcalls::get_shared_data(key).map_err(|_| StoreError::Failed)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Failed),
        }
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn property_text(path: Vec<&str>) -> Option<String> {
    let bytes = hostcalls::get_property(path).ok()??;
    String::from_utf8(bytes).ok()
}

/// One per plugin configuration on each worker: holds the compiled configuration.
struct TetherRoot {
    engine: Option<Rc<Engine>>,
}

impl Context for TetherRoot {}

impl RootContext for TetherRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(b) => b.unwrap_or_default(),
            Err(status) => {
                error!("tether: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let settings = match Settings::parse(&bytes) {
            Ok(s) => s,
            Err(e) => {
                error!("tether: invalid plugin configuration: {e}");
                return false;
            }
        };
        let engine = Engine::new(settings);
        match engine.table.prepare(&SharedData) {
            Ok(created) if created > 0 => info!(
                "tether: binding table for session {:?} ready ({} buckets, {} created)",
                engine.settings.session_name,
                engine.table.bucket_count(),
                created
            ),
            Ok(_) => {}
            Err(e) => warn!("tether: could not create the binding table: {e:?}"),
        }
        self.engine = Some(Rc::new(engine));
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let engine = self.engine.clone()?;
        Some(Box::new(TetherStream {
            context_id,
            engine,
            state: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per HTTP request.
struct TetherStream {
    context_id: u32,
    engine: Rc<Engine>,
    state: Option<RequestState>,
}

impl Context for TetherStream {}

impl HttpContext for TetherStream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let host_header = self.engine.settings.host_header.as_str();
        // Whatever the client sent under our routing header must never choose the endpoint.
        if let Ok(Some(_)) =
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, host_header)
        {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, host_header);
            debug!(
                "tether[{}]: removed a client-sent {host_header} header",
                self.context_id
            );
        }
        let cookie = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "cookie")
            .ok()
            .flatten();
        let state = self
            .engine
            .on_request(&SharedData, cookie.as_deref(), now_ms());
        if let RequestState::Pinned(binding) = &state {
            let _ = hostcalls::set_map_value_bytes(
                MapType::HttpRequestHeaders,
                host_header,
                Some(binding.endpoint.as_bytes()),
            );
        }
        self.state = Some(state);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        // Responses to requests this filter never saw (a local reply before routing) carry
        // no state: nothing to do.
        let Some(state) = self.state.take() else {
            return Action::Continue;
        };
        let upstream = property_text(vec!["upstream", "address"]);
        let mut from_upstream =
            || property_text(vec!["response", "code_details"]).as_deref() == Some("via_upstream");
        let action = self.engine.on_response(
            &SharedData,
            &state,
            upstream.as_deref(),
            &mut from_upstream,
            now_ms(),
            &mut SystemEntropy,
        );
        debug!(
            "tether[{}]: {} cas_retries={}",
            self.context_id, action.decision, action.cas_retries
        );
        if let Some(set_cookie) = action.set_cookie {
            let _ = hostcalls::add_map_value_bytes(
                MapType::HttpResponseHeaders,
                "set-cookie",
                set_cookie.as_bytes(),
            );
        }
        Action::Continue
    }
}
