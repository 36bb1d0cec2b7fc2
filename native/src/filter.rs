//! The stream's filter: `src/filter.rs`'s `TetherStream` over Envoy's dynamic-module ABI. It
//! reads what the core asks for, calls the core, and carries out its answer, in the same order
//! and with the same log lines; a callback whose failure the request can go on without is
//! counted (`tether_host_call_failures`).
//!
//! The pinned endpoint: the core asks for its routing header (`upstream.host_header`) to be set
//! to the endpoint; here that request becomes Envoy's upstream-override-host call instead (with
//! the strict flag for `on_unavailable: strict`), so no header exists that a client could forge
//! or a backend could see. Every other header change is made as asked.

use crate::endpoints::FilterSink;
use crate::metrics::{hand_tally, unreported_panics, Pending, REPORTED_PANICS};
use crate::store;
use crate::TetherConfig;
use log::{debug, warn};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tether::endpoints::{for_each_change, for_each_live_change};
use tether::entropy::{Csprng, SystemEntropy};
use tether::http::{HeaderOp, Request, Response};
use tether::metrics::{to_i64, Kind, Metric, Tally};
use tether::plugin::{Hold, Plugin, Stream};
use tether::policy::{Found, ResponseAction};
use tether::table::WriteReport;
use tether_abi::{Attribute, EnvoyFilter, Filter, HeaderMap, Status};

/// Configurations whose plugin a worker keeps at once (old ones go first: a reload leaves the
/// previous configuration's streams to finish).
const PLUGINS_PER_WORKER: usize = 4;

thread_local! {
    /// This worker's plugins, by configuration id. A `Plugin` (its token cache) belongs to one
    /// thread, as in the Wasm build's one VM per worker.
    static PLUGINS: RefCell<Vec<WorkerPlugin>> = const { RefCell::new(Vec::new()) };
    /// This worker's random generator (token nonces), seeded from the OS.
    static RNG: RefCell<Csprng<SystemEntropy>> = const { RefCell::new(Csprng::new(SystemEntropy)) };
}

/// Numbers the streams of this process for the decision lines (`tether[N]: ...`).
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// The holds of the process's open streams whose end matters, by stream number: the ticking
/// thread keeps their sessions fresh while they last (`tether::plugin::Hold`).
static HOLDS: Mutex<BTreeMap<u64, Hold>> = Mutex::new(BTreeMap::new());

/// The ticking thread's call (metrics.rs): every open stream's session touched when due.
pub(crate) fn tick_holds() {
    let now = now_ms();
    for hold in crate::metrics::lock(&HOLDS).values_mut() {
        hold.tick(store::global(), now);
    }
}

/// A configuration's id, this worker's plugin for it, the worker's pending figures, and the
/// values of the configuration's secrets its plugin was made from.
struct WorkerPlugin {
    config: u64,
    plugin: Rc<Plugin>,
    pending: Arc<Mutex<Pending>>,
    secrets: Vec<Vec<u8>>,
}

