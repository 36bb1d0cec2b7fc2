//! The proxy-wasm adapter: the one place that talks to Envoy. It reads what the core needs
//! (headers, properties, time, shared data), calls the core, and carries out its answer.
//!
//! Host access goes through `proxy_wasm::hostcalls` and the `_bytes` getters only: the SDK's
//! convenience methods unwrap host results and decode headers as UTF-8, and a panic kills the
//! VM for every later request on this worker.

use crate::config::{PluginConfig, Settings, KEY_LEN};
use crate::metrics::{Kind, Metric, Tally};
use crate::session::{Engine, Request, RequestState, Response};
use crate::table::{Store, StoreError};
use crate::token::{Entropy, SystemEntropy};
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

// The SDK's entry-point macro runs the WASI constructors in an unsafe block.
#[allow(unsafe_code)]
mod entry {
    use super::*;
    proxy_wasm::main! {{
        // Until the host's level is read (on_configure): every line reaches Envoy, which
        // filters it.
        proxy_wasm::set_log_level(LogLevel::Trace);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TetherRoot { policies: None }) });
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

fn request_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// How often each worker hands its tally to Envoy's stats and re-reads Envoy's log level.
const TICK: Duration = Duration::from_secs(1);

thread_local! {
    /// This worker's metric changes not yet handed to Envoy (one VM per worker thread).
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
    /// Envoy's ids of the metrics, defined once per VM.
    static METRIC_IDS: RefCell<Vec<(Metric, u32)>> = const { RefCell::new(Vec::new()) };
}

fn count(f: impl FnOnce(&mut Tally)) {
    TALLY.with(|t| f(&mut t.borrow_mut()));
}

fn define_metrics() {
    METRIC_IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if !ids.is_empty() {
            return;
        }
        for m in Metric::ALL {
            let kind = match m.kind() {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            match hostcalls::define_metric(kind, m.name()) {
                Ok(id) => ids.push((m, id)),
                Err(e) => warn!("tether: cannot define metric {}: {e:?}", m.name()),
            }
        }
    });
}

/// Hands this worker's tally to Envoy: one host call per metric that changed.
fn flush_metrics() {
    let deltas: Vec<(Metric, i64)> = TALLY.with(|t| t.borrow_mut().drain().collect());
    if deltas.is_empty() {
        return;
    }
    METRIC_IDS.with(|ids| {
        let ids = ids.borrow();
        for (metric, delta) in deltas {
            if let Some((_, id)) = ids.iter().find(|(m, _)| *m == metric) {
                let _ = hostcalls::increment_metric(*id, delta);
            }
        }
    });
}

/// Envoy's level for the `wasm` log component: lines below it are not even formatted.
fn follow_host_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

/// Set on requests of strict sessions pinned to an endpoint; owned by tether like the host header.
const STRICT_HEADER: &str = "x-tether-strict";

/// The key that seals tokens when the configuration lists none: random, made once per
/// Envoy process and kept in shared data so that every worker uses the same one.
const PROCESS_KEY: &str = "tether/v1/process-key";

fn process_key() -> Option<[u8; KEY_LEN]> {
    if let Ok((Some(key), _)) = hostcalls::get_shared_data(PROCESS_KEY) {
        return key.try_into().ok();
    }
    let mut key = [0u8; KEY_LEN];
    if !SystemEntropy.fill(&mut key) {
        return None;
    }
    hostcalls::set_shared_data(PROCESS_KEY, Some(&key), None).ok()?;
    // Read back what is stored: if another thread won a race to create it, use theirs.
    let (stored, _) = hostcalls::get_shared_data(PROCESS_KEY).ok()?;
    stored?.try_into().ok()
}

/// Compiled policies: the default and the per-route ones (`None`: disabled on that route).
struct Policies {
    default: Rc<Engine>,
    routes: Vec<(String, Option<Rc<Engine>>)>,
    /// Headers tether owns on every route: client-sent copies are removed everywhere.
    owned_headers: Vec<String>,
}

impl Policies {
    fn for_request(&self) -> Option<Rc<Engine>> {
        if self.routes.is_empty() {
            return Some(self.default.clone());
        }
        let route = property_text(vec!["xds", "route_name"]);
        match route.and_then(|r| self.routes.iter().find(|(name, _)| *name == r)) {
            Some((_, engine)) => engine.clone(),
            None => Some(self.default.clone()),
        }
    }
}

/// One per plugin configuration on each worker: holds the compiled policies.
struct TetherRoot {
    policies: Option<Rc<Policies>>,
}

impl Context for TetherRoot {}

