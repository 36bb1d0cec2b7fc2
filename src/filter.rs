//! The proxy-wasm adapter: the one place that talks to Envoy. It reads what the core needs
//! (header maps, properties, time, shared data), calls the core, and carries out its answer.
//!
//! Host access goes through `proxy_wasm::hostcalls` and the byte getters only: the SDK's
//! convenience methods unwrap host results and decode headers as UTF-8, and a panic kills the
//! VM for every later request on this worker. A host call whose failure the request can go
//! on without is counted (`tether_host_call_failures`), never dropped unseen.

use crate::endpoints::{for_each_change, for_each_live_change, EndpointSeries, Series, SeriesSink};
use crate::entropy::{Csprng, SystemEntropy};
use crate::http::{HeaderOp, Headers, Request, Response};
use crate::metrics::{to_i64, Kind, Metric, Tally};
use crate::plugin::{self, Plugin, Stream};
use crate::table::{Recent, SessionId, Store, StoreError};
use log::{debug, error, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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
        // A panic aborts the VM; this says why, where an operator looks.
        std::panic::set_hook(Box::new(|info| {
            let _ = hostcalls::log(LogLevel::Critical, &format!("tether: panic: {info}"));
        }));
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TetherRoot { plugin: None }) });
    }}
}

/// How often each worker hands its tally to Envoy's stats and re-reads Envoy's log level.
const TICK: Duration = Duration::from_secs(1);

thread_local! {
    /// This worker's metric changes not yet handed to Envoy (one VM per worker thread).
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
    /// Envoy's ids of the metrics, defined once per VM.
    static METRIC_IDS: RefCell<Vec<(Metric, u32)>> = const { RefCell::new(Vec::new()) };
    /// This worker's per-endpoint series and their changes not yet handed to Envoy.
    static ENDPOINTS: RefCell<EndpointSeries<u32>> = RefCell::new(EndpointSeries::default());
    /// This worker's random generator (token nonces), seeded from WASI's `random_get`.
    static RNG: RefCell<Csprng<SystemEntropy>> = const { RefCell::new(Csprng::new(SystemEntropy)) };
    /// When this worker last knew sessions' records fresh: a hot session's requests skip the
    /// shared-data read.
    static RECENT: RefCell<Recent> = RefCell::new(Recent::new(RECENT_SLOTS));
    /// Whether this worker's last request that was asked for every field of a header had none
    /// (see `HostRequest::all`).
    static LAST_HAD_NONE: Cell<bool> = const { Cell::new(false) };
    /// The holds of this worker's open streams whose end matters, by context id: the tick
    /// keeps their sessions fresh while they last (`plugin::Hold`).
    static HOLDS: RefCell<HashMap<u32, plugin::Hold>> = RefCell::new(HashMap::new());
}

/// Sessions each worker remembers (`Recent`); a fixed allocation per worker, whatever the flood.
const RECENT_SLOTS: usize = 4096;

fn count(metric: Metric, n: i64) {
    if n != 0 {
        TALLY.with(|t| t.borrow_mut().add(metric, n));
    }
}

/// The result, or `None` with the failure counted.
fn counted<T>(result: Result<T, Status>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(_) => {
            count(Metric::HostCallFailures, 1);
            None
        }
    }
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

    fn recall(&self, table: u64, id: &SessionId) -> Option<u64> {
        RECENT.with(|r| r.borrow().recall(table, id))
    }

    fn remember(&self, table: u64, id: &SessionId, seen_ms: Option<u64>) {
        RECENT.with(|r| r.borrow_mut().remember(table, id, seen_ms));
    }
}