/// This worker's plugin for `config`, and its pending figures. With `keys_secret`, the
/// secrets are read for every stream (one call each, nothing copied while they are as
/// before): a value SDS rotated makes a new plugin with the new keys, on this worker, before
/// this stream; a value that holds no usable keys keeps the plugin in use (logged once), and
/// with none made yet the stream goes on without tether (`None`).
fn worker_plugin(
    config: &TetherConfig,
    envoy: &EnvoyFilter<'_>,
) -> Option<(Rc<Plugin>, Arc<Mutex<Pending>>)> {
    PLUGINS.with(|plugins| {
        let mut plugins = plugins.borrow_mut();
        let index = plugins.iter().position(|p| p.config == config.id);
        let current = |seen: &[Vec<u8>]| {
            config.secrets.len() == seen.len()
                && config
                    .secrets
                    .iter()
                    .zip(seen)
                    .all(|((_, id), seen)| envoy.secret(*id).unwrap_or_default() == &seen[..])
        };
        if let Some(p) = index.and_then(|i| plugins.get(i)) {
            if config.secrets.is_empty() || current(&p.secrets) {
                return Some((p.plugin.clone(), p.pending.clone()));
            }
        }
        let values: Vec<Vec<u8>> = config
            .secrets
            .iter()
            .map(|(_, id)| envoy.secret(*id).unwrap_or_default().to_vec())
            .collect();
        let compiled = if config.secrets.is_empty() {
            Ok(config.config.clone())
        } else {
            let mut compiled = config.config.clone();
            compiled
                .resolve_keys(&mut |secret| {
                    let value = config
                        .secrets
                        .iter()
                        .position(|(s, _)| s == secret)
                        .and_then(|i| values.get(i))
                        .filter(|v| !v.is_empty());
                    Ok(Some(value.cloned().ok_or_else(|| {
                        format!("Envoy has no value for the secret \"{}\" yet", secret.name)
                    })?))
                })
                .map(|()| compiled)
        };
        let kept = index.and_then(|i| plugins.get_mut(i));
        let compiled = match (compiled, kept) {
            (Ok(compiled), _) => compiled,
            (Err(e), Some(kept)) => {
                // Logged once per value: the plugin in use is marked as made from it.
                warn!("tether: {e}: the keys in use are kept");
                kept.secrets = values;
                return Some((kept.plugin.clone(), kept.pending.clone()));
            }
            (Err(e), None) => {
                if !config.secrets_missed.swap(true, Ordering::Relaxed) {
                    warn!("tether: {e}: streams go on without tether until it has");
                }
                return None;
            }
        };
        let plugin = Rc::new(Plugin::new(&compiled, &config.secret));
        let pending = match index.and_then(|i| plugins.get(i)) {
            Some(p) => p.pending.clone(),
            None => config.flusher.worker(),
        };
        if let Some(i) = index {
            plugins.remove(i);
        } else if plugins.len() >= PLUGINS_PER_WORKER {
            plugins.remove(0);
        }
        plugins.push(WorkerPlugin {
            config: config.id,
            plugin: plugin.clone(),
            pending: pending.clone(),
            secrets: values,
        });
        Some((plugin, pending))
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn text(bytes: Option<&[u8]>) -> Option<String> {
    bytes
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_string)
}

/// What a phase changed in the per-endpoint series, besides its tally.
enum Moved<'r, 'a> {
    Nothing,
    /// A response's decision and table writes (`Found`: what its request found).
    Response(&'r ResponseAction<'a>, &'r Found),
    /// The table write a stream's end made.
    Writes(&'r WriteReport),
}

impl Moved<'_, '_> {
    /// No per-endpoint change: most streams' ends write nothing, and then take no lock.
    fn is_nothing(&self) -> bool {
        match self {
            Moved::Nothing => true,
            Moved::Response(..) => false,
            Moved::Writes(writes) => writes.endpoint_deltas.is_empty(),
        }
    }
}

pub(crate) struct TetherFilter {
    config: Arc<TetherConfig>,
    plugin: Rc<Plugin>,
    id: u64,
    stream: Option<Stream>,
    /// Wall clock at the request's headers, milliseconds since 1970.
    now_ms: u64,
    /// Why Envoy answered the stream itself, when it did (`on_local_reply`).
    local_reply: Option<String>,
    /// Metric changes of this phase (each phase adds them to `pending` before it returns).
    tally: Tally,
    /// The worker's figures for this configuration, not handed to Envoy yet.
    pending: Arc<Mutex<Pending>>,
    /// The stream has a hold in `HOLDS`.
    held: bool,
}

impl Drop for TetherFilter {
    // A filter Envoy destroys without completing its stream leaves no hold behind.
    fn drop(&mut self) {
        if self.held {
            crate::metrics::lock(&HOLDS).remove(&self.id);
        }
    }
}

impl TetherFilter {
    pub(crate) fn new(config: Arc<TetherConfig>, envoy: &EnvoyFilter<'_>) -> Option<TetherFilter> {
        let (plugin, pending) = worker_plugin(&config, envoy)?;
        Some(TetherFilter {
            plugin,
            pending,
            config,
            id: NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
            stream: None,
            now_ms: 0,
            local_reply: None,
            tally: Tally::default(),
            held: false,
        })
    }

    /// Adds the stream's changes (its tally, and a response's per-endpoint changes) to the
    /// worker's pending figures, and hands those to Envoy at once when the configuration does
    /// not tick. A phase that changed nothing takes no lock.
    fn hand_over(&mut self, envoy: &mut EnvoyFilter<'_>, moved: Moved<'_, '_>) {
        if self.tally.is_empty() && moved.is_nothing() {
            return;
        }
        let config = self.config.clone();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (metric, delta) in self.tally.drain() {
            pending.tally.add(metric, delta);
        }
        let series = &mut pending.series;
        match moved {
            Moved::Nothing => {}
            Moved::Response(action, found) => for_each_change(action, found, |change| {
                series.add(&change, &mut || text(envoy.cluster_name()));
            }),
            // The per-endpoint gauge is not per cluster: no cluster is read for it.
            Moved::Writes(writes) => {
                for_each_live_change(writes, |change| series.add(&change, &mut || None));
            }
        }
        if config.flusher.ticking() {
            config.flusher.touch();
            return;
        }
        // No tick: this stream hands them over.
        let failed = hand_tally(
            &mut pending.tally,
            &config.metrics,
            &mut |id, kind, delta| match kind {
                Kind::Counter => envoy.increment_counter(id, delta.unsigned_abs()),
                Kind::Gauge => envoy.add_to_gauge(id, delta),
            },
        );
        // Counted in the next hand-over; what the series could not hand over it keeps.
        pending.tally.add(Metric::HostCallFailures, failed);
        pending.series.flush(&mut FilterSink {
            envoy,
            ids: &config.endpoint_metrics,
        });
        drop(pending);
        let new = unreported_panics(&REPORTED_PANICS, tether_abi::panics_caught());
        if new > 0 {
            if let Some(id) = config.metrics.panics() {
                envoy.increment_counter(id, new);
            }
        }
    }
}

/// One of the stream's header maps as the core asks for it, read whole once per hook and
/// borrowed from Envoy: one call however many headers the core looks at (the token, the
/// owned headers, `:status`, `Set-Cookie`), and no copy of any it does not keep.
struct HostHeaders<'e, 'a> {
    envoy: &'e EnvoyFilter<'a>,
    map: Vec<(&'e [u8], &'e [u8])>,
}

impl<'e, 'a> HostHeaders<'e, 'a> {
    fn new(envoy: &'e EnvoyFilter<'a>, which: HeaderMap) -> Self {
        HostHeaders {
            envoy,
            map: envoy.headers(which),
        }
    }

    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'e [u8]> + 's {
        self.map
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| *v)
    }

    fn first(&mut self, name: &str) -> Option<Vec<u8>> {
        self.values(name).next().map(<[u8]>::to_vec)
    }

    fn all(&mut self, name: &str) -> Vec<&[u8]> {
        self.values(name).collect()
    }
}

/// The request as the core asks for it.
struct HostRequest<'e, 'a> {
    headers: HostHeaders<'e, 'a>,
    end_of_stream: bool,
}

impl Request for HostRequest<'_, '_> {
    fn first(&mut self, name: &str) -> Option<Vec<u8>> {
        self.headers.first(name)
    }

    fn all(&mut self, name: &str) -> Vec<&[u8]> {
        self.headers.all(name)
    }

    fn source_address(&mut self) -> Option<String> {
        text(self.headers.envoy.attribute(Attribute::SourceAddress))
    }

    fn has_body(&self) -> bool {
        !self.end_of_stream
    }
}

/// The response as the core asks for it.
struct HostResponse<'e, 'a> {
    headers: HostHeaders<'e, 'a>,
    local_reply: Option<&'e str>,
}

impl Response for HostResponse<'_, '_> {
    fn first(&mut self, name: &str) -> Option<Vec<u8>> {
        self.headers.first(name)
    }

    fn all(&mut self, name: &str) -> Vec<&[u8]> {
        self.headers.all(name)
    }

    fn upstream(&mut self) -> Option<String> {
        text(self.headers.envoy.attribute(Attribute::UpstreamAddress))
    }

    fn code_details(&mut self) -> Option<String> {
        // Envoy may not serve `response.code_details` as an attribute. Every answer Envoy makes
        // itself passes `on_local_reply` first, with its details; any other answer came from an
        // endpoint.
        text(self.headers.envoy.attribute(Attribute::ResponseCodeDetails)).or_else(|| {
            Some(
                self.local_reply
                    .map_or_else(|| "via_upstream".to_string(), str::to_string),
            )
        })
    }

    fn cluster(&mut self) -> Option<String> {
        text(self.headers.envoy.cluster_name())
    }
}

/// Carries out one header change; false when Envoy refused it.
fn apply(envoy: &mut EnvoyFilter<'_>, map: HeaderMap, op: &HeaderOp<'_>) -> bool {
    match op {
        HeaderOp::Set(name, value) => envoy.set_header(map, name, value),
        HeaderOp::Add(name, value) => envoy.add_header(map, name, value),
        HeaderOp::Remove(name) => envoy.remove_header(map, name),
    }
}

impl Filter for TetherFilter {
    fn on_request_headers(&mut self, envoy: &mut EnvoyFilter<'_>, end_of_stream: bool) -> Status {
        let plugin = self.plugin.clone();
        let route = if plugin.needs_route_name() {
            text(envoy.attribute(Attribute::RouteName))
        } else {
            None
        };
        // One clock read per request: the response phase reuses it.
        self.now_ms = now_ms();
        let plan = {
            let mut req = HostRequest {
                headers: HostHeaders::new(envoy, HeaderMap::Request),
                end_of_stream,
            };
            plugin.on_request(route.as_deref(), &mut req, store::global(), self.now_ms)
        };
        // The routing header's value goes to the override-host call; the rest as asked.
        let routing = plan
            .stream
            .as_ref()
            .and_then(|s| plugin.policy(s.policy))
            .map(|p| p.routing());
        let mut pin = None;
        let mut reroute = false;
        let mut failed = 0;
        for op in &plan.ops {
            match (op, routing) {
                (HeaderOp::Set(name, value), Some(r)) if *name == r.host_header => {
                    pin = Some((value.as_slice(), r.strict.is_some()));
                }
                _ => {
                    // Routes may match on tether's own headers (the cluster and strict headers
                    // of canary and strict set-ups): Envoy matches the route again after one
                    // of those changed. The proxy-wasm host does it after any change; here
                    // the session cookie taken out of `Cookie` leaves the route as matched
                    // on what the client sent.
                    reroute |= plugin.owned_headers().iter().any(|h| h == op.name());
                    if !apply(envoy, HeaderMap::Request, op) {
                        failed += 1;
                    }
                }
            }
        }
        if reroute {
            envoy.clear_route_cache();
        }
        if let Some((endpoint, strict)) = pin {
            let set = std::str::from_utf8(endpoint)
                .is_ok_and(|e| envoy.set_upstream_override_host(e, strict));
            if !set {
                failed += 1;
            }
        }
        self.tally.add(Metric::HostCallFailures, failed);
        self.tally
            .add(Metric::ForgedHeadersRemoved, to_i64(plan.forged_headers));
        // The owned headers' removals come first in the plan.
        for op in plan.ops.iter().take(plan.forged_headers) {
            if let HeaderOp::Remove(name) = op {
                debug!("tether[{}]: removed a client-sent {name} header", self.id);
            }
        }
        match &plan.stream {
            Some(stream) => {
                let sealed = plugin.seals_its_sessions(stream);
                self.tally.request(sealed, stream.state.found());
            }
            None => debug!("tether[{}]: decision=disabled", self.id),
        }
        self.stream = plan.stream;
        self.hand_over(envoy, Moved::Nothing);
        Status::Continue
    }

    fn on_local_reply(&mut self, _envoy: &mut EnvoyFilter<'_>, _status: u32, details: &[u8]) {
        self.local_reply = Some(String::from_utf8_lossy(details).into_owned());
    }

    fn on_response_headers(&mut self, envoy: &mut EnvoyFilter<'_>, _end_of_stream: bool) -> Status {
        // Responses to requests this filter never decided on (a disabled route, a local reply
        // before routing) carry no state: nothing to do.
        let Some(stream) = self.stream.take() else {
            return Status::Continue;
        };
        let plugin = self.plugin.clone();
        let action = {
            let mut resp = HostResponse {
                headers: HostHeaders::new(envoy, HeaderMap::Response),
                local_reply: self.local_reply.as_deref(),
            };
            let now_ms = self.now_ms;
            RNG.with(|rng| {
                plugin.on_response(
                    &stream,
                    &mut resp,
                    store::global(),
                    now_ms,
                    &mut *rng.borrow_mut(),
                )
            })
        };
        self.tally.response(&action);
        self.hand_over(envoy, Moved::Response(&action, stream.state.found()));
        if plugin.watches_stream_end(&stream) {
            if let Some(hold) = plugin.hold(&stream, self.now_ms) {
                crate::metrics::lock(&HOLDS).insert(self.id, hold);
                self.held = true;
            }
            self.stream = Some(stream);
        }
        debug!(
            "tether[{}]: {} cas_retries={}",
            self.id, action.decision, action.writes.cas_retries
        );
        if let Some((status, retry_after)) = action.refuse {
            // Replace the whole response: whatever answered instead of the pinned endpoint
            // (Envoy's own error, or another endpoint after the pinned one left the cluster)
            // must not reach the client as the session's answer.
            let retry_after = retry_after.to_string();
            envoy.send_response(
                u32::from(status),
                &[
                    ("retry-after", retry_after.as_bytes()),
                    ("content-type", b"text/plain"),
                ],
                b"session endpoint unavailable\n",
                "tether_strict_refusal",
            );
            return Status::Stop;
        }
        let failed = action
            .ops
            .iter()
            .filter(|op| !apply(envoy, HeaderMap::Response, op))
            .count();
        self.tally.add(Metric::HostCallFailures, to_i64(failed));
        self.hand_over(envoy, Moved::Nothing);
        Status::Continue
    }

    fn on_stream_complete(&mut self, envoy: &mut EnvoyFilter<'_>) {
        // Only streams whose end matters kept their state past the response headers.
        let writes = self
            .stream
            .take()
            .filter(|stream| self.plugin.watches_stream_end(stream))
            .map(|stream| {
                let mut writes = self
                    .plugin
                    .on_stream_end(&stream, store::global(), now_ms());
                if std::mem::take(&mut self.held) {
                    if let Some(hold) = crate::metrics::lock(&HOLDS).remove(&self.id) {
                        writes.add(&hold.into_report());
                    }
                }
                writes
            })
            .unwrap_or_default();
        self.tally.writes(&writes);
        self.hand_over(envoy, Moved::Writes(&writes));
    }
}

#[cfg(test)]
mod tests {
    use crate::new_config;
    use tether_abi::fake_host::{self, with_host};
    use tether_abi::sys::attribute_id;
    use tether_abi::{Filter, Status};

    fn pairs(p: &[(&str, &str)]) -> fake_host::Pairs {
        p.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// One stream through the filter: its request and response headers; returns the response
    /// headers tether left.
    fn stream(filter: &mut dyn Filter, request: &[(&str, &str)]) -> fake_host::Pairs {
        let mut envoy = fake_host::filter();
        with_host(|h| {
            h.request = pairs(request);
            h.response = pairs(&[(":status", "200")]);
            h.attributes = vec![(attribute_id::UPSTREAM_ADDRESS, b"127.0.0.1:8081".to_vec())];
            h.cluster = Some(b"backend".to_vec());
            h.override_host = None;
        });
        assert_eq!(
            filter.on_request_headers(&mut envoy, true),
            Status::Continue
        );
        assert_eq!(
            filter.on_response_headers(&mut envoy, true),
            Status::Continue
        );
        filter.on_stream_complete(&mut envoy);
        with_host(|h| h.response.clone())
    }

    /// Runs the flush the ticking thread would have scheduled (on the main thread in Envoy).
    fn flush(config: &dyn tether_abi::FilterConfig) {
        config.on_scheduled(&mut fake_host::config(), 0);
    }

    #[test]
    fn a_returning_session_is_pinned_by_the_override_call_not_a_header() {
        fake_host::reset();
        let config = new_config(
            &mut fake_host::config(),
            b"tether",
            br#"{"type": "cookie"}"#,
        )
        .unwrap();
        let mut first = config.new_filter(&mut fake_host::filter()).unwrap();
        let response = stream(first.as_mut(), &[(":method", "GET"), (":path", "/")]);
        let cookie = response
            .iter()
            .find(|(k, _)| k == b"set-cookie")
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            .unwrap();
        let token = cookie.split(';').next().unwrap().to_string();
        assert!(token.starts_with("tether="), "{cookie}");
        assert_eq!(
            fake_host::metric("tether_sessions_issued"),
            Some(0),
            "not before the flush"
        );
        flush(config.as_ref());
        assert_eq!(fake_host::metric("tether_sessions_issued"), Some(1));

        let mut again = config.new_filter(&mut fake_host::filter()).unwrap();
        let forged = ("x-tether-host", "10.0.0.1:1");
        stream(
            again.as_mut(),
            &[
                (":method", "GET"),
                (":path", "/"),
                ("cookie", &token),
                forged,
            ],
        );
        with_host(|h| {
            assert_eq!(h.override_host, Some(("127.0.0.1:8081".to_string(), false)));
            assert!(h.request.iter().all(|(k, _)| k != b"x-tether-host"));
        });
        // No metric call on the request path: the hit waits for the flush.
        assert_eq!(fake_host::metric("tether_hits"), Some(0));
        assert_eq!(with_host(|h| h.labeled.len()), 1, "the issue only");
        flush(config.as_ref());
        assert_eq!(fake_host::metric("tether_hits"), Some(1));
        assert_eq!(fake_host::metric("tether_forged_headers_removed"), Some(1));
        let by_endpoint = ["backend", "127.0.0.1:8081"];
        assert_eq!(
            fake_host::labeled_metric("tether_endpoint_sessions_issued", &by_endpoint),
            Some(1)
        );
        assert_eq!(
            fake_host::labeled_metric("tether_endpoint_hits", &by_endpoint),
            Some(1)
        );
        // Tokens hold no table: no binding gauge moved.
        assert_eq!(with_host(|h| h.labeled.len()), 2);
    }

    #[test]
    fn learned_bindings_count_per_endpoint_with_labels() {
        fake_host::reset();
        let json = br#"{"type": "learn", "learn_from": "header", "session_name": "x-session-id"}"#;
        let config = new_config(&mut fake_host::config(), b"tether", json).unwrap();
        let labels = with_host(|h| {
            h.metrics
                .iter()
                .zip(&h.label_names)
                .filter(|((n, _), _)| n.starts_with("tether_endpoint_"))
                .map(|((n, _), l)| (n.clone(), l.join(",")))
                .collect::<Vec<_>>()
        });
        assert_eq!(labels.len(), 5, "{labels:?}");
        for (name, l) in &labels {
            let want = if name == "tether_endpoint_live_bindings" {
                "endpoint"
            } else {
                "cluster,endpoint"
            };
            assert_eq!(l, want, "{name}");
        }
        for (id, times) in [("a", 3), ("b", 1)] {
            for _ in 0..times {
                let mut f = config.new_filter(&mut fake_host::filter()).unwrap();
                let req = [(":method", "GET"), (":path", "/"), ("x-session-id", id)];
                stream(f.as_mut(), &req);
            }
        }
        flush(config.as_ref());
        let e = ["backend", "127.0.0.1:8081"];
        assert_eq!(
            fake_host::labeled_metric("tether_endpoint_sessions_issued", &e),
            Some(2)
        );
        assert_eq!(
            fake_host::labeled_metric("tether_endpoint_hits", &e),
            Some(2)
        );
        assert_eq!(
            fake_host::labeled_metric("tether_endpoint_live_bindings", &["127.0.0.1:8081"]),
            Some(2)
        );
        assert_eq!(fake_host::metric("tether_host_call_failures"), Some(0));
    }

    #[test]
    fn the_bindings_a_stream_ends_write_lets_go_leave_the_gauges() {
        fake_host::reset();
        // One bucket (8 sessions); idle 2 s, so a use is recorded 0.5 s after the last write.
        let json =
            br#"{"type": "learn", "learn_from": "response_header", "session_name": "x-stream-end",
                        "max_sessions": 8, "idle_timeout": "2s"}"#;
        let config = new_config(&mut fake_host::config(), b"tether", json).unwrap();
        let set_up = |id: &str, upstream: &str, envelope: Option<&[u8]>| {
            with_host(|h| {
                h.request = pairs(&[(":method", "POST"), (":path", "/")]);
                if let Some(e) = envelope {
                    h.request.push((b"x-stream-end".to_vec(), e.to_vec()));
                }
                h.response = pairs(&[(":status", "200"), ("x-stream-end", id)]);
                h.attributes = vec![(attribute_id::UPSTREAM_ADDRESS, upstream.as_bytes().to_vec())];
                h.cluster = Some(b"backend".to_vec());
            });
        };
        let envelope = || {
            with_host(|h| {
                h.response
                    .iter()
                    .find(|(k, _)| k == b"x-stream-end")
                    .map(|(_, v)| v.clone())
            })
            .unwrap()
        };
        for id in ["old-1", "old-2", "old-3", "s1"] {
            let upstream = if id == "s1" {
                "127.0.0.1:8081"
            } else {
                "127.0.0.1:8082"
            };
            set_up(id, upstream, None);
            let mut f = config.new_filter(&mut fake_host::filter()).unwrap();
            let mut envoy = fake_host::filter();
            f.on_request_headers(&mut envoy, true);
            f.on_response_headers(&mut envoy, true);
            f.on_stream_complete(&mut envoy);
        }
        let s1 = envelope();
        flush(config.as_ref());
        let live = |e: &str| fake_host::labeled_metric("tether_endpoint_live_bindings", &[e]);
        assert_eq!(live("127.0.0.1:8082"), Some(3));
        // s1 comes back at 1.2 s (its use recorded, the others 1.2 s idle: kept); its stream
        // ends at 2.5 s, a use again, when the others are 2.5 s idle: that write lets them go.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        set_up("s1", "127.0.0.1:8081", Some(&s1));
        let mut f = config.new_filter(&mut fake_host::filter()).unwrap();
        let mut envoy = fake_host::filter();
        f.on_request_headers(&mut envoy, true);
        f.on_response_headers(&mut envoy, true);
        flush(config.as_ref());
        assert_eq!(live("127.0.0.1:8082"), Some(3));
        std::thread::sleep(std::time::Duration::from_millis(1300));
        f.on_stream_complete(&mut envoy);
        flush(config.as_ref());
        assert_eq!(live("127.0.0.1:8082"), Some(0));
        assert_eq!(live("127.0.0.1:8081"), Some(1));
        assert_eq!(fake_host::metric("tether_live_bindings"), Some(1));
    }

    #[test]
    fn without_a_scheduler_each_phase_hands_its_figures_over() {
        fake_host::reset();
        with_host(|h| h.no_scheduler = true);
        let config = new_config(
            &mut fake_host::config(),
            b"tether",
            br#"{"type": "cookie"}"#,
        )
        .unwrap();
        let mut f = config.new_filter(&mut fake_host::filter()).unwrap();
        stream(f.as_mut(), &[(":method", "GET"), (":path", "/")]);
        assert_eq!(fake_host::metric("tether_sessions_issued"), Some(1));
        assert_eq!(
            fake_host::labeled_metric(
                "tether_endpoint_sessions_issued",
                &["backend", "127.0.0.1:8081"]
            ),
            Some(1)
        );
        // Nothing was left for a flush.
        flush(config.as_ref());
        assert_eq!(fake_host::metric("tether_sessions_issued"), Some(1));
    }

    #[test]
    fn the_route_is_matched_again_only_after_a_header_routes_may_match_on_changed() {
        fake_host::reset();
        let json = br#"{"type": "cookie"}"#;
        let config = new_config(&mut fake_host::config(), b"tether", json).unwrap();
        let mut first = config.new_filter(&mut fake_host::filter()).unwrap();
        let response = stream(first.as_mut(), &[(":method", "GET"), (":path", "/")]);
        let (_, cookie) = response.iter().find(|(k, _)| k == b"set-cookie").unwrap();
        let token = String::from_utf8_lossy(cookie);
        let token = token.split(';').next().unwrap().to_string();
        let both = format!("{token}; app=1");
        let returning = [
            (":method", "GET"),
            (":path", "/"),
            ("cookie", both.as_str()),
        ];
        let mut again = config.new_filter(&mut fake_host::filter()).unwrap();
        with_host(|h| h.route_cache_cleared = 0);
        stream(again.as_mut(), &returning);
        with_host(|h| {
            // The session cookie was taken out of `Cookie`, the route left as it was.
            assert!(h
                .request
                .iter()
                .any(|(k, v)| k == b"cookie" && v == b"app=1"));
            assert_eq!(h.route_cache_cleared, 0);
        });
        let mut forged = config.new_filter(&mut fake_host::filter()).unwrap();
        let mut request = returning.to_vec();
        request.push(("x-tether-strict", "1"));
        stream(forged.as_mut(), &request);
        with_host(|h| assert_eq!(h.route_cache_cleared, 1));
    }

    #[test]
    fn strict_sessions_ask_for_the_strict_override() {
        fake_host::reset();
        let json = br#"{"type": "cookie", "on_unavailable": "strict"}"#;
        let config = new_config(&mut fake_host::config(), b"tether", json).unwrap();
        let mut first = config.new_filter(&mut fake_host::filter()).unwrap();
        let response = stream(first.as_mut(), &[(":method", "GET"), (":path", "/")]);
        let (_, cookie) = response.iter().find(|(k, _)| k == b"set-cookie").unwrap();
        let token = String::from_utf8_lossy(cookie);
        let token = token.split(';').next().unwrap();
        let mut again = config.new_filter(&mut fake_host::filter()).unwrap();
        stream(
            again.as_mut(),
            &[(":method", "GET"), (":path", "/"), ("cookie", token)],
        );
        with_host(|h| assert_eq!(h.override_host, Some(("127.0.0.1:8081".to_string(), true))));
    }

    /// The cookie a new session gets, opened with `keys` (None: it does not open).
    fn opened_with(config: &dyn tether_abi::FilterConfig, keys: &[[u8; 32]]) -> Option<String> {
        let mut filter = config.new_filter(&mut fake_host::filter())?;
        let response = stream(filter.as_mut(), &[(":method", "GET"), (":path", "/")]);
        let (_, cookie) = response.iter().find(|(k, _)| k == b"set-cookie")?;
        let cookie = String::from_utf8_lossy(cookie).into_owned();
        let token = cookie
            .split(';')
            .next()?
            .strip_prefix("tether=")?
            .to_string();
        let sealer = tether::seal::Sealer::new(keys, tether::seal::Carrier::Cookie, "tether");
        sealer
            .open(token.as_bytes(), b"")
            .map(|pin| pin.endpoint.to_string())
    }

    #[test]
    fn keys_come_from_envoys_secret_and_follow_its_rotation_on_each_worker() {
        fake_host::reset();
        tether_abi::program_init(new_config);
        let b64 = |k: &[u8; 32]| tether::encoding::base64url_encode(k);
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let source = r#"{"path_config_source":{"path":"/etc/sds.yaml"}}"#;
        with_host(|h| h.secrets = vec![("keys".into(), Some(source.into()), Vec::new())]);
        let config = new_config(
            &mut fake_host::config(),
            b"tether",
            br#"{"keys_secret": {"name": "keys", "path": "/etc/sds.yaml"}}"#,
        )
        .expect("SDS delivers after the configuration is made");
        // Nothing delivered yet: streams go on without tether, logged once.
        assert!(config.new_filter(&mut fake_host::filter()).is_none());
        assert!(config.new_filter(&mut fake_host::filter()).is_none());
        let missed = |h: &fake_host::Host| {
            h.logs
                .iter()
                .filter(|(_, m)| m.contains("has no value for the secret"))
                .count()
        };
        assert_eq!(with_host(|h| missed(h)), 1);

        with_host(|h| h.secrets[0].2 = b64(&k1).into_bytes());
        assert_eq!(
            opened_with(config.as_ref(), &[k1]).as_deref(),
            Some("127.0.0.1:8081")
        );
        // Rotated by SDS: the next stream seals with the new first key.
        with_host(|h| h.secrets[0].2 = format!("{}, {}", b64(&k2), b64(&k1)).into_bytes());
        assert_eq!(
            opened_with(config.as_ref(), &[k2]).as_deref(),
            Some("127.0.0.1:8081")
        );
        assert_eq!(opened_with(config.as_ref(), &[k1]), None);
        // A value with no usable key keeps the keys in use.
        with_host(|h| h.secrets[0].2 = b"not a key".to_vec());
        assert_eq!(
            opened_with(config.as_ref(), &[k2]).as_deref(),
            Some("127.0.0.1:8081")
        );
        assert!(with_host(|h| h
            .logs
            .iter()
            .any(|(_, m)| m.contains("the keys in use are kept"))));
    }

    #[test]
    fn a_static_secret_is_read_when_the_configuration_is_made() {
        fake_host::reset();
        tether_abi::program_init(new_config);
        let k = [5u8; 32];
        with_host(|h| {
            h.secrets = vec![(
                "static".into(),
                None,
                tether::encoding::base64url_encode(&k).into_bytes(),
            )]
        });
        let config = new_config(
            &mut fake_host::config(),
            b"tether",
            br#"{"keys_secret": "static"}"#,
        )
        .unwrap();
        assert_eq!(
            opened_with(config.as_ref(), &[k]).as_deref(),
            Some("127.0.0.1:8081")
        );
        for (json, line) in [
            (
                r#"{"keys_secret": "absent"}"#,
                "keys_secret: Envoy has no generic secret \"absent\" in static_resources.secrets",
            ),
            (
                r#"{"routes": {"r": {"keys_secret": {"name": "static", "ads": true}}}}"#,
                "routes.r.keys_secret: Envoy refused to subscribe to the secret \"static\"",
            ),
        ] {
            with_host(|h| h.logs.clear());
            assert!(new_config(&mut fake_host::config(), b"tether", json.as_bytes()).is_none());
            let logs = with_host(|h| h.logs.clone());
            assert!(
                logs.iter().any(|(_, m)| m
                    .starts_with(&format!("tether: invalid plugin configuration: {line}"))),
                "{json}: {logs:?}"
            );
        }
    }

    #[test]
    fn a_bad_configuration_is_refused_in_one_line_naming_the_field() {
        fake_host::reset();
        tether_abi::program_init(new_config);
        let refused = new_config(
            &mut fake_host::config(),
            b"tether",
            br#"{"cookie": {"same_site": "sideways"}}"#,
        );
        assert!(refused.is_none());
        let logs = with_host(|h| h.logs.clone());
        let lines: Vec<_> = logs
            .iter()
            .filter(|(_, m)| m.starts_with("tether: invalid plugin configuration"))
            .collect();
        assert_eq!(lines.len(), 1, "{logs:?}");
        assert!(lines[0].1.contains("cookie.same_site"), "{lines:?}");
    }
}