impl RootContext for TetherRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        follow_host_log_level();
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(b) => b.unwrap_or_default(),
            Err(status) => {
                error!("tether: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let config = match PluginConfig::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                error!("tether: invalid plugin configuration: {e}");
                return false;
            }
        };
        let Some(key) = process_key() else {
            error!("tether: no randomness from the host for the process key");
            return false;
        };
        let build = |settings: Settings| {
            let engine = Engine::new(settings, key);
            if engine.needs_table() {
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
            }
            Rc::new(engine)
        };
        let default = build(config.default);
        let routes: Vec<(String, Option<Rc<Engine>>)> = config
            .routes
            .into_iter()
            .map(|(name, settings)| (name, settings.map(build)))
            .collect();
        let mut owned_headers = vec![STRICT_HEADER.to_string()];
        for engine in std::iter::once(&default).chain(routes.iter().filter_map(|(_, e)| e.as_ref()))
        {
            let s = &engine.settings;
            for h in std::iter::once(&s.host_header).chain(s.cluster_header.as_ref()) {
                if !owned_headers.contains(h) {
                    owned_headers.push(h.clone());
                }
            }
        }
        self.policies = Some(Rc::new(Policies {
            default,
            routes,
            owned_headers,
        }));
        define_metrics();
        if hostcalls::set_tick_period(TICK).is_err() {
            warn!("tether: no timer: metrics will not reach Envoy's stats");
        }
        true
    }

    fn on_tick(&mut self) {
        follow_host_log_level();
        flush_metrics();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let policies = self.policies.clone()?;
        Some(Box::new(TetherStream {
            context_id,
            policies,
            engine: None,
            state: None,
            now_ms: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per HTTP request.
struct TetherStream {
    context_id: u32,
    policies: Rc<Policies>,
    engine: Option<Rc<Engine>>,
    state: Option<RequestState>,
    /// Wall clock at the request's headers, milliseconds since 1970.
    now_ms: u64,
}

struct HostRequest;

impl Request for HostRequest {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        request_header(name)
    }

    fn source_address(&mut self) -> Option<String> {
        property_text(vec!["source", "address"])
    }
}

struct HostResponse;

impl Response for HostResponse {
    fn upstream(&mut self) -> Option<String> {
        property_text(vec!["upstream", "address"])
    }

    fn came_from_upstream(&mut self) -> bool {
        property_text(vec!["response", "code_details"]).as_deref() == Some("via_upstream")
    }

    fn cluster(&mut self) -> Option<String> {
        property_text(vec!["xds", "cluster_name"])
    }

    fn status(&mut self) -> Option<u16> {
        // The `:status` header: a header read is cheaper than the `response.code` property.
        let bytes =
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok()??;
        std::str::from_utf8(&bytes).ok()?.parse().ok()
    }

    fn set_cookies(&mut self) -> Vec<Vec<u8>> {
        hostcalls::get_map_bytes(MapType::HttpResponseHeaders)
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, value)| value)
            .collect()
    }
}

fn set_request_header(name: &str, value: Option<&[u8]>) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value);
}

impl Context for TetherStream {}

impl HttpContext for TetherStream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // Whatever the client sent under our routing headers must never choose the endpoint
        // or the cluster, on any route.
        for name in &self.policies.owned_headers {
            if request_header(name).is_some() {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                count(|t| t.add(Metric::ForgedHeadersRemoved, 1));
                debug!(
                    "tether[{}]: removed a client-sent {name} header",
                    self.context_id
                );
            }
        }
        let Some(engine) = self.policies.for_request() else {
            debug!("tether[{}]: decision=disabled", self.context_id);
            return Action::Continue;
        };
        // One clock read per request: the response phase reuses it (a host call saved).
        self.now_ms = now_ms();
        let (state, edits) = engine.on_request(&SharedData, &mut HostRequest, self.now_ms);
        let settings = &engine.settings;
        count(|t| t.request(settings.session_type, &state.found));
        if let Some(cookie) = &edits.cookie {
            set_request_header("cookie", (!cookie.is_empty()).then_some(cookie.as_slice()));
        }
        if let Some(name) = &edits.remove_header {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
        }
        if let Some(host) = &edits.host {
            set_request_header(&settings.host_header, Some(host.as_bytes()));
        }
        if let (Some(header), Some(cluster)) = (&settings.cluster_header, &edits.cluster) {
            set_request_header(header, Some(cluster.as_bytes()));
        }
        if edits.no_retries {
            set_request_header("x-envoy-max-retries", Some(b"0"));
            // A route matching this header can make the cluster refuse to fall back to
            // another endpoint when the pinned one has left it (envoy/envoy.yaml shows how).
            set_request_header(STRICT_HEADER, Some(b"1"));
        }
        self.state = Some(state);
        self.engine = Some(engine);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        // Responses to requests this filter never decided on (a disabled route, a local reply
        // before routing) carry no state: nothing to do.
        let (Some(state), Some(engine)) = (self.state.take(), self.engine.as_ref()) else {
            return Action::Continue;
        };
        let action = engine.on_response(
            &SharedData,
            &state,
            &mut HostResponse,
            self.now_ms,
            &mut SystemEntropy,
        );
        count(|t| t.response(&action));
        debug!(
            "tether[{}]: {} cas_retries={}",
            self.context_id, action.decision, action.cas_retries
        );
        if let Some((status, retry_after)) = action.refuse {
            // Replace the whole response: whatever answered instead of the pinned endpoint
            // (Envoy's own error, or another endpoint after the pinned one left the cluster)
            // must not reach the client as the session's answer.
            let retry_after = retry_after.to_string();
            let _ = hostcalls::send_http_response(
                u32::from(status),
                vec![
                    ("retry-after", retry_after.as_str()),
                    ("content-type", "text/plain"),
                ],
                Some(b"session endpoint unavailable\n"),
            );
            return Action::Pause;
        }
        if let Some(set_cookie) = action.set_cookie {
            let _ = hostcalls::add_map_value_bytes(
                MapType::HttpResponseHeaders,
                "set-cookie",
                set_cookie.as_bytes(),
            );
        }
        if let Some((name, value)) = action.set_header {
            let _ = hostcalls::set_map_value_bytes(
                MapType::HttpResponseHeaders,
                &name,
                Some(value.as_bytes()),
            );
        }
        Action::Continue
    }
}