fn now_ms() -> u64 {
    counted(hostcalls::get_current_time())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A string property; absent is not a failure, an error is counted.
fn property_text(path: Vec<&str>) -> Option<String> {
    let bytes = counted(hostcalls::get_property(path))??;
    String::from_utf8(bytes).ok()
}

fn header_map(map: MapType) -> Headers {
    Headers::new(counted(hostcalls::get_map_bytes(map)).unwrap_or_default())
}

fn apply(map: MapType, ops: &[HeaderOp]) {
    for op in ops {
        let result = match op {
            HeaderOp::Set(name, value) => hostcalls::set_map_value_bytes(map, name, Some(value)),
            HeaderOp::Add(name, value) => hostcalls::add_map_value_bytes(map, name, value),
            HeaderOp::Remove(name) => hostcalls::remove_map_value(map, name),
        };
        counted(result);
    }
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

/// Envoy's stats as the per-endpoint series' host: each series is its own metric, defined the
/// first time it moves, under the stat name the shipped `stats_tags` split into tags.
struct WasmStats {
    failed: i64,
}

impl SeriesSink<u32> for WasmStats {
    fn hand(&mut self, series: &Series<'_>, id: &mut Option<u32>, delta: i64) -> bool {
        let defined = match id {
            Some(id) => *id,
            None => {
                let kind = match series.metric.kind() {
                    Kind::Counter => MetricType::Counter,
                    Kind::Gauge => MetricType::Gauge,
                };
                match hostcalls::define_metric(kind, &series.stat_name()) {
                    Ok(new) => *id.insert(new),
                    Err(_) => {
                        self.failed += 1;
                        return false;
                    }
                }
            }
        };
        let ok = hostcalls::increment_metric(defined, delta).is_ok();
        if !ok {
            self.failed += 1;
        }
        ok
    }
}

/// Hands this worker's tally and per-endpoint series to Envoy: one host call per metric or
/// series that changed (and one more to define a series the first time it moves).
fn flush_metrics() {
    let mut stats = WasmStats { failed: 0 };
    ENDPOINTS.with(|e| e.borrow_mut().flush(&mut stats));
    count(Metric::HostCallFailures, stats.failed);
    let deltas: Vec<(Metric, i64)> = TALLY.with(|t| t.borrow_mut().drain().collect());
    if deltas.is_empty() {
        return;
    }
    let mut failed = 0;
    METRIC_IDS.with(|ids| {
        let ids = ids.borrow();
        for (metric, delta) in deltas {
            if let Some((_, id)) = ids.iter().find(|(m, _)| *m == metric) {
                if hostcalls::increment_metric(*id, delta).is_err() {
                    failed += 1;
                }
            }
        }
    });
    // Counted in the next flush.
    count(Metric::HostCallFailures, failed);
}

/// Envoy's level for the `wasm` log component: lines below it are not even formatted.
fn follow_host_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

/// One per plugin configuration on each worker: holds the compiled plugin.
struct TetherRoot {
    plugin: Option<Rc<Plugin>>,
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
        let Some(started) = plugin::start(
            &bytes,
            &SharedData,
            &mut SystemEntropy,
            plugin::Secrets::Unavailable(
                "Envoy's secrets reach only the native build (the dynamic module): \
                 list the keys in keys",
            ),
        ) else {
            return false;
        };
        self.plugin = Some(Rc::new(started.plugin));
        define_metrics();
        if hostcalls::set_tick_period(TICK).is_err() {
            warn!("tether: no timer: metrics will not reach Envoy's stats");
        }
        true
    }

    fn on_tick(&mut self) {
        follow_host_log_level();
        let now = now_ms();
        HOLDS.with(|h| {
            for hold in h.borrow_mut().values_mut() {
                hold.tick(&SharedData, now);
            }
        });
        flush_metrics();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let plugin = self.plugin.clone()?;
        Some(Box::new(TetherStream {
            context_id,
            plugin,
            stream: None,
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
    plugin: Rc<Plugin>,
    stream: Option<Stream>,
    /// Wall clock at the request's headers, milliseconds since 1970.
    now_ms: u64,
}

/// The request as the core asks for it: one header at a time, and the whole map (one host call,
/// kept) once every field of a header is wanted.
struct HostRequest {
    map: Option<Headers>,
    end_of_stream: bool,
}

impl Request for HostRequest {
    fn first(&mut self, name: &str) -> Option<Vec<u8>> {
        match &self.map {
            Some(map) => map.first(name).map(<[u8]>::to_vec),
            None => counted(hostcalls::get_map_value_bytes(
                MapType::HttpRequestHeaders,
                name,
            ))
            .flatten(),
        }
    }

    /// The whole map costs several times a single value: a header that is absent is known
    /// from one cheap call, without it. That call is wasted when the header is there, so it is
    /// made only while this worker's requests come without the header (clients with no cookie
    /// at all), and the map is read at once while they come with it (browsers). Either way the
    /// answer is the same.
    fn all(&mut self, name: &str) -> Vec<&[u8]> {
        if self.map.is_none() && LAST_HAD_NONE.get() && self.first(name).is_none() {
            return Vec::new();
        }
        let values = self
            .map
            .get_or_insert_with(|| header_map(MapType::HttpRequestHeaders))
            .values(name);
        LAST_HAD_NONE.set(values.is_empty());
        values
    }

    fn source_address(&mut self) -> Option<String> {
        property_text(vec!["source", "address"])
    }

    fn has_body(&self) -> bool {
        !self.end_of_stream
    }
}

/// The response as the core asks for it: one header at a time, and the whole map (one host
/// call, kept) only once every field of a header is wanted.
struct HostResponse {
    map: Option<Headers>,
    /// The cluster, once read (the per-endpoint series may ask for it after the core did).
    cluster: Option<Option<String>>,
}

impl Response for HostResponse {
    fn first(&mut self, name: &str) -> Option<Vec<u8>> {
        match &self.map {
            Some(map) => map.first(name).map(<[u8]>::to_vec),
            None => counted(hostcalls::get_map_value_bytes(
                MapType::HttpResponseHeaders,
                name,
            ))
            .flatten(),
        }
    }

    fn all(&mut self, name: &str) -> Vec<&[u8]> {
        self.map
            .get_or_insert_with(|| header_map(MapType::HttpResponseHeaders))
            .values(name)
    }

    fn upstream(&mut self) -> Option<String> {
        property_text(vec!["upstream", "address"])
    }

    fn code_details(&mut self) -> Option<String> {
        property_text(vec!["response", "code_details"])
    }

    fn cluster(&mut self) -> Option<String> {
        self.cluster
            .get_or_insert_with(|| property_text(vec!["xds", "cluster_name"]))
            .clone()
    }
}

impl Context for TetherStream {}

impl HttpContext for TetherStream {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let route = if self.plugin.needs_route_name() {
            property_text(vec!["xds", "route_name"])
        } else {
            None
        };
        let mut req = HostRequest {
            map: None,
            end_of_stream,
        };
        // One clock read per request: the response phase reuses it.
        self.now_ms = now_ms();
        let plan = self
            .plugin
            .on_request(route.as_deref(), &mut req, &SharedData, self.now_ms);
        apply(MapType::HttpRequestHeaders, &plan.ops);
        count(Metric::ForgedHeadersRemoved, to_i64(plan.forged_headers));
        // The owned headers' removals come first in the plan.
        for op in plan.ops.iter().take(plan.forged_headers) {
            if let HeaderOp::Remove(name) = op {
                debug!(
                    "tether[{}]: removed a client-sent {name} header",
                    self.context_id
                );
            }
        }
        match &plan.stream {
            Some(stream) => {
                let sealed = self.plugin.seals_its_sessions(stream);
                TALLY.with(|t| t.borrow_mut().request(sealed, stream.state.found()));
            }
            None => debug!("tether[{}]: decision=disabled", self.context_id),
        }
        self.stream = plan.stream;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        // Responses to requests this filter never decided on (a disabled route, a local reply
        // before routing) carry no state: nothing to do.
        let Some(stream) = self.stream.as_ref() else {
            return Action::Continue;
        };
        let mut resp = HostResponse {
            map: None,
            cluster: None,
        };
        let action = RNG.with(|rng| {
            self.plugin.on_response(
                stream,
                &mut resp,
                &SharedData,
                self.now_ms,
                &mut *rng.borrow_mut(),
            )
        });
        TALLY.with(|t| t.borrow_mut().response(&action));
        // Counted here, handed to Envoy on the tick: no host call unless this worker meets the
        // endpoint for the first time and its cluster is read.
        ENDPOINTS.with(|e| {
            let mut e = e.borrow_mut();
            for_each_change(&action, stream.state.found(), |change| {
                e.add(&change, &mut || resp.cluster());
            });
        });
        debug!(
            "tether[{}]: {} cas_retries={}",
            self.context_id, action.decision, action.writes.cas_retries
        );
        if let Some((status, retry_after)) = action.refuse {
            // Replace the whole response: whatever answered instead of the pinned endpoint
            // (Envoy's own error, or another endpoint after the pinned one left the cluster)
            // must not reach the client as the session's answer.
            let retry_after = retry_after.to_string();
            counted(hostcalls::send_http_response(
                u32::from(status),
                vec![
                    ("retry-after", retry_after.as_str()),
                    ("content-type", "text/plain"),
                ],
                Some(b"session endpoint unavailable\n"),
            ));
            return Action::Pause;
        }
        apply(MapType::HttpResponseHeaders, &action.ops);
        if !self.plugin.watches_stream_end(stream) {
            self.stream = None;
        } else if let Some(hold) = self.plugin.hold(stream, self.now_ms) {
            HOLDS.with(|h| h.borrow_mut().insert(self.context_id, hold));
        }
        Action::Continue
    }
}

impl Drop for TetherStream {
    // Envoy deletes a stream's context when the stream has ended, and always: the end of a long
    // stream is seen here without exporting `proxy_on_log`, which would put a call into the VM
    // on every request.
    fn drop(&mut self) {
        // Only streams whose end matters kept their state past the response headers.
        let Some(stream) = self.stream.take() else {
            return;
        };
        if !self.plugin.watches_stream_end(&stream) {
            return;
        }
        let mut writes = self.plugin.on_stream_end(&stream, &SharedData, now_ms());
        let hold = HOLDS.try_with(|h| h.borrow_mut().remove(&self.context_id));
        if let Ok(Some(hold)) = hold {
            writes.add(&hold.into_report());
        }
        TALLY.with(|t| t.borrow_mut().writes(&writes));
        // The per-endpoint gauge is not per cluster: no cluster is read for it.
        ENDPOINTS.with(|e| {
            let mut e = e.borrow_mut();
            for_each_live_change(&writes, |change| e.add(&change, &mut || None));
        });
    }
}
